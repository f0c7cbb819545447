//! Runs QEMU cases: spawn, capture the console with timestamps, enforce the
//! timeout, keep a log file, parse KTAP and decide a verdict.

use crate::ktap::{self, Report};
use crate::symbolize::Symbolizer;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a case expects from the kernel's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A complete, clean KTAP document (test boots).
    Ktap,
    /// Only a successful exit (demo boots).
    Exit,
    /// A failure the kernel reports on purpose: a failure exit with no crash
    /// report (a boot told to run a program that does not exist).
    Failure,
    /// A deliberate crash: a failure exit, a crash report, and a backtrace line
    /// naming a function (the symbolizer worked).
    Crash,
}

/// One QEMU boot.
#[derive(Debug, Clone)]
pub struct Case {
    /// Name shown in reports (`x86_64-vtd`).
    pub name: String,
    /// QEMU binary.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Wall-time limit; `None` waits forever (gdb sessions).
    pub timeout: Option<Duration>,
    /// QEMU exit statuses that mean the kernel reported success.
    pub success_codes: Vec<i32>,
    /// Where to keep the full console log.
    pub log_file: PathBuf,
    /// Kernel ELF for symbolization.
    pub elf: Option<PathBuf>,
    /// What the output must contain.
    pub expect: Expect,
    /// Text that must appear somewhere in the console output (each entry).
    pub must_contain: Vec<String>,
    /// Texts that must appear in this order: each on a line after the line
    /// the one before it was found on ([`in_order`]).
    pub in_order: Vec<String>,
    /// Text that ends the run at once as a failure (e.g. a boot loader's error
    /// after which firmware would wait for a key until the timeout).
    pub stop_on: Vec<String>,
    /// Console input typed into the guest, if any ([`Input`]).
    pub stdin: Option<Input>,
}

/// Bytes written to QEMU's standard input (the guest's serial console) once
/// a console line contains `after`: not from the start, since firmware that
/// polls the serial port for a key (SeaBIOS's boot menu) would eat them.
#[derive(Debug, Clone)]
pub struct Input {
    /// The text that says the guest reads its console now.
    pub after: String,
    /// The file whose bytes are typed.
    pub file: PathBuf,
}

/// How the QEMU process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Exited with a status code.
    Exited(i32),
    /// Killed by a signal (not by us).
    Signaled,
    /// Killed by the harness after the timeout.
    TimedOut(Duration),
    /// Could not be started.
    SpawnFailed(String),
    /// Killed by the harness after a line matched one of [`Case::stop_on`].
    Stopped(String),
}

/// Result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// How QEMU ended.
    pub ending: Ending,
    /// Console lines with their time since spawn.
    pub lines: Vec<(Duration, String)>,
    /// Parsed KTAP.
    pub report: Report,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl CaseResult {
    /// Whether QEMU's exit status says the kernel reported success.
    pub fn exit_ok(&self) -> bool {
        matches!(self.ending, Ending::Exited(c) if self.case.success_codes.contains(&c))
    }

    /// Required texts that never appeared.
    pub fn missing_texts(&self) -> Vec<&str> {
        self.case
            .must_contain
            .iter()
            .filter(|want| !self.lines.iter().any(|(_, l)| l.contains(want.as_str())))
            .map(String::as_str)
            .collect()
    }

    /// What is wrong with the order of the output: the first of
    /// [`Case::in_order`] not found after the one before it, or a register
    /// trace line whose sequence number does not increase ([`trace_sequence`]).
    pub fn order_problem(&self) -> Option<String> {
        let lines: Vec<&str> = self.lines.iter().map(|(_, l)| l.as_str()).collect();
        in_order(&lines, &self.case.in_order).err().or_else(|| trace_sequence(&lines).err())
    }

    /// The verdict (see the crate documentation).
    pub fn passed(&self) -> bool {
        if !self.missing_texts().is_empty() || self.order_problem().is_some() {
            return false;
        }
        match self.case.expect {
            Expect::Exit => self.exit_ok() && self.report.crash.is_none(),
            Expect::Ktap => self.exit_ok() && self.report.clean(),
            Expect::Failure => {
                matches!(self.ending, Ending::Exited(_)) && !self.exit_ok() && self.report.crash.is_none()
            }
            Expect::Crash => {
                matches!(self.ending, Ending::Exited(_))
                    && !self.exit_ok()
                    && self.report.crash.is_some()
                    && self.symbolized_backtrace()
            }
        }
    }

    /// Whether some `backtrace:` line resolves to a function of the kernel ELF.
    pub fn symbolized_backtrace(&self) -> bool {
        let Some(s) = self.case.elf.as_deref().and_then(|p| Symbolizer::from_elf(p).ok()) else {
            return false;
        };
        self.lines.iter().any(|(_, l)| l.starts_with("backtrace:") && s.symbolize_line(l).contains(" <"))
    }

    /// Time from spawn to the first line containing `marker`.
    pub fn time_to(&self, marker: &str) -> Option<Duration> {
        self.lines.iter().find(|(_, l)| l.contains(marker)).map(|(t, _)| *t)
    }

    /// Human-readable description of the ending.
    pub fn ending_text(&self) -> String {
        match &self.ending {
            Ending::Exited(c) if self.exit_ok() => format!("exit status {c} (kernel success)"),
            Ending::Exited(c) => {
                format!("exit status {c} (not kernel success, which is one of {:?})", self.case.success_codes)
            }
            Ending::Signaled => "QEMU was killed by a signal".into(),
            Ending::TimedOut(t) => format!("timed out after {:.0} s (killed)", t.as_secs_f64()),
            Ending::SpawnFailed(e) => format!("could not start {}: {e}", self.case.program),
            Ending::Stopped(line) => format!("stopped (killed) at a fatal line: {line}"),
        }
    }
}

/// Checks that every text of `wants` appears in `lines` in that order, each
/// on a later line than the previous one's match; returns the line index of
/// the last match, or which text was not found after which.
pub fn in_order(lines: &[&str], wants: &[String]) -> Result<Option<usize>, String> {
    let mut from = 0;
    let mut last = None;
    for (i, want) in wants.iter().enumerate() {
        match lines[from.min(lines.len())..].iter().position(|l| l.contains(want.as_str())) {
            Some(at) => {
                last = Some(from + at);
                from += at + 1;
            }
            None if i == 0 => return Err(format!("ordered output {want:?} never appeared")),
            None => {
                let seen = lines.iter().any(|l| l.contains(want.as_str()));
                return Err(format!(
                    "ordered output {want:?} {} after {:?}",
                    if seen { "appeared only before, not" } else { "never appeared, not even" },
                    wants[i - 1]
                ));
            }
        }
    }
    Ok(last)
}

/// Checks the register trace's sequence numbers (`trace #N unit: ...`, the
/// kernel's `iommu::trace`): strictly increasing over the whole output.
/// Returns how many trace lines there were.
pub fn trace_sequence(lines: &[&str]) -> Result<usize, String> {
    let mut last: Option<u64> = None;
    let mut n = 0;
    for l in lines {
        let Some(at) = l.find("trace #") else { continue };
        let digits: String = l[at + 7..].chars().take_while(char::is_ascii_digit).collect();
        let Ok(seq) = digits.parse::<u64>() else { continue };
        if let Some(prev) = last.filter(|&p| seq <= p) {
            return Err(format!("trace sequence number #{seq} after #{prev}: not increasing ({l:?})"));
        }
        last = Some(seq);
        n += 1;
    }
    Ok(n)
}

/// Forwards lines from a reader to the channel.
fn pump(reader: impl Read + Send + 'static, tx: mpsc::Sender<String>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Runs one case; with `live`, prints each (symbolized) line as it arrives.
pub fn run_case(case: &Case, live: bool) -> CaseResult {
    let start = Instant::now();
    let symbolizer = case.elf.as_deref().and_then(|p| Symbolizer::from_elf(p).ok());
    let fail = |ending| CaseResult {
        case: case.clone(),
        ending,
        lines: Vec::new(),
        report: ktap::parse(""),
        elapsed: start.elapsed(),
    };
    if let Some(dir) = case.log_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let typed = match &case.stdin {
        Some(i) => match std::fs::read(&i.file) {
            Ok(bytes) => Some((i.after.clone(), bytes)),
            Err(e) => return fail(Ending::SpawnFailed(format!("{}: {e}", i.file.display()))),
        },
        None => None,
    };
    let input = match &typed {
        Some(_) => Stdio::piped(),
        None if live => Stdio::inherit(),
        None => Stdio::null(),
    };
    let mut child = match Command::new(&case.program)
        .args(&case.args)
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(Ending::SpawnFailed(e.to_string())),
    };
    let (tx, rx) = mpsc::channel();
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, tx.clone()));
    }
    drop(tx);
    // Kept open until the case ends (QEMU's stdio would see an end of input).
    let mut stdin = child.stdin.take();
    let mut typed = typed;
    let mut lines = Vec::new();
    let mut log = std::fs::File::create(&case.log_file).ok();
    let mut ending = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let shown = symbolizer.as_ref().map_or_else(|| line.clone(), |s| s.symbolize_line(&line));
                if live {
                    println!("{shown}");
                }
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{shown}");
                }
                if typed.as_ref().is_some_and(|(after, _)| line.contains(after.as_str())) {
                    if let (Some((_, bytes)), Some(pipe)) = (typed.take(), stdin.as_mut()) {
                        // Small (a lesson): the pipe's buffer takes it at once.
                        let _ = pipe.write_all(&bytes);
                        let _ = pipe.flush();
                    }
                }
                if ending.is_none() && case.stop_on.iter().any(|p| line.contains(p.as_str())) {
                    let _ = child.kill();
                    let _ = child.wait();
                    ending = Some(Ending::Stopped(line.clone()));
                }
                lines.push((start.elapsed(), line));
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if ending.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                ending = Some(status.code().map_or(Ending::Signaled, Ending::Exited));
            } else if case.timeout.is_some_and(|t| start.elapsed() > t) {
                let _ = child.kill();
                let _ = child.wait();
                ending = Some(Ending::TimedOut(start.elapsed()));
            }
        }
        // Done once the process ended and both pipes are drained (bounded: pipes close with the process).
        if ending.is_some() && pumps.iter().all(|p| p.is_finished()) {
            while let Ok(line) = rx.try_recv() {
                if live {
                    println!("{}", symbolizer.as_ref().map_or_else(|| line.clone(), |s| s.symbolize_line(&line)));
                }
                lines.push((start.elapsed(), line));
            }
            break;
        }
    }
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    CaseResult {
        case: case.clone(),
        ending: ending.unwrap_or(Ending::Signaled),
        report: ktap::parse(&text),
        lines,
        elapsed: start.elapsed(),
    }
}

/// Runs all cases, at most `parallel` at a time, returning results in case order.
pub fn run_cases(cases: &[Case], parallel: usize) -> Vec<CaseResult> {
    let next = Arc::new(Mutex::new(0usize));
    let results: Arc<Mutex<Vec<Option<CaseResult>>>> = Arc::new(Mutex::new(vec![None; cases.len()]));
    let cases: Arc<Vec<Case>> = Arc::new(cases.to_vec());
    let workers: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (next, results, cases) = (next.clone(), results.clone(), cases.clone());
            std::thread::spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(case) = cases.get(i) else { break };
                let total = cases.len();
                eprintln!("qemu-tests: [{}/{total}] starting {}", i + 1, case.name);
                let r = run_case(case, false);
                eprintln!(
                    "qemu-tests: [{}/{total}] {} {} ({:.1} s)",
                    i + 1,
                    if r.passed() { "PASS" } else { "FAIL" },
                    case.name,
                    r.elapsed.as_secs_f64()
                );
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let mut guard = results.lock().unwrap_or_else(|e| e.into_inner());
    guard.drain(..).flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh_case(name: &str, script: &str, timeout: u64, expect: Expect) -> Case {
        Case {
            name: name.into(),
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout: Some(Duration::from_secs(timeout)),
            success_codes: vec![33],
            log_file: std::env::temp_dir().join(format!("qemu-tests-{name}-{}.log", std::process::id())),
            elf: None,
            expect,
            must_contain: Vec::new(),
            in_order: Vec::new(),
            stop_on: Vec::new(),
            stdin: None,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ordered_texts_must_follow_each_other() {
        let lines = ["a RTADDR", "b IQA", "c GCMD TE", "d IQA again"];
        assert_eq!(in_order(&lines, &strings(&["RTADDR", "IQA", "TE"])), Ok(Some(2)));
        assert_eq!(in_order(&lines, &strings(&["RTADDR", "IQA", "IQA"])), Ok(Some(3)), "a later repeat counts");
        assert_eq!(in_order(&lines, &[]), Ok(None));
        let e = in_order(&lines, &strings(&["TE", "RTADDR"])).unwrap_err();
        assert!(e.contains("appeared only before"), "{e}");
        let e = in_order(&lines, &strings(&["RTADDR", "QIE"])).unwrap_err();
        assert!(e.contains("never appeared"), "{e}");
        // The same line cannot satisfy two entries.
        assert!(in_order(&["x RTADDR IQA"], &strings(&["RTADDR", "IQA"])).is_err());
    }

    #[test]
    fn trace_sequence_numbers_must_increase() {
        let good = ["[0.1] INFO trace #1 vtd0: GCMD <- 0x0", "other", "[0.2] INFO trace #5 vtd0: IQT <- 0x20"];
        assert_eq!(trace_sequence(&good), Ok(2));
        let bad = ["trace #3 vtd0: a", "trace #3 vtd0: b"];
        assert!(trace_sequence(&bad).unwrap_err().contains("#3 after #3"));
        let back = ["trace #9 smmu0: a", "trace #2 smmu0: b"];
        assert!(trace_sequence(&back).is_err());
    }

    #[test]
    fn an_order_problem_fails_the_case() {
        let mut c = sh_case("order", "echo second; echo first; exit 33", 20, Expect::Exit);
        c.in_order = strings(&["first", "second"]);
        let r = run_case(&c, false);
        assert!(r.exit_ok());
        assert!(r.order_problem().is_some());
        assert!(!r.passed());
        c.in_order = strings(&["second", "first"]);
        assert!(run_case(&c, false).passed());
    }

    #[test]
    fn a_clean_document_with_the_success_code_passes() {
        let c = sh_case("pass", "echo 'KTAP version 1'; echo '1..1'; echo 'ok 1 a'; exit 33", 20, Expect::Ktap);
        let r = run_case(&c, false);
        assert!(r.passed(), "{:?} {:?}", r.ending, r.report);
        assert!(std::fs::read_to_string(&c.log_file).unwrap().contains("ok 1 a"));
        assert!(r.time_to("1..1").is_some());
    }

    #[test]
    fn wrong_exit_code_fails_even_with_clean_ktap() {
        let c = sh_case("code", "echo 'KTAP version 1'; echo '1..1'; echo 'ok 1 a'; exit 35", 20, Expect::Ktap);
        let r = run_case(&c, false);
        assert_eq!(r.ending, Ending::Exited(35));
        assert!(!r.passed());
    }

    #[test]
    fn a_hang_is_killed_at_the_timeout() {
        let c = sh_case("hang", "echo 'KTAP version 1'; echo '1..2'; echo 'ok 1 a'; exec sleep 30", 1, Expect::Ktap);
        let t = Instant::now();
        let r = run_case(&c, false);
        assert!(matches!(r.ending, Ending::TimedOut(_)), "{:?}", r.ending);
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(r.report.missing(), 1);
        assert!(!r.passed());
    }

    #[test]
    fn an_expected_failure_needs_a_failure_exit_without_a_crash() {
        let fail = run_case(&sh_case("fail", "echo 'init x: no such program'; exit 35", 20, Expect::Failure), false);
        assert!(fail.passed());
        let ok = run_case(&sh_case("ok", "exit 33", 20, Expect::Failure), false);
        assert!(!ok.passed());
        let hang = run_case(&sh_case("hang", "exec sleep 30", 1, Expect::Failure), false);
        assert!(!hang.passed());
    }

    #[test]
    fn a_fatal_line_stops_the_run_at_once() {
        let mut c = sh_case("stop", "echo 'loader: error: no kernel'; exec sleep 30", 20, Expect::Exit);
        c.stop_on = vec!["loader: error:".into()];
        let t = Instant::now();
        let r = run_case(&c, false);
        assert!(matches!(&r.ending, Ending::Stopped(l) if l.contains("no kernel")), "{:?}", r.ending);
        assert!(t.elapsed() < Duration::from_secs(10), "not left to the timeout");
        assert!(!r.passed());
        assert!(r.ending_text().contains("fatal line"));
    }

    #[test]
    fn crash_cases_need_a_failure_exit_a_report_and_a_symbolized_backtrace() {
        let exe = std::env::current_exe().unwrap();
        let addr = Symbolizer::from_elf(&exe).unwrap().address_of("run_case").unwrap();
        let script =
            |code: i32, bt: u64| format!("echo 'EXCEPTION: page fault'; echo 'backtrace: #0 {bt:#018x}'; exit {code}");
        let mut c = sh_case("crash", &script(35, addr + 1), 20, Expect::Crash);
        c.elf = Some(exe.clone());
        assert!(run_case(&c, false).passed());
        c.args[1] = script(33, addr + 1);
        assert!(!run_case(&c, false).passed(), "a success exit is not a crash");
        c.args[1] = script(35, 0x10);
        assert!(!run_case(&c, false).passed(), "an unresolvable backtrace fails");
    }

    #[test]
    fn required_text_must_appear() {
        let mut c = sh_case("text", "echo 'topology: iommu dmar0'; exit 33", 20, Expect::Exit);
        c.must_contain = vec!["topology: iommu dmar0".into()];
        assert!(run_case(&c, false).passed());
        c.must_contain.push("never printed".into());
        let r = run_case(&c, false);
        assert!(!r.passed());
        assert_eq!(r.missing_texts(), vec!["never printed"]);
    }

    #[test]
    fn missing_program_is_reported() {
        let mut c = sh_case("missing", "", 1, Expect::Exit);
        c.program = "/nonexistent/qemu".into();
        let r = run_case(&c, false);
        assert!(matches!(r.ending, Ending::SpawnFailed(_)));
        assert!(!r.passed());
    }

    #[test]
    fn parallel_runs_keep_order() {
        let cases: Vec<Case> =
            (0..4).map(|i| sh_case(&format!("par{i}"), &format!("echo n{i}; exit 33"), 20, Expect::Exit)).collect();
        let rs = run_cases(&cases, 2);
        assert_eq!(rs.len(), 4);
        for (i, r) in rs.iter().enumerate() {
            assert!(r.passed());
            assert_eq!(r.lines[0].1, format!("n{i}"));
        }
    }
}

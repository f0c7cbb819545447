//! A KTAP v1 parser (<https://docs.kernel.org/dev-tools/ktap.html>) for console output.

/// Outcome of one test line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`.
    Pass,
    /// `not ok`, with the text after `#` if any.
    Fail(String),
    /// `ok ... # SKIP reason`.
    Skip(String),
}

/// One result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// Test number within its document.
    pub number: usize,
    /// Name; nested results are qualified as `parent.child`.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
    /// True for a subtest of a nested block (not counted in the totals).
    pub nested: bool,
}

/// Everything the parser learned from one console log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Sum of the top-level plans of every document; `None` when no plan was seen.
    pub planned: Option<usize>,
    /// Top-level and nested results, in order.
    pub results: Vec<TestResult>,
    /// Problems with the document itself (missing tests, bad numbering ...).
    pub problems: Vec<String>,
    /// The first `PANIC` or `EXCEPTION` line, if the kernel crashed.
    pub crash: Option<String>,
    top_count: usize,
}

impl Report {
    fn top(&self) -> impl Iterator<Item = &TestResult> {
        self.results.iter().filter(|r| !r.nested)
    }

    /// Top-level results that passed.
    pub fn passed(&self) -> usize {
        self.top().filter(|r| r.outcome == Outcome::Pass).count()
    }

    /// Top-level results that failed.
    pub fn failed(&self) -> usize {
        self.top().filter(|r| matches!(r.outcome, Outcome::Fail(_))).count()
    }

    /// Top-level results that were skipped.
    pub fn skipped(&self) -> usize {
        self.top().filter(|r| matches!(r.outcome, Outcome::Skip(_))).count()
    }

    /// Planned top-level tests that never reported.
    pub fn missing(&self) -> usize {
        self.planned.unwrap_or(0).saturating_sub(self.top_count)
    }

    /// True when the document is complete and clean.
    pub fn clean(&self) -> bool {
        self.planned.is_some() && self.problems.is_empty() && self.crash.is_none() && self.failed() == 0
    }
}

/// Splits `ok 3 name # directive` into its parts; `None` if not a result line.
fn parse_result(line: &str) -> Option<(bool, usize, String, Option<String>)> {
    let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
        (false, r)
    } else if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else {
        return None;
    };
    let (num, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let number = num.parse().ok()?;
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n, Some(d.trim().to_owned())),
        None => match rest.strip_prefix("# ") {
            Some(d) => ("", Some(d.trim().to_owned())),
            None => (rest, None),
        },
    };
    Some((ok, number, name.trim().trim_start_matches("- ").to_owned(), directive))
}

struct Level {
    expected_next: usize,
    pending: Vec<TestResult>,
}

impl Report {
    fn note(&mut self, problem: String) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }
}

/// Parses console text into a [`Report`].
pub fn parse(text: &str) -> Report {
    let mut report = Report::default();
    let mut levels: Vec<Level> = Vec::new();
    let mut documents = 0usize;
    let mut top_count = 0usize;
    let mut plan_this_doc: Option<usize> = None;
    let mut results_this_doc = 0usize;
    let close_doc = |report: &mut Report, plan: Option<usize>, results: usize, doc: usize| {
        if let Some(p) = plan {
            if results < p {
                report.note(format!("document {doc}: {} of {p} planned tests never reported", p - results));
            } else if results > p {
                report.note(format!("document {doc}: {results} results for a plan of {p}"));
            }
        }
    };
    for raw in text.lines() {
        let line = raw.trim_end_matches(['\r', '\n']);
        let body = line.trim_start();
        if report.crash.is_none() && (body.starts_with("PANIC") || body.starts_with("EXCEPTION")) {
            report.crash = Some(body.to_owned());
        }
        let indent = line.len() - body.len();
        let depth = indent / 4;
        if body.starts_with("KTAP version ") {
            if depth == 0 {
                if documents > 0 {
                    close_doc(&mut report, plan_this_doc, results_this_doc, documents);
                }
                documents += 1;
                plan_this_doc = None;
                results_this_doc = 0;
                levels.clear();
                levels.push(Level { expected_next: 1, pending: Vec::new() });
            } else {
                levels.truncate(depth);
                levels.push(Level { expected_next: 1, pending: Vec::new() });
            }
            continue;
        }
        if levels.is_empty() {
            continue; // text before the first KTAP header
        }
        if let Some(plan) = body.strip_prefix("1..") {
            if let (0, Ok(n)) = (depth, plan.trim().parse::<usize>()) {
                if plan_this_doc.is_none() {
                    plan_this_doc = Some(n);
                    *report.planned.get_or_insert(0) += n;
                }
            }
            continue;
        }
        let Some((ok, number, name, directive)) = parse_result(body) else { continue };
        let outcome = match (ok, directive) {
            (true, Some(d)) if d.to_ascii_uppercase().starts_with("SKIP") => Outcome::Skip(d[4..].trim().to_owned()),
            (true, _) => Outcome::Pass,
            (false, d) => Outcome::Fail(d.unwrap_or_default()),
        };
        let level_index = depth.min(levels.len().saturating_sub(1));
        let level = &mut levels[level_index];
        if number != level.expected_next {
            report.note(format!("test number {number} ({name}) where {} was expected", level.expected_next));
        }
        level.expected_next = number + 1;
        let result = TestResult { number, name: name.clone(), outcome, nested: depth > 0 };
        if depth > 0 {
            levels[level_index].pending.push(result);
            continue;
        }
        // A top-level result adopts any nested results printed before it.
        let nested: Vec<TestResult> = levels.iter_mut().skip(1).flat_map(|l| l.pending.drain(..)).collect();
        levels.truncate(1);
        for mut child in nested {
            child.name = format!("{name}.{}", child.name);
            report.results.push(child);
        }
        report.results.push(result);
        results_this_doc += 1;
        top_count += 1;
    }
    if documents > 0 {
        close_doc(&mut report, plan_this_doc, results_this_doc, documents);
    }
    report.top_count = top_count;
    if documents == 0 {
        report.note("no KTAP output".to_owned());
    } else if report.planned.is_none() {
        report.note("KTAP output has no plan line".to_owned());
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_document_with_interleaved_logs_and_crlf() {
        let text = "SeaBIOS\r\n[ 0.1] INFO boot\r\nKTAP version 1\r\n1..3\r\nok 1 core.a\r\n[ 0.2] INFO log in between\r\n# diagnostic\r\nok 2 core.b # SKIP no device\r\nok 3 arch.c\r\n";
        let r = parse(text);
        assert_eq!(r.planned, Some(3));
        assert_eq!((r.passed(), r.failed(), r.skipped(), r.missing()), (2, 0, 1, 0));
        assert_eq!(r.results[1].outcome, Outcome::Skip("no device".into()));
        assert!(r.clean(), "{:?}", r.problems);
    }

    #[test]
    fn failures_carry_reasons() {
        let r = parse("KTAP version 1\n1..2\nnot ok 1 heap.grow # assertion failed: x\nok 2 b\n");
        assert_eq!(r.failed(), 1);
        assert_eq!(r.results[0].outcome, Outcome::Fail("assertion failed: x".into()));
        assert!(!r.clean());
    }

    #[test]
    fn truncated_output_reports_missing_tests_and_crash() {
        let r = parse(
            "KTAP version 1\n1..4\nok 1 a\nok 2 b\nPANIC: at kernel/x.rs:3: boom\nbacktrace: #0 0xffffffff80201234\n",
        );
        assert_eq!(r.missing(), 2);
        assert!(r.crash.as_deref().is_some_and(|c| c.contains("boom")));
        assert!(r.problems.iter().any(|p| p.contains("2 of 4")), "{:?}", r.problems);
        assert!(!r.clean());
    }

    #[test]
    fn no_ktap_and_no_plan_are_problems() {
        let r = parse("just a log\n");
        assert_eq!(r.planned, None);
        assert!(r.problems.iter().any(|p| p == "no KTAP output"));
        let r = parse("KTAP version 1\nok 1 a\n");
        assert!(r.problems.iter().any(|p| p.contains("no plan")));
        assert!(!r.clean());
    }

    #[test]
    fn numbering_errors_are_problems() {
        let r = parse("KTAP version 1\n1..3\nok 1 a\nok 3 c\nok 3 d\n");
        assert!(r.problems.iter().any(|p| p.contains("test number 3 (c) where 2 was expected")), "{:?}", r.problems);
        assert!(r.problems.iter().any(|p| p.contains("test number 3 (d)")));
    }

    #[test]
    fn nested_subtests_are_qualified_and_not_double_counted() {
        let text = "KTAP version 1\n1..2\n    KTAP version 1\n    1..2\n    ok 1 map\n    not ok 2 unmap # bad\nnot ok 1 ioas # 1 failed\nok 2 other\n";
        let r = parse(text);
        assert_eq!(r.results.len(), 4);
        assert_eq!(r.results[0].name, "ioas.map");
        assert!(r.results[1].nested && r.results[1].name == "ioas.unmap");
        assert_eq!((r.passed(), r.failed(), r.missing()), (1, 1, 0));
    }

    #[test]
    fn two_documents_add_their_plans() {
        let r = parse("KTAP version 1\n1..1\nok 1 kernel\nKTAP version 1\n1..2\nok 1 user.a\n");
        assert_eq!(r.planned, Some(3));
        assert_eq!(r.missing(), 1);
        assert!(r.problems.iter().any(|p| p.contains("document 2")));
    }

    #[test]
    fn garbage_never_panics() {
        for text in ["ok", "not ok x", "1..", "1..abc", "    ok 1 a", "KTAP version 1\n        ok 7 deep\nok 1 top"] {
            let _ = parse(text);
        }
    }
}

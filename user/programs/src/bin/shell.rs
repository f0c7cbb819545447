//! An interactive shell on the serial console (`cargo xtask run --shell`,
//! or `--shell --script FILE` to feed it a lesson): the generic IOAS door
//! and the device syscalls by hand, and the units' read-only reports
//! (`show`, `dump`, `walk`, `faults`: the `info_query` syscall), one command a line. Line editing:
//! backspace, Ctrl-U (erase the line), up / down (the last 16 lines).
//! `help` lists the commands; every command takes `--help`. Where a command
//! takes a BDF, `edu`, `nvme` or `virtio-blk` names the first such function.
//!
//! The shell is an ordinary task: it holds only the devices it claimed and
//! the IOAS objects it made, and they go with it when it exits.
#![no_std]
#![no_main]

extern crate alloc;

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use abi::{DeviceInfo, Errno};
use alloc::string::String;
use alloc::vec::Vec;
use userlib::iommufd::{self, DmaBuffer};
use userlib::{println, sys};

/// Commands: name, arguments, what it does.
const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "[COMMAND]", "list the commands, or explain one"),
    ("topology", "", "what the firmware described, as the kernel understood it (units, functions, reserved)"),
    ("units", "", "the IOMMU units the firmware described"),
    ("reserved", "", "the reserved regions (MSI windows, identity maps) per unit"),
    ("groups", "", "the IOMMU groups: functions the unit cannot tell apart, claimed together"),
    ("devices", "", "the PCI functions: address, IDs, class, IOMMU group, flags"),
    ("log", "[TEXT]", "the kernel log's recent records (those containing TEXT): units decoded, faults"),
    ("show", "UNIT", "a unit's capability and status registers, every field decoded with the spec's name"),
    ("dump", "BDF", "the structures the unit reads for a device (context / PASID entries, STE / CD, DTE, domain)"),
    ("walk", "BDF IOVA", "the page-table walk for a device's DMA at IOVA, level by level, to the page or the fault"),
    (
        "faults",
        "[all|follow]",
        "fault records the units made since the last `faults` (all kept ones; follow: live until a key)",
    ),
    (
        "queue",
        "UNIT",
        "the unit's last queued commands (invalidation descriptors, CMDQ, command buffer, requests), decoded",
    ),
    (
        "trace",
        "on|off [UNIT]",
        "the register trace of one unit (or all): every register write, command and completion, numbered",
    ),
    ("claim", "BDF", "take a function for this task (a whole IOMMU group)"),
    ("bind", "BDF", "bind a claimed function to the IOAS door; prints its device id and unit"),
    ("hw-info", "DEV", "the unit a bound device sits behind: kind, name, raw capability registers"),
    ("ioas-new", "", "allocate an IOAS; prints its id (also `ioas new`)"),
    ("attach", "DEV IOAS", "attach a bound device to an IOAS (or HWPT); prints the HWPT id"),
    ("detach", "DEV", "detach a device: its DMA is blocked again"),
    ("map", "IOAS BYTES [IOVA]", "allocate a zeroed DMA buffer and map it read/write; prints buffer, IOVA"),
    ("unmap", "IOAS IOVA BYTES", "unmap a mapping (whole mappings only)"),
    (
        "copy",
        "DST SRC SRC-IOVA BYTES [DST-IOVA]",
        "map the pages SRC maps at SRC-IOVA into DST too (no new pin); prints the IOVA",
    ),
    (
        "hwpt",
        "alloc DEV IOAS [nest-parent] | free ID",
        "a kernel-managed HWPT over an IOAS (the hardware door, no driver data)",
    ),
    ("ranges", "IOAS", "the usable IOVA ranges and the IOVA alignment"),
    ("destroy", "ID", "destroy an IOAS, HWPT or device object"),
    ("peek", "BUF [BYTES]", "show the first bytes of buffer BUF (from `map`)"),
    ("fill", "BUF BYTE", "fill buffer BUF with BYTE"),
    ("dma", "BDF IOVA to-ram|from-ram", "edu: copy a page between the device and IOVA"),
    ("exit", "", "end the shell (its devices and objects are released)"),
];

/// What the shell holds between commands.
struct State {
    buffers: Vec<DmaBuffer>,
    /// The sequence number of the next fault `faults` has not shown.
    next_fault: u64,
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `SSSS:BB:DD.F` or `BB:DD.F` (hex), or a kind: `edu`, `nvme`,
/// `virtio-blk` for the first such function behind an IOMMU (so a lesson
/// reads the same on every machine).
fn parse_bdf(s: &str) -> Option<u64> {
    let kind = |d: &DeviceInfo| match s {
        "edu" => (d.vendor, d.device) == edu_driver::EDU,
        "nvme" => d.class == nvme_driver::CLASS_NVME,
        "virtio-blk" => (d.vendor, d.device) == virtio_blk_driver::VIRTIO_BLK,
        _ => false,
    };
    if matches!(s, "edu" | "nvme" | "virtio-blk") {
        let mut buf = [DeviceInfo::default(); 64];
        let n = sys::device_list(&mut buf).ok()? as usize;
        return buf[..n.min(buf.len())]
            .iter()
            .find(|d| d.flags & abi::DEVICE_BEHIND_IOMMU != 0 && kind(d))
            .map(|d| d.bdf);
    }
    let mut parts: Vec<&str> = s.split(':').collect();
    let seg = if parts.len() == 3 { u16::from_str_radix(parts.remove(0), 16).ok()? } else { 0 };
    let (bus, rest) = (parts.first()?, parts.get(1)?);
    let (dev, func) = rest.split_once('.')?;
    Some(abi::bdf(
        seg,
        u8::from_str_radix(bus, 16).ok()?,
        u8::from_str_radix(dev, 16).ok()?,
        u8::from_str_radix(func, 16).ok()?,
    ))
}

fn bdf_text(bdf: u64) -> String {
    alloc::format!("{:04x}:{:02x}:{:02x}.{}", bdf >> 16 & 0xFFFF, bdf >> 8 & 0xFF, bdf >> 3 & 0x1F, bdf & 7)
}

fn usage(name: &str) {
    match COMMANDS.iter().find(|c| c.0 == name) {
        Some((n, args, what)) => println!("usage: {n} {args}\n  {what}"),
        None => println!("no command `{name}` (try `help`)"),
    }
}

/// Runs one line; false when the shell should end.
fn run(line: &str, st: &mut State) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(&cmd) = words.first() else { return true };
    let args = &words[1..];
    if args.first() == Some(&"--help") {
        usage(cmd);
        return true;
    }
    let num = |i: usize| args.get(i).and_then(|s| parse_u64(s));
    let id = |i: usize| num(i).and_then(|v| u32::try_from(v).ok());
    let result: Result<(), String> = match cmd {
        "help" => {
            match args.first() {
                Some(c) => usage(c),
                None => {
                    for (n, a, w) in COMMANDS {
                        println!("  {n:<9} {a:<26} {w}");
                    }
                }
            }
            Ok(())
        }
        "exit" => return false,
        "topology" => topology(""),
        "units" => topology("topology: iommu "),
        "reserved" => topology("topology: reserved "),
        "devices" => devices(),
        "groups" => groups(),
        "show" => match args.first() {
            Some(u) => unit_by_name(u).and_then(|i| report(abi::query_topic::REGISTERS, i, 0)),
            None => Err(bad(cmd)),
        },
        "dump" => match args.first().and_then(|s| parse_bdf(s)) {
            Some(b) => report(abi::query_topic::DEVICE, b, 0),
            None => Err(bad(cmd)),
        },
        "walk" => match (args.first().and_then(|s| parse_bdf(s)), num(1)) {
            (Some(b), Some(iova)) => report(abi::query_topic::WALK, b, iova),
            _ => Err(bad(cmd)),
        },
        "faults" => faults(st, args.first().copied()),
        "queue" => match args.first() {
            Some(u) => unit_by_name(u).and_then(|i| report(abi::query_topic::QUEUE, i, 0)),
            None => Err(bad(cmd)),
        },
        "trace" => match (args.first().copied(), args.get(1)) {
            (Some(w @ ("on" | "off")), unit) => {
                let unit = match unit {
                    Some(u) => unit_by_name(u),
                    None => Ok(u64::MAX),
                };
                unit.and_then(|i| report(abi::query_topic::TRACE, i, u64::from(w == "on")))
            }
            _ => Err(bad(cmd)),
        },
        "ioas" if args.first() == Some(&"new") => iommufd::ioas_alloc().map(|i| println!("ioas {i}")).map_err(errno),
        "log" => kernel_log(args.first().copied().unwrap_or("")),
        "claim" => match args.first().and_then(|s| parse_bdf(s)) {
            Some(b) => sys::device_claim(b).map(|_| println!("claimed {}", bdf_text(b))).map_err(errno),
            None => Err(bad(cmd)),
        },
        "bind" => match args.first().and_then(|s| parse_bdf(s)) {
            Some(b) => iommufd::device_bind(b).map_err(errno).and_then(|dev| {
                let unit = iommufd::unit_info(dev).map_err(errno)?;
                println!("device {dev}: {} behind {} ({})", bdf_text(b), unit.name(), unit.kind_name());
                Ok(())
            }),
            None => Err(bad(cmd)),
        },
        "hw-info" => match id(0) {
            Some(dev) => hw_info(dev),
            None => Err(bad(cmd)),
        },
        "ioas-new" => iommufd::ioas_alloc().map(|i| println!("ioas {i}")).map_err(errno),
        "attach" => match (id(0), id(1)) {
            (Some(dev), Some(pt)) => {
                iommufd::device_attach(dev, pt).map(|h| println!("device {dev} attached: hwpt {h}")).map_err(errno)
            }
            _ => Err(bad(cmd)),
        },
        "detach" => match id(0) {
            Some(dev) => {
                iommufd::device_detach(dev).map(|()| println!("device {dev} detached (DMA blocked)")).map_err(errno)
            }
            None => Err(bad(cmd)),
        },
        "map" => match (id(0), num(1)) {
            (Some(ioas), Some(len)) => map(st, ioas, len, num(2)),
            _ => Err(bad(cmd)),
        },
        "unmap" => match (id(0), num(1), num(2)) {
            (Some(ioas), Some(iova), Some(len)) => {
                iommufd::unmap(ioas, iova, len).map(|n| println!("unmapped {n:#x} bytes at {iova:#x}")).map_err(errno)
            }
            _ => Err(bad(cmd)),
        },
        "copy" => match (id(0), id(1), num(2), num(3)) {
            (Some(dst), Some(src), Some(at), Some(len)) => {
                iommufd::copy(dst, src, at, len, num(4), MAP_READABLE | MAP_WRITEABLE)
                    .map(|iova| {
                        println!("copied {len:#x} bytes of IOAS {src} at {at:#x} to IOAS {dst} at IOVA {iova:#x}")
                    })
                    .map_err(errno)
            }
            _ => Err(bad(cmd)),
        },
        "hwpt" => match (args.first().copied(), id(1), id(2)) {
            (Some("alloc"), Some(dev), Some(ioas)) => {
                let flags = if args.get(3) == Some(&"nest-parent") { abi::iommufd::HWPT_ALLOC_NEST_PARENT } else { 0 };
                iommufd::hwpt_alloc(dev, ioas, flags, abi::iommufd::hwpt_data::NONE, &[], None)
                    .map(|h| println!("hwpt {h} over IOAS {ioas}{}", if flags != 0 { " (nest parent)" } else { "" }))
                    .map_err(errno)
            }
            (Some("free"), Some(h), _) => iommufd::destroy(h).map(|_| println!("destroyed {h}")).map_err(errno),
            _ => Err(bad(cmd)),
        },
        "ranges" => match id(0) {
            Some(ioas) => ranges(ioas),
            None => Err(bad(cmd)),
        },
        "destroy" => match id(0) {
            Some(i) => iommufd::destroy(i).map(|()| println!("destroyed {i}")).map_err(errno),
            None => Err(bad(cmd)),
        },
        "peek" => match num(0).and_then(|b| st.buffers.get_mut(b as usize)) {
            Some(buf) => {
                let n = args.get(1).and_then(|s| parse_u64(s)).unwrap_or(32).min(buf.len) as usize;
                let mut line = String::new();
                for (i, b) in buf.bytes()[..n].iter().enumerate() {
                    if i > 0 && i % 16 == 0 {
                        println!("  {line}");
                        line.clear();
                    }
                    line.push_str(&alloc::format!("{b:02x} "));
                }
                println!("  {line}");
                Ok(())
            }
            None => Err(String::from("no such buffer (see `map`)")),
        },
        "fill" => match (num(0).and_then(|b| st.buffers.get_mut(b as usize)), num(1)) {
            (Some(buf), Some(v)) if v <= 0xFF => {
                buf.bytes().fill(v as u8);
                Ok(())
            }
            _ => Err(bad(cmd)),
        },
        "dma" => match (args.first().and_then(|s| parse_bdf(s)), num(1), args.get(2)) {
            (Some(b), Some(iova), Some(&dir)) if dir == "to-ram" || dir == "from-ram" => {
                edu_driver::Edu::open_claimed(b)
                    .and_then(|edu| edu.dma(iova, dir == "to-ram"))
                    .map(|()| {
                        println!(
                            "edu {}: page {} IOVA {iova:#x} done",
                            bdf_text(b),
                            if dir == "to-ram" { "to" } else { "from" }
                        )
                    })
                    .map_err(|f| alloc::format!("{f}"))
            }
            _ => Err(bad(cmd)),
        },
        _ => Err(alloc::format!("unknown command `{cmd}` (try `help`)")),
    };
    if let Err(e) = result {
        println!("{cmd}: {e}");
    }
    true
}

/// Prints a kernel report (`info_query`), indented.
fn report(topic: u64, subject: u64, arg: u64) -> Result<(), String> {
    let text = sys::query(topic, subject, arg).map_err(|e| match e {
        Errno::EPERM => {
            String::from("EPERM: not a device this shell claimed (boot with info.log=allow to look at others)")
        }
        Errno::ENODEV => String::from("ENODEV: no IOMMU unit translates that function"),
        Errno::ENOENT => String::from("ENOENT: no such unit or function"),
        e => errno(e),
    })?;
    for line in text.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// A unit by its registry index or its firmware name (`dmar0`, `smmu0`; see `units`).
fn unit_by_name(name: &str) -> Result<u64, String> {
    if let Some(i) = parse_u64(name) {
        return Ok(i);
    }
    let list = sys::query(abi::query_topic::UNITS, 0, 0).map_err(errno)?;
    list.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let (i, n) = (w.next()?, w.next()?);
            (n == name).then(|| parse_u64(i)).flatten()
        })
        .ok_or_else(|| {
            let names: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
            alloc::format!("no unit `{name}` (units: {})", names.join(", "))
        })
}

/// `faults`: the kept fault records past the last shown (`all`: every kept
/// one; `follow`: keep printing new ones until a key is pressed).
fn faults(st: &mut State, how: Option<&str>) -> Result<(), String> {
    let from = if how == Some("all") { 0 } else { st.next_fault };
    let show = |from: u64| -> Result<u64, String> {
        let text = sys::query(abi::query_topic::FAULTS, from, 0).map_err(errno)?;
        let mut next = from;
        for line in text.lines() {
            match line.strip_prefix("next #") {
                Some(n) => next = parse_u64(n).unwrap_or(next),
                None => println!("  {line}"),
            }
        }
        Ok(next)
    };
    let mut next = show(from)?;
    if next == from {
        println!("  no new faults");
    }
    if how == Some("follow") {
        println!("  following; press a key to stop");
        let mut key = [0u8; 1];
        while sys::console_read(&mut key, 200_000_000).map_err(errno)? == 0 {
            next = show(next)?;
        }
    }
    st.next_fault = next;
    Ok(())
}

fn errno(e: Errno) -> String {
    alloc::format!("{e}")
}

fn bad(cmd: &str) -> String {
    let args = COMMANDS.iter().find(|c| c.0 == cmd).map_or("", |c| c.1);
    alloc::format!("bad arguments (usage: {cmd} {args})")
}

/// The kernel's topology text, the lines starting with `prefix`.
fn topology(prefix: &str) -> Result<(), String> {
    let mut text = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = sys::info_read(abi::info_topic::TOPOLOGY, text.len() as u64, &mut chunk).map_err(errno)? as usize;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&chunk[..n]);
    }
    let text = core::str::from_utf8(&text).map_err(|_| String::from("topology text is not UTF-8"))?;
    for line in text.lines().filter(|l| l.starts_with(prefix)) {
        println!("  {}", line.trim_start_matches("topology: "));
    }
    Ok(())
}

/// The kernel log's recent records containing `text`.
fn kernel_log(text: &str) -> Result<(), String> {
    let mut buf = alloc::vec![0u8; 32 * 1024];
    let n = sys::info_read(abi::info_topic::LOG, 0, &mut buf).map_err(errno)? as usize;
    let log = core::str::from_utf8(&buf[..n]).map_err(|_| String::from("log text is not UTF-8"))?;
    for line in log.lines().filter(|l| l.contains(text)) {
        // `log: <level> <target>: <text>` (the uptime stamp dropped).
        let record = line.split_once("] ").map_or(line, |(_, r)| r);
        println!("log: {record}");
    }
    Ok(())
}

fn devices() -> Result<(), String> {
    let mut buf = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).map_err(errno)? as usize;
    println!("  {:<12} {:<9} {:<6} {:<5} flags", "address", "id", "class", "group");
    for d in &buf[..n.min(buf.len())] {
        let mut flags = String::new();
        for (bit, name) in [
            (abi::DEVICE_CLAIMED, "claimed"),
            (abi::DEVICE_BEHIND_IOMMU, "iommu"),
            (abi::DEVICE_NO_IOMMU, "noiommu"),
            (abi::DEVICE_INTERRUPTS_CONFINED, "irq-confined"),
            (abi::DEVICE_DMA_ALLOWED, "dma"),
        ] {
            if d.flags & bit != 0 {
                flags.push_str(name);
                flags.push(' ');
            }
        }
        println!("  {:<12} {:04x}:{:04x} {:06x} {:<5} {flags}", bdf_text(d.bdf), d.vendor, d.device, d.class, d.group);
    }
    Ok(())
}

/// `groups`: each IOMMU group and its functions (from `device_list`).
fn groups() -> Result<(), String> {
    let mut buf = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).map_err(errno)? as usize;
    let all = &buf[..n.min(buf.len())];
    let mut seen: Vec<u32> = Vec::new();
    for d in all {
        if seen.contains(&d.group) {
            continue;
        }
        seen.push(d.group);
        let members: Vec<String> = all.iter().filter(|m| m.group == d.group).map(|m| bdf_text(m.bdf)).collect();
        let iommu = if d.flags & abi::DEVICE_BEHIND_IOMMU != 0 { "behind an IOMMU" } else { "no IOMMU" };
        println!("  group {}: {} ({iommu})", d.group, members.join(" "));
    }
    Ok(())
}

fn hw_info(dev: u32) -> Result<(), String> {
    let mut regs = [abi::iommufd::HwReg::default(); 32];
    let unit = iommufd::hw_info(dev, &mut regs).map_err(errno)?;
    println!("device {dev}: unit {} ({}), {} invalidations so far", unit.name(), unit.kind_name(), unit.flushes);
    for r in &regs[..unit.num_regs.min(regs.len())] {
        let n = r.name.iter().position(|&b| b == 0).unwrap_or(8);
        println!("  {:<8} {:#018x}", core::str::from_utf8(&r.name[..n]).unwrap_or("?"), r.value);
    }
    Ok(())
}

fn map(st: &mut State, ioas: u32, len: u64, iova: Option<u64>) -> Result<(), String> {
    let buf = iommufd::dma_alloc(ioas, len).map_err(errno)?;
    match iommufd::map(ioas, buf.va, buf.len, iova, MAP_READABLE | MAP_WRITEABLE) {
        Ok(at) => {
            println!("buffer {}: {:#x} bytes at {:#x}, mapped at IOVA {at:#x}", st.buffers.len(), buf.len, buf.va);
            st.buffers.push(buf);
            Ok(())
        }
        Err(e) => {
            let _ = buf.free();
            Err(errno(e))
        }
    }
}

fn ranges(ioas: u32) -> Result<(), String> {
    let mut out = [abi::iommufd::IovaRange::default(); 16];
    let (n, align) = iommufd::iova_ranges(ioas, &mut out).map_err(errno)?;
    println!("ioas {ioas}: IOVA alignment {align:#x}");
    for r in &out[..n.min(out.len())] {
        println!("  {:#018x}-{:#018x}", r.start, r.last);
    }
    Ok(())
}

/// Console input, kept across lines (one read may bring several).
struct Input {
    buf: [u8; abi::CONSOLE_READ_MAX],
    at: usize,
    len: usize,
}

impl Input {
    /// The next byte typed, waiting as long as it takes.
    fn next(&mut self) -> u8 {
        while self.at == self.len {
            self.at = 0;
            self.len = sys::console_read(&mut self.buf, 1_000_000_000).unwrap_or(0) as usize;
        }
        self.at += 1;
        self.buf[self.at - 1]
    }
}

/// Reads one line with editing, echoing as it goes.
fn read_line(input: &mut Input, history: &mut Vec<String>) -> String {
    let mut line = String::new();
    let mut back = history.len();
    let mut esc = 0u8;
    let redraw = |l: &str| {
        let _ = sys::log(&alloc::format!("\r\x1b[Kportcullis> {l}"));
    };
    loop {
        let b = input.next();
        match (esc, b) {
            (0, 0x1B) => esc = 1,
            (1, b'[') => esc = 2,
            (2, b'A' | b'B') => {
                esc = 0;
                if b == b'A' && back > 0 {
                    back -= 1;
                } else if b == b'B' && back < history.len() {
                    back += 1;
                }
                line = history.get(back).cloned().unwrap_or_default();
                redraw(&line);
            }
            (1 | 2, _) => esc = 0,
            (_, b'\r' | b'\n') => {
                let _ = sys::log("\n");
                if !line.trim().is_empty() {
                    if history.len() == 16 {
                        history.remove(0);
                    }
                    history.push(line.clone());
                }
                return line;
            }
            (_, 0x7F | 0x08) if line.pop().is_some() => {
                let _ = sys::log("\x08 \x08");
            }
            (_, 0x15) => {
                line.clear();
                redraw(&line);
            }
            (_, 0x20..=0x7E) => {
                line.push(b as char);
                let mut s = [0u8; 4];
                let _ = sys::log((b as char).encode_utf8(&mut s));
            }
            _ => {}
        }
    }
}

fn main() -> i32 {
    println!("portcullis shell: `help` lists the commands, `exit` ends it");
    let mut st = State { buffers: Vec::new(), next_fault: 0 };
    let mut history = Vec::new();
    let mut input = Input { buf: [0; abi::CONSOLE_READ_MAX], at: 0, len: 0 };
    loop {
        let _ = sys::log("portcullis> ");
        let line = read_line(&mut input, &mut history);
        if !run(&line, &mut st) {
            break;
        }
    }
    println!("shell: bye");
    0
}

userlib::entry!(main);

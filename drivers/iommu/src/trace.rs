//! The register trace (`--trace`, kernel command line `trace=`): one log line
//! per event the IOMMU drivers cause, numbered by one global sequence counter,
//! so the order in which the units were programmed reads straight off the log.
//!
//! ```text
//! trace #42 vtd0: GCMD <- 0x80000000 (TE)
//! trace #43 vtd0: IQ[5] submit inv_wait (SW=1 FN=0 IF=0 SDATA=0x1 SADDR=0x12345000)
//! trace #44 vtd0: IQ wait done (SDATA=0x1)
//! trace #45 smmu0: CMDQ[3] submit CMD_CFGI_STE (SID=0x8 LEAF=1)
//! trace #46 virtio0: req ATTACH (domain=1 endpoint=0x8) -> OK
//! ```
//!
//! Line format: `trace #<seq> <unit>: <event>`, where `<seq>` is strictly
//! increasing over every unit, `<unit>` is the unit's trace name, and
//! `<event>` is one of
//! - `REG <- 0xVALUE (FIELDS)`: an MMIO register write, the register and its
//!   fields by their spec names (the decode is left out when it says nothing);
//! - `Q[i] submit NAME (FIELDS)`: a descriptor / command / request placed in
//!   slot `i` of queue `Q` (`IQ`, `CMDQ`, `CMDBUF`, `REQ`);
//! - `... done`, `... -> STATUS`: a completion;
//! - `NAME[index] <- words`: an in-memory structure the unit reads (context
//!   entry, STE, DTE) written.
//!
//! **Unit names**: the driver registers each unit it brings up
//! ([`Tracer::register`]) and gets `<kind><n>`, `n` counting that kind's
//! units from 0 in bring-up order: `vtd0`, `amdvi0`, `smmu0`, `virtio0`
//! (`mock0` in host tests). Boards bring their units up in topology order, so
//! `vtd0` is the topology's first VT-d unit (firmware name `dmar0`).
//!
//! **Switches**: one per unit ([`set`], [`set_all`], [`enabled`], [`units`]);
//! [`configure`] applies the command line's `trace=1` (every unit, also
//! those registered later) or `trace=NAME[,NAME…]` (those units, when they
//! register) before bring-up. With tracing off an event costs one relaxed
//! atomic load ([`Tracer::on`]) and no formatting.
//!
//! **Queue history**: [`History`] keeps a unit's last submitted entries (raw
//! words, slot, sequence number) whether tracing is on or off; drivers decode
//! it only when asked (`Iommu::describe_queue`).

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};

use crate::UnitKind;

/// The kinds a trace name can start with, in [`kind_index`] order.
const PREFIXES: [&str; 6] = ["vtd", "amdvi", "smmu", "virtio", "mock", "noiommu"];

/// Units the switch table holds; units registered beyond it are never traced.
pub const MAX_UNITS: usize = 32;

fn kind_index(kind: UnitKind) -> usize {
    match kind {
        UnitKind::Vtd => 0,
        UnitKind::AmdVi => 1,
        UnitKind::Smmuv3 => 2,
        UnitKind::VirtioIommu => 3,
        UnitKind::Mock => 4,
        UnitKind::NoIommu => 5,
    }
}

struct Slot {
    /// 0: free; else the kind index + 1.
    kind: AtomicU8,
    ordinal: AtomicU8,
    on: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // an array initialiser, each slot its own
const FREE: Slot = Slot { kind: AtomicU8::new(0), ordinal: AtomicU8::new(0), on: AtomicBool::new(false) };
static SLOTS: [Slot; MAX_UNITS] = [FREE; MAX_UNITS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO8: AtomicU8 = AtomicU8::new(0);
static ORDINALS: [AtomicU8; PREFIXES.len()] = [ZERO8; PREFIXES.len()];
/// `trace=1`: units registered from now on start traced.
static ALL: AtomicBool = AtomicBool::new(false);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO64: AtomicU64 = AtomicU64::new(0);
/// Per kind, bit n: unit `<kind>n` named on before it registered.
static WANTED: [AtomicU64; PREFIXES.len()] = [ZERO64; PREFIXES.len()];
static SEQ: AtomicU64 = AtomicU64::new(0);

/// The next sequence number (shared by every unit; starts at 1).
pub fn next_seq() -> u64 {
    SEQ.fetch_add(1, Relaxed) + 1
}

/// A unit's trace name, `<kind><n>` (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitName {
    prefix: &'static str,
    ordinal: Option<u8>,
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ordinal {
            Some(n) => write!(f, "{}{n}", self.prefix),
            None => write!(f, "{}?", self.prefix),
        }
    }
}

impl UnitName {
    /// Whether `text` is this name.
    pub fn is(&self, text: &str) -> bool {
        match (self.ordinal, text.strip_prefix(self.prefix)) {
            (Some(n), Some(rest)) => rest.parse::<u8>().ok() == Some(n),
            _ => false,
        }
    }
}

/// Parses `vtd0` into (kind index, ordinal).
fn parse_name(text: &str) -> Option<(usize, u8)> {
    // Longest prefix first is not needed: no prefix is another's prefix.
    PREFIXES.iter().enumerate().find_map(|(k, p)| {
        let rest = text.strip_prefix(p)?;
        let n: u8 = rest.parse().ok()?;
        (n < 64).then_some((k, n))
    })
}

/// One unit's handle on the trace: its switch and its name. `Copy`; a driver
/// keeps one per unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracer(u8);

impl Tracer {
    /// A handle that never traces (no slot).
    pub const NONE: Tracer = Tracer(u8::MAX);

    /// Registers a new unit of `kind`: its name is the kind's next ordinal;
    /// it starts traced if [`configure`] / [`set_all`] asked for every unit
    /// or named it. Past [`MAX_UNITS`] units the handle is [`Tracer::NONE`].
    pub fn register(kind: UnitKind) -> Tracer {
        let k = kind_index(kind);
        let slot = NEXT_SLOT.fetch_add(1, Relaxed);
        let Some(s) = SLOTS.get(slot) else {
            NEXT_SLOT.store(MAX_UNITS, Relaxed);
            return Tracer::NONE;
        };
        let ordinal = ORDINALS[k].fetch_add(1, Relaxed);
        let wanted = ordinal < 64 && WANTED[k].load(Relaxed) & (1 << ordinal) != 0;
        s.ordinal.store(ordinal, Relaxed);
        s.on.store(ALL.load(Relaxed) || wanted, Relaxed);
        s.kind.store(k as u8 + 1, Relaxed);
        Tracer(slot as u8)
    }

    fn slot(self) -> Option<&'static Slot> {
        SLOTS.get(usize::from(self.0))
    }

    /// Whether this unit's events are logged: one relaxed load.
    #[inline]
    pub fn on(self) -> bool {
        match SLOTS.get(usize::from(self.0)) {
            Some(s) => s.on.load(Relaxed),
            None => false,
        }
    }

    /// Turns this unit's trace on or off.
    pub fn set(self, on: bool) {
        if let Some(s) = self.slot() {
            s.on.store(on, Relaxed);
        }
    }

    /// The unit's trace name (`vtd0`).
    pub fn name(self) -> UnitName {
        match self.slot() {
            Some(s) if s.kind.load(Relaxed) != 0 => UnitName {
                prefix: PREFIXES[usize::from(s.kind.load(Relaxed) - 1)],
                ordinal: Some(s.ordinal.load(Relaxed)),
            },
            _ => UnitName { prefix: "iommu", ordinal: None },
        }
    }

    /// Logs one event under a fresh sequence number (whether or not the unit
    /// is traced: callers check [`Tracer::on`] first, as [`trace!`](crate::trace!) does);
    /// returns the number.
    pub fn emit(self, event: fmt::Arguments<'_>) -> u64 {
        let seq = next_seq();
        self.emit_seq(seq, event);
        seq
    }

    /// Logs one event under sequence number `seq` (one taken for a
    /// [`History`] entry, so the log and the history agree).
    pub fn emit_seq(self, seq: u64, event: fmt::Arguments<'_>) {
        log::info!("trace #{seq} {}: {event}", self.name());
    }
}

/// Why [`set`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoSuchUnit;

impl fmt::Display for NoSuchUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no IOMMU unit of that trace name (vtd0, amdvi0, smmu0, virtio0, ...)")
    }
}

fn registered() -> impl Iterator<Item = Tracer> {
    (0..NEXT_SLOT.load(Relaxed).min(MAX_UNITS)).filter(|&i| SLOTS[i].kind.load(Relaxed) != 0).map(|i| Tracer(i as u8))
}

/// Turns unit `name`'s trace on or off. A well-formed name of a unit not
/// registered yet (`vtd1` before the second VT-d unit came up) is remembered
/// and applied when it registers; anything else is [`NoSuchUnit`].
pub fn set(name: &str, on: bool) -> Result<(), NoSuchUnit> {
    let (k, n) = parse_name(name).ok_or(NoSuchUnit)?;
    if on {
        WANTED[k].fetch_or(1 << n, Relaxed);
    } else {
        WANTED[k].fetch_and(!(1 << n), Relaxed);
    }
    for t in registered().filter(|t| t.name().is(name)) {
        if let Some(s) = t.slot() {
            s.on.store(on, Relaxed);
        }
    }
    Ok(())
}

/// Turns every unit's trace on or off, those registered later too.
pub fn set_all(on: bool) {
    ALL.store(on, Relaxed);
    if !on {
        for w in &WANTED {
            w.store(0, Relaxed);
        }
    }
    for t in registered() {
        if let Some(s) = t.slot() {
            s.on.store(on, Relaxed);
        }
    }
}

/// Whether unit `name` is traced (`None`: no registered unit has that name).
pub fn enabled(name: &str) -> Option<bool> {
    registered().find(|t| t.name().is(name)).map(Tracer::on)
}

/// The registered units' names and switches, in registration order.
pub fn units() -> impl Iterator<Item = (UnitName, bool)> {
    registered().map(|t| (t.name(), t.on()))
}

/// Applies the command line's `trace=` value before the units come up:
/// `1` (or `all`, `on`) traces every unit; `NAME[,NAME…]` the units named;
/// `0` / `off` / absent none. Returns the names it did not understand.
pub fn configure(spec: Option<&str>) -> Result<(), &str> {
    match spec {
        None | Some("0" | "off" | "") => {
            set_all(false);
            Ok(())
        }
        Some("1" | "all" | "on") => {
            set_all(true);
            Ok(())
        }
        Some(list) => {
            let mut bad = Ok(());
            for name in list.split(',') {
                if set(name, true).is_err() && bad.is_ok() {
                    bad = Err(name);
                }
            }
            bad
        }
    }
}

/// Logs one event of `tracer`'s unit when it is traced: formats nothing
/// otherwise. `iommu::trace!(t, "GCMD <- {v:#x}")`.
#[macro_export]
macro_rules! trace {
    ($tracer:expr, $($arg:tt)+) => {{
        let t: $crate::trace::Tracer = $tracer;
        if t.on() {
            t.emit(::core::format_args!($($arg)+));
        }
    }};
}

/// A register decoder: writes `value`'s fields for register `name` by their
/// spec names (nothing when there is nothing to say).
pub type Decode = fn(name: &str, value: u64, out: &mut dyn fmt::Write) -> fmt::Result;

/// `value` decoded by a [`Decode`] as ` (FIELDS)`, or nothing when it writes nothing.
pub struct Fields(pub Decode, pub &'static str, pub u64);

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut p = Paren { f, open: false };
        (self.0)(self.1, self.2, &mut p)?;
        if p.open {
            p.f.write_str(")")?;
        }
        Ok(())
    }
}

/// Opens ` (` before the first text written.
struct Paren<'a, 'b> {
    f: &'a mut fmt::Formatter<'b>,
    open: bool,
}

impl fmt::Write for Paren<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.is_empty() {
            return Ok(());
        }
        if !self.open {
            self.open = true;
            self.f.write_str(" (")?;
        }
        self.f.write_str(s)
    }
}

/// The one traced register write: logs `NAME <- value (fields)` when the unit
/// is traced, then writes `value` to `reg`. Every driver writes its registers
/// through this (or a thin wrapper naming its decoder).
#[inline]
pub fn write<R>(tracer: Tracer, reg: &R, name: &'static str, value: R::T, decode: Decode)
where
    R: tock_registers::interfaces::Writeable,
    R::T: Into<u64>,
{
    if tracer.on() {
        let v: u64 = value.into();
        tracer.emit(format_args!("{name} <- {v:#x}{}", Fields(decode, name, v)));
    }
    reg.set(value);
}

/// As [`write`](fn@write), for register `index` of an array of them (fault-recording
/// registers): logs `NAME[index] <- value (fields)`.
#[inline]
pub fn write_at<R>(tracer: Tracer, reg: &R, name: &'static str, index: usize, value: R::T, decode: Decode)
where
    R: tock_registers::interfaces::Writeable,
    R::T: Into<u64>,
{
    if tracer.on() {
        let v: u64 = value.into();
        tracer.emit(format_args!("{name}[{index}] <- {v:#x}{}", Fields(decode, name, v)));
    }
    reg.set(value);
}

/// A decoder helper: the names in `bits` whose bit (a position) is set in
/// `value`, space-separated (after a leading space if `*first` is false).
pub fn flags(value: u64, bits: &[(u32, &str)], out: &mut dyn fmt::Write) -> fmt::Result {
    let mut first = true;
    for &(bit, name) in bits {
        if bit < 64 && value & (1 << bit) != 0 {
            if !first {
                out.write_str(" ")?;
            }
            out.write_str(name)?;
            first = false;
        }
    }
    Ok(())
}

/// One entry of a [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<const W: usize> {
    /// The sequence number it was submitted under.
    pub seq: u64,
    /// Its slot in the queue (or a request's index).
    pub index: u32,
    /// Its raw words.
    pub words: [u64; W],
}

/// The last `N` entries a unit submitted (descriptors, commands, requests)
/// of `W` raw words each, oldest first: a fixed ring, kept whether tracing
/// is on or off (a record is a sequence number and `W + 2` stores).
#[derive(Clone, Debug)]
pub struct History<const W: usize, const N: usize> {
    entries: [Entry<W>; N],
    /// Entries recorded so far (the next goes to `count % N`).
    count: u64,
}

impl<const W: usize, const N: usize> Default for History<W, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const W: usize, const N: usize> History<W, N> {
    /// An empty history.
    pub const fn new() -> Self {
        History { entries: [Entry { seq: 0, index: 0, words: [0; W] }; N], count: 0 }
    }

    /// Records one submitted entry under a fresh sequence number, returned
    /// (for the trace line of the same event).
    #[inline]
    pub fn record(&mut self, index: u32, words: [u64; W]) -> u64 {
        let seq = next_seq();
        self.record_seq(seq, index, words);
        seq
    }

    /// Records one entry under sequence number `seq`.
    #[inline]
    pub fn record_seq(&mut self, seq: u64, index: u32, words: [u64; W]) {
        if N == 0 {
            return;
        }
        self.entries[(self.count % N as u64) as usize] = Entry { seq, index, words };
        self.count += 1;
    }

    /// Entries held (at most `N`).
    pub fn len(&self) -> usize {
        self.count.min(N as u64) as usize
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry<W>> {
        let start = if self.count > N as u64 { (self.count % N as u64) as usize } else { 0 };
        let len = self.len();
        (0..len).map(move |i| &self.entries[(start + i) % N.max(1)])
    }

    /// Writes one line per entry, oldest first: `#seq Q[index] <decoded>`,
    /// each decoded by `decode` (`queue` names the queue: `IQ`, `CMDQ`).
    pub fn describe(
        &self,
        queue: &str,
        out: &mut dyn fmt::Write,
        decode: fn(&[u64; W], &mut dyn fmt::Write) -> fmt::Result,
    ) -> fmt::Result {
        if self.is_empty() {
            return writeln!(out, "{queue}: nothing submitted yet");
        }
        for e in self.iter() {
            write!(out, "#{} {queue}[{}] ", e.seq, e.index)?;
            decode(&e.words, out)?;
            out.write_str("\n")?;
        }
        Ok(())
    }
}

/// Host tests' check that a driver writes no register around the trace
/// (feature `testing`): the lines of `source` (a driver file, up to its
/// `#[cfg(test)]`) that call `.set(`, `.write(` or `.modify(` on something
/// reached through `receiver` (the driver's register-block accessor, e.g.
/// `regs`), with their line numbers. A driver's test asserts none.
#[cfg(any(test, feature = "testing"))]
pub fn untraced_writes<'a>(source: &'a str, receivers: &[&str]) -> alloc::vec::Vec<(usize, &'a str)> {
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .filter(|(_, l)| {
            receivers.iter().any(|r| {
                l.match_indices(r).any(|(at, _)| {
                    // `regs().x.set(` / `regs.x.write(`: the chain after the
                    // accessor, up to the first call, ends in a write method.
                    let rest = l[at + r.len()..].trim_start_matches("()");
                    let chain = rest.split(['(', ' ', ',', ';', ')']).next().unwrap_or("");
                    rest.len() > chain.len()
                        && rest[chain.len()..].starts_with('(')
                        && [".set", ".write", ".modify"].iter().any(|m| chain.ends_with(m))
                })
            })
        })
        .map(|(i, l)| (i + 1, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn untraced_writes_are_found() {
        let src = "fn a() {\n    self.regs().gcmd.set(1);\n    wr(t, &self.regs().gcmd, \"GCMD\", 1);\n    regs.iqt.write(X);\n    d.lo.write(Y);\n    // regs.x.set(1)\n}\n#[cfg(test)]\nmod t { fn b() { regs.x.set(2); } }\n";
        let found: alloc::vec::Vec<usize> = untraced_writes(src, &["regs"]).into_iter().map(|(n, _)| n).collect();
        assert_eq!(found, [2, 4]);
    }
    use core::fmt::Write;

    #[test]
    fn history_keeps_the_last_n_oldest_first() {
        let mut h: History<2, 4> = History::new();
        assert!(h.is_empty());
        let mut seqs = alloc::vec::Vec::new();
        for i in 0..6u32 {
            seqs.push(h.record(i, [u64::from(i), 0]));
        }
        assert_eq!(h.len(), 4);
        let got: alloc::vec::Vec<u32> = h.iter().map(|e| e.index).collect();
        assert_eq!(got, [2, 3, 4, 5]);
        let s: alloc::vec::Vec<u64> = h.iter().map(|e| e.seq).collect();
        assert_eq!(s, seqs[2..]);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
        let mut out = String::new();
        h.describe("IQ", &mut out, |w, o| write!(o, "w{}", w[0])).unwrap();
        let lines: alloc::vec::Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], alloc::format!("#{} IQ[2] w2", seqs[2]));
        assert_eq!(lines[3], alloc::format!("#{} IQ[5] w5", seqs[5]));
    }

    #[test]
    fn a_short_history_and_an_empty_one_describe_themselves() {
        let mut h: History<1, 8> = History::new();
        let mut out = String::new();
        h.describe("CMDQ", &mut out, |_, _| Ok(())).unwrap();
        assert_eq!(out, "CMDQ: nothing submitted yet\n");
        h.record_seq(7, 3, [9]);
        out.clear();
        h.describe("CMDQ", &mut out, |w, o| write!(o, "{}", w[0])).unwrap();
        assert_eq!(out, "#7 CMDQ[3] 9\n");
    }

    #[test]
    fn fields_open_a_parenthesis_only_when_there_is_something() {
        fn dec(_: &str, v: u64, out: &mut dyn fmt::Write) -> fmt::Result {
            flags(v, &[(31, "TE"), (26, "QIE")], out)
        }
        assert_eq!(alloc::format!("{}", Fields(dec, "GCMD", 1 << 31 | 1 << 26)), " (TE QIE)");
        assert_eq!(alloc::format!("{}", Fields(dec, "GCMD", 1)), "");
    }

    #[test]
    fn names_parse_and_switches_follow_them() {
        assert_eq!(parse_name("vtd0"), Some((0, 0)));
        assert_eq!(parse_name("smmu12"), Some((2, 12)));
        assert_eq!(parse_name("virtio1"), Some((3, 1)));
        assert_eq!(parse_name("vtd"), None);
        assert_eq!(parse_name("dmar0"), None);
        assert_eq!(set("nonsense", true), Err(NoSuchUnit));
        // Mock units: only this test registers them (tests run in parallel).
        set("mock1", true).unwrap();
        let a = Tracer::register(UnitKind::Mock);
        let b = Tracer::register(UnitKind::Mock);
        assert_eq!(alloc::format!("{}", a.name()), "mock0");
        assert_eq!(alloc::format!("{}", b.name()), "mock1");
        assert!(!a.on(), "mock0 was not asked for");
        assert!(b.on(), "mock1 was named before it registered");
        assert_eq!(enabled("mock1"), Some(true));
        set("mock0", true).unwrap();
        set("mock1", false).unwrap();
        assert!(a.on() && !b.on());
        assert!(units().any(|(n, on)| n.is("mock0") && on));
        assert_eq!(enabled("mock7"), None);
        assert!(!Tracer::NONE.on());
        let mut s = String::new();
        write!(s, "{}", Tracer::NONE.name()).unwrap();
        assert_eq!(s, "iommu?");
    }

    #[test]
    fn sequence_numbers_increase() {
        let a = next_seq();
        let b = next_seq();
        assert!(b > a);
    }
}

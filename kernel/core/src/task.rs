//! User tasks: load a packed ELF program into a fresh address space, run it in
//! user mode (ring 3 / EL0) until it exits or faults, and serve its syscalls.
//!
//! This first version runs one task at a time to completion (the timer keeps
//! ticking while it runs); the scheduler that interleaves several tasks builds
//! on the same pieces.

use crate::elf::{Elf, ElfError};
use crate::frames::FRAME_SIZE;
use crate::platform::{MapError, UserExit, UserPerms};
use crate::{mm, platform};
use abi::{Errno, SysResult, Sysno};
use alloc::vec::Vec;
use fallible::VecExt;
use pci::ConfigAccess;

/// Top of every task's user stack (exclusive).
pub const USER_STACK_TOP: u64 = 0x0000_7FFF_FFF0_0000;
/// User stack size.
pub const USER_STACK_PAGES: u64 = 16;
/// Lowest address a program may load at (page 0 stays unmapped to catch null pointers).
pub const USER_MIN: u64 = 0x1000;
/// Where `mem_map` and `device_map_bar` place mappings the kernel chooses.
pub const MMAP_BASE: u64 = 0x0000_1000_0000_0000;
/// End of the area `mem_map` may use.
pub const MMAP_END: u64 = 0x0000_7000_0000_0000;
/// Most pages one `mem_map` call may ask for (256 MiB).
pub const MAX_MAP_PAGES: u64 = 65_536;

/// A packed user program.
#[derive(Clone, Copy)]
pub struct Program {
    /// Name (the binary's name).
    pub name: &'static str,
    /// ELF image.
    pub image: &'static [u8],
}

/// Why a program could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnError {
    /// No packed program has that name.
    NotFound,
    /// The ELF image is invalid.
    Elf(ElfError),
    /// A segment lies outside user space or overlaps another.
    Layout(u64),
    /// Mapping failed.
    Map(MapError),
    /// Out of frames.
    OutOfMemory,
}

impl core::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SpawnError::NotFound => f.write_str("no such program"),
            SpawnError::Elf(e) => write!(f, "{e}"),
            SpawnError::Layout(a) => write!(f, "segment at {a:#x} outside user space or overlapping"),
            SpawnError::Map(e) => write!(f, "mapping failed: {e}"),
            SpawnError::OutOfMemory => f.write_str("out of memory"),
        }
    }
}

/// The running task (one at a time for now).
struct Current {
    id: u64,
    /// The task that spawned this one (0: the kernel).
    parent: u64,
    name: &'static str,
    root: u64,
    /// Anonymous pages from `mem_map`: (virtual, physical).
    anon: Vec<(u64, u64)>,
    /// Next address for kernel-chosen mappings.
    next_va: u64,
    /// The task's IOAS objects (../shared/DESIGN.md §2).
    iommufd: iommufd::Iommufd,
    /// IOMMU table frames the task's iommufd calls took and did not give
    /// back (`quota.table_frames`): each call's change of the units' table
    /// frames, which only that call can have caused (one CPU, no kernel
    /// preemption).
    table_frames: i64,
}

/// Which task claimed which PCI function.
static CLAIMS: spin::Mutex<Vec<(pci::Bdf, u64)>> = spin::Mutex::new(Vec::new());
/// Each claimed function's command register as the claim found it: the
/// release puts it back (Bus Master off), so a task that turned memory or
/// I/O decoding off does not leave the function unusable for the next owner.
static CLAIM_COMMAND: spin::Mutex<Vec<(pci::Bdf, u16)>> = spin::Mutex::new(Vec::new());
static NEXT_TASK_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

include!(concat!(env!("OUT_DIR"), "/user_programs.rs"));

/// The programs packed into the kernel image.
pub fn programs() -> &'static [Program] {
    PACKED
}

/// Frames owned by a task's address space (freed when it ends).
struct Owned {
    root: u64,
    frames: Vec<u64>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        for &f in &self.frames {
            let _ = mm::free_frame(f);
        }
        platform().user_space_free(self.root);
    }
}

fn map_new_page(owned: &mut Owned, va: u64, perms: UserPerms) -> Result<u64, SpawnError> {
    owned.frames.try_reserve(1).map_err(|_| SpawnError::OutOfMemory)?;
    let pa = mm::alloc_frame().ok_or(SpawnError::OutOfMemory)?;
    owned.frames.push(pa);
    platform().user_map(owned.root, va, pa, perms).map_err(|e| match e {
        MapError::AlreadyMapped(a) => SpawnError::Layout(a),
        other => SpawnError::Map(other),
    })?;
    Ok(pa)
}

fn load(program: &Program, machine: u16) -> Result<(Owned, u64), SpawnError> {
    let elf = Elf::parse(program.image, machine).map_err(SpawnError::Elf)?;
    let root = platform().user_space_new().map_err(SpawnError::Map)?;
    let mut owned = Owned { root, frames: Vec::new() };
    for seg in elf.segments() {
        let seg = seg.map_err(SpawnError::Elf)?;
        let end = seg.vaddr + seg.mem_size;
        if seg.vaddr < USER_MIN || end > USER_STACK_TOP - USER_STACK_PAGES * FRAME_SIZE {
            return Err(SpawnError::Layout(seg.vaddr));
        }
        let perms = UserPerms { write: seg.write, exec: seg.exec, device: false };
        let data = elf.contents(&seg);
        let mut page = seg.vaddr & !(FRAME_SIZE - 1);
        while page < end {
            let pa = map_new_page(&mut owned, page, perms)?;
            // Copy the part of the file contents that falls in this page.
            let lo = page.max(seg.vaddr);
            let hi = (page + FRAME_SIZE).min(seg.vaddr + data.len() as u64);
            if lo < hi {
                let src = &data[(lo - seg.vaddr) as usize..(hi - seg.vaddr) as usize];
                let dst = (mm::phys_to_virt(pa) + (lo - page)) as *mut u8;
                // SAFETY: `pa` is a fresh frame owned by this task, reached through the direct map; `src` fits within the page by construction of lo/hi.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
            }
            page += FRAME_SIZE;
        }
    }
    for i in 1..=USER_STACK_PAGES {
        map_new_page(
            &mut owned,
            USER_STACK_TOP - i * FRAME_SIZE,
            UserPerms { write: true, exec: false, device: false },
        )?;
    }
    Ok((owned, elf.entry))
}

/// Pages in each task's kernel stack.
const KERNEL_STACK_PAGES: usize = 4;
/// Timer ticks a task may run before it is preempted.
const QUANTUM_TICKS: u64 = 2;

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Ready,
    Running,
    /// Asleep until this uptime (ns).
    Sleeping(u64),
    /// Waiting for a device interrupt on a slot, or the deadline (ns).
    WaitIrq(usize, u64),
    Exited(UserExit),
}

/// A user task: its address space, kernel stack and saved kernel context.
struct Task {
    cur: Current,
    owned: Owned,
    entry: u64,
    state: State,
    /// Physical base of the kernel stack frames.
    kstack: u64,
    /// Saved kernel stack pointer while not running.
    sp: u64,
}

impl Task {
    fn kstack_top(&self) -> u64 {
        mm::phys_to_virt(self.kstack) + (KERNEL_STACK_PAGES as u64) * FRAME_SIZE
    }
}

/// All live tasks (boxed: the scheduler keeps raw pointers to `sp` fields
/// across context switches, so a task must not move).
#[allow(clippy::vec_box)] // the boxes are the point: `sp` must not move when the Vec grows
static TASKS: spin::Mutex<Vec<alloc::boxed::Box<Task>>> = spin::Mutex::new(Vec::new());
/// Id of the running task (0 = the scheduler / kernel).
static RUNNING: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Top of the running task's kernel stack (for backtraces).
static RUNNING_KSTACK_TOP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Saved stack pointer of the scheduler while a task runs.
static SCHEDULER_SP: spin::Mutex<u64> = spin::Mutex::new(0);
/// Interrupt slots that can be routed to tasks.
const IRQ_SLOTS: usize = 8;
/// Interrupts received per slot since the owner last collected them (written in interrupt context).
static IRQ_PENDING: [core::sync::atomic::AtomicU64; IRQ_SLOTS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; IRQ_SLOTS];
/// Owner (task id, function) of each slot; touched only in syscall context.
static IRQ_OWNER: spin::Mutex<[Option<(u64, pci::Bdf)>; IRQ_SLOTS]> = spin::Mutex::new([None; IRQ_SLOTS]);

/// Called by the platform's interrupt handler for a routed device interrupt.
pub fn device_irq(slot: u32) {
    if let Some(p) = IRQ_PENDING.get(slot as usize) {
        p.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// What tasks may hold, from the kernel command line (README, "Limits").
pub struct Limits {
    /// Tasks alive at once, system-wide (`quota.tasks`): a spawn beyond is `EAGAIN`.
    pub tasks: usize,
    /// Children one task may have alive (`quota.children`): `EAGAIN`.
    pub children: usize,
    /// Anonymous pages one task may map (`quota.mem_pages`): `EDQUOT`.
    pub mem_pages: u64,
    /// Each task's iommufd limits (`quota.objects`, `quota.pinned_pages`,
    /// `quota.fault_records`).
    pub iommufd: iommufd::Quota,
    /// IOMMU page-table frames one task's mappings, HWPTs and shadows may
    /// hold (`quota.table_frames`): an op that would add to them once the
    /// task is at the limit is `EDQUOT` (one call may overshoot by what it
    /// maps, which the pin quota bounds).
    pub table_frames: i64,
}

/// The limits, read once from the command line (defaults where a key is
/// missing or not a number).
pub fn limits() -> &'static Limits {
    static LIMITS: spin::Once<Limits> = spin::Once::new();
    LIMITS.call_once(|| {
        let num = |key: &str, default: u64| {
            crate::cmdline_value(key).map_or(default, |v| {
                v.parse().unwrap_or_else(|_| {
                    log::warn!("{key}={v} is not a number: using {default}");
                    default
                })
            })
        };
        let d = iommufd::Quota::default();
        Limits {
            tasks: num("quota.tasks", 16) as usize,
            children: num("quota.children", 8) as usize,
            mem_pages: num("quota.mem_pages", 32 * 1024),
            table_frames: num("quota.table_frames", 4096) as i64,
            iommufd: iommufd::Quota {
                objects: num("quota.objects", d.objects as u64) as usize,
                pinned_pages: num("quota.pinned_pages", d.pinned_pages),
                fault_records: num("quota.fault_records", d.fault_records as u64) as usize,
            },
        }
    })
}

/// Interrupts counted on `slot` that its owner has not collected yet (for tests).
pub fn irq_pending(slot: u32) -> u64 {
    IRQ_PENDING.get(slot as usize).map_or(0, |p| p.load(core::sync::atomic::Ordering::Relaxed))
}

/// Context switches into tasks so far.
pub static SWITCHES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Tick count when the running task was last scheduled.
static SLICE_START: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub(crate) fn running() -> u64 {
    RUNNING.load(core::sync::atomic::Ordering::Relaxed)
}

/// Loads a packed program into a new task, ready to run; returns its id.
pub fn spawn(name: &str) -> Result<u64, SpawnError> {
    let program = *programs().iter().find(|p| p.name == name).ok_or(SpawnError::NotFound)?;
    let (owned, entry) = load(&program, platform().elf_machine())?;
    let kstack = mm::alloc_frames(KERNEL_STACK_PAGES, 1).ok_or(SpawnError::OutOfMemory)?;
    let id = NEXT_TASK_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let cur = Current {
        id,
        parent: 0,
        name: program.name,
        root: owned.root,
        anon: Vec::new(),
        next_va: MMAP_BASE,
        iommufd: iommufd::Iommufd::with_quota(limits().iommufd),
        table_frames: 0,
    };
    let free_kstack = || {
        for i in 0..KERNEL_STACK_PAGES as u64 {
            let _ = mm::free_frame(kstack + i * FRAME_SIZE);
        }
    };
    // A task that cannot be recorded is dropped whole: its `Owned` gives
    // back its frames and address space, and the stack goes back here.
    let Ok(mut task) = fallible::try_box(Task { cur, owned, entry, state: State::Ready, kstack, sp: 0 }) else {
        free_kstack();
        return Err(SpawnError::OutOfMemory);
    };
    task.sp = platform().init_task_stack(task.kstack_top(), task_start);
    let mut tasks = TASKS.lock();
    // The list takes room for the task quota at once, so it never grows
    // later (which would show as heap a task left behind).
    if tasks.capacity() < limits().tasks {
        let more = limits().tasks - tasks.len();
        let _ = tasks.try_reserve_exact(more);
    }
    let frames = task.owned.frames.len();
    if tasks.try_push(task).is_err() {
        drop(tasks);
        free_kstack();
        return Err(SpawnError::OutOfMemory);
    }
    drop(tasks);
    log::info!("task {}: spawned as #{id} (entry {entry:#x}, {frames} frames)", program.name);
    Ok(id)
}

/// First code of every task, on its own kernel stack: enter user mode.
extern "C" fn task_start() -> ! {
    let entry = TASKS.lock().iter().find(|t| t.cur.id == running()).map(|t| t.entry);
    match entry {
        Some(entry) => platform().enter_user(entry, USER_STACK_TOP),
        None => exit_current(UserExit::Killed { reason: "task vanished before it started", pc: 0, addr: 0 }),
    }
}

/// Switches from the running task back to the scheduler; returns when the task is scheduled again.
fn to_scheduler() {
    let save = {
        let mut tasks = TASKS.lock();
        match tasks.iter_mut().find(|t| t.cur.id == running()) {
            Some(t) => &mut t.sp as *mut u64,
            None => return,
        }
    };
    let load = *SCHEDULER_SP.lock();
    // A task may switch away inside a syscall (a sleep): the scheduler and
    // other tasks run outside it; it is back in it when it returns here.
    let in_syscall = crate::fail_nth::current_scope();
    crate::fail_nth::syscall_scope(None);
    // SAFETY: `save` is the running task's `sp` field in its box (stable while the task exists; exited tasks are only reaped by the scheduler after this switch); `load` is the scheduler's stack pointer saved by `switch_to`.
    unsafe { platform().context_switch(save, load) };
    crate::fail_nth::syscall_scope(in_syscall);
}

/// Gives up the CPU (the task stays ready) if another task can run.
pub fn yield_current() {
    let me = running();
    let someone_else = me != 0
        && TASKS
            .lock()
            .iter()
            .any(|t| t.cur.id != me && matches!(t.state, State::Ready | State::Sleeping(_) | State::WaitIrq(..)));
    if someone_else {
        to_scheduler();
    }
}

/// Called by the platform on a timer interrupt taken in user mode: preempts
/// the running task once its quantum is used up.
pub fn preempt() {
    let now = platform().timer_ticks();
    if running() != 0 && now.saturating_sub(SLICE_START.load(core::sync::atomic::Ordering::Relaxed)) >= QUANTUM_TICKS {
        yield_current();
    }
}

/// Ends the running task (from `exit` or a fatal fault); never returns.
pub fn exit_current(exit: UserExit) -> ! {
    if let Some(t) = TASKS.lock().iter_mut().find(|t| t.cur.id == running()) {
        t.state = State::Exited(exit);
    }
    to_scheduler();
    // The scheduler never switches back to an exited task.
    loop {
        core::hint::spin_loop();
    }
}

/// Runs `task` until it yields, sleeps, is preempted or exits.
fn switch_to(index: usize) {
    let (root, top, load, id) = {
        let mut tasks = TASKS.lock();
        let t = &mut tasks[index];
        t.state = State::Running;
        (t.cur.root, t.kstack_top(), t.sp, t.cur.id)
    };
    let p = platform();
    p.disable_interrupts();
    SWITCHES.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    RUNNING_KSTACK_TOP.store(top, core::sync::atomic::Ordering::Relaxed);
    RUNNING.store(id, core::sync::atomic::Ordering::Relaxed);
    SLICE_START.store(p.timer_ticks(), core::sync::atomic::Ordering::Relaxed);
    p.activate_task(root, top);
    let save = {
        let mut guard = SCHEDULER_SP.lock();
        &mut *guard as *mut u64
    };
    // SAFETY: `save` points into the SCHEDULER_SP static; `load` is the task's saved stack pointer (from `init_task_stack` or its last switch out), on a kernel stack the task owns until it is reaped.
    unsafe { p.context_switch(save, load) };
    p.activate_kernel();
    RUNNING.store(0, core::sync::atomic::Ordering::Relaxed);
    p.enable_interrupts();
    let mut tasks = TASKS.lock();
    if let Some(t) = tasks.iter_mut().find(|t| t.cur.id == id) {
        if t.state == State::Running {
            t.state = State::Ready;
        }
    }
}

/// Removes an exited task and frees everything it held.
fn reap(id: u64) -> Option<UserExit> {
    let task = {
        let mut tasks = TASKS.lock();
        let i = tasks.iter().position(|t| t.cur.id == id)?;
        if !matches!(tasks[i].state, State::Exited(_)) {
            return None;
        }
        tasks.remove(i)
    };
    let mut task = task;
    release(&mut task.cur);
    let State::Exited(exit) = task.state.clone() else { return None };
    match &exit {
        UserExit::Exited(code) => log::info!("task {}: exited with status {code}", task.cur.name),
        UserExit::Killed { reason, pc, addr } => {
            log::warn!("task {}: killed: {reason} at pc {pc:#x} (address {addr:#x})", task.cur.name)
        }
    }
    for i in 0..KERNEL_STACK_PAGES as u64 {
        let _ = mm::free_frame(task.kstack + i * FRAME_SIZE);
    }
    drop(task); // frees the address space (Owned)
    Some(exit)
}

/// Round-robin scheduling until every task in `ids` has exited; returns their
/// exits in order. Other tasks run meanwhile (and stay if still alive).
pub fn run_until(ids: &[u64]) -> Vec<UserExit> {
    let mut exits: Vec<Option<UserExit>> = alloc::vec![None; ids.len()];
    let mut next = 0usize;
    loop {
        // Reap whatever exited.
        let exited: Vec<u64> =
            TASKS.lock().iter().filter(|t| matches!(t.state, State::Exited(_))).map(|t| t.cur.id).collect();
        for id in exited {
            if let Some(e) = reap(id) {
                if let Some(i) = ids.iter().position(|&x| x == id) {
                    exits[i] = Some(e);
                }
            }
        }
        if exits.iter().all(Option::is_some) {
            return exits.into_iter().flatten().collect();
        }
        // Wake sleepers, pick the next ready task after the last one run.
        let now = platform().uptime_ns();
        let pick = {
            let mut tasks = TASKS.lock();
            for t in tasks.iter_mut() {
                let wake = match t.state {
                    State::Sleeping(until) => until <= now,
                    State::WaitIrq(slot, until) => {
                        until <= now || IRQ_PENDING[slot].load(core::sync::atomic::Ordering::Relaxed) > 0
                    }
                    _ => false,
                };
                if wake {
                    t.state = State::Ready;
                }
            }
            let n = tasks.len();
            (0..n).map(|k| (next + k) % n).find(|&i| tasks[i].state == State::Ready)
        };
        match pick {
            Some(i) => {
                switch_to(i);
                next = i + 1;
            }
            None if TASKS.lock().iter().any(|t| matches!(t.state, State::Sleeping(_) | State::WaitIrq(..))) => {
                platform().wait_for_interrupt();
            }
            None => {
                // The tasks waited for are gone without an exit record (cannot happen).
                return exits
                    .into_iter()
                    .map(|e| e.unwrap_or(UserExit::Killed { reason: "lost", pc: 0, addr: 0 }))
                    .collect();
            }
        }
    }
}

/// Loads and runs a packed program to completion (other tasks run meanwhile).
pub fn run(name: &str) -> Result<UserExit, SpawnError> {
    let id = spawn(name)?;
    Ok(run_until(&[id]).remove(0))
}

/// `(bottom, top)` of the running task's kernel stack, for backtraces.
pub fn current_kernel_stack() -> Option<(usize, usize)> {
    // Read without the task list's lock: a panic inside a syscall often
    // happens while it is held.
    let top = RUNNING_KSTACK_TOP.load(core::sync::atomic::Ordering::Relaxed) as usize;
    (running() != 0 && top != 0).then(|| (top - KERNEL_STACK_PAGES * FRAME_SIZE as usize, top))
}

fn current_root() -> Option<u64> {
    TASKS.lock().iter().find(|t| t.cur.id == running()).map(|t| t.cur.root)
}

/// Frees what a finished task held, in the order that stops DMA first
/// (docs/isolation.md): every claimed function's Bus Master bit off; every
/// function blocked at its unit with the unit's caches flushed and the flush
/// completed (bound ones through the IOAS layer, which then unpins; a block
/// that fails quarantines the task's pinned pages instead); only then the
/// task's own frames are freed and the claims dropped.
fn release(cur: &mut Current) {
    // Allocates nothing (a task's end must not depend on the heap): the
    // claims are walked in place, under their lock (the steps below take
    // no lock the claim syscall holds after it).
    let id = cur.id;
    let claims = CLAIMS.lock();
    let mine = || claims.iter().filter(|(_, owner)| *owner == id).map(|&(bdf, _)| bdf);
    for bdf in mine() {
        if let Some(access) = crate::pci::access(bdf) {
            pci::set_bus_master(access, bdf, false);
        }
    }
    // The decode bits as the claim found them (Bus Master stays off).
    let mut saved = CLAIM_COMMAND.lock();
    for bdf in mine() {
        if let (Some(&(_, cmd)), Some(access)) = (saved.iter().find(|(b, _)| *b == bdf), crate::pci::access(bdf)) {
            access.write16(bdf, pci::reg::COMMAND, cmd & !pci::reg::CMD_BUS_MASTER);
        }
    }
    saved.retain(|(b, _)| !mine().any(|m| m == *b));
    drop(saved);
    crate::ioas::close(&mut cur.iommufd, cur.root);
    let mut unblocked = 0;
    for bdf in mine() {
        if let Err(e) = crate::iommu::block(bdf) {
            log::error!("task {}: {bdf} could not be blocked at its IOMMU: {e}", cur.name);
            unblocked += 1;
        }
    }
    if unblocked > 0 {
        // A device of the task may still reach its memory: keep every frame.
        crate::ioas::quarantine(cur.anon.iter().map(|&(_, pa)| pa));
    } else {
        for &(_, pa) in &cur.anon {
            crate::ioas::free_user_frame(pa);
        }
    }
    for bdf in mine() {
        log::info!("task {}: released {bdf} (bus master off, blocked)", cur.name);
    }
    drop(claims);
    CLAIMS.lock().retain(|(_, owner)| *owner != id);
    let mut owners = IRQ_OWNER.lock();
    for (slot, owner) in owners.iter_mut().enumerate() {
        if let Some((task, bdf)) = *owner {
            if task == cur.id {
                if let (Ok(dev), Some(access)) = (device(bdf), crate::pci::access(bdf)) {
                    platform().unroute_device_irq(&dev.function, access, slot as u32);
                }
                *owner = None;
                IRQ_PENDING[slot].store(0, core::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Copies `len` bytes from the current task's memory, checking every page is mapped for it.
pub(crate) fn copy_from_user(va: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let root = current_root().ok_or(Errno::EFAULT)?;
    va.checked_add(len as u64).filter(|&end| end <= USER_STACK_TOP).ok_or(Errno::EFAULT)?;
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| Errno::ENOMEM)?;
    let mut at = va;
    while out.len() < len {
        let (pa, perms) = platform().user_translate(root, at & !(FRAME_SIZE - 1)).ok_or(Errno::EFAULT)?;
        if perms.device {
            return Err(Errno::EFAULT);
        }
        let offset = at % FRAME_SIZE;
        let n = ((FRAME_SIZE - offset) as usize).min(len - out.len());
        let src = (mm::phys_to_virt(pa) + offset) as *const u8;
        // SAFETY: the page is mapped in the task's address space to frame `pa` (checked above), and the frame is reachable through the direct map.
        out.extend_from_slice(unsafe { core::slice::from_raw_parts(src, n) });
        at += n as u64;
    }
    Ok(out)
}

/// Copies `bytes` into the current task's memory at `va`, checking every page is mapped writable.
pub(crate) fn copy_to_user(va: u64, bytes: &[u8]) -> Result<(), Errno> {
    let root = current_root().ok_or(Errno::EFAULT)?;
    va.checked_add(bytes.len() as u64).filter(|&end| end <= USER_STACK_TOP).ok_or(Errno::EFAULT)?;
    // Check every page first, so a bad pointer writes nothing.
    let mut page = va & !(FRAME_SIZE - 1);
    while page < va + bytes.len() as u64 {
        match platform().user_translate(root, page) {
            Some((_, p)) if p.write && !p.device => {}
            _ => return Err(Errno::EFAULT),
        }
        page += FRAME_SIZE;
    }
    let mut done = 0;
    while done < bytes.len() {
        let at = va + done as u64;
        let (pa, _) = platform().user_translate(root, at & !(FRAME_SIZE - 1)).ok_or(Errno::EFAULT)?;
        let offset = at % FRAME_SIZE;
        let n = ((FRAME_SIZE - offset) as usize).min(bytes.len() - done);
        let dst = (mm::phys_to_virt(pa) + offset) as *mut u8;
        // SAFETY: the page is mapped writable for the task to frame `pa` (checked above), reached through the direct map; `n` stays within the page.
        unsafe { core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), dst, n) };
        done += n;
    }
    Ok(())
}

/// Runs `f` on the running task's IOAS objects, with its page-table root.
/// The running task's IOMMU table frames (see `Current::table_frames`).
pub(crate) fn current_table_frames() -> Result<i64, Errno> {
    with_current(|cur| Ok(cur.table_frames))
}

/// Adds `delta` to the running task's IOMMU table frames.
pub(crate) fn charge_table_frames(delta: i64) {
    let _ = with_current(|cur| {
        cur.table_frames = cur.table_frames.saturating_add(delta);
        Ok(())
    });
}

pub(crate) fn with_current_iommufd<R>(
    f: impl FnOnce(&mut iommufd::Iommufd, u64) -> Result<R, Errno>,
) -> Result<R, Errno> {
    with_current(|cur| f(&mut cur.iommufd, cur.root))
}

fn with_current<R>(f: impl FnOnce(&mut Current) -> Result<R, Errno>) -> Result<R, Errno> {
    let mut tasks = TASKS.lock();
    let t = tasks.iter_mut().find(|t| t.cur.id == running()).ok_or(Errno::EPERM)?;
    f(&mut t.cur)
}

fn sys_mem_map(addr: u64, len: u64, prot: u64) -> SysResult {
    if len == 0
        || !len.is_multiple_of(FRAME_SIZE)
        || !addr.is_multiple_of(FRAME_SIZE)
        || prot & !(abi::PROT_READ | abi::PROT_WRITE) != 0
    {
        return Err(Errno::EINVAL);
    }
    if len / FRAME_SIZE > MAX_MAP_PAGES {
        return Err(Errno::ENOMEM);
    }
    with_current(|cur| {
        if (cur.anon.len() as u64).saturating_add(len / FRAME_SIZE) > limits().mem_pages {
            return Err(Errno::EDQUOT);
        }
        let p = platform();
        // Kernel-chosen addresses of 2 MiB or more start 2 MiB aligned, so
        // the 2 MiB-aligned runs of frames below can become large DMA leaves.
        const RUN: u64 = 512 * FRAME_SIZE;
        let va = if addr != 0 {
            addr
        } else if len >= RUN {
            cur.next_va.next_multiple_of(RUN)
        } else {
            cur.next_va
        };
        let end = va.checked_add(len).ok_or(Errno::EINVAL)?;
        if va < USER_MIN || end > MMAP_END {
            return Err(Errno::EINVAL);
        }
        if (va..end).step_by(FRAME_SIZE as usize).any(|pg| p.user_translate(cur.root, pg).is_some()) {
            return Err(Errno::EADDRINUSE);
        }
        let perms = UserPerms { write: prot & abi::PROT_WRITE != 0, exec: false, device: false };
        // Room for every page's record first (the quota above bounds it).
        cur.anon.try_reserve((len / FRAME_SIZE) as usize).map_err(|_| Errno::ENOMEM)?;
        // Physically contiguous, 2 MiB-aligned frames for each whole 2 MiB
        // of the range that is 2 MiB aligned (one frame at a time otherwise).
        let mut run: Option<(u64, u64)> = None;
        for pg in (va..end).step_by(FRAME_SIZE as usize) {
            if pg % RUN == 0 && end - pg >= RUN {
                run = mm::alloc_frames(512, 512).map(|pa| (pg, pa));
            }
            let frame = match run {
                Some((start, pa)) if pg < start + RUN => Some(pa + (pg - start)),
                _ => mm::alloc_frame(),
            };
            let mapped = frame.ok_or(Errno::ENOMEM).and_then(|pa| match p.user_map(cur.root, pg, pa, perms) {
                Ok(()) => Ok(pa),
                Err(_) => {
                    let _ = mm::free_frame(pa);
                    Err(Errno::ENOMEM)
                }
            });
            match mapped {
                Ok(pa) => cur.anon.push((pg, pa)),
                Err(e) => {
                    // Roll back what this call mapped, and the frames of the
                    // current run that no page took yet.
                    for undo in (va..pg).step_by(FRAME_SIZE as usize) {
                        if let Some(i) = cur.anon.iter().position(|&(v, _)| v == undo) {
                            let (_, pa) = cur.anon.swap_remove(i);
                            let _ = p.user_unmap(cur.root, undo);
                            let _ = mm::free_frame(pa);
                        }
                    }
                    if let Some((start, pa)) = run.filter(|&(start, _)| pg >= start && pg < start + RUN) {
                        for off in (pg - start + FRAME_SIZE..RUN).step_by(FRAME_SIZE as usize) {
                            let _ = mm::free_frame(pa + off);
                        }
                    }
                    // And the page tables this call added.
                    p.user_prune(cur.root, va, end);
                    return Err(e);
                }
            }
        }
        if addr == 0 {
            cur.next_va = end + FRAME_SIZE; // a guard page between mappings
        }
        Ok(va)
    })
}

fn sys_mem_unmap(addr: u64, len: u64) -> SysResult {
    if len == 0 || !len.is_multiple_of(FRAME_SIZE) || !addr.is_multiple_of(FRAME_SIZE) {
        return Err(Errno::EINVAL);
    }
    let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
    with_current(|cur| {
        // Every page must be an anonymous page of this task: nothing is
        // unmapped otherwise. More pages than the task has cannot all be
        // its own (and are never collected: a huge length costs nothing).
        if len / FRAME_SIZE > cur.anon.len() as u64 {
            return Err(Errno::EINVAL);
        }
        let pages = (addr..end).step_by(FRAME_SIZE as usize);
        if !pages.clone().all(|pg| cur.anon.iter().any(|&(v, _)| v == pg)) {
            return Err(Errno::EINVAL);
        }
        for pg in pages {
            if let Some(i) = cur.anon.iter().position(|&(v, _)| v == pg) {
                let (_, pa) = cur.anon.swap_remove(i);
                let _ = platform().user_unmap(cur.root, pg);
                // A page still DMA-mapped stays allocated until its last unmap.
                crate::ioas::free_user_frame(pa);
            }
        }
        platform().user_prune(cur.root, addr, end);
        Ok(0)
    })
}

pub(crate) fn decode_bdf(raw: u64) -> Result<pci::Bdf, Errno> {
    if raw >> 32 != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(pci::Bdf::from_rid((raw >> 16) as u16, raw as u16))
}

fn device(bdf: pci::Bdf) -> Result<&'static crate::pci::Device, Errno> {
    crate::pci::devices().iter().find(|d| d.function.bdf == bdf).ok_or(Errno::ENOENT)
}

fn sys_device_list(buf: u64, len: u64) -> SysResult {
    let devices = crate::pci::devices();
    let size = core::mem::size_of::<abi::DeviceInfo>();
    let room = (len as usize) / size;
    let claims = CLAIMS.lock();
    let topology = crate::pci::topology();
    let mut out = Vec::new();
    out.try_reserve_exact(devices.len().min(room) * size).map_err(|_| Errno::ENOMEM)?;
    for d in devices.iter().take(room) {
        let f = &d.function;
        let mut info = abi::DeviceInfo {
            size: size as u32,
            flags: 0,
            bdf: abi::bdf(f.bdf.segment, f.bdf.bus, f.bdf.dev, f.bdf.func),
            vendor: f.vendor,
            device: f.device,
            class: f.class,
            bars: Default::default(),
            group: crate::iommu::group_id(f.bdf),
            reserved: 0,
        };
        if claims.iter().any(|(b, _)| *b == f.bdf) || crate::pci::kernel_owned(f.bdf) {
            info.flags |= abi::DEVICE_CLAIMED;
        }
        if topology.and_then(|t| t.translate_pci(f.bdf.segment, f.bdf.rid())).is_some() {
            info.flags |= abi::DEVICE_BEHIND_IOMMU;
        }
        let confined = crate::iommu::interrupts_confined(f.bdf);
        if confined {
            info.flags |= abi::DEVICE_INTERRUPTS_CONFINED;
        }
        if crate::iommu::protected(f.bdf) && (confined || crate::iommu::unsafe_interrupts_allowed()) {
            info.flags |= abi::DEVICE_DMA_ALLOWED;
        }
        for b in &f.bars {
            let kind = match b.kind {
                pci::BarKind::Mem32 => abi::bar_kind::MEM32,
                pci::BarKind::Mem64 => abi::bar_kind::MEM64,
                pci::BarKind::Io => abi::bar_kind::IO,
            };
            info.bars[usize::from(b.index).min(5)] = abi::BarInfo { base: b.base, size: b.size, kind, reserved: 0 };
        }
        out.extend_from_slice(&info.to_bytes());
    }
    if !out.is_empty() {
        copy_to_user(buf, &out)?;
    }
    Ok(devices.len() as u64)
}

/// Claims `bdf` and every other member of its IOMMU group for the calling
/// task: bridges, host and LPC bridges are `EPERM`, and so is a group holding
/// a function a task may not claim (bridges and ports never join groups,
/// `iommu::groups`; an LPC bridge or the IOMMU's function can); a group with a
/// member the kernel drives or another task holds is `EBUSY`. Every member is
/// blocked at its unit before the claim is granted (a function the boot
/// policy left in an identity or direct-map domain leaves it).
fn sys_device_claim(raw: u64) -> SysResult {
    let bdf = decode_bdf(raw)?;
    let dev = device(bdf)?;
    if let Err(why) = pci::policy::claimable(&dev.function) {
        log::warn!("task {}: claim of {bdf} refused: {why}", current_name());
        return Err(Errno::EPERM);
    }
    let id = with_current(|cur| Ok(cur.id))?;
    let group = crate::iommu::group_of(bdf).map_err(|_| Errno::ENOMEM)?;
    let mut claims = CLAIMS.lock();
    // Room first: once a member is blocked below, nothing may fail.
    claims.try_reserve(group.len()).map_err(|_| Errno::ENOMEM)?;
    CLAIM_COMMAND.lock().try_reserve(group.len()).map_err(|_| Errno::ENOMEM)?;
    if claims.iter().any(|&(b, owner)| b == bdf && owner == id) {
        return Err(Errno::EBUSY);
    }
    for &member in &group {
        // Bridges and ports never join a group (`iommu::groups`); a member a
        // task may not claim (an ISA / LPC bridge, the IOMMU's function) may
        // issue DMA of its own: the group is not the task's to take.
        if let Some(why) = device(member).ok().and_then(|d| pci::policy::claimable(&d.function).err()) {
            log::warn!("task {}: claim of {bdf} refused: {member} of its IOMMU group is {why}", current_name());
            return Err(Errno::EPERM);
        }
        let theirs = claims.iter().any(|&(b, owner)| b == member && owner != id);
        if theirs || crate::pci::kernel_owned(member) {
            if member != bdf {
                log::warn!("task {}: claim of {bdf} refused: {member} of its IOMMU group is taken", current_name());
            }
            return Err(Errno::EBUSY);
        }
    }
    for &member in &group {
        crate::iommu::block(member).map_err(|e| {
            log::error!("task {}: claim of {bdf}: {member} cannot be blocked: {e}", current_name());
            Errno::EIO
        })?;
    }
    for member in group {
        if !claims.iter().any(|&(b, _)| b == member) {
            if let Some(access) = crate::pci::access(member) {
                let mut saved = CLAIM_COMMAND.lock();
                saved.retain(|(b, _)| *b != member);
                saved.push((member, access.read16(member, pci::reg::COMMAND)));
            }
            if member != bdf {
                log::info!("task {}: {member} claimed with {bdf} (same IOMMU group)", current_name());
            }
            claims.push((member, id));
        }
    }
    Ok(0)
}

/// As [`claimed_by_current`], but a function another task holds (or the
/// kernel drives) is `EBUSY` rather than `EPERM`: what a bind answers, as
/// for a claim of a taken group.
pub(crate) fn owned_by_current(bdf: pci::Bdf) -> Result<&'static crate::pci::Device, Errno> {
    claimed_by_current(bdf).map_err(|e| {
        let id = with_current(|cur| Ok(cur.id)).unwrap_or(0);
        let taken = CLAIMS.lock().iter().any(|&(b, owner)| b == bdf && owner != id) || crate::pci::kernel_owned(bdf);
        if e == Errno::EPERM && taken {
            Errno::EBUSY
        } else {
            e
        }
    })
}

pub(crate) fn claimed_by_current(bdf: pci::Bdf) -> Result<&'static crate::pci::Device, Errno> {
    let dev = device(bdf)?;
    let id = with_current(|cur| Ok(cur.id))?;
    if CLAIMS.lock().iter().any(|&(b, owner)| b == bdf && owner == id) {
        Ok(dev)
    } else {
        Err(Errno::EPERM)
    }
}

fn sys_device_map_bar(raw: u64, index: u64) -> SysResult {
    let dev = claimed_by_current(decode_bdf(raw)?)?;
    if index > 5 {
        return Err(Errno::EINVAL);
    }
    let bar = dev
        .function
        .bars
        .iter()
        .find(|b| u64::from(b.index) == index && b.kind != pci::BarKind::Io && b.base != 0)
        .copied()
        .ok_or(Errno::ENOENT)?;
    let all = crate::pci::functions();
    if pci::assign::bar_shares_page(all, dev.function.bdf, bar.index) {
        log::warn!(
            "task {}: BAR{} of {} shares a 4 KiB page with another function's registers: not mapped",
            current_name(),
            bar.index,
            dev.function.bdf
        );
        return Err(Errno::EPERM);
    }
    let pa = crate::pci::bar_cpu_address(dev, &bar);
    let span = bar.size.max(FRAME_SIZE).next_multiple_of(FRAME_SIZE);
    // The MSI-X table and PBA belong to the kernel: their pages stay holes.
    let msix = pci::policy::msix_pages(&dev.function, bar.index);
    if !msix.is_empty() {
        log::info!(
            "task {}: BAR{} of {}: MSI-X pages {:x?} left unmapped (the kernel owns the table)",
            current_name(),
            bar.index,
            dev.function.bdf,
            msix.as_slice()
        );
    }
    with_current(|cur| {
        let va = cur.next_va;
        if va + span > MMAP_END {
            return Err(Errno::ENOMEM);
        }
        let perms = UserPerms { write: true, exec: false, device: true };
        for off in (0..span).step_by(FRAME_SIZE as usize) {
            if msix.contains(off) {
                continue;
            }
            platform()
                .user_map(cur.root, va + off, (pa & !(FRAME_SIZE - 1)) + off, perms)
                .map_err(|_| Errno::ENOMEM)?;
        }
        cur.next_va = va + span + FRAME_SIZE;
        Ok(va + (pa % FRAME_SIZE))
    })
}

fn config_args(raw: u64, offset: u64, width: u64) -> Result<(&'static crate::pci::Device, u16, u16), Errno> {
    let dev = claimed_by_current(decode_bdf(raw)?)?;
    if !matches!(width, 1 | 2 | 4)
        || !offset.is_multiple_of(width)
        || offset.checked_add(width).is_none_or(|e| e > 4096)
    {
        return Err(Errno::EINVAL);
    }
    Ok((dev, offset as u16, width as u16))
}

fn sys_config_read(raw: u64, offset: u64, width: u64) -> SysResult {
    let (dev, off, w) = config_args(raw, offset, width)?;
    let access = crate::pci::access(dev.function.bdf).ok_or(Errno::EIO)?;
    let v = access.read32(dev.function.bdf, off & !3) >> ((off & 3) * 8);
    Ok(u64::from(match w {
        1 => v & 0xFF,
        2 => v & 0xFFFF,
        _ => v,
    }))
}

/// Writes a claimed function's configuration space through the per-field
/// policy (`pci::policy::check_write`): the command register's I/O, memory
/// and Bus Master bits and the device-specific bytes are writable; BARs, ROM,
/// capability pointers and structures (MSI, MSI-X, power management, PCIe),
/// extended configuration space and every bridge register are `EPERM`. Bus
/// Master can be turned on only for a function a registered IOMMU translates.
fn sys_config_write(raw: u64, offset: u64, width: u64, value: u64) -> SysResult {
    let (dev, off, w) = config_args(raw, offset, width)?;
    if value >> (8 * w) != 0 {
        return Err(Errno::EINVAL);
    }
    let access = crate::pci::access(dev.function.bdf).ok_or(Errno::EIO)?;
    let bdf = dev.function.bdf;
    let command = access.read16(bdf, pci::reg::COMMAND);
    match pci::policy::check_write(&dev.function, off, w, value as u32, command) {
        Err(why) => {
            log::warn!("task {}: config write {bdf} +{off:#x}/{w} refused: {why}", current_name());
            return Err(Errno::EPERM);
        }
        Ok(pci::policy::WriteKind::Command { command: new })
            if new & pci::reg::CMD_BUS_MASTER != 0
                && command & pci::reg::CMD_BUS_MASTER == 0
                && !crate::iommu::protected(bdf) =>
        {
            log::warn!("task {}: {bdf}: Bus Master refused: no IOMMU translates this function", current_name());
            return Err(Errno::EPERM);
        }
        Ok(pci::policy::WriteKind::Command { command: new })
            if new & pci::reg::CMD_BUS_MASTER != 0
                && command & pci::reg::CMD_BUS_MASTER == 0
                && !crate::iommu::interrupts_confined(bdf)
                && !crate::iommu::unsafe_interrupts_allowed() =>
        {
            log::warn!(
                "task {}: {bdf}: Bus Master refused: its IOMMU does not remap interrupts, so its DMA could send any \
                 interrupt (boot with iommu.unsafe_interrupts=allow to permit it)",
                current_name()
            );
            return Err(Errno::EPERM);
        }
        Ok(kind) => {
            if w == 1 {
                // A byte goes out as its 16-bit word, never as a dword
                // read-modify-write that would write the neighbouring
                // registers back (status is write-1-to-clear; BIST starts a
                // self test). Status bytes carry only the bits asked for.
                let (word, shift) = (off & !1, (off & 1) * 8);
                let merged = if kind == pci::policy::WriteKind::StatusClear {
                    (value as u16 & 0xFF) << shift
                } else {
                    (access.read16(bdf, word) & !(0xFF << shift)) | ((value as u16 & 0xFF) << shift)
                };
                access.write16(bdf, word, merged);
                return Ok(0);
            }
        }
    }
    match w {
        2 => access.write16(bdf, off, value as u16),
        _ => access.write32(bdf, off, value as u32),
    }
    Ok(0)
}

fn sys_task_spawn(ptr: u64, len: u64) -> SysResult {
    if len > 64 {
        return Err(Errno::E2BIG);
    }
    let bytes = copy_from_user(ptr, len as usize)?;
    let name = core::str::from_utf8(&bytes).map_err(|_| Errno::EINVAL)?;
    let me = running();
    {
        let tasks = TASKS.lock();
        if tasks.len() >= limits().tasks {
            log::warn!("task {}: spawn of {name} refused: {} tasks alive (quota.tasks)", current_name(), tasks.len());
            return Err(Errno::EAGAIN);
        }
        if tasks.iter().filter(|t| t.cur.parent == me).count() >= limits().children {
            return Err(Errno::EAGAIN);
        }
    }
    match spawn(name) {
        Ok(id) => {
            if let Some(t) = TASKS.lock().iter_mut().find(|t| t.cur.id == id) {
                t.cur.parent = me;
            }
            Ok(id)
        }
        Err(SpawnError::NotFound) => Err(Errno::ENOENT),
        Err(SpawnError::OutOfMemory | SpawnError::Map(_)) => Err(Errno::ENOMEM),
        Err(_) => Err(Errno::EINVAL),
    }
}

fn irq_slot_of_current(bdf: pci::Bdf) -> Result<usize, Errno> {
    let id = running();
    IRQ_OWNER.lock().iter().position(|o| *o == Some((id, bdf))).ok_or(Errno::EINVAL)
}

fn sys_irq_enable(raw: u64) -> SysResult {
    let dev = claimed_by_current(decode_bdf(raw)?)?;
    let bdf = dev.function.bdf;
    if let Ok(slot) = irq_slot_of_current(bdf) {
        return Ok(slot as u64);
    }
    let slot = IRQ_OWNER.lock().iter().position(Option::is_none).ok_or(Errno::EBUSY)?;
    let access = crate::pci::access(bdf).ok_or(Errno::EIO)?;
    IRQ_PENDING[slot].store(0, core::sync::atomic::Ordering::Relaxed);
    platform().route_device_irq(&dev.function, access, slot as u32).map_err(|why| {
        log::warn!("task {}: cannot route {bdf}'s interrupt: {why}", current_name());
        Errno::EOPNOTSUPP
    })?;
    IRQ_OWNER.lock()[slot] = Some((running(), bdf));
    Ok(slot as u64)
}

fn sys_irq_wait(raw: u64, timeout_ns: u64) -> SysResult {
    let slot = irq_slot_of_current(decode_bdf(raw)?)?;
    let take = || IRQ_PENDING[slot].swap(0, core::sync::atomic::Ordering::Relaxed);
    let mut n = take();
    if n == 0 && timeout_ns > 0 {
        let deadline = platform().uptime_ns().saturating_add(timeout_ns);
        if let Some(t) = TASKS.lock().iter_mut().find(|t| t.cur.id == running()) {
            t.state = State::WaitIrq(slot, deadline);
        }
        to_scheduler();
        n = take();
    }
    if n == 0 {
        return Err(Errno::ETIMEDOUT);
    }
    platform().unmask_device_irq(slot as u32);
    Ok(n)
}

/// What the platform does after a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallOutcome {
    /// Return this value to the task.
    Return(u64),
    /// End the task with this status.
    Exit(i64),
}

fn sys_log(ptr: u64, len: u64) -> SysResult {
    if len as usize > abi::LOG_MAX {
        return Err(Errno::E2BIG);
    }
    let bytes = copy_from_user(ptr, len as usize)?;
    let text = core::str::from_utf8(&bytes).map_err(|_| Errno::EINVAL)?;
    crate::console::print(format_args!("{text}"));
    Ok(len)
}

fn sys_sleep(ns: u64) -> SysResult {
    sleep_current(ns);
    Ok(0)
}

/// Puts the running task to sleep for `ns` (other tasks run meanwhile).
pub(crate) fn sleep_current(ns: u64) {
    let deadline = platform().uptime_ns().saturating_add(ns);
    if let Some(t) = TASKS.lock().iter_mut().find(|t| t.cur.id == running()) {
        t.state = State::Sleeping(deadline);
    }
    to_scheduler();
}

/// Runs `f` with interrupts on (syscalls start with them off) and turns them off again.
fn with_interrupts<R>(f: impl FnOnce() -> R) -> R {
    platform().enable_interrupts();
    let r = f();
    platform().disable_interrupts();
    r
}

/// Serves one syscall of the current task.
pub fn syscall(number: u64, args: [u64; 5]) -> SyscallOutcome {
    crate::fail_nth::syscall_scope(Some(running()));
    let outcome = serve(number, args);
    crate::fail_nth::syscall_scope(None);
    outcome
}

fn serve(number: u64, args: [u64; 5]) -> SyscallOutcome {
    // Calls that allocate on the heap start only with headroom left (ENOMEM otherwise).
    let allocates = matches!(
        Sysno::from_raw(number),
        Some(Sysno::MemMap | Sysno::DeviceList | Sysno::TaskSpawn | Sysno::Iommufd | Sysno::DeviceIrqEnable)
    );
    if allocates {
        if let Err(e) = crate::heap::ensure_headroom() {
            return SyscallOutcome::Return(abi::encode(Err(e)));
        }
    }
    let result = match Sysno::from_raw(number) {
        Some(Sysno::Exit) => return SyscallOutcome::Exit(args[0] as i64),
        Some(Sysno::Log) => sys_log(args[0], args[1]),
        Some(Sysno::Yield) => {
            yield_current();
            Ok(0)
        }
        Some(Sysno::Clock) => Ok(platform().uptime_ns()),
        Some(Sysno::Sleep) => sys_sleep(args[0]),
        // Long (zeroing 128 MiB at the memory quota): with interrupts on, as
        // iommufd ops (see `ioas::syscall` for why that is safe).
        Some(Sysno::MemMap) => with_interrupts(|| sys_mem_map(args[0], args[1], args[2])),
        Some(Sysno::MemUnmap) => with_interrupts(|| sys_mem_unmap(args[0], args[1])),
        Some(Sysno::DeviceList) => sys_device_list(args[0], args[1]),
        Some(Sysno::DeviceClaim) => sys_device_claim(args[0]),
        Some(Sysno::DeviceMapBar) => sys_device_map_bar(args[0], args[1]),
        Some(Sysno::DeviceConfigRead) => sys_config_read(args[0], args[1], args[2]),
        Some(Sysno::DeviceConfigWrite) => sys_config_write(args[0], args[1], args[2], args[3]),
        Some(Sysno::TaskSpawn) => sys_task_spawn(args[0], args[1]),
        Some(Sysno::DeviceIrqEnable) => sys_irq_enable(args[0]),
        Some(Sysno::DeviceIrqWait) => sys_irq_wait(args[0], args[1]),
        Some(Sysno::Iommufd) => crate::ioas::syscall(args[0], args[1]),
        Some(Sysno::TestCanary) => sys_test_canary(args[0], args[1], args[2]),
        None => {
            let name = TASKS.lock().iter().find(|t| t.cur.id == running()).map_or("?", |t| t.cur.name);
            log::debug!("task {name}: unknown syscall {number}");
            Err(Errno::ENOSYS)
        }
    };
    SyscallOutcome::Return(abi::encode(result))
}

/// The frame isolation tests aim DMA at, filled with [`canary_byte`].
static CANARY: spin::Once<Option<u64>> = spin::Once::new();

fn canary_byte(i: u64) -> u8 {
    (i as u8).wrapping_mul(37) ^ 0xA5
}

/// Slots two test tasks exchange words through (`test_canary` ops 2 and 3):
/// the isolation tests' victim task publishes what the attacker aims at.
static TEST_MAILBOX: [core::sync::atomic::AtomicU64; 8] = [const { core::sync::atomic::AtomicU64::new(0) }; 8];

/// `test_canary(op, a, b)`: only in a test boot (`ktest=` on the command line).
fn sys_test_canary(op: u64, a: u64, b: u64) -> SysResult {
    use core::sync::atomic::Ordering;
    if crate::cmdline_value("ktest").is_none() {
        return Err(Errno::EPERM);
    }
    match op {
        2 => return TEST_MAILBOX.get(a as usize).map(|s| s.load(Ordering::SeqCst)).ok_or(Errno::EINVAL),
        3 => {
            let slot = TEST_MAILBOX.get(a as usize).ok_or(Errno::EINVAL)?;
            slot.store(b, Ordering::SeqCst);
            return Ok(0);
        }
        5 => {
            // Kernel counters a test compares before and after (leak checks).
            return match a {
                0 => Ok(mm::frame_counts().0 as u64),
                1 => Ok(crate::ioas::pinned_frames() as u64),
                2 => Ok(crate::heap::usage().0 as u64),
                3 => Ok(crate::ioas::quarantined_frames() as u64),
                4 => Ok(TASKS.lock().len() as u64),
                5 => with_current(|cur| Ok(cur.iommufd.len() as u64)),
                6 => with_current(|cur| Ok(cur.iommufd.pinned_pages())),
                7 => Ok(crate::iommu::table_frames() as u64),
                8 => with_current(|cur| Ok(cur.table_frames.max(0) as u64)),
                _ => Err(Errno::EINVAL),
            };
        }
        8 => {
            // The syscall fuzzer's parameters from the command line
            // (`fuzz.seed=`, `fuzz.calls=`; decimal or 0x hex): `ENOENT` when absent.
            let key = match a {
                0 => "fuzz.seed",
                1 => "fuzz.calls",
                _ => return Err(Errno::EINVAL),
            };
            let v = crate::cmdline_value(key).ok_or(Errno::ENOENT)?;
            let n = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            // Results are 63-bit: a seed keeps its low 63 bits.
            return n.map(|n| n & (i64::MAX as u64)).map_err(|_| Errno::EINVAL);
        }
        // fail-nth (`crate::fail_nth`): 6 arms the calling task's countdown
        // (the `a`-th injection point from now fails; 0 disarms), 7 disarms and
        // returns the points passed since.
        6 => {
            crate::fail_nth::arm(running(), a);
            return Ok(0);
        }
        7 => return Ok(crate::fail_nth::disarm()),
        4 => {
            let root = current_root().ok_or(Errno::EFAULT)?;
            if a >= USER_STACK_TOP {
                return Err(Errno::EFAULT);
            }
            return match platform().user_translate(root, a & !(FRAME_SIZE - 1)) {
                Some((pa, perms)) if !perms.device => Ok(pa),
                _ => Err(Errno::EFAULT),
            };
        }
        _ => {}
    }
    let pa = CANARY
        .call_once(|| {
            let pa = mm::alloc_frame()?;
            for i in 0..FRAME_SIZE {
                // SAFETY: `pa` is a frame just allocated for the canary (kept forever), in the direct map.
                unsafe { ((mm::phys_to_virt(pa) + i) as *mut u8).write_volatile(canary_byte(i)) };
            }
            Some(pa)
        })
        .ok_or(Errno::ENOMEM)?;
    match op {
        0 => Ok(pa),
        1 => {
            let intact = (0..FRAME_SIZE).all(|i| {
                // SAFETY: `pa` is the canary frame (allocated once, never freed), in the direct map; read-only.
                let b = unsafe { ((mm::phys_to_virt(pa) + i) as *const u8).read_volatile() };
                b == canary_byte(i)
            });
            if intact {
                Ok(0)
            } else {
                log::error!("test canary at {pa:#x} was written: DMA reached kernel memory");
                Err(Errno::EIO)
            }
        }
        _ => Err(Errno::EINVAL),
    }
}

/// Runs every packed program whose name starts with `test-`, for the test suite.
pub fn run_user_tests(filter: &str) -> bool {
    let mut ok = true;
    for p in programs().iter().filter(|p| p.name.starts_with("test-")) {
        // User tests are named `user.<program>.<test>`: a filter selects a program
        // when it names it or is a prefix of `user.`-names.
        let selected = filter.is_empty()
            || filter == "all"
            || filter
                .split(',')
                .any(|f| !f.is_empty() && (p.name.contains(f) || "user.".starts_with(f) || f.starts_with("user.")));
        if !selected {
            continue;
        }
        match run(p.name) {
            Ok(UserExit::Exited(0)) => {}
            Ok(other) => {
                log::error!("user test {}: {other:?}", p.name);
                ok = false;
            }
            Err(e) => {
                log::error!("user test {}: cannot start: {e}", p.name);
                ok = false;
            }
        }
    }
    ok
}

/// Name of the current task, for logs.
pub fn current_name() -> &'static str {
    TASKS.lock().iter().find(|t| t.cur.id == running()).map_or("kernel", |t| t.cur.name)
}

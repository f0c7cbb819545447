//! Tasks and the scheduler: the task list, spawning a packed program into a
//! task, round-robin switching between ready tasks (preempted by the timer
//! while in user mode), sleeping and interrupt waits, and a task's end: its
//! claims, IOAS objects, interrupt slots and memory given back.
//!
//! Every CPU schedules (docs/smp.md): the boot CPU from [`run_until`], the
//! others from [`serve_forever`], all from one task list under one lock
//! (one run queue: tasks are few and every pick is a short scan, while
//! what costs is IOMMU work, which does not run under this lock). A task runs on one CPU
//! at a time; the kernel is never preempted (a switch happens only from user
//! mode, or where a task blocks in a syscall). A task leaving its CPU does
//! not change its own state: it records the state it leaves for
//! (`Task::leave`) and the scheduler of that CPU applies it once the
//! switch is complete, so no other CPU can pick a task whose registers are
//! still being saved.

use crate::frames::FRAME_SIZE;
use crate::limits::limits;
use crate::loader::{Owned, SpawnError};
use crate::platform::UserExit;
use crate::user_layout::{MMAP_BASE, USER_STACK_TOP};
use crate::{cpu, mm};
use abi::Errno;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;
use fallible::VecExt;

/// What a task holds besides its kernel context: its address space, its
/// anonymous mappings and its IOAS objects.
pub struct Current {
    /// Task id (never 0).
    pub id: u64,
    /// The program's name.
    pub name: &'static str,
    /// Root of its page tables.
    pub root: u64,
    /// Anonymous pages from `mem_map`: virtual → physical, ordered, so a
    /// range is found and taken out in one pass.
    pub anon: fallible::TryMap<u64, u64>,
    /// Next address for kernel-chosen mappings.
    pub next_va: u64,
    /// The task's IOAS objects (../shared/DESIGN.md §2).
    pub iommufd: iommufd::Iommufd,
    /// IOMMU table frames the task's iommufd calls took and did not give
    /// back (`quota.table_frames`): each call's change of the units' table
    /// frames on the CPU it ran on, which only that call can have caused
    /// there (`crate::iommu::cpu_table_frames`).
    pub table_frames: i64,
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
    /// Task id (never 0), as in `cur` (kept here for the list's scans).
    id: u64,
    /// The program's name, as in `cur`.
    name: &'static str,
    /// Root of its page tables, as in `cur`.
    root: u64,
    /// The task that spawned this one (0: the kernel).
    parent: u64,
    /// What the task holds: locked by the task's own syscalls alone
    /// ([`with_current`]), never under [`TASKS`]'s lock, so one task's
    /// IOMMU work does not stop the scheduling of the others.
    cur: spin::Mutex<Current>,
    owned: Owned,
    entry: u64,
    state: State,
    /// The state to take once the switch away from the task is complete
    /// (`None`: ready again); set only by the task itself while it runs.
    leave: Option<State>,
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
/// Per CPU, the saved stack pointer of its scheduler while a task runs there.
static SCHEDULER_SP: [CachePadded<AtomicU64>; cpu::MAX_CPUS] =
    [const { CachePadded::new(AtomicU64::new(0)) }; cpu::MAX_CPUS];
static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);

/// Context switches into tasks so far.
pub static SWITCHES: AtomicU64 = AtomicU64::new(0);
/// Per CPU, the tick count when its running task was last scheduled.
static SLICE_START: [CachePadded<AtomicU64>; cpu::MAX_CPUS] =
    [const { CachePadded::new(AtomicU64::new(0)) }; cpu::MAX_CPUS];
/// Per CPU, the switches into tasks it made (the spread of work over CPUs).
static CPU_SWITCHES: [CachePadded<AtomicU64>; cpu::MAX_CPUS] =
    [const { CachePadded::new(AtomicU64::new(0)) }; cpu::MAX_CPUS];

fn running() -> u64 {
    cpu::running()
}

/// Loads a packed program into a new task, ready to run; returns its id.
pub fn spawn(name: &str) -> Result<u64, SpawnError> {
    let program = crate::loader::find(name).ok_or(SpawnError::NotFound)?;
    let (owned, entry) = crate::loader::load(&program, crate::platform().elf_machine())?;
    let kstack = mm::alloc_frames(KERNEL_STACK_PAGES, 1).ok_or(SpawnError::OutOfMemory)?;
    let id = NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed);
    let cur = Current {
        id,
        name: program.name,
        root: owned.root,
        anon: fallible::TryMap::new(),
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
    let Ok(mut task) = fallible::try_box(Task {
        id,
        name: program.name,
        root: owned.root,
        parent: 0,
        cur: spin::Mutex::new(cur),
        owned,
        entry,
        state: State::Ready,
        leave: None,
        kstack,
        sp: 0,
    }) else {
        free_kstack();
        return Err(SpawnError::OutOfMemory);
    };
    task.sp = crate::platform().init_task_stack(task.kstack_top(), task_start);
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
    let entry = TASKS.lock().iter().find(|t| t.id == running()).map(|t| t.entry);
    match entry {
        Some(entry) => crate::platform().enter_user(entry, USER_STACK_TOP),
        None => exit_current(UserExit::Killed { reason: "task vanished before it started", pc: 0, addr: 0 }),
    }
}

/// Switches from the running task back to its CPU's scheduler, which puts
/// it in state `leave` (`None`: ready); returns when the task is scheduled
/// again (on any CPU).
fn to_scheduler(leave: Option<State>) {
    let save = {
        let mut tasks = TASKS.lock();
        match tasks.iter_mut().find(|t| t.id == running()) {
            Some(t) => {
                t.leave = leave;
                &mut t.sp as *mut u64
            }
            None => return,
        }
    };
    // Interrupts stay off from here until the scheduler runs: the CPU must
    // not change under the switch (its scheduler's stack is read here).
    crate::platform().disable_interrupts();
    let load = SCHEDULER_SP[cpu::index()].load(Ordering::Relaxed);
    // A task may switch away inside a syscall (a sleep): the scheduler and
    // other tasks run outside it; it is back in it when it returns here.
    let in_syscall = crate::fail_nth::current_scope();
    crate::fail_nth::syscall_scope(None);
    // SAFETY: `save` is the running task's `sp` field in its box (stable while the task exists; exited tasks are only reaped by the scheduler after this switch); `load` is the scheduler's stack pointer saved by `switch_to`.
    unsafe { crate::platform().context_switch(save, load) };
    crate::fail_nth::syscall_scope(in_syscall);
}

/// Gives up the CPU (the task stays ready) if another task can run.
pub fn yield_current() {
    let me = running();
    let someone_else = me != 0
        && TASKS
            .lock()
            .iter()
            .any(|t| t.id != me && matches!(t.state, State::Ready | State::Sleeping(_) | State::WaitIrq(..)));
    if someone_else {
        to_scheduler(None);
    }
}

/// Called by the platform on a timer interrupt taken in user mode: preempts
/// the running task once its quantum is used up.
pub fn preempt() {
    let now = crate::platform().timer_ticks();
    if running() != 0 && now.saturating_sub(SLICE_START[cpu::index()].load(Ordering::Relaxed)) >= QUANTUM_TICKS {
        yield_current();
    }
}

/// Ends the running task (from `exit` or a fatal fault); never returns.
pub fn exit_current(exit: UserExit) -> ! {
    to_scheduler(Some(State::Exited(exit)));
    // The scheduler never switches back to an exited task.
    loop {
        core::hint::spin_loop();
    }
}

/// A task picked to run on this CPU: what the switch needs.
struct Picked {
    id: u64,
    root: u64,
    top: u64,
    sp: u64,
}

/// Wakes the sleepers whose time or interrupt came and takes the first
/// ready task at or after position `*next` for this CPU (marked running in
/// the same critical section, so no other CPU takes it too).
fn pick(next: &mut usize) -> Option<Picked> {
    let now = crate::platform().uptime_ns();
    let mut tasks = TASKS.lock();
    for t in tasks.iter_mut() {
        let wake = match t.state {
            State::Sleeping(until) => until <= now,
            State::WaitIrq(slot, until) => until <= now || crate::irq_slots::has_pending(slot),
            _ => false,
        };
        if wake {
            t.state = State::Ready;
        }
    }
    let n = tasks.len();
    let i = (0..n).map(|k| (*next + k) % n).find(|&i| tasks[i].state == State::Ready)?;
    *next = i + 1;
    let t = &mut tasks[i];
    t.state = State::Running;
    t.leave = None;
    Some(Picked { id: t.id, root: t.root, top: t.kstack_top(), sp: t.sp })
}

/// Runs the picked task on this CPU until it yields, sleeps, is preempted
/// or exits, then puts it in the state it left for.
fn switch_to(task: Picked) {
    let Picked { id, root, top, sp: load } = task;
    let p = crate::platform();
    p.disable_interrupts();
    let me = cpu::index();
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    CPU_SWITCHES[me].fetch_add(1, Ordering::Relaxed);
    cpu::set_kernel_stack(top - (KERNEL_STACK_PAGES as u64) * FRAME_SIZE, top);
    cpu::set_running(id, root);
    SLICE_START[me].store(p.timer_ticks(), Ordering::Relaxed);
    p.activate_task(root, top);
    let save = SCHEDULER_SP[me].as_ptr();
    // SAFETY: `save` points into this CPU's SCHEDULER_SP slot, used by no other CPU; `load` is the task's saved stack pointer (from `init_task_stack` or its last switch out, completed: the task was picked only after its leaving state was applied), on a kernel stack the task owns until it is reaped.
    unsafe { p.context_switch(save, load) };
    p.activate_kernel();
    cpu::set_running(0, 0);
    let mut tasks = TASKS.lock();
    if let Some(t) = tasks.iter_mut().find(|t| t.id == id) {
        t.state = t.leave.take().unwrap_or(State::Ready);
    }
    drop(tasks);
    p.enable_interrupts();
}

/// Switches into each CPU's tasks so far, CPU 0 first (the spread of work).
pub fn switches_per_cpu() -> [u64; cpu::MAX_CPUS] {
    core::array::from_fn(|i| CPU_SWITCHES[i].load(Ordering::Relaxed))
}

/// The scheduler of a CPU other than the boot CPU: runs ready tasks for
/// ever, waiting for an interrupt (its timer ticks) when there is none.
/// Exited tasks are left for the boot CPU to reap ([`run_until`]).
pub fn serve_forever() -> ! {
    let mut next = 0usize;
    loop {
        match pick(&mut next) {
            Some(task) => switch_to(task),
            None => crate::platform().wait_for_interrupt(),
        }
    }
}

/// The parent of the task being reaped (`u64::MAX`: none). Only the boot
/// CPU reaps, one task at a time; until everything the task held is given
/// back it still counts as alive ([`task_count`], [`children_of`]), so a
/// task on another CPU that waits for it to be gone sees its resources back.
static REAPING_PARENT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Removes an exited task and frees everything it held.
fn reap(id: u64) -> Option<UserExit> {
    let task = {
        let mut tasks = TASKS.lock();
        let i = tasks.iter().position(|t| t.id == id)?;
        if !matches!(tasks[i].state, State::Exited(_)) {
            return None;
        }
        REAPING_PARENT.store(tasks[i].parent, Ordering::Relaxed);
        tasks.remove(i)
    };
    let exit = finish_reap(task);
    REAPING_PARENT.store(u64::MAX, Ordering::Release);
    exit
}

/// Frees what a removed, exited task held.
fn finish_reap(task: alloc::boxed::Box<Task>) -> Option<UserExit> {
    let mut task = task;
    release(task.cur.get_mut());
    let State::Exited(exit) = task.state.clone() else { return None };
    match &exit {
        UserExit::Exited(code) => log::info!("task {}: exited with status {code}", task.name),
        UserExit::Killed { reason, pc, addr } => {
            log::warn!("task {}: killed: {reason} at pc {pc:#x} (address {addr:#x})", task.name)
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
            TASKS.lock().iter().filter(|t| matches!(t.state, State::Exited(_))).map(|t| t.id).collect();
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
        match pick(&mut next) {
            Some(task) => switch_to(task),
            None => {
                // A task waited for that is not in the list and has no exit
                // record is lost (cannot happen); the rest run elsewhere,
                // sleep or wait for an interrupt.
                let alive = {
                    let tasks = TASKS.lock();
                    ids.iter().zip(&exits).all(|(id, e)| e.is_some() || tasks.iter().any(|t| t.id == *id))
                };
                if !alive {
                    return exits
                        .into_iter()
                        .map(|e| e.unwrap_or(UserExit::Killed { reason: "lost", pc: 0, addr: 0 }))
                        .collect();
                }
                crate::platform().wait_for_interrupt();
            }
        }
    }
}

/// Loads and runs a packed program to completion (other tasks run meanwhile).
pub fn run(name: &str) -> Result<UserExit, SpawnError> {
    let id = spawn(name)?;
    Ok(run_until(&[id]).remove(0))
}

/// Runs every packed program whose name starts with `test-`, for the test suite.
pub fn run_user_tests(filter: &str) -> bool {
    let mut ok = true;
    for p in crate::loader::programs().iter().filter(|p| p.name.starts_with("test-")) {
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

/// Frees what a finished task held, in the order that stops DMA first
/// (docs/isolation.md, [`crate::claims::release_task`]): its claimed
/// functions quiesced and blocked, with its IOAS objects closed between (the
/// bound ones are blocked through the IOAS layer, which then unpins); its
/// anonymous frames freed, or quarantined when a block failed; then its
/// interrupt slots.
fn release(cur: &mut Current) {
    let (id, name, root) = (cur.id, cur.name, cur.root);
    let (fd, anon) = (&mut cur.iommufd, &cur.anon);
    crate::claims::release_task(
        id,
        name,
        || crate::dma::close(fd, root),
        |all_blocked| {
            if all_blocked {
                for &pa in anon.values() {
                    crate::dma::free_user_frame(pa);
                }
            } else {
                // A device of the task may still reach its memory: keep every frame.
                crate::dma::quarantine(anon.values().copied());
            }
        },
    );
    crate::irq_slots::release(id, |slot, bdf| {
        if let (Ok(dev), Some(access)) = (crate::claims::device(bdf), crate::pci::access(bdf)) {
            crate::platform().unroute_device_irq(&dev.function, access, slot as u32);
        }
    });
}

/// Puts the running task to sleep for `ns` (other tasks run meanwhile).
pub fn sleep_current(ns: u64) {
    let deadline = crate::platform().uptime_ns().saturating_add(ns);
    to_scheduler(Some(State::Sleeping(deadline)));
}

/// Blocks the running task until interrupt slot `slot` fires or the uptime
/// reaches `deadline` (ns); other tasks run meanwhile.
pub fn wait_irq(slot: usize, deadline: u64) {
    to_scheduler(Some(State::WaitIrq(slot, deadline)));
}

/// Runs `f` on what the running task holds (`EPERM` when no task runs),
/// under the task's own lock: the task list's lock is held only to find it.
pub fn with_current<R>(f: impl FnOnce(&mut Current) -> Result<R, Errno>) -> Result<R, Errno> {
    let me = running();
    let cur: *const spin::Mutex<Current> = {
        let tasks = TASKS.lock();
        &tasks.iter().find(|t| me != 0 && t.id == me).ok_or(Errno::EPERM)?.cur
    };
    // SAFETY: the running task's box stays in the list (it never moves: boxed) until it is reaped, and only a task that exited and switched out is reaped, never one whose syscall runs here on its CPU.
    let cur = unsafe { &*cur };
    let mut guard = cur.lock();
    f(&mut guard)
}

/// Runs `f` on the running task's IOAS objects, with its page-table root.
pub fn with_current_iommufd<R>(f: impl FnOnce(&mut iommufd::Iommufd, u64) -> Result<R, Errno>) -> Result<R, Errno> {
    with_current(|cur| f(&mut cur.iommufd, cur.root))
}

/// The running task's IOMMU table frames (see [`Current::table_frames`]).
pub fn current_table_frames() -> Result<i64, Errno> {
    with_current(|cur| Ok(cur.table_frames))
}

/// Adds `delta` to the running task's IOMMU table frames.
pub fn charge_table_frames(delta: i64) {
    let _ = with_current(|cur| {
        cur.table_frames = cur.table_frames.saturating_add(delta);
        Ok(())
    });
}

/// Root of the running task's page tables.
pub fn current_root() -> Option<u64> {
    cpu::running_root()
}

/// Name of the current task, for logs.
pub fn current_name() -> &'static str {
    TASKS.lock().iter().find(|t| t.id == running()).map_or("kernel", |t| t.name)
}

/// Name of the current task, or `"?"` (the unknown-syscall log).
pub fn current_name_or_unknown() -> &'static str {
    TASKS.lock().iter().find(|t| t.id == running()).map_or("?", |t| t.name)
}

/// Tasks alive now.
pub fn task_count() -> usize {
    let tasks = TASKS.lock();
    tasks.len() + usize::from(REAPING_PARENT.load(Ordering::Acquire) != u64::MAX)
}

/// Live tasks whose parent is task `parent`.
pub fn children_of(parent: u64) -> usize {
    let tasks = TASKS.lock();
    tasks.iter().filter(|t| t.parent == parent).count() + usize::from(REAPING_PARENT.load(Ordering::Acquire) == parent)
}

/// Records task `parent` as the parent of task `id`.
pub fn set_parent(id: u64, parent: u64) {
    if let Some(t) = TASKS.lock().iter_mut().find(|t| t.id == id) {
        t.parent = parent;
    }
}

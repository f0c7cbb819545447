//! Tasks and the scheduler: the task list, spawning a packed program into a
//! task, round-robin switching between ready tasks (preempted by the timer
//! while in user mode), sleeping and interrupt waits, and a task's end: its
//! claims, IOAS objects, interrupt slots and memory given back.
//!
//! One CPU: the kernel is never preempted (a switch happens only from user
//! mode, or where a task blocks in a syscall).

use crate::frames::FRAME_SIZE;
use crate::limits::limits;
use crate::loader::{Owned, SpawnError};
use crate::platform::UserExit;
use crate::user_layout::{MMAP_BASE, USER_STACK_TOP};
use crate::{cpu, mm};
use abi::Errno;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use fallible::VecExt;

/// What a task holds besides its kernel context: its address space, its
/// anonymous mappings and its IOAS objects.
pub struct Current {
    /// Task id (never 0).
    pub id: u64,
    /// The task that spawned this one (0: the kernel).
    pub parent: u64,
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
    /// frames, which only that call can have caused (one CPU, no kernel
    /// preemption).
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
/// Saved stack pointer of the scheduler while a task runs.
static SCHEDULER_SP: spin::Mutex<u64> = spin::Mutex::new(0);
static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);

/// Context switches into tasks so far.
pub static SWITCHES: AtomicU64 = AtomicU64::new(0);
/// Tick count when the running task was last scheduled.
static SLICE_START: AtomicU64 = AtomicU64::new(0);

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
        parent: 0,
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
    let Ok(mut task) = fallible::try_box(Task { cur, owned, entry, state: State::Ready, kstack, sp: 0 }) else {
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
    let entry = TASKS.lock().iter().find(|t| t.cur.id == running()).map(|t| t.entry);
    match entry {
        Some(entry) => crate::platform().enter_user(entry, USER_STACK_TOP),
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
            .any(|t| t.cur.id != me && matches!(t.state, State::Ready | State::Sleeping(_) | State::WaitIrq(..)));
    if someone_else {
        to_scheduler();
    }
}

/// Called by the platform on a timer interrupt taken in user mode: preempts
/// the running task once its quantum is used up.
pub fn preempt() {
    let now = crate::platform().timer_ticks();
    if running() != 0 && now.saturating_sub(SLICE_START.load(Ordering::Relaxed)) >= QUANTUM_TICKS {
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
    let p = crate::platform();
    p.disable_interrupts();
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    cpu::set_kernel_stack(top - (KERNEL_STACK_PAGES as u64) * FRAME_SIZE, top);
    cpu::set_running(id, root);
    SLICE_START.store(p.timer_ticks(), Ordering::Relaxed);
    p.activate_task(root, top);
    let save = {
        let mut guard = SCHEDULER_SP.lock();
        &mut *guard as *mut u64
    };
    // SAFETY: `save` points into the SCHEDULER_SP static; `load` is the task's saved stack pointer (from `init_task_stack` or its last switch out), on a kernel stack the task owns until it is reaped.
    unsafe { p.context_switch(save, load) };
    p.activate_kernel();
    cpu::set_running(0, 0);
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
        let now = crate::platform().uptime_ns();
        let pick = {
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
            (0..n).map(|k| (next + k) % n).find(|&i| tasks[i].state == State::Ready)
        };
        match pick {
            Some(i) => {
                switch_to(i);
                next = i + 1;
            }
            None if TASKS.lock().iter().any(|t| matches!(t.state, State::Sleeping(_) | State::WaitIrq(..))) => {
                crate::platform().wait_for_interrupt();
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
    if let Some(t) = TASKS.lock().iter_mut().find(|t| t.cur.id == running()) {
        t.state = State::Sleeping(deadline);
    }
    to_scheduler();
}

/// Blocks the running task until interrupt slot `slot` fires or the uptime
/// reaches `deadline` (ns); other tasks run meanwhile.
pub fn wait_irq(slot: usize, deadline: u64) {
    if let Some(t) = TASKS.lock().iter_mut().find(|t| t.cur.id == running()) {
        t.state = State::WaitIrq(slot, deadline);
    }
    to_scheduler();
}

/// Runs `f` on what the running task holds (`EPERM` when no task runs).
pub fn with_current<R>(f: impl FnOnce(&mut Current) -> Result<R, Errno>) -> Result<R, Errno> {
    let mut tasks = TASKS.lock();
    let t = tasks.iter_mut().find(|t| t.cur.id == running()).ok_or(Errno::EPERM)?;
    f(&mut t.cur)
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
    TASKS.lock().iter().find(|t| t.cur.id == running()).map_or("kernel", |t| t.cur.name)
}

/// Name of the current task, or `"?"` (the unknown-syscall log).
pub fn current_name_or_unknown() -> &'static str {
    TASKS.lock().iter().find(|t| t.cur.id == running()).map_or("?", |t| t.cur.name)
}

/// Tasks alive now.
pub fn task_count() -> usize {
    TASKS.lock().len()
}

/// Live tasks whose parent is task `parent`.
pub fn children_of(parent: u64) -> usize {
    TASKS.lock().iter().filter(|t| t.cur.parent == parent).count()
}

/// Records task `parent` as the parent of task `id`.
pub fn set_parent(id: u64, parent: u64) {
    if let Some(t) = TASKS.lock().iter_mut().find(|t| t.cur.id == id) {
        t.cur.parent = parent;
    }
}

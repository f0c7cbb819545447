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
use alloc::string::String;
use alloc::vec::Vec;

/// Top of every task's user stack (exclusive).
pub const USER_STACK_TOP: u64 = 0x0000_7FFF_FFF0_0000;
/// User stack size.
pub const USER_STACK_PAGES: u64 = 16;
/// Lowest address a program may load at (page 0 stays unmapped to catch null pointers).
pub const USER_MIN: u64 = 0x1000;

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
    name: &'static str,
    root: u64,
}

static CURRENT: spin::Mutex<Option<Current>> = spin::Mutex::new(None);

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
        let perms = UserPerms { write: seg.write, exec: seg.exec };
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
                // SAFETY: `pa` is a fresh frame owned by this task, reached through the
                // direct map; `src` fits within the page by construction of lo/hi.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
            }
            page += FRAME_SIZE;
        }
    }
    for i in 1..=USER_STACK_PAGES {
        map_new_page(&mut owned, USER_STACK_TOP - i * FRAME_SIZE, UserPerms { write: true, exec: false })?;
    }
    Ok((owned, elf.entry))
}

/// Loads and runs a packed program to completion.
pub fn run(name: &str) -> Result<UserExit, SpawnError> {
    let program = *programs().iter().find(|p| p.name == name).ok_or(SpawnError::NotFound)?;
    let (owned, entry) = load(&program, platform().elf_machine())?;
    log::info!("task {}: started (entry {entry:#x}, {} frames)", program.name, owned.frames.len());
    *CURRENT.lock() = Some(Current { name: program.name, root: owned.root });
    let exit = platform().run_user(owned.root, entry, USER_STACK_TOP);
    *CURRENT.lock() = None;
    match &exit {
        UserExit::Exited(code) => log::info!("task {}: exited with status {code}", program.name),
        UserExit::Killed { reason, pc, addr } => {
            log::warn!("task {}: killed: {reason} at pc {pc:#x} (address {addr:#x})", program.name)
        }
    }
    drop(owned);
    Ok(exit)
}

/// Copies `len` bytes from the current task's memory, checking every page is mapped for it.
fn copy_from_user(va: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let root = CURRENT.lock().as_ref().map(|c| c.root).ok_or(Errno::EFAULT)?;
    va.checked_add(len as u64).filter(|&end| end <= USER_STACK_TOP).ok_or(Errno::EFAULT)?;
    let mut out = Vec::with_capacity(len);
    let mut at = va;
    while out.len() < len {
        let (pa, _) = platform().user_translate(root, at & !(FRAME_SIZE - 1)).ok_or(Errno::EFAULT)?;
        let offset = at % FRAME_SIZE;
        let n = ((FRAME_SIZE - offset) as usize).min(len - out.len());
        let src = (mm::phys_to_virt(pa) + offset) as *const u8;
        // SAFETY: the page is mapped in the task's address space to frame `pa`
        // (checked above), and the frame is reachable through the direct map.
        out.extend_from_slice(unsafe { core::slice::from_raw_parts(src, n) });
        at += n as u64;
    }
    Ok(out)
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
    let p = platform();
    let deadline = p.uptime_ns().saturating_add(ns);
    while p.uptime_ns() < deadline {
        p.wait_for_interrupt();
    }
    Ok(0)
}

/// Serves one syscall of the current task.
pub fn syscall(number: u64, args: [u64; 5]) -> SyscallOutcome {
    let result = match Sysno::from_raw(number) {
        Some(Sysno::Exit) => return SyscallOutcome::Exit(args[0] as i64),
        Some(Sysno::Log) => sys_log(args[0], args[1]),
        Some(Sysno::Yield) => Ok(0),
        Some(Sysno::Clock) => Ok(platform().uptime_ns()),
        Some(Sysno::Sleep) => sys_sleep(args[0]),
        None => {
            let name = CURRENT.lock().as_ref().map_or("?", |c| c.name);
            log::debug!("task {name}: unknown syscall {number}");
            Err(Errno::ENOSYS)
        }
    };
    SyscallOutcome::Return(abi::encode(result))
}

/// Runs every packed program whose name starts with `test-`, for the test suite.
pub fn run_user_tests(filter: &str) -> bool {
    let mut ok = true;
    for p in programs().iter().filter(|p| p.name.starts_with("test-")) {
        if !(filter.is_empty() || filter == "all" || filter.split(',').any(|f| p.name.contains(f))) {
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
pub fn current_name() -> String {
    CURRENT.lock().as_ref().map_or_else(|| String::from("kernel"), |c| String::from(c.name))
}

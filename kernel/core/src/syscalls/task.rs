//! Task syscalls: `yield`, `clock`, `sleep` and `task_spawn`.

use crate::limits::limits;
use crate::loader::SpawnError;
use crate::scheduler::{self, current_name};
use crate::user_access::copy_from_user;
use abi::{Errno, SysResult};

/// `yield`: lets another ready task run.
pub fn sys_yield() -> SysResult {
    scheduler::yield_current();
    Ok(0)
}

/// `clock`: nanoseconds of uptime.
pub fn sys_clock() -> SysResult {
    Ok(crate::platform().uptime_ns())
}

/// `clock_counter()`: the user-readable counter's frequency (`ENOSYS`: none).
pub fn sys_clock_counter() -> SysResult {
    crate::platform().user_counter_hz().filter(|&hz| hz != 0).ok_or(Errno::ENOSYS)
}

/// `sleep(ns)`: other tasks run meanwhile.
pub fn sys_sleep(ns: u64) -> SysResult {
    scheduler::sleep_current(ns);
    Ok(0)
}

/// `task_spawn(name, len)`: starts the packed program `name` as a child of
/// the caller, within `quota.tasks` and `quota.children` (`EAGAIN`).
pub fn sys_task_spawn(ptr: u64, len: u64) -> SysResult {
    if len > 64 {
        return Err(Errno::E2BIG);
    }
    let bytes = copy_from_user(ptr, len as usize)?;
    let name = core::str::from_utf8(&bytes).map_err(|_| Errno::EINVAL)?;
    let me = crate::cpu::running();
    let alive = scheduler::task_count();
    if alive >= limits().tasks {
        log::warn!("task {}: spawn of {name} refused: {alive} tasks alive (quota.tasks)", current_name());
        return Err(Errno::EAGAIN);
    }
    if scheduler::children_of(me) >= limits().children {
        return Err(Errno::EAGAIN);
    }
    match scheduler::spawn(name) {
        Ok(id) => {
            scheduler::set_parent(id, me);
            Ok(id)
        }
        Err(SpawnError::NotFound) => Err(Errno::ENOENT),
        Err(SpawnError::OutOfMemory | SpawnError::Map(_)) => Err(Errno::ENOMEM),
        Err(_) => Err(Errno::EINVAL),
    }
}

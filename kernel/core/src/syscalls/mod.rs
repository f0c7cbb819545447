//! The syscalls: [`syscall`] is what a board's trap handler calls; it
//! dispatches on [`Sysno`] to one module per family.
//!
//! - [`task`] — `yield`, `clock`, `sleep`, `task_spawn` (`exit` ends the task here)
//! - [`console`] — `log`, `console_read`, `info_read`
//! - [`memory`] — `mem_map`, `mem_unmap`
//! - [`info`] — `info_query` (read-only reports on the IOMMU units)
//! - [`device`] — `device_list`, `device_claim`, `device_map_bar`, `device_config_read` / `_write`
//! - [`irq`] — `device_irq_enable`, `device_irq_wait`
//! - [`iommufd`] — `iommufd` (the IOAS door)
//! - [`testing`] — `test_canary` (test boots only)

pub mod console;
pub mod device;
pub mod info;
pub mod iommufd;
pub mod irq;
pub mod memory;
pub mod task;
pub mod testing;

use abi::{Errno, Sysno};

/// What the platform does after a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallOutcome {
    /// Return this value to the task.
    Return(u64),
    /// End the task with this status.
    Exit(i64),
}

/// Runs `f` with interrupts on (syscalls start with them off) and turns them off again.
fn with_interrupts<R>(f: impl FnOnce() -> R) -> R {
    crate::platform().enable_interrupts();
    let r = f();
    crate::platform().disable_interrupts();
    r
}

/// Serves one syscall of the current task.
pub fn syscall(number: u64, args: [u64; 5]) -> SyscallOutcome {
    crate::fail_nth::syscall_scope(Some(crate::cpu::running()));
    let outcome = serve(number, args);
    crate::fail_nth::syscall_scope(None);
    outcome
}

fn serve(number: u64, args: [u64; 5]) -> SyscallOutcome {
    // Calls that allocate on the heap start only with headroom left (ENOMEM otherwise).
    let allocates = matches!(
        Sysno::from_raw(number),
        Some(
            Sysno::MemMap
                | Sysno::DeviceList
                | Sysno::TaskSpawn
                | Sysno::Iommufd
                | Sysno::DeviceIrqEnable
                | Sysno::InfoRead
                | Sysno::InfoQuery
        )
    );
    if allocates {
        if let Err(e) = crate::heap::ensure_headroom() {
            return SyscallOutcome::Return(abi::encode(Err(e)));
        }
    }
    let result = match Sysno::from_raw(number) {
        Some(Sysno::Exit) => return SyscallOutcome::Exit(args[0] as i64),
        Some(Sysno::Log) => console::sys_log(args[0], args[1]),
        Some(Sysno::ConsoleRead) => console::sys_console_read(args[0], args[1], args[2]),
        Some(Sysno::InfoRead) => console::sys_info_read(args[0], args[1], args[2], args[3]),
        Some(Sysno::InfoQuery) => info::sys_info_query(args[0], args[1], args[2], args[3], args[4]),
        Some(Sysno::Yield) => task::sys_yield(),
        Some(Sysno::Clock) => task::sys_clock(),
        Some(Sysno::ClockCounter) => task::sys_clock_counter(),
        Some(Sysno::Sleep) => task::sys_sleep(args[0]),
        // Long (zeroing 128 MiB at the memory quota): with interrupts on, as
        // iommufd ops (see `iommufd::syscall` for why that is safe).
        Some(Sysno::MemMap) => with_interrupts(|| memory::sys_mem_map(args[0], args[1], args[2])),
        Some(Sysno::MemUnmap) => with_interrupts(|| memory::sys_mem_unmap(args[0], args[1])),
        Some(Sysno::DeviceList) => device::sys_device_list(args[0], args[1]),
        Some(Sysno::DeviceClaim) => device::sys_device_claim(args[0]),
        Some(Sysno::DeviceMapBar) => device::sys_device_map_bar(args[0], args[1]),
        Some(Sysno::DeviceConfigRead) => device::sys_config_read(args[0], args[1], args[2]),
        Some(Sysno::DeviceConfigWrite) => device::sys_config_write(args[0], args[1], args[2], args[3]),
        Some(Sysno::TaskSpawn) => task::sys_task_spawn(args[0], args[1]),
        Some(Sysno::DeviceIrqEnable) => irq::sys_irq_enable(args[0]),
        Some(Sysno::DeviceIrqWait) => irq::sys_irq_wait(args[0], args[1]),
        Some(Sysno::Iommufd) => iommufd::syscall(args[0], args[1]),
        Some(Sysno::TestCanary) => testing::sys_test_canary(args[0], args[1], args[2]),
        None => {
            let name = crate::scheduler::current_name_or_unknown();
            log::debug!("task {name}: unknown syscall {number}");
            Err(Errno::ENOSYS)
        }
    };
    SyscallOutcome::Return(abi::encode(result))
}

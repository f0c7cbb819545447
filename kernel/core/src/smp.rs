//! Bringing the other CPUs online (docs/smp.md): once the boot CPU has the
//! kernel up (memory, interrupts, PCI, IOMMUs), it asks the platform to
//! start every other CPU the firmware describes, up to `cpus=N` on the
//! command line; each sets itself up and enters the scheduler
//! ([`crate::scheduler::serve_forever`]), so tasks run on every CPU.

use core::sync::atomic::{AtomicUsize, Ordering};

/// CPUs running, the boot CPU included (1 until [`start`]).
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// CPUs running now, the boot CPU included.
pub fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// The most CPUs `cpus=` allows: a number from 1 to [`crate::cpu::MAX_CPUS`]
/// (larger values are capped); absent, every CPU up to the maximum.
pub fn cpus_allowed(value: Option<&str>) -> Result<usize, &'static str> {
    match value {
        None => Ok(crate::cpu::MAX_CPUS),
        Some(v) => match v.parse::<usize>() {
            Ok(0) | Err(_) => Err("cpus= takes a number of CPUs, 1 or more"),
            Ok(n) => Ok(n.min(crate::cpu::MAX_CPUS)),
        },
    }
}

/// Starts the other CPUs (see the module doc) and logs how many run.
pub fn start(boot: &bootinfo::BootInfo) {
    let max = match cpus_allowed(boot.cmdline_value("cpus")) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("smp: {e}; using the boot CPU only");
            1
        }
    };
    let n = if max > 1 { crate::platform().start_cpus(boot, max, secondary_main) } else { 1 };
    ONLINE.store(n, Ordering::Release);
    log::info!("smp: {n} CPU{} online (at most {max})", if n == 1 { "" } else { "s" });
}

/// Logs how many switches into tasks each CPU made (with more than one CPU).
pub fn log_spread() {
    let n = online();
    if n > 1 {
        let per = crate::scheduler::switches_per_cpu();
        let list: alloc::vec::Vec<alloc::string::String> =
            per[..n].iter().enumerate().map(|(i, s)| alloc::format!("cpu{i}={s}")).collect();
        log::info!("smp: task switches per CPU: {}", list.join(" "));
    }
}

/// First portable code of a CPU other than the boot CPU (interrupts masked).
extern "C" fn secondary_main(index: usize) -> ! {
    log::info!("cpu {index}: online, scheduling");
    crate::platform().enable_interrupts();
    crate::scheduler::serve_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_takes_a_positive_number_capped_at_the_maximum() {
        assert_eq!(cpus_allowed(None), Ok(crate::cpu::MAX_CPUS));
        assert_eq!(cpus_allowed(Some("1")), Ok(1));
        assert_eq!(cpus_allowed(Some("4")), Ok(4));
        assert_eq!(cpus_allowed(Some("999")), Ok(crate::cpu::MAX_CPUS));
        assert!(cpus_allowed(Some("0")).is_err());
        assert!(cpus_allowed(Some("two")).is_err());
        assert!(cpus_allowed(Some("")).is_err());
    }
}

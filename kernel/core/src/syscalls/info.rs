//! `info_query(topic, subject, arg, buf, len)`: read-only reports on the
//! IOMMU units (see [`abi::Sysno::InfoQuery`]), rendered by the drivers
//! ([`iommu::Iommu::describe`]) into a bounded buffer that answers
//! out-of-memory instead of failing the kernel.

use abi::{query_topic, Errno, SysResult};
use alloc::vec::Vec;
use core::fmt;
use iommu::describe::Describe;

/// A text of at most [`abi::QUERY_MAX`] bytes whose every allocation may fail.
struct Report {
    bytes: Vec<u8>,
    truncated: bool,
    no_memory: bool,
}

impl fmt::Write for Report {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = (abi::QUERY_MAX - 16).saturating_sub(self.bytes.len());
        let take = s.len().min(room);
        if self.bytes.try_reserve(take).is_err() {
            self.no_memory = true;
            return Err(fmt::Error);
        }
        self.bytes.extend_from_slice(&s.as_bytes()[..take]);
        if take < s.len() {
            self.truncated = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

/// Whether the boot lets tasks read about other tasks' devices and faults
/// (`info.log=allow`, as `cargo xtask run --shell` sets, or a test boot).
pub fn introspection_allowed() -> bool {
    crate::cmdline_value("info.log") == Some("allow") || crate::cmdline_value("ktest").is_some()
}

/// The unit translating `bdf` and its ID there.
fn device_subject(raw: u64) -> Result<(usize, iommu::DeviceId), Errno> {
    let bdf = super::device::decode_bdf(raw)?;
    crate::claims::device(bdf)?;
    crate::iommu::unit_of(bdf).ok_or(Errno::ENODEV)
}

fn unit_count() -> usize {
    crate::iommu::with_units(|u| u.len())
}

fn unit_index(subject: u64) -> Result<usize, Errno> {
    usize::try_from(subject).ok().filter(|&i| i < unit_count()).ok_or(Errno::ENOENT)
}

fn unit_error(e: iommu::Error) -> Errno {
    match e {
        iommu::Error::NoMemory => Errno::ENOMEM,
        iommu::Error::NoSuchDevice(_) => Errno::ENODEV,
        iommu::Error::NotSupported(_) => Errno::EOPNOTSUPP,
        _ => Errno::EIO,
    }
}

fn describe(unit: usize, what: Describe, out: &mut Report) -> Result<(), Errno> {
    let r = crate::iommu::with_units(|units| units[unit].describe(what, out));
    match r {
        Ok(()) => Ok(()),
        // A report cut at QUERY_MAX is still a report.
        Err(_) if out.truncated => Ok(()),
        Err(_) if out.no_memory => Err(Errno::ENOMEM),
        Err(e) => Err(unit_error(e)),
    }
}

/// `info_query`: renders the report, copies what fits into `buf`, returns its length.
pub fn sys_info_query(topic: u64, subject: u64, arg: u64, buf: u64, len: u64) -> SysResult {
    use fmt::Write;
    let mut out = Report { bytes: Vec::new(), truncated: false, no_memory: false };
    let oom = |r: &Report| if r.no_memory { Errno::ENOMEM } else { Errno::EINVAL };
    // Every report but the unit list names physical addresses (the kernel's
    // tables, the pages a device reaches, queue bases), which a task is never
    // told outside such a boot, even about a device it holds.
    match topic {
        query_topic::UNITS => {}
        query_topic::REGISTERS..=query_topic::TRACE if !introspection_allowed() => return Err(Errno::EPERM),
        query_topic::REGISTERS..=query_topic::TRACE => {}
        _ => return Err(Errno::EINVAL),
    }
    match topic {
        query_topic::UNITS => {
            for i in 0..unit_count() {
                let kind = crate::iommu::with_units(|u| u[i].kind().name());
                writeln!(out, "{i} {} {kind}", crate::iommu::unit_name(i)).map_err(|_| oom(&out))?;
            }
        }
        query_topic::REGISTERS => {
            let unit = unit_index(subject)?;
            writeln!(out, "unit {unit}: {}", crate::iommu::unit_name(unit)).map_err(|_| oom(&out))?;
            describe(unit, Describe::Registers, &mut out)?;
        }
        query_topic::DEVICE | query_topic::WALK => {
            let (unit, device) = device_subject(subject)?;
            let what = if topic == query_topic::DEVICE {
                Describe::Device(device)
            } else {
                Describe::Walk { device, iova: arg }
            };
            writeln!(out, "unit {unit} ({}), device ID {:#x}", crate::iommu::unit_name(unit), device.0)
                .map_err(|_| oom(&out))?;
            describe(unit, what, &mut out)?;
        }
        query_topic::FAULTS => {
            // Taken from the units the way every iommufd call takes them, so
            // their owners' fault queues still get them.
            super::iommufd::collect_faults();
            let mut failed = false;
            let next = crate::iommu::recent_faults(subject, &mut |seq, unit, e| {
                failed |= writeln!(out, "#{seq} {}: {e}", crate::iommu::unit_name(unit)).is_err();
            });
            if failed && out.no_memory {
                return Err(Errno::ENOMEM);
            }
            let _ = writeln!(out, "next #{next}");
        }
        query_topic::QUEUE => {
            let unit = unit_index(subject)?;
            writeln!(out, "unit {unit} ({}): the last queued entries, oldest first", crate::iommu::unit_name(unit))
                .map_err(|_| oom(&out))?;
            let r = crate::iommu::describe_queue(unit, &mut out);
            if let Err(e) = r {
                if !out.truncated {
                    return Err(if out.no_memory { Errno::ENOMEM } else { unit_error(e) });
                }
            }
        }
        query_topic::TRACE => {
            let on = match arg {
                0 => false,
                1 => true,
                _ => return Err(Errno::EINVAL),
            };
            let chosen = if subject == u64::MAX { None } else { Some(unit_index(subject)?) };
            for unit in 0..unit_count() {
                if chosen.is_some_and(|c| c != unit) {
                    continue;
                }
                crate::iommu::set_trace(unit, on).ok_or(Errno::ENOENT)?;
                let traced = crate::iommu::with_units(|u| u[unit].tracer().name());
                log::info!(
                    "iommu: {}: register trace {} (as {traced})",
                    crate::iommu::unit_name(unit),
                    if on { "on" } else { "off" }
                );
                writeln!(
                    out,
                    "{} (traces as {traced}): trace {}",
                    crate::iommu::unit_name(unit),
                    if on { "on" } else { "off" }
                )
                .map_err(|_| oom(&out))?;
            }
        }
        _ => return Err(Errno::EINVAL),
    }
    if out.truncated && out.bytes.try_reserve(12).is_ok() {
        out.bytes.extend_from_slice(b"(truncated)\n");
    }
    let n = (len as usize).min(out.bytes.len());
    if n > 0 {
        crate::user_access::copy_to_user(buf, &out.bytes[..n])?;
    }
    Ok(out.bytes.len() as u64)
}

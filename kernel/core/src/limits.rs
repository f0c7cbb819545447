//! What tasks may hold, from the kernel command line (README, "Limits").

/// The per-task and system-wide limits.
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

//! The selftest suite on the host: the object model (`iommufd`) over two
//! `MockIommu` units, with a fake task memory.

use abi::Errno;
use ioas_selftest::Door;
use iommu::mock::{MockConfig, MockIommu};
use iommu::{DeviceId, Iommu, Perms};
use iommufd::testing::FakeMemory;
use iommufd::{CopyArgs, Iommufd, IovaChoice, MapArgs};

const PAGE: u64 = 4096;

struct HostDoor {
    fd: Iommufd,
    units: Vec<Box<dyn Iommu>>,
    mem: FakeMemory,
    next_va: u64,
    /// (unit, device ID) of each bindable device.
    devices: Vec<(usize, u32)>,
    /// The user memory raw calls pass their structs in.
    user: HostUser,
}

/// Where a raw call's struct sits in the fake user memory.
const STRUCT_VA: u64 = 0x7000_0000;

/// Fake user memory for the decoder: the pages at [`STRUCT_VA`] (and the
/// door's data pages), every other address `EFAULT`, as in the kernel.
#[derive(Default)]
struct HostUser {
    pages: std::collections::BTreeMap<u64, Box<[u8; 4096]>>,
}

impl HostUser {
    fn page(&self, va: u64) -> Result<&[u8; 4096], Errno> {
        self.pages.get(&(va & !(PAGE - 1))).map(|p| &**p).ok_or(Errno::EFAULT)
    }
}

impl iommufd::syscall::UserMemory for HostUser {
    fn read(&self, va: u64, len: usize) -> Result<Vec<u8>, Errno> {
        va.checked_add(len as u64).ok_or(Errno::EFAULT)?;
        (0..len as u64).map(|i| self.page(va + i).map(|p| p[((va + i) % PAGE) as usize])).collect()
    }

    fn write(&mut self, va: u64, bytes: &[u8]) -> Result<(), Errno> {
        va.checked_add(bytes.len() as u64).ok_or(Errno::EFAULT)?;
        // Checked whole before the first byte lands, as the kernel does.
        for i in 0..bytes.len() as u64 {
            self.page(va + i)?;
        }
        for (i, &b) in bytes.iter().enumerate() {
            let at = va + i as u64;
            if let Some(p) = self.pages.get_mut(&(at & !(PAGE - 1))) {
                p[(at % PAGE) as usize] = b;
            }
        }
        Ok(())
    }
}

/// The host's side of [`iommufd::syscall::Kernel`]: the door's table, the
/// mock units and fake memories; functions are bound by their index in
/// the door's device list, encoded as the bdf's low bits.
struct HostKernel<'a> {
    fd: &'a mut Iommufd,
    units: &'a mut Vec<Box<dyn Iommu>>,
    mem: &'a mut FakeMemory,
    user: &'a mut HostUser,
    devices: &'a [(usize, u32)],
}

impl iommufd::syscall::Kernel for HostKernel<'_> {
    fn user(&mut self) -> &mut dyn iommufd::syscall::UserMemory {
        self.user
    }
    fn with_fd(&mut self, f: &mut iommufd::syscall::TableOp<'_>) -> Result<(), Errno> {
        f(self.fd, self.units, self.mem)
    }
    fn bind_target(&mut self, bdf: u64) -> Result<(usize, DeviceId), Errno> {
        // As the kernel: a function that is not there is ENOENT, one this
        // task did not claim (the host bridge, 00:00.0) EPERM.
        match bdf {
            0 => Err(Errno::EPERM),
            b => {
                self.devices.iter().find(|d| u64::from(d.1) == b).map(|&(u, id)| (u, DeviceId(id))).ok_or(Errno::ENOENT)
            }
        }
    }
    fn write_unit_name(&self, unit: usize, out: &mut dyn std::fmt::Write) -> std::fmt::Result {
        write!(out, "mock{unit}")
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn wait_for_faults(&mut self) {}
}

impl HostDoor {
    fn dispatch(&mut self, op: u64, ptr: u64) -> Result<(), Errno> {
        let mut k = HostKernel {
            fd: &mut self.fd,
            units: &mut self.units,
            mem: &mut self.mem,
            user: &mut self.user,
            devices: &self.devices,
        };
        iommufd::syscall::dispatch(&mut k, op, ptr).map(|_| ())
    }
}

impl HostDoor {
    fn new() -> Self {
        let unit = |ids: &[u32], aperture: (u64, u64)| -> Box<dyn Iommu> {
            Box::new(MockIommu::new(MockConfig {
                devices: ids.iter().map(|&i| DeviceId(i)).collect(),
                aperture,
                ..MockConfig::default()
            }))
        };
        HostDoor {
            fd: Iommufd::new(),
            units: vec![unit(&[0x10, 0x18], (0, (1 << 48) - 1)), unit(&[0x20], (0, (1 << 39) - 1))],
            mem: FakeMemory { mapped: Some(Default::default()), ..FakeMemory::default() },
            next_va: 0x40_0000,
            devices: vec![(0, 0x10), (0, 0x18), (1, 0x20)],
            user: HostUser { pages: (0..4).map(|i| (STRUCT_VA + i * PAGE, Box::new([0u8; 4096]))).collect() },
        }
    }
}

fn perms(flags: u32) -> Perms {
    let mut p = Perms::empty();
    p.set(Perms::READ, flags & abi::iommufd::MAP_READABLE != 0);
    p.set(Perms::WRITE, flags & abi::iommufd::MAP_WRITEABLE != 0);
    p
}

fn choice(iova: Option<u64>) -> IovaChoice {
    iova.map_or(IovaChoice::Auto, IovaChoice::Fixed)
}

impl Door for HostDoor {
    fn ioas_alloc(&mut self) -> Result<u32, Errno> {
        self.fd.ioas_alloc()
    }
    fn destroy(&mut self, id: u32) -> Result<(), Errno> {
        self.fd.destroy(&mut self.units, &mut self.mem, id)
    }
    fn iova_ranges(&mut self, ioas: u32) -> Result<(Vec<(u64, u64)>, u64), Errno> {
        let r = self.fd.iova_ranges(&mut self.units, ioas)?;
        Ok((r, 1 << self.fd.page_sizes(&self.units, ioas).trailing_zeros()))
    }
    fn allow_iovas(&mut self, ioas: u32, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        self.fd.allow_iovas(&mut self.units, ioas, ranges)
    }
    fn map(&mut self, ioas: u32, va: u64, len: u64, iova: Option<u64>, flags: u32) -> Result<u64, Errno> {
        // The ABI's flag rules first, as the kernel decodes the struct.
        let fixed = if iova.is_some() { abi::iommufd::MAP_FIXED_IOVA } else { 0 };
        let s = abi::iommufd::IoasMap { size: 40, flags: flags | fixed, ioas_id: ioas, ..Default::default() };
        abi::iommufd::decode::<abi::iommufd::IoasMap>(zerocopy::IntoBytes::as_bytes(&s))?;
        let m = MapArgs { va, len, iova: choice(iova), perms: perms(flags) };
        self.fd.map(&mut self.units, &mut self.mem, ioas, m)
    }
    fn unmap(&mut self, ioas: u32, iova: u64, len: u64) -> Result<u64, Errno> {
        self.fd.unmap(&mut self.units, &mut self.mem, ioas, iova, len)
    }
    fn copy(
        &mut self,
        dst: u32,
        src: u32,
        src_iova: u64,
        len: u64,
        dst_iova: Option<u64>,
        flags: u32,
    ) -> Result<u64, Errno> {
        let fixed = if dst_iova.is_some() { abi::iommufd::MAP_FIXED_IOVA } else { 0 };
        let s = abi::iommufd::IoasCopy { size: 40, flags: flags | fixed, dst_ioas_id: dst, ..Default::default() };
        abi::iommufd::decode::<abi::iommufd::IoasCopy>(zerocopy::IntoBytes::as_bytes(&s))?;
        let c = CopyArgs { src, src_iova, len, dst_iova: choice(dst_iova), perms: perms(flags) };
        self.fd.copy(&mut self.units, &mut self.mem, dst, c)
    }
    fn set_option(&mut self, ioas: u32, option: u32, value: u64) -> Result<bool, Errno> {
        self.fd.set_option(ioas, option, value)
    }
    fn devices(&self) -> Vec<usize> {
        self.devices.iter().map(|d| d.0).collect()
    }
    fn bind(&mut self, which: usize) -> Result<u32, Errno> {
        let (unit, id) = *self.devices.get(which).ok_or(Errno::ENOENT)?;
        self.fd.device_bind(&mut self.units, unit, DeviceId(id))
    }
    fn attach(&mut self, dev: u32, pt: u32) -> Result<u32, Errno> {
        self.fd.device_attach(&mut self.units, dev, pt)
    }
    fn detach(&mut self, dev: u32) -> Result<(), Errno> {
        self.fd.device_detach(&mut self.units, dev)
    }
    fn alloc_pages(&mut self, pages: u64) -> Result<u64, Errno> {
        let va = self.next_va;
        self.next_va += (pages + 1) * PAGE; // a guard page between allocations
        self.mem.mapped.get_or_insert_with(Default::default).extend((0..pages).map(|i| va + i * PAGE));
        Ok(va)
    }
    fn free_pages(&mut self, va: u64, pages: u64) {
        if let Some(m) = self.mem.mapped.as_mut() {
            for i in 0..pages {
                m.remove(&(va + i * PAGE));
            }
        }
    }
    fn unmapped_va(&self) -> u64 {
        0x10_0000 // below every allocation
    }
    fn raw(&mut self, op: u64, bytes: &mut [u8]) -> Option<Result<(), Errno>> {
        // The struct goes into the fake user memory and through the kernel's decoder.
        use iommufd::syscall::UserMemory;
        if self.user.write(STRUCT_VA, bytes).is_err() {
            return Some(Err(Errno::E2BIG));
        }
        let r = self.dispatch(op, STRUCT_VA);
        if let Ok(back) = self.user.read(STRUCT_VA, bytes.len()) {
            bytes.copy_from_slice(&back);
        }
        Some(r)
    }
    fn raw_ptr(&mut self, op: u64, ptr: u64) -> Option<Result<(), Errno>> {
        Some(self.dispatch(op, ptr))
    }
    fn leak_counters(&mut self) -> Option<[u64; 2]> {
        Some([self.mem.pins.len() as u64, self.fd.len() as u64])
    }
    fn poke(&mut self, va: u64, value: u64) {
        self.mem.write_u64(va, value);
    }
    fn dma_read(&mut self, which: usize, _ioas: u32, iova: u64) -> Option<Option<u64>> {
        // The mock unit translates; the fake memory holds what the page says.
        let &(unit, id) = self.devices.get(which)?;
        let mock = self.units[unit].as_any_mut().downcast_mut::<MockIommu>()?;
        Some(mock.dma(DeviceId(id), iova, false).map(|pa| self.mem.get_u64(pa - iommufd::testing::PA_BASE)))
    }
    fn hw_info_typed(&mut self, dev: u32, data: &mut [u8]) -> Result<(u32, usize, u64, u64), Errno> {
        let (unit, _) = self.fd.device_unit(dev)?;
        let (kind, typed) = iommufd::abi_glue::typed_hw_info(&self.units[unit].info());
        let n = typed.len().min(data.len());
        data[..n].copy_from_slice(&typed[..n]);
        Ok((
            kind,
            n,
            iommufd::abi_glue::hwpt_alloc_types(self.units[unit].info().kind),
            iommufd::abi_glue::invalidate_types(self.units[unit].info().kind),
        ))
    }
    fn hwpt_alloc(
        &mut self,
        dev: u32,
        parent: u32,
        flags: u32,
        data_type: u32,
        data: &[u8],
        fault_id: u32,
    ) -> Result<u32, Errno> {
        // The same decoding the kernel does: the ABI's flag rules, then the data rules.
        let s = abi::iommufd::HwptAlloc {
            size: std::mem::size_of::<abi::iommufd::HwptAlloc>() as u32,
            flags,
            dev_id: dev,
            pt_id: parent,
            data_type,
            data_len: data.len() as u32,
            data_uptr: 0,
            fault_id,
            out_hwpt_id: 0,
        };
        let s: abi::iommufd::HwptAlloc = abi::iommufd::decode(zerocopy::IntoBytes::as_bytes(&s))?;
        let args = iommufd::abi_glue::hwpt_alloc(&s, data)?;
        self.fd.hwpt_alloc(&mut self.units, &mut self.mem, args)
    }
    fn hwpt_invalidate(
        &mut self,
        hwpt: u32,
        data_type: u32,
        entries: &[u8],
        entry_len: u32,
    ) -> (u32, Result<(), Errno>) {
        let s = abi::iommufd::HwptInvalidate {
            size: 32,
            hwpt_id: hwpt,
            data_type,
            entry_len,
            entry_num: entries.len().checked_div(entry_len as usize).unwrap_or(0) as u32,
            ..Default::default()
        };
        if let Err(e) = iommufd::abi_glue::invalidation_bytes(&s) {
            return (0, Err(e));
        }
        iommufd::abi_glue::invalidate(
            &mut self.fd,
            &mut self.units,
            &mut self.mem,
            hwpt,
            data_type,
            entries,
            entry_len as usize,
        )
    }
    fn fault_queue_alloc(&mut self, capacity: u32) -> Result<u32, Errno> {
        let s = abi::iommufd::FaultQueueAlloc { size: 16, capacity, ..Default::default() };
        self.fd.fault_queue_alloc(iommufd::abi_glue::fault_queue_capacity(&s)?)
    }
    fn fault_read(
        &mut self,
        queue: u32,
        room: usize,
        timeout_ms: u32,
    ) -> Result<(Vec<abi::iommufd::FaultRecord>, u64), Errno> {
        let (records, overflows) = self.fd.fault_read(queue, room)?;
        if records.is_empty() && timeout_ms > 0 && room > 0 {
            return Err(Errno::ETIMEDOUT);
        }
        let out = records.iter().map(iommufd::abi_glue::fault_record).collect();
        Ok((out, overflows))
    }
    fn pinned_pages(&mut self) -> Option<u64> {
        Some(self.fd.pinned_pages())
    }
    fn objects(&mut self) -> Option<u64> {
        Some(self.fd.len() as u64)
    }
}

#[test]
fn selftest_suite_on_the_mock() {
    let mut door = HostDoor::new();
    let mut lines = Vec::new();
    let (pass, fail, skip) = ioas_selftest::run(&mut door, &mut |l| lines.push(l.to_owned()));
    for l in &lines {
        println!("{l}");
    }
    assert_eq!(fail, 0, "{}", lines.iter().filter(|l| l.starts_with("not ok")).cloned().collect::<Vec<_>>().join("\n"));
    assert!(pass >= 100, "only {pass} cases passed ({skip} skipped)");
    // Nothing left behind: every pin dropped once the objects are gone.
    door.fd.close(&mut door.units, &mut door.mem);
    assert!(door.mem.pins.is_empty(), "pins left: {}", door.mem.pins.len());
}

/// The syscall fuzzer's iommufd sequences (`ioas_selftest::fuzz`) over the
/// object model and two mock units: the same generator and oracle as
/// `test-fuzz` in QEMU. `PORTCULLIS_FUZZ_SEED` / `PORTCULLIS_FUZZ_CALLS`
/// replay or lengthen a run; a failure names its seed and call.
#[test]
fn syscall_fuzz_sequences_on_the_mock() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| parse_u64(&v));
    let calls = env("PORTCULLIS_FUZZ_CALLS").unwrap_or(10_000);
    let seeds: Vec<u64> = match env("PORTCULLIS_FUZZ_SEED") {
        Some(s) => vec![s],
        None => vec![1, 2, 3, 0x5eed_f00d],
    };
    let mut total = 0;
    for seed in seeds {
        let mut door = HostDoor::new();
        // Read-only memory is a property of the real task's page tables; the
        // mock has unmapped pages (below every buffer and far above).
        let targets = ioas_selftest::fuzz::Targets { bad_vas: vec![0x10_0000, 0x7000_0000_0000], read_only: None };
        let stats = ioas_selftest::fuzz::run(&mut door, seed, calls, targets)
            .unwrap_or_else(|e| panic!("{e} (replay: PORTCULLIS_FUZZ_SEED={seed:#x})"));
        door.fd.close(&mut door.units, &mut door.mem);
        assert!(door.mem.pins.is_empty(), "seed {seed:#x}: pins left: {}", door.mem.pins.len());
        assert!(door.mem.quarantined.is_empty(), "seed {seed:#x}: quarantined pages");
        println!("seed {seed:#x}: {stats:?}");
        assert!(stats.ok * 20 > stats.calls, "seed {seed:#x}: only {} of {} calls succeeded", stats.ok, stats.calls);
        total += stats.calls;
    }
    println!("{total} fuzzed iommufd calls over the mock");
}

fn parse_u64(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

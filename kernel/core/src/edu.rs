//! A kernel-side driver for QEMU's `edu` test device (QEMU docs/specs/edu.rst),
//! used by the IOMMU tests of every architecture, and the checks of the
//! generic IOMMU interface they share.

use crate::pci::Device;
use alloc::vec::Vec;
use iommu::{DeviceId, DomainKind, FaultEvent, Iommu, Perms};
use ktest::{check, check_eq, TestError};

/// edu's DMA engine, reached through its BAR0.
pub struct Edu {
    regs: u64,
}

impl Edu {
    /// Device-side buffer address.
    const BUFFER: u64 = 0x4_0000;

    fn write64(&self, off: u64, v: u64) {
        // SAFETY: `regs` maps edu's BAR0 (device memory); 0x80..0x98 accept 8-byte writes.
        unsafe { ((self.regs + off) as *mut u64).write_volatile(v) }
    }

    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as above.
        unsafe { ((self.regs + off) as *const u64).read_volatile() }
    }

    fn write32(&self, off: u64, v: u32) {
        // SAFETY: `regs` maps edu's BAR0 (device memory); registers below 0x80 take 4-byte writes.
        unsafe { ((self.regs + off) as *mut u32).write_volatile(v) }
    }

    /// Raises edu's interrupt with status bits `status` (register 0x60): an
    /// MSI when its MSI capability is enabled, else INTx.
    pub fn raise_interrupt(&self, status: u32) {
        self.write32(0x60, status);
    }

    /// Clears status bits `status` (register 0x64), lowering INTx.
    pub fn ack_interrupt(&self, status: u32) {
        self.write32(0x64, status);
    }

    /// Copies `len` bytes between bus address `ram` and the edu buffer; waits
    /// up to 2 s (each DMA takes 100 ms of virtual time in QEMU).
    pub fn dma(&self, ram: u64, len: u64, to_ram: bool) -> Result<(), TestError> {
        let (src, dst) = if to_ram { (Self::BUFFER, ram) } else { (ram, Self::BUFFER) };
        self.write64(0x80, src);
        self.write64(0x88, dst);
        self.write64(0x90, len);
        self.write64(0x98, 1 | if to_ram { 2 } else { 0 });
        let t0 = crate::platform().uptime_ns();
        while self.read64(0x98) & 1 != 0 {
            if crate::platform().uptime_ns() - t0 > 2_000_000_000 {
                return Err(TestError::Failed("edu DMA did not finish in 2 s".into()));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }
}

/// Every edu device and the requester ID its DMA carries.
pub fn devices() -> Vec<(&'static Device, u16)> {
    let all = crate::pci::functions();
    crate::pci::devices()
        .iter()
        .filter(|d| (d.function.vendor, d.function.device) == (0x1234, 0x11E8))
        .map(|d| (d, pci::dma_requester_id(&d.function, all)))
        .collect()
}

/// Maps edu's BAR0 and turns bus mastering on.
pub fn open(d: &Device) -> Result<Edu, TestError> {
    let bar =
        d.function.bars.iter().find(|b| b.index == 0).copied().ok_or_else(|| TestError::Failed("no BAR0".into()))?;
    let m = crate::mm::map_mmio(crate::pci::bar_cpu_address(d, &bar), 0x100)
        .map_err(|_| TestError::Failed("map BAR".into()))?;
    if let Some(a) = crate::pci::access(d.function.bdf) {
        pci::set_bus_master(a, d.function.bdf, true);
    }
    Ok(Edu { regs: m.va })
}

/// Turns bus mastering off again.
pub fn close(d: &Device) {
    if let Some(a) = crate::pci::access(d.function.bdf) {
        pci::set_bus_master(a, d.function.bdf, false);
    }
}

/// After a test: frees its scratch frames and turns the edus' bus mastering off.
pub fn release(frames: &[u64], edus: &[(&Device, u16)]) {
    for &f in frames {
        let _ = crate::mm::free_frame(f);
    }
    for (d, _) in edus {
        close(d);
    }
}

/// Fills the frame at `pa` with `byte`.
pub fn fill(pa: u64, byte: u8) {
    // SAFETY: `pa` is a frame the test allocated, in the direct map.
    unsafe { core::ptr::write_bytes(crate::mm::phys_to_virt(pa) as *mut u8, byte, 4096) }
}

/// The bytes of the frame at `pa`.
pub fn frame_bytes(pa: u64) -> &'static [u8] {
    // SAFETY: as in `fill`; read while no DMA targets the frame.
    unsafe { core::slice::from_raw_parts(crate::mm::phys_to_virt(pa) as *const u8, 4096) }
}

/// Fills the frame at `pa` with a pattern derived from `seed`.
pub fn pattern(pa: u64, seed: u8) {
    for i in 0..4096u64 {
        // SAFETY: as in `fill`.
        unsafe { ((crate::mm::phys_to_virt(pa) + i) as *mut u8).write_volatile((i as u8).wrapping_mul(seed) ^ seed) };
    }
}

/// An IOMMU error as a test failure.
pub fn failed(e: iommu::Error) -> TestError {
    TestError::Failed(alloc::format!("{e}"))
}

/// The ID `unit` knows edu (requester ID `rid`) by, from the topology.
pub fn device_id(rid: u16) -> Option<DeviceId> {
    crate::pci::topology()?.translate_pci(0, rid).map(|t| DeviceId(t.id))
}

/// What the generic checks saw, for stricter driver-specific assertions.
pub struct GenericReport {
    /// Faults drained after the blocked DMA.
    pub blocked: Vec<FaultEvent>,
    /// Faults drained after the DMA to the unmapped IOVA.
    pub stale: Vec<FaultEvent>,
}

/// The generic door on one unit, the same on every IOMMU: identity lets edu
/// reach physical addresses, a device nobody attached reaches nothing
/// (default deny), blocked stops the DMA (canary unchanged), paging
/// translates, refuses maps outside the aperture or into other domain kinds,
/// and after unmap + flush the IOVA is blocked; then everything is detached
/// and freed. `frames`: three scratch frames (source, destination, canary).
/// `faults_reported`: whether the unit records faults at all (QEMU 10's
/// AMD-Vi never writes its event log, QEMU.md G2); when false, the stale IOVA
/// is proven blocked by memory alone and no fault may appear.
pub fn generic_domains(
    u: &mut dyn Iommu,
    dev: DeviceId,
    edu: &Edu,
    other: Option<&Edu>,
    frames: [u64; 3],
    faults_reported: bool,
) -> Result<GenericReport, TestError> {
    let [src, dst, canary] = frames;
    check!(u.devices().contains(&dev), "device {:#x} is not behind the unit ({:?})", dev.0, u.devices());
    let info = u.info();
    check!(info.page_sizes & 0x1000 != 0 && info.aperture.1 >= 0xFFFF_FFFF, "{info:?}");
    log::info!(
        "{} generic: aperture {:#x}-{:#x}, page sizes {:#x}, native identity {}",
        info.kind.name(),
        info.aperture.0,
        info.aperture.1,
        info.page_sizes,
        info.native_identity
    );
    pattern(src, 5);
    // Identity: physical addresses work as IOVAs.
    let ident = u.domain_alloc(DomainKind::Identity).map_err(failed)?;
    u.attach(dev, ident).map_err(failed)?;
    check_eq!(u.attached(dev), Some(ident));
    fill(dst, 0);
    edu.dma(src, 4096, false)?;
    edu.dma(dst, 4096, true)?;
    check!(frame_bytes(dst) == frame_bytes(src), "identity domain: data did not arrive");
    check!(u.drain_faults().is_empty(), "identity domain: unexpected fault");
    if let Some(e1) = other {
        // Default deny: a device nobody attached reaches nothing.
        fill(canary, 0xCC);
        e1.dma(canary, 4096, true)?;
        check!(frame_bytes(canary).iter().all(|&b| b == 0xCC), "an unattached device wrote memory");
        let _ = u.drain_faults();
    }
    // Blocked: nothing gets through.
    let blocked = u.domain_alloc(DomainKind::Blocked).map_err(failed)?;
    u.attach(dev, blocked).map_err(failed)?;
    fill(canary, 0xCC);
    edu.dma(canary, 4096, true)?;
    check!(frame_bytes(canary).iter().all(|&b| b == 0xCC), "a blocked device wrote memory");
    let blocked_faults = u.drain_faults();
    check!(blocked_faults.iter().all(|f| f.device == dev && f.address & !0xFFF == canary), "{blocked_faults:?}");
    // Paging: translated, and after unmap + flush the IOVA is blocked.
    let paging = u.domain_alloc(DomainKind::Paging).map_err(failed)?;
    u.map(paging, 0x10_0000, src, 4096, Perms::READ).map_err(failed)?;
    u.map(paging, 0x20_0000, dst, 4096, Perms::READ | Perms::WRITE).map_err(failed)?;
    check_eq!(u.iova_to_phys(paging, 0x20_0010), Some(dst + 0x10));
    check!(matches!(u.map(paging, 1 << 60, src, 4096, Perms::READ), Err(iommu::Error::OutOfAperture { .. })));
    check!(matches!(u.map(blocked, 0, src, 4096, Perms::READ), Err(iommu::Error::NotPaging(_))));
    u.attach(dev, paging).map_err(failed)?;
    check_eq!(u.domain_free(paging), Err(iommu::Error::Busy(paging)));
    fill(dst, 0);
    edu.dma(0x10_0000, 4096, false)?;
    edu.dma(0x20_0000, 4096, true)?;
    check!(frame_bytes(dst) == frame_bytes(src), "paging domain: data did not arrive");
    check_eq!(iommu::unmap_and_flush(u, paging, 0x20_0000, 4096), Ok(4096));
    fill(dst, 0x5A);
    edu.dma(0x20_0000, 4096, true)?;
    let stale = u.drain_faults();
    check!(stale.is_empty() != faults_reported, "after unmap + flush: {stale:?} (faults reported: {faults_reported})");
    check!(
        stale.iter().all(|f| f.device == dev && f.address & !0xFFF == 0x20_0000 && f.access != iommu::Access::Read),
        "{stale:?}"
    );
    check!(frame_bytes(dst).iter().all(|&b| b == 0x5A), "DMA reached an unmapped page");
    u.detach(dev).map_err(failed)?;
    check_eq!(u.attached(dev), None);
    // Detached: blocked again (the paging domain's mapping no longer applies).
    fill(src, 0x3C);
    edu.dma(0x10_0000, 4096, false)?;
    fill(dst, 0x5A);
    edu.dma(dst, 4096, true)?;
    check!(frame_bytes(dst).iter().all(|&b| b == 0x5A), "a detached device wrote memory");
    let _ = u.drain_faults();
    for d in [ident, blocked, paging] {
        u.domain_free(d).map_err(failed)?;
    }
    check_eq!(u.domain_free(paging), Err(iommu::Error::NoSuchDomain(paging)));
    Ok(GenericReport { blocked: blocked_faults, stale })
}

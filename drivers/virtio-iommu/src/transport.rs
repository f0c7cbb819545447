//! The virtio PCI modern transport (virtio 1.2 §4.1).
//!
//! [`find_caps`] reads the vendor-specific capabilities (§4.1.4) that say
//! where, inside which BAR, the common configuration, notification area, ISR
//! status and device configuration live. The kernel maps those BAR ranges and
//! hands them over as register windows ([`Mapped`]); [`MmioTransport`] then
//! drives them through the typed registers of [`crate::regs`], each block
//! checked against its window.
//!
//! The device layer talks to the hardware only through the [`Transport`]
//! trait, so host tests can put a simulated device behind it.

use crate::error::VirtioError;
use crate::regs::{self, Bypass, CommonCfg, IommuConfig, Isr, Notify, STATUS};
use alloc::vec::Vec;
use iommu::mmio::{BlockRef, MmioWindow, OutsideWindow};
use tock_registers::interfaces::Readable;

/// `cfg_type` values of virtio PCI capabilities (§4.1.4).
pub mod cfg_type {
    /// Common configuration.
    pub const COMMON: u8 = 1;
    /// Notifications.
    pub const NOTIFY: u8 = 2;
    /// ISR status.
    pub const ISR: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE: u8 = 4;
    /// PCI configuration access window.
    pub const PCI: u8 = 5;
    /// Shared memory region.
    pub const SHARED_MEMORY: u8 = 8;
    /// Vendor data.
    pub const VENDOR: u8 = 9;
}

/// Offsets inside `struct virtio_pci_cap` (§4.1.4).
mod cap {
    pub const VNDR: u16 = 0;
    pub const LEN: u16 = 2;
    pub const CFG_TYPE: u16 = 3;
    pub const BAR: u16 = 4;
    pub const OFFSET: u16 = 8;
    pub const LENGTH: u16 = 12;
    /// `notify_off_multiplier`, only in the notify capability.
    pub const NOTIFY_MULTIPLIER: u16 = 16;
    /// Bytes of `struct virtio_pci_cap`.
    pub const SIZE: u8 = 16;
    /// Bytes of `struct virtio_pci_notify_cap`.
    pub const NOTIFY_SIZE: u8 = 20;
}

/// Where one structure lives: a BAR and a byte range inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapRegion {
    /// BAR index (0–5).
    pub bar: u8,
    /// Offset of the structure in the BAR.
    pub offset: u32,
    /// Length of the structure in bytes.
    pub length: u32,
}

/// The four structures a virtio-iommu needs, from its capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciCaps {
    /// Common configuration (§4.1.4.3).
    pub common: CapRegion,
    /// Notification area (§4.1.4.4).
    pub notify: CapRegion,
    /// Bytes between the notification addresses of consecutive `queue_notify_off` values.
    pub notify_off_multiplier: u32,
    /// ISR status (§4.1.4.5).
    pub isr: CapRegion,
    /// Device configuration (§4.1.4.6, here `struct virtio_iommu_config`).
    pub device: CapRegion,
}

/// Reads the virtio capabilities among `cap_offsets` (the configuration-space
/// offsets of the function's vendor-specific capabilities, ID 0x09) through
/// `read8` / `read32` (configuration space reads at an offset). The first
/// capability of each type wins (§4.1.4: the driver uses the first it
/// understands); capabilities naming a reserved BAR (> 5) and types this
/// driver does not use are skipped. A capability of a used type that is too
/// short, or a structure too small for its fields, is an error.
pub fn find_caps(
    read8: impl Fn(u16) -> u8,
    read32: impl Fn(u16) -> u32,
    cap_offsets: &[u16],
) -> Result<PciCaps, VirtioError> {
    let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
    let mut multiplier = 0;
    for &at in cap_offsets {
        if read8(at + cap::VNDR) != 0x09 {
            continue;
        }
        let ty = read8(at + cap::CFG_TYPE);
        let bar = read8(at + cap::BAR);
        if bar > 5 {
            continue;
        }
        let slot = match ty {
            cfg_type::COMMON => &mut common,
            cfg_type::NOTIFY => &mut notify,
            cfg_type::ISR => &mut isr,
            cfg_type::DEVICE => &mut device,
            _ => continue,
        };
        if slot.is_some() {
            continue;
        }
        let len = read8(at + cap::LEN);
        let need = if ty == cfg_type::NOTIFY { cap::NOTIFY_SIZE } else { cap::SIZE };
        if len < need {
            return Err(VirtioError::BadCapability("virtio capability shorter than its structure"));
        }
        let region = CapRegion { bar, offset: read32(at + cap::OFFSET), length: read32(at + cap::LENGTH) };
        if ty == cfg_type::NOTIFY {
            multiplier = read32(at + cap::NOTIFY_MULTIPLIER);
            // §4.1.4.4: an even power of two, or 0 (every queue at the same address).
            if multiplier != 0 && (!multiplier.is_power_of_two() || multiplier == 1) {
                return Err(VirtioError::BadCapability("notify_off_multiplier is not 0 or an even power of 2"));
            }
        }
        *slot = Some(region);
    }
    let common = common.ok_or(VirtioError::MissingCapability("common configuration"))?;
    let notify = notify.ok_or(VirtioError::MissingCapability("notification"))?;
    let isr = isr.ok_or(VirtioError::MissingCapability("ISR status"))?;
    let device = device.ok_or(VirtioError::MissingCapability("device configuration"))?;
    if common.length < regs::COMMON_CFG_LEN {
        return Err(VirtioError::BadCapability("common configuration shorter than 0x38 bytes"));
    }
    if notify.length < 2 {
        return Err(VirtioError::BadCapability("notification area shorter than 2 bytes"));
    }
    if isr.length < 1 {
        return Err(VirtioError::BadCapability("empty ISR status"));
    }
    if device.length < regs::IOMMU_CFG_LEN {
        return Err(VirtioError::BadCapability("device configuration shorter than virtio_iommu_config"));
    }
    Ok(PciCaps { common, notify, notify_off_multiplier: multiplier, isr, device })
}

/// Where the kernel mapped each structure, from [`PciCaps`] and the BAR
/// mapping: `common` is the window of `common.length` bytes at
/// BAR(common.bar) + common.offset, etc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// Common configuration.
    pub common: MmioWindow,
    /// Notification area (queue `q` notifies at `queue_notify_off(q) * notify_multiplier` in it).
    pub notify: MmioWindow,
    /// [`PciCaps::notify_off_multiplier`].
    pub notify_multiplier: u32,
    /// ISR status.
    pub isr: MmioWindow,
    /// Device configuration.
    pub device: MmioWindow,
}

/// The device configuration (§5.13.4) as this driver uses it: fields whose
/// feature was not negotiated hold the value the spec implies instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Supported page sizes (bit n = 2^n bytes); the lowest set bit is the mapping granule.
    pub page_size_mask: u64,
    /// Lowest and highest (inclusive) IOVA (all of them without INPUT_RANGE).
    pub input_range: (u64, u64),
    /// Lowest and highest (inclusive) domain ID (all 32-bit IDs without DOMAIN_RANGE).
    pub domain_range: (u32, u32),
    /// Bytes of properties a PROBE reply carries (0 without PROBE).
    pub probe_size: u32,
    /// 1: endpoints not attached to a domain pass through untranslated; 0: their DMA faults.
    pub bypass: u8,
}

/// The ring addresses of one virtqueue (§2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rings {
    /// Descriptor table.
    pub desc: u64,
    /// Driver area (available ring).
    pub driver: u64,
    /// Device area (used ring).
    pub device: u64,
}

/// What the device layer needs from a virtio-iommu's transport. The kernel
/// uses [`MmioTransport`]; host tests put a simulated device behind it.
pub trait Transport: Send {
    /// The register-trace handle the transport's writes are traced under
    /// (set once, before bring-up; a transport without registers ignores it).
    fn set_tracer(&mut self, tracer: iommu::trace::Tracer) {
        let _ = tracer;
    }
    /// `device_status` (§2.1).
    fn status(&self) -> u8;
    /// Writes `device_status` (0 resets the device).
    fn set_status(&mut self, status: u8);
    /// The 64 feature bits the device offers (both `device_feature_select` halves).
    fn device_features(&mut self) -> u64;
    /// Writes the 64 feature bits the driver accepts.
    fn set_driver_features(&mut self, features: u64);
    /// `num_queues`.
    fn num_queues(&self) -> u16;
    /// The largest size queue `queue` can have (0: no such queue).
    fn queue_max(&mut self, queue: u16) -> u16;
    /// Programs queue `queue` with `size` entries at `rings` and enables it.
    fn enable_queue(&mut self, queue: u16, size: u16, rings: Rings);
    /// Tells the device that queue `queue` has new available buffers.
    fn notify(&mut self, queue: u16);
    /// `config_generation`: changes whenever the device configuration may have changed.
    fn config_generation(&self) -> u8;
    /// One read of the device configuration (the caller checks the generation).
    fn read_config(&self) -> Config;
    /// Writes `config.bypass` (only with VIRTIO_IOMMU_F_BYPASS_CONFIG).
    fn set_bypass(&mut self, bypass: u8);
    /// Reads the ISR status, which acknowledges it (§4.1.4.5).
    fn isr(&mut self) -> u8;
}

/// The transport over the memory-mapped structures of a virtio PCI device.
pub struct MmioTransport {
    common: BlockRef<CommonCfg>,
    device: BlockRef<IommuConfig>,
    /// `bypass`, when the device configuration window holds it.
    bypass: Option<BlockRef<Bypass>>,
    isr: BlockRef<Isr>,
    notify: MmioWindow,
    notify_multiplier: u32,
    /// `queue_notify_off` of each enabled queue, as (queue, offset).
    notify_offsets: Vec<(u16, u16)>,
    /// The register-trace handle of the device's unit.
    tracer: iommu::trace::Tracer,
}

/// The one way this transport writes a register: through the register
/// trace ([`iommu::trace::write`]), named as virtio 1.2 §4.1.4.3 and §5.13.4
/// name the fields, decoded by [`decode`].
fn wr<R>(t: iommu::trace::Tracer, reg: &R, name: &'static str, value: R::T)
where
    R: tock_registers::interfaces::Writeable,
    R::T: Into<u64>,
{
    iommu::trace::write(t, reg, name, value, decode)
}

/// Decodes a value written to the common or device configuration field
/// `name` (virtio 1.2 §2.1 device status bits; §4.1.4.3; §5.13.4), for the trace.
pub fn decode(name: &str, v: u64, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    match name {
        "device_status" if v == 0 => out.write_str("reset"),
        "device_status" => iommu::trace::flags(
            v,
            &[
                (0, "ACKNOWLEDGE"),
                (1, "DRIVER"),
                (2, "DRIVER_OK"),
                (3, "FEATURES_OK"),
                (6, "DEVICE_NEEDS_RESET"),
                (7, "FAILED"),
            ],
            out,
        ),
        "bypass" => {
            out.write_str(if v & 1 != 0 { "bypass unattached endpoints" } else { "block unattached endpoints" })
        }
        _ => Ok(()),
    }
}

/// Why a structure's registers are unusable: not naturally aligned, or
/// shorter than its capability said.
fn refused(e: OutsideWindow) -> VirtioError {
    if e.misaligned != 0 {
        VirtioError::BadCapability("a virtio structure is not naturally aligned")
    } else {
        VirtioError::BadCapability("a virtio structure is shorter than its registers")
    }
}

impl MmioTransport {
    /// Drives the structures in the windows of `mapped` (the notification
    /// window must reach every queue's notification address, which is
    /// checked when the queue is notified). Nothing else may access them.
    pub fn new(mapped: Mapped) -> Result<MmioTransport, VirtioError> {
        let common = mapped.common.checked::<CommonCfg>(0).map_err(refused)?;
        let device = mapped.device.checked::<IommuConfig>(0).map_err(refused)?;
        mapped.notify.checked::<Notify>(0).map_err(refused)?;
        let isr = mapped.isr.checked::<Isr>(0).map_err(refused)?;
        let bypass = mapped.device.checked::<Bypass>(regs::BYPASS_OFFSET).ok();
        Ok(MmioTransport {
            common,
            device,
            bypass,
            isr,
            notify: mapped.notify,
            notify_multiplier: mapped.notify_multiplier,
            notify_offsets: Vec::new(),
            tracer: iommu::trace::Tracer::NONE,
        })
    }

    fn common(&self) -> &CommonCfg {
        &self.common
    }

    fn device_cfg(&self) -> &IommuConfig {
        &self.device
    }

    fn isr_reg(&self) -> &Isr {
        &self.isr
    }
}

impl Transport for MmioTransport {
    fn status(&self) -> u8 {
        self.common().device_status.get()
    }

    fn set_tracer(&mut self, tracer: iommu::trace::Tracer) {
        self.tracer = tracer;
    }

    fn set_status(&mut self, status: u8) {
        wr(self.tracer, &self.common().device_status, "device_status", status);
    }

    fn device_features(&mut self) -> u64 {
        let (c, t) = (self.common(), self.tracer);
        wr(t, &c.device_feature_select, "device_feature_select", 0);
        let low = c.device_feature.get();
        wr(t, &c.device_feature_select, "device_feature_select", 1);
        let high = c.device_feature.get();
        u64::from(high) << 32 | u64::from(low)
    }

    fn set_driver_features(&mut self, features: u64) {
        let (c, t) = (self.common(), self.tracer);
        wr(t, &c.driver_feature_select, "driver_feature_select", 0);
        wr(t, &c.driver_feature, "driver_feature", features as u32);
        wr(t, &c.driver_feature_select, "driver_feature_select", 1);
        wr(t, &c.driver_feature, "driver_feature", (features >> 32) as u32);
    }

    fn num_queues(&self) -> u16 {
        self.common().num_queues.get()
    }

    fn queue_max(&mut self, queue: u16) -> u16 {
        let c = self.common();
        wr(self.tracer, &c.queue_select, "queue_select", queue);
        c.queue_size.get()
    }

    fn enable_queue(&mut self, queue: u16, size: u16, rings: Rings) {
        let (c, t) = (self.common(), self.tracer);
        wr(t, &c.queue_select, "queue_select", queue);
        wr(t, &c.queue_size, "queue_size", size);
        wr(t, &c.queue_desc_lo, "queue_desc (low)", rings.desc as u32);
        wr(t, &c.queue_desc_hi, "queue_desc (high)", (rings.desc >> 32) as u32);
        wr(t, &c.queue_driver_lo, "queue_driver (low)", rings.driver as u32);
        wr(t, &c.queue_driver_hi, "queue_driver (high)", (rings.driver >> 32) as u32);
        wr(t, &c.queue_device_lo, "queue_device (low)", rings.device as u32);
        wr(t, &c.queue_device_hi, "queue_device (high)", (rings.device >> 32) as u32);
        let off = c.queue_notify_off.get();
        wr(t, &c.queue_enable, "queue_enable", 1);
        self.notify_offsets.retain(|&(q, _)| q != queue);
        self.notify_offsets.push((queue, off));
    }

    fn notify(&mut self, queue: u16) {
        let off = self.notify_offsets.iter().find(|&&(q, _)| q == queue).map_or(0, |&(_, o)| o);
        let at = u64::from(off) * u64::from(self.notify_multiplier);
        match self.notify.block::<Notify>(at) {
            Ok(n) => wr(self.tracer, &n.queue_index, "queue_notify", queue),
            // The device placed the queue's notification outside its area: nothing is written.
            Err(e) => log::error!("virtio-iommu: queue {queue}: notification address: {e}"),
        }
    }

    fn config_generation(&self) -> u8 {
        self.common().config_generation.get()
    }

    fn read_config(&self) -> Config {
        let d = self.device_cfg();
        let wide = |lo: u32, hi: u32| u64::from(hi) << 32 | u64::from(lo);
        Config {
            page_size_mask: wide(d.page_size_mask_lo.get(), d.page_size_mask_hi.get()),
            input_range: (
                wide(d.input_start_lo.get(), d.input_start_hi.get()),
                wide(d.input_end_lo.get(), d.input_end_hi.get()),
            ),
            domain_range: (d.domain_start.get(), d.domain_end.get()),
            probe_size: d.probe_size.get(),
            bypass: self.bypass.map_or(0, |b| b.bypass.get()),
        }
    }

    fn set_bypass(&mut self, bypass: u8) {
        match self.bypass {
            Some(b) => wr(self.tracer, &b.bypass, "bypass", bypass),
            None => log::error!("virtio-iommu: the device configuration has no bypass field"),
        }
    }

    fn isr(&mut self) -> u8 {
        self.isr_reg().status.get()
    }
}

/// `device_status` bits (§2.1), as plain values for the device layer.
pub mod status {
    use super::STATUS;

    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u8 = STATUS::ACKNOWLEDGE.mask << STATUS::ACKNOWLEDGE.shift;
    /// DRIVER.
    pub const DRIVER: u8 = STATUS::DRIVER.mask << STATUS::DRIVER.shift;
    /// DRIVER_OK.
    pub const DRIVER_OK: u8 = STATUS::DRIVER_OK.mask << STATUS::DRIVER_OK.shift;
    /// FEATURES_OK.
    pub const FEATURES_OK: u8 = STATUS::FEATURES_OK.mask << STATUS::FEATURES_OK.shift;
    /// DEVICE_NEEDS_RESET.
    pub const DEVICE_NEEDS_RESET: u8 = STATUS::DEVICE_NEEDS_RESET.mask << STATUS::DEVICE_NEEDS_RESET.shift;
    /// FAILED.
    pub const FAILED: u8 = STATUS::FAILED.mask << STATUS::FAILED.shift;
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_register_write_goes_through_the_trace() {
        let bad = iommu::trace::untraced_writes(include_str!("transport.rs"), &["c.", "common()", "n.", "b."]);
        assert!(bad.is_empty(), "transport.rs: register writes outside `wr`: {bad:?}");
        assert_eq!(iommu::trace::untraced_writes("        c.queue_enable.set(1);", &["c."]).len(), 1);
    }

    #[test]
    fn config_writes_decode_by_spec_names() {
        let d = |name, v| {
            let mut s = alloc::string::String::new();
            decode(name, v, &mut s).unwrap();
            s
        };
        assert_eq!(d("device_status", 0), "reset");
        assert_eq!(d("device_status", 0xB), "ACKNOWLEDGE DRIVER FEATURES_OK");
        assert_eq!(d("bypass", 0), "block unattached endpoints");
        assert_eq!(d("queue_size", 16), "");
    }

    use super::*;
    use std::cell::RefCell;

    /// A configuration space with capabilities written at chosen offsets.
    struct Space(RefCell<[u8; 256]>);

    impl Space {
        fn new() -> Self {
            Space(RefCell::new([0; 256]))
        }
        fn cap(&self, at: u16, ty: u8, bar: u8, offset: u32, length: u32, extra: Option<u32>) {
            let mut s = self.0.borrow_mut();
            let a = at as usize;
            let len = if extra.is_some() { 20 } else { 16 };
            s[a..a + 8].copy_from_slice(&[0x09, 0, len, ty, bar, 0, 0, 0]);
            s[a + 8..a + 12].copy_from_slice(&offset.to_le_bytes());
            s[a + 12..a + 16].copy_from_slice(&length.to_le_bytes());
            if let Some(x) = extra {
                s[a + 16..a + 20].copy_from_slice(&x.to_le_bytes());
            }
        }
        fn read8(&self, at: u16) -> u8 {
            self.0.borrow()[at as usize]
        }
        fn read32(&self, at: u16) -> u32 {
            assert!(at.is_multiple_of(4), "unaligned dword read at {at:#x}");
            let s = self.0.borrow();
            u32::from_le_bytes(s[at as usize..at as usize + 4].try_into().unwrap())
        }
        fn find(&self, offsets: &[u16]) -> Result<PciCaps, VirtioError> {
            find_caps(|a| self.read8(a), |a| self.read32(a), offsets)
        }
    }

    /// QEMU 10's virtio-iommu-pci: everything in BAR 4 (QEMU.md §3.4),
    /// capabilities in the order `virtio_pci_device_plugged` adds them.
    fn qemu_like() -> (Space, Vec<u16>) {
        let s = Space::new();
        s.cap(0x90, cfg_type::COMMON, 4, 0x0, 0x1000, None);
        s.cap(0x80, cfg_type::ISR, 4, 0x1000, 0x1000, None);
        s.cap(0x70, cfg_type::DEVICE, 4, 0x2000, 0x1000, None);
        s.cap(0x58, cfg_type::NOTIFY, 4, 0x3000, 0x1000, Some(4));
        s.cap(0x40, cfg_type::PCI, 0, 0, 0, Some(0));
        (s, vec![0x90, 0x80, 0x70, 0x58, 0x40])
    }

    #[test]
    fn finds_qemus_layout() {
        let (s, offs) = qemu_like();
        let c = s.find(&offs).unwrap();
        assert_eq!(c.common, CapRegion { bar: 4, offset: 0, length: 0x1000 });
        assert_eq!(c.isr, CapRegion { bar: 4, offset: 0x1000, length: 0x1000 });
        assert_eq!(c.device, CapRegion { bar: 4, offset: 0x2000, length: 0x1000 });
        assert_eq!(c.notify, CapRegion { bar: 4, offset: 0x3000, length: 0x1000 });
        assert_eq!(c.notify_off_multiplier, 4);
    }

    #[test]
    fn first_capability_of_a_type_wins_and_reserved_bars_are_skipped() {
        let (s, mut offs) = qemu_like();
        s.cap(0xA0, cfg_type::COMMON, 7, 0x9000, 0x1000, None); // reserved BAR: ignored
        s.cap(0xB0, cfg_type::COMMON, 2, 0x8000, 0x1000, None); // later duplicate: ignored
        s.cap(0xC0, cfg_type::SHARED_MEMORY, 1, 0, 0x1000, None);
        offs.insert(0, 0xA0);
        offs.push(0xB0);
        offs.push(0xC0);
        let c = s.find(&offs).unwrap();
        assert_eq!(c.common, CapRegion { bar: 4, offset: 0, length: 0x1000 });
        // A non-vendor capability in the list is skipped too.
        s.0.borrow_mut()[0xD0] = 0x05;
        offs.push(0xD0);
        assert!(s.find(&offs).is_ok());
    }

    #[test]
    fn missing_and_malformed_capabilities() {
        let (s, offs) = qemu_like();
        let without_isr: Vec<u16> = offs.iter().copied().filter(|&o| o != 0x80).collect();
        assert_eq!(s.find(&without_isr), Err(VirtioError::MissingCapability("ISR status")));
        assert_eq!(s.find(&[]), Err(VirtioError::MissingCapability("common configuration")));
        // A notify capability without room for the multiplier.
        let (s, offs) = qemu_like();
        s.0.borrow_mut()[0x5A] = 16;
        assert!(matches!(s.find(&offs), Err(VirtioError::BadCapability(_))));
        // Odd multiplier.
        let (s, offs) = qemu_like();
        s.cap(0x58, cfg_type::NOTIFY, 4, 0x3000, 0x1000, Some(3));
        assert!(matches!(s.find(&offs), Err(VirtioError::BadCapability(_))));
        // Multiplier 0 is allowed (all queues share one address).
        let (s, offs) = qemu_like();
        s.cap(0x58, cfg_type::NOTIFY, 4, 0x3000, 0x1000, Some(0));
        assert_eq!(s.find(&offs).unwrap().notify_off_multiplier, 0);
        // Common configuration too small for the queue registers.
        let (s, offs) = qemu_like();
        s.cap(0x90, cfg_type::COMMON, 4, 0, 0x30, None);
        assert!(matches!(s.find(&offs), Err(VirtioError::BadCapability(_))));
        // Device configuration too small for virtio_iommu_config.
        let (s, offs) = qemu_like();
        s.cap(0x70, cfg_type::DEVICE, 4, 0x2000, 0x10, None);
        assert!(matches!(s.find(&offs), Err(VirtioError::BadCapability(_))));
    }

    #[test]
    fn status_values() {
        assert_eq!(
            [status::ACKNOWLEDGE, status::DRIVER, status::DRIVER_OK, status::FEATURES_OK, status::FAILED],
            [1, 2, 4, 8, 0x80]
        );
        assert_eq!(status::DEVICE_NEEDS_RESET, 0x40);
    }

    /// A fake BAR: common configuration at 0, ISR at 0x100, device
    /// configuration at 0x200 (`device_len` bytes), notification area at
    /// 0x300 (0x100 bytes, multiplier 4).
    fn fake_bar(device_len: u64) -> (iommu::mmio::FakeMmio, Mapped) {
        let fake = iommu::mmio::FakeMmio::new(0x1000).unwrap();
        let bar = fake.window();
        let mapped = Mapped {
            common: bar.sub(0, u64::from(regs::COMMON_CFG_LEN)).unwrap(),
            notify: bar.sub(0x300, 0x100).unwrap(),
            notify_multiplier: 4,
            isr: bar.sub(0x100, 1).unwrap(),
            device: bar.sub(0x200, device_len).unwrap(),
        };
        (fake, mapped)
    }

    fn byte(fake: &iommu::mmio::FakeMmio, at: u64) -> u8 {
        (fake.read_u64(at & !7) >> ((at & 7) * 8)) as u8
    }

    #[test]
    fn the_mmio_transport_drives_the_registers_in_its_windows() {
        let (fake, mapped) = fake_bar(0x28);
        let mut t = MmioTransport::new(mapped).unwrap();
        // Device configuration: page sizes, input range, domains, probe size, bypass.
        fake.write_u64(0x200, 0xFFFF_F000);
        fake.write_u64(0x208, 0x1000);
        fake.write_u64(0x210, 0xFFFF_FFFF_FFFF);
        fake.write_u64(0x218, 0x20_0000_0001);
        fake.write_u64(0x220, 1 << 32 | 0x200);
        let c = t.read_config();
        assert_eq!(c.page_size_mask, 0xFFFF_F000);
        assert_eq!(c.input_range, (0x1000, 0xFFFF_FFFF_FFFF));
        assert_eq!((c.domain_range, c.probe_size, c.bypass), ((1, 0x20), 0x200, 1));
        t.set_bypass(0);
        assert_eq!(byte(&fake, 0x224), 0);
        // Status and queue programming land in the common configuration.
        t.set_status(status::ACKNOWLEDGE | status::DRIVER);
        assert_eq!((byte(&fake, 0x14), t.status()), (3, 3));
        fake.write_u64(0x18, 2 << 48); // queue_notify_off of the selected queue: 2
        t.enable_queue(1, 16, Rings { desc: 0x1_2345_6000, driver: 0x7000, device: 0x8000 });
        assert_eq!(fake.read_u64(0x20), 0x1_2345_6000);
        assert_eq!((fake.read_u32(0x28), fake.read_u32(0x30)), (0x7000, 0x8000));
        assert_eq!(fake.read_u32(0x1C) & 0xFFFF, 1, "queue_enable");
        // The notification goes to 0x300 + 2 * 4.
        t.notify(1);
        assert_eq!(fake.read_u64(0x308) & 0xFFFF, 1);
        // A queue whose notification address leaves the area is not notified (and nothing panics).
        fake.write_u64(0x18, 0x100 << 48);
        t.enable_queue(0, 16, Rings { desc: 0, driver: 0, device: 0 });
        t.notify(0);
        assert_eq!(fake.read_u64(0x300), 0);
    }

    #[test]
    fn short_or_misaligned_structures_are_refused() {
        // No bypass field: read as 0, never written.
        let (fake, mapped) = fake_bar(u64::from(regs::IOMMU_CFG_LEN));
        fake.write_u64(0x220, 1 << 32);
        let mut t = MmioTransport::new(mapped).unwrap();
        assert_eq!(t.read_config().bypass, 0);
        t.set_bypass(0);
        assert_eq!(byte(&fake, 0x224), 1);
        let (fake, mut mapped) = fake_bar(0x28);
        mapped.device = fake.window().sub(0x200, 0x20).unwrap();
        assert_eq!(
            MmioTransport::new(mapped).err(),
            Some(VirtioError::BadCapability("a virtio structure is shorter than its registers"))
        );
        mapped.device = fake.window().sub(0x202, 0x28).unwrap();
        assert_eq!(
            MmioTransport::new(mapped).err(),
            Some(VirtioError::BadCapability("a virtio structure is not naturally aligned"))
        );
        let (fake, mut mapped) = fake_bar(0x28);
        mapped.notify = fake.window().sub(0x301, 2).unwrap();
        assert!(MmioTransport::new(mapped).is_err());
    }
}

//! virtio-iommu requests, PROBE properties and fault events as bytes
//! (virtio 1.2 §5.13.6 requests, §5.13.6.8 PROBE, §5.13.7 fault events).
//!
//! Every request is `head { u8 type; u8 reserved[3] }`, a type-specific body
//! the device reads, then `tail { u8 status; u8 reserved[3] }` (preceded by
//! the properties for PROBE) the device writes. [`Request::encode`] produces
//! the device-readable part, [`Request::response_len`] sizes the
//! device-writable part. All fields are little-endian.

use alloc::vec::Vec;
use core::fmt;
use fallible::VecExt;
use iommu::{Region, ReservedKind};

/// Request types (§5.13.6).
pub mod kind {
    /// Attach an endpoint to a domain.
    pub const ATTACH: u8 = 1;
    /// Detach an endpoint from its domain.
    pub const DETACH: u8 = 2;
    /// Create a mapping in a domain.
    pub const MAP: u8 = 3;
    /// Remove the mappings inside a range.
    pub const UNMAP: u8 = 4;
    /// Ask for an endpoint's properties.
    pub const PROBE: u8 = 5;
}

/// Status codes of the request tail (§5.13.6).
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Virtio communication error.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
    /// Internal device error.
    pub const DEVERR: u8 = 3;
    /// Invalid parameters.
    pub const INVAL: u8 = 4;
    /// Out-of-range parameters.
    pub const RANGE: u8 = 5;
    /// Unknown endpoint or domain.
    pub const NOENT: u8 = 6;
    /// Bad address.
    pub const FAULT: u8 = 7;
    /// Insufficient resources.
    pub const NOMEM: u8 = 8;
}

/// The spec's name of a status code (`"INVAL"`), `"?"` for unknown codes.
pub fn status_name(code: u8) -> &'static str {
    match code {
        status::OK => "OK",
        status::IOERR => "IOERR",
        status::UNSUPP => "UNSUPP",
        status::DEVERR => "DEVERR",
        status::INVAL => "INVAL",
        status::RANGE => "RANGE",
        status::NOENT => "NOENT",
        status::FAULT => "FAULT",
        status::NOMEM => "NOMEM",
        _ => "?",
    }
}

/// A status code with its meaning, for error values that carry one string.
pub fn status_message(code: u8) -> &'static str {
    match code {
        status::OK => "virtio-iommu: OK",
        status::IOERR => "virtio-iommu: IOERR (virtio communication error)",
        status::UNSUPP => "virtio-iommu: UNSUPP (request not supported)",
        status::DEVERR => "virtio-iommu: DEVERR (internal device error)",
        status::INVAL => "virtio-iommu: INVAL (invalid parameters)",
        status::RANGE => "virtio-iommu: RANGE (parameters out of range)",
        status::NOENT => "virtio-iommu: NOENT (unknown endpoint or domain)",
        status::FAULT => "virtio-iommu: FAULT (bad address)",
        status::NOMEM => "virtio-iommu: NOMEM (out of resources)",
        _ => "virtio-iommu: unknown status code",
    }
}

/// Feature bits: the device-specific ones (§5.13.3) and the generic ones
/// this driver looks at (§6).
pub mod feature {
    /// `input_range` is valid.
    pub const INPUT_RANGE: u32 = 0;
    /// `domain_range` is valid.
    pub const DOMAIN_RANGE: u32 = 1;
    /// MAP and UNMAP requests.
    pub const MAP_UNMAP: u32 = 2;
    /// Unattached endpoints bypass the IOMMU (legacy, before BYPASS_CONFIG).
    pub const BYPASS: u32 = 3;
    /// PROBE requests; `probe_size` is valid.
    pub const PROBE: u32 = 4;
    /// The MAP flag MMIO.
    pub const MMIO: u32 = 5;
    /// `config.bypass` and the ATTACH flag BYPASS.
    pub const BYPASS_CONFIG: u32 = 6;
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u32 = 29;
    /// Virtio 1.0 or later (modern device).
    pub const VERSION_1: u32 = 32;
    /// The device's own DMA goes through the platform's translation.
    pub const ACCESS_PLATFORM: u32 = 33;
    /// Virtqueues can be reset one by one.
    pub const RING_RESET: u32 = 40;

    /// Feature `bit` as a mask of the 64 feature bits.
    pub fn bit(bit: u32) -> u64 {
        1u64.checked_shl(bit).unwrap_or(0)
    }

    /// Whether feature `bit` is set in `features`.
    pub fn has(features: u64, bit: u32) -> bool {
        features & self::bit(bit) != 0
    }

    /// The spec's name of feature `bit`, if this driver knows it.
    pub fn name(bit: u32) -> Option<&'static str> {
        Some(match bit {
            INPUT_RANGE => "INPUT_RANGE",
            DOMAIN_RANGE => "DOMAIN_RANGE",
            MAP_UNMAP => "MAP_UNMAP",
            BYPASS => "BYPASS",
            PROBE => "PROBE",
            MMIO => "MMIO",
            BYPASS_CONFIG => "BYPASS_CONFIG",
            RING_INDIRECT_DESC => "RING_INDIRECT_DESC",
            RING_EVENT_IDX => "RING_EVENT_IDX",
            VERSION_1 => "VERSION_1",
            ACCESS_PLATFORM => "ACCESS_PLATFORM",
            RING_RESET => "RING_RESET",
            _ => return None,
        })
    }

    /// The set bits of `features` by name (`bit N` for unknown ones), low bits first.
    pub fn names(features: u64) -> alloc::vec::Vec<alloc::string::String> {
        (0..64)
            .filter(|b| features >> b & 1 != 0)
            .map(|b| name(b).map_or_else(|| alloc::format!("bit {b}"), alloc::string::String::from))
            .collect()
    }
}

/// ATTACH flag: the domain lets DMA through untranslated (with BYPASS_CONFIG).
pub const ATTACH_F_BYPASS: u32 = 1;

/// MAP flags (§5.13.6.6).
pub mod map_flags {
    /// The endpoint may read.
    pub const READ: u32 = 1;
    /// The endpoint may write.
    pub const WRITE: u32 = 2;
    /// The mapping targets MMIO (needs VIRTIO_IOMMU_F_MMIO).
    pub const MMIO: u32 = 4;
}

/// Bytes of the request tail.
pub const TAIL_LEN: usize = 4;

/// Bytes of the longest device-readable part of a request: PROBE's head,
/// endpoint and 64 reserved bytes (§5.13.6.8; ATTACH and DETACH take 20,
/// MAP 36, UNMAP 28).
pub const MAX_REQUEST_LEN: usize = 72;

/// A request's device-readable bytes ([`Request::encode`]), held inline:
/// encoding never touches the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    bytes: [u8; MAX_REQUEST_LEN],
    len: usize,
}

impl Encoded {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Appends `data` (every layout fits [`MAX_REQUEST_LEN`]; the encoder
    /// above is the only caller).
    fn put(&mut self, data: &[u8]) {
        let end = self.len + data.len();
        self.bytes[self.len..end].copy_from_slice(data);
        self.len = end;
    }
}

impl core::ops::Deref for Encoded {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// One request, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Put `endpoint` in `domain` (creating the domain if the device has none by that ID).
    Attach {
        /// Domain ID.
        domain: u32,
        /// Endpoint ID.
        endpoint: u32,
        /// ATTACH_F_BYPASS: a bypass domain.
        bypass: bool,
    },
    /// Take `endpoint` out of `domain`.
    Detach {
        /// Domain ID (must be the endpoint's domain).
        domain: u32,
        /// Endpoint ID.
        endpoint: u32,
    },
    /// Map `[virt_start, virt_end]` (inclusive) to `phys_start`.
    Map {
        /// Domain ID.
        domain: u32,
        /// First IOVA.
        virt_start: u64,
        /// Last IOVA (inclusive).
        virt_end: u64,
        /// Physical address of `virt_start`.
        phys_start: u64,
        /// [`map_flags`].
        flags: u32,
    },
    /// Remove every mapping inside `[virt_start, virt_end]`.
    Unmap {
        /// Domain ID.
        domain: u32,
        /// First IOVA.
        virt_start: u64,
        /// Last IOVA (inclusive).
        virt_end: u64,
    },
    /// Ask for `endpoint`'s properties.
    Probe {
        /// Endpoint ID.
        endpoint: u32,
    },
}

/// An ATTACH request.
pub fn attach(domain: u32, endpoint: u32, bypass: bool) -> Request {
    Request::Attach { domain, endpoint, bypass }
}

/// A DETACH request.
pub fn detach(domain: u32, endpoint: u32) -> Request {
    Request::Detach { domain, endpoint }
}

/// A MAP request for `[virt_start, virt_end]` (inclusive).
pub fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> Request {
    Request::Map { domain, virt_start, virt_end, phys_start, flags }
}

/// An UNMAP request for `[virt_start, virt_end]` (inclusive).
pub fn unmap(domain: u32, virt_start: u64, virt_end: u64) -> Request {
    Request::Unmap { domain, virt_start, virt_end }
}

/// A PROBE request.
pub fn probe(endpoint: u32) -> Request {
    Request::Probe { endpoint }
}

impl Request {
    /// The request type code ([`kind`]).
    pub fn kind(&self) -> u8 {
        match self {
            Request::Attach { .. } => kind::ATTACH,
            Request::Detach { .. } => kind::DETACH,
            Request::Map { .. } => kind::MAP,
            Request::Unmap { .. } => kind::UNMAP,
            Request::Probe { .. } => kind::PROBE,
        }
    }

    /// The request's name in the spec.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Attach { .. } => "ATTACH",
            Request::Detach { .. } => "DETACH",
            Request::Map { .. } => "MAP",
            Request::Unmap { .. } => "UNMAP",
            Request::Probe { .. } => "PROBE",
        }
    }

    /// The device-readable bytes: head and body, without the tail
    /// (§5.13.6.4–§5.13.6.8 layouts; reserved bytes are zero), on the stack.
    pub fn encode(&self) -> Encoded {
        let mut b = Encoded { bytes: [0; MAX_REQUEST_LEN], len: 0 };
        b.put(&[self.kind(), 0, 0, 0]);
        match *self {
            Request::Attach { domain, endpoint, bypass } => {
                b.put(&domain.to_le_bytes());
                b.put(&endpoint.to_le_bytes());
                b.put(&(if bypass { ATTACH_F_BYPASS } else { 0 }).to_le_bytes());
                b.put(&[0; 4]);
            }
            Request::Detach { domain, endpoint } => {
                b.put(&domain.to_le_bytes());
                b.put(&endpoint.to_le_bytes());
                b.put(&[0; 8]);
            }
            Request::Map { domain, virt_start, virt_end, phys_start, flags } => {
                b.put(&domain.to_le_bytes());
                b.put(&virt_start.to_le_bytes());
                b.put(&virt_end.to_le_bytes());
                b.put(&phys_start.to_le_bytes());
                b.put(&flags.to_le_bytes());
            }
            Request::Unmap { domain, virt_start, virt_end } => {
                b.put(&domain.to_le_bytes());
                b.put(&virt_start.to_le_bytes());
                b.put(&virt_end.to_le_bytes());
                b.put(&[0; 4]);
            }
            Request::Probe { endpoint } => {
                b.put(&endpoint.to_le_bytes());
                b.put(&[0; 64]);
            }
        }
        b
    }

    /// Bytes the device writes: the tail, after `probe_size` bytes of
    /// properties for PROBE (QEMU fills exactly this much and refuses
    /// smaller buffers, `virtio_iommu_handle_command`).
    pub fn response_len(&self, probe_size: u32) -> usize {
        match self {
            Request::Probe { .. } => probe_size as usize + TAIL_LEN,
            _ => TAIL_LEN,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Request::Attach { domain, endpoint, bypass } => {
                write!(f, "ATTACH endpoint {endpoint:#x} to domain {domain}{}", if bypass { " (bypass)" } else { "" })
            }
            Request::Detach { domain, endpoint } => write!(f, "DETACH endpoint {endpoint:#x} from domain {domain}"),
            Request::Map { domain, virt_start, virt_end, phys_start, flags } => write!(
                f,
                "MAP domain {domain} [{virt_start:#x}, {virt_end:#x}] -> {phys_start:#x} {}{}{}",
                if flags & map_flags::READ != 0 { "R" } else { "-" },
                if flags & map_flags::WRITE != 0 { "W" } else { "-" },
                if flags & map_flags::MMIO != 0 { " MMIO" } else { "" },
            ),
            Request::Unmap { domain, virt_start, virt_end } => {
                write!(f, "UNMAP domain {domain} [{virt_start:#x}, {virt_end:#x}]")
            }
            Request::Probe { endpoint } => write!(f, "PROBE endpoint {endpoint:#x}"),
        }
    }
}

/// PROBE property types (§5.13.6.8).
pub mod property {
    /// End of the property list.
    pub const NONE: u16 = 0;
    /// A reserved memory region.
    pub const RESV_MEM: u16 = 1;
    /// Bits of the type field that hold the type.
    pub const TYPE_MASK: u16 = 0xFFF;
    /// Bytes of a property header (`le16 type; le16 length`).
    pub const HEADER_LEN: usize = 4;
    /// Bytes of a RESV_MEM value (`u8 subtype; u8 reserved[3]; le64 start; le64 end`).
    pub const RESV_MEM_LEN: usize = 20;
    /// RESV_MEM subtype: accesses are not allowed.
    pub const RESV_MEM_T_RESERVED: u8 = 0;
    /// RESV_MEM subtype: the MSI doorbell window, identity-mapped by the device.
    pub const RESV_MEM_T_MSI: u8 = 1;
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Why a PROBE reply was not taken ([`parse_probe`]); the device layer
/// reports it as `VirtioError::BadProbe` or `VirtioError::NoMemory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// A property does not parse (where, why).
    Bad {
        /// Byte offset of the bad property.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// No heap for the list of regions.
    NoMemory,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Bad { offset, what } => write!(f, "PROBE reply at byte {offset}: {what}"),
            ProbeError::NoMemory => f.write_str("out of memory for the PROBE regions"),
        }
    }
}

/// The reserved regions in a PROBE reply's property area (`probe_size`
/// bytes, the tail excluded). Properties follow each other without padding
/// until a NONE type or the end; unknown types are skipped; RESV_MEM gives a
/// [`Region`] (subtype MSI → [`ReservedKind::Msi`], RESERVED and unknown
/// subtypes → [`ReservedKind::Reserved`], never usable as IOVA). A property
/// that does not fit the buffer is an error, never a panic.
pub fn parse_probe(props: &[u8]) -> Result<Vec<Region>, ProbeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < props.len() {
        if props.len() - at < property::HEADER_LEN {
            if props[at..].iter().any(|&b| b != 0) {
                return Err(ProbeError::Bad { offset: at, what: "truncated property header" });
            }
            break;
        }
        let ty = le16(props, at) & property::TYPE_MASK;
        let len = usize::from(le16(props, at + 2));
        if ty == property::NONE {
            break;
        }
        let value = at + property::HEADER_LEN;
        if len > props.len() - value {
            return Err(ProbeError::Bad { offset: at, what: "property length runs past the probe buffer" });
        }
        if ty == property::RESV_MEM {
            if len < property::RESV_MEM_LEN {
                return Err(ProbeError::Bad { offset: at, what: "RESV_MEM property shorter than 20 bytes" });
            }
            let (start, end) = (le64(props, value + 4), le64(props, value + 12));
            if start > end {
                return Err(ProbeError::Bad { offset: at, what: "RESV_MEM region ends before it starts" });
            }
            let kind = match props[value] {
                property::RESV_MEM_T_MSI => ReservedKind::Msi,
                _ => ReservedKind::Reserved,
            };
            out.try_push(Region { start, end, kind }).map_err(|_| ProbeError::NoMemory)?;
        }
        at = value + len;
    }
    Ok(out)
}

/// Fault reasons (§5.13.7).
pub mod reason {
    /// The endpoint is unknown to the device.
    pub const UNKNOWN: u8 = 0;
    /// The endpoint is not attached to a domain.
    pub const DOMAIN: u8 = 1;
    /// No mapping, or the mapping forbids the access.
    pub const MAPPING: u8 = 2;
}

/// Fault flags (§5.13.7).
pub mod fault_flags {
    /// The access was a read.
    pub const READ: u32 = 1;
    /// The access was a write.
    pub const WRITE: u32 = 2;
    /// The access was an instruction fetch.
    pub const EXEC: u32 = 4;
    /// `address` is valid.
    pub const ADDRESS: u32 = 0x100;
}

/// Bytes of a fault record.
pub const FAULT_LEN: usize = 24;

/// A fault record from the event queue, decoded (§5.13.7:
/// `u8 reason; u8 reserved[3]; le32 flags; le32 endpoint; u8 reserved[4]; le64 address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// [`reason`].
    pub reason: u8,
    /// [`fault_flags`].
    pub flags: u32,
    /// The endpoint that made the access.
    pub endpoint: u32,
    /// The faulting IOVA (0 unless [`fault_flags::ADDRESS`] is set).
    pub address: u64,
}

impl Fault {
    /// Decodes a record; `None` when fewer than [`FAULT_LEN`] bytes arrived.
    pub fn decode(bytes: &[u8]) -> Option<Fault> {
        if bytes.len() < FAULT_LEN {
            return None;
        }
        let flags = le32(bytes, 4);
        Some(Fault {
            reason: bytes[0],
            flags,
            endpoint: le32(bytes, 8),
            address: if flags & fault_flags::ADDRESS != 0 { le64(bytes, 16) } else { 0 },
        })
    }

    /// The reason's description.
    pub fn reason_name(&self) -> &'static str {
        match self.reason {
            reason::UNKNOWN => "unknown endpoint",
            reason::DOMAIN => "endpoint has no domain",
            reason::MAPPING => "mapping fault",
            _ => "unknown fault reason",
        }
    }

    /// The direction the device named: QEMU names one only when a mapping
    /// exists but forbids the access (`virtio_iommu_translate`); a missing
    /// mapping comes with the address alone.
    pub fn access(&self) -> iommu::Access {
        if self.flags & fault_flags::WRITE != 0 {
            iommu::Access::Write
        } else if self.flags & fault_flags::READ != 0 {
            iommu::Access::Read
        } else {
            iommu::Access::Unknown
        }
    }

    /// As the generic fault type.
    pub fn to_event(&self) -> iommu::FaultEvent {
        iommu::FaultEvent {
            device: iommu::DeviceId(self.endpoint),
            address: self.address,
            access: self.access(),
            reason: u32::from(self.reason),
            reason_name: self.reason_name(),
        }
    }
}

/// Decodes an encoded request (its device-readable part) by the spec's
/// names (virtio 1.2 §5.13.6.3–§5.13.6.7): `ATTACH (domain=1 endpoint=0x8
/// flags=0)`, `MAP (domain=1 virt_start=0x1000 virt_end=0x1fff
/// phys_start=0x40000 flags=READ|WRITE)`. Bytes past the end read as 0.
pub fn decode(body: &[u8], out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    let byte = |at: usize| body.get(at).copied().unwrap_or(0);
    let le32 = |at: usize| u32::from_le_bytes([byte(at), byte(at + 1), byte(at + 2), byte(at + 3)]);
    let le64 = |at: usize| u64::from(le32(at)) | u64::from(le32(at + 4)) << 32;
    match byte(0) {
        kind::ATTACH => write!(
            out,
            "ATTACH (domain={} endpoint={:#x} flags={})",
            le32(4),
            le32(8),
            if le32(12) & ATTACH_F_BYPASS != 0 { "BYPASS" } else { "0" }
        ),
        kind::DETACH => write!(out, "DETACH (domain={} endpoint={:#x})", le32(4), le32(8)),
        kind::MAP => {
            write!(
                out,
                "MAP (domain={} virt_start={:#x} virt_end={:#x} phys_start={:#x} flags=",
                le32(4),
                le64(8),
                le64(16),
                le64(24)
            )?;
            let f = le32(32);
            let mut any = false;
            for (bit, name) in [(1, "READ"), (2, "WRITE"), (4, "MMIO")] {
                if f & bit != 0 {
                    out.write_str(if any { "|" } else { "" })?;
                    out.write_str(name)?;
                    any = true;
                }
            }
            out.write_str(if any { ")" } else { "0)" })
        }
        kind::UNMAP => write!(out, "UNMAP (domain={} virt_start={:#x} virt_end={:#x})", le32(4), le64(8), le64(16)),
        kind::PROBE => write!(out, "PROBE (endpoint={:#x})", le32(4)),
        t => write!(out, "request type {t} (unknown)"),
    }
}

/// Request bytes as the queue history keeps them: the first 40 (enough for
/// every request's fields), little-endian in five words.
pub fn history_words(body: &[u8]) -> [u64; 5] {
    let mut w = [0u64; 5];
    for (i, b) in body.iter().take(40).enumerate() {
        w[i / 8] |= u64::from(*b) << (8 * (i % 8));
    }
    w
}

/// [`decode`] of what [`history_words`] kept.
pub fn decode_words(w: &[u64; 5], out: &mut dyn core::fmt::Write) -> core::fmt::Result {
    let mut bytes = [0u8; 40];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (w[i / 8] >> (8 * (i % 8))) as u8;
    }
    decode(&bytes, out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn requests_decode_by_spec_names() {
        let d = |r: Request| {
            let mut s = alloc::string::String::new();
            decode_words(&history_words(&r.encode()), &mut s).unwrap();
            s
        };
        assert_eq!(
            d(Request::Attach { domain: 1, endpoint: 8, bypass: false }),
            "ATTACH (domain=1 endpoint=0x8 flags=0)"
        );
        assert_eq!(
            d(Request::Attach { domain: 2, endpoint: 8, bypass: true }),
            "ATTACH (domain=2 endpoint=0x8 flags=BYPASS)"
        );
        assert_eq!(d(Request::Detach { domain: 1, endpoint: 0x10 }), "DETACH (domain=1 endpoint=0x10)");
        assert_eq!(
            d(Request::Map { domain: 1, virt_start: 0x1000, virt_end: 0x1fff, phys_start: 0x4000_0000, flags: 3 }),
            "MAP (domain=1 virt_start=0x1000 virt_end=0x1fff phys_start=0x40000000 flags=READ|WRITE)"
        );
        assert_eq!(
            d(Request::Unmap { domain: 1, virt_start: 0x3000, virt_end: 0x3fff }),
            "UNMAP (domain=1 virt_start=0x3000 virt_end=0x3fff)"
        );
        assert_eq!(d(Request::Probe { endpoint: 8 }), "PROBE (endpoint=0x8)");
        let mut s = alloc::string::String::new();
        decode(&[9], &mut s).unwrap();
        assert_eq!(s, "request type 9 (unknown)");
    }

    use super::*;

    #[test]
    fn attach_and_detach_bytes() {
        // struct virtio_iommu_req_attach minus the tail: 20 bytes.
        assert_eq!(
            attach(0x0102_0304, 0x10, true).encode().as_bytes(),
            [1, 0, 0, 0, 4, 3, 2, 1, 0x10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(attach(7, 0x18, false).encode()[12..16], [0, 0, 0, 0]);
        // struct virtio_iommu_req_detach minus the tail: 20 bytes.
        assert_eq!(
            detach(7, 0x20).encode().as_bytes(),
            [2, 0, 0, 0, 7, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn map_and_unmap_bytes() {
        let m = map(5, 0x1000, 0x1FFF, 0x8_0000_0000, map_flags::READ | map_flags::WRITE).encode();
        let mut want = vec![3, 0, 0, 0, 5, 0, 0, 0];
        want.extend_from_slice(&[0x00, 0x10, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0xFF, 0x1F, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
        want.extend_from_slice(&[3, 0, 0, 0]);
        assert_eq!(m.as_bytes(), want, "virtio_iommu_req_map: 36 bytes before the tail");
        let u = unmap(9, 0xFFFF_0000_0000_0000, u64::MAX).encode();
        let mut want = vec![4, 0, 0, 0, 9, 0, 0, 0];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0xFF, 0xFF]);
        want.extend_from_slice(&[0xFF; 8]);
        want.extend_from_slice(&[0; 4]);
        assert_eq!(u.as_bytes(), want, "virtio_iommu_req_unmap: 28 bytes before the tail");
    }

    #[test]
    fn probe_bytes_and_response_sizes() {
        let p = probe(0x0123).encode();
        assert_eq!(p.len(), 72, "head, endpoint and 64 reserved bytes");
        assert_eq!(p[..8], [5, 0, 0, 0, 0x23, 0x01, 0, 0]);
        assert!(p[8..].iter().all(|&b| b == 0));
        assert_eq!(probe(1).response_len(0x200), 0x204);
        assert_eq!(map(1, 0, 0xFFF, 0, 1).response_len(0x200), 4);
        assert_eq!(probe(1).kind(), kind::PROBE);
        assert_eq!(unmap(1, 0, 1).name(), "UNMAP");
    }

    #[test]
    fn requests_print_readably() {
        let s = alloc::format!("{}", map(3, 0x10_0000, 0x10_0FFF, 0x4000, map_flags::READ));
        assert_eq!(s, "MAP domain 3 [0x100000, 0x100fff] -> 0x4000 R-");
        assert_eq!(alloc::format!("{}", attach(2, 0x20, true)), "ATTACH endpoint 0x20 to domain 2 (bypass)");
    }

    #[test]
    fn status_and_feature_names() {
        assert_eq!(status_name(status::RANGE), "RANGE");
        assert_eq!(status_name(status::NOENT), "NOENT");
        assert_eq!(status_name(42), "?");
        assert!(status_message(status::INVAL).contains("INVAL"));
        let names = feature::names(1 << 32 | 1 << 2 | 1 << 6 | 1 << 50);
        assert_eq!(names, ["MAP_UNMAP", "BYPASS_CONFIG", "VERSION_1", "bit 50"]);
    }

    /// A RESV_MEM property as QEMU's `virtio_iommu_fill_resv_mem_prop` writes it.
    fn resv_mem(subtype: u8, start: u64, end: u64) -> Vec<u8> {
        let mut p = vec![1, 0, 20, 0, subtype, 0, 0, 0];
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&end.to_le_bytes());
        p
    }

    #[test]
    fn probe_properties_give_regions() {
        let mut buf = resv_mem(1, 0xFEE0_0000, 0xFEEF_FFFF);
        buf.extend(resv_mem(0, 0x1_0000, 0x1_FFFF));
        buf.resize(512, 0);
        let r = parse_probe(&buf).unwrap();
        assert_eq!(
            r,
            [
                Region { start: 0xFEE0_0000, end: 0xFEEF_FFFF, kind: ReservedKind::Msi },
                Region { start: 0x1_0000, end: 0x1_FFFF, kind: ReservedKind::Reserved },
            ]
        );
        assert_eq!(parse_probe(&[0; 512]).unwrap(), [], "all zero: no properties");
        assert_eq!(parse_probe(&[]).unwrap(), []);
    }

    #[test]
    fn unknown_properties_and_subtypes() {
        // An unknown type (0x0ABC, length 6) is skipped; the upper type bits are ignored.
        let mut buf = vec![0xBC, 0x0A, 6, 0, 1, 2, 3, 4, 5, 6];
        let mut flagged = resv_mem(1, 0x1000, 0x1FFF);
        flagged[1] |= 0x10; // bit 12 of the type field
        buf.extend(flagged);
        buf.extend(resv_mem(9, 0x5000, 0x5FFF)); // unknown subtype: treated as reserved
        buf.extend([0; 8]);
        let r = parse_probe(&buf).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].kind, ReservedKind::Msi);
        assert_eq!((r[1].start, r[1].kind), (0x5000, ReservedKind::Reserved));
        // A NONE type ends the list even if bytes follow.
        let mut ended = vec![0, 0, 20, 0];
        ended.extend(resv_mem(1, 0, 0xFFF));
        assert_eq!(parse_probe(&ended).unwrap(), []);
    }

    #[test]
    fn malformed_properties_are_errors_not_panics() {
        let full = resv_mem(1, 0xFEE0_0000, 0xFEEF_FFFF);
        // Value cut off by the end of the buffer.
        let err = parse_probe(&full[..20]).unwrap_err();
        assert!(matches!(err, ProbeError::Bad { offset: 0, .. }), "{err}");
        // Length field far beyond the buffer.
        let mut long = full.clone();
        long[2..4].copy_from_slice(&0xFFFFu16.to_le_bytes());
        assert!(matches!(parse_probe(&long), Err(ProbeError::Bad { offset: 0, .. })));
        // Second property overflows: the offset names it.
        let mut two = full.clone();
        two.extend([1, 0, 200, 0, 0, 0]);
        assert!(matches!(parse_probe(&two), Err(ProbeError::Bad { offset: 24, .. })));
        // A RESV_MEM too short for its fields.
        assert!(matches!(parse_probe(&[1, 0, 4, 0, 1, 0, 0, 0]), Err(ProbeError::Bad { .. })));
        // Start above end.
        assert!(parse_probe(&resv_mem(0, 0x2000, 0x1000)).is_err());
        // Half a header with something in it.
        let mut tail = full.clone();
        tail.extend([1, 0]);
        assert!(matches!(parse_probe(&tail), Err(ProbeError::Bad { offset: 24, .. })));
        // Every prefix of a valid list parses or fails, never panics.
        let mut many = full.clone();
        many.extend(resv_mem(0, 0, 0xFFF));
        for n in 0..many.len() {
            let _ = parse_probe(&many[..n]);
        }
    }

    #[test]
    fn fault_records_decode() {
        // virtio_iommu_fault as QEMU's virtio_iommu_report_fault fills it.
        let mut rec = vec![2, 0, 0, 0];
        rec.extend((fault_flags::WRITE | fault_flags::ADDRESS).to_le_bytes());
        rec.extend(0x20u32.to_le_bytes());
        rec.extend([0; 4]);
        rec.extend(0x20_0010u64.to_le_bytes());
        let f = Fault::decode(&rec).unwrap();
        assert_eq!(f, Fault { reason: 2, flags: 0x102, endpoint: 0x20, address: 0x20_0010 });
        assert_eq!(f.access(), iommu::Access::Write);
        assert_eq!(f.reason_name(), "mapping fault");
        let e = f.to_event();
        assert_eq!((e.device.0, e.address, e.access, e.reason), (0x20, 0x20_0010, iommu::Access::Write, 2));
        // Without the ADDRESS flag the address field means nothing.
        rec[5] = 0;
        rec[4] = fault_flags::READ as u8;
        let f = Fault::decode(&rec).unwrap();
        assert_eq!((f.address, f.access()), (0, iommu::Access::Read));
        rec[4] = 0;
        assert_eq!(Fault::decode(&rec).unwrap().access(), iommu::Access::Unknown);
        rec[4] = fault_flags::READ as u8;
        rec[0] = 1;
        assert_eq!(Fault::decode(&rec).unwrap().reason_name(), "endpoint has no domain");
        rec[0] = 0;
        assert_eq!(Fault::decode(&rec).unwrap().reason_name(), "unknown endpoint");
        assert_eq!(Fault::decode(&rec[..23]), None);
    }
}

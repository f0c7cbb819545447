//! Cases of the hardware-specific door (`user.ioas.hw_*`): typed `hw_info`,
//! `hwpt_alloc` (kernel-managed, NEST_PARENT, nested stage-1 children),
//! `hwpt_invalidate` and fault queues — the rules each op enforces, on
//! whatever unit the device sits behind (nested children are shadowed where
//! the hardware cannot nest, so every case runs on every IOMMU).

use crate::{with_device, with_pages, Case, Door, Verdict, PAGE, RW};
use abi::iommufd::{self as a, HWPT_ALLOC_FAULT_ID_VALID, HWPT_ALLOC_NEST_PARENT};
use abi::Errno;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use zerocopy::IntoBytes;

/// Stage-1 data with the top table at parent IOVA `root`.
fn s1(root: u64) -> a::HwptVtdS1 {
    a::HwptVtdS1 { flags: 0, pgtbl_addr: root, addr_width: 48, reserved: 0 }
}

fn inval(addr: u64, npages: u64) -> a::HwptVtdS1Invalidation {
    a::HwptVtdS1Invalidation { addr, npages, flags: 0, reserved: 0 }
}

/// Where the stage-1 tables live in the parent IOAS.
const TABLES: u64 = 0x40_0000;

/// Runs `f(door, dev, ioas, parent)` with a device, a page of stage-1 tables
/// mapped at [`TABLES`] in its IOAS, and a NEST_PARENT HWPT on that IOAS.
fn with_parent(d: &mut dyn Door, f: impl FnOnce(&mut dyn Door, u32, u32, u32) -> Verdict) -> Verdict {
    with_device(d, |d, dev, ioas| {
        with_pages(d, 4, |d, va| {
            try_ok!(d.map(ioas, va, 4 * PAGE, Some(TABLES), RW));
            let parent = try_ok!(d.hwpt_alloc(dev, ioas, HWPT_ALLOC_NEST_PARENT, a::hwpt_data::NONE, &[], 0));
            let v = f(d, dev, ioas, parent);
            // The device goes back to the IOAS before anything is destroyed.
            let _ = d.attach(dev, ioas);
            let _ = d.destroy(parent);
            let _ = d.unmap(ioas, TABLES, 4 * PAGE);
            v
        })
    })
}

/// Runs `f` with [`with_parent`]'s objects plus a nested child (empty stage 1).
fn with_child(d: &mut dyn Door, f: impl FnOnce(&mut dyn Door, u32, u32, u32) -> Verdict) -> Verdict {
    with_parent(d, |d, dev, ioas, parent| {
        let child = try_ok!(d.hwpt_alloc(dev, parent, 0, a::hwpt_data::VTD_S1, s1(TABLES).as_bytes(), 0));
        let v = f(d, dev, parent, child);
        let _ = d.attach(dev, ioas);
        if let Err(e) = d.destroy(child) {
            if matches!(v, Verdict::Pass) {
                return Verdict::Fail(format!("destroy child: {e:?}"));
            }
        }
        v
    })
}

/// A nested `hwpt_alloc` with `data` that must fail with `errno`.
fn nested_refused(d: &mut dyn Door, data: &[u8], errno: Errno) -> Verdict {
    with_parent(d, |d, dev, _, parent| {
        expect!(d.hwpt_alloc(dev, parent, 0, a::hwpt_data::VTD_S1, data, 0), Err(errno));
        Verdict::Pass
    })
}

/// The typed data size for each kind.
fn typed_len(kind: u32) -> Option<usize> {
    match kind {
        a::hw_kind::VTD => Some(core::mem::size_of::<a::HwInfoVtd>()),
        a::hw_kind::AMDVI => Some(core::mem::size_of::<a::HwInfoAmdvi>()),
        a::hw_kind::SMMUV3 => Some(core::mem::size_of::<a::HwInfoSmmuv3>()),
        a::hw_kind::VIRTIO_IOMMU => Some(core::mem::size_of::<a::HwInfoVirtio>()),
        a::hw_kind::MOCK | a::hw_kind::NOIOMMU => Some(0),
        _ => None,
    }
}

/// The driver-attribute data type a unit of `kind` takes (`None`: none).
fn own_attrs(kind: u32) -> Option<u32> {
    match kind {
        a::hw_kind::VTD => Some(a::hwpt_data::VTD_ATTRS),
        a::hw_kind::AMDVI => Some(a::hwpt_data::AMDVI_ATTRS),
        a::hw_kind::SMMUV3 => Some(a::hwpt_data::SMMUV3_ATTRS),
        _ => None,
    }
}

/// Runs `f(door, dev, ioas, kind, typed data)` with a device and its unit's typed info.
fn with_kind(d: &mut dyn Door, f: impl FnOnce(&mut dyn Door, u32, u32, u32, &[u8]) -> Verdict) -> Verdict {
    with_device(d, |d, dev, ioas| {
        let mut buf = [0u8; 64];
        let (kind, len, _, _) = try_ok!(d.hw_info_typed(dev, &mut buf));
        f(d, dev, ioas, kind, &buf[..len])
    })
}

/// The hardware-door cases.
pub(crate) fn cases() -> Vec<(String, Case)> {
    let mut v: Vec<(String, Case)> = Vec::new();
    macro_rules! case {
        ($name:expr, $f:expr) => {
            v.push((String::from($name), $f));
        };
    }
    case!("hw_info_typed_matches_the_kind", |d| with_device(d, |d, dev, _| {
        let mut buf = [0u8; 64];
        let (kind, len, alloc_types, inval_types) = try_ok!(d.hw_info_typed(dev, &mut buf));
        ensure!(typed_len(kind) == Some(len), "kind {kind}: {len} bytes of typed data");
        ensure!(alloc_types & 1 << a::hwpt_data::VTD_S1 != 0, "no VTD_S1 children: {alloc_types:#x}");
        ensure!(alloc_types & 1 << a::hwpt_data::NONE != 0, "no kernel-managed HWPTs: {alloc_types:#x}");
        ensure!(inval_types & 1 << a::hwpt_data::VTD_S1 != 0, "no VTD_S1 invalidation: {inval_types:#x}");
        if kind == a::hw_kind::VTD {
            let cap = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
            ensure!(cap != 0, "VT-d CAP reads 0");
        }
        Verdict::Pass
    }));
    case!("hw_info_typed_short_buffer_truncates", |d| with_device(d, |d, dev, _| {
        let mut buf = [0u8; 4];
        let (kind, len, _, _) = try_ok!(d.hw_info_typed(dev, &mut buf));
        ensure!(len == typed_len(kind).unwrap_or(0).min(4), "{len} bytes into a 4-byte buffer");
        Verdict::Pass
    }));
    case!("hwpt_alloc_kernel_managed_lives_past_detach", |d| with_device(d, |d, dev, ioas| {
        let h = try_ok!(d.hwpt_alloc(dev, ioas, 0, a::hwpt_data::NONE, &[], 0));
        expect!(d.attach(dev, h), Ok(h));
        expect!(d.destroy(h), Err(Errno::EBUSY));
        // Back to the IOAS (its automatic HWPT): the user HWPT stays.
        try_ok!(d.attach(dev, ioas));
        expect!(d.attach(dev, h), Ok(h));
        try_ok!(d.attach(dev, ioas));
        expect!(d.destroy(h), Ok(()));
        expect!(d.destroy(h), Err(Errno::ENOENT));
        Verdict::Pass
    }));
    case!("hwpt_alloc_unknown_data_type_eopnotsupp", |d| with_device(d, |d, dev, ioas| {
        expect!(d.hwpt_alloc(dev, ioas, 0, 77, &[0; 8], 0), Err(Errno::EOPNOTSUPP));
        Verdict::Pass
    }));
    case!("hwpt_alloc_none_with_data_einval", |d| with_device(d, |d, dev, ioas| {
        expect!(d.hwpt_alloc(dev, ioas, 0, a::hwpt_data::NONE, &[0; 8], 0), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("hwpt_alloc_unknown_flag_einval", |d| with_device(d, |d, dev, ioas| {
        expect!(d.hwpt_alloc(dev, ioas, 0x80, a::hwpt_data::NONE, &[], 0), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("hwpt_alloc_missing_device_enoent", |d| with_device(d, |d, _, ioas| {
        expect!(d.hwpt_alloc(9999, ioas, 0, a::hwpt_data::NONE, &[], 0), Err(Errno::ENOENT));
        Verdict::Pass
    }));
    case!("hwpt_alloc_missing_parent_enoent", |d| with_device(d, |d, dev, _| {
        expect!(d.hwpt_alloc(dev, 9999, 0, a::hwpt_data::NONE, &[], 0), Err(Errno::ENOENT));
        Verdict::Pass
    }));
    case!("driver_attrs_of_another_unit_eopnotsupp", |d| with_kind(d, |d, dev, ioas, kind, _| {
        let foreign = if kind == a::hw_kind::VTD { a::hwpt_data::AMDVI_ATTRS } else { a::hwpt_data::VTD_ATTRS };
        expect!(d.hwpt_alloc(dev, ioas, 0, foreign, &[0; 8], 0), Err(Errno::EOPNOTSUPP));
        Verdict::Pass
    }));
    case!("driver_attrs_defaults", |d| with_kind(d, |d, dev, ioas, kind, typed| {
        let Some(t) = own_attrs(kind) else { return Verdict::Skip("the unit takes no driver attributes") };
        let mut data = [0u8; 16];
        if kind == a::hw_kind::VTD {
            // A scalable-mode unit with first-stage tables only (ECAP.SMTS 43,
            // SLTS 46, FLTS 47) is asked for the first stage.
            let ecap = typed.get(8..16).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
            if ecap & 1 << 43 != 0 && ecap & 1 << 46 == 0 && ecap & 1 << 47 != 0 {
                data[0] = a::VTD_ATTR_FIRST_STAGE as u8;
            }
        }
        let h = try_ok!(d.hwpt_alloc(dev, ioas, 0, t, &data, 0));
        expect!(d.attach(dev, h), Ok(h));
        try_ok!(d.attach(dev, ioas));
        expect!(d.destroy(h), Ok(()));
        Verdict::Pass
    }));
    case!("driver_attrs_malformed_einval", |d| with_kind(d, |d, dev, ioas, kind, _| {
        let bad: (u32, Vec<u8>) = match kind {
            a::hw_kind::VTD => {
                (a::hwpt_data::VTD_ATTRS, a::HwptVtdAttrs { flags: 0x80, addr_width: 0 }.as_bytes().to_vec())
            }
            a::hw_kind::AMDVI => {
                (a::hwpt_data::AMDVI_ATTRS, a::HwptAmdviAttrs { levels: 9, reserved: 0 }.as_bytes().to_vec())
            }
            a::hw_kind::SMMUV3 => {
                (a::hwpt_data::SMMUV3_ATTRS, a::HwptSmmuv3Attrs { stage: 3, ..Default::default() }.as_bytes().to_vec())
            }
            _ => return Verdict::Skip("the unit takes no driver attributes"),
        };
        expect!(d.hwpt_alloc(dev, ioas, 0, bad.0, &bad.1, 0), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("driver_attrs_beyond_the_unit_eopnotsupp", |d| with_kind(d, |d, dev, ioas, kind, typed| {
        let ask: (u32, Vec<u8>) = match kind {
            // Snoop control needs ECAP.SC (bit 7).
            a::hw_kind::VTD => {
                let ecap = typed.get(8..16).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
                if ecap & 1 << 7 != 0 {
                    return Verdict::Skip("this VT-d unit has snoop control");
                }
                (
                    a::hwpt_data::VTD_ATTRS,
                    a::HwptVtdAttrs { flags: a::VTD_ATTR_SNOOP, addr_width: 0 }.as_bytes().to_vec(),
                )
            }
            // This driver has the 4 KiB granule only.
            a::hw_kind::SMMUV3 => (
                a::hwpt_data::SMMUV3_ATTRS,
                a::HwptSmmuv3Attrs { granule_log2: 16, ..Default::default() }.as_bytes().to_vec(),
            ),
            _ => return Verdict::Skip("no attribute this unit is known to lack"),
        };
        expect!(d.hwpt_alloc(dev, ioas, 0, ask.0, &ask.1, 0), Err(Errno::EOPNOTSUPP));
        Verdict::Pass
    }));
    case!("driver_attrs_narrow_the_aperture", |d| with_kind(d, |d, dev, ioas, kind, _| {
        // 39-bit IOVAs: VT-d address width 39, AMD-Vi 3 levels, SMMUv3 input 39.
        let ask: (u32, Vec<u8>) = match kind {
            a::hw_kind::VTD => {
                (a::hwpt_data::VTD_ATTRS, a::HwptVtdAttrs { flags: 0, addr_width: 39 }.as_bytes().to_vec())
            }
            a::hw_kind::AMDVI => {
                (a::hwpt_data::AMDVI_ATTRS, a::HwptAmdviAttrs { levels: 3, reserved: 0 }.as_bytes().to_vec())
            }
            a::hw_kind::SMMUV3 => (
                a::hwpt_data::SMMUV3_ATTRS,
                a::HwptSmmuv3Attrs { input_bits: 39, ..Default::default() }.as_bytes().to_vec(),
            ),
            _ => return Verdict::Skip("the unit takes no driver attributes"),
        };
        let h = match d.hwpt_alloc(dev, ioas, 0, ask.0, &ask.1, 0) {
            Ok(h) => h,
            Err(Errno::EOPNOTSUPP) => return Verdict::Skip("the unit cannot do 39-bit IOVAs"),
            Err(e) => return Verdict::Fail(format!("hwpt_alloc: {e:?}")),
        };
        let v = with_pages(d, 1, |d, va| {
            expect!(d.map(ioas, va, PAGE, Some(1 << 40), RW), Err(Errno::ERANGE));
            expect!(d.map(ioas, va, PAGE, Some(1 << 30), RW), Ok(1 << 30));
            try_ok!(d.unmap(ioas, 1 << 30, PAGE));
            Verdict::Pass
        });
        try_ok!(d.destroy(h));
        v
    }));
    case!("smmuv3_ste_rules", |d| with_kind(d, |d, dev, ioas, kind, typed| {
        if kind != a::hw_kind::SMMUV3 {
            return Verdict::Skip("not an SMMUv3");
        }
        // IDR0.S1P (bit 1) and S2P (bit 0): nesting needs both.
        let idr0 = typed.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
        if idr0 & 3 != 3 {
            return Verdict::Skip("this SMMU cannot nest");
        }
        with_pages(d, 1, |d, va| {
            try_ok!(d.map(ioas, va, PAGE, Some(TABLES), RW));
            let parent = try_ok!(d.hwpt_alloc(dev, ioas, HWPT_ALLOC_NEST_PARENT, a::hwpt_data::NONE, &[], 0));
            // V, Config = S1 translate, S1ContextPtr = TABLES; word 1: S1CIR/COR WB, S1CSH inner.
            let good = [1 | 0b101 << 1 | TABLES, 1 << 2 | 1 << 4 | 3 << 6];
            let ste = |w: [u64; 2]| a::HwptSmmuv3Ste { ste: w };
            let alloc = |d: &mut dyn Door, p: u32, w: [u64; 2]| {
                d.hwpt_alloc(dev, p, 0, a::hwpt_data::SMMUV3_STE, ste(w).as_bytes(), 0)
            };
            let v = (|| {
                expect!(alloc(d, ioas, good), Err(Errno::EINVAL)); // an IOAS is no parent
                                                                   // Config 0b111 (the kernel's to set), EATS = 2, a bit outside every field.
                expect!(alloc(d, parent, [1 | 0b111 << 1 | TABLES, good[1]]), Err(Errno::EINVAL));
                expect!(alloc(d, parent, [good[0], good[1] | 2 << 28]), Err(Errno::EINVAL));
                expect!(alloc(d, parent, [good[0] | 1 << 58, good[1]]), Err(Errno::EINVAL));
                // Substreams (S1CDMax > 0): QEMU's SMMU has none.
                expect!(alloc(d, parent, [good[0] | 1 << 59, good[1]]), Err(Errno::EOPNOTSUPP));
                let child = try_ok!(alloc(d, parent, good));
                // A command the task may not queue (CMD_SYNC) stops the batch at 0.
                let sync = a::HwptSmmuv3Command { cmd: [0x46, 0] };
                expect!(
                    d.hwpt_invalidate(child, a::hwpt_data::SMMUV3_STE, sync.as_bytes(), 16),
                    (0, Err(Errno::EINVAL))
                );
                let tlbi = a::HwptSmmuv3Command { cmd: [0x11 | 7 << 48, 0] }; // TLBI_NH_ASID 7
                expect!(d.hwpt_invalidate(child, a::hwpt_data::SMMUV3_STE, tlbi.as_bytes(), 16), (1, Ok(())));
                // A V = 0 STE is an aborting child.
                let abort = try_ok!(alloc(d, parent, [0, 0]));
                try_ok!(d.destroy(abort));
                try_ok!(d.destroy(child));
                Verdict::Pass
            })();
            let _ = d.destroy(parent);
            let _ = d.unmap(ioas, TABLES, PAGE);
            v
        })
    }));
    case!("nested_on_an_ioas_einval", |d| with_device(d, |d, dev, ioas| {
        expect!(d.hwpt_alloc(dev, ioas, 0, a::hwpt_data::VTD_S1, s1(TABLES).as_bytes(), 0), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("nested_parent_without_nest_parent_einval", |d| with_device(d, |d, dev, ioas| {
        let plain = try_ok!(d.hwpt_alloc(dev, ioas, 0, a::hwpt_data::NONE, &[], 0));
        let r = d.hwpt_alloc(dev, plain, 0, a::hwpt_data::VTD_S1, s1(TABLES).as_bytes(), 0);
        try_ok!(d.destroy(plain));
        expect!(r, Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("nested_bad_address_width_einval", |d| {
        let mut s = s1(TABLES);
        s.addr_width = 39;
        nested_refused(d, s.as_bytes(), Errno::EINVAL)
    });
    case!("nested_unknown_flags_einval", |d| {
        let mut s = s1(TABLES);
        s.flags = 1;
        nested_refused(d, s.as_bytes(), Errno::EINVAL)
    });
    case!("nested_reserved_set_einval", |d| {
        let mut s = s1(TABLES);
        s.reserved = 1;
        nested_refused(d, s.as_bytes(), Errno::EINVAL)
    });
    case!("nested_unaligned_table_einval", |d| nested_refused(d, s1(TABLES + 8).as_bytes(), Errno::EINVAL));
    case!("nested_longer_data_nonzero_tail_e2big", |d| {
        let mut bytes = Vec::from(s1(TABLES).as_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 1]);
        nested_refused(d, &bytes, Errno::E2BIG)
    });
    case!("nested_data_beyond_the_limit_e2big", |d| nested_refused(d, &[0; 300], Errno::E2BIG));
    case!("nested_child_cannot_be_a_parent", |d| with_child(d, |d, dev, _, child| {
        expect!(d.hwpt_alloc(dev, child, 0, a::hwpt_data::VTD_S1, s1(TABLES).as_bytes(), 0), Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("nested_with_nest_parent_flag_einval", |d| with_parent(d, |d, dev, _, parent| {
        let r = d.hwpt_alloc(dev, parent, HWPT_ALLOC_NEST_PARENT, a::hwpt_data::VTD_S1, s1(TABLES).as_bytes(), 0);
        expect!(r, Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("destroy_parent_with_child_ebusy", |d| with_child(d, |d, _, parent, _| {
        expect!(d.destroy(parent), Err(Errno::EBUSY));
        Verdict::Pass
    }));
    case!("destroy_ioas_under_a_parent_ebusy", |d| with_parent(d, |d, dev, ioas, _| {
        try_ok!(d.detach(dev));
        expect!(d.destroy(ioas), Err(Errno::EBUSY));
        try_ok!(d.attach(dev, ioas));
        Verdict::Pass
    }));
    case!("nested_attach_then_replace", |d| with_child(d, |d, dev, parent, child| {
        expect!(d.attach(dev, child), Ok(child));
        expect!(d.attach(dev, parent), Ok(parent));
        expect!(d.attach(dev, child), Ok(child));
        expect!(d.destroy(child), Err(Errno::EBUSY));
        Verdict::Pass
    }));
    case!("invalidate_counts_up_to_the_bad_entry", |d| with_child(d, |d, _, _, child| {
        let mut bad = inval(0x1000, 1);
        bad.reserved = 1;
        let entries: Vec<u8> =
            [inval(0, 1), bad, inval(0x2000, 1)].iter().flat_map(|e| e.as_bytes().to_vec()).collect();
        let (handled, r) = d.hwpt_invalidate(child, a::hwpt_data::VTD_S1, &entries, 24);
        expect!((handled, r), (1, Err(Errno::EINVAL)));
        Verdict::Pass
    }));
    case!("invalidate_unaligned_address_einval", |d| with_child(d, |d, _, _, child| {
        let (handled, r) = d.hwpt_invalidate(child, a::hwpt_data::VTD_S1, inval(0x1001, 1).as_bytes(), 24);
        expect!((handled, r), (0, Err(Errno::EINVAL)));
        Verdict::Pass
    }));
    case!("invalidate_zero_pages_einval", |d| with_child(d, |d, _, _, child| {
        let (handled, r) = d.hwpt_invalidate(child, a::hwpt_data::VTD_S1, inval(0x1000, 0).as_bytes(), 24);
        expect!((handled, r), (0, Err(Errno::EINVAL)));
        Verdict::Pass
    }));
    case!("invalidate_unknown_entry_flag_einval", |d| with_child(d, |d, _, _, child| {
        let mut e = inval(0x1000, 1);
        e.flags = 0x10;
        let (handled, r) = d.hwpt_invalidate(child, a::hwpt_data::VTD_S1, e.as_bytes(), 24);
        expect!((handled, r), (0, Err(Errno::EINVAL)));
        Verdict::Pass
    }));
    case!("invalidate_everything_and_short_entries", |d| with_child(d, |d, _, _, child| {
        // addr 0, npages u64::MAX is everything; a 16-byte entry (no flags
        // word) follows the size rules.
        let all = inval(0, u64::MAX);
        expect!(d.hwpt_invalidate(child, a::hwpt_data::VTD_S1, all.as_bytes(), 24), (1, Ok(())));
        let short = inval(0x3000, 2);
        expect!(d.hwpt_invalidate(child, a::hwpt_data::VTD_S1, &short.as_bytes()[..16], 16), (1, Ok(())));
        Verdict::Pass
    }));
    case!("invalidate_wrong_type_einval", |d| with_child(d, |d, _, _, child| {
        let (handled, r) = d.hwpt_invalidate(child, 9, inval(0, 1).as_bytes(), 24);
        expect!((handled, r), (0, Err(Errno::EINVAL)));
        Verdict::Pass
    }));
    case!("invalidate_kernel_managed_hwpt_einval", |d| with_parent(d, |d, _, _, parent| {
        let (handled, r) = d.hwpt_invalidate(parent, a::hwpt_data::VTD_S1, inval(0, 1).as_bytes(), 24);
        expect!((handled, r), (0, Err(Errno::EINVAL)));
        Verdict::Pass
    }));
    case!("fault_queue_capacity_limits", |d| {
        expect!(d.fault_queue_alloc(0), Err(Errno::EINVAL));
        expect!(d.fault_queue_alloc(5000), Err(Errno::EINVAL));
        let q = try_ok!(d.fault_queue_alloc(1));
        expect!(d.destroy(q), Ok(()));
        Verdict::Pass
    });
    case!("fault_queue_in_use_ebusy", |d| with_parent(d, |d, dev, _, parent| {
        let q = try_ok!(d.fault_queue_alloc(8));
        let child = try_ok!(d.hwpt_alloc(
            dev,
            parent,
            HWPT_ALLOC_FAULT_ID_VALID,
            a::hwpt_data::VTD_S1,
            s1(TABLES).as_bytes(),
            q
        ));
        expect!(d.destroy(q), Err(Errno::EBUSY));
        try_ok!(d.destroy(child));
        expect!(d.destroy(q), Ok(()));
        Verdict::Pass
    }));
    case!("fault_id_not_a_queue_einval", |d| with_parent(d, |d, dev, ioas, parent| {
        let r = d.hwpt_alloc(dev, parent, HWPT_ALLOC_FAULT_ID_VALID, a::hwpt_data::VTD_S1, s1(TABLES).as_bytes(), ioas);
        expect!(r, Err(Errno::EINVAL));
        Verdict::Pass
    }));
    case!("fault_read_empty_queue", |d| {
        let q = try_ok!(d.fault_queue_alloc(8));
        expect!(d.fault_read(q, 4, 0).map(|(r, o)| (r.len(), o)), Ok((0, 0)));
        expect!(d.fault_read(q, 4, 20).map(|(r, _)| r.len()), Err(Errno::ETIMEDOUT));
        try_ok!(d.destroy(q));
        Verdict::Pass
    });
    case!("fault_read_not_a_queue", |d| {
        expect!(d.fault_read(9999, 4, 0).map(|(r, _)| r.len()), Err(Errno::ENOENT));
        let ioas = try_ok!(d.ioas_alloc());
        let r = d.fault_read(ioas, 4, 0).map(|(r, _)| r.len());
        try_ok!(d.destroy(ioas));
        expect!(r, Err(Errno::EINVAL));
        Verdict::Pass
    });
    v
}

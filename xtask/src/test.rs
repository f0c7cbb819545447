//! `cargo xtask test` and `cargo xtask run`: host tests, the QEMU matrix and the demo boot.

use crate::build;
use crate::harness;
use crate::machine::Machine;
use crate::target::{Arch, Boot, Iommu};
use std::process::Command;
use std::time::Duration;

/// Time one test boot may take before it is killed (TCG on 2 shared cores).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Counts parsed from `cargo test` output.
#[derive(Default, Debug, Clone, Copy)]
pub struct HostCounts {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that were ignored.
    pub ignored: usize,
}

/// Sums the `test result:` lines of `cargo test` output.
pub fn parse_cargo_test(output: &str) -> HostCounts {
    let mut c = HostCounts::default();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { continue };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<usize>() else { continue };
            match what {
                "passed" => c.passed += n,
                "failed" => c.failed += n,
                "ignored" => c.ignored += n,
                _ => {}
            }
        }
    }
    c
}

/// Runs `cargo test` on the host-buildable crates and returns the counts.
fn host_tests() -> Result<HostCounts, String> {
    eprintln!("xtask: host tests (cargo test on the workspace's default members)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::target::workspace_root())
        .args(["test", "--no-fail-fast"])
        .output()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    let mut counts = parse_cargo_test(&stdout);
    if !out.status.success() {
        eprint!("{stderr}");
        if counts.failed == 0 {
            counts.failed = 1; // a build failure counts as one failure
        }
    }
    eprintln!("xtask: host tests: {} passed, {} failed, {} ignored", counts.passed, counts.failed, counts.ignored);
    Ok(counts)
}

/// Topology lines the kernel must print for a machine of `arch` with `iommu`
/// (they follow from the QEMU command line that `Machine::command` builds).
fn expected_topology(arch: Arch, iommu: Iommu) -> Vec<String> {
    let edu = "1234:11e8 class=00ff00";
    let v: Vec<String> = match (arch, iommu) {
        (_, Iommu::Vtd) => vec![
            "topology: iommu dmar0 kind=vtd base=0xfed90000".into(),
            "vtd: interrupt remapping on: 256 entries".into(),
            format!("{edu} iommu=dmar0 id=0x"),
            "topology: reserved dmar0 0xfee00000-0xfeefffff msi".into(),
        ],
        (_, Iommu::Amdvi) => vec![
            "topology: iommu ivhd0 kind=amdvi base=0xfed80000".into(),
            format!("{edu} iommu=ivhd0 id=0x"),
            "amdvi: EFR=0x29d3".into(),
            "amdvi: interrupt remapping on".into(),
            "iommu: 1 unit(s) registered".into(),
        ],
        (_, Iommu::Virtio) => vec![
            "topology: iommu viommu0 kind=virtio".into(),
            format!("{edu} iommu=viommu0 id=0x"),
            "1af4:1057 class=00ff00 iommu=none".into(),
            "virtio-iommu: features".into(),
            "iommu: 1 unit(s) registered".into(),
        ],
        (_, Iommu::Smmuv3) => vec![
            "topology: iommu smmu0 kind=smmuv3 base=0x9050000".into(),
            format!("{edu} iommu=smmu0 id=0x8"),
            "topology: reserved smmu0 0x8090000-0x8090fff msi-doorbell".into(),
        ],
        (_, Iommu::None) => vec![format!("{edu} iommu=none")],
    };
    v
}

/// The unit kind the demo prints for a machine with `iommu` (`abi::iommufd::hw_kind` names).
fn demo_kind(iommu: Iommu) -> &'static str {
    match iommu {
        Iommu::Virtio => "virtio-iommu",
        other => other.name(),
    }
}

/// Extra devices behind a PCIe root port and a conventional PCI bridge.
const BRIDGED_EDUS: &str = "-device pcie-root-port,id=rp1,bus=pcie.0,chassis=1 -device edu,bus=rp1 \
                            -device pci-bridge,id=br1,bus=pcie.0,chassis_nr=2 -device edu,bus=br1,addr=3";

/// A DMAR whose only remapping structure has length 0: the parser must reject
/// the table, the kernel must say so and boot on without the unit.
fn corrupt_dmar() -> Vec<u8> {
    // Structure at 48: type 0 (DRHD), length 0.
    dmar_table(&[0, 0, 0, 0])
}

/// A DMAR with `structures` after the header (host address width 48 bits), checksummed.
fn dmar_table(structures: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 48];
    t[0..4].copy_from_slice(b"DMAR");
    t[8] = 1;
    t[10..16].copy_from_slice(b"PCULLS");
    t[36] = 47; // host address width - 1
    t.extend_from_slice(structures);
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}

/// Where the extra DMAR of the RMRR case puts its region (RAM on the 512 MiB q35 machine).
const RMRR_BASE: u64 = 0x1E00_0000;

/// A second DMAR holding one RMRR (VT-d §8.4) of 64 KiB at [`RMRR_BASE`] for
/// the endpoint 00:10.0 (a device scope with a one-element path, §8.3.1); no
/// remapping units of its own.
fn rmrr_dmar() -> Vec<u8> {
    let mut rmrr = Vec::new();
    rmrr.extend_from_slice(&1u16.to_le_bytes()); // type 1: RMRR
    rmrr.extend_from_slice(&32u16.to_le_bytes()); // length
    rmrr.extend_from_slice(&[0, 0, 0, 0]); // reserved, segment 0
    rmrr.extend_from_slice(&RMRR_BASE.to_le_bytes());
    rmrr.extend_from_slice(&(RMRR_BASE + 0xFFFF).to_le_bytes()); // limit (inclusive)
    rmrr.extend_from_slice(&[1, 8, 0, 0, 0, 0, 0x10, 0]); // endpoint scope: bus 0, path (dev 0x10, fn 0)
    dmar_table(&rmrr)
}

/// A second IVRS holding one IVMD (AMD IOMMU spec §5.2.2.3): type 21h for
/// DeviceID 00:10.0, Unity | IR | IW, 64 KiB at [`RMRR_BASE`]; no IVHD of its own.
fn ivmd_ivrs() -> Vec<u8> {
    let mut t = vec![0u8; 48];
    t[0..4].copy_from_slice(b"IVRS");
    t[8] = 2; // revision
    t[10..16].copy_from_slice(b"PCULLS");
    t[36..40].copy_from_slice(&0x2800u32.to_le_bytes()); // IVinfo: 40-bit physical addresses
    t.extend_from_slice(&[0x21, 0x07]); // one device; Unity, IR, IW
    t.extend_from_slice(&32u16.to_le_bytes()); // length
    t.extend_from_slice(&0x0080u16.to_le_bytes()); // DeviceID 00:10.0
    t.extend_from_slice(&[0; 10]); // auxiliary data, reserved
    t.extend_from_slice(&RMRR_BASE.to_le_bytes());
    t.extend_from_slice(&0x1_0000u64.to_le_bytes());
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}

/// Patches a QEMU virt DTB so the SMMU's `interrupts` property has a length
/// that is no multiple of a 3-cell specifier (45 instead of 48 bytes; the
/// structure stays aligned). Returns false if the property was not found.
fn corrupt_smmu_interrupts(dtb: &mut [u8]) -> bool {
    // <0 74 1>, <0 75 1>, <0 76 1>, <0 77 1> as big-endian cells.
    let value: Vec<u8> = [0u32, 74, 1, 0, 75, 1, 0, 76, 1, 0, 77, 1].iter().flat_map(|c| c.to_be_bytes()).collect();
    let Some(at) = dtb.windows(value.len()).position(|w| w == value.as_slice()) else { return false };
    let len_at = at - 8;
    if dtb[len_at..len_at + 4] != 48u32.to_be_bytes() {
        return false;
    }
    dtb[len_at..len_at + 4].copy_from_slice(&45u32.to_be_bytes());
    true
}

/// Cuts a dumped DTB (1 MiB, mostly free space) to the end of its last block:
/// QEMU doubles a `-dtb` file's size when loading it, and a 2 MiB tree no
/// longer fits below a kernel loaded 2 MiB into RAM (QEMU.md G10).
fn shrink_dtb(dtb: &mut Vec<u8>) {
    let field =
        |i: usize| dtb.get(i * 4..i * 4 + 4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let end = (field(2) + field(9)).max(field(3) + field(8)).next_multiple_of(8);
    if end >= 40 && end < dtb.len() {
        dtb.truncate(end);
        dtb[4..8].copy_from_slice(&(end as u32).to_be_bytes());
    }
}

/// QEMU 10.0's AMD-Vi translates the DMA of a function off bus 0 through the
/// bus-0 DeviceID of its devfn (docs/qemu.md): the demo on `edu` devices
/// behind a PCIe root port (01:00.0, looked up under the host bridge's 0x0000)
/// and behind a PCI bridge on bus 0 (02:03.0, seen as the bridge), each of
/// which must pass; the first must be reported at boot.
fn amdvi_stale_bus_case(kernel: &crate::build::Kernel) -> Result<qemu_tests::runner::Case, String> {
    let machine = Machine {
        arch: Arch::X86_64,
        iommu: Iommu::Amdvi,
        cmdline: vec!["init=demo".to_owned()],
        extra: BRIDGED_EDUS.split_whitespace().map(str::to_owned).collect(),
        gdb: false,
        boot: Boot::Direct,
    };
    let mut c = harness::case(&machine, kernel, BOOT_TIMEOUT)?;
    harness::rename(&mut c, "x86_64-amdvi-stale-bus-demo");
    c.must_contain = vec![
        "amdvi: ivhd0: amdvi.stale_bus=Auto: 0000:00:01.0 is QEMU's AMD-Vi function".into(),
        "amdvi: 0000:01:00.0 is translated by QEMU 10.0 (bus numbers read before enumeration) through DeviceID 0x0000, not its own 0x0100; programming both entries, grouped with no other function; sharing it: 0000:00:00.0 (a host bridge".into(),
        "demo: 0000:01:00.0 iommu=ivhd0 kind=amdvi dev=edu dma=ok stray-dma=blocked".into(),
        "demo: 0000:02:03.0 iommu=ivhd0 kind=amdvi dev=edu dma=ok stray-dma=blocked".into(),
        "demo: passed 3 devices".into(),
    ];
    c.expect = qemu_tests::runner::Expect::Exit;
    Ok(c)
}

/// Firmware-description cases: bridges, a corrupt DMAR, a corrupt DTB node.
fn firmware_cases(arch: Arch, kernel: &crate::build::Kernel) -> Result<Vec<qemu_tests::runner::Case>, String> {
    let dir = crate::target::workspace_root().join("target").join("qemu-tests");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut cases = Vec::new();
    let machine = |iommu, extra: Vec<String>| Machine {
        arch,
        iommu,
        cmdline: vec!["ktest=core.pci,arch.".to_owned()],
        extra,
        gdb: false,
        boot: Boot::Direct,
    };
    let split = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    // Devices behind a PCIe root port (own RID) and a PCI-PCI bridge (the bridge's RID).
    let iommu = arch.default_iommu();
    let unit = if arch == Arch::X86_64 { "dmar0" } else { "smmu0" };
    let mut c = harness::case(&machine(iommu, split(BRIDGED_EDUS)), kernel, BOOT_TIMEOUT)?;
    harness::rename(&mut c, format!("{}-bridges", arch.name()));
    c.must_contain = vec![
        format!("topology: pci 0000:01:00.0 1234:11e8 class=00ff00 iommu={unit} id=0x100"),
        format!("topology: pci 0000:02:03.0 1234:11e8 class=00ff00 iommu={unit} id=0x18 alias=0x18"),
    ];
    cases.push(c);
    // The main demo on the default IOMMU, with a second edu at edu's default
    // 28-bit DMA mask (what PORTCULLIS_QEMU_EXTRA users add).
    let demo_iommu = arch.default_iommu();
    let mut c = harness::case(
        &Machine { cmdline: vec!["init=demo".to_owned()], ..machine(demo_iommu, split("-device edu")) },
        kernel,
        BOOT_TIMEOUT,
    )?;
    harness::rename(&mut c, format!("{}-demo", arch.name()));
    c.must_contain = vec!["demo: passed 2 devices".into(), "dma=ok stray-dma=blocked".into()];
    c.expect = qemu_tests::runner::Expect::Exit;
    cases.push(c);
    // The same demo, unchanged, on every other IOMMU the machine can have.
    for &iommu in Iommu::for_arch(arch).iter().filter(|&&i| i != demo_iommu && i != Iommu::None) {
        let mut c = harness::case(
            &Machine { cmdline: vec!["init=demo".to_owned()], ..machine(iommu, split("-device edu")) },
            kernel,
            BOOT_TIMEOUT,
        )?;
        harness::rename(&mut c, format!("{}-{}-demo", arch.name(), iommu.name()));
        c.must_contain = vec![
            "demo: passed 2 devices".into(),
            format!("kind={} dev=edu dma=ok stray-dma=blocked", demo_kind(iommu)),
        ];
        if iommu == Iommu::Virtio {
            // virtio-iommu reports the stray DMA (QEMU's AMD-Vi reports nothing, QEMU.md G2).
            c.must_contain.push("viommu0: DMA access fault from device".into());
        }
        c.expect = qemu_tests::runner::Expect::Exit;
        cases.push(c);
    }
    // The register trace (`trace=1`, `run --trace`) of the demo on every
    // IOMMU: bring-up, a map, the unmap's invalidation and its completion,
    // the stray DMA's fault, in this order, and (the runner checks it for
    // every boot) strictly increasing sequence numbers.
    for &iommu in Iommu::for_arch(arch).iter().filter(|&&i| i != Iommu::None) {
        let m = Machine { cmdline: vec!["init=demo".to_owned(), "trace=1".to_owned()], ..machine(iommu, Vec::new()) };
        let mut c = harness::case(&m, kernel, BOOT_TIMEOUT)?;
        harness::rename(&mut c, format!("{}-{}-trace", arch.name(), iommu.name()));
        c.must_contain = vec!["demo: passed 1 devices".into()];
        c.in_order = trace_sequence(iommu).into_iter().map(str::to_owned).collect();
        c.expect = qemu_tests::runner::Expect::Exit;
        cases.push(c);
    }
    // Both storage devices on disks made on the fly (`run --disk nvme`,
    // `--disk virtio-blk`), on every IOMMU: data written, read back and
    // compared; an NVMe read through a PRP list at an unmapped IOVA failed by
    // the controller, a virtio-blk read into an unmapped IOVA stopped.
    let disks = storage_disks;
    for &iommu in Iommu::for_arch(arch).iter().filter(|&&i| i != Iommu::None) {
        let name = format!("{}-{}-storage-demo", arch.name(), iommu.name());
        let mut c = harness::case(
            &Machine { cmdline: vec!["init=demo".to_owned()], ..machine(iommu, disks(&name)?) },
            kernel,
            BOOT_TIMEOUT,
        )?;
        harness::rename(&mut c, name);
        c.must_contain = vec![
            "demo: passed 3 devices".into(),
            format!("kind={} dev=edu dma=ok stray-dma=blocked", demo_kind(iommu)),
            format!("kind={} dev=nvme dma=ok stray-dma=blocked", demo_kind(iommu)),
            format!("kind={} dev=virtio-blk dma=ok stray-dma=blocked", demo_kind(iommu)),
            "read through an unmapped PRP list: Data Transfer Error".into(),
            // MSI-X entry 0 programmed by the kernel: through interrupt
            // remapping on x86_64, through the GICv3 ITS on aarch64.
            "; completions by interrupt".into(),
            // virtio-blk's queue on MSI-X vector 0, the same entry.
            "device restarted; completions by interrupt".into(),
        ];
        if matches!(iommu, Iommu::Vtd | Iommu::Amdvi) {
            c.must_contain.push("(through interrupt remapping; message".into());
        }
        if arch == Arch::Aarch64 {
            c.must_contain.push("through the ITS (DeviceID".into());
        }
        c.expect = qemu_tests::runner::Expect::Exit;
        cases.push(c);
    }
    // No IOMMU, booted with `iommu.noiommu=allow` (`bench blk`'s "none"
    // column): both storage devices driven through the generic door with
    // IOVA = physical address, premapped runs only (nothing to unmap), the
    // functions flagged as behind no IOMMU. A map elsewhere than at the
    // physical address is refused (host test of iommufd).
    {
        let name = format!("{}-noiommu-bench", arch.name());
        let cmdline = ["init=bench-blk", "iommu.noiommu=allow", "iommu.unsafe_interrupts=allow"];
        let m = Machine { cmdline: cmdline.map(str::to_owned).to_vec(), ..machine(Iommu::None, disks(&name)?) };
        let mut c = harness::case(&m, kernel, BOOT_TIMEOUT)?;
        harness::rename(&mut c, name);
        c.must_contain = vec![
            "iommu.noiommu=allow: no IOMMU described".into(),
            "topology: iommu noiommu0 kind=noiommu".into(),
            "RESULT dev=nvme mode=premapped pattern=rand4k".into(),
            "RESULT dev=virtio-blk mode=premapped pattern=seq128k".into(),
            "bench-blk: done".into(),
        ];
        // Strict runs would mean the device passed for translated.
        c.stop_on = vec!["mode=strict".into()];
        c.expect = qemu_tests::runner::Expect::Exit;
        cases.push(c);
    }
    // The first lesson (docs/lessons/first-mapping.txt) typed into the shell
    // on every IOMMU: the DMA arrives through a mapping and is blocked once
    // it is unmapped. A command the shell refuses fails the case at once.
    // A lesson of docs/lessons typed into the shell (as `run --shell --script`
    // does) on one IOMMU, as the case `<arch>-<iommu>-<suffix>`.
    let lesson_case = |file: &str, suffix: &str, iommu: Iommu| -> Result<qemu_tests::runner::Case, String> {
        let lesson = crate::target::workspace_root().join("docs").join("lessons").join(file);
        let name = format!("{}-{}-{suffix}", arch.name(), iommu.name());
        let m = Machine {
            cmdline: vec!["init=shell".to_owned(), "info.log=allow".to_owned()],
            ..machine(iommu, Vec::new())
        };
        let mut c = harness::case(&m, kernel, BOOT_TIMEOUT)?;
        c.stdin = Some(lesson_input(&lesson, &name)?);
        harness::rename(&mut c, name);
        Ok(c)
    };
    for &iommu in Iommu::for_arch(arch).iter().filter(|&&i| i != Iommu::None) {
        let mut c = lesson_case("first-mapping.txt", "lesson", iommu)?;
        c.must_contain = vec![
            // `units` and `reserved`: the topology through info_read.
            format!("  iommu {} kind=", unit_prefix(iommu)),
            "device 1: ".into(),
            "device 1 attached: hwpt 3".into(),
            "IOVA alignment 0x1000".into(),
            "  5a 5a 5a 5a 5a 5a 5a 5a".into(),
            "  cc cc cc cc cc cc cc cc".into(),
            "destroyed 1".into(),
            "shell: bye".into(),
        ];
        if iommu != Iommu::Amdvi {
            // `log fault`: the blocked DMA, decoded (QEMU's AMD-Vi records no fault, QEMU.md G2).
            c.must_contain.push(format!("log: WARN  kcore::iommu: iommu: {}: DMA ", unit_prefix(iommu)));
        }
        c.stop_on.extend(["unknown command".into(), "bad arguments".into(), "no such buffer".into()]);
        c.expect = qemu_tests::runner::Expect::Exit;
        cases.push(c);
    }
    // The second lesson (docs/lessons/structures.txt): registers decoded,
    // the device's structures before and after attach, a walk to the page
    // and one to the fault, then the fault the unit recorded.
    for &iommu in Iommu::for_arch(arch).iter().filter(|&&i| i != Iommu::None) {
        let mut c = lesson_case("structures.txt", "structures", iommu)?;
        let (register, structure, queue) = match iommu {
            Iommu::Vtd => ("  CAP = 0x", "  context entry [".to_owned(), " IQ["),
            Iommu::Amdvi => ("  EFR = 0x", "  device table entry [".to_owned(), " CMDBUF["),
            Iommu::Smmuv3 => ("  IDR0 = 0x", "  STE at 0x".to_owned(), " CMDQ["),
            _ => {
                ("  FEATURES (negotiated) = 0x", "  domain 2: paging, 2 mapping(s), 1 endpoint(s)".to_owned(), " REQ[")
            }
        };
        c.must_contain = vec![
            "  group 1: 0000:00:00.0".into(),
            register.into(),
            structure,
            "=> 0x100010 translates to 0x".into(),
            "=> no translation".into(),
            // `queue 0`, then `trace on 0` around an unmap: numbered trace lines.
            "the last queued entries, oldest first".into(),
            queue.into(),
            format!("  {} (traces as ", unit_prefix(iommu)),
            "trace #".into(),
            ": trace off".into(),
            "copied 0x10000 bytes of IOAS 2 at 0x100000 to IOAS 4 at IOVA 0x300000".into(),
            "hwpt 5 over IOAS 4".into(),
            "device 1 attached: hwpt 5".into(),
            "=> 0x300010 translates to 0x".into(),
            "destroyed 1".into(),
            "shell: bye".into(),
        ];
        if iommu != Iommu::Virtio {
            // A real table walk: four levels down to the 4 KiB leaf.
            c.must_contain.push("level 0: table 0x".into());
        }
        if iommu != Iommu::Amdvi {
            c.must_contain.push(format!("  #0 {}", unit_prefix(iommu)));
        }
        c.stop_on.extend(["unknown command".into(), "bad arguments".into(), "EPERM".into(), "ENOENT".into()]);
        c.expect = qemu_tests::runner::Expect::Exit;
        cases.push(c);
    }
    // The same demo, unchanged, when the IOMMU's smallest page is larger than
    // the CPU's: virtio-iommu with a 64 KiB granule. The generic door reports
    // the alignment (ioas_iova_ranges) and the drivers' buffers honour it.
    let name = format!("{}-virtio-64k-demo", arch.name());
    let mut extra = split("-global virtio-iommu-pci.granule=64k -device edu");
    extra.extend(disks(&name)?);
    let mut c = harness::case(
        &Machine { cmdline: vec!["init=demo".to_owned()], ..machine(Iommu::Virtio, extra) },
        kernel,
        BOOT_TIMEOUT,
    )?;
    harness::rename(&mut c, name);
    c.must_contain = vec![
        "(granule 64 KiB)".into(),
        "demo: passed 4 devices".into(),
        "kind=virtio-iommu dev=edu dma=ok stray-dma=blocked".into(),
        "kind=virtio-iommu dev=nvme dma=ok stray-dma=blocked".into(),
        "kind=virtio-iommu dev=virtio-blk dma=ok stray-dma=blocked".into(),
    ];
    c.expect = qemu_tests::runner::Expect::Exit;
    cases.push(c);
    match arch {
        Arch::X86_64 => {
            // VT-d with caching mode and a second edu (two domains), without
            // pass-through (identity emulated by a 1:1 table), invalidating
            // through the registers instead of the queue.
            let extra = split(
                "-global intel-iommu.caching-mode=on -global intel-iommu.pt=off -device edu,dma_mask=0xffffffffffffffff",
            );
            let mut c = harness::case(
                &Machine {
                    // Without the queue there is no interrupt remapping: DMA needs the opt-in.
                    cmdline: vec![
                        "ktest=iommu,ioas".to_owned(),
                        "vtd_qi=off".to_owned(),
                        "iommu.unsafe_interrupts=allow".to_owned(),
                    ],
                    ..machine(Iommu::Vtd, extra)
                },
                kernel,
                BOOT_TIMEOUT,
            )?;
            harness::rename(&mut c, "x86_64-vtd-caching-mode");
            c.must_contain = vec![
                "caching mode".into(),
                "register-based invalidation".into(),
                "the identity domain is a page table mapping RAM 1:1".into(),
            ];
            cases.push(c);
            // VT-d without interrupt remapping: the device tests and the
            // attacks still pass, and the kernel says MSIs are not confined.
            let mut c = harness::case(
                &Machine {
                    cmdline: vec![
                        "ktest=test-edu,test-isolation".to_owned(),
                        "iommu.unsafe_interrupts=allow".to_owned(),
                    ],
                    ..machine(Iommu::Vtd, split("-global intel-iommu.intremap=off"))
                },
                kernel,
                BOOT_TIMEOUT,
            )?;
            harness::rename(&mut c, "x86_64-vtd-no-intremap");
            c.must_contain = vec![
                "vtd: dmar0: interrupts not remapped (not supported by this unit: interrupt remapping (ECAP.IR clear))"
                    .into(),
                "(not remapped: the device can raise any vector; message".into(),
            ];
            cases.push(c);
            // The same without `iommu.unsafe_interrupts=allow`: Bus Master is
            // refused, since the device's DMA could send any interrupt.
            let mut c = harness::case(
                &Machine {
                    cmdline: vec!["ktest=test-isolation".to_owned()],
                    ..machine(Iommu::Vtd, split("-global intel-iommu.intremap=off"))
                },
                kernel,
                BOOT_TIMEOUT,
            )?;
            harness::rename(&mut c, "x86_64-vtd-no-intremap-denied");
            c.must_contain = vec![
                "ok 1 user.isolation.bus_master_refused_without_interrupt_remapping".into(),
                "Bus Master refused: its IOMMU does not remap interrupts".into(),
            ];
            c.stop_on.push("user.isolation.bus_master_refused_without_interrupt_remapping # SKIP".into());
            cases.push(c);
            // VT-d in scalable mode, second stage, with a second DMAR naming
            // the second edu (00:10.0) in an RMRR.
            let rmrr = dir.join("rmrr-dmar.bin");
            std::fs::write(&rmrr, rmrr_dmar()).map_err(|e| format!("cannot write {}: {e}", rmrr.display()))?;
            let mut extra = split(
                "-global intel-iommu.x-scalable-mode=on -device edu,addr=0x10,dma_mask=0xffffffffffffffff -acpitable",
            );
            extra.push(format!("file={}", rmrr.display()));
            let mut c = harness::case(
                &Machine { cmdline: vec!["ktest=iommu,ioas".to_owned()], ..machine(Iommu::Vtd, extra) },
                kernel,
                BOOT_TIMEOUT,
            )?;
            harness::rename(&mut c, "x86_64-vtd-scalable");
            c.must_contain = vec![
                "scalable mode (second stage)".into(),
                format!(
                    "iommu: direct-map region {RMRR_BASE:#x}-{:#x} kept out of the frame allocator",
                    RMRR_BASE + 0xFFFF
                ),
                format!(
                    "vtd: direct-map region {RMRR_BASE:#x}-{:#x} identity-mapped for device 0x0080",
                    RMRR_BASE + 0xFFFF
                ),
                format!(
                    "topology: reserved dmar0 {RMRR_BASE:#x}-{:#x} direct-map devices=0000:00:10.0",
                    RMRR_BASE + 0xFFFF
                ),
            ];
            cases.push(c);
            // AMD-Vi with a second IVRS whose IVMD names the second edu
            // (00:10.0): a unity range identity-mapped into its paging domains.
            let ivrs = dir.join("ivmd-ivrs.bin");
            std::fs::write(&ivrs, ivmd_ivrs()).map_err(|e| format!("cannot write {}: {e}", ivrs.display()))?;
            let mut extra = split("-device edu,addr=0x10,dma_mask=0xffffffffffffffff -acpitable");
            extra.push(format!("file={}", ivrs.display()));
            let mut c = harness::case(
                &Machine { cmdline: vec!["ktest=iommu".to_owned()], ..machine(Iommu::Amdvi, extra) },
                kernel,
                BOOT_TIMEOUT,
            )?;
            harness::rename(&mut c, "x86_64-amdvi-ivmd");
            c.must_contain = vec![
                format!(
                    "topology: reserved ivhd0 {RMRR_BASE:#x}-{:#x} direct-map devices=0000:00:10.0",
                    RMRR_BASE + 0xFFFF
                ),
                format!(
                    "iommu: direct-map region {RMRR_BASE:#x}-{:#x} kept out of the frame allocator",
                    RMRR_BASE + 0xFFFF
                ),
                format!(
                    "amdvi: direct-map region {RMRR_BASE:#x}-{:#x} identity-mapped for device 0x0080",
                    RMRR_BASE + 0xFFFF
                ),
            ];
            cases.push(c);
            // VT-d in scalable mode with first-stage tables only.
            let extra = split("-global intel-iommu.x-scalable-mode=on -global intel-iommu.x-flts=on -device edu,dma_mask=0xffffffffffffffff");
            let mut c = harness::case(
                &Machine { cmdline: vec!["ktest=iommu,ioas".to_owned()], ..machine(Iommu::Vtd, extra) },
                kernel,
                BOOT_TIMEOUT,
            )?;
            harness::rename(&mut c, "x86_64-vtd-first-stage");
            c.must_contain = vec!["scalable mode (first stage)".into()];
            cases.push(c);
            let path = dir.join("corrupt-dmar.bin");
            std::fs::write(&path, corrupt_dmar()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let extra = vec!["-acpitable".to_owned(), format!("file={}", path.display())];
            let mut c = harness::case(&machine(Iommu::None, extra), kernel, BOOT_TIMEOUT)?;
            harness::rename(&mut c, "x86_64-corrupt-dmar");
            c.must_contain = vec![
                "acpi: DMAR rejected: structure at 0x30 has bad length 0".into(),
                "1234:11e8 class=00ff00 iommu=none".into(),
            ];
            cases.push(c);
        }
        Arch::Aarch64 => {
            // SMMUv3 with paging domains on stage 2, a linear stream table, and a
            // second edu (two domains).
            let extra = split("-device edu,dma_mask=0xffffffffffffffff");
            let mut c = harness::case(
                &Machine {
                    cmdline: vec![
                        "ktest=iommu,ioas".to_owned(),
                        "smmu_stage=2".to_owned(),
                        "smmu_st=linear".to_owned(),
                    ],
                    ..machine(Iommu::Smmuv3, extra)
                },
                kernel,
                BOOT_TIMEOUT,
            )?;
            harness::rename(&mut c, "aarch64-smmuv3-stage2");
            c.must_contain = vec!["paging domains use stage 2".into(), "(linear stream table)".into()];
            cases.push(c);
            let path = dir.join("corrupt-smmu.dtb");
            let m = machine(Iommu::Smmuv3, Vec::new());
            let (program, mut args) = m.command(kernel)?;
            // Ask QEMU for the DTB it would generate, then patch it.
            let machine_arg = args.iter().position(|a| a == "-machine").map(|i| i + 1);
            if let Some(i) = machine_arg {
                args[i] = format!("{},dumpdtb={}", args[i], path.display());
            }
            let status = Command::new(&program)
                .args(&args)
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            let mut dtb = std::fs::read(&path).map_err(|e| format!("QEMU did not dump a DTB ({status}): {e}"))?;
            if !corrupt_smmu_interrupts(&mut dtb) {
                return Err("the SMMU interrupts property was not found in QEMU's DTB".into());
            }
            shrink_dtb(&mut dtb);
            std::fs::write(&path, &dtb).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let mut c = harness::case(
                &machine(Iommu::Smmuv3, vec!["-dtb".into(), path.display().to_string()]),
                kernel,
                BOOT_TIMEOUT,
            )?;
            harness::rename(&mut c, "aarch64-corrupt-dtb");
            c.must_contain = vec![
                "devicetree: smmu node 0: device tree structure is malformed; unit ignored".into(),
                "1234:11e8 class=00ff00 iommu=none".into(),
            ];
            cases.push(c);
        }
    }
    Ok(cases)
}

/// Two `edu` functions behind one conventional PCI bridge (one requester ID,
/// the bridge's: one IOMMU group), and a second `edu` on the root bus.
const GROUPED_EDUS: &str = "-device pci-bridge,id=br1,bus=pcie.0,chassis_nr=2 \
                            -device edu,bus=br1,addr=3,dma_mask=0xffffffffffffffff \
                            -device edu,bus=br1,addr=4,dma_mask=0xffffffffffffffff \
                            -device edu,dma_mask=0xffffffffffffffff";

/// The isolation attacks that need a machine of their own, on the default
/// IOMMU of `arch`: `<arch>-isolation-groups` (the user isolation tests with
/// an IOMMU group of two, which a victim task holds while this task claims,
/// binds and writes its members) and `<arch>-isolation-no-ktest` (a boot
/// without `ktest=`, where every `test_canary` operation must be `EPERM`).
fn isolation_cases(arch: Arch, kernel: &crate::build::Kernel) -> Result<Vec<qemu_tests::runner::Case>, String> {
    let split = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let machine = |cmdline: &str, extra: Vec<String>| Machine {
        arch,
        iommu: arch.default_iommu(),
        cmdline: vec![cmdline.to_owned()],
        extra,
        gdb: false,
        boot: Boot::Direct,
    };
    let mut cases = Vec::new();
    let mut c = harness::case(&machine("ktest=isolation", split(GROUPED_EDUS)), kernel, BOOT_TIMEOUT)?;
    harness::rename(&mut c, format!("{}-isolation-groups", arch.name()));
    c.must_contain = vec![
        "user.isolation.other_tasks_group_member_refused".into(),
        "user.isolation.dma_into_other_task_pinned_memory_is_blocked".into(),
        "(same IOMMU group)".into(),
    ];
    // This machine has what both attacks need: a SKIP is a failure here.
    c.stop_on.push("user.isolation.other_tasks_group_member_refused # SKIP".into());
    c.stop_on.push("user.isolation.dma_into_other_task_pinned_memory_is_blocked # SKIP".into());
    cases.push(c);
    let mut c = harness::case(&machine("init=isolation-no-ktest", Vec::new()), kernel, BOOT_TIMEOUT)?;
    harness::rename(&mut c, format!("{}-isolation-no-ktest", arch.name()));
    c.must_contain = vec!["ok 1 user.isolation.test_canary_refused_without_ktest".into()];
    cases.push(c);
    Ok(cases)
}

/// `init=` with a list (`cargo xtask run --init`), on a machine without an
/// IOMMU: `<arch>-init-list` runs two programs in order, each to its exit;
/// `<arch>-init-unknown` names one that does not exist between two that do,
/// which must be reported with the programs that exist while the others still
/// run, and the boot must end in failure.
fn init_cases(arch: Arch, kernel: &crate::build::Kernel) -> Result<Vec<qemu_tests::runner::Case>, String> {
    let machine = |init: &str| Machine {
        arch,
        iommu: Iommu::None,
        cmdline: vec![init.to_owned()],
        extra: Vec::new(),
        gdb: false,
        boot: Boot::Direct,
    };
    let mut list = harness::case(&machine("init=hello,spin"), kernel, BOOT_TIMEOUT)?;
    list.name = format!("{}-init-list", arch.name());
    list.log_file.set_file_name(format!("{}.log", list.name));
    list.must_contain = vec![
        "hello from user space at".into(),
        "task hello: exited with status 0".into(),
        "spin: done after".into(),
        "task spin: exited with status 0".into(),
        "init: 2 of 2 programs exited 0".into(),
    ];
    list.expect = qemu_tests::runner::Expect::Exit;
    let mut unknown = harness::case(&machine("init=hello,no-such-program,spin"), kernel, BOOT_TIMEOUT)?;
    unknown.name = format!("{}-init-unknown", arch.name());
    unknown.log_file.set_file_name(format!("{}.log", unknown.name));
    unknown.must_contain = vec![
        "init no-such-program: no such program; user programs: ".into(),
        "demo, fault, hello,".into(),
        "task hello: exited with status 0".into(),
        "task spin: exited with status 0".into(),
        "init: 1 of 3 programs failed: no-such-program".into(),
        "portcullis: exit failure".into(),
    ];
    // The kernel's failure exit, not a panic (a crash report fails the case).
    unknown.expect = qemu_tests::runner::Expect::Failure;
    Ok(vec![list, unknown])
}

/// The UEFI boots of `arch` (OVMF / AAVMF, the loader from a GPT disk image):
/// per IOMMU of `configs`, the whole kernel + user suite (with the topology the
/// direct boot prints, which on aarch64 now comes from the IORT or VIOT
/// instead of the device tree) and, without a filter, the demo.
fn uefi_cases(
    arch: Arch,
    kernel: &crate::build::Kernel,
    configs: &[(Arch, Iommu)],
    filter: Option<&str>,
) -> Result<Vec<qemu_tests::runner::Case>, String> {
    let mut cases = Vec::new();
    let split = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let loader = format!("(loader uefi ({}))", arch.name());
    for &(_, iommu) in configs.iter().filter(|(a, i)| *a == arch && *i != Iommu::None) {
        // QEMU virt always has an IORT (for the ITS); a virtio-iommu adds a VIOT.
        let source = match (arch, iommu) {
            (Arch::Aarch64, Iommu::Smmuv3) => "topology: source acpi IORT",
            (Arch::Aarch64, Iommu::Virtio) => "topology: source acpi IORT VIOT",
            (_, Iommu::Virtio) => "topology: source acpi VIOT",
            (_, Iommu::Vtd) => "topology: source acpi DMAR",
            (_, _) => "topology: source acpi IVRS",
        };
        // The second edu the isolation tests need, as in the direct boots.
        let machine = Machine {
            arch,
            iommu,
            cmdline: vec![format!("ktest={}", filter.unwrap_or("all"))],
            extra: split("-device edu,dma_mask=0xffffffffffffffff"),
            gdb: false,
            boot: Boot::Uefi,
        };
        let mut c = harness::case(&machine, kernel, BOOT_TIMEOUT)?;
        c.must_contain = expected_topology(arch, iommu);
        c.must_contain.push(source.into());
        c.must_contain.push(loader.clone());
        cases.push(c);
        if filter.is_none() {
            // The demo with both storage devices, as in the direct boots.
            let name = format!("{}-demo", machine.name());
            let demo = Machine { cmdline: vec!["init=demo".to_owned()], extra: storage_disks(&name)?, ..machine };
            let mut c = harness::case(&demo, kernel, BOOT_TIMEOUT)?;
            harness::rename(&mut c, name);
            c.must_contain = vec![
                "demo: passed 3 devices".into(),
                format!("kind={} dev=edu dma=ok stray-dma=blocked", demo_kind(iommu)),
                format!("kind={} dev=nvme dma=ok stray-dma=blocked", demo_kind(iommu)),
                format!("kind={} dev=virtio-blk dma=ok stray-dma=blocked", demo_kind(iommu)),
            ];
            c.expect = qemu_tests::runner::Expect::Exit;
            cases.push(c);
        }
    }
    // The loader moves the image away from its link address (as on machines whose
    // firmware owns it), and the kernel runs from there: the core, IOMMU and IOAS tests.
    let iommu = arch.default_iommu();
    if filter.is_none() && configs.contains(&(arch, iommu)) {
        let machine = Machine {
            arch,
            iommu,
            cmdline: vec!["ktest=core,iommu,ioas".to_owned(), "uefi.relocate=1".to_owned()],
            extra: Vec::new(),
            gdb: false,
            boot: Boot::Uefi,
        };
        let mut c = harness::case(&machine, kernel, BOOT_TIMEOUT)?;
        harness::rename(&mut c, format!("{}-relocated", machine.name()));
        c.must_contain = vec!["portcullis-uefi: image relocated from its link address".into(), loader];
        cases.push(c);
    }
    Ok(cases)
}

/// The register-trace lines (`iommu::trace`) the demo's boot must show on
/// `iommu`, in this order: bring-up, a map, the unmap's invalidation and its
/// completion, the stray DMA's fault (none on AMD-Vi: QEMU's AMD-Vi logs no
/// event for it, docs/qemu.md).
fn trace_sequence(iommu: Iommu) -> Vec<&'static str> {
    match iommu {
        Iommu::Vtd => vec![
            "vtd0: RTADDR <- ",
            "vtd0: GCMD <- 0x40000000 (SRTP)",
            "vtd0: GSTS 0x40000000 (SRTP): set root table pointer done",
            "vtd0: IQA <- ",
            "vtd0: GCMD <- 0x4000000 (QIE)",
            "queued invalidation enable done",
            "vtd0: IQ[0] submit cc_inv (G=global",
            "vtd0: IQ[1] submit inv_wait (SW=1",
            "vtd0: IQT <- 0x20 (QT=2)",
            "vtd0: IQ wait done (SDATA=0x1)",
            "vtd0: context[0x0008] <- ",
            "vtd0: GCMD <- 0x84000000 (TE QIE)",
            "translation enable done",
            "vtd0: map domain=",
            "submit iotlb_inv (G=page",
            "submit inv_wait (SW=1",
            "vtd0: IQT <- ",
            "vtd0: IQ wait done",
            "vtd0: FRCD[0] fault recorded: DMA write fault",
            "vtd0: FRCD_HI[0] <- 0x80000000 (F cleared)",
        ],
        Iommu::Amdvi => vec![
            "amdvi0: DevTabBase <- ",
            "amdvi0: CmdBufBase <- ",
            "amdvi0: EventLogBase <- ",
            "amdvi0: CmdTail <- 0x0",
            "amdvi0: Status <- ",
            "amdvi0: Control <- 0x1405 (IommuEn EventLogEn Coherent CmdBufEn)",
            "amdvi0: CMDBUF[0] submit INVALIDATE_IOMMU_ALL",
            "amdvi0: CMDBUF[1] submit COMPLETION_WAIT (S=1",
            "amdvi0: CmdTail <- 0x20 (offset=0x20 (entry 2))",
            "amdvi0: COMPLETION_WAIT done (StoreData=0x1)",
            "amdvi0: DTE[0x0010] <- ",
            "submit INVALIDATE_DEVTAB_ENTRY (DeviceID=0x0010)",
            "amdvi0: map domain=",
            "submit INVALIDATE_IOMMU_PAGES (DomainID=0x1 PASID=0x0 S=0",
            "submit COMPLETION_WAIT",
            "amdvi0: CmdTail <- ",
            "amdvi0: COMPLETION_WAIT done",
        ],
        Iommu::Smmuv3 => vec![
            "smmu0: CR0 <- 0x0",
            "smmu0: GBPA <- ",
            "smmu0: CR1 <- ",
            "smmu0: STRTAB_BASE <- ",
            "smmu0: STRTAB_BASE_CFG <- ",
            "smmu0: CMDQ_BASE <- ",
            "smmu0: EVENTQ_BASE <- ",
            "smmu0: CR0 <- 0xc (EVENTQEN CMDQEN)",
            "smmu0: CMDQ[0x0] submit CMD_CFGI_ALL",
            "submit CMD_SYNC (CS=SIG_NONE",
            "smmu0: CMDQ_PROD <- ",
            "smmu0: CMD_SYNC done",
            "smmu0: STE[0x8] <- ",
            "smmu0: CR0 <- 0xd (SMMUEN EVENTQEN CMDQEN)",
            "smmu0: map domain=",
            "submit CMD_TLBI_NH_VA",
            "submit CMD_SYNC",
            "smmu0: CMD_SYNC done",
            "smmu0: EVENTQ[0x0] event F_TRANSLATION",
            "smmu0: EVENTQ_CONS <- ",
        ],
        Iommu::Virtio | Iommu::None => vec![
            "virtio0: device_status <- 0x0 (reset)",
            "virtio0: device_status <- 0xb (ACKNOWLEDGE DRIVER FEATURES_OK)",
            "virtio0: queue_enable <- 0x1",
            "virtio0: device_status <- 0xf (ACKNOWLEDGE DRIVER DRIVER_OK FEATURES_OK)",
            "submit ATTACH (domain=",
            "virtio0: queue_notify <- 0x0",
            "used: ATTACH (domain=",
            "submit MAP (domain=",
            "used: MAP (domain=",
            "submit UNMAP (domain=",
            "used: UNMAP (domain=",
            "virtio0: EVENTQ[",
        ],
    }
}

/// The name the kernel gives the first unit of kind `iommu`.
fn unit_prefix(iommu: Iommu) -> &'static str {
    match iommu {
        Iommu::Vtd => "dmar0",
        Iommu::Amdvi => "ivhd0",
        Iommu::Smmuv3 => "smmu0",
        Iommu::Virtio | Iommu::None => "viommu0",
    }
}

/// The console input for a shell lesson: the script's lines (comments left
/// out), then `exit` (so the boot ends), in `target/lessons/<name>.input`,
/// typed once the shell has started (firmware before it would eat them).
pub(crate) fn lesson_input(script: &std::path::Path, name: &str) -> Result<qemu_tests::runner::Input, String> {
    let text = std::fs::read_to_string(script).map_err(|e| format!("cannot read {}: {e}", script.display()))?;
    let dir = crate::target::workspace_root().join("target").join("lessons");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.input"));
    let mut input: String =
        text.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| format!("{l}\n")).collect();
    input.push_str("exit\n");
    std::fs::write(&path, input).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(qemu_tests::runner::Input { after: "portcullis shell:".into(), file: path })
}

/// QEMU arguments for an NVMe controller and a virtio-blk device, each on a
/// disk image of its own named after the case `name`.
pub(crate) fn storage_disks(name: &str) -> Result<Vec<String>, String> {
    let mut args = crate::target::disk_args(crate::target::Disk::Nvme, &format!("{name}-nvme"))?;
    args.extend(crate::target::disk_args(crate::target::Disk::VirtioBlk, &format!("{name}-vblk"))?);
    Ok(args)
}

/// Checks that every `topology:` line the direct boot of (`arch`, `iommu`)
/// printed (from the device tree on aarch64, from QEMU's ACPI tables through
/// SeaBIOS on x86_64) is also printed by the UEFI boot of the same machine
/// (from the tables the UEFI firmware installs: IORT / VIOT on aarch64). The
/// UEFI machine has its boot disk as one more PCI function on aarch64, so its
/// lines may be more, never different. Returns how many lines were compared.
fn topology_agrees(arch: Arch, iommu: Iommu) -> Result<usize, String> {
    let dir = crate::target::workspace_root().join("target").join("qemu-tests");
    let lines = |name: &str| -> Result<Vec<String>, String> {
        let path = dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("topology: ") && !l.starts_with("topology: source"))
            .map(|l| {
                // A unit that is a PCI function (virtio-iommu) is named by its BDF; its
                // `base=` is a BAR, which SeaBIOS and OVMF place differently.
                if l.contains(" pci=") {
                    l.split(' ').filter(|w| !w.starts_with("base=")).collect::<Vec<_>>().join(" ")
                } else {
                    l.to_owned()
                }
            })
            .collect())
    };
    let name = format!("{}-{}", arch.name(), iommu.name());
    let direct = lines(&name)?;
    let uefi = lines(&format!("{name}-uefi"))?;
    if direct.is_empty() {
        return Err("the direct boot printed no topology".into());
    }
    match direct.iter().find(|l| !uefi.contains(l)) {
        Some(missing) => Err(format!("the UEFI boot does not print \"{missing}\"")),
        None => Ok(direct.len()),
    }
}

/// The QEMU configurations to test, after `--arch` / `--iommu` restrictions.
fn matrix(arch: Option<Arch>, iommu: Option<Iommu>) -> Result<Vec<(Arch, Iommu)>, String> {
    if let (Some(a), Some(i)) = (arch, iommu) {
        i.check(a)?;
    }
    let cases: Vec<(Arch, Iommu)> = Arch::all()
        .into_iter()
        .filter(|a| arch.is_none_or(|x| x == *a))
        .flat_map(|a| Iommu::for_arch(a).iter().map(move |i| (a, *i)))
        .filter(|(_, i)| iommu.is_none_or(|x| x == *i))
        .collect();
    if cases.is_empty() {
        return Err("no QEMU configuration matches --arch/--iommu".into());
    }
    Ok(cases)
}

/// Operations each of `test-smp`'s four workers runs in a stress case: 10^5 per IOMMU.
const SMP_STRESS_OPS: u64 = 25_000;
/// A stress case's bound: 10^5 IOAS operations and their DMA checks under TCG.
const SMP_STRESS_TIMEOUT: Duration = Duration::from_secs(900);

/// The multiprocessor cases of `arch` (docs/smp.md): per IOMMU,
/// `<arch>-<iommu>-smp-stress` runs `test-smp` with 10^5 operations (four
/// workers on the CPUs `--smp` gives, default 2, each with an `edu` of its
/// own); `<arch>-smp1` is the default IOMMU's whole suite on one CPU, the
/// machine every earlier session tested on.
fn smp_cases(
    arch: Arch,
    kernel: &crate::build::Kernel,
    configs: &[(Arch, Iommu)],
) -> Result<Vec<qemu_tests::runner::Case>, String> {
    let mut cases = Vec::new();
    let edu = || ["-device".to_owned(), "edu,dma_mask=0xffffffffffffffff".to_owned()];
    for &(_, iommu) in configs.iter().filter(|(a, i)| *a == arch && *i != Iommu::None) {
        // Four edus in all (the machine brings one): a device per worker.
        let extra: Vec<String> = (0..3).flat_map(|_| edu()).collect();
        let cmdline = vec!["ktest=test-smp".to_owned(), format!("smp.ops={SMP_STRESS_OPS}")];
        let m = Machine { arch, iommu, cmdline, extra, gdb: false, boot: Boot::Direct };
        let mut c = harness::case(&m, kernel, SMP_STRESS_TIMEOUT)?;
        harness::rename(&mut c, format!("{}-{}-smp-stress", arch.name(), iommu.name()));
        c.must_contain = (0..4)
            .map(|k| format!("user.smp.worker_{k} # {SMP_STRESS_OPS} operations"))
            .chain(["ok 5 user.smp.dma_checked # ".to_owned(), "ok 6 user.smp.baseline_restored".to_owned()])
            .collect();
        cases.push(c);
    }
    let iommu = arch.default_iommu();
    if configs.contains(&(arch, iommu)) {
        let extra = ["-smp", "1", "-device", "edu,dma_mask=0xffffffffffffffff"].map(str::to_owned).to_vec();
        let m = Machine { arch, iommu, cmdline: vec!["ktest=all".to_owned()], extra, gdb: false, boot: Boot::Direct };
        let mut c = harness::case(&m, kernel, BOOT_TIMEOUT)?;
        harness::rename(&mut c, format!("{}-smp1", arch.name()));
        c.must_contain = vec!["smp: 1 CPU online".to_owned()];
        cases.push(c);
    }
    Ok(cases)
}

/// `cargo xtask test`.
/// The run's verdicts as TAP version 13 (one test point per phase, QEMU case
/// and check), in `target/test-summary.tap`, for CI systems that read TAP.
pub fn tap_text(entries: &[harness::Verdict]) -> String {
    let mut out = format!("TAP version 13\n1..{}\n", entries.len());
    for (i, (name, ok, detail)) in entries.iter().enumerate() {
        let detail = detail.replace(['\n', '#'], " ");
        out.push_str(&format!("{} {} - {name} # {detail}\n", if *ok { "ok" } else { "not ok" }, i + 1));
    }
    out
}

fn write_tap(entries: &[harness::Verdict]) {
    if entries.is_empty() {
        return;
    }
    let path = crate::target::workspace_root().join("target").join("test-summary.tap");
    match std::fs::write(&path, tap_text(entries)) {
        Ok(()) => println!("xtask: TAP summary of this run in {}", path.display()),
        Err(e) => eprintln!("xtask: cannot write {}: {e}", path.display()),
    }
}

/// Which QEMU cases `test` runs: all of the matrix, one by name (`--case`),
/// or none, only their names printed (`--list`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Select<'a> {
    /// Print the names and run nothing.
    pub list: bool,
    /// Run only this case (exact name, else every name containing it).
    pub case: Option<&'a str>,
}

/// Runs the suite (see `cargo xtask test --help`).
pub fn run_tests(
    host_only: bool,
    qemu_only: bool,
    arch: Option<Arch>,
    iommu: Option<Iommu>,
    filter: Option<&str>,
    boot: Option<Boot>,
    select: Select<'_>,
) -> Result<(), String> {
    let picking = select.list || select.case.is_some();
    let (do_host, do_qemu) = match (host_only, qemu_only) {
        _ if picking => (false, true),
        (true, false) => (true, false),
        (false, true) => (false, true),
        _ => (true, true),
    };
    let host = if do_host { host_tests()? } else { HostCounts::default() };
    let mut qemu_ok = true;
    let mut totals = harness::Totals { passed: host.passed, failed: host.failed, skipped: host.ignored };
    // One entry per phase, case and check, for the TAP file at the end.
    let mut summary: Vec<harness::Verdict> = Vec::new();
    if do_host {
        summary.push((
            "host-tests".into(),
            host.failed == 0,
            format!("{} passed, {} failed, {} ignored", host.passed, host.failed, host.ignored),
        ));
        // Brief coverage-guided runs of every parser fuzz target (xtask/src/fuzz.rs), one test each.
        let (passed, failed) = crate::fuzz::brief();
        totals.passed += passed;
        totals.failed += failed;
        summary.push(("fuzz-phase".into(), failed == 0, format!("{passed} targets passed, {failed} failed")));
    }
    if do_qemu {
        let configs = matrix(arch, iommu)?;
        let mut cases = Vec::new();
        let direct = boot.is_none_or(|b| b == Boot::Direct);
        let uefi = boot.is_none_or(|b| b == Boot::Uefi);
        for a in Arch::all().into_iter().filter(|a| configs.iter().any(|(x, _)| x == a)) {
            let kernel = build::kernel_for(a, false, if uefi { Boot::Uefi } else { Boot::Direct })?;
            if uefi {
                cases.extend(uefi_cases(a, &kernel, &configs, filter)?);
            }
            if !direct {
                continue;
            }
            for &(ca, ci) in configs.iter().filter(|(x, _)| *x == a) {
                // Every boot with an IOMMU gets the second edu the isolation
                // tests need (the victim task's, in another IOMMU group).
                let extra = match ci {
                    Iommu::None => Vec::new(),
                    _ => vec!["-device".to_owned(), "edu,dma_mask=0xffffffffffffffff".to_owned()],
                };
                let machine = Machine {
                    arch: ca,
                    iommu: ci,
                    cmdline: vec![format!("ktest={}", filter.unwrap_or("all"))],
                    extra,
                    gdb: false,
                    boot: Boot::Direct,
                };
                let mut c = harness::case(&machine, &kernel, BOOT_TIMEOUT)?;
                c.must_contain = expected_topology(ca, ci);
                if ci == Iommu::Vtd && filter.is_none_or(|f| f.contains("isolation")) {
                    // user.isolation's forged message through a handle beyond the table.
                    c.must_contain.push("(interrupt index 0xabc): reason 0x21".into());
                }
                cases.push(c);
            }
            if filter.is_none() {
                match iommu {
                    None => cases.extend(firmware_cases(a, &kernel)?),
                    // With --iommu, the firmware and demo cases of that IOMMU
                    // (named for it, or unnamed ones on the default IOMMU).
                    Some(i) => {
                        let named = |c: &qemu_tests::runner::Case, x: Iommu| {
                            format!("{}-", c.name).contains(&format!("-{}-", x.name()))
                        };
                        let others: Vec<Iommu> =
                            Iommu::for_arch(a).iter().copied().filter(|&x| x != i && x != Iommu::None).collect();
                        cases.extend(firmware_cases(a, &kernel)?.into_iter().filter(|c| {
                            named(c, i) || (i == a.default_iommu() && !others.iter().any(|&x| named(c, x)))
                        }));
                    }
                }
            }
            if configs.contains(&(a, a.default_iommu())) && filter.is_none_or(|f| f.contains("isolation")) {
                cases.extend(isolation_cases(a, &kernel)?);
            }
            if iommu.is_none() && filter.is_none_or(|f| f.contains("init")) {
                cases.extend(init_cases(a, &kernel)?);
            }
            if configs.contains(&(a, Iommu::Amdvi)) && filter.is_none() {
                cases.push(amdvi_stale_bus_case(&kernel)?);
            }
            if filter.is_none_or(|f| f.contains("smp")) {
                cases.extend(smp_cases(a, &kernel, &configs)?);
            }
        }
        // The exception and panic report paths, once per architecture.
        if direct && filter.is_none_or(|f| f.contains("crash")) {
            for a in Arch::all().into_iter().filter(|a| configs.iter().any(|(x, _)| x == a)) {
                let kernel = build::kernel(a, false)?;
                for kind in ["page-fault", "panic"] {
                    let machine = Machine {
                        arch: a,
                        iommu: Iommu::None,
                        cmdline: vec![format!("crashtest={kind}")],
                        extra: Vec::new(),
                        gdb: false,
                        boot: Boot::Direct,
                    };
                    let mut c = harness::case(&machine, &kernel, BOOT_TIMEOUT)?;
                    harness::rename(&mut c, format!("{}-crash-{kind}", a.name()));
                    c.expect = qemu_tests::runner::Expect::Crash;
                    cases.push(c);
                }
            }
        }
        if select.list {
            for c in &cases {
                println!("{}", c.name);
            }
            println!("{} cases", cases.len());
            return Ok(());
        }
        if let Some(name) = select.case {
            let exact: Vec<_> = cases.iter().filter(|c| c.name == name).cloned().collect();
            let picked =
                if exact.is_empty() { cases.into_iter().filter(|c| c.name.contains(name)).collect() } else { exact };
            if picked.is_empty() {
                return Err(format!(
                    "no QEMU case is named (or contains) `{name}`: `cargo xtask test --list` prints them"
                ));
            }
            cases = picked;
        }
        let (ok, counts, each) = harness::run_and_report_each(cases)?;
        summary.extend(each);
        qemu_ok = ok;
        totals.passed += counts.passed;
        totals.failed += counts.failed;
        totals.skipped += counts.skipped;
        // With both boot paths run, the firmware descriptions must agree.
        if direct && uefi && select.case.is_none() {
            for (a, i) in configs.iter().copied().filter(|&(_, i)| i != Iommu::None) {
                match topology_agrees(a, i) {
                    Ok(n) => {
                        println!(
                            "PASS {}-{}-topology-uefi-vs-direct ({n} lines of the direct boot found)",
                            a.name(),
                            i.name()
                        );
                        totals.passed += 1;
                        let name = format!("{}-{}-topology-uefi-vs-direct", a.name(), i.name());
                        summary.push((name, true, format!("{n} lines of the direct boot found")));
                    }
                    Err(e) => {
                        println!("FAIL {}-{}-topology-uefi-vs-direct: {e}", a.name(), i.name());
                        totals.failed += 1;
                        summary.push((format!("{}-{}-topology-uefi-vs-direct", a.name(), i.name()), false, e));
                    }
                }
            }
        }
    }
    write_tap(&summary);
    // The plain closing line counts host and kernel tests together.
    println!("{} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.skipped);
    if totals.failed == 0 && host.failed == 0 && qemu_ok {
        Ok(())
    } else {
        Err("some tests failed".into())
    }
}

/// What `cargo xtask run` boots.
pub struct RunOptions {
    /// Architecture.
    pub arch: Arch,
    /// IOMMU (default: the architecture's).
    pub iommu: Option<Iommu>,
    /// Optimised kernel.
    pub release: bool,
    /// Wait for gdb.
    pub gdb: bool,
    /// `trace=1` on the command line.
    pub trace: bool,
    /// The hardware-specific door's demos instead of the generic one.
    pub hw: bool,
    /// `--init NAME[,NAME…]`: these programs instead of the demo.
    pub init: Option<String>,
    /// `--cmdline TEXT`: more kernel command-line words.
    pub cmdline: Vec<String>,
    /// `--shell --script FILE`: typed into the guest's console.
    pub script: Option<std::path::PathBuf>,
    /// Direct or UEFI boot.
    pub boot: Boot,
}

/// `cargo xtask run`: boots one machine with live, symbolized output.
pub fn run_demo(options: RunOptions, qemu_args: &[String]) -> Result<(), String> {
    let RunOptions { arch, iommu, release, gdb, trace, hw, init, boot, cmdline: more, script } = options;
    let iommu = iommu.unwrap_or(arch.default_iommu());
    iommu.check(arch)?;
    // The demo: the generic edu driver on every edu behind an IOMMU, or
    // (`--hw`) the hardware-specific door with a user-owned stage 1, or
    // (`--init`) the programs named, checked before anything is built.
    let init = match init {
        Some(spec) => crate::programs::init_word(&spec, &crate::programs::names()?)?,
        None if hw => "init=hw-vtd,hw-smmuv3".to_owned(),
        None => "init=demo".to_owned(),
    };
    let kernel = build::kernel_for(arch, release, boot)?;
    let mut cmdline = vec![init];
    if trace {
        cmdline.push("trace=1".to_owned());
    }
    if cmdline.iter().any(|w| w == "init=shell") {
        // The shell's `log` reads the kernel log: allowed on this machine.
        cmdline.push("info.log=allow".to_owned());
    }
    cmdline.extend(more);
    let machine = Machine { arch, iommu, cmdline, extra: qemu_args.to_vec(), gdb, boot };
    if gdb {
        println!(
            "xtask: QEMU waits for gdb on localhost:1234. In another terminal:\n  {} {} -ex 'target remote localhost:1234'",
            if arch == Arch::Aarch64 { "gdb-multiarch" } else { "gdb" },
            kernel.elf.display()
        );
    }
    let timeout = if gdb { None } else { Some(Duration::from_secs(600)) };
    let input = script.map(|s| lesson_input(&s, &format!("run-{}", arch.name()))).transpose()?;
    harness::run_live(&machine, &kernel, timeout, input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_summary_numbers_every_entry_and_marks_failures() {
        let text = tap_text(&[
            ("host-tests".into(), true, "3 passed".into()),
            ("x86_64-demo".into(), false, "missing output #1\nmore".into()),
        ]);
        assert_eq!(
            text,
            "TAP version 13\n1..2\nok 1 - host-tests # 3 passed\nnot ok 2 - x86_64-demo # missing output  1 more\n"
        );
    }

    #[test]
    fn cargo_test_lines_are_summed() {
        let out = "running 3 tests\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
                   test result: FAILED. 2 passed; 4 failed; 0 ignored; 0 measured\nnoise passed\n";
        let c = parse_cargo_test(out);
        assert_eq!((c.passed, c.failed, c.ignored), (5, 4, 1));
    }

    #[test]
    fn matrix_respects_filters_and_rejects_impossible_pairs() {
        assert_eq!(matrix(Some(Arch::Aarch64), None).unwrap().len(), 3);
        assert_eq!(matrix(None, Some(Iommu::Virtio)).unwrap().len(), 2);
        assert!(matrix(Some(Arch::Aarch64), Some(Iommu::Vtd)).unwrap_err().contains("not available on aarch64"));
        assert_eq!(matrix(None, None).unwrap().len(), 7);
    }
}

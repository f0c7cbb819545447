//! What a build or a boot is for: the architecture, the IOMMU in the
//! machine, how the kernel is loaded, and where the workspace is. The
//! vocabulary every other xtask module shares (it names none of them).

use std::path::PathBuf;

/// Target architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86_64 on QEMU q35.
    #[value(name = "x86_64")]
    X86_64,
    /// aarch64 on QEMU virt.
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    /// Name used in case names and paths.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Rust target triple of the kernel.
    pub fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none-softfloat",
        }
    }

    /// Rust target triple of the UEFI loader.
    pub fn uefi_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-uefi",
            Arch::Aarch64 => "aarch64-unknown-uefi",
        }
    }

    /// File name the firmware boots from removable media (`\EFI\BOOT\...`, UEFI 2.10 §3.5.1.1).
    pub fn uefi_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Aarch64 => "BOOTAA64.EFI",
        }
    }

    /// IOMMU used when none is named.
    pub fn default_iommu(self) -> Iommu {
        match self {
            Arch::X86_64 => Iommu::Vtd,
            Arch::Aarch64 => Iommu::Smmuv3,
        }
    }

    /// QEMU exit statuses that mean "the kernel reported success".
    pub fn success_codes(self) -> Vec<i32> {
        match self {
            // isa-debug-exit: (0x10 << 1) | 1
            Arch::X86_64 => vec![33],
            // semihosting SYS_EXIT with code 0
            Arch::Aarch64 => vec![0],
        }
    }

    /// All architectures.
    pub fn all() -> [Arch; 2] {
        [Arch::X86_64, Arch::Aarch64]
    }
}

/// IOMMU in the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Iommu {
    /// Intel VT-d (x86_64 only).
    Vtd,
    /// AMD-Vi (x86_64 only).
    Amdvi,
    /// Arm SMMUv3 (aarch64 only).
    Smmuv3,
    /// virtio-iommu (both).
    Virtio,
    /// No IOMMU.
    None,
}

impl Iommu {
    /// Name used in case names and on the kernel command line.
    pub fn name(self) -> &'static str {
        match self {
            Iommu::Vtd => "vtd",
            Iommu::Amdvi => "amdvi",
            Iommu::Smmuv3 => "smmuv3",
            Iommu::Virtio => "virtio",
            Iommu::None => "none",
        }
    }

    /// IOMMUs a machine of `arch` can have.
    pub fn for_arch(arch: Arch) -> &'static [Iommu] {
        match arch {
            Arch::X86_64 => &[Iommu::Vtd, Iommu::Amdvi, Iommu::Virtio, Iommu::None],
            Arch::Aarch64 => &[Iommu::Smmuv3, Iommu::Virtio, Iommu::None],
        }
    }

    /// Checks that `arch` can have this IOMMU, with a clear reason if not.
    pub fn check(self, arch: Arch) -> Result<(), String> {
        if Iommu::for_arch(arch).contains(&self) {
            return Ok(());
        }
        let valid: Vec<&str> = Iommu::for_arch(arch).iter().map(|i| i.name()).collect();
        Err(format!(
            "--iommu {} is not available on {}: QEMU's {} machine cannot have it (choose one of: {})",
            self.name(),
            arch.name(),
            if arch == Arch::X86_64 { "q35" } else { "virt" },
            valid.join(", ")
        ))
    }
}

/// How the kernel gets loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Boot {
    /// QEMU's `-kernel` (PVH on x86_64, the ELF at EL2 on aarch64).
    Direct,
    /// UEFI firmware (OVMF / AAVMF) runs the portcullis loader from an EFI
    /// system partition on a GPT disk image, which loads the kernel.
    Uefi,
}

/// A storage device `run --disk` adds, on a disk image made on the fly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Disk {
    /// An NVMe controller (`-device nvme`) with one namespace.
    Nvme,
    /// A virtio-blk device, modern transport, its DMA through the IOMMU
    /// (`virtio-blk-pci,disable-legacy=on,iommu_platform=on`).
    VirtioBlk,
}

/// Bytes of the disk images [`disk_args`] makes.
pub const DISK_BYTES: u64 = 16 << 20;

/// QEMU arguments for `disk` on an image named `name` under
/// `target/disks/` (made, zero-filled, [`DISK_BYTES`] long, when missing;
/// one per machine, as QEMU locks an image for its writer).
pub fn disk_args(disk: Disk, name: &str) -> Result<Vec<String>, String> {
    let dir = workspace_root().join("target").join("disks");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let image = dir.join(format!("{name}.img"));
    if !image.exists() {
        let f = std::fs::File::create(&image).map_err(|e| format!("cannot create {}: {e}", image.display()))?;
        f.set_len(DISK_BYTES).map_err(|e| format!("cannot size {}: {e}", image.display()))?;
    }
    let file = image.display();
    Ok(match disk {
        Disk::Nvme => vec![
            "-drive".to_owned(),
            format!("file={file},if=none,id=nvme0,format=raw"),
            "-device".to_owned(),
            "nvme,serial=portcullis0,drive=nvme0".to_owned(),
        ],
        Disk::VirtioBlk => vec![
            "-drive".to_owned(),
            format!("file={file},if=none,id=vblk0,format=raw"),
            "-device".to_owned(),
            "virtio-blk-pci,drive=vblk0,disable-legacy=on,iommu_platform=on".to_owned(),
        ],
    })
}

/// UEFI firmware images (code, variable-store template) for `arch`, as Debian's
/// `ovmf` and `qemu-efi-aarch64` packages install them.
pub fn uefi_firmware(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::X86_64 => ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        Arch::Aarch64 => ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
    }
}

/// Workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

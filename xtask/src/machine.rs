//! The QEMU machines portcullis boots on, one command line per (arch, IOMMU).
//! Facts from ../shared/QEMU.md §1.

use crate::build::Kernel;
use crate::target::{uefi_firmware, workspace_root};
use crate::target::{Arch, Boot, Iommu};

/// Numbers the disk images of one xtask run, so that parallel boots never share one.
static IMAGE_SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// CPUs of every machine (`--smp`); see [`set_smp`].
static SMP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(2);

/// Gives every machine booted from now `n` CPUs (1 to 16).
pub fn set_smp(n: usize) {
    SMP.store(n.clamp(1, 16), std::sync::atomic::Ordering::Relaxed);
}

/// CPUs of the machines booted, unless a machine's own QEMU arguments say `-smp`.
pub fn smp() -> usize {
    SMP.load(std::sync::atomic::Ordering::Relaxed)
}

/// The QEMU words that give a machine `n` CPUs: with more than one, TCG
/// runs one host thread per CPU (multi-threaded TCG), so CPUs really race.
pub fn smp_args(n: usize) -> String {
    if n > 1 {
        format!("-smp {n} -accel tcg,thread=multi")
    } else {
        "-smp 1".to_owned()
    }
}

/// Extra kernel command-line words from `PORTCULLIS_CMDLINE`.
pub fn env_cmdline() -> Vec<String> {
    std::env::var("PORTCULLIS_CMDLINE").map(|v| v.split_whitespace().map(str::to_owned).collect()).unwrap_or_default()
}

/// Everything needed to start one QEMU boot.
pub struct Machine {
    /// Architecture.
    pub arch: Arch,
    /// IOMMU.
    pub iommu: Iommu,
    /// Kernel command line (without the parts the xtask always adds).
    pub cmdline: Vec<String>,
    /// Extra QEMU arguments from the caller.
    pub extra: Vec<String>,
    /// Start halted with a gdbstub.
    pub gdb: bool,
    /// How the kernel is loaded.
    pub boot: Boot,
}

/// Extra QEMU arguments from `PORTCULLIS_QEMU_EXTRA`.
pub fn env_extra() -> Vec<String> {
    std::env::var("PORTCULLIS_QEMU_EXTRA")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Machine {
    /// The QEMU program and arguments for booting `kernel`. A UEFI boot first
    /// writes its disk image (loader, kernel, command line) and a private copy
    /// of the firmware's variable store under `target/uefi`.
    pub fn command(&self, kernel: &Kernel) -> Result<(String, Vec<String>), String> {
        let mut a: Vec<String> = Vec::new();
        let mut add = |s: &str| a.extend(s.split_whitespace().map(str::to_owned));
        let mut cmdline = self.cmdline.clone();
        // A machine whose own arguments name `-smp` (a one-CPU case) keeps them.
        let own_smp = self.extra.iter().chain(env_extra().iter()).any(|w| w == "-smp");
        let cpus = if own_smp { String::new() } else { smp_args(smp()) };
        let program = match self.arch {
            Arch::X86_64 => {
                // Interrupt remapping wants the I/O APIC in QEMU, not in KVM
                // (`kernel-irqchip=split`; TCG does not care, KVM users need it).
                let irqchip =
                    if matches!(self.iommu, Iommu::Vtd | Iommu::Amdvi) { ",kernel-irqchip=split" } else { "" };
                add(&format!(
                    "-machine q35{irqchip} -cpu max -m 512M {cpus} -nographic -no-reboot -vga none -nic none"
                ));
                add("-device isa-debug-exit,iobase=0xf4,iosize=0x04");
                match self.iommu {
                    // Interrupt remapping on (a case of the suite turns it off again).
                    // (as a -global, so that a later `-global intel-iommu.intremap=off` wins).
                    Iommu::Vtd => add("-global intel-iommu.intremap=on -device intel-iommu"),
                    // pt=off: with the default pt=on QEMU 10 never translates emulated devices (QEMU.md G1).
                    Iommu::Amdvi => add("-global amd-iommu.intremap=on -device amd-iommu,pt=off"),
                    Iommu::Virtio => add("-device virtio-iommu-pci"),
                    Iommu::Smmuv3 | Iommu::None => {}
                }
                // A 64-bit DMA mask so edu can reach IOVAs above its default 28 bits (QEMU.md §4).
                add("-device edu,dma_mask=0xffffffffffffffff");
                cmdline.insert(0, "qemu_exit=0xf4".into());
                // x86 virtio-iommu does not remap interrupts, so the kernel
                // refuses Bus Master unless told otherwise (docs/isolation.md);
                // the suite drives devices there, so it says so.
                if self.iommu == Iommu::Virtio && !cmdline.iter().any(|w| w.starts_with("iommu.unsafe_interrupts=")) {
                    cmdline.push("iommu.unsafe_interrupts=allow".into());
                }
                "qemu-system-x86_64"
            }
            Arch::Aarch64 => {
                let smmu = if self.iommu == Iommu::Smmuv3 { ",iommu=smmuv3" } else { "" };
                add(&format!("-machine virt,virtualization=on,gic-version=3{smmu}"));
                add(&format!("-cpu max -m 1G {cpus} -nographic -no-reboot -nic none -semihosting"));
                if self.iommu == Iommu::Virtio {
                    add("-device virtio-iommu-pci");
                }
                add("-device edu,dma_mask=0xffffffffffffffff");
                cmdline.insert(0, "qemu_exit=semihosting".into());
                "qemu-system-aarch64"
            }
        };
        cmdline.push(format!("iommu={}", self.iommu.name()));
        cmdline.extend(env_cmdline());
        match self.boot {
            Boot::Direct => {
                a.push("-kernel".into());
                a.push(kernel.elf.display().to_string());
                a.push("-append".into());
                a.push(cmdline.join(" "));
            }
            Boot::Uefi => a.extend(self.uefi_args(kernel, &cmdline.join(" "))?),
        }
        if self.gdb {
            a.push("-s".into());
            a.push("-S".into());
        }
        a.extend(env_extra());
        a.extend(self.extra.iter().cloned());
        Ok((program.to_owned(), a))
    }

    /// Firmware flash and the boot disk for a UEFI boot of `kernel` with `cmdline`.
    fn uefi_args(&self, kernel: &Kernel, cmdline: &str) -> Result<Vec<String>, String> {
        let (code, vars) = uefi_firmware(self.arch);
        for f in [code, vars] {
            if !std::path::Path::new(f).exists() {
                return Err(format!(
                    "UEFI firmware {f} is missing: run `cargo xtask setup` (installs ovmf / qemu-efi-aarch64)"
                ));
            }
        }
        let dir = workspace_root().join("target").join("uefi");
        let n = IMAGE_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let image = dir.join(format!("{}-{}-{n}.img", self.arch.name(), self.iommu.name()));
        let vars_copy = image.with_extension("vars.fd");
        crate::image::write_kernel_image(self.arch, kernel, cmdline, &image)?;
        std::fs::copy(vars, &vars_copy).map_err(|e| format!("copying {vars} to {}: {e}", vars_copy.display()))?;
        Ok(vec![
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display()),
            "-drive".into(),
            format!("format=raw,file={}", image.display()),
        ])
    }

    /// Short name of this configuration, e.g. `x86_64-vtd` (`x86_64-vtd-uefi` for a UEFI boot).
    pub fn name(&self) -> String {
        match self.boot {
            Boot::Direct => format!("{}-{}", self.arch.name(), self.iommu.name()),
            Boot::Uefi => format!("{}-{}-uefi", self.arch.name(), self.iommu.name()),
        }
    }
}

//! A user-space driver for QEMU's `edu` device, run as a test: finds it with
//! `device_list`, claims it, maps its BAR and talks to it (identity, liveness,
//! factorial), and checks the error paths of the device syscalls. KTAP output.
#![no_std]
#![no_main]

use abi::{DeviceInfo, Errno};
use userlib::{println, sys};

const EDU: (u16, u16) = (0x1234, 0x11E8);

struct Ctx {
    edu: Option<DeviceInfo>,
    other: Option<DeviceInfo>,
    regs: u64,
}

fn list(ctx: &mut Ctx) -> Result<(), &'static str> {
    let mut buf = [DeviceInfo::default(); 32];
    let n = sys::device_list(&mut buf).map_err(|_| "device_list failed")? as usize;
    if n == 0 || buf[0].size as usize != core::mem::size_of::<DeviceInfo>() {
        return Err("no devices or wrong record size");
    }
    let seen = &buf[..n.min(buf.len())];
    ctx.edu = seen.iter().copied().find(|d| (d.vendor, d.device) == EDU);
    ctx.other = seen.iter().copied().find(|d| (d.vendor, d.device) != EDU);
    // A buffer too small for one record copies nothing but still counts.
    let mut none: [DeviceInfo; 0] = [];
    if sys::device_list(&mut none) != Ok(n as u64) {
        return Err("empty buffer did not return the count");
    }
    if sys::raw(abi::Sysno::DeviceList as u64, [0x10, 4096, 0, 0, 0]) != abi::encode(Err(Errno::EFAULT)) {
        return Err("bad buffer pointer not EFAULT");
    }
    ctx.edu.map(|_| ()).ok_or("no edu device in the list")
}

fn claim(ctx: &mut Ctx) -> Result<(), &'static str> {
    let edu = ctx.edu.ok_or("no edu")?;
    if sys::device_map_bar(edu.bdf, 0) != Err(Errno::EPERM) {
        return Err("mapping an unclaimed device not EPERM");
    }
    sys::device_claim(edu.bdf).map_err(|_| "claim failed")?;
    if sys::device_claim(edu.bdf) != Err(Errno::EBUSY) {
        return Err("double claim not EBUSY");
    }
    if sys::device_claim(abi::bdf(0, 0xEE, 31, 7)) != Err(Errno::ENOENT) {
        return Err("claiming a missing function not ENOENT");
    }
    if sys::device_claim(1 << 40) != Err(Errno::EINVAL) {
        return Err("a malformed address not EINVAL");
    }
    Ok(())
}

fn map_bar(ctx: &mut Ctx) -> Result<(), &'static str> {
    let edu = ctx.edu.ok_or("no edu")?;
    if sys::device_map_bar(edu.bdf, 1) != Err(Errno::ENOENT) {
        return Err("BAR1 (absent) not ENOENT");
    }
    if sys::device_map_bar(edu.bdf, 9) != Err(Errno::EINVAL) {
        return Err("BAR9 not EINVAL");
    }
    ctx.regs = sys::device_map_bar(edu.bdf, 0).map_err(|_| "map BAR0 failed")?;
    Ok(())
}

fn reg(ctx: &Ctx, off: u64) -> *mut u32 {
    (ctx.regs + off) as *mut u32
}

fn identity_and_liveness(ctx: &mut Ctx) -> Result<(), &'static str> {
    // SAFETY: `regs` maps edu's BAR0; offsets per QEMU docs/specs/edu.rst.
    let (id, echo) = unsafe {
        let id = reg(ctx, 0).read_volatile();
        reg(ctx, 4).write_volatile(0x0F0F_1234);
        (id, reg(ctx, 4).read_volatile())
    };
    if id != 0x0100_00ED {
        return Err("identity register is not 0x010000ed");
    }
    (echo == !0x0F0F_1234).then_some(()).ok_or("liveness register did not invert")
}

fn factorial(ctx: &mut Ctx) -> Result<(), &'static str> {
    // SAFETY: as above; 0x08 starts n!, 0x20 bit 0 means computing.
    unsafe { reg(ctx, 8).write_volatile(12) };
    let start = sys::clock().unwrap_or(0);
    // SAFETY: as above.
    while unsafe { reg(ctx, 0x20).read_volatile() } & 1 != 0 {
        if sys::clock().unwrap_or(u64::MAX) - start > 1_000_000_000 {
            return Err("factorial did not finish in 1 s");
        }
    }
    // SAFETY: as above.
    (unsafe { reg(ctx, 8).read_volatile() } == 479_001_600).then_some(()).ok_or("12! is wrong")
}

fn config_space(ctx: &mut Ctx) -> Result<(), &'static str> {
    let edu = ctx.edu.ok_or("no edu")?;
    if sys::device_config_read(edu.bdf, 0, 4) != Ok(0x11E8_1234) {
        return Err("vendor/device dword wrong");
    }
    if sys::device_config_read(edu.bdf, 2, 2) != Ok(0x11E8) {
        return Err("device ID word wrong");
    }
    if sys::device_config_read(edu.bdf, 1, 2) != Err(Errno::EINVAL)
        || sys::device_config_read(edu.bdf, 0, 3) != Err(Errno::EINVAL)
    {
        return Err("misaligned or odd-width access not EINVAL");
    }
    if sys::device_config_write(edu.bdf, 0x10, 4, 0) != Err(Errno::EPERM) {
        return Err("moving BAR0 not EPERM");
    }
    let cmd = sys::device_config_read(edu.bdf, 4, 2).map_err(|_| "command read failed")?;
    if edu.flags & abi::DEVICE_DMA_ALLOWED == 0 {
        // No IOMMU could confine its DMA (or its interrupts): the kernel refuses Bus Master.
        if sys::device_config_write(edu.bdf, 4, 2, cmd | 4) != Err(Errno::EPERM) {
            return Err("bus master on a function whose DMA is not confined not EPERM");
        }
    } else {
        sys::device_config_write(edu.bdf, 4, 2, cmd | 4).map_err(|_| "setting bus master failed")?;
        if sys::device_config_read(edu.bdf, 4, 2) != Ok(cmd | 4) {
            return Err("bus master bit did not stick");
        }
    }
    if let Some(other) = ctx.other {
        if sys::device_config_read(other.bdf, 0, 4) != Err(Errno::EPERM) {
            return Err("config access to an unclaimed device not EPERM");
        }
    }
    Ok(())
}

fn interrupt(ctx: &mut Ctx) -> Result<(), &'static str> {
    let edu = ctx.edu.ok_or("no edu")?;
    if cfg!(target_arch = "x86_64") && edu.flags & abi::DEVICE_DMA_ALLOWED == 0 {
        // An MSI is a DMA write: with Bus Master refused no MSI can be sent.
        return Err("SKIP Bus Master refused (no IOMMU, or interrupts not remapped), so no MSI can be sent");
    }
    if sys::device_irq_wait(edu.bdf, 0) != Err(Errno::EINVAL) {
        return Err("waiting before enabling not EINVAL");
    }
    // An MSI is a DMA write: on aarch64 it reaches the GIC ITS through the
    // device's own translation, which blocks a claimed device until it is
    // attached. Attached to an empty IOAS, only the doorbell the kernel maps
    // there is reachable.
    let mut attached = None;
    if edu.flags & abi::DEVICE_BEHIND_IOMMU != 0 {
        let ioas = userlib::iommufd::ioas_alloc().map_err(|_| "ioas_alloc failed")?;
        let dev = userlib::iommufd::device_bind(edu.bdf).map_err(|_| "device_bind failed")?;
        userlib::iommufd::device_attach(dev, ioas).map_err(|_| "device_attach failed")?;
        attached = Some((dev, ioas));
    }
    match sys::device_irq_enable(edu.bdf) {
        Ok(_) => {}
        Err(Errno::EOPNOTSUPP) => return Err("interrupt routing not supported on this platform yet"),
        Err(_) => return Err("device_irq_enable failed"),
    }
    if sys::device_irq_wait(edu.bdf, 1_000_000) != Err(Errno::ETIMEDOUT) {
        return Err("no interrupt raised, yet the wait did not time out");
    }
    // Raise interrupt bit 0x4 through the edu "raise" register; ack it after.
    // SAFETY: `regs` maps edu's BAR0; 0x60 raises, 0x64 acknowledges (edu.rst).
    unsafe { reg(ctx, 0x60).write_volatile(0x4) };
    let got = sys::device_irq_wait(edu.bdf, 2_000_000_000);
    // SAFETY: as above.
    let status = unsafe { reg(ctx, 0x24).read_volatile() };
    // SAFETY: as above.
    unsafe { reg(ctx, 0x64).write_volatile(status) };
    if let Some((dev, ioas)) = attached {
        let _ = userlib::iommufd::device_detach(dev);
        let _ = userlib::iommufd::destroy(dev);
        let _ = userlib::iommufd::destroy(ioas);
    }
    match got {
        Ok(n) if n >= 1 && status & 0x4 != 0 => Ok(()),
        Ok(_) => Err("woken without the interrupt status bit"),
        Err(_) => Err("the raised interrupt never reached the task"),
    }
}

type Step = fn(&mut Ctx) -> Result<(), &'static str>;

const STEPS: &[(&str, Step)] = &[
    ("device_list", list),
    ("device_claim", claim),
    ("device_map_bar", map_bar),
    ("edu_identity_and_liveness", identity_and_liveness),
    ("edu_factorial", factorial),
    ("device_config_read_write", config_space),
    ("device_irq_delivered_to_the_task", interrupt),
];

fn main() -> i32 {
    let mut ctx = Ctx { edu: None, other: None, regs: 0 };
    println!("KTAP version 1");
    println!("1..{}", STEPS.len());
    let mut failed = 0;
    for (i, (name, step)) in STEPS.iter().enumerate() {
        match step(&mut ctx) {
            Ok(()) => println!("ok {} user.edu.{name}", i + 1),
            Err(why) if why.starts_with("SKIP ") => println!("ok {} user.edu.{name} # {why}", i + 1),
            Err(why) => {
                failed += 1;
                println!("not ok {} user.edu.{name} # {why}", i + 1);
            }
        }
    }
    i32::from(failed != 0)
}

userlib::entry!(main);

//! The legacy 8254 PIT and 8259 PICs: the PICs are masked (the local APIC
//! takes over), and PIT channel 2 provides a 10 ms reference interval to
//! calibrate the TSC (which then calibrates the local APIC timer).

use x86_64::instructions::port::Port;

/// PIT input clock (Hz).
const PIT_HZ: u64 = 1_193_182;
/// Reference interval: 10 ms in PIT ticks.
const CALIBRATION_TICKS: u16 = (PIT_HZ / 100) as u16;
/// Upper bound on polls of the PIT output before giving up.
const MAX_POLLS: u64 = 200_000_000;

/// The PIT output never went high within the poll bound.
#[derive(Debug, Clone, Copy)]
pub struct CalibrationTimeout;

impl core::fmt::Display for CalibrationTimeout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PIT channel 2 did not count down")
    }
}

/// Remaps the 8259 PICs away from exception vectors (to 0xF0..0xFF) and masks every line.
pub fn disable_legacy_pic() {
    let mut cmd1: Port<u8> = Port::new(0x20);
    let mut data1: Port<u8> = Port::new(0x21);
    let mut cmd2: Port<u8> = Port::new(0xA0);
    let mut data2: Port<u8> = Port::new(0xA1);
    // SAFETY: the standard 8259 initialisation sequence (ICW1..ICW4) on the PC's fixed PIC ports, then OCW1 masking all lines; nothing else uses the PICs.
    unsafe {
        cmd1.write(0x11);
        cmd2.write(0x11);
        data1.write(0xF0);
        data2.write(0xF8);
        data1.write(4);
        data2.write(2);
        data1.write(1);
        data2.write(1);
        data1.write(0xFF);
        data2.write(0xFF);
    }
}

/// Measures the TSC frequency (Hz) against 10 ms of PIT channel 2.
pub fn calibrate_tsc() -> Result<u64, CalibrationTimeout> {
    let mut gate: Port<u8> = Port::new(0x61);
    let mut mode: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    // SAFETY: PIT channel 2 and its gate at port 0x61 are not used elsewhere; the speaker output bit (1) stays off.
    unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01); // gate on, speaker off
        mode.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write((CALIBRATION_TICKS & 0xFF) as u8);
        ch2.write((CALIBRATION_TICKS >> 8) as u8);
    }
    let t0 = crate::tsc::read();
    let mut polls = 0u64;
    // SAFETY: reading the gate/status port has no side effects.
    while unsafe { gate.read() } & 0x20 == 0 {
        polls += 1;
        if polls > MAX_POLLS {
            return Err(CalibrationTimeout);
        }
        core::hint::spin_loop();
    }
    let t1 = crate::tsc::read();
    Ok((t1 - t0) * 100)
}

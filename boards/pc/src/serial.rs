//! The console on the PC's first serial port (COM1, I/O port 0x3F8, a 16550).

use uart_16550::SerialPort;

/// I/O base of COM1, the architectural PC serial port.
const COM1: u16 = 0x3F8;

static PORT: spin::Mutex<Option<SerialPort>> = spin::Mutex::new(None);

/// Initialises COM1 (115200 8N1, FIFOs on).
pub fn init() {
    // SAFETY: COM1 is the standard PC serial port; only this module touches it.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    *PORT.lock() = Some(port);
}

/// Writes text; if the port is held (a panic interrupted a writer), writes through a fresh handle.
pub fn write_str(text: &str) {
    use core::fmt::Write;
    match PORT.try_lock() {
        Some(mut guard) => {
            if let Some(port) = guard.as_mut() {
                let _ = port.write_str(text);
            }
        }
        None => {
            // SAFETY: the lock holder was interrupted mid-line (panic or exception path); a byte-level interleave is the worst outcome, no memory is shared.
            let mut port = unsafe { SerialPort::new(COM1) };
            let _ = port.write_str(text);
        }
    }
}

/// A received byte, if one is waiting (never blocks; `None` while a writer holds the port).
pub fn try_read() -> Option<u8> {
    PORT.try_lock()?.as_mut()?.try_receive().ok()
}

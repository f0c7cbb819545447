//! A minimal client of QEMU's gdbstub (the GDB Remote Serial Protocol,
//! GDB manual appendix E "Remote Protocol"): enough to stop the guest, read
//! one register of one CPU and let it run again, which is what a sampling
//! profiler needs.
//!
//! A packet is `$payload#xx`, `xx` the modulo-256 sum of the payload bytes in
//! hex; the receiver answers `+` (good) or `-` (send again). `\x03` on its own
//! interrupts a running guest; the stub then sends a stop reply (`T05...`,
//! `S02`, ...). Registers are read with `p<n>` (hex bytes in target order).
//! On connection QEMU pauses the guest until told to continue.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The checksum of a packet payload: the sum of its bytes modulo 256.
pub fn checksum(payload: &[u8]) -> u8 {
    payload.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// `payload` framed as a packet (`$payload#xx`). Payloads here are plain
/// ASCII commands without `$`, `#`, `}` or `*`, which would need escaping.
pub fn frame(payload: &str) -> Vec<u8> {
    format!("${payload}#{:02x}", checksum(payload.as_bytes())).into_bytes()
}

/// A register value from the hex a `p` or `g` reply gives: bytes in
/// little-endian order (x86_64 and aarch64 are both little-endian), at most 8.
pub fn le_hex_u64(hex: &str) -> Option<u64> {
    let hex = hex.trim();
    if hex.is_empty() || !hex.len().is_multiple_of(2) || hex.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        v |= u64::from(byte) << (8 * i);
    }
    Some(v)
}

/// Incremental packet decoder: bytes in, complete payloads out (acks and
/// noise between packets skipped; run-length encoding expanded).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

/// What the decoder found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A packet whose checksum matched.
    Packet(String),
    /// A packet whose checksum did not match (to be answered with `-`).
    Corrupt,
}

impl Decoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let start = self.buf.iter().position(|&b| b == b'$')?;
        let hash = start + self.buf[start..].iter().position(|&b| b == b'#')?;
        if self.buf.len() < hash + 3 {
            return None;
        }
        let body = self.buf[start + 1..hash].to_vec();
        let sum = std::str::from_utf8(&self.buf[hash + 1..hash + 3]).ok().and_then(|s| u8::from_str_radix(s, 16).ok());
        self.buf.drain(..hash + 3);
        if sum != Some(checksum(&body)) {
            return Some(Frame::Corrupt);
        }
        Some(Frame::Packet(expand(&body)))
    }
}

/// Undoes the protocol's escapes (`}` then the byte XOR 0x20) and run-length
/// encoding (`x*n`: `x` repeated `n - 29` more times).
fn expand(body: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'}' if i + 1 < body.len() => {
                out.push(body[i + 1] ^ 0x20);
                i += 2;
            }
            b'*' if i + 1 < body.len() => {
                if let Some(&last) = out.last() {
                    let n = usize::from(body[i + 1]).saturating_sub(29);
                    out.extend(std::iter::repeat_n(last, n));
                }
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection to a gdbstub.
pub struct Client {
    stream: TcpStream,
    decoder: Decoder,
}

impl Client {
    /// Connects to `addr` (`host:port`), retrying until `patience` has passed
    /// (QEMU opens the port a moment after it starts).
    pub fn connect(addr: &str, patience: Duration) -> Result<Self, String> {
        let until = std::time::Instant::now() + patience;
        loop {
            match TcpStream::connect(addr) {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(|e| e.to_string())?;
                    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
                    return Ok(Client { stream, decoder: Decoder::default() });
                }
                Err(e) if std::time::Instant::now() >= until => return Err(format!("gdbstub at {addr}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Sends one packet (waiting for its `+`, sending again on `-`).
    fn send(&mut self, payload: &str) -> Result<(), String> {
        let framed = frame(payload);
        for _ in 0..5 {
            self.stream.write_all(&framed).map_err(|e| format!("gdbstub write: {e}"))?;
            let mut b = [0u8; 1];
            loop {
                self.stream.read_exact(&mut b).map_err(|e| format!("gdbstub ack: {e}"))?;
                match b[0] {
                    b'+' => return Ok(()),
                    b'-' => break,
                    // A stop reply that raced our packet: keep it for `receive`.
                    other => self.decoder.push(&[other]),
                }
            }
        }
        Err(format!("gdbstub refused packet {payload:?} five times"))
    }

    /// Receives one packet, acknowledging it.
    fn receive(&mut self) -> Result<String, String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.decoder.next_frame() {
                Some(Frame::Packet(p)) => {
                    self.stream.write_all(b"+").map_err(|e| format!("gdbstub write: {e}"))?;
                    return Ok(p);
                }
                Some(Frame::Corrupt) => self.stream.write_all(b"-").map_err(|e| format!("gdbstub write: {e}"))?,
                None => {
                    let n = self.stream.read(&mut buf).map_err(|e| format!("gdbstub read: {e}"))?;
                    if n == 0 {
                        return Err("gdbstub closed the connection (QEMU exited)".into());
                    }
                    self.decoder.push(&buf[..n]);
                }
            }
        }
    }

    /// Sends `payload` and returns the reply packet.
    pub fn request(&mut self, payload: &str) -> Result<String, String> {
        self.send(payload)?;
        self.receive()
    }

    /// Lets the guest run (`c`; the stop reply comes after [`Client::interrupt`]).
    pub fn resume(&mut self) -> Result<(), String> {
        self.send("c")
    }

    /// Stops a running guest and returns the stop reply.
    pub fn interrupt(&mut self) -> Result<String, String> {
        self.stream.write_all(&[0x03]).map_err(|e| format!("gdbstub write: {e}"))?;
        self.receive()
    }

    /// Register `n` of CPU thread `thread` (QEMU numbers CPUs' threads from 1).
    pub fn register(&mut self, thread: u32, n: u32) -> Result<u64, String> {
        let ok = self.request(&format!("Hg{thread:x}"))?;
        if ok != "OK" {
            return Err(format!("gdbstub: Hg{thread:x} answered {ok:?}"));
        }
        let hex = self.request(&format!("p{n:x}"))?;
        le_hex_u64(&hex).ok_or_else(|| format!("gdbstub: p{n:x} answered {hex:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_modulo_256_checksum() {
        assert_eq!(frame("c"), b"$c#63".to_vec());
        assert_eq!(frame("p10"), b"$p10#d1".to_vec());
        assert_eq!(frame(""), b"$#00".to_vec());
    }

    #[test]
    fn register_hex_is_little_endian() {
        assert_eq!(le_hex_u64("efbeadde00000000"), Some(0xdead_beef));
        assert_eq!(le_hex_u64("0100000000000080"), Some(0x8000_0000_0000_0001));
        assert_eq!(le_hex_u64("01"), Some(1));
        assert_eq!(le_hex_u64("E1"), Some(0xe1));
        assert_eq!(le_hex_u64(""), None);
        assert_eq!(le_hex_u64("123"), None);
        assert_eq!(le_hex_u64("xx"), None);
        assert_eq!(le_hex_u64("000000000000000000"), None, "more than 8 bytes");
    }

    #[test]
    fn the_decoder_skips_acks_and_splits_packets_across_reads() {
        let mut d = Decoder::default();
        d.push(b"+$T05thr");
        assert_eq!(d.next_frame(), None);
        d.push(b"ead:01;#");
        assert_eq!(d.next_frame(), None);
        d.push(b"07$OK#9a");
        assert_eq!(d.next_frame(), Some(Frame::Packet("T05thread:01;".into())));
        assert_eq!(d.next_frame(), Some(Frame::Packet("OK".into())));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn a_bad_checksum_is_reported_and_dropped() {
        let mut d = Decoder::default();
        d.push(b"$OK#00$OK#9a");
        assert_eq!(d.next_frame(), Some(Frame::Corrupt));
        assert_eq!(d.next_frame(), Some(Frame::Packet("OK".into())));
    }

    #[test]
    fn escapes_and_run_length_encoding_are_expanded() {
        // "0* " is '0' then 32 - 29 = 3 more: "0000".
        let body = b"0* 1";
        let mut d = Decoder::default();
        d.push(&frame(std::str::from_utf8(body).unwrap_or_default()));
        assert_eq!(d.next_frame(), Some(Frame::Packet("00001".into())));
        assert_eq!(expand(b"a}\x03b"), "a#b");
    }
}

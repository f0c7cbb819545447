//! Driver data a task passes by length (HWPT attributes, invalidation
//! entries): the one copy of the extensible-struct rule.
//!
//! A struct grows at its end over ABI versions. Data shorter than the
//! struct this kernel knows is read as if zero-filled (an older caller);
//! longer data is accepted only when every byte past the struct is zero (a
//! newer caller asking for nothing this kernel does not know), else refused.

use core::fmt;
use zerocopy::{FromBytes, IntoBytes};

/// The data had a non-zero byte past the struct this kernel knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonZeroTail {
    /// Offset of the first non-zero byte past the struct.
    pub offset: usize,
    /// Size of the struct.
    pub known: usize,
}

impl fmt::Display for NonZeroTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "non-zero byte at {} past the {}-byte struct", self.offset, self.known)
    }
}

/// Decodes `data` into `T` by length: missing bytes are zero, bytes past
/// `T` must be zero ([`NonZeroTail`] otherwise; callers map it to their
/// error, `Error::InvalidData` or `E2BIG`).
pub fn read_struct<T: FromBytes + IntoBytes>(data: &[u8]) -> Result<T, NonZeroTail> {
    let mut v = T::new_zeroed();
    let bytes = v.as_mut_bytes();
    let known = bytes.len();
    let (head, tail) = data.split_at(data.len().min(known));
    if let Some(i) = tail.iter().position(|&b| b != 0) {
        return Err(NonZeroTail { offset: known + i, known });
    }
    bytes[..head.len()].copy_from_slice(head);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{Immutable, KnownLayout};

    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Debug, PartialEq, Eq)]
    #[repr(C)]
    struct S {
        a: u32,
        b: u32,
    }

    #[test]
    fn exact_short_and_empty() {
        let mut d = 7u32.to_le_bytes().to_vec();
        d.extend_from_slice(&9u32.to_le_bytes());
        assert_eq!(read_struct::<S>(&d), Ok(S { a: 7, b: 9 }));
        assert_eq!(read_struct::<S>(&d[..5]), Ok(S { a: 7, b: 9 & 0xFF }), "short: zero-filled");
        assert_eq!(read_struct::<S>(&[]), Ok(S { a: 0, b: 0 }));
    }

    #[test]
    fn long_needs_a_zero_tail() {
        let mut d = [0u8; 24];
        d[0] = 1;
        assert_eq!(read_struct::<S>(&d), Ok(S { a: 1, b: 0 }));
        d[23] = 1;
        assert_eq!(read_struct::<S>(&d), Err(NonZeroTail { offset: 23, known: 8 }));
        d[8] = 0x80;
        assert_eq!(read_struct::<S>(&d).unwrap_err().offset, 8);
        assert!(alloc::string::ToString::to_string(&read_struct::<S>(&d).unwrap_err()).contains("8-byte"));
    }
}

//! Typed in-memory descriptors: the structures a unit reads from or writes
//! to memory (VT-d root, context and PASID entries, invalidation
//! descriptors and fault records; SMMUv3 STE and CD; AMD-Vi DTE).
//!
//! The choice, made once for every driver: each 64-bit word of a
//! descriptor is laid out with tock-registers' `register_bitfields!` (the
//! syntax the drivers already use for registers, with the spec's bit range
//! on every field), and [`crate::descriptor!`] gathers the words into a
//! `Copy` struct of [`Word`]s (`LocalRegisterCopy<u64, _>`) with
//! `zeroed`, `from_words` and `to_words`. Fields are then written and read
//! by name (`entry.lo.write(CTX_LO::P::SET + ...)`, `entry.hi.read(CTX_HI::DID)`),
//! never with bare shifts in driver logic; fields of one word cannot be
//! applied to another (the register types differ). A word with nothing
//! this driver uses is a [`RAW`] word.
//!
//! ```
//! use iommu::desc::{Word, RAW};
//! use iommu::desc::tock_registers::register_bitfields;
//!
//! register_bitfields![u64,
//!     /// Word 0 of an example entry.
//!     pub EX0 [
//!         /// Bit 0: present.
//!         P OFFSET(0) NUMBITS(1) [],
//!         /// Bits 63:12: table address.
//!         PTR OFFSET(12) NUMBITS(52) []
//!     ]
//! ];
//!
//! iommu::descriptor! {
//!     /// An example 128-bit entry.
//!     pub struct Example {
//!         /// Bits 63:0.
//!         lo: EX0,
//!         /// Bits 127:64, unused here.
//!         hi: RAW,
//!     }
//! }
//!
//! let mut e = Example::zeroed();
//! e.lo.write(EX0::P::SET + EX0::PTR.val(0x5));
//! assert_eq!(e.to_words(), [0x5001, 0]);
//! assert_eq!(Example::from_words([0x5001, 0]).lo.read(EX0::PTR), 5);
//! assert_eq!(Example::WORDS, 2);
//! ```

pub use tock_registers;

/// One 64-bit word of a descriptor, laid out by the bitfield register `R`.
pub type Word<R> = tock_registers::LocalRegisterCopy<u64, R>;

/// The bits `field` covers, in place (`NUMBITS` ones shifted to `OFFSET`):
/// the mask of a field in a table of fields that must be clear, or of
/// fields allowed to be set, built in `const` context.
///
/// ```
/// use iommu::desc::tock_registers::register_bitfields;
/// register_bitfields![u64, pub W [ A OFFSET(4) NUMBITS(3) [], B OFFSET(63) NUMBITS(1) [] ]];
/// const BOTH: u64 = iommu::desc::field_mask(W::A) | iommu::desc::field_mask(W::B);
/// assert_eq!(BOTH, 0x8000_0000_0000_0070);
/// ```
pub const fn field_mask<R: tock_registers::RegisterLongName>(field: tock_registers::fields::Field<u64, R>) -> u64 {
    field.mask << field.shift
}

/// A descriptor word without named fields (reserved, or unused by the driver).
#[allow(non_snake_case)]
pub mod RAW {
    /// The layout of a word without named fields.
    #[derive(Clone, Copy, Debug)]
    pub struct Register;

    impl tock_registers::RegisterLongName for Register {}
}

/// The bits of `field` in `word`, left where they are (masked, not
/// shifted down): an address field such as bits 63:12 read as an address.
pub fn in_place<R: tock_registers::RegisterLongName>(
    word: Word<R>,
    field: tock_registers::fields::Field<u64, R>,
) -> u64 {
    field.val(word.read(field)).value
}

/// The value for `field` from bits already in place (the inverse of
/// [`in_place`]): an address written to an address field such as bits
/// 63:12, its bits outside the field dropped.
///
/// ```
/// use iommu::desc::tock_registers::register_bitfields;
/// use iommu::desc::{from_place, in_place, Word};
/// register_bitfields![u64, pub W [ PTR OFFSET(12) NUMBITS(40) [], V OFFSET(0) NUMBITS(1) [] ]];
/// let mut w = Word::<W::Register>::new(0);
/// w.write(W::V::SET + from_place(W::PTR, 0xFFF0_0000_1234_5FFF));
/// assert_eq!(w.get(), 0x0000_0000_1234_5001);
/// assert_eq!(in_place(w, W::PTR), 0x1234_5000);
/// ```
pub const fn from_place<R: tock_registers::RegisterLongName>(
    field: tock_registers::fields::Field<u64, R>,
    bits: u64,
) -> tock_registers::fields::FieldValue<u64, R> {
    // A u64 field's shift is below 64, so the shift cannot overflow.
    tock_registers::fields::FieldValue::<u64, R>::new(field.mask, field.shift, bits >> field.shift)
}

/// Counts one (for [`crate::descriptor!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __descriptor_one {
    ($x:ident) => {
        1
    };
}

/// Declares a descriptor of 64-bit [`desc::Word`](crate::desc::Word)s, in
/// memory order, each laid out by a `register_bitfields!` register named by
/// its identifier. See the [module docs](crate::desc).
#[macro_export]
macro_rules! descriptor {
    {
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fattr:meta])* $field:ident : $reg:ident ),+ $(,)?
        }
    } => {
        $(#[$attr])*
        #[derive(Clone, Copy, Debug)]
        $vis struct $name {
            $( $(#[$fattr])* pub $field: $crate::desc::Word<$reg::Register>, )+
        }

        impl $name {
            /// Number of 64-bit words.
            pub const WORDS: usize = 0 $(+ $crate::__descriptor_one!($field))+;

            /// All words zero (not present).
            pub const fn zeroed() -> Self {
                Self { $( $field: $crate::desc::Word::new(0), )+ }
            }

            /// The descriptor from its words, in memory order.
            pub const fn from_words(words: [u64; 0 $(+ $crate::__descriptor_one!($field))+]) -> Self {
                let [$($field),+] = words;
                Self { $( $field: $crate::desc::Word::new($field), )+ }
            }

            /// Its words, in memory order.
            pub fn to_words(self) -> [u64; 0 $(+ $crate::__descriptor_one!($field))+] {
                [$( self.$field.get() ),+]
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.to_words() == other.to_words()
            }
        }

        impl Eq for $name {}
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tock_registers::register_bitfields;

    register_bitfields![u64,
        W0 [
            A OFFSET(0) NUMBITS(4) [],
            B OFFSET(60) NUMBITS(4) []
        ],
        W1 [
            C OFFSET(8) NUMBITS(8) []
        ]
    ];

    crate::descriptor! {
        /// Three words.
        struct Three {
            /// First.
            w0: W0,
            /// Second.
            w1: W1,
            /// Third.
            w2: RAW,
        }
    }

    #[test]
    fn words_round_trip_and_fields_land_where_declared() {
        let mut d = Three::zeroed();
        d.w0.write(W0::A.val(0xF) + W0::B.val(0x9));
        d.w1.modify(W1::C.val(0xAB));
        d.w2.set(u64::MAX);
        assert_eq!(d.to_words(), [0x9000_0000_0000_000F, 0xAB00, u64::MAX]);
        let back = Three::from_words(d.to_words());
        assert_eq!(back, d);
        assert_eq!((back.w0.read(W0::B), back.w1.read(W1::C), Three::WORDS), (9, 0xAB, 3));
        assert_ne!(Three::zeroed(), d);
        assert_eq!(in_place(back.w0, W0::B), 0x9000_0000_0000_0000);
        assert_eq!(from_place(W0::B, 0xA000_0000_0000_0FFF).value, 0xA000_0000_0000_0000);
        assert_eq!(from_place(W1::C, 0xFFFF).value, 0xFF00, "bits outside the field dropped");
    }

    #[test]
    fn field_masks_are_in_place() {
        assert_eq!(field_mask(W0::A), 0xF);
        assert_eq!(field_mask(W0::B), 0xF000_0000_0000_0000);
        assert_eq!(field_mask(W1::C), 0xFF00);
        const M: u64 = field_mask(W1::C);
        assert_eq!(Word::<W1::Register>::new(u64::MAX).read(W1::C) << W1::C.shift, M);
    }

    #[test]
    fn in_place_values_keep_their_bits_where_they_are() {
        let mut w = Word::<W1::Register>::new(0);
        w.write(from_place(W1::C, 0xFFFF));
        assert_eq!((w.get(), w.read(W1::C)), (0xFF00, 0xFF));
        assert_eq!(in_place(w, W1::C), 0xFF00);
        assert_eq!(in_place(Word::<W1::Register>::new(0x1234), W1::C), 0x1200);
        const V: u64 = from_place(W0::B, 0x9000_0000_0000_0001).value;
        assert_eq!(V, 0x9000_0000_0000_0000);
    }
}

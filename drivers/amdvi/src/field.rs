//! Address fields of descriptor words: a field that holds address bits
//! `hi:shift` (a table pointer, a store address) is written from and read
//! as the address itself, masked in place rather than shifted by hand.

use tock_registers::fields::{Field, FieldValue};
use tock_registers::RegisterLongName;

/// The value of `field` that holds the address bits of `addr` the field
/// covers (its other bits are dropped).
pub fn from_place<R: RegisterLongName>(field: Field<u64, R>, addr: u64) -> FieldValue<u64, R> {
    FieldValue::<u64, R>::new(field.mask, field.shift, addr >> field.shift)
}

/// The address bits `field` holds in `word`, left in place.
pub fn in_place<R: RegisterLongName>(word: iommu::desc::Word<R>, field: Field<u64, R>) -> u64 {
    from_place(field, word.get()).value
}

#[cfg(test)]
mod tests {
    use super::*;
    use tock_registers::register_bitfields;

    register_bitfields![u64,
        W [
            PTR OFFSET(12) NUMBITS(40) []
        ]
    ];

    #[test]
    fn addresses_stay_in_place() {
        assert_eq!(from_place(W::PTR, 0xFFFF_1234_5678_9ABC).value, 0x000F_1234_5678_9000);
        let w = iommu::desc::Word::<W::Register>::new(u64::MAX);
        assert_eq!(in_place(w, W::PTR), 0x000F_FFFF_FFFF_F000);
    }
}

//! Heap allocation that fails softly (issue 18 item 1).
//!
//! In Rust an infallible allocation that finds no memory calls the
//! allocation error handler, which in the kernel is a panic. Code on a
//! syscall path must instead answer `ENOMEM` and leave its state as it was,
//! so it allocates only through this crate:
//!
//! - [`try_box`] for a `Box`, [`VecExt`] for growing a `Vec` or `VecDeque`
//!   (`try_push`, `try_extend_from_slice`), [`try_collect`] and [`try_to_vec`]
//!   in place of `collect` and `to_vec`;
//! - [`TryMap`] and [`TrySet`] in place of `BTreeMap` and `BTreeSet`: ordered,
//!   kept in one sorted vector, so an insert allocates at most once, through
//!   `try_reserve`, and a remove never allocates.
//!
//! Every function leaves its collection unchanged when it returns
//! [`AllocError`].
#![cfg_attr(not(feature = "testing"), no_std)]

extern crate alloc;

mod map;
#[cfg(feature = "testing")]
pub mod testing;

pub use map::{Run, TryMap, TrySet};

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::alloc::Layout;

/// The heap had no room for an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError;

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("out of heap memory")
    }
}

impl From<alloc::collections::TryReserveError> for AllocError {
    fn from(_: alloc::collections::TryReserveError) -> Self {
        AllocError
    }
}

/// `Box::new(value)`, or [`AllocError`] (the value is dropped) when the heap is full.
pub fn try_box<T>(value: T) -> Result<Box<T>, AllocError> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        return Ok(Box::new(value));
    }
    // SAFETY: the layout has a non-zero size, as `alloc` requires.
    let ptr = unsafe { alloc::alloc::alloc(layout) } as *mut T;
    if ptr.is_null() {
        return Err(AllocError);
    }
    // SAFETY: `ptr` is a fresh global allocation with `T`'s layout: writing `value` there and handing it to `Box` (which frees it with that layout) is what `Box::new` does.
    unsafe {
        ptr.write(value);
        Ok(Box::from_raw(ptr))
    }
}

/// Growth of a vector that reports a full heap instead of panicking.
pub trait VecExt<T> {
    /// Appends `value`, or returns [`AllocError`] with the vector unchanged.
    fn try_push(&mut self, value: T) -> Result<(), AllocError>;
    /// Appends a copy of `items`, or returns [`AllocError`] with the vector unchanged.
    fn try_extend_from_slice(&mut self, items: &[T]) -> Result<(), AllocError>
    where
        T: Clone;
}

impl<T> VecExt<T> for Vec<T> {
    fn try_push(&mut self, value: T) -> Result<(), AllocError> {
        if self.len() == self.capacity() {
            // Doubling, as `push` does, so a loop of pushes stays linear.
            self.try_reserve(self.len().max(4))?;
        }
        self.push(value);
        Ok(())
    }

    fn try_extend_from_slice(&mut self, items: &[T]) -> Result<(), AllocError>
    where
        T: Clone,
    {
        self.try_reserve(items.len())?;
        self.extend_from_slice(items);
        Ok(())
    }
}

impl<T> VecExt<T> for VecDeque<T> {
    fn try_push(&mut self, value: T) -> Result<(), AllocError> {
        if self.len() == self.capacity() {
            self.try_reserve(self.len().max(4))?;
        }
        self.push_back(value);
        Ok(())
    }

    fn try_extend_from_slice(&mut self, items: &[T]) -> Result<(), AllocError>
    where
        T: Clone,
    {
        self.try_reserve(items.len())?;
        self.extend(items.iter().cloned());
        Ok(())
    }
}

/// `iter.collect::<Vec<_>>()` that answers a full heap: reserves the
/// iterator's lower size bound first, then grows as `try_push` does.
pub fn try_collect<T>(iter: impl IntoIterator<Item = T>) -> Result<Vec<T>, AllocError> {
    let iter = iter.into_iter();
    let mut out = Vec::new();
    out.try_reserve(iter.size_hint().0)?;
    for item in iter {
        out.try_push(item)?;
    }
    Ok(out)
}

/// `items.to_vec()` that answers a full heap.
pub fn try_to_vec<T: Clone>(items: &[T]) -> Result<Vec<T>, AllocError> {
    let mut out = Vec::new();
    out.try_extend_from_slice(items)?;
    Ok(out)
}

/// `vec![value; len]` that answers a full heap.
pub fn try_filled<T: Clone>(value: T, len: usize) -> Result<Vec<T>, AllocError> {
    let mut out = Vec::new();
    out.try_reserve_exact(len)?;
    out.resize(len, value);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn boxes_and_vectors_hold_what_was_put_in() {
        assert_eq!(*try_box(7u32).unwrap(), 7);
        assert_eq!(*try_box(()).unwrap(), ());
        let mut v = Vec::new();
        for i in 0..100 {
            v.try_push(i).unwrap();
        }
        v.try_extend_from_slice(&[100, 101]).unwrap();
        assert_eq!(v, (0..102).collect::<Vec<_>>());
        let mut d = VecDeque::new();
        d.try_push(1).unwrap();
        d.try_extend_from_slice(&[2, 3]).unwrap();
        assert_eq!(d, [1, 2, 3]);
        assert_eq!(try_collect((0..5).filter(|x| x % 2 == 0)).unwrap(), vec![0, 2, 4]);
        assert_eq!(try_to_vec(&[1u8, 2]).unwrap(), vec![1, 2]);
        assert_eq!(try_filled(0u8, 3).unwrap(), vec![0, 0, 0]);
    }

    #[test]
    fn impossible_requests_fail_without_changing_the_vector() {
        let mut v = vec![1u64, 2];
        assert_eq!(try_filled(0u64, usize::MAX / 4), Err(AllocError));
        assert!(v.try_reserve(usize::MAX / 8).is_err());
        assert_eq!(v, [1, 2]);
    }
}

//! Program loading: the user programs packed into the kernel image, and the
//! load of one into a fresh user address space (its `PT_LOAD` segments and
//! its stack), checked by [`image`] first.

pub mod image;

use crate::frames::FRAME_SIZE;
use crate::mm;
use crate::platform::{MapError, UserPerms};
use crate::user_layout::{USER_MIN, USER_STACK_PAGES, USER_STACK_TOP};
use alloc::vec::Vec;
use image::{Elf, ElfError};

pub use image::{EM_AARCH64, EM_X86_64};

/// A packed user program.
#[derive(Clone, Copy)]
pub struct Program {
    /// Name (the binary's name).
    pub name: &'static str,
    /// ELF image.
    pub image: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/user_programs.rs"));

/// The programs packed into the kernel image.
pub fn programs() -> &'static [Program] {
    PACKED
}

/// The packed program called `name`.
pub fn find(name: &str) -> Option<Program> {
    programs().iter().find(|p| p.name == name).copied()
}

/// Why a program could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnError {
    /// No packed program has that name.
    NotFound,
    /// The ELF image is invalid.
    Elf(ElfError),
    /// A segment lies outside user space or overlaps another.
    Layout(u64),
    /// Mapping failed.
    Map(MapError),
    /// Out of frames.
    OutOfMemory,
}

impl core::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SpawnError::NotFound => f.write_str("no such program"),
            SpawnError::Elf(e) => write!(f, "{e}"),
            SpawnError::Layout(a) => write!(f, "segment at {a:#x} outside user space or overlapping"),
            SpawnError::Map(e) => write!(f, "mapping failed: {e}"),
            SpawnError::OutOfMemory => f.write_str("out of memory"),
        }
    }
}

/// A user address space and the frames the load put in it (freed, with the
/// page tables, when it is dropped).
pub struct Owned {
    /// Root of the address space's page tables.
    pub root: u64,
    /// Frames the load mapped (segments and stack).
    pub frames: Vec<u64>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        for &f in &self.frames {
            let _ = mm::free_frame(f);
        }
        crate::user_access::free_space(self.root);
    }
}

fn map_new_page(owned: &mut Owned, va: u64, perms: UserPerms) -> Result<u64, SpawnError> {
    owned.frames.try_reserve(1).map_err(|_| SpawnError::OutOfMemory)?;
    let pa = mm::alloc_frame().ok_or(SpawnError::OutOfMemory)?;
    owned.frames.push(pa);
    crate::user_access::map_page(owned.root, va, pa, perms).map_err(|e| match e {
        // Two segments in one page, or overlapping ones.
        MapError::AlreadyMapped(a) => SpawnError::Layout(a),
        other => SpawnError::Map(other),
    })?;
    Ok(pa)
}

/// Loads `program` (built for ELF machine `machine`) into a new user address
/// space: its segments, inside user space and on pages of their own, and a
/// stack of [`USER_STACK_PAGES`] below [`USER_STACK_TOP`]. Returns the space
/// and the entry point.
pub fn load(program: &Program, machine: u16) -> Result<(Owned, u64), SpawnError> {
    let elf = Elf::parse(program.image, machine).map_err(SpawnError::Elf)?;
    let root = crate::platform().user_space_new().map_err(SpawnError::Map)?;
    let mut owned = Owned { root, frames: Vec::new() };
    for seg in elf.segments() {
        let end = seg.vaddr + seg.mem_size;
        if seg.vaddr < USER_MIN || end > USER_STACK_TOP - USER_STACK_PAGES * FRAME_SIZE {
            return Err(SpawnError::Layout(seg.vaddr));
        }
        let perms = UserPerms { write: seg.write, exec: seg.exec, device: false };
        let data = elf.contents(&seg);
        let mut page = seg.vaddr & !(FRAME_SIZE - 1);
        while page < end {
            let pa = map_new_page(&mut owned, page, perms)?;
            // Copy the part of the file contents that falls in this page.
            let lo = page.max(seg.vaddr);
            let hi = (page + FRAME_SIZE).min(seg.vaddr + data.len() as u64);
            if lo < hi {
                let src = &data[(lo - seg.vaddr) as usize..(hi - seg.vaddr) as usize];
                let dst = (mm::phys_to_virt(pa) + (lo - page)) as *mut u8;
                // SAFETY: `pa` is a fresh frame owned by this task, reached through the direct map; `src` fits within the page by construction of lo/hi.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
            }
            page += FRAME_SIZE;
        }
    }
    for i in 1..=USER_STACK_PAGES {
        map_new_page(
            &mut owned,
            USER_STACK_TOP - i * FRAME_SIZE,
            UserPerms { write: true, exec: false, device: false },
        )?;
    }
    Ok((owned, elf.entry))
}

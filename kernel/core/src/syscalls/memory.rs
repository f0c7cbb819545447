//! Memory syscalls: `mem_map` (anonymous pages, 2 MiB-aligned runs where
//! the range allows, physically contiguous aligned blocks where the caller
//! asks ([`abi::mem_align`]), within `quota.mem_pages`) and `mem_unmap`.

use crate::frames::FRAME_SIZE;
use crate::limits::limits;
use crate::mm;
use crate::platform::UserPerms;
use crate::scheduler::with_current;
use crate::user_layout::{MAX_MAP_PAGES, MMAP_END, USER_MIN};
use abi::{Errno, SysResult};

/// `mem_map(addr, len, prot)`: maps `len` bytes of zeroed pages at `addr`
/// (0: the kernel chooses); the address. With [`abi::mem_align`] in `prot`,
/// each aligned block of that size is one physically contiguous, aligned
/// block (`ENOMEM` when memory has no such block left); `addr` and `len`
/// must be multiples of it.
pub fn sys_mem_map(addr: u64, len: u64, prot: u64) -> SysResult {
    let Some(align) = abi::mem_align_of(prot) else {
        log::debug!("mem_map: alignment flag {:#x} is no power of two from 4 KiB to 2 MiB", prot & abi::MEM_ALIGN_MASK);
        return Err(Errno::EINVAL);
    };
    if len == 0
        || !len.is_multiple_of(align)
        || !addr.is_multiple_of(align)
        || prot & !(abi::PROT_READ | abi::PROT_WRITE | abi::MEM_ALIGN_MASK) != 0
    {
        return Err(Errno::EINVAL);
    }
    if len / FRAME_SIZE > MAX_MAP_PAGES {
        return Err(Errno::ENOMEM);
    }
    with_current(|cur| {
        if (cur.anon.len() as u64).saturating_add(len / FRAME_SIZE) > limits().mem_pages {
            return Err(Errno::EDQUOT);
        }
        let p = crate::platform();
        // Kernel-chosen addresses of 2 MiB or more start 2 MiB aligned, so
        // the 2 MiB-aligned runs of frames below can become large DMA leaves;
        // all start aligned as asked.
        const RUN: u64 = 512 * FRAME_SIZE;
        let va = if addr != 0 {
            addr
        } else if len >= RUN {
            cur.next_va.next_multiple_of(RUN)
        } else {
            cur.next_va.next_multiple_of(align)
        };
        let end = va.checked_add(len).ok_or(Errno::EINVAL)?;
        if va < USER_MIN || end > MMAP_END {
            return Err(Errno::EINVAL);
        }
        if (va..end).step_by(FRAME_SIZE as usize).any(|pg| p.user_translate(cur.root, pg).is_some()) {
            return Err(Errno::EADDRINUSE);
        }
        let perms = UserPerms { write: prot & abi::PROT_WRITE != 0, exec: false, device: false };
        // Room for every page's record first (the quota above bounds it).
        cur.anon.try_reserve((len / FRAME_SIZE) as usize).map_err(|_| Errno::ENOMEM)?;
        // The records go in as one run at their place (no page of the range
        // is mapped, so none is recorded): one move each, however many the
        // task has elsewhere.
        let mut records = cur.anon.run_at(&va);
        // Physically contiguous, 2 MiB-aligned frames for each whole 2 MiB
        // of the range that is 2 MiB aligned where memory allows (a hint);
        // an aligned block of `align` bytes wherever the caller asked for one
        // (a promise: none left is ENOMEM); one frame at a time otherwise.
        // A run is (first page, first frame, bytes).
        let mut run: Option<(u64, u64, u64)> = None;
        for pg in (va..end).step_by(FRAME_SIZE as usize) {
            if pg % RUN == 0 && end - pg >= RUN {
                run = mm::alloc_frames(512, 512).map(|pa| (pg, pa, RUN));
            }
            let in_run = run.is_some_and(|(start, _, size)| pg < start + size);
            if !in_run && align > FRAME_SIZE && pg.is_multiple_of(align) {
                let frames = (align / FRAME_SIZE) as usize;
                run = mm::alloc_frames(frames, frames).map(|pa| (pg, pa, align));
            }
            let frame = match run {
                Some((start, pa, size)) if pg < start + size => Some(pa + (pg - start)),
                // Inside a block that had to be contiguous: no frame will do.
                _ if align > FRAME_SIZE => None,
                _ => mm::alloc_frame(),
            };
            let mapped =
                frame.ok_or(Errno::ENOMEM).and_then(|pa| match crate::user_access::map_page(cur.root, pg, pa, perms) {
                    Ok(()) => records.push(pg, pa).map_err(|_| {
                        // Reserved and in order: not reached, but never a page
                        // mapped without its record.
                        let _ = crate::user_access::unmap_page(cur.root, pg);
                        let _ = mm::free_frame(pa);
                        Errno::ENOMEM
                    }),
                    Err(_) => {
                        let _ = mm::free_frame(pa);
                        Err(Errno::ENOMEM)
                    }
                });
            if let Err(e) = mapped {
                // Roll back what this call mapped, and the frames of the
                // current run that no page took yet.
                while let Some((undo, pa)) = records.pop() {
                    let _ = crate::user_access::unmap_page(cur.root, undo);
                    let _ = mm::free_frame(pa);
                }
                if let Some((start, pa, size)) = run.filter(|&(start, _, size)| pg >= start && pg < start + size) {
                    for off in (pg - start + FRAME_SIZE..size).step_by(FRAME_SIZE as usize) {
                        let _ = mm::free_frame(pa + off);
                    }
                }
                // And the page tables this call added, and the room.
                crate::user_access::prune(cur.root, va, end);
                drop(records);
                cur.anon.shrink();
                return Err(e);
            }
        }
        if addr == 0 {
            cur.next_va = end + FRAME_SIZE; // a guard page between mappings
        }
        Ok(va)
    })
}

/// `mem_unmap(addr, len)`: unmaps anonymous pages of the caller (every page
/// must be one); a page still DMA-mapped is freed by its last unpin.
pub fn sys_mem_unmap(addr: u64, len: u64) -> SysResult {
    if len == 0 || !len.is_multiple_of(FRAME_SIZE) || !addr.is_multiple_of(FRAME_SIZE) {
        return Err(Errno::EINVAL);
    }
    let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
    with_current(|cur| {
        // Every page must be an anonymous page of this task: nothing is
        // unmapped otherwise. The records are ordered and one per page, so
        // as many in the range as it has pages means every one (two binary
        // searches, whatever the length or the task's page count).
        if cur.anon.range(addr..end).len() as u64 != len / FRAME_SIZE {
            return Err(Errno::EINVAL);
        }
        for (pg, pa) in cur.anon.drain(addr..end) {
            let _ = crate::user_access::unmap_page(cur.root, pg);
            // A page still DMA-mapped stays allocated until its last unmap.
            crate::dma::free_user_frame(pa);
        }
        cur.anon.shrink();
        crate::user_access::prune(cur.root, addr, end);
        Ok(0)
    })
}

//! IOMMU groups: the PCI functions a unit cannot tell apart.
//!
//! A unit knows a function's DMA only by the ID it looks it up under (a
//! requester ID after aliasing, a stream ID). Two functions whose DMA may be
//! looked up under one ID of one unit share every translation of that ID, so
//! they can only be isolated together: they are one group, owned by one task
//! and moved through the device states as one. A function can have more than
//! one such ID — its own and, for instance, the stale DeviceID QEMU 10.0's
//! AMD-Vi looks functions off bus 0 up under (`amdvi::qemu`) — and every one
//! of them links it to the functions that have it too; links chain.
//!
//! **Functions that only forward DMA** ([`Member::forwards_only`]: host
//! bridges, PCI-to-PCI bridges and PCIe ports) never join a group through a
//! shared ID; each is a group of its own. They issue no DMA requests of their
//! own — they pass on those of the functions below them, under those
//! functions' IDs (or the alias the bridge supplies, which is then the ID the
//! functions below are grouped by) — so sharing an ID with them gives the
//! other functions' owner nothing of theirs and them nothing of the owner's.
//! A task can never claim such a function or write its configuration space
//! (`pci::policy`), so it cannot make it start DMA either. Keeping them in
//! the group would only make the group unclaimable: QEMU 10.0's AMD-Vi looks
//! an `edu` at 03:00.0 up under DeviceID 0x0000, the host bridge's; a function
//! behind a conventional PCI bridge is seen under the bridge's own ID. Linux
//! reaches the same result from the other side: VFIO counts a group viable
//! when its other members are bridges bound to `pcieport` or to no driver.
//! Functions that can master DMA (an ISA / LPC bridge with ISA DMA, the IOMMU
//! function, every endpoint) join groups as usual, so a group holding one of
//! those that the kernel keeps stays unclaimable.
//!
//! **Functions of one multi-function device without ACS**
//! ([`Member::peer_slot`]) are one group as well: without Access Control
//! Services (PCIe 4.0 §6.12, extended capability 000Dh) nothing promises that
//! a request from one function to another's address goes up to the IOMMU at
//! all — the device may route it inside, past any translation. (Linux groups
//! them the same way, `pci_device_group`, save for its vendor quirks.)

use alloc::vec::Vec;

/// One PCI function as the grouping sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The unit that translates the function and every ID that unit may look
    /// its DMA up under (its own first); `None` when no unit translates it
    /// (it is then a group of its own).
    pub ids: Option<(usize, Vec<u32>)>,
    /// The function forwards others' DMA and issues none of its own (host
    /// bridge, PCI-to-PCI bridge, PCIe port): it never joins a group.
    pub forwards_only: bool,
    /// Set (to the slot: segment, bus, device) for a function of a
    /// multi-function device without ACS: every member with the same slot
    /// joins its group, whatever its IDs.
    pub peer_slot: Option<(u16, u8, u8)>,
}

impl Member {
    fn keys(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.ids.iter().flat_map(|(unit, ids)| ids.iter().map(move |&id| (*unit, id)))
    }

    /// Whether `self` and `other` have an ID of the same unit in common.
    pub fn shares_id_with(&self, other: &Member) -> bool {
        self.keys().any(|k| other.keys().any(|o| o == k))
    }
}

fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// For each of `members`, the index of the first member of its group (so a
/// member that is alone has its own index). Linear in the number of IDs
/// after one sort.
pub fn groups(members: &[Member]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..members.len()).collect();
    let mut keys: Vec<((usize, u32), usize)> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.forwards_only)
        .flat_map(|(i, m)| m.keys().map(move |k| (k, i)))
        .collect();
    keys.sort_unstable();
    let mut slots: Vec<((u16, u8, u8), usize)> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.forwards_only)
        .filter_map(|(i, m)| m.peer_slot.map(|s| (s, i)))
        .collect();
    slots.sort_unstable();
    let mut join = |a: usize, b: usize| {
        let (a, b) = (root(&mut parent, a), root(&mut parent, b));
        // The smaller index becomes the root: it is the group's first member.
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        parent[high] = low;
    };
    for pair in keys.windows(2).filter(|p| p[0].0 == p[1].0) {
        join(pair[0].1, pair[1].1);
    }
    for pair in slots.windows(2).filter(|p| p[0].0 == p[1].0) {
        join(pair[0].1, pair[1].1);
    }
    (0..members.len()).map(|i| root(&mut parent, i)).collect()
}

/// The members other than `index` that have an ID of its unit in common with
/// it, grouped with it or not (a forwarding-only function that shares an
/// entry): what a boot log names.
pub fn sharing(members: &[Member], index: usize) -> Vec<usize> {
    let Some(me) = members.get(index) else { return Vec::new() };
    members.iter().enumerate().filter(|&(i, m)| i != index && m.shares_id_with(me)).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn m(unit: usize, ids: &[u32]) -> Member {
        Member { ids: Some((unit, ids.to_vec())), forwards_only: false, peer_slot: None }
    }

    fn bridge(unit: usize, id: u32) -> Member {
        Member { ids: Some((unit, vec![id])), forwards_only: true, peer_slot: None }
    }

    #[test]
    fn distinct_ids_are_groups_of_their_own() {
        let ms =
            [m(0, &[0x10]), m(0, &[0x18]), Member { ids: None, forwards_only: false, peer_slot: None }, m(1, &[0x10])];
        assert_eq!(groups(&ms), vec![0, 1, 2, 3], "same ID on another unit is another entry");
    }

    #[test]
    fn a_shared_id_makes_one_group_whose_id_is_its_first_member() {
        // Two functions behind one PCIe-to-PCI bridge: both seen as 0x0200.
        let ms = [m(0, &[0x08]), m(0, &[0x200]), m(0, &[0x10]), m(0, &[0x200])];
        assert_eq!(groups(&ms), vec![0, 1, 2, 1]);
    }

    #[test]
    fn extra_ids_link_and_links_chain() {
        // 03:00.0 and 04:00.0 both looked up under 0x0000 as well; 05:01.0
        // under 0x0008, which is 00:01.0's own ID; 06:01.0 under 0x0008 too.
        let ms = [
            m(0, &[0x08]),          // 00:01.0
            m(0, &[0x300, 0x0000]), // 03:00.0
            m(0, &[0x400, 0x0000]), // 04:00.0
            m(0, &[0x508, 0x0008]), // 05:01.0
            m(0, &[0x608, 0x0008]), // 06:01.0
            m(0, &[0x700]),         // 07:00.0 (not affected)
        ];
        assert_eq!(groups(&ms), vec![0, 1, 1, 0, 0, 5]);
        assert_eq!(sharing(&ms, 3), vec![0, 4]);
    }

    #[test]
    fn functions_of_a_multifunction_device_without_acs_are_one_group() {
        let slot = |m: Member, s: Option<(u16, u8, u8)>| Member { peer_slot: s, ..m };
        let ich9 = Some((0, 0, 0x1F));
        let ms = [
            slot(m(0, &[0xF8]), ich9),                 // 00:1f.0
            m(0, &[0x08]),                             // 00:01.0
            slot(m(0, &[0xFA]), ich9),                 // 00:1f.2
            slot(m(0, &[0xFB]), ich9),                 // 00:1f.3
            slot(m(0, &[0x100]), Some((0, 1, 0))),     // 01:00.0, alone in its slot
            slot(bridge(0, 0x110), Some((0, 1, 0x2))), // a bridge never joins
            slot(m(0, &[0x111]), Some((0, 1, 0x2))),
        ];
        assert_eq!(groups(&ms), vec![0, 1, 0, 0, 4, 5, 6]);
    }

    #[test]
    fn forwarding_only_functions_never_join() {
        // The host bridge (0x0000) shares its ID with 03:00.0's stale one; a
        // conventional PCI bridge (0x0018) is the alias of the function behind it.
        let ms = [bridge(0, 0x0000), m(0, &[0x300, 0x0000]), bridge(0, 0x18), m(0, &[0x18])];
        assert_eq!(groups(&ms), vec![0, 1, 2, 3]);
        assert_eq!(sharing(&ms, 1), vec![0], "the log still names the host bridge");
        // Two functions that share the host bridge's ID are still one group.
        let ms = [bridge(0, 0x0000), m(0, &[0x300, 0x0000]), m(0, &[0x400, 0x0000])];
        assert_eq!(groups(&ms), vec![0, 1, 1]);
        // A function that can master DMA (say the LPC bridge) does join.
        let ms = [m(0, &[0xF8]), m(0, &[0x3F8, 0xF8])];
        assert_eq!(groups(&ms), vec![0, 0]);
    }

    #[test]
    fn sharing_of_an_unknown_index_is_empty() {
        assert!(sharing(&[m(0, &[1])], 3).is_empty());
        assert!(groups(&[]).is_empty());
    }
}

//! Restart after a pager crash: what to roll back, what to roll forward.
//!
//! Issue #6 §3: an operation in flight is completed or rolled back, never half
//! done; a frame is never freed while still mapped; a slot is never both free
//! and in use. Xen's xenpaging cannot do this: its gfn ↔ slot map
//! (`slot_to_gfn`, `gfn_to_slot` in `xenpaging.c`) lives only in the pager,
//! so a dead pager takes the guest with it. Here the map is the core's
//! [`FrameState`] table, and the pager follows one ordering rule:
//!
//! > A frame becomes `Paged{slot}` only after its data **and** its slot-table
//! > entry are on the device; a slot is freed only after the map stopped
//! > naming it.
//!
//! That makes every crash point recoverable from the persistent states alone:
//!
//! | crash point | persistent state | action | why nothing is lost |
//! |---|---|---|---|
//! | evict: slot taken, before `nominate` | `Ram` | none | frame untouched; slot was only in the pager's memory, rebuilt free |
//! | evict: after `nominate` | `PagingOut` | **roll back** (`cancel_nomination`) | host frame still holds the data |
//! | evict: mid-copy (window open) | `PagingOut` | core revokes the window, **roll back** | as above; the window's frame is freed only if it was orphaned |
//! | evict: data / table entry written, before `evict` | `PagingOut` | **roll back** | as above; the slot is not in the map, so it is free again and its stale entry is ignored |
//! | evict: after `evict` | `Paged{s}` | none | data and entry are durable; `s` is rebuilt as used |
//! | page-in: after `populate` | `PagingIn{s}` | **roll forward** (read `s`, verify, `load`) | `s` stays used until `load` |
//! | page-in: mid-read, or read but not loaded | `PagingIn{s}` | **roll forward** | as above |
//! | page-in: after `load` | `Ram` | none | `s` left the map at `load`, so it is rebuilt free |
//! | prefetch (`load` from `Paged`) before `load` | `Paged{s}` | none | nothing changed yet |
//! | drop not yet seen by the pager | `Dropped` | none | the map no longer names the slot, so it is rebuilt free |
//!
//! Restart sequence:
//! 1. **Core, at death** ([`crate::frame::FrameTable::pager_crashed`]): revoke
//!    the copy window and the dead instance's mappings, roll back every
//!    `PagingOut`, discard messages queued for the dead generation (their
//!    effects are all visible in the states). vCPUs waiting on `PagingIn`
//!    frames keep waiting; every other vCPU keeps running.
//! 2. **New pager:** reset the block device before any I/O, so no request of
//!    the dead instance can still land in a slot that is about to be reused
//!    (and the core must not hand the dead instance's DMA buffers to anyone
//!    before that reset); read and check the header and the slot table.
//! 3. **New pager:** read the states, run [`recover`] (which re-checks the
//!    map), rebuild the slot allocator
//!    ([`crate::slots::SlotAllocator::rebuild_from_states`]) and the victim
//!    policy ([`crate::policy::VictimPolicy::sync_from_states`]); the MRU
//!    starts empty, a heuristic lost, not data.
//! 4. **New pager:** queue a page-in for every [`RecoveryAction::ResumePageIn`]
//!    ahead of any other work, then continue.
//!
//! Crash model: the pager dies, the machine and the block device do not. A
//! request the device accepted completes whole or not at all (resetting a
//! virtio device waits for requests in progress). Swap contents do not survive
//! a reboot, so power loss is out of scope.

use core::fmt;

use crate::bitmap::Bitmap;
use crate::disk::{Owner, Partition, SlotTable};
use crate::frame::FrameState;
use crate::{Gfn, Slot};

/// What recovery does with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Roll back: the frame was nominated (`PagingOut`), possibly mid-copy.
    /// It goes back to `Ram`, writable; the copy is discarded.
    CancelNomination,
    /// Roll forward: the frame is `PagingIn{slot}` and a vCPU waits for it.
    /// Read `slot`, verify it and `load` it.
    ResumePageIn {
        /// The slot to read.
        slot: Slot,
    },
}

/// The map is inconsistent: a broken core invariant, not a pager fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryError {
    /// A frame names a slot outside the partition.
    SlotOutOfRange {
        /// The frame.
        gfn: Gfn,
        /// The slot it names.
        slot: Slot,
        /// Slots in the partition.
        slots: u32,
    },
    /// Two frames name the same slot: one of them would read the other's page.
    SlotShared {
        /// The slot.
        slot: Slot,
        /// The lower frame naming it.
        first: Gfn,
        /// The higher frame naming it.
        second: Gfn,
    },
    /// The scratch bitmap is smaller than `words_for(slot_count)` words.
    ScratchTooSmall,
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SlotOutOfRange { gfn, slot, slots } => {
                write!(
                    f,
                    "{gfn} names {slot}, outside the partition's {slots} slots"
                )
            }
            Self::SlotShared {
                slot,
                first,
                second,
            } => {
                write!(f, "{slot} is named by both {first} and {second}")
            }
            Self::ScratchTooSmall => write!(f, "slot bitmap storage too small"),
        }
    }
}

/// Totals of a recovery plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoverySummary {
    /// Frames examined.
    pub frames: u64,
    /// Frames in `Ram`: nothing to do.
    pub ram: u64,
    /// `PagingOut` frames to roll back.
    pub rolled_back: u64,
    /// `PagingIn` frames whose page-in is to be completed.
    pub rolled_forward: u64,
    /// `Paged` frames: durable, nothing to do.
    pub paged: u64,
    /// `Dropped` frames: nothing to do.
    pub dropped: u64,
    /// Slots the map names (`paged + rolled_forward`); every other slot is free.
    pub slots_in_use: u64,
}

/// The result of [`recover`]: a checked map and the actions it implies.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryPlan<'s> {
    states: &'s [FrameState],
    summary: RecoverySummary,
}

impl<'s> RecoveryPlan<'s> {
    /// The totals.
    pub const fn summary(&self) -> RecoverySummary {
        self.summary
    }

    /// Every frame that needs an action, in gfn order.
    pub fn actions(&self) -> impl Iterator<Item = (Gfn, RecoveryAction)> + 's {
        self.states.iter().enumerate().filter_map(|(index, state)| {
            let action = match *state {
                FrameState::PagingOut => RecoveryAction::CancelNomination,
                FrameState::PagingIn { slot } => RecoveryAction::ResumePageIn { slot },
                _ => return None,
            };
            Some((Gfn::new(index as u64), action))
        })
    }
}

/// Checks the persistent states left after a pager crash and says what to do:
/// roll back every `PagingOut`, roll forward every `PagingIn`. `scratch` (at
/// least [`crate::bitmap::words_for`]`(slot_count)` words) is overwritten and,
/// on success, holds the bitmap of slots in use.
pub fn recover<'s>(
    states: &'s [FrameState],
    slot_count: u32,
    scratch: &mut [u64],
) -> Result<RecoveryPlan<'s>, RecoveryError> {
    let mut in_use = Bitmap::new_cleared(scratch, u64::from(slot_count))
        .ok_or(RecoveryError::ScratchTooSmall)?;
    let slots_in_use = mark_slots_in_use(states, slot_count, &mut in_use)?;
    let mut summary = RecoverySummary {
        frames: states.len() as u64,
        slots_in_use,
        ..Default::default()
    };
    for state in states {
        let counter = match state {
            FrameState::Ram => &mut summary.ram,
            FrameState::PagingOut => &mut summary.rolled_back,
            FrameState::Paged { .. } => &mut summary.paged,
            FrameState::PagingIn { .. } => &mut summary.rolled_forward,
            FrameState::Dropped => &mut summary.dropped,
        };
        *counter += 1;
    }
    Ok(RecoveryPlan { states, summary })
}

/// Sets the bit of every slot `states` names in `in_use` (cleared by the
/// caller); returns how many. Fails on a slot out of range or named twice.
pub(crate) fn mark_slots_in_use(
    states: &[FrameState],
    slot_count: u32,
    in_use: &mut Bitmap<'_>,
) -> Result<u64, RecoveryError> {
    let mut count = 0;
    for (index, state) in states.iter().enumerate() {
        let Some(slot) = state.slot() else { continue };
        let gfn = Gfn::new(index as u64);
        if slot.get() >= slot_count {
            return Err(RecoveryError::SlotOutOfRange {
                gfn,
                slot,
                slots: slot_count,
            });
        }
        if in_use.set(u64::from(slot.get())) {
            let first = states
                .iter()
                .position(|other| other.slot() == Some(slot))
                .map_or(gfn, |first| Gfn::new(first as u64));
            return Err(RecoveryError::SlotShared {
                slot,
                first,
                second: gfn,
            });
        }
        count += 1;
    }
    Ok(count)
}

/// A frame whose slot-table entry does not say what the map says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMismatch {
    /// The frame.
    pub gfn: Gfn,
    /// The slot the map names for it.
    pub slot: Slot,
    /// The owner the entry records (`None`: entry free or unreadable).
    pub found: Option<Owner>,
}

/// Cross-checks the slot table read back from the device against the map:
/// every slot the map names must be recorded, in the table, as owned by that
/// frame. Calls `on_mismatch` for each frame that is not, and returns how
/// many. A mismatch is not repaired (no copy of the page is known to be
/// good): the frame's page-in will fail verification and stop its domain
/// with that reason instead of returning wrong data.
pub fn check_slot_table(
    states: &[FrameState],
    domain: u16,
    partition: Partition,
    table: &SlotTable<'_>,
    mut on_mismatch: impl FnMut(EntryMismatch),
) -> u64 {
    let mut mismatches = 0;
    for (index, state) in states.iter().enumerate() {
        let Some(slot) = state.slot() else { continue };
        let gfn = Gfn::new(index as u64);
        let found = partition
            .device_slot(slot)
            .and_then(|device_slot| table.entry(device_slot).ok())
            .and_then(|entry| entry.owner);
        if found != Some(Owner { domain, gfn }) {
            mismatches += 1;
            on_mismatch(EntryMismatch { gfn, slot, found });
        }
    }
    mismatches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_rolls_back_nominations_and_forward_page_ins() {
        let states = [
            FrameState::Ram,
            FrameState::PagingOut,
            FrameState::Paged { slot: Slot::new(2) },
            FrameState::PagingIn { slot: Slot::new(0) },
            FrameState::Dropped,
            FrameState::PagingOut,
        ];
        let mut scratch = [u64::MAX; 1];
        let plan = recover(&states, 3, &mut scratch).unwrap();
        assert_eq!(
            plan.summary(),
            RecoverySummary {
                frames: 6,
                ram: 1,
                rolled_back: 2,
                rolled_forward: 1,
                paged: 1,
                dropped: 1,
                slots_in_use: 2
            }
        );
        let mut actions = plan.actions();
        assert_eq!(
            actions.next(),
            Some((Gfn::new(1), RecoveryAction::CancelNomination))
        );
        assert_eq!(
            actions.next(),
            Some((
                Gfn::new(3),
                RecoveryAction::ResumePageIn { slot: Slot::new(0) }
            ))
        );
        assert_eq!(
            actions.next(),
            Some((Gfn::new(5), RecoveryAction::CancelNomination))
        );
        assert_eq!(actions.next(), None);
        assert_eq!(
            scratch[0], 0b101,
            "scratch holds exactly the used slots 0 and 2"
        );
    }

    #[test]
    fn slot_table_check_flags_entries_that_disagree_with_the_map() {
        use crate::disk::{SlotEntry, SwapHeader, BLOCK_SIZE};
        let header = SwapHeader::new(8, 42).unwrap();
        let mut blocks = [[0u8; BLOCK_SIZE]; 1];
        let mut table = SlotTable::format(&mut blocks, header).unwrap();
        let partition = Partition { first: 4, count: 4 };
        let page = [7u8; crate::PAGE_SIZE];
        let owner = |gfn| Owner {
            domain: 3,
            gfn: Gfn::new(gfn),
        };
        // Device slot 4 = local slot 0: correct. Local slot 2: another frame's.
        table
            .set_entry(4, SlotEntry::for_page(owner(1), &page))
            .unwrap();
        table
            .set_entry(6, SlotEntry::for_page(owner(9), &page))
            .unwrap();
        let states = [
            FrameState::Ram,
            FrameState::Paged { slot: Slot::new(0) },
            FrameState::PagingIn { slot: Slot::new(1) },
            FrameState::Paged { slot: Slot::new(2) },
        ];
        let mut found = Vec::new();
        let count = check_slot_table(&states, 3, partition, &table, |mismatch| {
            found.push(mismatch)
        });
        assert_eq!(count, 2);
        assert_eq!(
            found,
            [
                EntryMismatch {
                    gfn: Gfn::new(2),
                    slot: Slot::new(1),
                    found: None
                },
                EntryMismatch {
                    gfn: Gfn::new(3),
                    slot: Slot::new(2),
                    found: Some(owner(9))
                },
            ]
        );
        // The same table seen as another domain's: every entry mismatches.
        assert_eq!(check_slot_table(&states, 4, partition, &table, |_| {}), 3);
    }

    #[test]
    fn plan_rejects_shared_and_out_of_range_slots() {
        let mut scratch = [0u64; 1];
        let shared = [
            FrameState::Ram,
            FrameState::Paged { slot: Slot::new(1) },
            FrameState::Ram,
            FrameState::PagingIn { slot: Slot::new(1) },
        ];
        assert_eq!(
            recover(&shared, 4, &mut scratch).err(),
            Some(RecoveryError::SlotShared {
                slot: Slot::new(1),
                first: Gfn::new(1),
                second: Gfn::new(3)
            })
        );
        let outside = [FrameState::Paged { slot: Slot::new(4) }];
        assert_eq!(
            recover(&outside, 4, &mut scratch).err(),
            Some(RecoveryError::SlotOutOfRange {
                gfn: Gfn::new(0),
                slot: Slot::new(4),
                slots: 4
            })
        );
        assert_eq!(
            recover(&outside, 65, &mut scratch).err(),
            Some(RecoveryError::ScratchTooSmall)
        );
    }
}

//! The swap-slot allocator of one domain's partition.
//!
//! A stack of free slots plus an in-use bitmap, both in caller memory: `alloc`
//! pops, `free` pushes (O(1) each), and the bitmap catches a double free and
//! a free of a slot never allocated. Like xenpaging's `free_slot_stack`
//! (`evict_pages()` in `xenpaging.c`) a freed slot is reused first; unlike it,
//! the allocator is never the only record: the core's map is, and
//! [`SlotAllocator::rebuild_from_states`] reconstructs the allocator from it
//! after a restart. Slots the pager took for an eviction that had not reached
//! `evict` are in no map and so come back free, which is what recovery wants.
//!
//! Invariant: `free_count() + used_count() == slot_count()`, and a slot is on
//! the free stack if and only if its in-use bit is clear.

use core::fmt;

use crate::bitmap::Bitmap;
use crate::frame::FrameState;
use crate::Slot;

/// Why an allocator operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError {
    /// Every slot is in use: eviction stops (issue #5 §5), the guest runs on.
    DeviceFull,
    /// `free` of a slot that is already free.
    DoubleFree {
        /// The slot.
        slot: Slot,
    },
    /// A slot past the end of the partition.
    OutOfRange {
        /// The slot.
        slot: Slot,
        /// Slots in the partition.
        slots: u32,
    },
    /// `rebuild` was given the same slot twice.
    AlreadyInUse {
        /// The slot.
        slot: Slot,
    },
    /// The stack or bitmap storage is smaller than the slot count needs.
    StorageTooSmall,
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeviceFull => write!(f, "swap device full"),
            Self::DoubleFree { slot } => write!(f, "{slot} freed twice"),
            Self::OutOfRange { slot, slots } => write!(f, "{slot} is past the {slots} slots"),
            Self::AlreadyInUse { slot } => write!(f, "{slot} is recorded twice"),
            Self::StorageTooSmall => write!(f, "slot allocator storage too small"),
        }
    }
}

/// Free-slot allocator over caller-provided storage: `stack` of at least
/// `slot_count` entries and `words` of at least
/// [`crate::bitmap::words_for`]`(slot_count)` words.
#[derive(Debug)]
pub struct SlotAllocator<'a> {
    stack: &'a mut [u32],
    free: u32,
    in_use: Bitmap<'a>,
    slot_count: u32,
}

impl<'a> SlotAllocator<'a> {
    /// An allocator with every slot free; slot 0 is handed out first.
    pub fn new(
        slot_count: u32,
        stack: &'a mut [u32],
        words: &'a mut [u64],
    ) -> Result<Self, SlotError> {
        Self::rebuild(slot_count, stack, words, core::iter::empty())
    }

    /// An allocator where exactly the slots in `used` are in use.
    pub fn rebuild(
        slot_count: u32,
        stack: &'a mut [u32],
        words: &'a mut [u64],
        used: impl IntoIterator<Item = Slot>,
    ) -> Result<Self, SlotError> {
        let stack = stack
            .get_mut(..slot_count as usize)
            .ok_or(SlotError::StorageTooSmall)?;
        let mut in_use =
            Bitmap::new_cleared(words, u64::from(slot_count)).ok_or(SlotError::StorageTooSmall)?;
        for slot in used {
            if slot.get() >= slot_count {
                return Err(SlotError::OutOfRange {
                    slot,
                    slots: slot_count,
                });
            }
            if in_use.set(u64::from(slot.get())) {
                return Err(SlotError::AlreadyInUse { slot });
            }
        }
        // Push free slots highest first, so the lowest is popped first.
        let mut free = 0u32;
        for index in (0..slot_count).rev() {
            if !in_use.get(u64::from(index)) {
                stack[free as usize] = index;
                free += 1;
            }
        }
        Ok(Self {
            stack,
            free,
            in_use,
            slot_count,
        })
    }

    /// An allocator rebuilt from the core's map: the slots of every `Paged`
    /// and `PagingIn` frame are in use, every other slot is free. Fails with
    /// `OutOfRange`/`AlreadyInUse` if the map is corrupt.
    pub fn rebuild_from_states(
        slot_count: u32,
        stack: &'a mut [u32],
        words: &'a mut [u64],
        states: &[FrameState],
    ) -> Result<Self, SlotError> {
        Self::rebuild(
            slot_count,
            stack,
            words,
            states.iter().filter_map(|state| state.slot()),
        )
    }

    /// Takes a free slot, or `DeviceFull`.
    pub fn alloc(&mut self) -> Result<Slot, SlotError> {
        if self.free == 0 {
            return Err(SlotError::DeviceFull);
        }
        self.free -= 1;
        let index = self.stack[self.free as usize];
        self.in_use.set(u64::from(index));
        Ok(Slot::new(index))
    }

    /// Returns `slot` to the free stack. A slot that is not in use is refused
    /// (`DoubleFree`) and nothing changes.
    pub fn free(&mut self, slot: Slot) -> Result<(), SlotError> {
        if slot.get() >= self.slot_count {
            return Err(SlotError::OutOfRange {
                slot,
                slots: self.slot_count,
            });
        }
        if !self.in_use.clear(u64::from(slot.get())) {
            return Err(SlotError::DoubleFree { slot });
        }
        self.stack[self.free as usize] = slot.get();
        self.free += 1;
        Ok(())
    }

    /// Whether `slot` is allocated.
    pub fn is_in_use(&self, slot: Slot) -> bool {
        self.in_use.get(u64::from(slot.get()))
    }

    /// Free slots (the `hvctl stats` "free slots").
    pub const fn free_count(&self) -> u32 {
        self.free
    }

    /// Slots in use.
    pub const fn used_count(&self) -> u32 {
        self.slot_count - self.free
    }

    /// Slots in the partition.
    pub const fn slot_count(&self) -> u32 {
        self.slot_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_all_then_device_full_then_free_makes_room() {
        let mut stack = [0u32; 70];
        let mut words = [0u64; 2];
        let mut slots = SlotAllocator::new(70, &mut stack, &mut words).unwrap();
        for expected in 0..70 {
            assert_eq!(slots.alloc(), Ok(Slot::new(expected)), "lowest slot first");
            assert_eq!(slots.free_count(), 69 - expected);
        }
        assert_eq!(slots.alloc(), Err(SlotError::DeviceFull));
        assert_eq!(slots.used_count(), 70);
        slots.free(Slot::new(42)).unwrap();
        assert_eq!(slots.free_count(), 1);
        assert_eq!(slots.alloc(), Ok(Slot::new(42)), "a freed slot is reused");
        assert_eq!(slots.alloc(), Err(SlotError::DeviceFull));
    }

    #[test]
    fn double_free_and_out_of_range_are_detected_and_change_nothing() {
        let mut stack = [0u32; 4];
        let mut words = [0u64; 1];
        let mut slots = SlotAllocator::new(4, &mut stack, &mut words).unwrap();
        let slot = slots.alloc().unwrap();
        slots.free(slot).unwrap();
        assert_eq!(slots.free(slot), Err(SlotError::DoubleFree { slot }));
        assert_eq!(
            slots.free(Slot::new(3)),
            Err(SlotError::DoubleFree { slot: Slot::new(3) }),
            "never allocated"
        );
        assert_eq!(
            slots.free(Slot::new(4)),
            Err(SlotError::OutOfRange {
                slot: Slot::new(4),
                slots: 4
            })
        );
        assert_eq!(slots.free_count(), 4);
        // Four allocations give four distinct slots: the stack was not corrupted.
        let mut seen = [false; 4];
        for _ in 0..4 {
            let slot = slots.alloc().unwrap();
            assert!(!seen[slot.get() as usize]);
            seen[slot.get() as usize] = true;
        }
    }

    #[test]
    fn rebuild_from_the_core_map_frees_exactly_the_unnamed_slots() {
        let states = [
            FrameState::Ram,
            FrameState::Paged { slot: Slot::new(2) },
            FrameState::PagingOut,
            FrameState::PagingIn { slot: Slot::new(0) },
            FrameState::Dropped,
            FrameState::Paged { slot: Slot::new(5) },
        ];
        let mut stack = [0u32; 6];
        let mut words = [u64::MAX; 1];
        let mut slots =
            SlotAllocator::rebuild_from_states(6, &mut stack, &mut words, &states).unwrap();
        assert_eq!(slots.used_count(), 3);
        for used in [0, 2, 5] {
            assert!(slots.is_in_use(Slot::new(used)));
        }
        let handed_out = [slots.alloc(), slots.alloc(), slots.alloc(), slots.alloc()];
        assert_eq!(
            handed_out,
            [
                Ok(Slot::new(1)),
                Ok(Slot::new(3)),
                Ok(Slot::new(4)),
                Err(SlotError::DeviceFull)
            ]
        );
        assert_eq!(
            slots.free(Slot::new(2)),
            Ok(()),
            "a recorded slot can be freed after its load"
        );
    }

    #[test]
    fn rebuild_rejects_a_corrupt_map() {
        let mut stack = [0u32; 4];
        let mut words = [0u64; 1];
        assert_eq!(
            SlotAllocator::rebuild(4, &mut stack, &mut words, [Slot::new(1), Slot::new(1)]).err(),
            Some(SlotError::AlreadyInUse { slot: Slot::new(1) })
        );
        assert_eq!(
            SlotAllocator::rebuild(4, &mut stack, &mut words, [Slot::new(9)]).err(),
            Some(SlotError::OutOfRange {
                slot: Slot::new(9),
                slots: 4
            })
        );
        let mut short = [0u32; 3];
        assert_eq!(
            SlotAllocator::new(4, &mut short, &mut words).err(),
            Some(SlotError::StorageTooSmall)
        );
    }
}

//! 4-level x86_64 page tables, for the core's own address space and for each
//! guest's nested page table (AMD NPT uses the same format, indexed by
//! guest-physical address).
//!
//! Tables are reached through [`TableMemory`], so the same code runs on
//! identity-mapped physical memory in the kernel and on a map of fake frames
//! in the host tests. Intermediate entries are created present + writable,
//! and user-accessible when the leaf is (AMD NPT requires the user bit at
//! every level; see `shared/PLATFORM.md`).

use crate::addr::{HostPhysAddr, PAGE_SIZE};
use crate::frame::FrameAllocator;

/// Bits of a page table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFlags(pub u64);

impl EntryFlags {
    /// Present.
    pub const PRESENT: Self = Self(1 << 0);
    /// Writable.
    pub const WRITABLE: Self = Self(1 << 1);
    /// Accessible from CPL 3 (and required on every NPT level).
    pub const USER: Self = Self(1 << 2);
    /// Write-through.
    pub const WRITE_THROUGH: Self = Self(1 << 3);
    /// Cache disabled (device memory).
    pub const NO_CACHE: Self = Self(1 << 4);
    /// Large page (in a level-2 or level-3 entry).
    pub const HUGE: Self = Self(1 << 7);
    /// Not executable.
    pub const NO_EXECUTE: Self = Self(1 << 63);

    /// No bits.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Union.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Mask of the physical address bits of an entry.
pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Entries per table.
pub const ENTRIES: usize = 512;

/// Sizes of a leaf mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB, a level-1 leaf.
    Size4KiB,
    /// 2 MiB, a level-2 leaf.
    Size2MiB,
    /// 1 GiB, a level-3 leaf.
    Size1GiB,
}

impl PageSize {
    /// Bytes covered.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4KiB => PAGE_SIZE,
            Self::Size2MiB => 2 << 20,
            Self::Size1GiB => 1 << 30,
        }
    }

    const fn leaf_level(self) -> usize {
        match self {
            Self::Size4KiB => 1,
            Self::Size2MiB => 2,
            Self::Size1GiB => 3,
        }
    }
}

/// Access to page-table frames by physical address.
pub trait TableMemory {
    /// Reads entry `index` of the table at `table`.
    fn read_entry(&self, table: HostPhysAddr, index: usize) -> u64;
    /// Writes entry `index` of the table at `table`.
    fn write_entry(&mut self, table: HostPhysAddr, index: usize, entry: u64);
    /// Fills a fresh table frame with zeros.
    fn zero_frame(&mut self, frame: HostPhysAddr);
}

/// Where new table frames come from.
pub trait FrameSource {
    /// One frame, or `None` if memory is exhausted.
    fn allocate_frame(&mut self) -> Option<HostPhysAddr>;
}

impl FrameSource for FrameAllocator<'_> {
    fn allocate_frame(&mut self) -> Option<HostPhysAddr> {
        self.allocate()
    }
}

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The address or frame is not aligned to the page size.
    Misaligned,
    /// The address is outside the 48-bit space.
    OutOfRange,
    /// Something is already mapped there.
    AlreadyMapped,
    /// A larger page covers the address.
    HugePageInTheWay,
    /// No frame left for a table.
    OutOfFrames,
    /// Nothing is mapped there.
    NotMapped,
}

/// A translation found by [`PageTable::translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address the input translated to.
    pub phys: HostPhysAddr,
    /// The leaf entry's flags (address bits cleared).
    pub flags: EntryFlags,
    /// The leaf's size.
    pub size: PageSize,
}

/// What [`PageTable::teardown`] hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// A leaf mapping: its address and raw entry.
    Leaf {
        /// The mapped (virtual or guest-physical) address.
        address: u64,
        /// The raw entry (frame address and flags).
        entry: u64,
    },
    /// A table frame, free to reuse once the walk is over.
    Table(HostPhysAddr),
}

/// A 4-level table hierarchy identified by its root (the CR3 or nCR3 value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTable {
    root: HostPhysAddr,
}

const fn index(address: u64, level: usize) -> usize {
    ((address >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

impl PageTable {
    /// A new, empty hierarchy.
    pub fn new(memory: &mut impl TableMemory, frames: &mut impl FrameSource) -> Result<Self, MapError> {
        let root = frames.allocate_frame().ok_or(MapError::OutOfFrames)?;
        memory.zero_frame(root);
        Ok(Self { root })
    }

    /// The root table's physical address.
    pub const fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// Maps `[address, address + size)` to `frame` with `flags` (PRESENT is
    /// added). `address` is a virtual address (low half) or a guest-physical
    /// address; it must be below 2^47.
    pub fn map(
        &self,
        memory: &mut impl TableMemory,
        frames: &mut impl FrameSource,
        address: u64,
        frame: HostPhysAddr,
        size: PageSize,
        flags: EntryFlags,
    ) -> Result<(), MapError> {
        if !address.is_multiple_of(size.bytes()) || !frame.as_u64().is_multiple_of(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        if address >> 47 != 0 {
            return Err(MapError::OutOfRange);
        }
        let leaf_flags = flags.with(EntryFlags::PRESENT);
        let table_flags = EntryFlags::PRESENT
            .with(EntryFlags::WRITABLE)
            .with(EntryFlags(leaf_flags.0 & EntryFlags::USER.0));
        let mut table = self.root;
        for level in (size.leaf_level() + 1..=4).rev() {
            let slot = index(address, level);
            let entry = memory.read_entry(table, slot);
            table = if entry & EntryFlags::PRESENT.0 == 0 {
                let fresh = frames.allocate_frame().ok_or(MapError::OutOfFrames)?;
                memory.zero_frame(fresh);
                memory.write_entry(table, slot, fresh.as_u64() | table_flags.0);
                fresh
            } else if entry & EntryFlags::HUGE.0 != 0 {
                return Err(MapError::HugePageInTheWay);
            } else {
                if entry & table_flags.0 != table_flags.0 {
                    memory.write_entry(table, slot, entry | table_flags.0);
                }
                HostPhysAddr::new_truncate(entry & ADDRESS_MASK)
            };
        }
        let slot = index(address, size.leaf_level());
        if memory.read_entry(table, slot) & EntryFlags::PRESENT.0 != 0 {
            return Err(MapError::AlreadyMapped);
        }
        let huge = if size == PageSize::Size4KiB { 0 } else { EntryFlags::HUGE.0 };
        memory.write_entry(table, slot, frame.as_u64() | leaf_flags.0 | huge);
        Ok(())
    }

    /// Takes the hierarchy apart: calls `visit` with every present leaf
    /// mapping and every table frame, the root last. The caller decides which
    /// leaf frames are its to free; the tables must not be used afterwards.
    pub fn teardown(self, memory: &impl TableMemory, visit: &mut impl FnMut(Teardown)) {
        fn walk(memory: &impl TableMemory, frame: HostPhysAddr, level: usize, base: u64, visit: &mut impl FnMut(Teardown)) {
            for slot in 0..ENTRIES {
                let entry = memory.read_entry(frame, slot);
                if entry & EntryFlags::PRESENT.0 == 0 {
                    continue;
                }
                let address = base | ((slot as u64) << (12 + 9 * (level - 1)));
                if level == 1 || entry & EntryFlags::HUGE.0 != 0 {
                    visit(Teardown::Leaf { address, entry });
                } else {
                    walk(memory, HostPhysAddr::new_truncate(entry & ADDRESS_MASK), level - 1, address, visit);
                }
            }
            visit(Teardown::Table(frame));
        }
        walk(memory, self.root, 4, 0, visit);
    }

    /// Where the 4 KiB leaf entry for `address` lives: the level-1 table and
    /// the index in it. `None` if a table on the way is missing or a larger
    /// page covers the address. The entry itself may be non-present: that is
    /// how guest frames that are paged out keep their state (see
    /// [`crate::frame_state`]).
    pub fn leaf_slot(&self, memory: &impl TableMemory, address: u64) -> Option<(HostPhysAddr, usize)> {
        if address >> 47 != 0 {
            return None;
        }
        let mut table = self.root;
        for level in (2..=4).rev() {
            let entry = memory.read_entry(table, index(address, level));
            if entry & EntryFlags::PRESENT.0 == 0 || entry & EntryFlags::HUGE.0 != 0 {
                return None;
            }
            table = HostPhysAddr::new_truncate(entry & ADDRESS_MASK);
        }
        Some((table, index(address, 1)))
    }

    /// Walks the tables for `address`.
    pub fn translate(&self, memory: &impl TableMemory, address: u64) -> Option<Translation> {
        if address >> 47 != 0 {
            return None;
        }
        let mut table = self.root;
        for level in (1..=4).rev() {
            let entry = memory.read_entry(table, index(address, level));
            if entry & EntryFlags::PRESENT.0 == 0 {
                return None;
            }
            let size = match level {
                3 if entry & EntryFlags::HUGE.0 != 0 => Some(PageSize::Size1GiB),
                2 if entry & EntryFlags::HUGE.0 != 0 => Some(PageSize::Size2MiB),
                1 => Some(PageSize::Size4KiB),
                _ => None,
            };
            if let Some(size) = size {
                let mask = size.bytes() - 1;
                let base = entry & ADDRESS_MASK & !mask;
                let flags = entry & !ADDRESS_MASK & !EntryFlags::HUGE.0;
                return Some(Translation {
                    phys: HostPhysAddr::new_truncate(base | (address & mask)),
                    flags: EntryFlags(flags),
                    size,
                });
            }
            table = HostPhysAddr::new_truncate(entry & ADDRESS_MASK);
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Fake physical memory: page tables as arrays keyed by frame address.
    #[derive(Default)]
    pub(crate) struct FakeTables {
        pub tables: HashMap<u64, [u64; ENTRIES]>,
    }

    impl TableMemory for FakeTables {
        fn read_entry(&self, table: HostPhysAddr, index: usize) -> u64 {
            self.tables.get(&table.as_u64()).map_or(0, |t| t[index])
        }
        fn write_entry(&mut self, table: HostPhysAddr, index: usize, entry: u64) {
            self.tables.entry(table.as_u64()).or_insert([0; ENTRIES])[index] = entry;
        }
        fn zero_frame(&mut self, frame: HostPhysAddr) {
            self.tables.insert(frame.as_u64(), [0; ENTRIES]);
        }
    }

    pub(crate) struct CountingFrames {
        pub next: u64,
        pub limit: u64,
    }

    impl FrameSource for CountingFrames {
        fn allocate_frame(&mut self) -> Option<HostPhysAddr> {
            (self.next < self.limit).then(|| {
                self.next += PAGE_SIZE;
                HostPhysAddr::try_new(self.next).unwrap()
            })
        }
    }

    fn frame(addr: u64) -> HostPhysAddr {
        HostPhysAddr::try_new(addr).unwrap()
    }

    #[test]
    fn leaf_slots_reach_4k_entries_only() {
        let mut memory = FakeTables::default();
        let mut frames = CountingFrames { next: 0x100_0000, limit: 0x200_0000 };
        let table = PageTable::new(&mut memory, &mut frames).unwrap();
        let rw = EntryFlags::WRITABLE.with(EntryFlags::USER);
        table.map(&mut memory, &mut frames, 0x5000, frame(0x9000), PageSize::Size4KiB, rw).unwrap();
        table.map(&mut memory, &mut frames, 0x4020_0000, frame(0x60_0000), PageSize::Size2MiB, rw).unwrap();
        let (leaf, slot) = table.leaf_slot(&memory, 0x5000).unwrap();
        assert_eq!(slot, 5);
        assert_eq!(memory.read_entry(leaf, slot) & ADDRESS_MASK, 0x9000);
        assert_eq!(table.leaf_slot(&memory, 0x6000), Some((leaf, 6)), "a neighbour in the same table, not mapped");
        assert_eq!(table.leaf_slot(&memory, 0x4020_0000), None, "covered by a 2 MiB page");
        assert_eq!(table.leaf_slot(&memory, 0x80_0000_0000), None, "no table there");
        memory.write_entry(leaf, slot, 0);
        assert_eq!(table.translate(&memory, 0x5000), None);
    }

    #[test]
    fn maps_and_translates_every_size() {
        let mut memory = FakeTables::default();
        let mut frames = CountingFrames { next: 0x100_0000, limit: 0x200_0000 };
        let table = PageTable::new(&mut memory, &mut frames).unwrap();
        let rw = EntryFlags::WRITABLE.with(EntryFlags::USER);
        table.map(&mut memory, &mut frames, 0x5000, frame(0x9000), PageSize::Size4KiB, rw).unwrap();
        table
            .map(&mut memory, &mut frames, 0x4020_0000, frame(0x60_0000), PageSize::Size2MiB, rw)
            .unwrap();
        table
            .map(&mut memory, &mut frames, 0x80_0000_0000, frame(0x4000_0000), PageSize::Size1GiB, rw)
            .unwrap();

        let t = table.translate(&memory, 0x5123).unwrap();
        assert_eq!(t.phys, frame(0x9123));
        assert_eq!(t.size, PageSize::Size4KiB);
        assert!(t.flags.contains(EntryFlags::PRESENT.with(EntryFlags::WRITABLE).with(EntryFlags::USER)));
        assert_eq!(table.translate(&memory, 0x4021_2345).unwrap().phys, frame(0x61_2345));
        assert_eq!(table.translate(&memory, 0x80_1234_5678).unwrap().phys, frame(0x5234_5678));
        assert_eq!(table.translate(&memory, 0x6000), None);
        assert_eq!(table.translate(&memory, 1 << 47), None);

        // Every intermediate entry on the 4 KiB path carries the user bit (NPT needs it).
        let l4 = memory.read_entry(table.root(), 0);
        assert!(l4 & EntryFlags::USER.0 != 0);
    }

    #[test]
    fn teardown_reports_every_leaf_and_table_once() {
        let mut memory = FakeTables::default();
        let mut frames = CountingFrames { next: 0x100_0000, limit: 0x200_0000 };
        let table = PageTable::new(&mut memory, &mut frames).unwrap();
        let flags = EntryFlags::WRITABLE;
        table.map(&mut memory, &mut frames, 0, frame(0), PageSize::Size2MiB, flags).unwrap();
        for page in 0..3u64 {
            let address = 0x4000_0000 + page * PAGE_SIZE;
            table.map(&mut memory, &mut frames, address, frame(0x9000 + page * PAGE_SIZE), PageSize::Size4KiB, flags).unwrap();
        }
        let tables_allocated = (frames.next - 0x100_0000) / PAGE_SIZE;
        let mut leaves = Vec::new();
        let mut tables = Vec::new();
        table.teardown(&memory, &mut |item| match item {
            Teardown::Leaf { address, entry } => leaves.push((address, entry & ADDRESS_MASK)),
            Teardown::Table(frame) => tables.push(frame),
        });
        assert_eq!(leaves, [(0, 0), (0x4000_0000, 0x9000), (0x4000_1000, 0xa000), (0x4000_2000, 0xb000)]);
        assert_eq!(tables.len() as u64, tables_allocated);
        assert_eq!(tables.last(), Some(&table.root()), "the root goes last");
    }

    #[test]
    fn refuses_overlaps_misalignment_and_exhaustion() {
        let mut memory = FakeTables::default();
        let mut frames = CountingFrames { next: 0x100_0000, limit: 0x100_3000 };
        let table = PageTable::new(&mut memory, &mut frames).unwrap();
        let flags = EntryFlags::WRITABLE;
        assert_eq!(
            table.map(&mut memory, &mut frames, 0x1001, frame(0x2000), PageSize::Size4KiB, flags),
            Err(MapError::Misaligned)
        );
        assert_eq!(
            table.map(&mut memory, &mut frames, 1 << 47, frame(0x2000), PageSize::Size4KiB, flags),
            Err(MapError::OutOfRange)
        );
        table.map(&mut memory, &mut frames, 0x20_0000, frame(0x20_0000), PageSize::Size2MiB, flags).unwrap();
        assert_eq!(
            table.map(&mut memory, &mut frames, 0x20_1000, frame(0x2000), PageSize::Size4KiB, flags),
            Err(MapError::HugePageInTheWay)
        );
        assert_eq!(
            table.map(&mut memory, &mut frames, 0x20_0000, frame(0x40_0000), PageSize::Size2MiB, flags),
            Err(MapError::AlreadyMapped)
        );
        // Root + L3 + L2 used three frames: a new L1 table cannot be had.
        assert_eq!(
            table.map(&mut memory, &mut frames, 0x1000, frame(0x2000), PageSize::Size4KiB, flags),
            Err(MapError::OutOfFrames)
        );
    }
}

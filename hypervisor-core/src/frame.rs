//! The physical frame allocator: one bit per 4 KiB frame.
//!
//! Built from the boot memory map: RAM ranges are added, then everything the
//! machine already uses (the core image, the boot bundle, the first MiB) is
//! reserved. A set bit means "in use or not RAM". The bitmap storage is handed
//! in by the caller (a static array in the kernel), so the allocator needs no
//! heap. Allocation scans from a rotating hint; freeing checks ownership so a
//! double free is reported instead of corrupting the map.

use crate::addr::{HostPhysAddr, PAGE_SIZE};

/// Why a frame could not be freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// Not page aligned.
    Misaligned,
    /// Beyond the memory the allocator manages.
    OutOfRange,
    /// Already free.
    DoubleFree,
}

/// A bitmap frame allocator over frames `0 .. 64 * bitmap.len()`.
#[derive(Debug)]
pub struct FrameAllocator<'a> {
    bitmap: &'a mut [u64],
    free: usize,
    hint: usize,
}

impl<'a> FrameAllocator<'a> {
    /// An allocator with no free frames; add RAM with [`Self::add_free_range`].
    pub fn new(bitmap: &'a mut [u64]) -> Self {
        bitmap.fill(u64::MAX);
        Self { bitmap, free: 0, hint: 0 }
    }

    /// Frames this allocator can describe.
    pub fn capacity(&self) -> usize {
        self.bitmap.len() * 64
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> usize {
        self.free
    }

    fn frames_inside(&self, start: u64, end: u64) -> core::ops::Range<usize> {
        let first = start.div_ceil(PAGE_SIZE);
        let last = (end / PAGE_SIZE).min(self.capacity() as u64);
        (first.min(last) as usize)..(last as usize)
    }

    fn frames_touching(&self, start: u64, end: u64) -> core::ops::Range<usize> {
        let first = start / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE).min(self.capacity() as u64);
        (first.min(last) as usize)..(last as usize)
    }

    fn is_used(&self, frame: usize) -> bool {
        self.bitmap[frame / 64] & (1 << (frame % 64)) != 0
    }

    fn set_used(&mut self, frame: usize, used: bool) {
        let mask = 1 << (frame % 64);
        if used {
            self.bitmap[frame / 64] |= mask;
        } else {
            self.bitmap[frame / 64] &= !mask;
        }
    }

    /// Marks the whole frames inside `[start, end)` free (RAM from the memory
    /// map). Partial frames at either end are left out.
    pub fn add_free_range(&mut self, start: u64, end: u64) {
        for frame in self.frames_inside(start, end) {
            if self.is_used(frame) {
                self.set_used(frame, false);
                self.free += 1;
            }
        }
    }

    /// Marks every frame touching `[start, end)` used (memory already taken).
    pub fn reserve_range(&mut self, start: u64, end: u64) {
        for frame in self.frames_touching(start, end) {
            if !self.is_used(frame) {
                self.set_used(frame, true);
                self.free -= 1;
            }
        }
    }

    /// One frame, or `None` when memory is exhausted.
    pub fn allocate(&mut self) -> Option<HostPhysAddr> {
        self.allocate_contiguous(1, 1)
    }

    /// `count` physically contiguous frames whose first frame number is a
    /// multiple of `align_frames` (for the SVM I/O and MSR permission maps).
    pub fn allocate_contiguous(&mut self, count: usize, align_frames: usize) -> Option<HostPhysAddr> {
        if count == 0 || align_frames == 0 || count > self.free {
            return None;
        }
        let capacity = self.capacity();
        let start_hint = self.hint - self.hint % align_frames;
        // Two passes: from the hint to the end, then from the start.
        for from in [start_hint, 0] {
            let mut candidate = from;
            while candidate + count <= capacity {
                // Skip whole used words quickly.
                if count == 1 && candidate % 64 == 0 && self.bitmap[candidate / 64] == u64::MAX {
                    candidate += 64;
                    continue;
                }
                match (candidate..candidate + count).find(|&frame| self.is_used(frame)) {
                    None => {
                        for frame in candidate..candidate + count {
                            self.set_used(frame, true);
                        }
                        self.free -= count;
                        self.hint = candidate + count;
                        return HostPhysAddr::try_new(candidate as u64 * PAGE_SIZE);
                    }
                    Some(used) => {
                        candidate = (used + 1).div_ceil(align_frames) * align_frames;
                    }
                }
            }
        }
        None
    }

    /// Returns a frame. Freeing a frame that is not allocated is an error.
    pub fn free(&mut self, frame: HostPhysAddr) -> Result<(), FreeError> {
        if !frame.is_page_aligned() {
            return Err(FreeError::Misaligned);
        }
        let index = frame.frame_number() as usize;
        if index >= self.capacity() {
            return Err(FreeError::OutOfRange);
        }
        if !self.is_used(index) {
            return Err(FreeError::DoubleFree);
        }
        self.set_used(index, false);
        self.free += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn builds_from_a_memory_map_and_respects_reservations() {
        let mut bitmap = vec![0u64; 64]; // 4096 frames = 16 MiB
        let mut frames = FrameAllocator::new(&mut bitmap);
        assert_eq!(frames.allocate(), None);
        frames.add_free_range(0, 0x9fc00); // low RAM, partial last frame dropped
        frames.add_free_range(0x10_0000, 0x100_0000);
        assert_eq!(frames.free_frames(), 159 + 3840);
        frames.reserve_range(0, 0x10_0000); // the first MiB
        frames.reserve_range(0x10_0000, 0x12_0800); // kernel: partial frame rounds out
        assert_eq!(frames.free_frames(), 3840 - 0x21);
        let first = frames.allocate().unwrap();
        assert_eq!(first.as_u64(), 0x12_1000);
        // Memory beyond the bitmap's reach is ignored, not a panic.
        frames.add_free_range(0x100_0000, 0x1_0000_0000);
        assert_eq!(frames.free_frames(), 3840 - 0x21 - 1);
    }

    #[test]
    fn exhausts_then_refuses_and_detects_double_free() {
        let mut bitmap = vec![0u64; 1];
        let mut frames = FrameAllocator::new(&mut bitmap);
        frames.add_free_range(0, 64 * PAGE_SIZE);
        let all: Vec<_> = (0..64).map(|_| frames.allocate().unwrap()).collect();
        assert_eq!(frames.allocate(), None);
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 64, "no frame handed out twice");
        frames.free(all[5]).unwrap();
        assert_eq!(frames.free(all[5]), Err(FreeError::DoubleFree));
        assert_eq!(frames.free(HostPhysAddr::try_new(0x1001).unwrap()), Err(FreeError::Misaligned));
        assert_eq!(
            frames.free(HostPhysAddr::try_new(64 * PAGE_SIZE).unwrap()),
            Err(FreeError::OutOfRange)
        );
        assert_eq!(frames.allocate(), Some(all[5]));
    }

    #[test]
    fn contiguous_allocation_is_aligned_and_skips_holes() {
        let mut bitmap = vec![0u64; 2];
        let mut frames = FrameAllocator::new(&mut bitmap);
        frames.add_free_range(0, 128 * PAGE_SIZE);
        frames.reserve_range(2 * PAGE_SIZE, 3 * PAGE_SIZE);
        let block = frames.allocate_contiguous(3, 4).unwrap();
        assert_eq!(block.as_u64(), 4 * PAGE_SIZE);
        let next = frames.allocate_contiguous(8, 8).unwrap();
        assert_eq!(next.as_u64(), 8 * PAGE_SIZE);
        assert_eq!(frames.allocate_contiguous(200, 1), None);
        assert_eq!(frames.free_frames(), 128 - 1 - 3 - 8);
    }

    proptest! {
        /// Any sequence of allocations and frees keeps the free count equal to
        /// the number of clear bits and never hands out a frame twice.
        #[test]
        fn never_hands_out_a_frame_twice(ops in proptest::collection::vec(0u8..4, 1..300)) {
            let mut bitmap = vec![0u64; 2];
            let mut frames = FrameAllocator::new(&mut bitmap);
            frames.add_free_range(PAGE_SIZE, 100 * PAGE_SIZE);
            let mut held: Vec<HostPhysAddr> = Vec::new();
            for op in ops {
                if op < 3 {
                    if let Some(frame) = frames.allocate() {
                        prop_assert!(!held.contains(&frame));
                        prop_assert!(frame.as_u64() >= PAGE_SIZE);
                        held.push(frame);
                    } else {
                        prop_assert_eq!(held.len(), 99);
                    }
                } else if let Some(frame) = held.pop() {
                    prop_assert_eq!(frames.free(frame), Ok(()));
                }
                prop_assert_eq!(frames.free_frames(), 99 - held.len());
            }
        }
    }
}

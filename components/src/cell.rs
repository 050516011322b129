//! [`StaticCell`]: a `static` a server takes a `&'static mut` to once, for
//! state too big for its 64 KiB stack (the pager's slot table and bitmaps).
//! The core zero-fills a server's writable segments at every start, so a
//! zero-initialised cell costs no image bytes (it lands in `.bss`).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A value in a `static` that can be borrowed mutably exactly once.
pub struct StaticCell<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the only access to `value` is through `take`, which hands out the
// single `&mut T` at most once (the atomic swap decides who gets it), so no
// two threads can reach the value together; `T: Send` because the one
// borrow may be used on another thread than the one that built the cell.
unsafe impl<T: Send> Sync for StaticCell<T> {}

impl<T> StaticCell<T> {
    /// A cell holding `value`, not yet taken.
    pub const fn new(value: T) -> Self {
        Self {
            taken: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, mutably, the first time; `None` ever after.
    // A `&mut` from `&self` is the point: the atomic flag makes it unique.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the swap above returned `false` exactly once for this
        // cell, so this is the only `&mut` ever made from `value`, and
        // nothing else reads it (`take` is the only access); the cell is
        // `'static`, so the borrow may be too.
        Some(unsafe { &mut *self.value.get() })
    }
}

impl<T> core::fmt::Debug for StaticCell<T> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter
            .debug_struct("StaticCell")
            .field("taken", &self.taken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_is_taken_once() {
        static CELL: StaticCell<[u64; 4]> = StaticCell::new([0; 4]);
        let first = CELL.take().expect("the first take succeeds");
        first[3] = 7;
        assert!(CELL.take().is_none(), "a second take gets nothing");
        assert_eq!(first[3], 7);
    }
}

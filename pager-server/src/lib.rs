//! # pager-server — guest paging policy, as a pure library
//!
//! Purpose: everything the ring-3 pager *decides*, with Xen's xenpaging
//! semantics (`tools/xenpaging/`, `xen/arch/x86/mm/mem_paging.c`), written so
//! that a pager killed at any instant loses no guest page:
//!
//! * [`frame`]: the per-frame paging state machine the core enforces
//!   (`Ram → PagingOut → Paged → PagingIn → Ram`, plus `Dropped`), its typed
//!   illegal-transition errors, and [`frame::FrameTable`], which adds the
//!   table-wide rules: a slot is recorded for at most one frame, and a frame is
//!   never freed while the pager still maps it.
//! * [`recovery`]: what to roll back and what to roll forward after a pager
//!   crash, computed from the persistent per-frame states alone.
//! * [`policy`]: the victim scan and the MRU protection of recently paged-in
//!   frames (xenpaging's `policy_default.c`).
//! * [`slots`]: the swap-slot allocator, rebuildable from the core's map.
//! * [`disk`]: the on-disk layout of the swap device (header, slot table,
//!   data slots) and the per-page CRC-32C that makes a wrong read detectable.
//! * [`target`]: memory-target validation, the eviction deficit, and
//!   [`target::next_work`], which always serves page-ins before page-outs.
//! * [`stats`]: the counters and the page-in latency histogram of `hvctl stats`.
//! * [`virtio`]: the user-level virtio-blk driver (virtio-mmio version 2,
//!   one polled split queue) over a [`virtio::Transport`].
//! * [`devbench`]: the swap device's own read rate, measured before paging
//!   starts when the bench asks for it.
//! * [`engine`]: the paging engine that drives the pager protocol over the
//!   driver: device bring-up, format or table load, rebuild from the core's
//!   map, page-ins first, bounded eviction batches.
//! * [`server`]: the [`components::Handler`] that adapts the engine to the
//!   runtime (the `Context` is the engine's port and transport).
//!
//! ## Principles
//!
//! * **The core's map is the truth.** The gfn → slot map lives in the core
//!   (issue #5 §1), in [`frame::FrameState`]s the pager cannot lose. Every
//!   structure the pager keeps (free slots, victim bitmaps, the cached slot
//!   table) is a cache that [`slots::SlotAllocator::rebuild_from_states`],
//!   [`policy::VictimPolicy::sync_from_states`] and [`recovery::recover`]
//!   rebuild from it.
//! * **Nothing is recorded before it is durable.** A frame becomes `Paged` only
//!   when its data and its slot-table entry are on the device, so every crash
//!   point leaves either the old frame or a complete copy (see [`recovery`]).
//! * **Never silently wrong data.** Every page carries a CRC-32C and its owner
//!   in the slot table; a page-in that reads anything else fails with a named
//!   [`disk::PageInError`], and the waiting domain is stopped with that reason.
//! * **Pure.** No syscalls and no heap here: the engine and the driver reach
//!   the core and the device only through traits, and big tables are
//!   caller-provided slices, so everything runs and is tested on the host
//!   (against a fake virtio-blk device and a simulated core).
//!
//! ## Not in this crate
//!
//! The run loop and the syscalls (`components`), the wire messages (they
//! belong in `ipc`), and the core's mechanism itself (nested page tables,
//! vCPU wait queues, the DMA checks).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod bitmap;
pub mod devbench;
pub mod disk;
pub mod engine;
#[cfg(test)]
pub(crate) mod fake;
pub mod frame;
pub mod policy;
pub mod recovery;
pub mod server;
pub mod slots;
pub mod stats;
pub mod target;
pub mod virtio;

use core::fmt;

/// Bytes in a guest frame, a swap slot and a block of the swap layout.
pub const PAGE_SIZE: usize = 4096;

/// A guest frame number: a guest-physical address divided by [`PAGE_SIZE`].
///
/// A `Gfn` that arrives from a guest or a server is an allegation: it is only
/// checked against a domain's size where it is used ([`frame::FrameTable`]
/// returns [`frame::TransitionError::GfnOutOfRange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gfn(u64);

impl Gfn {
    /// The frame with number `number`.
    pub const fn new(number: u64) -> Self {
        Self(number)
    }

    /// The frame number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gfn {:#x}", self.0)
    }
}

/// A swap slot of one domain's partition of the swap device
/// ([`disk::Partition`] turns it into a device slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Slot(u32);

impl Slot {
    /// The slot with index `index`.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// The slot's index.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

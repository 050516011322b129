//! The paging state of a guest frame, and the rules the core enforces on it.
//!
//! This is mechanism, not policy: it is the core's half of issue #5 §1, kept
//! here as a pure type so the core can reuse it and so it is tested on the
//! host. The states follow Xen's p2m paging types (`p2m_ram_rw`,
//! `p2m_ram_paging_out`, `p2m_ram_paged`, `p2m_ram_paging_in` in
//! `xen/arch/x86/include/asm/p2m.h`), and the operations follow
//! `xen/arch/x86/mm/mem_paging.c`:
//!
//! ```text
//!               nominate                      evict(slot)
//!       ┌──────────────────────▶ PagingOut ──────────────────▶ Paged{slot}
//!       │                           │                          │       │
//!      Ram ◀── cancel_nomination ───┘                 populate │       │
//!       ▲                                        (guest touch) ▼       │
//!       ├────────────────── load(slot) ────────────── PagingIn{slot}   │
//!       ├────────────────── load(slot), restore without a fault ───────┘
//!       │ repopulate (zero-filled)
//!    Dropped ◀── drop, from every other state
//! ```
//!
//! | operation | from | to | Xen |
//! |---|---|---|---|
//! | `nominate` | `Ram` | `PagingOut` (guest mapping read-only) | `nominate()` |
//! | `map_for_copy` | `PagingOut` | unchanged; opens the pager's copy window | `xc_map_foreign_pages` in `xenpaging_evict_page()` |
//! | `cancel_nomination` | `PagingOut` | `Ram` (guest wrote, or pager died) | populate of `p2m_ram_paging_out` with `MEM_PAGING_EVICT_FAIL` |
//! | `evict(slot)` | `PagingOut` | `Paged{slot}`, host frame freed | `evict()` |
//! | `populate` | `Paged{s}` / `PagingIn{s}` | `PagingIn{s}`, vCPU waits | `p2m_mem_paging_populate()` |
//! | `load(slot)` | `Paged{s}` / `PagingIn{s}`, `slot == s` | `Ram`, slot released, waiters woken | `prepare()` with a buffer (`xc_mem_paging_load`) |
//! | `resume` | `Ram` / `Dropped` | unchanged; acknowledges a stale request | `p2m_mem_paging_resume()` |
//! | `drop` | any but `Dropped` | `Dropped`, frame or slot released | `p2m_mem_paging_drop_page()` |
//! | `repopulate` | `Dropped` | `Ram`, zero-filled | `XENMEM_populate_physmap` |
//!
//! Differences from Xen, and why:
//! * A guest *write* to a `PagingOut` frame cancels the nomination at once
//!   (`Ram`, writable again) instead of sending the vCPU through the pager:
//!   the frame is still there, so no vCPU ever waits for a page that is in
//!   memory, and a dead pager cannot strand it.
//! * `load` wakes the waiting vCPUs itself, as Xen's `prepare()` makes the
//!   page guest-accessible at once: a pager that dies between load and resume
//!   cannot leave a vCPU waiting on a present page. `resume` therefore only
//!   acknowledges requests that found the frame already back.
//! * `load` is also legal from `Paged` (Xen's `prepare()` accepts
//!   `p2m_ram_paged`), which is how the pager brings pages back when the target
//!   rises, without a guest fault and without a persistent in-flight state.
//!
//! [`FrameTable`] adds the rules no single frame can check: a slot belongs to
//! at most one frame, slots are in range, and a frame is never freed while the
//! pager's copy window still maps it.

use core::fmt;

use crate::bitmap::Bitmap;
use crate::recovery::{self, RecoveryError};
use crate::{Gfn, Slot};

/// The paging state of one guest frame. The core keeps one per frame; it is
/// the authoritative gfn → slot map, and it survives any pager crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FrameState {
    /// Backed by a host frame, mapped read-write. Not being paged.
    #[default]
    Ram,
    /// Nominated for eviction: still backed by its host frame, but mapped
    /// read-only so its content cannot change while the pager copies it.
    PagingOut,
    /// Evicted: no host frame; the content is in `slot` (and nowhere else).
    Paged {
        /// The swap slot holding the frame's content.
        slot: Slot,
    },
    /// A vCPU touched the paged frame and waits; the pager has been asked to
    /// read `slot` back.
    PagingIn {
        /// The swap slot holding the frame's content.
        slot: Slot,
    },
    /// Given back by the guest (`XENMEM_decrease_reservation`): no host frame,
    /// no slot. Reads back as zeros once repopulated.
    Dropped,
}

/// A [`FrameState`] without its slot, for errors and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// [`FrameState::Ram`].
    Ram,
    /// [`FrameState::PagingOut`].
    PagingOut,
    /// [`FrameState::Paged`].
    Paged,
    /// [`FrameState::PagingIn`].
    PagingIn,
    /// [`FrameState::Dropped`].
    Dropped,
}

/// The operations on a frame's paging state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Pager: mark a resident frame for eviction.
    Nominate,
    /// Pager: map the nominated frame read-only to copy it (the copy window).
    MapForCopy,
    /// Core: undo a nomination (guest write, or pager crash).
    CancelNomination,
    /// Pager: the copy is durable in a slot; free the host frame.
    Evict,
    /// Core: a vCPU touched a paged frame.
    Populate,
    /// Pager: here is the content read back from the slot.
    Load,
    /// Pager: acknowledge a page-in request that found the frame back.
    Resume,
    /// Guest: give the frame back.
    Drop,
    /// Guest: take a dropped frame again.
    Repopulate,
}

impl Operation {
    /// Every operation, for exhaustive tests.
    pub const ALL: [Operation; 9] = [
        Operation::Nominate,
        Operation::MapForCopy,
        Operation::CancelNomination,
        Operation::Evict,
        Operation::Populate,
        Operation::Load,
        Operation::Resume,
        Operation::Drop,
        Operation::Repopulate,
    ];
}

/// Why an operation on the frame table was refused. The frame is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionError {
    /// The operation is not legal from the frame's current state.
    Illegal {
        /// What was attempted.
        operation: Operation,
        /// The state the frame was in.
        from: StateKind,
    },
    /// `load` named a different slot than the one recorded for the frame.
    SlotMismatch {
        /// The slot in the core's map.
        recorded: Slot,
        /// The slot the pager named.
        given: Slot,
    },
    /// The gfn is past the end of the domain's memory.
    GfnOutOfRange {
        /// The gfn named.
        gfn: Gfn,
        /// Frames in the domain.
        frames: u64,
    },
    /// The slot is past the end of the domain's partition.
    SlotOutOfRange {
        /// The slot named.
        slot: Slot,
        /// Slots in the partition.
        slots: u32,
    },
    /// `evict` named a slot that already holds another frame.
    SlotInUse {
        /// The slot named.
        slot: Slot,
    },
    /// `evict` while the pager's copy window still maps the frame.
    StillMapped {
        /// The frame named.
        gfn: Gfn,
    },
    /// A copy window is already open; the pager maps one frame at a time.
    WindowBusy {
        /// The frame the open window maps.
        mapped: Gfn,
    },
    /// `close_copy_window` with no window open.
    WindowNotOpen,
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Illegal { operation, from } => {
                write!(f, "{operation:?} is not legal on a frame in state {from:?}")
            }
            Self::SlotMismatch { recorded, given } => {
                write!(
                    f,
                    "load names {given} but the frame is recorded in {recorded}"
                )
            }
            Self::GfnOutOfRange { gfn, frames } => {
                write!(f, "{gfn} is outside the domain's {frames} frames")
            }
            Self::SlotOutOfRange { slot, slots } => {
                write!(f, "{slot} is outside the partition's {slots} slots")
            }
            Self::SlotInUse { slot } => write!(f, "{slot} already holds another frame"),
            Self::StillMapped { gfn } => {
                write!(f, "{gfn} is still mapped by the pager's copy window")
            }
            Self::WindowBusy { mapped } => write!(f, "the copy window already maps {mapped}"),
            Self::WindowNotOpen => write!(f, "no copy window is open"),
        }
    }
}

/// What `populate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Populate {
    /// The frame went `Paged → PagingIn`: send the pager a page-in request.
    Requested {
        /// The slot to read.
        slot: Slot,
    },
    /// A page-in is already under way: the vCPU just waits with the others.
    AlreadyRequested {
        /// The slot being read.
        slot: Slot,
    },
}

/// What `load` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Loaded {
    /// The slot the frame no longer uses; the pager frees it.
    pub released: Slot,
    /// The frame was `PagingIn`: the core wakes the vCPUs waiting on it.
    pub wake_waiters: bool,
}

/// What `drop` releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum DropEffect {
    /// The host frame goes back to the core's free pool now.
    FreeHostFrame,
    /// The host frame is still mapped by the pager's copy window: it is freed
    /// when the window closes (never while mapped).
    FreeHostFrameOnUnmap,
    /// The frame had no host frame; its slot is released. The core tells the
    /// pager, which frees the slot.
    ReleaseSlot {
        /// The slot released.
        slot: Slot,
        /// The frame was `PagingIn`: wake the vCPUs waiting on it.
        wake_waiters: bool,
    },
}

impl FrameState {
    /// The state without its slot.
    pub const fn kind(self) -> StateKind {
        match self {
            Self::Ram => StateKind::Ram,
            Self::PagingOut => StateKind::PagingOut,
            Self::Paged { .. } => StateKind::Paged,
            Self::PagingIn { .. } => StateKind::PagingIn,
            Self::Dropped => StateKind::Dropped,
        }
    }

    /// The slot the core's map records for this frame, if any.
    pub const fn slot(self) -> Option<Slot> {
        match self {
            Self::Paged { slot } | Self::PagingIn { slot } => Some(slot),
            _ => None,
        }
    }

    /// Whether the frame is backed by a host frame (counts in the footprint).
    pub const fn is_resident(self) -> bool {
        matches!(self, Self::Ram | Self::PagingOut)
    }

    /// Whether `operation` is legal from this state (the table in the module
    /// doc). `load` additionally needs the recorded slot.
    pub const fn allows(self, operation: Operation) -> bool {
        use FrameState::*;
        match operation {
            Operation::Nominate => matches!(self, Ram),
            Operation::MapForCopy | Operation::CancelNomination | Operation::Evict => {
                matches!(self, PagingOut)
            }
            Operation::Populate | Operation::Load => matches!(self, Paged { .. } | PagingIn { .. }),
            Operation::Resume => matches!(self, Ram | Dropped),
            Operation::Drop => !matches!(self, Dropped),
            Operation::Repopulate => matches!(self, Dropped),
        }
    }

    fn check(self, operation: Operation) -> Result<(), TransitionError> {
        if self.allows(operation) {
            Ok(())
        } else {
            Err(TransitionError::Illegal {
                operation,
                from: self.kind(),
            })
        }
    }

    /// `Ram → PagingOut`, as `nominate()` in Xen's `mem_paging.c`.
    pub fn nominate(self) -> Result<Self, TransitionError> {
        self.check(Operation::Nominate)?;
        Ok(Self::PagingOut)
    }

    /// Checks that the frame may be mapped for its page-out copy: only a
    /// nominated, hence read-only, frame. The state does not change.
    pub fn map_for_copy(self) -> Result<(), TransitionError> {
        self.check(Operation::MapForCopy)
    }

    /// `PagingOut → Ram`: the guest wrote to the frame, or the pager died
    /// before evicting it.
    pub fn cancel_nomination(self) -> Result<Self, TransitionError> {
        self.check(Operation::CancelNomination)?;
        Ok(Self::Ram)
    }

    /// `PagingOut → Paged{slot}`, as `evict()` in Xen's `mem_paging.c`.
    pub fn evict(self, slot: Slot) -> Result<Self, TransitionError> {
        self.check(Operation::Evict)?;
        Ok(Self::Paged { slot })
    }

    /// `Paged{s} → PagingIn{s}`; a no-op on `PagingIn` (several vCPUs may
    /// touch the frame), as `p2m_mem_paging_populate()`.
    pub fn populate(self) -> Result<(Self, Populate), TransitionError> {
        match self {
            Self::Paged { slot } => Ok((Self::PagingIn { slot }, Populate::Requested { slot })),
            Self::PagingIn { slot } => Ok((self, Populate::AlreadyRequested { slot })),
            _ => Err(TransitionError::Illegal {
                operation: Operation::Populate,
                from: self.kind(),
            }),
        }
    }

    /// `Paged{s}` or `PagingIn{s}` → `Ram` when `slot == s`, as `prepare()`
    /// with a buffer in Xen's `mem_paging.c`.
    pub fn load(self, slot: Slot) -> Result<(Self, Loaded), TransitionError> {
        let (recorded, wake_waiters) = match self {
            Self::Paged { slot } => (slot, false),
            Self::PagingIn { slot } => (slot, true),
            _ => {
                return Err(TransitionError::Illegal {
                    operation: Operation::Load,
                    from: self.kind(),
                })
            }
        };
        if recorded != slot {
            return Err(TransitionError::SlotMismatch {
                recorded,
                given: slot,
            });
        }
        Ok((
            Self::Ram,
            Loaded {
                released: recorded,
                wake_waiters,
            },
        ))
    }

    /// Acknowledges a page-in request for a frame that is no longer paged
    /// (`Ram` or `Dropped`). Refused while the content is still on the device:
    /// resuming then would let the guest run on a page that is not there.
    pub fn resume(self) -> Result<(), TransitionError> {
        self.check(Operation::Resume)
    }

    /// Any state but `Dropped` → `Dropped`, as `p2m_mem_paging_drop_page()`.
    pub fn drop_frame(self) -> Result<(Self, DropEffect), TransitionError> {
        let effect = match self {
            Self::Ram | Self::PagingOut => DropEffect::FreeHostFrame,
            Self::Paged { slot } => DropEffect::ReleaseSlot {
                slot,
                wake_waiters: false,
            },
            Self::PagingIn { slot } => DropEffect::ReleaseSlot {
                slot,
                wake_waiters: true,
            },
            Self::Dropped => {
                return Err(TransitionError::Illegal {
                    operation: Operation::Drop,
                    from: StateKind::Dropped,
                })
            }
        };
        Ok((Self::Dropped, effect))
    }

    /// `Dropped → Ram` with a zero-filled frame: a dropped frame never needs
    /// a page-in.
    pub fn repopulate(self) -> Result<Self, TransitionError> {
        self.check(Operation::Repopulate)?;
        Ok(Self::Ram)
    }
}

/// How many frames are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameCounts {
    /// Frames in [`FrameState::Ram`].
    pub ram: u64,
    /// Frames in [`FrameState::PagingOut`].
    pub paging_out: u64,
    /// Frames in [`FrameState::Paged`].
    pub paged: u64,
    /// Frames in [`FrameState::PagingIn`].
    pub paging_in: u64,
    /// Frames in [`FrameState::Dropped`].
    pub dropped: u64,
}

impl FrameCounts {
    /// Counts `states`.
    pub fn of(states: &[FrameState]) -> Self {
        let mut counts = Self::default();
        for state in states {
            counts.add(*state, 1);
        }
        counts
    }

    fn counter(&mut self, kind: StateKind) -> &mut u64 {
        match kind {
            StateKind::Ram => &mut self.ram,
            StateKind::PagingOut => &mut self.paging_out,
            StateKind::Paged => &mut self.paged,
            StateKind::PagingIn => &mut self.paging_in,
            StateKind::Dropped => &mut self.dropped,
        }
    }

    fn add(&mut self, state: FrameState, amount: u64) {
        let counter = self.counter(state.kind());
        *counter = counter.wrapping_add(amount);
    }

    fn moved(&mut self, from: FrameState, to: FrameState) {
        self.add(from, u64::MAX); // wrapping −1
        self.add(to, 1);
    }

    /// Frames backed by a host frame: `ram + paging_out`. This is the
    /// domain's footprint, the quantity the memory target bounds.
    pub const fn resident(&self) -> u64 {
        self.ram + self.paging_out
    }

    /// Frames whose content is on the swap device: `paged + paging_in`.
    /// Equals the number of slots in use.
    pub const fn swapped(&self) -> u64 {
        self.paged + self.paging_in
    }
}

/// The pager's copy window: the one guest frame it may map, read-only, for
/// the duration of one page-out copy (issue #5 §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyWindow {
    /// The frame mapped.
    pub gfn: Gfn,
    /// The guest dropped the frame while it was mapped: its host frame is no
    /// longer the guest's and is freed when the window closes.
    pub orphaned: bool,
}

/// What closing the copy window releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct WindowClosed {
    /// The frame that was mapped.
    pub gfn: Gfn,
    /// The mapped host frame was dropped meanwhile: free it now.
    pub free_host_frame: bool,
}

/// What the core did on its own when the pager died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use]
pub struct CrashCleanup {
    /// The copy window that was revoked, if one was open.
    pub revoked_window: Option<WindowClosed>,
    /// Nominations rolled back to `Ram`.
    pub cancelled_nominations: u64,
    /// Frames still `PagingIn`: their vCPUs keep waiting until the next
    /// pager instance reads them back.
    pub page_ins_outstanding: u64,
}

/// One domain's frame states plus the table-wide rules: the core's view.
///
/// Invariants, checked by [`FrameTable::new`] and kept by every operation:
/// * each slot in `Paged{slot}`/`PagingIn{slot}` is below `slot_count` and
///   appears in at most one frame (the in-use bitmap is exactly that set);
/// * the host frame under the copy window is never freed while mapped;
/// * `counts()` equals [`FrameCounts::of`] over the states.
#[derive(Debug)]
pub struct FrameTable<'a> {
    states: &'a mut [FrameState],
    slots_in_use: Bitmap<'a>,
    slot_count: u32,
    window: Option<CopyWindow>,
    counts: FrameCounts,
}

impl<'a> FrameTable<'a> {
    /// Takes `states` (all `Ram` at boot, or whatever the table held when a
    /// pager died) and rebuilds the slot bitmap in `slot_words` (at least
    /// [`crate::bitmap::words_for`]`(slot_count)` words) from them. Fails if a
    /// slot is out of range or shared: the map would be corrupt.
    pub fn new(
        states: &'a mut [FrameState],
        slot_words: &'a mut [u64],
        slot_count: u32,
    ) -> Result<Self, RecoveryError> {
        let mut slots_in_use = Bitmap::new_cleared(slot_words, u64::from(slot_count))
            .ok_or(RecoveryError::ScratchTooSmall)?;
        recovery::mark_slots_in_use(states, slot_count, &mut slots_in_use)?;
        let counts = FrameCounts::of(states);
        Ok(Self {
            states,
            slots_in_use,
            slot_count,
            window: None,
            counts,
        })
    }

    /// Frames in the domain.
    pub fn frame_count(&self) -> u64 {
        self.states.len() as u64
    }

    /// Slots in the domain's partition.
    pub const fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// All frame states, indexed by gfn.
    pub fn states(&self) -> &[FrameState] {
        self.states
    }

    /// How many frames are in each state.
    pub const fn counts(&self) -> FrameCounts {
        self.counts
    }

    /// Whether the core's map records `slot` for some frame.
    pub fn slot_in_use(&self, slot: Slot) -> bool {
        self.slots_in_use.get(u64::from(slot.get()))
    }

    /// The open copy window, if any.
    pub const fn copy_window(&self) -> Option<CopyWindow> {
        self.window
    }

    /// The state of `gfn`.
    pub fn state(&self, gfn: Gfn) -> Result<FrameState, TransitionError> {
        self.index(gfn).map(|index| self.states[index])
    }

    fn index(&self, gfn: Gfn) -> Result<usize, TransitionError> {
        let frames = self.frame_count();
        if gfn.get() < frames {
            // In range of a slice length, so it fits in usize.
            Ok(gfn.get() as usize)
        } else {
            Err(TransitionError::GfnOutOfRange { gfn, frames })
        }
    }

    fn store(&mut self, index: usize, to: FrameState) {
        let from = self.states[index];
        if let Some(slot) = from.slot() {
            self.slots_in_use.clear(u64::from(slot.get()));
        }
        if let Some(slot) = to.slot() {
            self.slots_in_use.set(u64::from(slot.get()));
        }
        self.counts.moved(from, to);
        self.states[index] = to;
    }

    fn window_maps(&self, gfn: Gfn) -> bool {
        self.window.is_some_and(|window| window.gfn == gfn)
    }

    /// `Ram → PagingOut`; the core then write-protects the frame.
    pub fn nominate(&mut self, gfn: Gfn) -> Result<(), TransitionError> {
        let index = self.index(gfn)?;
        let to = self.states[index].nominate()?;
        self.store(index, to);
        Ok(())
    }

    /// `PagingOut → Ram`; the core then makes the frame writable again.
    pub fn cancel_nomination(&mut self, gfn: Gfn) -> Result<(), TransitionError> {
        let index = self.index(gfn)?;
        let to = self.states[index].cancel_nomination()?;
        self.store(index, to);
        Ok(())
    }

    /// Opens the pager's copy window on a `PagingOut` frame (the core maps it
    /// read-only into the pager). One window at a time.
    pub fn open_copy_window(&mut self, gfn: Gfn) -> Result<(), TransitionError> {
        if let Some(window) = self.window {
            return Err(TransitionError::WindowBusy { mapped: window.gfn });
        }
        let index = self.index(gfn)?;
        self.states[index].map_for_copy()?;
        self.window = Some(CopyWindow {
            gfn,
            orphaned: false,
        });
        Ok(())
    }

    /// Closes the copy window (the core unmaps it from the pager). If the
    /// guest dropped the frame meanwhile, its host frame is freed now.
    pub fn close_copy_window(&mut self) -> Result<WindowClosed, TransitionError> {
        let window = self.window.take().ok_or(TransitionError::WindowNotOpen)?;
        Ok(WindowClosed {
            gfn: window.gfn,
            free_host_frame: window.orphaned,
        })
    }

    /// `PagingOut → Paged{slot}`; the core frees the host frame. Refused if
    /// the slot is out of range or holds another frame, or if the copy window
    /// still maps the frame.
    pub fn evict(&mut self, gfn: Gfn, slot: Slot) -> Result<(), TransitionError> {
        let index = self.index(gfn)?;
        let to = self.states[index].evict(slot)?;
        if slot.get() >= self.slot_count {
            return Err(TransitionError::SlotOutOfRange {
                slot,
                slots: self.slot_count,
            });
        }
        if self.slot_in_use(slot) {
            return Err(TransitionError::SlotInUse { slot });
        }
        if self.window_maps(gfn) {
            return Err(TransitionError::StillMapped { gfn });
        }
        self.store(index, to);
        Ok(())
    }

    /// A vCPU touched a paged frame: `Paged → PagingIn` (or nothing new if a
    /// page-in is already under way). The vCPU waits either way.
    pub fn populate(&mut self, gfn: Gfn) -> Result<Populate, TransitionError> {
        let index = self.index(gfn)?;
        let (to, populate) = self.states[index].populate()?;
        self.store(index, to);
        Ok(populate)
    }

    /// The pager read `slot` back and verified it: the frame becomes `Ram`
    /// (the core copies the content into a fresh host frame) and `slot` is
    /// released.
    pub fn load(&mut self, gfn: Gfn, slot: Slot) -> Result<Loaded, TransitionError> {
        let index = self.index(gfn)?;
        let (to, loaded) = self.states[index].load(slot)?;
        self.store(index, to);
        Ok(loaded)
    }

    /// Acknowledges a page-in request for a frame that is back already.
    pub fn resume(&self, gfn: Gfn) -> Result<(), TransitionError> {
        let index = self.index(gfn)?;
        self.states[index].resume()
    }

    /// The guest gave `gfn` back.
    pub fn drop_frame(&mut self, gfn: Gfn) -> Result<DropEffect, TransitionError> {
        let index = self.index(gfn)?;
        let (to, mut effect) = self.states[index].drop_frame()?;
        if effect == DropEffect::FreeHostFrame {
            if let Some(window) = self.window.as_mut().filter(|window| window.gfn == gfn) {
                window.orphaned = true;
                effect = DropEffect::FreeHostFrameOnUnmap;
            }
        }
        self.store(index, to);
        Ok(effect)
    }

    /// `Dropped → Ram` with a zero-filled host frame.
    pub fn repopulate(&mut self, gfn: Gfn) -> Result<(), TransitionError> {
        let index = self.index(gfn)?;
        let to = self.states[index].repopulate()?;
        self.store(index, to);
        Ok(())
    }

    /// What the core does by itself the moment the pager dies (issue #6 §3):
    /// revoke the copy window (freeing its host frame if it was orphaned) and
    /// roll every nomination back to `Ram`, calling `on_cancelled` for each so
    /// the caller restores write access. `Paged` and `PagingIn` frames are
    /// left alone: their content is durable, and the next pager instance
    /// resumes the page-ins ([`crate::recovery::recover`]).
    pub fn pager_crashed(&mut self, mut on_cancelled: impl FnMut(Gfn)) -> CrashCleanup {
        let revoked_window = self.close_copy_window().ok();
        let mut cancelled_nominations = 0;
        for index in 0..self.states.len() {
            if self.states[index] == FrameState::PagingOut {
                self.store(index, FrameState::Ram);
                cancelled_nominations += 1;
                on_cancelled(Gfn::new(index as u64));
            }
        }
        CrashCleanup {
            revoked_window,
            cancelled_nominations,
            page_ins_outstanding: self.counts.paging_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: Slot = Slot::new(3);

    fn every_state() -> [FrameState; 5] {
        [
            FrameState::Ram,
            FrameState::PagingOut,
            FrameState::Paged { slot: SLOT },
            FrameState::PagingIn { slot: SLOT },
            FrameState::Dropped,
        ]
    }

    /// Applies `operation` with the recorded slot; `Ok(new state)` or the error.
    fn apply(state: FrameState, operation: Operation) -> Result<FrameState, TransitionError> {
        match operation {
            Operation::Nominate => state.nominate(),
            Operation::MapForCopy => state.map_for_copy().map(|()| state),
            Operation::CancelNomination => state.cancel_nomination(),
            Operation::Evict => state.evict(SLOT),
            Operation::Populate => state.populate().map(|(to, _)| to),
            Operation::Load => state.load(SLOT).map(|(to, _)| to),
            Operation::Resume => state.resume().map(|()| state),
            Operation::Drop => state.drop_frame().map(|(to, _)| to),
            Operation::Repopulate => state.repopulate(),
        }
    }

    /// The full legality table of the module doc, written out independently
    /// of `allows`: (operation, from) → expected state after.
    fn expected(state: FrameState, operation: Operation) -> Option<FrameState> {
        use FrameState::*;
        use Operation::*;
        match (operation, state) {
            (Nominate, Ram) => Some(PagingOut),
            (MapForCopy, PagingOut) => Some(PagingOut),
            (CancelNomination, PagingOut) => Some(Ram),
            (Evict, PagingOut) => Some(Paged { slot: SLOT }),
            (Populate, Paged { slot }) | (Populate, PagingIn { slot }) => Some(PagingIn { slot }),
            (Load, Paged { .. }) | (Load, PagingIn { .. }) => Some(Ram),
            (Resume, Ram) => Some(Ram),
            (Resume, Dropped) => Some(Dropped),
            (Drop, Dropped) => None,
            (Drop, _) => Some(Dropped),
            (Repopulate, Dropped) => Some(Ram),
            _ => None,
        }
    }

    #[test]
    fn every_illegal_transition_is_rejected_and_every_legal_one_lands_where_the_table_says() {
        let mut legal = 0;
        for state in every_state() {
            for operation in Operation::ALL {
                let result = apply(state, operation);
                match expected(state, operation) {
                    Some(to) => {
                        legal += 1;
                        assert_eq!(result, Ok(to), "{operation:?} from {state:?}");
                        assert!(state.allows(operation));
                    }
                    None => {
                        assert_eq!(
                            result,
                            Err(TransitionError::Illegal {
                                operation,
                                from: state.kind()
                            }),
                            "{operation:?} from {state:?} must be refused"
                        );
                        assert!(!state.allows(operation));
                    }
                }
            }
        }
        // 1 nominate + 1 map + 1 cancel + 1 evict + 2 populate + 2 load
        // + 2 resume + 4 drop + 1 repopulate.
        assert_eq!(legal, 15);
    }

    #[test]
    fn load_with_the_wrong_slot_is_refused() {
        let state = FrameState::PagingIn { slot: SLOT };
        assert_eq!(
            state.load(Slot::new(4)),
            Err(TransitionError::SlotMismatch {
                recorded: SLOT,
                given: Slot::new(4)
            })
        );
    }

    #[test]
    fn populate_twice_requests_once() {
        let (state, first) = FrameState::Paged { slot: SLOT }.populate().unwrap();
        assert_eq!(first, Populate::Requested { slot: SLOT });
        let (again, second) = state.populate().unwrap();
        assert_eq!(again, state);
        assert_eq!(second, Populate::AlreadyRequested { slot: SLOT });
    }

    #[test]
    fn load_wakes_waiters_only_after_a_guest_fault() {
        let (_, from_fault) = FrameState::PagingIn { slot: SLOT }.load(SLOT).unwrap();
        assert_eq!(
            from_fault,
            Loaded {
                released: SLOT,
                wake_waiters: true
            }
        );
        let (_, prefetch) = FrameState::Paged { slot: SLOT }.load(SLOT).unwrap();
        assert_eq!(
            prefetch,
            Loaded {
                released: SLOT,
                wake_waiters: false
            }
        );
    }

    #[test]
    fn drop_releases_the_frame_or_the_slot() {
        assert_eq!(
            FrameState::Ram.drop_frame().unwrap().1,
            DropEffect::FreeHostFrame
        );
        assert_eq!(
            FrameState::PagingOut.drop_frame().unwrap().1,
            DropEffect::FreeHostFrame
        );
        assert_eq!(
            FrameState::Paged { slot: SLOT }.drop_frame().unwrap().1,
            DropEffect::ReleaseSlot {
                slot: SLOT,
                wake_waiters: false
            }
        );
        assert_eq!(
            FrameState::PagingIn { slot: SLOT }.drop_frame().unwrap().1,
            DropEffect::ReleaseSlot {
                slot: SLOT,
                wake_waiters: true
            }
        );
    }

    fn table<'a>(states: &'a mut [FrameState], words: &'a mut [u64]) -> FrameTable<'a> {
        FrameTable::new(states, words, 4).unwrap()
    }

    #[test]
    fn table_refuses_a_slot_already_in_use_and_out_of_range() {
        let mut states = [FrameState::Ram; 3];
        let mut words = [0u64; 1];
        let mut table = table(&mut states, &mut words);
        table.nominate(Gfn::new(1)).unwrap();
        table.nominate(Gfn::new(2)).unwrap();
        table.evict(Gfn::new(1), Slot::new(0)).unwrap();
        assert_eq!(
            table.evict(Gfn::new(2), Slot::new(0)),
            Err(TransitionError::SlotInUse { slot: Slot::new(0) })
        );
        assert_eq!(
            table.evict(Gfn::new(2), Slot::new(4)),
            Err(TransitionError::SlotOutOfRange {
                slot: Slot::new(4),
                slots: 4
            })
        );
        assert_eq!(
            table.state(Gfn::new(2)),
            Ok(FrameState::PagingOut),
            "refusal changes nothing"
        );
        assert_eq!(
            table.nominate(Gfn::new(3)),
            Err(TransitionError::GfnOutOfRange {
                gfn: Gfn::new(3),
                frames: 3
            })
        );
        assert!(table.slot_in_use(Slot::new(0)));
        assert!(!table.slot_in_use(Slot::new(1)));
    }

    #[test]
    fn a_frame_is_never_evicted_or_freed_while_mapped() {
        let mut states = [FrameState::Ram; 2];
        let mut words = [0u64; 1];
        let mut table = table(&mut states, &mut words);
        let gfn = Gfn::new(1);
        assert_eq!(
            table.open_copy_window(gfn),
            Err(TransitionError::Illegal {
                operation: Operation::MapForCopy,
                from: StateKind::Ram
            }),
            "only a nominated (read-only) frame may be mapped"
        );
        table.nominate(gfn).unwrap();
        table.open_copy_window(gfn).unwrap();
        assert_eq!(
            table.open_copy_window(gfn),
            Err(TransitionError::WindowBusy { mapped: gfn })
        );
        assert_eq!(
            table.evict(gfn, Slot::new(0)),
            Err(TransitionError::StillMapped { gfn })
        );
        // The guest drops the frame mid-copy: it is freed on unmap, not now.
        assert_eq!(table.drop_frame(gfn), Ok(DropEffect::FreeHostFrameOnUnmap));
        assert_eq!(
            table.close_copy_window(),
            Ok(WindowClosed {
                gfn,
                free_host_frame: true
            })
        );
        assert_eq!(
            table.close_copy_window(),
            Err(TransitionError::WindowNotOpen)
        );
        // The pager's evict now fails: the copy it made is discarded.
        assert_eq!(
            table.evict(gfn, Slot::new(0)),
            Err(TransitionError::Illegal {
                operation: Operation::Evict,
                from: StateKind::Dropped
            })
        );
    }

    #[test]
    fn counts_follow_every_transition() {
        let mut states = [FrameState::Ram; 4];
        let mut words = [0u64; 1];
        let mut table = table(&mut states, &mut words);
        table.nominate(Gfn::new(1)).unwrap();
        table.nominate(Gfn::new(2)).unwrap();
        table.evict(Gfn::new(2), Slot::new(1)).unwrap();
        let _ = table.populate(Gfn::new(2)).unwrap();
        let _ = table.drop_frame(Gfn::new(3)).unwrap();
        let counts = table.counts();
        assert_eq!(
            counts,
            FrameCounts {
                ram: 1,
                paging_out: 1,
                paged: 0,
                paging_in: 1,
                dropped: 1
            }
        );
        assert_eq!(counts, FrameCounts::of(table.states()));
        assert_eq!(counts.resident(), 2);
        assert_eq!(counts.swapped(), 1);
    }

    #[test]
    fn new_rejects_a_corrupt_map() {
        let mut states = [
            FrameState::Paged { slot: Slot::new(1) },
            FrameState::PagingIn { slot: Slot::new(1) },
        ];
        let mut words = [0u64; 1];
        assert_eq!(
            FrameTable::new(&mut states, &mut words, 4).err(),
            Some(RecoveryError::SlotShared {
                slot: Slot::new(1),
                first: Gfn::new(0),
                second: Gfn::new(1)
            })
        );
    }

    #[test]
    fn pager_crash_rolls_back_nominations_and_revokes_the_window() {
        let mut states = [FrameState::Ram; 4];
        let mut words = [0u64; 1];
        let mut table = table(&mut states, &mut words);
        table.nominate(Gfn::new(1)).unwrap();
        table.nominate(Gfn::new(2)).unwrap();
        table.evict(Gfn::new(2), Slot::new(0)).unwrap();
        let _ = table.populate(Gfn::new(2)).unwrap();
        table.nominate(Gfn::new(3)).unwrap();
        table.open_copy_window(Gfn::new(3)).unwrap();
        let mut cancelled = [None; 4];
        let mut seen = 0;
        let cleanup = table.pager_crashed(|gfn| {
            cancelled[seen] = Some(gfn);
            seen += 1;
        });
        assert_eq!(cancelled[..seen], [Some(Gfn::new(1)), Some(Gfn::new(3))]);
        assert_eq!(
            cleanup,
            CrashCleanup {
                revoked_window: Some(WindowClosed {
                    gfn: Gfn::new(3),
                    free_host_frame: false
                }),
                cancelled_nominations: 2,
                page_ins_outstanding: 1,
            }
        );
        assert_eq!(table.state(Gfn::new(1)), Ok(FrameState::Ram));
        assert_eq!(
            table.state(Gfn::new(2)),
            Ok(FrameState::PagingIn { slot: Slot::new(0) })
        );
        assert_eq!(table.copy_window(), None);
    }
}

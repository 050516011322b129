//! The paging state of a guest frame, kept in the frame's own nested page
//! table entry: the authoritative gfn → swap-slot map lives in the core's
//! NPT, where no pager crash can reach it (issue #5 §1).
//!
//! The states and operations are xenpaging's (`xen/arch/x86/mm/mem_paging.c`:
//! `p2m_ram_rw`, `p2m_ram_paging_out`, `p2m_ram_paged`, `p2m_ram_paging_in`;
//! nominate, evict, populate, prep/load, and `XENMEM_decrease_reservation`
//! for drop). Xen keeps them in its p2m type bits the same way.
//!
//! # Encoding
//!
//! | state | present | writable | bits 9–11 (software) | address bits 12–51 |
//! |---|---|---|---|---|
//! | `Ram` | 1 | 1 | 0 | host frame |
//! | `PagingOut` | 1 | 0 | [`KIND_PAGING_OUT`] | host frame |
//! | `Paged` | 0 | 0 | [`KIND_PAGED`] | swap slot |
//! | `PagingIn` | 0 | 0 | [`KIND_PAGING_IN`] | swap slot |
//! | `Dropped` | 0 | 0 | [`KIND_DROPPED`] | 0 |
//!
//! The hardware ignores every bit of a non-present entry and bits 9–11 of a
//! present one (AMD APM vol. 2 §5.4, "available to software"), so the
//! encoding costs nothing at run time. An entry of 0 is "nothing here": not
//! guest RAM.
//!
//! # Transitions
//!
//! ```text
//!  Ram ──nominate──▶ PagingOut ──evict(slot)──▶ Paged{slot} ──populate──▶ PagingIn{slot}
//!   ▲                  │ cancel (guest write,                 │                 │
//!   │                  │  pager crash, failure)               │ load            │ load
//!   ├──────────────────┘                                      ▼                 │
//!   ◀──────────────────────────────────────────────────────────────────────────-┘
//!  any resident or paged state ──drop──▶ Dropped ──repopulate (zero frame)──▶ Ram
//! ```
//!
//! Every function here is a pure check: it returns the new state or says why
//! the operation is illegal, and the kernel applies it (frame allocation,
//! copies, TLB flushes) only on success.

/// Software kind of a present, read-only frame being paged out.
pub const KIND_PAGING_OUT: u64 = 1;
/// Software kind of a paged-out frame.
pub const KIND_PAGED: u64 = 2;
/// Software kind of a frame being paged in.
pub const KIND_PAGING_IN: u64 = 3;
/// Software kind of a frame the guest gave back.
pub const KIND_DROPPED: u64 = 4;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const KIND_SHIFT: u32 = 9;
const KIND_MASK: u64 = 0b111 << KIND_SHIFT;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Largest slot an entry can carry (address bits 12–51, but slots are `u32`).
pub const MAX_SLOT: u32 = u32::MAX;

/// A frame's paging state, decoded from its NPT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameState {
    /// Resident, read-write: host frame address.
    Ram(u64),
    /// Nominated for eviction: resident, read-only to the guest.
    PagingOut(u64),
    /// Evicted: the content is in this slot only.
    Paged(u32),
    /// A vCPU waits for it; the pager was asked to read this slot.
    PagingIn(u32),
    /// Given back by the guest: no frame, no slot; reads as zeros again.
    Dropped,
}

/// Why a transition was refused. The state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Illegal {
    /// The operation does not apply to the frame's current state.
    WrongState,
    /// `load` named a slot other than the one the frame is in.
    SlotMismatch,
}

impl FrameState {
    /// Decodes an NPT leaf entry; `None` for an entry that is not guest RAM
    /// (zero, or an unknown software kind).
    pub fn decode(entry: u64) -> Option<Self> {
        let kind = (entry & KIND_MASK) >> KIND_SHIFT;
        let address = entry & ADDRESS_MASK;
        if entry & PRESENT != 0 {
            return match kind {
                0 if entry & WRITABLE != 0 => Some(Self::Ram(address)),
                KIND_PAGING_OUT => Some(Self::PagingOut(address)),
                _ => None,
            };
        }
        let slot = u32::try_from(address >> 12).ok()?;
        match kind {
            KIND_PAGED => Some(Self::Paged(slot)),
            KIND_PAGING_IN => Some(Self::PagingIn(slot)),
            KIND_DROPPED if address == 0 => Some(Self::Dropped),
            _ => None,
        }
    }

    /// The NPT leaf entry for this state (guest RAM is user, executable).
    pub fn encode(self) -> u64 {
        let kind = |kind: u64| kind << KIND_SHIFT;
        match self {
            Self::Ram(frame) => (frame & ADDRESS_MASK) | PRESENT | WRITABLE | USER,
            Self::PagingOut(frame) => (frame & ADDRESS_MASK) | PRESENT | USER | kind(KIND_PAGING_OUT),
            Self::Paged(slot) => (u64::from(slot) << 12) | kind(KIND_PAGED),
            Self::PagingIn(slot) => (u64::from(slot) << 12) | kind(KIND_PAGING_IN),
            Self::Dropped => kind(KIND_DROPPED),
        }
    }

    /// The host frame backing it, if it is resident.
    pub fn frame(self) -> Option<u64> {
        match self {
            Self::Ram(frame) | Self::PagingOut(frame) => Some(frame),
            _ => None,
        }
    }

    /// The slot holding its content, if it is paged out.
    pub fn slot(self) -> Option<u32> {
        match self {
            Self::Paged(slot) | Self::PagingIn(slot) => Some(slot),
            _ => None,
        }
    }

    /// Pager: mark a resident frame for eviction (it becomes read-only).
    pub fn nominate(self) -> Result<Self, Illegal> {
        match self {
            Self::Ram(frame) => Ok(Self::PagingOut(frame)),
            _ => Err(Illegal::WrongState),
        }
    }

    /// Core: undo a nomination (the guest wrote the frame, the pager died or
    /// gave up).
    pub fn cancel(self) -> Result<Self, Illegal> {
        match self {
            Self::PagingOut(frame) => Ok(Self::Ram(frame)),
            _ => Err(Illegal::WrongState),
        }
    }

    /// Pager: the copy is durable in `slot`; the host frame may be freed.
    pub fn evict(self, slot: u32) -> Result<Self, Illegal> {
        match self {
            Self::PagingOut(_) => Ok(Self::Paged(slot)),
            _ => Err(Illegal::WrongState),
        }
    }

    /// Core: a vCPU touched a paged frame. Returns the new state and whether
    /// the pager must be asked (the first toucher asks; later ones only wait).
    pub fn populate(self) -> Result<(Self, bool), Illegal> {
        match self {
            Self::Paged(slot) => Ok((Self::PagingIn(slot), true)),
            Self::PagingIn(slot) => Ok((Self::PagingIn(slot), false)),
            _ => Err(Illegal::WrongState),
        }
    }

    /// Core, after a pager restart: a page-in request the dead pager held is
    /// forgotten, to be asked again (the waiters stay waiting).
    pub fn unrequest(self) -> Result<Self, Illegal> {
        match self {
            Self::PagingIn(slot) => Ok(Self::Paged(slot)),
            _ => Err(Illegal::WrongState),
        }
    }

    /// Pager: here is the content of `slot`. Legal from `PagingIn` and from
    /// `Paged` (bringing a page back when the target rises, as Xen's
    /// `p2m_mem_paging_prep` accepts `p2m_ram_paged`). The caller maps a new
    /// frame holding the content.
    pub fn load(self, slot: u32, frame: u64) -> Result<Self, Illegal> {
        match self {
            Self::Paged(current) | Self::PagingIn(current) if current == slot => Ok(Self::Ram(frame)),
            Self::Paged(_) | Self::PagingIn(_) => Err(Illegal::SlotMismatch),
            _ => Err(Illegal::WrongState),
        }
    }

    /// Guest: give the frame back. Returns the new state; the caller frees
    /// the host frame or the slot the old state held.
    pub fn drop_frame(self) -> Result<Self, Illegal> {
        match self {
            Self::Ram(_) | Self::PagingOut(_) | Self::Paged(_) | Self::PagingIn(_) => Ok(Self::Dropped),
            Self::Dropped => Err(Illegal::WrongState),
        }
    }

    /// Core: the guest touched a dropped frame: it gets a zeroed `frame`, no
    /// page-in.
    pub fn repopulate(self, frame: u64) -> Result<Self, Illegal> {
        match self {
            Self::Dropped => Ok(Self::Ram(frame)),
            _ => Err(Illegal::WrongState),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u64 = 0x1234_5000;

    fn all_states() -> [FrameState; 5] {
        [
            FrameState::Ram(FRAME),
            FrameState::PagingOut(FRAME),
            FrameState::Paged(7),
            FrameState::PagingIn(u32::MAX),
            FrameState::Dropped,
        ]
    }

    #[test]
    fn every_state_round_trips_through_its_entry() {
        for state in all_states() {
            assert_eq!(FrameState::decode(state.encode()), Some(state), "{state:?}");
        }
        assert_eq!(FrameState::Paged(0).encode() & PRESENT, 0, "a paged frame is not present");
        assert_eq!(FrameState::PagingOut(FRAME).encode() & WRITABLE, 0, "paging-out is read-only");
        assert_eq!(FrameState::Ram(FRAME).encode() & (PRESENT | WRITABLE | USER), PRESENT | WRITABLE | USER);
    }

    #[test]
    fn entries_that_are_not_guest_ram_decode_to_none() {
        assert_eq!(FrameState::decode(0), None);
        assert_eq!(FrameState::decode(5 << KIND_SHIFT), None, "unknown kind");
        assert_eq!(FrameState::decode(FRAME | PRESENT), None, "present, read-only, no kind");
        assert_eq!(FrameState::decode(FRAME | (KIND_DROPPED << KIND_SHIFT)), None, "a dropped frame carries no address");
        assert_eq!(FrameState::decode((1u64 << 45) | (KIND_PAGED << KIND_SHIFT)), None, "slot beyond u32");
    }

    #[test]
    fn a_frame_goes_out_and_comes_back() {
        let nominated = FrameState::Ram(FRAME).nominate().unwrap();
        assert_eq!(nominated, FrameState::PagingOut(FRAME));
        let paged = nominated.evict(9).unwrap();
        assert_eq!(paged.slot(), Some(9));
        assert_eq!(paged.frame(), None);
        let (waiting, ask) = paged.populate().unwrap();
        assert!(ask);
        assert_eq!(waiting.populate(), Ok((FrameState::PagingIn(9), false)), "a second toucher only waits");
        assert_eq!(waiting.load(8, 0x9000), Err(Illegal::SlotMismatch));
        assert_eq!(waiting.load(9, 0x9000), Ok(FrameState::Ram(0x9000)));
        assert_eq!(paged.load(9, 0x9000), Ok(FrameState::Ram(0x9000)), "prep from paged, Xen-style");
    }

    #[test]
    fn illegal_operations_are_refused() {
        for state in all_states() {
            let expect = |ok: bool, result: Result<FrameState, Illegal>| assert_eq!(result.is_ok(), ok, "{state:?}");
            expect(matches!(state, FrameState::Ram(_)), state.nominate());
            expect(matches!(state, FrameState::PagingOut(_)), state.cancel());
            expect(matches!(state, FrameState::PagingOut(_)), state.evict(1));
            expect(matches!(state, FrameState::Paged(_) | FrameState::PagingIn(_)), state.populate().map(|(s, _)| s));
            expect(matches!(state, FrameState::PagingIn(_)), state.unrequest());
            expect(!matches!(state, FrameState::Dropped), state.drop_frame());
            expect(matches!(state, FrameState::Dropped), state.repopulate(0x5000));
        }
        assert_eq!(FrameState::Ram(FRAME).load(1, 0), Err(Illegal::WrongState));
    }
}

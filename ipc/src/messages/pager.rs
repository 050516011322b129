//! The pager server's protocol (issue #5): xenpaging's operations
//! (`tools/xenpaging/xenpaging.c`, `xen/arch/x86/mm/mem_paging.c`) split
//! between the core, which owns every frame's paging state and does every
//! copy, and the pager, which decides and drives the swap device.
//!
//! ```text
//!  page-out:  pager ── Nominate{gfn, buffer} ─▶ core   frame Ram → PagingOut (read-only),
//!                                                       core copies it into DMA buffer
//!             pager ◀─ Nominated{gfn, buffer} ─ core   (or NominateRefused)
//!             pager writes data block + slot-table block to the device
//!             pager ── Evict{gfn, slot} ───────▶ core   PagingOut → Paged{slot}, host frame freed
//!             pager ◀─ Evicted{gfn, slot, ok} ─ core   ok = false: the guest wrote the frame
//!                                                       meanwhile; it stayed Ram, the slot is free
//!  page-in:   pager ◀─ PageIn{gfn, slot} ────── core   a vCPU touched Paged{slot}; it waits
//!             pager reads the slot, checks it against the slot table
//!             pager ── Load{gfn, slot, buffer} ─▶ core  core copies the buffer into a new
//!                                                       frame; PagingIn/Paged → Ram; waiters run
//!             pager ◀─ Loaded{gfn, slot} ────── core   the slot is free again
//!          or pager ── LoadFailed{gfn, reason} ─▶ core  the waiting domain is stopped
//!  readahead: pager ── Load{gfn, slot, buffer} ─▶ core  for a Paged frame nobody asked
//!                                                       for yet, checked the same way;
//!                                                       a failed readahead is not reported
//!  drop:      pager ◀─ Released{slot} ───────── core   the guest gave back a paged-out
//!                                                       frame (XENMEM_decrease_reservation)
//!             pager ◀─ Footprint{resident} ──── core   resident count changed by the guest
//! ```
//!
//! The pager never maps a guest frame: the core copies between the guest
//! frame and one page of the pager's DMA region (`buffer` is a page index
//! into it), so the pager sees a guest page only as the bytes the core put in
//! its own buffer. At every pager start the core sends each domain's
//! [`ToServer::Domain`] and [`ToServer::Footprint`], then its `Paged` frames
//! in [`ToServer::Paged`] batches, then [`ToServer::RebuildDone`], then a
//! [`ToServer::PageIn`] for every frame a vCPU waits on. Until
//! `RebuildDone` the pager must not nominate. The core answers at most one
//! message per pager request and keeps the pager's in-flight nominations
//! per domain below [`MAX_NOMINATIONS`]. A nomination the dead pager left is rolled
//! back by the core before the new pager starts.
//!
//! Budget: a body may take up to `SLOT_PAYLOAD - ENVELOPE_HEADER_MAX_SIZE`
//! = 242 bytes.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use super::{envelope_max_size, size, DecodeError, ErrorCode, FromServer, Message};

/// Most nominations of one domain the core holds at once; more are refused
/// with [`Refusal::TooManyInFlight`].
pub const MAX_NOMINATIONS: usize = 16;
/// Most (gfn, slot) pairs in one [`ToServer::Paged`] batch.
pub const PAGED_BATCH_LEN: usize = 14;
/// Buckets of the page-in latency histogram: bucket `i` counts page-ins that
/// took `[2^i, 2^(i+1))` µs (bucket 0 also counts < 1 µs, the last one
/// everything longer).
pub const LATENCY_BUCKETS: usize = 16;

/// One paged-out frame of a rebuild batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagedFrame {
    /// The guest frame number.
    pub gfn: u64,
    /// The domain-relative swap slot holding its content.
    pub slot: u32,
}

/// Why the core refused a nomination. The frame is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The gfn is beyond the domain's memory.
    OutOfRange,
    /// The frame is never paged (gfn 0, the boot-information page).
    NotPageable,
    /// The frame is not resident RAM (already paging out, paged, paging in,
    /// or dropped).
    NotRam,
    /// The buffer index is beyond the pager's DMA region.
    BadBuffer,
    /// The pager already has the most nominations the core allows in flight.
    TooManyInFlight,
}

/// Why a page-in failed: the waiting domain is stopped with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadFailure {
    /// The device reported an error reading the slot.
    ReadError,
    /// The slot-table entry does not name this domain and gfn, or is free.
    WrongOwner,
    /// The data's CRC-32C does not match the slot-table entry.
    BadChecksum,
}

impl LoadFailure {
    /// A fixed description for the console.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ReadError => "page-in failed: the swap device reported a read error",
            Self::WrongOwner => "page-in failed: the swap slot does not hold this frame",
            Self::BadChecksum => "page-in failed: the swap slot's data does not match its checksum",
        }
    }
}

/// Why an eviction the pager started did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictFailure {
    /// The domain's swap partition has no free slot.
    DeviceFull,
    /// The device reported an error writing the slot.
    WriteError,
}

/// Core → pager.
// Messages live only between creation and encoding (or in the core's small
// reply queue); a `Paged` batch is the price of sending the map in few slots.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToServer {
    /// A domain's size and its resident target, sent at every pager start
    /// (so a restarted pager relearns them) and whenever the target changes.
    Domain {
        /// The domain's id.
        domain: u16,
        /// Its memory, in 4 KiB pages.
        memory_pages: u64,
        /// The resident target, in pages.
        target_pages: u64,
    },
    /// Rebuild, after `Domain`: frames of `domain` that are paged out, and
    /// where (the core's authoritative gfn → slot map).
    Paged {
        /// The domain's id.
        domain: u16,
        /// Up to [`PAGED_BATCH_LEN`] frames.
        frames: Vec<PagedFrame, PAGED_BATCH_LEN>,
    },
    /// Rebuild complete: every `Domain` and `Paged` has been sent.
    RebuildDone,
    /// The frame is now `PagingOut` (read-only to the guest) and its content
    /// is in DMA page `buffer`.
    Nominated {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// The DMA page holding its content.
        buffer: u16,
    },
    /// The nomination of `gfn` was refused; nothing changed.
    NominateRefused {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// Why.
        reason: Refusal,
    },
    /// The answer to `Evict`. `ok`: the frame is `Paged{slot}` and its host frame is free. Not ok:
    /// the frame is `Ram` again (the guest wrote it during the copy, the
    /// nomination was cancelled, or the eviction failed) and `slot` is free.
    Evicted {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// The slot the pager wrote.
        slot: u32,
        /// Whether the frame is now paged out.
        ok: bool,
    },
    /// A vCPU touched a paged-out frame and waits for it: read `slot` and
    /// `Load` it. Sent once per frame (again after a pager restart).
    PageIn {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// Where its content is.
        slot: u32,
    },
    /// The frame is resident again (after `Load`); `slot` is free.
    Loaded {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// The slot it came from, now free.
        slot: u32,
    },
    /// A slot the core no longer uses: the guest gave back the frame that
    /// was paged out to it (`XENMEM_decrease_reservation`). Sent
    /// asynchronously; until then the core keeps the slot marked in use.
    Released {
        /// The domain's id.
        domain: u16,
        /// The slot, now free.
        slot: u32,
    },
    /// The domain's resident frames changed other than by the pager's own
    /// operations (the guest gave frames back or touched dropped ones), or a
    /// new pager instance needs it. Coalesced: only the latest count is sent.
    Footprint {
        /// The domain's id.
        domain: u16,
        /// Frames backed by host memory now.
        resident_pages: u64,
    },
    /// The core refused a message from the pager, for this reason.
    Error {
        /// What was wrong.
        code: ErrorCode,
    },
}

/// Pager → core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCore {
    /// The pager has started and reads its ring.
    Ready,
    /// The pager is alive; `count` increases by one per heartbeat.
    Heartbeat {
        /// Heartbeats sent by this instance so far.
        count: u64,
    },
    /// The pager's verdict on a domain's target.
    Target {
        /// The domain's id.
        domain: u16,
        /// Whether the target is within `floor ..= memory`.
        accepted: bool,
        /// The lowest target the pager accepts for this domain, pages.
        floor_pages: u64,
    },
    /// The size of a domain's swap partition: its slots are `0..slots`.
    /// Sent after the device is formatted or loaded, before any `Evict` of
    /// the domain; the core refuses slots outside it.
    Partition {
        /// The domain's id.
        domain: u16,
        /// Slots in the partition.
        slots: u32,
    },
    /// Nominate `gfn` for eviction and copy it into DMA page `buffer`.
    Nominate {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// The DMA page to copy it into.
        buffer: u16,
    },
    /// The copy of nominated `gfn` is durable in `slot` (data and
    /// slot-table entry written): evict the frame.
    Evict {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// The slot holding its content.
        slot: u32,
    },
    /// The eviction of nominated `gfn` failed: cancel the nomination.
    EvictFailed {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// Why.
        reason: EvictFailure,
    },
    /// The content of `gfn`, read from `slot` and verified, is in DMA page
    /// `buffer`: make the frame resident. Valid for a frame in `PagingIn`
    /// (a vCPU waits) or `Paged` (readahead) with that slot.
    Load {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// The slot it was read from.
        slot: u32,
        /// The DMA page holding it.
        buffer: u16,
    },
    /// `gfn` could not be read back: stop the domain waiting for it.
    LoadFailed {
        /// The domain's id.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// Why.
        reason: LoadFailure,
    },
    /// The pager's per-domain counters for `hvctl stats`.
    Stats {
        /// The domain's id.
        domain: u16,
        /// Free slots in its partition.
        free_slots: u32,
        /// Evictions that failed (device full, write errors) so far.
        evict_failures: u64,
        /// Page-in latency, request to `Load`, log2 µs buckets.
        latency: [u32; LATENCY_BUCKETS],
    },
}

/// What the core checks pager messages against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagerContext {
    /// Number of domains.
    pub domains: u16,
}

const GFN_FIELDS: usize = size::U16 + size::U64;

impl Message for ToServer {
    const MAX_ENCODED_SIZE: usize = size::VARIANT
        + size::max(
            size::max(size::U16 + 2 * size::U64, ErrorCode::MAX_ENCODED_SIZE),
            size::max(
                size::U16 + size::collection(PAGED_BATCH_LEN, size::U64 + size::U32),
                GFN_FIELDS + size::max(size::U32 + size::U8, size::U16),
            ),
        );
}

impl Message for ToCore {
    const MAX_ENCODED_SIZE: usize = size::VARIANT
        + size::max(
            size::max(size::U64, size::U16 + size::U8 + size::U64),
            size::max(
                GFN_FIELDS + size::U32 + size::U16,
                size::U16 + size::U32 + size::U64 + LATENCY_BUCKETS * size::U32,
            ),
        );
}

impl FromServer for ToCore {
    type Context = PagerContext;

    fn validate(&self, context: &PagerContext) -> Result<(), DecodeError> {
        let domain = match self {
            Self::Ready | Self::Heartbeat { .. } => return Ok(()),
            Self::Target { domain, .. }
            | Self::Partition { domain, .. }
            | Self::Nominate { domain, .. }
            | Self::Evict { domain, .. }
            | Self::EvictFailed { domain, .. }
            | Self::Load { domain, .. }
            | Self::LoadFailed { domain, .. }
            | Self::Stats { domain, .. } => *domain,
        };
        if domain >= context.domains {
            return Err(DecodeError::OutOfRange { field: "domain" });
        }
        Ok(())
    }
}

const _: () = assert!(envelope_max_size::<ToServer>() <= crate::ring::SLOT_PAYLOAD);
const _: () = assert!(envelope_max_size::<ToCore>() <= crate::ring::SLOT_PAYLOAD);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{decode_from_core, decode_from_server, encode, Envelope};

    fn encoded_len<M: Message>(message: M) -> usize {
        let mut buffer = [0u8; 256];
        encode(&Envelope::new(u32::MAX, message), &mut buffer).unwrap()
    }

    #[test]
    fn worst_cases_fit_and_round_trip() {
        let mut buffer = [0u8; 256];
        let domain = ToServer::Domain { domain: u16::MAX, memory_pages: u64::MAX, target_pages: u64::MAX };
        let length = encode(&Envelope::new(u32::MAX, domain.clone()), &mut buffer).unwrap();
        assert!(length <= envelope_max_size::<ToServer>());
        assert_eq!(decode_from_core::<ToServer>(&buffer[..length], u32::MAX).unwrap(), domain);
        let frames = Vec::from_slice(&[PagedFrame { gfn: u64::MAX, slot: u32::MAX }; PAGED_BATCH_LEN]).unwrap();
        let paged = ToServer::Paged { domain: u16::MAX, frames };
        assert_eq!(encoded_len(paged.clone()), envelope_max_size::<ToServer>(), "the Paged batch is the largest");
        let length = encode(&Envelope::new(7, paged.clone()), &mut buffer).unwrap();
        assert_eq!(decode_from_core::<ToServer>(&buffer[..length], 7).unwrap(), paged);
        let stats = ToCore::Stats { domain: u16::MAX, free_slots: u32::MAX, evict_failures: u64::MAX, latency: [u32::MAX; LATENCY_BUCKETS] };
        assert_eq!(encoded_len(stats), envelope_max_size::<ToCore>(), "Stats is the largest");
        for message in [
            ToCore::Load { domain: u16::MAX, gfn: u64::MAX, slot: u32::MAX, buffer: u16::MAX },
            ToCore::Evict { domain: u16::MAX, gfn: u64::MAX, slot: u32::MAX },
            ToCore::LoadFailed { domain: u16::MAX, gfn: u64::MAX, reason: LoadFailure::BadChecksum },
        ] {
            assert!(encoded_len(message) <= envelope_max_size::<ToCore>());
        }
        for message in [
            ToServer::Evicted { domain: u16::MAX, gfn: u64::MAX, slot: u32::MAX, ok: true },
            ToServer::Released { domain: u16::MAX, slot: u32::MAX },
            ToServer::Footprint { domain: u16::MAX, resident_pages: u64::MAX },
            ToServer::NominateRefused { domain: u16::MAX, gfn: u64::MAX, reason: Refusal::TooManyInFlight },
        ] {
            assert!(encoded_len(message) <= envelope_max_size::<ToServer>());
        }
    }

    #[test]
    fn domains_out_of_range_are_refused() {
        let mut buffer = [0u8; 64];
        let context = PagerContext { domains: 2 };
        let good = ToCore::Target { domain: 1, accepted: false, floor_pages: 512 };
        let length = encode(&Envelope::new(3, good.clone()), &mut buffer).unwrap();
        assert_eq!(decode_from_server::<ToCore>(&buffer[..length], 3, &context).unwrap(), good);
        for bad in [
            ToCore::Target { domain: 2, accepted: true, floor_pages: 0 },
            ToCore::Nominate { domain: 2, gfn: 5, buffer: 0 },
            ToCore::Load { domain: 9, gfn: 5, slot: 0, buffer: 0 },
        ] {
            let length = encode(&Envelope::new(3, bad), &mut buffer).unwrap();
            assert_eq!(
                decode_from_server::<ToCore>(&buffer[..length], 3, &context),
                Err(DecodeError::OutOfRange { field: "domain" })
            );
        }
    }
}

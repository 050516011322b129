//! Guest paging, the mechanism half (issue #5): every guest frame's paging
//! state lives in its NPT entry ([`hypervisor_core::frame_state`]), each
//! domain's slot map and counters live here, and the core does every copy
//! between a guest frame and a page of the pager's DMA region. The pager (a
//! ring-3 server) only decides and drives the swap device; it can die at any
//! instant without losing a page:
//!
//! * a nomination in flight is rolled back ([`Machine::pager_stopped`]): the
//!   frame was never freed, it becomes `Ram` again;
//! * a page-in in flight stays `PagingIn` with its vCPUs waiting, and the new
//!   instance is asked again after its rebuild ([`PagerLink`]);
//! * a slot is marked in use when a frame is evicted to it and stays marked
//!   until the frame is loaded back or the pager has been told it is free.
//!
//! The hot path never waits on the pager: a fault on a paged frame marks it
//! `PagingIn`, queues the request and blocks only the faulting vCPU.

use heapless::{Deque, Vec};
use hypervisor_core::addr::{HostPhysAddr, PAGE_SIZE};
use hypervisor_core::frame::FrameAllocator;
use hypervisor_core::frame_state::FrameState;
use hypervisor_core::guest_memory::{GuestMemory, MemoryError, Release};
use hypervisor_core::addr::GuestPhysAddr;
use ipc::messages::pager::{self as wire, EvictFailure, PagedFrame, Refusal, ToCore, ToServer, MAX_NOMINATIONS, PAGED_BATCH_LEN};
use ipc::ring::SLOT_COUNT;

use crate::arch::memory::OwnedFrames;
use crate::arch::{cpu, lapic};
use super::bench::{TickHistogram, TICK_HISTOGRAM_PAGES};
use super::vcpu::DomainMemory;

/// Buckets of the page-in latency histograms (log2 µs).
pub const LATENCY_BUCKETS: usize = wire::LATENCY_BUCKETS;
/// Frames that are never paged: gfn 0 (xenpaging never picks it) and the
/// boot-information page.
const UNPAGEABLE: [u64; 2] = [0, super::domain::BOOT_INFO_PAGE / PAGE_SIZE];

/// One domain's paging mechanism state.
#[derive(Debug)]
pub struct DomainPaging {
    /// The domain's memory, pages.
    pub memory_pages: u64,
    /// The resident target, pages (`memory_pages`: no paging).
    pub target_pages: u64,
    /// Slots of the domain's swap partition (0 until the pager says).
    pub partition_slots: u32,
    /// Two bitmaps of `bitmap_pages` each: slots in use, then slots whose
    /// release the pager has not been told yet.
    slot_maps: HostPhysAddr,
    bitmap_pages: u64,
    /// Frames backed by host memory (`Ram` and `PagingOut`).
    pub resident: u64,
    /// Frames paged out (`Paged` and `PagingIn`).
    pub paged: u64,
    /// Frames given back by the guest.
    pub dropped: u64,
    /// Frames given back while paged out (their slots were released without
    /// a page-in).
    pub dropped_paged: u64,
    /// Dropped frames the guest touched again: zero-filled, no page-in.
    pub repopulated: u64,
    /// Frames nominated (`PagingOut`) now.
    pub nominated: Vec<u64, MAX_NOMINATIONS>,
    /// Released slots not yet reported.
    pub pending_releases: u64,
    /// Evictions completed.
    pub pages_out: u64,
    /// Page-ins completed.
    pub pages_in: u64,
    /// Nominations that did not end in an eviction (guest writes, pager
    /// failures, pager deaths).
    pub evict_failures: u64,
    /// The pager reported the partition full (logged once per episode).
    pub swap_full: bool,
    /// Free slots, as the pager last reported.
    pub pager_free_slots: Option<u32>,
    /// Page-in latency from the fault to the frame being back, log2 µs.
    pub latency: [u32; LATENCY_BUCKETS],
    /// The resident count the pager was last told.
    pub footprint_sent: Option<u64>,
    /// Bumped whenever a mapping loses rights; vCPUs flush their ASID when
    /// they see a new value.
    pub tlb_generation: u64,
    /// The domain's index (for TLB shootdowns).
    domain: usize,
    /// Measurements for `make bench` (never read by the mechanism).
    pub figures: PagingFigures,
}

/// What `make bench` reports about one domain's paging (issue #5 §7),
/// logged by [`log_bench`] when the domain ends. Everything lives in frames
/// of its own (two words here: every domain slot holds one, and the machine
/// lives on the boot stack).
#[derive(Debug)]
pub struct PagingFigures {
    /// Page-in latency, first fault to the frame being back, TSC ticks.
    latency_ticks: TickHistogram,
    /// A frame with the TSC of the first and the last eviction (words 0, 1)
    /// and load (words 2, 3), 0 before the first; then two scratch frames
    /// to time the in-core copy on.
    windows: HostPhysAddr,
}

/// Which window of [`PagingFigures`].
#[derive(Debug, Clone, Copy)]
enum Window {
    Out = 0,
    In = 2,
}

impl PagingFigures {
    /// Frames [`Self::new`] takes: the histogram's, the windows', two scratch.
    const PAGES: usize = TICK_HISTOGRAM_PAGES + 3;

    fn new(frames: HostPhysAddr) -> Self {
        let windows = HostPhysAddr::new_truncate(frames.as_u64() + TICK_HISTOGRAM_PAGES as u64 * PAGE_SIZE);
        OwnedFrames.fill(windows, 0);
        Self { latency_ticks: TickHistogram::new(frames), windows }
    }

    /// Records an event of `window` at `now` (TSC).
    fn widen(&mut self, window: Window, now: u64) {
        let mut memory = OwnedFrames;
        let first = window as usize;
        if memory.read_u64(self.windows, first) == 0 {
            memory.write_u64(self.windows, first, now);
        }
        memory.write_u64(self.windows, first + 1, now);
    }

    /// The first and the last event of `window`, if there was one.
    fn window(&self, window: Window) -> Option<(u64, u64)> {
        let first = OwnedFrames.read_u64(self.windows, window as usize);
        (first != 0).then(|| (first, OwnedFrames.read_u64(self.windows, window as usize + 1)))
    }

    /// The scratch frames.
    fn scratch(&self) -> (HostPhysAddr, HostPhysAddr) {
        let at = |page: u64| HostPhysAddr::new_truncate(self.windows.as_u64() + page * PAGE_SIZE);
        (at(1), at(2))
    }
}

/// Why a domain's paging state could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

fn bit_location(base: HostPhysAddr, bit: u64) -> (HostPhysAddr, usize, u64) {
    let word = bit / 64;
    let frame = HostPhysAddr::new_truncate(base.as_u64() + (word / 512) * PAGE_SIZE);
    (frame, (word % 512) as usize, 1u64 << (bit % 64))
}

impl DomainPaging {
    /// Paging state for a domain of `memory_pages`, all resident.
    pub fn new(frames: &mut FrameAllocator<'_>, domain: usize, memory_pages: u64, target_pages: u64) -> Result<Self, OutOfMemory> {
        let bitmap_pages = memory_pages.div_ceil(8 * PAGE_SIZE).max(1);
        let slot_maps = frames.allocate_contiguous(2 * bitmap_pages as usize, 1).ok_or(OutOfMemory)?;
        let mut memory = OwnedFrames;
        for page in 0..2 * bitmap_pages {
            memory.fill(HostPhysAddr::new_truncate(slot_maps.as_u64() + page * PAGE_SIZE), 0);
        }
        let Some(figure_frames) = frames.allocate_contiguous(PagingFigures::PAGES, 1) else {
            for page in 0..2 * bitmap_pages {
                let _ = frames.free(HostPhysAddr::new_truncate(slot_maps.as_u64() + page * PAGE_SIZE));
            }
            return Err(OutOfMemory);
        };
        Ok(Self {
            memory_pages,
            target_pages,
            partition_slots: 0,
            slot_maps,
            bitmap_pages,
            resident: memory_pages,
            paged: 0,
            dropped: 0,
            dropped_paged: 0,
            repopulated: 0,
            nominated: Vec::new(),
            pending_releases: 0,
            pages_out: 0,
            pages_in: 0,
            evict_failures: 0,
            swap_full: false,
            pager_free_slots: None,
            latency: [0; LATENCY_BUCKETS],
            footprint_sent: None,
            tlb_generation: 0,
            domain,
            figures: PagingFigures::new(figure_frames),
        })
    }

    fn map_bit(&self, map: u64, slot: u32) -> bool {
        let base = HostPhysAddr::new_truncate(self.slot_maps.as_u64() + map * self.bitmap_pages * PAGE_SIZE);
        let (frame, index, mask) = bit_location(base, u64::from(slot));
        OwnedFrames.read_u64(frame, index) & mask != 0
    }

    fn set_map_bit(&mut self, map: u64, slot: u32, value: bool) {
        let base = HostPhysAddr::new_truncate(self.slot_maps.as_u64() + map * self.bitmap_pages * PAGE_SIZE);
        let (frame, index, mask) = bit_location(base, u64::from(slot));
        let mut memory = OwnedFrames;
        let word = memory.read_u64(frame, index);
        memory.write_u64(frame, index, if value { word | mask } else { word & !mask });
    }

    /// Whether `slot` may take a new page: inside the partition, and not in
    /// use (nor awaiting its release report).
    pub fn slot_free(&self, slot: u32) -> bool {
        slot < self.partition_slots && u64::from(slot) < self.memory_pages && !self.map_bit(0, slot)
    }

    fn take_slot(&mut self, slot: u32) {
        self.set_map_bit(0, slot, true);
    }

    fn free_slot(&mut self, slot: u32) {
        if u64::from(slot) < self.memory_pages {
            self.set_map_bit(0, slot, false);
        }
    }

    /// The slot stays in use until the pager hears it is free.
    fn release_slot_later(&mut self, slot: u32) {
        if u64::from(slot) < self.memory_pages && !self.map_bit(1, slot) {
            self.set_map_bit(1, slot, true);
            self.pending_releases += 1;
        }
    }

    /// The next slot whose release must be reported: from `cursor` on, then
    /// from the start.
    pub fn next_release(&self, cursor: u32) -> Option<u32> {
        if self.pending_releases == 0 {
            return None;
        }
        let from = |start: u32| (u64::from(start)..self.memory_pages).map(|slot| slot as u32).find(|&slot| self.map_bit(1, slot));
        from(cursor).or_else(|| from(0))
    }

    /// The pager has been told `slot` is free.
    pub fn release_reported(&mut self, slot: u32) {
        self.set_map_bit(1, slot, false);
        self.free_slot(slot);
        self.pending_releases = self.pending_releases.saturating_sub(1);
    }

    /// Drops `gfn` from the nominations in flight; whether it was there.
    fn forget_nomination(&mut self, gfn: u64) -> bool {
        let position = self.nominated.iter().position(|&nominated| nominated == gfn);
        position.map(|position| self.nominated.swap_remove(position)).is_some()
    }

    /// Counts one page-in that took `ticks` at `tsc_hz`.
    pub fn record_latency(&mut self, ticks: u64, tsc_hz: u64) {
        let micros = ticks.saturating_mul(1_000_000) / tsc_hz.max(1);
        let bucket = (64 - micros.leading_zeros() as usize).saturating_sub(1).min(LATENCY_BUCKETS - 1);
        self.latency[bucket] = self.latency[bucket].saturating_add(1);
        self.figures.latency_ticks.add(ticks);
    }

    /// A nested mapping of the domain lost rights: every vCPU flushes
    /// before it enters again, and those running on other pCPUs are forced
    /// out first, so none keeps writing through a stale TLB entry (the
    /// caller copies the frame next).
    fn downgraded(&mut self) {
        self.tlb_generation = self.tlb_generation.wrapping_add(1);
        super::smp::shoot_down(self.domain);
    }
}

/// Writes `state` into the NPT entry at (`table`, `index`).
fn set_state(table: HostPhysAddr, index: usize, state: FrameState) {
    OwnedFrames.write_u64(table, index, state.encode());
}

/// Guest memory as exit handling sees it, plus giving frames back.
pub struct GuestAccess<'m, 'f> {
    /// The domain's memory.
    pub memory: &'m mut DomainMemory,
    /// Its paging state.
    pub paging: &'m mut DomainPaging,
    /// Where freed host frames go.
    pub frames: &'m mut FrameAllocator<'f>,
}

impl GuestMemory for GuestAccess<'_, '_> {
    fn read(&self, address: GuestPhysAddr, buffer: &mut [u8]) -> Result<(), MemoryError> {
        self.memory.read(address, buffer)
    }

    fn write(&mut self, address: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        self.memory.write(address, data)
    }

    fn release(&mut self, gfn: u64) -> Release {
        if UNPAGEABLE.contains(&gfn) || gfn >= self.paging.memory_pages {
            return Release::Invalid;
        }
        let Some((table, index, state)) = self.memory.frame_state(gfn * PAGE_SIZE) else { return Release::Invalid };
        let Ok(dropped) = state.drop_frame() else { return Release::Invalid };
        set_state(table, index, dropped);
        self.paging.downgraded();
        match state {
            FrameState::Ram(frame) | FrameState::PagingOut(frame) => {
                if self.paging.forget_nomination(gfn) {
                    self.paging.evict_failures += 1;
                }
                let _ = self.frames.free(HostPhysAddr::new_truncate(frame));
                self.paging.resident = self.paging.resident.saturating_sub(1);
            }
            FrameState::Paged(slot) | FrameState::PagingIn(slot) => {
                // A PagingIn frame has waiters; they retry and find it
                // dropped, so it is repopulated with zeros. The page-in
                // answer, if one comes, finds the frame no longer paged.
                self.paging.release_slot_later(slot);
                self.paging.paged = self.paging.paged.saturating_sub(1);
                self.paging.dropped_paged += 1;
            }
            FrameState::Dropped => {}
        }
        self.paging.dropped += 1;
        Release::Released
    }
}

/// What a guest access to a non-resident frame leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The frame is usable now: run the instruction again.
    Retry,
    /// The frame is being paged in: the vCPU waits.
    Wait,
    /// Not guest RAM (the caller reports the fault), or no memory left.
    Fail(&'static str),
}

/// Resolves a guest access to `address` of the domain whose memory and
/// paging state are given: repopulates dropped frames, cancels a nomination
/// the guest writes to, and marks paged frames `PagingIn` (returning `Wait`;
/// the caller records the request).
pub fn touch(memory: &DomainMemory, paging: &mut DomainPaging, frames: &mut FrameAllocator<'_>, address: u64, write: bool) -> Touch {
    let gfn = address / PAGE_SIZE;
    let Some((table, index, state)) = memory.frame_state(address) else { return Touch::Fail("not guest RAM") };
    match state {
        FrameState::Ram(_) => {
            // A stale translation: flush and retry.
            paging.downgraded();
            Touch::Retry
        }
        FrameState::PagingOut(frame) => {
            if write {
                // Xen's rule: a frame the guest writes while it is being
                // paged out stays resident; the eviction will fail.
                set_state(table, index, FrameState::Ram(frame));
                paging.forget_nomination(gfn);
                paging.evict_failures += 1;
            }
            paging.downgraded();
            Touch::Retry
        }
        FrameState::Paged(_) | FrameState::PagingIn(_) => {
            if let Ok((next, _)) = state.populate() {
                set_state(table, index, next);
            }
            Touch::Wait
        }
        FrameState::Dropped => {
            let Some(frame) = frames.allocate() else { return Touch::Fail("no free host memory to give back a dropped frame") };
            OwnedFrames.fill(frame, 0);
            set_state(table, index, FrameState::Ram(frame.as_u64()));
            paging.dropped = paging.dropped.saturating_sub(1);
            paging.resident += 1;
            paging.repopulated += 1;
            Touch::Retry
        }
    }
}

/// A page-in the core waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageIn {
    /// The domain.
    pub domain: u16,
    /// The frame.
    pub gfn: u64,
    /// The current pager instance has been asked.
    pub asked: bool,
    /// TSC of the first fault on it.
    pub since: u64,
}

/// Where the rebuild stream of a new pager instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// `Domain` and `Footprint` of this domain next.
    Domain(u16),
    /// `Paged` batches of this domain, from this gfn.
    Paged(u16, u64),
    /// `RebuildDone` next.
    Done,
    /// Sent: the pager serves.
    Complete,
}

/// The core's side of the pager protocol.
#[derive(Debug)]
pub struct PagerLink {
    /// The pager server's index.
    pub server: Option<usize>,
    /// Replies that did not fit the ring yet.
    pub outbox: Deque<ToServer, SLOT_COUNT>,
    /// The rebuild stream's progress.
    pub rebuild: Rebuild,
    /// Page-ins vCPUs wait for.
    pub page_ins: Vec<PageIn, { super::run::MAX_VCPUS_TOTAL }>,
    /// Where the release scan of each domain goes on.
    pub release_cursor: [u32; ipc::boot::MAX_DOMAINS],
}

impl Default for PagerLink {
    fn default() -> Self {
        Self {
            server: None,
            outbox: Deque::new(),
            rebuild: Rebuild::Complete,
            page_ins: Vec::new(),
            release_cursor: [0; ipc::boot::MAX_DOMAINS],
        }
    }
}

impl PagerLink {
    /// A new instance starts: everything is sent again.
    pub fn restart(&mut self) {
        self.outbox.clear();
        self.rebuild = Rebuild::Domain(0);
        for request in self.page_ins.iter_mut() {
            request.asked = false;
        }
    }

    /// Records that a vCPU waits for (`domain`, `gfn`).
    pub fn request(&mut self, domain: u16, gfn: u64, now: u64) {
        if !self.page_ins.iter().any(|request| request.domain == domain && request.gfn == gfn) {
            // At most one request per waiting vCPU: the list has room.
            let _ = self.page_ins.push(PageIn { domain, gfn, asked: false, since: now });
        }
    }

    /// Forgets the request for (`domain`, `gfn`); returns when it started.
    pub fn complete(&mut self, domain: u16, gfn: u64) -> Option<u64> {
        let position = self.page_ins.iter().position(|request| request.domain == domain && request.gfn == gfn)?;
        Some(self.page_ins.swap_remove(position).since)
    }

    /// Replies the ring could not take wait here; `false` if even this is full.
    pub fn queue(&mut self, message: ToServer) -> bool {
        self.outbox.push_back(message).is_ok()
    }

    /// Room for replies: how many pager messages may be handled now.
    pub fn reply_room(&self) -> usize {
        SLOT_COUNT - self.outbox.len()
    }
}

/// What handling one pager message produced for the machine to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the reply.
    None,
    /// The frame is back: wake the vCPUs waiting for it.
    Loaded {
        /// The domain.
        domain: u16,
        /// The frame.
        gfn: u64,
    },
    /// The domain must stop: its frame cannot be read back.
    StopDomain {
        /// The domain.
        domain: u16,
        /// The frame.
        gfn: u64,
        /// Why.
        reason: &'static str,
    },
    /// The pager sent something the protocol does not allow now.
    Unexpected,
}

/// The DMA page `buffer` of the pager's grant, if it exists.
pub fn dma_page(dma: Option<(HostPhysAddr, u64)>, buffer: u16) -> Option<HostPhysAddr> {
    let (base, pages) = dma?;
    (u64::from(buffer) < pages).then(|| HostPhysAddr::new_truncate(base.as_u64() + u64::from(buffer) * PAGE_SIZE))
}

fn copy_frame(from: HostPhysAddr, to: HostPhysAddr) {
    OwnedFrames.copy_frame(from, to);
}

/// Handles one paging request of the pager for a domain; `reply` takes the
/// answer. `dma` is the pager's DMA region (base, pages).
pub fn handle(
    message: &ToCore,
    memory: &DomainMemory,
    paging: &mut DomainPaging,
    frames: &mut FrameAllocator<'_>,
    dma: Option<(HostPhysAddr, u64)>,
    reply: &mut dyn FnMut(ToServer),
) -> Effect {
    match *message {
        ToCore::Partition { slots, .. } => {
            // A partition smaller than a slot in use would orphan a page.
            let highest_used = (0..paging.memory_pages.min(u64::from(paging.partition_slots)))
                .rev()
                .find(|&slot| paging.map_bit(0, slot as u32));
            if highest_used.is_some_and(|slot| slot >= u64::from(slots)) {
                return Effect::Unexpected;
            }
            paging.partition_slots = slots.min(u32::try_from(paging.memory_pages).unwrap_or(u32::MAX));
            Effect::None
        }
        ToCore::Nominate { domain, gfn, buffer } => {
            let refuse = |reason| ToServer::NominateRefused { domain, gfn, reason };
            if gfn >= paging.memory_pages {
                reply(refuse(Refusal::OutOfRange));
                return Effect::None;
            }
            if UNPAGEABLE.contains(&gfn) {
                reply(refuse(Refusal::NotPageable));
                return Effect::None;
            }
            let Some(target) = dma_page(dma, buffer) else {
                reply(refuse(Refusal::BadBuffer));
                return Effect::None;
            };
            if paging.nominated.is_full() {
                reply(refuse(Refusal::TooManyInFlight));
                return Effect::None;
            }
            let Some((table, index, state)) = memory.frame_state(gfn * PAGE_SIZE) else {
                reply(refuse(Refusal::OutOfRange));
                return Effect::None;
            };
            let Ok(next) = state.nominate() else {
                reply(refuse(Refusal::NotRam));
                return Effect::None;
            };
            // Read-only first, then copy: `downgraded` forces the domain's
            // vCPUs on other pCPUs out, and each flushes before it runs
            // again, so the copy is of the frame as it will be evicted
            // unless a write cancels the nomination.
            set_state(table, index, next);
            paging.downgraded();
            let _ = paging.nominated.push(gfn);
            if let Some(frame) = next.frame() {
                copy_frame(HostPhysAddr::new_truncate(frame), target);
            }
            reply(ToServer::Nominated { domain, gfn, buffer });
            Effect::None
        }
        ToCore::Evict { domain, gfn, slot } => {
            let failed = ToServer::Evicted { domain, gfn, slot, ok: false };
            let entry = memory.frame_state(gfn * PAGE_SIZE).filter(|_| paging.nominated.contains(&gfn));
            let Some((table, index, state)) = entry else {
                // The guest wrote it (or gave it back) meanwhile.
                reply(failed);
                return Effect::None;
            };
            if !paging.slot_free(slot) {
                // A slot outside the partition or already holding a page:
                // the frame stays, the pager hears the eviction failed.
                if let Ok(back) = state.cancel() {
                    set_state(table, index, back);
                }
                paging.forget_nomination(gfn);
                paging.evict_failures += 1;
                reply(failed);
                return Effect::Unexpected;
            }
            let (Ok(next), Some(frame)) = (state.evict(slot), state.frame()) else {
                reply(failed);
                return Effect::None;
            };
            paging.forget_nomination(gfn);
            set_state(table, index, next);
            paging.downgraded();
            paging.take_slot(slot);
            // The frame is unmapped (the flush is pending for every vCPU of
            // the domain, none of which runs before it) and nothing else
            // refers to it.
            let _ = frames.free(HostPhysAddr::new_truncate(frame));
            paging.resident = paging.resident.saturating_sub(1);
            paging.paged += 1;
            paging.pages_out += 1;
            paging.figures.widen(Window::Out, cpu::rdtsc());
            paging.swap_full = false;
            reply(ToServer::Evicted { domain, gfn, slot, ok: true });
            Effect::None
        }
        ToCore::EvictFailed { gfn, reason, .. } => {
            if paging.forget_nomination(gfn) {
                if let Some((table, index, state)) = memory.frame_state(gfn * PAGE_SIZE) {
                    if let Ok(back) = state.cancel() {
                        set_state(table, index, back);
                    }
                }
                paging.evict_failures += 1;
            }
            if reason == EvictFailure::DeviceFull && !paging.swap_full {
                paging.swap_full = true;
            }
            Effect::None
        }
        ToCore::Load { domain, gfn, slot, buffer } => {
            let Some(source) = dma_page(dma, buffer) else { return Effect::Unexpected };
            let Some((table, index, state)) = memory.frame_state(gfn * PAGE_SIZE) else { return Effect::Unexpected };
            if state.slot() != Some(slot) {
                // Dropped (or loaded) meanwhile; a wrong slot is refused.
                return if matches!(state, FrameState::Dropped | FrameState::Ram(_)) { Effect::None } else { Effect::Unexpected };
            }
            let Some(frame) = frames.allocate() else {
                return Effect::StopDomain { domain, gfn, reason: "no free host memory to page a frame back in" };
            };
            copy_frame(source, frame);
            let Ok(next) = state.load(slot, frame.as_u64()) else {
                let _ = frames.free(frame);
                return Effect::Unexpected;
            };
            set_state(table, index, next);
            paging.free_slot(slot);
            paging.resident += 1;
            paging.paged = paging.paged.saturating_sub(1);
            paging.pages_in += 1;
            paging.figures.widen(Window::In, cpu::rdtsc());
            reply(ToServer::Loaded { domain, gfn, slot });
            Effect::Loaded { domain, gfn }
        }
        ToCore::LoadFailed { domain, gfn, reason } => match memory.frame_state(gfn * PAGE_SIZE) {
            Some((_, _, FrameState::Paged(_) | FrameState::PagingIn(_))) => {
                Effect::StopDomain { domain, gfn, reason: reason.reason() }
            }
            _ => Effect::None,
        },
        ToCore::Stats { free_slots, latency, evict_failures, .. } => {
            paging.pager_free_slots = Some(free_slots);
            let _ = (latency, evict_failures);
            Effect::None
        }
        ToCore::Ready | ToCore::Heartbeat { .. } | ToCore::Target { .. } => Effect::None,
    }
}

/// Rolls back what a dead pager left half-done in one domain: every
/// nomination becomes `Ram` again (its frame was never freed).
pub fn roll_back(memory: &DomainMemory, paging: &mut DomainPaging) -> usize {
    let mut cancelled = 0;
    while let Some(gfn) = paging.nominated.pop() {
        if let Some((table, index, state)) = memory.frame_state(gfn * PAGE_SIZE) {
            if let Ok(back) = state.cancel() {
                set_state(table, index, back);
                cancelled += 1;
            }
        }
        paging.evict_failures += 1;
    }
    paging.footprint_sent = None;
    cancelled
}

/// The next `Paged` batch of a domain from `from`: the frames and the gfn
/// after the last one scanned (`None` at the end of memory).
pub fn paged_batch(memory: &DomainMemory, paging: &DomainPaging, from: u64) -> (Vec<PagedFrame, PAGED_BATCH_LEN>, Option<u64>) {
    let mut frames = Vec::new();
    let mut gfn = from;
    while gfn < paging.memory_pages {
        if let Some((_, _, state)) = memory.frame_state(gfn * PAGE_SIZE) {
            if let Some(slot) = state.slot() {
                if frames.push(PagedFrame { gfn, slot }).is_err() {
                    return (frames, Some(gfn));
                }
            }
        }
        gfn += 1;
    }
    (frames, None)
}


/// In-core copies timed by [`log_bench`] (after [`COPY_WARMUP`] untimed).
const COPY_ROUNDS: u64 = 2048;
const COPY_WARMUP: u64 = 64;

/// Events per second over a window of `count` events from `first` to
/// `last` (TSC): `count - 1` intervals; 0 without an interval.
fn per_second(count: u64, window: Option<(u64, u64)>, tsc_hz: u64) -> u64 {
    match window {
        Some((first, last)) if count > 1 && last > first => {
            (u128::from(count - 1) * u128::from(tsc_hz) / u128::from(last - first)) as u64
        }
        _ => 0,
    }
}

/// Logs a domain's paging figures as `bench NAME VALUE` lines (`cargo
/// xtask bench` collects them), if it paged at all:
///
/// * `page_out_per_s`, `page_in_per_s`: evictions and loads per second
///   between the first and the last of each, end to end (the guest's
///   faults, the pager's decisions and its virtio-blk I/O included);
/// * `page_in_median_ticks`, `page_in_p99_ticks`: fault to frame back;
/// * `copy_4k_per_s`, `copy_4k_ticks`: [`COPY_ROUNDS`] copies of one host
///   frame to another with [`copy_frame`], the routine every eviction and
///   load uses, timed now, in the same run.
///
/// Never inlined, so whatever it keeps on the stack stays out of its
/// callers' frames (among them `kernel::start`, which holds the whole
/// machine on the boot stack).
#[inline(never)]
pub fn log_bench(paging: &DomainPaging) {
    if paging.pages_out == 0 && paging.pages_in == 0 {
        return;
    }
    let figures = &paging.figures;
    let tsc_hz = lapic::tsc_hz();
    let (from, to) = figures.scratch();
    for _ in 0..COPY_WARMUP {
        copy_frame(core::hint::black_box(from), core::hint::black_box(to));
    }
    let start = cpu::rdtsc();
    for _ in 0..COPY_ROUNDS {
        copy_frame(core::hint::black_box(from), core::hint::black_box(to));
    }
    let copy_ticks = cpu::rdtsc().saturating_sub(start).max(1);
    let copy_per_s = (u128::from(COPY_ROUNDS) * u128::from(tsc_hz) / u128::from(copy_ticks)) as u64;
    defmt::info!("bench paging_tsc_mhz {=u64}", tsc_hz / 1_000_000);
    defmt::info!("bench paged_out_pages {=u64}", paging.pages_out);
    defmt::info!("bench paged_in_pages {=u64}", paging.pages_in);
    defmt::info!("bench page_out_per_s {=u64}", per_second(paging.pages_out, figures.window(Window::Out), tsc_hz));
    defmt::info!("bench page_in_per_s {=u64}", per_second(paging.pages_in, figures.window(Window::In), tsc_hz));
    defmt::info!("bench page_in_latency_samples {=u64}", figures.latency_ticks.count());
    defmt::info!("bench page_in_median_ticks {=u64}", figures.latency_ticks.quantile(500));
    defmt::info!("bench page_in_p99_ticks {=u64}", figures.latency_ticks.quantile(990));
    defmt::info!("bench copy_4k_ticks {=u64}", copy_ticks / COPY_ROUNDS);
    defmt::info!("bench copy_4k_per_s {=u64}", copy_per_s);
}

//! The paging engine: the pager protocol (`ipc::messages::pager`) driven
//! over the swap device, event by event.
//!
//! The engine never blocks. The server calls [`Engine::message`] for each
//! message from the core and [`Engine::pump`] when its timeout fires; the
//! engine sends through a [`Port`], reaches the device through a
//! [`Transport`], and says when it wants to run again
//! ([`Engine::next_wake`]): at once if work is ready, after a short poll
//! interval while device requests are in flight (no interrupt reaches the
//! pager), else at the next heartbeat. Between polls the run loop `wait`s, so
//! the core runs guests meanwhile and wakes the pager early when a message
//! arrives.
//!
//! ## Start
//! `Ready`; reset and bring up the device ([`VirtioBlk::init`]; no device, or
//! an unusable one, turns paging off: every target below memory is refused);
//! read the header; load the slot table (a bad table block is replaced by an
//! empty one and reported), or format the device if the header is invalid
//! (table blocks first, the header last, so a pager killed mid-format leaves
//! an invalid header and the next one formats again). Meanwhile the core's
//! rebuild stream is recorded: `Domain` (answered with `Target`), `Paged`
//! (into the per-domain gfn → slot mirror and the victim policy),
//! `RebuildDone`, and `PageIn`s, queued. Once the table is loaded and the
//! rebuild is done, the device's slots are split into partitions in
//! proportion to memory, by domain id (the same split at every start, so
//! the core's domain-relative slots keep their meaning), capped at each
//! domain's memory; each domain's slot allocator is rebuilt from the mirror,
//! the slot-table entries of its used slots are checked, and `Partition`
//! is sent. Only then is any I/O for paging started.
//!
//! ## Work, in priority order
//! 1. **Page-in**: read the slot into a buffer, verify it against the table
//!    entry (owner and CRC-32C), `Load` (or `LoadFailed`). Two device request
//!    slots and a few buffers are kept for page-ins, so evictions never hold
//!    them up for more than the requests already in flight.
//! 2. **Eviction**, while a domain's resident estimate
//!    (`memory − paged − nominations in flight`) is above its target, at
//!    most [`MAX_NOMINATIONS`] in flight: `Nominate{gfn, buffer}` →
//!    `Nominated` → take a slot, set the table entry, and write the data
//!    block and the table block at once (one table write in flight at a
//!    time; entries set while it was in flight wait for the next) → when
//!    both completed, `Evict{slot}` → `Evicted`. A frame is `Paged` only
//!    after its data and entry are on the device.
//!
//! ## Crash safety
//! Everything here is a cache of the core's map: a new instance relearns it
//! from the rebuild stream, and the core rolls back the nominations of the
//! dead one. Slots taken for evictions that never reached `Evict` are in no
//! map, so they come back free; their table entries are ignored.

use core::fmt::Write as _;

use components::LogLine;
use heapless::Vec;
use ipc::messages::pager::{
    EvictFailure, LoadFailure, PagedFrame, Refusal, ToCore, ToServer, LATENCY_BUCKETS,
};

use crate::bitmap::words_for;
use crate::devbench::{self, DeviceBench};
use crate::disk::{
    page_checksum, verify_page, Owner, PageInError, Partition, SlotEntry, SlotTable, SwapHeader,
    BLOCK_SIZE, HEADER_BLOCK,
};
use crate::policy::{PolicyConfig, VictimPolicy, DEFAULT_MRU_CAPACITY};
use crate::slots::SlotAllocator;
use crate::target::TargetLimits;
use crate::virtio::{Completion, Direction, SubmitError, Transport, VirtioBlk, MAX_REQUESTS};
use crate::{Gfn, Slot, PAGE_SIZE};

/// Most domains the pager tracks.
pub const MAX_DOMAINS: usize = ipc::boot::MAX_DOMAINS;
/// Most nominations in flight, all domains together (the eviction batch).
pub const MAX_NOMINATIONS: usize = 16;
/// Most page-in requests queued or in progress.
pub const MAX_PAGE_INS: usize = 128;
/// Device request slots evictions leave free for page-ins.
pub const PAGE_IN_REQUEST_RESERVE: usize = 2;
/// DMA buffers evictions leave free for page-ins.
pub const PAGE_IN_BUFFER_RESERVE: u32 = 8;
/// Swap readahead: a page-in a vCPU waits for also reads up to this many
/// of the frames next to it (by gfn) that are paged out, in the direction
/// the domain's faults last moved (after it if they went up, before it if
/// they went down), as Linux's VMA-based swap readahead does; a guest that
/// walks its memory either way finds them loaded. The core takes a `Load`
/// for a `Paged` frame nobody waits for (checked against its map like any
/// other).
pub const READAHEAD_PAGES: u64 = 15;
/// Readahead reads go on the device only while more than this many
/// request slots are free (the rest are for evictions and page-ins a vCPU
/// waits for).
pub const READAHEAD_REQUEST_RESERVE: usize = 8;
/// ... and while more than this many DMA buffers are free.
pub const READAHEAD_BUFFER_RESERVE: u32 = 24;
/// Page-in records readahead leaves free for page-ins a vCPU waits for.
pub const READAHEAD_RECORD_RESERVE: usize = 64;
/// Polls of the used ring the pump spins for, at most, while a page-in
/// read is on the device (under QEMU TCG about 100 us, some two 4 KiB
/// device reads).
pub const SPIN_POLLS: u32 = 512;
/// Rounds of work a pump does at most, spinning for the device between two.
pub const MAX_PUMP_ROUNDS: u32 = 4;
/// First poll interval after a submission, ns: about one device round
/// trip (a 4 KiB request takes some 40-50 us under QEMU TCG, see
/// `crate::devbench`). A shorter first poll mostly finds nothing and costs
/// a turn: with 5 us, half the pager's turns were empty polls (measured in
/// bench-paging: 28 k waits and 2.1-2.3 k page-ins/s, against 14 k waits
/// and 2.5-2.6 k/s with 40 us; 80 us gained nothing more and raised the
/// page-in p99).
pub const POLL_MIN_NS: u64 = 40_000;
/// Longest poll interval while requests are in flight, ns.
pub const POLL_MAX_NS: u64 = 500_000;
/// Pause of new nominations after `TooManyInFlight`, ns.
pub const BACKOFF_NS: u64 = 1_000_000;
/// A device request older than this means the device hung: the instance
/// restarts (and resets the device), ns.
pub const IO_TIMEOUT_NS: u64 = 5_000_000_000;
/// Least time between two retries of victims tried before, ns.
pub const RESCAN_NS: u64 = 10_000_000;
/// Pause between two bursts of the device measurement, ns.
pub const BENCH_PAUSE_NS: u64 = 1_000;
/// Heartbeat (and `Stats`) period, ns.
pub const HEARTBEAT_INTERVAL_NS: u64 = 100_000_000;

/// What the engine needs of the server around it.
pub trait Port {
    /// Sends `message` to the core; `false` if it could not be sent.
    fn send(&mut self, message: ToCore) -> bool;
    /// Logs one console line.
    fn log(&mut self, line: &LogLine);
    /// Nanoseconds since boot. The server may answer every call of one
    /// handler call with the same reading (each reading is a syscall).
    fn now(&mut self) -> u64;
    /// Nanoseconds since boot, read now (for timing work inside one
    /// handler call: the device measurement).
    fn now_fresh(&mut self) -> u64 {
        self.now()
    }
    /// Ends this instance (the core starts a new one, which rebuilds from
    /// the core's map): the engine's state cannot be trusted any more.
    fn restart(&mut self, reason: &str);
}

/// Static storage the engine carves its tables from (no heap).
#[derive(Debug)]
pub struct Storage {
    /// Bitmaps, MRU rings, slot-allocator bitmaps.
    pub words: &'static mut [u64],
    /// gfn → slot mirrors and slot-allocator stacks.
    pub halves: &'static mut [u32],
    /// The cached slot table: its block count bounds the device slots used
    /// (255 per block).
    pub table: &'static mut [[u8; BLOCK_SIZE]],
}

/// A bump allocator over static storage.
#[derive(Debug)]
struct Arena<T: 'static> {
    rest: &'static mut [T],
}

impl<T> Arena<T> {
    fn take(&mut self, count: usize) -> Option<&'static mut [T]> {
        if count > self.rest.len() {
            return None;
        }
        let rest = core::mem::take(&mut self.rest);
        let (head, tail) = rest.split_at_mut(count);
        self.rest = tail;
        Some(head)
    }

    fn left(&self) -> usize {
        self.rest.len()
    }
}

/// Where the engine is in bringing up the swap device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started.
    Idle,
    /// No usable device: paging is off.
    Off(&'static str),
    /// Reading block 0.
    ReadingHeader,
    /// Reading table blocks.
    LoadingTable {
        /// Next block to request.
        next: u32,
        /// Blocks read.
        done: u32,
    },
    /// Writing empty table blocks, then the header.
    Formatting {
        /// Next block to write.
        next: u32,
        /// Blocks written.
        done: u32,
        /// The header write was submitted.
        header: bool,
    },
    /// The table is loaded.
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Header {
        buffer: u16,
    },
    TableRead {
        index: u32,
        buffer: u16,
    },
    TableFormat {
        buffer: u16,
    },
    HeaderWrite {
        buffer: u16,
    },
    PageIn {
        record: usize,
    },
    Data {
        nomination: usize,
    },
    Flush {
        block: u32,
        seq: u64,
        buffer: u16,
    },
    /// A read of the device measurement into `pages` pages from `buffer`.
    Bench {
        buffer: u16,
        pages: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `Nominate` sent.
    Nominating,
    /// `Nominated`: slot taken, data write not yet submitted.
    WaitWrite,
    /// The data write is submitted, and the entry set in cached table block
    /// `block` at `seq`: the data write and the flush of a table write
    /// covering `seq` are in flight at once. `Evict` waits for both.
    Writing {
        block: u32,
        seq: u64,
        data: Part,
        table: Part,
    },
    /// `Evict` sent.
    Evicting,
}

/// One of the two writes of an eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Not finished (the data write: in flight; the entry: waiting for, or
    /// in, a table write).
    Pending,
    /// On the device.
    Done,
    /// The write failed.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Nomination {
    domain: usize,
    gfn: u64,
    buffer: u16,
    slot: Option<Slot>,
    checksum: u32,
    stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageInStage {
    Queued,
    Reading {
        buffer: u16,
    },
    /// `Load` sent; the buffer is the core's to read until `Loaded`.
    Loading {
        buffer: u16,
    },
}

#[derive(Debug, Clone, Copy)]
struct PageIn {
    domain: usize,
    gfn: u64,
    slot: Slot,
    received: u64,
    stage: PageInStage,
    /// The guest dropped the frame meanwhile: discard the read.
    cancelled: bool,
    /// Readahead: no vCPU waits for it (yet). A failed read is dropped
    /// without a word: the core stops a domain only for a frame a vCPU
    /// waits for, and a later fault on this one reads it again.
    readahead: bool,
}

/// One domain as the engine knows it.
#[derive(Debug)]
struct Domain {
    id: u16,
    memory_pages: u64,
    target: Option<u64>,
    /// Resident frames: the core's last `Footprint`, followed by the
    /// engine's own evictions and loads since (`None` before the first).
    resident: Option<u64>,
    /// The gfn of its last page-in a vCPU waited for: readahead follows
    /// the direction its faults move in.
    last_fault: Option<u64>,
    /// gfn → slot + 1 (0: not paged); empty when paging is off for the domain.
    map: &'static mut [u32],
    policy: Option<VictimPolicy<'static>>,
    slots: Option<SlotAllocator<'static>>,
    partition: Partition,
    partitioned: bool,
    /// Nominations sent and not yet answered (their slot is not taken yet).
    nominating: u32,
    /// Evictions in flight, from `Nominate` to `Evicted` (or their end).
    evicting: u32,
    full: bool,
    full_logged: bool,
    evict_failures: u64,
    latency: [u32; LATENCY_BUCKETS],
    paged_out: u64,
    paged_in: u64,
    mismatches: u64,
    /// When tried victims may be retried next.
    rescan_at: u64,
}

impl Domain {
    fn paged(&self) -> u64 {
        self.policy.as_ref().map_or(0, VictimPolicy::paged_count)
    }

    fn slot_of(&self, gfn: u64) -> Option<Slot> {
        let raw = *self.map.get(gfn as usize)?;
        raw.checked_sub(1).map(Slot::new)
    }

    fn set_slot(&mut self, gfn: u64, slot: Option<Slot>) {
        if let Some(entry) = self.map.get_mut(gfn as usize) {
            *entry = slot.map_or(0, |slot| slot.get() + 1);
        }
    }

    fn free_slot(&mut self, slot: Slot) {
        if let Some(slots) = self.slots.as_mut() {
            if slots.free(slot).is_ok() {
                self.full = false;
            }
        }
    }

    /// Pages to evict beyond those already being nominated: the resident
    /// count (the core's `Footprint`, or `memory − paged` before one came)
    /// above the target.
    fn deficit(&self) -> u64 {
        let target = self.target.unwrap_or(self.memory_pages);
        let resident = self
            .resident
            .unwrap_or_else(|| self.memory_pages.saturating_sub(self.paged()));
        resident
            .saturating_sub(u64::from(self.evicting))
            .saturating_sub(target)
    }

    /// Frames readahead may still bring in: it may take the domain at
    /// most [`READAHEAD_PAGES`] above its target, counting the readahead
    /// already under way (`pending`; a page-in a vCPU waits for is not
    /// readahead's to count), so the loads it adds never outrun the
    /// evictions that keep the target.
    fn readahead_room(&self, pending: u64) -> u64 {
        let target = self.target.unwrap_or(self.memory_pages);
        let resident = self
            .resident
            .unwrap_or_else(|| self.memory_pages.saturating_sub(self.paged()));
        (target + READAHEAD_PAGES).saturating_sub(resident + pending)
    }
}

/// When the engine wants to run next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextWake {
    /// Work is ready (messages made it ready): right after this batch.
    Now,
    /// Device requests are in flight: poll the used ring after waiting this
    /// long (ns); the run loop must really wait (let the core run guests).
    Poll(u64),
    /// Nothing in flight: at this time (the next heartbeat), or earlier when
    /// the core sends something.
    At(u64),
}

/// Counters of one domain, for tests and `hvctl stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainReport {
    /// The domain's id.
    pub id: u16,
    /// Frames the engine believes paged out.
    pub paged: u64,
    /// Free slots (0 before the partition is known).
    pub free_slots: u32,
    /// Slots in the partition.
    pub partition_slots: u32,
    /// Failed evictions (device full episodes, write errors).
    pub evict_failures: u64,
    /// Evictions completed.
    pub paged_out: u64,
    /// Page-ins completed.
    pub paged_in: u64,
    /// Table entries that disagreed with the core's map at the rebuild.
    pub mismatches: u64,
    /// Eviction is stopped because the partition is full.
    pub full: bool,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    words: Arena<u64>,
    halves: Arena<u32>,
    table_storage: Option<&'static mut [[u8; BLOCK_SIZE]]>,
    table: Option<SlotTable<'static>>,
    header: Option<SwapHeader>,
    device: Option<VirtioBlk>,
    phase: Phase,
    domains: Vec<Domain, MAX_DOMAINS>,
    rebuild_done: bool,
    partitioned: bool,
    ops: [Option<Op>; MAX_REQUESTS],
    op_started: [u64; MAX_REQUESTS],
    buffers_free: u64,
    buffer_count: u32,
    nominations: [Option<Nomination>; MAX_NOMINATIONS],
    page_ins: [Option<PageIn>; MAX_PAGE_INS],
    page_in_order: u64,
    table_seq: u64,
    flush_in_flight: bool,
    poll_ns: u64,
    backoff_until: u64,
    heartbeats: u64,
    next_heartbeat: u64,
    work_ready: bool,
    failed: bool,
    /// The device measurement, if asked for and not yet done.
    bench: Option<DeviceBench>,
    /// Messages sent through [`Self::send_critical`] (the protocol's
    /// steps), to know whether a round of the pump gave the core work.
    steps_sent: u64,
}

fn line(text: &str) -> LogLine {
    let mut line = LogLine::new();
    line.push_str(text);
    line
}

impl Engine {
    /// An engine over `storage`, not started.
    pub fn new(storage: Storage) -> Self {
        Self {
            words: Arena {
                rest: storage.words,
            },
            halves: Arena {
                rest: storage.halves,
            },
            table_storage: Some(storage.table),
            table: None,
            header: None,
            device: None,
            phase: Phase::Idle,
            domains: Vec::new(),
            rebuild_done: false,
            partitioned: false,
            ops: [None; MAX_REQUESTS],
            op_started: [0; MAX_REQUESTS],
            buffers_free: 0,
            buffer_count: 0,
            nominations: [None; MAX_NOMINATIONS],
            page_ins: [None; MAX_PAGE_INS],
            page_in_order: 0,
            table_seq: 0,
            flush_in_flight: false,
            poll_ns: POLL_MIN_NS,
            backoff_until: 0,
            heartbeats: 0,
            next_heartbeat: 0,
            work_ready: false,
            failed: false,
            bench: None,
            steps_sent: 0,
        }
    }

    /// Asks for the device measurement ([`crate::devbench`]) before paging
    /// starts. Call before [`Self::start`].
    pub fn request_device_bench(&mut self) {
        self.bench = Some(DeviceBench::new());
    }

    /// The device measurement, if it was asked for.
    pub fn device_bench(&self) -> Option<&DeviceBench> {
        self.bench.as_ref()
    }

    fn bench_pending(&self) -> bool {
        self.bench.as_ref().is_some_and(|bench| !bench.finished())
    }

    /// Where the device bring-up is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether partitions were sent and paging runs.
    pub fn is_paging(&self) -> bool {
        self.partitioned
    }

    /// The counters of domain `id`.
    pub fn report(&self, id: u16) -> Option<DomainReport> {
        let domain = self.domains.iter().find(|domain| domain.id == id)?;
        Some(DomainReport {
            id,
            paged: domain.paged(),
            free_slots: domain.slots.as_ref().map_or(0, SlotAllocator::free_count),
            partition_slots: domain.partition.count,
            evict_failures: domain.evict_failures,
            paged_out: domain.paged_out,
            paged_in: domain.paged_in,
            mismatches: domain.mismatches,
            full: domain.full,
        })
    }

    /// Device requests in flight.
    pub fn requests_in_flight(&self) -> usize {
        self.ops.iter().filter(|op| op.is_some()).count()
    }

    /// Nominations in flight.
    pub fn nominations_in_flight(&self) -> usize {
        self.nominations
            .iter()
            .filter(|nomination| nomination.is_some())
            .count()
    }

    /// Page-ins queued or in progress.
    pub fn page_ins_pending(&self) -> usize {
        self.page_ins
            .iter()
            .filter(|record| record.is_some())
            .count()
    }

    /// Starts the instance: `Ready`, device bring-up, the header read.
    pub fn start<E: Port + Transport>(
        &mut self,
        env: &mut E,
        device_probe: Result<(), &'static str>,
    ) {
        let _ = env.send(ToCore::Ready);
        let now = env.now();
        self.next_heartbeat = now.saturating_add(HEARTBEAT_INTERVAL_NS);
        if let Err(reason) = device_probe {
            self.turn_off(env, reason);
            return;
        }
        match VirtioBlk::init(env) {
            Ok(device) => {
                let pages = device.buffer_pages();
                self.buffer_count = u32::from(pages.end.saturating_sub(pages.start))
                    .min(64 - u32::from(pages.start));
                for page in pages.take(self.buffer_count as usize) {
                    self.buffers_free |= 1 << page;
                }
                let mut text = LogLine::new();
                text.push_str("pager: swap device: ")
                    .push_decimal(device.capacity_blocks())
                    .push_str(" blocks, ")
                    .push_decimal(device.request_slots() as u64)
                    .push_str(" request slots, ")
                    .push_decimal(u64::from(self.buffer_count))
                    .push_str(" buffers");
                env.log(&text);
                self.device = Some(device);
                self.phase = Phase::ReadingHeader;
                self.work_ready = true;
            }
            Err(error) => self.turn_off(env, error.reason()),
        }
    }

    fn turn_off<E: Port>(&mut self, env: &mut E, reason: &'static str) {
        self.phase = Phase::Off(reason);
        self.device = None;
        let mut text = LogLine::new();
        if reason == components::DeviceError::NoDevice.reason() {
            text.push_str("pager: no swap device: paging off");
        } else {
            text.push_str("pager: swap device unusable: ")
                .push_str(reason)
                .push_str(": paging off");
        }
        env.log(&text);
        // Domains already known: every target below memory is now refused.
        for index in 0..self.domains.len() {
            let (id, memory, target) = {
                let domain = &self.domains[index];
                (
                    domain.id,
                    domain.memory_pages,
                    domain.target.unwrap_or(domain.memory_pages),
                )
            };
            let _ = env.send(ToCore::Target {
                domain: id,
                accepted: target >= memory,
                floor_pages: memory,
            });
        }
    }

    /// When the engine wants [`Self::pump`] next.
    pub fn next_wake(&self, now: u64) -> NextWake {
        self.next_wake_with(|| now)
    }

    /// [`Self::next_wake`], reading the clock only if the answer depends on
    /// it (not for [`NextWake::Now`]).
    pub fn next_wake_with(&self, clock: impl FnOnce() -> u64) -> NextWake {
        if self.failed {
            return NextWake::At(u64::MAX);
        }
        if self.work_ready {
            return NextWake::Now;
        }
        if self.phase == Phase::Ready && self.bench_pending() && self.requests_in_flight() == 0 {
            // Between two bursts of the device measurement: give the core
            // a switch point, then go on.
            return NextWake::Poll(BENCH_PAUSE_NS);
        }
        let now = clock();
        if self.requests_in_flight() > 0 {
            return NextWake::Poll(
                self.poll_ns
                    .min(self.next_heartbeat.saturating_sub(now))
                    .max(1),
            );
        }
        if self.backoff_until > now {
            return NextWake::At(self.backoff_until.min(self.next_heartbeat));
        }
        NextWake::At(self.next_heartbeat)
    }

    /// When the next heartbeat is due, ns since boot.
    pub fn next_heartbeat(&self) -> u64 {
        self.next_heartbeat
    }

    // ----------------------------------------------------------------- messages

    /// One message from the core. Work it makes ready is done at the next
    /// [`Self::pump`] (so a batch of messages is taken in first and page-ins
    /// go before evictions).
    pub fn message<E: Port + Transport>(&mut self, env: &mut E, message: ToServer) {
        match message {
            ToServer::Domain {
                domain,
                memory_pages,
                target_pages,
            } => self.domain_message(env, domain, memory_pages, target_pages),
            ToServer::Paged { domain, frames } => self.paged_message(env, domain, &frames),
            ToServer::RebuildDone => {
                self.rebuild_done = true;
                self.work_ready = true;
            }
            ToServer::Nominated {
                domain,
                gfn,
                buffer,
            } => self.nominated(env, domain, gfn, buffer),
            ToServer::NominateRefused {
                domain,
                gfn,
                reason,
            } => self.refused(env, domain, gfn, reason),
            ToServer::Evicted {
                domain,
                gfn,
                slot,
                ok,
            } => self.evicted(env, domain, gfn, slot, ok),
            ToServer::PageIn { domain, gfn, slot } => self.page_in(env, domain, gfn, slot),
            ToServer::Loaded { domain, gfn, slot } => self.loaded(domain, gfn, slot),
            ToServer::Released { domain, slot } => self.released(domain, slot),
            ToServer::Footprint {
                domain,
                resident_pages,
            } => {
                if let Some(index) = self.domain_index(domain) {
                    self.domains[index].resident = Some(resident_pages);
                    self.work_ready = true;
                }
            }
            ToServer::Error { code } => {
                let mut text = LogLine::new();
                let _ = write!(text, "pager: the core refused a message: {code:?}");
                env.log(&text);
            }
        }
    }

    fn domain_index(&self, id: u16) -> Option<usize> {
        self.domains.iter().position(|domain| domain.id == id)
    }

    fn domain_message<E: Port>(
        &mut self,
        env: &mut E,
        id: u16,
        memory_pages: u64,
        target_pages: u64,
    ) {
        let index = match self.domain_index(id) {
            Some(index) => index,
            None => match self.add_domain(env, id, memory_pages) {
                Some(index) => index,
                None => {
                    let _ = env.send(ToCore::Target {
                        domain: id,
                        accepted: target_pages >= memory_pages,
                        floor_pages: memory_pages,
                    });
                    return;
                }
            },
        };
        let paging = !matches!(self.phase, Phase::Off(_)) && !self.domains[index].map.is_empty();
        let domain = &mut self.domains[index];
        let (accepted, floor, reason) = if paging {
            let limits = TargetLimits::new(domain.memory_pages, 1);
            match limits.validate(target_pages) {
                Ok(target) => {
                    domain.target = Some(target.pages());
                    (true, limits.floor_pages(), None)
                }
                Err(crate::target::TargetError::AboveMemory { .. }) => (
                    false,
                    limits.floor_pages(),
                    Some("larger than the domain's memory"),
                ),
                Err(crate::target::TargetError::BelowFloor { .. }) => {
                    (false, limits.floor_pages(), Some("below the floor"))
                }
            }
        } else {
            let accepted =
                target_pages >= domain.memory_pages && target_pages == domain.memory_pages;
            let reason = match self.phase {
                Phase::Off(_) => "no swap device: paging off",
                _ => "no pager memory for this domain: paging off",
            };
            (accepted, domain.memory_pages, (!accepted).then_some(reason))
        };
        let mut text = LogLine::new();
        text.push_str("pager: domain ")
            .push_decimal(u64::from(id))
            .push_str(": target ")
            .push_decimal(target_pages)
            .push_str(" of ")
            .push_decimal(domain.memory_pages)
            .push_str(" pages ");
        match reason {
            None => text.push_str("accepted"),
            Some(reason) => text.push_str("refused: ").push_str(reason),
        };
        env.log(&text);
        let _ = env.send(ToCore::Target {
            domain: id,
            accepted,
            floor_pages: floor,
        });
        self.work_ready = true;
    }

    fn add_domain<E: Port>(&mut self, env: &mut E, id: u16, memory_pages: u64) -> Option<usize> {
        if self.domains.is_full() {
            env.log(&line("pager: too many domains"));
            return None;
        }
        let frames = memory_pages.min(u64::from(u32::MAX));
        let words = VictimPolicy::storage_words(frames);
        let mut map: &'static mut [u32] = &mut [];
        let mut policy = None;
        if let (true, Some(mirror)) = (
            words <= self.words.left(),
            self.halves.take(frames as usize),
        ) {
            if let Some(bits) = self.words.take(words) {
                let mru_len = DEFAULT_MRU_CAPACITY
                    .min(frames as usize)
                    .min(self.words.left() / 2);
                let mru = self.words.take(mru_len).unwrap_or(&mut []);
                mirror.fill(0);
                policy = VictimPolicy::new(frames, bits, mru, PolicyConfig::default()).ok();
                map = mirror;
            }
        }
        if policy.is_none() {
            map = &mut [];
            let mut text = LogLine::new();
            text.push_str("pager: domain ")
                .push_decimal(u64::from(id))
                .push_str(": not enough pager memory: paging off");
            env.log(&text);
        }
        let domain = Domain {
            id,
            memory_pages,
            target: None,
            resident: None,
            last_fault: None,
            map,
            policy,
            slots: None,
            partition: Partition::default(),
            partitioned: false,
            nominating: 0,
            evicting: 0,
            full: false,
            full_logged: false,
            evict_failures: 0,
            latency: [0; LATENCY_BUCKETS],
            paged_out: 0,
            paged_in: 0,
            mismatches: 0,
            rescan_at: 0,
        };
        self.domains.push(domain).ok()?;
        Some(self.domains.len() - 1)
    }

    fn paged_message<E: Port>(&mut self, env: &mut E, id: u16, frames: &[PagedFrame]) {
        let Some(index) = self.domain_index(id) else {
            env.log(&line("pager: Paged for an unknown domain"));
            return;
        };
        let partitioned = self.domains[index].partitioned;
        let domain = &mut self.domains[index];
        for frame in frames {
            if frame.gfn >= domain.memory_pages || domain.map.is_empty() {
                continue;
            }
            domain.set_slot(frame.gfn, Some(Slot::new(frame.slot)));
            if let Some(policy) = domain.policy.as_mut() {
                policy.notify_paged_out(Gfn::new(frame.gfn));
            }
        }
        if partitioned {
            env.log(&line(
                "pager: Paged after the rebuild: ignored by the slot allocator",
            ));
        }
    }

    fn nominated<E: Port + Transport>(&mut self, env: &mut E, id: u16, gfn: u64, buffer: u16) {
        let found = self.nominations.iter().position(|nomination| {
            nomination.is_some_and(|nomination| {
                self.domains[nomination.domain].id == id
                    && nomination.gfn == gfn
                    && nomination.buffer == buffer
                    && nomination.stage == Stage::Nominating
            })
        });
        let Some(index) = found else {
            env.log(&line("pager: Nominated for no nomination of this instance"));
            return;
        };
        let Some(mut nomination) = self.nominations[index] else {
            return;
        };
        let mut page = [0u8; PAGE_SIZE];
        if env
            .dma_read(usize::from(buffer) * PAGE_SIZE, &mut page)
            .is_err()
        {
            env.restart("pager: DMA buffer unreadable");
            self.failed = true;
            return;
        }
        nomination.checksum = page_checksum(&page);
        let domain = &mut self.domains[nomination.domain];
        domain.nominating = domain.nominating.saturating_sub(1);
        match domain.slots.as_mut().map(SlotAllocator::alloc) {
            Some(Ok(slot)) => {
                nomination.slot = Some(slot);
                nomination.stage = Stage::WaitWrite;
                self.nominations[index] = Some(nomination);
                self.work_ready = true;
            }
            _ => {
                domain.evict_failures += 1;
                domain.evicting = domain.evicting.saturating_sub(1);
                Self::mark_full(env, domain);
                self.release_buffer(buffer);
                // The core answers nothing to EvictFailed: the nomination is over.
                self.nominations[index] = None;
                self.send_critical(
                    env,
                    ToCore::EvictFailed {
                        domain: id,
                        gfn,
                        reason: EvictFailure::DeviceFull,
                    },
                );
            }
        }
    }

    fn mark_full<E: Port>(env: &mut E, domain: &mut Domain) {
        domain.full = true;
        if !domain.full_logged {
            domain.full_logged = true;
            let mut text = LogLine::new();
            text.push_str("pager: domain ")
                .push_decimal(u64::from(domain.id))
                .push_str(": swap full; eviction stopped");
            env.log(&text);
        }
    }

    fn find_nomination(&self, id: u16, gfn: u64, stages: &[Stage]) -> Option<usize> {
        self.nominations.iter().position(|nomination| {
            nomination.is_some_and(|nomination| {
                self.domains[nomination.domain].id == id
                    && nomination.gfn == gfn
                    && stages.contains(&nomination.stage)
            })
        })
    }

    fn refused<E: Port>(&mut self, env: &mut E, id: u16, gfn: u64, reason: Refusal) {
        let Some(index) = self.find_nomination(id, gfn, &[Stage::Nominating]) else {
            env.log(&line(
                "pager: NominateRefused for no nomination of this instance",
            ));
            return;
        };
        let Some(nomination) = self.nominations[index].take() else {
            return;
        };
        self.release_buffer(nomination.buffer);
        let domain = &mut self.domains[nomination.domain];
        domain.nominating = domain.nominating.saturating_sub(1);
        domain.evicting = domain.evicting.saturating_sub(1);
        let Some(policy) = domain.policy.as_mut() else {
            return;
        };
        match reason {
            Refusal::NotPageable | Refusal::NotRam | Refusal::OutOfRange => {
                policy.exclude(Gfn::new(gfn))
            }
            Refusal::TooManyInFlight => {
                policy.release(Gfn::new(gfn));
                self.backoff_until = env.now().saturating_add(BACKOFF_NS);
            }
            Refusal::BadBuffer => {
                policy.release(Gfn::new(gfn));
                env.log(&line("pager: the core refused a DMA buffer index"));
            }
        }
        self.work_ready = true;
    }

    fn evicted<E: Port>(&mut self, env: &mut E, id: u16, gfn: u64, slot: u32, ok: bool) {
        let Some(index) = self.find_nomination(id, gfn, &[Stage::Evicting]) else {
            env.log(&line("pager: Evicted for no eviction of this instance"));
            return;
        };
        let Some(nomination) = self.nominations[index].take() else {
            return;
        };
        let domain = &mut self.domains[nomination.domain];
        domain.evicting = domain.evicting.saturating_sub(1);
        match (nomination.stage, ok) {
            (Stage::Evicting, true) => {
                let slot = nomination.slot.unwrap_or(Slot::new(slot));
                domain.set_slot(gfn, Some(slot));
                domain.paged_out += 1;
                domain.resident = domain.resident.map(|resident| resident.saturating_sub(1));
                if let Some(policy) = domain.policy.as_mut() {
                    policy.notify_paged_out(Gfn::new(gfn));
                }
            }
            (Stage::Evicting, false) => {
                // The guest wrote (or dropped) the frame meanwhile: it stays
                // resident, the slot is free, the frame stays "tried" for now.
                if let Some(slot) = nomination.slot {
                    domain.free_slot(slot);
                }
            }
            _ => {}
        }
        self.work_ready = true;
    }

    fn page_in<E: Port>(&mut self, env: &mut E, id: u16, gfn: u64, slot: u32) {
        let Some(domain_index) = self.domain_index(id) else {
            env.log(&line("pager: PageIn for an unknown domain"));
            return;
        };
        let now = env.now();
        if let Some(record) = self
            .page_ins
            .iter_mut()
            .flatten()
            .find(|record| record.domain == domain_index && record.gfn == gfn)
        {
            // Read ahead already: a vCPU waits for it now.
            if record.readahead {
                record.readahead = false;
                record.received = now;
            }
            return;
        }
        if matches!(self.phase, Phase::Off(_)) {
            self.send_critical(
                env,
                ToCore::LoadFailed {
                    domain: id,
                    gfn,
                    reason: LoadFailure::ReadError,
                },
            );
            return;
        }
        let domain = &mut self.domains[domain_index];
        if gfn < domain.memory_pages && !domain.map.is_empty() && domain.slot_of(gfn).is_none() {
            // The core's map is the truth: record the slot it names.
            domain.set_slot(gfn, Some(Slot::new(slot)));
            if let Some(policy) = domain.policy.as_mut() {
                policy.notify_paged_out(Gfn::new(gfn));
            }
        }
        let Some(free) = self.page_ins.iter().position(Option::is_none) else {
            env.restart("pager: too many page-ins queued");
            self.failed = true;
            return;
        };
        self.page_in_order += 1;
        self.page_ins[free] = Some(PageIn {
            domain: domain_index,
            gfn,
            slot: Slot::new(slot),
            received: now,
            stage: PageInStage::Queued,
            cancelled: false,
            readahead: false,
        });
        let domain = &mut self.domains[domain_index];
        let downward = domain.last_fault.is_some_and(|last| gfn < last);
        domain.last_fault = Some(gfn);
        self.read_ahead(domain_index, gfn, downward, now);
        self.work_ready = true;
    }

    /// Queues readahead of the paged-out frames among the
    /// [`READAHEAD_PAGES`] after `gfn` (before it if `downward`), as far
    /// as the records allow (leaving [`READAHEAD_RECORD_RESERVE`]) and the
    /// domain's target (`Domain::readahead_room`).
    fn read_ahead(&mut self, domain_index: usize, gfn: u64, downward: bool, now: u64) {
        let memory_pages = self.domains[domain_index].memory_pages;
        let mut free = self.page_ins.iter().filter(|record| record.is_none()).count();
        let mut pending = self
            .page_ins
            .iter()
            .flatten()
            .filter(|record| record.domain == domain_index && record.readahead)
            .count() as u64;
        for step in 1..=READAHEAD_PAGES {
            let next = if downward { gfn.checked_sub(step) } else { gfn.checked_add(step) };
            let Some(next) = next.filter(|&next| next < memory_pages) else { return };
            if free <= READAHEAD_RECORD_RESERVE || self.domains[domain_index].readahead_room(pending) == 0 {
                return;
            }
            let Some(slot) = self.domains[domain_index].slot_of(next) else { continue };
            let known = self
                .page_ins
                .iter()
                .flatten()
                .any(|record| record.domain == domain_index && record.gfn == next);
            if known {
                continue;
            }
            let Some(index) = self.page_ins.iter().position(Option::is_none) else { return };
            self.page_ins[index] = Some(PageIn {
                domain: domain_index,
                gfn: next,
                slot,
                received: now,
                stage: PageInStage::Queued,
                cancelled: false,
                readahead: true,
            });
            free -= 1;
            pending += 1;
        }
    }

    fn loaded(&mut self, id: u16, gfn: u64, slot: u32) {
        let Some(domain_index) = self.domain_index(id) else {
            return;
        };
        if let Some(index) = self.page_ins.iter().position(|record| {
            record.is_some_and(|record| record.domain == domain_index && record.gfn == gfn)
        }) {
            if let Some(PageIn {
                stage: PageInStage::Loading { buffer },
                ..
            }) = self.page_ins[index].take()
            {
                self.release_buffer(buffer);
            }
        }
        let domain = &mut self.domains[domain_index];
        domain.set_slot(gfn, None);
        domain.free_slot(Slot::new(slot));
        domain.paged_in += 1;
        domain.resident = domain.resident.map(|resident| resident.saturating_add(1));
        if let Some(policy) = domain.policy.as_mut() {
            policy.notify_paged_in(Gfn::new(gfn));
        }
        self.work_ready = true;
    }

    /// The guest gave back a paged-out frame: its slot is free. A page-in
    /// of that slot in progress is abandoned (the core refuses its `Load`
    /// without reading the buffer).
    fn released(&mut self, id: u16, slot: u32) {
        let Some(domain_index) = self.domain_index(id) else {
            return;
        };
        let slot = Slot::new(slot);
        if let Some(index) = self.page_ins.iter().position(|record| {
            record.is_some_and(|record| record.domain == domain_index && record.slot == slot)
        }) {
            if let Some(mut record) = self.page_ins[index] {
                match record.stage {
                    PageInStage::Queued => self.page_ins[index] = None,
                    PageInStage::Loading { buffer } => {
                        self.release_buffer(buffer);
                        self.page_ins[index] = None;
                    }
                    PageInStage::Reading { .. } => {
                        record.cancelled = true;
                        self.page_ins[index] = Some(record);
                    }
                }
            }
        }
        let domain = &mut self.domains[domain_index];
        let raw = slot.get() + 1;
        if let Some(gfn) = domain.map.iter().position(|entry| *entry == raw) {
            domain.set_slot(gfn as u64, None);
            if let Some(policy) = domain.policy.as_mut() {
                policy.notify_dropped(Gfn::new(gfn as u64));
            }
        }
        domain.free_slot(slot);
        self.work_ready = true;
    }

    // --------------------------------------------------------------------- pump

    /// Polls the device and does the work that is ready, page-ins first;
    /// sends the heartbeat and `Stats` when due.
    ///
    /// A round that left a page-in read on the device and sent the core
    /// nothing spins on the used ring for at most [`SPIN_POLLS`] and, if
    /// the device finished something, does another round (up to
    /// [`MAX_PUMP_ROUNDS`]): a vCPU waits for that read, and the device
    /// usually answers sooner than a wait, the core's switch point and the
    /// poll after it. Eviction writes are not spun for: nobody waits for
    /// them, and spinning costs the pCPU that the core and guests need
    /// (measured: spinning for every request lowered throughput). A round
    /// that sent a message ends the pump at once: the message leaves when
    /// the handler returns, and the core's answer is the next step.
    pub fn pump<E: Port + Transport>(&mut self, env: &mut E) {
        if self.failed {
            return;
        }
        self.work_ready = false;
        let mut completed = 0;
        for round in 1..=MAX_PUMP_ROUNDS {
            let steps_before = self.steps_sent;
            completed += self.pump_round(env);
            if self.failed {
                return;
            }
            let quiet = self.steps_sent == steps_before;
            if round == MAX_PUMP_ROUNDS
                || !quiet
                || !self.partitioned
                || !self.page_in_reading()
                || !self.spin_for_completion(env)
            {
                break;
            }
        }
        self.poll_ns = if completed > 0 {
            POLL_MIN_NS
        } else {
            (self.poll_ns * 2).min(POLL_MAX_NS)
        };
        // Everything a completion made possible was started above; what is
        // left waits for the device (a poll) or for the core (a message).
        self.work_ready = false;
        self.check_timeouts(env);
        let now = env.now();
        if now >= self.next_heartbeat {
            self.heartbeat(env);
            self.next_heartbeat = now.saturating_add(HEARTBEAT_INTERVAL_NS);
        }
    }

    /// One round of the pump: reap, bring-up, the measurement, partitions,
    /// then page-ins, data writes, the table flush and nominations, and one
    /// notify for the requests started. Returns the requests reaped.
    fn pump_round<E: Port + Transport>(&mut self, env: &mut E) -> usize {
        let completed = self.reap(env);
        if self.failed {
            return completed;
        }
        self.advance_phase(env);
        if self.phase == Phase::Ready && self.bench_pending() {
            self.bench_burst(env);
            if self.failed {
                return completed;
            }
        }
        if self.phase == Phase::Ready
            && self.rebuild_done
            && !self.partitioned
            && !self.bench_pending()
        {
            self.partition(env);
        }
        if self.partitioned {
            self.start_page_ins(env);
            self.start_data_writes(env);
            self.start_flush(env);
            self.start_nominations(env);
        }
        if !self.failed {
            // One notify for every request started above.
            self.notify_device(env);
        }
        completed
    }

    /// Whether a page-in read is on the device (a vCPU waits for it).
    fn page_in_reading(&self) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, Some(Op::PageIn { .. })))
    }

    /// Spins on the used ring for at most [`SPIN_POLLS`]; true as soon as
    /// the device finished a request (or the ring cannot be read: the next
    /// reap reports that).
    fn spin_for_completion<E: Transport>(&mut self, env: &mut E) -> bool {
        let Some(device) = self.device.as_ref() else {
            return false;
        };
        (0..SPIN_POLLS).any(|_| device.has_completion(env).unwrap_or(true))
    }

    fn heartbeat<E: Port>(&mut self, env: &mut E) {
        self.heartbeats += 1;
        let _ = env.send(ToCore::Heartbeat {
            count: self.heartbeats,
        });
        if !self.partitioned {
            return;
        }
        for domain in self.domains.iter() {
            let _ = env.send(ToCore::Stats {
                domain: domain.id,
                free_slots: domain.slots.as_ref().map_or(0, SlotAllocator::free_count),
                evict_failures: domain.evict_failures,
                latency: domain.latency,
            });
        }
    }

    fn check_timeouts<E: Port>(&mut self, env: &mut E) {
        let now = env.now();
        let stuck = self
            .ops
            .iter()
            .zip(self.op_started.iter())
            .any(|(op, started)| op.is_some() && now.saturating_sub(*started) > IO_TIMEOUT_NS);
        if stuck {
            self.failed = true;
            env.restart("pager: a swap device request never completed: restarting");
        }
    }

    /// Sends a message the protocol cannot do without; if it cannot be sent,
    /// the instance restarts (the next one rebuilds from the core's map).
    fn send_critical<E: Port>(&mut self, env: &mut E, message: ToCore) {
        self.steps_sent += 1;
        if !env.send(message) {
            self.failed = true;
            env.restart("pager: a protocol message could not be sent: restarting");
        }
    }

    fn take_buffer(&mut self, reserve: u32) -> Option<u16> {
        if self.buffers_free.count_ones() <= reserve {
            return None;
        }
        let page = self.buffers_free.trailing_zeros();
        self.buffers_free &= !(1 << page);
        Some(page as u16)
    }

    fn release_buffer(&mut self, buffer: u16) {
        if buffer < 64 {
            self.buffers_free |= 1 << buffer;
        }
    }

    /// Takes `pages` consecutive free buffers; returns the first.
    fn take_run(&mut self, pages: u16) -> Option<u16> {
        let pages = u32::from(pages.max(1));
        let mask = if pages >= 64 {
            u64::MAX
        } else {
            (1u64 << pages) - 1
        };
        let first = (0..=64 - pages).find(|first| (self.buffers_free >> first) & mask == mask)?;
        self.buffers_free &= !(mask << first);
        Some(first as u16)
    }

    fn release_run(&mut self, first: u16, pages: u16) {
        for page in first..first.saturating_add(pages) {
            self.release_buffer(page);
        }
    }

    /// One timed burst of the device measurement ([`crate::devbench`]):
    /// keeps the case's requests in flight until a burst of them completed,
    /// spinning on the used ring; records the burst and, after the last,
    /// logs the result line. Runs only while nothing else is in flight.
    fn bench_burst<E: Port + Transport>(&mut self, env: &mut E) {
        if self.requests_in_flight() > 0 {
            return;
        }
        let Some(mut bench) = self.bench.take() else {
            return;
        };
        if bench.case().is_some() {
            self.bench_burst_with(env, &mut bench);
        } else {
            checksum_burst(env, &mut bench);
        }
        if bench.finished() {
            env.log(&bench.line());
        }
        self.bench = Some(bench);
    }

    fn bench_burst_with<E: Port + Transport>(&mut self, env: &mut E, bench: &mut DeviceBench) {
        let Some(case) = bench.case() else { return };
        let Some(header) = self.header else {
            bench.fail("no swap layout");
            return;
        };
        let burst = bench.burst_len();
        let first_index = bench.next_index();
        let (first, slots) = (header.data_start_block(), u64::from(header.slot_count()));
        let mut idle: Vec<u16, MAX_REQUESTS> = Vec::new();
        while idle.len() < case.depth.min(self.free_requests()) {
            let Some(buffer) = self.take_run(case.pages) else {
                break;
            };
            let _ = idle.push(buffer);
        }
        if idle.len() < case.depth {
            for buffer in idle {
                self.release_run(buffer, case.pages);
            }
            bench.fail("not enough DMA buffers or request slots");
            return;
        }
        let start = env.now_fresh();
        let (mut issued, mut completed) = (0u32, 0u32);
        while completed < burst {
            while issued < burst {
                let Some(buffer) = idle.pop() else { break };
                let Some(block) = devbench::block_for(&case, first_index + issued, first, slots)
                else {
                    let _ = idle.push(buffer);
                    bench.fail("the swap data area is too small");
                    break;
                };
                let Some(device) = self.device.as_mut() else {
                    return;
                };
                match device.enqueue(env, Direction::Read, block, buffer, case.pages) {
                    Ok(request) => {
                        self.ops[usize::from(request)] = Some(Op::Bench {
                            buffer,
                            pages: case.pages,
                        });
                        self.op_started[usize::from(request)] = start;
                        issued += 1;
                    }
                    Err(_) => {
                        let _ = idle.push(buffer);
                        bench.fail("a read was refused");
                        break;
                    }
                }
            }
            self.notify_device(env);
            if self.failed || bench.finished() {
                break;
            }
            let Some(device) = self.device.as_mut() else {
                return;
            };
            let mut spins = 0u64;
            let completion = loop {
                match device.poll(env) {
                    Ok(Some(completion)) => break Some(completion),
                    Ok(None) if spins < devbench::SPIN_LIMIT => spins += 1,
                    Ok(None) => break None,
                    Err(error) => {
                        self.queue_broke(env, error);
                        return;
                    }
                }
            };
            let Some(completion) = completion else {
                // Left in flight: the engine reaps it (or times it out)
                // as any other request.
                bench.fail("a read did not complete");
                break;
            };
            match self
                .ops
                .get_mut(usize::from(completion.request))
                .and_then(Option::take)
            {
                Some(Op::Bench { buffer, .. }) => {
                    let _ = idle.push(buffer);
                    completed += 1;
                    if completion.result.is_err() {
                        bench.fail("a read failed");
                        break;
                    }
                }
                Some(op) => {
                    // Nothing else is in flight during the measurement; if
                    // it were, it is handled as usual.
                    self.ops[usize::from(completion.request)] = Some(op);
                    self.complete(env, completion);
                }
                None => {}
            }
        }
        let elapsed = env.now_fresh().saturating_sub(start);
        for buffer in idle {
            self.release_run(buffer, case.pages);
        }
        if !bench.finished() {
            bench.record(completed, elapsed);
        }
    }

    /// Makes one request available to the device; the pump notifies the
    /// device once for all of them ([`Self::notify_device`]).
    fn submit<E: Port + Transport>(
        &mut self,
        env: &mut E,
        direction: Direction,
        block: u64,
        buffer: u16,
        op: Op,
    ) -> Result<(), SubmitError> {
        let Some(device) = self.device.as_mut() else {
            return Err(SubmitError::Busy);
        };
        match device.enqueue(env, direction, block, buffer, 1) {
            Ok(request) => {
                self.ops[usize::from(request)] = Some(op);
                self.op_started[usize::from(request)] = env.now();
                Ok(())
            }
            Err(SubmitError::Busy) => Err(SubmitError::Busy),
            Err(error) => {
                self.device_failed(env, "refused a request", &error);
                Err(error)
            }
        }
    }

    /// Notifies the device of the requests [`Self::submit`] made available.
    fn notify_device<E: Port + Transport>(&mut self, env: &mut E) {
        let Some(device) = self.device.as_mut() else {
            return;
        };
        if let Err(error) = device.notify(env) {
            self.device_failed(env, "refused a notify", &error);
        }
    }

    fn free_requests(&self) -> usize {
        self.device.as_ref().map_or(0, VirtioBlk::free_requests)
    }

    /// The device's used ring is not what a device may write: logged, and
    /// this instance stops (the next one resets the device).
    fn queue_broke<E: Port>(&mut self, env: &mut E, error: crate::virtio::PollError) {
        self.device_failed(env, "broke its queue", &error);
    }

    /// The swap device did `what` (`error`): logged, and the instance
    /// restarts (the next one resets the device and rebuilds from the core).
    fn device_failed<E: Port>(&mut self, env: &mut E, what: &str, error: &dyn core::fmt::Debug) {
        let mut reason = LogLine::new();
        let _ = write!(reason, "pager: swap device {what}");
        let mut text = reason.clone();
        let _ = write!(text, ": {error:?}: restarting");
        env.log(&text);
        self.failed = true;
        env.restart(reason.as_str());
    }

    /// Takes every finished request off the used ring; returns how many.
    fn reap<E: Port + Transport>(&mut self, env: &mut E) -> usize {
        let mut count = 0;
        loop {
            let Some(device) = self.device.as_mut() else {
                return count;
            };
            match device.poll(env) {
                Ok(Some(completion)) => {
                    count += 1;
                    self.complete(env, completion);
                    if self.failed {
                        return count;
                    }
                }
                Ok(None) => return count,
                Err(error) => {
                    self.queue_broke(env, error);
                    return count;
                }
            }
        }
    }

    fn complete<E: Port + Transport>(&mut self, env: &mut E, completion: Completion) {
        let Some(op) = self
            .ops
            .get_mut(usize::from(completion.request))
            .and_then(Option::take)
        else {
            return;
        };
        let ok = completion.result.is_ok();
        match op {
            Op::Header { buffer } => {
                let mut block = [0u8; BLOCK_SIZE];
                let read = ok
                    && env
                        .dma_read(usize::from(buffer) * PAGE_SIZE, &mut block)
                        .is_ok();
                self.release_buffer(buffer);
                if !read {
                    self.turn_off(env, "the swap header could not be read");
                    return;
                }
                self.header_read(env, &block);
            }
            Op::TableRead { index, buffer } => {
                if let Some(storage) = self.table_storage.as_mut() {
                    if let Some(block) = storage.get_mut(index as usize) {
                        // A failed read leaves zeros: the block fails its
                        // checks and is repaired as empty.
                        block.fill(0);
                        if ok {
                            let _ = env.dma_read(usize::from(buffer) * PAGE_SIZE, block);
                        }
                    }
                }
                self.release_buffer(buffer);
                if let Phase::LoadingTable { next, done } = self.phase {
                    self.phase = Phase::LoadingTable {
                        next,
                        done: done + 1,
                    };
                }
            }
            Op::TableFormat { buffer } => {
                self.release_buffer(buffer);
                if !ok {
                    self.turn_off(env, "formatting the swap device failed");
                    return;
                }
                if let Phase::Formatting { next, done, header } = self.phase {
                    self.phase = Phase::Formatting {
                        next,
                        done: done + 1,
                        header,
                    };
                }
            }
            Op::HeaderWrite { buffer } => {
                self.release_buffer(buffer);
                if !ok {
                    self.turn_off(env, "writing the swap header failed");
                    return;
                }
                env.log(&line("pager: swap device formatted"));
                self.phase = Phase::Ready;
            }
            Op::PageIn { record } => self.page_in_read(env, record, ok),
            Op::Data { nomination } => self.data_written(env, nomination, ok),
            Op::Flush { block, seq, buffer } => self.flushed(env, block, seq, buffer, ok),
            Op::Bench { buffer, pages } => self.release_run(buffer, pages),
        }
    }

    // ---------------------------------------------------------- device bring-up

    fn advance_phase<E: Port + Transport>(&mut self, env: &mut E) {
        match self.phase {
            Phase::ReadingHeader if self.requests_in_flight() == 0 => {
                if let Some(buffer) = self.take_buffer(0) {
                    if self
                        .submit(
                            env,
                            Direction::Read,
                            HEADER_BLOCK,
                            buffer,
                            Op::Header { buffer },
                        )
                        .is_err()
                    {
                        self.release_buffer(buffer);
                    }
                }
            }
            Phase::LoadingTable { mut next, done } => {
                let Some(header) = self.header else { return };
                let blocks = header.table_blocks();
                while next < blocks && self.free_requests() > 0 {
                    let Some(buffer) = self.take_buffer(0) else {
                        break;
                    };
                    let block = header.table_block(next).unwrap_or(0);
                    if self
                        .submit(
                            env,
                            Direction::Read,
                            block,
                            buffer,
                            Op::TableRead {
                                index: next,
                                buffer,
                            },
                        )
                        .is_err()
                    {
                        self.release_buffer(buffer);
                        break;
                    }
                    next += 1;
                }
                self.phase = Phase::LoadingTable { next, done };
                if done == blocks {
                    self.finish_load(env, header);
                }
            }
            Phase::Formatting {
                mut next,
                done,
                header: header_sent,
            } => {
                let Some(header) = self.header else { return };
                let blocks = header.table_blocks();
                while next < blocks && self.free_requests() > 0 {
                    let Some(buffer) = self.take_buffer(0) else {
                        break;
                    };
                    let data = self
                        .table
                        .as_mut()
                        .and_then(|table| table.sealed_block(next).copied())
                        .unwrap_or([0; BLOCK_SIZE]);
                    let block = header.table_block(next).unwrap_or(0);
                    if env
                        .dma_write(usize::from(buffer) * PAGE_SIZE, &data)
                        .is_err()
                        || self
                            .submit(
                                env,
                                Direction::Write,
                                block,
                                buffer,
                                Op::TableFormat { buffer },
                            )
                            .is_err()
                    {
                        self.release_buffer(buffer);
                        break;
                    }
                    next += 1;
                }
                let mut header_sent = header_sent;
                if done == blocks && !header_sent {
                    if let Some(buffer) = self.take_buffer(0) {
                        let data = header.encode();
                        if env
                            .dma_write(usize::from(buffer) * PAGE_SIZE, &data)
                            .is_ok()
                            && self
                                .submit(
                                    env,
                                    Direction::Write,
                                    HEADER_BLOCK,
                                    buffer,
                                    Op::HeaderWrite { buffer },
                                )
                                .is_ok()
                        {
                            header_sent = true;
                        } else {
                            self.release_buffer(buffer);
                        }
                    }
                }
                if let Phase::Formatting { .. } = self.phase {
                    self.phase = Phase::Formatting {
                        next,
                        done,
                        header: header_sent,
                    };
                }
            }
            _ => {}
        }
    }

    /// Most device slots the table storage can describe.
    fn max_slots(&self) -> u32 {
        let blocks = self
            .table_storage
            .as_ref()
            .map_or(0, |storage| storage.len());
        (blocks as u32).saturating_mul(crate::disk::ENTRIES_PER_TABLE_BLOCK)
    }

    fn header_read<E: Port>(&mut self, env: &mut E, block: &[u8; BLOCK_SIZE]) {
        let capacity = self.device.as_ref().map_or(0, VirtioBlk::capacity_blocks);
        match SwapHeader::decode(block) {
            Ok(header)
                if header.check_device(capacity).is_ok()
                    && header.slot_count() <= self.max_slots() =>
            {
                self.header = Some(header);
                self.phase = Phase::LoadingTable { next: 0, done: 0 };
                let mut text = LogLine::new();
                text.push_str("pager: swap device: ")
                    .push_decimal(u64::from(header.slot_count()))
                    .push_str(" slots, loading the slot table");
                env.log(&text);
            }
            decoded => {
                let mut text = LogLine::new();
                match decoded {
                    Err(error) => {
                        let _ = write!(text, "pager: swap header invalid ({error}): formatting");
                    }
                    Ok(_) => {
                        text.push_str(
                            "pager: swap header does not fit this device or pager: formatting",
                        );
                    }
                }
                env.log(&text);
                self.format(env, capacity);
            }
        }
    }

    fn format<E: Port>(&mut self, env: &mut E, capacity: u64) {
        let format_id = {
            // Not secret, only distinct per format: the clock and a constant.
            let now = env.now();
            (now ^ 0x9E37_79B9_7F4A_7C15)
                .rotate_left(17)
                .wrapping_mul(0xBF58_476D_1CE4_E5B9)
                | 1
        };
        let header = SwapHeader::for_device(capacity, format_id).and_then(|largest| {
            SwapHeader::new(largest.slot_count().min(self.max_slots()), format_id)
        });
        let (Ok(header), Some(storage)) = (header, self.table_storage.take()) else {
            self.turn_off(env, "the swap device is too small");
            return;
        };
        match SlotTable::format(storage, header) {
            Ok(table) => {
                self.header = Some(header);
                self.table = Some(table);
                self.phase = Phase::Formatting {
                    next: 0,
                    done: 0,
                    header: false,
                };
            }
            Err(_) => self.turn_off(env, "the slot table does not fit the pager's memory"),
        }
    }

    fn finish_load<E: Port>(&mut self, env: &mut E, header: SwapHeader) {
        let Some(storage) = self.table_storage.take() else {
            return;
        };
        let mut bad = 0u64;
        match SlotTable::load_repairing(storage, header, |_, _| bad += 1) {
            Ok(table) => {
                self.table = Some(table);
                self.phase = Phase::Ready;
                if bad > 0 {
                    let mut text = LogLine::new();
                    text.push_str("pager: ")
                        .push_decimal(bad)
                        .push_str(" slot-table blocks were damaged and are reset; their pages fail verification");
                    env.log(&text);
                }
            }
            Err(_) => self.turn_off(env, "the slot table does not fit the pager's memory"),
        }
    }

    /// Splits the device slots and rebuilds every domain's allocator from
    /// the mirror of the core's map; sends `Partition`s.
    fn partition<E: Port>(&mut self, env: &mut E) {
        let Some(header) = self.header else { return };
        let mut order: Vec<usize, MAX_DOMAINS> = (0..self.domains.len()).collect();
        order.sort_unstable_by_key(|index| self.domains[*index].id);
        let mut weights: Vec<u64, MAX_DOMAINS> = Vec::new();
        for index in order.iter() {
            let _ = weights.push(self.domains[*index].memory_pages);
        }
        let mut parts = [Partition::default(); MAX_DOMAINS];
        let parts = &mut parts[..order.len()];
        if !order.is_empty() && Partition::split(header.slot_count(), &weights, parts).is_err() {
            env.log(&line("pager: no domain has memory: nothing to page"));
        }
        for (position, index) in order.iter().enumerate() {
            let mut partition = parts[position];
            let domain = &mut self.domains[*index];
            partition.count = partition
                .count
                .min(u32::try_from(domain.memory_pages).unwrap_or(u32::MAX));
            domain.partition = partition;
            domain.partitioned = true;
            let count = partition.count;
            if domain.policy.is_some() {
                let stack = self.halves.take(count as usize);
                let words = self.words.take(words_for(u64::from(count)));
                if let (Some(stack), Some(words)) = (stack, words) {
                    let used = domain
                        .map
                        .iter()
                        .filter_map(|raw| raw.checked_sub(1))
                        .filter(|slot| *slot < count)
                        .map(Slot::new);
                    match SlotAllocator::rebuild(count, stack, words, used) {
                        Ok(slots) => domain.slots = Some(slots),
                        Err(error) => {
                            let mut text = LogLine::new();
                            let _ = write!(text, "pager: domain {}: the core's map is inconsistent ({error}): eviction off", domain.id);
                            env.log(&text);
                        }
                    }
                } else {
                    let mut text = LogLine::new();
                    text.push_str("pager: domain ")
                        .push_decimal(u64::from(domain.id))
                        .push_str(": no pager memory for its slots: eviction off");
                    env.log(&text);
                }
            }
            // The table's entries must name the frames the map names.
            if let Some(table) = self.table.as_ref() {
                let mut mismatches = 0u64;
                for (gfn, raw) in domain.map.iter().enumerate() {
                    let Some(slot) = raw.checked_sub(1) else {
                        continue;
                    };
                    let found = partition
                        .device_slot(Slot::new(slot))
                        .and_then(|device_slot| table.entry(device_slot).ok())
                        .and_then(|entry| entry.owner);
                    if found
                        != Some(Owner {
                            domain: domain.id,
                            gfn: Gfn::new(gfn as u64),
                        })
                    {
                        mismatches += 1;
                    }
                }
                domain.mismatches = mismatches;
                if mismatches > 0 {
                    let mut text = LogLine::new();
                    text.push_str("pager: domain ")
                        .push_decimal(u64::from(domain.id))
                        .push_str(": ")
                        .push_decimal(mismatches)
                        .push_str(" slot-table entries disagree with the core's map; those page-ins will fail");
                    env.log(&text);
                }
            }
            let mut text = LogLine::new();
            text.push_str("pager: domain ")
                .push_decimal(u64::from(domain.id))
                .push_str(": partition of ")
                .push_decimal(u64::from(count))
                .push_str(" slots, ")
                .push_decimal(domain.paged())
                .push_str(" paged");
            env.log(&text);
            let id = domain.id;
            self.send_critical(
                env,
                ToCore::Partition {
                    domain: id,
                    slots: count,
                },
            );
        }
        self.partitioned = true;
    }

    // ----------------------------------------------------------------- page-in

    fn start_page_ins<E: Port + Transport>(&mut self, env: &mut E) {
        // Oldest first.
        loop {
            if self.failed || self.free_requests() == 0 {
                return;
            }
            let next = self
                .page_ins
                .iter()
                .enumerate()
                .filter_map(|(index, record)| {
                    record
                        .filter(|record| record.stage == PageInStage::Queued)
                        .map(|record| (index, record))
                })
                .min_by_key(|(_, record)| (record.readahead, record.received));
            let Some((index, record)) = next else { return };
            if record.readahead && self.free_requests() <= READAHEAD_REQUEST_RESERVE {
                return;
            }
            let device_slot = self.domains[record.domain]
                .partition
                .device_slot(record.slot);
            let block =
                device_slot.and_then(|slot| self.header.and_then(|header| header.slot_block(slot)));
            let Some(block) = block else {
                self.page_ins[index] = None;
                if record.readahead {
                    continue;
                }
                let id = self.domains[record.domain].id;
                self.send_critical(
                    env,
                    ToCore::LoadFailed {
                        domain: id,
                        gfn: record.gfn,
                        reason: LoadFailure::WrongOwner,
                    },
                );
                continue;
            };
            let reserve = if record.readahead { READAHEAD_BUFFER_RESERVE } else { 0 };
            let Some(buffer) = self.take_buffer(reserve) else {
                return;
            };
            if self
                .submit(
                    env,
                    Direction::Read,
                    block,
                    buffer,
                    Op::PageIn { record: index },
                )
                .is_err()
            {
                self.release_buffer(buffer);
                return;
            }
            if let Some(record) = self.page_ins[index].as_mut() {
                record.stage = PageInStage::Reading { buffer };
            }
        }
    }

    fn page_in_read<E: Port + Transport>(&mut self, env: &mut E, index: usize, ok: bool) {
        let Some(record) = self.page_ins[index] else {
            return;
        };
        let PageInStage::Reading { buffer } = record.stage else {
            return;
        };
        let domain = &self.domains[record.domain];
        let id = domain.id;
        if record.cancelled {
            self.page_ins[index] = None;
            self.release_buffer(buffer);
            return;
        }
        let verdict = if ok {
            let mut page = [0u8; PAGE_SIZE];
            let owner = Owner {
                domain: id,
                gfn: Gfn::new(record.gfn),
            };
            let entry = domain
                .partition
                .device_slot(record.slot)
                .and_then(|device_slot| self.table.as_ref().map(|table| table.entry(device_slot)));
            match (
                entry,
                env.dma_read(usize::from(buffer) * PAGE_SIZE, &mut page),
            ) {
                (Some(Ok(entry)), Ok(())) => verify_page(entry, owner, &page),
                (Some(Err(error)), _) => Err(PageInError::Table(error)),
                _ => Err(PageInError::ReadFailed),
            }
        } else {
            Err(PageInError::ReadFailed)
        };
        match verdict {
            Ok(()) => {
                if !record.readahead {
                    let now = env.now();
                    let micros = now.saturating_sub(record.received) / 1000;
                    let bucket = if micros == 0 {
                        0
                    } else {
                        (63 - micros.leading_zeros() as usize).min(LATENCY_BUCKETS - 1)
                    };
                    let domain = &mut self.domains[record.domain];
                    domain.latency[bucket] = domain.latency[bucket].saturating_add(1);
                }
                self.page_ins[index] = Some(PageIn {
                    stage: PageInStage::Loading { buffer },
                    ..record
                });
                self.send_critical(
                    env,
                    ToCore::Load {
                        domain: id,
                        gfn: record.gfn,
                        slot: record.slot.get(),
                        buffer,
                    },
                );
            }
            Err(_) if record.readahead => {
                // Nobody waits for it: a fault on it reads it again, and
                // that read's failure stops the domain.
                self.page_ins[index] = None;
                self.release_buffer(buffer);
            }
            Err(error) => {
                self.page_ins[index] = None;
                self.release_buffer(buffer);
                let reason = match error {
                    PageInError::ReadFailed => LoadFailure::ReadError,
                    PageInError::Corrupt { .. } => LoadFailure::BadChecksum,
                    PageInError::NotRecorded
                    | PageInError::WrongOwner { .. }
                    | PageInError::Table(_) => LoadFailure::WrongOwner,
                };
                let failure = crate::disk::PageInFailure {
                    owner: Owner {
                        domain: id,
                        gfn: Gfn::new(record.gfn),
                    },
                    slot: record.slot,
                    error,
                };
                let mut text = LogLine::new();
                let _ = write!(text, "pager: {failure}");
                env.log(&text);
                self.send_critical(
                    env,
                    ToCore::LoadFailed {
                        domain: id,
                        gfn: record.gfn,
                        reason,
                    },
                );
            }
        }
    }

    // ---------------------------------------------------------------- eviction

    /// Starts the evictions whose slot is taken: sets each entry in the
    /// cached table and submits the data write. The table write that
    /// carries the entry is started by [`Self::start_flush`] in the same
    /// round, so both writes are in flight together; the order in which
    /// they reach the device does not matter, because `Evict` (the only
    /// step that makes the core's map name the slot) waits for both.
    fn start_data_writes<E: Port + Transport>(&mut self, env: &mut E) {
        // Leave a request slot for the table write that goes with them.
        let reserve = PAGE_IN_REQUEST_RESERVE + usize::from(!self.flush_in_flight);
        for index in 0..MAX_NOMINATIONS {
            if self.failed || self.free_requests() <= reserve {
                return;
            }
            let Some(nomination) = self.nominations[index] else {
                continue;
            };
            if nomination.stage != Stage::WaitWrite {
                continue;
            }
            let domain = &self.domains[nomination.domain];
            let entry = SlotEntry {
                owner: Some(Owner {
                    domain: domain.id,
                    gfn: Gfn::new(nomination.gfn),
                }),
                checksum: nomination.checksum,
            };
            let device_slot = nomination
                .slot
                .and_then(|slot| domain.partition.device_slot(slot));
            let data_block =
                device_slot.and_then(|slot| self.header.and_then(|header| header.slot_block(slot)));
            let table_block = match (device_slot, self.table.as_mut()) {
                (Some(device_slot), Some(table)) => table.set_entry(device_slot, entry).ok(),
                _ => None,
            };
            let (Some(data_block), Some(table_block)) = (data_block, table_block) else {
                self.fail_eviction(env, index, EvictFailure::WriteError);
                continue;
            };
            // Set before the submission, so a flush started later in this
            // round carries it; if the submission is refused the entry is
            // set again (at a later seq) on the next try.
            self.table_seq += 1;
            let seq = self.table_seq;
            if self
                .submit(
                    env,
                    Direction::Write,
                    data_block,
                    nomination.buffer,
                    Op::Data { nomination: index },
                )
                .is_err()
            {
                return;
            }
            if let Some(nomination) = self.nominations[index].as_mut() {
                nomination.stage = Stage::Writing {
                    block: table_block,
                    seq,
                    data: Part::Pending,
                    table: Part::Pending,
                };
            }
        }
    }

    /// An eviction whose data write finished: `Evict` once its entry is on
    /// the device too; given up if either write failed. Never while the
    /// data write is in flight (its completion names this nomination).
    fn settle_writes<E: Port>(&mut self, env: &mut E, index: usize) {
        let Some(mut nomination) = self.nominations[index] else {
            return;
        };
        let Stage::Writing { data, table, .. } = nomination.stage else {
            return;
        };
        match (data, table) {
            (Part::Pending, _) | (Part::Done, Part::Pending) => {}
            (Part::Failed, _) | (_, Part::Failed) => {
                self.fail_eviction(env, index, EvictFailure::WriteError);
            }
            (Part::Done, Part::Done) => {
                let Some(slot) = nomination.slot else {
                    return;
                };
                nomination.stage = Stage::Evicting;
                self.nominations[index] = Some(nomination);
                let id = self.domains[nomination.domain].id;
                self.send_critical(
                    env,
                    ToCore::Evict {
                        domain: id,
                        gfn: nomination.gfn,
                        slot: slot.get(),
                    },
                );
            }
        }
    }

    /// Gives up an eviction after `Nominated`: frees its slot and buffer and
    /// asks the core to cancel the nomination.
    fn fail_eviction<E: Port>(&mut self, env: &mut E, index: usize, reason: EvictFailure) {
        let Some(nomination) = self.nominations[index] else {
            return;
        };
        if matches!(nomination.stage, Stage::WaitWrite) {
            self.release_buffer(nomination.buffer);
        }
        let domain = &mut self.domains[nomination.domain];
        // A slot that failed a write stays taken for the rest of this
        // instance (it is in no map, so the next instance gets it back):
        // reusing it at once would fail again and again.
        domain.evict_failures += 1;
        domain.evicting = domain.evicting.saturating_sub(1);
        let id = domain.id;
        // The core answers nothing to EvictFailed: the nomination is over.
        self.nominations[index] = None;
        self.send_critical(
            env,
            ToCore::EvictFailed {
                domain: id,
                gfn: nomination.gfn,
                reason,
            },
        );
    }

    fn data_written<E: Port>(&mut self, env: &mut E, index: usize, ok: bool) {
        let Some(mut nomination) = self.nominations[index] else {
            return;
        };
        self.release_buffer(nomination.buffer);
        let Stage::Writing {
            block, seq, table, ..
        } = nomination.stage
        else {
            return;
        };
        if !ok {
            let mut text = LogLine::new();
            text.push_str("pager: domain ")
                .push_decimal(u64::from(self.domains[nomination.domain].id))
                .push_str(": swap write error; eviction abandoned");
            env.log(&text);
        }
        // The buffer is released (fail_eviction frees it only in
        // WaitWrite). An entry already written for a failed data write is
        // harmless: the slot is in no map, and stays taken for the rest of
        // this instance.
        nomination.stage = Stage::Writing {
            block,
            seq,
            data: if ok { Part::Done } else { Part::Failed },
            table,
        };
        self.nominations[index] = Some(nomination);
        self.settle_writes(env, index);
    }

    fn start_flush<E: Port + Transport>(&mut self, env: &mut E) {
        if self.flush_in_flight || self.failed || self.free_requests() <= PAGE_IN_REQUEST_RESERVE {
            return;
        }
        let Some(block) = self
            .nominations
            .iter()
            .flatten()
            .find_map(|nomination| match nomination.stage {
                Stage::Writing {
                    block,
                    table: Part::Pending,
                    ..
                } => Some(block),
                _ => None,
            })
        else {
            return;
        };
        let (Some(header), Some(table)) = (self.header, self.table.as_mut()) else {
            return;
        };
        let data = table.sealed_block(block).copied().unwrap_or([0; BLOCK_SIZE]);
        let Some(device_block) = header.table_block(block) else {
            return;
        };
        let Some(buffer) = self.take_buffer(0) else {
            return;
        };
        if env
            .dma_write(usize::from(buffer) * PAGE_SIZE, &data)
            .is_err()
        {
            self.release_buffer(buffer);
            return;
        }
        let seq = self.table_seq;
        if self
            .submit(
                env,
                Direction::Write,
                device_block,
                buffer,
                Op::Flush { block, seq, buffer },
            )
            .is_err()
        {
            self.release_buffer(buffer);
            return;
        }
        self.flush_in_flight = true;
    }

    fn flushed<E: Port>(&mut self, env: &mut E, block: u32, seq: u64, buffer: u16, ok: bool) {
        self.release_buffer(buffer);
        self.flush_in_flight = false;
        for index in 0..MAX_NOMINATIONS {
            let Some(mut nomination) = self.nominations[index] else {
                continue;
            };
            let Stage::Writing {
                block: waiting,
                seq: set_at,
                data,
                table: Part::Pending,
            } = nomination.stage
            else {
                continue;
            };
            if waiting != block || set_at > seq {
                continue;
            }
            nomination.stage = Stage::Writing {
                block: waiting,
                seq: set_at,
                data,
                table: if ok { Part::Done } else { Part::Failed },
            };
            self.nominations[index] = Some(nomination);
            self.settle_writes(env, index);
        }
    }

    fn start_nominations<E: Port>(&mut self, env: &mut E) {
        let now = env.now();
        if now < self.backoff_until {
            return;
        }
        for index in 0..self.domains.len() {
            loop {
                if self.failed || self.nominations_in_flight() >= MAX_NOMINATIONS {
                    return;
                }
                let domain = &mut self.domains[index];
                if domain.deficit() == 0 || domain.policy.is_none() {
                    break;
                }
                let Some(slots) = domain.slots.as_ref() else {
                    break;
                };
                let reserved = domain.nominating;
                if slots.free_count() <= reserved {
                    if reserved == 0 && !domain.full {
                        domain.evict_failures += 1;
                        Self::mark_full(env, domain);
                    }
                    break;
                }
                let Some(buffer) = self.take_buffer(PAGE_IN_BUFFER_RESERVE) else {
                    return;
                };
                let domain = &mut self.domains[index];
                let mut victim = domain.policy.as_mut().and_then(VictimPolicy::choose_victim);
                if victim.is_none() && now >= domain.rescan_at {
                    // Every candidate was tried (refused, or written during
                    // its eviction): try them again, at most every RESCAN_NS.
                    domain.rescan_at = now.saturating_add(RESCAN_NS);
                    if let Some(policy) = domain.policy.as_mut() {
                        policy.forget_tried();
                        victim = policy.choose_victim();
                    }
                }
                let Some(gfn) = victim else {
                    let (rescan_at, idle) = (domain.rescan_at, domain.evicting == 0);
                    self.release_buffer(buffer);
                    if idle {
                        self.backoff_until = self.backoff_until.max(rescan_at);
                    }
                    break;
                };
                let Some(slot) = self.nominations.iter().position(Option::is_none) else {
                    self.release_buffer(buffer);
                    return;
                };
                domain.nominating += 1;
                domain.evicting += 1;
                let id = domain.id;
                self.nominations[slot] = Some(Nomination {
                    domain: index,
                    gfn: gfn.get(),
                    buffer,
                    slot: None,
                    checksum: 0,
                    stage: Stage::Nominating,
                });
                self.send_critical(
                    env,
                    ToCore::Nominate {
                        domain: id,
                        gfn: gfn.get(),
                        buffer,
                    },
                );
            }
        }
    }
}

/// One timed burst of the measurement's last case: the CRC-32C of a 4 KiB
/// block, as [`crate::disk::verify_page`] computes it for every page-in
/// ([`crate::devbench`]). The block is filled before the clock starts.
fn checksum_burst<E: Port>(env: &mut E, bench: &mut DeviceBench) {
    let count = bench.checksum_burst_len();
    let mut block = [0u8; PAGE_SIZE];
    for (index, byte) in block.iter_mut().enumerate() {
        *byte = (index as u8) ^ 0x5a;
    }
    let start = env.now_fresh();
    let mut sum = 0u32;
    for _ in 0..count {
        sum ^= page_checksum(core::hint::black_box(&block));
    }
    let elapsed = env.now_fresh().saturating_sub(start);
    core::hint::black_box(sum);
    bench.record_checksums(count, elapsed);
}

#[cfg(test)]
mod tests;

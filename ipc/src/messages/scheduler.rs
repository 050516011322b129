//! The credit scheduler server's protocol (issue #4; restart: issue #6 §2).
//!
//! The core owns the mechanism (run queues, switches, timers, IPIs) and
//! never waits for the server on a hot path; the server owns the policy
//! (`scheduler-server`, Xen's credit1). The types here mirror the policy
//! library's plain types (`scheduler_server::{Event, Decision, Tickle, ...}`)
//! with ids as small integers; the server converts.
//!
//! # Ids
//!
//! * a pCPU is a `u8`, `0..pcpus` of the machine ([`Pcpu`]);
//! * a domain is the core's `u16` domain id, its index in the boot manifest
//!   ([`Domain`]);
//! * a vCPU is its domain and its index in that domain ([`Vcpu`]).
//!
//! # The conversation
//!
//! Core → server ([`ToServer`]):
//!
//! 1. **Rebuild stream**, right after every start of the server (generation
//!    1 and every restart), and at any later time the core wants to start
//!    over (e.g. after it had to drop events): [`ToServer::RebuildBegin`],
//!    any number of [`ToServer::RebuildDomains`] (every domain, before any
//!    vCPU) and [`ToServer::RebuildVcpus`] batches, then
//!    [`ToServer::RebuildEnd`] with the counts sent. The whole stream
//!    describes one instant of the core's state (the tunables and domain
//!    parameters last accepted, the online pCPUs, each vCPU's state, run
//!    time and last published credit): the core writes it without
//!    interleaving anything else. Running vCPUs should come first, then the
//!    queued ones in the order of their pCPU's last decision, so the queue
//!    order within a priority survives a restart. The worst case (16
//!    domains, 128 vCPUs) is 1 + 1 + 22 + 1 = 25 messages
//!    ([`REBUILD_STREAM_MAX_MESSAGES`]), which fits the empty ring of a
//!    fresh instance, so the core can write it in one go at start.
//! 2. **Events**, after `RebuildEnd`: what happened since the snapshot, in
//!    [`ToServer::Events`] batches of up to [`EVENT_BATCH_LEN`], in the
//!    order it happened per pCPU (at a switch point: `Ran`, then `Blocked`
//!    or `Yielded`, then `Dispatched`; `Overhead` when a pCPU's own work
//!    has taken 1 ms or more from its vCPUs). Events are reported, never
//!    awaited. `Blocked`, `Woke`, `Yielded` and the structural events go
//!    at the switch point that saw them; `Ran`, `Dispatched` and `Overhead`
//!    wait for the next batch that goes anyway or for the server's next
//!    turn. Events that reach a server with no rebuilt state (before
//!    `RebuildEnd`) are dropped.
//! 3. **Control** from `hvctl`, relayed: [`ToServer::SetDomain`],
//!    [`ToServer::Configure`], each with a request id the answer echoes.
//!
//! Server → core ([`ToCore`]):
//!
//! * after a complete rebuild, [`ToCore::Ready`] (from then on the core
//!   follows the server's decisions instead of its fallback), then any
//!   [`ToCore::Tickle`]s; if the stream was broken,
//!   [`ToCore::RebuildFailed`] instead (the core sends a fresh stream);
//! * after each batch of events, [`ToCore::Tickle`]s;
//! * [`ToCore::ControlResult`] for each control request;
//! * [`ToCore::Heartbeat`] every 100 ms.
//!
//! Not in the ring but in the publication area ([`crate::publication`]),
//! which the server writes before it sends anything computed with it:
//!
//! * each pCPU's **decision** (its ordered run list and slice), rewritten
//!   whenever it changes, for every online pCPU before `Ready`; the core
//!   takes in each pCPU's whose sequence moved every time the server gives
//!   the pCPU back, before it acts on the messages, so a tickle always
//!   finds the decision it was computed with;
//! * the **credit table**, every vCPU's [`CreditEntry`], rewritten after a
//!   rebuild and after every accounting period; the core reads it for
//!   `hvctl stats` and to hand the credits back at a rebuild.
//!
//! # Budget
//!
//! A body may take up to `SLOT_PAYLOAD - ENVELOPE_HEADER_MAX_SIZE` = 242
//! bytes ([`BODY_BUDGET`]). The largest bodies are a full event batch
//! (1 + 1 + 14 × 17 = 240) and, from the server, a control result
//! (1 + 5 + 1 + 14 = 21); every type states its largest encoding as a `MAX_ENCODED_SIZE`
//! computed with [`size`], and the asserts at the bottom check
//! them against the budget at compile time.
//!
//! # Validation
//!
//! The core decodes every server message with
//! [`decode_from_server`](super::decode_from_server) and a [`Shape`]: pCPU,
//! domain and vCPU ids must exist, run lists must not repeat a vCPU, slices
//! and knob values must be in their ranges ([`ToCore::validate`]).

use heapless::Vec;
use serde::{Deserialize, Serialize};

use super::{envelope_max_size, size, DecodeError, ErrorCode, FromServer, Message};
use crate::boot;

/// Most pCPUs ([`boot::MAX_CPUS`]).
pub const MAX_PCPUS: usize = boot::MAX_CPUS as usize;
/// Most domains ([`boot::MAX_DOMAINS`]); domain ids are `0..MAX_DOMAINS`.
pub const MAX_DOMAINS: usize = boot::MAX_DOMAINS;
/// Most vCPUs per domain ([`boot::MAX_VCPUS`]).
pub const MAX_VCPUS_PER_DOMAIN: usize = boot::MAX_VCPUS as usize;
/// Most vCPUs in all.
pub const MAX_VCPUS: usize = MAX_DOMAINS * MAX_VCPUS_PER_DOMAIN;
/// Longest run list of a published decision ([`crate::publication`]).
pub const RUN_LIST_LEN: usize = 8;
/// Most events in one [`ToServer::Events`].
pub const EVENT_BATCH_LEN: usize = 14;
/// Most domain records in one [`ToServer::RebuildDomains`].
pub const REBUILD_DOMAIN_BATCH_LEN: usize = 16;
/// Most vCPU records in one [`ToServer::RebuildVcpus`].
pub const REBUILD_VCPU_BATCH_LEN: usize = 6;
/// Most messages in one rebuild stream (begin, domains, vCPUs, end).
pub const REBUILD_STREAM_MAX_MESSAGES: usize =
    2 + MAX_DOMAINS.div_ceil(REBUILD_DOMAIN_BATCH_LEN) + MAX_VCPUS.div_ceil(REBUILD_VCPU_BATCH_LEN);
/// Bytes a message body may take in a ring slot.
pub const BODY_BUDGET: usize = crate::ring::SLOT_PAYLOAD - super::ENVELOPE_HEADER_MAX_SIZE;

/// Smallest domain weight (Xen's range).
pub const WEIGHT_MIN: u32 = 1;
/// Largest domain weight.
pub const WEIGHT_MAX: u32 = 65_535;
/// Largest cap, in percent of one pCPU (100 % per vCPU of a domain); 0 = none.
pub const CAP_MAX: u32 = 100 * MAX_VCPUS_PER_DOMAIN as u32;
/// Shortest timeslice, in ms.
pub const TIMESLICE_MS_MIN: u32 = 1;
/// Longest timeslice, in ms.
pub const TIMESLICE_MS_MAX: u32 = 1000;
/// Shortest non-zero ratelimit, in µs (0 = off).
pub const RATELIMIT_US_MIN: u32 = 100;
/// Longest ratelimit, in µs.
pub const RATELIMIT_US_MAX: u32 = 500_000;
/// Shortest slice a published decision may carry (the shortest timeslice).
pub const SLICE_NS_MIN: u64 = TIMESLICE_MS_MIN as u64 * 1_000_000;
/// Longest slice a published decision may carry (the longest timeslice).
pub const SLICE_NS_MAX: u64 = TIMESLICE_MS_MAX as u64 * 1_000_000;

/// A pCPU: `0..pcpus`.
pub type Pcpu = u8;
/// A domain: the core's domain id.
pub type Domain = u16;

const PCPU_SIZE: usize = size::U8;
const DOMAIN_SIZE: usize = size::U16;

/// The largest of `sizes` (for the variants of an enum).
const fn largest(sizes: &[usize]) -> usize {
    let mut largest = 0;
    let mut index = 0;
    while index < sizes.len() {
        largest = size::max(largest, sizes[index]);
        index += 1;
    }
    largest
}

/// A vCPU: its domain and its index in that domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Vcpu {
    /// The domain.
    pub domain: Domain,
    /// The index in the domain, `0..vcpus` of the domain.
    pub index: u8,
}

impl Vcpu {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = DOMAIN_SIZE + size::U8;

    /// vCPU `index` of `domain`.
    pub const fn new(domain: Domain, index: u8) -> Self {
        Self { domain, index }
    }
}

const VCPU_SIZE: usize = Vcpu::MAX_ENCODED_SIZE;

/// What happened in the core (mirrors `scheduler_server::Event`).
/// Timestamps are the core's clock, ns since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A pCPU came online.
    PcpuOnline {
        /// The pCPU.
        pcpu: Pcpu,
    },
    /// A domain was created with this weight and cap (the server checks
    /// the ranges and refuses the event if one is out).
    DomainCreated {
        /// The domain.
        domain: Domain,
        /// Its weight, `1..=65535`.
        weight: u32,
        /// Its cap in percent of one pCPU, `0..=800`, 0 = none.
        cap: u32,
    },
    /// A domain and its vCPUs are gone.
    DomainDestroyed {
        /// The domain.
        domain: Domain,
    },
    /// A vCPU was created.
    VcpuCreated {
        /// The vCPU.
        vcpu: Vcpu,
        /// Whether it can run now (else it starts blocked).
        runnable: bool,
    },
    /// A vCPU is gone.
    VcpuDestroyed {
        /// The vCPU.
        vcpu: Vcpu,
    },
    /// At a switch point `pcpu` started running `vcpu` (`None`: idle);
    /// reported only when what runs changes.
    Dispatched {
        /// The pCPU.
        pcpu: Pcpu,
        /// What runs there now.
        vcpu: Option<Vcpu>,
        /// When.
        at: u64,
    },
    /// `vcpu` ran on `pcpu` for `ns` since its last report (whenever it
    /// stops running: its slice ended, it blocked or yielded, or something
    /// else took the pCPU).
    Ran {
        /// The vCPU.
        vcpu: Vcpu,
        /// Where.
        pcpu: Pcpu,
        /// How long, in ns.
        ns: u64,
    },
    /// The vCPU blocked (HLT with IF=1, `SCHEDOP_block`, or down).
    Blocked {
        /// The vCPU.
        vcpu: Vcpu,
        /// When.
        at: u64,
    },
    /// The vCPU has work again (interrupt, timer, IPI).
    Woke {
        /// The vCPU.
        vcpu: Vcpu,
        /// When.
        at: u64,
    },
    /// The vCPU yielded.
    Yielded {
        /// The vCPU.
        vcpu: Vcpu,
    },
    /// Time passed (the server also sends itself these at its deadlines).
    Tick {
        /// The current time.
        now: u64,
    },
    /// `pcpu` spent `ns` on the hypervisor's own work since its last such
    /// report: exits, switch points, servers, waiting for the core's lock;
    /// neither a guest's time nor idle time. No vCPU could have had it, so
    /// the server does not hand it out as credit.
    Overhead {
        /// The pCPU.
        pcpu: Pcpu,
        /// How long, in ns.
        ns: u64,
    },
}

impl Event {
    /// Largest encoding (`Dispatched`).
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT
        + largest(&[
            PCPU_SIZE,                                       // PcpuOnline
            DOMAIN_SIZE + size::U32 + size::U32,             // DomainCreated
            DOMAIN_SIZE,                                     // DomainDestroyed
            VCPU_SIZE + size::U8,                            // VcpuCreated
            VCPU_SIZE,                                       // VcpuDestroyed
            PCPU_SIZE + size::option(VCPU_SIZE) + size::U64, // Dispatched
            VCPU_SIZE + PCPU_SIZE + size::U64,               // Ran
            VCPU_SIZE + size::U64,                           // Blocked, Woke
            size::U64,                                       // Tick
            PCPU_SIZE + size::U64,                           // Overhead
        ]);
}

/// A batch of events.
pub type EventBatch = Vec<Event, EVENT_BATCH_LEN>;

/// Where a vCPU is, in a rebuild record (mirrors
/// `scheduler_server::VcpuRunState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VcpuState {
    /// Running on the pCPU.
    Running {
        /// The pCPU.
        pcpu: Pcpu,
    },
    /// Runnable, queued on the pCPU.
    Runnable {
        /// The pCPU.
        pcpu: Pcpu,
    },
    /// Blocked or down.
    Blocked,
}

impl VcpuState {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT + PCPU_SIZE;
}

/// A vCPU's credit as a server instance last published it
/// ([`CreditEntry`]), handed back at rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedCredit {
    /// [`CreditEntry::credit_ns`].
    pub credit_ns: i64,
    /// [`CreditEntry::run_time_ns`] of the same entry: the run time counted
    /// since is burnt from the credit on restore.
    pub run_time_ns: u64,
}

impl PublishedCredit {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::U64 + size::U64;
}

/// A domain in the rebuild stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// The domain.
    pub domain: Domain,
    /// Its weight as last accepted ([`Applied::Domain`]) or configured.
    pub weight: u32,
    /// Its cap, likewise.
    pub cap: u32,
}

impl DomainRecord {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = DOMAIN_SIZE + size::U32 + size::U32;
}

/// A vCPU in the rebuild stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuRecord {
    /// The vCPU.
    pub vcpu: Vcpu,
    /// Its state in the core.
    pub state: VcpuState,
    /// The CPU time it has used since it was created, in ns.
    pub run_time_ns: u64,
    /// The last credit a server instance published for it, if any.
    pub published: Option<PublishedCredit>,
}

impl VcpuRecord {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = VCPU_SIZE
        + VcpuState::MAX_ENCODED_SIZE
        + size::U64
        + size::option(PublishedCredit::MAX_ENCODED_SIZE);
}

/// Core → scheduler server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToServer {
    /// What happened, in order per pCPU.
    Events {
        /// The events.
        batch: EventBatch,
    },
    /// Starts a rebuild stream (and drops any unfinished one).
    RebuildBegin {
        /// The core's clock at the snapshot.
        now: u64,
        /// The timeslice last accepted, in ms.
        timeslice_ms: u32,
        /// The ratelimit last accepted, in µs.
        ratelimit_us: u32,
        /// When the previous instance last ran accounting (the
        /// `accounted_at` of its last credit table), if known.
        accounted_at: Option<u64>,
        /// The online pCPUs, bit `n` = pCPU `n`.
        pcpus: u8,
    },
    /// Domains of the stream (all of them before any vCPU record).
    RebuildDomains {
        /// The records.
        records: Vec<DomainRecord, REBUILD_DOMAIN_BATCH_LEN>,
    },
    /// vCPUs of the stream.
    RebuildVcpus {
        /// The records.
        records: Vec<VcpuRecord, REBUILD_VCPU_BATCH_LEN>,
    },
    /// Ends the stream: the numbers of domain and vCPU records sent.
    RebuildEnd {
        /// Domain records in the stream.
        domains: u16,
        /// vCPU records in the stream.
        vcpus: u16,
    },
    /// `hvctl sched-credit -d DOMAIN [-w WEIGHT] [-c CAP]`.
    SetDomain {
        /// The core's id for the request, echoed in the answer.
        request: u32,
        /// The domain.
        domain: Domain,
        /// A new weight, if given.
        weight: Option<u32>,
        /// A new cap, if given.
        cap: Option<u32>,
    },
    /// `hvctl sched-credit -s [-t TSLICE_MS] [-r RATELIMIT_US]`.
    Configure {
        /// The core's id for the request, echoed in the answer.
        request: u32,
        /// A new timeslice in ms, if given.
        timeslice_ms: Option<u32>,
        /// A new ratelimit in µs, if given.
        ratelimit_us: Option<u32>,
    },
    /// The core refused a message from the server, for this reason.
    Error {
        /// What was wrong.
        code: ErrorCode,
    },
}

impl Message for ToServer {
    const MAX_ENCODED_SIZE: usize = size::VARIANT
        + largest(&[
            size::collection(EVENT_BATCH_LEN, Event::MAX_ENCODED_SIZE),
            size::U64 + size::U32 + size::U32 + size::option(size::U64) + size::U8,
            size::collection(REBUILD_DOMAIN_BATCH_LEN, DomainRecord::MAX_ENCODED_SIZE),
            size::collection(REBUILD_VCPU_BATCH_LEN, VcpuRecord::MAX_ENCODED_SIZE),
            size::U16 + size::U16,
            size::U32 + DOMAIN_SIZE + size::option(size::U32) + size::option(size::U32),
            size::U32 + size::option(size::U32) + size::option(size::U32),
            ErrorCode::MAX_ENCODED_SIZE,
        ]);
}

/// credit1 priorities, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Nothing to run.
    Idle,
    /// Has spent more than its credit.
    Over,
    /// Has credit left.
    Under,
    /// Woke while UNDER.
    Boost,
}

/// One vCPU's published scheduling state: an entry of the credit table
/// ([`crate::publication`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditEntry {
    /// The vCPU.
    pub vcpu: Vcpu,
    /// Its credit, in ns of pCPU time.
    pub credit_ns: i64,
    /// Its run time as the server counted it, in ns.
    pub run_time_ns: u64,
    /// Its priority.
    pub priority: Priority,
    /// Whether its domain's cap holds it off the pCPUs.
    pub parked: bool,
}

/// Why a knob value was refused (mirrors `scheduler_server::KnobError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KnobError {
    /// A weight outside `1..=65535`.
    WeightOutOfRange {
        /// The weight asked for.
        requested: u32,
    },
    /// A cap above [`CAP_MAX`].
    CapOutOfRange {
        /// The cap asked for.
        requested: u32,
    },
    /// A timeslice outside `1..=1000` ms.
    TimesliceOutOfRange {
        /// The timeslice asked for, in ms.
        requested_ms: u32,
    },
    /// A ratelimit neither 0 nor in `100..=500000` µs.
    RatelimitOutOfRange {
        /// The ratelimit asked for, in µs.
        requested_us: u32,
    },
    /// A ratelimit longer than the timeslice.
    RatelimitAboveTimeslice {
        /// The resulting ratelimit, in µs.
        ratelimit_us: u32,
        /// The resulting timeslice, in ms.
        timeslice_ms: u32,
    },
}

impl KnobError {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT + size::U32 + size::U32;
}

/// Why a control request was refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlError {
    /// A value out of range.
    Knob(KnobError),
    /// No such domain.
    UnknownDomain {
        /// The domain asked for.
        domain: Domain,
    },
    /// The server has not been rebuilt yet (no `RebuildEnd` so far).
    NotReady,
}

impl ControlError {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize =
        size::VARIANT + size::max(KnobError::MAX_ENCODED_SIZE, DOMAIN_SIZE);
}

/// What an accepted control request set: the values now in force, which
/// the core keeps and hands back at rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A domain's parameters.
    Domain {
        /// The domain.
        domain: Domain,
        /// Its weight now.
        weight: u32,
        /// Its cap now.
        cap: u32,
    },
    /// The system-wide tunables.
    Tunables {
        /// The timeslice now, in ms.
        timeslice_ms: u32,
        /// The ratelimit now, in µs.
        ratelimit_us: u32,
    },
}

impl Applied {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize =
        size::VARIANT + size::max(DOMAIN_SIZE + size::U32 + size::U32, size::U32 + size::U32);
}

/// Why the policy refused an event or a snapshot (mirrors
/// `scheduler_server::EventError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventError {
    /// No such domain.
    UnknownDomain(Domain),
    /// No such vCPU.
    UnknownVcpu(Vcpu),
    /// The domain exists already.
    DomainExists(Domain),
    /// The vCPU exists already.
    VcpuExists(Vcpu),
    /// Every domain slot is taken.
    TooManyDomains,
    /// The vCPU index is out of range.
    VcpuIndexOutOfRange(Vcpu),
    /// The pCPU is out of range.
    PcpuOutOfRange(Pcpu),
    /// The pCPU is not online.
    PcpuOffline(Pcpu),
    /// A vCPU was to be placed but no pCPU is online.
    NoPcpuOnline,
}

impl EventError {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT + VCPU_SIZE;
}

/// Why a rebuild stream was not taken; the core sends a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RebuildError {
    /// A record or end message without a `RebuildBegin` before it.
    OutOfOrder,
    /// More domain or vCPU records than the server's tables hold.
    TooManyRecords,
    /// The counts in `RebuildEnd` are not those received.
    Incomplete {
        /// Domain records received.
        domains: u16,
        /// vCPU records received.
        vcpus: u16,
    },
    /// A tunable or a domain's weight or cap is out of range.
    Knob(KnobError),
    /// The policy refused the snapshot as inconsistent.
    Refused(EventError),
}

impl RebuildError {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT
        + largest(&[
            size::U16 + size::U16,
            KnobError::MAX_ENCODED_SIZE,
            EventError::MAX_ENCODED_SIZE,
        ]);
}

/// Scheduler server → core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCore {
    /// Rebuilt from the stream: the decisions of every online pCPU were
    /// published just before; the core follows the server from now on.
    Ready,
    /// Make `pcpu` reach a switch point now, if what runs there is still
    /// `expected` (`None`: idle); otherwise drop the tickle.
    Tickle {
        /// The pCPU.
        pcpu: Pcpu,
        /// What the server believes runs there.
        expected: Option<Vcpu>,
    },
    /// The answer to a `SetDomain` or `Configure`.
    ControlResult {
        /// The request's id.
        request: u32,
        /// What is now in force, or why nothing changed.
        result: Result<Applied, ControlError>,
    },
    /// The rebuild stream was broken; nothing of it was taken.
    RebuildFailed {
        /// Why.
        reason: RebuildError,
    },
    /// The server is alive; `count` increases by one per heartbeat.
    Heartbeat {
        /// Heartbeats sent by this instance so far.
        count: u64,
    },
}

impl Message for ToCore {
    const MAX_ENCODED_SIZE: usize = size::VARIANT
        + largest(&[
            PCPU_SIZE + size::option(VCPU_SIZE),
            size::U32
                + size::VARIANT
                + size::max(Applied::MAX_ENCODED_SIZE, ControlError::MAX_ENCODED_SIZE),
            RebuildError::MAX_ENCODED_SIZE,
            size::U64,
        ]);
}

/// The machine the core checks ids against: its pCPUs, and the vCPU count
/// of each domain id (0 = no such domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// Online pCPUs are `0..pcpus`.
    pub pcpus: u8,
    /// `vcpus[d]` = the number of vCPUs of domain `d`; 0 if it does not
    /// exist.
    pub vcpus: [u8; MAX_DOMAINS],
}

impl Shape {
    /// A machine of `pcpus` pCPUs and no domain.
    pub const fn new(pcpus: u8) -> Self {
        Self {
            pcpus,
            vcpus: [0; MAX_DOMAINS],
        }
    }

    /// This shape with domain `domain` of `vcpus` vCPUs (ignored if the id is
    /// not below [`MAX_DOMAINS`]).
    pub fn with_domain(mut self, domain: Domain, vcpus: u8) -> Self {
        if let Some(count) = self.vcpus.get_mut(usize::from(domain)) {
            *count = vcpus;
        }
        self
    }

    pub(crate) fn check_pcpu(&self, pcpu: Pcpu, field: &'static str) -> Result<(), DecodeError> {
        in_range(pcpu < self.pcpus, field)
    }

    fn check_domain(&self, domain: Domain) -> Result<(), DecodeError> {
        in_range(self.vcpu_count(domain) > 0, "domain")
    }

    pub(crate) fn check_vcpu(&self, vcpu: Vcpu, field: &'static str) -> Result<(), DecodeError> {
        in_range(vcpu.index < self.vcpu_count(vcpu.domain), field)
    }

    fn vcpu_count(&self, domain: Domain) -> u8 {
        self.vcpus.get(usize::from(domain)).copied().unwrap_or(0)
    }
}

fn in_range(ok: bool, field: &'static str) -> Result<(), DecodeError> {
    if ok {
        Ok(())
    } else {
        Err(DecodeError::OutOfRange { field })
    }
}

impl Applied {
    fn validate(&self, shape: &Shape) -> Result<(), DecodeError> {
        match *self {
            Self::Domain {
                domain,
                weight,
                cap,
            } => {
                shape.check_domain(domain)?;
                in_range((WEIGHT_MIN..=WEIGHT_MAX).contains(&weight), "weight")?;
                in_range(cap <= CAP_MAX, "cap")
            }
            Self::Tunables {
                timeslice_ms,
                ratelimit_us,
            } => {
                in_range(
                    (TIMESLICE_MS_MIN..=TIMESLICE_MS_MAX).contains(&timeslice_ms),
                    "timeslice_ms",
                )?;
                in_range(
                    (ratelimit_us == 0
                        || (RATELIMIT_US_MIN..=RATELIMIT_US_MAX).contains(&ratelimit_us))
                        && u64::from(ratelimit_us) <= u64::from(timeslice_ms) * 1000,
                    "ratelimit_us",
                )
            }
        }
    }
}

impl FromServer for ToCore {
    type Context = Shape;

    /// pCPUs, domains and vCPUs must exist in `shape`; applied knob values must be in
    /// Xen's ranges (the core keeps them and hands them back at rebuild).
    /// Diagnostics (`RebuildFailed`) and counters are not checked.
    fn validate(&self, shape: &Shape) -> Result<(), DecodeError> {
        match self {
            Self::Ready | Self::RebuildFailed { .. } | Self::Heartbeat { .. } => Ok(()),
            Self::Tickle { pcpu, expected } => {
                shape.check_pcpu(*pcpu, "pcpu")?;
                match expected {
                    Some(vcpu) => shape.check_vcpu(*vcpu, "expected"),
                    None => Ok(()),
                }
            }
            Self::ControlResult { result, .. } => match result {
                Ok(applied) => applied.validate(shape),
                Err(_) => Ok(()),
            },
        }
    }
}

const _: () = assert!(envelope_max_size::<ToServer>() <= crate::ring::SLOT_PAYLOAD);
const _: () = assert!(envelope_max_size::<ToCore>() <= crate::ring::SLOT_PAYLOAD);
const _: () = assert!(ToServer::MAX_ENCODED_SIZE <= BODY_BUDGET);
const _: () = assert!(ToCore::MAX_ENCODED_SIZE <= BODY_BUDGET);
// One more event, record or entry per batch would not fit.
const _: () = assert!(
    size::VARIANT + size::collection(EVENT_BATCH_LEN + 1, Event::MAX_ENCODED_SIZE) > BODY_BUDGET
);
const _: () = assert!(
    size::VARIANT + size::collection(REBUILD_VCPU_BATCH_LEN + 1, VcpuRecord::MAX_ENCODED_SIZE)
        > BODY_BUDGET
);
// A whole domain table fits one message, and a whole stream fits a fresh
// ring, so the core can write a consistent snapshot in one go.
const _: () = assert!(REBUILD_DOMAIN_BATCH_LEN >= MAX_DOMAINS);
const _: () = assert!(REBUILD_STREAM_MAX_MESSAGES <= crate::ring::SLOT_COUNT || cfg!(loom));
const _: () = assert!(MAX_PCPUS <= 8, "RebuildBegin::pcpus is a u8 bit mask");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{decode_from_core, decode_from_server, encode, Envelope};
    use crate::ring::SLOT_PAYLOAD;

    #[test]
    fn sizes_are_as_documented() {
        assert_eq!(Vcpu::MAX_ENCODED_SIZE, 4);
        assert_eq!(Event::MAX_ENCODED_SIZE, 17);
        assert_eq!(VcpuRecord::MAX_ENCODED_SIZE, 37);
        assert_eq!(DomainRecord::MAX_ENCODED_SIZE, 13);
        assert_eq!(ToServer::MAX_ENCODED_SIZE, 240);
        assert_eq!(ToCore::MAX_ENCODED_SIZE, 21);
        assert_eq!(BODY_BUDGET, 242);
        assert_eq!(REBUILD_STREAM_MAX_MESSAGES, 25);
    }

    #[test]
    fn a_control_result_round_trips() {
        let body = ToCore::ControlResult {
            request: 9,
            result: Err(ControlError::Knob(KnobError::WeightOutOfRange {
                requested: 0,
            })),
        };
        let mut buffer = [0; SLOT_PAYLOAD];
        let length = encode(&Envelope::new(2, body.clone()), &mut buffer).unwrap();
        let shape = Shape::new(1);
        assert_eq!(
            decode_from_server::<ToCore>(&buffer[..length], 2, &shape),
            Ok(body.clone())
        );
        assert_eq!(decode_from_core::<ToCore>(&buffer[..length], 2), Ok(body));
    }
}

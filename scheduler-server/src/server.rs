//! The scheduler as a ring-3 server: the [`components::Handler`] that feeds
//! the core's messages ([`ipc::messages::scheduler`]) to the policy
//! ([`Scheduler`]) and publishes what it decides.
//!
//! # What it does with each message
//!
//! | from the core | the server |
//! |---|---|
//! | `RebuildBegin` | starts collecting a snapshot; drops any unfinished stream, and a running policy too (a new stream means the core starts over) |
//! | `RebuildDomains`, `RebuildVcpus` | converts and keeps the records (outside a stream: ignored, and the next `RebuildEnd` is refused) |
//! | `RebuildEnd` | checks the counts, calls [`Scheduler::rebuild`] and runs the result; on any problem answers `RebuildFailed` and decides nothing until a good stream |
//! | `Events` | applies each with [`Scheduler::apply`]; a refused one is counted and logged, never fatal; dropped (counted) while there is no rebuilt policy |
//! | `SetDomain`, `Configure` | [`Scheduler::set_domain_params`] / [`Scheduler::configure`], which validate with the knob types; answers `ControlResult` with the values now in force or the reason (nothing changes then); `NotReady` while there is no rebuilt policy |
//! | `Error` | counts and logs it, and republishes every decision and the credit table (the core answers a decision block it refuses with an `Error` too; a refused credit table is only logged by the core, and the next accounting rewrites it) |
//!
//! Publication happens once per run-loop turn, after the turn's messages
//! (a handler asks for it with a timeout of "now", so the run loop calls
//! [`Handler::notified`] at the end of the same turn): first the decision
//! of each pCPU whose decision changed since it was last published, written
//! into that pCPU's block of the publication area ([`ipc::publication`]),
//! then `Ready` if a rebuild just completed, then the tickles
//! ([`Scheduler::take_tickles`]). The core takes in the decision blocks
//! that changed each time the server gives the pCPU back, before it acts on
//! the messages, so a tickled pCPU always finds its new decision. A send
//! that fails (the ring stayed full) is retried 1 ms later. After each
//! accounting period (and after a rebuild) the server also rewrites its
//! credit table there: every vCPU's credit, priority and run time, which
//! the core reads for `hvctl stats` and hands back to the next instance.
//! Neither is a message: under TCG each message costs decode and
//! validation code on both sides (docs/benchmarks.md).
//!
//! Time: at [`Scheduler::next_deadline`] the server applies
//! [`Event::Tick`] with its own clock ([`Context::now`], the core's clock),
//! and it sends a `Heartbeat` every [`HEARTBEAT_INTERVAL_NS`]. Ticks that
//! could change nothing ([`Scheduler::ticks_are_quiet`]) are not deadlines:
//! before each message the server runs them at their own times
//! ([`Scheduler::catch_up`]), so a busy machine wakes it about once per
//! accounting instead of three times. Nothing is
//! decided before the first `RebuildEnd`: the core runs its fallback until
//! `Ready`.
//!
//! # The cost of a decision
//!
//! Built with a cycle counter ([`SchedulerServer::with_cycle_counter`]; the
//! ring-3 binary passes the TSC), the server times each decision pass: from
//! the first `Events` batch of a run-loop turn that reaches a running
//! policy (or, without one, the start of [`Handler::notified`] when a tick
//! is due) to the end of the publication that follows in the same turn.
//! That is the policy's work on the batch or tick plus sending what
//! changed, the runtime's clock reads and ring writes included. The
//! durations go into a [`Log2Histogram`]. Every [`DECIDE_LOG_INTERVAL`]
//! passes, and at the end of the first pass [`DECIDE_LOG_PERIOD_NS`] or
//! more after the last such line (so a short run logs too), the server
//! logs `scheduler-server: gen N: decisions C, decide median M ticks, p99
//! Q ticks (log2 bucket upper bounds)`, over every pass of this instance
//! (`make bench` reads the last such line).

use core::fmt::{self, Write};

use components::{Context, FromCore, Handler, LogLine};
use heapless::Vec;
use ipc::messages::scheduler::{self as wire, ToCore, ToServer};
use ipc::messages::{ErrorCode, Message};
use ipc::publication::PublicationArea;
use serde::{Deserialize, Serialize};

use crate::histogram::Log2Histogram;
use crate::{
    ControlError, Decision, DomainId, DomainParams, DomainRecord, Event, EventError, KnobError,
    PcpuId, PcpuSet, Priority, PublishedCredit, Scheduler, Snapshot, Tickle, Tunables, VcpuId,
    VcpuInfo, VcpuRecord, VcpuRunState, CAP_MAX, MAX_DOMAINS, MAX_PCPUS, MAX_VCPUS,
    MAX_VCPUS_PER_DOMAIN, RATELIMIT_US_MAX, RATELIMIT_US_MIN, RUN_LIST_LEN, TIMESLICE_MS_MAX,
    TIMESLICE_MS_MIN, WEIGHT_MAX, WEIGHT_MIN,
};

/// Longest time between heartbeats, ns (they come with any turn in the
/// second half of the interval).
pub const HEARTBEAT_INTERVAL_NS: u64 = 100_000_000;
/// Time before a publication that could not be sent is tried again, ns.
pub const RETRY_INTERVAL_NS: u64 = 1_000_000;
/// Shortest wait for the policy's next deadline, ns (a guard against a
/// deadline that a tick did not move).
const MIN_WAKE_NS: u64 = 10_000;
/// Decision passes between two `decide median` log lines.
pub const DECIDE_LOG_INTERVAL: u64 = 1000;
/// Longest time between two `decide median` log lines while passes are
/// made, ns.
pub const DECIDE_LOG_PERIOD_NS: u64 = 1_000_000_000;

/// Reads a free-running cycle counter (the TSC on the target).
pub type CycleCounter = fn() -> u64;

// The wire contract and the policy agree on the shape of the machine and on
// the knob ranges (the core validates server output with the wire's).
const _: () = assert!(wire::MAX_PCPUS == MAX_PCPUS);
const _: () = assert!(wire::MAX_DOMAINS == MAX_DOMAINS);
const _: () = assert!(wire::MAX_VCPUS_PER_DOMAIN == MAX_VCPUS_PER_DOMAIN);
const _: () = assert!(wire::MAX_VCPUS == MAX_VCPUS);
const _: () = assert!(wire::RUN_LIST_LEN == RUN_LIST_LEN);
const _: () = assert!(wire::WEIGHT_MIN == WEIGHT_MIN && wire::WEIGHT_MAX == WEIGHT_MAX);
const _: () = assert!(wire::CAP_MAX == CAP_MAX);
const _: () = assert!(
    wire::TIMESLICE_MS_MIN == TIMESLICE_MS_MIN && wire::TIMESLICE_MS_MAX == TIMESLICE_MS_MAX
);
const _: () = assert!(
    wire::RATELIMIT_US_MIN == RATELIMIT_US_MIN && wire::RATELIMIT_US_MAX == RATELIMIT_US_MAX
);

/// The core's messages as the run loop receives them: exactly
/// [`wire::ToServer`] on the wire (`serde(transparent)`), wrapped only so
/// that this crate can implement [`FromCore`] for it (the orphan rule
/// forbids implementing the `components` trait for the `ipc` type here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Inbound(pub ToServer);

impl Message for Inbound {
    const MAX_ENCODED_SIZE: usize = ToServer::MAX_ENCODED_SIZE;
}

impl FromCore for Inbound {
    fn refusal(&self) -> Option<ErrorCode> {
        match self.0 {
            ToServer::Error { code } => Some(code),
            _ => None,
        }
    }
}

impl From<ToServer> for Inbound {
    fn from(message: ToServer) -> Self {
        Self(message)
    }
}

/// What the server counted, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events applied.
    pub events: u64,
    /// Events the policy refused (unknown ids, bad knob values).
    pub refused_events: u64,
    /// Events that arrived while no policy was rebuilt, dropped.
    pub dropped_events: u64,
    /// Rebuilds completed.
    pub rebuilds: u64,
    /// Rebuild streams refused (`RebuildFailed` sent).
    pub failed_rebuilds: u64,
    /// Control requests carried out.
    pub controls: u64,
    /// Control requests refused.
    pub refused_controls: u64,
    /// Decisions published.
    pub decisions: u64,
    /// `Tickle` messages sent.
    pub tickles: u64,
    /// Credit tables published (`ipc::publication`).
    pub credit_tables: u64,
    /// Bookkeeping logs taken from the core (`ipc::publication`).
    pub logs: u64,
    /// The core's `Error` replies.
    pub refusals: u64,
}

/// A rebuild stream being received.
#[derive(Debug, Clone)]
struct Stream {
    now: u64,
    tunables: Result<Tunables, KnobError>,
    accounted_at: Option<u64>,
    pcpus: PcpuSet,
    domains: Vec<DomainRecord, MAX_DOMAINS>,
    vcpus: Vec<VcpuRecord, MAX_VCPUS>,
    /// Records received, kept or not.
    received_domains: u16,
    received_vcpus: u16,
    /// The first problem found; the stream is refused at its end.
    error: Option<wire::RebuildError>,
}

impl Stream {
    fn begin(
        now: u64,
        timeslice_ms: u32,
        ratelimit_us: u32,
        accounted_at: Option<u64>,
        pcpus: u8,
    ) -> Self {
        Self {
            now,
            tunables: Tunables::new(timeslice_ms, ratelimit_us),
            accounted_at,
            pcpus: pcpu_set(pcpus),
            domains: Vec::new(),
            vcpus: Vec::new(),
            received_domains: 0,
            received_vcpus: 0,
            error: None,
        }
    }

    fn fail(&mut self, error: wire::RebuildError) {
        self.error.get_or_insert(error);
    }

    fn add_domains(&mut self, records: &[wire::DomainRecord]) {
        for record in records {
            self.received_domains = self.received_domains.saturating_add(1);
            match DomainRecord::try_from(*record) {
                Ok(record) => {
                    if self.domains.push(record).is_err() {
                        self.fail(wire::RebuildError::TooManyRecords);
                    }
                }
                Err(error) => self.fail(wire::RebuildError::Knob(error.into())),
            }
        }
    }

    fn add_vcpus(&mut self, records: &[wire::VcpuRecord]) {
        for record in records {
            self.received_vcpus = self.received_vcpus.saturating_add(1);
            if self.vcpus.push(VcpuRecord::from(*record)).is_err() {
                self.fail(wire::RebuildError::TooManyRecords);
            }
        }
    }

    /// The policy rebuilt from the stream, or why not.
    #[inline(never)]
    fn finish(&self, domains: u16, vcpus: u16) -> Result<Policy, wire::RebuildError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if (domains, vcpus) != (self.received_domains, self.received_vcpus) {
            return Err(wire::RebuildError::Incomplete {
                domains: self.received_domains,
                vcpus: self.received_vcpus,
            });
        }
        let tunables = self
            .tunables
            .map_err(|error| wire::RebuildError::Knob(error.into()))?;
        let snapshot = Snapshot {
            now: self.now,
            tunables,
            accounted_at: self.accounted_at,
            pcpus: self.pcpus,
            domains: &self.domains,
            vcpus: &self.vcpus,
        };
        match Scheduler::rebuild(&snapshot) {
            Ok(scheduler) => Ok(Policy::Running(scheduler)),
            Err(error) => Err(wire::RebuildError::Refused(error.into())),
        }
    }
}

/// The policy's life: a server holds either a stream being received or
/// the policy built from one, never both. The stack is 64 KiB and the
/// runtime keeps the handler on it (twice while moving it into place); with
/// one policy-sized state the deepest path, a rebuild, needs about 48 KiB
/// (measured on the release ELF).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one of them is always in use
enum Policy {
    /// No stream yet, or the last one was refused: nothing is decided.
    Waiting,
    /// A rebuild stream is arriving.
    Receiving(Stream),
    /// Rebuilt: the policy runs.
    Running(Scheduler),
}

/// The running policy, if any.
fn running(policy: &mut Policy) -> Option<&mut Scheduler> {
    match policy {
        Policy::Running(scheduler) => Some(scheduler),
        _ => None,
    }
}

/// The scheduler server: the policy, and what has been published of it.
#[derive(Debug, Clone)]
pub struct SchedulerServer {
    generation: u32,
    policy: Policy,
    /// Rebuild records arrived outside a stream; reported at the next end.
    stray_records: bool,
    /// The decision last published for each pCPU.
    published: [Option<Decision>; MAX_PCPUS],
    /// Tickles taken from the policy and not sent yet.
    tickles: [Option<Tickle>; MAX_PCPUS],
    /// `Ready` is still to be sent (a rebuild completed).
    announce: bool,
    /// The credit table is to be rewritten (after an accounting, a rebuild
    /// or a refusal).
    credits_due: bool,
    /// The policy's accounting count at the last publication.
    accountings_seen: u64,
    /// The `accounted_at` of the stream the policy was rebuilt from:
    /// published until the policy has run an accounting of its own.
    rebuilt_accounted_at: Option<u64>,
    /// The last publication could not be sent completely.
    retry: bool,
    heartbeats: u64,
    next_heartbeat: u64,
    counters: Counters,
    /// Times decision passes (None: not timed).
    cycle_counter: Option<CycleCounter>,
    /// When the decision pass under way started, in cycles.
    decide_started: Option<u64>,
    /// Durations of the decision passes, cycles.
    decide_cycles: Log2Histogram,
    /// When the last `decide median` line was logged (or the server
    /// started), ns.
    decide_logged_at: u64,
}

impl SchedulerServer {
    /// A server not started yet, with no policy until the core's rebuild
    /// stream arrives.
    pub fn new() -> Self {
        Self {
            generation: 0,
            policy: Policy::Waiting,
            stray_records: false,
            published: [None; MAX_PCPUS],
            tickles: [None; MAX_PCPUS],
            announce: false,
            credits_due: false,
            accountings_seen: 0,
            rebuilt_accounted_at: None,
            retry: false,
            heartbeats: 0,
            next_heartbeat: 0,
            counters: Counters::default(),
            cycle_counter: None,
            decide_started: None,
            decide_cycles: Log2Histogram::new(),
            decide_logged_at: 0,
        }
    }

    /// A server that times its decision passes with `counter` (see the
    /// module's documentation).
    pub fn with_cycle_counter(counter: CycleCounter) -> Self {
        Self {
            cycle_counter: Some(counter),
            ..Self::new()
        }
    }

    /// Durations of the decision passes so far, cycles (empty without a
    /// cycle counter).
    pub fn decide_cycles(&self) -> &Log2Histogram {
        &self.decide_cycles
    }

    /// The cycle counter's value, if the server has one.
    fn cycles(&self) -> Option<u64> {
        self.cycle_counter.map(|counter| counter())
    }

    /// Ends the decision pass under way, if any, at `now` (ns): records its
    /// duration and, every [`DECIDE_LOG_INTERVAL`] passes or
    /// [`DECIDE_LOG_PERIOD_NS`], logs the distribution.
    fn end_decision_pass(&mut self, now: u64, context: &mut Context<'_, ToCore>) {
        let Some(started) = self.decide_started.take() else {
            return;
        };
        let Some(ended) = self.cycles() else {
            return;
        };
        self.decide_cycles.record(ended.saturating_sub(started));
        let passes = self.decide_cycles.samples();
        let period_over = now >= self.decide_logged_at.saturating_add(DECIDE_LOG_PERIOD_NS);
        if !passes.is_multiple_of(DECIDE_LOG_INTERVAL) && !period_over {
            return;
        }
        self.decide_logged_at = now;
        let mut line = self.line();
        line.push_str("decisions ")
            .push_decimal(passes)
            .push_str(", decide median ")
            .push_decimal(self.decide_cycles.median().unwrap_or(0))
            .push_str(" ticks, p99 ")
            .push_decimal(self.decide_cycles.p99().unwrap_or(0))
            .push_str(" ticks (log2 bucket upper bounds)");
        context.log_line(&line);
    }

    /// The policy, once rebuilt.
    pub fn scheduler(&self) -> Option<&Scheduler> {
        match &self.policy {
            Policy::Running(scheduler) => Some(scheduler),
            _ => None,
        }
    }

    /// The decision last published for `pcpu`.
    pub fn published(&self, pcpu: PcpuId) -> Option<Decision> {
        pcpu.index().and_then(|index| self.published[index])
    }

    /// What the server counted.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Heartbeats sent so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats
    }

    /// A line starting `scheduler-server: gen N: `.
    fn line(&self) -> LogLine {
        let mut line = LogLine::new();
        line.push_str("scheduler-server: gen ")
            .push_decimal(u64::from(self.generation))
            .push_str(": ");
        line
    }

    /// Asks the run loop for [`Handler::notified`] at the end of this turn,
    /// which publishes.
    fn publish_soon(context: &mut Context<'_, ToCore>) {
        let now = context.now();
        context.wake_at(now);
    }

    /// Takes the core's bookkeeping log if its place in the `to_server`
    /// ring has come (`ipc::publication`): before the slot the runtime is
    /// about to hand over, or after its drain.
    fn take_log(&mut self, context: &mut Context<'_, ToCore>) {
        let Some(log) = context.publication().take_log(context.consumed()) else {
            return;
        };
        self.counters.logs += 1;
        if log.refused > 0 {
            let before = self.counters.refused_events;
            self.counters.refused_events += log.refused as u64;
            // Logged when the refusals pass 1, 2, 4, 8, ... as for events.
            if (before + 1).next_power_of_two() <= self.counters.refused_events {
                let mut line = self.line();
                let _ = write!(line, "{} entries of bookkeeping log {} refused", log.refused, log.sequence);
                context.log_line(&line);
            }
        }
        if !log.events.is_empty() {
            // As for a message: the quiet ticks before them run first.
            if let Some(scheduler) = running(&mut self.policy) {
                scheduler.catch_up(context.now());
            }
            self.events(&log.events, context);
        }
    }

    fn events(&mut self, batch: &[wire::Event], context: &mut Context<'_, ToCore>) {
        let received = self.cycles();
        let Some(scheduler) = running(&mut self.policy) else {
            let first = self.counters.dropped_events == 0;
            self.counters.dropped_events += batch.len() as u64;
            if first {
                let mut line = self.line();
                line.push_str("events outside a rebuilt state are dropped");
                context.log_line(&line);
            }
            return;
        };
        if let Some(received) = received {
            self.decide_started.get_or_insert(received);
        }
        for &event in batch {
            let result = Event::try_from(event)
                .map_err(Refused::Knob)
                .and_then(|converted| scheduler.apply(converted).map_err(Refused::Event));
            match result {
                Ok(()) => self.counters.events += 1,
                Err(reason) => {
                    self.counters.refused_events += 1;
                    let count = self.counters.refused_events;
                    // Logged at 1, 2, 4, 8, ... refusals: a confused core
                    // cannot flood the console.
                    if count.is_power_of_two() {
                        let mut line = LogLine::new();
                        let _ = write!(
                            line,
                            "scheduler-server: gen {}: event refused ({count} so far): {reason}: {event:?}",
                            self.generation
                        );
                        context.log_line(&line);
                    }
                }
            }
        }
        Self::publish_soon(context);
    }

    fn begin_rebuild(&mut self, stream: Stream, context: &mut Context<'_, ToCore>) {
        if matches!(self.policy, Policy::Running(_)) {
            let mut line = self.line();
            line.push_str("a new rebuild stream: starting over");
            context.log_line(&line);
        }
        self.policy = Policy::Receiving(stream);
        self.stray_records = false;
        self.decide_started = None;
    }

    fn rebuild_records(&mut self, message: &ToServer) {
        let Policy::Receiving(stream) = &mut self.policy else {
            // Not in a stream: the running policy (if any) is kept, and
            // the stream's end is refused.
            self.stray_records = true;
            return;
        };
        match message {
            ToServer::RebuildDomains { records } => stream.add_domains(records),
            ToServer::RebuildVcpus { records } => stream.add_vcpus(records),
            _ => {}
        }
    }

    // Not inlined, so its large temporaries (a whole policy) are on the
    // stack only while it runs.
    #[inline(never)]
    fn finish_rebuild(&mut self, domains: u16, vcpus: u16, context: &mut Context<'_, ToCore>) {
        let mut accounted_at = None;
        let result = match &self.policy {
            Policy::Receiving(stream) if !self.stray_records => {
                accounted_at = stream.accounted_at;
                stream.finish(domains, vcpus)
            }
            Policy::Receiving(_) | Policy::Waiting | Policy::Running(_) => {
                Err(wire::RebuildError::OutOfOrder)
            }
        };
        self.stray_records = false;
        match result {
            Ok(policy) => {
                self.policy = policy;
                let (accountings, pcpus) = self.scheduler().map_or((0, 0), |scheduler| {
                    (
                        scheduler.stats().accountings,
                        scheduler.online_pcpus().len(),
                    )
                });
                self.counters.rebuilds += 1;
                self.accountings_seen = accountings;
                self.rebuilt_accounted_at = accounted_at;
                self.published = [None; MAX_PCPUS];
                self.tickles = [None; MAX_PCPUS];
                self.announce = true;
                self.credits_due = true;
                let mut line = self.line();
                line.push_str("rebuilt from the core: ")
                    .push_decimal(u64::from(domains))
                    .push_str(" domain(s), ")
                    .push_decimal(u64::from(vcpus))
                    .push_str(" vCPU(s), ")
                    .push_decimal(pcpus as u64)
                    .push_str(" pCPU(s)");
                context.log_line(&line);
                Self::publish_soon(context);
            }
            Err(reason) => {
                // A broken stream is dropped; a running policy survives a
                // stray end.
                if let Policy::Receiving(_) = self.policy {
                    self.policy = Policy::Waiting;
                }
                self.counters.failed_rebuilds += 1;
                let mut line = self.line();
                let _ = write!(line, "rebuild stream refused: {reason:?}");
                context.log_line(&line);
                let _ = context.send(ToCore::RebuildFailed { reason });
            }
        }
    }

    fn set_domain(
        &mut self,
        request: u32,
        domain: u16,
        weight: Option<u32>,
        cap: Option<u32>,
        context: &mut Context<'_, ToCore>,
    ) {
        let result = match running(&mut self.policy) {
            None => Err(Refused::NotReady),
            Some(scheduler) => scheduler
                .set_domain_params(DomainId(domain), weight, cap)
                .map(|params| wire::Applied::Domain {
                    domain,
                    weight: u32::from(params.weight.get()),
                    cap: u32::from(params.cap.percent()),
                })
                .map_err(Refused::Control),
        };
        self.answer(request, result, context);
    }

    fn configure(
        &mut self,
        request: u32,
        timeslice_ms: Option<u32>,
        ratelimit_us: Option<u32>,
        context: &mut Context<'_, ToCore>,
    ) {
        let result = match running(&mut self.policy) {
            None => Err(Refused::NotReady),
            Some(scheduler) => scheduler
                .configure(timeslice_ms, ratelimit_us)
                .map(|tunables| wire::Applied::Tunables {
                    timeslice_ms: tunables.timeslice_ms(),
                    ratelimit_us: tunables.ratelimit_us(),
                })
                .map_err(Refused::Knob),
        };
        self.answer(request, result, context);
    }

    /// Logs and sends the answer to control request `request`; a change
    /// may change decisions (a new slice, an unparked vCPU).
    fn answer(
        &mut self,
        request: u32,
        result: Result<wire::Applied, Refused>,
        context: &mut Context<'_, ToCore>,
    ) {
        let mut line = self.line();
        match &result {
            Ok(wire::Applied::Domain {
                domain,
                weight,
                cap,
            }) => {
                self.counters.controls += 1;
                let _ = write!(line, "domain {domain}: weight {weight}, cap {cap}");
            }
            Ok(wire::Applied::Tunables {
                timeslice_ms,
                ratelimit_us,
            }) => {
                self.counters.controls += 1;
                let _ = write!(
                    line,
                    "timeslice {timeslice_ms} ms, ratelimit {ratelimit_us} us"
                );
            }
            Err(reason) => {
                self.counters.refused_controls += 1;
                let _ = write!(line, "control request {request} refused: {reason}");
            }
        }
        context.log_line(&line);
        let changed = result.is_ok();
        let result = result.map_err(|reason| match reason {
            Refused::Control(error) => error.into(),
            Refused::Knob(error) => wire::ControlError::Knob(error.into()),
            Refused::Event(_) | Refused::NotReady => wire::ControlError::NotReady,
        });
        let _ = context.send(ToCore::ControlResult { request, result });
        if changed {
            Self::publish_soon(context);
        }
    }

    /// Publishes what changed: the decisions (into the publication area),
    /// then `Ready` after a rebuild, then the tickles, then the credit
    /// table if due. Whatever could not be sent is kept for the retry.
    fn publish(&mut self, context: &mut Context<'_, ToCore>) {
        let Some(scheduler) = running(&mut self.policy) else {
            return;
        };
        let mut failed = false;
        for (index, published) in self.published.iter_mut().enumerate() {
            let pcpu = PcpuId(index as u8);
            let decision = scheduler.decision(pcpu);
            if decision == *published {
                continue;
            }
            let Some(decision) = decision else {
                *published = None;
                continue;
            };
            // Not a message: the pCPU's decision block is rewritten in
            // place, before anything computed with it is sent.
            publish_decision(pcpu, &decision, context.publication());
            *published = Some(decision);
            self.counters.decisions += 1;
        }
        if self.announce && !failed {
            if context.send(ToCore::Ready).is_ok() {
                self.announce = false;
            } else {
                failed = true;
            }
        }
        for tickle in scheduler.take_tickles() {
            if let Some(slot) = tickle.pcpu.index().and_then(|i| self.tickles.get_mut(i)) {
                *slot = Some(tickle);
            }
        }
        if !failed {
            for slot in &mut self.tickles {
                let Some(tickle) = *slot else { continue };
                if context.send(tickle_message(tickle)).is_ok() {
                    *slot = None;
                    self.counters.tickles += 1;
                } else {
                    failed = true;
                    break;
                }
            }
        }
        let accountings = scheduler.stats().accountings;
        if accountings != self.accountings_seen {
            self.accountings_seen = accountings;
            self.credits_due = true;
        }
        if self.credits_due {
            // Not a message: the table is overwritten in place, and cannot
            // fail (the core reads it when it needs it).
            let accounted_at = scheduler.last_accounting().or(self.rebuilt_accounted_at);
            publish_credits(scheduler, accounted_at, context.publication());
            self.credits_due = false;
            self.counters.credit_tables += 1;
        }
        self.retry = failed;
    }

    /// Arms the run loop's timeout: the next heartbeat, the policy's next
    /// deadline, or a retry, whichever is first.
    fn arm(&self, now: u64, context: &mut Context<'_, ToCore>) {
        let mut wake = self.next_heartbeat;
        if let Policy::Running(scheduler) = &self.policy {
            let deadline = scheduler
                .next_deadline()
                .max(now.saturating_add(MIN_WAKE_NS));
            wake = wake.min(deadline);
        }
        if self.retry {
            wake = wake.min(now.saturating_add(RETRY_INTERVAL_NS));
        }
        context.wake_at(wake);
    }
}

impl Default for SchedulerServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler for SchedulerServer {
    type Inbound = Inbound;
    type Outbound = ToCore;

    /// Logs the start and arms the first heartbeat; nothing is published
    /// until the core's rebuild stream has arrived.
    fn init(&mut self, context: &mut Context<'_, ToCore>) {
        self.generation = context.generation();
        let mut line = self.line();
        line.push_str("started; waiting for the core's rebuild stream");
        context.log_line(&line);
        let now = context.now();
        self.decide_logged_at = now;
        self.next_heartbeat = now.saturating_add(HEARTBEAT_INTERVAL_NS);
        context.wake_at(self.next_heartbeat);
    }

    fn request(&mut self, message: Inbound, context: &mut Context<'_, ToCore>) {
        // Quiet ticks did not wake the server: they run first, at their
        // own times ([`Scheduler::catch_up`]).
        if let Some(scheduler) = running(&mut self.policy) {
            scheduler.catch_up(context.now());
        }
        match message.0 {
            ToServer::Events { batch } => self.events(&batch, context),
            ToServer::RebuildBegin {
                now,
                timeslice_ms,
                ratelimit_us,
                accounted_at,
                pcpus,
            } => {
                let stream = Stream::begin(now, timeslice_ms, ratelimit_us, accounted_at, pcpus);
                self.begin_rebuild(stream, context);
            }
            message @ (ToServer::RebuildDomains { .. } | ToServer::RebuildVcpus { .. }) => {
                self.rebuild_records(&message);
            }
            ToServer::RebuildEnd { domains, vcpus } => self.finish_rebuild(domains, vcpus, context),
            ToServer::SetDomain {
                request,
                domain,
                weight,
                cap,
            } => self.set_domain(request, domain, weight, cap, context),
            ToServer::Configure {
                request,
                timeslice_ms,
                ratelimit_us,
            } => self.configure(request, timeslice_ms, ratelimit_us, context),
            ToServer::Error { code } => self.fault(code, context),
        }
    }

    /// Takes the core's bookkeeping log if it goes here among the messages
    /// (`ipc::publication`): on a busy machine it is all the core has for
    /// the accounting turn, taken after the turn's (empty) drain.
    fn before_message(&mut self, context: &mut Context<'_, ToCore>) {
        self.take_log(context);
    }

    /// Runs the policy's due ticks, publishes, ends the timed decision
    /// pass, sends the heartbeat when due, and re-arms the timeout.
    fn notified(&mut self, context: &mut Context<'_, ToCore>) {
        let entered = self.cycles();
        let now = context.now();
        if let Some(scheduler) = running(&mut self.policy) {
            if now >= scheduler.next_deadline() {
                // A tick names nothing, so the policy cannot refuse it.
                let _ = scheduler.apply(Event::Tick { now });
                if let Some(entered) = entered {
                    self.decide_started.get_or_insert(entered);
                }
            }
        }
        self.publish(context);
        self.end_decision_pass(now, context);
        // A heartbeat goes with any turn in the second half of its interval,
        // so on a busy machine it rides on the accountings and never needs
        // a wake of its own (every wake is a server turn on pCPU 0).
        if now.saturating_add(HEARTBEAT_INTERVAL_NS / 2) >= self.next_heartbeat {
            self.heartbeats = self.heartbeats.saturating_add(1);
            let _ = context.send(ToCore::Heartbeat {
                count: self.heartbeats,
            });
            self.next_heartbeat = now.saturating_add(HEARTBEAT_INTERVAL_NS);
        }
        self.arm(now, context);
    }

    /// The core refused a message or a decision block: everything is
    /// published again.
    fn fault(&mut self, code: ErrorCode, context: &mut Context<'_, ToCore>) {
        self.counters.refusals += 1;
        let mut line = self.line();
        let _ = write!(line, "the core refused a message: {code:?}; republishing");
        context.log_line(&line);
        self.published = [None; MAX_PCPUS];
        self.credits_due = true;
        if matches!(self.policy, Policy::Running(_)) {
            Self::publish_soon(context);
        }
    }
}

/// Why an event or a control request was not carried out.
#[derive(Debug, Clone, Copy)]
enum Refused {
    Knob(KnobError),
    Event(EventError),
    Control(ControlError),
    NotReady,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Knob(error) => error.fmt(f),
            Self::Event(error) => error.fmt(f),
            Self::Control(error) => error.fmt(f),
            Self::NotReady => f.write_str("not rebuilt from the core yet"),
        }
    }
}

/// Writes every vCPU's credit, with the time of the last accounting, into
/// the credit table of the publication area.
fn publish_credits(scheduler: &Scheduler, accounted_at: Option<u64>, area: &PublicationArea) {
    let entries = scheduler
        .vcpu_ids()
        .filter_map(|vcpu| scheduler.vcpu_info(vcpu).map(|info| credit_entry(vcpu, &info)));
    area.publish_credits(accounted_at, entries);
}

/// The online pCPUs of a `RebuildBegin` bit mask.
fn pcpu_set(mask: u8) -> PcpuSet {
    let mut set = PcpuSet::EMPTY;
    for index in 0..MAX_PCPUS as u8 {
        if mask & (1 << index) != 0 {
            set.insert(PcpuId(index));
        }
    }
    set
}

/// Writes `pcpu`'s decision into its block of the publication area.
fn publish_decision(pcpu: PcpuId, decision: &Decision, area: &PublicationArea) {
    let mut run: Vec<wire::Vcpu, RUN_LIST_LEN> = Vec::new();
    for vcpu in decision.run.iter() {
        // Cannot fail: both lists hold RUN_LIST_LEN (asserted above).
        let _ = run.push(wire::Vcpu::from(vcpu));
    }
    area.publish_decision(pcpu.0, &run, decision.slice_ns);
}

fn tickle_message(tickle: Tickle) -> ToCore {
    ToCore::Tickle {
        pcpu: tickle.pcpu.0,
        expected: tickle.expected.map(wire::Vcpu::from),
    }
}

fn credit_entry(vcpu: VcpuId, info: &VcpuInfo) -> wire::CreditEntry {
    wire::CreditEntry {
        vcpu: vcpu.into(),
        credit_ns: info.credit_ns,
        run_time_ns: info.run_time_ns,
        priority: info.priority.into(),
        parked: info.parked,
    }
}

// ----- conversions between the wire's types and the policy's -----

impl From<wire::Vcpu> for VcpuId {
    fn from(vcpu: wire::Vcpu) -> Self {
        VcpuId::new(DomainId(vcpu.domain), vcpu.index)
    }
}

impl From<VcpuId> for wire::Vcpu {
    fn from(vcpu: VcpuId) -> Self {
        wire::Vcpu::new(vcpu.domain.0, vcpu.index)
    }
}

impl TryFrom<wire::Event> for Event {
    type Error = KnobError;

    /// The policy's event; a `DomainCreated` with a weight or cap out of
    /// range is refused.
    fn try_from(event: wire::Event) -> Result<Self, KnobError> {
        Ok(match event {
            wire::Event::PcpuOnline { pcpu } => Event::PcpuOnline { pcpu: PcpuId(pcpu) },
            wire::Event::DomainCreated {
                domain,
                weight,
                cap,
            } => Event::DomainCreated {
                domain: DomainId(domain),
                params: DomainParams::new(weight, cap)?,
            },
            wire::Event::DomainDestroyed { domain } => Event::DomainDestroyed {
                domain: DomainId(domain),
            },
            wire::Event::VcpuCreated { vcpu, runnable } => Event::VcpuCreated {
                vcpu: vcpu.into(),
                runnable,
            },
            wire::Event::VcpuDestroyed { vcpu } => Event::VcpuDestroyed { vcpu: vcpu.into() },
            wire::Event::Dispatched { pcpu, vcpu, at } => Event::Dispatched {
                pcpu: PcpuId(pcpu),
                vcpu: vcpu.map(VcpuId::from),
                at,
            },
            wire::Event::Ran { vcpu, pcpu, ns } => Event::Ran {
                vcpu: vcpu.into(),
                pcpu: PcpuId(pcpu),
                ns,
            },
            wire::Event::Blocked { vcpu, at } => Event::Blocked {
                vcpu: vcpu.into(),
                at,
            },
            wire::Event::Woke { vcpu, at } => Event::Woke {
                vcpu: vcpu.into(),
                at,
            },
            wire::Event::Yielded { vcpu } => Event::Yielded { vcpu: vcpu.into() },
            wire::Event::Tick { now } => Event::Tick { now },
            wire::Event::Overhead { pcpu, ns } => Event::Overhead {
                pcpu: PcpuId(pcpu),
                ns,
            },
        })
    }
}

impl From<wire::VcpuState> for VcpuRunState {
    fn from(state: wire::VcpuState) -> Self {
        match state {
            wire::VcpuState::Running { pcpu } => VcpuRunState::Running(PcpuId(pcpu)),
            wire::VcpuState::Runnable { pcpu } => VcpuRunState::Runnable(PcpuId(pcpu)),
            wire::VcpuState::Blocked => VcpuRunState::Blocked,
        }
    }
}

impl From<wire::PublishedCredit> for PublishedCredit {
    fn from(published: wire::PublishedCredit) -> Self {
        PublishedCredit {
            credit_ns: published.credit_ns,
            run_time_ns: published.run_time_ns,
        }
    }
}

impl TryFrom<wire::DomainRecord> for DomainRecord {
    type Error = KnobError;

    fn try_from(record: wire::DomainRecord) -> Result<Self, KnobError> {
        Ok(DomainRecord {
            domain: DomainId(record.domain),
            params: DomainParams::new(record.weight, record.cap)?,
        })
    }
}

impl From<wire::VcpuRecord> for VcpuRecord {
    fn from(record: wire::VcpuRecord) -> Self {
        VcpuRecord {
            vcpu: record.vcpu.into(),
            state: record.state.into(),
            run_time_ns: record.run_time_ns,
            published: record.published.map(PublishedCredit::from),
        }
    }
}

impl From<Priority> for wire::Priority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Idle => wire::Priority::Idle,
            Priority::Over => wire::Priority::Over,
            Priority::Under => wire::Priority::Under,
            Priority::Boost => wire::Priority::Boost,
        }
    }
}

impl From<KnobError> for wire::KnobError {
    fn from(error: KnobError) -> Self {
        match error {
            KnobError::WeightOutOfRange { requested } => {
                wire::KnobError::WeightOutOfRange { requested }
            }
            KnobError::CapOutOfRange { requested } => wire::KnobError::CapOutOfRange { requested },
            KnobError::TimesliceOutOfRange { requested_ms } => {
                wire::KnobError::TimesliceOutOfRange { requested_ms }
            }
            KnobError::RatelimitOutOfRange { requested_us } => {
                wire::KnobError::RatelimitOutOfRange { requested_us }
            }
            KnobError::RatelimitAboveTimeslice {
                ratelimit_us,
                timeslice_ms,
            } => wire::KnobError::RatelimitAboveTimeslice {
                ratelimit_us,
                timeslice_ms,
            },
        }
    }
}

impl From<EventError> for wire::EventError {
    fn from(error: EventError) -> Self {
        match error {
            EventError::UnknownDomain(domain) => wire::EventError::UnknownDomain(domain.0),
            EventError::UnknownVcpu(vcpu) => wire::EventError::UnknownVcpu(vcpu.into()),
            EventError::DomainExists(domain) => wire::EventError::DomainExists(domain.0),
            EventError::VcpuExists(vcpu) => wire::EventError::VcpuExists(vcpu.into()),
            EventError::TooManyDomains => wire::EventError::TooManyDomains,
            EventError::VcpuIndexOutOfRange(vcpu) => {
                wire::EventError::VcpuIndexOutOfRange(vcpu.into())
            }
            EventError::PcpuOutOfRange(pcpu) => wire::EventError::PcpuOutOfRange(pcpu.0),
            EventError::PcpuOffline(pcpu) => wire::EventError::PcpuOffline(pcpu.0),
            EventError::NoPcpuOnline => wire::EventError::NoPcpuOnline,
        }
    }
}

impl From<ControlError> for wire::ControlError {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::Knob(error) => wire::ControlError::Knob(error.into()),
            ControlError::UnknownDomain(domain) => {
                wire::ControlError::UnknownDomain { domain: domain.0 }
            }
        }
    }
}

#[cfg(test)]
mod tests;

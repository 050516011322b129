//! The core's side of the scheduler server: what it tells the server
//! (a rebuild stream at every start, then batched events) and what it keeps
//! of what the server publishes (each pCPU's decision and the credits,
//! read from its publication area, and control results). The hot path
//! never waits on the server: the run loop reads the last published
//! decision at a switch point, and falls back to round-robin whenever no
//! instance has announced itself since its last start.

use heapless::Vec;
use hypervisor_core::scheduler_events::PendingEvents;
use ipc::publication::{CreditTable, PublishedDecision};
use ipc::messages::scheduler::{
    Applied, ControlError, CreditEntry, DomainRecord, PublishedCredit, ToCore, ToServer, Vcpu, VcpuRecord,
    VcpuState, REBUILD_DOMAIN_BATCH_LEN, REBUILD_VCPU_BATCH_LEN, RUN_LIST_LEN,
};

use super::run::MAX_VCPUS_TOTAL;

/// Xen's credit1 defaults.
pub const DEFAULT_TIMESLICE_MS: u32 = 30;
/// Xen's default ratelimit, µs.
pub const DEFAULT_RATELIMIT_US: u32 = 1000;

/// What the core keeps for and from the scheduler server.
#[derive(Debug)]
pub struct SchedulerLink {
    /// The scheduler server's index among the servers.
    pub server: Option<usize>,
    /// The generation whose `Ready` arrived (decisions count only then).
    pub ready_generation: Option<u32>,
    /// Each pCPU's published decision, its run queue: the ordered run
    /// list and the slice.
    pub decisions: [Option<(Vec<Vcpu, RUN_LIST_LEN>, u64)>; crate::arch::smp::MAX_CPUS],
    /// Each pCPU's decision sequence last taken in (its block in the
    /// server's publication area; 0: none yet).
    pub decisions_seen: [u64; crate::arch::smp::MAX_CPUS],
    /// Each pCPU's decision blocks refused since its last good one.
    pub decisions_refused: [u32; crate::arch::smp::MAX_CPUS],
    /// A decision block of this instance was refused (and logged).
    pub refusal_logged: bool,
    /// pCPUs the server tickled since the run loop last looked (bit per
    /// pCPU): they are kicked to their switch point.
    pub tickled: u32,
    /// pCPUs whose run queue the server changed since then: kicked if idle.
    pub decided: u32,
    /// Events not yet sent (a batch) or logged (bookkeeping for the
    /// publication area).
    pub pending: PendingEvents,
    /// The sequence of the last bookkeeping log written into this
    /// instance's publication area (0: none yet).
    pub log_sequence: u64,
    /// Events had to be dropped: the server needs a fresh rebuild stream.
    pub lost_events: bool,
    /// Last published credit per vCPU (index = the core's vCPU index), as
    /// read from the server's credit table ([`Self::take_table`]).
    pub credits: [Option<CreditEntry>; MAX_VCPUS_TOTAL],
    /// When the server last accounted.
    pub accounted_at: Option<u64>,
    /// Timeslice and ratelimit in force (changed only by accepted requests).
    pub tunables: (u32, u32),
    /// A control result not yet handed to whoever asked.
    pub control_result: Option<(u32, Result<Applied, ControlError>)>,
    /// Decisions the server published, for the logs and benchmarks.
    pub decisions_received: u64,
}

impl Default for SchedulerLink {
    fn default() -> Self {
        Self {
            server: None,
            ready_generation: None,
            decisions: [const { None }; crate::arch::smp::MAX_CPUS],
            decisions_seen: [0; crate::arch::smp::MAX_CPUS],
            decisions_refused: [0; crate::arch::smp::MAX_CPUS],
            refusal_logged: false,
            tickled: 0,
            decided: 0,
            pending: PendingEvents::new(),
            log_sequence: 0,
            lost_events: false,
            credits: [None; MAX_VCPUS_TOTAL],
            accounted_at: None,
            tunables: (DEFAULT_TIMESLICE_MS, DEFAULT_RATELIMIT_US),
            control_result: None,
            decisions_received: 0,
        }
    }
}

/// One vCPU as the rebuild stream describes it.
#[derive(Debug, Clone, Copy)]
pub struct VcpuFacts {
    /// Its id on the wire.
    pub vcpu: Vcpu,
    /// Its index among the core's vCPUs.
    pub index: usize,
    /// Whether it could run now (not blocked, halted or stopped).
    pub runnable: bool,
    /// CPU time used so far, ns.
    pub run_time_ns: u64,
    /// The pCPU it runs or last ran on.
    pub pcpu: u8,
}

impl SchedulerLink {
    /// Whether the server's decisions are in force.
    pub fn in_charge(&self, generation: u32) -> bool {
        self.ready_generation == Some(generation) && self.decisions.iter().any(Option::is_some)
    }

    /// Forgets everything of the previous instance except what survives a
    /// restart (credits, tunables, weights live in the core).
    pub fn instance_stopped(&mut self) {
        self.ready_generation = None;
        self.decisions = [const { None }; crate::arch::smp::MAX_CPUS];
        // The next instance starts on a zeroed publication area.
        self.decisions_seen = [0; crate::arch::smp::MAX_CPUS];
        self.decisions_refused = [0; crate::arch::smp::MAX_CPUS];
        self.refusal_logged = false;
        self.pending.forget();
        self.log_sequence = 0;
        self.lost_events = false;
    }

    /// The rebuild stream for a fresh instance (`online` pCPUs, numbered
    /// `0..online`), handed message by message to
    /// `send` (which returns `false` if the ring is full).
    pub fn rebuild_stream(
        &self,
        now_ns: u64,
        online: usize,
        domains: &[(u16, u32, u32)],
        vcpus: &[VcpuFacts],
        send: &mut impl FnMut(ToServer) -> bool,
    ) -> bool {
        let (timeslice_ms, ratelimit_us) = self.tunables;
        let mut ok = send(ToServer::RebuildBegin {
            now: now_ns,
            timeslice_ms,
            ratelimit_us,
            accounted_at: self.accounted_at,
            pcpus: u8::try_from((1u32 << online.min(8)) - 1).unwrap_or(u8::MAX),
        });
        for chunk in domains.chunks(REBUILD_DOMAIN_BATCH_LEN) {
            let records = chunk
                .iter()
                .map(|&(domain, weight, cap)| DomainRecord { domain, weight, cap })
                .collect();
            ok &= send(ToServer::RebuildDomains { records });
        }
        // The running vCPU first, then the others in the order of the last
        // decision (so queue order survives), then the rest.
        for chunk in vcpus.chunks(REBUILD_VCPU_BATCH_LEN) {
            let records = chunk
                .iter()
                .map(|facts| VcpuRecord {
                    vcpu: facts.vcpu,
                    state: if facts.runnable { VcpuState::Runnable { pcpu: facts.pcpu } } else { VcpuState::Blocked },
                    run_time_ns: facts.run_time_ns,
                    published: self
                        .credits
                        .get(facts.index)
                        .copied()
                        .flatten()
                        .map(|entry| PublishedCredit { credit_ns: entry.credit_ns, run_time_ns: entry.run_time_ns }),
                })
                .collect();
            ok &= send(ToServer::RebuildVcpus { records });
        }
        ok &= send(ToServer::RebuildEnd { domains: domains.len() as u16, vcpus: vcpus.len() as u16 });
        ok
    }

    /// Keeps a credit table the server published (read and validated from
    /// its publication area): what `hvctl stats` shows and what the next
    /// rebuild stream hands back. `vcpu_index` maps a wire id to the core's
    /// vCPU index.
    pub fn take_table(&mut self, table: &CreditTable, vcpu_index: impl Fn(Vcpu) -> Option<usize>) {
        self.accounted_at = table.accounted_at.or(self.accounted_at);
        for entry in &table.entries {
            if let Some(slot) = vcpu_index(entry.vcpu).and_then(|index| self.credits.get_mut(index)) {
                *slot = Some(*entry);
            }
        }
    }

    /// Whether pCPU `pcpu`'s decision block moved on to `sequence` since
    /// it was last taken in.
    pub fn decision_changed(&self, pcpu: u8, sequence: u64) -> bool {
        self.decisions_seen.get(usize::from(pcpu)).is_some_and(|&seen| seen != sequence)
    }

    /// Marks pCPU `pcpu`'s block as seen at `sequence` without a decision
    /// (nothing published, or a refused one).
    pub fn seen_decision(&mut self, pcpu: u8, sequence: u64) {
        if let Some(seen) = self.decisions_seen.get_mut(usize::from(pcpu)) {
            *seen = sequence;
        }
    }

    /// pCPU `pcpu`'s block at `sequence` was refused: marks it seen and
    /// returns the pCPU's refusals since its last good block, and whether
    /// this is the instance's first refusal (the one to log).
    pub fn refuse_decision(&mut self, pcpu: u8, sequence: u64) -> (u32, bool) {
        self.seen_decision(pcpu, sequence);
        let in_a_row = self.decisions_refused.get_mut(usize::from(pcpu)).map_or(0, |count| {
            *count = count.saturating_add(1);
            *count
        });
        let first = !core::mem::replace(&mut self.refusal_logged, true);
        (in_a_row, first)
    }

    /// Takes in pCPU `pcpu`'s decision, read and validated from the
    /// server's publication area: its run queue from now on.
    pub fn take_decision(&mut self, pcpu: u8, decision: PublishedDecision) {
        let (Some(slot), Some(seen)) = (self.decisions.get_mut(usize::from(pcpu)), self.decisions_seen.get_mut(usize::from(pcpu))) else {
            return;
        };
        *slot = Some((decision.run, decision.slice_ns));
        *seen = decision.sequence;
        if let Some(refused) = self.decisions_refused.get_mut(usize::from(pcpu)) {
            *refused = 0;
        }
        self.decided |= 1 << pcpu;
        self.decisions_received += 1;
    }

    /// Takes in one validated message of the current instance. Returns
    /// `true` if it was `Ready` or `RebuildFailed` asks for a new stream
    /// (`needs_rebuild`).
    pub fn accept(&mut self, message: ToCore, generation: u32) -> Accepted {
        match message {
            ToCore::Ready => {
                self.ready_generation = Some(generation);
                return Accepted::Ready;
            }
            ToCore::Tickle { pcpu, .. } => self.tickled |= 1 << pcpu,
            ToCore::Heartbeat { .. } => {}
            ToCore::ControlResult { request, result } => {
                if let Ok(Applied::Tunables { timeslice_ms, ratelimit_us }) = result {
                    self.tunables = (timeslice_ms, ratelimit_us);
                }
                self.control_result = Some((request, result));
                return Accepted::Control;
            }
            ToCore::RebuildFailed { .. } => return Accepted::NeedsRebuild,
        }
        Accepted::Other
    }
}

/// What [`SchedulerLink::accept`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The instance announced itself: its decisions are in force.
    Ready,
    /// A control request was answered.
    Control,
    /// The server wants a fresh rebuild stream.
    NeedsRebuild,
    /// Anything else.
    Other,
}

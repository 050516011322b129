//! A deterministic simulator of the core around the scheduler.
//!
//! It plays the core's side of the contract exactly as `Decision` and
//! `Tickle` document it: guests run on simulated pCPUs, the "core" reports
//! run time, blocks, wakes, yields and dispatches as events, and consumes
//! the last published decision at its own switch points without waiting for
//! the scheduler. The scheduler sees each batch of events only after the
//! core has acted on the decisions it had, as the real server would.
#![allow(dead_code)]

use std::collections::HashMap;

use scheduler_server::{
    Decision, DomainId, DomainParams, DomainRecord, Event, PcpuId, PcpuSet, Priority,
    PublishedCredit, Scheduler, Snapshot, Tickle, Tunables, VcpuId, VcpuRecord, VcpuRunState,
    MAX_PCPUS,
};

/// One millisecond in ns.
pub const MS: u64 = 1_000_000;
/// One microsecond in ns.
pub const US: u64 = 1_000;

/// What a guest does when its busy time is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Block until the next period (HLT / `SCHEDOP_block`).
    Block,
    /// Yield (`SCHEDOP_yield`) at each `k·period + busy` it is found running
    /// at (not at the instant it was dispatched), and keep spinning.
    Yield,
}

/// A guest's CPU demand.
#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    /// Always runnable.
    Spin,
    /// Wall-clock duty cycle: busy during `[k·period, k·period + busy)`, then
    /// `action` (the tick-dodging gamer when aligned with the ticks).
    Duty {
        /// Period of the pattern.
        period: u64,
        /// Busy part of each period.
        busy: u64,
        /// What it does in the rest of the period.
        action: Action,
    },
    /// Needs `burst` ns of CPU, then sleeps `sleep` ns of wall time; repeat.
    Burst {
        /// CPU needed per wake.
        burst: u64,
        /// Sleep after each burst.
        sleep: u64,
    },
}

/// Why a pCPU reached a switch point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The running vCPU blocked.
    Block,
    /// The running vCPU yielded.
    Yield,
    /// Its slice ended.
    SliceEnd,
    /// The scheduler tickled it.
    Tickle,
}

/// A wake of a vCPU and what became of it.
#[derive(Clone, Copy, Debug)]
pub struct Wake {
    /// When it woke.
    pub at: u64,
    /// Its priority just before the scheduler applied the wake.
    pub before: Option<Priority>,
    /// Its priority just after.
    pub after: Option<Priority>,
    /// When it was next dispatched.
    pub ran_at: Option<u64>,
}

/// A stretch of time one vCPU ran on one pCPU.
#[derive(Clone, Copy, Debug)]
pub struct Stint {
    /// Sim index of the vCPU.
    pub vcpu: usize,
    /// The pCPU.
    pub pcpu: usize,
    /// Dispatch time.
    pub start: u64,
    /// Time it was switched away from.
    pub end: u64,
    /// Why it was switched away from.
    pub ended_by: Reason,
}

/// A simulated guest vCPU.
#[derive(Clone, Debug)]
pub struct SimVcpu {
    /// Its id.
    pub id: VcpuId,
    /// Its demand.
    pub behavior: Behavior,
    blocked: bool,
    wake_at: Option<u64>,
    burst_left: u64,
    last_yield: Option<u64>,
    running_on: Option<usize>,
    last_pcpu: usize,
    /// Run time inside the measurement window.
    pub measured_ns: u64,
    /// Run time since creation.
    pub total_ns: u64,
    /// Every wake.
    pub wakes: Vec<Wake>,
    waiting_since_wake: Option<usize>,
}

#[derive(Clone, Copy, Debug, Default)]
struct SimPcpu {
    online: bool,
    current: Option<usize>,
    since: u64,
    last_report: u64,
    slice_end: Option<u64>,
}

/// The simulator.
pub struct Sim {
    /// Simulated time.
    pub now: u64,
    /// The policy under test.
    pub sched: Scheduler,
    /// The guests.
    pub vcpus: Vec<SimVcpu>,
    pcpus: [SimPcpu; MAX_PCPUS],
    published: [Option<Decision>; MAX_PCPUS],
    pending: Vec<Event>,
    tickles: Vec<Tickle>,
    window: (u64, u64),
    /// Every finished stint.
    pub stints: Vec<Stint>,
    /// Every switch point: time, pCPU, reason.
    pub switch_points: Vec<(u64, usize, Reason)>,
    index: HashMap<VcpuId, usize>,
    domains: Vec<DomainRecord>,
    per_domain: HashMap<DomainId, u8>,
    /// Every decision the scheduler published, with its time (when recording).
    pub decisions: Vec<(u64, usize, Decision)>,
    /// Whether to record `decisions`.
    pub record_decisions: bool,
    /// Each vCPU's credit and run time as the scheduler last published them
    /// (after each accounting), as the core keeps them for `hvctl stats`.
    published_info: HashMap<VcpuId, PublishedCredit>,
    published_accounting: Option<u64>,
    accountings_seen: u64,
    /// Whether a restart hands the published credit and accounting time back.
    pub restore_credit: bool,
    /// Report run time the way credit1 used to measure it: a whole tick
    /// period for whatever runs when the tick fires, nothing otherwise.
    /// Only to show what the exact reports protect against.
    pub sampled_burn: bool,
    /// Per mille of each stint the hypervisor takes for itself (as the
    /// core's exits, switch points and servers do under TCG): the vCPU is
    /// charged the rest.
    pub overhead_permille: u64,
    /// Whether that overhead is reported (`Event::Overhead`), as the core
    /// does.
    pub report_overhead: bool,
}

impl Sim {
    /// A simulator with `pcpus` pCPUs online and the given tunables.
    pub fn new(pcpus: usize, tunables: Tunables) -> Self {
        let mut sim = Self {
            now: 0,
            sched: Scheduler::new(tunables, 0),
            vcpus: Vec::new(),
            pcpus: [SimPcpu::default(); MAX_PCPUS],
            published: [None; MAX_PCPUS],
            pending: Vec::new(),
            tickles: Vec::new(),
            window: (0, u64::MAX),
            stints: Vec::new(),
            switch_points: Vec::new(),
            index: HashMap::new(),
            domains: Vec::new(),
            per_domain: HashMap::new(),
            decisions: Vec::new(),
            record_decisions: false,
            published_info: HashMap::new(),
            published_accounting: None,
            accountings_seen: 0,
            restore_credit: true,
            sampled_burn: false,
            overhead_permille: 0,
            report_overhead: true,
        };
        for pcpu in 0..pcpus {
            sim.online_pcpu(pcpu);
        }
        sim
    }

    /// Brings a pCPU online.
    pub fn online_pcpu(&mut self, pcpu: usize) {
        self.pcpus[pcpu].online = true;
        self.pcpus[pcpu].last_report = self.now;
        self.pending.push(Event::PcpuOnline {
            pcpu: PcpuId(pcpu as u8),
        });
        self.server_round();
    }

    /// Creates a domain.
    pub fn add_domain(&mut self, weight: u32, cap: u32) -> DomainId {
        let domain = DomainId(self.domains.len() as u16 + 1);
        let params = DomainParams::new(weight, cap).expect("valid test parameters");
        self.domains.push(DomainRecord { domain, params });
        self.pending.push(Event::DomainCreated { domain, params });
        self.server_round();
        domain
    }

    /// Creates a runnable vCPU in `domain`; returns its sim index.
    pub fn add_vcpu(&mut self, domain: DomainId, behavior: Behavior) -> usize {
        let count = self.per_domain.entry(domain).or_insert(0);
        let id = VcpuId::new(domain, *count);
        *count += 1;
        let burst_left = match behavior {
            Behavior::Burst { burst, .. } => burst,
            _ => 0,
        };
        self.vcpus.push(SimVcpu {
            id,
            behavior,
            blocked: false,
            wake_at: None,
            burst_left,
            last_yield: None,
            running_on: None,
            last_pcpu: 0,
            measured_ns: 0,
            total_ns: 0,
            wakes: Vec::new(),
            waiting_since_wake: None,
        });
        let index = self.vcpus.len() - 1;
        self.index.insert(id, index);
        self.pending.push(Event::VcpuCreated {
            vcpu: id,
            runnable: true,
        });
        self.server_round();
        index
    }

    /// A domain with one vCPU.
    pub fn add_guest(&mut self, weight: u32, cap: u32, behavior: Behavior) -> usize {
        let domain = self.add_domain(weight, cap);
        self.add_vcpu(domain, behavior)
    }

    /// Changes a domain's weight / cap through the control path, and records
    /// what was accepted, as the core does for restarts.
    pub fn set_domain_params(
        &mut self,
        domain: DomainId,
        weight: Option<u32>,
        cap: Option<u32>,
    ) -> Result<DomainParams, scheduler_server::ControlError> {
        let params = self.sched.set_domain_params(domain, weight, cap)?;
        if let Some(record) = self.domains.iter_mut().find(|r| r.domain == domain) {
            record.params = params;
        }
        self.server_round();
        Ok(params)
    }

    /// Changes the tunables through the control path.
    pub fn configure(
        &mut self,
        timeslice_ms: Option<u32>,
        ratelimit_us: Option<u32>,
    ) -> Result<Tunables, scheduler_server::KnobError> {
        let tunables = self.sched.configure(timeslice_ms, ratelimit_us)?;
        self.server_round();
        Ok(tunables)
    }

    /// Measures run time only inside `[from, to)`.
    pub fn measure(&mut self, from: u64, to: u64) {
        self.window = (from, to);
        for vcpu in &mut self.vcpus {
            vcpu.measured_ns = 0;
        }
    }

    /// CPU share of `vcpu` in the window, in percent of one pCPU.
    pub fn share(&self, vcpu: usize) -> f64 {
        let (from, to) = self.window;
        let length = to.min(self.now).saturating_sub(from);
        100.0 * self.vcpus[vcpu].measured_ns as f64 / length as f64
    }

    /// [`Self::share`] less the hypervisor's part of each stint
    /// ([`Self::overhead_permille`]): the vCPU's time in the guest, what
    /// the core reports as a domain's CPU time.
    pub fn guest_share(&self, vcpu: usize) -> f64 {
        self.share(vcpu) * (1000 - self.overhead_permille) as f64 / 1000.0
    }

    /// The sim index of a vCPU id.
    pub fn index_of(&self, id: VcpuId) -> usize {
        self.index[&id]
    }

    /// Which vCPU pCPU `pcpu` runs, if any.
    pub fn running_on(&self, pcpu: usize) -> Option<usize> {
        self.pcpus[pcpu].current
    }

    /// The scheduler crashes and a new one is rebuilt from the core's state.
    /// Events in flight are lost; the core keeps the decisions it had.
    pub fn restart_scheduler(&mut self) {
        self.report_all();
        self.pending.clear();
        self.tickles.clear();
        let mut online = PcpuSet::EMPTY;
        for (index, pcpu) in self.pcpus.iter().enumerate() {
            if pcpu.online {
                online.insert(PcpuId(index as u8));
            }
        }
        let vcpus: Vec<VcpuRecord> = self
            .vcpus
            .iter()
            .map(|v| VcpuRecord {
                vcpu: v.id,
                state: match (v.running_on, v.blocked) {
                    (Some(pcpu), _) => VcpuRunState::Running(PcpuId(pcpu as u8)),
                    (None, true) => VcpuRunState::Blocked,
                    (None, false) => VcpuRunState::Runnable(PcpuId(v.last_pcpu as u8)),
                },
                run_time_ns: v.total_ns,
                published: self
                    .published_info
                    .get(&v.id)
                    .copied()
                    .filter(|_| self.restore_credit),
            })
            .collect();
        let snapshot = Snapshot {
            now: self.now,
            tunables: self.sched.tunables(),
            accounted_at: if self.restore_credit {
                self.published_accounting
            } else {
                None
            },
            pcpus: online,
            domains: &self.domains,
            vcpus: &vcpus,
        };
        self.sched = Scheduler::rebuild(&snapshot).expect("a consistent snapshot");
        self.accountings_seen = 0;
        self.server_round();
    }

    /// Runs the system until `end`.
    pub fn run_until(&mut self, end: u64) {
        let mut rounds_at_this_time = 0;
        loop {
            self.server_round();
            if !self.tickles.is_empty() {
                rounds_at_this_time += 1;
                assert!(rounds_at_this_time < 10_000, "livelock at {}", self.now);
                self.deliver_tickles();
                continue;
            }
            let next = self.next_event_time();
            if next >= end {
                self.now = end;
                self.report_all();
                self.server_round();
                return;
            }
            if next > self.now {
                rounds_at_this_time = 0;
            }
            rounds_at_this_time += 1;
            assert!(rounds_at_this_time < 10_000, "livelock at {}", self.now);
            self.now = next;
            self.step();
        }
    }

    fn server_round(&mut self) {
        for event in std::mem::take(&mut self.pending) {
            let woken = match event {
                Event::Woke { vcpu, .. } => Some(vcpu),
                _ => None,
            };
            let before = woken
                .and_then(|v| self.sched.vcpu_info(v))
                .map(|i| i.priority);
            if let Err(error) = self.sched.apply(event) {
                panic!("the scheduler refused {event:?}: {error}");
            }
            if let Some(vcpu) = woken {
                let after = self.sched.vcpu_info(vcpu).map(|i| i.priority);
                let index = self.index[&vcpu];
                if let Some(wake) = self.vcpus[index].wakes.last_mut() {
                    wake.before = before;
                    wake.after = after;
                }
            }
        }
        for pcpu in 0..MAX_PCPUS {
            let decision = self.sched.decision(PcpuId(pcpu as u8));
            if self.record_decisions && decision != self.published[pcpu] {
                if let Some(decision) = decision {
                    self.decisions.push((self.now, pcpu, decision));
                }
            }
            self.published[pcpu] = decision;
        }
        self.tickles.extend(self.sched.take_tickles());
        let accountings = self.sched.stats().accountings;
        if accountings != self.accountings_seen {
            self.accountings_seen = accountings;
            self.published_accounting = self.sched.last_accounting();
            for vcpu in &self.vcpus {
                if let Some(info) = self.sched.vcpu_info(vcpu.id) {
                    self.published_info.insert(vcpu.id, info.into());
                }
            }
        }
    }

    fn deliver_tickles(&mut self) {
        for tickle in std::mem::take(&mut self.tickles) {
            let pcpu = usize::from(tickle.pcpu.0);
            let current = self.pcpus[pcpu].current.map(|i| self.vcpus[i].id);
            if self.pcpus[pcpu].online && current == tickle.expected {
                self.switch(pcpu, Reason::Tickle);
            }
        }
    }

    fn action_time(&self, vcpu: usize) -> Option<u64> {
        let v = &self.vcpus[vcpu];
        let pcpu = v.running_on?;
        match v.behavior {
            Behavior::Spin => None,
            Behavior::Duty {
                period,
                busy,
                action: Action::Yield,
            } => {
                // The first yield instant strictly after the dispatch and
                // after the last yield.
                let base = self.pcpus[pcpu].since.max(v.last_yield.unwrap_or(0));
                let k = base / period;
                let mut instant = k * period + busy;
                if instant <= base {
                    instant += period;
                }
                Some(instant)
            }
            Behavior::Duty {
                period,
                busy,
                action: Action::Block,
            } => {
                let k = self.now / period;
                let off = k * period + busy;
                Some(if self.now < off { off } else { self.now })
            }
            Behavior::Burst { .. } => Some(self.pcpus[pcpu].last_report + v.burst_left),
        }
    }

    fn next_event_time(&self) -> u64 {
        let mut next = self.sched.next_deadline();
        for pcpu in self.pcpus.iter().filter(|p| p.online) {
            if let Some(end) = pcpu.slice_end {
                next = next.min(end);
            }
            if let Some(current) = pcpu.current {
                if let Some(at) = self.action_time(current) {
                    next = next.min(at);
                }
            }
        }
        for vcpu in &self.vcpus {
            if let Some(at) = vcpu.wake_at {
                next = next.min(at);
            }
        }
        next.max(self.now)
    }

    fn step(&mut self) {
        let now = self.now;
        for index in 0..self.vcpus.len() {
            if self.vcpus[index].wake_at.is_some_and(|at| at <= now) {
                let vcpu = &mut self.vcpus[index];
                vcpu.wake_at = None;
                vcpu.blocked = false;
                if let Behavior::Burst { burst, .. } = vcpu.behavior {
                    vcpu.burst_left = burst;
                }
                vcpu.wakes.push(Wake {
                    at: now,
                    before: None,
                    after: None,
                    ran_at: None,
                });
                vcpu.waiting_since_wake = Some(vcpu.wakes.len() - 1);
                self.pending.push(Event::Woke {
                    vcpu: vcpu.id,
                    at: now,
                });
            }
        }
        for pcpu in 0..MAX_PCPUS {
            let Some(current) = self.pcpus[pcpu].current else {
                continue;
            };
            if self.action_time(current).is_some_and(|at| at <= now) {
                self.report(pcpu);
                let vcpu = &mut self.vcpus[current];
                let reason = match vcpu.behavior {
                    Behavior::Spin => unreachable!("spinners never act"),
                    Behavior::Duty {
                        period,
                        action: Action::Block,
                        ..
                    } => {
                        vcpu.wake_at = Some((now / period + 1) * period);
                        Reason::Block
                    }
                    Behavior::Duty {
                        action: Action::Yield,
                        ..
                    } => {
                        vcpu.last_yield = Some(now);
                        Reason::Yield
                    }
                    Behavior::Burst { sleep, .. } => {
                        vcpu.wake_at = Some(now + sleep);
                        Reason::Block
                    }
                };
                self.switch(pcpu, reason);
            }
        }
        for pcpu in 0..MAX_PCPUS {
            if self.pcpus[pcpu].slice_end.is_some_and(|end| end <= now) {
                self.switch(pcpu, Reason::SliceEnd);
            }
        }
        if self.sched.next_deadline() <= now {
            // The core's per-pCPU ticks report the run time of what runs.
            self.report_all();
            if self.sampled_burn {
                let period = self.sched.tunables().tick_period_ns();
                for (pcpu, p) in self.pcpus.iter().enumerate() {
                    if let Some(current) = p.current {
                        self.pending.push(Event::Ran {
                            vcpu: self.vcpus[current].id,
                            pcpu: PcpuId(pcpu as u8),
                            ns: period,
                        });
                    }
                }
            }
            self.pending.push(Event::Tick { now });
        }
    }

    fn report(&mut self, pcpu: usize) {
        let now = self.now;
        let p = &mut self.pcpus[pcpu];
        let Some(current) = p.current else {
            p.last_report = now;
            return;
        };
        let from = p.last_report;
        p.last_report = now;
        let ns = now - from;
        if ns == 0 {
            return;
        }
        let (window_from, window_to) = self.window;
        let overlap = now.min(window_to).saturating_sub(from.max(window_from));
        let vcpu = &mut self.vcpus[current];
        vcpu.measured_ns += overlap;
        vcpu.total_ns += ns;
        if let Behavior::Burst { .. } = vcpu.behavior {
            vcpu.burst_left = vcpu.burst_left.saturating_sub(ns);
        }
        if self.sampled_burn {
            return;
        }
        let overhead = ns * self.overhead_permille / 1000;
        self.pending.push(Event::Ran {
            vcpu: vcpu.id,
            pcpu: PcpuId(pcpu as u8),
            ns: ns - overhead,
        });
        if overhead > 0 && self.report_overhead {
            self.pending.push(Event::Overhead {
                pcpu: PcpuId(pcpu as u8),
                ns: overhead,
            });
        }
    }

    fn report_all(&mut self) {
        for pcpu in 0..MAX_PCPUS {
            if self.pcpus[pcpu].online {
                self.report(pcpu);
            }
        }
    }

    /// A switch point on `pcpu`, handled as the core does: from the last
    /// published decision, without asking the scheduler.
    fn switch(&mut self, pcpu: usize, reason: Reason) {
        let now = self.now;
        self.switch_points.push((now, pcpu, reason));
        self.report(pcpu);
        let current = self.pcpus[pcpu].current;
        if let Some(current) = current {
            let id = self.vcpus[current].id;
            match reason {
                Reason::Block => {
                    self.vcpus[current].blocked = true;
                    self.pending.push(Event::Blocked { vcpu: id, at: now });
                }
                Reason::Yield => self.pending.push(Event::Yielded { vcpu: id }),
                Reason::SliceEnd | Reason::Tickle => {}
            }
        }
        let decision = self.published[pcpu];
        let mut pick = None;
        let mut yielder_listed = false;
        if let Some(decision) = decision {
            for id in decision.run.iter() {
                let Some(&index) = self.index.get(&id) else {
                    continue;
                };
                let vcpu = &self.vcpus[index];
                if vcpu.blocked || vcpu.running_on.is_some_and(|other| other != pcpu) {
                    continue;
                }
                if reason == Reason::Yield && Some(index) == current {
                    yielder_listed = true;
                    continue;
                }
                pick = Some(index);
                break;
            }
        }
        if pick.is_none() && yielder_listed {
            pick = current;
        }
        if pick != current {
            if let Some(current) = current {
                self.vcpus[current].running_on = None;
                self.stints.push(Stint {
                    vcpu: current,
                    pcpu,
                    start: self.pcpus[pcpu].since,
                    end: now,
                    ended_by: reason,
                });
            }
            if let Some(next) = pick {
                let vcpu = &mut self.vcpus[next];
                vcpu.running_on = Some(pcpu);
                vcpu.last_pcpu = pcpu;
                if let Some(wake) = vcpu.waiting_since_wake.take() {
                    vcpu.wakes[wake].ran_at = Some(now);
                }
            }
            self.pcpus[pcpu].current = pick;
            self.pcpus[pcpu].since = now;
            self.pcpus[pcpu].last_report = now;
            self.pending.push(Event::Dispatched {
                pcpu: PcpuId(pcpu as u8),
                vcpu: pick.map(|i| self.vcpus[i].id),
                at: now,
            });
        }
        self.pcpus[pcpu].slice_end = match (pick, decision) {
            (Some(_), Some(decision)) => Some(now + decision.slice_ns),
            _ => None,
        };
    }
}

/// Prints a share table (visible with `--nocapture`).
pub fn print_shares(name: &str, sim: &Sim, labels: &[&str]) {
    let shares: Vec<String> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| format!("{label}={:.2}%", sim.share(i)))
        .collect();
    println!("{name}: {}", shares.join(" "));
}

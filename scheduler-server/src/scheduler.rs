//! The credit1 state machine: queues, priorities, accounting, balancing.

use heapless::Vec;

use crate::credit::{settle, Period};
use crate::ids::{DomainId, PcpuId, PcpuSet, VcpuId};
use crate::interface::{
    ControlError, Decision, Event, EventError, Priority, RunList, Snapshot, Stats, Tickle,
    VcpuInfo, VcpuRecord, VcpuRunState,
};
use crate::knobs::{Cap, DomainParams, KnobError, Tunables, Weight};
use crate::{LOAD_BALANCE_RATELIMIT_NS, MAX_DOMAINS, MAX_PCPUS, MAX_VCPUS, MAX_VCPUS_PER_DOMAIN};

/// Internal name of a vCPU: its domain's slot and its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    domain: u8,
    vcpu: u8,
}

#[derive(Clone, Copy, Debug)]
struct Vcpu {
    present: bool,
    /// Credit in ns of pCPU time (Xen's `csched_unit.credit`, ×100 000).
    credit: i64,
    priority: Priority,
    /// On its domain's active list: earns credit at accounting.
    active: bool,
    /// Held off the pCPUs by its domain's cap (`CSCHED_FLAG_UNIT_PARKED`).
    parked: bool,
    blocked: bool,
    /// The current vCPU of `pcpu`.
    running: bool,
    /// Yielded; queued behind one lower-priority vCPU and not stolen
    /// (`CSCHED_FLAG_UNIT_YIELD`).
    yielded: bool,
    /// The pCPU it runs or is queued on, or last ran on.
    pcpu: u8,
    run_time: u64,
    /// Run time since it was last boosted.
    boosted_run: u64,
}

impl Vcpu {
    const ABSENT: Self = Self {
        present: false,
        credit: 0,
        priority: Priority::Under,
        active: false,
        parked: false,
        blocked: true,
        running: false,
        yielded: false,
        pcpu: 0,
        run_time: 0,
        boosted_run: 0,
    };

    /// Waiting in a run queue.
    fn queued(&self) -> bool {
        self.present && !self.blocked && !self.parked && !self.running
    }
}

#[derive(Clone, Copy, Debug)]
struct Domain {
    present: bool,
    id: DomainId,
    params: DomainParams,
    vcpus: [Vcpu; MAX_VCPUS_PER_DOMAIN],
    /// One past the highest present vCPU's index: the slots from here on
    /// are absent, and the walks over a domain's vCPUs stop here (under
    /// QEMU TCG each slot visited costs the server's turn, and a domain
    /// rarely has all of its slots).
    vcpu_end: u8,
}

impl Domain {
    const ABSENT: Self = Self {
        present: false,
        id: DomainId(0),
        params: DomainParams {
            weight: Weight::DEFAULT,
            cap: Cap::NONE,
        },
        vcpus: [Vcpu::ABSENT; MAX_VCPUS_PER_DOMAIN],
        vcpu_end: 0,
    };

    /// The slots up to the last present vCPU (absent ones among them).
    fn slots(&self) -> &[Vcpu] {
        &self.vcpus[..usize::from(self.vcpu_end).min(MAX_VCPUS_PER_DOMAIN)]
    }

    fn slots_mut(&mut self) -> &mut [Vcpu] {
        let end = usize::from(self.vcpu_end).min(MAX_VCPUS_PER_DOMAIN);
        &mut self.vcpus[..end]
    }

    /// Indices of the slots up to the last present vCPU.
    fn slot_indices(&self) -> core::ops::Range<u8> {
        0..self.vcpu_end
    }

    fn active_vcpus(&self) -> usize {
        self.slots().iter().filter(|v| v.present && v.active).count()
    }
}

#[derive(Clone, Debug)]
struct Pcpu {
    online: bool,
    /// What the server believes runs here, from the core's `Dispatched`.
    current: Option<Slot>,
    /// When `current` was dispatched (for the ratelimit).
    since: u64,
    /// Waiting vCPUs, best first (Xen's per-pCPU `runq`).
    queue: Vec<Slot, MAX_VCPUS>,
    last_balance: Option<u64>,
    /// A preemption put off until the ratelimit of `current` has passed.
    preempt_at: Option<u64>,
    /// A preemption was decided and has not happened yet.
    preempt_wanted: bool,
    /// When this idle pCPU may balance again (its last pass was within the
    /// load-balance ratelimit).
    balance_retry_at: Option<u64>,
    /// A tickle to send, with the current vCPU it was computed for.
    tickle: Option<Option<Slot>>,
}

impl Pcpu {
    fn new() -> Self {
        Self {
            online: false,
            current: None,
            since: 0,
            queue: Vec::new(),
            last_balance: None,
            preempt_at: None,
            preempt_wanted: false,
            balance_retry_at: None,
            tickle: None,
        }
    }

    fn idle(&self) -> bool {
        self.online && self.current.is_none() && self.queue.is_empty()
    }

    fn load(&self) -> usize {
        usize::from(self.current.is_some()) + self.queue.len()
    }
}

/// The credit1 scheduler: feed it [`Event`]s, read [`Decision`]s and
/// [`Tickle`]s. See the crate documentation for the rules it implements.
#[derive(Clone, Debug)]
pub struct Scheduler {
    tunables: Tunables,
    now: u64,
    next_tick: u64,
    next_accounting: u64,
    last_accounting: Option<u64>,
    /// Sum of the active vCPUs' credit after the last accounting
    /// (Xen's `csched_private.credit_balance`).
    balance: i64,
    /// pCPU time the hypervisor itself took since the last accounting
    /// ([`Event::Overhead`]), ns.
    overhead: u64,
    domains: [Domain; MAX_DOMAINS],
    /// Domain slots in accounting order (Xen's `active_sdom` list order).
    order: Vec<u8, MAX_DOMAINS>,
    pcpus: [Pcpu; MAX_PCPUS],
    /// The peer the last steal came from (Xen's `balance_bias`).
    balance_bias: usize,
    /// The idle pCPU last chosen for a wake (Xen's `last_tickle_cpu`).
    last_idle_pick: usize,
    stats: Stats,
}

impl Scheduler {
    /// A scheduler with no pCPU, domain or vCPU yet, whose clock starts at
    /// `now`. Ticks fall on multiples of the tick period and accounting on
    /// multiples of the timeslice of the core's clock.
    pub fn new(tunables: Tunables, now: u64) -> Self {
        Self {
            tunables,
            now,
            next_tick: aligned_after(now, tunables.tick_period_ns()),
            next_accounting: aligned_after(now, tunables.timeslice_ns()),
            last_accounting: None,
            balance: 0,
            overhead: 0,
            domains: [Domain::ABSENT; MAX_DOMAINS],
            order: Vec::new(),
            pcpus: core::array::from_fn(|_| Pcpu::new()),
            balance_bias: 0,
            last_idle_pick: MAX_PCPUS - 1,
            stats: Stats::default(),
        }
    }

    /// Rebuilds a scheduler from the core's view after a restart (issue #6
    /// §2): pCPUs, domains with their weight and cap, tunables, and each
    /// vCPU's state and accumulated run time.
    ///
    /// Each vCPU gets back the credit an old instance last published, less
    /// the run time the core counted since (`published.credit_ns -
    /// (run_time_ns - published.run_time_ns)` of its [`VcpuRecord`], clamped
    /// to `[-2·timeslice, timeslice]`, the range credit can have between two
    /// accountings: values from the core are allegations), and the priority
    /// that credit implies (UNDER if ≥ 0, else OVER); no boost survives. A
    /// vCPU of a capped domain with negative credit comes back parked, so
    /// restarts cannot be used to escape a cap. Runnable vCPUs
    /// rejoin accounting at once, blocked ones when they next run. Queue
    /// order within a priority and the accounting order of domains start
    /// afresh. A vCPU with nothing published starts as a new one does (0
    /// credit, UNDER); the shares still come back, only more slowly when
    /// several pCPUs must first be rebalanced. The next accounting is due one
    /// timeslice after [`Snapshot::accounted_at`], or, if that is unknown,
    /// at the first multiple of the timeslice at or after `now`.
    pub fn rebuild(snapshot: &Snapshot<'_>) -> Result<Self, EventError> {
        let mut scheduler = Self::new(snapshot.tunables, snapshot.now);
        let timeslice = snapshot.tunables.timeslice_ns();
        scheduler.next_accounting = match snapshot.accounted_at {
            Some(accounted_at) => accounted_at.min(snapshot.now).saturating_add(timeslice),
            None => aligned_after(snapshot.now.saturating_sub(1), timeslice),
        };
        for pcpu in snapshot.pcpus.iter() {
            scheduler.apply(Event::PcpuOnline { pcpu })?;
        }
        for record in snapshot.domains {
            scheduler.apply(Event::DomainCreated {
                domain: record.domain,
                params: record.params,
            })?;
        }
        for record in snapshot.vcpus {
            scheduler.restore_vcpu(record)?;
        }
        for index in 0..MAX_PCPUS {
            scheduler.reevaluate(index, false);
        }
        scheduler.stats = Stats::default();
        Ok(scheduler)
    }

    /// Applies one event from the core. An event that names something
    /// unknown or out of range is refused and changes nothing.
    pub fn apply(&mut self, event: Event) -> Result<(), EventError> {
        match event {
            Event::PcpuOnline { pcpu } => self.pcpu_online(pcpu),
            Event::DomainCreated { domain, params } => self.domain_created(domain, params),
            Event::DomainDestroyed { domain } => self.domain_destroyed(domain),
            Event::VcpuCreated { vcpu, runnable } => {
                let state = if runnable {
                    None
                } else {
                    Some(VcpuRunState::Blocked)
                };
                self.insert_vcpu(vcpu, state, 0)
            }
            Event::VcpuDestroyed { vcpu } => self.vcpu_destroyed(vcpu),
            Event::Dispatched { pcpu, vcpu, at } => self.dispatched(pcpu, vcpu, at),
            Event::Ran { vcpu, pcpu, ns } => self.ran(vcpu, pcpu, ns),
            Event::Blocked { vcpu, at } => self.blocked(vcpu, at),
            Event::Woke { vcpu, at } => self.woke(vcpu, at),
            Event::Yielded { vcpu } => self.yielded(vcpu),
            Event::Tick { now } => {
                self.tick(now);
                Ok(())
            }
            Event::Overhead { pcpu, ns } => {
                let index = pcpu.index().ok_or(EventError::PcpuOutOfRange(pcpu))?;
                if !self.pcpus[index].online {
                    return Err(EventError::PcpuOffline(pcpu));
                }
                self.overhead = self.overhead.saturating_add(ns);
                Ok(())
            }
        }
    }

    /// What `pcpu` should do at its next switch point; `None` for a pCPU
    /// that is out of range or offline.
    ///
    /// The list is the pCPU's queue (highest priority first, FIFO within a
    /// priority) with the running vCPU inserted where `__runq_insert()`
    /// would put it if it were preempted now: behind every vCPU of equal or
    /// higher priority, and one further back if it has yielded. A parked
    /// vCPU is left out, so the core stops it.
    pub fn decision(&self, pcpu: PcpuId) -> Option<Decision> {
        let pcpu = &self.pcpus[pcpu.index()?];
        if !pcpu.online {
            return None;
        }
        let current = pcpu.current.filter(|&slot| {
            let vcpu = self.vcpu(slot);
            !vcpu.parked && !vcpu.blocked
        });
        let position = current.map(|slot| self.insert_position(&pcpu.queue, slot));
        let mut run = RunList::EMPTY;
        for (index, &slot) in pcpu.queue.iter().enumerate() {
            if position == Some(index) {
                if let Some(current) = current {
                    run.push(self.id(current));
                }
            }
            if !run.push(self.id(slot)) {
                break;
            }
        }
        if position == Some(pcpu.queue.len()) {
            if let Some(current) = current {
                run.push(self.id(current));
            }
        }
        Some(Decision {
            run,
            slice_ns: self.tunables.timeslice_ns(),
        })
    }

    /// Takes the tickles produced since the last call: the pCPUs that must
    /// reach a switch point now.
    pub fn take_tickles(&mut self) -> Vec<Tickle, MAX_PCPUS> {
        let mut tickles = Vec::new();
        for index in 0..MAX_PCPUS {
            if let Some(expected) = self.pcpus[index].tickle.take() {
                let tickle = Tickle {
                    pcpu: PcpuId(index as u8),
                    expected: expected.map(|slot| self.id(slot)),
                };
                // Cannot fail: at most one tickle per pCPU.
                let _ = tickles.push(tickle);
            }
        }
        tickles
    }

    /// When the scheduler next needs an [`Event::Tick`]: the next tick
    /// (unless ticks are [quiet](Self::ticks_are_quiet)), the next
    /// accounting, the end of a ratelimit that holds off a preemption, or
    /// the end of the load-balance ratelimit of an idle pCPU, whichever is
    /// first.
    pub fn next_deadline(&self) -> u64 {
        let tick = if self.ticks_are_quiet() {
            u64::MAX
        } else {
            self.next_tick
        };
        self.pcpus
            .iter()
            .flat_map(|pcpu| [pcpu.preempt_at, pcpu.balance_retry_at])
            .flatten()
            .fold(tick.min(self.next_accounting), u64::min)
    }

    /// Whether a tick, with no event before it, could change no decision and
    /// no tickle: no vCPU holds BOOST (a tick may demote it), no online idle
    /// pCPU has a queue (a tick would tickle it), and no pCPU whose best is
    /// OVER or IDLE has anything to steal. Such ticks need not wake the
    /// server: [`Self::catch_up`] runs them, at their own times, when it
    /// next wakes (for an event, the accounting or another deadline), so
    /// the state is exactly what ticking on time gives. Under TCG a server
    /// turn costs far more than the tick's work (`make bench`, time outside
    /// guests), and a busy machine is quiet most of the time.
    pub fn ticks_are_quiet(&self) -> bool {
        let boosted = self
            .domains
            .iter()
            .filter(|d| d.present)
            .flat_map(|d| d.slots().iter())
            .any(|v| v.present && v.priority == Priority::Boost);
        if boosted {
            return false;
        }
        (0..MAX_PCPUS).all(|index| {
            let pcpu = &self.pcpus[index];
            if !pcpu.online {
                return true;
            }
            if pcpu.current.is_none() && !pcpu.queue.is_empty() {
                return false;
            }
            let best = self.best_priority(index);
            best > Priority::Over || self.steal_candidate(index, best).is_none()
        })
    }

    /// Runs, at their own times, the ticks that [`Self::next_deadline`] left
    /// out because they were quiet, up to `now` (and before the next
    /// accounting, which is a deadline of its own), then sets the clock to
    /// `now`. The server calls it before it applies anything else, so every
    /// event finds the ticks before it done, as if the server had woken for
    /// each, and the clock where a tick at `now` would have put it.
    pub fn catch_up(&mut self, now: u64) {
        self.replay_quiet_ticks(now);
        self.advance_clock(now);
    }

    fn replay_quiet_ticks(&mut self, now: u64) {
        while self.next_tick <= now
            && self.next_tick < self.next_accounting
            && self.ticks_are_quiet()
        {
            let at = self.next_tick;
            self.tick(at);
        }
    }

    /// Changes the timeslice and/or the ratelimit at run time
    /// (`hvctl sched-credit -s -t … -r …`, as `csched_sys_cntl()`).
    ///
    /// The result is checked as a whole; on error nothing changes. A new
    /// timeslice takes effect for the next decisions, ticks and accounting;
    /// a new ratelimit for every preemption not yet made.
    pub fn configure(
        &mut self,
        timeslice_ms: Option<u32>,
        ratelimit_us: Option<u32>,
    ) -> Result<Tunables, KnobError> {
        let tunables = self.tunables.with(timeslice_ms, ratelimit_us)?;
        let shrunk = tunables.timeslice_ns() < self.tunables.timeslice_ns();
        self.tunables = tunables;
        if shrunk {
            // Credit and the balance were earned against the longer slice:
            // bring them inside the new slice's bounds at once, so the next
            // accounting starts from a state it could have produced itself.
            let timeslice = tunables.timeslice_ns() as i64;
            let mut present = 0i64;
            for domain in self.domains.iter_mut().filter(|domain| domain.present) {
                for vcpu in domain.slots_mut().iter_mut().filter(|vcpu| vcpu.present) {
                    present += 1;
                    vcpu.credit = vcpu.credit.clamp(-timeslice, timeslice);
                }
            }
            self.balance = self.balance.clamp(-present * timeslice, present * timeslice);
        }
        self.next_tick = self
            .next_tick
            .min(aligned_after(self.now, tunables.tick_period_ns()));
        self.next_accounting = self
            .next_accounting
            .min(aligned_after(self.now, tunables.timeslice_ns()));
        for index in 0..MAX_PCPUS {
            if self.pcpus[index].preempt_at.is_some() {
                self.reevaluate(index, false);
            }
        }
        Ok(tunables)
    }

    /// Changes a domain's weight and/or cap (`hvctl sched-credit -d … -w … -c …`,
    /// as `csched_dom_cntl()`). On error nothing changes.
    ///
    /// Removing a cap lets the domain's parked vCPUs go at once (Xen waits
    /// for their credit to turn positive).
    pub fn set_domain_params(
        &mut self,
        domain: DomainId,
        weight: Option<u32>,
        cap: Option<u32>,
    ) -> Result<DomainParams, ControlError> {
        let slot = self
            .domain_slot(domain)
            .ok_or(ControlError::UnknownDomain(domain))?;
        let old = self.domains[slot].params;
        let params = DomainParams {
            weight: weight.map(Weight::new).transpose()?.unwrap_or(old.weight),
            cap: cap.map(Cap::new).transpose()?.unwrap_or(old.cap),
        };
        self.domains[slot].params = params;
        if !params.cap.is_capped() {
            for index in self.domains[slot].slot_indices() {
                let vcpu = Slot {
                    domain: slot as u8,
                    vcpu: index,
                };
                if self.vcpu(vcpu).present && self.vcpu(vcpu).parked {
                    self.unpark(vcpu);
                }
            }
        }
        Ok(params)
    }

    /// The tunables in force.
    pub fn tunables(&self) -> Tunables {
        self.tunables
    }

    /// A domain's parameters, if it exists.
    pub fn domain_params(&self, domain: DomainId) -> Option<DomainParams> {
        self.domain_slot(domain)
            .map(|slot| self.domains[slot].params)
    }

    /// A vCPU's scheduling state, if it exists.
    pub fn vcpu_info(&self, vcpu: VcpuId) -> Option<VcpuInfo> {
        let slot = self.slot(vcpu).ok()?;
        let v = self.vcpu(slot);
        let pcpu = PcpuId(v.pcpu);
        Some(VcpuInfo {
            credit_ns: v.credit,
            priority: v.priority,
            state: if v.running {
                VcpuRunState::Running(pcpu)
            } else if v.queued() {
                VcpuRunState::Runnable(pcpu)
            } else {
                VcpuRunState::Blocked
            },
            active: v.active,
            parked: v.parked,
            run_time_ns: v.run_time,
        })
    }

    /// Every vCPU, by domain slot and index.
    pub fn vcpu_ids(&self) -> impl Iterator<Item = VcpuId> + '_ {
        self.domains
            .iter()
            .filter(|domain| domain.present)
            .flat_map(|domain| {
                domain
                    .slot_indices()
                    .filter(|&index| domain.vcpus[usize::from(index)].present)
                    .map(move |index| VcpuId::new(domain.id, index))
            })
    }

    /// When accounting last ran, if it has.
    pub fn last_accounting(&self) -> Option<u64> {
        self.last_accounting
    }

    /// The online pCPUs.
    pub fn online_pcpus(&self) -> PcpuSet {
        let mut set = PcpuSet::EMPTY;
        for (index, pcpu) in self.pcpus.iter().enumerate() {
            if pcpu.online {
                set.insert(PcpuId(index as u8));
            }
        }
        set
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The sum of the active vCPUs' credit after the last accounting, in ns.
    pub fn credit_balance(&self) -> i64 {
        self.balance
    }

    // ----- events -----

    fn pcpu_online(&mut self, pcpu: PcpuId) -> Result<(), EventError> {
        let index = pcpu.index().ok_or(EventError::PcpuOutOfRange(pcpu))?;
        if self.pcpus[index].online {
            return Ok(());
        }
        self.pcpus[index].online = true;
        self.pcpus[index].last_balance = None;
        let stole = self.try_steal(index);
        self.reevaluate(index, stole);
        Ok(())
    }

    fn domain_created(&mut self, domain: DomainId, params: DomainParams) -> Result<(), EventError> {
        if self.domain_slot(domain).is_some() {
            return Err(EventError::DomainExists(domain));
        }
        let slot = self
            .domains
            .iter()
            .position(|d| !d.present)
            .ok_or(EventError::TooManyDomains)?;
        self.domains[slot] = Domain {
            present: true,
            id: domain,
            params,
            vcpus: [Vcpu::ABSENT; MAX_VCPUS_PER_DOMAIN],
            vcpu_end: 0,
        };
        // Cannot fail: at most MAX_DOMAINS present domains.
        let _ = self.order.push(slot as u8);
        Ok(())
    }

    fn domain_destroyed(&mut self, domain: DomainId) -> Result<(), EventError> {
        let slot = self
            .domain_slot(domain)
            .ok_or(EventError::UnknownDomain(domain))?;
        for index in self.domains[slot].slot_indices() {
            let vcpu = Slot {
                domain: slot as u8,
                vcpu: index,
            };
            if self.vcpu(vcpu).present {
                self.remove_vcpu(vcpu);
            }
        }
        self.order.retain(|&d| usize::from(d) != slot);
        self.domains[slot] = Domain::ABSENT;
        Ok(())
    }

    /// Creates a vCPU. `state` is `None` for a new runnable vCPU (placed
    /// here), or the core's state for one restored from a snapshot.
    fn insert_vcpu(
        &mut self,
        id: VcpuId,
        state: Option<VcpuRunState>,
        run_time: u64,
    ) -> Result<(), EventError> {
        let domain = self
            .domain_slot(id.domain)
            .ok_or(EventError::UnknownDomain(id.domain))?;
        if usize::from(id.index) >= MAX_VCPUS_PER_DOMAIN {
            return Err(EventError::VcpuIndexOutOfRange(id));
        }
        let slot = Slot {
            domain: domain as u8,
            vcpu: id.index,
        };
        if self.vcpu(slot).present {
            return Err(EventError::VcpuExists(id));
        }
        let home = self.least_loaded_pcpu();
        let needs_pcpu = !matches!(state, Some(VcpuRunState::Blocked));
        if needs_pcpu && home.is_none() {
            return Err(EventError::NoPcpuOnline);
        }
        let home = home.unwrap_or(0);
        let online = |pcpu: PcpuId| pcpu.index().filter(|&index| self.pcpus[index].online);
        let (place, running_here) = match state {
            Some(VcpuRunState::Running(pcpu)) => match online(pcpu) {
                Some(index) => (index, self.pcpus[index].current.is_none()),
                None => (home, false),
            },
            Some(VcpuRunState::Runnable(pcpu)) => (online(pcpu).unwrap_or(home), false),
            _ => (home, false),
        };
        *self.vcpu_mut(slot) = Vcpu {
            present: true,
            blocked: matches!(state, Some(VcpuRunState::Blocked)),
            pcpu: place as u8,
            run_time,
            ..Vcpu::ABSENT
        };
        let end = &mut self.domains[usize::from(slot.domain)].vcpu_end;
        *end = (*end).max(slot.vcpu + 1);
        match state {
            Some(VcpuRunState::Blocked) => {}
            Some(_) => {
                // Restored: a runnable vCPU was competing for the CPU when
                // the old scheduler died, so it takes part in the first
                // accounting at once instead of after its first report.
                self.activate(slot);
                if running_here {
                    self.vcpu_mut(slot).running = true;
                    self.pcpus[place].current = Some(slot);
                    self.pcpus[place].since = self.now;
                } else {
                    self.enqueue(place, slot);
                }
            }
            None => {
                let target = self.pick_pcpu(place);
                self.vcpu_mut(slot).pcpu = target as u8;
                self.enqueue(target, slot);
                self.reevaluate(target, true);
            }
        }
        Ok(())
    }

    fn restore_vcpu(&mut self, record: &VcpuRecord) -> Result<(), EventError> {
        self.insert_vcpu(record.vcpu, Some(record.state), record.run_time_ns)?;
        let Some(published) = record.published else {
            return Ok(());
        };
        let slot = self.slot(record.vcpu)?;
        let bound = i64::try_from(self.tunables.timeslice_ns()).unwrap_or(i64::MAX);
        let burnt_since = record.run_time_ns.saturating_sub(published.run_time_ns);
        // Accounting leaves credit within ±T and a vCPU burns at most T
        // before the next one, so anything outside [-2T, T] is not credit.
        let credit = published
            .credit_ns
            .saturating_sub(i64::try_from(burnt_since).unwrap_or(i64::MAX))
            .clamp(bound.saturating_mul(-2), bound);
        let v = self.vcpu_mut(slot);
        v.credit = credit;
        v.priority = if credit < 0 {
            Priority::Over
        } else {
            Priority::Under
        };
        if credit < 0
            && self.domains[usize::from(slot.domain)]
                .params
                .cap
                .is_capped()
        {
            // Xen parks below -cap/n and lets go at ≥ 0; in between the old
            // state is unknown, so the cap gets the benefit of the doubt.
            // A parked vCPU must earn credit to be let go, so it is active.
            self.activate(slot);
            self.park(slot);
        }
        Ok(())
    }

    fn vcpu_destroyed(&mut self, vcpu: VcpuId) -> Result<(), EventError> {
        let slot = self.slot(vcpu)?;
        self.remove_vcpu(slot);
        Ok(())
    }

    fn remove_vcpu(&mut self, slot: Slot) {
        self.take_off_pcpu(slot);
        *self.vcpu_mut(slot) = Vcpu::ABSENT;
        let domain = &mut self.domains[usize::from(slot.domain)];
        while domain.vcpu_end > 0 && !domain.vcpus[usize::from(domain.vcpu_end - 1)].present {
            domain.vcpu_end -= 1;
        }
    }

    /// Takes `slot` out of its queue, or off the pCPU it runs on.
    fn take_off_pcpu(&mut self, slot: Slot) {
        let vcpu = *self.vcpu(slot);
        if vcpu.queued() {
            self.dequeue(slot);
        }
        if vcpu.running {
            let pcpu = &mut self.pcpus[usize::from(vcpu.pcpu)];
            if pcpu.current == Some(slot) {
                pcpu.current = None;
                pcpu.preempt_at = None;
                pcpu.preempt_wanted = false;
            }
            self.vcpu_mut(slot).running = false;
        }
    }

    /// `pcpu` switched to `vcpu` at a switch point (the second half of
    /// `csched_schedule()`: the previous vCPU goes back into the queue, the
    /// new one comes out of it).
    fn dispatched(
        &mut self,
        pcpu: PcpuId,
        vcpu: Option<VcpuId>,
        at: u64,
    ) -> Result<(), EventError> {
        let index = pcpu.index().ok_or(EventError::PcpuOutOfRange(pcpu))?;
        if !self.pcpus[index].online {
            return Err(EventError::PcpuOffline(pcpu));
        }
        let next = vcpu.map(|vcpu| self.slot(vcpu)).transpose()?;
        self.advance_clock(at);
        let previous = self.pcpus[index].current;
        if previous != next {
            self.pcpus[index].current = None;
            if let Some(previous) = previous {
                self.vcpu_mut(previous).running = false;
                if self.vcpu(previous).queued() {
                    self.enqueue(index, previous);
                }
            }
            if let Some(next) = next {
                self.take_off_pcpu(next);
                let vcpu = self.vcpu_mut(next);
                // A dispatch is proof that the vCPU is awake, even if its
                // wake is still in flight from another pCPU.
                vcpu.blocked = false;
                vcpu.running = true;
                vcpu.yielded = false;
                vcpu.pcpu = index as u8;
                self.pcpus[index].current = Some(next);
                self.pcpus[index].since = at;
            }
        }
        self.pcpus[index].tickle = None;
        self.pcpus[index].preempt_at = None;
        let stole = self.try_steal(index);
        self.reevaluate(index, stole);
        Ok(())
    }

    /// Burns credit for run time reported by the core, to the nanosecond
    /// (`burn_credits()` without its rounding to Xen's 100 µs credits), and
    /// puts the vCPU back on the active list if it had left it
    /// (`__csched_unit_acct_start()`). Xen does the latter only when its tick
    /// finds the vCPU running; doing it on every report means a vCPU
    /// cannot stay out of accounting by never running at a tick.
    fn ran(&mut self, vcpu: VcpuId, pcpu: PcpuId, ns: u64) -> Result<(), EventError> {
        let slot = self.slot(vcpu)?;
        pcpu.index().ok_or(EventError::PcpuOutOfRange(pcpu))?;
        let burn = i64::try_from(ns).unwrap_or(i64::MAX);
        let v = self.vcpu_mut(slot);
        v.credit = v.credit.saturating_sub(burn);
        v.run_time = v.run_time.saturating_add(ns);
        if v.priority == Priority::Boost {
            v.boosted_run = v.boosted_run.saturating_add(ns);
        }
        if !v.active {
            self.activate(slot);
        }
        Ok(())
    }

    /// `csched_unit_sleep()`.
    fn blocked(&mut self, vcpu: VcpuId, at: u64) -> Result<(), EventError> {
        let slot = self.slot(vcpu)?;
        self.advance_clock(at);
        if self.vcpu(slot).blocked {
            return Ok(());
        }
        self.take_off_pcpu(slot);
        let v = self.vcpu_mut(slot);
        v.blocked = true;
        v.yielded = false;
        Ok(())
    }

    /// `csched_unit_wake()`: BOOST if UNDER (and not parked), place it,
    /// preferring an idle pCPU, and tickle.
    fn woke(&mut self, vcpu: VcpuId, at: u64) -> Result<(), EventError> {
        let slot = self.slot(vcpu)?;
        self.advance_clock(at);
        let v = self.vcpu_mut(slot);
        if !v.blocked {
            return Ok(());
        }
        v.blocked = false;
        if v.parked || v.running {
            return Ok(());
        }
        if v.priority == Priority::Under {
            v.priority = Priority::Boost;
            v.boosted_run = 0;
            self.stats.boosts += 1;
        }
        let home = usize::from(self.vcpu(slot).pcpu);
        let target = self.pick_pcpu(home);
        self.vcpu_mut(slot).pcpu = target as u8;
        self.enqueue(target, slot);
        self.reevaluate(target, true);
        Ok(())
    }

    /// `csched_unit_yield()`: mark it, so that it is queued behind one
    /// lower-priority vCPU and not stolen. A vCPU that yields with nobody
    /// else queued keeps running (the core finds no other candidate) and is
    /// not marked, as Xen clears the flag when it picks the yielder again.
    fn yielded(&mut self, vcpu: VcpuId) -> Result<(), EventError> {
        let slot = self.slot(vcpu)?;
        let v = *self.vcpu(slot);
        if v.blocked || !v.present {
            return Ok(());
        }
        let alone = v.running && self.pcpus[usize::from(v.pcpu)].queue.is_empty();
        self.vcpu_mut(slot).yielded = !alone;
        Ok(())
    }

    fn tick(&mut self, now: u64) {
        self.replay_quiet_ticks(now.saturating_sub(1));
        self.advance_clock(now);
        if now >= self.next_accounting {
            self.accounting();
            self.next_accounting = aligned_after(now, self.tunables.timeslice_ns());
        }
        if now >= self.next_tick {
            self.tick_pcpus();
            self.next_tick = aligned_after(now, self.tunables.tick_period_ns());
        }
        for index in 0..MAX_PCPUS {
            if self.pcpus[index].preempt_at.is_some_and(|at| at <= now) {
                self.reevaluate(index, false);
            }
            if self.pcpus[index]
                .balance_retry_at
                .is_some_and(|at| at <= now)
            {
                self.pcpus[index].balance_retry_at = None;
                if self.try_steal(index) {
                    self.reevaluate(index, true);
                }
            }
        }
    }

    /// `csched_tick()` on every pCPU: a BOOST vCPU found running loses its
    /// boost (`csched_unit_acct()`), and so does one that has run for a tick
    /// period since it was boosted even if no tick found it running (Xen
    /// catches a vCPU at a tick with a probability equal to the share of the
    /// tick it runs, so this is the same rule in expectation, minus the
    /// luck); then every pCPU whose best is OVER or IDLE looks for work to
    /// steal, rate-limited.
    fn tick_pcpus(&mut self) {
        self.stats.ticks += 1;
        let tick_period = self.tunables.tick_period_ns();
        for domain in self.domains.iter_mut().filter(|d| d.present) {
            for v in domain.slots_mut() {
                if v.present
                    && v.priority == Priority::Boost
                    && (v.running || v.boosted_run >= tick_period)
                {
                    v.priority = Priority::Under;
                }
            }
        }
        for index in 0..MAX_PCPUS {
            if self.pcpus[index].online && self.try_steal(index) {
                self.reevaluate(index, true);
            }
        }
        for index in 0..MAX_PCPUS {
            if self.pcpus[index].current.is_none() && !self.pcpus[index].queue.is_empty() {
                self.reevaluate(index, false);
            }
        }
    }

    /// `csched_acct()`: hands out one period's credit by weight among the
    /// active vCPUs, applies caps and bounds, then re-sorts every queue
    /// (`csched_runq_sort()`). The formulas are in [`crate::credit`].
    fn accounting(&mut self) {
        self.stats.accountings += 1;
        self.last_accounting = Some(self.now);
        let timeslice = self.tunables.timeslice_ns();
        let online = self.pcpus.iter().filter(|p| p.online).count();
        let weight_total: u64 = self
            .domains
            .iter()
            .filter(|d| d.present)
            .map(|d| u64::from(d.params.weight.get()) * d.active_vcpus() as u64)
            .sum();
        if weight_total == 0 {
            self.balance = 0;
            return;
        }
        // The period's pCPU time, less what the hypervisor took of it (at
        // most half: the reports are the core's allegations). Xen hands out
        // all of it, its own cost being negligible; under TCG the core and
        // its servers take a few percent, and credit no vCPU could burn
        // piles up until the one-slice limit halves it, away from the
        // heaviest domains first (`make bench`, the share tables). A capped
        // domain whose share of the whole period reaches its cap still
        // gets its cap (`crate::credit`).
        let pcpu_time = timeslice.saturating_mul(online as u64);
        let overhead = core::mem::take(&mut self.overhead).min(pcpu_time / 2);
        let mut period = Period::new(timeslice, pcpu_time, overhead, weight_total, self.balance);
        let mut balance: i64 = 0;
        let mut to_front: Vec<u8, MAX_DOMAINS> = Vec::new();
        let order = self.order.clone();
        for &domain in &order {
            let d = &self.domains[usize::from(domain)];
            let active = d.active_vcpus();
            if !d.present || active == 0 {
                continue;
            }
            let share = period.domain(d.params.weight.get(), active, d.params.cap.percent());
            if share.move_to_front {
                // Cannot fail: `order` has at most MAX_DOMAINS entries.
                let _ = to_front.push(domain);
            }
            for index in d.slot_indices() {
                let slot = Slot {
                    domain,
                    vcpu: index,
                };
                let v = *self.vcpu(slot);
                if !v.present || !v.active {
                    continue;
                }
                let settled = settle(v.credit, v.parked, share, timeslice);
                let v = self.vcpu_mut(slot);
                v.credit = settled.credit;
                v.priority = settled.priority;
                if settled.deactivate {
                    v.active = false;
                }
                balance = balance.saturating_add(settled.credit);
                if settled.park {
                    self.park(slot);
                }
                if settled.unpark {
                    self.unpark(slot);
                }
            }
        }
        self.balance = balance;
        for domain in to_front {
            self.move_to_front(domain);
        }
        self.sort_queues();
    }

    // ----- queues -----

    /// Where `__runq_insert()` puts `slot` in `queue`: after every vCPU of
    /// equal or higher priority, and one further if it has yielded and a
    /// lower-priority vCPU is there to go behind.
    fn insert_position(&self, queue: &[Slot], slot: Slot) -> usize {
        let vcpu = self.vcpu(slot);
        let mut position = queue
            .iter()
            .position(|&other| self.vcpu(other).priority < vcpu.priority)
            .unwrap_or(queue.len());
        if vcpu.yielded && position < queue.len() {
            position += 1;
        }
        position
    }

    fn enqueue(&mut self, pcpu: usize, slot: Slot) {
        let position = self.insert_position(&self.pcpus[pcpu].queue, slot);
        // Cannot fail: every vCPU is in at most one queue, and a queue holds
        // MAX_VCPUS entries.
        let _ = self.pcpus[pcpu].queue.insert(position, slot);
    }

    fn dequeue(&mut self, slot: Slot) {
        let home = usize::from(self.vcpu(slot).pcpu);
        for index in core::iter::once(home).chain(0..MAX_PCPUS) {
            let queue = &mut self.pcpus[index].queue;
            if let Some(position) = queue.iter().position(|&s| s == slot) {
                queue.remove(position);
                return;
            }
        }
    }

    /// `csched_runq_sort()`: moves UNDER (and BOOST) vCPUs ahead of OVER
    /// ones, keeping the order within each group.
    ///
    /// In place: the UNDER ones move up over the OVER ones, which wait in a
    /// scratch list of their own and go back behind them (moving whole
    /// queues, `MAX_VCPUS` slots each, cost more than the sort itself).
    fn sort_queues(&mut self) {
        for index in 0..MAX_PCPUS {
            let length = self.pcpus[index].queue.len();
            if length < 2 {
                continue;
            }
            let mut over: Vec<Slot, MAX_VCPUS> = Vec::new();
            let mut kept = 0;
            for position in 0..length {
                let slot = self.pcpus[index].queue[position];
                if self.vcpu(slot).priority >= Priority::Under {
                    self.pcpus[index].queue[kept] = slot;
                    kept += 1;
                } else {
                    // Cannot fail: `over` holds as many as a queue.
                    let _ = over.push(slot);
                }
            }
            let queue = &mut self.pcpus[index].queue;
            queue.truncate(kept);
            // Cannot fail: the queue held these a moment ago.
            let _ = queue.extend_from_slice(&over);
        }
    }

    /// The priority `pcpu` would run at if it switched now: the better of its
    /// running vCPU and the head of its queue (`IDLE` if neither).
    fn best_priority(&self, pcpu: usize) -> Priority {
        let pcpu = &self.pcpus[pcpu];
        let current = pcpu
            .current
            .map(|slot| self.vcpu(slot))
            .filter(|v| !v.parked)
            .map(|v| v.priority);
        let head = pcpu.queue.first().map(|&slot| self.vcpu(slot).priority);
        current.max(head).unwrap_or(Priority::Idle)
    }

    // ----- placement and balancing -----

    fn least_loaded_pcpu(&self) -> Option<usize> {
        (0..MAX_PCPUS)
            .filter(|&index| self.pcpus[index].online)
            .min_by_key(|&index| self.pcpus[index].load())
    }

    /// Where a waking (or new, or unparked) vCPU goes: its own pCPU if that
    /// is idle, else the next idle pCPU in turn (as `__runq_tickle()` with
    /// `tickle_one_idle_cpu`), else its own pCPU.
    fn pick_pcpu(&mut self, home: usize) -> usize {
        let home = if self.pcpus.get(home).is_some_and(|p| p.online) {
            home
        } else {
            self.least_loaded_pcpu().unwrap_or(0)
        };
        if self.pcpus[home].idle() {
            return home;
        }
        for step in 1..=MAX_PCPUS {
            let index = (self.last_idle_pick + step) % MAX_PCPUS;
            if self.pcpus[index].idle() {
                self.last_idle_pick = index;
                return index;
            }
        }
        home
    }

    /// `csched_load_balance()` + `csched_runq_steal()`: if the best `pcpu`
    /// can run is OVER or IDLE, and it has not balanced within
    /// [`LOAD_BALANCE_RATELIMIT_NS`], take the first queued vCPU of strictly
    /// higher priority from a busy peer, skipping yielders and peers with
    /// nothing queued. Peers are visited starting after the last one stolen
    /// from. Returns whether a vCPU was stolen.
    fn try_steal(&mut self, pcpu: usize) -> bool {
        if !self.pcpus[pcpu].online {
            return false;
        }
        let best = self.best_priority(pcpu);
        if best > Priority::Over {
            self.pcpus[pcpu].balance_retry_at = None;
            return false;
        }
        if let Some(last) = self.pcpus[pcpu].last_balance {
            let allowed_at = last.saturating_add(LOAD_BALANCE_RATELIMIT_NS + 1);
            if self.now < allowed_at {
                // An idle pCPU tries again as soon as the ratelimit allows,
                // instead of idling until its next tick.
                if best == Priority::Idle {
                    self.pcpus[pcpu].balance_retry_at = Some(allowed_at);
                }
                return false;
            }
        }
        self.pcpus[pcpu].balance_retry_at = None;
        self.pcpus[pcpu].last_balance = Some(self.now);
        self.stats.balance_passes += 1;
        let Some((peer, position)) = self.steal_candidate(pcpu, best) else {
            return false;
        };
        let slot = self.pcpus[peer].queue.remove(position);
        self.vcpu_mut(slot).pcpu = pcpu as u8;
        self.enqueue(pcpu, slot);
        self.balance_bias = peer;
        self.stats.steals += 1;
        true
    }

    /// What `pcpu`, whose best is `best`, would steal: the peer and the
    /// position in its queue of the first vCPU of strictly higher priority
    /// that did not yield, peers visited from the one after the last stolen
    /// from, busy peers with something queued only.
    fn steal_candidate(&self, pcpu: usize, best: Priority) -> Option<(usize, usize)> {
        (1..=MAX_PCPUS).find_map(|step| {
            let peer = (self.balance_bias + step) % MAX_PCPUS;
            let p = &self.pcpus[peer];
            if peer == pcpu || !p.online || p.current.is_none() || p.load() <= 1 {
                return None;
            }
            p.queue
                .iter()
                .take_while(|&&slot| self.vcpu(slot).priority > best)
                .position(|&slot| !self.vcpu(slot).yielded)
                .map(|position| (peer, position))
        })
    }

    /// Decides whether `pcpu` must be tickled: an idle pCPU with work, or a
    /// parked vCPU still running, at once; a running vCPU outranked by the
    /// head of the queue only when `new_work` was just queued here (a wake,
    /// an unpark or a steal: the moments `__runq_tickle()` runs in Xen), or
    /// when an earlier preemption has not happened yet. Such a preemption is
    /// put off until the running vCPU has run for the ratelimit (the check
    /// `csched_schedule()` makes, applied where the preemption is decided).
    /// A vCPU that merely sits ahead of the running one, as a yielder's
    /// successor does, waits for the end of the slice, as in Xen.
    fn reevaluate(&mut self, pcpu: usize, new_work: bool) {
        if !self.pcpus[pcpu].online {
            return;
        }
        let head = self.pcpus[pcpu]
            .queue
            .first()
            .map(|&slot| self.vcpu(slot).priority);
        let Some(current) = self.pcpus[pcpu].current else {
            self.pcpus[pcpu].preempt_at = None;
            self.pcpus[pcpu].preempt_wanted = false;
            if head.is_some() {
                self.tickle(pcpu);
            }
            return;
        };
        let running = *self.vcpu(current);
        if running.parked || running.blocked {
            self.pcpus[pcpu].preempt_at = None;
            self.pcpus[pcpu].preempt_wanted = false;
            self.tickle(pcpu);
            return;
        }
        let outranked = head.is_some_and(|head| head > running.priority);
        if !outranked || !(new_work || self.pcpus[pcpu].preempt_wanted) {
            self.pcpus[pcpu].preempt_at = None;
            self.pcpus[pcpu].preempt_wanted = false;
            return;
        }
        self.pcpus[pcpu].preempt_wanted = true;
        let ratelimit = self.tunables.ratelimit_ns();
        let due = self.pcpus[pcpu].since.saturating_add(ratelimit);
        if ratelimit == 0 || due <= self.now {
            self.pcpus[pcpu].preempt_at = None;
            self.tickle(pcpu);
        } else {
            if self.pcpus[pcpu].preempt_at != Some(due) {
                self.stats.deferred_preemptions += 1;
            }
            self.pcpus[pcpu].preempt_at = Some(due);
        }
    }

    fn tickle(&mut self, pcpu: usize) {
        let expected = self.pcpus[pcpu].current;
        if self.pcpus[pcpu].tickle != Some(expected) {
            self.stats.tickles += 1;
        }
        self.pcpus[pcpu].tickle = Some(expected);
    }

    // ----- caps and the active set -----

    /// Parks a vCPU whose domain is over its cap (`sched_unit_pause_nosync()`
    /// in `csched_acct()`): off the queue, and off the pCPU via a tickle.
    fn park(&mut self, slot: Slot) {
        let v = *self.vcpu(slot);
        if v.queued() {
            self.dequeue(slot);
        }
        self.vcpu_mut(slot).parked = true;
        self.stats.parks += 1;
        if v.running {
            self.reevaluate(usize::from(v.pcpu), false);
        }
    }

    /// Lets a parked vCPU go. It is placed as a wake places it, but never
    /// boosted: Xen clears `CSCHED_FLAG_UNIT_PARKED` only after the unpause
    /// for exactly that reason.
    fn unpark(&mut self, slot: Slot) {
        self.vcpu_mut(slot).parked = false;
        self.stats.unparks += 1;
        let v = *self.vcpu(slot);
        if v.queued() {
            let target = self.pick_pcpu(usize::from(v.pcpu));
            self.vcpu_mut(slot).pcpu = target as u8;
            self.enqueue(target, slot);
            self.reevaluate(target, true);
        } else if v.running {
            self.reevaluate(usize::from(v.pcpu), false);
        }
    }

    /// `__csched_unit_acct_start()`: a domain that had no active vCPU goes to
    /// the head of the accounting order.
    fn activate(&mut self, slot: Slot) {
        if self.domains[usize::from(slot.domain)].active_vcpus() == 0 {
            self.move_to_front(slot.domain);
        }
        self.vcpu_mut(slot).active = true;
    }

    fn move_to_front(&mut self, domain: u8) {
        if let Some(position) = self.order.iter().position(|&d| d == domain) {
            self.order.remove(position);
            // Cannot fail: one was just removed.
            let _ = self.order.insert(0, domain);
        }
    }

    // ----- names -----

    fn advance_clock(&mut self, at: u64) {
        self.now = self.now.max(at);
    }

    // The four lookups below are inlined by force: at `opt-level = "s"`
    // they stayed calls, over a hundred per server turn, and under QEMU TCG
    // every return is an indirect jump through the jump cache, which the
    // CR3 write before each turn empties (`tools/tcg-exec-profile.py`:
    // 830 → 515 blocks entered through a lookup per turn).
    #[inline(always)]
    fn domain_slot(&self, id: DomainId) -> Option<usize> {
        self.domains.iter().position(|d| d.present && d.id == id)
    }

    #[inline(always)]
    fn slot(&self, id: VcpuId) -> Result<Slot, EventError> {
        let domain = self
            .domain_slot(id.domain)
            .ok_or(EventError::UnknownVcpu(id))?;
        let slot = Slot {
            domain: domain as u8,
            vcpu: id.index,
        };
        if usize::from(id.index) < MAX_VCPUS_PER_DOMAIN && self.vcpu(slot).present {
            Ok(slot)
        } else {
            Err(EventError::UnknownVcpu(id))
        }
    }

    fn id(&self, slot: Slot) -> VcpuId {
        VcpuId::new(self.domains[usize::from(slot.domain)].id, slot.vcpu)
    }

    #[inline(always)]
    fn vcpu(&self, slot: Slot) -> &Vcpu {
        &self.domains[usize::from(slot.domain)].vcpus[usize::from(slot.vcpu)]
    }

    #[inline(always)]
    fn vcpu_mut(&mut self, slot: Slot) -> &mut Vcpu {
        &mut self.domains[usize::from(slot.domain)].vcpus[usize::from(slot.vcpu)]
    }
}

/// The first multiple of `period` after `now`. Ticks and accounting run on
/// this grid of the core's clock (as Xen re-arms its tick at
/// `now + period - now % period`), so a missed deadline is skipped rather
/// than run late back to back, and a restarted scheduler keeps the phase of
/// the one it replaces: restarting it cannot postpone accounting.
fn aligned_after(now: u64, period: u64) -> u64 {
    let period = period.max(1);
    (now / period).saturating_add(1).saturating_mul(period)
}

#[cfg(test)]
impl Scheduler {
    /// The next tick boundary, quiet or not.
    pub(crate) fn next_tick(&self) -> u64 {
        self.next_tick
    }

    /// Checks the structural invariants; used by the property tests.
    pub(crate) fn check_invariants(&self) -> Result<(), std::string::String> {
        let mut seen_in_queues = std::vec::Vec::new();
        for (index, pcpu) in self.pcpus.iter().enumerate() {
            for &slot in &pcpu.queue {
                let v = self.vcpu(slot);
                if !v.queued() {
                    return Err(format!("{slot:?} in queue {index} but not queued: {v:?}"));
                }
                if usize::from(v.pcpu) != index {
                    return Err(format!(
                        "{slot:?} in queue {index} but says pCPU {}",
                        v.pcpu
                    ));
                }
                if seen_in_queues.contains(&slot) {
                    return Err(format!("{slot:?} queued twice"));
                }
                seen_in_queues.push(slot);
            }
            if let Some(slot) = pcpu.current {
                let v = self.vcpu(slot);
                if !v.present || !v.running || usize::from(v.pcpu) != index {
                    return Err(format!("current {slot:?} of {index} is {v:?}"));
                }
                if !pcpu.online {
                    return Err(format!("offline pCPU {index} runs {slot:?}"));
                }
            }
            if !pcpu.online && (!pcpu.queue.is_empty() || pcpu.tickle.is_some()) {
                return Err(format!("offline pCPU {index} has work or a tickle"));
            }
        }
        for (d, domain) in self.domains.iter().enumerate() {
            let listed = self.order.iter().filter(|&&o| usize::from(o) == d).count();
            if listed != usize::from(domain.present) {
                return Err(format!(
                    "domain slot {d} listed {listed} times in the order"
                ));
            }
            for (i, v) in domain.vcpus.iter().enumerate() {
                let slot = Slot {
                    domain: d as u8,
                    vcpu: i as u8,
                };
                if !v.present {
                    continue;
                }
                if i >= usize::from(domain.vcpu_end) {
                    return Err(format!("{slot:?} present past its domain's end {}", domain.vcpu_end));
                }
                if !domain.present {
                    return Err(format!("{slot:?} present in an absent domain"));
                }
                if v.queued() && !seen_in_queues.contains(&slot) {
                    return Err(format!("{slot:?} is runnable but in no queue"));
                }
                if v.running && self.pcpus[usize::from(v.pcpu)].current != Some(slot) {
                    return Err(format!("{slot:?} running but not current"));
                }
                if v.running && v.blocked {
                    return Err(format!("{slot:?} running and blocked"));
                }
                if v.parked && !domain.params.cap.is_capped() {
                    return Err(format!("{slot:?} parked without a cap"));
                }
            }
        }
        Ok(())
    }

    /// Checks what accounting guarantees right after it ran: active credit
    /// within one slice of 0 with the matching priority; a vCPU that just
    /// left the active set holds at most about two slices (half of what it
    /// had plus a share of a negative balance); the balance is bounded by
    /// that.
    pub(crate) fn check_after_accounting(&self) -> Result<(), std::string::String> {
        let timeslice = self.tunables.timeslice_ns() as i64;
        let mut present = 0i64;
        for domain in self.domains.iter().filter(|d| d.present) {
            for v in domain.slots().iter().filter(|v| v.present) {
                present += 1;
                if v.active {
                    if v.credit < -timeslice || v.credit > timeslice {
                        return Err(format!("active credit {} outside ±{timeslice}", v.credit));
                    }
                    let expected = if v.credit < 0 {
                        Priority::Over
                    } else {
                        Priority::Under
                    };
                    if v.priority != expected {
                        return Err(format!("credit {} but priority {:?}", v.credit, v.priority));
                    }
                }
            }
        }
        if self.balance.abs() > present * 2 * timeslice {
            return Err(format!(
                "balance {} beyond {present} vCPUs' bound",
                self.balance
            ));
        }
        Ok(())
    }
}

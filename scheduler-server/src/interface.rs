//! What goes in and out of the policy: events from the core, decisions and
//! tickles for the core, snapshots for a restart, and read-outs for `hvctl`.
//!
//! Every type here is plain data (`Copy`, fixed size, no references) so the
//! `ipc` crate can mirror it as a postcard message.

use core::fmt;

use crate::ids::{DomainId, PcpuId, PcpuSet, VcpuId};
use crate::knobs::{DomainParams, KnobError, Tunables};
use crate::RUN_LIST_LEN;

/// Something the core tells the scheduler. Events arrive asynchronously, in
/// batches, and possibly late; timestamps (`at`, `now`) are the core's clock
/// in nanoseconds when the thing happened. The events of one pCPU arrive in
/// the order they happened: at a switch point, `Ran`, then `Blocked` or
/// `Yielded`, then `Dispatched`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A pCPU came online and may be given work.
    PcpuOnline {
        /// The pCPU.
        pcpu: PcpuId,
    },
    /// A domain was created.
    DomainCreated {
        /// The core's id for it.
        domain: DomainId,
        /// Its weight and cap (already validated; see [`DomainParams::new`]).
        params: DomainParams,
    },
    /// A domain and all its vCPUs are gone.
    DomainDestroyed {
        /// The domain.
        domain: DomainId,
    },
    /// A vCPU was created; a runnable one is placed and queued.
    VcpuCreated {
        /// The vCPU.
        vcpu: VcpuId,
        /// Whether it can run now (otherwise it starts blocked).
        runnable: bool,
    },
    /// A vCPU is gone.
    VcpuDestroyed {
        /// The vCPU.
        vcpu: VcpuId,
    },
    /// At a switch point, `pcpu` started running `vcpu` (`None`: it went
    /// idle). Reported only when the running vCPU changes.
    Dispatched {
        /// The pCPU that switched.
        pcpu: PcpuId,
        /// What it runs now.
        vcpu: Option<VcpuId>,
        /// When it switched.
        at: u64,
    },
    /// `vcpu` ran on `pcpu` for `ns` nanoseconds since its last report.
    /// Reported at every switch point and at the core's ticks.
    Ran {
        /// The vCPU that ran.
        vcpu: VcpuId,
        /// Where it ran.
        pcpu: PcpuId,
        /// For how long, in nanoseconds.
        ns: u64,
    },
    /// The vCPU blocked (HLT with interrupts on, `SCHEDOP_block`, or down).
    Blocked {
        /// The vCPU.
        vcpu: VcpuId,
        /// When.
        at: u64,
    },
    /// The vCPU has something to do again (interrupt, timer, IPI).
    Woke {
        /// The vCPU.
        vcpu: VcpuId,
        /// When.
        at: u64,
    },
    /// The vCPU yielded (`SCHEDOP_yield`, PAUSE-loop exit).
    Yielded {
        /// The vCPU.
        vcpu: VcpuId,
    },
    /// Time passed: runs every tick and accounting that is due by `now`, and
    /// every preemption deferred by the ratelimit. The server sends it to
    /// itself when [`Scheduler::next_deadline`](crate::Scheduler::next_deadline) is reached.
    Tick {
        /// The current time.
        now: u64,
    },
    /// `pcpu` spent `ns` on the hypervisor's own work (the core's exit
    /// handling and switch points, the servers) since its last report: the
    /// next accounting hands out that much less credit.
    Overhead {
        /// The pCPU.
        pcpu: PcpuId,
        /// How long, ns.
        ns: u64,
    },
}

/// credit1 priorities, lowest first (Xen's `CSCHED_PRI_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Nothing to run: the priority of an empty pCPU (`CSCHED_PRI_IDLE`).
    Idle,
    /// Has spent more than its credit (`CSCHED_PRI_TS_OVER`).
    Over,
    /// Has credit left (`CSCHED_PRI_TS_UNDER`).
    Under,
    /// Woke while UNDER; runs ahead of everyone until a tick finds it
    /// running or finds it has run for a tick period since, or until the
    /// next accounting (`CSCHED_PRI_TS_BOOST`).
    Boost,
}

/// An ordered list of vCPUs, best first, at most [`RUN_LIST_LEN`] long.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct RunList {
    len: u8,
    entries: [VcpuId; RUN_LIST_LEN],
}

impl RunList {
    /// The empty list.
    pub const EMPTY: Self = Self {
        len: 0,
        entries: [VcpuId::new(DomainId(0), 0); RUN_LIST_LEN],
    };

    /// Appends `vcpu`; returns `false` (and drops it) when the list is full.
    pub fn push(&mut self, vcpu: VcpuId) -> bool {
        match self.entries.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = vcpu;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The entries, best first.
    pub fn as_slice(&self) -> &[VcpuId] {
        &self.entries[..usize::from(self.len)]
    }

    /// The entries, best first.
    pub fn iter(&self) -> impl Iterator<Item = VcpuId> + '_ {
        self.as_slice().iter().copied()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for RunList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// What one pCPU should do at its next switch point.
///
/// The core consumes it without asking the server (a switch point is a
/// block, a yield, the end of a slice, or a [`Tickle`]):
///
/// 1. Walk [`run`](Self::run) in order and take the first vCPU that is
///    runnable and not running on another pCPU. The vCPU running here is
///    a candidate only where it appears in the list: the server puts it
///    where it would be queued if preempted now, and leaves it out when it
///    must stop (its domain hit its cap).
/// 2. At a yield, skip the yielding vCPU unless no other candidate exists
///    (so it goes behind at least one other vCPU, as `csched_unit_yield()`).
/// 3. Run the pick for [`slice_ns`](Self::slice_ns), or go idle when
///    nothing is left; report [`Event::Dispatched`] if the pick changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Candidates, best first: the pCPU's queue with its running vCPU put
    /// where it would go if preempted now.
    pub run: RunList,
    /// How long the pick may run before the next switch point (the
    /// timeslice).
    pub slice_ns: u64,
}

/// A request to make `pcpu` reach a switch point now (an IPI).
///
/// The core honours it only if the vCPU running there is still
/// `expected`: a tickle computed from a stale view is dropped, and the
/// server sends a fresh one when the core's reports catch up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tickle {
    /// The pCPU to interrupt.
    pub pcpu: PcpuId,
    /// What the server believes runs there (`None`: idle).
    pub expected: Option<VcpuId>,
}

/// Where a vCPU is, as the core reports it in a snapshot and as `hvctl`
/// shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VcpuRunState {
    /// Running on the pCPU.
    Running(PcpuId),
    /// Runnable, queued on the pCPU.
    Runnable(PcpuId),
    /// Blocked, or parked by its cap (see [`VcpuInfo::parked`]).
    Blocked,
}

/// One domain in a restart snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainRecord {
    /// The domain.
    pub domain: DomainId,
    /// Its weight and cap, as last accepted by the scheduler.
    pub params: DomainParams,
}

/// One vCPU in a restart snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuRecord {
    /// The vCPU.
    pub vcpu: VcpuId,
    /// Its state in the core.
    pub state: VcpuRunState,
    /// The CPU time it has used since it was created, in nanoseconds.
    pub run_time_ns: u64,
    /// The credit in the last [`VcpuInfo`] a previous scheduler instance
    /// published for it (for `hvctl stats`; the core keeps it), if any.
    pub published: Option<PublishedCredit>,
}

/// A vCPU's credit as a scheduler instance published it, kept by the core
/// so that the next instance can carry on from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishedCredit {
    /// [`VcpuInfo::credit_ns`].
    pub credit_ns: i64,
    /// [`VcpuInfo::run_time_ns`] of the same read-out: the run time the core
    /// counted since then is burnt from `credit_ns` on restore, so a restart
    /// forgives nothing.
    pub run_time_ns: u64,
}

impl From<VcpuInfo> for PublishedCredit {
    fn from(info: VcpuInfo) -> Self {
        Self {
            credit_ns: info.credit_ns,
            run_time_ns: info.run_time_ns,
        }
    }
}

/// Everything a restarted scheduler needs from the core (see
/// [`Scheduler::rebuild`](crate::Scheduler::rebuild)).
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// The core's clock.
    pub now: u64,
    /// The tunables last accepted by the scheduler.
    pub tunables: Tunables,
    /// When the previous instance last ran accounting
    /// ([`Scheduler::last_accounting`](crate::Scheduler::last_accounting),
    /// published with its stats), if the core knows. The next accounting is
    /// due one timeslice later, so a restart neither skips nor repeats one.
    pub accounted_at: Option<u64>,
    /// The online pCPUs.
    pub pcpus: PcpuSet,
    /// Every domain.
    pub domains: &'a [DomainRecord],
    /// Every vCPU.
    pub vcpus: &'a [VcpuRecord],
}

/// A vCPU as the scheduler sees it (for `hvctl stats` and for tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuInfo {
    /// Remaining credit in nanoseconds of pCPU time (Xen counts in units of
    /// [`NS_PER_CREDIT`](crate::NS_PER_CREDIT)).
    pub credit_ns: i64,
    /// Current priority.
    pub priority: Priority,
    /// Where it is.
    pub state: VcpuRunState,
    /// Whether it takes part in accounting (earns credit).
    pub active: bool,
    /// Whether its domain's cap has parked it.
    pub parked: bool,
    /// CPU time used since creation, in nanoseconds.
    pub run_time_ns: u64,
}

/// Counters, for `hvctl stats` and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Accounting periods run.
    pub accountings: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Wakes that were boosted.
    pub boosts: u64,
    /// Times a vCPU was parked by its cap.
    pub parks: u64,
    /// Times a parked vCPU was let go.
    pub unparks: u64,
    /// Load-balance passes (each one is rate-limited per pCPU).
    pub balance_passes: u64,
    /// vCPUs stolen from another pCPU's queue.
    pub steals: u64,
    /// Tickles emitted.
    pub tickles: u64,
    /// Preemptions put off because the running vCPU was inside its ratelimit.
    pub deferred_preemptions: u64,
}

/// Why an event or a snapshot was refused. The scheduler's state is
/// unchanged when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventError {
    /// No such domain.
    UnknownDomain(DomainId),
    /// No such vCPU.
    UnknownVcpu(VcpuId),
    /// The domain exists already.
    DomainExists(DomainId),
    /// The vCPU exists already.
    VcpuExists(VcpuId),
    /// All [`MAX_DOMAINS`](crate::MAX_DOMAINS) domain slots are taken.
    TooManyDomains,
    /// The vCPU index is not below [`MAX_VCPUS_PER_DOMAIN`](crate::MAX_VCPUS_PER_DOMAIN).
    VcpuIndexOutOfRange(VcpuId),
    /// The pCPU number is not below [`MAX_PCPUS`](crate::MAX_PCPUS).
    PcpuOutOfRange(PcpuId),
    /// The pCPU is not online.
    PcpuOffline(PcpuId),
    /// A vCPU was to be placed but no pCPU is online.
    NoPcpuOnline,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UnknownDomain(domain) => write!(f, "no domain {}", domain.0),
            Self::UnknownVcpu(vcpu) => write!(f, "no vCPU {}.{}", vcpu.domain.0, vcpu.index),
            Self::DomainExists(domain) => write!(f, "domain {} exists already", domain.0),
            Self::VcpuExists(vcpu) => {
                write!(f, "vCPU {}.{} exists already", vcpu.domain.0, vcpu.index)
            }
            Self::TooManyDomains => write!(f, "all {} domain slots are taken", crate::MAX_DOMAINS),
            Self::VcpuIndexOutOfRange(vcpu) => write!(
                f,
                "vCPU index {} is out of range: at most {} vCPUs per domain",
                vcpu.index,
                crate::MAX_VCPUS_PER_DOMAIN
            ),
            Self::PcpuOutOfRange(pcpu) => write!(
                f,
                "pCPU {} is out of range: at most {} pCPUs",
                pcpu.0,
                crate::MAX_PCPUS
            ),
            Self::PcpuOffline(pcpu) => write!(f, "pCPU {} is offline", pcpu.0),
            Self::NoPcpuOnline => write!(f, "no pCPU is online"),
        }
    }
}

/// Why a control request (`hvctl sched-credit`) was refused. Nothing
/// changes when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// A value out of range.
    Knob(KnobError),
    /// No such domain.
    UnknownDomain(DomainId),
}

impl From<KnobError> for ControlError {
    fn from(error: KnobError) -> Self {
        Self::Knob(error)
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Knob(error) => error.fmt(f),
            Self::UnknownDomain(domain) => write!(f, "no domain {}", domain.0),
        }
    }
}

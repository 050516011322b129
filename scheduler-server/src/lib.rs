//! # scheduler-server — cairn's CPU scheduling policy: Xen's credit1, as a pure state machine
//!
//! The core owns the mechanism (per-pCPU run queues, context switches,
//! timers, IPIs); this crate decides who runs where and for how long. It
//! follows the semantics of Xen's credit scheduler, `xen/common/sched/credit.c`
//! (credit1); functions are cited by their Xen names. It is a library driven
//! by the caller with a clock in nanoseconds, so the same code runs in the
//! ring-3 server and in host tests on a simulated clock.
//!
//! ## The split with the core
//!
//! The core never waits for this policy. It reports what happened, as
//! [`Event`]s, asynchronously and in batches; the server applies them with
//! [`Scheduler::apply`] and publishes, per pCPU, a [`Decision`] (an ordered
//! run list and a slice) that the core consumes at its own switch points
//! (block, yield, end of slice, tickle), plus [`Tickle`]s for the pCPUs that
//! must reach a switch point now. [`Decision`] documents the three rules the
//! core follows; [`Tickle`] the one check it makes. The server wakes itself
//! with [`Event::Tick`] at [`Scheduler::next_deadline`].
//!
//! ## The rules (all as in credit.c unless said otherwise)
//!
//! * **Credit** is counted in nanoseconds of pCPU time (Xen counts 10
//!   credits per ms; [`NS_PER_CREDIT`] converts). A vCPU's credit falls by
//!   exactly the run time the core reports ([`Event::Ran`]), as
//!   `burn_credits()` but never sampled, so a guest cannot dodge being
//!   charged by not running when a tick looks.
//! * **Ticks** come every `timeslice / 3` (`csched_tick()`), on multiples of
//!   the tick period of the core's clock: a BOOST vCPU found running drops
//!   to UNDER, and pCPUs whose best is OVER or IDLE try to steal work. A
//!   tick that can change nothing (no BOOST, nothing to steal, no idle pCPU
//!   with a queue) is run late, at its own time, before the next event
//!   ([`Scheduler::catch_up`]) instead of waking the server; what is
//!   published is the same (a property test checks it against ticking on
//!   time).
//! * **Accounting** runs every timeslice (`csched_acct()`). Per domain `d`
//!   with weight `w_d` and `n_d` active vCPUs, out of `W = Σ w_d·n_d`:
//!   `credit_fair_d = ⌈C·w_d·n_d / W⌉` with `C = pCPUs·timeslice` (plus the
//!   deficit if the last balance was negative); a domain is given at most
//!   its peak, `n_d·timeslice`, or `⌈cap·timeslice / 100⌉` if capped, and
//!   the surplus goes to the domains after it; each vCPU gets
//!   `⌈credit_fair_d / n_d⌉`. Then credit < 0 → OVER (and parked if capped and
//!   below `-cap/n_d`; clamped at `-timeslice`); credit ≥ 0 → UNDER (and
//!   unparked; above `timeslice` it leaves the active set, halved). Queues
//!   are re-sorted, UNDER before OVER. The module [`credit`] has the details.
//! * **Priorities** BOOST > UNDER > OVER > IDLE. Only a vCPU that wakes
//!   while UNDER is boosted (`csched_unit_wake()`); a stolen or unparked vCPU
//!   never is.
//! * **Queues** are ordered by priority, FIFO within one
//!   (`__runq_insert()`); a vCPU that yielded goes behind one more,
//!   lower-priority vCPU and is never stolen (`csched_runq_steal()`).
//! * **Preemption** (a tickle of a busy pCPU, `__runq_tickle()`) happens
//!   when a wake, an unpark or a steal queues a vCPU of higher priority than
//!   the running one, and not before the running vCPU has run for the
//!   ratelimit (the check `csched_schedule()` makes); the tickle is deferred
//!   until then. A parked vCPU is stopped at once.
//! * **Balancing**: a pCPU whose best is OVER or IDLE steals the first
//!   queued vCPU of higher priority from a busy peer, at most once per
//!   [`LOAD_BALANCE_RATELIMIT_NS`] (`csched_load_balance()`). A waking vCPU
//!   goes to an idle pCPU if there is one, and only that pCPU is tickled.
//!
//! Deviations from Xen, for the split or for accuracy:
//! * run time is exact instead of sampled, and a vCPU rejoins accounting on
//!   any reported run, not only when a tick catches it running;
//! * a BOOST vCPU also loses its boost at a tick once it has run for a tick
//!   period since the boost (what Xen's sampling does in expectation);
//! * stealing is also tried at ticks, and an idle pCPU retries as soon as
//!   the load-balance ratelimit allows, since the policy cannot run inside
//!   the core's switch;
//! * a tickle names the vCPU it means to preempt, so the core drops it
//!   when it has switched already, and the preemption is re-aimed when the
//!   core's report arrives;
//! * removing a cap unparks at once;
//! * a restarted instance is rebuilt from the core ([`Scheduler::rebuild`]),
//!   carrying on from the credit the old one published.
//!
//! ## Principles
//!
//! `no_std`, no heap (fixed tables of [`MAX_PCPUS`], [`MAX_DOMAINS`],
//! [`MAX_VCPUS_PER_DOMAIN`]), no `unsafe`, no I/O. Every input is checked
//! once: knobs by their constructors ([`Weight::new`], [`Tunables::new`], …),
//! events by [`Scheduler::apply`], which refuses what it does not know and
//! then changes nothing. The scheduler never panics on input.
//!
//! ## The server
//!
//! [`server`] is the ring-3 server around the policy: a
//! [`components::Handler`] that speaks [`ipc::messages::scheduler`],
//! rebuilds the policy from the core's stream at every start, applies the
//! core's event batches and publishes decisions, tickles and credits.
//! It reaches the machine only through [`components::Context`], so it is
//! as pure as the policy and tested on the host against the runtime's mock
//! core; `main.rs` only names it for the `components` runtime.
//!
//! ## Not in this crate
//!
//! The wire format (the `ipc` crate), the core's run queues and its
//! fallback round-robin, halt polling, CPU affinity/pinning, SMT topology,
//! cpupools, and the `vcpu_migration_delay` cache-hotness heuristic
//! (default off in Xen).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod credit;
pub mod histogram;
mod ids;
mod interface;
mod knobs;
mod scheduler;
pub mod server;

#[cfg(test)]
mod tests;

pub use ids::{DomainId, PcpuId, PcpuSet, VcpuId};
pub use interface::{
    ControlError, Decision, DomainRecord, Event, EventError, Priority, PublishedCredit, RunList,
    Snapshot, Stats, Tickle, VcpuInfo, VcpuRecord, VcpuRunState,
};
pub use knobs::{
    Cap, DomainParams, KnobError, Tunables, Weight, CAP_MAX, RATELIMIT_US_DEFAULT,
    RATELIMIT_US_MAX, RATELIMIT_US_MIN, TIMESLICE_MS_DEFAULT, TIMESLICE_MS_MAX, TIMESLICE_MS_MIN,
    WEIGHT_DEFAULT, WEIGHT_MAX, WEIGHT_MIN,
};
pub use scheduler::Scheduler;

/// Most physical CPUs the scheduler manages (QEMU `-smp 1..8`).
pub const MAX_PCPUS: usize = 8;
/// Most domains at once.
pub const MAX_DOMAINS: usize = 16;
/// Most vCPUs per domain.
pub const MAX_VCPUS_PER_DOMAIN: usize = 8;
/// Most vCPUs in total.
pub const MAX_VCPUS: usize = MAX_DOMAINS * MAX_VCPUS_PER_DOMAIN;
/// Longest run list in a [`Decision`].
pub const RUN_LIST_LEN: usize = 8;
/// Shortest time between two load-balancing passes of one pCPU, 1 ms
/// (Xen's `load-balance-ratelimit` default).
pub const LOAD_BALANCE_RATELIMIT_NS: u64 = 1_000_000;
/// Nanoseconds per Xen credit: Xen hands out 10 credits per ms
/// (`CSCHED_CREDITS_PER_MSEC`).
pub const NS_PER_CREDIT: i64 = 100_000;

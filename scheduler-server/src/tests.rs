//! Property tests of the state machine: any sequence of events, valid or
//! not, keeps the queues consistent and the credit bounded.

use proptest::prelude::*;

use crate::{DomainId, DomainParams, Event, PcpuId, Scheduler, Tunables, VcpuId, MAX_PCPUS};

#[derive(Clone, Debug)]
enum Op {
    Event(Event),
    /// Advance the clock by this much and deliver a tick.
    Advance(u64),
    Configure(Option<u32>, Option<u32>),
    SetParams(u16, Option<u32>, Option<u32>),
}

fn vcpu() -> impl Strategy<Value = VcpuId> {
    (0u16..5, 0u8..4).prop_map(|(domain, index)| VcpuId::new(DomainId(domain), index))
}

fn pcpu() -> impl Strategy<Value = PcpuId> {
    // 0..4 are online, 4 is offline, 9 is out of range.
    prop_oneof![8 => (0u8..4).prop_map(PcpuId), 1 => Just(PcpuId(4)), 1 => Just(PcpuId(9))]
}

fn at() -> impl Strategy<Value = u64> {
    0u64..2_000_000_000
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u16..5, 1u32..70_000, 0u32..300).prop_map(|(domain, weight, cap)| {
            let params = DomainParams::new(weight, cap).unwrap_or_default();
            Op::Event(Event::DomainCreated { domain: DomainId(domain), params })
        }),
        2 => (vcpu(), any::<bool>()).prop_map(|(vcpu, runnable)| Op::Event(Event::VcpuCreated { vcpu, runnable })),
        6 => (pcpu(), proptest::option::of(vcpu()), at())
            .prop_map(|(pcpu, vcpu, at)| Op::Event(Event::Dispatched { pcpu, vcpu, at })),
        6 => (vcpu(), pcpu(), prop_oneof![9 => 0u64..40_000_000, 1 => any::<u64>()])
            .prop_map(|(vcpu, pcpu, ns)| Op::Event(Event::Ran { vcpu, pcpu, ns })),
        3 => (vcpu(), at()).prop_map(|(vcpu, at)| Op::Event(Event::Blocked { vcpu, at })),
        3 => (vcpu(), at()).prop_map(|(vcpu, at)| Op::Event(Event::Woke { vcpu, at })),
        2 => vcpu().prop_map(|vcpu| Op::Event(Event::Yielded { vcpu })),
        2 => (pcpu(), 0u64..5_000_000).prop_map(|(pcpu, ns)| Op::Event(Event::Overhead { pcpu, ns })),
        4 => (0u64..40_000_000).prop_map(Op::Advance),
        1 => vcpu().prop_map(|vcpu| Op::Event(Event::VcpuDestroyed { vcpu })),
        1 => (0u16..5).prop_map(|d| Op::Event(Event::DomainDestroyed { domain: DomainId(d) })),
        1 => (proptest::option::of(0u32..1100), proptest::option::of(0u32..600_000))
            .prop_map(|(t, r)| Op::Configure(t, r)),
        1 => (0u16..5, proptest::option::of(0u32..70_000), proptest::option::of(0u32..900))
            .prop_map(|(d, w, c)| Op::SetParams(d, w, c)),
    ]
}

/// A scheduler with default tunables and pCPUs 0..4 online (the generator
/// also names 4, offline, and 9, out of range).
fn four_pcpus() -> Scheduler {
    let mut s = Scheduler::new(Tunables::DEFAULT, 0);
    for pcpu in 0..4 {
        s.apply(Event::PcpuOnline { pcpu: PcpuId(pcpu) }).unwrap();
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_event_sequence_keeps_the_state_consistent(ops in proptest::collection::vec(op(), 1..300)) {
        let mut s = four_pcpus();
        let mut now = 0u64;
        for op in ops {
            let before = s.clone();
            let accountings = s.stats().accountings;
            match op {
                Op::Event(event) => {
                    if s.apply(event).is_err() {
                        prop_assert_eq!(format!("{before:?}"), format!("{s:?}"), "a refused event changed the state");
                    }
                }
                Op::Advance(ns) => {
                    now += ns;
                    s.apply(Event::Tick { now }).unwrap();
                }
                Op::Configure(t, r) => {
                    if s.configure(t, r).is_err() {
                        prop_assert_eq!(format!("{before:?}"), format!("{s:?}"));
                    }
                }
                Op::SetParams(d, w, c) => {
                    if s.set_domain_params(DomainId(d), w, c).is_err() {
                        prop_assert_eq!(format!("{before:?}"), format!("{s:?}"));
                    }
                }
            }
            if let Err(problem) = s.check_invariants() {
                prop_assert!(false, "{}", problem);
            }
            if s.stats().accountings != accountings {
                if let Err(problem) = s.check_after_accounting() {
                    prop_assert!(false, "{}", problem);
                }
            }
            for index in 0..MAX_PCPUS {
                if let Some(decision) = s.decision(PcpuId(index as u8)) {
                    prop_assert!(decision.slice_ns == s.tunables().timeslice_ns());
                    let mut seen = std::vec::Vec::new();
                    for vcpu in decision.run.iter() {
                        prop_assert!(!seen.contains(&vcpu), "{:?} listed twice", vcpu);
                        seen.push(vcpu);
                        prop_assert!(s.vcpu_info(vcpu).is_some_and(|i| !i.parked));
                    }
                }
            }
            prop_assert!(s.next_deadline() >= now.min(s.next_deadline()));
            for tickle in s.take_tickles() {
                prop_assert!(s.online_pcpus().contains(tickle.pcpu));
            }
        }
    }

    #[test]
    fn every_vcpu_gets_its_weighted_credit(weights in proptest::collection::vec(1u32..=65_535, 1..8), pcpus in 1u8..=4) {
        // Every vCPU runs exactly its share of each period: credit stays at
        // the rounding error from 0 and nobody goes OVER for long.
        let mut s = Scheduler::new(Tunables::DEFAULT, 0);
        for pcpu in 0..pcpus {
            s.apply(Event::PcpuOnline { pcpu: PcpuId(pcpu) }).unwrap();
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        for (index, &weight) in weights.iter().enumerate() {
            let domain = DomainId(index as u16);
            s.apply(Event::DomainCreated { domain, params: DomainParams::new(weight, 0).unwrap() }).unwrap();
            s.apply(Event::VcpuCreated { vcpu: VcpuId::new(domain, 0), runnable: true }).unwrap();
        }
        let period = Tunables::DEFAULT.timeslice_ns();
        let capacity = period * u64::from(pcpus);
        for k in 1..=20u64 {
            for (index, &weight) in weights.iter().enumerate() {
                // Fair share, but never more than one pCPU.
                let share = (capacity * u64::from(weight) / total).min(period);
                s.apply(Event::Ran { vcpu: VcpuId::new(DomainId(index as u16), 0), pcpu: PcpuId(0), ns: share }).unwrap();
            }
            s.apply(Event::Tick { now: k * period }).unwrap();
            prop_assert!(s.check_after_accounting().is_ok());
        }
        for (index, _) in weights.iter().enumerate() {
            let info = s.vcpu_info(VcpuId::new(DomainId(index as u16), 0)).unwrap();
            // Nobody is starved of credit: at worst one slice below zero.
            prop_assert!(info.credit_ns >= -(period as i64), "{:?}", info);
        }
    }
}

/// `event` as it happens at `now` (the generator's times are arbitrary).
fn at_time(event: Event, now: u64) -> Event {
    match event {
        Event::Dispatched { pcpu, vcpu, .. } => Event::Dispatched { pcpu, vcpu, at: now },
        Event::Blocked { vcpu, .. } => Event::Blocked { vcpu, at: now },
        Event::Woke { vcpu, .. } => Event::Woke { vcpu, at: now },
        other => other,
    }
}

/// The decisions of every pCPU and the pending tickles.
fn published(s: &mut Scheduler) -> (std::vec::Vec<Option<crate::Decision>>, std::vec::Vec<crate::Tickle>) {
    let decisions = (0..MAX_PCPUS).map(|index| s.decision(PcpuId(index as u8))).collect();
    (decisions, s.take_tickles().into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Skipping quiet ticks changes nothing anyone sees: a scheduler woken
    /// at every tick and one woken only at `next_deadline` (catching up
    /// before each event) publish the same decisions and tickles at every
    /// step, and agree on every vCPU's credit and priority.
    #[test]
    fn skipping_quiet_ticks_publishes_what_ticking_on_time_does(ops in proptest::collection::vec(op(), 1..300)) {
        let mut eager = four_pcpus();
        let mut lazy = eager.clone();
        let mut now = 0u64;
        let mut quiet_skipped = 0u64;
        for op in ops {
            match op {
                Op::Event(event) => {
                    let event = at_time(event, now);
                    settle(&mut eager, &mut lazy, &mut now, &mut quiet_skipped)?;
                    let _ = eager.apply(event);
                    let _ = lazy.apply(event);
                }
                Op::Advance(ns) => {
                    let end = now + ns;
                    advance(&mut eager, &mut lazy, &mut now, end, &mut quiet_skipped)?;
                    now = end;
                }
                Op::Configure(t, r) => {
                    settle(&mut eager, &mut lazy, &mut now, &mut quiet_skipped)?;
                    prop_assert_eq!(eager.configure(t, r).is_ok(), lazy.configure(t, r).is_ok());
                }
                Op::SetParams(d, w, c) => {
                    settle(&mut eager, &mut lazy, &mut now, &mut quiet_skipped)?;
                    let results = (eager.set_domain_params(DomainId(d), w, c), lazy.set_domain_params(DomainId(d), w, c));
                    prop_assert_eq!(results.0.is_ok(), results.1.is_ok());
                }
            }
            prop_assert_eq!(published(&mut eager), published(&mut lazy), "at {}", now);
            for vcpu in eager.vcpu_ids().collect::<std::vec::Vec<_>>() {
                let (e, l) = (eager.vcpu_info(vcpu), lazy.vcpu_info(vcpu));
                prop_assert_eq!(e.map(|i| (i.credit_ns, i.priority, i.parked)), l.map(|i| (i.credit_ns, i.priority, i.parked)), "{:?} at {}", vcpu, now);
            }
        }
        settle(&mut eager, &mut lazy, &mut now, &mut quiet_skipped)?;
        // Tick counts may differ: an eager scheduler that wakes after
        // several boundaries ticks once for all, the lazy one replays each
        // quiet boundary; what they publish is the same.
        let _ = quiet_skipped;
    }
}

#[test]
fn a_busy_machine_with_nothing_to_balance_skips_its_ticks_and_runs_them_later() {
    let tunables = Tunables::DEFAULT;
    let (tick, slice) = (tunables.tick_period_ns(), tunables.timeslice_ns());
    let mut s = Scheduler::new(tunables, 0);
    for pcpu in 0..2 {
        s.apply(Event::PcpuOnline { pcpu: PcpuId(pcpu) }).unwrap();
    }
    for domain in 0..2u16 {
        let domain = DomainId(domain);
        s.apply(Event::DomainCreated { domain, params: DomainParams::default() }).unwrap();
        s.apply(Event::VcpuCreated { vcpu: VcpuId::new(domain, 0), runnable: true }).unwrap();
    }
    for pcpu in 0..2u8 {
        let vcpu = VcpuId::new(DomainId(u16::from(pcpu)), 0);
        s.apply(Event::Dispatched { pcpu: PcpuId(pcpu), vcpu: Some(vcpu), at: 0 }).unwrap();
    }
    // One vCPU per pCPU, each running, nothing queued, no boost: quiet.
    assert!(s.ticks_are_quiet());
    assert_eq!(s.next_deadline(), slice, "the ticks at {tick} and {} are skipped", 2 * tick);
    s.catch_up(slice - 1);
    assert_eq!(s.stats().ticks, 2, "caught up: each skipped tick ran at its time");
    // A third vCPU queued behind one of them is something to steal for a
    // pCPU whose best is OVER: once both run OVER, ticks are not quiet.
    let third = DomainId(2);
    s.apply(Event::DomainCreated { domain: third, params: DomainParams::default() }).unwrap();
    s.apply(Event::VcpuCreated { vcpu: VcpuId::new(third, 0), runnable: true }).unwrap();
    s.apply(Event::Woke { vcpu: VcpuId::new(third, 0), at: slice - 1 }).unwrap_or(());
    let boosted = s.vcpu_info(VcpuId::new(third, 0)).is_some_and(|info| info.priority == crate::Priority::Boost);
    if boosted {
        assert!(!s.ticks_are_quiet(), "a BOOST vCPU is demoted at a tick");
        assert!(s.next_deadline() < slice);
    }
}

/// Before something happens at `now`: every tick due by then has run, the
/// eager one's at their times (a configuration change can move the next
/// tick into the past) and the lazy one's too (`catch_up`, as the server
/// does before it applies anything).
fn settle(
    eager: &mut Scheduler,
    lazy: &mut Scheduler,
    now: &mut u64,
    quiet_skipped: &mut u64,
) -> Result<(), TestCaseError> {
    let end = *now;
    advance(eager, lazy, now, end, quiet_skipped)?;
    // Nothing else is due: a tick now only sets the eager one's clock.
    eager.apply(Event::Tick { now: *now }).unwrap();
    lazy.catch_up(*now);
    prop_assert_eq!(published(eager), published(lazy), "at {}", now);
    Ok(())
}

/// Runs both schedulers' ticks due up to `end`: the eager one's at every
/// tick boundary and deadline, the lazy one's at its deadlines only;
/// checks that they publish the same after each.
fn advance(
    eager: &mut Scheduler,
    lazy: &mut Scheduler,
    now: &mut u64,
    end: u64,
    quiet_skipped: &mut u64,
) -> Result<(), TestCaseError> {
    loop {
        let eager_next = eager.next_deadline().min(eager.next_tick());
        let lazy_next = lazy.next_deadline();
        let next = eager_next.min(lazy_next);
        if next > end {
            return Ok(());
        }
        *now = (*now).max(next);
        if eager_next == next {
            eager.apply(Event::Tick { now: *now }).unwrap();
        }
        if lazy_next == next {
            lazy.apply(Event::Tick { now: *now }).unwrap();
        } else {
            *quiet_skipped += 1;
        }
        prop_assert_eq!(published(eager), published(lazy), "at {}", now);
    }
}

#[test]
fn the_state_fits_a_server_comfortably() {
    let size = core::mem::size_of::<Scheduler>();
    println!(
        "Scheduler: {size} bytes, Event: {} bytes, Decision: {} bytes",
        core::mem::size_of::<Event>(),
        core::mem::size_of::<crate::Decision>()
    );
    assert!(size < 16 * 1024, "{size}");
    assert!(core::mem::size_of::<Event>() <= 24);
    assert!(core::mem::size_of::<crate::Decision>() <= 48);
}



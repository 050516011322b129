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
        4 => (0u64..40_000_000).prop_map(Op::Advance),
        1 => vcpu().prop_map(|vcpu| Op::Event(Event::VcpuDestroyed { vcpu })),
        1 => (0u16..5).prop_map(|d| Op::Event(Event::DomainDestroyed { domain: DomainId(d) })),
        1 => (proptest::option::of(0u32..1100), proptest::option::of(0u32..600_000))
            .prop_map(|(t, r)| Op::Configure(t, r)),
        1 => (0u16..5, proptest::option::of(0u32..70_000), proptest::option::of(0u32..900))
            .prop_map(|(d, w, c)| Op::SetParams(d, w, c)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_event_sequence_keeps_the_state_consistent(ops in proptest::collection::vec(op(), 1..300)) {
        let mut s = Scheduler::new(Tunables::DEFAULT, 0);
        for pcpu in 0..4 {
            s.apply(Event::PcpuOnline { pcpu: PcpuId(pcpu) }).unwrap();
        }
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

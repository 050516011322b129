//! Properties of whole systems: random guests, weights, caps, tunables and
//! restarts on the simulator.
mod sim;
use proptest::prelude::*;
use scheduler_server::Tunables;
use sim::{Action, Behavior, Sim, MS, US};

fn behavior() -> impl Strategy<Value = Behavior> {
    prop_oneof![
        3 => Just(Behavior::Spin),
        2 => (50u64..20_000, 100u64..20_000).prop_map(|(burst, sleep)| Behavior::Burst { burst: burst * US, sleep: sleep * US }),
        1 => (2u64..40, any::<bool>()).prop_map(|(period, block)| Behavior::Duty {
            period: period * MS,
            busy: period * MS * 9 / 10,
            action: if block { Action::Block } else { Action::Yield },
        }),
    ]
}

fn tunables() -> impl Strategy<Value = Tunables> {
    (1u32..=100, prop_oneof![Just(0u32), 100u32..=5000])
        .prop_filter_map("ratelimit ≤ timeslice", |(t, r)| Tunables::new(t, r).ok())
}

#[derive(Clone, Debug)]
struct Guest {
    weight: u32,
    cap: u32,
    behavior: Behavior,
}

fn guest() -> impl Strategy<Value = Guest> {
    (
        1u32..=2000,
        prop_oneof![4 => Just(0u32), 1 => 10u32..=90],
        behavior(),
    )
        .prop_map(|(weight, cap, behavior)| Guest {
            weight,
            cap,
            behavior,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_systems_respect_caps_and_stay_work_conserving(
        pcpus in 1usize..=4,
        guests in proptest::collection::vec(guest(), 1..8),
        tunables in tunables(),
        restart_every in proptest::option::of(50u64..500),
    ) {
        let mut sim = Sim::new(pcpus, tunables);
        for guest in &guests {
            sim.add_guest(guest.weight, guest.cap, guest.behavior);
        }
        let end = 2500 * MS;
        sim.measure(500 * MS, end);
        match restart_every {
            Some(gap) => {
                while sim.now + gap * MS < end {
                    sim.run_until(sim.now + gap * MS);
                    sim.restart_scheduler();
                }
                sim.run_until(end);
            }
            None => sim.run_until(end),
        }
        let mut total = 0.0;
        for (index, guest) in guests.iter().enumerate() {
            let share = sim.share(index);
            total += share;
            prop_assert!(share <= 100.0 + 1e-9, "guest {} {:?}: {:.2}%", index, guest, share);
            if guest.cap != 0 {
                // Caps hold to within one accounting period's worth over 2 s.
                let slack = 2.0 + 100.0 * tunables.timeslice_ns() as f64 / (2000 * MS) as f64;
                prop_assert!(share <= guest.cap as f64 + slack, "guest {} {:?}: {:.2}%", index, guest, share);
            }
        }
        let spinners = guests.iter().filter(|g| g.cap == 0 && matches!(g.behavior, Behavior::Spin)).count();
        if spinners >= pcpus {
            // A pCPU left idle (by a vCPU parked by its cap) steals within
            // the 1 ms load-balance ratelimit; each capped vCPU is parked at
            // most once per accounting period.
            let capped = guests.iter().filter(|g| g.cap != 0).count() as f64;
            let slack = 0.5 + capped * 100.0 * 1.0 / tunables.timeslice_ms() as f64;
            prop_assert!(total >= 100.0 * pcpus as f64 - slack, "pCPUs idle with work queued: {:.2}%", total);
        }
    }
}

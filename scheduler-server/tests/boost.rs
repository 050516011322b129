//! BOOST on wake: only for UNDER vCPUs, and it lets them run promptly.
mod sim;
use scheduler_server::{
    DomainId, DomainParams, Event, PcpuId, Priority, Scheduler, Tickle, Tunables, VcpuId,
};
use sim::{print_shares, Behavior, Sim, Wake, MS, US};

/// A wake must leave the vCPU BOOST exactly when it was UNDER (or still
/// BOOST from an earlier wake) before it.
fn check_boost_rule(wakes: &[Wake]) {
    for wake in wakes {
        match wake.before {
            Some(Priority::Under | Priority::Boost) => {
                assert_eq!(wake.after, Some(Priority::Boost), "{wake:?}")
            }
            Some(Priority::Over) => assert_eq!(wake.after, Some(Priority::Over), "{wake:?}"),
            other => panic!("unexpected priority {other:?}"),
        }
    }
}

#[test]
fn a_light_sleeper_is_boosted_on_every_wake_and_runs_within_the_ratelimit() {
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.add_guest(256, 0, Behavior::Spin);
    sim.add_guest(256, 0, Behavior::Spin);
    let sleeper = sim.add_guest(
        256,
        0,
        Behavior::Burst {
            burst: 500 * US,
            sleep: 10 * MS,
        },
    );
    sim.measure(300 * MS, 3300 * MS);
    sim.run_until(3300 * MS);
    print_shares("light sleeper", &sim, &["spin", "spin", "sleeper"]);
    let wakes: Vec<Wake> = sim.vcpus[sleeper]
        .wakes
        .iter()
        .copied()
        .filter(|w| w.at >= 300 * MS)
        .collect();
    assert!(wakes.len() > 250, "{} wakes", wakes.len());
    check_boost_rule(&wakes);
    assert!(
        wakes.iter().all(|w| w.after == Some(Priority::Boost)),
        "it never goes OVER"
    );
    let worst = wakes
        .iter()
        .map(|w| w.ran_at.expect("ran") - w.at)
        .max()
        .unwrap();
    println!(
        "light sleeper: {} wakes, worst wake-to-run {} us",
        wakes.len(),
        worst / US
    );
    // Spinners are preempted once they have run for the ratelimit (1 ms).
    assert!(worst <= 1000 * US, "worst wake-to-run latency {worst} ns");
    // It gets all it asks for: 0.5 ms per 10.5 ms ≈ 4.76 %.
    let share = sim.share(sleeper);
    assert!((share - 4.76).abs() < 0.3, "{share:.2}%");
}

#[test]
fn a_heavy_sleeper_gets_boosts_but_not_more_than_its_share() {
    // Wants 90 % of the pCPU in 9 ms bursts; its fair share is a third.
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.add_guest(256, 0, Behavior::Spin);
    sim.add_guest(256, 0, Behavior::Spin);
    let sleeper = sim.add_guest(
        256,
        0,
        Behavior::Burst {
            burst: 9 * MS,
            sleep: MS,
        },
    );
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("heavy sleeper", &sim, &["spin", "spin", "sleeper"]);
    check_boost_rule(&sim.vcpus[sleeper].wakes);
    assert!(sim.sched.stats().boosts > 50);
    let share = sim.share(sleeper);
    assert!((share - 100.0 / 3.0).abs() <= 3.0, "{share:.2}%");
}

#[test]
fn an_over_vcpu_that_wakes_is_not_boosted_nor_preempts() {
    let one = VcpuId::new(DomainId(1), 0);
    let two = VcpuId::new(DomainId(2), 0);
    let pcpu = PcpuId(0);
    let mut s = Scheduler::new(Tunables::DEFAULT, 0);
    let apply = |s: &mut Scheduler, event| s.apply(event).unwrap();
    apply(&mut s, Event::PcpuOnline { pcpu });
    for domain in [DomainId(1), DomainId(2)] {
        apply(
            &mut s,
            Event::DomainCreated {
                domain,
                params: DomainParams::default(),
            },
        );
    }
    apply(
        &mut s,
        Event::VcpuCreated {
            vcpu: one,
            runnable: true,
        },
    );
    apply(
        &mut s,
        Event::VcpuCreated {
            vcpu: two,
            runnable: true,
        },
    );
    // `one` runs 60 ms and `two` a little; accounting at 30 ms makes `one` OVER.
    apply(
        &mut s,
        Event::Dispatched {
            pcpu,
            vcpu: Some(one),
            at: 0,
        },
    );
    apply(
        &mut s,
        Event::Ran {
            vcpu: one,
            pcpu,
            ns: 60 * MS,
        },
    );
    apply(
        &mut s,
        Event::Dispatched {
            pcpu,
            vcpu: Some(two),
            at: 60 * MS,
        },
    );
    apply(
        &mut s,
        Event::Ran {
            vcpu: two,
            pcpu,
            ns: MS,
        },
    );
    apply(&mut s, Event::Tick { now: 61 * MS });
    assert_eq!(s.vcpu_info(one).unwrap().priority, Priority::Over);
    assert_eq!(s.vcpu_info(two).unwrap().priority, Priority::Under);
    apply(
        &mut s,
        Event::Blocked {
            vcpu: one,
            at: 62 * MS,
        },
    );
    s.take_tickles();
    apply(
        &mut s,
        Event::Woke {
            vcpu: one,
            at: 63 * MS,
        },
    );
    assert_eq!(s.vcpu_info(one).unwrap().priority, Priority::Over);
    assert_eq!(s.stats().boosts, 0);
    assert!(
        s.take_tickles().is_empty(),
        "an OVER wake must not preempt an UNDER vCPU"
    );
    assert_eq!(s.decision(pcpu).unwrap().run.as_slice(), &[two, one]);

    // Once accounting has paid its debt it is UNDER, and its next wake is
    // boosted and preempts `two` (which has run for longer than the ratelimit).
    let mut now = 63 * MS;
    while s.vcpu_info(one).unwrap().priority != Priority::Under {
        now += 30 * MS;
        apply(
            &mut s,
            Event::Ran {
                vcpu: two,
                pcpu,
                ns: 30 * MS,
            },
        );
        apply(&mut s, Event::Tick { now });
    }
    apply(
        &mut s,
        Event::Dispatched {
            pcpu,
            vcpu: Some(one),
            at: now,
        },
    );
    apply(
        &mut s,
        Event::Blocked {
            vcpu: one,
            at: now + MS,
        },
    );
    apply(
        &mut s,
        Event::Dispatched {
            pcpu,
            vcpu: Some(two),
            at: now + MS,
        },
    );
    s.take_tickles();
    apply(
        &mut s,
        Event::Woke {
            vcpu: one,
            at: now + 3 * MS,
        },
    );
    assert_eq!(s.vcpu_info(one).unwrap().priority, Priority::Boost);
    assert_eq!(s.stats().boosts, 1);
    assert_eq!(
        s.take_tickles().as_slice(),
        &[Tickle {
            pcpu,
            expected: Some(two)
        }]
    );
    assert_eq!(s.decision(pcpu).unwrap().run.as_slice(), &[one, two]);
}

#[test]
fn a_sleeping_guest_uses_almost_nothing_while_spinners_take_the_rest() {
    // The QEMU "sleeper" scenario: a guest that sleeps on its timer.
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.add_guest(256, 0, Behavior::Spin);
    sim.add_guest(256, 0, Behavior::Spin);
    let sleeper = sim.add_guest(
        256,
        0,
        Behavior::Burst {
            burst: 20 * US,
            sleep: 10 * MS,
        },
    );
    sim.measure(300 * MS, 3300 * MS);
    sim.run_until(3300 * MS);
    print_shares("sleeper", &sim, &["spin", "spin", "sleeper"]);
    assert!(sim.share(sleeper) < 1.0);
    assert!(sim.share(0) + sim.share(1) > 99.0);
}

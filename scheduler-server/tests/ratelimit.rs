//! The context-switch ratelimit and run-time changes of the tunables.
mod sim;
use scheduler_server::{KnobError, Tunables};
use sim::{print_shares, Behavior, Reason, Sim, MS, US};

/// Two spinners and a guest that wakes every 2 ms for 100 µs: its wakes come
/// soon after a spinner was dispatched, so they would preempt it early.
fn busy_waker(tunables: Tunables) -> Sim {
    let mut sim = Sim::new(1, tunables);
    sim.add_guest(256, 0, Behavior::Spin);
    sim.add_guest(256, 0, Behavior::Spin);
    sim.add_guest(
        256,
        0,
        Behavior::Burst {
            burst: 100 * US,
            sleep: 2 * MS,
        },
    );
    sim
}

fn preempted_stints(sim: &Sim, from: u64) -> Vec<u64> {
    sim.stints
        .iter()
        .filter(|s| s.ended_by == Reason::Tickle && s.start >= from)
        .map(|s| s.end - s.start)
        .collect()
}

#[test]
fn no_vcpu_is_preempted_before_the_ratelimit() {
    let mut sim = busy_waker(Tunables::new(30, 5000).unwrap());
    sim.run_until(3000 * MS);
    let stints = preempted_stints(&sim, 0);
    let shortest = *stints.iter().min().unwrap();
    println!(
        "ratelimit 5 ms: {} preemptions, shortest {} us",
        stints.len(),
        shortest / US
    );
    assert!(stints.len() > 100);
    assert!(shortest >= 5 * MS, "preempted after {shortest} ns");
    assert!(sim.sched.stats().deferred_preemptions > 100);
    // The waker still gets in within the ratelimit.
    let worst = sim.vcpus[2]
        .wakes
        .iter()
        .filter_map(|w| w.ran_at.map(|r| r - w.at))
        .max()
        .unwrap();
    assert!(worst <= 5 * MS, "{worst}");
}

#[test]
fn without_a_ratelimit_preemption_is_immediate() {
    // The control for the test above: the same load preempts much sooner.
    let mut sim = busy_waker(Tunables::new(30, 0).unwrap());
    sim.run_until(3000 * MS);
    let stints = preempted_stints(&sim, 0);
    let shortest = *stints.iter().min().unwrap();
    println!(
        "ratelimit off: {} preemptions, shortest {} us",
        stints.len(),
        shortest / US
    );
    assert!(shortest < 5 * MS);
    assert_eq!(sim.sched.stats().deferred_preemptions, 0);
    let worst = sim.vcpus[2]
        .wakes
        .iter()
        .filter_map(|w| w.ran_at.map(|r| r - w.at))
        .max()
        .unwrap();
    assert_eq!(worst, 0);
}

#[test]
fn the_ratelimit_changes_at_run_time() {
    let mut sim = busy_waker(Tunables::new(30, 0).unwrap());
    sim.run_until(1000 * MS);
    assert_eq!(sim.sched.stats().deferred_preemptions, 0);
    assert!(*preempted_stints(&sim, 0).iter().min().unwrap() < 3 * MS);

    // A bad change is refused and changes nothing.
    assert_eq!(
        sim.configure(None, Some(40_000)),
        Err(KnobError::RatelimitAboveTimeslice {
            ratelimit_us: 40_000,
            timeslice_ms: 30
        })
    );
    assert_eq!(
        sim.configure(None, Some(50)),
        Err(KnobError::RatelimitOutOfRange { requested_us: 50 })
    );
    assert_eq!(sim.sched.tunables(), Tunables::new(30, 0).unwrap());

    sim.configure(None, Some(3000)).unwrap();
    let changed_at = sim.now;
    sim.run_until(changed_at + 1000 * MS);
    let shortest = *preempted_stints(&sim, changed_at).iter().min().unwrap();
    println!(
        "ratelimit 0 -> 3 ms: shortest preempted stint after {} us",
        shortest / US
    );
    assert!(shortest >= 3 * MS);
    assert!(sim.sched.stats().deferred_preemptions > 50);
}

#[test]
fn the_timeslice_changes_at_run_time() {
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.add_guest(256, 0, Behavior::Spin);
    sim.add_guest(256, 0, Behavior::Spin);
    sim.run_until(1000 * MS);
    // Time between the slice ends: the slice.
    let slice_gaps = |sim: &Sim, from: u64| -> Vec<u64> {
        let ends: Vec<u64> = sim
            .switch_points
            .iter()
            .filter(|&&(at, _, reason)| reason == Reason::SliceEnd && at >= from)
            .map(|&(at, _, _)| at)
            .collect();
        ends.windows(2).map(|pair| pair[1] - pair[0]).collect()
    };
    let before = slice_gaps(&sim, 0);
    assert!(before.iter().all(|&gap| gap == 30 * MS), "{before:?}");
    let accountings = sim.sched.stats().accountings;

    assert_eq!(
        sim.configure(Some(0), None),
        Err(KnobError::TimesliceOutOfRange { requested_ms: 0 })
    );
    assert_eq!(sim.sched.tunables(), Tunables::DEFAULT);
    sim.configure(Some(10), None).unwrap();
    let changed_at = sim.now;
    sim.measure(changed_at + 100 * MS, changed_at + 2100 * MS);
    sim.run_until(changed_at + 2100 * MS);
    let after = slice_gaps(&sim, changed_at + 30 * MS);
    assert!(after.len() > 200);
    assert!(after.iter().all(|&gap| gap == 10 * MS), "{after:?}");
    let accountings_per_second = (sim.sched.stats().accountings - accountings) as f64 / 2.1;
    println!(
        "timeslice 30 -> 10 ms: {} slices of 10 ms, {accountings_per_second:.1} accountings/s",
        after.len() + 1
    );
    assert!(
        (accountings_per_second - 100.0).abs() <= 1.0,
        "accounting every 10 ms"
    );
    print_shares("after the change", &sim, &["spin", "spin"]);
    assert!((sim.share(0) - 50.0).abs() <= 1.0);
}

//! Caps.
mod sim;
use scheduler_server::{Priority, Tunables};
use sim::{print_shares, Behavior, Sim, MS};

#[test]
fn cap_50_holds_a_lone_busy_domain_at_half_a_pcpu() {
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.add_guest(256, 50, Behavior::Spin);
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("cap alone", &sim, &["capped"]);
    let share = sim.share(0);
    assert!((share - 50.0).abs() <= 2.0, "{share:.2}%");
    assert!(sim.sched.stats().parks > 0 && sim.sched.stats().unparks > 0);
}

#[test]
fn cap_50_next_to_a_sleeper_holds_while_the_hypervisor_takes_its_time() {
    // The QEMU `cap` scenario: a sleeper of equal weight wakes every 10 ms,
    // so at most accountings the capped domain's fair share is exactly its
    // cap; the hypervisor takes 5 % of the pCPU and reports it. That time
    // comes out of the uncapped sleeper's share, not the capped domain's.
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.overhead_permille = 50;
    sim.report_overhead = true;
    sim.add_guest(256, 50, Behavior::Spin);
    sim.add_guest(
        256,
        0,
        Behavior::Burst {
            burst: 50_000,
            sleep: 10 * MS,
        },
    );
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("cap next to a sleeper", &sim, &["capped", "sleeper"]);
    // In the guest, as the core counts a domain's CPU time (the stints the
    // sim measures include the hypervisor's part).
    let capped = sim.guest_share(0);
    assert!((capped - 50.0).abs() <= 1.0, "{capped:.2}% in the guest");
}

#[test]
fn cap_50_beats_a_weight_that_would_give_80() {
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.add_guest(1024, 50, Behavior::Spin);
    sim.add_guest(256, 0, Behavior::Spin);
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("cap vs weight", &sim, &["capped w1024", "w256"]);
    let capped = sim.share(0);
    assert!((capped - 50.0).abs() <= 2.0, "{capped:.2}%");
    assert!(
        sim.share(1) >= 47.0,
        "the other domain takes the rest: {:.2}%",
        sim.share(1)
    );
}

#[test]
fn cap_on_two_pcpus_with_two_vcpus() {
    // A 2-vCPU domain capped at 50 % of one pCPU, on 2 otherwise idle pCPUs.
    let mut sim = Sim::new(2, Tunables::DEFAULT);
    let domain = sim.add_domain(256, 50);
    sim.add_vcpu(domain, Behavior::Spin);
    sim.add_vcpu(domain, Behavior::Spin);
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("cap 2 vCPUs", &sim, &["v0", "v1"]);
    let total = sim.share(0) + sim.share(1);
    assert!((total - 50.0).abs() <= 2.0, "{total:.2}%");
}

#[test]
fn unparked_vcpus_are_not_boosted() {
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    let capped = sim.add_guest(256, 30, Behavior::Spin);
    sim.add_guest(256, 0, Behavior::Spin);
    let id = sim.vcpus[capped].id;
    let mut unparks_seen = 0;
    let mut parked = false;
    for step in 1..=3000 {
        sim.run_until(step * MS);
        let info = sim.sched.vcpu_info(id).unwrap();
        if parked && !info.parked {
            unparks_seen += 1;
            assert_ne!(
                info.priority,
                Priority::Boost,
                "unparked into BOOST at {step} ms"
            );
        }
        parked = info.parked;
    }
    assert!(unparks_seen >= 5, "only {unparks_seen} unparks");
    assert_eq!(
        sim.sched.stats().boosts,
        0,
        "nobody ever woke, so nobody was boosted"
    );
}

#[test]
fn removing_the_cap_releases_the_domain() {
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    let capped = sim.add_guest(256, 20, Behavior::Spin);
    sim.run_until(1000 * MS);
    let domain = sim.vcpus[capped].id.domain;
    sim.set_domain_params(domain, None, Some(0)).unwrap();
    sim.measure(1100 * MS, 2100 * MS);
    sim.run_until(2100 * MS);
    assert!(sim.share(capped) > 99.0, "{:.2}%", sim.share(capped));
}

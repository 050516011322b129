//! Balancing across pCPUs: placement, stealing when the local best is OVER
//! or IDLE.
mod sim;
use scheduler_server::Tunables;
use sim::{print_shares, Behavior, Sim, MS};

#[test]
fn four_spinners_on_two_pcpus_come_out_even() {
    let mut sim = Sim::new(2, Tunables::DEFAULT);
    for _ in 0..4 {
        sim.add_guest(256, 0, Behavior::Spin);
    }
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("4 on 2", &sim, &["a", "b", "c", "d"]);
    for vcpu in 0..4 {
        let share = sim.share(vcpu);
        assert!((share - 50.0).abs() <= 5.0, "vCPU {vcpu}: {share:.2}%");
    }
}

#[test]
fn an_idle_pcpu_that_comes_online_steals_until_shares_are_even() {
    // All four start on pCPU 0; pCPU 1 comes up 200 ms later.
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    for _ in 0..4 {
        sim.add_guest(256, 0, Behavior::Spin);
    }
    sim.run_until(200 * MS);
    assert_eq!(sim.sched.stats().steals, 0);
    sim.online_pcpu(1);
    assert_eq!(sim.sched.stats().steals, 1, "it steals as soon as it is up");
    sim.run_until(201 * MS);
    assert!(sim.running_on(1).is_some(), "and runs what it stole");
    sim.measure(500 * MS, 6500 * MS);
    sim.run_until(6500 * MS);
    print_shares("4 on 1, then 2", &sim, &["a", "b", "c", "d"]);
    let stats = sim.sched.stats();
    println!(
        "steals {}, balance passes {}",
        stats.steals, stats.balance_passes
    );
    for vcpu in 0..4 {
        let share = sim.share(vcpu);
        assert!((share - 50.0).abs() <= 5.0, "vCPU {vcpu}: {share:.2}%");
    }
}

#[test]
fn three_spinners_on_two_pcpus_get_two_thirds_each() {
    // Without stealing when the local best is OVER, the one alone on a
    // pCPU would get 100 % and the other two 50 %.
    let mut sim = Sim::new(2, Tunables::DEFAULT);
    for _ in 0..3 {
        sim.add_guest(256, 0, Behavior::Spin);
    }
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("3 on 2", &sim, &["a", "b", "c"]);
    let stats = sim.sched.stats();
    println!(
        "steals {}, balance passes {}",
        stats.steals, stats.balance_passes
    );
    for vcpu in 0..3 {
        let share = sim.share(vcpu);
        assert!(
            (share - 200.0 / 3.0).abs() <= 5.0,
            "vCPU {vcpu}: {share:.2}%"
        );
    }
    // Balancing is rate-limited: at most one pass per pCPU per millisecond.
    assert!(stats.balance_passes <= 2 * 6300);
}

#[test]
fn weights_hold_across_pcpus() {
    // 2 pCPUs, weights 256 : 256 : 512 : 1024 → 25 : 25 : 50 : 100 of 200 %.
    let mut sim = Sim::new(2, Tunables::DEFAULT);
    for weight in [256, 256, 512, 1024] {
        sim.add_guest(weight, 0, Behavior::Spin);
    }
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("weights on 2", &sim, &["w256", "w256", "w512", "w1024"]);
    for (vcpu, ideal) in [(0, 25.0), (1, 25.0), (2, 50.0), (3, 100.0)] {
        let share = sim.share(vcpu);
        assert!(
            (share - ideal).abs() <= 5.0,
            "vCPU {vcpu}: {share:.2}% vs {ideal}%"
        );
    }
}

#[test]
fn wakes_spread_over_idle_pcpus() {
    // Four sleepy guests on four pCPUs: each wake finds an idle pCPU, so
    // nobody waits behind anybody.
    let mut sim = Sim::new(4, Tunables::DEFAULT);
    for _ in 0..4 {
        sim.add_guest(
            256,
            0,
            Behavior::Burst {
                burst: 3 * MS,
                sleep: 2 * MS,
            },
        );
    }
    sim.measure(300 * MS, 3300 * MS);
    sim.run_until(3300 * MS);
    print_shares("4 sleepy on 4", &sim, &["a", "b", "c", "d"]);
    for vcpu in 0..4 {
        assert!(
            (sim.share(vcpu) - 60.0).abs() < 0.5,
            "{:.2}%",
            sim.share(vcpu)
        );
        let worst = sim.vcpus[vcpu]
            .wakes
            .iter()
            .filter_map(|w| w.ran_at.map(|r| r - w.at))
            .max();
        assert_eq!(worst, Some(0));
    }
}

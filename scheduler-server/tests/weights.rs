//! Weights on one pCPU.
mod sim;
use scheduler_server::Tunables;
use sim::{print_shares, Behavior, Sim, MS};

#[test]
fn weights_256_512_1024_share_one_pcpu_1_2_4() {
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    for weight in [256, 512, 1024] {
        sim.add_guest(weight, 0, Behavior::Spin);
    }
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    print_shares("weights", &sim, &["w256", "w512", "w1024"]);
    for (vcpu, ideal) in [(0, 100.0 / 7.0), (1, 200.0 / 7.0), (2, 400.0 / 7.0)] {
        let share = sim.share(vcpu);
        assert!(
            (share - ideal).abs() <= 3.0,
            "vCPU {vcpu}: {share:.2}% vs {ideal:.2}%"
        );
    }
}

//! A restarted scheduler rebuilt from the core's state converges back to the
//! same shares (issue #6 §2).
mod sim;
use scheduler_server::{
    DomainId, DomainParams, DomainRecord, EventError, PcpuId, PcpuSet, Priority, PublishedCredit,
    Scheduler, Snapshot, Tunables, VcpuId, VcpuRecord, VcpuRunState,
};
use sim::{print_shares, Behavior, Sim, MS};

const IDEAL: [f64; 3] = [100.0 / 7.0, 200.0 / 7.0, 400.0 / 7.0];

#[test]
fn a_rebuilt_scheduler_keeps_settings_and_returns_to_the_same_shares() {
    // Weights are set through the control path after creation, and the
    // timeslice changed: both must survive the restart. The core hands back
    // no credit: the new instance starts every vCPU from 0.
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.restore_credit = false;
    let vcpus: Vec<usize> = (0..3)
        .map(|_| sim.add_guest(256, 0, Behavior::Spin))
        .collect();
    for (&vcpu, weight) in vcpus.iter().zip([256, 512, 1024]) {
        let domain = sim.vcpus[vcpu].id.domain;
        sim.set_domain_params(domain, Some(weight), None).unwrap();
    }
    sim.configure(Some(20), Some(500)).unwrap();
    sim.measure(300 * MS, 3300 * MS);
    sim.run_until(3300 * MS);
    let before: Vec<f64> = (0..3).map(|v| sim.share(v)).collect();
    print_shares("before the restart", &sim, &["w256", "w512", "w1024"]);

    let run_times: Vec<u64> = sim.vcpus.iter().map(|v| v.total_ns).collect();
    sim.restart_scheduler();
    assert_eq!(sim.sched.tunables(), Tunables::new(20, 500).unwrap());
    assert_eq!(
        sim.sched.domain_params(DomainId(3)).unwrap().weight.get(),
        1024
    );
    for (vcpu, &run_time) in sim.vcpus.iter().zip(&run_times) {
        assert_eq!(sim.sched.vcpu_info(vcpu.id).unwrap().run_time_ns, run_time);
    }

    // One accounting period (20 ms) after the restart, measure 3 s.
    let restart = sim.now;
    sim.measure(restart + 20 * MS, restart + 3020 * MS);
    sim.run_until(restart + 3020 * MS);
    print_shares("after the restart", &sim, &["w256", "w512", "w1024"]);
    for vcpu in 0..3 {
        let share = sim.share(vcpu);
        assert!(
            (share - IDEAL[vcpu]).abs() <= 3.0,
            "vCPU {vcpu}: {share:.2}%"
        );
        assert!(
            (share - before[vcpu]).abs() <= 3.0,
            "vCPU {vcpu}: {share:.2}% vs {:.2}%",
            before[vcpu]
        );
    }
}

/// 2 pCPUs, four spinning domains (256 : 256 : 512 : 1024) and a sleeper,
/// for about 9 s; with `kills`, the scheduler is killed every 37 to 257 ms
/// (a fixed pseudo-random sequence) and rebuilt with the credit the core
/// kept. Returns the shares and the number of kills.
fn campaign(kills: bool) -> (Vec<f64>, usize) {
    let mut sim = Sim::new(2, Tunables::DEFAULT);
    for weight in [256, 256, 512, 1024] {
        sim.add_guest(weight, 0, Behavior::Spin);
    }
    sim.add_guest(
        256,
        0,
        Behavior::Burst {
            burst: 200 * 1000,
            sleep: 5 * MS,
        },
    );
    let end = 9000 * MS;
    sim.measure(300 * MS, end);
    let mut seed: u64 = 0x5eed;
    let mut count = 0;
    loop {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let next = sim.now + 37 * MS + (seed >> 33) % (220 * MS);
        if next >= end {
            break;
        }
        sim.run_until(next);
        if kills {
            sim.restart_scheduler();
            count += 1;
        }
    }
    sim.run_until(end);
    let name = if kills {
        format!("{count} restarts")
    } else {
        "no restart".to_string()
    };
    print_shares(&name, &sim, &["w256", "w256", "w512", "w1024", "sleeper"]);
    ((0..5).map(|v| sim.share(v)).collect(), count)
}

#[test]
fn shares_hold_through_many_restarts() {
    let (reference, _) = campaign(false);
    let (shares, kills) = campaign(true);
    assert!(kills >= 50, "{kills} kills");
    for vcpu in 0..5 {
        let (share, reference) = (shares[vcpu], reference[vcpu]);
        assert!(
            (share - reference).abs() <= 3.0,
            "vCPU {vcpu}: {share:.2}% vs {reference:.2}%"
        );
    }
    assert!(
        (shares[4] - 3.85).abs() < 0.5,
        "the sleeper gets what it needs: {:.2}%",
        shares[4]
    );
}

#[test]
fn a_snapshot_is_checked() {
    let domain = DomainId(5);
    let domains = [DomainRecord {
        domain,
        params: DomainParams::default(),
    }];
    let vcpu = VcpuId::new(domain, 0);
    let running = |pcpu| {
        [VcpuRecord {
            vcpu,
            state: VcpuRunState::Running(PcpuId(pcpu)),
            run_time_ns: 7,
            published: None,
        }]
    };
    let snapshot = |vcpus: &'static [VcpuRecord], domains: &'static [DomainRecord]| Snapshot {
        now: 1000,
        tunables: Tunables::DEFAULT,
        accounted_at: None,
        pcpus: PcpuSet::first(2),
        domains,
        vcpus,
    };
    let ok: &'static [VcpuRecord] = Box::leak(Box::new(running(1)));
    let domains: &'static [DomainRecord] = Box::leak(Box::new(domains));
    let s = Scheduler::rebuild(&snapshot(ok, domains)).unwrap();
    assert_eq!(
        s.vcpu_info(vcpu).unwrap().state,
        VcpuRunState::Running(PcpuId(1))
    );
    assert_eq!(s.decision(PcpuId(1)).unwrap().run.as_slice(), &[vcpu]);
    // A vCPU of an unknown domain is refused.
    let stray: &'static [VcpuRecord] = Box::leak(Box::new([VcpuRecord {
        vcpu: VcpuId::new(DomainId(6), 0),
        state: VcpuRunState::Blocked,
        run_time_ns: 0,
        published: None,
    }]));
    assert_eq!(
        Scheduler::rebuild(&snapshot(stray, domains)).err(),
        Some(EventError::UnknownDomain(DomainId(6)))
    );
    // A vCPU said to run on an offline pCPU is placed on an online one.
    let offline: &'static [VcpuRecord] = Box::leak(Box::new(running(5)));
    let s = Scheduler::rebuild(&snapshot(offline, domains)).unwrap();
    assert!(matches!(
        s.vcpu_info(vcpu).unwrap().state,
        VcpuRunState::Runnable(PcpuId(0 | 1))
    ));
}

#[test]
fn restored_credit_is_charged_for_the_run_time_since_it_was_published() {
    let capped = DomainId(1);
    let free = DomainId(2);
    let domains: &'static [DomainRecord] = Box::leak(Box::new([
        DomainRecord {
            domain: capped,
            params: DomainParams::new(256, 50).unwrap(),
        },
        DomainRecord {
            domain: free,
            params: DomainParams::default(),
        },
    ]));
    let record = |domain, credit_ns, published_at: u64, now: u64| VcpuRecord {
        vcpu: VcpuId::new(domain, 0),
        state: VcpuRunState::Runnable(PcpuId(0)),
        run_time_ns: now,
        published: Some(PublishedCredit {
            credit_ns,
            run_time_ns: published_at,
        }),
    };
    let vcpus: &'static [VcpuRecord] = Box::leak(Box::new([
        // Published +10 ms at 100 ms of run time, has run 15 ms since: -5 ms.
        record(capped, 10 * MS as i64, 100 * MS, 115 * MS),
        // Far out of range: clamped to one slice.
        record(free, i64::MAX, 0, 0),
    ]));
    let s = Scheduler::rebuild(&Snapshot {
        now: 1000 * MS,
        tunables: Tunables::DEFAULT,
        accounted_at: Some(975 * MS),
        pcpus: PcpuSet::first(1),
        domains,
        vcpus,
    })
    .unwrap();
    let capped = s.vcpu_info(VcpuId::new(capped, 0)).unwrap();
    assert_eq!(capped.credit_ns, -5 * MS as i64);
    assert_eq!(capped.priority, Priority::Over);
    assert!(capped.parked, "a capped vCPU in debt comes back parked");
    let free = s.vcpu_info(VcpuId::new(free, 0)).unwrap();
    assert_eq!(free.credit_ns, 30 * MS as i64);
    assert_eq!(free.priority, Priority::Under);
    // Accounting carries on 30 ms after the last one (before the next tick
    // at 1010 ms), not 30 ms after the restart.
    assert_eq!(s.next_deadline(), 1005 * MS);
    assert_eq!(
        s.decision(PcpuId(0)).unwrap().run.as_slice(),
        &[VcpuId::new(DomainId(2), 0)]
    );
}

#[test]
fn restarts_do_not_let_a_domain_escape_its_cap() {
    for gap in [13, 29, 50, 97] {
        let mut sim = Sim::new(1, Tunables::DEFAULT);
        sim.add_guest(256, 50, Behavior::Spin);
        sim.measure(300 * MS, 6300 * MS);
        while sim.now + gap * MS < 6300 * MS {
            sim.run_until(sim.now + gap * MS);
            sim.restart_scheduler();
        }
        sim.run_until(6300 * MS);
        print_shares(
            &format!("cap 50, restart every {gap} ms"),
            &sim,
            &["capped"],
        );
        assert!((sim.share(0) - 50.0).abs() <= 2.0, "{:.2}%", sim.share(0));
    }
}

//! The scheduler driven event by event: yield, stealing, ratelimit,
//! tunables, validation.
use scheduler_server::{
    ControlError, DomainId, DomainParams, Event, EventError, KnobError, PcpuId, Priority,
    Scheduler, Tickle, Tunables, VcpuId,
};

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

struct Harness {
    s: Scheduler,
}

impl Harness {
    fn new(pcpus: u8, tunables: Tunables) -> Self {
        let mut s = Scheduler::new(tunables, 0);
        for pcpu in 0..pcpus {
            s.apply(Event::PcpuOnline { pcpu: PcpuId(pcpu) })
                .expect("pCPU online");
        }
        Self { s }
    }

    /// A domain of one runnable vCPU; returns the vCPU.
    fn guest(&mut self, domain: u16, weight: u32) -> VcpuId {
        let domain = DomainId(domain);
        let params = DomainParams::new(weight, 0).expect("a valid weight");
        self.s
            .apply(Event::DomainCreated { domain, params })
            .expect("a new domain");
        let vcpu = VcpuId::new(domain, 0);
        self.s
            .apply(Event::VcpuCreated {
                vcpu,
                runnable: true,
            })
            .expect("a new vCPU");
        vcpu
    }

    fn on(&mut self, event: Event) {
        self.s.apply(event).expect("an accepted event");
    }

    fn run_list(&self, pcpu: u8) -> Vec<VcpuId> {
        self.s
            .decision(PcpuId(pcpu))
            .expect("an online pCPU")
            .run
            .as_slice()
            .to_vec()
    }

    fn priority(&self, vcpu: VcpuId) -> Priority {
        self.s.vcpu_info(vcpu).expect("a known vCPU").priority
    }
}

/// One pCPU: `a` and `b` have run a lot and are OVER after accounting at
/// 30 ms, `c` has not and is UNDER. Returns the harness at 31 ms with `a`
/// running and `b`, `c` queued.
fn one_under_two_over() -> (Harness, VcpuId, VcpuId, VcpuId) {
    let mut h = Harness::new(1, Tunables::DEFAULT);
    let p = PcpuId(0);
    let a = h.guest(1, 256);
    let b = h.guest(2, 256);
    let c = h.guest(3, 256);
    h.on(Event::Dispatched {
        pcpu: p,
        vcpu: Some(a),
        at: 0,
    });
    h.on(Event::Ran {
        vcpu: a,
        pcpu: p,
        ns: 20 * MS,
    });
    h.on(Event::Dispatched {
        pcpu: p,
        vcpu: Some(b),
        at: 20 * MS,
    });
    h.on(Event::Ran {
        vcpu: b,
        pcpu: p,
        ns: 20 * MS,
    });
    h.on(Event::Dispatched {
        pcpu: p,
        vcpu: Some(c),
        at: 40 * MS,
    });
    h.on(Event::Ran {
        vcpu: c,
        pcpu: p,
        ns: 1000,
    });
    h.on(Event::Dispatched {
        pcpu: p,
        vcpu: Some(a),
        at: 40 * MS + 1000,
    });
    h.on(Event::Tick { now: 30 * MS });
    assert_eq!(h.priority(a), Priority::Over);
    assert_eq!(h.priority(b), Priority::Over);
    assert_eq!(h.priority(c), Priority::Under);
    (h, a, b, c)
}

#[test]
fn a_yielder_goes_behind_one_lower_priority_vcpu() {
    let (mut h, a, b, c) = one_under_two_over();
    let p = PcpuId(0);
    // c (UNDER) runs; a and b (OVER) are queued.
    h.on(Event::Dispatched {
        pcpu: p,
        vcpu: Some(c),
        at: 41 * MS,
    });
    assert_eq!(h.run_list(0), vec![c, b, a], "UNDER ahead of OVER");
    h.on(Event::Yielded { vcpu: c });
    assert_eq!(
        h.run_list(0),
        vec![b, c, a],
        "behind exactly one lower-priority vCPU"
    );
    // The core switches to b. As in `csched_schedule()`, c went in behind b
    // while b was still queued, so it is next after b's slice; b is not
    // preempted by the UNDER yielder: no tickle.
    h.s.take_tickles();
    h.on(Event::Dispatched {
        pcpu: p,
        vcpu: Some(b),
        at: 41 * MS + 10 * US,
    });
    assert_eq!(h.run_list(0), vec![c, a, b]);
    h.on(Event::Tick { now: 45 * MS });
    assert!(
        h.s.take_tickles().is_empty(),
        "a yield is not undone by a preemption"
    );
    assert_eq!(h.s.stats().deferred_preemptions, 0);
}

#[test]
fn a_yielder_with_nobody_else_keeps_its_place() {
    let mut h = Harness::new(1, Tunables::DEFAULT);
    let a = h.guest(1, 256);
    h.on(Event::Dispatched {
        pcpu: PcpuId(0),
        vcpu: Some(a),
        at: 0,
    });
    h.on(Event::Yielded { vcpu: a });
    assert_eq!(h.run_list(0), vec![a]);
    let b = h.guest(2, 256);
    // Not marked: b is queued ahead of it at the slice end as any equal would be.
    assert_eq!(h.run_list(0), vec![b, a]);
}

#[test]
fn a_yielder_is_not_stolen_but_others_are() {
    for yield_first in [true, false] {
        let mut h = Harness::new(2, Tunables::DEFAULT);
        let (p0, p1) = (PcpuId(0), PcpuId(1));
        let a = h.guest(1, 256);
        let b = h.guest(2, 256);
        // Creation spread them out; put both on pCPU 0 as the core ran them.
        h.on(Event::Dispatched {
            pcpu: p1,
            vcpu: None,
            at: 0,
        });
        h.on(Event::Dispatched {
            pcpu: p0,
            vcpu: Some(a),
            at: 0,
        });
        h.on(Event::Dispatched {
            pcpu: p0,
            vcpu: Some(b),
            at: 5 * MS,
        });
        if yield_first {
            // a yields, b runs: a is queued on pCPU 0 with its yield mark.
            h.on(Event::Dispatched {
                pcpu: p0,
                vcpu: Some(a),
                at: 6 * MS,
            });
            h.on(Event::Yielded { vcpu: a });
            h.on(Event::Dispatched {
                pcpu: p0,
                vcpu: Some(b),
                at: 6 * MS,
            });
        }
        assert_eq!(h.run_list(0), vec![a, b]);
        // pCPU 1 is idle: its balancing pass runs at the next tick.
        let steals = h.s.stats().steals;
        h.on(Event::Tick { now: 10 * MS });
        let stolen = h.s.stats().steals - steals;
        if yield_first {
            assert_eq!(stolen, 0, "a yielder is waiting for a reason");
            assert_eq!(h.run_list(1), vec![]);
        } else {
            assert_eq!(stolen, 1);
            assert_eq!(h.run_list(1), vec![a]);
            assert!(h.s.take_tickles().contains(&Tickle {
                pcpu: p1,
                expected: None
            }));
        }
    }
}

#[test]
fn an_idle_pcpu_steals_and_stealing_is_rate_limited() {
    let mut h = Harness::new(2, Tunables::DEFAULT);
    let (p0, p1) = (PcpuId(0), PcpuId(1));
    let vcpus: Vec<VcpuId> = (1..=5).map(|d| h.guest(d, 256)).collect();
    // The core runs four on pCPU 0 and the fifth on pCPU 1.
    for &v in &vcpus[..4] {
        h.on(Event::Dispatched {
            pcpu: p0,
            vcpu: Some(v),
            at: 0,
        });
    }
    h.on(Event::Dispatched {
        pcpu: p1,
        vcpu: Some(vcpus[4]),
        at: 0,
    });
    assert_eq!(h.run_list(1), vec![vcpus[4]]);
    // It blocks at 2 ms and pCPU 1 goes idle: it steals one vCPU at once.
    h.on(Event::Blocked {
        vcpu: vcpus[4],
        at: 2 * MS,
    });
    h.on(Event::Dispatched {
        pcpu: p1,
        vcpu: None,
        at: 2 * MS,
    });
    assert_eq!(h.s.stats().steals, 1);
    let stolen = h.run_list(1);
    assert_eq!(stolen.len(), 1);
    assert_eq!(
        h.s.take_tickles().as_slice(),
        &[Tickle {
            pcpu: p1,
            expected: None
        }]
    );
    // That one blocks soon: inside the 1 ms balance ratelimit, no new pass.
    let passes = h.s.stats().balance_passes;
    h.on(Event::Dispatched {
        pcpu: p1,
        vcpu: Some(stolen[0]),
        at: 2 * MS,
    });
    h.on(Event::Blocked {
        vcpu: stolen[0],
        at: 2500 * US,
    });
    h.on(Event::Dispatched {
        pcpu: p1,
        vcpu: None,
        at: 2500 * US,
    });
    assert_eq!(h.s.stats().balance_passes, passes);
    assert_eq!(h.s.stats().steals, 1);
    // After it, a pass and a steal.
    h.on(Event::Dispatched {
        pcpu: p1,
        vcpu: None,
        at: 3100 * US,
    });
    assert_eq!(h.s.stats().balance_passes, passes + 1);
    assert_eq!(h.s.stats().steals, 2);
}

#[test]
fn a_busy_pcpu_running_over_steals_an_under_vcpu() {
    let mut h = Harness::new(2, Tunables::DEFAULT);
    let (p0, p1) = (PcpuId(0), PcpuId(1));
    let a = h.guest(1, 256);
    let b = h.guest(2, 256);
    let c = h.guest(3, 256);
    // a alone on pCPU 1 all the time; b and c share pCPU 0.
    h.on(Event::Dispatched {
        pcpu: p1,
        vcpu: Some(a),
        at: 0,
    });
    h.on(Event::Dispatched {
        pcpu: p0,
        vcpu: Some(b),
        at: 0,
    });
    h.on(Event::Ran {
        vcpu: a,
        pcpu: p1,
        ns: 30 * MS,
    });
    h.on(Event::Ran {
        vcpu: b,
        pcpu: p0,
        ns: 15 * MS,
    });
    h.on(Event::Dispatched {
        pcpu: p0,
        vcpu: Some(c),
        at: 15 * MS,
    });
    h.on(Event::Ran {
        vcpu: c,
        pcpu: p0,
        ns: 15 * MS,
    });
    // Fair share is 20 ms each: a is OVER, b and c UNDER.
    h.on(Event::Tick { now: 30 * MS });
    assert_eq!(h.priority(a), Priority::Over);
    assert_eq!(h.priority(b), Priority::Under);
    assert_eq!(h.s.stats().steals, 1, "pCPU 1 took b at the tick");
    assert_eq!(h.run_list(1), vec![b, a]);
    assert_eq!(
        h.s.take_tickles().as_slice(),
        &[Tickle {
            pcpu: p1,
            expected: Some(a)
        }]
    );
}

#[test]
fn a_wake_goes_to_an_idle_pcpu_and_tickles_only_it() {
    let mut h = Harness::new(3, Tunables::DEFAULT);
    let a = h.guest(1, 256);
    let b = h.guest(2, 256);
    h.on(Event::Dispatched {
        pcpu: PcpuId(0),
        vcpu: Some(a),
        at: 0,
    });
    h.on(Event::Dispatched {
        pcpu: PcpuId(1),
        vcpu: None,
        at: 0,
    });
    h.on(Event::Blocked { vcpu: b, at: 0 });
    h.on(Event::Dispatched {
        pcpu: PcpuId(2),
        vcpu: None,
        at: 0,
    });
    h.s.take_tickles();
    h.on(Event::Woke {
        vcpu: b,
        at: 5 * MS,
    });
    let tickles = h.s.take_tickles();
    assert_eq!(tickles.len(), 1);
    let target = tickles[0].pcpu;
    assert_ne!(target, PcpuId(0), "placement prefers an idle pCPU");
    assert_eq!(tickles[0].expected, None);
    assert_eq!(h.run_list(target.0), vec![b]);
    assert_eq!(h.run_list(0), vec![a]);
}

#[test]
fn a_preemption_waits_for_the_ratelimit() {
    for (ratelimit_us, expect_deferral) in [(5000, true), (0, false)] {
        let mut h = Harness::new(1, Tunables::new(30, ratelimit_us).unwrap());
        let p = PcpuId(0);
        let a = h.guest(1, 256);
        let b = h.guest(2, 256);
        h.on(Event::Dispatched {
            pcpu: p,
            vcpu: Some(b),
            at: 0,
        });
        h.on(Event::Blocked { vcpu: b, at: 0 });
        h.on(Event::Dispatched {
            pcpu: p,
            vcpu: Some(a),
            at: 10 * MS,
        });
        h.on(Event::Tick { now: 10 * MS });
        h.s.take_tickles();
        // b wakes (BOOST) 1 ms after a was dispatched.
        h.on(Event::Woke {
            vcpu: b,
            at: 11 * MS,
        });
        assert_eq!(h.priority(b), Priority::Boost);
        let expected = [Tickle {
            pcpu: p,
            expected: Some(a),
        }];
        if expect_deferral {
            assert!(
                h.s.take_tickles().is_empty(),
                "a has run only 1 ms of its 5 ms"
            );
            assert_eq!(h.s.next_deadline(), 15 * MS);
            h.on(Event::Tick { now: 14_999_999 });
            assert!(h.s.take_tickles().is_empty());
            h.on(Event::Tick { now: 15 * MS });
            assert_eq!(h.s.take_tickles().as_slice(), &expected);
        } else {
            assert_eq!(h.s.take_tickles().as_slice(), &expected);
        }
    }
}

#[test]
fn a_stale_tickle_is_retargeted_when_the_core_reports_its_switch() {
    let mut h = Harness::new(1, Tunables::DEFAULT);
    let p = PcpuId(0);
    let a = h.guest(1, 256);
    let b = h.guest(2, 256);
    let c = h.guest(3, 256);
    h.on(Event::Dispatched {
        pcpu: p,
        vcpu: Some(a),
        at: 0,
    });
    h.on(Event::Blocked { vcpu: c, at: 0 });
    h.s.take_tickles();
    h.on(Event::Tick { now: 10 * MS });
    // c wakes while the server believes a runs: tickle for a.
    h.on(Event::Woke {
        vcpu: c,
        at: 12 * MS,
    });
    assert_eq!(
        h.s.take_tickles().as_slice(),
        &[Tickle {
            pcpu: p,
            expected: Some(a)
        }]
    );
    // But the core had already switched to b (its slice ended): it drops the
    // tickle. When its report arrives, the preemption is re-aimed at b, once
    // b has run for the ratelimit.
    h.on(Event::Dispatched {
        pcpu: p,
        vcpu: Some(b),
        at: 12 * MS,
    });
    assert!(h.s.take_tickles().is_empty());
    assert_eq!(h.s.next_deadline(), 13 * MS);
    h.on(Event::Tick { now: 13 * MS });
    assert_eq!(
        h.s.take_tickles().as_slice(),
        &[Tickle {
            pcpu: p,
            expected: Some(b)
        }]
    );
    assert_eq!(h.run_list(0)[0], c);
}

#[test]
fn tunables_change_at_run_time_and_bad_ones_change_nothing() {
    let mut h = Harness::new(1, Tunables::DEFAULT);
    let a = h.guest(1, 256);
    assert_eq!(h.s.decision(PcpuId(0)).unwrap().slice_ns, 30 * MS);
    assert_eq!(h.s.next_deadline(), 10 * MS);
    let tunables = h.s.configure(Some(6), Some(0)).unwrap();
    assert_eq!((tunables.timeslice_ms(), tunables.ratelimit_us()), (6, 0));
    assert_eq!(h.s.decision(PcpuId(0)).unwrap().slice_ns, 6 * MS);
    assert_eq!(
        h.s.next_deadline(),
        2 * MS,
        "ticks every 6/3 ms from now on"
    );
    // Accounting now hands out 6 ms per period.
    h.on(Event::Dispatched {
        pcpu: PcpuId(0),
        vcpu: Some(a),
        at: 0,
    });
    h.on(Event::Ran {
        vcpu: a,
        pcpu: PcpuId(0),
        ns: 6 * MS,
    });
    h.on(Event::Tick { now: 6 * MS });
    assert_eq!(h.s.vcpu_info(a).unwrap().credit_ns, 0);
    assert_eq!(h.s.stats().accountings, 1);

    for (timeslice, ratelimit, error) in [
        (
            Some(0),
            None,
            KnobError::TimesliceOutOfRange { requested_ms: 0 },
        ),
        (
            Some(1001),
            None,
            KnobError::TimesliceOutOfRange { requested_ms: 1001 },
        ),
        (
            None,
            Some(99),
            KnobError::RatelimitOutOfRange { requested_us: 99 },
        ),
        (
            None,
            Some(500_001),
            KnobError::RatelimitOutOfRange {
                requested_us: 500_001,
            },
        ),
        (
            None,
            Some(7000),
            KnobError::RatelimitAboveTimeslice {
                ratelimit_us: 7000,
                timeslice_ms: 6,
            },
        ),
    ] {
        assert_eq!(h.s.configure(timeslice, ratelimit), Err(error));
        assert_eq!(h.s.tunables(), tunables, "refused: {error}");
    }
    // Setting both at once is checked as a whole.
    assert!(h.s.configure(Some(10), Some(7000)).is_ok());
    assert_eq!(
        h.s.configure(Some(5), None),
        Err(KnobError::RatelimitAboveTimeslice {
            ratelimit_us: 7000,
            timeslice_ms: 5
        })
    );
}

#[test]
fn bad_domain_parameters_and_events_change_nothing() {
    let mut h = Harness::new(1, Tunables::DEFAULT);
    let a = h.guest(1, 256);
    let domain = a.domain;
    for (weight, cap, error) in [
        (Some(0), None, KnobError::WeightOutOfRange { requested: 0 }),
        (
            Some(65_536),
            None,
            KnobError::WeightOutOfRange { requested: 65_536 },
        ),
        (
            Some(512),
            Some(801),
            KnobError::CapOutOfRange { requested: 801 },
        ),
    ] {
        assert_eq!(
            h.s.set_domain_params(domain, weight, cap),
            Err(ControlError::Knob(error))
        );
        assert_eq!(h.s.domain_params(domain), Some(DomainParams::default()));
    }
    assert_eq!(
        h.s.set_domain_params(DomainId(9), Some(512), None),
        Err(ControlError::UnknownDomain(DomainId(9)))
    );
    let params =
        h.s.set_domain_params(domain, Some(65_535), Some(800))
            .unwrap();
    assert_eq!((params.weight.get(), params.cap.percent()), (65_535, 800));

    let before = format!("{:?}", h.s);
    let ghost = VcpuId::new(DomainId(7), 0);
    for (event, error) in [
        (
            Event::Ran {
                vcpu: ghost,
                pcpu: PcpuId(0),
                ns: 1,
            },
            EventError::UnknownVcpu(ghost),
        ),
        (
            Event::Woke { vcpu: ghost, at: 1 },
            EventError::UnknownVcpu(ghost),
        ),
        (
            Event::Dispatched {
                pcpu: PcpuId(8),
                vcpu: None,
                at: 1,
            },
            EventError::PcpuOutOfRange(PcpuId(8)),
        ),
        (
            Event::Dispatched {
                pcpu: PcpuId(3),
                vcpu: Some(a),
                at: 1,
            },
            EventError::PcpuOffline(PcpuId(3)),
        ),
        (
            Event::Dispatched {
                pcpu: PcpuId(0),
                vcpu: Some(ghost),
                at: 1,
            },
            EventError::UnknownVcpu(ghost),
        ),
        (
            Event::VcpuCreated {
                vcpu: VcpuId::new(domain, 8),
                runnable: true,
            },
            EventError::VcpuIndexOutOfRange(VcpuId::new(domain, 8)),
        ),
        (
            Event::VcpuCreated {
                vcpu: a,
                runnable: true,
            },
            EventError::VcpuExists(a),
        ),
        (
            Event::DomainCreated { domain, params },
            EventError::DomainExists(domain),
        ),
        (
            Event::DomainDestroyed {
                domain: DomainId(7),
            },
            EventError::UnknownDomain(DomainId(7)),
        ),
    ] {
        assert_eq!(h.s.apply(event), Err(error), "{event:?}");
        assert_eq!(format!("{:?}", h.s), before, "{event:?} changed the state");
        assert!(!error.to_string().is_empty());
    }
    for domain in 100..115 {
        h.on(Event::DomainCreated {
            domain: DomainId(domain),
            params,
        });
    }
    assert_eq!(
        h.s.apply(Event::DomainCreated {
            domain: DomainId(200),
            params
        }),
        Err(EventError::TooManyDomains)
    );
}

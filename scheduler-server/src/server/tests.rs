//! The server against the components runtime's mock core: every message
//! the server sends is decoded as the core decodes it
//! ([`decode_from_server`] with the machine's [`Shape`]), so each test also
//! shows the output passes the core's range checks.

use std::collections::HashMap;

use components::testing::{Call, Harness};
use ipc::messages::scheduler::{self as wire, Shape, ToCore, ToServer};
use ipc::messages::{decode_from_server, ErrorCode};
use ipc::publication::CreditTable;
use ipc::ring::Consumer;

use super::*;

type TestHarness = Harness<SchedulerServer>;

const MS: u64 = 1_000_000;

fn harness(generation: u32) -> TestHarness {
    let mut harness = Harness::new(SchedulerServer::new(), generation, "");
    harness.start().expect("the server starts");
    harness
}

fn push(harness: &mut TestHarness, message: ToServer) {
    harness.push(Inbound(message));
}

/// Runs turns until every queued message is handled (the clock stands
/// still: a turn with messages does not wait).
fn settle(harness: &mut TestHarness) {
    while Consumer::attach(harness.to_server_ring())
        .pending()
        .expect("an intact ring")
        > 0
    {
        harness.turn().expect("the server keeps running");
    }
}

/// Lets the server run on its own (ticks, heartbeats) until `end`.
fn run_until(harness: &mut TestHarness, end: u64) {
    loop {
        let deadline = harness
            .runtime()
            .deadline()
            .expect("the server always has a timeout");
        if deadline > end {
            break;
        }
        harness.turn().expect("the server keeps running");
    }
    let clock = &mut harness.platform_mut().clock;
    *clock = (*clock).max(end);
}

fn now(harness: &TestHarness) -> u64 {
    harness.platform().clock
}

/// What the server sent so far (the core takes it at the server's next
/// syscall), decoded and checked as the core does.
fn sent(harness: &mut TestHarness, shape: &Shape) -> std::vec::Vec<ToCore> {
    let generation = harness.runtime().instance().generation;
    harness.platform_mut().drain_to_core();
    std::mem::take(&mut harness.platform_mut().delivered)
        .iter()
        .map(|bytes| {
            decode_from_server::<ToCore>(bytes, generation, shape)
                .unwrap_or_else(|error| panic!("the core refuses a message: {error:?}"))
        })
        .collect()
}

/// The credit table the server last published, read and checked as the
/// core does.
fn credit_table(harness: &TestHarness, shape: &Shape) -> Option<CreditTable> {
    harness
        .publication()
        .read_credits(shape)
        .unwrap_or_else(|error| panic!("the core refuses the credit table: {error:?}"))
}

fn vcpu(domain: u16, index: u8) -> wire::Vcpu {
    wire::Vcpu::new(domain, index)
}

fn events(batch: &[wire::Event]) -> ToServer {
    ToServer::Events {
        batch: Vec::from_slice(batch).expect("a batch fits"),
    }
}

/// A rebuild stream as the core sends it.
#[derive(Debug, Clone)]
struct Machine {
    now: u64,
    timeslice_ms: u32,
    ratelimit_us: u32,
    accounted_at: Option<u64>,
    pcpus: u8,
    domains: std::vec::Vec<wire::DomainRecord>,
    vcpus: std::vec::Vec<wire::VcpuRecord>,
}

impl Machine {
    fn new(now: u64, pcpus: u8) -> Self {
        Self {
            now,
            timeslice_ms: 30,
            ratelimit_us: 1000,
            accounted_at: None,
            pcpus,
            domains: std::vec::Vec::new(),
            vcpus: std::vec::Vec::new(),
        }
    }

    fn domain(mut self, domain: u16, weight: u32, cap: u32) -> Self {
        self.domains.push(wire::DomainRecord {
            domain,
            weight,
            cap,
        });
        self
    }

    fn vcpu(mut self, vcpu: wire::Vcpu, state: wire::VcpuState) -> Self {
        self.vcpus.push(wire::VcpuRecord {
            vcpu,
            state,
            run_time_ns: 0,
            published: None,
        });
        self
    }

    fn shape(&self) -> Shape {
        let mut shape = Shape::new(self.pcpus);
        for record in &self.vcpus {
            let count = &mut shape.vcpus[usize::from(record.vcpu.domain)];
            *count = (*count).max(record.vcpu.index + 1);
        }
        shape
    }

    fn stream(&self) -> std::vec::Vec<ToServer> {
        let mut stream = vec![ToServer::RebuildBegin {
            now: self.now,
            timeslice_ms: self.timeslice_ms,
            ratelimit_us: self.ratelimit_us,
            accounted_at: self.accounted_at,
            pcpus: (1u16 << self.pcpus).wrapping_sub(1) as u8,
        }];
        for chunk in self.domains.chunks(wire::REBUILD_DOMAIN_BATCH_LEN) {
            stream.push(ToServer::RebuildDomains {
                records: Vec::from_slice(chunk).expect("a batch fits"),
            });
        }
        for chunk in self.vcpus.chunks(wire::REBUILD_VCPU_BATCH_LEN) {
            stream.push(ToServer::RebuildVcpus {
                records: Vec::from_slice(chunk).expect("a batch fits"),
            });
        }
        stream.push(ToServer::RebuildEnd {
            domains: self.domains.len() as u16,
            vcpus: self.vcpus.len() as u16,
        });
        stream
    }

    /// The policy's own rebuild of the same snapshot, for reference.
    fn reference(&self) -> Scheduler {
        let domains: std::vec::Vec<DomainRecord> = self
            .domains
            .iter()
            .map(|&record| DomainRecord::try_from(record).expect("valid parameters"))
            .collect();
        let vcpus: std::vec::Vec<VcpuRecord> =
            self.vcpus.iter().map(|&record| record.into()).collect();
        Scheduler::rebuild(&Snapshot {
            now: self.now,
            tunables: Tunables::new(self.timeslice_ms, self.ratelimit_us).expect("valid"),
            accounted_at: self.accounted_at,
            pcpus: pcpu_set((1u16 << self.pcpus).wrapping_sub(1) as u8),
            domains: &domains,
            vcpus: &vcpus,
        })
        .expect("a consistent snapshot")
    }

    fn rebuild(&self, harness: &mut TestHarness) {
        for message in self.stream() {
            push(harness, message);
        }
        settle(harness);
    }
}

/// A pCPU's decision as the core reads it: the run list and the slice.
type Published = (std::vec::Vec<wire::Vcpu>, u64);

/// `decision` as the core would read it once published.
fn decision_of(decision: Decision) -> Published {
    (decision.run.iter().map(wire::Vcpu::from).collect(), decision.slice_ns)
}

/// pCPU `pcpu`'s decision block, read and checked as the core does, with
/// its sequence.
fn published_decision(harness: &TestHarness, shape: &Shape, pcpu: u8) -> Option<(u64, Published)> {
    harness
        .publication()
        .read_decision(pcpu, shape)
        .unwrap_or_else(|error| panic!("the core refuses pCPU {pcpu}'s decision: {error:?}"))
        .map(|decision| (decision.sequence, (decision.run.to_vec(), decision.slice_ns)))
}

/// pCPU `pcpu`'s current decision.
fn decision(harness: &TestHarness, shape: &Shape, pcpu: u8) -> Option<Published> {
    published_decision(harness, shape, pcpu).map(|(_, decision)| decision)
}

fn running(pcpu: u8) -> wire::VcpuState {
    wire::VcpuState::Running { pcpu }
}

fn runnable(pcpu: u8) -> wire::VcpuState {
    wire::VcpuState::Runnable { pcpu }
}

/// Two pCPUs: domain 0 (weight 256, 2 vCPUs) runs 0.0 on pCPU 0 with 0.1
/// queued; domain 1 (weight 512) runs 1.0 on pCPU 1.
fn two_pcpus(now: u64) -> Machine {
    Machine::new(now, 2)
        .domain(0, 256, 0)
        .domain(1, 512, 0)
        .vcpu(vcpu(0, 0), running(0))
        .vcpu(vcpu(0, 1), runnable(0))
        .vcpu(vcpu(1, 0), running(1))
}

#[test]
fn nothing_is_decided_before_the_stream_ends_then_every_pcpu_gets_its_decision() {
    let mut harness = harness(1);
    let machine = two_pcpus(now(&harness));
    let shape = machine.shape();
    assert!(sent(&mut harness, &shape).is_empty(), "no Ready at start");
    let stream = machine.stream();
    let (last, first) = stream.split_last().expect("a stream");
    for message in first {
        push(&mut harness, message.clone());
    }
    settle(&mut harness);
    assert!(sent(&mut harness, &shape).is_empty());
    assert!(harness.handler().scheduler().is_none());

    push(&mut harness, last.clone());
    settle(&mut harness);
    let messages = sent(&mut harness, &shape);
    let reference = machine.reference();
    let expected = |pcpu| Some(decision_of(reference.decision(PcpuId(pcpu)).expect("online")));
    // The decisions and the credits are in the publication area, Ready in
    // the ring.
    assert_eq!(messages, [ToCore::Ready]);
    assert_eq!(decision(&harness, &shape, 0), expected(0));
    assert_eq!(decision(&harness, &shape, 1), expected(1));
    // The running vCPU goes where it would be queued: behind the waiting
    // one of the same priority.
    assert_eq!(decision(&harness, &shape, 0), Some((vec![vcpu(0, 1), vcpu(0, 0)], 30 * MS)));
    let table = credit_table(&harness, &shape).expect("published after the rebuild");
    assert_eq!(table.accounted_at, None);
    let credited: std::vec::Vec<wire::Vcpu> = table.entries.iter().map(|entry| entry.vcpu).collect();
    assert_eq!(credited, [vcpu(0, 0), vcpu(0, 1), vcpu(1, 0)]);
    let counters = harness.handler().counters();
    assert_eq!((counters.rebuilds, counters.decisions), (1, 2));
    assert!(harness
        .take_logs()
        .iter()
        .any(|line| line.contains("rebuilt from the core: 2 domain(s), 3 vCPU(s), 2 pCPU(s)")));
}

#[test]
fn a_wake_changes_the_decision_and_tickles_after_it() {
    let mut harness = harness(1);
    let mut machine = Machine::new(now(&harness), 1)
        .domain(0, 256, 0)
        .domain(1, 256, 0)
        .vcpu(vcpu(0, 0), running(0))
        .vcpu(vcpu(1, 0), wire::VcpuState::Blocked);
    machine.ratelimit_us = 0;
    let shape = machine.shape();
    machine.rebuild(&mut harness);
    assert_eq!(sent(&mut harness, &shape), [ToCore::Ready]);
    let (first, start) = published_decision(&harness, &shape, 0).expect("published");
    assert_eq!(start, (vec![vcpu(0, 0)], 30 * MS));

    // 1.0 wakes: boosted, it goes first, and pCPU 0 is tickled.
    let at = now(&harness);
    push(
        &mut harness,
        events(&[wire::Event::Woke {
            vcpu: vcpu(1, 0),
            at,
        }]),
    );
    settle(&mut harness);
    assert_eq!(
        sent(&mut harness, &shape),
        [ToCore::Tickle {
            pcpu: 0,
            expected: Some(vcpu(0, 0)),
        }]
    );
    // The new decision was published before the tickle was sent.
    let (woken, after) = published_decision(&harness, &shape, 0).expect("published");
    assert_eq!(after, (vec![vcpu(1, 0), vcpu(0, 0)], 30 * MS));
    assert_eq!(woken, first + 1);

    // The core switched; later 1.0 blocks and 0.0 runs again.
    let events_then = [
        wire::Event::Ran {
            vcpu: vcpu(0, 0),
            pcpu: 0,
            ns: 100_000,
        },
        wire::Event::Dispatched {
            pcpu: 0,
            vcpu: Some(vcpu(1, 0)),
            at: at + 100_000,
        },
        wire::Event::Ran {
            vcpu: vcpu(1, 0),
            pcpu: 0,
            ns: 200_000,
        },
        wire::Event::Blocked {
            vcpu: vcpu(1, 0),
            at: at + 300_000,
        },
        wire::Event::Dispatched {
            pcpu: 0,
            vcpu: Some(vcpu(0, 0)),
            at: at + 300_000,
        },
    ];
    harness.platform_mut().clock = at + 300_000;
    push(&mut harness, events(&events_then));
    settle(&mut harness);
    assert_eq!(decision(&harness, &shape, 0), Some((vec![vcpu(0, 0)], 30 * MS)));
    let scheduler = harness.handler().scheduler().expect("rebuilt");
    let info = scheduler
        .vcpu_info(VcpuId::new(DomainId(1), 0))
        .expect("exists");
    assert_eq!(info.run_time_ns, 200_000);
    assert_eq!(harness.handler().counters().events, 6);
}

#[test]
fn invalid_control_requests_are_refused_with_the_reason_and_change_nothing() {
    let mut harness = harness(1);
    let machine = two_pcpus(now(&harness));
    let shape = machine.shape();

    // Before the rebuild nothing can be set.
    push(
        &mut harness,
        ToServer::SetDomain {
            request: 1,
            domain: 0,
            weight: Some(512),
            cap: None,
        },
    );
    settle(&mut harness);
    assert_eq!(
        sent(&mut harness, &shape),
        [ToCore::ControlResult {
            request: 1,
            result: Err(wire::ControlError::NotReady),
        }]
    );

    machine.rebuild(&mut harness);
    let _ = sent(&mut harness, &shape);
    let before = harness.handler().scheduler().expect("rebuilt").clone();
    let knob = |error| Err(wire::ControlError::Knob(error));
    let refused = [
        (
            ToServer::SetDomain {
                request: 10,
                domain: 0,
                weight: Some(0),
                cap: None,
            },
            knob(wire::KnobError::WeightOutOfRange { requested: 0 }),
        ),
        (
            ToServer::SetDomain {
                request: 11,
                domain: 1,
                weight: Some(65_536),
                cap: Some(50),
            },
            knob(wire::KnobError::WeightOutOfRange { requested: 65_536 }),
        ),
        (
            ToServer::SetDomain {
                request: 12,
                domain: 0,
                weight: Some(512),
                cap: Some(801),
            },
            knob(wire::KnobError::CapOutOfRange { requested: 801 }),
        ),
        (
            ToServer::SetDomain {
                request: 13,
                domain: 7,
                weight: Some(512),
                cap: None,
            },
            Err(wire::ControlError::UnknownDomain { domain: 7 }),
        ),
        (
            ToServer::Configure {
                request: 14,
                timeslice_ms: Some(0),
                ratelimit_us: None,
            },
            knob(wire::KnobError::TimesliceOutOfRange { requested_ms: 0 }),
        ),
        (
            ToServer::Configure {
                request: 15,
                timeslice_ms: Some(1001),
                ratelimit_us: None,
            },
            knob(wire::KnobError::TimesliceOutOfRange { requested_ms: 1001 }),
        ),
        (
            ToServer::Configure {
                request: 16,
                timeslice_ms: None,
                ratelimit_us: Some(99),
            },
            knob(wire::KnobError::RatelimitOutOfRange { requested_us: 99 }),
        ),
        (
            ToServer::Configure {
                request: 17,
                timeslice_ms: Some(1),
                ratelimit_us: Some(2000),
            },
            knob(wire::KnobError::RatelimitAboveTimeslice {
                ratelimit_us: 2000,
                timeslice_ms: 1,
            }),
        ),
        // Only the timeslice given: checked against the ratelimit in force.
        (
            ToServer::Configure {
                request: 18,
                timeslice_ms: Some(1),
                ratelimit_us: None,
            },
            Ok(wire::Applied::Tunables {
                timeslice_ms: 1,
                ratelimit_us: 1000,
            }),
        ),
    ];
    // The last one is valid; leave it out here.
    for (message, result) in refused[..refused.len() - 1].iter().cloned() {
        let request = match message {
            ToServer::SetDomain { request, .. } | ToServer::Configure { request, .. } => request,
            _ => unreachable!(),
        };
        push(&mut harness, message);
        settle(&mut harness);
        assert_eq!(
            sent(&mut harness, &shape),
            [ToCore::ControlResult { request, result }],
            "a refusal and nothing else"
        );
    }
    let after = harness.handler().scheduler().expect("still running");
    assert_eq!(after.tunables(), before.tunables());
    for domain in [DomainId(0), DomainId(1)] {
        assert_eq!(after.domain_params(domain), before.domain_params(domain));
    }
    for pcpu in [PcpuId(0), PcpuId(1)] {
        assert_eq!(after.decision(pcpu), before.decision(pcpu));
    }
    assert_eq!(harness.handler().counters().refused_controls, 9);
    assert!(harness.take_logs().iter().any(|line| line.contains(
        "control request 17 refused: ratelimit 2000 us is longer than the timeslice 1 ms"
    )));

    // Valid requests: the answer carries what is now in force, and a new
    // timeslice reaches every decision.
    push(
        &mut harness,
        ToServer::SetDomain {
            request: 20,
            domain: 1,
            weight: None,
            cap: Some(50),
        },
    );
    let (message, result) = refused.last().cloned().expect("one valid request");
    push(&mut harness, message);
    settle(&mut harness);
    let messages = sent(&mut harness, &shape);
    assert_eq!(
        messages[..2],
        [
            ToCore::ControlResult {
                request: 20,
                result: Ok(wire::Applied::Domain {
                    domain: 1,
                    weight: 512,
                    cap: 50,
                }),
            },
            ToCore::ControlResult {
                request: 18,
                result,
            },
        ]
    );
    for pcpu in 0..2 {
        let (_, slice_ns) = decision(&harness, &shape, pcpu).expect("published");
        assert_eq!(slice_ns, MS, "pCPU {pcpu}");
    }
}

#[test]
fn refused_events_are_counted_and_logged_not_fatal() {
    let mut harness = harness(1);
    let machine = two_pcpus(now(&harness));
    let shape = machine.shape();
    // Before any rebuild, events are dropped.
    push(&mut harness, events(&[wire::Event::Tick { now: 5 }]));
    settle(&mut harness);
    assert_eq!(harness.handler().counters().dropped_events, 1);

    machine.rebuild(&mut harness);
    let _ = sent(&mut harness, &shape);
    let at = now(&harness);
    push(
        &mut harness,
        events(&[
            wire::Event::Woke {
                vcpu: vcpu(9, 0),
                at,
            },
            wire::Event::DomainCreated {
                domain: 4,
                weight: 0,
                cap: 0,
            },
            wire::Event::Ran {
                vcpu: vcpu(0, 0),
                pcpu: 0,
                ns: 5_000,
            },
        ]),
    );
    settle(&mut harness);
    let counters = harness.handler().counters();
    assert_eq!((counters.events, counters.refused_events), (1, 2));
    let logs = harness.take_logs();
    assert!(
        logs.iter()
            .any(|line| line.contains("event refused (1 so far): no vCPU 9.0")),
        "{logs:?}"
    );
    assert!(logs
        .iter()
        .any(|line| line.contains("event refused (2 so far): weight 0 is out of range")));
    let scheduler = harness.handler().scheduler().expect("still running");
    assert_eq!(
        scheduler
            .vcpu_info(VcpuId::new(DomainId(0), 0))
            .map(|info| info.run_time_ns),
        Some(5_000)
    );
    assert!(scheduler.domain_params(DomainId(4)).is_none());
}

#[test]
fn ticks_accounting_and_heartbeats_run_on_the_servers_own_clock() {
    let mut harness = harness(1);
    let start = now(&harness);
    let machine = two_pcpus(start);
    let shape = machine.shape();
    machine.rebuild(&mut harness);
    let _ = sent(&mut harness, &shape);
    // Read the credit table every millisecond, as a core could.
    let mut accountings: std::vec::Vec<u64> = std::vec::Vec::new();
    let mut at = start;
    while at < start + 250 * MS {
        at += MS;
        run_until(&mut harness, at);
        let published = credit_table(&harness, &shape).and_then(|table| table.accounted_at);
        if let Some(accounted_at) = published.filter(|&time| accountings.last() != Some(&time)) {
            accountings.push(accounted_at);
        }
    }
    let messages = sent(&mut harness, &shape);
    let heartbeats: std::vec::Vec<u64> = messages
        .iter()
        .filter_map(|message| match message {
            ToCore::Heartbeat { count } => Some(*count),
            _ => None,
        })
        .collect();
    // At least one per interval, riding on the accountings (every 60 ms:
    // the first turn in the second half of each interval).
    assert_eq!(heartbeats, [1, 2, 3, 4]);
    // Every 30 ms on the core's clock, each published.
    assert!(accountings.len() >= 7, "{accountings:?}");
    assert!(accountings
        .windows(2)
        .all(|pair| pair[1] == pair[0] + 30 * MS));
    assert!(accountings.iter().all(|at| at % (30 * MS) == 0));
    let scheduler = harness.handler().scheduler().expect("running");
    // Every tick ran (a quiet one when the server next woke), one per
    // timeslice / 3.
    assert!(scheduler.stats().ticks >= 24, "{:?}", scheduler.stats());
    // The server never sleeps past an accounting (every timeslice); quiet
    // ticks do not wake it.
    let waits = harness
        .platform()
        .calls
        .iter()
        .filter_map(|call| match call {
            Call::Wait(timeout) => Some(*timeout),
            _ => None,
        });
    let waits: std::vec::Vec<u64> = waits.collect();
    assert!(waits.iter().all(|&timeout| timeout <= 30 * MS), "{waits:?}");
    // One wake per accounting: neither quiet ticks nor heartbeats wake it.
    assert!(waits.len() <= 10, "{} waits: {waits:?}", waits.len());
}

#[test]
fn a_refusal_from_the_core_makes_the_server_publish_everything_again() {
    let mut harness = harness(1);
    let machine = two_pcpus(now(&harness));
    let shape = machine.shape();
    machine.rebuild(&mut harness);
    let _ = sent(&mut harness, &shape);
    let first: std::vec::Vec<_> = (0..2).map(|pcpu| published_decision(&harness, &shape, pcpu).expect("published")).collect();
    push(
        &mut harness,
        ToServer::Error {
            code: ErrorCode::OutOfRange,
        },
    );
    settle(&mut harness);
    let again = sent(&mut harness, &shape);
    // Every decision is published again (a new sequence), unchanged.
    for (pcpu, (sequence, published)) in (0..2).zip(&first) {
        let (resequenced, republished) = published_decision(&harness, &shape, pcpu).expect("published");
        assert_eq!((resequenced, &republished), (sequence + 1, published), "pCPU {pcpu}");
    }
    let tables = harness.handler().counters().credit_tables;
    assert!(tables >= 2, "the credit table is written again ({tables})");
    assert!(
        !again.contains(&ToCore::Ready),
        "Ready only after a rebuild"
    );
    assert_eq!(harness.handler().counters().refusals, 1);
}

#[test]
fn broken_streams_are_refused_and_a_fresh_one_is_taken() {
    let mut harness = harness(1);
    let good = two_pcpus(now(&harness));
    let shape = good.shape();
    let failed = |harness: &mut TestHarness| -> wire::RebuildError {
        settle(harness);
        match sent(harness, &shape).as_slice() {
            [ToCore::RebuildFailed { reason }] => *reason,
            other => panic!("expected one RebuildFailed, got {other:?}"),
        }
    };

    push(
        &mut harness,
        ToServer::RebuildEnd {
            domains: 0,
            vcpus: 0,
        },
    );
    assert_eq!(failed(&mut harness), wire::RebuildError::OutOfOrder);

    let mut stream = good.stream();
    stream.remove(2); // the vCPU batch
    for message in stream {
        push(&mut harness, message);
    }
    assert_eq!(
        failed(&mut harness),
        wire::RebuildError::Incomplete {
            domains: 2,
            vcpus: 0
        }
    );

    let mut bad = good.clone();
    bad.timeslice_ms = 0;
    bad.rebuild(&mut harness);
    assert_eq!(
        failed(&mut harness),
        wire::RebuildError::Knob(wire::KnobError::TimesliceOutOfRange { requested_ms: 0 })
    );

    let mut bad = good.clone();
    bad.domains[1].weight = 0;
    bad.rebuild(&mut harness);
    assert_eq!(
        failed(&mut harness),
        wire::RebuildError::Knob(wire::KnobError::WeightOutOfRange { requested: 0 })
    );

    let bad = good.clone().vcpu(vcpu(5, 0), runnable(0));
    bad.rebuild(&mut harness);
    assert_eq!(
        failed(&mut harness),
        wire::RebuildError::Refused(wire::EventError::UnknownDomain(5))
    );
    assert!(harness.handler().scheduler().is_none());
    assert_eq!(harness.handler().counters().failed_rebuilds, 5);

    good.rebuild(&mut harness);
    assert!(sent(&mut harness, &shape).contains(&ToCore::Ready));

    // Records outside a stream do not harm the running policy.
    let stray = good.stream();
    push(&mut harness, stray[2].clone());
    push(&mut harness, stray[3].clone());
    assert_eq!(failed(&mut harness), wire::RebuildError::OutOfOrder);
    assert!(harness.handler().scheduler().is_some());
    let at = now(&harness);
    push(
        &mut harness,
        events(&[wire::Event::Yielded { vcpu: vcpu(0, 0) }]),
    );
    settle(&mut harness);
    let _ = at;
    assert_eq!(harness.handler().counters().events, 1);
}

/// A small core: runs spinning vCPUs as the server's decisions say, and
/// reports what happened every `step`.
struct MiniCore {
    now: u64,
    pcpus: u8,
    weights: std::vec::Vec<(u16, u32)>,
    vcpus: std::vec::Vec<wire::Vcpu>,
    run_time: HashMap<wire::Vcpu, u64>,
    home: HashMap<wire::Vcpu, u8>,
    current: std::vec::Vec<Option<wire::Vcpu>>,
    decisions: std::vec::Vec<std::vec::Vec<wire::Vcpu>>,
    credits: HashMap<wire::Vcpu, wire::PublishedCredit>,
    accounted_at: Option<u64>,
    accountings: usize,
}

impl MiniCore {
    fn machine(&self) -> Machine {
        let mut machine = Machine::new(self.now, self.pcpus);
        machine.accounted_at = self.accounted_at;
        for &(domain, weight) in &self.weights {
            machine = machine.domain(domain, weight, 0);
        }
        // Running vCPUs, then the queued ones in the order of their pCPU's
        // last decision, so the order within a priority survives.
        let mut order: std::vec::Vec<(wire::Vcpu, wire::VcpuState)> = std::vec::Vec::new();
        for (pcpu, current) in self.current.iter().enumerate() {
            if let Some(vcpu) = current {
                order.push((*vcpu, running(pcpu as u8)));
            }
        }
        for (pcpu, run) in self.decisions.iter().enumerate() {
            for vcpu in run {
                if !order.iter().any(|(known, _)| known == vcpu)
                    && self.home.get(vcpu) == Some(&(pcpu as u8))
                {
                    order.push((*vcpu, runnable(pcpu as u8)));
                }
            }
        }
        for vcpu in &self.vcpus {
            if !order.iter().any(|(known, _)| known == vcpu) {
                order.push((*vcpu, runnable(self.home[vcpu])));
            }
        }
        for (vcpu, state) in order {
            machine.vcpus.push(wire::VcpuRecord {
                vcpu,
                state,
                run_time_ns: self.run_time[&vcpu],
                published: self.credits.get(&vcpu).copied(),
            });
        }
        machine
    }

    /// Takes in the server's decisions and its credit table from the
    /// publication area, as the core does.
    fn absorb(&mut self, harness: &TestHarness, shape: &Shape) {
        for pcpu in 0..self.pcpus {
            if let Some((run, _)) = decision(harness, shape, pcpu) {
                self.decisions[usize::from(pcpu)] = run;
            }
        }
        let Some(table) = credit_table(harness, shape) else { return };
        if table.accounted_at != self.accounted_at {
            self.accountings += 1;
        }
        self.accounted_at = table.accounted_at;
        for entry in &table.entries {
            self.credits.insert(
                entry.vcpu,
                wire::PublishedCredit {
                    credit_ns: entry.credit_ns,
                    run_time_ns: entry.run_time_ns,
                },
            );
        }
    }

    /// Advances `step`: reports the run time, then switches each pCPU to
    /// its decision's pick.
    fn step(&mut self, step: u64) -> std::vec::Vec<wire::Event> {
        self.now += step;
        let mut events = std::vec::Vec::new();
        for (pcpu, current) in self.current.iter().enumerate() {
            if let Some(vcpu) = current {
                *self.run_time.get_mut(vcpu).expect("known") += step;
                events.push(wire::Event::Ran {
                    vcpu: *vcpu,
                    pcpu: pcpu as u8,
                    ns: step,
                });
            }
        }
        for pcpu in 0..usize::from(self.pcpus) {
            let pick = self.decisions[pcpu].iter().copied().find(|vcpu| {
                self.current
                    .iter()
                    .enumerate()
                    .all(|(other, running)| other == pcpu || *running != Some(*vcpu))
            });
            if pick != self.current[pcpu] {
                self.current[pcpu] = pick;
                if let Some(vcpu) = pick {
                    self.home.insert(vcpu, pcpu as u8);
                }
                events.push(wire::Event::Dispatched {
                    pcpu: pcpu as u8,
                    vcpu: pick,
                    at: self.now,
                });
            }
        }
        events
    }
}

#[test]
fn a_restarted_instance_fed_the_same_state_publishes_the_same_decisions() {
    let mut first = harness(1);
    let start = now(&first);
    let machine = Machine::new(start, 2)
        .domain(0, 256, 0)
        .domain(1, 512, 0)
        .domain(2, 1024, 0)
        .vcpu(vcpu(0, 0), running(0))
        .vcpu(vcpu(1, 0), running(1))
        .vcpu(vcpu(2, 0), runnable(0))
        .vcpu(vcpu(2, 1), runnable(1));
    let shape = machine.shape();
    let mut core = MiniCore {
        now: start,
        pcpus: 2,
        weights: vec![(0, 256), (1, 512), (2, 1024)],
        vcpus: machine.vcpus.iter().map(|record| record.vcpu).collect(),
        run_time: machine
            .vcpus
            .iter()
            .map(|record| (record.vcpu, 0))
            .collect(),
        home: HashMap::from([
            (vcpu(0, 0), 0),
            (vcpu(1, 0), 1),
            (vcpu(2, 0), 0),
            (vcpu(2, 1), 1),
        ]),
        current: vec![Some(vcpu(0, 0)), Some(vcpu(1, 0))],
        decisions: vec![std::vec::Vec::new(); 2],
        credits: HashMap::new(),
        accounted_at: None,
        accountings: 0,
    };
    machine.rebuild(&mut first);
    let _ = sent(&mut first, &shape);
    core.absorb(&first, &shape);

    // Run for a while, with a restart right after the 5th accounting.
    let feed = |harness: &mut TestHarness, core: &mut MiniCore, events: &[wire::Event]| {
        run_until(harness, core.now);
        for batch in events.chunks(wire::EVENT_BATCH_LEN) {
            push(harness, super::tests::events(batch));
        }
        settle(harness);
    };
    while core.accountings < 5 {
        let events = core.step(MS);
        feed(&mut first, &mut core, &events);
        let _ = sent(&mut first, &shape);
        core.absorb(&first, &shape);
    }
    assert!(core.now > start + 100 * MS);

    // The new instance gets the core's state and the published credits.
    let mut second = harness(2);
    second.platform_mut().clock = core.now;
    core.machine().rebuild(&mut second);
    let messages = sent(&mut second, &shape);
    assert!(messages.contains(&ToCore::Ready));
    for pcpu in [PcpuId(0), PcpuId(1)] {
        let before = first.handler().published(pcpu);
        assert!(before.is_some());
        assert_eq!(second.handler().published(pcpu), before, "pCPU {}", pcpu.0);
    }
    let (old, new) = (
        first.handler().scheduler().expect("running"),
        second.handler().scheduler().expect("running"),
    );
    for id in old.vcpu_ids() {
        let (old, new) = (old.vcpu_info(id), new.vcpu_info(id));
        assert_eq!(
            old.map(|info| (info.credit_ns, info.priority, info.run_time_ns)),
            new.map(|info| (info.credit_ns, info.priority, info.run_time_ns)),
            "{id:?}"
        );
    }
    assert_eq!(old.next_deadline(), new.next_deadline());
    // The new instance publishes the accounting time it was given until it
    // runs its own, so a second restart still lines up.
    assert!(old.last_accounting().is_some());
    let table = credit_table(&second, &shape).expect("published after the rebuild");
    assert_eq!(table.accounted_at, old.last_accounting());
}

std::thread_local! {
    /// The fake cycle counter of this test thread.
    static CYCLES: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// A cycle counter that advances 1000 cycles at every read.
fn fake_cycles() -> u64 {
    CYCLES.with(|cycles| {
        cycles.set(cycles.get() + 1000);
        cycles.get()
    })
}

#[test]
fn decision_passes_are_timed_and_logged_every_interval() {
    let mut harness = harness_for(SchedulerServer::with_cycle_counter(fake_cycles));
    let machine = two_pcpus(now(&harness));
    let shape = machine.shape();
    // Events before the rebuild decide nothing: not timed.
    push(&mut harness, events(&[wire::Event::Tick { now: 5 }]));
    settle(&mut harness);
    machine.rebuild(&mut harness);
    assert_eq!(harness.handler().decide_cycles().samples(), 0);
    let _ = sent(&mut harness, &shape);

    for _ in 0..DECIDE_LOG_INTERVAL {
        push(
            &mut harness,
            events(&[wire::Event::Ran {
                vcpu: vcpu(0, 0),
                pcpu: 0,
                ns: 1_000,
            }]),
        );
        settle(&mut harness);
    }
    let histogram = *harness.handler().decide_cycles();
    assert_eq!(histogram.samples(), DECIDE_LOG_INTERVAL);
    // Each pass reads the counter at the batch, entering `notified` and at
    // its end: 2000 cycles, in the bucket 1024..=2047.
    assert_eq!(
        (histogram.median(), histogram.p99()),
        (Some(2047), Some(2047))
    );
    let logs = harness.take_logs();
    let lines: std::vec::Vec<&String> = logs
        .iter()
        .filter(|line| line.contains("decide median"))
        .collect();
    assert_eq!(
        lines,
        ["scheduler-server: gen 1: decisions 1000, decide median 2047 ticks, p99 2047 ticks (log2 bucket upper bounds)"]
    );

    // Wakes for ticks (here the accountings: the other ticks are quiet)
    // are decision passes too; a line comes at least every second.
    let start = now(&harness);
    run_until(&mut harness, start + 100 * MS);
    assert!(harness.handler().decide_cycles().samples() >= DECIDE_LOG_INTERVAL + 3);
    assert!(!harness
        .take_logs()
        .iter()
        .any(|line| line.contains("decide median")));
    run_until(&mut harness, start + DECIDE_LOG_PERIOD_NS + 20 * MS);
    let logs = harness.take_logs();
    let passes = harness.handler().decide_cycles().samples();
    assert!(passes < 2 * DECIDE_LOG_INTERVAL, "{passes}");
    let timed: std::vec::Vec<&String> = logs
        .iter()
        .filter(|line| line.contains("decide median"))
        .collect();
    assert_eq!(timed.len(), 1, "{logs:?}");
    assert!(
        timed[0].starts_with("scheduler-server: gen 1: decisions 1"),
        "{timed:?}"
    );

    // Without a cycle counter nothing is timed.
    let mut untimed = harness_for(SchedulerServer::new());
    let machine = two_pcpus(now(&untimed));
    machine.rebuild(&mut untimed);
    push(
        &mut untimed,
        events(&[wire::Event::Ran {
            vcpu: vcpu(0, 0),
            pcpu: 0,
            ns: 1_000,
        }]),
    );
    settle(&mut untimed);
    assert_eq!(untimed.handler().decide_cycles().samples(), 0);
}

fn harness_for(server: SchedulerServer) -> TestHarness {
    let mut harness = Harness::new(server, 1, "");
    harness.start().expect("the server starts");
    harness
}

#[test]
fn the_wrapper_is_the_protocol_on_the_wire() {
    let message = events(&[wire::Event::Tick { now: 77 }]);
    assert_eq!(
        components::testing::encode(3, Inbound(message.clone())),
        components::testing::encode(3, message)
    );
}

#[test]
fn the_server_leaves_room_on_its_stack() {
    // The runtime keeps the handler on the 64 KiB stack (twice, while it
    // is being moved into place), and a rebuild needs two more policies'
    // worth of temporaries.
    assert!(core::mem::size_of::<SchedulerServer>() <= 8 * 1024);
}

/// Eight busy single-vCPU domains on two pCPUs, as in
/// `appliances/bench-smp.toml`, one batch of core events per 30 ms: the
/// server's next deadline is always the next accounting (quiet ticks and
/// heartbeats never wake it on their own), and each accounting turn sends
/// at most one decision per pCPU.
///
/// It is also the workload for counting a turn's instructions natively:
/// `valgrind --tool=callgrind` on this test (`--ignored` is not needed),
/// then `callgrind_annotate --inclusive=yes`, `Harness::turn` over the
/// number of turns (`TURNS`, default 300).
#[test]
fn busy_machine_wakes_the_server_once_per_accounting() {
    let mut machine = Machine::new(0, 2);
    for domain in 0..8u16 {
        machine = machine
            .domain(domain, 256, 0)
            .vcpu(vcpu(domain, 0), runnable(if domain % 2 == 0 { 0 } else { 1 }));
    }
    let shape = machine.shape();
    let mut harness = harness(1);
    machine.rebuild(&mut harness);
    let mut heads: [Option<wire::Vcpu>; 2] = [None, None];
    let mut sequences = [0u64; 2];
    let mut running: [Option<wire::Vcpu>; 2] = [None, None];
    let mut last_log = 0;
    let turns: u64 = std::env::var("TURNS")
        .ok()
        .and_then(|turns| turns.parse().ok())
        .unwrap_or(300);
    for period in 1..=turns {
        let _ = sent(&mut harness, &shape);
        let mut decisions = [0u64; 2];
        for pcpu in 0..2u8 {
            let index = usize::from(pcpu);
            let (sequence, (run, _)) = published_decision(&harness, &shape, pcpu).expect("published");
            heads[index] = run.first().copied();
            decisions[index] = sequence - sequences[index];
            sequences[index] = sequence;
        }
        assert!(decisions.iter().all(|&count| count <= 1), "period {period}: {decisions:?} decisions");
        let at = period * 30 * MS;
        let mut batch: std::vec::Vec<wire::Event> = std::vec::Vec::new();
        for pcpu in 0..2u8 {
            let index = usize::from(pcpu);
            if let Some(previous) = running[index] {
                batch.push(wire::Event::Ran { vcpu: previous, pcpu, ns: 30 * MS - 20_000 });
            }
            running[index] = heads[index];
            batch.push(wire::Event::Dispatched { pcpu, vcpu: heads[index], at: at - 30 * MS + 10_000 });
            batch.push(wire::Event::Overhead { pcpu, ns: 200_000 });
        }
        if period > 1 {
            let deadline = harness.runtime().deadline().expect("a timeout");
            assert_eq!(deadline, at, "period {period}: the server wakes before the accounting");
        }
        // The core's bookkeeping waits for the server's next turn: it is
        // logged into the publication area when the accounting's wake-up
        // comes, and no message goes with it.
        harness.platform_mut().clock = at;
        last_log = log_bookkeeping(&mut harness, last_log, &batch);
        harness.turn().expect("the server keeps running");
        assert!(!harness.publication().log_untaken(), "period {period}: the log was taken");
    }
    assert!(running.iter().all(Option::is_some), "both pCPUs run a vCPU");
    assert_eq!(harness.handler().counters().logs, turns);
    assert_eq!(harness.handler().counters().refused_events, 0);
}

/// Writes `events` into the publication area as the core's bookkeeping
/// log, after every message pushed so far; `last` is the sequence of the
/// last log written (0: none), and the new one's is returned.
fn log_bookkeeping(harness: &mut TestHarness, last: u64, events: &[wire::Event]) -> u64 {
    let after = ipc::ring::Producer::attach(harness.to_server_ring()).position();
    harness.publication().publish_log(last, after, events).expect("the last log was taken")
}

/// A log is applied where the core put it among the messages: the run time
/// of a vCPU that a message creates is refused if the log comes before
/// that message, and counted if it comes after; a log whose messages have
/// not all arrived waits for them.
#[test]
fn a_bookkeeping_log_is_applied_at_its_place_among_the_messages() {
    for log_first in [true, false] {
        let mut harness = harness(1);
        let machine = Machine::new(now(&harness), 1).domain(0, 256, 0).vcpu(vcpu(0, 0), running(0));
        let shape = machine.clone().domain(1, 256, 0).vcpu(vcpu(1, 0), runnable(0)).shape();
        machine.rebuild(&mut harness);
        let _ = sent(&mut harness, &shape);
        let ran = [wire::Event::Ran { vcpu: vcpu(1, 0), pcpu: 0, ns: 4 * MS }];
        let created = events(&[
            wire::Event::DomainCreated { domain: 1, weight: 256, cap: 0 },
            wire::Event::VcpuCreated { vcpu: vcpu(1, 0), runnable: true },
        ]);
        if log_first {
            log_bookkeeping(&mut harness, 0, &ran);
            push(&mut harness, created);
        } else {
            push(&mut harness, created);
            log_bookkeeping(&mut harness, 0, &ran);
        }
        settle(&mut harness);
        // A turn at the deadline takes a log that follows every message.
        let deadline = harness.runtime().deadline().expect("a timeout");
        harness.platform_mut().clock = deadline;
        harness.turn().expect("the server keeps running");
        assert!(!harness.publication().log_untaken(), "log first: {log_first}");
        let counters = harness.handler().counters();
        let info = harness
            .handler()
            .scheduler()
            .expect("rebuilt")
            .vcpu_info(VcpuId::new(DomainId(1), 0))
            .expect("created");
        if log_first {
            assert_eq!((counters.refused_events, info.run_time_ns), (1, 0));
        } else {
            assert_eq!((counters.refused_events, info.run_time_ns), (0, 4 * MS));
        }
    }

    // A log placed before the core's refusal of a message is taken before
    // it, and one placed after a turn's last message at that turn's end.
    let mut harness = self::harness(1);
    Machine::new(now(&harness), 1).domain(0, 256, 0).vcpu(vcpu(0, 0), running(0)).rebuild(&mut harness);
    settle(&mut harness);
    let ran = [wire::Event::Ran { vcpu: vcpu(0, 0), pcpu: 0, ns: MS }];
    let last = log_bookkeeping(&mut harness, 0, &ran);
    push(&mut harness, ToServer::Error { code: ErrorCode::OutOfRange });
    harness.turn().expect("the server keeps running");
    assert!(!harness.publication().log_untaken());
    let counters = harness.handler().counters();
    assert_eq!((counters.logs, counters.refusals, counters.refused_events), (1, 1, 0));
    push(&mut harness, events(&[]));
    log_bookkeeping(&mut harness, last, &ran);
    settle(&mut harness);
    assert!(!harness.publication().log_untaken());
    assert_eq!(harness.handler().counters().logs, 2);
    let scheduler = harness.handler().scheduler().expect("rebuilt");
    assert_eq!(scheduler.vcpu_info(VcpuId::new(DomainId(0), 0)).expect("exists").run_time_ns, 2 * MS);

    // A log placed after a message not yet in the ring is not taken.
    let mut harness = self::harness(1);
    Machine::new(now(&harness), 1).domain(0, 256, 0).vcpu(vcpu(0, 0), running(0)).rebuild(&mut harness);
    settle(&mut harness);
    let after = ipc::ring::Producer::attach(harness.to_server_ring()).position() + 1;
    let ran = [wire::Event::Ran { vcpu: vcpu(0, 0), pcpu: 0, ns: MS }];
    assert!(harness.publication().publish_log(0, after, &ran).is_some());
    let deadline = harness.runtime().deadline().expect("a timeout");
    harness.platform_mut().clock = deadline;
    harness.turn().expect("the server keeps running");
    assert!(harness.publication().log_untaken(), "its message has not come");
    push(&mut harness, events(&[]));
    settle(&mut harness);
    let deadline = harness.runtime().deadline().expect("a timeout");
    harness.platform_mut().clock = deadline;
    harness.turn().expect("the server keeps running");
    assert!(!harness.publication().log_untaken());
    assert_eq!(harness.handler().counters().logs, 1);
}

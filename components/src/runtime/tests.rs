//! The run loop against the mock core.

use std::format;
use std::string::String;
use std::vec::Vec;

use ipc::messages::test_server::{EchoPayload, ToCore, ToServer};
use ipc::messages::{DecodeError, ErrorCode, PROTOCOL_VERSION};
use ipc::ring::{PRODUCER_INDEX_OFFSET, SLOT_COUNT};
use ipc::server::syscall::NO_TIMEOUT;
use ipc::server::ServerKind;

use super::*;
use crate::testing::{Call, Harness, RawCall};

const MILLISECOND: u64 = 1_000_000;

/// A handler that records what it is called with and answers echoes.
#[derive(Debug, Default)]
struct Recorder {
    events: Vec<String>,
    /// Re-armed in `init` and `notified`.
    period: Option<u64>,
    /// `stop(5)` after answering this sequence.
    stop_after: Option<u32>,
    /// Extra messages `init` sends.
    burst: usize,
    heartbeats: u64,
    /// [`Context::consumed`] at each request.
    consumed: Vec<u32>,
    /// [`Context::consumed`] at each [`Handler::before_message`].
    before: Vec<u32>,
}

impl Handler for Recorder {
    type Inbound = ToServer;
    type Outbound = ToCore;

    fn init(&mut self, context: &mut Context<'_, ToCore>) {
        self.events.push(format!(
            "init gen {} args {}",
            context.generation(),
            context.arguments()
        ));
        let _ = context.send(ToCore::Ready);
        for count in 0..self.burst {
            let _ = context.send(ToCore::Heartbeat {
                count: count as u64,
            });
        }
        if let Some(period) = self.period {
            context.wake_after(period);
        }
    }

    fn request(&mut self, message: ToServer, context: &mut Context<'_, ToCore>) {
        self.consumed.push(context.consumed());
        match message {
            ToServer::Echo { sequence, payload } => {
                self.events.push(format!("echo {sequence}"));
                let _ = context.send(ToCore::EchoReply { sequence, payload });
                if self.stop_after == Some(sequence) {
                    context.stop(5);
                }
            }
            ToServer::Error { .. } => self.events.push(String::from("error as request")),
        }
    }

    fn before_message(&mut self, context: &mut Context<'_, ToCore>) {
        self.before.push(context.consumed());
    }

    fn notified(&mut self, context: &mut Context<'_, ToCore>) {
        self.events.push(String::from("notified"));
        self.heartbeats += 1;
        let _ = context.send(ToCore::Heartbeat {
            count: self.heartbeats,
        });
        if let Some(period) = self.period {
            context.wake_after(period);
        }
    }

    fn fault(&mut self, code: ErrorCode, _context: &mut Context<'_, ToCore>) {
        self.events.push(format!("fault {code:?}"));
    }
}

fn echo(sequence: u32) -> ToServer {
    let payload = EchoPayload::from_slice(&sequence.to_le_bytes()).unwrap();
    ToServer::Echo { sequence, payload }
}

fn reply(sequence: u32) -> ToCore {
    let payload = EchoPayload::from_slice(&sequence.to_le_bytes()).unwrap();
    ToCore::EchoReply { sequence, payload }
}

fn started(handler: Recorder, generation: u32) -> Harness<Recorder> {
    let mut harness = Harness::new(handler, generation, "mode=test");
    harness.start().unwrap();
    harness
}

#[test]
fn init_then_requests_are_dispatched_and_answered() {
    let mut harness = started(Recorder::default(), 1);
    assert_eq!(
        harness.platform().notifications(),
        0,
        "init's message goes with the first turn's syscall"
    );
    assert_eq!(harness.take_sent(), [Ok(ToCore::Ready)]);

    // Messages already queued are taken without a syscall.
    harness.push(echo(1));
    harness.push(echo(2));
    harness.turn().unwrap();
    assert_eq!(harness.take_sent(), [Ok(reply(1)), Ok(reply(2))]);
    assert_eq!(
        harness.handler().events,
        ["init gen 1 args mode=test", "echo 1", "echo 2"]
    );
    assert_eq!(
        harness.platform().calls,
        [Call::Notify],
        "messages queued, no wait: what init sent goes with one notify"
    );
    let statistics = harness.runtime().statistics();
    assert_eq!(
        (statistics.requests, statistics.sent, statistics.wakes),
        (2, 3, 1)
    );

    // With nothing queued and no timeout set, the loop waits forever.
    harness.push_after_wait(echo(3));
    harness.turn().unwrap();
    assert_eq!(harness.take_sent(), [Ok(reply(3))]);
    assert_eq!(
        harness.platform().calls[1..],
        [Call::Wait(NO_TIMEOUT)],
        "the wait delivers the replies: no notify"
    );
}

#[test]
fn replies_carry_the_instance_generation() {
    let mut harness = started(Recorder::default(), 7);
    harness.push(echo(3));
    harness.turn().unwrap();
    harness.platform_mut().drain_to_core();
    let delivered = harness.platform().delivered.clone();
    assert_eq!(delivered.len(), 2);
    for bytes in &delivered {
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert!(crate::testing::decode::<ToCore>(bytes, 7).is_ok());
        assert_eq!(
            crate::testing::decode::<ToCore>(bytes, 6),
            Err(DecodeError::StaleGeneration {
                found: 7,
                expected: 6
            })
        );
    }
    // What the core's own decoder says, too.
    let decoded = ipc::messages::decode_from_server::<ToCore>(&delivered[1], 7, &());
    assert_eq!(decoded, Ok(reply(3)));
}

#[test]
fn malformed_messages_are_skipped_logged_and_counted() {
    let mut harness = started(Recorder::default(), 2);
    harness.take_logs();
    harness.push_bytes(&[0xff, 0xff, 0xff]); // not postcard for the protocol
    harness.push_bytes(&[PROTOCOL_VERSION + 1, 2, 0]); // another version
    harness.push_with_generation(1, echo(10)); // an old generation
    harness.push_bytes(&[PROTOCOL_VERSION, 2, 0x7f]); // unknown variant
    harness.push_bytes(&[]); // empty slot
    harness.push(echo(11));
    harness.turn().unwrap();
    assert_eq!(harness.handler().events[1..], ["echo 11"]);
    // The skipped slots count among those consumed before it, and the
    // handler hears of each slot and of the drain's end.
    assert_eq!(harness.handler().consumed, [5]);
    let before = &harness.handler().before;
    assert_eq!(before[before.len() - 7..], [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(harness.runtime().statistics().malformed, 5);
    assert_eq!(harness.runtime().statistics().requests, 1);
    let logs = harness.take_logs();
    assert_eq!(logs.len(), 5, "{logs:?}");
    assert!(logs
        .iter()
        .all(|line| line.starts_with("components: skipped a message from the core: ")));
    assert!(
        logs[2].ends_with("(generation 1, expected 2)"),
        "{}",
        logs[2]
    );
    assert_eq!(harness.take_sent()[1..], [Ok(reply(11))]);
}

#[test]
fn a_slot_with_a_bad_length_is_skipped() {
    let mut harness = started(Recorder::default(), 1);
    harness.push(echo(1));
    harness.push(echo(2));
    // The first slot's length word claims more than a slot.
    harness
        .to_server_ring()
        .scribble(ipc::ring::SLOTS_OFFSET, &u64::MAX.to_le_bytes());
    harness.turn().unwrap();
    assert_eq!(harness.handler().events[1..], ["echo 2"]);
    assert_eq!(harness.runtime().statistics().malformed, 1);
}

#[test]
fn the_core_refusals_go_to_fault() {
    let mut harness = started(Recorder::default(), 1);
    harness.push(ToServer::Error {
        code: ErrorCode::Malformed,
    });
    harness.push(echo(4));
    harness.turn().unwrap();
    assert_eq!(harness.handler().events[1..], ["fault Malformed", "echo 4"]);
    assert_eq!(harness.runtime().statistics().refusals, 1);
}

#[test]
fn the_default_fault_hook_logs_the_code() {
    struct Quiet;
    impl Handler for Quiet {
        type Inbound = ToServer;
        type Outbound = ToCore;
        fn init(&mut self, _context: &mut Context<'_, ToCore>) {}
        fn request(&mut self, _message: ToServer, _context: &mut Context<'_, ToCore>) {}
    }
    let mut harness = Harness::new(Quiet, 1, "");
    harness.start().unwrap();
    harness.push(ToServer::Error {
        code: ErrorCode::StaleGeneration,
    });
    harness.turn().unwrap();
    assert_eq!(
        harness.take_logs(),
        ["components: the core refused a message: StaleGeneration"]
    );
    assert_eq!(
        harness.platform().notifications(),
        0,
        "nothing sent, nothing notified"
    );
}

#[test]
fn a_batch_is_bounded_and_the_rest_follows_after_a_yield() {
    let mut harness = started(Recorder::default(), 1);
    let total = BATCH_LIMIT as u32 * 2 + 3;
    for sequence in 0..total {
        harness.push(echo(sequence));
    }
    harness.turn().unwrap();
    assert_eq!(harness.runtime().statistics().requests, BATCH_LIMIT as u64);
    harness.turn().unwrap();
    harness.turn().unwrap();
    assert_eq!(harness.runtime().statistics().requests, u64::from(total));
    assert_eq!(
        harness.platform().calls,
        [Call::Notify, Call::Yield, Call::Yield],
        "yields between batches while messages are queued (a yield delivers too)"
    );
    let sent = harness.take_sent();
    let expected: Vec<_> = (0..total).map(|sequence| Ok(reply(sequence))).collect();
    assert_eq!(sent[1..], expected[..]);
}

#[test]
fn the_handler_timeout_reaches_wait_and_notified_follows() {
    let period = 100 * MILLISECOND;
    let mut harness = started(
        Recorder {
            period: Some(period),
            ..Recorder::default()
        },
        1,
    );
    let start = harness.platform().clock;
    assert_eq!(harness.runtime().deadline(), Some(start + period));
    harness.turn().unwrap();
    assert_eq!(harness.platform().calls[0], Call::Wait(period));
    assert_eq!(harness.handler().events[1..], ["notified"]);
    assert_eq!(
        harness.runtime().deadline(),
        Some(start + 2 * period),
        "re-armed by notified"
    );

    // Part of the period passes with a message: the next wait is only the
    // rest of it, and the message does not count as the timeout.
    harness.platform_mut().clock += 30 * MILLISECOND;
    harness.push(echo(1));
    harness.turn().unwrap();
    assert_eq!(harness.handler().events[2..], ["echo 1"]);
    harness.turn().unwrap();
    assert_eq!(harness.platform().notifications(), 1, "only the turn that found a message queued (no wait) notifies");
    let waits: Vec<_> = harness
        .platform()
        .calls
        .iter()
        .filter(|call| matches!(call, Call::Wait(_)))
        .collect();
    assert_eq!(waits, [&Call::Wait(period), &Call::Wait(70 * MILLISECOND)]);
    assert_eq!(harness.handler().events[3..], ["notified"]);
    assert_eq!(
        harness.take_sent()[1..],
        [
            Ok(ToCore::Heartbeat { count: 1 }),
            Ok(reply(1)),
            Ok(ToCore::Heartbeat { count: 2 })
        ]
    );
}

#[test]
fn an_expired_deadline_skips_the_wait() {
    let mut harness = started(
        Recorder {
            period: Some(0),
            ..Recorder::default()
        },
        1,
    );
    harness.turn().unwrap();
    assert_eq!(harness.platform().waits(), 0);
    assert_eq!(
        harness.platform().calls,
        [Call::Notify],
        "no wait to deliver init's message: a notify does"
    );
    assert_eq!(harness.handler().events[1..], ["notified"]);
}

#[test]
fn a_bare_wake_calls_notified() {
    let mut harness = started(Recorder::default(), 1);
    harness.turn().unwrap();
    assert_eq!(harness.platform().calls, [Call::Wait(NO_TIMEOUT)], "the wait delivers init's message");
    assert_eq!(harness.handler().events[1..], ["notified"]);
}

#[test]
fn stop_ends_the_loop_after_delivering_what_was_sent() {
    let mut harness = started(
        Recorder {
            stop_after: Some(2),
            ..Recorder::default()
        },
        1,
    );
    for sequence in 1..=4 {
        harness.push(echo(sequence));
    }
    assert_eq!(harness.turn(), Err(Stop::Requested { code: 5 }));
    assert_eq!(
        harness.handler().events[1..],
        ["echo 1", "echo 2"],
        "the batch stops at the request"
    );
    assert_eq!(harness.take_sent()[1..], [Ok(reply(1)), Ok(reply(2))]);
    assert_eq!(Stop::Requested { code: 5 }.exit_code(), 5);
}

#[test]
fn run_returns_the_stop() {
    let mut harness = started(
        Recorder {
            stop_after: Some(1),
            ..Recorder::default()
        },
        1,
    );
    harness.push(echo(1));
    assert_eq!(harness.runtime_mut().run(), Stop::Requested { code: 5 });
}

#[test]
fn a_full_ring_is_retried_then_the_message_is_dropped() {
    let mut harness = Harness::new(
        Recorder {
            burst: SLOT_COUNT + 1,
            ..Recorder::default()
        },
        1,
        "",
    );
    harness.platform_mut().drain_on_notify = false;
    harness.start().unwrap();
    let statistics = harness.runtime().statistics();
    assert_eq!(statistics.sent, SLOT_COUNT as u64);
    assert_eq!(
        statistics.send_failures, 2,
        "Ready and 64 heartbeats: two do not fit"
    );
    let retries = harness
        .platform()
        .calls
        .iter()
        .filter(|call| **call == Call::Wait(crate::context::SEND_RETRY_WAIT_NS))
        .count();
    assert_eq!(retries, 2 * (SEND_ATTEMPTS - 1), "each retry waits (never a bare yield)");
    assert!(!harness.platform().calls.contains(&Call::Yield));
    assert!(harness
        .take_logs()
        .iter()
        .all(|line| line.contains("dropped: Full")));

    // With a core that drains on notify, the retry succeeds.
    let mut draining = Harness::new(
        Recorder {
            burst: SLOT_COUNT + 1,
            ..Recorder::default()
        },
        1,
        "",
    );
    draining.start().unwrap();
    assert_eq!(draining.runtime().statistics().send_failures, 0);
    assert_eq!(draining.take_sent().len(), SLOT_COUNT + 2);
}

#[test]
fn a_corrupt_ring_stops_the_loop() {
    let mut harness = started(Recorder::default(), 1);
    harness
        .to_server_ring()
        .scribble(PRODUCER_INDEX_OFFSET, &1000u32.to_le_bytes());
    let stop = harness.turn().unwrap_err();
    assert!(matches!(
        stop,
        Stop::CorruptRing(RingError::CorruptIndex { producer: 1000, .. })
    ));
    assert_eq!(stop.exit_code(), crate::exit_code::CORRUPT_RING);
}

#[test]
fn raw_hatches_bypass_encoding_and_are_recorded() {
    struct Hostile;
    impl Handler for Hostile {
        type Inbound = ToServer;
        type Outbound = ToCore;
        fn init(&mut self, context: &mut Context<'_, ToCore>) {
            let mut raw = context.raw();
            raw.send_bytes(&[1, 2, 3]).unwrap();
            raw.notify();
            assert_eq!(raw.syscall(99, [1, 2, 3, 4, 5]), -7);
            assert_eq!(raw.read_probe(0x10_0000), 42);
            raw.write_probe(0x4000_0000);
            raw.spin();
        }
        fn request(&mut self, _message: ToServer, _context: &mut Context<'_, ToCore>) {}
    }
    let mut harness = Harness::new(Hostile, 1, "");
    harness.platform_mut().syscall_result = -7;
    harness.platform_mut().probe_value = 42;
    harness.start().unwrap();
    assert_eq!(harness.platform().delivered, [vec![1, 2, 3]]);
    assert_eq!(
        harness.platform().notifications(),
        1,
        "raw notify clears the pending one"
    );
    assert_eq!(
        harness.platform().raw,
        [
            RawCall::Syscall {
                number: 99,
                arguments: [1, 2, 3, 4, 5]
            },
            RawCall::Read(0x10_0000),
            RawCall::Write(0x4000_0000),
            RawCall::Spin,
        ]
    );
}

#[test]
fn context_reports_the_instance_and_logs_lines() {
    struct Introspect;
    impl Handler for Introspect {
        type Inbound = ToServer;
        type Outbound = ToCore;
        fn init(&mut self, context: &mut Context<'_, ToCore>) {
            assert_eq!(context.kind(), Some(ServerKind::Test));
            assert_eq!(context.instance().arguments, "a b");
            let now = context.now();
            context.wake_at(now + 5);
            assert_eq!(context.deadline(), Some(now + 5));
            context.cancel_wake();
            assert_eq!(context.deadline(), None);
            context.log("line\nwith a newline");
            let mut line = LogLine::new();
            line.push_str("x=").push_hex(255);
            context.log_line(&line);
            assert_eq!(context.statistics(), Statistics::default());
        }
        fn request(&mut self, _message: ToServer, _context: &mut Context<'_, ToCore>) {}
    }
    let mut harness = Harness::new(Introspect, 3, "a b");
    harness.start().unwrap();
    assert_eq!(harness.take_logs(), ["line?with a newline", "x=0xff"]);
}

#[test]
fn kinds_decode_from_the_entry_register() {
    assert_eq!(Instance::kind_from_register(0), Some(ServerKind::Scheduler));
    assert_eq!(Instance::kind_from_register(1), Some(ServerKind::Pager));
    assert_eq!(Instance::kind_from_register(2), Some(ServerKind::Test));
    assert_eq!(Instance::kind_from_register(3), None);
    assert_eq!(Instance::kind_from_register(u64::MAX), None);
}

#[test]
fn the_device_grant_is_asked_once_and_kept() {
    struct DeviceUser {
        results: Vec<Result<u32, crate::DeviceError>>,
    }
    impl Handler for DeviceUser {
        type Inbound = ToServer;
        type Outbound = ToCore;
        fn init(&mut self, context: &mut Context<'_, ToCore>) {
            let read = context.device().and_then(|mut device| device.read32(0));
            self.results.push(read);
        }
        fn request(&mut self, _message: ToServer, context: &mut Context<'_, ToCore>) {
            let read = context.device().and_then(|mut device| {
                device.write32(0x70, 0xf)?;
                device.read32(0x70)
            });
            self.results.push(read);
        }
    }
    // No device: NoDevice, and it stays so.
    let mut bare = Harness::new(DeviceUser { results: Vec::new() }, 1, "");
    bare.start().unwrap();
    assert_eq!(bare.handler().results, [Err(crate::DeviceError::NoDevice)]);

    let mut harness = Harness::new(DeviceUser { results: Vec::new() }, 1, "");
    let device = crate::testing::MockDevice::new(1, 0x1000);
    device.set_register(0, 0x7472_6976);
    harness.platform_mut().device = Some(device);
    harness.start().unwrap();
    // Take the device away: the instance keeps the grant it was given.
    let device = harness.platform_mut().device.take();
    harness.push(ToServer::Echo { sequence: 1, payload: EchoPayload::new() });
    harness.platform_mut().device = device;
    harness.turn().unwrap();
    assert_eq!(harness.handler().results, [Ok(0x7472_6976), Ok(0xf)]);
}

#[test]
fn poll_after_always_waits_even_when_the_time_has_passed() {
    struct Poller;
    impl Handler for Poller {
        type Inbound = ToServer;
        type Outbound = ToCore;
        fn init(&mut self, context: &mut Context<'_, ToCore>) {
            context.poll_after(0);
        }
        fn request(&mut self, _message: ToServer, _context: &mut Context<'_, ToCore>) {}
        fn notified(&mut self, context: &mut Context<'_, ToCore>) {
            context.poll_after(0);
        }
    }
    let mut harness = Harness::new(Poller, 1, "");
    harness.start().unwrap();
    for _ in 0..3 {
        harness.turn().unwrap();
    }
    assert_eq!(
        harness.platform().calls,
        [Call::Wait(1), Call::Wait(1), Call::Wait(1)],
        "a poll deadline that has already passed still waits (1 ns), every time"
    );
}

#[test]
fn poll_at_waits_like_poll_after_without_reading_the_clock() {
    struct Poller {
        deadline: u64,
    }
    impl Handler for Poller {
        type Inbound = ToServer;
        type Outbound = ToCore;
        fn init(&mut self, context: &mut Context<'_, ToCore>) {
            context.poll_at(self.deadline);
        }
        fn request(&mut self, _message: ToServer, _context: &mut Context<'_, ToCore>) {}
        fn notified(&mut self, context: &mut Context<'_, ToCore>) {
            context.poll_at(self.deadline);
        }
    }
    let mut harness = Harness::new(Poller { deadline: 1_000_500 }, 1, "");
    harness.start().unwrap();
    assert_eq!(harness.platform().clock_reads, 0, "poll_at reads no clock");
    harness.turn().unwrap();
    harness.turn().unwrap();
    assert_eq!(
        harness.platform().calls,
        [Call::Wait(500), Call::Wait(1)],
        "what is left of the deadline, then at least 1 ns once it has passed"
    );
    assert_eq!(
        harness.platform().clock_reads,
        2,
        "one clock read per turn (for the wait); a wake that timed out is not checked against the clock again"
    );
}

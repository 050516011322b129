//! The test server against the components runtime's mock core.

use components::testing::{Harness, RawCall};
use components::Stop;
use ipc::messages::test_server::EchoPayload;
use ipc::messages::DecodeError;

use super::*;

const MILLISECOND: u64 = 1_000_000;

fn echo(sequence: u32) -> ToServer {
    let payload = EchoPayload::from_slice(&[sequence as u8; 16]).unwrap();
    ToServer::Echo { sequence, payload }
}

fn reply(sequence: u32) -> ToCore {
    let payload = EchoPayload::from_slice(&[sequence as u8; 16]).unwrap();
    ToCore::EchoReply { sequence, payload }
}

fn started(generation: u32, arguments: &'static str) -> Harness<TestServer> {
    let mut harness = Harness::new(TestServer::new(), generation, arguments);
    harness.start().unwrap();
    harness
}

/// Sends `count` echoes, one per turn, and returns what the turns gave.
fn echo_round_trips(harness: &mut Harness<TestServer>, count: u32) -> Result<(), Stop> {
    for sequence in 1..=count {
        harness.push(echo(sequence));
        harness.turn()?;
    }
    Ok(())
}

#[test]
fn the_phase_table() {
    assert_eq!(Mode::from_arguments(""), Mode::Echo);
    assert_eq!(Mode::from_arguments("verbose"), Mode::Echo);
    assert_eq!(Mode::from_arguments("hostile"), Mode::Hostile);
    assert_eq!(Mode::from_arguments("mode=hostile x=1"), Mode::Hostile);
    assert_eq!(Mode::from_arguments("crashloop"), Mode::CrashLoop);
    assert_eq!(Mode::from_arguments("mute"), Mode::Mute);
    assert_eq!(attack_for(Mode::CrashLoop, 1), None, "crash-loop mode exits, it does not attack");
    for generation in [0, 1, 2, 5, 6, 1000] {
        assert_eq!(attack_for(Mode::Echo, generation), None);
    }
    let hostile: Vec<_> = (1..=7)
        .map(|generation| attack_for(Mode::Hostile, generation))
        .collect();
    assert_eq!(
        hostile,
        [
            Some(Attack::ReadCoreMemory),
            Some(Attack::WriteReadOnlyText),
            Some(Attack::SendMalformed),
            Some(Attack::InvalidSyscalls),
            Some(Attack::SpinWithoutYielding),
            Some(Attack::YieldWithoutReading),
            None,
        ]
    );
    assert_eq!(attack_for(Mode::Hostile, u32::MAX), None);
    assert_eq!(attack_for(Mode::Hostile, 0), None);
}

#[test]
fn announcements_match_the_constants() {
    assert!(Attack::ReadCoreMemory.announcement().ends_with("0x100000"));
    assert_eq!(CORE_MEMORY_ADDRESS, 0x100000);
    assert!(Attack::WriteReadOnlyText
        .announcement()
        .ends_with("0x40000000"));
    assert_eq!(TEXT_ADDRESS, 0x4000_0000);
    assert!(Attack::SendMalformed
        .announcement()
        .contains(&MALFORMED_BURST.to_string()));
    assert!(Attack::InvalidSyscalls
        .announcement()
        .ends_with(&INVALID_SYSCALL.to_string()));
}

#[test]
fn echo_mode_announces_itself_echoes_and_beats() {
    let mut harness = started(1, "");
    assert_eq!(
        harness.take_logs(),
        ["test-server: gen 1 started, echo mode"]
    );
    assert_eq!(harness.take_sent(), [Ok(ToCore::Ready)]);

    harness.push(echo(1));
    harness.push(echo(2));
    harness.turn().unwrap();
    assert_eq!(harness.take_sent(), [Ok(reply(1)), Ok(reply(2))]);

    // Three heartbeat periods pass without messages.
    for count in 1..=3 {
        harness.turn().unwrap();
        assert_eq!(harness.take_sent(), [Ok(ToCore::Heartbeat { count })]);
    }
    assert_eq!(
        harness
            .platform()
            .calls
            .iter()
            .filter(|call| **call == components::testing::Call::Wait(100 * MILLISECOND))
            .count(),
        3,
        "each heartbeat is a 100 ms wait: {:?}",
        harness.platform().calls
    );
    // Many echoes later, still no misbehaviour.
    echo_round_trips(&mut harness, 20).unwrap();
    assert!(harness.platform().raw.is_empty());
    assert_eq!(harness.handler().echoes(), 22);
    assert!(harness.take_logs().is_empty());
}

#[test]
fn heartbeats_keep_their_period_while_echoes_arrive() {
    let mut harness = started(1, "");
    harness.take_sent();
    let start = harness.platform().clock;
    harness.platform_mut().clock = start + 60 * MILLISECOND;
    harness.push(echo(1));
    harness.turn().unwrap();
    harness.turn().unwrap();
    assert_eq!(
        harness.take_sent(),
        [Ok(reply(1)), Ok(ToCore::Heartbeat { count: 1 })]
    );
    assert_eq!(harness.platform().clock, start + 100 * MILLISECOND);
}

#[test]
fn refusals_from_the_core_are_logged() {
    let mut harness = started(2, "");
    harness.take_logs();
    harness.push(ToServer::Error {
        code: ErrorCode::OutOfRange,
    });
    harness.turn().unwrap();
    assert_eq!(
        harness.take_logs(),
        ["test-server: gen 2: the core refused a message: OutOfRange"]
    );
}

/// Runs a hostile generation up to its attempt: it answers echoes and
/// sends heartbeats (behaving) until the last heartbeat before the attack,
/// which follows in the same wake. Returns the log lines from the attempt
/// on and the stop.
fn hostile_attempt(generation: u32) -> (Harness<TestServer>, Vec<String>, Stop) {
    let mut harness = started(generation, "hostile");
    assert_eq!(
        harness.take_logs(),
        [format!(
            "test-server: gen {generation} started, hostile mode"
        )]
    );
    let mut expected = vec![Ok(ToCore::Ready)];
    for count in 1..HEARTBEATS_BEFORE_ATTACK {
        echo_round_trips(&mut harness, 2).unwrap();
        harness.turn().unwrap();
        expected.extend([Ok(reply(1)), Ok(reply(2)), Ok(ToCore::Heartbeat { count })]);
    }
    assert!(
        harness.platform().raw.is_empty(),
        "behaves until the last heartbeat"
    );
    let stop = harness.turn().unwrap_err();
    expected.push(Ok(ToCore::Heartbeat {
        count: HEARTBEATS_BEFORE_ATTACK,
    }));
    let logs = harness.take_logs();
    // Every reply and heartbeat reached the core before the attempt.
    let delivered = harness
        .platform_mut()
        .delivered
        .drain(..)
        .collect::<Vec<_>>();
    let decoded: Vec<_> = delivered
        .iter()
        .take(expected.len())
        .map(|bytes| messages::decode_from_server::<ToCore>(bytes, generation, &()))
        .collect();
    assert_eq!(decoded, expected);
    harness.platform_mut().delivered = delivered[expected.len()..].to_vec();
    (harness, logs, stop)
}

#[test]
fn generation_1_reads_core_memory() {
    let (harness, logs, stop) = hostile_attempt(1);
    assert_eq!(logs[0], "hostile: gen 1: reading core memory at 0x100000");
    assert_eq!(harness.platform().raw, [RawCall::Read(0x10_0000)]);
    assert_eq!(
        logs[1],
        "hostile: gen 1: survived: read core memory, got 0x0"
    );
    assert_eq!(
        stop,
        Stop::Requested {
            code: SURVIVED_EXIT_CODE
        }
    );
}

#[test]
fn generation_2_writes_its_read_only_text() {
    let (harness, logs, stop) = hostile_attempt(2);
    assert_eq!(
        logs[0],
        "hostile: gen 2: writing its read-only text at 0x40000000"
    );
    assert_eq!(harness.platform().raw, [RawCall::Write(0x4000_0000)]);
    assert_eq!(
        logs[1],
        "hostile: gen 2: survived: wrote its read-only text"
    );
    assert_eq!(
        stop,
        Stop::Requested {
            code: SURVIVED_EXIT_CODE
        }
    );
}

#[test]
fn generation_3_sends_malformed_postcard_the_core_refuses() {
    let (mut harness, logs, stop) = hostile_attempt(3);
    assert_eq!(logs[0], "hostile: gen 3: sending 20 malformed messages");
    assert_eq!(
        logs[1],
        "hostile: gen 3: survived: sent 20 malformed messages"
    );
    assert_eq!(
        stop,
        Stop::Requested {
            code: SURVIVED_EXIT_CODE
        }
    );
    let delivered = harness.platform().delivered.clone();
    assert_eq!(delivered.len(), MALFORMED_BURST as usize);
    for bytes in &delivered {
        // The core's own decoder refuses every one as malformed, with the
        // right version and generation.
        let decoded = messages::decode_from_server::<ToCore>(bytes, 3, &());
        assert_eq!(decoded, Err(DecodeError::Malformed), "{bytes:x?}");
    }
    // The two echo turns of each period but the last find their message
    // queued and deliver what the turn before sent with a notify (the
    // heartbeat turns wait, which delivers without one); the flush before
    // the attempt; then one per malformed message.
    let behaving = 2 * (HEARTBEATS_BEFORE_ATTACK as usize - 1) + 1;
    assert_eq!(harness.platform().notifications(), behaving + 20);
    assert_eq!(
        harness.platform().raw,
        [RawCall::Syscall {
            number: syscall::YIELD,
            arguments: [0; 5]
        }]
    );
    assert!(harness.take_sent().iter().all(Result::is_err));
}

#[test]
fn malformed_messages_rotate_through_three_faults() {
    for generation in [1, 127, 128, u32::MAX] {
        for index in 0..6 {
            let bytes = malformed_message(generation, index);
            assert_eq!(bytes[0], messages::PROTOCOL_VERSION);
            assert_eq!(
                messages::decode_from_server::<ToCore>(&bytes, generation, &()),
                Err(DecodeError::Malformed)
            );
        }
    }
    assert_ne!(malformed_message(1, 0), malformed_message(1, 1));
    assert_ne!(malformed_message(1, 1), malformed_message(1, 2));
}

#[test]
fn generation_4_makes_invalid_syscalls() {
    let (harness, logs, stop) = hostile_attempt(4);
    assert_eq!(logs[0], "hostile: gen 4: making invalid syscall 99");
    assert_eq!(
        harness.platform().raw,
        [
            RawCall::Syscall {
                number: 99,
                arguments: [0; 5]
            },
            RawCall::Syscall {
                number: syscall::LOG,
                arguments: [0x10_0000, 16, 0, 0, 0]
            },
        ]
    );
    assert_eq!(
        logs[1],
        "hostile: gen 4: syscall 99 returned 0; logging from core memory at 0x100000"
    );
    assert_eq!(
        logs[2],
        "hostile: gen 4: survived: invalid syscall 99 and a log from core memory"
    );
    assert_eq!(
        stop,
        Stop::Requested {
            code: SURVIVED_EXIT_CODE
        }
    );
}

#[test]
fn generation_5_spins() {
    let (harness, logs, stop) = hostile_attempt(5);
    assert_eq!(logs[0], "hostile: gen 5: looping forever without yielding");
    assert_eq!(harness.platform().raw, [RawCall::Spin]);
    assert_eq!(logs[1], "hostile: gen 5: survived: looped without yielding");
    assert_eq!(
        stop,
        Stop::Requested {
            code: SURVIVED_EXIT_CODE
        }
    );
}

#[test]
fn generation_7_and_later_behave() {
    for generation in [7, 8, 50] {
        let mut harness = started(generation, "hostile");
        assert_eq!(
            harness.take_logs(),
            [
                format!("test-server: gen {generation} started, hostile mode"),
                format!("hostile: gen {generation}: behaving from now on"),
            ]
        );
        echo_round_trips(&mut harness, 10).unwrap();
        for _ in 0..10 {
            harness.turn().unwrap();
        }
        assert!(harness.platform().raw.is_empty());
        assert!(harness.take_logs().is_empty());
        assert_eq!(harness.handler().heartbeats(), 10);
    }
}

#[test]
fn a_hostile_generation_attacks_after_its_heartbeats_even_without_echoes() {
    let mut harness = started(1, "hostile");
    for _ in 1..HEARTBEATS_BEFORE_ATTACK {
        harness.turn().unwrap();
    }
    assert!(harness.platform().raw.is_empty());
    assert_eq!(harness.handler().heartbeats(), HEARTBEATS_BEFORE_ATTACK - 1);
    assert_eq!(
        harness.turn(),
        Err(Stop::Requested {
            code: SURVIVED_EXIT_CODE
        })
    );
    assert_eq!(harness.platform().raw, [RawCall::Read(CORE_MEMORY_ADDRESS)]);
    assert_eq!(harness.handler().heartbeats(), HEARTBEATS_BEFORE_ATTACK);
}

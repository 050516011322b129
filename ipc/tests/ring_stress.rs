//! The ring between two real threads: everything arrives, in order, intact.
// `loom` is set only by the loom run; the workspace does not declare it.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use ipc::messages::test_server::{EchoPayload, ToCore, ToServer};
use ipc::messages::{decode_from_core, decode_from_server, encode, Envelope};
use ipc::ring::{Consumer, Producer, RingError, RingMemory, SLOT_PAYLOAD};

/// Messages per stress run (fewer under Miri, which interprets every step).
const MESSAGES: u32 = if cfg!(miri) { 300 } else { 100_000 };

fn message(sequence: u32, buffer: &mut [u8; SLOT_PAYLOAD]) -> usize {
    let length = 4 + (sequence as usize * 13) % (SLOT_PAYLOAD - 3);
    buffer[..4].copy_from_slice(&sequence.to_le_bytes());
    for (index, byte) in buffer[4..length].iter_mut().enumerate() {
        *byte = (sequence as usize).wrapping_add(index) as u8;
    }
    length
}

/// Set when a thread of the test panics, so its peer stops waiting for it
/// instead of spinning forever.
struct Abandoned(AtomicBool);

impl Abandoned {
    fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    /// Marks the test abandoned if the calling thread unwinds before `guard`
    /// is dropped.
    fn guard(&self) -> impl Drop + '_ {
        struct Guard<'a>(&'a AtomicBool);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if thread::panicking() {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
        }
        Guard(&self.0)
    }
}

fn backoff(spins: &mut u32, abandoned: &Abandoned) {
    assert!(
        !abandoned.0.load(Ordering::Relaxed),
        "the other thread failed"
    );
    *spins += 1;
    if spins.is_multiple_of(64) {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn stress(start: u32) {
    let ring = Box::new(RingMemory::new());
    ring.reset_at(start);
    let abandoned = Abandoned::new();
    thread::scope(|scope| {
        scope.spawn(|| {
            let _guard = abandoned.guard();
            let mut producer = Producer::attach(&ring);
            let mut buffer = [0; SLOT_PAYLOAD];
            let mut spins = 0;
            for sequence in 0..MESSAGES {
                let length = message(sequence, &mut buffer);
                loop {
                    match producer.try_send(&buffer[..length]) {
                        Ok(()) => break,
                        Err(RingError::Full) => backoff(&mut spins, &abandoned),
                        Err(error) => panic!("send {sequence}: {error:?}"),
                    }
                }
            }
        });
        let _guard = abandoned.guard();
        let mut consumer = Consumer::attach(&ring);
        let mut expected = [0; SLOT_PAYLOAD];
        let mut received = 0;
        let mut spins = 0;
        while received < MESSAGES {
            let drained = consumer
                .drain(16, |received_message| {
                    let received_message =
                        received_message.expect("an honest producer writes valid lengths");
                    let length = message(received, &mut expected);
                    assert_eq!(received_message, &expected[..length], "message {received}");
                    received += 1;
                    std::ops::ControlFlow::Continue(())
                })
                .expect("an honest producer keeps its index in range");
            if drained == 0 {
                backoff(&mut spins, &abandoned);
            }
        }
        assert_eq!(consumer.pending(), Ok(0));
    });
}

#[test]
fn messages_arrive_in_order() {
    stress(0);
}

#[test]
fn messages_arrive_in_order_across_the_index_wrap() {
    stress(u32::MAX - MESSAGES / 2);
}

/// The test protocol end to end: a "core" thread sends echo requests, a
/// "server" thread answers, the core checks each reply through its decode path.
#[test]
fn echo_round_trips_between_threads() {
    const GENERATION: u32 = 2;
    const ROUNDS: u32 = if cfg!(miri) { 100 } else { 20_000 };
    let to_server = Box::new(RingMemory::new());
    let to_core = Box::new(RingMemory::new());
    let abandoned = Abandoned::new();
    thread::scope(|scope| {
        scope.spawn(|| {
            let _guard = abandoned.guard();
            let mut requests = Consumer::attach(&to_server);
            let mut replies = Producer::attach(&to_core);
            let mut buffer = [0; SLOT_PAYLOAD];
            let mut out = [0; SLOT_PAYLOAD];
            let mut answered = 0;
            let mut spins = 0;
            while answered < ROUNDS {
                let Some(length) = requests.try_recv(&mut buffer).unwrap() else {
                    backoff(&mut spins, &abandoned);
                    continue;
                };
                let ToServer::Echo { sequence, payload } =
                    decode_from_core::<ToServer>(&buffer[..length], GENERATION).unwrap()
                else {
                    panic!("only echo requests are sent");
                };
                let reply = Envelope::new(GENERATION, ToCore::EchoReply { sequence, payload });
                let length = encode(&reply, &mut out).unwrap();
                while replies.try_send(&out[..length]) == Err(RingError::Full) {
                    backoff(&mut spins, &abandoned);
                }
                answered += 1;
            }
        });
        let _guard = abandoned.guard();
        let mut requests = Producer::attach(&to_server);
        let mut replies = Consumer::attach(&to_core);
        let mut out = [0; SLOT_PAYLOAD];
        let mut buffer = [0; SLOT_PAYLOAD];
        let payload = |sequence: u32| {
            EchoPayload::from_slice(&sequence.to_be_bytes().repeat((sequence % 9) as usize))
                .unwrap()
        };
        let (mut sent, mut checked, mut spins) = (0, 0, 0);
        while checked < ROUNDS {
            if sent < ROUNDS {
                let request = Envelope::new(
                    GENERATION,
                    ToServer::Echo {
                        sequence: sent,
                        payload: payload(sent),
                    },
                );
                let length = encode(&request, &mut out).unwrap();
                match requests.try_send(&out[..length]) {
                    Ok(()) => sent += 1,
                    Err(RingError::Full) => {}
                    Err(error) => panic!("{error:?}"),
                }
            }
            match replies.try_recv(&mut buffer).unwrap() {
                Some(length) => {
                    let reply =
                        decode_from_server::<ToCore>(&buffer[..length], GENERATION, &()).unwrap();
                    assert_eq!(
                        reply,
                        ToCore::EchoReply {
                            sequence: checked,
                            payload: payload(checked)
                        }
                    );
                    checked += 1;
                }
                None => backoff(&mut spins, &abandoned),
            }
        }
    });
}

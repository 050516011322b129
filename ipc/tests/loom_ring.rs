//! The ring under loom: every interleaving (and every stale read) the C++11
//! memory model allows, with a two-slot ring so that three messages already
//! reuse a slot. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p ipc --release --test loom_ring`
//! (`LOOM_MAX_PREEMPTIONS=N` to search deeper).
//!
//! Weakening the producer's `Release` publish (or the consumer's `Acquire`)
//! makes these tests fail, and so does Miri on `tests/ring_stress.rs`.
//! Neither loom nor Miri models load buffering (a load reading a store that
//! comes later in the other thread), so neither can see the other pair (the
//! consumer's `Release` of its index, the producer's `Acquire` of it) go
//! missing; that half rests on the argument in `ring.rs` (x86-64 never
//! reorders a load with a later store, so it holds on the hardware anyway).
// `loom` is set only by the loom run; the workspace does not declare it.
#![cfg(loom)]

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipc::ring::{
    Consumer, Producer, RingError, RingMemory, PRODUCER_INDEX_OFFSET, SLOTS_OFFSET, SLOT_COUNT,
    SLOT_PAYLOAD,
};
use loom::sync::Arc;
use loom::thread;

/// Messages per model run: more than the slots, so the producer waits on the
/// consumer's index and overwrites consumed slots.
const MESSAGES: u8 = 3;

fn message(sequence: u8) -> [u8; 9] {
    // Nine bytes: two payload words, so a torn copy would show.
    [sequence.wrapping_mul(17).wrapping_add(1); 9]
}

/// Explores `body` with at most four preemptions per execution (unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise) and reports how many executions
/// that took.
fn model(name: &str, body: impl Fn() + Sync + Send + 'static) {
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&executions);
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = builder.preemption_bound.or(Some(4));
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        body();
    });
    eprintln!("{name}: {} executions", executions.load(Ordering::Relaxed));
}

fn spawn_producer(ring: &Arc<RingMemory>) -> thread::JoinHandle<()> {
    let ring = Arc::clone(ring);
    thread::spawn(move || {
        let mut producer = Producer::attach(&ring);
        let mut sequence = 0;
        while sequence < MESSAGES {
            match producer.try_send(&message(sequence)) {
                Ok(()) => sequence += 1,
                Err(RingError::Full) => thread::yield_now(),
                Err(error) => panic!("{error:?}"),
            }
        }
    })
}

#[test]
fn try_recv_sees_every_message_in_order_and_whole() {
    assert_eq!(SLOT_COUNT, 2);
    model("try_recv", || {
        let ring = Arc::new(RingMemory::new());
        let producer = spawn_producer(&ring);
        let mut consumer = Consumer::attach(&ring);
        let mut buffer = [0; SLOT_PAYLOAD];
        let mut expected = 0;
        while expected < MESSAGES {
            match consumer.try_recv(&mut buffer) {
                Ok(Some(length)) => {
                    assert_eq!(&buffer[..length], &message(expected));
                    expected += 1;
                }
                Ok(None) => thread::yield_now(),
                Err(error) => panic!("{error:?}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(consumer.pending(), Ok(0));
    });
}

#[test]
fn drain_sees_every_message_in_order_and_whole() {
    model("drain", || {
        let ring = Arc::new(RingMemory::new());
        let producer = spawn_producer(&ring);
        let mut consumer = Consumer::attach(&ring);
        let mut expected = 0;
        while expected < MESSAGES {
            let drained = consumer
                .drain(SLOT_COUNT, |received| {
                    assert_eq!(received, Ok(&message(expected)[..]));
                    expected += 1;
                    ControlFlow::Continue(())
                })
                .unwrap();
            if drained == 0 {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
    });
}

/// A hostile producer rewriting its index while the consumer reads: the
/// consumer reports errors or reads slots, and never panics or reads out of
/// bounds.
#[test]
fn hostile_producer_index_is_only_an_error() {
    model("hostile producer", || {
        let ring = Arc::new(RingMemory::new());
        let hostile = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || {
                ring.scribble(SLOTS_OFFSET, &1000u64.to_le_bytes());
                for alleged in [1u32, 7, u32::MAX] {
                    ring.scribble(PRODUCER_INDEX_OFFSET, &alleged.to_le_bytes());
                }
            })
        };
        let mut consumer = Consumer::attach(&ring);
        let mut buffer = [0; SLOT_PAYLOAD];
        for _ in 0..2 {
            match consumer.try_recv(&mut buffer) {
                Ok(None)
                | Ok(Some(0))
                | Err(RingError::CorruptIndex { .. })
                | Err(RingError::BadLength { length: 1000 }) => {}
                other => panic!("{other:?}"),
            }
        }
        hostile.join().unwrap();
    });
}

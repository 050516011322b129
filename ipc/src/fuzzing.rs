//! Fuzz entry points: the bodies of the `fuzz/` targets, one per decoder the
//! core runs on server input. They live here, as plain functions, so that a
//! host test can run them over random inputs in every `cargo test` and the
//! fuzzers (which need a nightly toolchain) only add the coverage guidance.
//!
//! Each function takes arbitrary bytes and panics only if an invariant of the
//! code under test breaks; errors from bad input are the expected outcome.

use core::ops::ControlFlow;

use crate::messages::scheduler::{self, Shape};
use crate::messages::{self, pager, test_server, DecodeError, Envelope};
use crate::publication::{PublicationArea, CREDIT_TABLE_LEN, LOG_LEN, PUBLICATION_WORDS};
use crate::ring::{
    Consumer, Producer, RingError, RingMemory, RING_LAYOUT_BYTES, SLOT_COUNT, SLOT_PAYLOAD,
};

/// The generation the fuzzed decoders expect.
pub const GENERATION: u32 = 7;

/// Decodes `data` as a test-protocol message from a server. A message that
/// decodes must re-encode within its size bound and decode back to itself.
pub fn decode_test_protocol(data: &[u8]) {
    let Ok(body) = check_decode(data) else { return };
    let mut buffer = [0; SLOT_PAYLOAD];
    let length = messages::encode(&Envelope::new(GENERATION, body.clone()), &mut buffer)
        .unwrap_or_else(|error| panic!("a decoded message must encode: {error:?}"));
    assert!(length <= messages::envelope_max_size::<test_server::ToCore>());
    assert!(length <= data.len(), "postcard's encoding is the shortest");
    assert_eq!(check_decode(&buffer[..length]), Ok(body));
}

fn check_decode(data: &[u8]) -> Result<test_server::ToCore, DecodeError> {
    messages::decode_from_server::<test_server::ToCore>(data, GENERATION, &())
}

/// The machine the scheduler decoder is fuzzed against: 4 pCPUs; domain 0
/// with 2 vCPUs, 1 with 1, 3 with 8 (domain 2 and those above 3 do not
/// exist).
pub const SCHEDULER_SHAPE: Shape = {
    let mut shape = Shape::new(4);
    shape.vcpus[0] = 2;
    shape.vcpus[1] = 1;
    shape.vcpus[3] = 8;
    shape
};

/// Decodes `data` as a scheduler-protocol message from a server, as the
/// core does (against [`SCHEDULER_SHAPE`]). A message that decodes must
/// re-encode within its size bound and decode back to itself. The same
/// bytes are also decoded as the server decodes what the core sends.
pub fn decode_scheduler_protocol(data: &[u8]) {
    let _ = messages::decode_from_core::<scheduler::ToServer>(data, GENERATION);
    let Ok(body) = check_scheduler_decode(data) else {
        return;
    };
    let mut buffer = [0; SLOT_PAYLOAD];
    let length = messages::encode(&Envelope::new(GENERATION, body.clone()), &mut buffer)
        .unwrap_or_else(|error| panic!("a decoded message must encode: {error:?}"));
    assert!(length <= messages::envelope_max_size::<scheduler::ToCore>());
    assert!(length <= data.len(), "postcard's encoding is the shortest");
    assert_eq!(check_scheduler_decode(&buffer[..length]), Ok(body));
}

/// The pager's domain count in the fuzz targets.
pub const PAGER_DOMAINS: u16 = 4;

/// The core's decode path on pager input (`decode_from_server::<pager::ToCore>`
/// with [`PAGER_DOMAINS`] domains); the server's decode of what the core
/// sends. A message that decodes must re-encode no longer and decode to itself.
pub fn decode_pager_protocol(data: &[u8]) {
    let _ = messages::decode_from_core::<pager::ToServer>(data, GENERATION);
    let context = pager::PagerContext { domains: PAGER_DOMAINS };
    let Ok(body) = messages::decode_from_server::<pager::ToCore>(data, GENERATION, &context) else {
        return;
    };
    let mut buffer = [0; SLOT_PAYLOAD];
    let length = messages::encode(&Envelope::new(GENERATION, body.clone()), &mut buffer)
        .unwrap_or_else(|error| panic!("a decoded message must encode: {error:?}"));
    assert!(length <= messages::envelope_max_size::<pager::ToCore>());
    assert!(length <= data.len(), "postcard's encoding is the shortest");
    assert_eq!(messages::decode_from_server::<pager::ToCore>(&buffer[..length], GENERATION, &context), Ok(body));
}

fn check_scheduler_decode(data: &[u8]) -> Result<scheduler::ToCore, DecodeError> {
    messages::decode_from_server::<scheduler::ToCore>(data, GENERATION, &SCHEDULER_SHAPE)
}

/// Runs the core's ends of a ring against a peer that writes arbitrary bytes
/// into the shared memory between operations. `data` is a script:
///
/// * bytes 0..4: the starting index (both indices), little-endian;
/// * then commands, each a tag byte and its operands:
///   * `0`, offset (2 bytes, LE), count (1), bytes: the peer scribbles;
///   * `1`: the core receives once and decodes what it got;
///   * `2`, limit (1): the core drains up to `limit` messages, decoding each;
///   * `3`, length (1), bytes: the core sends `length` bytes;
///   * `4`, length (1), bytes: the peer produces an honest message.
pub fn ring_consumer(data: &[u8]) {
    let Some((start, mut script)) = data.split_first_chunk::<4>() else {
        return;
    };
    let start = u32::from_le_bytes(*start);
    // The core's receiving ring (`to_core`) and sending ring (`to_server`).
    let to_core = RingMemory::new();
    let to_server = RingMemory::new();
    to_core.reset_at(start);
    to_server.reset_at(start);
    let mut consumer = Consumer::attach(&to_core);
    let mut producer = Producer::attach(&to_server);
    // The peer's honest producer shares the ring with the scribbles.
    let mut peer = Producer::attach(&to_core);
    let mut buffer = [0; SLOT_PAYLOAD];

    while let Some((&command, rest)) = script.split_first() {
        script = rest;
        match command % 5 {
            0 => {
                let Some((header, rest)) = script.split_first_chunk::<3>() else {
                    return;
                };
                let offset = usize::from(u16::from_le_bytes([header[0], header[1]]));
                let (bytes, rest) = rest.split_at(usize::from(header[2]).min(rest.len()));
                script = rest;
                // Either ring: the peer owns both mappings.
                let (ring, offset) = if offset < RING_LAYOUT_BYTES {
                    (&to_core, offset)
                } else {
                    (&to_server, offset % RING_LAYOUT_BYTES)
                };
                ring.scribble(offset, bytes);
            }
            1 => match consumer.try_recv(&mut buffer) {
                Ok(Some(length)) => {
                    assert!(length <= SLOT_PAYLOAD);
                    decode_test_protocol(&buffer[..length]);
                }
                Ok(None) => assert_eq!(consumer.pending(), Ok(0)),
                Err(RingError::BadLength { length }) => assert!(length > SLOT_PAYLOAD as u64),
                Err(RingError::CorruptIndex { .. }) => assert!(consumer.pending().is_err()),
                Err(error) => panic!("a consumer cannot fail with {error:?}"),
            },
            2 => {
                let Some((&limit, rest)) = script.split_first() else {
                    return;
                };
                script = rest;
                let limit = usize::from(limit);
                let mut handled = 0;
                let drained = consumer.drain(limit, |message| {
                    handled += 1;
                    if let Ok(message) = message {
                        assert!(message.len() <= SLOT_PAYLOAD);
                        decode_test_protocol(message);
                    }
                    ControlFlow::Continue(())
                });
                if let Ok(drained) = drained {
                    assert_eq!(drained, handled);
                    assert!(drained <= limit);
                }
            }
            command => {
                let Some((&length, rest)) = script.split_first() else {
                    return;
                };
                let (bytes, rest) = rest.split_at(usize::from(length).min(rest.len()));
                script = rest;
                let sender = if command == 3 {
                    &mut producer
                } else {
                    &mut peer
                };
                match sender.try_send(bytes) {
                    Ok(()) | Err(RingError::Full | RingError::CorruptIndex { .. }) => {}
                    Err(RingError::TooBig { length }) => assert!(length > SLOT_PAYLOAD),
                    Err(error) => {
                        panic!("a send of {} bytes cannot fail with {error:?}", bytes.len())
                    }
                }
                if let Ok(free) = sender.free_slots() {
                    assert!(free <= SLOT_COUNT);
                }
            }
        }
    }
}

/// The core's reads of a publication area a server filled with anything:
/// `data` is a script of writes, each 2 bytes of word index (LE, modulo the
/// layout) and 8 bytes of value, interleaved with honest publications
/// (a word index of `0xffff` publishes a valid credit table, `0xfffe` a
/// valid decision for pCPU `value % 8`, `0xfffd` a bookkeeping log placed
/// after `value % 4` messages). After each write the core's reads
/// ([`PublicationArea::read_credits`], [`PublicationArea::read_decision`]
/// for every pCPU, against [`SCHEDULER_SHAPE`]) must not panic, and
/// whatever they accept must be in the shape's range; nor may the
/// server's [`PublicationArea::take_log`] (a log a core scribbled on is
/// taken whole or not at all, with at most [`LOG_LEN`] events and refusals
/// between them).
pub fn publication_area(data: &[u8]) {
    let area = PublicationArea::new();
    let shape = SCHEDULER_SHAPE;
    let vcpu = |domain, index| scheduler::Vcpu::new(domain, index);
    // The sequence of the last log written, as the core keeps it.
    let mut last_log = 0;
    for chunk in data.chunks(10) {
        let Some((index, value)) = chunk.split_first_chunk::<2>() else {
            return;
        };
        let index = u16::from_le_bytes(*index);
        let mut bytes = [0; 8];
        bytes[..value.len().min(8)].copy_from_slice(&value[..value.len().min(8)]);
        let value = u64::from_le_bytes(bytes);
        match index {
            0xffff => {
                let entry = |index| scheduler::CreditEntry {
                    vcpu: vcpu(3, index),
                    credit_ns: value as i64,
                    run_time_ns: value,
                    priority: scheduler::Priority::Under,
                    parked: value % 2 == 0,
                };
                area.publish_credits(Some(value), (0..8).map(entry));
            }
            0xfffe => {
                area.publish_decision((value % 8) as u8, &[vcpu(0, 1), vcpu(3, 7)], 30_000_000);
            }
            0xfffd => {
                let events = [
                    scheduler::Event::Ran { vcpu: vcpu(3, 1), pcpu: 1, ns: value },
                    scheduler::Event::Dispatched { pcpu: 0, vcpu: None, at: value },
                    scheduler::Event::Overhead { pcpu: 1, ns: value },
                ];
                if let Some(sequence) = area.publish_log(last_log, (value % 4) as u32, &events) {
                    last_log = sequence;
                }
            }
            _ => area.scribble_word(usize::from(index) % PUBLICATION_WORDS, value),
        }
        if let Ok(Some(table)) = area.read_credits(&shape) {
            assert!(table.entries.len() <= CREDIT_TABLE_LEN);
            for (position, entry) in table.entries.iter().enumerate() {
                assert!(shape.check_vcpu(entry.vcpu, "vcpu").is_ok());
                assert!(!table.entries[..position].iter().any(|other| other.vcpu == entry.vcpu));
            }
        }
        if let Some(log) = area.take_log((value % 4) as u32) {
            assert!(log.events.len() + log.refused <= LOG_LEN);
            assert!(!area.log_untaken());
        }
        for pcpu in 0..=u8::MAX {
            if let Ok(Some(decision)) = area.read_decision(pcpu, &shape) {
                assert!(pcpu < shape.pcpus);
                assert!((scheduler::SLICE_NS_MIN..=scheduler::SLICE_NS_MAX).contains(&decision.slice_ns));
                for (position, vcpu) in decision.run.iter().enumerate() {
                    assert!(shape.check_vcpu(*vcpu, "run").is_ok());
                    assert!(!decision.run[..position].contains(vcpu));
                }
            }
        }
    }
}

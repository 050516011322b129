//! A short, deterministic run of every fuzz target's body (`ipc::fuzzing`)
//! over random and near-valid inputs, so `cargo test` exercises them; the
//! coverage-guided runs are `fuzz/run-smoke.sh`.
// `loom` is set only by the loom run; the workspace does not declare it.
#![cfg(not(loom))]

use std::time::Instant;

use ipc::fuzzing::{self, GENERATION};
use ipc::messages::test_server::{EchoPayload, ToCore};
use ipc::messages::{encode, Envelope};
use ipc::ring::SLOT_PAYLOAD;

/// xorshift64*: enough randomness for a smoke run, and reproducible.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }
}

fn valid_messages() -> Vec<Vec<u8>> {
    let payload = EchoPayload::from_slice(&[0x5a; 32]).expect("32 bytes fit");
    let bodies = [
        ToCore::Ready,
        ToCore::Heartbeat { count: 1 << 40 },
        ToCore::EchoReply {
            sequence: 300,
            payload,
        },
    ];
    bodies
        .into_iter()
        .map(|body| {
            let mut buffer = [0; SLOT_PAYLOAD];
            let length = encode(&Envelope::new(GENERATION, body), &mut buffer)
                .expect("a slot holds any message");
            buffer[..length].to_vec()
        })
        .collect()
}

const INPUTS: usize = 20_000;

#[test]
fn decode_test_protocol_survives_random_and_mutated_input() {
    let started = Instant::now();
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let seeds = valid_messages();
    for seed in &seeds {
        fuzzing::decode_test_protocol(seed);
    }
    for round in 0..INPUTS {
        let input = if round % 2 == 0 {
            let length = random.below(64);
            random.bytes(length)
        } else {
            let mut input = seeds[random.below(seeds.len())].clone();
            for _ in 0..=random.below(3) {
                let position = random.below(input.len());
                input[position] = random.next() as u8;
            }
            input.truncate(1 + random.below(input.len()));
            input
        };
        fuzzing::decode_test_protocol(&input);
    }
    eprintln!(
        "decode_test_protocol: {INPUTS} inputs in {:?}",
        started.elapsed()
    );
}

#[test]
fn ring_consumer_survives_random_scripts() {
    let started = Instant::now();
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    let seeds = valid_messages();
    for _ in 0..INPUTS / 5 {
        // A starting index, often near the u32 wrap.
        let start = if random.below(2) == 0 {
            u32::MAX - random.below(200) as u32
        } else {
            random.next() as u32
        };
        let mut script = start.to_le_bytes().to_vec();
        for _ in 0..random.below(40) {
            match random.below(6) {
                0 => {
                    // Aim most scribbles at the indices and the first slots.
                    let offset = if random.below(2) == 0 {
                        random.below(200)
                    } else {
                        random.below(40_000)
                    };
                    let count = random.below(12);
                    script.push(0);
                    script.extend_from_slice(&(offset as u16).to_le_bytes());
                    script.push(count as u8);
                    script.extend(random.bytes(count));
                }
                1 => script.push(1),
                2 => script.extend_from_slice(&[2, random.below(80) as u8]),
                kind => {
                    let message = if random.below(2) == 0 {
                        seeds[random.below(seeds.len())].clone()
                    } else {
                        let length = random.below(256);
                        random.bytes(length)
                    };
                    script.push(if kind == 3 { 3 } else { 4 });
                    script.push(message.len() as u8);
                    script.extend(message);
                }
            }
        }
        fuzzing::ring_consumer(&script);
        // The same script, truncated: the parser must stop cleanly anywhere.
        fuzzing::ring_consumer(&script[..random.below(script.len() + 1)]);
    }
    eprintln!(
        "ring_consumer: {} scripts in {:?}",
        2 * INPUTS / 5,
        started.elapsed()
    );
}

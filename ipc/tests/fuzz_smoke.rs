//! A short, deterministic run of every fuzz target's body (`ipc::fuzzing`)
//! over random and near-valid inputs, so `cargo test` exercises them; the
//! coverage-guided runs are `fuzz/run-smoke.sh`.
// `loom` is set only by the loom run; the workspace does not declare it.
#![cfg(not(loom))]

use std::time::Instant;

use ipc::fuzzing::{self, GENERATION};
use ipc::messages::scheduler;
use ipc::messages::test_server::{EchoPayload, ToCore};
use ipc::messages::{decode_from_server, encode, Envelope};
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

/// Runs `body` over the seeds, then over `INPUTS` inputs: half random bytes
/// (up to `random_length`), half seeds with a few bytes changed and cut.
fn decoder_smoke(name: &str, seed: u64, seeds: &[Vec<u8>], random_length: usize, body: fn(&[u8])) {
    let started = Instant::now();
    let mut random = Random(seed);
    for seed in seeds {
        body(seed);
    }
    for round in 0..INPUTS {
        let input = if round % 2 == 0 {
            let length = random.below(random_length);
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
        body(&input);
    }
    eprintln!("{name}: {INPUTS} inputs in {:?}", started.elapsed());
}

#[test]
fn decode_test_protocol_survives_random_and_mutated_input() {
    decoder_smoke(
        "decode_test_protocol",
        0x9e37_79b9_7f4a_7c15,
        &valid_messages(),
        64,
        fuzzing::decode_test_protocol,
    );
}

/// Valid scheduler messages (in range for [`fuzzing::SCHEDULER_SHAPE`]),
/// each variant at least once, some at their largest.
fn valid_scheduler_messages() -> Vec<Vec<u8>> {
    let vcpu = |domain, index| scheduler::Vcpu::new(domain, index);
    let bodies = [
        scheduler::ToCore::Ready,
        scheduler::ToCore::Heartbeat { count: 1 << 40 },
        scheduler::ToCore::Tickle {
            pcpu: 1,
            expected: Some(vcpu(0, 1)),
        },
        scheduler::ToCore::ControlResult {
            request: 77,
            result: Ok(scheduler::Applied::Domain {
                domain: 3,
                weight: 65_535,
                cap: 800,
            }),
        },
        scheduler::ToCore::ControlResult {
            request: 78,
            result: Err(scheduler::ControlError::Knob(
                scheduler::KnobError::RatelimitAboveTimeslice {
                    ratelimit_us: 5000,
                    timeslice_ms: 1,
                },
            )),
        },
        scheduler::ToCore::RebuildFailed {
            reason: scheduler::RebuildError::Incomplete {
                domains: 2,
                vcpus: 9,
            },
        },
    ];
    bodies
        .into_iter()
        .map(|body| {
            let mut buffer = [0; SLOT_PAYLOAD];
            let length = encode(&Envelope::new(GENERATION, body), &mut buffer)
                .expect("a slot holds any message");
            let bytes = &buffer[..length];
            let decoded = decode_from_server::<scheduler::ToCore>(
                bytes,
                GENERATION,
                &fuzzing::SCHEDULER_SHAPE,
            );
            assert!(decoded.is_ok(), "a seed must be valid: {decoded:?}");
            bytes.to_vec()
        })
        .collect()
}

#[test]
fn decode_scheduler_protocol_survives_random_and_mutated_input() {
    decoder_smoke(
        "decode_scheduler_protocol",
        0x5851_f42d_4c95_7f2d,
        &valid_scheduler_messages(),
        256,
        fuzzing::decode_scheduler_protocol,
    );
}

fn valid_pager_messages() -> Vec<Vec<u8>> {
    use ipc::messages::pager::{EvictFailure, LoadFailure, LATENCY_BUCKETS};
    use ipc::messages::{encode, pager::ToCore, Envelope};
    [
        ToCore::Ready,
        ToCore::Heartbeat { count: 7 },
        ToCore::Target { domain: 1, accepted: true, floor_pages: 512 },
        ToCore::Partition { domain: 0, slots: 4000 },
        ToCore::Nominate { domain: 0, gfn: 0x800, buffer: 5 },
        ToCore::Evict { domain: 0, gfn: 0x800, slot: 17 },
        ToCore::EvictFailed { domain: 0, gfn: 0x801, reason: EvictFailure::DeviceFull },
        ToCore::Load { domain: 0, gfn: 0x800, slot: 17, buffer: 9 },
        ToCore::LoadFailed { domain: 0, gfn: 0x802, reason: LoadFailure::BadChecksum },
        ToCore::Stats { domain: 0, free_slots: 3, evict_failures: 1, latency: [2; LATENCY_BUCKETS] },
    ]
    .into_iter()
    .filter_map(|message| {
        let mut buffer = [0u8; 256];
        let length = encode(&Envelope::new(fuzzing::GENERATION, message), &mut buffer).ok()?;
        Some(buffer[..length].to_vec())
    })
    .collect()
}

#[test]
fn decode_pager_protocol_survives_random_and_mutated_input() {
    decoder_smoke("decode_pager_protocol", 0x1234_5678_9abc_def1, &valid_pager_messages(), 64, fuzzing::decode_pager_protocol);
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

#[test]
fn publication_area_reads_survive_random_writes() {
    let started = Instant::now();
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for _ in 0..INPUTS / 20 {
        let mut script = Vec::new();
        for _ in 0..random.below(40) {
            // Mostly words inside the layout, often the honest publications.
            let index: u16 = match random.below(8) {
                0 => 0xffff,
                1 => 0xfffe,
                _ => random.below(1100) as u16,
            };
            script.extend_from_slice(&index.to_le_bytes());
            let value = match random.below(4) {
                0 => random.next() % 16,
                1 => random.next() % (1 << 26),
                _ => random.next(),
            };
            script.extend_from_slice(&value.to_le_bytes());
        }
        fuzzing::publication_area(&script);
    }
    eprintln!("publication_area: {} scripts in {:?}", INPUTS / 20, started.elapsed());
}

//! Host-side fuzzing of the whole APIC access path
//! (`hypervisor_core::apic_access`): fetch, decode, the register access on
//! the virtual APIC, then interrupt delivery, HLT and IPIs, over random and
//! mutated inputs from a deterministic generator, so `cargo test` holds the
//! path to "total, never panics". The body is
//! [`apic_access::fuzz_mmio_access`]; `fuzz/fuzz_targets/apic_mmio.rs` gives
//! the same body to libFuzzer.

use std::time::Instant;

use hypervisor_core::apic_access::{self, Injection, Readiness};
use hypervisor_core::lapic::{offset, Lapic};

/// Inputs per run: enough to reach every decoder path many times, and a
/// fraction of a second in a debug build.
const INPUTS: usize = 200_000;

/// xorshift64*: fixed seed, same inputs on every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }
}

/// Instructions a guest uses on the APIC (the MOV forms of
/// `instruction`'s table), each as a control header of offset, flags and
/// mode followed by its bytes; the mutator starts from these.
fn seeds() -> Vec<Vec<u8>> {
    let with = |offset: u16, flags: u8, mode: u8, code: &[u8]| {
        let mut input = offset.to_le_bytes().to_vec();
        input.extend([flags, mode]);
        input.extend_from_slice(code);
        input
    };
    vec![
        with(0xf0, 0x09, 0, &[0xc7, 0x00, 0xff, 0x01, 0x00, 0x00]), // mov dword [rax], 0x1ff
        with(0x320, 0x09, 0, &[0x89, 0x10]),                        // mov [rax], edx
        with(0x380, 0x09, 0, &[0xc7, 0x40, 0x10, 0x10, 0x27, 0x00, 0x00]), // mov dword [rax+0x10], 10000
        with(0x300, 0x09, 0, &[0xc7, 0x00, 0x31, 0x00, 0x04, 0x00]),       // ICR: self-IPI 0x31
        with(0x300, 0x09, 0, &[0xc7, 0x00, 0x32, 0x00, 0x0c, 0x00]),       // ICR: all-but-self
        with(0xb0, 0x09, 0, &[0x89, 0x08]),                                // EOI
        with(0x80, 0x09, 1, &[0x89, 0x0d, 0x80, 0x00, 0xe0, 0xfe]), // mov [0xfee00080], ecx (32-bit)
        with(0x390, 0x08, 0, &[0x8b, 0x00]),                        // mov eax, [rax]
        with(0x392, 0x08, 0, &[0x0f, 0xb7, 0x00]),                  // movzx eax, word [rax]
        with(0x20, 0x08, 0, &[0x48, 0x63, 0x00]),                   // movsxd rax, dword [rax]
        with(0x30, 0x00, 1, &[0xa1, 0x30, 0x00, 0xe0, 0xfe]),       // mov eax, [moffs32]
        with(
            0x200,
            0x00,
            0,
            &[0x48, 0x8b, 0x04, 0x25, 0x00, 0x02, 0xe0, 0xfe],
        ), // mov rax, [disp32]
    ]
}

fn mutate(random: &mut Random, mut input: Vec<u8>) -> Vec<u8> {
    for _ in 0..=random.below(3) {
        match random.below(6) {
            0 if !input.is_empty() => {
                let at = random.below(input.len());
                input[at] ^= 1 << random.below(8);
            }
            1 if !input.is_empty() => {
                let at = random.below(input.len());
                input[at] = random.next() as u8;
            }
            2 if input.len() > 4 => {
                const PREFIXES: [u8; 10] =
                    [0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x65, 0x40, 0x48, 0x4c];
                input.insert(4, PREFIXES[random.below(PREFIXES.len())]);
            }
            3 => input.truncate(random.below(input.len() + 1)),
            4 if input.len() > 1 => {
                // Another register offset.
                let offset = ((random.below(0x40) as u16) << 4) | random.below(4) as u16;
                input[..2].copy_from_slice(&offset.to_le_bytes());
            }
            _ => {
                let extra = random.below(4);
                input.extend(random.bytes(extra));
            }
        }
    }
    input
}

#[test]
fn apic_access_path_survives_random_and_mutated_input() {
    let started = Instant::now();
    let seeds = seeds();
    let mut random = Random(0x5eed_a91c_0ff1_ce00);
    for seed in &seeds {
        assert!(
            apic_access::fuzz_mmio_access(seed),
            "seed {seed:02x?} not emulated"
        );
    }
    let mut emulated = 0usize;
    for round in 0..INPUTS {
        let input = if round % 3 == 0 {
            let length = random.below(24);
            random.bytes(length)
        } else {
            let seed = seeds[random.below(seeds.len())].clone();
            mutate(&mut random, seed)
        };
        emulated += usize::from(apic_access::fuzz_mmio_access(&input));
    }
    // The mutations keep many inputs valid, so the emulation paths run too.
    assert!(
        emulated > INPUTS / 10,
        "only {emulated} of {INPUTS} inputs emulated"
    );
    eprintln!(
        "{INPUTS} inputs, {emulated} emulated, in {:?}",
        started.elapsed()
    );
}

/// A guest's whole timer sequence through the fuzzed path, then random
/// register writes between entries: the entry never injects a vector the
/// APIC did not move to service, and never injects while the guest cannot
/// take it.
#[test]
fn random_register_traffic_between_entries_keeps_delivery_sound() {
    let mut random = Random(0x0a91_c0de);
    let tsc_hz = core::num::NonZeroU64::new(2_000_000_000).unwrap();
    let mut apic = Lapic::new(0, tsc_hz);
    let _ = apic.write(offset::SPURIOUS_VECTOR, 0x1ff, 0);
    let mut now = 0u64;
    let mut injected = 0;
    for _ in 0..50_000 {
        now = now.wrapping_add(random.below(20_000) as u64);
        let register = (random.below(0x40) as u64) << 4;
        let value = match random.below(4) {
            0 => random.next() as u32,
            1 => 0x30 | ((random.below(3) as u32) << 17),
            2 => random.below(50_000) as u32,
            _ => 0,
        };
        let _ = apic.write(register, value, now);
        let readiness = Readiness {
            interrupts_enabled: random.below(4) != 0,
            interrupt_shadow: random.below(8) == 0,
            event_queued: random.below(8) == 0,
        };
        match apic_access::prepare_entry(&mut apic, now, readiness) {
            Injection::Inject { vector } => {
                assert!(readiness.can_inject());
                let in_service = apic.read(offset::IN_SERVICE + u64::from(vector >> 5) * 0x10, now);
                assert_ne!(in_service & (1 << (vector & 31)), 0);
                injected += 1;
                if random.below(2) == 0 {
                    let _ = apic.write(offset::END_OF_INTERRUPT, 0, now);
                }
            }
            Injection::RequestWindow { vector } => assert!(vector >= 16),
            Injection::Nothing => {}
        }
    }
    assert!(injected > 100, "only {injected} injections");
}

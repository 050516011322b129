//! The local APIC (xAPIC, MMIO at 0xFEE0_0000: TCG has no x2APIC) and its
//! timer, calibrated against the PIT; and the TSC frequency, measured the
//! same way.

use core::sync::atomic::{AtomicU64, Ordering};
use super::cpu;
use super::interrupts::{KICK_VECTOR, SPURIOUS_VECTOR, TIMER_VECTOR};

const BASE: u64 = 0xfee0_0000;
const REGISTER_ID: u64 = 0x20;
const REGISTER_EOI: u64 = 0xb0;
const REGISTER_SPURIOUS: u64 = 0xf0;
const REGISTER_LVT_TIMER: u64 = 0x320;
const REGISTER_TIMER_INITIAL: u64 = 0x380;
const REGISTER_TIMER_CURRENT: u64 = 0x390;
const REGISTER_TIMER_DIVIDE: u64 = 0x3e0;
const TIMER_MASKED: u32 = 1 << 16;
const DIVIDE_BY_16: u32 = 0x3;
/// The PIT's input clock, Hz.
const PIT_HZ: u64 = 1_193_182;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TIMER_HZ: AtomicU64 = AtomicU64::new(0);

fn read(register: u64) -> u32 {
    // SAFETY: the xAPIC page is identity-mapped (uncached) by the core's
    // page tables and every register offset used here is architectural.
    unsafe { core::ptr::read_volatile((BASE + register) as *const u32) }
}

fn write(register: u64, value: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((BASE + register) as *mut u32, value) }
}

/// This CPU's local APIC ID: the core's index of the CPU (QEMU numbers
/// them `0..smp`, and the core starts APs by those IDs).
pub fn id() -> u8 {
    (read(REGISTER_ID) >> 24) as u8
}

/// Signals end of interrupt.
pub fn end_of_interrupt() {
    write(REGISTER_EOI, 0);
}

/// Reads PIT channel 0's current count (latched).
fn pit_count() -> u16 {
    cpu::outb(0x43, 0x00);
    let low = cpu::inb(0x40);
    let high = cpu::inb(0x40);
    u16::from_le_bytes([low, high])
}

/// What calibration measured.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// Local APIC timer counts per second at divide-by-16.
    pub timer_hz: u64,
    /// Whether the PIT answered (else fallbacks were used).
    pub measured: bool,
}

/// Enables the local APIC, masks the legacy PICs, and measures the TSC and
/// APIC timer rates against 20 ms of PIT channel 0 (mode 2, full period).
pub fn init_and_calibrate() -> Calibration {
    // Mask both 8259 PICs: all device interrupts go through the local APIC.
    cpu::outb(0x21, 0xff);
    cpu::outb(0xa1, 0xff);
    write(REGISTER_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REGISTER_LVT_TIMER, TIMER_MASKED | u32::from(TIMER_VECTOR));
    write(REGISTER_TIMER_DIVIDE, DIVIDE_BY_16);

    // PIT channel 0, lobyte/hibyte, mode 2, reload 0 (= 65536).
    cpu::outb(0x43, 0x34);
    cpu::outb(0x40, 0);
    cpu::outb(0x40, 0);
    let target = PIT_HZ / 50; // 20 ms
    write(REGISTER_TIMER_INITIAL, u32::MAX);
    let apic_start = read(REGISTER_TIMER_CURRENT);
    let tsc_start = cpu::rdtsc();
    let mut previous = pit_count();
    let mut elapsed: u64 = 0;
    let mut polls: u64 = 0;
    while elapsed < target && polls < 50_000_000 {
        let now = pit_count();
        elapsed += u64::from(previous.wrapping_sub(now));
        previous = now;
        polls += 1;
    }
    let tsc_end = cpu::rdtsc();
    let apic_end = read(REGISTER_TIMER_CURRENT);
    write(REGISTER_TIMER_INITIAL, 0);
    // Stopped (initial count 0), so it may be unmasked now: arming it is
    // then one register write (`arm_oneshot`).
    write(REGISTER_LVT_TIMER, u32::from(TIMER_VECTOR));
    let measured = elapsed >= target;
    let calibration = if measured {
        Calibration {
            tsc_hz: (tsc_end - tsc_start) * PIT_HZ / elapsed,
            timer_hz: u64::from(apic_start - apic_end) * PIT_HZ / elapsed,
            measured,
        }
    } else {
        // QEMU's APIC timer runs at 1 GHz before the divider.
        Calibration { tsc_hz: 2_000_000_000, timer_hz: 1_000_000_000 / 16, measured }
    };
    TSC_HZ.store(calibration.tsc_hz, Ordering::Relaxed);
    TIMER_HZ.store(calibration.timer_hz, Ordering::Relaxed);
    calibration
}

/// TSC ticks per second, as calibrated.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Arms the timer to interrupt once, at TSC value `deadline` (at once if it
/// has passed). The core re-arms it at every switch point for the earliest
/// event: the end of the running slice or a sleeping vCPU's timer.
///
/// One MMIO write, the initial count: the LVT entry (one-shot, unmasked,
/// [`TIMER_VECTOR`]) was set when the timer was stopped, by
/// [`init_and_calibrate`] or [`enable_local`]. Under TCG every local APIC
/// access takes QEMU's global lock, which the other vCPU threads and the
/// I/O thread contend for (`make bench`'s time outside guests).
pub fn arm_oneshot(deadline: u64) {
    let now = cpu::rdtsc();
    let ticks = u128::from(deadline.saturating_sub(now));
    let count = ticks * u128::from(TIMER_HZ.load(Ordering::Relaxed)) / u128::from(tsc_hz().max(1));
    // One count more, so the truncations above never fire it early.
    let count = (count + 1).clamp(1, u128::from(u32::MAX)) as u32;
    write(REGISTER_TIMER_INITIAL, count);
}


const REGISTER_ICR_LOW: u64 = 0x300;
const REGISTER_ICR_HIGH: u64 = 0x310;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;

/// Sends an IPI to the local APIC `apic_id` with the ICR low word `command`
/// (delivery mode, level, vector), and waits until it has been sent.
pub fn send_ipi(apic_id: u8, command: u32) {
    write(REGISTER_ICR_HIGH, u32::from(apic_id) << 24);
    write(REGISTER_ICR_LOW, command);
    let mut spins = 0u32;
    while read(REGISTER_ICR_LOW) & ICR_DELIVERY_PENDING != 0 && spins < 1_000_000 {
        core::hint::spin_loop();
        spins += 1;
    }
}

/// Enables this CPU's local APIC (software enable, spurious vector) with
/// its timer stopped (initial count 0) and unmasked, ready for
/// [`arm_oneshot`]: what an application processor needs before it idles.
pub fn enable_local() {
    write(REGISTER_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REGISTER_LVT_TIMER, TIMER_MASKED | u32::from(TIMER_VECTOR));
    // The divider calibration measured on the bootstrap CPU.
    write(REGISTER_TIMER_DIVIDE, DIVIDE_BY_16);
    write(REGISTER_TIMER_INITIAL, 0);
    write(REGISTER_LVT_TIMER, u32::from(TIMER_VECTOR));
}

/// Interrupts CPU `apic_id` with the kick vector: a guest it runs exits, an
/// idle HLT returns, and the CPU reaches its next switch point (tickles,
/// wake-ups, TLB shootdowns). Fixed delivery, physical destination, assert.
pub fn kick(apic_id: u8) {
    send_ipi(apic_id, 0x0000_4000 | u32::from(KICK_VECTOR));
}

/// A delay on the TSC, through `embedded-hal`'s timer trait (used where the
/// hardware asks for waits, e.g. between INIT and STARTUP IPIs).
#[derive(Debug, Clone, Copy, Default)]
pub struct TscDelay;

impl embedded_hal::delay::DelayNs for TscDelay {
    fn delay_ns(&mut self, ns: u32) {
        let ticks = u64::from(ns) * tsc_hz() / 1_000_000_000;
        let start = cpu::rdtsc();
        while cpu::rdtsc().wrapping_sub(start) < ticks {
            core::hint::spin_loop();
        }
    }
}

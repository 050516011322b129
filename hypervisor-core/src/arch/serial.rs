//! The core's console: COM1 (16550 at 0x3F8) carrying a raw defmt stream,
//! decoded on the host against this image's symbols.

use core::sync::atomic::{AtomicBool, Ordering};
use super::cpu;

const COM1: u16 = 0x3f8;

/// Programs the 16550 at `base`: 115200 baud, 8N1, FIFOs on, no interrupts.
fn init_uart(base: u16) {
    cpu::outb(base + 1, 0x00);
    cpu::outb(base + 3, 0x80);
    cpu::outb(base, 0x01);
    cpu::outb(base + 1, 0x00);
    cpu::outb(base + 3, 0x03);
    cpu::outb(base + 2, 0xc7);
    cpu::outb(base + 4, 0x03);
}

/// Programs COM1.
pub fn init() {
    init_uart(COM1);
}

fn write_byte(byte: u8) {
    while cpu::inb(COM1 + 5) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    cpu::outb(COM1, byte);
}

static TAKEN: AtomicBool = AtomicBool::new(false);
static mut ENCODER: defmt::Encoder = defmt::Encoder::new();
static mut RESTORE_INTERRUPTS: bool = false;

#[defmt::global_logger]
struct SerialLogger;

// SAFETY: `acquire` disables interrupts and takes `TAKEN`, so the encoder is
// used by one context at a time (the core is single-threaded per CPU and
// only the bootstrap CPU logs); `release` gives both back.
unsafe impl defmt::Logger for SerialLogger {
    fn acquire() {
        let enabled = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        if TAKEN.swap(true, Ordering::Acquire) {
            // Re-entered (a fault while logging): the frame would be corrupt.
            super::exit_machine(ipc::exit_status::ExitStatus::CorePanic);
        }
        // SAFETY: exclusive access per the impl-level argument.
        unsafe {
            RESTORE_INTERRUPTS = enabled;
            (*(&raw mut ENCODER)).start_frame(|bytes| bytes.iter().copied().for_each(write_byte));
        }
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: exclusive access per the impl-level argument.
        let enabled = unsafe {
            (*(&raw mut ENCODER)).end_frame(|bytes| bytes.iter().copied().for_each(write_byte));
            RESTORE_INTERRUPTS
        };
        TAKEN.store(false, Ordering::Release);
        if enabled {
            cpu::enable_interrupts();
        }
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: exclusive access per the impl-level argument.
        unsafe { (*(&raw mut ENCODER)).write(bytes, |bytes| bytes.iter().copied().for_each(write_byte)) }
    }
}

/// COM2: the control channel (`hvctl` on the host, COBS-framed postcard).
pub mod control {
    use super::cpu;

    const COM2: u16 = ipc::control::COM2_PORT;

    /// Programs COM2 like COM1, polled (no interrupts).
    pub fn init() {
        super::init_uart(COM2);
    }

    /// A received byte, if one is waiting.
    pub fn read_byte() -> Option<u8> {
        (cpu::inb(COM2 + 5) & 1 != 0).then(|| cpu::inb(COM2))
    }

    /// Sends bytes, waiting for the transmitter between them.
    pub fn write(bytes: &[u8]) {
        for &byte in bytes {
            let mut spins = 0u32;
            while cpu::inb(COM2 + 5) & 0x20 == 0 && spins < 1_000_000 {
                core::hint::spin_loop();
                spins += 1;
            }
            cpu::outb(COM2, byte);
        }
    }
}

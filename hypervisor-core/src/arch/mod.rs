//! The arch layer: everything that touches hardware. Each `unsafe` block
//! says why it is sound; everything exported from here is safe to call.

pub mod boot;
pub mod cpu;
pub mod interrupts;
pub mod lapic;
pub mod memory;
pub mod serial;
pub mod smp;
pub mod svm;
pub mod user;
pub mod virtio;

use ipc::exit_status::{ExitStatus, DEBUG_EXIT_PORT};

/// Asks QEMU to exit with `status` (through isa-debug-exit), then halts in
/// case the device is absent (real hardware).
pub fn exit_machine(status: ExitStatus) -> ! {
    cpu::outb(DEBUG_EXIT_PORT, status as u8);
    loop {
        cpu::disable_interrupts();
        cpu::halt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cpu::disable_interrupts();
    defmt::error!("core panic: {}", defmt::Display2Format(info));
    exit_machine(ExitStatus::CorePanic)
}

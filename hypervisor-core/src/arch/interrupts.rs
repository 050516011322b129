//! The core's IDT: exceptions (a fault in the core is a core bug: it leaves an
//! epitaph and stops the machine), the local APIC timer tick, and the
//! spurious vector.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use ipc::exit_status::ExitStatus;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use super::{cpu, lapic};

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// Vector of spurious local APIC interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Vector of the IPI one CPU sends another to make it reach a switch point.
pub const KICK_VECTOR: u8 = 0xf0;

/// Timer interrupts per CPU (by local APIC ID).
static TICKS: [AtomicU64; super::smp::MAX_CPUS] = [const { AtomicU64::new(0) }; super::smp::MAX_CPUS];

/// CPU `cpu`'s timer interrupts since its timer started.
pub fn ticks_of(cpu: usize) -> u64 {
    TICKS.get(cpu).map_or(0, |ticks| ticks.load(Ordering::Relaxed))
}

// Stubs: push a zero error code where the CPU pushes none, push the vector,
// save the caller-saved registers and call `interrupt_dispatch(frame)`.
global_asm!(
    r#"
    .macro STUB_NOERR vector
    .balign 16
interrupt_stub_\vector:
    push 0
    push \vector
    jmp interrupt_common
    .endm
    .macro STUB_ERR vector
    .balign 16
interrupt_stub_\vector:
    push \vector
    jmp interrupt_common
    .endm

    .section .text.interrupts, "ax"
    STUB_NOERR 0
    STUB_NOERR 1
    STUB_NOERR 2
    STUB_NOERR 3
    STUB_NOERR 4
    STUB_NOERR 5
    STUB_NOERR 6
    STUB_NOERR 7
    STUB_ERR 8
    STUB_NOERR 9
    STUB_ERR 10
    STUB_ERR 11
    STUB_ERR 12
    STUB_ERR 13
    STUB_ERR 14
    STUB_NOERR 15
    STUB_NOERR 16
    STUB_ERR 17
    STUB_NOERR 18
    STUB_NOERR 19
    STUB_NOERR 20
    STUB_ERR 21
    STUB_NOERR 22
    STUB_NOERR 23
    STUB_NOERR 24
    STUB_NOERR 25
    STUB_NOERR 26
    STUB_NOERR 27
    STUB_NOERR 28
    STUB_ERR 29
    STUB_ERR 30
    STUB_NOERR 31
    STUB_NOERR 32
    STUB_NOERR 240
    STUB_NOERR 255

interrupt_common:
    /* CS of the interrupted code is at rsp+24 (vector, error code, rip, cs). */
    test qword ptr [rsp + 24], 3
    jnz user_interrupt_entry
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rdi, rsp
    cld
    call interrupt_dispatch
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq

    .section .rodata.interrupts, "a"
    .balign 8
    .global interrupt_stub_table
interrupt_stub_table:
    .quad interrupt_stub_0, interrupt_stub_1, interrupt_stub_2, interrupt_stub_3
    .quad interrupt_stub_4, interrupt_stub_5, interrupt_stub_6, interrupt_stub_7
    .quad interrupt_stub_8, interrupt_stub_9, interrupt_stub_10, interrupt_stub_11
    .quad interrupt_stub_12, interrupt_stub_13, interrupt_stub_14, interrupt_stub_15
    .quad interrupt_stub_16, interrupt_stub_17, interrupt_stub_18, interrupt_stub_19
    .quad interrupt_stub_20, interrupt_stub_21, interrupt_stub_22, interrupt_stub_23
    .quad interrupt_stub_24, interrupt_stub_25, interrupt_stub_26, interrupt_stub_27
    .quad interrupt_stub_28, interrupt_stub_29, interrupt_stub_30, interrupt_stub_31
    .quad interrupt_stub_32, interrupt_stub_240, interrupt_stub_255
"#
);

/// What the stubs leave on the stack.
#[repr(C)]
struct InterruptFrame {
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Acknowledges a device interrupt that arrived while a server ran (the
/// ring-3 path returns to the core without running the handler).
pub fn acknowledge(vector: u8) {
    if vector == TIMER_VECTOR {
        if let Some(ticks) = TICKS.get(usize::from(lapic::id())) {
            ticks.fetch_add(1, Ordering::Relaxed);
        }
        lapic::end_of_interrupt();
    } else if vector == KICK_VECTOR {
        // The kick's work is done at the switch point it forces.
        lapic::end_of_interrupt();
    }
}

#[unsafe(no_mangle)]
extern "C" fn interrupt_dispatch(frame: &InterruptFrame) {
    match frame.vector as u8 {
        vector @ (TIMER_VECTOR | KICK_VECTOR) => acknowledge(vector),
        SPURIOUS_VECTOR => {}
        vector => {
            defmt::error!(
                "core exception {=u8} error {=u64:#x} at rip {=u64:#x} rsp {=u64:#x} cr2 {=u64:#x}",
                vector,
                frame.error_code,
                frame.rip,
                frame.rsp,
                cpu::cr2()
            );
            super::exit_machine(ExitStatus::CorePanic);
        }
    }
}

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

const EMPTY_GATE: Gate =
    Gate { offset_low: 0, selector: 0, ist: 0, attributes: 0, offset_middle: 0, offset_high: 0, reserved: 0 };

static mut IDT: [Gate; 256] = [EMPTY_GATE; 256];

unsafe extern "C" {
    static interrupt_stub_table: [u64; 35];
}

/// Fills and loads the IDT. Call once per CPU after its GDT is loaded.
pub fn load_idt(kernel_code: x86_64::structures::gdt::SegmentSelector) {
    let gate = |handler: u64, ist: u8| Gate {
        offset_low: handler as u16,
        selector: kernel_code.0,
        ist,
        attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
        offset_middle: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        reserved: 0,
    };
    // SAFETY: the stub table is immutable data emitted above; the IDT static
    // is written only here, before interrupts are enabled, on one CPU.
    unsafe {
        let stubs = &*(&raw const interrupt_stub_table);
        let idt = &mut *(&raw mut IDT);
        for vector in 0..33 {
            let ist = if vector == 8 { cpu::DOUBLE_FAULT_IST as u8 + 1 } else { 0 };
            idt[vector] = gate(stubs[vector], ist);
        }
        idt[KICK_VECTOR as usize] = gate(stubs[33], 0);
        idt[SPURIOUS_VECTOR as usize] = gate(stubs[34], 0);
        let pointer = DescriptorTablePointer {
            limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
            base: VirtAddr::new((&raw const IDT) as u64),
        };
        x86_64::instructions::tables::lidt(&pointer);
    }
}

/// Loads the IDT `load_idt` built, on an application processor.
pub fn load_shared_idt() {
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: VirtAddr::new((&raw const IDT) as u64),
    };
    // SAFETY: the IDT was filled on the bootstrap CPU before any AP started
    // and is only read afterwards.
    unsafe { x86_64::instructions::tables::lidt(&pointer) };
}

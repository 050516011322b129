//! Starting the application processors (APs): INIT-SIPI-SIPI through the
//! xAPIC (TCG has no x2APIC), a real-mode trampoline copied below 1 MiB that
//! takes each AP to long mode on the core's page tables, and a per-AP stack.
//!
//! An AP that comes up loads the core's GDT and IDT, enables its local APIC
//! and SVM, says it is online and, for now, idles with interrupts off: the
//! per-pCPU run queues that give it work come next.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};
use embedded_hal::delay::DelayNs;

use super::{cpu, interrupts, lapic};

/// Where the trampoline runs (page 8: STARTUP vector 0x08).
const TRAMPOLINE: u64 = 0x8000;
/// Most CPUs the core starts.
pub const MAX_CPUS: usize = ipc::boot::MAX_CPUS as usize;
const AP_STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct Stacks([[u8; AP_STACK_SIZE]; MAX_CPUS - 1]);

static mut AP_STACKS: Stacks = Stacks([[0; AP_STACK_SIZE]; MAX_CPUS - 1]);
static ONLINE: AtomicU32 = AtomicU32::new(1);

// The trampoline has a fixed layout (`.org`), so its absolute addresses at
// 0x8000 are plain numbers: code16 at 0x00, GDT at 0x40, GDT pointer at
// 0x60, then CR3 (0x68), stack (0x70), entry (0x78), CPU index (0x80),
// code32 at 0x100, code64 at 0x180.
const SLOT_CR3: u64 = 0x68;
const SLOT_STACK: u64 = 0x70;
const SLOT_ENTRY: u64 = 0x78;
const SLOT_CPU: u64 = 0x80;

global_asm!(
    r#"
    .section .text.trampoline, "ax"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    xor ax, ax
    mov ds, ax
    lgdt [0x8060]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea
    .long 0x8100
    .word 0x08

    .org 0x40
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
    .org 0x60
    .word 31
    .long 0x8040
    .org 0x68
    .quad 0
    .quad 0
    .quad 0
    .quad 0

    .org 0x100
    .code32
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, dword ptr [0x8068]
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax
    .byte 0xea
    .long 0x8180
    .word 0x18

    .org 0x180
    .code64
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, qword ptr [0x8070]
    mov edi, dword ptr [0x8080]
    mov rax, qword ptr [0x8078]
    call rax
2:
    cli
    hlt
    jmp 2b
ap_trampoline_end:
"#
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The run-time address of a slot of the copied trampoline.
fn slot(offset: u64) -> *mut u64 {
    (TRAMPOLINE + offset) as *mut u64
}

/// Starts CPUs `1..cpus` (APIC IDs as QEMU numbers them) and returns how
/// many CPUs are online, the bootstrap one included.
pub fn start_application_processors(cpus: u8) -> u32 {
    let cpus = usize::from(cpus).min(MAX_CPUS);
    if cpus <= 1 {
        return 1;
    }
    let start = (&raw const ap_trampoline_start) as usize;
    let length = (&raw const ap_trampoline_end) as usize - start;
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    // SAFETY: page 0x8000 lies in the first MiB, which the frame allocator
    // never hands out and which is identity-mapped; nothing else uses it
    // after boot (the PVH start info, memory map and module list were read
    // before). The trampoline is shorter than a page.
    unsafe {
        assert!(length <= 4096, "trampoline larger than its page");
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, length);
        slot(SLOT_CR3).write_volatile(cr3);
        slot(SLOT_ENTRY).write_volatile(ap_entry as *const () as u64);
    }
    let mut delay = lapic::TscDelay;
    for cpu in 1..cpus {
        let before = ONLINE.load(Ordering::Acquire);
        // SAFETY: each AP gets its own stack, written here before its IPIs;
        // the trampoline's slots are read by one AP at a time (the next AP is
        // started only after this one is online or timed out).
        unsafe {
            let stacks = &raw const AP_STACKS;
            let top = (stacks as *const u8).add((cpu - 1 + 1) * AP_STACK_SIZE) as u64;
            slot(SLOT_STACK).write_volatile(top);
            slot(SLOT_CPU).write_volatile(cpu as u64);
        }
        // INIT (assert, level), then two STARTUPs with vector 0x08 (page 8).
        lapic::send_ipi(cpu as u8, 0x0000_4500);
        delay.delay_ms(10);
        for _ in 0..2 {
            lapic::send_ipi(cpu as u8, 0x0000_4600 | (TRAMPOLINE >> 12) as u32);
            delay.delay_us(200);
        }
        for _ in 0..100 {
            if ONLINE.load(Ordering::Acquire) != before {
                break;
            }
            delay.delay_ms(1);
        }
    }
    ONLINE.load(Ordering::Acquire).count_ones()
}

/// Where an AP arrives in long mode, on its own stack.
extern "C" fn ap_entry(cpu: u32) -> ! {
    cpu::load_shared_tables();
    interrupts::load_shared_idt();
    lapic::enable_local();
    let svm = cpu::cpuid(0x8000_0001, 0).ecx & (1 << 2) != 0;
    if svm {
        // SAFETY: SVM exists (checked above); setting EFER.SVME only permits
        // SVM instructions on this CPU, which nothing runs yet.
        unsafe { cpu::wrmsr(0xc000_0080, cpu::rdmsr(0xc000_0080) | (1 << 12)) };
    }
    ONLINE.fetch_or(1 << cpu, Ordering::AcqRel);
    loop {
        cpu::disable_interrupts();
        cpu::halt();
    }
}

//! Ring 3: entering a server and coming back.
//!
//! [`enter`] saves the core's callee-saved registers and stack pointer in the
//! per-CPU area, switches to the server's page table and `iretq`s into ring
//! 3 with the registers of a [`UserContext`]. The server comes back through
//! `syscall` (LSTAR) or an interrupt/exception taken in ring 3 (the shared
//! interrupt stub sees CPL 3 in the saved CS); both save the server's
//! registers into the context, switch back to the core's page table, restore
//! the core's stack and return from [`enter`]. The server's page table maps
//! the core's first 4 MiB supervisor-only, so this entry code, the per-CPU
//! area, the contexts and the stacks are reachable at the moment of the
//! switch; user code can touch none of it.

use core::arch::global_asm;
use hypervisor_core::server::UserExit;

use super::cpu;

/// User data selector (GDT index 3, RPL 3).
pub const USER_DATA_SELECTOR: u64 = 0x1b;
/// User code selector (GDT index 4, RPL 3).
pub const USER_CODE_SELECTOR: u64 = 0x23;
/// The core must fit below this, as server page tables map only this much of it.
pub const CORE_WINDOW: u64 = 4 << 20;

const MSR_EFER: u32 = 0xc000_0080;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;
const MSR_GS_BASE: u32 = 0xc000_0101;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// RFLAGS cleared on `syscall`: TF, IF, DF, IOPL, NT, AC.
const SYSCALL_FLAG_MASK: u64 = 0x4_7700;

/// A server's registers while it is not running, and how it last came back.
/// The layout is fixed: the entry and exit stubs use these offsets.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct UserContext {
    /// 0x00
    pub rax: u64,
    /// 0x08
    pub rbx: u64,
    /// 0x10
    pub rcx: u64,
    /// 0x18
    pub rdx: u64,
    /// 0x20
    pub rsi: u64,
    /// 0x28
    pub rdi: u64,
    /// 0x30
    pub rbp: u64,
    /// 0x38
    pub r8: u64,
    /// 0x40
    pub r9: u64,
    /// 0x48
    pub r10: u64,
    /// 0x50
    pub r11: u64,
    /// 0x58
    pub r12: u64,
    /// 0x60
    pub r13: u64,
    /// 0x68
    pub r14: u64,
    /// 0x70
    pub r15: u64,
    /// 0x78
    pub rip: u64,
    /// 0x80
    pub rsp: u64,
    /// 0x88
    pub rflags: u64,
    /// 0x90: the server's page table root.
    pub cr3: u64,
    /// 0x98: 0 = syscall, 1 = interrupt/exception.
    pub exit_kind: u64,
    /// 0xa0
    pub vector: u64,
    /// 0xa8
    pub error_code: u64,
    /// 0xb0
    pub fault_address: u64,
}

impl UserContext {
    /// How the server last came back, for `hypervisor_core::server::decode`.
    pub fn exit(&self) -> UserExit {
        UserExit {
            kind: self.exit_kind,
            vector: self.vector,
            error_code: self.error_code,
            fault_address: self.fault_address,
            rip: self.rip,
            number: self.rax,
            arguments: [self.rdi, self.rsi, self.rdx, self.r10, self.r8],
        }
    }
}

/// The per-CPU area `gs` points at while the core runs.
#[repr(C)]
struct PerCpu {
    /// 0x00: the core's stack pointer inside `enter`.
    resume_rsp: u64,
    /// 0x08: the context of the server running now.
    context: u64,
    /// 0x10: the server's stack pointer at `syscall`.
    scratch: u64,
    /// 0x18: the core's page table root.
    kernel_cr3: u64,
}

static mut PER_CPU: PerCpu = PerCpu { resume_rsp: 0, context: 0, scratch: 0, kernel_cr3: 0 };

global_asm!(
    r#"
    .section .text.user, "ax"
    .global user_enter
/* rdi = &mut UserContext */
user_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov gs:[0x00], rsp
    mov gs:[0x08], rdi
    mov rax, [rdi + 0x90]
    mov cr3, rax
    push {user_data}
    push qword ptr [rdi + 0x80]
    mov rax, [rdi + 0x88]
    and rax, 0xcd5
    or rax, 0x202
    push rax
    push {user_code}
    push qword ptr [rdi + 0x78]
    mov rax, [rdi + 0x00]
    mov rbx, [rdi + 0x08]
    mov rcx, [rdi + 0x10]
    mov rdx, [rdi + 0x18]
    mov rsi, [rdi + 0x20]
    mov rbp, [rdi + 0x30]
    mov r8,  [rdi + 0x38]
    mov r9,  [rdi + 0x40]
    mov r10, [rdi + 0x48]
    mov r11, [rdi + 0x50]
    mov r12, [rdi + 0x58]
    mov r13, [rdi + 0x60]
    mov r14, [rdi + 0x68]
    mov r15, [rdi + 0x70]
    mov rdi, [rdi + 0x28]
    swapgs
    iretq

    .global user_syscall_entry
user_syscall_entry:
    swapgs
    mov gs:[0x10], rsp
    mov rsp, gs:[0x08]
    mov [rsp + 0x00], rax
    mov [rsp + 0x08], rbx
    mov [rsp + 0x10], rcx
    mov [rsp + 0x18], rdx
    mov [rsp + 0x20], rsi
    mov [rsp + 0x28], rdi
    mov [rsp + 0x30], rbp
    mov [rsp + 0x38], r8
    mov [rsp + 0x40], r9
    mov [rsp + 0x48], r10
    mov [rsp + 0x50], r11
    mov [rsp + 0x58], r12
    mov [rsp + 0x60], r13
    mov [rsp + 0x68], r14
    mov [rsp + 0x70], r15
    mov [rsp + 0x78], rcx
    mov [rsp + 0x88], r11
    mov rax, gs:[0x10]
    mov [rsp + 0x80], rax
    mov qword ptr [rsp + 0x98], 0
    jmp user_return_to_core

/* Reached from interrupt_common with vector, error code and the CPU's frame
   on the stack, CPL 3 in the saved CS, user GS still loaded. */
    .global user_interrupt_entry
user_interrupt_entry:
    swapgs
    push rax
    mov rax, gs:[0x08]
    mov [rax + 0x08], rbx
    mov [rax + 0x10], rcx
    mov [rax + 0x18], rdx
    mov [rax + 0x20], rsi
    mov [rax + 0x28], rdi
    mov [rax + 0x30], rbp
    mov [rax + 0x38], r8
    mov [rax + 0x40], r9
    mov [rax + 0x48], r10
    mov [rax + 0x50], r11
    mov [rax + 0x58], r12
    mov [rax + 0x60], r13
    mov [rax + 0x68], r14
    mov [rax + 0x70], r15
    pop rbx
    mov [rax + 0x00], rbx
    mov rbx, [rsp]
    mov [rax + 0xa0], rbx
    mov rbx, [rsp + 8]
    mov [rax + 0xa8], rbx
    mov rbx, [rsp + 16]
    mov [rax + 0x78], rbx
    mov rbx, [rsp + 32]
    mov [rax + 0x88], rbx
    mov rbx, [rsp + 40]
    mov [rax + 0x80], rbx
    mov rbx, cr2
    mov [rax + 0xb0], rbx
    mov qword ptr [rax + 0x98], 1

user_return_to_core:
    /* The direction flag is the server's: SYSCALL clears it (SFMASK), but an
       interrupt or exception taken in ring 3 does not, and a server preempted
       inside a backward memmove (std; rep movsb; cld) has DF=1. The Rust ABI
       needs DF=0: left set, the core's next rep movs/stos runs backwards and
       corrupts its stack (found by the fault campaign: returns to
       Some(scheduler generation)). */
    cld
    mov rax, gs:[0x18]
    mov cr3, rax
    mov rsp, gs:[0x00]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#,
    user_data = const USER_DATA_SELECTOR,
    user_code = const USER_CODE_SELECTOR,
);

unsafe extern "C" {
    fn user_enter(context: *mut UserContext);
    fn user_syscall_entry();
}

/// Sets up `syscall` (STAR/LSTAR/SFMASK, EFER.SCE) and the per-CPU area
/// (`gs`). Call once on the bootstrap CPU after the core's page tables are
/// installed and before SVM saves the host state (VMSAVE captures GS and the
/// SYSCALL MSRs, and VMLOAD restores them after every guest run).
pub fn init() {
    let kernel_cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) kernel_cr3, options(nomem, nostack, preserves_flags)) };
    // SAFETY: single boot CPU, before any server runs: nothing else uses the
    // per-CPU area. The MSR values point at this image's own entry code and
    // data, and the selectors match the GDT `cpu::load_descriptor_tables` built.
    unsafe {
        (*(&raw mut PER_CPU)).kernel_cr3 = kernel_cr3;
        cpu::wrmsr(MSR_EFER, cpu::rdmsr(MSR_EFER) | 1);
        cpu::wrmsr(MSR_STAR, (0x10 << 48) | (0x08 << 32));
        cpu::wrmsr(MSR_LSTAR, user_syscall_entry as *const () as u64);
        cpu::wrmsr(MSR_SFMASK, SYSCALL_FLAG_MASK);
        cpu::wrmsr(MSR_GS_BASE, (&raw const PER_CPU) as u64);
        cpu::wrmsr(MSR_KERNEL_GS_BASE, 0);
    }
}

/// Runs the server described by `context` until it makes a syscall, takes an
/// exception, or an interrupt arrives; the context then holds its registers
/// and the reason. Returns with interrupts disabled; a timer interrupt that
/// brought the server back has not been acknowledged yet.
pub fn enter(context: &mut UserContext) {
    assert!(context.cr3 != 0, "server context without a page table");
    // SAFETY: `context.cr3` is a page table the core built for this server:
    // it maps this code, the per-CPU area, the boot stack and `context` (all
    // in the core's first 4 MiB, supervisor-only) and the server's own pages.
    // The stub restores every callee-saved register and the core's CR3 and
    // stack before it returns, and writes only to `*context` and the per-CPU
    // area.
    unsafe { user_enter(context) }
}

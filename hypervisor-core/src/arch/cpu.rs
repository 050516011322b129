//! Single instructions and per-CPU descriptor tables (GDT with TSS).

use core::arch::asm;
use hypervisor_core::cpuid::CpuidResult;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes cannot break memory safety; the core owns every
    // port on this machine (guests' port accesses are intercepted).
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads a model-specific register.
pub fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the core only reads architectural MSRs it has checked exist;
    // RDMSR does not touch memory.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags)) }
    (u64::from(high) << 32) | u64::from(low)
}

/// Writes a model-specific register.
///
/// # Safety
/// The caller must know the write keeps the machine in a state the core's
/// invariants allow (e.g. EFER.LME stays set, HSAVE points at a reserved frame).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    }
}

/// Executes CPUID.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let result = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult { eax: result.eax, ebx: result.ebx, ecx: result.ecx, edx: result.edx }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads CR2 (the last page-fault address).
pub fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Enables maskable interrupts.
pub fn enable_interrupts() {
    x86_64::instructions::interrupts::enable();
}

/// Disables maskable interrupts.
pub fn disable_interrupts() {
    x86_64::instructions::interrupts::disable();
}

/// Whether maskable interrupts are enabled.
pub fn interrupts_enabled() -> bool {
    x86_64::instructions::interrupts::are_enabled()
}

/// Halts until the next interrupt.
pub fn halt() {
    x86_64::instructions::hlt();
}

/// Atomically enables interrupts and halts (`sti; hlt`), so an interrupt
/// that is already pending wakes the CPU instead of being lost; returns with
/// interrupts disabled again.
pub fn wait_for_interrupt() {
    // SAFETY: STI's one-instruction shadow makes STI;HLT atomic; the handler
    // runs on the current stack and returns here.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) }
}

/// Takes any interrupt that is pending (a physical interrupt that caused a
/// `#VMEXIT` is held until the host enables interrupts).
pub fn take_pending_interrupts() {
    // SAFETY: as for `wait_for_interrupt`; NOP gives the pending interrupt a
    // boundary to arrive at.
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) }
}

/// Interrupt stack table slot for double faults (a known-good stack).
pub const DOUBLE_FAULT_IST: u16 = 0;
const DOUBLE_FAULT_STACK_SIZE: usize = 16 * 1024;

#[repr(align(16))]
struct Stack(#[allow(dead_code)] [u8; DOUBLE_FAULT_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; DOUBLE_FAULT_STACK_SIZE]);
/// The stack the CPU switches to on an interrupt from ring 3 (TSS.RSP0). Its
/// contents are copied into the server's context at once, so one per CPU.
static mut USER_ENTRY_STACK: Stack = Stack([0; DOUBLE_FAULT_STACK_SIZE]);
static mut TSS: TaskStateSegment = TaskStateSegment::new();
static mut GDT: GlobalDescriptorTable = GlobalDescriptorTable::new();

/// The core's segment selectors.
#[derive(Debug, Clone, Copy)]
pub struct Selectors {
    /// Kernel code.
    pub kernel_code: SegmentSelector,
}

/// Loads the core's own GDT (kernel code/data, user data/code for ring-3
/// servers, and the TSS) on the bootstrap processor. Call once, at boot.
pub fn load_descriptor_tables() -> Selectors {
    // SAFETY: called once on the single boot CPU before interrupts are
    // enabled, so nothing else aliases these statics; afterwards they are only
    // read by the CPU.
    unsafe {
        let tss = &mut *(&raw mut TSS);
        let stack_start = (&raw const DOUBLE_FAULT_STACK) as u64;
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] =
            VirtAddr::new(stack_start + DOUBLE_FAULT_STACK_SIZE as u64);
        let user_entry = (&raw const USER_ENTRY_STACK) as u64;
        tss.privilege_stack_table[0] = VirtAddr::new(user_entry + DOUBLE_FAULT_STACK_SIZE as u64);
        let gdt = &mut *(&raw mut GDT);
        let kernel_code = gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = gdt.append(Descriptor::kernel_data_segment());
        // SYSRET expects user data at STAR[63:48]+8 and user code at +16.
        gdt.append(Descriptor::user_data_segment());
        gdt.append(Descriptor::user_code_segment());
        let tss_selector = gdt.append(Descriptor::tss_segment(&*(&raw const TSS)));
        (&*(&raw const GDT)).load();
        CS::set_reg(kernel_code);
        SS::set_reg(kernel_data);
        DS::set_reg(kernel_data);
        ES::set_reg(kernel_data);
        load_tss(tss_selector);
        Selectors { kernel_code }
    }
}

/// Each application processor's own GDT (same layout and selectors as the
/// bootstrap CPU's) and TSS (a TSS descriptor is marked busy by the CPU that
/// loads it, so CPUs cannot share one), with its own double-fault stack.
struct ApTables {
    gdt: GlobalDescriptorTable,
    tss: TaskStateSegment,
    double_fault_stack: Stack,
}

const MAX_APS: usize = super::smp::MAX_CPUS - 1;
static mut AP_TABLES: [ApTables; MAX_APS] = [const {
    ApTables { gdt: GlobalDescriptorTable::new(), tss: TaskStateSegment::new(), double_fault_stack: Stack([0; DOUBLE_FAULT_STACK_SIZE]) }
}; MAX_APS];

/// Builds and loads application processor `cpu`'s GDT and TSS (`cpu` in
/// `1..MAX_CPUS`). The kernel selectors equal the bootstrap CPU's, so the
/// shared IDT's gates are valid here. APs never run servers: their TSS has
/// no ring-0 stack for ring 3, only the double-fault stack.
pub fn load_ap_tables(cpu: usize) {
    let Some(index) = cpu.checked_sub(1).filter(|&index| index < MAX_APS) else { return };
    // SAFETY: each AP writes only its own entry, once, before it enables
    // interrupts; the bootstrap CPU never touches AP_TABLES.
    unsafe {
        let tables = &mut *(&raw mut AP_TABLES[index]);
        let stack_start = (&raw const tables.double_fault_stack) as u64;
        tables.tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] =
            VirtAddr::new(stack_start + DOUBLE_FAULT_STACK_SIZE as u64);
        let kernel_code = tables.gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = tables.gdt.append(Descriptor::kernel_data_segment());
        tables.gdt.append(Descriptor::user_data_segment());
        tables.gdt.append(Descriptor::user_code_segment());
        let tss_selector = tables.gdt.append(Descriptor::tss_segment(&*(&raw const tables.tss)));
        (&*(&raw const tables.gdt)).load();
        CS::set_reg(kernel_code);
        SS::set_reg(kernel_data);
        DS::set_reg(kernel_data);
        ES::set_reg(kernel_data);
        load_tss(tss_selector);
    }
}

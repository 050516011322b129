//! AMD SVM: enabling it, the VMCB, and the world switch.
//!
//! VMCB layout: AMD64 APM vol. 2, appendix B (control area at 0x000, state
//! save area at 0x400). The world switch is `vmload; vmrun; vmsave` for the
//! guest, then `vmload` of the host's saved state (FS/GS/TR/LDTR and the
//! SYSCALL MSRs, which VMRUN/#VMEXIT do not switch), with GIF cleared and
//! host IF set so a physical interrupt while the guest runs causes an INTR
//! exit (V_INTR_MASKING) instead of being delivered into the guest.

use core::arch::global_asm;
use hypervisor_core::addr::HostPhysAddr;
use hypervisor_core::exit::RawExit;
use hypervisor_core::frame::FrameAllocator;

use super::cpu;
use super::memory::OwnedFrames;

const MSR_EFER: u32 = 0xc000_0080;
const MSR_VM_CR: u32 = 0xc001_0114;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
const EFER_SVME: u64 = 1 << 12;

/// Why SVM cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvmError {
    /// CPUID says the CPU has no SVM.
    NotSupported,
    /// No nested paging.
    NoNestedPaging,
    /// The firmware disabled SVM (VM_CR.SVMDIS).
    DisabledByFirmware,
    /// No frame for the host save areas.
    OutOfMemory,
}

impl SvmError {
    /// A fixed description.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotSupported => "CPU has no SVM (use -cpu EPYC or -cpu max under TCG)",
            Self::NoNestedPaging => "CPU has SVM but no nested paging",
            Self::DisabledByFirmware => "SVM disabled by firmware (VM_CR.SVMDIS)",
            Self::OutOfMemory => "no memory for SVM host state",
        }
    }
}

/// Per-CPU SVM state the world switch needs.
#[derive(Debug, Clone, Copy)]
pub struct HostState {
    /// The CPU's VM_HSAVE_PA area.
    hsave: HostPhysAddr,
    /// The VMCB-format page holding the host's VMLOAD/VMSAVE state.
    host_save: HostPhysAddr,
    /// Number of ASIDs the CPU supports.
    pub asid_count: u32,
}

/// Detects and enables SVM on this (the bootstrap) CPU.
pub fn enable(frames: &mut FrameAllocator<'_>) -> Result<HostState, SvmError> {
    if cpu::cpuid(0x8000_0001, 0).ecx & (1 << 2) == 0 {
        return Err(SvmError::NotSupported);
    }
    let features = cpu::cpuid(0x8000_000a, 0);
    if features.edx & 1 == 0 {
        return Err(SvmError::NoNestedPaging);
    }
    if cpu::rdmsr(MSR_VM_CR) & (1 << 4) != 0 {
        return Err(SvmError::DisabledByFirmware);
    }
    let host = host_state(frames, features.ebx)?;
    enable_here(&host);
    Ok(host)
}

/// The save areas of one more CPU (an application processor, which calls
/// [`enable_here`] with them once it runs).
pub fn host_state(frames: &mut FrameAllocator<'_>, asid_count: u32) -> Result<HostState, SvmError> {
    let hsave = frames.allocate().ok_or(SvmError::OutOfMemory)?;
    let host_save = frames.allocate().ok_or(SvmError::OutOfMemory)?;
    let mut memory = OwnedFrames;
    memory.fill(hsave, 0);
    memory.fill(host_save, 0);
    Ok(HostState { hsave, host_save, asid_count })
}

/// Enables SVM on the calling CPU with its own save areas, and saves its
/// host state (TR, FS/GS bases, SYSCALL MSRs) for the world switch to
/// restore after every `#VMEXIT`.
pub fn enable_here(host: &HostState) {
    // SAFETY: SVM exists and is not disabled (checked by `enable` on the
    // bootstrap CPU; every CPU of the machine is the same model); HSAVE
    // points at a zeroed frame owned by this CPU alone and never reused.
    unsafe {
        cpu::wrmsr(MSR_EFER, cpu::rdmsr(MSR_EFER) | EFER_SVME);
        cpu::wrmsr(MSR_VM_HSAVE_PA, host.hsave.as_u64());
        core::arch::asm!("vmsave rax", in("rax") host.host_save.as_u64(), options(nostack));
    }
}

/// Offsets in the VMCB.
#[allow(missing_docs)]
pub mod offset {
    pub const INTERCEPT_MISC1: usize = 0x00c;
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const IOPM_BASE: usize = 0x040;
    pub const MSRPM_BASE: usize = 0x048;
    pub const ASID: usize = 0x058;
    pub const TLB_CONTROL: usize = 0x05c;
    pub const INTERRUPT_CONTROL: usize = 0x060;
    pub const INTERRUPT_SHADOW: usize = 0x068;
    pub const EXIT_CODE: usize = 0x070;
    pub const EXIT_INFO1: usize = 0x078;
    pub const EXIT_INFO2: usize = 0x080;
    pub const EXIT_INTERRUPT_INFO: usize = 0x088;
    pub const NESTED_CONTROL: usize = 0x090;
    pub const EVENT_INJECTION: usize = 0x0a8;
    pub const NESTED_CR3: usize = 0x0b0;
    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const FS: usize = 0x440;
    pub const GS: usize = 0x450;
    pub const GDTR: usize = 0x460;
    pub const LDTR: usize = 0x470;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const CPL: usize = 0x4cb;
    pub const EFER: usize = 0x4d0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5d8;
    pub const RAX: usize = 0x5f8;
    pub const G_PAT: usize = 0x668;
}

/// A segment register as the VMCB stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmcbSegment {
    /// Selector.
    pub selector: u16,
    /// Attributes in VMCB compressed form (type, S, DPL, P, AVL, L, D/B, G).
    pub attributes: u16,
    /// Limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

/// A VMCB: one frame owned by one vCPU.
#[derive(Debug)]
pub struct Vmcb {
    frame: HostPhysAddr,
}

impl Vmcb {
    /// A zeroed VMCB in a fresh frame.
    pub fn new(frames: &mut FrameAllocator<'_>) -> Option<Self> {
        let frame = frames.allocate()?;
        OwnedFrames.fill(frame, 0);
        Some(Self { frame })
    }

    /// Its physical address (what VMRUN takes).
    pub fn physical_address(&self) -> HostPhysAddr {
        self.frame
    }

    fn pointer(&self, offset: usize, size: usize) -> *mut u8 {
        assert!(offset + size <= 4096 && offset.is_multiple_of(size), "VMCB field out of bounds");
        (self.frame.as_u64() as usize + offset) as *mut u8
    }

    /// Reads a 64-bit field.
    pub fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: the VMCB frame is owned by this value and identity-mapped;
        // `pointer` checks bounds and alignment.
        unsafe { core::ptr::read_volatile(self.pointer(offset, 8) as *const u64) }
    }

    /// Writes a 64-bit field.
    pub fn write_u64(&mut self, offset: usize, value: u64) {
        // SAFETY: as for `read_u64`.
        unsafe { core::ptr::write_volatile(self.pointer(offset, 8) as *mut u64, value) }
    }

    /// Writes a 32-bit field.
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        // SAFETY: as for `read_u64`.
        unsafe { core::ptr::write_volatile(self.pointer(offset, 4) as *mut u32, value) }
    }

    /// Reads an 8-bit field.
    pub fn read_u8(&self, offset: usize) -> u8 {
        // SAFETY: as for `read_u64`.
        unsafe { core::ptr::read_volatile(self.pointer(offset, 1) as *const u8) }
    }

    /// Writes an 8-bit field.
    pub fn write_u8(&mut self, offset: usize, value: u8) {
        // SAFETY: as for `read_u64`.
        unsafe { core::ptr::write_volatile(self.pointer(offset, 1), value) }
    }

    /// Reads a segment register.
    pub fn segment(&self, offset: usize) -> VmcbSegment {
        let first = self.read_u64(offset);
        VmcbSegment {
            selector: first as u16,
            attributes: (first >> 16) as u16,
            limit: (first >> 32) as u32,
            base: self.read_u64(offset + 8),
        }
    }

    /// Writes a segment register.
    pub fn set_segment(&mut self, offset: usize, segment: VmcbSegment) {
        let first = u64::from(segment.selector)
            | (u64::from(segment.attributes) << 16)
            | (u64::from(segment.limit) << 32);
        self.write_u64(offset, first);
        self.write_u64(offset + 8, segment.base);
    }

    /// The exit fields after a `#VMEXIT`.
    pub fn raw_exit(&self) -> RawExit {
        RawExit {
            code: self.read_u64(offset::EXIT_CODE),
            info1: self.read_u64(offset::EXIT_INFO1),
            info2: self.read_u64(offset::EXIT_INFO2),
            interrupt_info: self.read_u64(offset::EXIT_INTERRUPT_INFO),
        }
    }
}

/// Guest general-purpose registers that VMRUN does not save (RAX and RSP
/// live in the VMCB). The layout is fixed: the world-switch stub uses it.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct GuestRegisters {
    /// RBX (offset 0x00).
    pub rbx: u64,
    /// RCX (0x08).
    pub rcx: u64,
    /// RDX (0x10).
    pub rdx: u64,
    /// RSI (0x18).
    pub rsi: u64,
    /// RDI (0x20).
    pub rdi: u64,
    /// RBP (0x28).
    pub rbp: u64,
    /// R8 (0x30).
    pub r8: u64,
    /// R9 (0x38).
    pub r9: u64,
    /// R10 (0x40).
    pub r10: u64,
    /// R11 (0x48).
    pub r11: u64,
    /// R12 (0x50).
    pub r12: u64,
    /// R13 (0x58).
    pub r13: u64,
    /// R14 (0x60).
    pub r14: u64,
    /// R15 (0x68).
    pub r15: u64,
}

global_asm!(
    r#"
    .section .text.world_switch, "ax"
    .global svm_world_switch
/* rdi = &mut GuestRegisters, rsi = guest VMCB pa, rdx = host save pa */
svm_world_switch:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi
    push rdx
    mov rax, rsi
    mov rbx, [rdi + 0x00]
    mov rcx, [rdi + 0x08]
    mov rdx, [rdi + 0x10]
    mov rsi, [rdi + 0x18]
    mov rbp, [rdi + 0x28]
    mov r8,  [rdi + 0x30]
    mov r9,  [rdi + 0x38]
    mov r10, [rdi + 0x40]
    mov r11, [rdi + 0x48]
    mov r12, [rdi + 0x50]
    mov r13, [rdi + 0x58]
    mov r14, [rdi + 0x60]
    mov r15, [rdi + 0x68]
    mov rdi, [rdi + 0x20]
    clgi
    sti
    vmload rax
    vmrun rax
    vmsave rax
    push rdi
    mov rdi, [rsp + 16]
    mov [rdi + 0x00], rbx
    mov [rdi + 0x08], rcx
    mov [rdi + 0x10], rdx
    mov [rdi + 0x18], rsi
    mov [rdi + 0x28], rbp
    mov [rdi + 0x30], r8
    mov [rdi + 0x38], r9
    mov [rdi + 0x40], r10
    mov [rdi + 0x48], r11
    mov [rdi + 0x50], r12
    mov [rdi + 0x58], r13
    mov [rdi + 0x60], r14
    mov [rdi + 0x68], r15
    pop rax
    mov [rdi + 0x20], rax
    pop rax
    vmload rax
    cli
    stgi
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#
);

unsafe extern "C" {
    fn svm_world_switch(registers: *mut GuestRegisters, guest_vmcb: u64, host_save: u64);
}

/// Runs the guest described by `vmcb` and `registers` until its next
/// `#VMEXIT`. Returns with interrupts disabled and GIF set; a physical
/// interrupt that caused the exit is still pending.
pub fn run(host: &HostState, vmcb: &mut Vmcb, registers: &mut GuestRegisters) {
    run_at(host, vmcb.physical_address(), registers);
}

/// [`run`] for a VMCB the caller holds by address: a pCPU runs a vCPU
/// without the machine's lock, and the vCPU is marked as running on it, so
/// nothing else touches its VMCB meanwhile.
pub fn run_at(host: &HostState, vmcb: HostPhysAddr, registers: &mut GuestRegisters) {
    // SAFETY: SVM is enabled on this CPU (a `HostState` exists only after
    // `enable`), the VMCB frame is owned by `vmcb`, and `registers` is a live
    // exclusive reference in the layout the stub expects. The stub preserves
    // all callee-saved registers and restores host state with VMLOAD.
    unsafe {
        svm_world_switch(registers, vmcb.as_u64(), host.host_save.as_u64());
    }
}

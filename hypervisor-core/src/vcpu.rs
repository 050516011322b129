//! Handling a decoded exit against one vCPU: the CPUID filter, the MSR
//! allow-list, the console devices, and the hypercall entry.
//!
//! The vCPU's registers are reached through [`VcpuState`] (the kernel backs it
//! with the VMCB and the saved GPRs; tests back it with a plain struct), guest
//! memory through [`GuestMemory`], and the host through [`Platform`]. Every
//! handler returns a `#[must_use]` [`Outcome`] that tells the run loop what to
//! do next. A guest's mistake is charged to the guest: an exception injected,
//! an error code returned, or the domain stopped with a [`StopReason`].
//!
//! Secondary vCPUs are brought up as on Xen: `VCPUOP_initialise` records a
//! checked 64-bit start state in the domain's [`BringUp`], `VCPUOP_up` turns
//! it into a start request, and the run loop takes it with
//! [`DomainDevices::take_start_request`] and builds the vCPU.

use crate::addr::{GuestPhysAddr, PAGE_SIZE};
use crate::console::LineBuffer;
use crate::cpuid::{self, CpuidResult};
use crate::exit::{instruction_length, Exit, IoAccess, IoWidth, VmExit};
use crate::guest_memory::{GuestMemory, GuestPaging, Release};
use crate::msr::{self, MsrContext, MsrWrite};
use crate::uart::{Uart16550, COM1_BASE, REGISTER_COUNT};
use ipc::hypercall::{self as hc, errno, HvmContext64, ShutdownReason};

/// The general-purpose registers the exit stub saves (RAX and RSP live in the VMCB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpr {
    /// RAX.
    Rax,
    /// RBX.
    Rbx,
    /// RCX.
    Rcx,
    /// RDX.
    Rdx,
    /// RSI.
    Rsi,
    /// RDI.
    Rdi,
    /// R8.
    R8,
    /// R10.
    R10,
}

/// The architectural state of one vCPU that exit handling reads and writes.
pub trait VcpuState {
    /// A general-purpose register.
    fn gpr(&self, register: Gpr) -> u64;
    /// Sets a general-purpose register.
    fn set_gpr(&mut self, register: Gpr, value: u64);
    /// RIP.
    fn rip(&self) -> u64;
    /// Sets RIP.
    fn set_rip(&mut self, rip: u64);
    /// EFER as stored in the VMCB (SVME included).
    fn efer(&self) -> u64;
    /// Sets EFER.
    fn set_efer(&mut self, efer: u64);
    /// PAT.
    fn pat(&self) -> u64;
    /// Sets PAT.
    fn set_pat(&mut self, pat: u64);
    /// CR0, CR3, CR4 and EFER, for walking the guest's page tables.
    fn paging(&self) -> GuestPaging;
    /// Whether CS is a 64-bit code segment (and EFER.LMA is set).
    fn in_64bit_mode(&self) -> bool;
    /// The current privilege level.
    fn cpl(&self) -> u8;
    /// Queues an exception for delivery at the next VM entry.
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// Queues re-delivery of an event the exit interrupted.
    fn reinject(&mut self, event: crate::exit::PendingEvent);
    /// Whether RFLAGS.IF is set.
    fn interrupts_enabled(&self) -> bool;
    /// The vCPU's single-shot timer (`set_timer_op`), guest system time ns.
    fn timer_deadline(&self) -> Option<u64>;
    /// Arms (`Some`) or stops (`None`) the single-shot timer.
    fn set_timer_deadline(&mut self, deadline: Option<u64>);
}

/// What the core provides to exit handling.
pub trait Platform {
    /// Executes CPUID on the host.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;
    /// The guest-visible time-stamp counter.
    fn guest_tsc(&self) -> u64;
    /// Emits one complete guest console line of domain `domain`.
    fn console_line(&mut self, domain: &str, line: &str);
    /// Guest system time, ns (`tsc * 1e6 / tsc_khz`).
    fn system_time_ns(&self) -> u64;
    /// The TSC rate guests are told, kHz.
    fn tsc_khz(&self) -> u32;
}

/// Per-domain emulated devices and identity that exit handling needs.
#[derive(Debug, Clone)]
pub struct DomainDevices<'a> {
    /// The domain's name, for console lines.
    pub name: &'a str,
    /// The console UART at COM1.
    pub uart: Uart16550,
    /// The console's partial line.
    pub console: LineBuffer,
    /// Bytes of guest memory (guest-physical `0..memory_bytes`).
    pub memory_bytes: u64,
    /// Number of vCPUs in the domain.
    pub vcpu_count: u8,
    /// Which vCPUs are initialised and up, and the start requests not yet
    /// taken by the run loop.
    pub bring_up: BringUp,
}

impl<'a> DomainDevices<'a> {
    /// Devices in reset state; vCPU 0 is up, the others are not initialised.
    pub fn new(name: &'a str, memory_bytes: u64, vcpu_count: u8) -> Self {
        Self {
            name,
            uart: Uart16550::new(),
            console: LineBuffer::new(),
            memory_bytes,
            vcpu_count,
            bring_up: BringUp::new(vcpu_count),
        }
    }

    /// The next secondary vCPU the guest brought up with `VCPUOP_up` whose
    /// VMCB the run loop has not built yet: its index and its checked start
    /// state (build it with `kernel::domain::build_secondary_vcpu`, then
    /// make it runnable). Each request is returned once, lowest index first;
    /// `None` when there is none.
    pub fn take_start_request(&mut self) -> Option<(u8, HvmContext64)> {
        self.bring_up.take_start_request()
    }

    fn console_byte(&mut self, byte: u8, platform: &mut impl Platform) {
        let name = self.name;
        self.console.push(byte, &mut |line| platform.console_line(name, line));
    }
}

/// Most vCPUs a domain may have ([`ipc::boot::MAX_VCPUS`]).
pub const MAX_DOMAIN_VCPUS: usize = ipc::boot::MAX_VCPUS as usize;

/// A domain's vCPU bring-up state (`VCPUOP_initialise`, `VCPUOP_up`,
/// `VCPUOP_is_up`). vCPU 0 is up from the start (the core builds it with the
/// domain); every other vCPU is down until the guest initialises it and
/// brings it up. vCPUs never go down again (`VCPUOP_down` is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BringUp {
    /// vCPUs in the domain, at most [`MAX_DOMAIN_VCPUS`].
    count: u8,
    /// The start state of each initialised vCPU (already checked).
    contexts: [Option<HvmContext64>; MAX_DOMAIN_VCPUS],
    /// Bit `i`: vCPU `i` is up.
    up: u8,
    /// Bit `i`: vCPU `i` was brought up and the run loop has not taken it yet.
    requests: u8,
}

impl BringUp {
    /// State of a domain of `vcpu_count` vCPUs (capped at
    /// [`MAX_DOMAIN_VCPUS`]): vCPU 0 up, no other initialised.
    pub fn new(vcpu_count: u8) -> Self {
        Self {
            count: vcpu_count.min(MAX_DOMAIN_VCPUS as u8),
            contexts: [None; MAX_DOMAIN_VCPUS],
            up: 1,
            requests: 0,
        }
    }

    /// The vCPU a guest names, if the domain has it.
    fn index(&self, vcpu: u64) -> Result<u8, i64> {
        if vcpu < u64::from(self.count) { Ok(vcpu as u8) } else { Err(-errno::ENOENT) }
    }

    /// Whether vCPU `index` is up (false for one the domain does not have).
    pub fn is_up(&self, index: u8) -> bool {
        index < self.count && self.up & (1 << index) != 0
    }

    /// The start state recorded for vCPU `index`, if it was initialised.
    pub fn context(&self, index: u8) -> Option<&HvmContext64> {
        self.contexts.get(usize::from(index))?.as_ref()
    }

    /// Whether a start request is waiting for the run loop.
    pub fn has_start_request(&self) -> bool {
        self.requests != 0
    }

    /// Takes the lowest-numbered start request (see
    /// [`DomainDevices::take_start_request`]).
    pub fn take_start_request(&mut self) -> Option<(u8, HvmContext64)> {
        while self.requests != 0 {
            let index = self.requests.trailing_zeros() as u8;
            self.requests &= !(1 << index);
            if let Some(context) = self.context(index) {
                return Some((index, *context));
            }
        }
        None
    }

    /// The run loop could not build vCPU `index` after taking its request:
    /// it is down again (`VCPUOP_is_up` says 0) and a later `VCPUOP_up` asks
    /// again with the same start state.
    pub fn start_failed(&mut self, index: u8) {
        if index != 0 && index < self.count {
            self.up &= !(1 << index);
            self.requests &= !(1 << index);
        }
    }

    /// `VCPUOP_initialise` with an already decoded and checked start state:
    /// `-ENOENT` for a vCPU the domain does not have, `-EEXIST` for one that
    /// is up; otherwise records (or replaces) its start state.
    fn initialise(&mut self, vcpu: u64, context: HvmContext64) -> i64 {
        match self.index(vcpu) {
            Err(error) => error,
            Ok(index) if self.is_up(index) => -errno::EEXIST,
            Ok(index) => {
                self.contexts[usize::from(index)] = Some(context);
                0
            }
        }
    }

    /// `VCPUOP_up`: `-ENOENT` for a vCPU the domain does not have, `-EINVAL`
    /// for one never initialised, 0 for one already up; otherwise marks it
    /// up and queues its start request.
    fn up(&mut self, vcpu: u64) -> i64 {
        match self.index(vcpu) {
            Err(error) => error,
            Ok(index) if self.is_up(index) => 0,
            Ok(index) if self.context(index).is_none() => -errno::EINVAL,
            Ok(index) => {
                self.up |= 1 << index;
                self.requests |= 1 << index;
                0
            }
        }
    }

    /// `VCPUOP_is_up`: 1 or 0, `-ENOENT` for a vCPU the domain does not have.
    fn is_up_call(&self, vcpu: u64) -> i64 {
        self.index(vcpu).map_or_else(|error| error, |index| i64::from(self.is_up(index)))
    }
}

const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
/// CR0 bits that exist: PE, MP, EM, TS, ET, NE, WP, AM, NW, CD, PG.
const CR0_DEFINED: u64 = 0x3f | (1 << 16) | (1 << 18) | CR0_NW | CR0_CD | CR0_PG;
const CR4_PAE: u64 = 1 << 5;
/// CR4 bits a started vCPU may have: VME … UMIP (0-11), FSGSBASE, PCIDE,
/// OSXSAVE, SMEP, SMAP, PKE, CET. LA57 (bit 12) is refused: the core walks
/// only 4-level tables.
const CR4_ALLOWED: u64 = 0xfff | (1 << 16) | (1 << 17) | (1 << 18) | (0xf << 20);
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bits that exist (bit 1 is the fixed one).
const RFLAGS_DEFINED: u64 = 0x3f_7fd5;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_VM: u64 = 1 << 17;

/// Whether `address` is canonical for 48-bit virtual addresses.
fn canonical(address: u64) -> bool {
    (((address << 16) as i64) >> 16) as u64 == address
}

/// Checks a `VCPU_HVM_MODE_64B` start state, as `VCPUOP_initialise` does
/// before recording it: RIP and RSP canonical; CR0 with PE and PG and no
/// undefined bit (and not NW without CD); CR4 with PAE and only
/// [`CR4_ALLOWED`] bits; EFER with LME and LMA and only the bits a guest may
/// set; CR3 page-aligned inside the domain's `memory_bytes`. `-EINVAL`
/// otherwise. RFLAGS is not checked: [`start_rflags`] cleans it.
pub fn check_start_context(context: &HvmContext64, memory_bytes: u64) -> Result<(), i64> {
    let cr0_ok = context.cr0 & (CR0_PE | CR0_PG) == CR0_PE | CR0_PG
        && context.cr0 & !CR0_DEFINED == 0
        && context.cr0 & (CR0_NW | CR0_CD) != CR0_NW;
    let cr4_ok = context.cr4 & CR4_PAE != 0 && context.cr4 & !CR4_ALLOWED == 0;
    let efer_ok = context.efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
        && context.efer & !msr::EFER_GUEST_BITS == 0;
    let cr3_ok = context.cr3 & (PAGE_SIZE - 1) == 0 && context.cr3 < memory_bytes;
    if cr0_ok && cr4_ok && efer_ok && cr3_ok && canonical(context.rip) && canonical(context.rsp) {
        Ok(())
    } else {
        Err(-errno::EINVAL)
    }
}

/// The RFLAGS a secondary vCPU starts with: the guest's defined flags with
/// bit 1 set and IF and VM clear (interrupts stay off until the guest is
/// ready for them).
pub fn start_rflags(rflags: u64) -> u64 {
    (rflags & RFLAGS_DEFINED & !(RFLAGS_IF | RFLAGS_VM)) | 0x2
}

/// Why the core stopped a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A nested page fault outside the domain's memory.
    OutsideMemory {
        /// The faulting guest-physical address.
        address: GuestPhysAddr,
        /// Whether it was a write.
        write: bool,
    },
    /// Triple fault.
    TripleFault,
    /// VMRUN refused the vCPU's state.
    InvalidState,
    /// An exit the core does not handle.
    UnhandledExit {
        /// Its raw code.
        code: u64,
    },
    /// INS/OUTS, which the core does not emulate.
    StringIo {
        /// The port.
        port: u16,
    },
    /// An access to the local APIC page the core could not emulate.
    ApicAccess {
        /// The faulting guest-physical address.
        address: GuestPhysAddr,
        /// Why.
        error: crate::apic_access::MmioError,
    },
}

impl StopReason {
    /// A fixed description for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::OutsideMemory { .. } => "nested page fault outside the domain's memory",
            Self::TripleFault => "triple fault (shutdown)",
            Self::InvalidState => "VMRUN refused the vCPU state",
            Self::UnhandledExit { .. } => "unhandled exit",
            Self::StringIo { .. } => "string port I/O is not emulated",
            Self::ApicAccess { error, .. } => error.describe(),
        }
    }
}

/// What the run loop does after an exit.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Enter the same vCPU again.
    Resume,
    /// The vCPU gave up the pCPU; stays runnable.
    Yield,
    /// The vCPU executed HLT with interrupts enabled: park it until the next
    /// tick or its timer.
    Halt,
    /// `SCHEDOP_block` / `SCHEDOP_poll`: wait until the deadline (guest system
    /// time, ns) or, with none, until an event.
    Block {
        /// When to wake at the latest.
        deadline_ns: Option<u64>,
    },
    /// HLT with interrupts disabled: nothing can wake the vCPU; it is down.
    Down,
    /// A physical interrupt is pending for the host.
    HostInterrupt,
    /// The guest asked to shut down.
    Shutdown(ShutdownReason),
    /// The core stops the domain.
    Stop(StopReason),
}

/// Longest console write one hypercall may ask for.
pub const MAX_CONSOLE_WRITE: u64 = 64 * 1024;
/// Vector of `#UD`.
const INVALID_OPCODE: u8 = 6;
/// Vector of `#GP`.
const GENERAL_PROTECTION: u8 = 13;
/// The port of the debug console.
pub const DEBUG_CONSOLE_PORT: u16 = 0xe9;

/// Handles one decoded exit.
pub fn handle(
    exit: &Exit,
    vcpu: &mut impl VcpuState,
    memory: &mut impl GuestMemory,
    devices: &mut DomainDevices<'_>,
    platform: &mut impl Platform,
    vcpu_index: u8,
) -> Outcome {
    if let Some(event) = exit.interrupted {
        vcpu.reinject(event);
    }
    match exit.reason {
        VmExit::Cpuid => {
            let leaf = vcpu.gpr(Gpr::Rax) as u32;
            let subleaf = vcpu.gpr(Gpr::Rcx) as u32;
            let host = platform.cpuid(leaf, subleaf);
            let result = cpuid::filter(leaf, subleaf, host, vcpu_index, devices.vcpu_count, platform.tsc_khz());
            vcpu.set_gpr(Gpr::Rax, u64::from(result.eax));
            vcpu.set_gpr(Gpr::Rbx, u64::from(result.ebx));
            vcpu.set_gpr(Gpr::Rcx, u64::from(result.ecx));
            vcpu.set_gpr(Gpr::Rdx, u64::from(result.edx));
            advance_rip(vcpu, &exit.reason);
            Outcome::Resume
        }
        VmExit::Msr { write } => {
            let index = vcpu.gpr(Gpr::Rcx) as u32;
            let context = MsrContext {
                efer: vcpu.efer(),
                pat: vcpu.pat(),
                vcpu: vcpu_index,
                tsc: platform.guest_tsc(),
            };
            let result = if write {
                let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
                msr::write(index, value, &context).map(|change| match change {
                    MsrWrite::Ignore => true,
                    MsrWrite::Efer(efer) => {
                        vcpu.set_efer(efer);
                        true
                    }
                    MsrWrite::Pat(pat) => {
                        vcpu.set_pat(pat);
                        true
                    }
                    MsrWrite::HypercallPage(address) => {
                        install_hypercall_page(memory, address, devices.memory_bytes)
                    }
                })
            } else {
                msr::read(index, &context).map(|value| {
                    vcpu.set_gpr(Gpr::Rax, value & 0xffff_ffff);
                    vcpu.set_gpr(Gpr::Rdx, value >> 32);
                    true
                })
            };
            if result == Ok(true) {
                advance_rip(vcpu, &exit.reason);
            } else {
                vcpu.inject_exception(GENERAL_PROTECTION, Some(0));
            }
            Outcome::Resume
        }
        VmExit::Io(access) => port_io(access, vcpu, devices, platform),
        VmExit::Hlt => {
            advance_rip(vcpu, &exit.reason);
            if vcpu.interrupts_enabled() { Outcome::Halt } else { Outcome::Down }
        }
        VmExit::Vmmcall => {
            advance_rip(vcpu, &exit.reason);
            hypercall(vcpu, memory, devices, platform, vcpu_index)
        }
        VmExit::NestedPageFault(fault) => {
            Outcome::Stop(StopReason::OutsideMemory { address: fault.address, write: fault.write })
        }
        VmExit::Shutdown => Outcome::Stop(StopReason::TripleFault),
        VmExit::PhysicalInterrupt | VmExit::PhysicalNmi => Outcome::HostInterrupt,
        VmExit::SvmInstruction => {
            // SVM is hidden from guests: its instructions are invalid opcodes to them.
            vcpu.inject_exception(INVALID_OPCODE, None);
            Outcome::Resume
        }
        VmExit::InvalidState => Outcome::Stop(StopReason::InvalidState),
        VmExit::Exception { vector, .. } => {
            Outcome::Stop(StopReason::UnhandledExit { code: 0x40 + u64::from(vector) })
        }
        VmExit::Other { code } => Outcome::Stop(StopReason::UnhandledExit { code }),
    }
}

/// Moves RIP past the intercepted instruction (no next-RIP save under TCG).
fn advance_rip(vcpu: &mut impl VcpuState, reason: &VmExit) {
    if let Some(length) = instruction_length(reason) {
        vcpu.set_rip(vcpu.rip().wrapping_add(length));
    }
}

fn port_io(
    access: IoAccess,
    vcpu: &mut impl VcpuState,
    devices: &mut DomainDevices<'_>,
    platform: &mut impl Platform,
) -> Outcome {
    if access.string {
        return Outcome::Stop(StopReason::StringIo { port: access.port });
    }
    let width_mask: u64 = match access.width {
        IoWidth::Byte => 0xff,
        IoWidth::Word => 0xffff,
        IoWidth::Dword => 0xffff_ffff,
    };
    let uart_offset = access.port.wrapping_sub(COM1_BASE);
    if access.write {
        let value = vcpu.gpr(Gpr::Rax) as u8;
        if uart_offset < REGISTER_COUNT {
            if let Some(byte) = devices.uart.write(uart_offset, value) {
                devices.console_byte(byte, platform);
            }
        } else if access.port == DEBUG_CONSOLE_PORT {
            devices.console_byte(value, platform);
        }
        // Writes to any other port are dropped: the guest owns no hardware.
    } else {
        let value: u64 = if uart_offset < REGISTER_COUNT {
            u64::from(devices.uart.read(uart_offset))
        } else if access.port == DEBUG_CONSOLE_PORT {
            u64::from(DEBUG_CONSOLE_PORT) // Bochs convention: reads back 0xe9.
        } else {
            width_mask // Floating bus.
        };
        let rax = vcpu.gpr(Gpr::Rax);
        let merged = match access.width {
            IoWidth::Dword => value & width_mask, // 32-bit writes zero-extend.
            _ => (rax & !width_mask) | (value & width_mask),
        };
        vcpu.set_gpr(Gpr::Rax, merged);
    }
    vcpu.set_rip(access.next_rip);
    Outcome::Resume
}

/// Writes Xen's hypercall page: stub `n` at `32 * n` is
/// `mov eax, n; vmmcall; ret`. Returns `false` if the page is not guest RAM.
fn install_hypercall_page(memory: &mut impl GuestMemory, address: u64, memory_bytes: u64) -> bool {
    if address.saturating_add(PAGE_SIZE) > memory_bytes {
        return false;
    }
    let mut page = [0xccu8; PAGE_SIZE as usize]; // int3 between stubs
    for (number, stub) in page.chunks_exact_mut(hc::HYPERCALL_STUB_SIZE).enumerate() {
        stub[0] = 0xb8; // mov eax, imm32
        stub[1..5].copy_from_slice(&(number as u32).to_le_bytes());
        stub[5..8].copy_from_slice(&[0x0f, 0x01, 0xd9]); // vmmcall
        stub[8] = 0xc3; // ret
    }
    memory.write(GuestPhysAddr::new_truncate(address), &page).is_ok()
}

/// The hypercall arguments, by guest mode (see `ipc::hypercall`).
fn hypercall_arguments(vcpu: &impl VcpuState) -> (u64, [u64; 3]) {
    if vcpu.in_64bit_mode() {
        (vcpu.gpr(Gpr::Rax), [vcpu.gpr(Gpr::Rdi), vcpu.gpr(Gpr::Rsi), vcpu.gpr(Gpr::Rdx)])
    } else {
        let low = |register| vcpu.gpr(register) & 0xffff_ffff;
        (low(Gpr::Rax), [low(Gpr::Rbx), low(Gpr::Rcx), low(Gpr::Rdx)])
    }
}

fn hypercall(
    vcpu: &mut impl VcpuState,
    memory: &mut impl GuestMemory,
    devices: &mut DomainDevices<'_>,
    platform: &mut impl Platform,
    vcpu_index: u8,
) -> Outcome {
    let (number, [arg1, arg2, arg3]) = hypercall_arguments(vcpu);
    let mut outcome = Outcome::Resume;
    let result: i64 = if vcpu.cpl() != 0 {
        -errno::EPERM
    } else {
        match (number, arg1) {
            (hc::SCHED_OP, hc::SCHEDOP_YIELD) => {
                outcome = Outcome::Yield;
                0
            }
            (hc::SCHED_OP, hc::SCHEDOP_BLOCK) => {
                // Xen's wakeup-waiting check: a timer already due means no block.
                let now = platform.system_time_ns();
                match vcpu.timer_deadline() {
                    Some(deadline) if deadline <= now => vcpu.set_timer_deadline(None),
                    deadline => outcome = Outcome::Block { deadline_ns: deadline },
                }
                0
            }
            (hc::SCHED_OP, hc::SCHEDOP_POLL) => match poll(vcpu, memory, arg2) {
                Ok(deadline_ns) => {
                    outcome = Outcome::Block { deadline_ns };
                    0
                }
                Err(error) => error,
            },
            (hc::SET_TIMER_OP, timeout) => {
                // 64-bit: the absolute deadline in arg1 (0 cancels).
                vcpu.set_timer_deadline((timeout != 0).then_some(timeout));
                0
            }
            (hc::VCPU_OP, hc::VCPUOP_SET_SINGLESHOT_TIMER) => {
                single_shot(vcpu, memory, platform, arg2, arg3, vcpu_index)
            }
            (hc::VCPU_OP, hc::VCPUOP_INITIALISE) => initialise(vcpu, memory, devices, arg2, arg3),
            (hc::VCPU_OP, hc::VCPUOP_UP) => devices.bring_up.up(arg2),
            (hc::VCPU_OP, hc::VCPUOP_IS_UP) => devices.bring_up.is_up_call(arg2),
            (hc::VCPU_OP, hc::VCPUOP_STOP_SINGLESHOT_TIMER) => {
                if arg2 != u64::from(vcpu_index) {
                    -errno::EINVAL
                } else {
                    vcpu.set_timer_deadline(None);
                    0
                }
            }
            (hc::SCHED_OP, hc::SCHEDOP_SHUTDOWN) => {
                match vcpu.paging().translate(memory, arg2).and_then(|address| memory.read_u32(address)) {
                    Err(_) => -errno::EFAULT,
                    Ok(raw) => match ShutdownReason::from_raw(raw) {
                        None => -errno::EINVAL,
                        Some(reason) => {
                            outcome = Outcome::Shutdown(reason);
                            0
                        }
                    },
                }
            }
            (hc::MEMORY_OP, hc::XENMEM_DECREASE_RESERVATION) => {
                decrease_reservation(vcpu, memory, arg2, devices.memory_bytes)
            }
            (hc::CONSOLE_IO, hc::CONSOLEIO_WRITE) => console_write(vcpu, memory, devices, platform, arg2, arg3),
            (hc::XEN_VERSION, hc::XENVER_VERSION) => {
                let (major, minor) = hc::REPORTED_XEN_VERSION;
                (i64::from(major) << 16) | i64::from(minor)
            }
            _ => -errno::ENOSYS,
        }
    };
    vcpu.set_gpr(Gpr::Rax, result as u64);
    outcome
}

/// `SCHEDOP_poll`: reads `struct sched_poll { ports pointer; u32 nr_ports;
/// u64 timeout; }` (24 bytes in a 64-bit guest), checks every port, and
/// returns the deadline (`None`: no timeout). No event channel is bound yet,
/// so only the timeout can end the poll.
fn poll(vcpu: &impl VcpuState, memory: &impl GuestMemory, pointer: u64) -> Result<Option<u64>, i64> {
    let paging = vcpu.paging();
    let mut request = [0u8; 24];
    paging.read_virtual(memory, pointer, &mut request).map_err(|_| -errno::EFAULT)?;
    let field = |at: usize| u64::from_le_bytes([
        request[at], request[at + 1], request[at + 2], request[at + 3],
        request[at + 4], request[at + 5], request[at + 6], request[at + 7],
    ]);
    let ports = field(0);
    let count = field(8) as u32;
    let timeout = field(16);
    if count > hc::MAX_POLL_PORTS {
        return Err(-errno::EINVAL);
    }
    let mut port = [0u8; 4];
    for index in 0..u64::from(count) {
        paging.read_virtual(memory, ports.wrapping_add(index * 4), &mut port).map_err(|_| -errno::EFAULT)?;
        if u32::from_le_bytes(port) >= hc::EVENT_CHANNEL_PORTS {
            return Err(-errno::EINVAL);
        }
    }
    Ok((timeout != 0).then_some(timeout))
}

/// `VCPUOP_initialise(vcpu, &struct vcpu_hvm_context)`: checks the vCPU
/// (`-ENOENT` beyond the domain's, `-EEXIST` if up), reads the whole
/// structure (`-EFAULT`), accepts only `VCPU_HVM_MODE_64B` (`-EINVAL`; a
/// 32-bit start state is not offered) and a state [`check_start_context`]
/// passes, then records it. Nothing changes before the read succeeds, so a
/// read of a paged-out frame can be retried.
fn initialise(
    vcpu: &impl VcpuState,
    memory: &impl GuestMemory,
    devices: &mut DomainDevices<'_>,
    target: u64,
    pointer: u64,
) -> i64 {
    let bring_up = &mut devices.bring_up;
    match bring_up.index(target) {
        Err(error) => return error,
        Ok(index) if bring_up.is_up(index) => return -errno::EEXIST,
        Ok(_) => {}
    }
    let mut raw = [0u8; HvmContext64::SIZE];
    if vcpu.paging().read_virtual(memory, pointer, &mut raw).is_err() {
        return -errno::EFAULT;
    }
    if HvmContext64::mode(&raw) != Some(hc::VCPU_HVM_MODE_64B) {
        return -errno::EINVAL;
    }
    let Some(context) = HvmContext64::decode(&raw) else { return -errno::EFAULT };
    if let Err(error) = check_start_context(&context, devices.memory_bytes) {
        return error;
    }
    bring_up.initialise(target, context)
}

/// `VCPUOP_set_singleshot_timer` for the calling vCPU.
fn single_shot(
    vcpu: &mut impl VcpuState,
    memory: &impl GuestMemory,
    platform: &impl Platform,
    target: u64,
    pointer: u64,
    vcpu_index: u8,
) -> i64 {
    if target != u64::from(vcpu_index) {
        return -errno::EINVAL;
    }
    let mut request = [0u8; 12];
    if vcpu.paging().read_virtual(memory, pointer, &mut request).is_err() {
        return -errno::EFAULT;
    }
    let mut deadline = [0u8; 8];
    deadline.copy_from_slice(&request[..8]);
    let deadline = u64::from_le_bytes(deadline);
    let flags = u32::from_le_bytes([request[8], request[9], request[10], request[11]]);
    if flags & hc::VCPU_SSHOTTMR_FUTURE != 0 && deadline <= platform.system_time_ns() {
        return -errno::ETIME;
    }
    vcpu.set_timer_deadline(Some(deadline));
    0
}

fn console_write(
    vcpu: &impl VcpuState,
    memory: &impl GuestMemory,
    devices: &mut DomainDevices<'_>,
    platform: &mut impl Platform,
    count: u64,
    buffer: u64,
) -> i64 {
    if count > MAX_CONSOLE_WRITE {
        return -errno::EINVAL;
    }
    let paging = vcpu.paging();
    let mut chunk = [0u8; 128];
    // Two passes: every byte must be readable before any is printed, so a
    // write that fails part-way (a bad pointer, or a frame paged out, which
    // the core brings back and then retries the hypercall) prints nothing
    // twice.
    for print in [false, true] {
        let mut done = 0;
        while done < count {
            let length = (count - done).min(chunk.len() as u64) as usize;
            if paging.read_virtual(memory, buffer.wrapping_add(done), &mut chunk[..length]).is_err() {
                return -errno::EFAULT;
            }
            if print {
                for &byte in &chunk[..length] {
                    devices.console_byte(byte, platform);
                }
            }
            done += length as u64;
        }
    }
    0
}

/// Most extents one `XENMEM_decrease_reservation` may name (Linux's balloon
/// driver passes at most a page of `xen_pfn_t`, 512).
pub const MAX_RESERVATION_EXTENTS: u64 = 1024;

/// `XENMEM_decrease_reservation`: reads `struct xen_memory_reservation` and
/// its gfn array, checks all of it first (so a fault part-way changes
/// nothing), then gives the frames back in order. Returns the number given
/// back: a short count if an extent names a frame the guest does not hold
/// (Xen's semantics).
fn decrease_reservation(vcpu: &impl VcpuState, memory: &mut impl GuestMemory, pointer: u64, memory_bytes: u64) -> i64 {
    let paging = vcpu.paging();
    let long_mode = vcpu.in_64bit_mode();
    let mut raw = [0u8; hc::MemoryReservation::SIZE_64];
    let size = if long_mode { hc::MemoryReservation::SIZE_64 } else { hc::MemoryReservation::SIZE_32 };
    if paging.read_virtual(memory, pointer, &mut raw[..size]).is_err() {
        return -errno::EFAULT;
    }
    let Some(request) = hc::MemoryReservation::decode(&raw[..size], long_mode) else { return -errno::EFAULT };
    if request.domid != hc::DOMID_SELF {
        return -errno::EPERM;
    }
    if request.extent_order != 0 || request.nr_extents > MAX_RESERVATION_EXTENTS {
        return -errno::EINVAL;
    }
    let entry_size: u64 = if long_mode { 8 } else { 4 };
    let gfn_at = |memory: &mut dyn FnMut(u64, &mut [u8]) -> bool, index: u64| -> Option<u64> {
        let mut bytes = [0u8; 8];
        memory(request.extent_start.wrapping_add(index * entry_size), &mut bytes[..entry_size as usize]).then(|| u64::from_le_bytes(bytes))
    };
    for index in 0..request.nr_extents {
        let mut read = |address: u64, bytes: &mut [u8]| paging.read_virtual(memory, address, bytes).is_ok();
        match gfn_at(&mut read, index) {
            None => return -errno::EFAULT,
            Some(gfn) if gfn >= memory_bytes / PAGE_SIZE => return -errno::EINVAL,
            Some(_) => {}
        }
    }
    let mut released = 0;
    for index in 0..request.nr_extents {
        let mut read = |address: u64, bytes: &mut [u8]| paging.read_virtual(memory, address, bytes).is_ok();
        let Some(gfn) = gfn_at(&mut read, index) else { break };
        match memory.release(gfn) {
            Release::Released => released += 1,
            Release::Invalid => break,
            Release::Unsupported => return -errno::ENOSYS,
        }
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{decode, PendingEvent, RawExit};
    use crate::guest_memory::flat::FlatMemory;

    #[derive(Default)]
    struct TestVcpu {
        registers: [u64; 8],
        rip: u64,
        efer: u64,
        pat: u64,
        long_mode: bool,
        cpl: u8,
        injected: Option<(u8, Option<u32>)>,
        reinjected: Option<PendingEvent>,
        interrupts: bool,
        timer: Option<u64>,
    }

    impl VcpuState for TestVcpu {
        fn gpr(&self, register: Gpr) -> u64 {
            self.registers[register as usize]
        }
        fn set_gpr(&mut self, register: Gpr, value: u64) {
            self.registers[register as usize] = value;
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn set_rip(&mut self, rip: u64) {
            self.rip = rip;
        }
        fn efer(&self) -> u64 {
            self.efer
        }
        fn set_efer(&mut self, efer: u64) {
            self.efer = efer;
        }
        fn pat(&self) -> u64 {
            self.pat
        }
        fn set_pat(&mut self, pat: u64) {
            self.pat = pat;
        }
        fn paging(&self) -> GuestPaging {
            GuestPaging::default() // paging off: identity
        }
        fn in_64bit_mode(&self) -> bool {
            self.long_mode
        }
        fn cpl(&self) -> u8 {
            self.cpl
        }
        fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
            self.injected = Some((vector, error_code));
        }
        fn reinject(&mut self, event: PendingEvent) {
            self.reinjected = Some(event);
        }
        fn interrupts_enabled(&self) -> bool {
            self.interrupts
        }
        fn timer_deadline(&self) -> Option<u64> {
            self.timer
        }
        fn set_timer_deadline(&mut self, deadline: Option<u64>) {
            self.timer = deadline;
        }
    }

    #[derive(Default)]
    struct TestPlatform {
        lines: Vec<(String, String)>,
    }

    impl Platform for TestPlatform {
        fn cpuid(&self, _leaf: u32, _subleaf: u32) -> CpuidResult {
            CpuidResult { eax: 0x20, ebx: u32::MAX, ecx: u32::MAX, edx: u32::MAX }
        }
        fn guest_tsc(&self) -> u64 {
            1234
        }
        fn console_line(&mut self, domain: &str, line: &str) {
            self.lines.push((domain.to_string(), line.to_string()));
        }
        fn system_time_ns(&self) -> u64 {
            1_000_000
        }
        fn tsc_khz(&self) -> u32 {
            2_600_000
        }
    }

    struct Rig {
        vcpu: TestVcpu,
        memory: FlatMemory,
        platform: TestPlatform,
        devices: DomainDevices<'static>,
    }

    impl Rig {
        fn new() -> Self {
            Self::with_vcpus(2)
        }

        /// A rig whose domain has `vcpus` vCPUs; the exits come from vCPU 1.
        fn with_vcpus(vcpus: u8) -> Self {
            Self {
                vcpu: TestVcpu { rip: 0x1000, efer: msr::EFER_SVME, long_mode: true, ..TestVcpu::default() },
                memory: FlatMemory(vec![0; 0x10_0000]),
                platform: TestPlatform::default(),
                devices: DomainDevices::new("dom", 0x10_0000, vcpus),
            }
        }

        fn run(&mut self, code: u64, info1: u64, info2: u64) -> Outcome {
            let exit = decode(&RawExit { code, info1, info2, interrupt_info: 0 });
            handle(&exit, &mut self.vcpu, &mut self.memory, &mut self.devices, &mut self.platform, 1)
        }

        fn hypercall(&mut self, number: u64, args: [u64; 3]) -> (Outcome, i64) {
            self.vcpu.set_gpr(Gpr::Rax, number);
            self.vcpu.set_gpr(Gpr::Rdi, args[0]);
            self.vcpu.set_gpr(Gpr::Rsi, args[1]);
            self.vcpu.set_gpr(Gpr::Rdx, args[2]);
            let outcome = self.run(0x81, 0, 0);
            (outcome, self.vcpu.gpr(Gpr::Rax) as i64)
        }
    }

    #[test]
    fn cpuid_is_filtered_and_advances_rip() {
        let mut rig = Rig::new();
        rig.vcpu.set_gpr(Gpr::Rax, 0x4000_0000);
        assert_eq!(rig.run(0x72, 0, 0), Outcome::Resume);
        assert_eq!(rig.vcpu.gpr(Gpr::Rbx) as u32, u32::from_le_bytes(*b"XenV"));
        assert_eq!(rig.vcpu.rip, 0x1002);
        rig.vcpu.set_gpr(Gpr::Rax, 1);
        let _ = rig.run(0x72, 0, 0);
        assert_eq!(rig.vcpu.gpr(Gpr::Rbx) >> 24, 1, "APIC ID of vCPU 1");
    }

    #[test]
    fn unknown_msr_injects_gp_without_advancing() {
        let mut rig = Rig::new();
        rig.vcpu.set_gpr(Gpr::Rcx, 0xc001_0015);
        assert_eq!(rig.run(0x7c, 0, 0), Outcome::Resume);
        assert_eq!(rig.vcpu.injected, Some((13, Some(0))));
        assert_eq!(rig.vcpu.rip, 0x1000);
        // EFER write keeps SVME and advances.
        let mut rig = Rig::new();
        rig.vcpu.set_gpr(Gpr::Rcx, u64::from(msr::EFER));
        rig.vcpu.set_gpr(Gpr::Rax, 0x100);
        let _ = rig.run(0x7c, 1, 0);
        assert_eq!(rig.vcpu.efer, 0x100 | msr::EFER_SVME);
        assert_eq!(rig.vcpu.rip, 0x1002);
        assert_eq!(rig.vcpu.injected, None);
    }

    #[test]
    fn uart_and_debug_port_produce_console_lines() {
        let mut rig = Rig::new();
        for &byte in b"hi\n" {
            rig.vcpu.set_gpr(Gpr::Rax, u64::from(byte));
            let _ = rig.run(0x7b, (0x3f8 << 16) | (1 << 4), 0x2000);
        }
        // Check line assembly end to end through the debug port, with
        // devices of its own.
        let mut devices = DomainDevices::new("dom", 0x10_0000, 1);
        for &byte in b"ok\n" {
            rig.vcpu.set_gpr(Gpr::Rax, u64::from(byte));
            let exit = decode(&RawExit { code: 0x7b, info1: (0xe9 << 16) | (1 << 4), info2: 0x3000, interrupt_info: 0 });
            let _ = handle(&exit, &mut rig.vcpu, &mut rig.memory, &mut devices, &mut rig.platform, 0);
        }
        assert_eq!(rig.platform.lines.last().unwrap(), &("dom".to_string(), "ok".to_string()));
        assert_eq!(rig.vcpu.rip, 0x3000, "IOIO resumes at the next RIP the hardware gave");
        // LSR read reports THR empty, merged into AL only.
        rig.vcpu.set_gpr(Gpr::Rax, 0xdead_beef_0000_0000);
        let _ = rig.run(0x7b, (0x3fd << 16) | (1 << 4) | 1, 0x4000);
        assert_eq!(rig.vcpu.gpr(Gpr::Rax), 0xdead_beef_0000_0060);
        // Unknown port reads float high.
        let _ = rig.run(0x7b, (0x60 << 16) | (1 << 5) | 1, 0x4000);
        assert_eq!(rig.vcpu.gpr(Gpr::Rax) & 0xffff, 0xffff);
        assert!(matches!(rig.run(0x7b, (0x3f8 << 16) | (1 << 4) | (1 << 2), 0), Outcome::Stop(StopReason::StringIo { port: 0x3f8 })));
    }

    /// Flat memory that records the frames given back.
    struct Releasing {
        flat: FlatMemory,
        released: Vec<u64>,
        refuse: u64,
    }

    impl GuestMemory for Releasing {
        fn read(&self, address: GuestPhysAddr, buffer: &mut [u8]) -> Result<(), crate::guest_memory::MemoryError> {
            self.flat.read(address, buffer)
        }
        fn write(&mut self, address: GuestPhysAddr, data: &[u8]) -> Result<(), crate::guest_memory::MemoryError> {
            self.flat.write(address, data)
        }
        fn release(&mut self, gfn: u64) -> Release {
            if gfn == self.refuse {
                return Release::Invalid;
            }
            self.released.push(gfn);
            Release::Released
        }
    }

    #[test]
    fn decrease_reservation_checks_everything_then_releases() {
        let mut vcpu = TestVcpu { long_mode: true, ..TestVcpu::default() };
        let mut memory = Releasing { flat: FlatMemory(vec![0; 0x10_0000]), released: Vec::new(), refuse: u64::MAX };
        let reservation = |memory: &mut Releasing, extents: u64, order: u32, domid: u16| {
            let mut raw = [0u8; 32];
            raw[0..8].copy_from_slice(&0x3000u64.to_le_bytes());
            raw[8..16].copy_from_slice(&extents.to_le_bytes());
            raw[16..20].copy_from_slice(&order.to_le_bytes());
            raw[24..26].copy_from_slice(&domid.to_le_bytes());
            memory.write(GuestPhysAddr::new_truncate(0x2000), &raw).unwrap();
        };
        for (index, gfn) in [0x40u64, 0x41, 0x80].iter().enumerate() {
            memory.write(GuestPhysAddr::new_truncate(0x3000 + 8 * index as u64), &gfn.to_le_bytes()).unwrap();
        }
        reservation(&mut memory, 3, 0, hc::DOMID_SELF);
        assert_eq!(decrease_reservation(&vcpu, &mut memory, 0x2000, 0x10_0000), 3);
        assert_eq!(memory.released, [0x40, 0x41, 0x80]);

        memory.released.clear();
        memory.refuse = 0x41;
        assert_eq!(decrease_reservation(&vcpu, &mut memory, 0x2000, 0x10_0000), 1, "a short count stops at the refused frame");
        memory.refuse = u64::MAX;

        memory.released.clear();
        memory.write(GuestPhysAddr::new_truncate(0x3010), &0x100u64.to_le_bytes()).unwrap();
        assert_eq!(decrease_reservation(&vcpu, &mut memory, 0x2000, 0x10_0000), -errno::EINVAL, "gfn beyond memory");
        assert!(memory.released.is_empty(), "nothing is released before every extent is checked");
        reservation(&mut memory, 1, 1, hc::DOMID_SELF);
        assert_eq!(decrease_reservation(&vcpu, &mut memory, 0x2000, 0x10_0000), -errno::EINVAL, "order above 0");
        reservation(&mut memory, MAX_RESERVATION_EXTENTS + 1, 0, hc::DOMID_SELF);
        assert_eq!(decrease_reservation(&vcpu, &mut memory, 0x2000, 0x10_0000), -errno::EINVAL, "too many extents");
        reservation(&mut memory, 1, 0, 0);
        assert_eq!(decrease_reservation(&vcpu, &mut memory, 0x2000, 0x10_0000), -errno::EPERM, "another domain");
        reservation(&mut memory, 2, 0, hc::DOMID_SELF);
        memory.write(GuestPhysAddr::new_truncate(0x3000), &0x40u64.to_le_bytes()).unwrap();
        assert_eq!(decrease_reservation(&vcpu, &mut memory, 0xfff_fff0, 0x10_0000), -errno::EFAULT, "bad pointer");
        vcpu.long_mode = false;
        let mut raw = [0u8; 20];
        raw[0..4].copy_from_slice(&0x3000u32.to_le_bytes());
        raw[4..8].copy_from_slice(&1u32.to_le_bytes());
        raw[16..18].copy_from_slice(&hc::DOMID_SELF.to_le_bytes());
        memory.write(GuestPhysAddr::new_truncate(0x2000), &raw).unwrap();
        memory.write(GuestPhysAddr::new_truncate(0x3000), &0x55u32.to_le_bytes()).unwrap();
        memory.released.clear();
        assert_eq!(decrease_reservation(&vcpu, &mut memory, 0x2000, 0x10_0000), 1, "32-bit layout");
        assert_eq!(memory.released, [0x55]);
        let mut plain = FlatMemory(vec![0; 0x10_0000]);
        plain.write(GuestPhysAddr::new_truncate(0x2000), &raw).unwrap();
        assert_eq!(decrease_reservation(&vcpu, &mut plain, 0x2000, 0x10_0000), -errno::ENOSYS, "memory that cannot release");
    }

    #[test]
    fn hypercalls_shutdown_console_version_and_errors() {
        let mut rig = Rig::new();
        rig.memory.write(GuestPhysAddr::new_truncate(0x8000), &0u32.to_le_bytes()).unwrap();
        let (outcome, result) = rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_SHUTDOWN, 0x8000, 0]);
        assert_eq!((outcome, result), (Outcome::Shutdown(ShutdownReason::Poweroff), 0));
        assert_eq!(rig.vcpu.rip, 0x1003);

        rig.memory.write(GuestPhysAddr::new_truncate(0x8000), &9u32.to_le_bytes()).unwrap();
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_SHUTDOWN, 0x8000, 0]), (Outcome::Resume, -errno::EINVAL));
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_SHUTDOWN, 0xfff0_0000, 0]), (Outcome::Resume, -errno::EFAULT));

        rig.memory.write(GuestPhysAddr::new_truncate(0x9000), b"from xen\n").unwrap();
        assert_eq!(rig.hypercall(hc::CONSOLE_IO, [hc::CONSOLEIO_WRITE, 9, 0x9000]), (Outcome::Resume, 0));
        assert_eq!(rig.platform.lines, [("dom".to_string(), "from xen".to_string())]);
        assert_eq!(rig.hypercall(hc::CONSOLE_IO, [hc::CONSOLEIO_WRITE, u64::MAX, 0x9000]).1, -errno::EINVAL);
        assert_eq!(rig.hypercall(hc::CONSOLE_IO, [hc::CONSOLEIO_WRITE, 16, 0xff_fff8]).1, -errno::EFAULT);

        assert_eq!(rig.hypercall(hc::XEN_VERSION, [0, 0, 0]).1, 0x4_0011);
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_YIELD, 0, 0]), (Outcome::Yield, 0));
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_BLOCK, 0, 0]), (Outcome::Block { deadline_ns: None }, 0));
        assert_eq!(rig.hypercall(99, [0, 0, 0]).1, -errno::ENOSYS);
        rig.vcpu.cpl = 3;
        assert_eq!(rig.hypercall(hc::XEN_VERSION, [0, 0, 0]).1, -errno::EPERM, "user mode may not call");
    }

    #[test]
    fn timers_block_and_poll() {
        let mut rig = Rig::new();
        // set_timer_op then block: wakes at the deadline.
        assert_eq!(rig.hypercall(hc::SET_TIMER_OP, [5_000_000, 0, 0]), (Outcome::Resume, 0));
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_BLOCK, 0, 0]), (Outcome::Block { deadline_ns: Some(5_000_000) }, 0));
        // A timer already due: the wakeup-waiting check returns at once and consumes it.
        let _ = rig.hypercall(hc::SET_TIMER_OP, [500, 0, 0]);
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_BLOCK, 0, 0]), (Outcome::Resume, 0));
        assert_eq!(rig.vcpu.timer, None);
        // Single-shot timer: own vCPU only, future flag checked.
        let request = |deadline: u64, flags: u32| {
            let mut bytes = deadline.to_le_bytes().to_vec();
            bytes.extend_from_slice(&flags.to_le_bytes());
            bytes
        };
        rig.memory.write(GuestPhysAddr::new_truncate(0xa000), &request(2_000_000, 1)).unwrap();
        assert_eq!(rig.hypercall(hc::VCPU_OP, [hc::VCPUOP_SET_SINGLESHOT_TIMER, 1, 0xa000]).1, 0);
        assert_eq!(rig.vcpu.timer, Some(2_000_000));
        assert_eq!(rig.hypercall(hc::VCPU_OP, [hc::VCPUOP_SET_SINGLESHOT_TIMER, 0, 0xa000]).1, -errno::EINVAL, "another vCPU");
        rig.memory.write(GuestPhysAddr::new_truncate(0xa000), &request(10, 1)).unwrap();
        assert_eq!(rig.hypercall(hc::VCPU_OP, [hc::VCPUOP_SET_SINGLESHOT_TIMER, 1, 0xa000]).1, -errno::ETIME);
        assert_eq!(rig.hypercall(hc::VCPU_OP, [hc::VCPUOP_STOP_SINGLESHOT_TIMER, 1, 0]).1, 0);
        assert_eq!(rig.vcpu.timer, None);
        // Poll: ports checked, count bounded, timeout becomes the deadline.
        let poll = |ports: u64, count: u64, timeout: u64| {
            let mut bytes = ports.to_le_bytes().to_vec();
            bytes.extend_from_slice(&count.to_le_bytes());
            bytes.extend_from_slice(&timeout.to_le_bytes());
            bytes
        };
        rig.memory.write(GuestPhysAddr::new_truncate(0xb000), &[1, 0, 0, 0, 7, 0, 0, 0]).unwrap();
        rig.memory.write(GuestPhysAddr::new_truncate(0xb100), &poll(0xb000, 2, 9_000_000)).unwrap();
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_POLL, 0xb100, 0]), (Outcome::Block { deadline_ns: Some(9_000_000) }, 0));
        rig.memory.write(GuestPhysAddr::new_truncate(0xb100), &poll(0xb000, 4096, 0)).unwrap();
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_POLL, 0xb100, 0]).1, -errno::EINVAL, "4096 ports");
        rig.memory.write(GuestPhysAddr::new_truncate(0xb100), &poll(0xfff0_0000, 2, 0)).unwrap();
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_POLL, 0xb100, 0]).1, -errno::EFAULT, "bad port pointer");
        rig.memory.write(GuestPhysAddr::new_truncate(0xb000), &[0, 0x20, 0, 0]).unwrap();
        rig.memory.write(GuestPhysAddr::new_truncate(0xb100), &poll(0xb000, 1, 0)).unwrap();
        assert_eq!(rig.hypercall(hc::SCHED_OP, [hc::SCHEDOP_POLL, 0xb100, 0]).1, -errno::EINVAL, "port 8192");
        // HLT: IF decides between parking and down.
        rig.vcpu.interrupts = true;
        assert_eq!(rig.run(0x78, 0, 0), Outcome::Halt);
        rig.vcpu.interrupts = false;
        assert_eq!(rig.run(0x78, 0, 0), Outcome::Down);
    }

    /// A start state that passes every check: long mode, paging on, tables
    /// at 0x2000, entry at 0x10_0000 - 0x1000 (the rig's memory is 1 MiB).
    fn good_context() -> HvmContext64 {
        HvmContext64 {
            rdi: 3,
            rsi: 0x8_1234,
            rsp: 0xf_f000,
            rip: 0x9_0000,
            rflags: 0x2,
            cr0: 0x8000_0011,
            cr3: 0x2000,
            cr4: 0x20,
            efer: 0x500,
            ..HvmContext64::default()
        }
    }

    /// Where the rig's tests put the `vcpu_hvm_context`.
    const CONTEXT_AT: u64 = 0xc000;

    impl Rig {
        fn initialise(&mut self, vcpu: u64, context: &HvmContext64) -> i64 {
            self.memory.write(GuestPhysAddr::new_truncate(CONTEXT_AT), &context.encode()).unwrap();
            self.hypercall(hc::VCPU_OP, [hc::VCPUOP_INITIALISE, vcpu, CONTEXT_AT]).1
        }

        fn up(&mut self, vcpu: u64) -> i64 {
            self.hypercall(hc::VCPU_OP, [hc::VCPUOP_UP, vcpu, 0]).1
        }

        fn is_up(&mut self, vcpu: u64) -> i64 {
            self.hypercall(hc::VCPU_OP, [hc::VCPUOP_IS_UP, vcpu, 0]).1
        }
    }

    #[test]
    fn secondary_vcpus_initialise_then_come_up_once() {
        let mut rig = Rig::with_vcpus(4);
        assert_eq!(rig.is_up(0), 1, "vCPU 0 is up from the start");
        assert_eq!(rig.is_up(1), 0);
        assert_eq!(rig.up(0), 0, "up on an up vCPU is a no-op");
        assert_eq!(rig.devices.take_start_request(), None, "vCPU 0 is never requested");

        let context = good_context();
        assert_eq!(rig.initialise(2, &context), 0);
        assert_eq!(rig.devices.bring_up.context(2), Some(&context));
        assert_eq!(rig.is_up(2), 0, "initialised is not up");
        assert!(!rig.devices.bring_up.has_start_request());
        // Initialising again before up replaces the start state.
        let later = HvmContext64 { rip: 0x9_1000, ..context };
        assert_eq!(rig.initialise(2, &later), 0);
        // A refused initialise leaves the recorded state alone.
        assert_eq!(rig.initialise(2, &HvmContext64 { cr3: 0x2001, ..context }), -errno::EINVAL);
        assert_eq!(rig.initialise(1, &context), 0);

        assert_eq!(rig.up(2), 0);
        assert_eq!(rig.up(1), 0);
        assert_eq!((rig.is_up(1), rig.is_up(2), rig.is_up(3)), (1, 1, 0));
        assert!(rig.devices.bring_up.has_start_request());
        assert_eq!(rig.devices.take_start_request(), Some((1, context)), "lowest index first");
        assert_eq!(rig.devices.take_start_request(), Some((2, later)));
        assert_eq!(rig.devices.take_start_request(), None, "each request once");
        assert_eq!(rig.up(2), 0, "up again: no-op");
        assert_eq!(rig.devices.take_start_request(), None, "and no second request");
        assert_eq!(rig.initialise(2, &context), -errno::EEXIST, "up vCPUs keep their state");
        assert_eq!(rig.initialise(0, &context), -errno::EEXIST, "vCPU 0 is up");

        // The run loop could not build vCPU 1: it is down and may be asked again.
        rig.devices.bring_up.start_failed(1);
        assert_eq!(rig.is_up(1), 0);
        assert_eq!(rig.up(1), 0);
        assert_eq!(rig.devices.take_start_request(), Some((1, context)));
        rig.devices.bring_up.start_failed(0);
        assert_eq!(rig.is_up(0), 1, "vCPU 0 cannot be marked down");
    }

    #[test]
    fn bring_up_refuses_vcpus_the_domain_lacks() {
        let mut rig = Rig::with_vcpus(2);
        let context = good_context();
        for vcpu in [2, 8, 255, 4096, 1 << 32, u64::MAX] {
            assert_eq!(rig.initialise(vcpu, &context), -errno::ENOENT, "initialise {vcpu}");
            assert_eq!(rig.up(vcpu), -errno::ENOENT, "up {vcpu}");
            assert_eq!(rig.is_up(vcpu), -errno::ENOENT, "is_up {vcpu}");
        }
        assert_eq!(rig.up(1), -errno::EINVAL, "up before initialise");
        assert_eq!(rig.devices.take_start_request(), None);
        // A domain claiming more vCPUs than the core supports is held to 8.
        let mut big = Rig::with_vcpus(200);
        assert_eq!(big.initialise(7, &context), 0);
        assert_eq!(big.initialise(8, &context), -errno::ENOENT);
        assert_eq!(big.initialise(199, &context), -errno::ENOENT);
        // Other vCPU operations stay unimplemented.
        for command in [2, 4, 5, 6, 7, 10, 99] {
            assert_eq!(rig.hypercall(hc::VCPU_OP, [command, 1, 0]).1, -errno::ENOSYS, "VCPUOP {command}");
        }
    }

    #[test]
    fn initialise_refuses_bad_pointers_and_modes() {
        let mut rig = Rig::with_vcpus(2);
        // The structure runs past the end of the 1 MiB of memory.
        for pointer in [0x10_0000 - 64, 0x10_0000, 0xfff0_0000, u64::MAX - 8, u64::MAX] {
            assert_eq!(
                rig.hypercall(hc::VCPU_OP, [hc::VCPUOP_INITIALISE, 1, pointer]).1,
                -errno::EFAULT,
                "pointer {pointer:#x}"
            );
        }
        // Exactly at the end is fine.
        let at_end = 0x10_0000 - HvmContext64::SIZE as u64;
        rig.memory.write(GuestPhysAddr::new_truncate(at_end), &good_context().encode()).unwrap();
        assert_eq!(rig.hypercall(hc::VCPU_OP, [hc::VCPUOP_INITIALISE, 1, at_end]).1, 0);

        let mut rig = Rig::with_vcpus(2);
        for mode in [hc::VCPU_HVM_MODE_32B, 2, u32::MAX] {
            let mut raw = good_context().encode();
            raw[0..4].copy_from_slice(&mode.to_le_bytes());
            rig.memory.write(GuestPhysAddr::new_truncate(CONTEXT_AT), &raw).unwrap();
            assert_eq!(rig.hypercall(hc::VCPU_OP, [hc::VCPUOP_INITIALISE, 1, CONTEXT_AT]).1, -errno::EINVAL, "mode {mode}");
        }
        assert_eq!(rig.devices.bring_up.context(1), None, "nothing recorded");
        assert_eq!(rig.up(1), -errno::EINVAL);
    }

    #[test]
    fn initialise_checks_the_start_state() {
        let mut rig = Rig::with_vcpus(2);
        let good = good_context();
        let bad = [
            ("non-canonical rip", HvmContext64 { rip: 0x0000_8000_0000_0000, ..good }),
            ("non-canonical rip (high)", HvmContext64 { rip: 0xffff_7fff_ffff_ffff, ..good }),
            ("non-canonical rsp", HvmContext64 { rsp: 0x1234_5678_9abc_def0, ..good }),
            ("cr0 without PG", HvmContext64 { cr0: 0x11, ..good }),
            ("cr0 without PE", HvmContext64 { cr0: 0x8000_0010, ..good }),
            ("cr0 with a bit above 31", HvmContext64 { cr0: (1 << 32) | 0x8000_0011, ..good }),
            ("cr0 with an undefined bit", HvmContext64 { cr0: (1 << 20) | 0x8000_0011, ..good }),
            ("cr0 NW without CD", HvmContext64 { cr0: CR0_NW | 0x8000_0011, ..good }),
            ("efer without LME", HvmContext64 { efer: 0x400, ..good }),
            ("efer without LMA", HvmContext64 { efer: 0x100, ..good }),
            ("efer with SVME", HvmContext64 { efer: 0x500 | msr::EFER_SVME, ..good }),
            ("efer with a reserved bit", HvmContext64 { efer: 0x500 | (1 << 40), ..good }),
            ("cr4 without PAE", HvmContext64 { cr4: 0x10, ..good }),
            ("cr4 with LA57", HvmContext64 { cr4: 0x20 | (1 << 12), ..good }),
            ("cr4 with a reserved bit", HvmContext64 { cr4: 0x20 | (1 << 40), ..good }),
            ("cr3 not page-aligned", HvmContext64 { cr3: 0x2008, ..good }),
            ("cr3 at the end of memory", HvmContext64 { cr3: 0x10_0000, ..good }),
            ("cr3 far outside memory", HvmContext64 { cr3: 0xffff_ffff_ffff_f000, ..good }),
        ];
        for (what, context) in bad {
            assert_eq!(rig.initialise(1, &context), -errno::EINVAL, "{what}");
            assert_eq!(check_start_context(&context, 0x10_0000), Err(-errno::EINVAL), "{what}");
        }
        assert_eq!(rig.devices.bring_up.context(1), None);
        let fine = [
            good,
            HvmContext64 { rip: 0xffff_8000_0000_0000, rsp: 0x7fff_ffff_fff0, ..good },
            HvmContext64 { cr0: 0xe005_003f, cr4: 0x20 | (1 << 7) | (1 << 9) | (1 << 10), efer: 0xd01, ..good },
            HvmContext64 { cr3: 0xf_f000, rflags: u64::MAX, ..good },
        ];
        for context in fine {
            assert_eq!(rig.initialise(1, &context), 0, "{context:x?}");
        }
    }

    #[test]
    fn start_rflags_sets_bit_1_and_clears_if() {
        assert_eq!(start_rflags(0), 0x2);
        assert_eq!(start_rflags(0x202), 0x2, "IF cleared");
        assert_eq!(start_rflags(0x246), 0x46);
        assert_eq!(start_rflags(u64::MAX), 0x3f_7fd7 & !(RFLAGS_IF | RFLAGS_VM), "undefined bits and VM dropped");
    }

    #[test]
    fn hypercall_page_msr_writes_stubs() {
        let mut rig = Rig::new();
        rig.vcpu.set_gpr(Gpr::Rcx, 0x4000_0000);
        rig.vcpu.set_gpr(Gpr::Rax, 0x7000);
        let _ = rig.run(0x7c, 1, 0);
        assert_eq!(rig.vcpu.injected, None);
        let mut stub = [0u8; 9];
        rig.memory.read(GuestPhysAddr::new_truncate(0x7000 + 29 * 32), &mut stub).unwrap();
        assert_eq!(stub, [0xb8, 29, 0, 0, 0, 0x0f, 0x01, 0xd9, 0xc3]);
        // Outside guest memory: #GP.
        rig.vcpu.set_gpr(Gpr::Rax, 0x4000_0000);
        let _ = rig.run(0x7c, 1, 0);
        assert_eq!(rig.vcpu.injected, Some((13, Some(0))));
    }

    #[test]
    fn faults_stop_the_domain_and_events_are_reinjected() {
        let mut rig = Rig::new();
        assert_eq!(
            rig.run(0x400, 0x6, 0x1234_5000),
            Outcome::Stop(StopReason::OutsideMemory { address: GuestPhysAddr::new_truncate(0x1234_5000), write: true })
        );
        assert_eq!(rig.run(0x7f, 0, 0), Outcome::Stop(StopReason::TripleFault));
        assert_eq!(rig.run(0x60, 0, 0), Outcome::HostInterrupt);
        assert_eq!(rig.run(0x80, 0, 0), Outcome::Resume);
        assert_eq!(rig.vcpu.injected, Some((6, None)), "VMRUN is #UD for guests");
        let mut devices = DomainDevices::new("dom", 0x10_0000, 1);
        let exit = decode(&RawExit { code: 0x60, info1: 0, info2: 0, interrupt_info: (1 << 31) | 0x20 });
        let _ = handle(&exit, &mut rig.vcpu, &mut rig.memory, &mut devices, &mut rig.platform, 0);
        assert_eq!(rig.vcpu.reinjected, Some(PendingEvent { vector: 0x20, kind: 0, error_code: None }));
    }
}

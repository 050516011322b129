//! The guest's way to its virtual local APIC: the xAPIC page reached by
//! MMIO, the timer's MSR, interrupt delivery at VM entry, HLT, and IPIs.
//!
//! [`crate::lapic`] is the register model; [`crate::instruction`] decodes
//! the `MOV` behind an MMIO exit. This module joins them to the exits the
//! core sees, as pure functions the kernel calls with the VMCB's values:
//!
//! 1. **MMIO.** The APIC page (`0xFEE0_0000`, [`crate::lapic::DEFAULT_BASE`])
//!    is left unmapped in the nested page table, so every access is a nested
//!    page fault. [`is_apic_page`] picks those faults out; [`emulate`]
//!    fetches the instruction at the guest's RIP through the guest's own
//!    page tables, decodes it, performs the access on the [`Lapic`] at the
//!    guest TSC, completes a load into the register file and says where RIP
//!    goes next. Anything it cannot emulate is an [`MmioError`]: the kernel
//!    stops the domain with it, never guesses.
//! 2. **Interrupt delivery** (AMD APM vol. 2 §15.20 "Event Injection",
//!    §15.21 "Interrupt and LINT Handling"): before each VMRUN,
//!    [`prepare_entry`] brings the timer up to date and, when the APIC has an
//!    interrupt above its processor priority, either injects it through
//!    EVENTINJ ([`event_injection`]: the guest has RFLAGS.IF = 1, no
//!    interrupt shadow and no event already queued) or asks for an interrupt
//!    window: V_IRQ with the VINTR intercept ([`interrupt_control`]), which
//!    exits as soon as the guest could take a virtual interrupt, and the next
//!    entry injects it.
//! 3. **HLT with IF = 1** ([`on_halt`], Xen's wakeup-waiting recheck from
//!    issue #4): an interrupt already pending resumes the guest at once; an
//!    armed timer blocks the vCPU until its deadline; otherwise the vCPU
//!    parks as before.
//! 4. **IPIs** ([`deliver_ipi`]): a fixed or lowest-priority IPI sets the
//!    vector in the IRR of every addressed vCPU of the sender's domain; the
//!    kernel wakes those that were blocked.
//! 5. **MSRs**: `IA32_TSC_DEADLINE` ([`read_msr`], [`write_msr`]).
//!    `IA32_APIC_BASE` stays in [`crate::msr`]: it reads the fixed base,
//!    enabled, and accepts only a write of that same value.
//!
//! # What is not here
//!
//! * NMI, SMI, INIT and start-up IPIs: no vCPU but the boot vCPU runs yet
//!   (secondary vCPUs need issue #4's SMP), and an NMI needs the IRET
//!   intercept to track NMI blocking. [`deliver_ipi`] reports them as
//!   unsupported and delivers nothing.
//! * Relocating the APIC (`IA32_APIC_BASE` writes): `#GP`, as before.
//! * CR8 writes that lower the TPR below a pending interrupt take effect at
//!   the next exit, not at once (no CR8 write intercept).
//!
//! Guest values are allegations: every function here is total, and
//! [`fuzz_mmio_access`] is the fuzz body that holds it to that.

use crate::addr::GuestPhysAddr;
use crate::exit::NestedFault;
use crate::guest_memory::{GuestMemory, GuestPaging, MemoryError};
use crate::instruction::{self, DecodeError, ExecutionMode, MmioAccess, RegisterFile};
use crate::lapic::{self, Delivery, Destination, Lapic, LapicEffect};

/// Guest-physical base of the emulated APIC page.
pub const APIC_PAGE: u64 = lapic::DEFAULT_BASE;

/// Whether a guest-physical address lies in the APIC page: the only nested
/// page faults this module handles.
pub fn is_apic_page(address: GuestPhysAddr) -> bool {
    address.as_u64() & !(lapic::PAGE_BYTES - 1) == APIC_PAGE
}

/// The guest state needed to find and decode the instruction at RIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestCode {
    /// RIP.
    pub rip: u64,
    /// The code segment's base (ignored in 64-bit mode).
    pub cs_base: u64,
    /// How CS decodes instructions ([`ExecutionMode::from_guest_state`]).
    pub mode: ExecutionMode,
    /// CR0, CR3, CR4 and EFER, to translate RIP.
    pub paging: GuestPaging,
}

impl GuestCode {
    /// The linear address of the instruction: `CS.base + RIP`, truncated to
    /// 32 bits outside 64-bit mode (AMD APM vol. 2 §4.5).
    pub fn linear_rip(&self) -> u64 {
        match self.mode {
            ExecutionMode::Bits64 => self.rip,
            ExecutionMode::Bits32 | ExecutionMode::Bits16 => {
                self.cs_base.wrapping_add(self.rip) & 0xffff_ffff
            }
        }
    }
}

/// Why an access to the APIC page was not emulated. Each stops the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioError {
    /// The guest executed code from the APIC page.
    InstructionFetch,
    /// The guest's own page tables pointed into the APIC page.
    PageTableWalk,
    /// The access was part of delivering an event (the guest's stack or a
    /// descriptor table in the APIC page), not of the instruction at RIP.
    EventDelivery,
    /// The bytes at RIP could not be read (RIP not mapped by the guest, or
    /// mapped outside its memory).
    Fetch(MemoryError),
    /// The bytes at RIP are not an instruction the decoder emulates.
    Decode(DecodeError),
    /// The decoded instruction reads where the fault was a write, or the
    /// reverse: the bytes at RIP are not what faulted.
    DirectionMismatch {
        /// Whether the decoded instruction stores.
        decoded_write: bool,
    },
}

impl MmioError {
    /// A fixed description for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::InstructionFetch => "local APIC access: instruction fetch from the APIC page",
            Self::PageTableWalk => "local APIC access: guest page tables in the APIC page",
            Self::EventDelivery => "local APIC access: during event delivery (stack or descriptor table in the APIC page)",
            Self::Fetch(_) => "local APIC access: instruction bytes at RIP unreadable",
            Self::Decode(DecodeError::Truncated) => "local APIC access: instruction truncated",
            Self::Decode(DecodeError::TooLong) => "local APIC access: instruction longer than 15 bytes",
            Self::Decode(DecodeError::Unsupported { .. }) => "local APIC access: instruction not emulated (only MOV)",
            Self::Decode(DecodeError::UnsupportedPrefix { .. }) => "local APIC access: REP prefix not emulated",
            Self::Decode(DecodeError::Lock) => "local APIC access: LOCK prefix on MOV",
            Self::Decode(DecodeError::RegisterOperand) => "local APIC access: instruction has no memory operand",
            Self::Decode(DecodeError::UnsupportedMode) => "local APIC access: 16-bit code not emulated",
            Self::DirectionMismatch { .. } => "local APIC access: instruction does not match the fault",
        }
    }
}

/// What an emulated access did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct MmioCompletion {
    /// Where the guest resumes: after the instruction.
    pub next_rip: u64,
    /// What the core must do: an IPI to send, or a new timer deadline.
    pub effect: LapicEffect,
    /// A store that was not an aligned 32- or 64-bit one, dropped.
    pub dropped_write: bool,
}

/// Emulates the guest instruction behind a nested page fault in the APIC
/// page (`fault.address`, checked with [`is_apic_page`] by the caller): fetch
/// and decode at `code.rip`, access the APIC at guest TSC `now`, and for a
/// load write the value into `registers` by the x86 merge rules.
///
/// Access widths (SDM vol. 3A §11.4.1 supports only aligned 32-bit
/// accesses): a load of 1, 2, 4 or 8 bytes is served from the 32-bit
/// register at `offset & !3`, shifted to the byte the load starts at; bytes
/// beyond that register read 0. A 32-bit store at a 4-byte aligned offset
/// writes the register, a 64-bit one writes its low half there (the high
/// half falls on reserved bytes); any other store is dropped and reported in
/// [`MmioCompletion::dropped_write`].
pub fn emulate(
    fault: &NestedFault,
    code: &GuestCode,
    memory: &impl GuestMemory,
    registers: &mut impl RegisterFile,
    apic: &mut Lapic,
    now: u64,
) -> Result<MmioCompletion, MmioError> {
    if fault.fetch {
        return Err(MmioError::InstructionFetch);
    }
    if fault.in_guest_walk {
        return Err(MmioError::PageTableWalk);
    }
    let bytes =
        instruction::fetch(&code.paging, memory, code.linear_rip()).map_err(MmioError::Fetch)?;
    let decoded = instruction::decode(bytes.as_slice(), code.mode).map_err(MmioError::Decode)?;
    if decoded.access.is_write() != fault.write {
        return Err(MmioError::DirectionMismatch {
            decoded_write: decoded.access.is_write(),
        });
    }
    let offset = fault.address.as_u64() & (lapic::PAGE_BYTES - 1);
    let register = offset & !3;
    let shift = (offset & 3) * 8;
    let mut effect = LapicEffect::None;
    let mut dropped_write = false;
    match decoded.access {
        MmioAccess::Read(read) => {
            let value = u64::from(apic.read(register, now)) >> shift;
            read.complete(registers, value);
        }
        MmioAccess::Write(write) => {
            let value = write.value(registers);
            let whole = matches!(
                write.size,
                instruction::AccessSize::Dword | instruction::AccessSize::Qword
            );
            if whole && shift == 0 {
                effect = apic.write(register, value as u32, now);
            } else {
                dropped_write = true;
            }
        }
    }
    Ok(MmioCompletion {
        next_rip: decoded.next_rip(code.rip),
        effect,
        dropped_write,
    })
}

/// Whether the guest can take an external interrupt at the next VM entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
    /// The one-instruction interrupt shadow after STI or MOV SS (VMCB
    /// INTERRUPT_SHADOW).
    pub interrupt_shadow: bool,
    /// EVENTINJ already holds an event (an exception, or an event the exit
    /// interrupted): only one can be injected per entry.
    pub event_queued: bool,
}

impl Readiness {
    /// All three conditions for injecting now hold.
    pub fn can_inject(&self) -> bool {
        self.interrupts_enabled && !self.interrupt_shadow && !self.event_queued
    }
}

/// What to do about the APIC's interrupts at a VM entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// Nothing is pending above the processor priority.
    Nothing,
    /// Inject `vector` through EVENTINJ; the APIC already moved it to ISR.
    Inject {
        /// The vector.
        vector: u8,
    },
    /// `vector` is pending but the guest cannot take it yet: request an
    /// interrupt window (V_IRQ with VINTR intercepted) and try again at the
    /// window's exit. The APIC still holds it in IRR.
    RequestWindow {
        /// The vector.
        vector: u8,
    },
}

/// Before a VM entry: brings the timer up to guest TSC `now`, then picks the
/// APIC's highest pending interrupt above its PPR (SDM vol. 3A §11.8.3.1) and
/// starts servicing it if the guest can take it (the lapic module's recipe).
pub fn prepare_entry(apic: &mut Lapic, now: u64, readiness: Readiness) -> Injection {
    let _ = apic.advance(now);
    let Some(vector) = apic.pending_interrupt() else {
        return Injection::Nothing;
    };
    if readiness.can_inject() && apic.start_servicing(vector) {
        Injection::Inject { vector }
    } else {
        Injection::RequestWindow { vector }
    }
}

/// EVENTINJ for an external interrupt with `vector` (AMD APM vol. 2 §15.20:
/// vector in bits 7:0, type 0 = INTR in bits 10:8, no error code, valid bit 31).
pub const fn event_injection(vector: u8) -> u64 {
    (vector as u64) | (1 << 31)
}

/// The VMCB's virtual-interrupt control word (offset 0x60, AMD APM vol. 2
/// appendix B and §15.21.4): V_TPR in bits 3:0, V_IRQ bit 8, V_INTR_PRIO
/// bits 19:16, V_IGN_TPR bit 20, V_INTR_MASKING bit 24, V_INTR_VECTOR bits 39:32.
pub mod interrupt_control_bits {
    /// V_TPR: the guest's CR8 (TPR bits 7:4).
    pub const V_TPR: u64 = 0xf;
    /// V_IRQ: a virtual interrupt is pending.
    pub const V_IRQ: u64 = 1 << 8;
    /// V_INTR_PRIO: the pending virtual interrupt's priority class.
    pub const V_INTR_PRIO: u64 = 0xf << 16;
    /// V_IGN_TPR: take the virtual interrupt whatever V_TPR says.
    pub const V_IGN_TPR: u64 = 1 << 20;
    /// V_INTR_VECTOR: the virtual interrupt's vector.
    pub const V_INTR_VECTOR: u64 = 0xff << 32;
}

/// The virtual-interrupt control word for the next entry, from the current
/// one: V_TPR mirrors the APIC's TPR class (what the guest reads in CR8), and
/// a `window` vector sets V_IRQ with that vector's class and vector, so the
/// VINTR intercept exits once the guest can take it (V_IGN_TPR clear: a
/// class at or below V_TPR waits, as the APIC would make it wait). Without a
/// window, V_IRQ is cleared. Every other bit (V_INTR_MASKING) is kept.
pub fn interrupt_control(current: u64, window: Option<u8>, tpr: u8) -> u64 {
    use interrupt_control_bits::*;
    let mut control = current & !(V_TPR | V_IRQ | V_INTR_PRIO | V_IGN_TPR | V_INTR_VECTOR);
    control |= u64::from(tpr >> 4);
    if let Some(vector) = window {
        control |= V_IRQ | (u64::from(vector >> 4) << 16) | (u64::from(vector) << 32);
    }
    control
}

/// The TPR a guest's CR8 write left in V_TPR, if it differs from the class
/// the core put there before the entry (`tpr_written`): the guest wrote CR8.
pub fn cr8_write(control: u64, tpr_written: u8) -> Option<u8> {
    let class = (control & interrupt_control_bits::V_TPR) as u8;
    (class != tpr_written >> 4).then_some(class << 4)
}

/// What HLT with RFLAGS.IF = 1 does to a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltDecision {
    /// An interrupt is already pending: the HLT ends at once (Xen's
    /// wakeup-waiting recheck), and the entry injects it.
    Resume,
    /// The APIC timer is armed: block until this guest TSC (or an IPI).
    BlockUntil {
        /// The timer's deadline, guest TSC.
        deadline: u64,
    },
    /// Nothing in the APIC can wake the vCPU: park it as before (the PV
    /// timer, an IPI or the next tick wakes it).
    Park,
}

/// HLT with interrupts enabled at guest TSC `now`.
pub fn on_halt(apic: &mut Lapic, now: u64) -> HaltDecision {
    let _ = apic.advance(now);
    if apic.has_wakeup_event() {
        return HaltDecision::Resume;
    }
    match apic.next_deadline() {
        Some(deadline) => HaltDecision::BlockUntil { deadline },
        None => HaltDecision::Park,
    }
}

/// What an IPI did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpiReport {
    /// APICs that took the vector into IRR.
    pub accepted: u32,
    /// Addressed APICs that refused it (software-disabled).
    pub refused: u32,
    /// The delivery mode is not emulated (NMI, SMI, INIT, start-up):
    /// nothing was delivered.
    pub unsupported: bool,
}

/// Delivers an IPI the sender's APIC asked for ([`LapicEffect::SendIpi`]) to
/// the APICs of its domain. `recipients` yields `(key, is_sender, apic)` for
/// every vCPU of the domain; `accepted(key)` is called for each one that took
/// the vector, so the caller can wake it. A lowest-priority IPI goes to the
/// first addressed APIC that accepts it: the SDM (§11.6.2.4) lets the
/// platform choose, and no arbitration priority is modelled (APR reads 0).
pub fn deliver_ipi<'a, K>(
    destination: Destination,
    delivery: Delivery,
    recipients: impl IntoIterator<Item = (K, bool, &'a mut Lapic)>,
    mut accepted: impl FnMut(K),
) -> IpiReport {
    let mut report = IpiReport::default();
    let (vector, only_one) = match delivery {
        Delivery::Fixed { vector } => (vector, false),
        Delivery::LowestPriority { vector } => (vector, true),
        Delivery::Smi | Delivery::Nmi | Delivery::Init | Delivery::StartUp { .. } => {
            report.unsupported = true;
            return report;
        }
    };
    for (key, is_sender, apic) in recipients {
        if !apic.matches_destination(destination, is_sender) {
            continue;
        }
        if apic.accept_interrupt(vector) {
            report.accepted += 1;
            accepted(key);
            if only_one {
                break;
            }
        } else {
            report.refused += 1;
        }
    }
    report
}

/// RDMSR of an MSR the APIC owns at guest TSC `now`; `None` for any other MSR.
pub fn read_msr(index: u32, apic: &mut Lapic, now: u64) -> Option<u64> {
    (index == lapic::TSC_DEADLINE_MSR).then(|| apic.read_tsc_deadline(now))
}

/// WRMSR of an MSR the APIC owns at guest TSC `now`; `None` for any other MSR.
pub fn write_msr(index: u32, value: u64, apic: &mut Lapic, now: u64) -> Option<LapicEffect> {
    (index == lapic::TSC_DEADLINE_MSR).then(|| apic.write_tsc_deadline(value, now))
}

/// Guest memory for the fuzz body: one page at guest-physical `base` that
/// holds `bytes` and zeros after them, nothing else (paging off, so RIP is
/// the guest-physical address).
struct CodePage<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl GuestMemory for CodePage<'_> {
    fn read(&self, address: GuestPhysAddr, buffer: &mut [u8]) -> Result<(), MemoryError> {
        let unmapped = MemoryError::Unmapped(address);
        let start = address.as_u64().checked_sub(self.base).ok_or(unmapped)?;
        let end = start.checked_add(buffer.len() as u64).ok_or(unmapped)?;
        if end > crate::addr::PAGE_SIZE {
            return Err(unmapped);
        }
        for (index, byte) in buffer.iter_mut().enumerate() {
            *byte = self.bytes.get(start as usize + index).copied().unwrap_or(0);
        }
        Ok(())
    }

    fn write(&mut self, address: GuestPhysAddr, _data: &[u8]) -> Result<(), MemoryError> {
        Err(MemoryError::Unmapped(address))
    }
}

/// The fuzz body: the first four bytes of `data` choose the fault (offset in
/// the APIC page, direction, fetch and walk bits, the guest's readiness for
/// an interrupt) and the mode, the next 15 are the code at RIP (zero-padded). Runs [`emulate`] on an enabled APIC, then the entry, HLT
/// and IPI paths on the result. Returns whether the access was emulated.
///
/// # Panics
///
/// Only when an invariant breaks: a completion whose RIP is not 2 to 15
/// bytes on, a load that changed a register other than its destination, a
/// store that changed any register, or an injected vector the APIC did not
/// move to ISR.
pub fn fuzz_mmio_access(data: &[u8]) -> bool {
    let control = |index: usize| data.get(index).copied().unwrap_or(0);
    let offset = u64::from(u16::from_le_bytes([control(0), control(1)])) & 0xfff;
    let flags = control(2);
    let mode = match control(3) % 3 {
        0 => ExecutionMode::Bits64,
        1 => ExecutionMode::Bits32,
        _ => ExecutionMode::Bits16,
    };
    let mut code_bytes = [0u8; instruction::MAX_LENGTH];
    for (slot, &byte) in code_bytes.iter_mut().zip(data.get(4..).unwrap_or(&[])) {
        *slot = byte;
    }
    let base = 0x10_0000;
    let memory = CodePage {
        base,
        bytes: &code_bytes,
    };
    let fault = NestedFault {
        address: GuestPhysAddr::new_truncate(APIC_PAGE + offset),
        present: false,
        write: flags & 1 != 0,
        fetch: flags & 2 != 0 && flags & 0x80 != 0,
        in_guest_walk: flags & 4 != 0 && flags & 0x80 != 0,
    };
    let code = GuestCode {
        rip: base,
        cs_base: 0,
        mode,
        paging: GuestPaging::default(),
    };
    let mut seed = 0xcbf2_9ce4_8422_2325u64;
    for &byte in data {
        seed = (seed ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut registers = [0u64; 16];
    for (index, slot) in registers.iter_mut().enumerate() {
        *slot = seed.rotate_left(index as u32 * 5) ^ index as u64;
    }
    let before = registers;
    let tsc_hz = core::num::NonZeroU64::new(2_000_000_000).unwrap_or(core::num::NonZeroU64::MIN);
    let mut apic = Lapic::new(0, tsc_hz);
    let _ = apic.write(lapic::offset::SPURIOUS_VECTOR, 0x1ff, 0);
    let now = seed >> 8;

    let result = emulate(&fault, &code, &memory, &mut registers, &mut apic, now);
    match result {
        Ok(done) => {
            let length = done.next_rip.wrapping_sub(base);
            assert!(
                (2..=instruction::MAX_LENGTH as u64).contains(&length),
                "length {length}"
            );
            let decoded = instruction::decode(&code_bytes, mode).ok();
            match decoded.map(|decoded| decoded.access) {
                Some(MmioAccess::Read(read)) => {
                    for register in instruction::Register::ALL {
                        if register != read.destination.register {
                            assert_eq!(
                                registers.register(register),
                                before.register(register),
                                "{register:?}"
                            );
                        }
                    }
                }
                Some(MmioAccess::Write(_)) => {
                    assert_eq!(registers, before, "a store changed a register")
                }
                None => panic!("emulated bytes that do not decode"),
            }
            if let LapicEffect::SendIpi {
                destination,
                delivery,
            } = done.effect
            {
                let mut woken = 0;
                let _ = deliver_ipi(destination, delivery, [(0u8, true, &mut apic)], |_| {
                    woken += 1
                });
                assert!(woken <= 1);
            }
        }
        Err(error) => {
            let _ = error.describe();
            assert_eq!(registers, before, "a refused access changed a register");
        }
    }
    let readiness = Readiness {
        interrupts_enabled: flags & 8 != 0,
        interrupt_shadow: flags & 16 != 0,
        event_queued: flags & 32 != 0,
    };
    match prepare_entry(&mut apic, now, readiness) {
        Injection::Inject { vector } => {
            assert!(readiness.can_inject());
            assert!(vector >= lapic::FIRST_LEGAL_VECTOR);
            let word = apic.read(
                lapic::offset::IN_SERVICE + u64::from(vector >> 5) * 0x10,
                now,
            );
            assert_ne!(
                word & (1 << (vector & 31)),
                0,
                "injected vector not in service"
            );
        }
        Injection::RequestWindow { vector } => {
            let control = interrupt_control(0, Some(vector), apic.tpr());
            assert_ne!(control & interrupt_control_bits::V_IRQ, 0);
        }
        Injection::Nothing => {}
    }
    if let HaltDecision::BlockUntil { deadline } = on_halt(&mut apic, now) {
        assert!(deadline > now);
    }
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_memory::flat::FlatMemory;
    use crate::instruction::Register;
    use core::num::NonZeroU64;

    const TSC_HZ: u64 = 2_000_000_000;
    const CODE: u64 = 0x8000;

    fn apic() -> Lapic {
        let mut apic = Lapic::new(0, NonZeroU64::new(TSC_HZ).unwrap());
        assert_eq!(
            apic.write(lapic::offset::SPURIOUS_VECTOR, 0x1ff, 0),
            LapicEffect::None
        );
        apic
    }

    fn fault(offset: u64, write: bool) -> NestedFault {
        NestedFault {
            address: GuestPhysAddr::new_truncate(APIC_PAGE + offset),
            present: false,
            write,
            fetch: false,
            in_guest_walk: false,
        }
    }

    /// Paging off, 64-bit decoding (what a long-mode guest with an identity
    /// map looks like once translated), code at [`CODE`].
    struct Rig {
        memory: FlatMemory,
        registers: [u64; 16],
        apic: Lapic,
        code: GuestCode,
    }

    impl Rig {
        fn new(bytes: &[u8]) -> Self {
            let mut memory = FlatMemory(vec![0; 0x10000]);
            memory
                .write(GuestPhysAddr::new_truncate(CODE), bytes)
                .unwrap();
            let code = GuestCode {
                rip: CODE,
                cs_base: 0,
                mode: ExecutionMode::Bits64,
                paging: GuestPaging::default(),
            };
            Self {
                memory,
                registers: [0; 16],
                apic: apic(),
                code,
            }
        }

        fn run(&mut self, offset: u64, write: bool, now: u64) -> Result<MmioCompletion, MmioError> {
            emulate(
                &fault(offset, write),
                &self.code,
                &self.memory,
                &mut self.registers,
                &mut self.apic,
                now,
            )
        }
    }

    #[test]
    fn only_the_apic_page_is_claimed() {
        assert!(is_apic_page(GuestPhysAddr::new_truncate(0xfee0_0000)));
        assert!(is_apic_page(GuestPhysAddr::new_truncate(0xfee0_0fff)));
        assert!(!is_apic_page(GuestPhysAddr::new_truncate(0xfee0_1000)));
        assert!(!is_apic_page(GuestPhysAddr::new_truncate(0xfedf_ffff)));
        assert!(!is_apic_page(GuestPhysAddr::new_truncate(0x50_0000)));
    }

    #[test]
    fn store_immediate_enables_the_apic_and_loads_read_it_back() {
        // mov dword ptr [rax], 0x1ff  (rax = 0xfee000f0)
        let mut rig = Rig::new(&[0xc7, 0x00, 0xff, 0x01, 0x00, 0x00]);
        rig.apic = Lapic::new(0, NonZeroU64::new(TSC_HZ).unwrap());
        let done = rig.run(0xf0, true, 0).unwrap();
        assert_eq!(
            done,
            MmioCompletion {
                next_rip: CODE + 6,
                effect: LapicEffect::None,
                dropped_write: false
            }
        );
        assert!(rig.apic.software_enabled());
        // mov ecx, dword ptr [rax]: zero-extends into rcx.
        let mut rig2 = Rig::new(&[0x8b, 0x08]);
        rig2.apic = rig.apic.clone();
        rig2.registers[Register::Rcx.number()] = u64::MAX;
        let done = rig2.run(0xf0, false, 0).unwrap();
        assert_eq!(done.next_rip, CODE + 2);
        assert_eq!(rig2.registers[Register::Rcx.number()], 0x1ff);
        // mov r9b, byte ptr [rax] at 0x32 (the version's bits 23:16): merges.
        let mut rig3 = Rig::new(&[0x44, 0x8a, 0x08]);
        rig3.registers[Register::R9.number()] = 0xaaaa_aaaa_aaaa_aaaa;
        let _ = rig3.run(0x32, false, 0).unwrap();
        assert_eq!(
            rig3.registers[Register::R9.number()],
            0xaaaa_aaaa_aaaa_aa06,
            "max LVT 6"
        );
    }

    #[test]
    fn timer_programming_returns_the_deadline() {
        // mov dword ptr [rax], edx
        let mut rig = Rig::new(&[0x89, 0x10]);
        rig.registers[Register::Rdx.number()] = 0x30; // LVT timer: one-shot, vector 0x30
        assert_eq!(rig.run(0x320, true, 0).unwrap().effect, LapicEffect::None);
        rig.registers[Register::Rdx.number()] = 0b1011; // divide by 1
        let _ = rig.run(0x3e0, true, 0).unwrap();
        rig.registers[Register::Rdx.number()] = 1000; // 1000 ns = 2000 TSC ticks
        let done = rig.run(0x380, true, 100).unwrap();
        assert_eq!(
            done.effect,
            LapicEffect::TimerChanged {
                deadline: Some(2100)
            }
        );
        assert_eq!(
            on_halt(&mut rig.apic, 2000),
            HaltDecision::BlockUntil { deadline: 2100 }
        );
        assert_eq!(
            on_halt(&mut rig.apic, 2100),
            HaltDecision::Resume,
            "expired: wakeup-waiting recheck"
        );
    }

    #[test]
    fn narrow_and_misaligned_stores_are_dropped_and_qword_stores_write_the_low_half() {
        // mov byte ptr [rax], 0x40 at TPR
        let mut rig = Rig::new(&[0xc6, 0x00, 0x40]);
        let done = rig.run(0x80, true, 0).unwrap();
        assert!(done.dropped_write);
        assert_eq!(rig.apic.tpr(), 0);
        // mov dword ptr [rax], ecx at TPR + 1
        let mut rig = Rig::new(&[0x89, 0x08]);
        rig.registers[Register::Rcx.number()] = 0x40;
        assert!(rig.run(0x81, true, 0).unwrap().dropped_write);
        // mov qword ptr [rax], rcx at TPR
        let mut rig = Rig::new(&[0x48, 0x89, 0x08]);
        rig.registers[Register::Rcx.number()] = 0xffff_ffff_0000_0050;
        assert!(!rig.run(0x80, true, 0).unwrap().dropped_write);
        assert_eq!(rig.apic.tpr(), 0x50);
    }

    #[test]
    fn self_ipi_through_the_icr() {
        // mov dword ptr [rax], 0x40031: fixed, self shorthand, vector 0x31
        let mut rig = Rig::new(&[0xc7, 0x00, 0x31, 0x00, 0x04, 0x00]);
        let done = rig.run(0x300, true, 0).unwrap();
        let LapicEffect::SendIpi {
            destination,
            delivery,
        } = done.effect
        else {
            panic!("{done:?}")
        };
        assert_eq!(destination, Destination::SelfOnly);
        let mut keys = Vec::new();
        let report = deliver_ipi(
            destination,
            delivery,
            [(7usize, true, &mut rig.apic)],
            |key| keys.push(key),
        );
        assert_eq!((report.accepted, keys), (1, vec![7]));
        assert_eq!(rig.apic.pending_interrupt(), Some(0x31));
    }

    #[test]
    fn refusals_never_touch_registers() {
        let cases: [(&[u8], bool, MmioError); 5] = [
            (
                &[0x89, 0x08],
                false,
                MmioError::DirectionMismatch {
                    decoded_write: true,
                },
            ),
            (
                &[0x8b, 0x08],
                true,
                MmioError::DirectionMismatch {
                    decoded_write: false,
                },
            ),
            (
                &[0x01, 0x08],
                true,
                MmioError::Decode(DecodeError::Unsupported { opcode: 0x01 }),
            ),
            (
                &[0xf3, 0xa5],
                true,
                MmioError::Decode(DecodeError::UnsupportedPrefix { prefix: 0xf3 }),
            ),
            (
                &[0x87, 0x08],
                true,
                MmioError::Decode(DecodeError::Unsupported { opcode: 0x87 }),
            ),
        ];
        for (bytes, write, error) in cases {
            let mut rig = Rig::new(bytes);
            rig.registers = [0x1234; 16];
            assert_eq!(rig.run(0x80, write, 0), Err(error), "{bytes:02x?}");
            assert_eq!(rig.registers, [0x1234; 16]);
            assert!(!error.describe().is_empty());
        }
        assert!(MmioError::EventDelivery
            .describe()
            .contains("event delivery"));
        let mut rig = Rig::new(&[0x8b, 0x08]);
        let mut fetch = fault(0x20, false);
        fetch.fetch = true;
        let result = emulate(
            &fetch,
            &rig.code,
            &rig.memory,
            &mut rig.registers,
            &mut rig.apic,
            0,
        );
        assert_eq!(result, Err(MmioError::InstructionFetch));
        let mut walk = fault(0x20, false);
        walk.in_guest_walk = true;
        let result = emulate(
            &walk,
            &rig.code,
            &rig.memory,
            &mut rig.registers,
            &mut rig.apic,
            0,
        );
        assert_eq!(result, Err(MmioError::PageTableWalk));
        // RIP outside guest memory.
        rig.code.rip = 0xffff_0000;
        assert!(matches!(rig.run(0x20, false, 0), Err(MmioError::Fetch(_))));
    }

    #[test]
    fn thirty_two_bit_code_uses_the_cs_base_and_wraps() {
        let mut rig = Rig::new(&[0x8b, 0x08]);
        rig.code = GuestCode {
            rip: CODE - 0x1000,
            cs_base: 0x1000,
            mode: ExecutionMode::Bits32,
            paging: GuestPaging::default(),
        };
        let done = rig.run(0x30, false, 0).unwrap();
        assert_eq!(done.next_rip, CODE - 0x1000 + 2);
        assert_eq!(
            rig.registers[Register::Rcx.number()],
            u64::from(lapic::VERSION)
        );
        let wrapping = GuestCode {
            rip: 0xffff_ffff,
            cs_base: 0x10,
            mode: ExecutionMode::Bits32,
            paging: GuestPaging::default(),
        };
        assert_eq!(wrapping.linear_rip(), 0xf);
    }

    #[test]
    fn entry_injects_when_the_guest_can_take_it_and_asks_for_a_window_otherwise() {
        let mut apic = apic();
        let ready = Readiness {
            interrupts_enabled: true,
            interrupt_shadow: false,
            event_queued: false,
        };
        assert_eq!(prepare_entry(&mut apic, 0, ready), Injection::Nothing);
        assert!(apic.accept_interrupt(0x41));
        for blocked in [
            Readiness {
                interrupts_enabled: false,
                ..ready
            },
            Readiness {
                interrupt_shadow: true,
                ..ready
            },
            Readiness {
                event_queued: true,
                ..ready
            },
        ] {
            assert_eq!(
                prepare_entry(&mut apic, 0, blocked),
                Injection::RequestWindow { vector: 0x41 }
            );
        }
        assert_eq!(
            prepare_entry(&mut apic, 0, ready),
            Injection::Inject { vector: 0x41 }
        );
        assert_eq!(
            prepare_entry(&mut apic, 0, ready),
            Injection::Nothing,
            "in service until EOI"
        );
        // A lower vector waits behind the one in service; EOI releases it.
        assert!(apic.accept_interrupt(0x35));
        assert_eq!(prepare_entry(&mut apic, 0, ready), Injection::Nothing);
        apic.end_of_interrupt();
        assert_eq!(
            prepare_entry(&mut apic, 0, ready),
            Injection::Inject { vector: 0x35 }
        );
        // TPR holds a class back.
        apic.end_of_interrupt();
        apic.set_tpr(0x50);
        assert!(apic.accept_interrupt(0x52));
        assert_eq!(prepare_entry(&mut apic, 0, ready), Injection::Nothing);
        apic.set_tpr(0x40);
        assert_eq!(
            prepare_entry(&mut apic, 0, ready),
            Injection::Inject { vector: 0x52 }
        );
    }

    #[test]
    fn entry_raises_an_expired_timer() {
        let mut apic = apic();
        let _ = apic.write(lapic::offset::LVT_TIMER, 0x30 | (2 << 17), 0);
        let _ = apic.write_tsc_deadline(5000, 0);
        assert_eq!(read_msr(lapic::TSC_DEADLINE_MSR, &mut apic, 10), Some(5000));
        assert_eq!(read_msr(0x10, &mut apic, 10), None);
        let ready = Readiness {
            interrupts_enabled: true,
            interrupt_shadow: false,
            event_queued: false,
        };
        assert_eq!(prepare_entry(&mut apic, 4999, ready), Injection::Nothing);
        assert_eq!(
            prepare_entry(&mut apic, 5000, ready),
            Injection::Inject { vector: 0x30 }
        );
        assert_eq!(
            read_msr(lapic::TSC_DEADLINE_MSR, &mut apic, 5001),
            Some(0),
            "fired: reads 0"
        );
        assert_eq!(
            write_msr(lapic::TSC_DEADLINE_MSR, 9000, &mut apic, 5001),
            Some(LapicEffect::TimerChanged {
                deadline: Some(9000)
            })
        );
        assert_eq!(write_msr(0x1b, 0, &mut apic, 0), None);
    }

    #[test]
    fn halt_parks_without_a_timer() {
        let mut apic = apic();
        assert_eq!(on_halt(&mut apic, 0), HaltDecision::Park);
        assert!(apic.accept_interrupt(0x20));
        assert_eq!(on_halt(&mut apic, 0), HaltDecision::Resume);
    }

    #[test]
    fn interrupt_control_word() {
        use interrupt_control_bits::*;
        let masking = 1 << 24;
        let control = interrupt_control(masking | V_IGN_TPR | 0xf, Some(0x41), 0x20);
        assert_eq!(control, masking | V_IRQ | (4 << 16) | (0x41 << 32) | 2);
        assert_eq!(interrupt_control(control, None, 0), masking);
        assert_eq!(cr8_write(control, 0x20), None);
        assert_eq!(cr8_write(control & !0xf | 7, 0x20), Some(0x70));
        assert_eq!(event_injection(0x30), 0x8000_0030);
    }

    #[test]
    fn ipis_reach_the_addressed_apics_of_the_domain() {
        let tsc = NonZeroU64::new(TSC_HZ).unwrap();
        let mut apics: Vec<Lapic> = (0..3)
            .map(|id| {
                let mut apic = Lapic::new(id, tsc);
                let _ = apic.write(lapic::offset::SPURIOUS_VECTOR, 0x1ff, 0);
                apic
            })
            .collect();
        apics[2] = Lapic::new(2, tsc); // software-disabled: refuses fixed IPIs
        let deliver = |destination: Destination, delivery: Delivery, apics: &mut [Lapic]| {
            let mut keys = Vec::new();
            let recipients = apics
                .iter_mut()
                .enumerate()
                .map(|(key, apic)| (key, key == 0, apic));
            let report = deliver_ipi(destination, delivery, recipients, |key| keys.push(key));
            (report, keys)
        };
        let fixed = Delivery::Fixed { vector: 0x40 };
        let (report, keys) = deliver(Destination::Physical(1), fixed, &mut apics);
        assert_eq!((report.accepted, report.refused, keys), (1, 0, vec![1]));
        let (report, keys) = deliver(Destination::AllExcludingSelf, fixed, &mut apics);
        assert_eq!((report.accepted, report.refused, keys), (1, 1, vec![1]));
        let (report, keys) = deliver(
            Destination::AllIncludingSelf,
            Delivery::LowestPriority { vector: 0x50 },
            &mut apics,
        );
        assert_eq!(
            (report.accepted, keys),
            (1, vec![0]),
            "lowest priority: one recipient"
        );
        let (report, keys) = deliver(
            Destination::Physical(lapic::BROADCAST),
            Delivery::Nmi,
            &mut apics,
        );
        assert!(report.unsupported && keys.is_empty());
        let (report, _) = deliver(Destination::Physical(9), fixed, &mut apics);
        assert_eq!(report, IpiReport::default(), "nobody has APIC ID 9");
        assert_eq!(apics[1].pending_interrupt(), Some(0x40));
        assert_eq!(apics[0].pending_interrupt(), Some(0x50));
    }

    #[test]
    fn fuzz_body_handles_a_few_shapes() {
        assert!(!fuzz_mmio_access(&[]));
        assert!(fuzz_mmio_access(&[
            0x00, 0x03, 0x01, 0x00, 0xc7, 0x00, 0x31, 0x00, 0x04, 0x00
        ]));
        assert!(fuzz_mmio_access(&[
            0x20, 0x03, 0x09, 0x00, 0xc7, 0x00, 0x30, 0x00, 0x00, 0x00
        ]));
        assert!(fuzz_mmio_access(&[0x80, 0x00, 0x08, 0x01, 0x8b, 0x08]));
        assert!(!fuzz_mmio_access(&[0xff, 0xff, 0xff, 0xff, 0xff]));
    }
}

//! The virtual local APIC in the running core: the glue between the VMCB,
//! the machine's vCPUs and the pure [`apic_access`] and [`lapic`] modules.
//!
//! Where it hooks into the run loop (`run.rs`):
//!
//! * **Before every VMRUN** ([`Machine::apic_before_entry`]): the APIC's
//!   timer is brought up to the TSC, its highest deliverable interrupt is
//!   injected through EVENTINJ or an interrupt window is requested (V_IRQ;
//!   the VINTR intercept is always on and fires only while V_IRQ is set),
//!   V_TPR is loaded from the TPR, and the host's one-shot timer is pulled
//!   in if the APIC's deadline comes before the event it was armed for.
//! * **After every #VMEXIT** ([`after_exit`]): a CR8 write the guest made
//!   (V_TPR) goes back to the TPR.
//! * **Exits it owns** ([`handle_exit`]), before `vcpu::handle` sees them: a
//!   nested page fault in the APIC page (MMIO, emulated by
//!   [`apic_access::emulate`]), the VINTR exit, and RDMSR/WRMSR of
//!   `IA32_TSC_DEADLINE`. Every other exit, and every other nested page
//!   fault, goes to `vcpu::handle` unchanged.
//! * **HLT with IF = 1** ([`on_halt`]): resume at once if an interrupt is
//!   pending, block until the APIC timer's deadline if one is armed (the
//!   `Outcome::Block` path: `wake_at`), else park as before.
//! * **While a vCPU runs**, its APIC deadline pulls the one-shot timer in
//!   (`apic_before_entry`), and that interrupt does not end its slice
//!   ([`Machine::apic_timer_tick`]): the guest's timer interrupts it on time
//!   without handing the pCPU to another vCPU. A vCPU that is not running
//!   needs no host timer for its APIC: blocked, it wakes at `wake_at`
//!   (HLT and `SCHEDOP_block` both take the APIC deadline into it);
//!   runnable, it gets the interrupt when it next runs.
//! * **IPIs** ([`Machine::apic_effect`]): delivered to the vCPUs of the
//!   sender's domain; a recipient another pCPU runs is kicked out of the
//!   guest so the next entry injects; a blocked or halted recipient is
//!   woken, the scheduler hears of it at once and an idle pCPU is kicked
//!   to pick it up.
//!
//! The guest's TSC is the host's (no TSC offset), so APIC deadlines are
//! host TSC values too.

use core::num::NonZeroU64;

use heapless::Vec;
use hypervisor_core::apic_access::{
    self, GuestCode, HaltDecision, Injection, MmioError, Readiness,
};
use hypervisor_core::exit::{code, Exit, VmExit};
use hypervisor_core::guest_memory::MemoryError;
use hypervisor_core::instruction::{ExecutionMode, Register, RegisterFile};
use hypervisor_core::lapic::{self, Delivery, Destination, Lapic, LapicEffect};
use hypervisor_core::round_robin::RunState;
use hypervisor_core::vcpu::{Gpr, Outcome, StopReason, VcpuState};

use super::run::{Machine, MAX_VCPUS_TOTAL};
use super::vcpu::{DomainMemory, Vcpu, VcpuView};
use crate::arch::cpu;
use crate::arch::smp::MAX_CPUS;
use crate::arch::svm::{offset, GuestRegisters, Vmcb};

/// The shortest time from now for which the core arms its timer on behalf of
/// a running guest's APIC timer: a guest may program a 1 ns periodic timer,
/// and the host must still get work done between its interrupts.
const MIN_TIMER_NS: u64 = 50_000;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// EVENTINJ's valid bit.
const EVENT_VALID: u64 = 1 << 31;
/// RDMSR/WRMSR are two bytes (`0F 32`, `0F 30`); TCG has no next-RIP save.
const MSR_INSTRUCTION_LENGTH: u64 = 2;

/// Counters of one vCPU's APIC traffic, logged when its domain ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApicCounters {
    /// MMIO accesses emulated.
    pub mmio: u64,
    /// Stores that were not aligned 32- or 64-bit, dropped.
    pub dropped_writes: u64,
    /// Interrupts injected through EVENTINJ.
    pub injected: u64,
    /// Interrupt windows requested.
    pub windows: u64,
    /// IPIs with a delivery mode that is not emulated.
    pub unsupported_ipis: u64,
}

/// One vCPU's local APIC and what the core keeps around it.
#[derive(Debug, Clone)]
pub struct VcpuApic {
    /// The register model.
    pub lapic: Lapic,
    /// The TPR whose class the core put into V_TPR before the last entry.
    tpr_written: u8,
    /// What happened.
    pub counters: ApicCounters,
}

impl VcpuApic {
    /// The APIC of vCPU `id` in its power-up state (software-disabled).
    pub fn new(id: u8) -> Self {
        let tsc_hz = NonZeroU64::new(crate::arch::lapic::tsc_hz()).unwrap_or(NonZeroU64::MIN);
        Self {
            lapic: Lapic::new(id, tsc_hz),
            tpr_written: 0,
            counters: ApicCounters::default(),
        }
    }
}

/// The 16 general-purpose registers of a vCPU: RAX and RSP in the VMCB,
/// the rest where the world switch saved them.
struct Registers<'a> {
    vmcb: &'a mut Vmcb,
    saved: &'a mut GuestRegisters,
}

impl RegisterFile for Registers<'_> {
    fn register(&self, register: Register) -> u64 {
        let saved = &*self.saved;
        match register {
            Register::Rax => self.vmcb.read_u64(offset::RAX),
            Register::Rsp => self.vmcb.read_u64(offset::RSP),
            Register::Rbx => saved.rbx,
            Register::Rcx => saved.rcx,
            Register::Rdx => saved.rdx,
            Register::Rsi => saved.rsi,
            Register::Rdi => saved.rdi,
            Register::Rbp => saved.rbp,
            Register::R8 => saved.r8,
            Register::R9 => saved.r9,
            Register::R10 => saved.r10,
            Register::R11 => saved.r11,
            Register::R12 => saved.r12,
            Register::R13 => saved.r13,
            Register::R14 => saved.r14,
            Register::R15 => saved.r15,
        }
    }

    fn set_register(&mut self, register: Register, value: u64) {
        let saved = &mut *self.saved;
        match register {
            Register::Rax => self.vmcb.write_u64(offset::RAX, value),
            Register::Rsp => self.vmcb.write_u64(offset::RSP, value),
            Register::Rbx => saved.rbx = value,
            Register::Rcx => saved.rcx = value,
            Register::Rdx => saved.rdx = value,
            Register::Rsi => saved.rsi = value,
            Register::Rdi => saved.rdi = value,
            Register::Rbp => saved.rbp = value,
            Register::R8 => saved.r8 = value,
            Register::R9 => saved.r9 = value,
            Register::R10 => saved.r10 = value,
            Register::R11 => saved.r11 = value,
            Register::R12 => saved.r12 = value,
            Register::R13 => saved.r13 = value,
            Register::R14 => saved.r14 = value,
            Register::R15 => saved.r15 = value,
        }
    }
}

/// The vCPU's [`VcpuState`], borrowing only the fields it needs (so the
/// APIC stays reachable beside it).
macro_rules! view {
    ($vcpu:expr) => {
        VcpuView {
            vmcb: &mut $vcpu.vmcb,
            registers: &mut $vcpu.registers,
            timer: &mut $vcpu.timer,
        }
    };
}

/// The code the vCPU executes: RIP, CS and the paging registers.
fn guest_code(vcpu: &mut Vcpu) -> GuestCode {
    let cs = vcpu.vmcb.segment(offset::CS);
    let view = view!(vcpu);
    let paging = view.paging();
    let mode = ExecutionMode::from_guest_state(
        paging.cr0,
        paging.efer,
        view.vmcb.read_u64(offset::RFLAGS),
        cs.attributes,
    );
    GuestCode {
        rip: view.rip(),
        cs_base: cs.base,
        mode,
        paging,
    }
}

/// After a #VMEXIT: a CR8 write the guest made (in V_TPR, under
/// V_INTR_MASKING) becomes the APIC's TPR.
pub fn after_exit(vcpu: &mut Vcpu) {
    let control = vcpu.vmcb.read_u64(offset::INTERRUPT_CONTROL);
    if let Some(tpr) = apic_access::cr8_write(control, vcpu.apic.tpr_written) {
        vcpu.apic.lapic.set_tpr(tpr);
        vcpu.apic.tpr_written = tpr;
    }
}

/// The exits the APIC owns, handled in full; `None` for every other exit.
/// Also returns what the APIC asks of the machine (an IPI).
pub fn handle_exit(
    exit: &Exit,
    vcpu: &mut Vcpu,
    memory: &DomainMemory,
) -> Option<(Outcome, LapicEffect)> {
    let now = cpu::rdtsc();
    let handled = match exit.reason {
        VmExit::NestedPageFault(fault) if apic_access::is_apic_page(fault.address) => {
            let code = guest_code(vcpu);
            let mut registers = Registers {
                vmcb: &mut vcpu.vmcb,
                saved: &mut vcpu.registers,
            };
            let result = match exit.interrupted {
                Some(_) => Err(MmioError::EventDelivery),
                None => apic_access::emulate(
                    &fault,
                    &code,
                    memory,
                    &mut registers,
                    &mut vcpu.apic.lapic,
                    now,
                ),
            };
            match result {
                Ok(done) => {
                    vcpu.apic.counters.mmio += 1;
                    vcpu.apic.counters.dropped_writes += u64::from(done.dropped_write);
                    view!(vcpu).set_rip(done.next_rip);
                    (Outcome::Resume, done.effect)
                }
                // The code or a guest page table at RIP is paged out: leave
                // RIP alone; the run loop sees `memory.not_resident`, brings
                // the frame back and the guest executes the access again.
                Err(MmioError::Fetch(MemoryError::NotResident(_))) => {
                    (Outcome::Resume, LapicEffect::None)
                }
                Err(error) => (
                    Outcome::Stop(StopReason::ApicAccess {
                        address: fault.address,
                        error,
                    }),
                    LapicEffect::None,
                ),
            }
        }
        // The interrupt window opened: the next entry injects.
        VmExit::Other { code: code::VINTR } => (Outcome::Resume, LapicEffect::None),
        VmExit::Msr { write } => {
            let mut view = view!(vcpu);
            let index = view.gpr(Gpr::Rcx) as u32;
            let effect = if write {
                let value = (view.gpr(Gpr::Rdx) << 32) | (view.gpr(Gpr::Rax) & 0xffff_ffff);
                apic_access::write_msr(index, value, &mut vcpu.apic.lapic, now)?
            } else {
                let value = apic_access::read_msr(index, &mut vcpu.apic.lapic, now)?;
                view.set_gpr(Gpr::Rax, value & 0xffff_ffff);
                view.set_gpr(Gpr::Rdx, value >> 32);
                LapicEffect::None
            };
            view.set_rip(view.rip().wrapping_add(MSR_INSTRUCTION_LENGTH));
            (Outcome::Resume, effect)
        }
        _ => return None,
    };
    if let Some(event) = exit.interrupted {
        view!(vcpu).reinject(event);
    }
    Some(handled)
}

/// HLT with RFLAGS.IF = 1 (RIP already past it), at the current TSC.
pub fn on_halt(vcpu: &mut Vcpu) -> HaltDecision {
    apic_access::on_halt(&mut vcpu.apic.lapic, cpu::rdtsc())
}

/// When a vCPU blocking in `SCHEDOP_block`/`SCHEDOP_poll` (until
/// `pv_deadline`, ns, if any) must wake at the latest: its APIC timer is an
/// event that ends the block too.
pub fn block_deadline(vcpu: &Vcpu, pv_deadline: Option<u64>) -> Option<u64> {
    let apic = vcpu.apic.lapic.next_deadline().map(deadline_ns);
    match (pv_deadline, apic) {
        (Some(pv), Some(apic)) => Some(pv.min(apic)),
        (pv, apic) => pv.or(apic),
    }
}

/// Guest system time (ns) at which the TSC has reached `tsc`: rounded up, so
/// a vCPU woken at that time finds its APIC deadline passed.
pub fn deadline_ns(tsc: u64) -> u64 {
    let khz = u128::from((crate::arch::lapic::tsc_hz() / 1000).max(1));
    (u128::from(tsc) * 1_000_000)
        .div_ceil(khz)
        .min(u128::from(u64::MAX)) as u64
}

fn min_timer_ticks() -> u64 {
    crate::arch::lapic::tsc_hz() / (1_000_000_000 / MIN_TIMER_NS)
}

/// Logs vCPU `vcpu`'s APIC counters, if the guest used its APIC.
pub fn log_stats(domain: &str, vcpu: &Vcpu) {
    let counters = vcpu.apic.counters;
    let stats = vcpu.apic.lapic.stats();
    if counters.mmio == 0 && counters.injected == 0 {
        return;
    }
    defmt::info!(
        "domain {=str} vCPU {=u8}: local APIC: {=u64} MMIO accesses ({=u64} dropped), {=u64} interrupts injected, {=u64} windows, {=u64} timer expirations, {=u64} IPIs sent ({=u64} not emulated)",
        domain, vcpu.index, counters.mmio, counters.dropped_writes, counters.injected, counters.windows,
        stats.timer_expirations, stats.ipis_sent, counters.unsupported_ipis
    );
}

impl Machine<'_> {
    /// Before VMRUN of vCPU `index`: inject the APIC's interrupt or ask for
    /// a window, load V_TPR, and make sure the host timer fires by the
    /// APIC's next deadline.
    pub(super) fn apic_before_entry(&mut self, index: usize) {
        let Some(vcpu) = self.vcpus.get_mut(index) else {
            return;
        };
        let now = cpu::rdtsc();
        let vmcb = &mut vcpu.vmcb;
        let readiness = Readiness {
            interrupts_enabled: vmcb.read_u64(offset::RFLAGS) & RFLAGS_IF != 0,
            interrupt_shadow: vmcb.read_u64(offset::INTERRUPT_SHADOW) & 1 != 0,
            event_queued: vmcb.read_u64(offset::EVENT_INJECTION) & EVENT_VALID != 0,
        };
        let apic = &mut vcpu.apic;
        let window = match apic_access::prepare_entry(&mut apic.lapic, now, readiness) {
            Injection::Nothing => None,
            Injection::Inject { vector } => {
                vmcb.write_u64(
                    offset::EVENT_INJECTION,
                    apic_access::event_injection(vector),
                );
                apic.counters.injected += 1;
                None
            }
            Injection::RequestWindow { vector } => {
                apic.counters.windows += 1;
                Some(vector)
            }
        };
        let tpr = apic.lapic.tpr();
        let control = vmcb.read_u64(offset::INTERRUPT_CONTROL);
        vmcb.write_u64(
            offset::INTERRUPT_CONTROL,
            apic_access::interrupt_control(control, window, tpr),
        );
        apic.tpr_written = tpr;
        if let Some(deadline) = apic.lapic.next_deadline() {
            let deadline = deadline.max(now.saturating_add(min_timer_ticks()));
            let here = &mut self.pcpus[self.cpu % MAX_CPUS];
            if deadline < here.armed_event {
                crate::arch::lapic::arm_oneshot(deadline);
                here.armed_event = deadline;
            }
        }
    }

    /// The timer interrupt that ended a guest run: if it was only the
    /// running vCPU's APIC deadline (armed by [`Self::apic_before_entry`]
    /// ahead of the switch point's event), re-arm for that event and say the
    /// slice goes on: the next entry injects the guest's interrupt, and the
    /// pCPU is not taken from the vCPU its own timer was for.
    pub(super) fn apic_timer_tick(&mut self) -> bool {
        let here = &mut self.pcpus[self.cpu % MAX_CPUS];
        if here.armed_event < here.slice_event && cpu::rdtsc() < here.slice_event {
            crate::arch::lapic::arm_oneshot(here.slice_event);
            here.armed_event = here.slice_event;
            true
        } else {
            false
        }
    }

    /// Carries out what vCPU `index`'s APIC asked for.
    pub(super) fn apic_effect(&mut self, index: usize, effect: LapicEffect) {
        match effect {
            // The next entry pulls the host timer in (`apic_before_entry`).
            LapicEffect::None | LapicEffect::TimerChanged { .. } => {}
            LapicEffect::SendIpi {
                destination,
                delivery,
            } => self.deliver_ipi(index, destination, delivery),
        }
    }

    /// An IPI from vCPU `sender`: into the IRR of every addressed vCPU of
    /// its domain; each recipient that was blocked or halted wakes up.
    fn deliver_ipi(&mut self, sender: usize, destination: Destination, delivery: Delivery) {
        let Some(domain) = self.vcpus.get(sender).map(|vcpu| vcpu.domain) else {
            return;
        };
        let mut accepted: Vec<usize, MAX_VCPUS_TOTAL> = Vec::new();
        let recipients = self
            .vcpus
            .iter_mut()
            .enumerate()
            .filter(|(_, vcpu)| vcpu.domain == domain)
            .map(|(index, vcpu)| (index, index == sender, &mut vcpu.apic.lapic));
        let report = apic_access::deliver_ipi(destination, delivery, recipients, |index| {
            let _ = accepted.push(index);
        });
        if report.unsupported {
            if let Some(vcpu) = self.vcpus.get_mut(sender) {
                vcpu.apic.counters.unsupported_ipis += 1;
                if vcpu.apic.counters.unsupported_ipis == 1 {
                    defmt::warn!(
                        "domain {=usize} vCPU {=u8}: NMI, SMI, INIT and start-up IPIs are not emulated; dropped",
                        domain,
                        vcpu.index
                    );
                }
            }
        }
        let mut woke = false;
        for index in accepted {
            // A recipient another pCPU runs takes the interrupt at its next
            // entry: make it exit now.
            if let Some(cpu) = self.running_on(index) {
                self.kick(cpu, false);
            }
            let Some(entity) = self.entity_of_vcpu(index) else {
                continue;
            };
            // A vCPU waiting for a page-in stays waiting: the interrupt is
            // in its IRR and is injected when it runs again.
            let paging = self
                .vcpus
                .get(index)
                .is_some_and(|vcpu| vcpu.page_wait.is_some());
            if !paging
                && matches!(
                    self.scheduler.state(entity),
                    Some(RunState::Halted | RunState::Waiting)
                )
            {
                self.scheduler.set_state(entity, RunState::Runnable);
                if let Some(vcpu) = self.vcpus.get_mut(index) {
                    vcpu.wake_at = None;
                }
                woke = true;
            }
        }
        if woke {
            self.report_wakes(super::vcpu::system_time_ns());
            // The sender's exit resumes its own vCPU without a switch
            // point, so nothing else would pass the wake-up on: the woken
            // vCPU would wait on an idle pCPU for its next timer event (up
            // to a slice). Hand the scheduler server its events and kick an
            // idle pCPU now, as a switch point would.
            self.flush_events();
            self.kick_for_work();
        }
    }
}

/// The APIC's offsets are what the decoder must reach: keep the page the
/// size the model expects.
const _: () = assert!(lapic::PAGE_BYTES == 0x1000);

//! A vCPU as the kernel holds it (VMCB + saved registers), and the adapters
//! that let the pure exit handler reach it, its domain's memory and the host.

use hypervisor_core::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use hypervisor_core::cpuid::CpuidResult;
use hypervisor_core::exit::PendingEvent;
use hypervisor_core::frame_state::FrameState;
use hypervisor_core::guest_memory::{GuestMemory, GuestPaging, MemoryError};
use hypervisor_core::paging::PageTable;
use hypervisor_core::vcpu::{Gpr, Platform, VcpuState};

use crate::arch::memory::OwnedFrames;
use crate::arch::svm::{offset, GuestRegisters, Vmcb};
use crate::arch::cpu;

/// One virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    /// Its VMCB.
    pub vmcb: Vmcb,
    /// Registers the VMCB does not hold.
    pub registers: GuestRegisters,
    /// Index of its domain.
    pub domain: usize,
    /// Its index inside the domain (its APIC ID).
    pub index: u8,
    /// The PV single-shot timer (guest system time, ns).
    pub timer: Option<u64>,
    /// TSC ticks spent running the guest.
    pub run_ticks: u64,
    /// When a blocked vCPU must wake (guest system time, ns).
    pub wake_at: Option<u64>,
    /// Its adaptive halt-polling window and statistics.
    pub poller: hypervisor_core::halt_poll::HaltPoller,
    /// The halt in progress, if it is halted or blocked.
    pub halt: Option<HaltRecord>,
    /// Wake-to-run latency of timed wake-ups.
    pub wake_latency: LatencyHistogram,
    /// The scheduler has been told this halt ended.
    pub wake_reported: bool,
    /// The guest frame number it waits for, while a page-in is under way.
    pub page_wait: Option<u64>,
    /// The domain's TLB generation this vCPU's ASID last saw; the core
    /// flushes the ASID at the next VMRUN when the domain's has moved on.
    pub tlb_seen: u64,
    /// Its virtual local APIC (`super::apic`).
    pub apic: super::apic::VcpuApic,
}

/// One halt in progress (TSC values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaltRecord {
    /// When the vCPU halted.
    pub started: u64,
    /// When its timer wakes it, if it has one.
    pub deadline: Option<u64>,
    /// The polling window granted for this halt, TSC ticks.
    pub window: u64,
    /// Ticks spent polling so far.
    pub polled: u64,
    /// Whether the pCPU really went to sleep during this halt.
    pub waited: bool,
    /// Its wake-up time is known (`deadline`) and polling is on: the pCPU
    /// sleeps until shortly before it and polls the rest
    /// (`hypervisor_core::halt_poll::TimedPoll`) instead of KVM's polling.
    pub timed: bool,
    /// The deadline came while the pCPU polled for it.
    pub woke_polling: bool,
}

/// Width of a latency bin, ns.
const LATENCY_BIN_NS: u64 = 2000;
/// Latency bins (up to 256 µs; later wake-ups count as overflow).
const LATENCY_BINS: usize = 128;

/// Wake-to-run latencies in 2 µs bins up to 256 µs, for medians without a
/// heap (small: one per vCPU, and the machine lives on the boot stack).
#[derive(Debug, Clone, Copy)]
pub struct LatencyHistogram {
    bins: [u32; LATENCY_BINS],
    overflow: u32,
    count: u32,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { bins: [0; LATENCY_BINS], overflow: 0, count: 0 }
    }
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn add(&mut self, ns: u64) {
        match self.bins.get_mut((ns / LATENCY_BIN_NS) as usize) {
            Some(bin) => *bin += 1,
            None => self.overflow += 1,
        }
        self.count += 1;
    }

    /// Samples counted.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The median, ns (middle of its bin); `None` without samples.
    pub fn median_ns(&self) -> Option<u64> {
        let rank = self.count.div_ceil(2).max(1);
        let mut seen = 0;
        for (index, &bin) in self.bins.iter().enumerate() {
            seen += bin;
            if seen >= rank {
                return Some(index as u64 * LATENCY_BIN_NS + LATENCY_BIN_NS / 2);
            }
        }
        (self.count > 0).then_some(LATENCY_BINS as u64 * LATENCY_BIN_NS)
    }
}

/// [`VcpuState`] over a VMCB, the saved registers and the PV timer.
pub struct VcpuView<'a> {
    /// The VMCB.
    pub vmcb: &'a mut Vmcb,
    /// The saved registers.
    pub registers: &'a mut GuestRegisters,
    /// The single-shot timer.
    pub timer: &'a mut Option<u64>,
}

const EFER_LMA: u64 = 1 << 10;
const SEGMENT_LONG: u16 = 1 << 9;

fn event_injection(vector: u8, kind: u8, error_code: Option<u32>) -> u64 {
    let mut event = u64::from(vector) | (u64::from(kind & 7) << 8) | (1 << 31);
    if let Some(code) = error_code {
        event |= (1 << 11) | (u64::from(code) << 32);
    }
    event
}

impl VcpuState for VcpuView<'_> {
    fn gpr(&self, register: Gpr) -> u64 {
        match register {
            Gpr::Rax => self.vmcb.read_u64(offset::RAX),
            Gpr::Rbx => self.registers.rbx,
            Gpr::Rcx => self.registers.rcx,
            Gpr::Rdx => self.registers.rdx,
            Gpr::Rsi => self.registers.rsi,
            Gpr::Rdi => self.registers.rdi,
            Gpr::R8 => self.registers.r8,
            Gpr::R10 => self.registers.r10,
        }
    }

    fn set_gpr(&mut self, register: Gpr, value: u64) {
        match register {
            Gpr::Rax => self.vmcb.write_u64(offset::RAX, value),
            Gpr::Rbx => self.registers.rbx = value,
            Gpr::Rcx => self.registers.rcx = value,
            Gpr::Rdx => self.registers.rdx = value,
            Gpr::Rsi => self.registers.rsi = value,
            Gpr::Rdi => self.registers.rdi = value,
            Gpr::R8 => self.registers.r8 = value,
            Gpr::R10 => self.registers.r10 = value,
        }
    }

    fn rip(&self) -> u64 {
        self.vmcb.read_u64(offset::RIP)
    }

    fn set_rip(&mut self, rip: u64) {
        self.vmcb.write_u64(offset::RIP, rip);
        // The emulated instruction completed: an STI or MOV SS shadow that
        // covered it has ended (AMD APM vol. 2 §15.21.5).
        self.vmcb.write_u64(offset::INTERRUPT_SHADOW, 0);
    }

    fn efer(&self) -> u64 {
        self.vmcb.read_u64(offset::EFER)
    }

    fn set_efer(&mut self, efer: u64) {
        self.vmcb.write_u64(offset::EFER, efer);
    }

    fn pat(&self) -> u64 {
        self.vmcb.read_u64(offset::G_PAT)
    }

    fn set_pat(&mut self, pat: u64) {
        self.vmcb.write_u64(offset::G_PAT, pat);
    }

    fn paging(&self) -> GuestPaging {
        GuestPaging {
            cr0: self.vmcb.read_u64(offset::CR0),
            cr3: self.vmcb.read_u64(offset::CR3),
            cr4: self.vmcb.read_u64(offset::CR4),
            efer: self.vmcb.read_u64(offset::EFER),
        }
    }

    fn in_64bit_mode(&self) -> bool {
        self.efer() & EFER_LMA != 0 && self.vmcb.segment(offset::CS).attributes & SEGMENT_LONG != 0
    }

    fn cpl(&self) -> u8 {
        self.vmcb.read_u8(offset::CPL)
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.vmcb.write_u64(offset::EVENT_INJECTION, event_injection(vector, 3, error_code));
    }

    fn reinject(&mut self, event: PendingEvent) {
        self.vmcb.write_u64(offset::EVENT_INJECTION, event_injection(event.vector, event.kind, event.error_code));
    }

    fn interrupts_enabled(&self) -> bool {
        self.vmcb.read_u64(offset::RFLAGS) & (1 << 9) != 0
    }

    fn timer_deadline(&self) -> Option<u64> {
        *self.timer
    }

    fn set_timer_deadline(&mut self, deadline: Option<u64>) {
        *self.timer = deadline;
    }
}

/// A domain's guest-physical memory, reached through its nested page table.
///
/// Accesses on the guest's behalf (hypercall arguments, the hypercall page)
/// see the frames' paging states (`hypervisor_core::frame_state`): a frame
/// that is not resident, or one being paged out that the core would write,
/// is [`MemoryError::NotResident`], and the first such address is kept in
/// [`Self::not_resident`] so the run loop can bring the frame back and retry
/// the instruction.
#[derive(Debug)]
pub struct DomainMemory {
    /// The nested page table.
    pub npt: PageTable,
    /// The first guest-physical address an access found not resident.
    pub not_resident: core::cell::Cell<Option<u64>>,
}

impl DomainMemory {
    /// Memory reached through `npt`.
    pub fn new(npt: PageTable) -> Self {
        Self { npt, not_resident: core::cell::Cell::new(None) }
    }

    /// The paging state of the frame holding `address`, and where its entry
    /// lives; `None` outside guest RAM.
    pub fn frame_state(&self, address: u64) -> Option<(HostPhysAddr, usize, FrameState)> {
        let (table, index) = self.npt.leaf_slot(&OwnedFrames, address)?;
        let state = FrameState::decode(OwnedFrames.read_u64(table, index))?;
        Some((table, index, state))
    }

    fn frame_of(&self, address: u64, write: bool) -> Result<HostPhysAddr, MemoryError> {
        let at = GuestPhysAddr::new_truncate(address);
        match self.frame_state(address) {
            None => Err(MemoryError::Unmapped(at)),
            Some((_, _, FrameState::Ram(frame))) => Ok(HostPhysAddr::new_truncate(frame)),
            Some((_, _, FrameState::PagingOut(frame))) if !write => Ok(HostPhysAddr::new_truncate(frame)),
            Some(_) => {
                if self.not_resident.get().is_none() {
                    self.not_resident.set(Some(address));
                }
                Err(MemoryError::NotResident(at))
            }
        }
    }

    /// Calls `action(frame, offset_in_frame, range_in_buffer)` for each page
    /// piece of `[address, address + length)`.
    fn for_each_piece(
        &self,
        address: GuestPhysAddr,
        length: usize,
        write: bool,
        mut action: impl FnMut(HostPhysAddr, usize, core::ops::Range<usize>),
    ) -> Result<(), MemoryError> {
        let mut done = 0;
        while done < length {
            let at = address.as_u64().checked_add(done as u64).ok_or(MemoryError::Unmapped(address))?;
            let offset = (at % PAGE_SIZE) as usize;
            let piece = (PAGE_SIZE as usize - offset).min(length - done);
            action(self.frame_of(at, write)?, offset, done..done + piece);
            done += piece;
        }
        Ok(())
    }
}

impl GuestMemory for DomainMemory {
    fn read(&self, address: GuestPhysAddr, buffer: &mut [u8]) -> Result<(), MemoryError> {
        let frames = OwnedFrames;
        self.for_each_piece(address, buffer.len(), false, |frame, offset, range| {
            frames.read(frame, offset, &mut buffer[range]);
        })
    }

    fn write(&mut self, address: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        let mut frames = OwnedFrames;
        self.for_each_piece(address, data.len(), true, |frame, offset, range| {
            frames.write(frame, offset, &data[range]);
        })
    }
}

/// The host services exit handling needs.
#[derive(Debug, Default)]
pub struct KernelPlatform;

impl Platform for KernelPlatform {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        cpu::cpuid(leaf, subleaf)
    }

    fn guest_tsc(&self) -> u64 {
        cpu::rdtsc()
    }

    fn console_line(&mut self, domain: &str, line: &str) {
        defmt::println!("{=str}: {=str}", domain, line);
    }

    fn system_time_ns(&self) -> u64 {
        system_time_ns()
    }

    fn tsc_khz(&self) -> u32 {
        (crate::arch::lapic::tsc_hz() / 1000) as u32
    }
}

/// Guest system time: the TSC in ns at the rate guests are told.
pub fn system_time_ns() -> u64 {
    let khz = u128::from((crate::arch::lapic::tsc_hz() / 1000).max(1));
    (u128::from(cpu::rdtsc()) * 1_000_000 / khz) as u64
}

//! The machine: its domains and vCPUs, and the run loop of the bootstrap
//! pCPU. Until a scheduler server publishes decisions, the core's built-in
//! round-robin picks the next vCPU and a timer tick ends each slice.

use heapless::Vec;
use hypervisor_core::exit;
use hypervisor_core::frame::FrameAllocator;
use hypervisor_core::round_robin::{RoundRobin, RunState};
use hypervisor_core::vcpu::{self as exits, DomainDevices, Outcome, StopReason};
use ipc::boot::{DomainSpec, MAX_DOMAINS};
use ipc::exit_status::ExitStatus;
use ipc::hypercall::ShutdownReason;

use crate::arch::{self, cpu, interrupts, svm};
use super::domain::{self, BuildError, PermissionMaps};
use super::vcpu::{DomainMemory, KernelPlatform, Vcpu, VcpuView};

/// Most vCPUs the machine holds.
pub const MAX_VCPUS_TOTAL: usize = 64;

/// Where a domain is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Has runnable or parked vCPUs.
    Running,
    /// Powered itself off.
    PoweredOff,
    /// Stopped by the core, crashed, or never started.
    Failed,
}

struct DomainSlot<'a> {
    state: DomainState,
    devices: DomainDevices<'a>,
    memory: Option<DomainMemory>,
}

/// Every domain and vCPU, and the built-in scheduler.
pub struct Machine<'a> {
    pub(super) host: svm::HostState,
    pub(super) maps: PermissionMaps,
    domains: Vec<DomainSlot<'a>, MAX_DOMAINS>,
    vcpus: Vec<Vcpu, MAX_VCPUS_TOTAL>,
    scheduler: RoundRobin<MAX_VCPUS_TOTAL>,
}

impl<'a> Machine<'a> {
    /// No domains yet.
    pub fn new(host: svm::HostState, maps: PermissionMaps) -> Self {
        Self { host, maps, domains: Vec::new(), vcpus: Vec::new(), scheduler: RoundRobin::new() }
    }

    /// ASIDs used by domain vCPUs are `1..=MAX_VCPUS_TOTAL`; this one is free.
    pub fn spare_asid(&self) -> u32 {
        MAX_VCPUS_TOTAL as u32 + 1
    }

    /// Builds domain `index` and its boot vCPU. On error the domain is
    /// recorded as failed and the others are unaffected.
    pub fn build_domain(&mut self, frames: &mut FrameAllocator<'_>, index: usize, spec: &'a DomainSpec, image: &[u8]) -> Result<(), BuildError> {
        let bytes = u64::from(spec.memory_mib) << 20;
        let mut slot = DomainSlot {
            state: DomainState::Failed,
            devices: DomainDevices::new(spec.name.as_str(), bytes, spec.vcpus),
            memory: None,
        };
        let result = (|| {
            let mut memory = domain::build_memory(frames, bytes)?;
            let entry = domain::load_kernel(&mut memory, spec, image, bytes)?;
            let asid = self.vcpus.len() as u32 + 1;
            let vcpu = domain::build_boot_vcpu(frames, &self.maps, &memory, index, asid, entry)?;
            slot.memory = Some(memory);
            Ok(vcpu)
        })();
        let outcome = match result {
            Ok(vcpu) => {
                if self.vcpus.push(vcpu).is_ok() && self.scheduler.add().is_some() {
                    slot.state = DomainState::Running;
                    Ok(())
                } else {
                    Err(BuildError::OutOfMemory)
                }
            }
            Err(error) => Err(error),
        };
        // MAX_DOMAINS slots exist for at most MAX_DOMAINS manifest entries.
        let _ = self.domains.push(slot);
        outcome
    }

    /// Records the domain's state after building (kept for symmetry with logs).
    pub fn set_domain(&mut self, index: usize, _name: &str, state: DomainState) {
        if let Some(slot) = self.domains.get_mut(index) {
            slot.state = state;
        }
    }

    fn end_domain(&mut self, index: usize, state: DomainState) {
        let Some(slot) = self.domains.get_mut(index) else { return };
        slot.state = state;
        if !slot.devices.console.is_empty() {
            let mut platform = KernelPlatform;
            let name = slot.devices.name;
            slot.devices.console.flush(&mut |line| {
                hypervisor_core::vcpu::Platform::console_line(&mut platform, name, line)
            });
        }
        for (vcpu_index, vcpu) in self.vcpus.iter().enumerate() {
            if vcpu.domain == index {
                self.scheduler.set_state(vcpu_index, RunState::Stopped);
            }
        }
    }

    fn log_stop(&self, index: usize, reason: StopReason, rip: u64) {
        let name = self.domains.get(index).map_or("?", |slot| slot.devices.name);
        match reason {
            StopReason::OutsideMemory { address, write } => defmt::warn!(
                "domain {=str} stopped: {=str}: {=str} at GPA {=u64:#x} (rip {=u64:#x})",
                name,
                reason.describe(),
                if write { "write" } else { "read" },
                address.as_u64(),
                rip
            ),
            StopReason::UnhandledExit { code } => defmt::warn!(
                "domain {=str} stopped: {=str} {=u64:#x} (rip {=u64:#x})",
                name,
                reason.describe(),
                code,
                rip
            ),
            StopReason::StringIo { port } => defmt::warn!(
                "domain {=str} stopped: {=str} (port {=u16:#x}, rip {=u64:#x})",
                name,
                reason.describe(),
                port,
                rip
            ),
            _ => defmt::warn!("domain {=str} stopped: {=str} (rip {=u64:#x})", name, reason.describe(), rip),
        }
    }

    /// Runs vCPU `index` until its slice ends (a timer tick), it yields,
    /// halts, or its domain ends.
    fn run_slice(&mut self, index: usize) {
        let slice_start = interrupts::ticks();
        loop {
            let Some(vcpu) = self.vcpus.get_mut(index) else { return };
            svm::run(&self.host, &mut vcpu.vmcb, &mut vcpu.registers);
            let exit = exit::decode(&vcpu.vmcb.raw_exit());
            vcpu.vmcb.write_u64(svm::offset::EVENT_INJECTION, 0);
            let domain_index = vcpu.domain;
            let vcpu_number = vcpu.index;
            let Some(slot) = self.domains.get_mut(domain_index) else { return };
            let Some(memory) = slot.memory.as_mut() else { return };
            let mut view = VcpuView { vmcb: &mut vcpu.vmcb, registers: &mut vcpu.registers };
            let outcome = exits::handle(&exit, &mut view, memory, &mut slot.devices, &mut KernelPlatform, vcpu_number);
            let rip = view.vmcb.read_u64(svm::offset::RIP);
            match outcome {
                Outcome::Resume => {}
                Outcome::HostInterrupt => cpu::take_pending_interrupts(),
                Outcome::Yield => return,
                Outcome::Halt => {
                    self.scheduler.set_state(index, RunState::Halted);
                    return;
                }
                Outcome::Shutdown(reason) => {
                    let name = slot.devices.name;
                    let state = match reason {
                        ShutdownReason::Poweroff => {
                            defmt::info!("domain {=str} powered off", name);
                            DomainState::PoweredOff
                        }
                        ShutdownReason::Crash => {
                            defmt::warn!("domain {=str} crashed (guest reported SHUTDOWN_crash)", name);
                            DomainState::Failed
                        }
                        _ => {
                            defmt::warn!("domain {=str} asked for reboot/suspend/watchdog, which is not supported: stopped", name);
                            DomainState::Failed
                        }
                    };
                    self.end_domain(domain_index, state);
                    return;
                }
                Outcome::Stop(reason) => {
                    self.log_stop(domain_index, reason, rip);
                    self.end_domain(domain_index, DomainState::Failed);
                    return;
                }
            }
            if interrupts::ticks() != slice_start {
                return;
            }
        }
    }

    /// Runs until every domain has ended, then exits the machine.
    pub fn run(mut self) -> ! {
        let mut last_tick = interrupts::ticks();
        loop {
            cpu::take_pending_interrupts();
            let now = interrupts::ticks();
            if now != last_tick {
                last_tick = now;
                self.scheduler.tick();
            }
            match self.scheduler.pick() {
                Some(index) => self.run_slice(index),
                None if self.scheduler.all_stopped() => self.finish(),
                None => cpu::wait_for_interrupt(),
            }
        }
    }

    fn finish(&self) -> ! {
        let failed = self.domains.iter().any(|slot| slot.state == DomainState::Failed);
        defmt::info!("all domains ended");
        arch::exit_machine(if failed { ExitStatus::DomainFailed } else { ExitStatus::AllPoweredOff })
    }
}

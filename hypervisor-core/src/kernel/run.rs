//! The machine: its domains and vCPUs, and the run loop of the bootstrap
//! pCPU. Until a scheduler server publishes decisions, the core's built-in
//! round-robin picks the next vCPU and a timer tick ends each slice.

use heapless::Vec;
use hypervisor_core::apic_access::HaltDecision;
use hypervisor_core::exit;
use hypervisor_core::lapic::LapicEffect;
use hypervisor_core::frame::FrameAllocator;
use hypervisor_core::round_robin::{RoundRobin, RunState};
use hypervisor_core::vcpu::{self as exits, DomainDevices, Outcome, StopReason};
use ipc::boot::{DomainSpec, MAX_DOMAINS};
use ipc::exit_status::ExitStatus;
use ipc::hypercall::ShutdownReason;

use hypervisor_core::halt_poll::{Halt, HaltPollParameters};
use hypervisor_core::server::{self as supervision, ServerEvent, ServerFault, Syscall};
use ipc::boot::{ServerSpec, MAX_SERVERS};
use ipc::server::{syscall, MAX_LOG_LEN};

use crate::arch::smp::MAX_CPUS;
use crate::arch::{self, cpu, interrupts, lapic, svm, user};
use super::domain::{self, BuildError, PermissionMaps};
use super::scheduling::{SchedulerLink, VcpuFacts};
use super::server::{Drained, SchedulerInput, Server, ServerBuildError, ServerRun};
use ipc::publication::PublicationError;
use ipc::messages::scheduler::{self as sched_wire, Event};
use super::vcpu::{DomainMemory, HaltRecord, KernelPlatform, Vcpu, VcpuView};
use super::paging::{self, DomainPaging, GuestAccess, PagerLink, Touch};
use hypervisor_core::injector::{self, Injector, Observation};

fn ns_to_tsc(ns: u64) -> u64 {
    let khz = u128::from((lapic::tsc_hz() / 1000).max(1));
    (u128::from(ns) * khz).div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64
}

fn tsc_to_ns(ticks: u64) -> u64 {
    let khz = u128::from((lapic::tsc_hz() / 1000).max(1));
    (u128::from(ticks) * 1_000_000 / khz) as u64
}

/// The injector's name for a server kind it may kill.
fn injection_target(kind: ipc::server::ServerKind) -> Option<injector::Target> {
    match kind {
        ipc::server::ServerKind::Scheduler => Some(injector::Target::Scheduler),
        ipc::server::ServerKind::Pager => Some(injector::Target::Pager),
        ipc::server::ServerKind::Test => None,
    }
}

/// The built-in round-robin's slice (and the longest a pCPU sleeps), ns.
const ROUND_ROBIN_SLICE_NS: u64 = 1_000_000_000 / super::TICK_HZ;
/// Bounds on the slice a scheduler decision asks for, ns (Xen's timeslice
/// range, 1..1000 ms).
const MIN_SLICE_NS: u64 = 1_000_000;
const MAX_SLICE_NS: u64 = 1_000_000_000;

/// Most vCPUs the machine holds.
pub const MAX_VCPUS_TOTAL: usize = 64;
/// Most schedulable entities: vCPUs and servers.
pub const MAX_ENTITIES: usize = MAX_VCPUS_TOTAL + MAX_SERVERS;

/// What the built-in scheduler rotates over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entity {
    /// Index into the vCPUs.
    Vcpu(usize),
    /// Index into the servers.
    Server(usize),
}

/// How a vCPU's slice ended, for the scheduler's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SliceEnd {
    /// The timer ended it.
    Preempted,
    /// The vCPU halted or blocked.
    Blocked,
    /// The vCPU yielded.
    Yielded,
    /// The domain ended (or the vCPU went down).
    Ended,
}

/// What one server step ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The server made a syscall the core completed; it may run on.
    Continue,
    /// It yielded, waits, was preempted or was restarted: its turn is over.
    TurnOver,
}

/// What a pCPU does after its switch point (`super::smp::cpu_loop`).
pub enum Action {
    /// Look again: a server ran, or the picked vCPU could not enter.
    Again,
    /// Enter vCPU `index` with `entry` (outside the lock).
    Guest {
        /// The vCPU.
        index: usize,
        /// What VMRUN needs.
        entry: Entry,
    },
    /// Halt polling: spin for vCPU `index`'s wake-up until TSC `until` or
    /// a kick.
    Poll {
        /// The halted vCPU polled for.
        index: usize,
        /// When polling stops.
        until: u64,
    },
    /// Nothing to run: halt the pCPU until an interrupt.
    Sleep,
    /// Run server `index` (pCPU 0 only) from `context`, outside the lock.
    Server {
        /// The server.
        index: usize,
        /// A copy of its registers, written back when it returns.
        context: user::UserContext,
    },
}

/// What entering a vCPU takes, carried outside the lock: its VMCB (marked
/// as running on this pCPU, so no one else touches it) and a copy of its
/// registers, written back after the exit.
pub struct Entry {
    /// The VMCB's address.
    pub vmcb: hypervisor_core::addr::HostPhysAddr,
    /// The registers VMRUN does not hold.
    pub registers: svm::GuestRegisters,
}

/// The resident target the pager works to for a domain in `state`: its
/// target while it runs, its whole memory once it has ended (nothing of a
/// stopped domain is worth paging out, and the core refuses to).
fn pager_target(state: DomainState, memory_pages: u64, target_pages: u64) -> u64 {
    if state == DomainState::Running { target_pages } else { memory_pages }
}

/// The pCPU other than `me` (among the `online` ones) that runs vCPU `index`.
fn running_elsewhere(pcpus: &[Pcpu; MAX_CPUS], online: usize, me: usize, index: usize) -> Option<usize> {
    (0..online.min(MAX_CPUS)).find(|&cpu| cpu != me && pcpus[cpu].running.is_some_and(|(_, running)| running == index))
}

/// One pCPU as the machine sees it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Pcpu {
    /// The scheduler entity and vCPU it runs, from its pick to its slice end.
    running: Option<(usize, usize)>,
    /// Its timer interrupts when the slice started (the next one ends it).
    slice_ticks: u64,
    /// The vCPU's run ticks when the slice started.
    ran_before: u64,
    /// Nothing to run at its last switch point.
    idle: bool,
    /// It must reach a switch point at its next exit (a tickle).
    reschedule: bool,
    /// The vCPU whose slice its timer cut short for something else (a
    /// server's deadline, another vCPU's timer): entity, vCPU index and the
    /// TSC value its slice ends at. Unless a tickle or a new run list for
    /// this pCPU comes first, it gets the rest of its slice back once that
    /// is done (`switch_point`, `kick_for_work`).
    interrupted: Option<(usize, usize, u64)>,

    /// The TSC value the one-shot timer was armed for at the switch point.
    pub(super) slice_event: u64,
    /// The TSC value the running vCPU's slice ends at (`slice_event` is
    /// earlier when something else is due first).
    slice_end: u64,
    /// Its overhead and idle time (`smp::overhead_and_idle_ticks`) at the
    /// start of the current overhead window, and the TSC value the window
    /// ends at (`report_overhead`).
    overhead_window: (u64, u64, u64),
    /// The TSC value it is armed for now: earlier than `slice_event` while
    /// the running vCPU's local APIC timer is due first (`super::apic`).
    pub(super) armed_event: u64,
    /// Timed polling's learnt wake-up lateness of this pCPU.
    timed: hypervisor_core::halt_poll::TimedPoll,
    /// The early wake-up it is armed for (timed polling), if any.
    early_wake: Option<u64>,
    /// TSC ticks each pick took (reading the published run queue, or the
    /// round-robin), and how many switch points there were.
    picks: hypervisor_core::halt_poll::Log2Histogram,
    /// pCPU 0's housekeeping clock: its timer interrupts and TSC at the last
    /// housekeeping.
    last_tick: u64,
    last_housekeeping: u64,
}

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

pub(super) struct DomainSlot<'a> {
    pub(super) state: DomainState,
    pub(super) devices: DomainDevices<'a>,
    pub(super) memory: Option<DomainMemory>,
    /// Paging state (issue #5): slot map, counters, nominations.
    pub(super) paging: Option<DomainPaging>,
    /// The domain's halt-polling maximum, ns (`None`: the global one).
    halt_poll_max: Option<u64>,
    /// Credit weight and cap in force (the core keeps them across scheduler restarts).
    weight: u32,
    cap: u32,
    /// TSC when the domain was built (its CPU share is measured from here).
    started: u64,
}

/// Every domain, vCPU and server, the free memory, and the built-in scheduler.
pub struct Machine<'a> {
    pub(super) host: svm::HostState,
    pub(super) maps: PermissionMaps,
    pub(super) frames: FrameAllocator<'static>,
    pub(super) domains: Vec<DomainSlot<'a>, MAX_DOMAINS>,
    pub(super) vcpus: Vec<Vcpu, MAX_VCPUS_TOTAL>,
    pub(super) servers: Vec<Server<'a>, MAX_SERVERS>,
    entities: Vec<Entity, MAX_ENTITIES>,
    pub(super) scheduler: RoundRobin<MAX_ENTITIES>,
    /// Per pCPU, which vCPU last ran with each ASID (`usize::MAX`: none).
    asid_owner: [[usize; MAX_VCPUS_TOTAL + 1]; MAX_CPUS],
    /// The pCPU holding the lock (`super::smp::locked` sets it).
    pub(super) cpu: usize,
    /// Online pCPUs.
    pub(super) online: usize,
    /// Every pCPU's state.
    pub(super) pcpus: [Pcpu; MAX_CPUS],
    /// Per vCPU: the pCPU it last ran on (its timers are that pCPU's).
    last_pcpu: [u8; MAX_VCPUS_TOTAL],
    /// The round-robin's wake-up count the last kick check saw.
    wakeups_seen: u64,
    /// pCPUs to kick once the lock is released (bit per pCPU).
    pending_kicks: u32,
    /// A server has work that must not wait for pCPU 0's slice to end.
    server_urgent: bool,
    /// Halt-polling tunables (KVM's defaults until `hvctl halt-poll`).
    halt_poll: HaltPollParameters,
    /// The scheduler server's link.
    pub(super) scheduling: SchedulerLink,
    /// TSC value at which the appliance's `stop_after` ends the run.
    pub(super) stop_at: Option<u64>,
    /// The `hvctl` channel.
    control: super::control::ControlPort,
    /// The pager server's link.
    pub(super) pager: PagerLink,
    /// The seeded fault injector of a fault campaign (issue #6), if any.
    pub(super) injector: Option<Injector>,
    /// A kill the injector decided, carried out at the next safe point.
    pending_kill: Option<injector::Kill>,
    /// CPU time per domain in windows that open one accounting period after
    /// each scheduler restart (the campaign's "shares after recovery").
    recovery: Recovery,
}

/// Per-domain CPU time measured after the scheduler recovered from kills.
#[derive(Debug, Default)]
struct Recovery {
    /// When the next window opens (TSC), after a new scheduler took over.
    opens_at: Option<u64>,
    /// The open window's start: each domain's run ticks then.
    start: Option<[u64; MAX_DOMAINS]>,
    /// Run ticks inside closed windows, per domain.
    total: [u64; MAX_DOMAINS],
}

impl<'a> Machine<'a> {
    /// No domains yet.
    pub fn new(host: svm::HostState, maps: PermissionMaps, frames: FrameAllocator<'static>) -> Self {
        Self {
            host,
            maps,
            frames,
            domains: Vec::new(),
            vcpus: Vec::new(),
            servers: Vec::new(),
            entities: Vec::new(),
            scheduler: RoundRobin::new(),
            asid_owner: [[usize::MAX; MAX_VCPUS_TOTAL + 1]; MAX_CPUS],
            cpu: 0,
            online: 1,
            pcpus: [Pcpu::default(); MAX_CPUS],
            last_pcpu: [0; MAX_VCPUS_TOTAL],
            wakeups_seen: 0,
            pending_kicks: 0,
            server_urgent: false,
            halt_poll: HaltPollParameters::default(),
            scheduling: SchedulerLink::default(),
            stop_at: None,
            control: super::control::ControlPort::default(),
            pager: PagerLink::default(),
            injector: None,
            pending_kill: None,
            recovery: Recovery::default(),
        }
    }

    fn add_entity(&mut self, entity: Entity) -> bool {
        self.entities.push(entity).is_ok() && self.scheduler.add().is_some()
    }

    /// Loads a server from its image and makes it runnable.
    pub fn start_server(&mut self, spec: &'a ServerSpec, image: &'a [u8]) -> Result<(), ServerBuildError> {
        // The pager is granted the swap device, if the machine has one.
        let device = if spec.kind == ipc::server::ServerKind::Pager {
            let found = arch::virtio::find_block_device();
            match found {
                Some(base) => defmt::info!("swap device: virtio-blk at {=u64:#x}, granted to server {=str}", base, spec.name.as_str()),
                None => match arch::virtio::legacy_block_device() {
                    Some(version) => defmt::warn!("virtio-blk version {=u32} found: only version 2 is supported (QEMU: -global virtio-mmio.force-legacy=false); no swap device", version),
                    None => defmt::info!("no swap device: paging is off"),
                },
            }
            found
        } else {
            None
        };
        let server = Server::new(&mut self.frames, spec, image, device)?;
        let index = self.servers.len();
        if self.servers.push(server).is_err() || !self.add_entity(Entity::Server(index)) {
            return Err(ServerBuildError::OutOfMemory);
        }
        if spec.kind == ipc::server::ServerKind::Scheduler {
            self.scheduling.server = Some(index);
        }
        if spec.kind == ipc::server::ServerKind::Pager {
            self.pager.server = Some(index);
            self.pager.restart();
        }
        Ok(())
    }

    /// What a (re)started server must learn from the core before it serves:
    /// the pager gets every domain's size and target. Mechanism state lives
    /// in the core, so a new instance rebuilds its policy state from this.
    pub(super) fn introduce_server(&mut self, index: usize) {
        if self.scheduling.server == Some(index) {
            self.send_rebuild_stream();
            return;
        }
        if self.pager.server == Some(index) {
            self.pager.restart();
            self.pump_pager();
        }
    }

    /// The ASID of vCPU `index`. ASID 0 is the host's; when the CPU has
    /// fewer ASIDs than vCPUs (TCG reports 16) they are shared, and
    /// [`Self::claim_asid`] flushes the TLB when the owner changes.
    fn asid_for(&self, index: usize) -> u32 {
        let usable = self.host.asid_count.saturating_sub(1).max(1) as usize;
        (index % usable) as u32 + 1
    }

    /// An ASID for the benchmark probe (shared, flushed like any other).
    pub fn spare_asid(&self) -> u32 {
        self.asid_for(MAX_VCPUS_TOTAL)
    }

    /// Before running vCPU `index`: if another vCPU used its ASID since it
    /// last ran, have VMRUN flush that ASID's TLB entries.
    /// A vCPU that last ran on another pCPU is flushed too: this pCPU's
    /// TLB may hold its ASID's entries from before (ASIDs are per pCPU).
    fn claim_asid(&mut self, index: usize) {
        let asid = self.asid_for(index);
        let cpu = self.cpu % MAX_CPUS;
        let migrated = self.last_pcpu.get(index).is_none_or(|&last| usize::from(last) != cpu);
        let Some(owner) = self.asid_owner[cpu].get_mut(asid as usize) else { return };
        let mut flush = *owner != index || migrated;
        *owner = index;
        if let Some(vcpu) = self.vcpus.get_mut(index) {
            // The domain's nested mappings lost rights since this vCPU last
            // ran (paging): flush too.
            let generation = self.domains.get(vcpu.domain).and_then(|slot| slot.paging.as_ref()).map_or(0, |paging| paging.tlb_generation);
            flush |= vcpu.tlb_seen != generation;
            vcpu.tlb_seen = generation;
            vcpu.vmcb.write_u8(svm::offset::TLB_CONTROL, u8::from(flush));
        }
    }

    /// Builds domain `index` and its boot vCPU. On error the domain is
    /// recorded as failed and the others are unaffected.
    pub fn build_domain(&mut self, index: usize, spec: &'a DomainSpec, image: &[u8], ramdisk: Option<&[u8]>) -> Result<(), BuildError> {
        let asid = self.asid_for(self.vcpus.len());
        let frames = &mut self.frames;
        let bytes = u64::from(spec.memory_mib) << 20;
        let mut slot = DomainSlot {
            state: DomainState::Failed,
            devices: DomainDevices::new(spec.name.as_str(), bytes, spec.vcpus),
            memory: None,
            paging: None,
            halt_poll_max: spec.halt_poll_max_ns,
            weight: spec.cpu_weight,
            cap: spec.cap,
            started: cpu::rdtsc(),
        };
        let result = (|| {
            let mut memory = domain::build_memory(frames, bytes)?;
            let entry = domain::load_kernel(&mut memory, spec, image, ramdisk, bytes)?;
            let vcpu = domain::build_boot_vcpu(frames, &self.maps, &memory, index, asid, entry)?;
            let pages = bytes / hypervisor_core::addr::PAGE_SIZE;
            let target = spec.memory_target_mib.map_or(pages, |mib| (u64::from(mib) << 20) / hypervisor_core::addr::PAGE_SIZE);
            slot.paging = Some(DomainPaging::new(frames, index, pages, target.min(pages)).map_err(|_| BuildError::OutOfMemory)?);
            slot.memory = Some(memory);
            Ok(vcpu)
        })();
        let outcome = match result {
            Ok(vcpu) => {
                let vcpu_index = self.vcpus.len();
                if self.vcpus.push(vcpu).is_ok() && self.add_entity(Entity::Vcpu(vcpu_index)) {
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

    /// Logs the CPU time domain `index`'s vCPUs used since boot, and its
    /// share of one pCPU in per mille.
    fn log_cpu_time(&self, index: usize) {
        let Some(slot) = self.domains.get(index) else { return };
        let ticks: u64 = self.vcpus.iter().filter(|vcpu| vcpu.domain == index).map(|vcpu| vcpu.run_ticks).sum();
        let elapsed = cpu::rdtsc().saturating_sub(slot.started).max(1);
        let per_mille = (u128::from(ticks) * 1000 / u128::from(elapsed)) as u64;
        let micros = |ticks: u64| (u128::from(ticks) * 1_000_000 / u128::from(lapic::tsc_hz().max(1))) as u64;
        defmt::info!(
            "domain {=str}: cpu time {=u64} us in {=u64} us, {=u64} per mille of a pCPU",
            slot.devices.name,
            micros(ticks),
            micros(elapsed),
            per_mille
        );
    }

    fn end_domain(&mut self, index: usize, state: DomainState) {
        self.log_cpu_time(index);
        self.log_paging(index);
        self.log_halt_stats(index);
        let Some(slot) = self.domains.get_mut(index) else { return };
        slot.state = state;
        if !slot.devices.console.is_empty() {
            let mut platform = KernelPlatform;
            let name = slot.devices.name;
            slot.devices.console.flush(&mut |line| {
                hypervisor_core::vcpu::Platform::console_line(&mut platform, name, line)
            });
        }
        // Nothing of it needs paging out any more: the pager hears its
        // target is its whole memory (and relearns that at a restart, see
        // `pager_target`), so it stops nominating frames the core would
        // refuse.
        let memory_pages = slot.paging.as_ref().map(|paging_state| paging_state.memory_pages);
        if let (Some(memory_pages), Some(pager)) = (memory_pages, self.pager.server) {
            self.pager_send(ipc::messages::pager::ToServer::Domain { domain: index as u16, memory_pages, target_pages: memory_pages });
            self.wake_server(pager, ipc::server::syscall::WAKE_MESSAGES);
        }
        for entity_index in 0..self.entities.len() {
            if let Some(&Entity::Vcpu(vcpu)) = self.entities.get(entity_index) {
                if self.vcpus.get(vcpu).is_some_and(|vcpu| vcpu.domain == index) {
                    self.scheduler.set_state(entity_index, RunState::Stopped);
                    // Its vCPUs on other pCPUs leave at their next entry.
                    if let Some(cpu) = self.running_on(vcpu) {
                        self.kick(cpu, true);
                    }
                }
            }
        }
    }

    /// Logs domain `index`'s paging counters (scenarios judge them).
    fn log_paging(&self, index: usize) {
        let Some(slot) = self.domains.get(index) else { return };
        let Some(paging) = slot.paging.as_ref() else { return };
        let median_bucket = {
            let total: u32 = paging.latency.iter().sum();
            let mut seen = 0;
            paging.latency.iter().position(|&count| {
                seen += count;
                total > 0 && seen * 2 >= total
            })
        };
        defmt::info!(
            "domain {=str}: paging: out {=u64}, in {=u64}, evict-failures {=u64}, dropped {=u64}, dropped-paged {=u64}, repopulated {=u64}, resident {=u64}, memory {=u64}, target {=u64}, page-in-median-below-us {=u64}",
            slot.devices.name, paging.pages_out, paging.pages_in, paging.evict_failures, paging.dropped, paging.dropped_paged,
            paging.repopulated, paging.resident, paging.memory_pages, paging.target_pages,
            median_bucket.map_or(0, |bucket| 2u64 << bucket)
        );
        paging::log_bench(paging);
    }

    fn log_stop_reason(&self, index: usize, reason: &str) {
        let name = self.domains.get(index).map_or("?", |slot| slot.devices.name);
        defmt::warn!("domain {=str} stopped: {=str}", name, reason);
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
            StopReason::ApicAccess { address, .. } => defmt::warn!(
                "domain {=str} stopped: {=str} at GPA {=u64:#x} (rip {=u64:#x})",
                name,
                reason.describe(),
                address.as_u64(),
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

    /// pCPU `self.cpu` starts a slice of vCPU `index` (scheduler entity
    /// `entity`): marks it running here, reports the dispatch, and prepares
    /// the first entry.
    fn begin_vcpu_slice(&mut self, entity: usize, index: usize, resumed: bool) -> Action {
        let cpu = self.cpu;
        self.claim_asid(index);
        self.end_halt(index);
        if let Some(slot) = self.last_pcpu.get_mut(index) {
            *slot = cpu as u8;
        }
        let ran_before = self.vcpus.get(index).map_or(0, |vcpu| vcpu.run_ticks);
        let here = self.here();
        here.running = Some((entity, index));
        here.slice_ticks = interrupts::ticks_of(cpu);
        here.ran_before = ran_before;
        // A resumed slice goes on: the server already has its dispatch
        // (reporting it again would cancel a preemption it put off).
        if !resumed {
            let now = super::vcpu::system_time_ns();
            let wire = self.wire_vcpu(index);
            self.report(Event::Dispatched { pcpu: cpu as u8, vcpu: wire, at: now });
        }
        match self.prepare_entry(index) {
            Some(entry) => Action::Guest { index, entry },
            None => {
                self.end_vcpu_slice(SliceEnd::Ended);
                Action::Again
            }
        }
    }

    /// The slice on this pCPU ended `reason`: report it and free the vCPU
    /// for any pCPU.
    fn end_vcpu_slice(&mut self, reason: SliceEnd) {
        let here = self.here();
        let Some((_, index)) = here.running.take() else { return };
        let ran_before = here.ran_before;
        let cpu = self.cpu as u8;
        let ran = self.vcpus.get(index).map_or(0, |vcpu| vcpu.run_ticks).saturating_sub(ran_before);
        let now = super::vcpu::system_time_ns();
        if let Some(vcpu) = self.wire_vcpu(index) {
            self.report(Event::Ran { vcpu, pcpu: cpu, ns: tsc_to_ns(ran) });
            match reason {
                SliceEnd::Blocked => self.report(Event::Blocked { vcpu, at: now }),
                SliceEnd::Yielded => self.report(Event::Yielded { vcpu }),
                SliceEnd::Preempted | SliceEnd::Ended => {}
            }
        }
    }

    /// Everything before VMRUN of vCPU `index` on this pCPU: the APIC's
    /// injection, a TLB flush if the domain's nested mappings lost rights
    /// since the vCPU last entered, and the pCPU's guest mark (see
    /// [`super::smp::shoot_down`]). `None` if its domain has ended.
    fn prepare_entry(&mut self, index: usize) -> Option<Entry> {
        let domain = self.vcpus.get(index)?.domain;
        if self.domains.get(domain).is_none_or(|slot| slot.state != DomainState::Running) {
            return None;
        }
        self.apic_before_entry(index);
        let vcpu = self.vcpus.get_mut(index)?;
        let generation = self.domains.get(domain).and_then(|slot| slot.paging.as_ref()).map_or(0, |paging| paging.tlb_generation);
        if vcpu.tlb_seen != generation {
            // Paging took rights away from a nested mapping since the
            // last entry: flush this ASID's translations.
            vcpu.tlb_seen = generation;
            vcpu.vmcb.write_u8(svm::offset::TLB_CONTROL, 1);
        }
        super::smp::entering_guest(self.cpu, domain);
        Some(Entry { vmcb: vcpu.vmcb.physical_address(), registers: vcpu.registers })
    }

    /// After vCPU `index` exited on this pCPU, having run `ran` TSC ticks
    /// with `registers`: handles the exit. Returns the next entry if the
    /// slice goes on, `None` when it ended (it has been reported).
    pub(super) fn after_exit(&mut self, index: usize, registers: &svm::GuestRegisters, ran: u64) -> Option<Entry> {
        if let Some(vcpu) = self.vcpus.get_mut(index) {
            vcpu.registers = *registers;
            vcpu.run_ticks += ran;
        }
        let entity = self.here().running.map_or(usize::MAX, |(entity, _)| entity);
        let handled = self.handle_exit(entity, index);
        if let Some(domain) = self.vcpus.get(index).map(|vcpu| vcpu.domain) {
            self.start_requested_vcpus(domain);
        }
        let reschedule = core::mem::take(&mut self.here().reschedule);
        let next = match handled {
            None if reschedule => SliceEnd::Preempted,
            None => match self.prepare_entry(index) {
                Some(entry) => return Some(entry),
                None => SliceEnd::Ended,
            },
            Some(end) => end,
        };
        // The timer fired before the slice's end and nobody asked for a
        // reschedule: something else was due. Xen's vCPU would keep its
        // slice (only a tickle preempts it), so the core gives it back.
        let slice_end = self.here().slice_end;
        if next == SliceEnd::Preempted && !reschedule && cpu::rdtsc() < slice_end {
            let entity = self.here().running.map(|(entity, _)| entity);
            self.here().interrupted = entity.map(|entity| (entity, index, slice_end));
        }
        self.end_vcpu_slice(next);
        self.kick_for_work();
        None
    }

    /// Builds the vCPUs domain `domain` brought up with `VCPUOP_up` and
    /// makes them runnable (any pCPU may pick them); the scheduler server
    /// hears of them through a fresh rebuild stream.
    fn start_requested_vcpus(&mut self, domain: usize) {
        let mut started = false;
        loop {
            let asid = self.asid_for(self.vcpus.len());
            let Some(slot) = self.domains.get_mut(domain) else { return };
            let Some((number, context)) = slot.devices.take_start_request() else { break };
            let built = match slot.memory.as_ref() {
                Some(memory) => domain::build_secondary_vcpu(&mut self.frames, &self.maps, memory, domain, number, asid, &context),
                None => Err(BuildError::OutOfMemory),
            };
            let name = slot.devices.name;
            let index = self.vcpus.len();
            let added = match built {
                Ok(vcpu) => self.vcpus.push(vcpu).is_ok() && self.add_entity(Entity::Vcpu(index)),
                Err(_) => false,
            };
            if added {
                defmt::info!("domain {=str}: vCPU {=u8} up", name, number);
                started = true;
            } else {
                defmt::warn!("domain {=str}: vCPU {=u8} could not be started (no memory or vCPU slot)", name, number);
                if let Some(slot) = self.domains.get_mut(domain) {
                    slot.devices.bring_up.start_failed(number);
                }
            }
        }
        if started {
            self.send_rebuild_stream();
        }
    }

    /// Handles the exit vCPU `index` just took; `Some` when the slice ends.
    fn handle_exit(&mut self, entity: usize, index: usize) -> Option<SliceEnd> {
        let Some(vcpu) = self.vcpus.get_mut(index) else { return Some(SliceEnd::Ended) };
        super::apic::after_exit(vcpu);
        let exit = exit::decode(&vcpu.vmcb.raw_exit());
        vcpu.vmcb.write_u64(svm::offset::EVENT_INJECTION, 0);
        vcpu.vmcb.write_u8(svm::offset::TLB_CONTROL, 0);
        let domain_index = vcpu.domain;
        let vcpu_number = vcpu.index;
        let Some(slot) = self.domains.get_mut(domain_index) else { return Some(SliceEnd::Ended) };
        let (Some(memory), Some(paging_state)) = (slot.memory.as_mut(), slot.paging.as_mut()) else { return Some(SliceEnd::Ended) };
        // A nested page fault inside guest RAM is paging's: the frame is
        // paged out, being paged out, or was given back.
        let paging_fault = match exit.reason {
            exit::VmExit::NestedPageFault(fault) if fault.address.as_u64() < slot.devices.memory_bytes => {
                Some((fault.address.as_u64(), fault.write))
            }
            _ => None,
        };
        let saved = (vcpu.vmcb.read_u64(svm::offset::RIP), vcpu.vmcb.read_u64(svm::offset::RAX));
        // The local APIC's exits (its MMIO page, which lies above guest
        // RAM, the interrupt window, its MSR) before `vcpu::handle`.
        let apic = match paging_fault {
            Some(_) => None,
            None => super::apic::handle_exit(&exit, vcpu, memory),
        };
        let mut view = VcpuView { vmcb: &mut vcpu.vmcb, registers: &mut vcpu.registers, timer: &mut vcpu.timer };
        let (outcome, apic_effect) = match (paging_fault, apic) {
            (Some(_), _) => (Outcome::Resume, LapicEffect::None),
            (None, Some(handled)) => handled,
            (None, None) => {
                let mut access = GuestAccess { memory, paging: paging_state, frames: &mut self.frames };
                (exits::handle(&exit, &mut view, &mut access, &mut slot.devices, &mut KernelPlatform, vcpu_number), LapicEffect::None)
            }
        };
        let Some(memory) = slot.memory.as_ref() else { return Some(SliceEnd::Ended) };
        let Some(paging_state) = slot.paging.as_mut() else { return Some(SliceEnd::Ended) };
        // An access on the guest's behalf (a hypercall argument) found a
        // frame not resident: undo the exit's effects, bring the frame
        // back, and run the instruction again.
        let retried = memory.not_resident.take().filter(|_| paging_fault.is_none());
        if retried.is_some() {
            view.vmcb.write_u64(svm::offset::RIP, saved.0);
            view.vmcb.write_u64(svm::offset::RAX, saved.1);
        }
        if let Some((address, write)) = paging_fault.or(retried.map(|address| (address, true))) {
            match paging::touch(memory, paging_state, &mut self.frames, address, write) {
                Touch::Retry => {}
                Touch::Wait => {
                    let gfn = address / hypervisor_core::addr::PAGE_SIZE;
                    vcpu.page_wait = Some(gfn);
                    self.pager.request(domain_index as u16, gfn, cpu::rdtsc());
                    self.scheduler.set_state(entity, RunState::Waiting);
                    self.pump_pager();
                    return Some(SliceEnd::Blocked);
                }
                Touch::Fail(reason) => {
                    let rip = view.vmcb.read_u64(svm::offset::RIP);
                    let name = slot.devices.name;
                    defmt::warn!("domain {=str} stopped: {=str} at GPA {=u64:#x} (rip {=u64:#x})", name, reason, address, rip);
                    self.end_domain(domain_index, DomainState::Failed);
                    return Some(SliceEnd::Ended);
                }
            }
            return (interrupts::ticks_of(self.cpu) != self.here().slice_ticks).then_some(SliceEnd::Preempted);
        }
        let rip = view.vmcb.read_u64(svm::offset::RIP);
        match outcome {
            Outcome::Resume => {}
            Outcome::HostInterrupt => cpu::take_pending_interrupts(),
            Outcome::Yield => return Some(SliceEnd::Yielded),
            Outcome::Halt => {
                // Xen's wakeup-waiting recheck against the local APIC: a
                // pending interrupt ends the HLT at once; an armed APIC
                // timer blocks the vCPU until its deadline.
                let (state, deadline) = match super::apic::on_halt(vcpu) {
                    HaltDecision::Resume => return None,
                    HaltDecision::BlockUntil { deadline } => {
                        let wake = super::apic::deadline_ns(deadline);
                        vcpu.wake_at = Some(wake);
                        (RunState::Waiting, Some(vcpu.timer.map_or(wake, |timer| timer.min(wake))))
                    }
                    HaltDecision::Park => (RunState::Halted, vcpu.timer),
                };
                self.begin_halt(index, deadline);
                self.scheduler.set_state(entity, state);
                return Some(SliceEnd::Blocked);
            }
            Outcome::Block { deadline_ns } => {
                vcpu.wake_at = super::apic::block_deadline(vcpu, deadline_ns);
                let deadline = deadline_ns.or(vcpu.timer);
                self.begin_halt(index, deadline);
                self.scheduler.set_state(entity, RunState::Waiting);
                return Some(SliceEnd::Blocked);
            }
            Outcome::Down => {
                defmt::warn!("domain {=str}: vCPU {=u8} is down (HLT with interrupts disabled)", slot.devices.name, vcpu_number);
                self.scheduler.set_state(entity, RunState::Stopped);
                let domain_vcpus_left = self.entities.iter().enumerate().any(|(entity_index, entity)| {
                    matches!(*entity, Entity::Vcpu(other) if self.vcpus.get(other).is_some_and(|vcpu| vcpu.domain == domain_index))
                        && self.scheduler.state(entity_index) != Some(RunState::Stopped)
                });
                if !domain_vcpus_left {
                    self.log_stop_reason(domain_index, "every vCPU is down");
                    self.end_domain(domain_index, DomainState::Failed);
                }
                return Some(SliceEnd::Ended);
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
                return Some(SliceEnd::Ended);
            }
            Outcome::Stop(reason) => {
                self.log_stop(domain_index, reason, rip);
                self.end_domain(domain_index, DomainState::Failed);
                return Some(SliceEnd::Ended);
            }
        }
        self.apic_effect(index, apic_effect);
        if interrupts::ticks_of(self.cpu) != self.here().slice_ticks {
            // The running vCPU's own APIC timer does not end its slice.
            if !self.apic_timer_tick() {
                return Some(SliceEnd::Preempted);
            }
            self.here().slice_ticks = interrupts::ticks_of(self.cpu);
        }
        None
    }

    /// Stops server `index` for `fault` and starts its next generation.
    pub(super) fn restart_server(&mut self, index: usize, fault: ServerFault) {
        let Some(server) = self.servers.get_mut(index) else { return };
        let name = server.spec.name.as_str();
        let next = server.health.generation.wrapping_add(1);
        match fault {
            ServerFault::Exception { vector, error_code, address, rip } => defmt::warn!(
                "server {=str} stopped: {=str} (vector {=u8}, error {=u64:#x}) at {=u64:#x}, rip {=u64:#x}; restarting as generation {=u32}",
                name, fault.describe(), vector, error_code, address, rip, next
            ),
            ServerFault::InvalidSyscall { number } | ServerFault::BadSyscallArgument { number } => defmt::warn!(
                "server {=str} stopped: {=str} (syscall {=u64}); restarting as generation {=u32}",
                name, fault.describe(), number, next
            ),
            ServerFault::Exited { code } => defmt::warn!(
                "server {=str} stopped: {=str} with code {=u64}; restarting as generation {=u32}",
                name, fault.describe(), code, next
            ),
            ServerFault::TooManyMalformed { count: slices } | ServerFault::Hung { slices } => defmt::warn!(
                "server {=str} stopped: {=str} ({=u32} in a row); restarting as generation {=u32}",
                name, fault.describe(), slices, next
            ),
            ServerFault::Killed | ServerFault::NoProgress | ServerFault::MissedHeartbeat => {
                defmt::warn!("server {=str} stopped: {=str}; restarting as generation {=u32}", name, fault.describe(), next)
            }
        }
        server.stopped_at = Some(cpu::rdtsc());
        if self.scheduling.server == Some(index) {
            // Its last credit table, before the next instance starts on a
            // zeroed publication area.
            self.read_credit_table();
            self.scheduling.instance_stopped();
        }
        if self.pager.server == Some(index) {
            self.pager_stopped();
        }
        let Some(server) = self.servers.get_mut(index) else { return };
        let name = server.spec.name.as_str();
        if let Err(error) = server.restart(&mut self.frames) {
            defmt::error!("server {=str} could not be restarted: {=str}; it stays down", name, error.reason());
            if let Some(entity) = self.entity_of_server(index) {
                self.scheduler.set_state(entity, RunState::Stopped);
            }
            return;
        }
        // A deliberate kill (hvctl, benchmarks) is not a crash: no backoff.
        let delay_ns = if fault == ServerFault::Killed { 0 } else { server.health.restart_delay(Self::ns_since_boot()) };
        let entity = self.entity_of_server(index);
        if delay_ns == 0 {
            // The new instance runs at once, whatever the old one was doing.
            if let Some(entity) = entity {
                self.scheduler.set_state(entity, RunState::Runnable);
            }
        }
        let Some(server) = self.servers.get_mut(index) else { return };
        let name = server.spec.name.as_str();
        if delay_ns > 0 {
            // Crash-loop backoff: the new instance waits before it runs.
            defmt::warn!("server {=str}: crash loop, next start in {=u64} ms", name, delay_ns / 1_000_000);
            let start = cpu::rdtsc().saturating_add(ns_to_tsc(delay_ns));
            server.run = ServerRun::Waiting { deadline: Some(start) };
            server.starts_at = Some(start);
            if let Some(entity) = entity {
                self.scheduler.set_state(entity, RunState::Waiting);
            }
        }
        self.introduce_server(index);
    }

    /// The pager instance stopped: roll back what it left half-done (every
    /// nomination becomes `Ram` again; page-ins stay requested, to be asked
    /// of the next instance).
    fn pager_stopped(&mut self) {
        for slot in self.domains.iter_mut() {
            let (Some(memory), Some(paging_state)) = (slot.memory.as_ref(), slot.paging.as_mut()) else { continue };
            let cancelled = paging::roll_back(memory, paging_state);
            if cancelled > 0 {
                defmt::info!("domain {=str}: {=usize} nominations of the stopped pager rolled back", slot.devices.name, cancelled);
            }
        }
    }

    /// The pager's DMA region (base, pages), if it was granted one.
    fn pager_dma(&self) -> Option<(hypervisor_core::addr::HostPhysAddr, u64)> {
        self.pager.server.and_then(|index| self.servers.get(index)).and_then(|server| server.dma_region())
    }

    /// Sends `message` to the pager, or queues it if its ring is full.
    fn pager_send(&mut self, message: ipc::messages::pager::ToServer) {
        let Some(server) = self.pager.server.and_then(|index| self.servers.get_mut(index)) else { return };
        if !self.pager.outbox.is_empty() || !server.send(message.clone()) {
            // The drain limit keeps room for every reply.
            let _ = self.pager.queue(message);
        }
    }

    /// Handles one paging message of the pager.
    fn pager_message(&mut self, message: &ipc::messages::pager::ToCore) {
        use ipc::messages::pager::{Refusal, ToCore, ToServer};
        let domain = match *message {
            ToCore::Partition { domain, .. }
            | ToCore::Nominate { domain, .. }
            | ToCore::Evict { domain, .. }
            | ToCore::EvictFailed { domain, .. }
            | ToCore::Load { domain, .. }
            | ToCore::LoadFailed { domain, .. }
            | ToCore::Stats { domain, .. } => domain,
            ToCore::Ready | ToCore::Heartbeat { .. } | ToCore::Target { .. } => return,
        };
        let dma = self.pager_dma();
        let rebuilt = self.pager.rebuild == paging::Rebuild::Complete;
        let Some(slot) = self.domains.get_mut(usize::from(domain)) else { return };
        if let ToCore::Nominate { gfn, .. } = *message {
            if slot.state != DomainState::Running || !rebuilt {
                let reason = if rebuilt { Refusal::NotRam } else { Refusal::TooManyInFlight };
                self.pager_send(ToServer::NominateRefused { domain, gfn, reason });
                return;
            }
        }
        let (Some(memory), Some(paging_state)) = (slot.memory.as_ref(), slot.paging.as_mut()) else { return };
        let was_full = paging_state.swap_full;
        let mut replies: Vec<ToServer, 2> = Vec::new();
        let effect = paging::handle(message, memory, paging_state, &mut self.frames, dma, &mut |reply| {
            let _ = replies.push(reply);
        });
        let name = slot.devices.name;
        if paging_state.swap_full && !was_full {
            defmt::warn!("domain {=str}: swap partition full: eviction stops, the guest keeps its frames", name);
        }
        for reply in replies {
            if matches!(reply, ToServer::Nominated { .. }) {
                self.observe(Observation::Nominated);
            }
            self.pager_send(reply);
        }
        match effect {
            paging::Effect::None => {}
            paging::Effect::Loaded { domain, gfn } => self.page_arrived(domain, gfn),
            paging::Effect::StopDomain { domain, gfn, reason } => {
                self.pager.page_ins.retain(|request| request.domain != domain);
                // Only a running domain is stopped: a second failed page-in
                // (two vCPUs waiting) or one of a domain that powered off or
                // ended otherwise meanwhile changes neither its state nor
                // its log.
                if self.domains.get(usize::from(domain)).is_some_and(|slot| slot.state == DomainState::Running) {
                    defmt::warn!("domain {=str} stopped: {=str} (gfn {=u64:#x})", name, reason, gfn);
                    self.end_domain(usize::from(domain), DomainState::Failed);
                }
            }
            paging::Effect::Unexpected => {
                self.pager_send(ToServer::Error { code: ipc::messages::ErrorCode::Unexpected });
            }
        }
    }

    /// Frame `gfn` of `domain` is resident again (or no longer paged): the
    /// vCPUs waiting for it run again.
    fn page_arrived(&mut self, domain: u16, gfn: u64) {
        let since = self.pager.complete(domain, gfn);
        let now = cpu::rdtsc();
        if let (Some(since), Some(paging_state)) = (since, self.domains.get_mut(usize::from(domain)).and_then(|slot| slot.paging.as_mut())) {
            paging_state.record_latency(now.saturating_sub(since), lapic::tsc_hz());
        }
        let system_time = super::vcpu::system_time_ns();
        let mut woken: Vec<sched_wire::Vcpu, MAX_VCPUS_TOTAL> = Vec::new();
        for (entity_index, entity) in self.entities.iter().enumerate() {
            let Entity::Vcpu(index) = *entity else { continue };
            let Some(vcpu) = self.vcpus.get_mut(index) else { continue };
            if vcpu.domain == usize::from(domain) && vcpu.page_wait == Some(gfn) {
                vcpu.page_wait = None;
                if self.scheduler.state(entity_index) == Some(RunState::Waiting) {
                    self.scheduler.set_state(entity_index, RunState::Runnable);
                    let _ = woken.push(sched_wire::Vcpu::new(vcpu.domain as u16, vcpu.index));
                }
            }
        }
        for vcpu in woken {
            self.report(Event::Woke { vcpu, at: system_time });
        }
    }

    /// Page-ins whose frame is no longer paged out (the guest gave it back,
    /// or it was loaded) release their waiters.
    fn settle_page_ins(&mut self) {
        if self.pager.page_ins.is_empty() {
            return;
        }
        let settled: Vec<(u16, u64), MAX_VCPUS_TOTAL> = self
            .pager
            .page_ins
            .iter()
            .filter(|request| {
                let memory = self.domains.get(usize::from(request.domain)).and_then(|slot| slot.memory.as_ref());
                let state = memory.and_then(|memory| memory.frame_state(request.gfn * hypervisor_core::addr::PAGE_SIZE));
                !matches!(state, Some((_, _, hypervisor_core::frame_state::FrameState::PagingIn(_))))
            })
            .map(|request| (request.domain, request.gfn))
            .collect();
        for (domain, gfn) in settled {
            self.page_arrived(domain, gfn);
        }
    }

    /// Sends the pager what it is owed, as far as its ring has room: queued
    /// replies, a new instance's rebuild stream, page-in requests, slot
    /// releases and footprints. Never waits.
    pub(super) fn pump_pager(&mut self) {
        use ipc::messages::pager::ToServer;
        use paging::Rebuild;
        let Some(index) = self.pager.server else { return };
        let Some(server) = self.servers.get_mut(index) else { return };
        let mut sent = false;
        while let Some(message) = self.pager.outbox.front() {
            if !server.send(message.clone()) {
                break;
            }
            self.pager.outbox.pop_front();
            sent = true;
        }
        let mut room = self.pager.outbox.is_empty();
        while room {
            let next = match self.pager.rebuild {
                Rebuild::Complete => break,
                Rebuild::Domain(domain) => match self.domains.get(usize::from(domain)) {
                    None => Some((None, Rebuild::Paged(0, 0))),
                    Some(slot) => {
                        let Some(paging_state) = slot.paging.as_ref() else {
                            self.pager.rebuild = Rebuild::Domain(domain + 1);
                            continue;
                        };
                        let message = ToServer::Domain {
                            domain,
                            memory_pages: paging_state.memory_pages,
                            target_pages: pager_target(slot.state, paging_state.memory_pages, paging_state.target_pages),
                        };
                        Some((Some(message), Rebuild::Domain(domain + 1)))
                    }
                },
                Rebuild::Paged(domain, from) => match self.domains.get(usize::from(domain)) {
                    None => Some((None, Rebuild::Done)),
                    Some(slot) => match (slot.memory.as_ref(), slot.paging.as_ref()) {
                        (Some(memory), Some(paging_state)) => {
                            let (frames, resume) = paging::paged_batch(memory, paging_state, from);
                            let after = resume.map_or(Rebuild::Paged(domain + 1, 0), |gfn| Rebuild::Paged(domain, gfn));
                            let message = (!frames.is_empty()).then_some(ToServer::Paged { domain, frames });
                            Some((message, after))
                        }
                        _ => Some((None, Rebuild::Paged(domain + 1, 0))),
                    },
                },
                Rebuild::Done => Some((Some(ToServer::RebuildDone), Rebuild::Complete)),
            };
            let Some((message, after)) = next else { break };
            if let Some(message) = message {
                if !server.send(message) {
                    room = false;
                    break;
                }
                sent = true;
            }
            self.pager.rebuild = after;
        }
        if room && self.pager.rebuild == Rebuild::Complete {
            for request in self.pager.page_ins.iter_mut().filter(|request| !request.asked) {
                let memory = self.domains.get(usize::from(request.domain)).and_then(|slot| slot.memory.as_ref());
                let slot = memory.and_then(|memory| memory.frame_state(request.gfn * hypervisor_core::addr::PAGE_SIZE)).and_then(|(_, _, state)| state.slot());
                let Some(slot) = slot else { continue };
                if !server.send(ToServer::PageIn { domain: request.domain, gfn: request.gfn, slot }) {
                    room = false;
                    break;
                }
                request.asked = true;
                sent = true;
                if let Some(injector) = self.injector.as_mut() {
                    if let Some(kill) = injector.observe(Observation::PageInAsked, Self::ns_since_boot()) {
                        self.pending_kill = self.pending_kill.or(Some(kill));
                    }
                }
            }
            for (domain, slot) in self.domains.iter_mut().enumerate() {
                let Some(paging_state) = slot.paging.as_mut() else { continue };
                let mut cursor = self.pager.release_cursor.get(domain).copied().unwrap_or(0);
                while room {
                    let Some(released) = paging_state.next_release(cursor) else { break };
                    if !server.send(ToServer::Released { domain: domain as u16, slot: released }) {
                        room = false;
                        break;
                    }
                    paging_state.release_reported(released);
                    cursor = released;
                    sent = true;
                }
                if let Some(stored) = self.pager.release_cursor.get_mut(domain) {
                    *stored = cursor;
                }
                if room && paging_state.footprint_sent != Some(paging_state.resident) {
                    let message = ToServer::Footprint { domain: domain as u16, resident_pages: paging_state.resident };
                    if server.send(message) {
                        paging_state.footprint_sent = Some(paging_state.resident);
                        sent = true;
                    } else {
                        room = false;
                    }
                }
            }
        }
        if sent {
            self.wake_server(index, ipc::server::syscall::WAKE_MESSAGES);
        }
    }

    /// Feeds the fault injector; a kill it decides waits for
    /// [`Self::carry_out_kill`].
    fn observe(&mut self, observation: Observation) {
        let Some(injector) = self.injector.as_mut() else { return };
        if let Some(kill) = injector.observe(observation, Self::ns_since_boot()) {
            self.pending_kill = self.pending_kill.or(Some(kill));
        }
    }

    /// Carries out the injector's pending kill, at a point where no server
    /// message is half-handled.
    fn carry_out_kill(&mut self) {
        let Some(kill) = self.pending_kill.take() else { return };
        let kind = match kill.target {
            injector::Target::Scheduler => ipc::server::ServerKind::Scheduler,
            injector::Target::Pager => ipc::server::ServerKind::Pager,
        };
        let total = self.injector.as_ref().map_or(0, |injector| injector.kills());
        let server = super::server_kind_name(kind);
        match kill.point {
            injector::Point::AtMessage(count) => {
                defmt::warn!("fault injection: kill {=u32} of {=u32}: {=str} at message {=u32}", kill.number, total, server, count)
            }
            injector::Point::MidEviction => defmt::warn!("fault injection: kill {=u32} of {=u32}: {=str} mid-eviction", kill.number, total, server),
            injector::Point::MidPageIn => defmt::warn!("fault injection: kill {=u32} of {=u32}: {=str} mid-page-in", kill.number, total, server),
            injector::Point::Now => defmt::warn!("fault injection: kill {=u32} of {=u32}: {=str} now", kill.number, total, server),
        }
        if kind == ipc::server::ServerKind::Scheduler {
            self.recovery_close();
        }
        if let Some(index) = self.servers.iter().position(|server| server.spec.kind == kind) {
            self.restart_server(index, ServerFault::Killed);
        }
        if let Some(injector) = self.injector.as_ref().filter(|injector| injector.done() && injector.counts().scheduler + injector.counts().pager == kill.number) {
            let counts = injector.counts();
            defmt::info!(
                "fault injection: done: {=u32} kills ({=u32} at a message, {=u32} mid-eviction, {=u32} mid-page-in, {=u32} now; {=u32} scheduler, {=u32} pager)",
                kill.number, counts.at_message, counts.mid_eviction, counts.mid_page_in, counts.immediate, counts.scheduler, counts.pager
            );
        }
    }

    fn domain_run_ticks(&self) -> [u64; MAX_DOMAINS] {
        let mut ticks = [0; MAX_DOMAINS];
        for vcpu in &self.vcpus {
            if let Some(total) = ticks.get_mut(vcpu.domain) {
                *total += vcpu.run_ticks;
            }
        }
        ticks
    }

    /// A new scheduler instance took over: the recovery window opens one
    /// accounting period (a timeslice) later.
    fn scheduler_recovered(&mut self) {
        if self.injector.is_none() {
            return;
        }
        let timeslice_ms = u64::from(self.scheduling.tunables.0);
        self.recovery.opens_at = Some(cpu::rdtsc().saturating_add(lapic::tsc_hz() / 1000 * timeslice_ms));
    }

    fn recovery_tick(&mut self) {
        if self.recovery.opens_at.is_some_and(|at| cpu::rdtsc() >= at) {
            self.recovery.opens_at = None;
            self.recovery.start = Some(self.domain_run_ticks());
        }
    }

    /// Closes the open recovery window (a kill of the scheduler, or the end).
    fn recovery_close(&mut self) {
        self.recovery.opens_at = None;
        let Some(start) = self.recovery.start.take() else { return };
        let now = self.domain_run_ticks();
        for ((total, now), start) in self.recovery.total.iter_mut().zip(now).zip(start) {
            *total += now.saturating_sub(start);
        }
    }

    /// Logs each domain's share of the CPU time measured after recoveries.
    fn log_recovery_shares(&mut self) {
        self.recovery_close();
        let sum: u64 = self.recovery.total.iter().sum();
        if self.injector.is_none() || sum == 0 {
            return;
        }
        for (index, slot) in self.domains.iter().enumerate() {
            let ticks = self.recovery.total.get(index).copied().unwrap_or(0);
            let per_mille = (u128::from(ticks) * 1000 / u128::from(sum)) as u64;
            defmt::info!("fault injection: share after recovery: {=str} {=u64} per mille ({=u64} us)", slot.devices.name, per_mille, tsc_to_ns(ticks) / 1000);
        }
    }

    fn ns_since_boot() -> u64 {
        let hz = u128::from(lapic::tsc_hz().max(1));
        (u128::from(cpu::rdtsc()) * 1_000_000_000 / hz) as u64
    }

    /// Handles what the server's `to_core` ring holds; restarts it if it sent
    /// too much garbage. Returns whether it is still the same instance.
    fn drain_server(&mut self, index: usize) -> bool {
        let domains = self.domains.len() as u16;
        let shape = self.shape();
        let is_scheduler = self.scheduling.server == Some(index);
        let is_pager = self.pager.server == Some(index);
        let max = if is_pager { self.pager.reply_room() } else { ipc::ring::SLOT_COUNT };
        let Some(server) = self.servers.get_mut(index) else { return false };
        let input = if is_scheduler {
            Some(SchedulerInput { shape, link: &mut self.scheduling })
        } else {
            None
        };
        let generation = server.health.generation;
        let kind = server.spec.kind;
        let mut drained = Drained::default();
        match server.drain(domains, max, input, &mut drained) {
            Ok(()) => {
                for message in &drained.pager {
                    self.pager_message(message);
                }
                if !drained.pager.is_empty() {
                    // Replies to its requests: the pager has work again even
                    // if it yielded (a yielded server otherwise runs only when
                    // no vCPU wants the pCPU, and would stall its own I/O).
                    self.wake_server(index, ipc::server::syscall::WAKE_MESSAGES);
                }
                if let Some(target) = injection_target(kind) {
                    for _ in 0..drained.messages {
                        self.observe(Observation::Message(target));
                    }
                }
                if is_pager {
                    self.pump_pager();
                }
                if is_scheduler && drained.ready {
                    self.scheduler_recovered();
                }
                if drained.heartbeat {
                    let now = Self::ns_since_boot();
                    if let Some(server) = self.servers.get_mut(index) {
                        server.health.heartbeat(now);
                    }
                }
                self.carry_out_kill();
                if self.servers.get(index).is_none_or(|server| server.health.generation != generation) {
                    return false;
                }
                if drained.needs_rebuild {
                    defmt::warn!("scheduler asked for a new rebuild stream");
                    self.send_rebuild_stream();
                }
                let Some(server) = self.servers.get_mut(index) else { return false };
                if is_scheduler && drained.ready {
                    defmt::info!("scheduler generation {=u32} took over", server.health.generation);
                }
                for &(domain, accepted, floor_pages) in &drained.targets {
                    let name = self.domains.get(usize::from(domain)).map_or("?", |slot| slot.devices.name);
                    if accepted {
                        defmt::info!("pager accepted the target of domain {=str}", name);
                    } else {
                        defmt::warn!("pager refused the target of domain {=str} (floor {=u64} pages)", name, floor_pages);
                    }
                }
                if drained.ready {
                    let name = server.spec.name.as_str();
                    let generation = server.health.generation;
                    match server.stopped_at.take() {
                        Some(stopped) => {
                            let micros = (cpu::rdtsc() - stopped) * 1_000_000 / lapic::tsc_hz().max(1);
                            defmt::info!("server {=str} generation {=u32} ready, {=u64} us after the stop", name, generation, micros);
                        }
                        None => defmt::info!("server {=str} generation {=u32} ready", name, generation),
                    }
                }
                if drained.echoes > 0 && server.echo.verified % 100 < u64::from(drained.echoes) {
                    defmt::info!("server {=str}: {=u64} echoes verified", server.spec.name.as_str(), server.echo.verified - server.echo.verified % 100);
                }
                true
            }
            Err(fault) => {
                self.restart_server(index, fault);
                false
            }
        }
    }

    /// Runs server `index` until its next syscall, exception or interrupt,
    /// and carries out what it asked.
    pub(super) fn step_server(&mut self, index: usize) -> Step {
        let Some(server) = self.servers.get_mut(index) else { return Step::TurnOver };
        user::enter(&mut server.context);
        self.server_returned(index)
    }

    /// pCPU 0 starts a slice of server `index`: it runs outside the lock,
    /// on a copy of its context (in the core's window, which every server
    /// maps: the copy lives on pCPU 0's boot stack).
    fn begin_server_slice(&mut self, index: usize) -> Action {
        self.here().slice_ticks = interrupts::ticks_of(self.cpu);
        match self.servers.get_mut(index) {
            Some(server) => {
                // It runs again: whatever ends this slice, it is a server
                // with work until it yields again.
                server.yield_state.dispatched();
                Action::Server { index, context: server.context }
            }
            None => Action::Again,
        }
    }

    /// Server `index` came back to the core with `context`: carries out
    /// what it asked. Returns its context for the next step if its slice
    /// goes on, `None` when its turn is over.
    pub(super) fn after_server(&mut self, index: usize, context: &user::UserContext) -> Option<user::UserContext> {
        let server = self.servers.get_mut(index)?;
        server.context = *context;
        let step = self.server_returned(index);
        let goes_on = step == Step::Continue && interrupts::ticks_of(self.cpu) == self.here().slice_ticks;
        let next = if goes_on { self.servers.get(index).map(|server| server.context) } else { None };
        if next.is_none() {
            self.kick_for_work();
        }
        next
    }

    /// Carries out what server `index` asked for when it came back.
    fn server_returned(&mut self, index: usize) -> Step {
        let Some(server) = self.servers.get_mut(index) else { return Step::TurnOver };
        let event = supervision::decode(&server.context.exit());
        let call = match event {
            ServerEvent::Preempted { vector } => {
                interrupts::acknowledge(vector);
                // A busy slice is a whole slice of running without yielding
                // or waiting; timer interrupts for nearer deadlines (a
                // server's own short poll, a guest's APIC timer) preempt too,
                // but do not count.
                let now = cpu::rdtsc();
                if now.saturating_sub(server.busy_since) >= lapic::tsc_hz() / super::TICK_HZ {
                    server.busy_since = now;
                    if let Some(fault) = server.health.preempted() {
                        self.restart_server(index, fault);
                    }
                }
                return Step::TurnOver;
            }
            ServerEvent::Fault(fault) => {
                self.restart_server(index, fault);
                return Step::TurnOver;
            }
            ServerEvent::Syscall(call) => call,
        };
        match call {
            Syscall::Exit { code } => {
                self.restart_server(index, ServerFault::Exited { code });
                Step::TurnOver
            }
            Syscall::Yield => {
                server.yield_state.yielded();
                server.health.cooperated();
                server.busy_since = cpu::rdtsc();
                server.context.rax = 0;
                self.drain_server(index);
                Step::TurnOver
            }
            Syscall::Wait { timeout_ns } => {
                server.health.cooperated();
                server.busy_since = cpu::rdtsc();
                let deadline = timeout_ns.map(|ns| {
                    let ticks = u128::from(ns) * u128::from(lapic::tsc_hz()) / 1_000_000_000;
                    cpu::rdtsc().saturating_add(ticks.min(u128::from(u64::MAX)) as u64)
                });
                server.run = ServerRun::Waiting { deadline };
                if !self.drain_server(index) {
                    return Step::TurnOver;
                }
                let Some(server) = self.servers.get_mut(index) else { return Step::TurnOver };
                // What it sent before waiting may have woken it already (a
                // pager request answered at once): `wake` set its result.
                if server.run == ServerRun::Runnable {
                    return Step::Continue;
                }
                let bits = server.wake_bits(cpu::rdtsc());
                if bits != 0 {
                    server.wake(bits);
                    return Step::Continue;
                }
                if let Some(entity) = self.entity_of_server(index) {
                    self.scheduler.set_state(entity, RunState::Waiting);
                }
                Step::TurnOver
            }
            Syscall::Notify => {
                server.context.rax = 0;
                if self.drain_server(index) { Step::Continue } else { Step::TurnOver }
            }
            Syscall::Time => {
                server.context.rax = Self::ns_since_boot();
                Step::Continue
            }
            Syscall::ClockRate => {
                server.context.rax = lapic::tsc_hz();
                Step::Continue
            }
            Syscall::DeviceInfo { item } => {
                use ipc::server::syscall as abi;
                let result = match server.grant.as_ref() {
                    None => abi::ENODEV,
                    Some(grant) => match item {
                        abi::DEVICE_REGISTERS => (ipc::server::DEVICE_REGISTERS_BASE + (grant.registers & 0xfff)) as i64,
                        abi::DEVICE_DMA => ipc::server::DMA_REGION_BASE as i64,
                        abi::DEVICE_DMA_BUS => grant.dma.as_u64() as i64,
                        abi::DEVICE_DMA_PAGES => grant.pages as i64,
                        _ => abi::EINVAL,
                    },
                };
                server.context.rax = result as u64;
                Step::Continue
            }
            Syscall::DeviceWrite { offset, value } => {
                use ipc::server::syscall as abi;
                let result = match server.grant.as_mut() {
                    None => abi::ENODEV,
                    Some(_) if offset >= arch::virtio::TRANSPORT_SIZE || value > u64::from(u32::MAX) => abi::EINVAL,
                    Some(grant) => {
                        let memory = arch::virtio::IdentityDma { region: grant.guard.region() };
                        match grant.guard.check_write(offset as u32, value as u32, &memory) {
                            Ok(()) => {
                                arch::virtio::write32(grant.registers + offset, value as u32);
                                0
                            }
                            Err(refusal) => refusal.errno(),
                        }
                    }
                };
                server.context.rax = result as u64;
                Step::Continue
            }
            Syscall::Log { pointer, length } => {
                let mut bytes = [0u8; MAX_LOG_LEN];
                if !server.copy_from_user(pointer, &mut bytes[..length]) {
                    self.restart_server(index, ServerFault::BadSyscallArgument { number: syscall::LOG });
                    return Step::TurnOver;
                }
                let mut line = hypervisor_core::console::LineBuffer::new();
                let name = server.spec.name.as_str();
                let mut emit = |text: &str| defmt::println!("server {=str}: {=str}", name, text);
                for &byte in &bytes[..length] {
                    line.push(byte, &mut emit);
                }
                if !line.is_empty() {
                    line.flush(&mut emit);
                }
                server.context.rax = 0;
                Step::Continue
            }
        }
    }

    /// Serves the `hvctl` channel: one request at a time, answered from the
    /// core's state or relayed to the scheduler server.
    fn poll_control(&mut self) {
        use ipc::control::{ControlError, DomainState as WireState, Reply, Response};
        use super::control::{plan, Action, DomainView, MachineView};
        if let Some(relayed) = self.control.relayed {
            match self.scheduling.control_result.take() {
                Some((request, result)) if request == relayed.id => {
                    if let Ok(sched_wire::Applied::Domain { domain, weight, cap }) = result {
                        if let Some(slot) = self.domains.get_mut(usize::from(domain)) {
                            slot.weight = weight;
                            slot.cap = cap;
                        }
                    }
                    let response = Response { id: request, result: result.map(Reply::from).map_err(ControlError::from) };
                    self.control.respond(&response);
                    self.control.relayed = None;
                }
                Some(_) => {}
                None if self.control.relay_expired() => {
                    let response = Response {
                        id: relayed.id,
                        result: Err(ControlError::ServerUnavailable { server: ipc::server::ServerKind::Scheduler }),
                    };
                    self.control.respond(&response);
                    self.control.relayed = None;
                }
                None => {}
            }
            return;
        }
        let request = match self.control.poll() {
            None => return,
            Some(Err(refusal)) => {
                self.control.respond(&refusal);
                return;
            }
            Some(Ok(request)) => request,
        };
        if let Err(error) = request.command.validate_in(&self.shape()) {
            self.control.respond(&Response { id: request.id, result: Err(error) });
            return;
        }
        let domains: Vec<DomainView<'_>, MAX_DOMAINS> = self
            .domains
            .iter()
            .map(|slot| DomainView {
                name: slot.devices.name,
                memory_mib: (slot.devices.memory_bytes >> 20) as u32,
                vcpus: slot.devices.vcpu_count,
                state: match slot.state {
                    DomainState::Running => WireState::Running,
                    DomainState::PoweredOff => WireState::PoweredOff,
                    DomainState::Failed => WireState::Failed,
                },
                weight: slot.weight,
                cap: slot.cap,
                halt_poll_max: slot.halt_poll_max,
            })
            .collect();
        let servers: Vec<(&str, ipc::server::ServerKind, u32, u32), MAX_SERVERS> = self
            .servers
            .iter()
            .map(|server| (server.spec.name.as_str(), server.spec.kind, server.health.generation, server.health.restarts))
            .collect();
        let halt_poll = ipc::control::HaltPollGlobal {
            max_ns: self.halt_poll.max_ns,
            grow: self.halt_poll.grow,
            grow_start_ns: self.halt_poll.grow_start_ns,
            shrink: self.halt_poll.shrink,
        };
        let view = MachineView { domains: &domains, servers: &servers, tunables: self.scheduling.tunables, halt_poll };
        let scheduler_ready = self
            .scheduling
            .server
            .and_then(|index| self.servers.get(index))
            .is_some_and(|server| self.scheduling.ready_generation == Some(server.health.generation));
        let action = plan(&request, &view, scheduler_ready);
        let reply = match action {
            Action::Reply(result) => Some(result),
            Action::Relay(message) => {
                let scheduler = self.scheduling.server;
                let sent = scheduler.and_then(|index| self.servers.get_mut(index)).is_some_and(|server| server.send(message));
                if let (true, Some(index)) = (sent, scheduler) {
                    self.wake_server(index, ipc::server::syscall::WAKE_MESSAGES);
                    self.control.relay(request.id, lapic::tsc_hz());
                    None
                } else {
                    Some(Err(ControlError::Busy))
                }
            }
            Action::SetHaltPoll { domain, max_ns } => {
                match domain {
                    Some(domain) => {
                        if let Some(slot) = self.domains.get_mut(usize::from(domain)) {
                            slot.halt_poll_max = Some(max_ns);
                        }
                    }
                    None => self.halt_poll.max_ns = max_ns,
                }
                let domains: Vec<DomainView<'_>, MAX_DOMAINS> = domains
                    .iter()
                    .zip(&self.domains)
                    .map(|(entry, slot)| DomainView { halt_poll_max: slot.halt_poll_max, ..*entry })
                    .collect();
                let view = MachineView { domains: &domains, servers: &servers, tunables: self.scheduling.tunables, halt_poll: ipc::control::HaltPollGlobal { max_ns: self.halt_poll.max_ns, ..halt_poll } };
                Some(Ok(super::control::halt_poll_reply(&view)))
            }
            Action::Stats(domain) => {
                self.read_credit_table();
                let mut vcpus = Vec::new();
                for (index, vcpu) in self.vcpus.iter().enumerate() {
                    if vcpu.domain != usize::from(domain) {
                        continue;
                    }
                    let state = match self.entity_of_vcpu(index).and_then(|entity| self.scheduler.state(entity)) {
                        Some(RunState::Runnable) => ipc::control::VcpuState::Runnable,
                        Some(RunState::Halted | RunState::Waiting) => ipc::control::VcpuState::Blocked,
                        _ => ipc::control::VcpuState::Stopped,
                    };
                    let credit = self.scheduling.credits.get(index).copied().flatten();
                    let counters = super::control::counters(&vcpu.poller.stats, vcpu.poller.window_ns());
                    let _ = vcpus.push(super::control::vcpu_stats(vcpu.index, tsc_to_ns(vcpu.run_ticks), credit, state, counters));
                }
                let paging = self.domains.get(usize::from(domain)).and_then(|slot| slot.paging.as_ref()).map(super::control::paging_stats);
                Some(Ok(Reply::Stats { domain, vcpus, paging }))
            }
            Action::Kill(kind) => {
                if let Some(index) = self.servers.iter().position(|server| server.spec.kind == kind) {
                    self.restart_server(index, ServerFault::Killed);
                }
                Some(Ok(Reply::Done))
            }
            Action::Inject(kind, bits) => {
                if let Some(index) = self.servers.iter().position(|server| server.spec.kind == kind) {
                    if let Some(server) = self.servers.get_mut(index) {
                        server.inject(bits);
                    }
                    self.wake_server(index, 0);
                }
                Some(Ok(Reply::Done))
            }
            Action::MemSet { domain, pages } => {
                // `plan` checked the domain, the pager and the memory.
                let updated = self.domains.get_mut(usize::from(domain)).and_then(|slot| {
                    let name = slot.devices.name;
                    slot.paging.as_mut().map(|paging_state| {
                        paging_state.target_pages = pages;
                        (name, paging_state.memory_pages)
                    })
                });
                match updated {
                    Some((name, memory_pages)) => {
                        // Queued if the ring is full; a pager that restarts
                        // relearns the target from the rebuild stream.
                        self.pager_send(ipc::messages::pager::ToServer::Domain { domain, memory_pages, target_pages: pages });
                        if let Some(index) = self.pager.server {
                            self.wake_server(index, ipc::server::syscall::WAKE_MESSAGES);
                        }
                        defmt::info!("domain {=str}: memory target set to {=u64} pages", name, pages);
                        Some(Ok(Reply::Done))
                    }
                    // A domain that failed to build has no memory to target.
                    None => Some(Err(ControlError::NoSuchDomain { domain })),
                }
            }
        };
        if let Some(result) = reply {
            self.control.respond(&Response { id: request.id, result });
        }
    }

    /// The machine as the scheduler protocol describes it.
    fn shape(&self) -> sched_wire::Shape {
        let mut shape = sched_wire::Shape::new(self.online as u8);
        for (domain, slot) in self.domains.iter().enumerate() {
            shape = shape.with_domain(domain as u16, slot.devices.vcpu_count);
        }
        shape
    }

    fn wire_vcpu(&self, index: usize) -> Option<sched_wire::Vcpu> {
        self.vcpus.get(index).map(|vcpu| sched_wire::Vcpu::new(vcpu.domain as u16, vcpu.index))
    }

    fn entity_of_server(&self, index: usize) -> Option<usize> {
        self.entities.iter().position(|entity| *entity == Entity::Server(index))
    }

    /// The pCPU running vCPU `index`, if another one than the lock holder
    /// (a vCPU is running from its pick to its slice end: `Pcpu::running`).
    pub(super) fn running_on(&self, index: usize) -> Option<usize> {
        running_elsewhere(&self.pcpus, self.online, self.cpu, index)
    }

    pub(super) fn entity_of_vcpu(&self, index: usize) -> Option<usize> {
        self.entities.iter().position(|entity| *entity == Entity::Vcpu(index))
    }

    /// Wakes server `index` out of `wait` (unless it is backing off) and
    /// makes it runnable.
    fn wake_server(&mut self, index: usize, bits: u64) {
        let Some(server) = self.servers.get_mut(index) else { return };
        server.wake(bits);
        let runnable = server.run == ServerRun::Runnable;
        if let Some(entity) = self.entity_of_server(index) {
            if runnable && self.scheduler.state(entity) == Some(RunState::Waiting) {
                self.scheduler.set_state(entity, RunState::Runnable);
            }
        }
    }

    /// Takes the scheduler server's current credit table into the core's
    /// copy, checked against the machine's shape; a table that fails the
    /// check (or that the server, on another pCPU, kept rewriting while it
    /// was read) is refused whole, logged, and the copy kept. Read at a restart,
    /// a rebuild and `hvctl stats`: the server writes it after every
    /// accounting, and nothing else in the core needs it.
    fn read_credit_table(&mut self) {
        let Some(area) = self.scheduling.server.and_then(|index| self.servers.get(index)).and_then(Server::publication) else { return };
        match area.read_credits(&self.shape()) {
            Ok(Some(table)) => {
                let vcpus = &self.vcpus;
                let vcpu_index = |id: sched_wire::Vcpu| vcpus.iter().position(|vcpu| vcpu.domain == usize::from(id.domain) && vcpu.index == id.index);
                self.scheduling.take_table(&table, vcpu_index);
            }
            Ok(None) => {}
            // The server, running on another pCPU, rewrote it while it was
            // read: the last copy stays, the next read takes the new one.
            Err(PublicationError::Torn) => defmt::info!("scheduler credit table changed while read; the last copy kept"),
            Err(error) => defmt::warn!("scheduler credit table refused: {=str}", error.reason()),
        }
    }

    /// Sends the scheduler server everything it needs to decide: tunables,
    /// domains (weight, cap) and vCPUs (state, run time, last credit).
    fn send_rebuild_stream(&mut self) {
        let Some(index) = self.scheduling.server else { return };
        // A stream to the same instance (it lost events) hands back what
        // it published last.
        self.read_credit_table();
        let domains: Vec<(u16, u32, u32), MAX_DOMAINS> = self
            .domains
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.state == DomainState::Running)
            .map(|(domain, slot)| (domain as u16, slot.weight, slot.cap))
            .collect();
        let mut vcpus: Vec<VcpuFacts, MAX_VCPUS_TOTAL> = Vec::new();
        for (vcpu_index, vcpu) in self.vcpus.iter().enumerate() {
            let Some(entity) = self.entity_of_vcpu(vcpu_index) else { continue };
            let state = self.scheduler.state(entity);
            if state == Some(RunState::Stopped) {
                continue;
            }
            let _ = vcpus.push(VcpuFacts {
                vcpu: sched_wire::Vcpu::new(vcpu.domain as u16, vcpu.index),
                index: vcpu_index,
                runnable: state == Some(RunState::Runnable),
                run_time_ns: tsc_to_ns(vcpu.run_ticks),
                pcpu: self.last_pcpu.get(vcpu_index).copied().unwrap_or(0),
            });
        }
        self.scheduling.pending.forget();
        let now = super::vcpu::system_time_ns();
        let Some(server) = self.servers.get_mut(index) else { return };
        let link = &self.scheduling;
        if !link.rebuild_stream(now, self.online, &domains, &vcpus, &mut |message| server.send(message)) {
            defmt::warn!("scheduler rebuild stream did not fit the ring");
        }
        self.wake_server(index, ipc::server::syscall::WAKE_MESSAGES);
    }

    /// Queues an event for the scheduler server (sent in batches).
    fn report(&mut self, event: Event) {
        if self.scheduling.server.is_none() {
            return;
        }
        if !hypervisor_core::scheduler_events::is_bookkeeping(&event) {
            self.server_urgent = true;
        }
        if !self.scheduling.pending.record(event) {
            self.send_events();
            if !self.scheduling.pending.record(event) {
                self.scheduling.lost_events = true;
            }
        }
    }

    /// At a switch point: sends the scheduler server the pending events if
    /// they cannot wait for its next turn
    /// ([`PendingEvents::must_send`](hypervisor_core::scheduler_events::PendingEvents::must_send)),
    /// or writes the bookkeeping logged since the last message into its
    /// publication area if it runs now.
    pub(super) fn flush_events(&mut self) {
        let Some(index) = self.scheduling.server else { return };
        if self.scheduling.pending.is_empty() {
            return;
        }
        let server_runs = self.servers.get(index).is_some_and(|server| match server.run {
            ServerRun::Runnable => true,
            ServerRun::Waiting { deadline } => deadline.is_some_and(|deadline| deadline <= cpu::rdtsc()),
        });
        let pending = &mut self.scheduling.pending;
        if !server_runs || pending.log().is_empty() {
            if pending.must_send(server_runs) {
                self.send_events();
            }
            return;
        }
        // Only bookkeeping since the last message: it goes into the
        // server's publication area, unless the server has not taken the
        // last log yet; then it goes as a message.
        let last = self.scheduling.log_sequence;
        let logged = self.servers.get(index).and_then(|server| {
            server.publication().and_then(|area| area.publish_log(last, server.sent_position(), pending.log()))
        });
        match logged {
            Some(sequence) => {
                pending.clear_log();
                self.scheduling.log_sequence = sequence;
                // Like a message: a server that yielded has work again.
                self.wake_server(index, ipc::server::syscall::WAKE_MESSAGES);
            }
            None => {
                pending.log_to_batch();
                self.send_events();
            }
        }
    }

    /// Sends the scheduler server the pending events and wakes it.
    fn send_events(&mut self) {
        let Some(index) = self.scheduling.server else { return };
        if !self.scheduling.pending.has_batch() {
            return;
        }
        let batch = self.scheduling.pending.take_batch();
        let Some(server) = self.servers.get_mut(index) else { return };
        if !server.send(sched_wire::ToServer::Events { batch }) {
            self.scheduling.lost_events = true;
        }
        self.wake_server(index, ipc::server::syscall::WAKE_MESSAGES);
        if self.scheduling.lost_events {
            // The server's picture is stale: give it the whole state again.
            self.scheduling.lost_events = false;
            self.send_rebuild_stream();
        }
    }

    /// The next entity to run: a runnable server first (servers answer
    /// quickly and the hot path never waits for them), then the first
    /// runnable vCPU of the scheduler server's published run list, and the
    /// built-in round-robin when no decision is in force.
    fn pick_next(&mut self) -> Option<(usize, Entity)> {
        if self.cpu != 0 {
            // Servers run on pCPU 0 only.
            return self.pick_vcpu();
        }
        // Servers with work first; a server that only yielded waits until
        // nothing else wants the pCPU (so a yield loop cannot starve guests).
        for (entity, kind) in self.entities.iter().enumerate() {
            if let Entity::Server(index) = *kind {
                // A server that yielded with messages still unread (its
                // runtime yields after every full batch) has work: it stays
                // eager. Only a yield with nothing to read waits for idle time,
                // and only until the server runs again (`YieldState`).
                let eager = self.servers.get(index).is_some_and(Server::has_work);
                if eager && self.scheduler.state(entity) == Some(RunState::Runnable) {
                    return Some((entity, *kind));
                }
            }
        }
        let yielded_server = self.entities.iter().enumerate().find_map(|(entity, kind)| {
            matches!(kind, Entity::Server(_)).then_some(entity).filter(|&entity| self.scheduler.state(entity) == Some(RunState::Runnable))
        });
        let vcpu = self.pick_vcpu();
        match (vcpu, yielded_server) {
            (Some(picked), _) => Some(picked),
            (None, Some(entity)) => match self.entities.get(entity).copied() {
                // Its yield ends when it runs (`begin_server_slice`).
                Some(Entity::Server(index)) => Some((entity, Entity::Server(index))),
                _ => None,
            },
            (None, None) => None,
        }
    }

    /// The next vCPU for this pCPU: the first runnable vCPU of its run
    /// queue as the scheduler server published it when the server is in
    /// charge, else the built-in round-robin. A vCPU another pCPU runs is
    /// never picked.
    fn pick_vcpu(&mut self) -> Option<(usize, Entity)> {
        let (cpu, online) = (self.cpu, self.online);
        let free = |pcpus: &[Pcpu; MAX_CPUS], index: usize| running_elsewhere(pcpus, online, cpu, index).is_none();
        if self.scheduler_in_charge() {
            let run = self.scheduling.decisions.get(cpu).and_then(Option::as_ref).map(|(run, _)| run);
            for wire in run.into_iter().flatten() {
                let found = self.vcpus.iter().position(|vcpu| vcpu.domain as u16 == wire.domain && vcpu.index == wire.index);
                if let Some((index, entity)) = found.and_then(|index| Some((index, self.entity_of_vcpu(index)?))) {
                    if self.scheduler.state(entity) == Some(RunState::Runnable) && free(&self.pcpus, index) {
                        return Some((entity, Entity::Vcpu(index)));
                    }
                }
            }
            // Nothing in the list can run: the pCPU idles. A vCPU left
            // out is parked (a cap) or not yet placed after a wake-up;
            // the server hears of every change and publishes again.
            return None;
        }
        // Round-robin over vCPUs (servers are picked above).
        let entities = &self.entities;
        let pcpus = &self.pcpus;
        let entity = self.scheduler.pick_where(|entity| match entities.get(entity) {
            Some(Entity::Vcpu(index)) => free(pcpus, *index),
            _ => false,
        })?;
        Some((entity, *self.entities.get(entity)?))
    }

    /// Whether the scheduler server's decisions are in force.
    fn scheduler_in_charge(&self) -> bool {
        let generation = self.scheduling.server.and_then(|index| self.servers.get(index)).map(|server| server.health.generation);
        generation.is_some_and(|generation| self.scheduling.in_charge(generation))
    }

    /// The halt-polling max for vCPU `index`'s domain, ns.
    fn halt_poll_max(&self, index: usize) -> u64 {
        let domain = self.vcpus.get(index).map_or(usize::MAX, |vcpu| vcpu.domain);
        self.domains.get(domain).and_then(|slot| slot.halt_poll_max).unwrap_or(self.halt_poll.max_ns)
    }

    /// vCPU `index` halted or blocked; `deadline_ns` is its timer, if any.
    fn begin_halt(&mut self, index: usize, deadline_ns: Option<u64>) {
        let max = self.halt_poll_max(index);
        let Some(vcpu) = self.vcpus.get_mut(index) else { return };
        vcpu.wake_reported = false;
        let window_ns = vcpu.poller.begin(max);
        vcpu.halt = Some(HaltRecord {
            started: cpu::rdtsc(),
            deadline: deadline_ns.map(ns_to_tsc),
            window: ns_to_tsc(window_ns),
            polled: 0,
            waited: false,
            timed: deadline_ns.is_some() && max > 0,
            woke_polling: false,
        });
    }

    /// vCPU `index` runs again: account its halt (KVM's window adaptation
    /// and statistics) and its wake-to-run latency.
    fn end_halt(&mut self, index: usize) {
        let parameters = self.halt_poll;
        let max = self.halt_poll_max(index);
        let Some(vcpu) = self.vcpus.get_mut(index) else { return };
        let Some(halt) = vcpu.halt.take() else { return };
        let now = cpu::rdtsc();
        let total = tsc_to_ns(now.saturating_sub(halt.started));
        let polled = tsc_to_ns(halt.polled);
        let waited = if halt.waited { total.saturating_sub(polled).max(1) } else { 0 };
        let record = Halt { polled_ns: polled, waited_ns: waited, valid_wakeup: true };
        if halt.timed {
            vcpu.poller.end_timed(record, halt.woke_polling);
        } else {
            vcpu.poller.end(record, &parameters, max);
        }
        if let Some(deadline) = halt.deadline {
            vcpu.wake_latency.add(tsc_to_ns(now.saturating_sub(deadline)));
        }
    }

    /// This pCPU has nothing to run. Polls for the most recently halted
    /// vCPU that last ran here while its window lasts (KVM's halt polling:
    /// a wake-up that comes soon is caught without sleeping the pCPU), else
    /// sleeps until its timer or a kick.
    fn idle_action(&mut self, event: u64) -> Action {
        let cpu = self.cpu;
        let last_pcpu = self.last_pcpu;
        let here = |index: usize| last_pcpu.get(index).is_some_and(|&last| usize::from(last) == cpu);
        let candidate = self
            .vcpus
            .iter()
            .enumerate()
            .filter(|(index, _)| here(*index))
            .filter_map(|(index, vcpu)| Some((index, vcpu.halt?)))
            .max_by_key(|(_, halt)| halt.started);
        if let Some((index, halt)) = candidate {
            let now = cpu::rdtsc();
            match halt.deadline.filter(|&deadline| halt.timed && deadline <= event) {
                Some(deadline) => {
                    // The wake-up time is known: sleep until the learnt
                    // lead before it, then poll the rest.
                    let lead = ns_to_tsc(self.pcpus[cpu % MAX_CPUS].timed.lead_ns(self.halt_poll_max(index)));
                    let wake = deadline.saturating_sub(lead);
                    if now >= wake {
                        if halt.polled == 0 && !halt.waited {
                            self.here().timed.polled_at_once();
                        }
                        return Action::Poll { index, until: deadline };
                    }
                    lapic::arm_oneshot(wake);
                    let here = self.here();
                    here.armed_event = wake;
                    here.early_wake = Some(wake);
                }
                None => {
                    let budget_end = now.saturating_add(halt.window.saturating_sub(halt.polled));
                    if !halt.timed && budget_end > now {
                        return Action::Poll { index, until: event.min(budget_end) };
                    }
                }
            }
        }
        for (_, vcpu) in self.vcpus.iter_mut().enumerate().filter(|(index, _)| here(*index)) {
            if let Some(halt) = vcpu.halt.as_mut() {
                halt.waited = true;
            }
        }
        Action::Sleep
    }

    /// This pCPU polled `ticks` for vCPU `index`. A wake-up that came while
    /// polling is taken now instead of when the timer interrupt is
    /// delivered (that delay is what polling saves).
    pub(super) fn polled(&mut self, index: usize, ticks: u64) {
        if let Some(record) = self.vcpus.get_mut(index).and_then(|vcpu| vcpu.halt.as_mut()) {
            record.polled += ticks;
            record.woke_polling |= record.deadline.is_some_and(|deadline| cpu::rdtsc() >= deadline);
        }
        self.wake_due_vcpus();
        self.kick_for_work();
    }

    /// Kicks the pCPUs that have something new to do: those the scheduler
    /// server tickled, idle ones whose run queue it changed, an idle one
    /// when the round-robin has a new runnable vCPU, and pCPU 0 when a
    /// server it runs has work while it runs a guest or idles.
    pub(super) fn kick_for_work(&mut self) {
        let idle = |pcpus: &[Pcpu; MAX_CPUS], cpu: usize| pcpus.get(cpu).is_some_and(|pcpu| pcpu.idle);
        let tickled = core::mem::take(&mut self.scheduling.tickled);
        let decided = core::mem::take(&mut self.scheduling.decided);
        for cpu in 0..self.online {
            if decided & (1 << cpu) != 0 {
                // A new run list is in force: an interrupted slice, picked
                // from the old one, does not come back; the pCPU starts
                // from the new list's head. On pCPU 0, where the server
                // runs, the accounting that reorders its list therefore
                // also ends its slice: its slices line up with the
                // accountings, and one exit serves both.
                self.pcpus[cpu].interrupted = None;
            }
            if tickled & (1 << cpu) != 0 {
                // The server wants this pCPU to reschedule now (a woken
                // vCPU outranks what runs there, a cap parked it...). This
                // pCPU is on its way to a switch point already: the flag
                // only keeps an interrupted slice from coming back.
                if cpu == self.cpu {
                    self.pcpus[cpu].reschedule = true;
                }
                self.kick(cpu, true);
            } else if decided & (1 << cpu) != 0 && idle(&self.pcpus, cpu) {
                self.kick(cpu, false);
            }
        }
        if !self.scheduler_in_charge() && self.scheduler.wakeups() != self.wakeups_seen {
            self.wakeups_seen = self.scheduler.wakeups();
            let me = self.cpu;
            if let Some(cpu) = (0..self.online).find(|&cpu| cpu != me && idle(&self.pcpus, cpu)) {
                self.kick(cpu, false);
            }
        }
        // Servers run on pCPU 0: wake it when a server has work, and take
        // its pCPU from the guest it runs when the work is urgent (a vCPU
        // blocked, woke or yielded, or waits for a page).
        let server_work = self.entities.iter().enumerate().any(|(entity, kind)| {
            matches!(*kind, Entity::Server(index) if self.servers.get(index).is_some_and(Server::has_work))
                && self.scheduler.state(entity) == Some(RunState::Runnable)
        });
        if server_work {
            if self.pcpus[0].idle {
                self.kick(0, false);
            } else if self.server_urgent && self.pcpus[0].running.is_some() {
                self.kick(0, true);
            }
        }
    }

    /// Kicks pCPU `cpu` as soon as the lock is released
    /// (`super::smp::locked`); with `reschedule`, a guest it runs loses the
    /// rest of its slice (else the kick only makes it exit, e.g. to take an
    /// interrupt, and go on).
    pub(super) fn kick(&mut self, cpu: usize, reschedule: bool) {
        if cpu == self.cpu || cpu >= self.online.min(MAX_CPUS) {
            return;
        }
        if reschedule {
            self.pcpus[cpu].reschedule = true;
        }
        self.pending_kicks |= 1 << cpu;
    }

    /// The kicks to send once the lock is released.
    pub(super) fn take_kicks(&mut self) -> u32 {
        core::mem::take(&mut self.pending_kicks)
    }

    fn here(&mut self) -> &mut Pcpu {
        &mut self.pcpus[self.cpu % MAX_CPUS]
    }

    /// Logs a vCPU's halt-polling statistics and wake-to-run latency.
    fn log_halt_stats(&self, domain: usize) {
        let name = self.domains.get(domain).map_or("?", |slot| slot.devices.name);
        for vcpu in self.vcpus.iter().filter(|vcpu| vcpu.domain == domain) {
            let stats = vcpu.poller.stats;
            defmt::info!(
                "domain {=str} vCPU {=u8}: halt polls {=u64} successful of {=u64}, {=u64} invalid; poll ok {=u64} us, poll failed {=u64} us, waited {=u64} us; window {=u64} ns, max {=u64} ns",
                name, vcpu.index, stats.successful, stats.attempted, stats.invalid,
                stats.poll_success_ns / 1000, stats.poll_fail_ns / 1000, stats.wait_ns / 1000,
                vcpu.poller.window_ns(), self.domains.get(domain).and_then(|slot| slot.halt_poll_max).unwrap_or(self.halt_poll.max_ns)
            );
            if let Some(median) = vcpu.wake_latency.median_ns() {
                defmt::info!(
                    "domain {=str} vCPU {=u8}: wake-to-run latency median {=u64} ns over {=u32} timed wake-ups",
                    name, vcpu.index, median, vcpu.wake_latency.count()
                );
            }
            super::apic::log_stats(name, vcpu);
        }
    }

    /// Work done once per timer tick: park/unpark, server wake-ups, and the
    /// echo check of test servers.
    fn on_tick(&mut self) {
        self.scheduler.tick();
        self.wake_due_vcpus();
        self.tick_servers();
        self.pump_pager();
        self.recovery_tick();
        self.observe(Observation::Tick);
        self.carry_out_kill();
    }

    /// Wakes every blocked vCPU whose timer or wake-up time has come.
    fn wake_due_vcpus(&mut self) {
        let system_time = super::vcpu::system_time_ns();
        for (entity_index, entity) in self.entities.iter().enumerate() {
            let Entity::Vcpu(index) = *entity else { continue };
            let Some(vcpu) = self.vcpus.get_mut(index) else { continue };
            // A vCPU waiting for a page-in is woken by the page only.
            let blocked = self.scheduler.state(entity_index) == Some(RunState::Waiting) && vcpu.page_wait.is_none();
            let timer_due = vcpu.timer.is_some_and(|deadline| deadline <= system_time);
            let wake_due = vcpu.wake_at.is_some_and(|deadline| deadline <= system_time);
            if blocked && (timer_due || wake_due) {
                // The single-shot timer (or the poll timeout) fired: it wakes
                // the blocked vCPU and is consumed. A timer that fires while
                // the vCPU runs stays due: its next SCHEDOP_block returns at
                // once (Xen's pending timer event), so no wake-up is lost.
                if timer_due {
                    vcpu.timer = None;
                }
                vcpu.wake_at = None;
                self.scheduler.set_state(entity_index, RunState::Runnable);
            }
        }
        self.report_wakes(system_time);
    }

    /// Reports every vCPU that became runnable since it blocked.
    pub(super) fn report_wakes(&mut self, now: u64) {
        let mut woken: Vec<sched_wire::Vcpu, MAX_VCPUS_TOTAL> = Vec::new();
        for (entity_index, entity) in self.entities.iter().enumerate() {
            let Entity::Vcpu(index) = *entity else { continue };
            let Some(vcpu) = self.vcpus.get(index) else { continue };
            if vcpu.halt.is_some() && self.scheduler.state(entity_index) == Some(RunState::Runnable) && !vcpu.wake_reported {
                let _ = woken.push(sched_wire::Vcpu::new(vcpu.domain as u16, vcpu.index));
            }
        }
        for vcpu in woken {
            if let Some(core_vcpu) = self.vcpus.iter_mut().find(|core| core.domain as u16 == vcpu.domain && core.index == vcpu.index) {
                core_vcpu.wake_reported = true;
            }
            self.report(Event::Woke { vcpu, at: now });
        }
    }

    /// Server wake-ups and the echo check of test servers.
    fn tick_servers(&mut self) {
        let now = cpu::rdtsc();
        // The progress check: a server with messages unread past the
        // deadline is hung, even if it keeps yielding.
        let now_ns = tsc_to_ns(now);
        let stalled = self.servers.iter_mut().enumerate().find_map(|(index, server)| {
            server.note_progress();
            let backing_off = server.starts_at.is_some_and(|start| now < start);
            if backing_off && server.inbound_since.is_some() {
                // The clock starts when the new instance may run.
                server.inbound_since = server.starts_at;
            }
            let since = server.inbound_since.filter(|_| !backing_off).map(tsc_to_ns);
            server.health.progress(since, now_ns).or_else(|| server.health.heartbeat_missed(now_ns)).map(|fault| (index, fault))
        });
        if let Some((index, fault)) = stalled {
            self.restart_server(index, fault);
        }
        for (entity_index, entity) in self.entities.iter().enumerate() {
            let Entity::Server(index) = *entity else { continue };
            let Some(server) = self.servers.get_mut(index) else { continue };
            if server.spec.kind == ipc::server::ServerKind::Test && server.stopped_at.is_none() {
                let _ = server.send_next_echo();
            }
            let bits = server.wake_bits(now);
            if bits != 0 && matches!(server.run, ServerRun::Waiting { .. }) {
                server.wake(bits);
                if server.run == ServerRun::Runnable {
                    self.scheduler.set_state(entity_index, RunState::Runnable);
                }
            }
        }
    }

    /// The earliest TSC value at which something must happen on this pCPU:
    /// the end of a slice started now, the wake-up of a blocked vCPU that
    /// last ran here, and on pCPU 0 a waiting server's timeout and the
    /// appliance's time limit.
    fn next_event(&self, slice_ns: u64) -> u64 {
        let now = cpu::rdtsc();
        let to_tsc = ns_to_tsc;
        let mut earliest = now.saturating_add(ns_to_tsc(slice_ns));
        let cpu = self.cpu;
        if cpu == 0 {
            if let Some(stop) = self.stop_at {
                earliest = earliest.min(stop);
            }
            for server in &self.servers {
                if let ServerRun::Waiting { deadline: Some(deadline) } = server.run {
                    earliest = earliest.min(deadline);
                }
            }
        }
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            // Only a blocked vCPU's timer is an event for the pCPU; a running
            // one's due timer waits for its next block.
            let blocked = self.entity_of_vcpu(index).is_some_and(|entity| self.scheduler.state(entity) == Some(RunState::Waiting));
            let mine = self.last_pcpu.get(index).is_some_and(|&last| usize::from(last) == cpu);
            if !blocked || !mine || vcpu.page_wait.is_some() {
                continue;
            }
            for deadline in [vcpu.wake_at, vcpu.timer].into_iter().flatten() {
                earliest = earliest.min(to_tsc(deadline));
            }
        }
        earliest
    }

    /// One switch point of this pCPU: pCPU 0's housekeeping (ticks,
    /// servers, the pager, `hvctl`, the end of the run), wake-ups, then the
    /// pick, the timer for the slice, and what to do until the next one.
    pub(super) fn switch_point(&mut self) -> Action {
        if core::mem::take(&mut self.here().reschedule) {
            self.here().interrupted = None;
        }
        if self.cpu == 0 {
            self.server_urgent = false;
        }
        if let Some(wake) = self.here().early_wake.take() {
            // Woken for timed polling: learn how late (a kick may have come
            // first; that is not a lateness sample).
            let now = cpu::rdtsc();
            if now >= wake {
                self.here().timed.woke(tsc_to_ns(now - wake));
            }
        }
        if self.cpu == 0 {
            let now = interrupts::ticks_of(self.cpu);
            let slice = lapic::tsc_hz() / super::TICK_HZ;
            let here = self.here();
            if now != here.last_tick || cpu::rdtsc().wrapping_sub(here.last_housekeeping) >= slice {
                here.last_tick = now;
                here.last_housekeeping = cpu::rdtsc();
                self.on_tick();
            }
            if self.domains_ended() {
                self.finish();
            }
            if self.stop_at.is_some_and(|stop| cpu::rdtsc() >= stop) {
                self.time_limit();
            }
            self.poll_control();
            self.settle_page_ins();
            self.pump_pager();
        } else {
            self.wake_due_vcpus();
        }
        self.report_overhead();
        self.flush_events();
        let before_pick = cpu::rdtsc();
        let mut picked = self.pick_next();
        let resumed = self.resumable(picked);
        if let Some((entity, index, _)) = resumed {
            picked = Some((entity, Entity::Vcpu(index)));
        }
        if !matches!(picked, Some((_, Entity::Server(_)))) {
            self.here().interrupted = None;
        }
        let pick_ticks = cpu::rdtsc().saturating_sub(before_pick);
        self.here().picks.add(pick_ticks);
        // Armed after the tick work and the pick, so an interrupt taken
        // above cannot consume the timer this slice relies on.
        // The slice: the scheduler server's (Xen's timeslice; it tickles
        // the pCPU when its queue changes sooner), else the round-robin's.
        let slice_ns = match picked {
            _ if resumed.is_some() => resumed.map_or(0, |(_, _, end)| tsc_to_ns(end.saturating_sub(cpu::rdtsc()))),
            Some((_, Entity::Vcpu(_))) if self.scheduler_in_charge() => self
                .scheduling
                .decisions
                .get(self.cpu)
                .and_then(Option::as_ref)
                .map_or(ROUND_ROBIN_SLICE_NS, |(_, slice)| (*slice).clamp(MIN_SLICE_NS, MAX_SLICE_NS)),
            _ => ROUND_ROBIN_SLICE_NS,
        };
        let event = self.next_event(slice_ns);
        self.here().slice_end = cpu::rdtsc().saturating_add(ns_to_tsc(slice_ns));
        lapic::arm_oneshot(event);
        let here = self.here();
        here.slice_event = event;
        here.armed_event = event;
        here.idle = picked.is_none();
        let action = match picked {
            Some((entity, Entity::Vcpu(index))) => self.begin_vcpu_slice(entity, index, resumed.is_some()),
            Some((_, Entity::Server(index))) => self.begin_server_slice(index),
            None => self.idle_action(event),
        };
        self.kick_for_work();
        action
    }

    /// Reports to the scheduler server the time this pCPU's own work took
    /// from its vCPUs (`Event::Overhead`: its accounting hands out that much
    /// less credit): the overhead of a window of one timeslice (the
    /// accounting period) less the idle time in it (a pCPU that idled had
    /// time nobody wanted; its overhead came out of that). A window whose
    /// idle time covers its overhead closes with nothing to report.
    ///
    /// The window is a whole timeslice so that idle time and overhead net
    /// out over what one accounting shares: with shorter windows, the
    /// overhead of the stretches in which a capped domain ran was reported
    /// while the idle time of the stretches in which it was parked was not
    /// set against it, and the capped domain's fair share fell below its
    /// cap (`scenario cap`: 47.2-48.4 % of a pCPU for a cap of 50, with
    /// 1 ms windows).
    ///
    /// It runs at every switch point: until the window ends that is one TSC
    /// read and a comparison; the window's length (a timeslice changed at
    /// run time applies from the next window) is computed when one closes.
    fn report_overhead(&mut self) {
        let cpu = self.cpu;
        let now = cpu::rdtsc();
        let (overhead_from, idle_from, ends_at) = self.here().overhead_window;
        if now < ends_at {
            return;
        }
        let window = ns_to_tsc(u64::from(self.scheduling.tunables.0).saturating_mul(1_000_000));
        let (overhead, idle) = super::smp::overhead_and_idle_ticks(cpu);
        self.here().overhead_window = (overhead, idle, now.saturating_add(window));
        let (spent, idled) = (overhead.saturating_sub(overhead_from), idle.saturating_sub(idle_from));
        if idled >= spent || self.scheduling.server.is_none() {
            return;
        }
        self.report(Event::Overhead { pcpu: cpu as u8, ns: tsc_to_ns(spent - idled) });
    }

    /// The interrupted vCPU of this pCPU, if it gets the rest of its slice
    /// instead of `picked`: the scheduler server is in charge (it tickles
    /// what must preempt; the round-robin fallback has no tickles, and a
    /// vCPU whose page came in must not wait for a spinner's slice), no
    /// server is picked, neither a tickle nor a new run list for this pCPU
    /// came (either clears it), it is still runnable, runs nowhere else and
    /// is still on this pCPU's run list (not parked or moved), and some of
    /// its slice is left.
    fn resumable(&self, picked: Option<(usize, Entity)>) -> Option<(usize, usize, u64)> {
        let (entity, index, end) = self.pcpus.get(self.cpu)?.interrupted?;
        if !self.scheduler_in_charge() || matches!(picked, Some((_, Entity::Server(_)))) || self.scheduler.state(entity) != Some(RunState::Runnable) {
            return None;
        }
        if running_elsewhere(&self.pcpus, self.online, self.cpu, index).is_some() {
            return None;
        }
        let vcpu = self.vcpus.get(index)?;
        let run = self.scheduling.decisions.get(self.cpu).and_then(Option::as_ref).map(|(run, _)| run)?;
        if !run.iter().any(|wire| wire.domain == vcpu.domain as u16 && wire.index == vcpu.index) {
            return None;
        }
        (cpu::rdtsc().saturating_add(ns_to_tsc(MIN_SLICE_NS)) < end).then_some((entity, index, end))
    }

    /// Whether every domain has ended (servers serve domains: once none is
    /// left, the machine is done).
    fn domains_ended(&self) -> bool {
        self.domains.iter().all(|slot| slot.state != DomainState::Running)
    }

    /// `stop_after` ran out: report every running domain's CPU time and
    /// halt statistics, then stop the machine.
    fn time_limit(&mut self) -> ! {
        defmt::info!("time limit reached");
        self.log_recovery_shares();
        self.log_pcpu_time();
        for (index, slot) in self.domains.iter().enumerate() {
            if slot.state == DomainState::Running {
                self.log_cpu_time(index);
                self.log_paging(index);
                self.log_halt_stats(index);
            }
        }
        arch::exit_machine(ExitStatus::TimeLimit)
    }

    /// Logs each pCPU's time in guests and outside them (the core, the
    /// servers, idling, waiting for the lock; idling also on its own) since
    /// it started, and the same in its steady window (from its first exit
    /// or wake-up `smp::STEADY_AFTER_MS` or more after it started).
    fn log_pcpu_time(&self) {
        for cpu in 0..self.online {
            if let Some(time) = super::smp::guest_time(cpu) {
                let outside_ppm = time.total.saturating_sub(time.guest).saturating_mul(1_000_000) / time.total.max(1);
                defmt::info!(
                    "pCPU {=usize}: {=u64} us in guests of {=u64} us, {=u64} ppm outside; idle {=u64} us; lock held {=u64} us, waited {=u64} us; {=u64} exits",
                    cpu, tsc_to_ns(time.guest) / 1000, tsc_to_ns(time.total) / 1000, outside_ppm,
                    tsc_to_ns(time.idle) / 1000, tsc_to_ns(time.lock_held) / 1000, tsc_to_ns(time.lock_wait) / 1000, time.exits
                );
            }
            if let Some(steady) = super::smp::steady_time(cpu) {
                let outside_ppm = steady.total.saturating_sub(steady.guest).saturating_mul(1_000_000) / steady.total.max(1);
                defmt::info!(
                    "pCPU {=usize} from {=u64} ms on: {=u64} us in guests of {=u64} us, {=u64} ppm outside; idle {=u64} us",
                    cpu, tsc_to_ns(steady.from) / 1_000_000, tsc_to_ns(steady.guest) / 1000, tsc_to_ns(steady.total) / 1000, outside_ppm,
                    tsc_to_ns(steady.idle) / 1000
                );
            }
            if let Some(servers) = super::smp::guest_time(cpu).and_then(|time| time.servers) {
                defmt::info!(
                    "servers on pCPU {=usize}: {=u64} turns, {=u64} returns to the core, {=u64} us in ring 3",
                    cpu, servers.turns, servers.returns, tsc_to_ns(servers.ring3) / 1000
                );
            }
            let picks = self.pcpus[cpu % MAX_CPUS].picks;
            if let (Some(median), Some(p99)) = (picks.percentile_below(50), picks.percentile_below(99)) {
                defmt::info!(
                    "switch points: {=u64} on pCPU {=usize}, pick median {=u64} ticks, p99 {=u64} ticks (upper bounds of log2 buckets); timed polling lateness {=u64} ns",
                    picks.count(), cpu, median, p99, self.pcpus[cpu % MAX_CPUS].timed.late_ns()
                );
            }
        }
    }

    fn finish(&mut self) -> ! {
        self.log_recovery_shares();
        self.log_pcpu_time();
        let failed = self.domains.iter().any(|slot| slot.state == DomainState::Failed);
        defmt::info!("all domains ended");
        arch::exit_machine(if failed { ExitStatus::DomainFailed } else { ExitStatus::AllPoweredOff })
    }
}

//! In-core exit benchmarks, run before the domains when the manifest asks
//! for `RunMode::Bench`. A one-page probe VM executes a single instruction
//! per entry; the core times each VMRUN→#VMEXIT round trip with the TSC:
//!
//! * `vmexit_bare`: the probe runs VMMCALL; the core does nothing but reset
//!   RIP (the world switch alone);
//! * `cpuid_exit`: the probe runs CPUID; the core decodes the exit and
//!   handles it through the same `vcpu::handle` path guests get.
//!
//! Round trips are binned in a fixed histogram (no heap, no sorting): the
//! median and p99 are exact to the bin width ([`BIN_TICKS`] for exits).
//! [`TickHistogram`] is the log-linear, frame-backed variant the paging
//! figures use (`paging::log_bench`): page-in latency over each domain's life.

use hypervisor_core::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use hypervisor_core::exit;
use hypervisor_core::frame::FrameAllocator;
use hypervisor_core::guest_memory::GuestMemory;
use hypervisor_core::vcpu::{self as exits, DomainDevices};

use crate::arch::cpu;
use crate::arch::lapic;
use crate::arch::memory::OwnedFrames;
use crate::arch::svm::{self, offset, GuestRegisters, Vmcb};
use super::domain;
use super::run::Machine;
use super::vcpu::{KernelPlatform, VcpuView};

/// Width of one histogram bin, TSC ticks.
pub const BIN_TICKS: u64 = 32;
const BINS: usize = 4096;
const WARMUP: u32 = 500;
const VMMCALL_AT: u64 = 0x0;
const CPUID_AT: u64 = 0x10;

/// Frames one [`Histogram`]'s bins take (a `u64` per bin).
const HISTOGRAM_PAGES: usize = BINS * 8 / PAGE_SIZE as usize;

/// Fixed-width bins, kept in frames from the allocator rather than on the
/// boot stack, which also holds the whole machine (two 16 KiB arrays in
/// this module's frame once pushed the bench run below its bottom).
struct Histogram {
    bins: HostPhysAddr,
    bin_ticks: u64,
    overflow: u32,
    count: u32,
}

impl Histogram {
    fn new(frames: &mut FrameAllocator<'_>) -> Option<Self> {
        Self::with_bin(frames, BIN_TICKS)
    }

    /// Bins `bin_ticks` wide (range `BINS * bin_ticks`), all zero.
    fn with_bin(frames: &mut FrameAllocator<'_>, bin_ticks: u64) -> Option<Self> {
        let Some(bins) = frames.allocate_contiguous(HISTOGRAM_PAGES, 1) else {
            defmt::error!("bench: no memory for a histogram");
            return None;
        };
        let mut memory = OwnedFrames;
        for page in 0..HISTOGRAM_PAGES as u64 {
            memory.fill(HostPhysAddr::new_truncate(bins.as_u64() + page * PAGE_SIZE), 0);
        }
        Some(Self { bins, bin_ticks, overflow: 0, count: 0 })
    }

    /// Gives the bins' frames back.
    fn release(self, frames: &mut FrameAllocator<'_>) {
        for page in 0..HISTOGRAM_PAGES as u64 {
            let _ = frames.free(HostPhysAddr::new_truncate(self.bins.as_u64() + page * PAGE_SIZE));
        }
    }

    fn word(&self, bin: u64) -> (HostPhysAddr, usize) {
        (HostPhysAddr::new_truncate(self.bins.as_u64() + (bin / 512) * PAGE_SIZE), (bin % 512) as usize)
    }

    fn add(&mut self, ticks: u64) {
        let bin = ticks / self.bin_ticks;
        if bin < BINS as u64 {
            let (frame, index) = self.word(bin);
            let mut memory = OwnedFrames;
            let value = memory.read_u64(frame, index);
            memory.write_u64(frame, index, value + 1);
        } else {
            self.overflow += 1;
        }
        self.count += 1;
    }

    /// The value below which `per_mille`/1000 of the samples lie (bin middle).
    fn quantile(&self, per_mille: u64) -> u64 {
        let rank = (u64::from(self.count) * per_mille).div_ceil(1000).max(1);
        let mut seen = 0;
        for index in 0..BINS as u64 {
            let (frame, word) = self.word(index);
            seen += OwnedFrames.read_u64(frame, word);
            if seen >= rank {
                return index * self.bin_ticks + self.bin_ticks / 2;
            }
        }
        if self.overflow > 0 {
            defmt::warn!("bench: a quantile lies beyond the histogram's range");
        }
        BINS as u64 * self.bin_ticks
    }
}

/// Sub-bins per power of two in a [`TickHistogram`] (relative bin width
/// 1/16, so a quantile read at a bin's middle is within ~3 %).
const TICK_SUB_BINS: u64 = 16;
/// Bins of a [`TickHistogram`]: every `u64` tick count has one.
const TICK_BINS: u64 = (64 - 3) * TICK_SUB_BINS;
/// Frames a [`TickHistogram`] keeps its bins in (one `u64` per bin, then
/// the sample count).
pub const TICK_HISTOGRAM_PAGES: usize = ((TICK_BINS as usize + 1) * 8).div_ceil(PAGE_SIZE as usize);

/// A log-linear histogram of TSC tick counts over the whole `u64` range,
/// kept in frames the caller owns (no heap, and one word in the owner's
/// struct, which may sit on the boot stack): values below 16 have exact
/// bins, larger ones 16 bins per power of two. For latencies that span
/// orders of magnitude (page-ins under TCG: tens of µs to milliseconds),
/// where [`Histogram`]'s fixed-width bins cannot reach.
#[derive(Debug)]
pub struct TickHistogram {
    bins: HostPhysAddr,
}

impl TickHistogram {
    /// A histogram in the [`TICK_HISTOGRAM_PAGES`] frames at `bins`
    /// (contiguous, owned by the caller for the histogram's life); clears them.
    pub fn new(bins: HostPhysAddr) -> Self {
        let mut memory = OwnedFrames;
        for page in 0..TICK_HISTOGRAM_PAGES as u64 {
            memory.fill(HostPhysAddr::new_truncate(bins.as_u64() + page * PAGE_SIZE), 0);
        }
        Self { bins }
    }

    fn bin_of(ticks: u64) -> u64 {
        if ticks < TICK_SUB_BINS {
            return ticks;
        }
        let octave = 63 - u64::from(ticks.leading_zeros());
        (octave - 3) * TICK_SUB_BINS + ((ticks >> (octave - 4)) & (TICK_SUB_BINS - 1))
    }

    /// The smallest value of `bin`, and the bin's width.
    fn bin_range(bin: u64) -> (u64, u64) {
        if bin < TICK_SUB_BINS {
            return (bin, 1);
        }
        let octave = bin / TICK_SUB_BINS + 3;
        let width = 1u64 << (octave - 4);
        ((TICK_SUB_BINS + bin % TICK_SUB_BINS) * width, width)
    }

    fn word(&self, bin: u64) -> (HostPhysAddr, usize) {
        (HostPhysAddr::new_truncate(self.bins.as_u64() + (bin / 512) * PAGE_SIZE), (bin % 512) as usize)
    }

    /// Counts one sample.
    pub fn add(&mut self, ticks: u64) {
        let mut memory = OwnedFrames;
        for word in [Self::bin_of(ticks), TICK_BINS] {
            let (frame, index) = self.word(word);
            let value = memory.read_u64(frame, index);
            memory.write_u64(frame, index, value.saturating_add(1));
        }
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        let (frame, index) = self.word(TICK_BINS);
        OwnedFrames.read_u64(frame, index)
    }

    /// The value below which `per_mille`/1000 of the samples lie (the
    /// middle of its bin); 0 without samples.
    pub fn quantile(&self, per_mille: u64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = (count * per_mille).div_ceil(1000).max(1);
        let mut seen = 0u64;
        for bin in 0..TICK_BINS {
            let (frame, index) = self.word(bin);
            seen += OwnedFrames.read_u64(frame, index);
            if seen >= rank {
                let (low, width) = Self::bin_range(bin);
                return low + width / 2;
            }
        }
        u64::MAX
    }
}

fn report(name_median: &str, name_p99: &str, histogram: &Histogram) {
    defmt::info!("bench {=str} {=u64}", name_median, histogram.quantile(500));
    defmt::info!("bench {=str} {=u64}", name_p99, histogram.quantile(990));
}

/// Measures both series and logs them as `bench NAME VALUE` lines.
pub fn run(machine: &mut Machine<'_>, iterations: u32) {
    exits(machine, iterations);
    servers(machine, iterations);
}

fn exits(machine: &mut Machine<'_>, iterations: u32) {
    let frames = &mut machine.frames;
    let Ok(mut memory) = domain::build_memory(frames, 4096) else {
        defmt::error!("bench: no memory for the probe VM");
        return;
    };
    // VMMCALL at 0x0, CPUID at 0x10.
    let code_ok = memory.write(GuestPhysAddr::new_truncate(VMMCALL_AT), &[0x0f, 0x01, 0xd9]).is_ok()
        && memory.write(GuestPhysAddr::new_truncate(CPUID_AT), &[0x0f, 0xa2]).is_ok();
    let Some(mut vmcb) = Vmcb::new(frames) else {
        defmt::error!("bench: no memory for the probe VMCB");
        return;
    };
    if !code_ok {
        defmt::error!("bench: could not write the probe code");
        return;
    }
    let (Some(mut bare), Some(mut handled)) = (Histogram::new(frames), Histogram::new(frames)) else { return };
    let mut registers = GuestRegisters::default();
    domain::init_vmcb(&mut vmcb, &mut registers, &machine.maps, &memory.npt, machine.spare_asid(), VMMCALL_AT);
    let mut devices = DomainDevices::new("probe", 4096, 1);
    let host = &machine.host;

    for round in 0..WARMUP + iterations {
        vmcb.write_u64(offset::RIP, VMMCALL_AT);
        let start = cpu::rdtsc();
        svm::run(host, &mut vmcb, &mut registers);
        let elapsed = cpu::rdtsc() - start;
        if round >= WARMUP {
            bare.add(elapsed);
        }
    }
    let mut timer = None;
    let mut unexpected = 0u32;
    for round in 0..WARMUP + iterations {
        vmcb.write_u64(offset::RIP, CPUID_AT);
        registers.rcx = 0;
        vmcb.write_u64(offset::RAX, 0);
        let start = cpu::rdtsc();
        svm::run(host, &mut vmcb, &mut registers);
        let decoded = exit::decode(&vmcb.raw_exit());
        let mut view = VcpuView { vmcb: &mut vmcb, registers: &mut registers, timer: &mut timer };
        let outcome = exits::handle(&decoded, &mut view, &mut memory, &mut devices, &mut KernelPlatform, 0);
        let elapsed = cpu::rdtsc() - start;
        if outcome != exits::Outcome::Resume || decoded.reason != exit::VmExit::Cpuid {
            unexpected += 1;
        }
        if round >= WARMUP {
            handled.add(elapsed);
        }
    }
    if unexpected != 0 {
        defmt::error!("bench: {=u32} probe exits were not CPUID", unexpected);
    }
    defmt::info!("bench tsc_mhz {=u64}", lapic::tsc_hz() / 1_000_000);
    defmt::info!("bench iterations {=u32}", iterations);
    report("vmexit_bare_median_ticks", "vmexit_bare_p99_ticks", &bare);
    report("cpuid_exit_median_ticks", "cpuid_exit_p99_ticks", &handled);
    bare.release(&mut machine.frames);
    handled.release(&mut machine.frames);
}

/// Server figures, with the first test server: the IPC round trip
/// core → server → core (an echo request until its verified reply), and the
/// restart time from a stop to the new instance's first message.
fn servers(machine: &mut Machine<'_>, iterations: u32) {
    let Some(index) = machine.servers.iter().position(|server| server.spec.kind == ipc::server::ServerKind::Test) else {
        return;
    };
    // Let the first instance start and announce itself.
    if !run_until(machine, index, |server| server.stopped_at.is_none() && server.health.generation == 1, 1000) {
        defmt::error!("bench: the test server did not start");
        return;
    }
    let rounds = (iterations / 10).max(100);
    let Some(mut round_trip) = Histogram::with_bin(&mut machine.frames, 4 * BIN_TICKS) else { return };
    for round in 0..WARMUP + rounds {
        let Some(server) = machine.servers.get_mut(index) else { return };
        let verified = server.echo.verified;
        let start = cpu::rdtsc();
        if !server.send_next_echo() {
            defmt::error!("bench: could not send an echo request");
            return;
        }
        server.wake(ipc::server::syscall::WAKE_MESSAGES);
        if !run_until(machine, index, |server| server.echo.verified > verified, 1000) {
            defmt::error!("bench: the test server did not answer");
            return;
        }
        if round >= WARMUP {
            round_trip.add(cpu::rdtsc() - start);
        }
    }
    report("ipc_round_trip_median_ticks", "ipc_round_trip_p99_ticks", &round_trip);
    round_trip.release(&mut machine.frames);

    // A restart rebuilds an address space: milliseconds, so wide bins.
    let Some(mut restart) = Histogram::with_bin(&mut machine.frames, 16384) else { return };
    for _ in 0..20 {
        let start = cpu::rdtsc();
        machine.restart_server(index, hypervisor_core::server::ServerFault::Killed);
        if !run_until(machine, index, |server| server.stopped_at.is_none(), 1000) {
            defmt::error!("bench: the restarted test server did not announce itself");
            return;
        }
        restart.add(cpu::rdtsc() - start);
    }
    report("server_restart_median_ticks", "server_restart_p99_ticks", &restart);
    restart.release(&mut machine.frames);
}

/// Steps server `index` until `done` holds (or `limit` steps pass).
fn run_until(machine: &mut Machine<'_>, index: usize, done: impl Fn(&super::server::Server<'_>) -> bool, limit: u32) -> bool {
    for _ in 0..limit {
        if machine.servers.get(index).is_some_and(&done) {
            return true;
        }
        let waiting = machine.servers.get(index).is_some_and(|server| matches!(server.run, super::server::ServerRun::Waiting { .. }));
        if waiting {
            // Nothing for it to do: it waits for the core (a heartbeat timeout
            // would wake it later; the bench does not wait for that).
            if let Some(server) = machine.servers.get_mut(index) {
                let bits = server.wake_bits(cpu::rdtsc());
                if bits == 0 {
                    return machine.servers.get(index).is_some_and(&done);
                }
                server.wake(bits);
            }
        }
        let _ = machine.step_server(index);
    }
    machine.servers.get(index).is_some_and(done)
}

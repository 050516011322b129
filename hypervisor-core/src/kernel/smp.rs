//! Every pCPU's loop, and what the pCPUs share.
//!
//! The machine (domains, vCPUs, servers, run queues) is one structure behind
//! one lock, taken by a pCPU at each of its switch points, after each exit
//! of its guest and after each syscall of a server, and released while the
//! guest or the server runs: guests and servers run in parallel; exit
//! handling, syscalls and switch points are serialised. Servers run on
//! pCPU 0 only (their ring-3 entry state, GS base and SYSCALL MSRs, is set
//! up there, and only pCPU 0 restarts them, so a server is never restarted
//! while it runs); the other pCPUs run vCPUs and idle.
//!
//! A pCPU that is about to enter, or is inside, a guest publishes that in
//! [`GUEST_SEQUENCE`] (odd while in the guest section) and the guest's
//! domain in [`GUEST_DOMAIN`], outside the lock, so that a pCPU holding the
//! lock can force it out with a kick and wait for the exit without waiting
//! for the lock itself: that is the TLB shootdown paging needs before it
//! copies a frame it just made read-only.

use core::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use crate::arch::smp::{Shared, MAX_CPUS};
use crate::arch::{cpu, lapic, svm};

use super::run::{Action, Machine};

/// The machine, once built.
static MACHINE: Shared<Machine<'static>> = Shared::new();
/// Per pCPU: odd while it is entering or running a guest, even otherwise.
static GUEST_SEQUENCE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per pCPU: the domain of the guest it runs (valid while the sequence is odd).
static GUEST_DOMAIN: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(usize::MAX) }; MAX_CPUS];
/// Per pCPU: TSC ticks spent inside `svm::run_at` (guest time, the world
/// switch included), and the TSC when the pCPU entered its loop.
static GUEST_TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per pCPU: the TSC at its current guest entry (0 outside guests), so a
/// reading counts the guest run in progress.
static GUEST_ENTERED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per pCPU: odd while it moves a finished guest run from
/// [`GUEST_ENTERED`] into [`GUEST_TICKS`], so that another pCPU reading
/// both (the logs at the time limit) sees the run once, not zero times or
/// twice.
static GUEST_TIME_SEQUENCE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static LOOP_START: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per pCPU: TSC ticks spent waiting for the machine's lock, and holding it.
static LOCK_WAIT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static LOCK_HELD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static EXITS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per pCPU: TSC ticks with nothing to run (asleep in HLT, or halt polling).
static IDLE_TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// pCPU 0's server turns, returns to the core (syscalls, faults,
/// interrupts) and TSC ticks in ring 3.
static SERVER_TURNS: AtomicU64 = AtomicU64::new(0);
static SERVER_RETURNS: AtomicU64 = AtomicU64::new(0);
static SERVER_TICKS: AtomicU64 = AtomicU64::new(0);
/// How long after a pCPU enters its loop its steady window starts: past
/// the guests' boot, the servers' start and rebuild, and the emulator's
/// first translation of the code that runs (docs/benchmarks.md).
pub const STEADY_AFTER_MS: u64 = 1000;
/// Per pCPU, taken outside guests at its first exit, wake-up or poll end
/// [`STEADY_AFTER_MS`] or more after it entered its loop: the TSC (0 until then), its guest ticks and its idle
/// ticks. Written once by that pCPU (the TSC last, released); read by
/// whichever pCPU logs the times.
static STEADY_MARK: [[AtomicU64; 3]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; 3] }; MAX_CPUS];
/// Per pCPU: kicks sent to it (a polling pCPU stops when this moves).
static KICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Runs `work` on the machine with the lock held, as pCPU `cpu`.
fn locked<R>(cpu: usize, work: impl FnOnce(&mut Machine<'static>) -> R) -> R {
    let asked = cpu::rdtsc();
    let result = MACHINE.with(|machine| {
        let got = cpu::rdtsc();
        LOCK_WAIT[cpu % MAX_CPUS].fetch_add(got - asked, Ordering::Relaxed);
        machine.cpu = cpu;
        let result = work(machine);
        let kicks = machine.take_kicks();
        LOCK_HELD[cpu % MAX_CPUS].fetch_add(cpu::rdtsc() - got, Ordering::Relaxed);
        (result, kicks)
    });
    match result {
        Some((result, kicks)) => {
            // Kicked after the release: a kicked pCPU goes for the lock at
            // once, and would only spin while this one still held it.
            for target in (0..MAX_CPUS).filter(|target| kicks & (1 << target) != 0) {
                kick(target, cpu);
            }
            result
        }
        // `start` publishes the machine before any pCPU enters its loop.
        None => crate::arch::exit_machine(ipc::exit_status::ExitStatus::CorePanic),
    }
}

/// Publishes the machine, lets the APs in and enters pCPU 0's loop.
pub fn start(machine: &'static mut Machine<'static>, hosts: &[Option<svm::HostState>]) -> ! {
    let host = machine.host;
    MACHINE.publish(machine);
    crate::arch::smp::release_application_processors(hosts, cpu_loop);
    cpu_loop(0, host)
}

/// Interrupts pCPU `cpu` (no-op for the caller's own): an idle one wakes, a
/// guest it runs exits. The machine queues kicks (`Machine::kick`) and they
/// are sent here when its lock is released; TLB shootdowns kick at once.
fn kick(cpu: usize, from: usize) {
    if cpu == from || !crate::arch::smp::is_online(cpu) {
        return;
    }
    if let Some(kicks) = KICKS.get(cpu) {
        kicks.fetch_add(1, Ordering::AcqRel);
    }
    lapic::kick(cpu as u8);
}

/// Kicks received by pCPU `cpu` so far.
pub fn kicks(cpu: usize) -> u64 {
    KICKS.get(cpu).map_or(0, |kicks| kicks.load(Ordering::Acquire))
}

/// pCPU `cpu`'s time so far: (TSC ticks in guests, TSC ticks since it
/// entered its loop); `None` if it never did.
pub fn guest_time(cpu: usize) -> Option<PcpuTime> {
    let start = LOOP_START.get(cpu)?.load(Ordering::Acquire);
    // The owner is out of its update within a few instructions.
    let (now, guest) = loop {
        let sequence = GUEST_TIME_SEQUENCE[cpu].load(Ordering::Acquire);
        if !sequence.is_multiple_of(2) {
            core::hint::spin_loop();
            continue;
        }
        let now = cpu::rdtsc();
        let entered = GUEST_ENTERED[cpu].load(Ordering::Relaxed);
        let ticks = GUEST_TICKS[cpu].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if GUEST_TIME_SEQUENCE[cpu].load(Ordering::Relaxed) == sequence {
            let running = if entered == 0 { 0 } else { now.saturating_sub(entered) };
            break (now, ticks + running);
        }
    };
    (start != 0).then(|| PcpuTime {
        guest,
        total: now.saturating_sub(start),
        lock_wait: LOCK_WAIT[cpu].load(Ordering::Relaxed),
        lock_held: LOCK_HELD[cpu].load(Ordering::Relaxed),
        idle: IDLE_TICKS[cpu].load(Ordering::Relaxed),
        exits: EXITS[cpu].load(Ordering::Relaxed),
        servers: (cpu == 0).then(|| ServerTime {
            turns: SERVER_TURNS.load(Ordering::Relaxed),
            returns: SERVER_RETURNS.load(Ordering::Relaxed),
            ring3: SERVER_TICKS.load(Ordering::Relaxed),
        }),
    })
}

/// Starts pCPU `cpu`'s steady window if it is due and not started: called
/// by the pCPU itself, outside guests, with its counters up to date at `now`.
fn mark_steady(cpu: usize, now: u64) {
    let mark = &STEADY_MARK[cpu];
    if mark[0].load(Ordering::Relaxed) == 0
        && now.saturating_sub(LOOP_START[cpu].load(Ordering::Relaxed)) >= lapic::tsc_hz() / 1000 * STEADY_AFTER_MS
    {
        mark[1].store(GUEST_TICKS[cpu].load(Ordering::Relaxed), Ordering::Relaxed);
        mark[2].store(IDLE_TICKS[cpu].load(Ordering::Relaxed), Ordering::Relaxed);
        mark[0].store(now, Ordering::Release);
    }
}

/// pCPU `cpu`'s time since its steady window started (guest and idle ticks,
/// ticks in all, and when it started); `None` before it started.
pub fn steady_time(cpu: usize) -> Option<SteadyTime> {
    let mark = STEADY_MARK.get(cpu)?;
    let start = mark[0].load(Ordering::Acquire);
    let time = guest_time(cpu)?;
    let from = start.saturating_sub(LOOP_START[cpu].load(Ordering::Acquire));
    (start != 0).then(|| SteadyTime {
        guest: time.guest.saturating_sub(mark[1].load(Ordering::Relaxed)),
        total: time.total.saturating_sub(from),
        idle: time.idle.saturating_sub(mark[2].load(Ordering::Relaxed)),
        from,
    })
}

/// TSC ticks pCPU `cpu` has spent since it entered its loop on the
/// hypervisor's own work (neither in a guest nor idle: exits, switch
/// points, servers, lock waits), and idle. Read by the pCPU itself outside
/// guests.
pub fn overhead_and_idle_ticks(cpu: usize) -> (u64, u64) {
    let (Some(start), Some(guest), Some(idle)) = (LOOP_START.get(cpu), GUEST_TICKS.get(cpu), IDLE_TICKS.get(cpu)) else {
        return (0, 0);
    };
    let start = start.load(Ordering::Acquire);
    if start == 0 {
        return (0, 0);
    }
    let idle = idle.load(Ordering::Relaxed);
    let outside = cpu::rdtsc().saturating_sub(start).saturating_sub(guest.load(Ordering::Relaxed));
    (outside.saturating_sub(idle), idle)
}

/// Where a pCPU's time went (TSC ticks), for the logs and `make bench`.
#[derive(Debug, Clone, Copy)]
pub struct PcpuTime {
    /// Inside `svm::run_at` (the world switch included).
    pub guest: u64,
    /// Since it entered its loop.
    pub total: u64,
    /// Waiting for the machine's lock.
    pub lock_wait: u64,
    /// Holding it (exit handling, switch points, servers on pCPU 0).
    pub lock_held: u64,
    /// Idle: halted, or polling for a halted vCPU's wake-up.
    pub idle: u64,
    /// Guest exits taken.
    pub exits: u64,
    /// On pCPU 0, the servers' share.
    pub servers: Option<ServerTime>,
}

/// A pCPU's time in its steady window (TSC ticks): what `make bench` holds
/// against the goal for the time outside guests, without the start-up.
#[derive(Debug, Clone, Copy)]
pub struct SteadyTime {
    /// Inside `svm::run_at`.
    pub guest: u64,
    /// Since the window started.
    pub total: u64,
    /// Idle.
    pub idle: u64,
    /// When the window started, after the pCPU entered its loop: at least
    /// `STEADY_AFTER_MS`, later by up to a slice (its next exit), or more
    /// on a pCPU that sleeps.
    pub from: u64,
}

/// The servers' time on pCPU 0.
#[derive(Debug, Clone, Copy)]
pub struct ServerTime {
    /// Turns (a pick of a server until it waits, yields or is preempted).
    pub turns: u64,
    /// Returns to the core (syscalls, faults, interrupts).
    pub returns: u64,
    /// TSC ticks in ring 3.
    pub ring3: u64,
}

/// Forces every other pCPU that runs a vCPU of `domain` out of the guest
/// and waits until it is out: after this, no pCPU runs that domain with a
/// TLB entry older than the caller's last change to its nested page
/// tables (each flushes before it enters again, see `Machine::prepare_entry`).
/// Called with the lock held; the pCPUs waited for do not need the lock to
/// leave the guest.
pub fn shoot_down(domain: usize) {
    let from = usize::from(lapic::id());
    let mut waiting = [None; MAX_CPUS];
    for (other, slot) in waiting.iter_mut().enumerate() {
        let sequence = GUEST_SEQUENCE[other].load(Ordering::Acquire);
        if other != from && !sequence.is_multiple_of(2) && GUEST_DOMAIN[other].load(Ordering::Acquire) == domain {
            kick(other, from);
            *slot = Some(sequence);
        }
    }
    for (other, sequence) in waiting.iter().enumerate() {
        if let Some(sequence) = *sequence {
            while GUEST_SEQUENCE[other].load(Ordering::Acquire) == sequence {
                core::hint::spin_loop();
            }
        }
    }
}

/// pCPU `cpu` commits to entering a guest of `domain` (lock held).
pub fn entering_guest(cpu: usize, domain: usize) {
    GUEST_DOMAIN[cpu].store(domain, Ordering::Release);
    let sequence = GUEST_SEQUENCE[cpu].load(Ordering::Relaxed);
    if sequence.is_multiple_of(2) {
        GUEST_SEQUENCE[cpu].store(sequence + 1, Ordering::Release);
    }
}

/// pCPU `cpu` left its guest (called without the lock, right after the exit).
fn left_guest(cpu: usize) {
    let sequence = GUEST_SEQUENCE[cpu].load(Ordering::Relaxed);
    if !sequence.is_multiple_of(2) {
        GUEST_SEQUENCE[cpu].store(sequence + 1, Ordering::Release);
    }
}

/// One pCPU's life: switch points under the lock, guests and idling outside.
fn cpu_loop(cpu: usize, host: svm::HostState) -> ! {
    LOOP_START[cpu % MAX_CPUS].store(cpu::rdtsc(), Ordering::Release);
    loop {
        cpu::take_pending_interrupts();
        match locked(cpu, |machine| machine.switch_point()) {
            Action::Again => {}
            Action::Guest { index, mut entry } => loop {
                let entered = cpu::rdtsc();
                GUEST_ENTERED[cpu % MAX_CPUS].store(entered, Ordering::Relaxed);
                svm::run_at(&host, entry.vmcb, &mut entry.registers);
                let exited = cpu::rdtsc();
                left_guest(cpu);
                let sequence = GUEST_TIME_SEQUENCE[cpu % MAX_CPUS].load(Ordering::Relaxed);
                GUEST_TIME_SEQUENCE[cpu % MAX_CPUS].store(sequence.wrapping_add(1), Ordering::Relaxed);
                fence(Ordering::Release);
                GUEST_ENTERED[cpu % MAX_CPUS].store(0, Ordering::Relaxed);
                GUEST_TICKS[cpu % MAX_CPUS].fetch_add(exited.wrapping_sub(entered), Ordering::Relaxed);
                GUEST_TIME_SEQUENCE[cpu % MAX_CPUS].store(sequence.wrapping_add(2), Ordering::Release);
                EXITS[cpu % MAX_CPUS].fetch_add(1, Ordering::Relaxed);
                mark_steady(cpu % MAX_CPUS, exited);
                match locked(cpu, |machine| machine.after_exit(index, &entry.registers, exited.wrapping_sub(entered))) {
                    Some(next) => entry = next,
                    None => break,
                }
            },
            Action::Poll { index, until } => {
                let seen = kicks(cpu);
                let start = cpu::rdtsc();
                let mut now = start;
                while now < until && kicks(cpu) == seen {
                    core::hint::spin_loop();
                    now = cpu::rdtsc();
                }
                IDLE_TICKS[cpu % MAX_CPUS].fetch_add(now - start, Ordering::Relaxed);
                mark_steady(cpu % MAX_CPUS, now);
                locked(cpu, |machine| machine.polled(index, now - start));
            }
            Action::Sleep => {
                let start = cpu::rdtsc();
                cpu::wait_for_interrupt();
                let now = cpu::rdtsc();
                IDLE_TICKS[cpu % MAX_CPUS].fetch_add(now.wrapping_sub(start), Ordering::Relaxed);
                mark_steady(cpu % MAX_CPUS, now);
            }
            Action::Server { index, mut context } => loop {
                let entered = cpu::rdtsc();
                crate::arch::user::enter(&mut context);
                SERVER_TICKS.fetch_add(cpu::rdtsc().wrapping_sub(entered), Ordering::Relaxed);
                SERVER_RETURNS.fetch_add(1, Ordering::Relaxed);
                match locked(cpu, |machine| machine.after_server(index, &context)) {
                    Some(next) => context = next,
                    None => {
                        SERVER_TURNS.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            },
        }
    }
}

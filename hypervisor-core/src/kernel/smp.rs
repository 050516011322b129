//! Every pCPU's loop, and what the pCPUs share.
//!
//! The machine (domains, vCPUs, servers, run queues) is one structure behind
//! one lock, taken by a pCPU at each of its switch points and after each of
//! its guest's exits, and released while the guest runs. Only guest
//! execution is parallel; exit handling, which the slow world switch under
//! TCG dwarfs, is serialised. Servers run on pCPU 0 only (their ring-3
//! entry state, GS base and SYSCALL MSRs, is set up there); the other pCPUs
//! run vCPUs and idle.
//!
//! A pCPU that is about to enter, or is inside, a guest publishes that in
//! [`GUEST_SEQUENCE`] (odd while in the guest section) and the guest's
//! domain in [`GUEST_DOMAIN`], outside the lock, so that a pCPU holding the
//! lock can force it out with a kick and wait for the exit without waiting
//! for the lock itself: that is the TLB shootdown paging needs before it
//! copies a frame it just made read-only.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::arch::smp::{Shared, MAX_CPUS};
use crate::arch::{cpu, lapic, svm};

use super::run::{Action, Machine};

/// The machine, once built.
static MACHINE: Shared<Machine<'static>> = Shared::new();
/// Per pCPU: odd while it is entering or running a guest, even otherwise.
static GUEST_SEQUENCE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per pCPU: the domain of the guest it runs (valid while the sequence is odd).
static GUEST_DOMAIN: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(usize::MAX) }; MAX_CPUS];
/// Per pCPU: kicks sent to it (a polling pCPU stops when this moves).
static KICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Runs `work` on the machine with the lock held, as pCPU `cpu`.
fn locked<R>(cpu: usize, work: impl FnOnce(&mut Machine<'static>) -> R) -> R {
    let result = MACHINE.with(|machine| {
        machine.cpu = cpu;
        work(machine)
    });
    match result {
        Some(result) => result,
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

/// Makes pCPU `cpu` reach a switch point soon (no-op for the caller's own).
pub fn kick(cpu: usize, from: usize) {
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
    loop {
        cpu::take_pending_interrupts();
        match locked(cpu, |machine| machine.switch_point()) {
            Action::Again => {}
            Action::Guest { index, mut entry } => loop {
                let entered = cpu::rdtsc();
                svm::run_at(&host, entry.vmcb, &mut entry.registers);
                let exited = cpu::rdtsc();
                left_guest(cpu);
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
                locked(cpu, |machine| machine.polled(index, now - start));
            }
            Action::Sleep => cpu::wait_for_interrupt(),
        }
    }
}

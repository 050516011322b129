//! `scheduler-server`: the ring-3 binary. All behaviour is in the library
//! ([`scheduler_server::server::SchedulerServer`]); this file only names the
//! handler for the components runtime's entry point, with the TSC as the
//! cycle counter that times its decisions.
#![cfg_attr(target_os = "none", no_std, no_main)]

components::server!(|| scheduler_server::server::SchedulerServer::with_cycle_counter(read_tsc));

/// The time-stamp counter.
#[cfg(target_os = "none")]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC reads a counter and touches no memory; the core leaves
    // CR4.TSD clear, so ring 3 may execute it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("scheduler-server is a cairn server: build it for x86_64-unknown-none");
}

//! `smpspin`: starts its secondary vCPUs with `VCPUOP_initialise` and
//! `VCPUOP_up` (`guests::smp::start_others_or_crash`), then every vCPU counts in a
//! tight loop for `spin_ms` of guest system time, measured from its own
//! start, and reports how far it got. Settings: [`guests::smpspin`].
//!
//! Lines (each shown on the host as `NAME: TEXT`):
//! `starting K vCPUs, spin_ms M`; each secondary vCPU `vCPU N counted C`
//! when its time is up; vCPU 0, once every vCPU finished, its own
//! `vCPU 0 counted C` and `all K vCPUs ran`, then
//! `SCHEDOP_shutdown(poweroff)`. Secondary vCPUs park afterwards
//! (`SCHEDOP_block`, no timer).
//!
//! Failures end with `SHUTDOWN_crash`, so a test fails: a secondary vCPU
//! that cannot be started prints `vCPU N: CALL failed: error E` (CALL
//! `VCPUOP_initialise` or `VCPUOP_up`, E the Xen errno); one that never
//! finishes within `wait_ms` after vCPU 0's own count gives
//! `only F of K vCPUs finished`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(smpspin::run);

#[cfg(target_os = "none")]
mod smpspin {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use guests::smp::{self, MAX_VCPUS};
    use guests::smpspin::Settings;
    use guests::text::Line;
    use guests::{console, hypercall, pv, Boot};

    /// Each vCPU's count, published as it goes.
    static COUNTS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
    /// vCPUs whose time is up.
    static FINISHED: AtomicU32 = AtomicU32::new(0);
    /// `spin_ms` for the secondary vCPUs (written before they start).
    static SPIN_MS: AtomicU64 = AtomicU64::new(0);
    /// Loop rounds between two clock reads.
    const ROUNDS_PER_CHECK: u64 = 4096;

    pub fn run(boot: Boot) -> ! {
        let settings = Settings::parse(boot.cmdline());
        SPIN_MS.store(settings.spin_ms, Ordering::Release);
        let mut line = Line::new();
        line.push_str("starting ")
            .push_decimal(u64::from(settings.vcpus))
            .push_str(" vCPUs, spin_ms ")
            .push_decimal(settings.spin_ms);
        console::print(&mut line);
        smp::start_others_or_crash(settings.vcpus, secondary);
        let count = spin(0, settings.spin_ms);
        FINISHED.fetch_add(1, Ordering::AcqRel);
        let deadline = pv::now_ns().saturating_add(settings.wait_ms * 1_000_000);
        while FINISHED.load(Ordering::Acquire) < u32::from(settings.vcpus) {
            if pv::now_ns() >= deadline {
                let mut line = Line::new();
                line.push_str("only ")
                    .push_decimal(u64::from(FINISHED.load(Ordering::Acquire)))
                    .push_str(" of ")
                    .push_decimal(u64::from(settings.vcpus))
                    .push_str(" vCPUs finished");
                hypercall::crash_line(&mut line);
            }
            pv::sleep_ns(1_000_000);
        }
        report(0, count);
        let mut line = Line::new();
        line.push_str("all ")
            .push_decimal(u64::from(settings.vcpus))
            .push_str(" vCPUs ran");
        console::print(&mut line);
        hypercall::poweroff()
    }

    /// A secondary vCPU: counts, reports, and only then marks itself
    /// finished (vCPU 0 powers the domain off once all are: a report still
    /// on its way would be lost), parks.
    extern "C" fn secondary(index: u8) -> ! {
        let count = spin(index, SPIN_MS.load(Ordering::Acquire));
        report(index, count);
        FINISHED.fetch_add(1, Ordering::AcqRel);
        smp::park()
    }

    /// Counts for `spin_ms` from now; returns the count.
    fn spin(index: u8, spin_ms: u64) -> u64 {
        let counter = &COUNTS[usize::from(index)];
        let deadline = pv::now_ns().saturating_add(spin_ms * 1_000_000);
        let mut count: u64 = 0;
        loop {
            for _ in 0..ROUNDS_PER_CHECK {
                count = core::hint::black_box(count) + 1;
            }
            counter.store(count, Ordering::Relaxed);
            if pv::now_ns() >= deadline {
                break;
            }
        }
        count
    }

    /// `vCPU N counted C`.
    fn report(index: u8, count: u64) {
        let mut line = Line::new();
        line.push_str("vCPU ")
            .push_decimal(u64::from(index))
            .push_str(" counted ")
            .push_decimal(count);
        console::print(&mut line);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

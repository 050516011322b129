//! `smpipi`: IPIs between the two vCPUs of one guest, each vCPU on its own
//! pCPU, and how long they take. Settings: [`guests::smpipi`].
//!
//! vCPU 0 installs the IDT (IPI vector 0x40, spurious 0xff, a catch-all for
//! the rest, shared by both vCPUs: [`guests::idt`]) and starts vCPU 1 with
//! `VCPUOP_initialise`/`VCPUOP_up`. vCPU 1 loads the IDT, software-enables
//! its local APIC through the SVR and publishes its APIC ID; its IPI handler
//! records the TSC, writes the EOI, then counts. vCPU 0 keeps interrupts
//! off and sends fixed IPIs to that APIC ID through the ICR, one at a time:
//! each is sent once the previous one was counted, and its latency is the
//! handler's TSC minus the TSC just before the ICR write (every vCPU reads
//! the host's TSC).
//!
//! * **Halted phase**: vCPU 1 loops on `sti; hlt` (HLT with IF = 1 blocks
//!   it in the core) until it counted `ipis`; before each HLT it says which
//!   IPI it waits for, and vCPU 0 sends that one `settle_us` later, so the
//!   IPI finds vCPU 1 blocked and has to wake it up on its pCPU.
//! * **Busy phase**: vCPU 1 spins with IF = 1 until it counted `ipis` more;
//!   the core must make the pCPU running it exit so the interrupt is
//!   injected.
//!
//! Lines: `starting: ipis N, settle_us S, timeout_ms T`,
//! `vCPU 1: local APIC id A enabled`,
//! `halted phase: N IPIs received, latency median X us, p99 Y us, max Z us,
//! min W us; ICR write median V us, p99 U us` and the same for the `busy
//! phase` (the ICR write's time is the exit that delivers the IPI),
//! `done: S spurious, U unexpected interrupts`, then
//! `SCHEDOP_shutdown(poweroff)`. vCPU 1 parks at the end.
//!
//! Failures print a line and end with `SHUTDOWN_crash`: an IPI not handled
//! (or vCPU 1 not ready for the next one) within `timeout_ms` gives
//! `IPI lost: ...`; vCPU 1 not up and enabled within `wait_ms`, a start
//! failure or an interrupt at an unexpected vector give `ERROR ...`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(smpipi::run);

#[cfg(target_os = "none")]
mod smpipi {
    use core::arch::global_asm;
    use core::sync::atomic::{AtomicU64, Ordering};

    use guests::latency::{self, Summary};
    use guests::smpipi::{Settings, MAX_IPIS};
    use guests::text::Line;
    use guests::xapic::{self, rdtsc};
    use guests::{console, hypercall, pv, smp, Boot};

    const IPI_VECTOR: u8 = 0x40;
    const SPURIOUS_VECTOR: u8 = 0xff;
    /// The vCPU the IPIs go to.
    const TARGET: u8 = 1;

    // Written by the interrupt handlers below (on vCPU 1).
    /// IPIs handled so far (both phases).
    #[no_mangle]
    static SMPIPI_RECEIVED: AtomicU64 = AtomicU64::new(0);
    /// The TSC at the start of the last IPI's handler.
    #[no_mangle]
    static SMPIPI_ARRIVAL_TSC: AtomicU64 = AtomicU64::new(0);
    #[no_mangle]
    static SMPIPI_SPURIOUS: AtomicU64 = AtomicU64::new(0);
    #[no_mangle]
    static SMPIPI_OTHER: AtomicU64 = AtomicU64::new(0);

    // vCPU 1 -> vCPU 0.
    /// vCPU 1's APIC ID + 1 once its APIC is enabled (0 before).
    static READY: AtomicU64 = AtomicU64::new(0);
    /// Halted phase: the count vCPU 1 waits to reach in its next HLT.
    static WAITING_FOR: AtomicU64 = AtomicU64::new(0);
    /// Set when vCPU 1 spins with interrupts on (busy phase).
    static BUSY: AtomicU64 = AtomicU64::new(0);
    // vCPU 0 -> vCPU 1.
    /// IPIs per phase.
    static IPIS: AtomicU64 = AtomicU64::new(0);

    /// Per IPI of a phase: its latency and how long the ICR write took
    /// (the exit that delivers it), TSC ticks; only vCPU 0 touches them.
    struct Samples {
        latency: [u64; MAX_IPIS as usize],
        send: [u64; MAX_IPIS as usize],
    }

    static mut SAMPLES: Samples = Samples {
        latency: [0; MAX_IPIS as usize],
        send: [0; MAX_IPIS as usize],
    };

    // The IPI handler: TSC first, then the EOI (a 32-bit store to the EOI
    // register, emulated by the hypervisor), then the count, so vCPU 0
    // sees the count only after the TSC and the EOI, and the next IPI does
    // not wait in IRR behind this one. The spurious vector gets no EOI
    // (SDM vol. 3A §11.9).
    global_asm!(
        r#"
        .section .text.smpipi_handlers, "ax"
        .balign 16
    smpipi_ipi_entry:
        push rax
        push rdx
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov [rip + SMPIPI_ARRIVAL_TSC], rax
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        lock inc qword ptr [rip + SMPIPI_RECEIVED]
        pop rdx
        pop rax
        iretq

        .balign 16
    smpipi_spurious_entry:
        lock inc qword ptr [rip + SMPIPI_SPURIOUS]
        iretq

        .balign 16
    smpipi_other_entry:
        push rax
        lock inc qword ptr [rip + SMPIPI_OTHER]
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        pop rax
        iretq

        .global smpipi_ipi_entry
        .global smpipi_spurious_entry
        .global smpipi_other_entry
        .text
        "#
    );

    extern "C" {
        fn smpipi_ipi_entry();
        fn smpipi_spurious_entry();
        fn smpipi_other_entry();
    }

    fn install_idt() {
        // SAFETY: the handlers above preserve every register they use
        // and end with IRETQ; vectors 0x20 and up push no error code.
        unsafe {
            guests::idt::install(
                &[
                    (IPI_VECTOR, smpipi_ipi_entry),
                    (SPURIOUS_VECTOR, smpipi_spurious_entry),
                ],
                smpipi_other_entry,
            )
        };
    }

    /// An IPI of `phase` (number `index`, from 0) was not handled, or vCPU
    /// 1 never got ready for it, within the timeout.
    fn lost(phase: &str, what: &str, index: u64, settings: &Settings) -> ! {
        let mut line = Line::new();
        line.push_str("IPI lost: ")
            .push_str(phase)
            .push_str(" phase, IPI ")
            .push_decimal(index + 1)
            .push_str(" of ")
            .push_decimal(settings.ipis)
            .push_str(": ")
            .push_str(what)
            .push_str(" within ")
            .push_decimal(settings.timeout_ms)
            .push_str(" ms (received ")
            .push_decimal(SMPIPI_RECEIVED.load(Ordering::Acquire))
            .push_str(")");
        hypercall::crash_line(&mut line)
    }

    /// Spins until `value` reaches `target`; false at TSC `limit`.
    fn wait_until(value: &AtomicU64, target: u64, limit: u64) -> bool {
        loop {
            if value.load(Ordering::Acquire) >= target {
                return true;
            }
            if rdtsc() > limit {
                return false;
            }
            core::hint::spin_loop();
        }
    }

    /// Sends one IPI to `destination` and waits until vCPU 1 counted it
    /// (its count reaches `target`); its latency and how long the ICR write
    /// took, in TSC ticks.
    fn one_ipi(destination: u8, target: u64, timeout: u64) -> Option<(u64, u64)> {
        let sent = rdtsc();
        xapic::send_fixed(destination, IPI_VECTOR);
        let written = rdtsc();
        if !wait_until(&SMPIPI_RECEIVED, target, sent.saturating_add(timeout)) {
            return None;
        }
        let arrived = SMPIPI_ARRIVAL_TSC.load(Ordering::Acquire);
        Some((arrived.saturating_sub(sent), written.saturating_sub(sent)))
    }

    /// One phase: `settings.ipis` IPIs to `destination`, the first taking
    /// vCPU 1's count past `counted`; `before(index)` runs before each
    /// send. Reports the latencies (`khz`: TSC rate).
    fn phase(
        name: &str,
        settings: &Settings,
        destination: u8,
        counted: u64,
        khz: u64,
        mut before: impl FnMut(u64),
    ) {
        // SAFETY: SAMPLES is only reached here, on vCPU 0, one phase at a
        // time: this is the only reference to it while it lives.
        let samples = unsafe { &mut *(&raw mut SAMPLES) };
        let count = settings.ipis as usize;
        let timeout = settings.timeout_ms.saturating_mul(khz);
        for index in 0..count {
            before(index as u64);
            match one_ipi(destination, counted + index as u64 + 1, timeout) {
                Some(sample) => (samples.latency[index], samples.send[index]) = sample,
                None => lost(name, "not handled", index as u64, settings),
            }
        }
        let micros = |ticks: u64| ticks.saturating_mul(1000) / khz;
        let latency = summary(&mut samples.latency[..count]).map(micros);
        let send = summary(&mut samples.send[..count]).map(micros);
        let mut line = Line::new();
        line.push_str(name)
            .push_str(" phase: ")
            .push_decimal(latency.count)
            .push_str(" IPIs received, latency median ")
            .push_decimal(latency.median)
            .push_str(" us, p99 ")
            .push_decimal(latency.p99)
            .push_str(" us, max ")
            .push_decimal(latency.max)
            .push_str(" us, min ")
            .push_decimal(latency.min)
            .push_str(" us; ICR write median ")
            .push_decimal(send.median)
            .push_str(" us, p99 ")
            .push_decimal(send.p99)
            .push_str(" us");
        console::print(&mut line);
    }

    pub fn run(boot: Boot) -> ! {
        let settings = Settings::parse(boot.cmdline());
        let khz = pv::tsc_khz();
        if khz == 0 {
            hypercall::crash_error("no TSC rate in CPUID", 0);
        }
        let ms = |ms: u64| ms.saturating_mul(khz);
        let mut line = Line::new();
        line.push_str("starting: ipis ")
            .push_decimal(settings.ipis)
            .push_str(", settle_us ")
            .push_decimal(settings.settle_us)
            .push_str(", timeout_ms ")
            .push_decimal(settings.timeout_ms);
        console::print(&mut line);

        IPIS.store(settings.ipis, Ordering::Release);
        install_idt();
        if let Err(error) = smp::start_vcpu(TARGET, secondary) {
            let mut line = Line::new();
            line.push_str("ERROR vCPU 1: ")
                .push_str(error.call())
                .push_str(" failed: error ")
                .push_decimal(error.code().unsigned_abs());
            hypercall::crash_line(&mut line);
        }
        if !wait_until(&READY, 1, rdtsc().saturating_add(ms(settings.wait_ms))) {
            hypercall::crash_error(
                "vCPU 1 did not enable its APIC in time, wait_ms",
                settings.wait_ms,
            );
        }
        let destination = (READY.load(Ordering::Acquire) - 1) as u8;
        let mut line = Line::new();
        line.push_str("vCPU 1: local APIC id ")
            .push_decimal(u64::from(destination))
            .push_str(" enabled");
        console::print(&mut line);

        let timeout = ms(settings.timeout_ms);
        let settle = settings.settle_us.saturating_mul(khz) / 1000;
        phase("halted", &settings, destination, 0, khz, |index| {
            if !wait_until(&WAITING_FOR, index + 1, rdtsc().saturating_add(timeout)) {
                lost("halted", "vCPU 1 did not halt for it", index, &settings);
            }
            let settled = rdtsc().saturating_add(settle);
            while rdtsc() < settled {
                core::hint::spin_loop();
            }
        });
        if !wait_until(&BUSY, 1, rdtsc().saturating_add(timeout)) {
            lost("busy", "vCPU 1 did not start spinning", 0, &settings);
        }
        phase("busy", &settings, destination, settings.ipis, khz, |_| {});

        let spurious = SMPIPI_SPURIOUS.load(Ordering::Acquire);
        let other = SMPIPI_OTHER.load(Ordering::Acquire);
        let received = SMPIPI_RECEIVED.load(Ordering::Acquire);
        if other != 0 || received != 2 * settings.ipis {
            let mut line = Line::new();
            line.push_str("ERROR ")
                .push_decimal(other)
                .push_str(" interrupts at unexpected vectors, ")
                .push_decimal(received)
                .push_str(" IPIs counted");
            hypercall::crash_line(&mut line);
        }
        let mut line = Line::new();
        line.push_str("done: ")
            .push_decimal(spurious)
            .push_str(" spurious, ")
            .push_decimal(other)
            .push_str(" unexpected interrupts");
        console::print(&mut line);
        hypercall::poweroff()
    }

    fn summary(samples: &mut [u64]) -> Summary {
        // `ipis` is at least 1, so there is a sample.
        latency::summarize(samples).unwrap_or_default()
    }

    /// vCPU 1: enables its APIC, takes `ipis` IPIs halted, `ipis` more
    /// spinning with interrupts on, then parks.
    extern "C" fn secondary(_index: u8) -> ! {
        guests::idt::load();
        xapic::enable(SPURIOUS_VECTOR);
        let ipis = IPIS.load(Ordering::Acquire);
        READY.store(u64::from(xapic::id()) + 1, Ordering::Release);

        // Halted phase: interrupts are off except inside `sti; hlt`, so
        // the count read here cannot move until the HLT.
        loop {
            let received = SMPIPI_RECEIVED.load(Ordering::Acquire);
            if received >= ipis {
                break;
            }
            WAITING_FOR.store(received + 1, Ordering::Release);
            xapic::halt();
        }

        // Busy phase.
        xapic::enable_interrupts();
        BUSY.store(1, Ordering::Release);
        while SMPIPI_RECEIVED.load(Ordering::Acquire) < 2 * ipis {
            core::hint::spin_loop();
        }
        xapic::disable_interrupts();
        smp::park()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

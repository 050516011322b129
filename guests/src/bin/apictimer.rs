//! `apictimer`: drives its virtual local APIC the way a kernel does and
//! checks what comes back, then powers off:
//!
//! * CPUID advertises the APIC (leaf 1 EDX bit 9) and the TSC-deadline timer
//!   (leaf 1 ECX bit 24); `IA32_APIC_BASE` reads `0xfee00000`, enabled, BSP;
//! * it installs an IDT (timer vector 0x30, IPI vector 0x31, spurious 0xff,
//!   a catch-all for the rest), software-enables the APIC through the SVR and
//!   reads its ID and version;
//! * one-shot (10 ms), periodic (5 ticks of 2 ms, then stopped: no tick
//!   may follow) and
//!   TSC-deadline (5 ms) timers in turn, each waited for with `sti; hlt`,
//!   each handler ending with an EOI; the elapsed TSC must be at least what
//!   was asked and at most [`TOLERANCE_US`] more;
//! * a self-IPI through the ICR (held in IRR while IF = 0), one held back by
//!   TPR 0x40 until the TPR is lowered, and one sent to its own APIC ID.
//!
//! Lines: `apictimer: one-shot fired after N us (asked 10000)`,
//! `apictimer: periodic 5 ticks in N us (period 2000 us)`,
//! `apictimer: tsc-deadline fired after N us (asked 5000)`,
//! `apictimer: self-IPI delivered ...`, `apictimer: done`. A failed check
//! prints `apictimer: ERROR ...` and reports a crash.
//!
//! With `mode=bad` on the command line it instead compares the timer's
//! current count in memory (`cmp dword ptr [0xfee00390], 0`), an
//! instruction the hypervisor's MMIO decoder refuses: the domain must be
//! stopped, so a following `ERROR` line means it was not.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(apictimer::run);

#[cfg(target_os = "none")]
mod apictimer {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicU64, Ordering};

    use guests::text::Line;
    use guests::xapic::{
        self, disable_interrupts, enable_interrupts, halt, in_vector_set, interrupt_window, rdmsr,
        rdtsc, read as apic_read, write as apic_write, APIC_BASE_MSR, CURRENT_COUNT, DIVIDE, ESR,
        ICR_HIGH, ICR_LEVEL_ASSERT, ICR_LOW, ICR_SELF, ID, INITIAL_COUNT, IRR, ISR, LVT_TIMER, PPR,
        SVR, TPR, TSC_DEADLINE_MSR, VERSION,
    };
    use guests::{console, hypercall, pv, Boot};

    /// How much later than asked a timer may fire: TCG and a busy host are
    /// slow, but an interrupt that never comes or comes a tick late is caught.
    const TOLERANCE_US: u64 = 100_000;

    const TIMER_VECTOR: u8 = 0x30;
    const IPI_VECTOR: u8 = 0x31;
    const SPURIOUS_VECTOR: u8 = 0xff;
    const LVT_MASKED: u32 = 1 << 16;
    const PERIODIC: u32 = 1 << 17;
    const TSC_DEADLINE: u32 = 2 << 17;
    const DIVIDE_BY_16: u32 = 0b0011;
    /// The APIC timer counts a 1 GHz bus clock: divided by 16, 62.5 counts per µs.
    const COUNTS_PER_MS_DIV16: u32 = 62_500;

    // Written by the interrupt handlers below.
    #[no_mangle]
    static APICTIMER_TIMER_COUNT: AtomicU64 = AtomicU64::new(0);
    #[no_mangle]
    static APICTIMER_TIMER_TSC: AtomicU64 = AtomicU64::new(0);
    /// The TSC of timer interrupt number `n` (counted from 0) at `n % 16`.
    #[no_mangle]
    static APICTIMER_TICK_TSC: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
    #[no_mangle]
    static APICTIMER_IPI_COUNT: AtomicU64 = AtomicU64::new(0);
    #[no_mangle]
    static APICTIMER_SPURIOUS_COUNT: AtomicU64 = AtomicU64::new(0);
    #[no_mangle]
    static APICTIMER_OTHER_COUNT: AtomicU64 = AtomicU64::new(0);

    // The handlers: count, remember the TSC of the timer interrupt, EOI
    // (a 32-bit store to the EOI register, which the hypervisor emulates),
    // IRET. The spurious vector gets no EOI (SDM vol. 3A §11.9).
    global_asm!(
        r#"
        .section .text.apictimer_handlers, "ax"
        .balign 16
    apictimer_timer_entry:
        push rax
        push rcx
        push rdx
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov [rip + APICTIMER_TIMER_TSC], rax
        mov ecx, 1
        lock xadd qword ptr [rip + APICTIMER_TIMER_COUNT], rcx
        and ecx, 15
        lea rdx, [rip + APICTIMER_TICK_TSC]
        mov [rdx + rcx * 8], rax
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        pop rdx
        pop rcx
        pop rax
        iretq

        .balign 16
    apictimer_ipi_entry:
        push rax
        lock inc qword ptr [rip + APICTIMER_IPI_COUNT]
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        pop rax
        iretq

        .balign 16
    apictimer_spurious_entry:
        lock inc qword ptr [rip + APICTIMER_SPURIOUS_COUNT]
        iretq

        .balign 16
    apictimer_other_entry:
        push rax
        lock inc qword ptr [rip + APICTIMER_OTHER_COUNT]
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        pop rax
        iretq

        .global apictimer_timer_entry
        .global apictimer_ipi_entry
        .global apictimer_spurious_entry
        .global apictimer_other_entry
        .text
        "#
    );

    extern "C" {
        fn apictimer_timer_entry();
        fn apictimer_ipi_entry();
        fn apictimer_spurious_entry();
        fn apictimer_other_entry();
    }

    fn install_idt() {
        // SAFETY: the handlers above preserve every register they use
        // and end with IRETQ; vectors 0x20 and up push no error code.
        unsafe {
            guests::idt::install(
                &[
                    (TIMER_VECTOR, apictimer_timer_entry),
                    (IPI_VECTOR, apictimer_ipi_entry),
                    (SPURIOUS_VECTOR, apictimer_spurious_entry),
                ],
                apictimer_other_entry,
            )
        };
    }

    fn check(ok: bool, what: &str, value: u64) {
        if !ok {
            hypercall::crash_error(what, value);
        }
    }

    /// TSC ticks in `us` microseconds.
    fn ticks(us: u64, khz: u64) -> u64 {
        us * khz / 1000
    }

    fn micros(ticks: u64, khz: u64) -> u64 {
        ticks * 1000 / khz.max(1)
    }

    /// HLTs until `counter` reaches `target`; gives up (false) at TSC `limit`.
    fn wait_for(counter: &AtomicU64, target: u64, limit: u64) -> bool {
        loop {
            if counter.load(Ordering::SeqCst) >= target {
                return true;
            }
            if rdtsc() > limit {
                return false;
            }
            halt();
        }
    }

    /// Checks a timer that was armed at `start` for `asked_us` fired in time.
    fn check_elapsed(what: &str, start: u64, fired: u64, asked_us: u64, khz: u64) -> u64 {
        check(
            fired >= start + ticks(asked_us, khz),
            what,
            micros(fired.wrapping_sub(start), khz),
        );
        let elapsed = micros(fired - start, khz);
        check(elapsed <= asked_us + TOLERANCE_US, what, elapsed);
        elapsed
    }

    fn one_shot(khz: u64) {
        let asked_us = 10_000;
        apic_write(DIVIDE, DIVIDE_BY_16);
        apic_write(LVT_TIMER, u32::from(TIMER_VECTOR));
        let before = APICTIMER_TIMER_COUNT.load(Ordering::SeqCst);
        let start = rdtsc();
        apic_write(INITIAL_COUNT, 10 * COUNTS_PER_MS_DIV16);
        let running = apic_read(CURRENT_COUNT);
        check(
            running > 0 && running <= 10 * COUNTS_PER_MS_DIV16,
            "one-shot current count while running",
            u64::from(running),
        );
        let fired = wait_for(
            &APICTIMER_TIMER_COUNT,
            before + 1,
            start + ticks(asked_us + TOLERANCE_US, khz),
        );
        check(fired, "one-shot timer never fired", asked_us);
        let elapsed = check_elapsed(
            "one-shot fired out of time",
            start,
            APICTIMER_TIMER_TSC.load(Ordering::SeqCst),
            asked_us,
            khz,
        );
        check(
            apic_read(CURRENT_COUNT) == 0,
            "one-shot current count after expiry",
            u64::from(apic_read(CURRENT_COUNT)),
        );
        check(
            !in_vector_set(ISR, TIMER_VECTOR),
            "EOI left the timer vector in service",
            0,
        );
        let mut line = Line::new();
        line.push_str("one-shot fired after ")
            .push_decimal(elapsed)
            .push_str(" us (asked ")
            .push_decimal(asked_us)
            .push_str(")");
        console::print(&mut line);
    }

    fn periodic(khz: u64) {
        let period_us = 2_000;
        let ticks_wanted = 5;
        apic_write(LVT_TIMER, u32::from(TIMER_VECTOR) | PERIODIC);
        let before = APICTIMER_TIMER_COUNT.load(Ordering::SeqCst);
        let start = rdtsc();
        apic_write(INITIAL_COUNT, 2 * COUNTS_PER_MS_DIV16);
        let asked_us = period_us * ticks_wanted;
        let fired = wait_for(
            &APICTIMER_TIMER_COUNT,
            before + ticks_wanted,
            start + ticks(asked_us + TOLERANCE_US, khz),
        );
        apic_write(INITIAL_COUNT, 0); // stops the timer
        let got = APICTIMER_TIMER_COUNT.load(Ordering::SeqCst) - before;
        check(fired, "periodic timer ticks missing", got);
        // The last of the ticks waited for (the vCPU may have been kept off
        // the pCPU long enough for one more before the stop).
        let last =
            APICTIMER_TICK_TSC[((before + ticks_wanted - 1) % 16) as usize].load(Ordering::SeqCst);
        let elapsed = check_elapsed("periodic ticks out of time", start, last, asked_us, khz);
        // Stopped: after any expiry already in IRR is taken, no tick for
        // three more periods, interrupts enabled.
        interrupt_window();
        let stopped = APICTIMER_TIMER_COUNT.load(Ordering::SeqCst);
        let quiet_until = rdtsc() + ticks(3 * period_us, khz);
        enable_interrupts();
        while rdtsc() < quiet_until {
            core::hint::spin_loop();
        }
        disable_interrupts();
        let extra = APICTIMER_TIMER_COUNT.load(Ordering::SeqCst) - stopped;
        check(
            extra == 0,
            "periodic timer ticked after it was stopped",
            extra,
        );
        let mut line = Line::new();
        line.push_str("periodic ")
            .push_decimal(ticks_wanted)
            .push_str(" ticks in ")
            .push_decimal(elapsed)
            .push_str(" us (period ")
            .push_decimal(period_us)
            .push_str(" us)");
        if got > ticks_wanted {
            line.push_str(", ")
                .push_decimal(got - ticks_wanted)
                .push_str(" more before the stop");
        }
        console::print(&mut line);
    }

    fn tsc_deadline(khz: u64) {
        let asked_us = 5_000;
        apic_write(LVT_TIMER, u32::from(TIMER_VECTOR) | TSC_DEADLINE);
        let before = APICTIMER_TIMER_COUNT.load(Ordering::SeqCst);
        let start = rdtsc();
        let deadline = start + ticks(asked_us, khz);
        xapic::write_tsc_deadline(deadline);
        check(
            rdmsr(TSC_DEADLINE_MSR) == deadline,
            "TSC_DEADLINE does not read back while armed",
            rdmsr(TSC_DEADLINE_MSR),
        );
        let fired = wait_for(
            &APICTIMER_TIMER_COUNT,
            before + 1,
            start + ticks(asked_us + TOLERANCE_US, khz),
        );
        check(fired, "tsc-deadline timer never fired", asked_us);
        let at = APICTIMER_TIMER_TSC.load(Ordering::SeqCst);
        check(
            at >= deadline,
            "tsc-deadline fired before the deadline",
            deadline - at.min(deadline),
        );
        let elapsed = check_elapsed("tsc-deadline fired out of time", start, at, asked_us, khz);
        check(
            rdmsr(TSC_DEADLINE_MSR) == 0,
            "TSC_DEADLINE not 0 after firing",
            rdmsr(TSC_DEADLINE_MSR),
        );
        apic_write(LVT_TIMER, u32::from(TIMER_VECTOR) | LVT_MASKED);
        let mut line = Line::new();
        line.push_str("tsc-deadline fired after ")
            .push_decimal(elapsed)
            .push_str(" us (asked ")
            .push_decimal(asked_us)
            .push_str("), MSR reads 0 after");
        console::print(&mut line);
    }

    fn ipis() {
        // Self-IPI with interrupts off: it waits in IRR until IF = 1.
        disable_interrupts();
        let before = APICTIMER_IPI_COUNT.load(Ordering::SeqCst);
        apic_write(ICR_HIGH, 0);
        apic_write(ICR_LOW, ICR_SELF | u32::from(IPI_VECTOR));
        check(in_vector_set(IRR, IPI_VECTOR), "self-IPI not in IRR", 0);
        check(
            APICTIMER_IPI_COUNT.load(Ordering::SeqCst) == before,
            "self-IPI delivered with IF = 0",
            0,
        );
        interrupt_window();
        check(
            APICTIMER_IPI_COUNT.load(Ordering::SeqCst) == before + 1,
            "self-IPI not delivered",
            0,
        );
        check(
            !in_vector_set(IRR, IPI_VECTOR) && !in_vector_set(ISR, IPI_VECTOR),
            "self-IPI left in IRR or ISR",
            0,
        );
        console::print_str("self-IPI delivered (held in IRR while IF = 0)");

        // TPR 0x40 masks priority classes 0-4: vector 0x31 (class 3) waits.
        apic_write(TPR, 0x40);
        check(
            apic_read(PPR) == 0x40,
            "PPR does not follow TPR",
            u64::from(apic_read(PPR)),
        );
        apic_write(ICR_LOW, ICR_SELF | u32::from(IPI_VECTOR));
        for _ in 0..100 {
            interrupt_window();
        }
        check(
            APICTIMER_IPI_COUNT.load(Ordering::SeqCst) == before + 1,
            "TPR 0x40 did not hold vector 0x31",
            0,
        );
        enable_interrupts();
        apic_write(TPR, 0); // delivered as soon as the TPR drops
        disable_interrupts();
        check(
            APICTIMER_IPI_COUNT.load(Ordering::SeqCst) == before + 2,
            "vector 0x31 not delivered after TPR 0",
            0,
        );
        console::print_str("TPR 0x40 held vector 0x31 until lowered to 0");

        // A fixed IPI to its own APIC ID (physical destination, no shorthand).
        let id = apic_read(ID) >> 24;
        apic_write(ICR_HIGH, id << 24);
        apic_write(ICR_LOW, ICR_LEVEL_ASSERT | u32::from(IPI_VECTOR));
        interrupt_window();
        check(
            APICTIMER_IPI_COUNT.load(Ordering::SeqCst) == before + 3,
            "IPI to own APIC ID not delivered",
            u64::from(id),
        );
        let mut line = Line::new();
        line.push_str("IPI to APIC ID ")
            .push_decimal(u64::from(id))
            .push_str(" delivered");
        console::print(&mut line);
    }

    /// `mode=bad`: an APIC access the core does not emulate.
    fn unsupported_access() -> ! {
        console::print_str("reading the timer count with CMP, which is not emulated");
        // SAFETY: a load from the identity-mapped APIC page; the flags it
        // sets are declared clobbered.
        unsafe {
            asm!("cmp dword ptr [{address}], 0", address = in(reg) xapic::BASE + CURRENT_COUNT, options(nostack))
        };
        hypercall::crash_error("still running after an unsupported APIC access", 0)
    }

    pub fn run(boot: Boot) -> ! {
        if guests::cmdline::value(boot.cmdline(), "mode") == Some("bad") {
            unsupported_access();
        }
        let leaf1 = core::arch::x86_64::__cpuid(1);
        let has_apic = leaf1.edx & (1 << 9) != 0;
        let has_deadline = leaf1.ecx & (1 << 24) != 0;
        let khz = pv::tsc_khz();
        let mut line = Line::new();
        line.push_str("cpuid apic=")
            .push_decimal(u64::from(has_apic))
            .push_str(" tsc-deadline=")
            .push_decimal(u64::from(has_deadline))
            .push_str(", TSC ")
            .push_decimal(khz / 1000)
            .push_str(" MHz");
        console::print(&mut line);
        check(has_apic && khz > 0, "no APIC or no TSC rate in CPUID", khz);

        let base = rdmsr(APIC_BASE_MSR);
        let mut line = Line::new();
        line.push_str("APIC_BASE ").push_hex(base);
        console::print(&mut line);
        check(
            base & !0xfff == xapic::BASE && base & (1 << 11) != 0,
            "APIC_BASE not 0xfee00000, enabled",
            base,
        );

        install_idt();
        xapic::enable(SPURIOUS_VECTOR);
        check(
            apic_read(SVR) == 0x100 | u32::from(SPURIOUS_VECTOR),
            "SVR does not read back",
            u64::from(apic_read(SVR)),
        );
        let mut line = Line::new();
        line.push_str("local APIC id ")
            .push_decimal(u64::from(apic_read(ID) >> 24))
            .push_str(" version ")
            .push_hex(u64::from(apic_read(VERSION) & 0xff))
            .push_str(" enabled");
        console::print(&mut line);

        one_shot(khz);
        periodic(khz);
        if has_deadline {
            tsc_deadline(khz);
        } else {
            console::print_str("no TSC-deadline mode advertised: skipped");
        }
        ipis();

        apic_write(ESR, 0);
        let errors = apic_read(ESR);
        let spurious = APICTIMER_SPURIOUS_COUNT.load(Ordering::SeqCst);
        let other = APICTIMER_OTHER_COUNT.load(Ordering::SeqCst);
        check(
            errors == 0 && spurious == 0 && other == 0,
            "APIC errors, spurious or unexpected vectors",
            u64::from(errors) | spurious << 8 | other << 16,
        );
        console::print_str("done");
        hypercall::poweroff()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

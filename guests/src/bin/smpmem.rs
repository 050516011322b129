//! `smpmem`: several vCPUs touch private and shared pages at once while the
//! pager pages the domain (issue: "SMP: 2 vCPUs touch shared and private
//! pages at once").
//!
//! vCPU 0 starts the others (`guests::smp::start_others_or_crash`); then, in every
//! pass, all vCPUs meet at a barrier, each writes memhog's checksummed
//! pattern ([`guests::pattern`]) over its private pages and over the shared
//! pattern pages it owns (every `vcpus`-th one), adding 1 to a tally counter
//! in the shared tally page after each shared page (a locked add, so the
//! vCPUs hit the same words of one page at once); they meet again, and each
//! verifies every byte of its private pages and of all shared pattern pages
//! (the ones the others wrote too). At the end vCPU 0 checks every tally
//! counter against [`guests::smpmem::Layout::expected_tally`]. Layout and
//! cmdline keys: [`guests::smpmem`].
//!
//! Lines (each shown on the host as `NAME: TEXT`):
//! `touching M MiB (P pages) at 0xSTART-0xEND: K vCPUs, X private pages
//! each, Y shared pages and a tally page, N passes, seed 0xS`; per vCPU and
//! pass `vCPU I pass K: X private and Y shared pages ok` (or
//! `... B bad`); then each secondary vCPU `vCPU I verified X pages, B bad`
//! (its private pages, each checked in every pass; B counts bad page checks
//! over all passes) and `vCPU I read Y shared pages, B bad`; vCPU 0 the same
//! two lines once all others finished, then `shared region verified, B bad`
//! (B: bad shared page checks of all vCPUs plus wrong tally counters) and
//! `SCHEDOP_shutdown(poweroff)` when nothing was bad. Bad pages print
//! `vCPU I: BAD gfn 0xG offset 0xO expected 0xE found 0xF (pass K, WHAT)`
//! (at most a few per vCPU and pass), wrong counters `BAD tally word W
//! expected E found F`; then the guest ends with `SHUTDOWN_crash`, as it
//! does when a vCPU cannot be started, the RAM is too small, or a vCPU
//! waits at a barrier longer than `wait_ms`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(smpmem::run);

#[cfg(target_os = "none")]
mod smpmem {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use guests::memory::PAGE_SIZE;
    use guests::pattern;
    use guests::physical::PhysicalPage;
    use guests::smp::{self, Barrier, MAX_VCPUS};
    use guests::smpmem::{Layout, Settings, MAX_BAD_LINES, TALLY_WORDS};
    use guests::text::Line;
    use guests::{console, hypercall, pv, Boot};

    /// What every vCPU works on, written by vCPU 0 before it starts the others.
    struct Plan {
        start: AtomicU64,
        vcpus: AtomicU64,
        private_pages: AtomicU64,
        shared_pages: AtomicU64,
        passes: AtomicU64,
        seed: AtomicU64,
        wait_ms: AtomicU64,
    }

    static PLAN: Plan = Plan {
        start: AtomicU64::new(0),
        vcpus: AtomicU64::new(1),
        private_pages: AtomicU64::new(0),
        shared_pages: AtomicU64::new(0),
        passes: AtomicU64::new(0),
        seed: AtomicU64::new(0),
        wait_ms: AtomicU64::new(0),
    };

    /// The plan as the vCPUs read it.
    #[derive(Clone, Copy)]
    struct Work {
        start: u64,
        layout: Layout,
        passes: u64,
        seed: u64,
        wait_ms: u64,
    }

    impl Work {
        fn load() -> Self {
            let get = |value: &AtomicU64| value.load(Ordering::Acquire);
            Self {
                start: get(&PLAN.start),
                layout: Layout {
                    vcpus: get(&PLAN.vcpus),
                    private_pages: get(&PLAN.private_pages),
                    shared_pages: get(&PLAN.shared_pages),
                },
                passes: get(&PLAN.passes),
                seed: get(&PLAN.seed),
                wait_ms: get(&PLAN.wait_ms),
            }
        }

        fn store(&self) {
            let set = |value: &AtomicU64, to: u64| value.store(to, Ordering::Release);
            set(&PLAN.start, self.start);
            set(&PLAN.vcpus, self.layout.vcpus);
            set(&PLAN.private_pages, self.layout.private_pages);
            set(&PLAN.shared_pages, self.layout.shared_pages);
            set(&PLAN.passes, self.passes);
            set(&PLAN.seed, self.seed);
            set(&PLAN.wait_ms, self.wait_ms);
        }

        /// The guest frame number of region page `index`.
        fn gfn(&self, index: u64) -> u64 {
            self.start / PAGE_SIZE + index
        }

        /// Region page `index`.
        fn page(&self, index: u64) -> PhysicalPage {
            // SAFETY: `free_region` returned page-aligned RAM above this
            // image, below every module and inside the identity map, which
            // nothing else in this program uses. A page is written only by
            // the vCPU that owns it, between two barriers while no vCPU
            // reads it; the other vCPUs only read it, with volatile loads.
            unsafe { PhysicalPage::new(self.start + index * PAGE_SIZE) }
        }

        /// Tally counter `word`.
        fn tally(&self, word: usize) -> &'static AtomicU64 {
            let address =
                self.start + self.layout.tally_page() * PAGE_SIZE + 8 * (word % TALLY_WORDS) as u64;
            // SAFETY: the tally page is region RAM as in `page`, 8-byte
            // aligned, and is only ever accessed through these atomics
            // (vCPU 0 zeroes it before any other vCPU starts).
            unsafe { AtomicU64::from_ptr(address as *mut u64) }
        }
    }

    /// The vCPUs meet here twice per pass.
    static BARRIER: Barrier = Barrier::new();
    /// Secondary vCPUs that finished all passes.
    static DONE: AtomicU32 = AtomicU32::new(0);
    /// Bad private page checks per vCPU.
    static PRIVATE_BAD: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
    /// Bad shared page checks per vCPU.
    static SHARED_BAD: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

    pub fn run(boot: Boot) -> ! {
        let settings = Settings::parse(boot.cmdline());
        if settings.settle_ms > 0 {
            pv::sleep_ns(settings.settle_ms * 1_000_000);
        }
        let layout = settings.layout();
        let want = layout.total_pages();
        let region = boot.free_region(want).filter(|region| region.pages == want);
        let Some(region) = region else {
            let mut line = Line::new();
            line.push_str("need ")
                .push_decimal(want)
                .push_str(" pages above the image; only ")
                .push_decimal(boot.free_region(want).map_or(0, |region| region.pages))
                .push_str(" free");
            hypercall::crash_line(&mut line)
        };
        let mut line = Line::new();
        line.push_str("touching ")
            .push_decimal((region.pages * PAGE_SIZE) >> 20)
            .push_str(" MiB (")
            .push_decimal(region.pages)
            .push_str(" pages) at ")
            .push_hex(region.start)
            .push_str("-")
            .push_hex(region.end())
            .push_str(": ")
            .push_decimal(layout.vcpus)
            .push_str(" vCPUs, ")
            .push_decimal(layout.private_pages)
            .push_str(" private pages each, ")
            .push_decimal(layout.shared_pages)
            .push_str(" shared pages and a tally page, ")
            .push_decimal(settings.passes)
            .push_str(" passes, seed ")
            .push_hex(settings.seed);
        console::print(&mut line);

        let work = Work {
            start: region.start,
            layout,
            passes: settings.passes,
            seed: settings.seed,
            wait_ms: settings.wait_ms,
        };
        for word in 0..TALLY_WORDS {
            work.tally(word).store(0, Ordering::Relaxed);
        }
        work.store();
        smp::start_others_or_crash(settings.vcpus, secondary);

        passes(0, &work);
        let others = u32::from(settings.vcpus) - 1;
        let deadline = pv::now_ns().saturating_add(work.wait_ms * 1_000_000);
        while DONE.load(Ordering::Acquire) < others {
            if pv::now_ns() >= deadline {
                hypercall::crash("the other vCPUs did not finish");
            }
            pv::sleep_ns(1_000_000);
        }
        report(0, &work);

        let mut bad: u64 = SHARED_BAD
            .iter()
            .map(|count| count.load(Ordering::Acquire))
            .sum();
        let mut bad_lines = 0;
        for word in 0..TALLY_WORDS {
            let expected = work.layout.expected_tally(word, work.passes);
            let found = work.tally(word).load(Ordering::Acquire);
            if found != expected {
                bad += 1;
                if bad_lines < MAX_BAD_LINES {
                    bad_lines += 1;
                    let mut line = Line::new();
                    line.push_str("BAD tally word ")
                        .push_decimal(word as u64)
                        .push_str(" expected ")
                        .push_decimal(expected)
                        .push_str(" found ")
                        .push_decimal(found);
                    console::print(&mut line);
                }
            }
        }
        let mut line = Line::new();
        line.push_str("shared region verified, ")
            .push_decimal(bad)
            .push_str(" bad");
        console::print(&mut line);
        let private_bad: u64 = PRIVATE_BAD
            .iter()
            .map(|count| count.load(Ordering::Acquire))
            .sum();
        if bad == 0 && private_bad == 0 {
            hypercall::poweroff()
        }
        hypercall::shutdown(ipc::hypercall::ShutdownReason::Crash)
    }

    /// A secondary vCPU: every pass, its report, then it parks (vCPU 0
    /// judges the run from the counts).
    extern "C" fn secondary(index: u8) -> ! {
        let work = Work::load();
        passes(index, &work);
        report(index, &work);
        DONE.fetch_add(1, Ordering::AcqRel);
        smp::park()
    }

    /// `vCPU I verified X pages, B bad` and `vCPU I read Y shared pages, B bad`.
    fn report(index: u8, work: &Work) {
        let mut line = Line::new();
        line.push_str("vCPU ")
            .push_decimal(u64::from(index))
            .push_str(" verified ")
            .push_decimal(work.layout.private_pages)
            .push_str(" pages, ")
            .push_decimal(PRIVATE_BAD[usize::from(index)].load(Ordering::Acquire))
            .push_str(" bad");
        console::print(&mut line);
        let mut line = Line::new();
        line.push_str("vCPU ")
            .push_decimal(u64::from(index))
            .push_str(" read ")
            .push_decimal(work.layout.shared_pages)
            .push_str(" shared pages, ")
            .push_decimal(SHARED_BAD[usize::from(index)].load(Ordering::Acquire))
            .push_str(" bad");
        console::print(&mut line);
    }

    /// Meets the other vCPUs, or crashes after `wait_ms`.
    fn meet(index: u8, work: &Work, pass: u64) {
        let deadline = pv::now_ns().saturating_add(work.wait_ms * 1_000_000);
        let met = BARRIER.wait(work.layout.vcpus as u32, || {
            if pv::now_ns() >= deadline {
                return false;
            }
            pv::yield_now();
            true
        });
        if !met {
            let mut line = Line::new();
            line.push_str("vCPU ")
                .push_decimal(u64::from(index))
                .push_str(": gave up waiting for the others in pass ")
                .push_decimal(pass);
            hypercall::crash_line(&mut line);
        }
    }

    /// Runs every pass as vCPU `index`, counting its bad page checks in
    /// `PRIVATE_BAD` and `SHARED_BAD`.
    fn passes(index: u8, work: &Work) {
        let vcpu = u64::from(index);
        let layout = &work.layout;
        let owned = layout.owned_shared_pages(vcpu);
        for pass in 1..=work.passes {
            meet(index, work, pass);
            for step in 0..layout.private_pages.max(owned) {
                if step < layout.private_pages {
                    let page = layout.private_page(vcpu, step);
                    pattern::fill(&mut work.page(page), work.gfn(page), pass, work.seed);
                }
                if step < owned {
                    let page = layout.shared_page(vcpu + step * layout.vcpus);
                    pattern::fill(&mut work.page(page), work.gfn(page), pass, work.seed);
                    work.tally(step as usize % TALLY_WORDS)
                        .fetch_add(1, Ordering::AcqRel);
                }
            }
            meet(index, work, pass);
            let mut lines = 0;
            let private_bad = (0..layout.private_pages)
                .filter(|&step| {
                    !verify(
                        index,
                        work,
                        layout.private_page(vcpu, step),
                        pass,
                        &mut lines,
                    )
                })
                .count() as u64;
            // Each vCPU starts reading the shared pages at a different place.
            let first = layout.shared_pages * vcpu / layout.vcpus;
            let shared_bad = (0..layout.shared_pages)
                .map(|step| layout.shared_page((first + step) % layout.shared_pages))
                .filter(|&page| !verify(index, work, page, pass, &mut lines))
                .count() as u64;
            PRIVATE_BAD[usize::from(index)].fetch_add(private_bad, Ordering::AcqRel);
            SHARED_BAD[usize::from(index)].fetch_add(shared_bad, Ordering::AcqRel);
            let mut line = Line::new();
            line.push_str("vCPU ")
                .push_decimal(vcpu)
                .push_str(" pass ")
                .push_decimal(pass)
                .push_str(": ")
                .push_decimal(layout.private_pages)
                .push_str(" private and ")
                .push_decimal(layout.shared_pages)
                .push_str(" shared pages ");
            if private_bad + shared_bad == 0 {
                line.push_str("ok");
            } else {
                line.push_decimal(private_bad + shared_bad).push_str(" bad");
            }
            console::print(&mut line);
        }
    }

    /// Checks region page `page` for `pass`; prints a `BAD` line for the
    /// first few bad ones (`lines` counts them). True when it is intact.
    fn verify(index: u8, work: &Work, page: u64, pass: u64, lines: &mut u64) -> bool {
        let gfn = work.gfn(page);
        let words = work.page(page);
        let Some(mismatch) = pattern::check(&words, gfn, pass, work.seed) else {
            return true;
        };
        if *lines < MAX_BAD_LINES {
            *lines += 1;
            let mut prefix = Line::new();
            prefix
                .push_str("vCPU ")
                .push_decimal(u64::from(index))
                .push_str(": ");
            let prefix = core::str::from_utf8(prefix.as_bytes()).unwrap_or("");
            console::print(&mut pattern::bad_line(
                prefix, &words, gfn, pass, work.seed, &mismatch,
            ));
        }
        false
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

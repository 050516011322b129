//! `memhog`: writes a checksummed pattern over many MiB of its RAM, then
//! reads every page back and checks every byte, so a pager that loses,
//! swaps, zeroes or serves a stale copy of a page is caught.
//!
//! The region starts at the first page above the image and ends below the
//! end of RAM (PVH memory map) and any module; `memhog_mib=N` MiB of it
//! (default 12; cut to what is free), `passes=N` times (default 2). Each
//! page's 511 words come from `(gfn, pass, seed)` and its last word is a
//! checksum of them ([`guests::pattern`]); odd passes go up through the
//! region, even passes down. Cmdline keys: [`guests::memhog`].
//!
//! Lines (each shown on the host as `NAME: TEXT`, NAME being the domain's
//! name, e.g. `memhog: verified 3072 pages, 0 bad`):
//! `touching M MiB (P pages) at 0xSTART-0xEND, N passes, seed 0xS`, per pass
//! `pass K: wrote X MiB` and `pass K: verified X MiB` every `progress_mib`
//! MiB, then `pass K: P pages ok`; at the end `verified P pages, 0 bad` (P =
//! pages in the region, each checked in every pass) and
//! `SCHEDOP_shutdown(poweroff)`. A mismatch prints
//! `BAD gfn 0xG offset 0xO expected 0xE found 0xF (pass K, WHAT)` for the
//! first few bad pages (offset: the byte offset of the first bad 64-bit word
//! in the page; WHAT: `zeroed page`, `stale page from the previous pass`,
//! `whole page from elsewhere` or `corrupt page`), finishes the pass, prints
//! `pass K: B of P pages bad` and `verified P pages, B bad`, and shuts down
//! with `SHUTDOWN_crash`. With less free RAM than asked, `only P pages free
//! above the image; touching those` comes first; with none, `no free RAM
//! above the image` and a crash.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(memhog::run);

#[cfg(target_os = "none")]
mod memhog {
    use guests::memhog::{Settings, MAX_BAD_LINES};
    use guests::memory::{Region, PAGE_SIZE};
    use guests::pattern::{self, Mismatch};
    use guests::physical::PhysicalPage;
    use guests::text::Line;
    use guests::{console, hypercall, Boot};
    use ipc::hypercall::ShutdownReason;

    /// Pages per MiB.
    const PAGES_PER_MIB: u64 = (1 << 20) / PAGE_SIZE;

    pub fn run(boot: Boot) -> ! {
        let settings = Settings::parse(boot.cmdline());
        if settings.settle_ms > 0 {
            guests::pv::sleep_ns(settings.settle_ms * 1_000_000);
        }
        let region = find_region(&boot, settings.mib * PAGES_PER_MIB);
        let mut line = Line::new();
        line.push_str("touching ")
            .push_decimal(region.pages / PAGES_PER_MIB)
            .push_str(" MiB (")
            .push_decimal(region.pages)
            .push_str(" pages) at ")
            .push_hex(region.start)
            .push_str("-")
            .push_hex(region.end())
            .push_str(", ")
            .push_decimal(settings.passes)
            .push_str(" passes, seed ")
            .push_hex(settings.seed);
        console::print(&mut line);

        for pass in 1..=settings.passes {
            write_pass(&region, &settings, pass);
            let bad = verify_pass(&region, &settings, pass);
            let mut line = Line::new();
            line.push_str("pass ").push_decimal(pass).push_str(": ");
            if bad > 0 {
                line.push_decimal(bad)
                    .push_str(" of ")
                    .push_decimal(region.pages)
                    .push_str(" pages bad");
                console::print(&mut line);
                finish(region.pages, bad);
            }
            line.push_decimal(region.pages).push_str(" pages ok");
            console::print(&mut line);
        }
        finish(region.pages, 0)
    }

    /// Prints `verified P pages, B bad` and shuts down: poweroff
    /// when nothing was bad, crash otherwise.
    fn finish(pages: u64, bad: u64) -> ! {
        let mut line = Line::new();
        line.push_str("verified ")
            .push_decimal(pages)
            .push_str(" pages, ")
            .push_decimal(bad)
            .push_str(" bad");
        console::print(&mut line);
        if bad == 0 {
            hypercall::poweroff()
        }
        hypercall::shutdown(ShutdownReason::Crash)
    }

    /// The pages to touch: free RAM above the image, below any module.
    fn find_region(boot: &Boot, want_pages: u64) -> Region {
        let Some(region) = boot.free_region(want_pages) else {
            hypercall::crash("no free RAM above the image")
        };
        if region.pages < want_pages {
            let mut line = Line::new();
            line.push_str("only ")
                .push_decimal(region.pages)
                .push_str(" pages free above the image; touching those");
            console::print(&mut line);
        }
        region
    }

    /// The region's page `step` of a pass: odd passes go up, even passes down.
    fn page_index(region: &Region, pass: u64, step: u64) -> u64 {
        if pass % 2 == 1 {
            step
        } else {
            region.pages - 1 - step
        }
    }

    fn page(region: &Region, index: u64) -> PhysicalPage {
        // SAFETY: `free_region` returned page-aligned RAM above this image,
        // below every module and inside the identity map; nothing else in
        // this program uses it, and one page value exists at a time.
        unsafe { PhysicalPage::new(region.start + index * PAGE_SIZE) }
    }

    /// Prints `pass K: WHAT X MiB` after every `progress_mib` MiB.
    fn progress(settings: &Settings, pass: u64, what: &str, done_pages: u64) {
        if done_pages.is_multiple_of(settings.progress_mib * PAGES_PER_MIB) {
            let mut line = Line::new();
            line.push_str("pass ")
                .push_decimal(pass)
                .push_str(": ")
                .push_str(what)
                .push_str(" ")
                .push_decimal(done_pages / PAGES_PER_MIB)
                .push_str(" MiB");
            console::print(&mut line);
        }
    }

    fn write_pass(region: &Region, settings: &Settings, pass: u64) {
        for step in 0..region.pages {
            let index = page_index(region, pass, step);
            pattern::fill(
                &mut page(region, index),
                region.gfn(index),
                pass,
                settings.seed,
            );
            progress(settings, pass, "wrote", step + 1);
        }
    }

    /// Checks every page; returns how many were bad.
    fn verify_pass(region: &Region, settings: &Settings, pass: u64) -> u64 {
        let mut bad = 0;
        for step in 0..region.pages {
            let index = page_index(region, pass, step);
            let gfn = region.gfn(index);
            let page = page(region, index);
            if let Some(mismatch) = pattern::check(&page, gfn, pass, settings.seed) {
                if bad < MAX_BAD_LINES {
                    report(&page, gfn, pass, settings.seed, &mismatch);
                }
                bad += 1;
            }
            progress(settings, pass, "verified", step + 1);
        }
        bad
    }

    /// `BAD gfn 0xG offset 0xO expected 0xE found 0xF (pass K, WHAT)`.
    fn report(page: &PhysicalPage, gfn: u64, pass: u64, seed: u64, mismatch: &Mismatch) {
        console::print(&mut pattern::bad_line("", page, gfn, pass, seed, mismatch));
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

//! `balloon`: gives frames back with Xen's
//! `memory_op(XENMEM_decrease_reservation)` and checks that they come back
//! as zeros and usable, while the frames it kept keep their contents.
//!
//! It fills `balloon_pages=N` pages (default 512) above its image with a
//! non-zero pattern ([`guests::pattern`], pass 1), gives back every
//! `drop_every=N`th of them (default 2; at most 1024) in one
//! `decrease_reservation` of order-0 extents for `DOMID_SELF`, and checks
//! that the result equals the number of frames. Then each given-back frame
//! must read as zeros, take a new pattern (pass 2) and read it back; each
//! kept frame must still hold pass 1's pattern. Cmdline keys:
//! [`guests::balloon`].
//!
//! Lines (each shown on the host as `NAME: TEXT`, NAME being the domain's
//! name, e.g. `balloon: decrease_reservation returned 256`):
//! `filled P pages at 0xSTART-0xEND; giving back D`,
//! `decrease_reservation returned D`, then
//! `D dropped pages read back as zeros, K kept pages intact` and
//! `SCHEDOP_shutdown(poweroff)`. On a failure, `SHUTDOWN_crash` after
//! `decrease_reservation returned R, expected D` (R may be a negative Xen
//! errno, e.g. -38 from a hypervisor without `memory_op`), or after up to a
//! few `BAD gfn 0xG offset 0xO expected 0xE found 0xF (WHAT)` lines (WHAT:
//! `dropped page not zero`, `dropped page not usable`, `kept page changed`)
//! and `B bad pages`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(balloon::run);

#[cfg(target_os = "none")]
mod balloon {
    use guests::balloon::{Settings, MAX_DROPPED};
    use guests::memory::{Region, PAGE_SIZE};
    use guests::pattern::{self, Mismatch};
    use guests::physical::PhysicalPage;
    use guests::text::Line;
    use guests::{console, hypercall, Boot};
    use ipc::hypercall::ShutdownReason;

    /// Most `BAD` lines printed.
    const MAX_BAD_LINES: u64 = 4;

    pub fn run(boot: Boot) -> ! {
        let settings = Settings::parse(boot.cmdline());
        let region = find_region(&boot, settings.pages);

        let mut dropped = [0u64; MAX_DROPPED];
        let mut count = 0;
        for index in 0..region.pages {
            pattern::fill(
                &mut page(&region, index),
                region.gfn(index),
                1,
                settings.seed,
            );
            if settings.dropped(index) {
                dropped[count] = region.gfn(index);
                count += 1;
            }
        }
        let kept = region.pages - count as u64;
        let mut line = Line::new();
        line.push_str("filled ")
            .push_decimal(region.pages)
            .push_str(" pages at ")
            .push_hex(region.start)
            .push_str("-")
            .push_hex(region.end())
            .push_str("; giving back ")
            .push_decimal(count as u64);
        console::print(&mut line);
        if settings.pause_ms > 0 {
            guests::pv::sleep_ns(settings.pause_ms * 1_000_000);
        }

        let result = hypercall::decrease_reservation(&dropped[..count]);
        let mut line = Line::new();
        line.push_str("decrease_reservation returned ");
        push_signed(&mut line, result);
        if result != count as i64 {
            line.push_str(", expected ").push_decimal(count as u64);
            console::print(&mut line);
            hypercall::shutdown(ShutdownReason::Crash)
        }
        console::print(&mut line);

        let mut bad = 0;
        for index in 0..region.pages {
            let gfn = region.gfn(index);
            let mut page = page(&region, index);
            let problem = if settings.dropped(index) {
                match pattern::check_zero(&page) {
                    Some(mismatch) => Some((mismatch, "dropped page not zero")),
                    None => {
                        pattern::fill(&mut page, gfn, 2, settings.seed);
                        pattern::check(&page, gfn, 2, settings.seed)
                            .map(|mismatch| (mismatch, "dropped page not usable"))
                    }
                }
            } else {
                pattern::check(&page, gfn, 1, settings.seed)
                    .map(|mismatch| (mismatch, "kept page changed"))
            };
            if let Some((mismatch, what)) = problem {
                if bad < MAX_BAD_LINES {
                    report(gfn, &mismatch, what);
                }
                bad += 1;
            }
        }
        if bad > 0 {
            let mut line = Line::new();
            line.push_decimal(bad).push_str(" bad pages");
            console::print(&mut line);
            hypercall::shutdown(ShutdownReason::Crash)
        }
        let mut line = Line::new();
        line.push_decimal(count as u64)
            .push_str(" dropped pages read back as zeros, ")
            .push_decimal(kept)
            .push_str(" kept pages intact");
        console::print(&mut line);
        hypercall::poweroff()
    }

    fn push_signed(line: &mut Line, value: i64) {
        if value < 0 {
            line.push_str("-");
        }
        line.push_decimal(value.unsigned_abs());
    }

    /// The pages to fill: free RAM above the image, below any module.
    fn find_region(boot: &Boot, want_pages: u64) -> Region {
        boot.free_region(want_pages)
            .unwrap_or_else(|| hypercall::crash("no free RAM above the image"))
    }

    fn page(region: &Region, index: u64) -> PhysicalPage {
        // SAFETY: `free_region` returned page-aligned RAM above this image,
        // below every module and inside the identity map; nothing else in
        // this program uses it, and one page value exists at a time.
        unsafe { PhysicalPage::new(region.start + index * PAGE_SIZE) }
    }

    /// `BAD gfn 0xG offset 0xO expected 0xE found 0xF (WHAT)`.
    fn report(gfn: u64, mismatch: &Mismatch, what: &str) {
        let mut line = Line::new();
        line.push_str("BAD gfn ")
            .push_hex(gfn)
            .push_str(" offset ")
            .push_hex(mismatch.offset)
            .push_str(" expected ")
            .push_hex(mismatch.expected)
            .push_str(" found ")
            .push_hex(mismatch.found)
            .push_str(" (")
            .push_str(what)
            .push_str(")");
        console::print(&mut line);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

//! # guests — cairn's test guests and the tiny runtime they share
//!
//! Each binary in `src/bin` is a bare-metal PVH kernel for `x86_64-unknown-none`
//! that cairn's core boots as a domain: `hello` (prints through every console
//! path, then powers off), `spinner` (counts and prints its progress),
//! `fault` (writes outside its memory), `sleeper` and `pvcalls` (the PV timer
//! and hypercall interface), `memhog` (writes and verifies a checksummed
//! pattern over many MiB, for the pager), `balloon` (gives frames back
//! with `XENMEM_decrease_reservation` and checks they return as zeros),
//! `smpspin` (every vCPU counts for a while), `smpmem` (several vCPUs
//! write and verify private and shared pages at once, for the pager),
//! `apictimer` (its local APIC's timers and self-IPIs) and `smpipi` (IPIs
//! from vCPU 0 to a halted, then a spinning vCPU 1, with their latency).
//! This library is everything they share:
//!
//! * the 32-bit PVH entry and the switch to long mode (target only): a
//!   `.note.Xen` `XEN_ELFNOTE_PHYS32_ENTRY` note, a zeroed `.bss`, an identity
//!   map of the first 4 GiB with 2 MiB pages, an empty IDT (any exception
//!   triple-faults, which the hypervisor reports), a 64 KiB stack, then a call
//!   to the binary's `guest_main` (defined by the `entry!` macro);
//! * the console paths the core emulates: the 16550 UART at 0x3F8, the debug
//!   port 0xE9 and the Xen `console_io` hypercall, and `SCHEDOP_shutdown`;
//! * reading `hvm_start_info` (decoded by [`ipc::pvh`]): command line and
//!   memory map;
//! * pure helpers that test on the host: a fixed-size [`text::Line`] with
//!   number formatting, [`cmdline`] parsing, the RAM summary of a memory map
//!   ([`memory`]) and the free region above the image
//!   ([`memory::free_region`]), CPUID signatures ([`signature`]), the page
//!   pattern of memhog, balloon and smpmem ([`pattern`]) and the settings of
//!   the spinner ([`spinner`]), memhog ([`memhog`]), balloon ([`balloon`]),
//!   smpspin ([`smpspin`]), smpmem ([`smpmem`], with its layout) and smpipi
//!   ([`smpipi`]), and latency percentiles ([`latency`]);
//! * interrupts: an IDT of 64-bit interrupt gates shared by all vCPUs
//!   ([`idt`]) and the xAPIC's registers ([`xapic`]: MMIO access, EOI,
//!   IPIs through the ICR, `sti; hlt`, the TSC; target only but for the
//!   constants);
//! * secondary vCPUs ([`smp`]): the 64-bit `VCPUOP_initialise` start state,
//!   `smp::start_vcpu` with a trampoline and a 16 KiB stack per vCPU (target
//!   only), and a barrier;
//! * the guest's own RAM as volatile 64-bit pages and the end of its image
//!   (`physical`, target only), and `XENMEM_decrease_reservation`
//!   (`hypercall::decrease_reservation`).
//!
//! Command-line keys (whitespace-separated `key=value`, see [`cmdline`]):
//! `console=uart|debug|hypercall` picks the channel of `console::print`
//! (default: `console_io` when CPUID leaf 0x40000000 says `XenVMMXenVMM`,
//! else the UART, so the guests also run on bare QEMU); the spinner reads
//! `iterations=`, `label=`, `work=` ([`spinner`]); `fault` reads `address=`;
//! memhog `memhog_mib=`, `passes=`, `progress_mib=`, `seed=` ([`memhog`]);
//! balloon `balloon_pages=`, `drop_every=`, `seed=` ([`balloon`]); smpspin
//! `vcpus=`, `spin_ms=`, `wait_ms=` ([`smpspin`]); smpmem `vcpus=`,
//! `private_mib=`, `shared_mib=`, `passes=`, `seed=`, `settle_ms=`,
//! `wait_ms=` ([`smpmem`]); smpipi `ipis=`, `settle_us=`, `timeout_ms=`,
//! `wait_ms=` ([`smpipi`]).
//!
//! Principles: no allocator, no `core::fmt` on the output path, `unsafe` only
//! for instructions and raw physical memory, each with its `// SAFETY:`. The
//! guests trust nothing but the identity map they built themselves: a start
//! info or memory map that does not decode ends the guest with a crash report.
//!
//! Not in this crate: interrupt handlers (each guest that takes interrupts
//! writes its own in assembly and points [`idt`] gates at them), timers, a
//! hypercall page (guests use `vmmcall` directly), or anything the core does
//! for the guest. SMP is the bare minimum: secondary vCPUs share the boot
//! vCPU's page tables and GDT, start on the empty IDT (or load [`idt`]'s),
//! and talk through atomics.

#![cfg_attr(not(test), no_std)]

/// End of the identity map the entry code builds (4 GiB, 2 MiB pages).
pub const IDENTITY_MAP_END: u64 = 4 << 30;

pub mod text {
    //! Building console lines without an allocator or `core::fmt`.

    /// Longest line, newline included: room for `cmdline: ` and the longest
    /// command line cairn passes (`ipc::boot::MAX_CMDLINE_LEN`).
    pub const LINE_CAPACITY: usize = 320;

    /// Writes `value` in decimal into the end of `buffer`; returns the digits.
    pub fn format_decimal(value: u64, buffer: &mut [u8; 20]) -> &[u8] {
        let mut at = buffer.len();
        let mut rest = value;
        loop {
            at -= 1;
            buffer[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        &buffer[at..]
    }

    /// Writes `value` in lowercase hexadecimal (no prefix, no leading zeros)
    /// into the end of `buffer`; returns the digits.
    pub fn format_hex(value: u64, buffer: &mut [u8; 16]) -> &[u8] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut at = buffer.len();
        let mut rest = value;
        loop {
            at -= 1;
            buffer[at] = DIGITS[(rest & 0xf) as usize];
            rest >>= 4;
            if rest == 0 {
                break;
            }
        }
        &buffer[at..]
    }

    /// One console line under construction. Text beyond the capacity is
    /// dropped; one byte is always kept free for the final newline.
    #[derive(Clone)]
    pub struct Line {
        bytes: [u8; LINE_CAPACITY],
        length: usize,
    }

    impl Default for Line {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Line {
        /// An empty line.
        pub const fn new() -> Self {
            Self {
                bytes: [0; LINE_CAPACITY],
                length: 0,
            }
        }

        /// Appends raw bytes, replacing control characters (a newline in a
        /// command line must not split the line) with `?`.
        pub fn push_bytes(&mut self, bytes: &[u8]) -> &mut Self {
            for &byte in bytes {
                if self.length + 1 >= LINE_CAPACITY {
                    break;
                }
                self.bytes[self.length] = if byte < 0x20 || byte == 0x7f {
                    b'?'
                } else {
                    byte
                };
                self.length += 1;
            }
            self
        }

        /// Appends text.
        pub fn push_str(&mut self, text: &str) -> &mut Self {
            self.push_bytes(text.as_bytes())
        }

        /// Appends `value` in decimal.
        pub fn push_decimal(&mut self, value: u64) -> &mut Self {
            let mut buffer = [0; 20];
            self.push_bytes(format_decimal(value, &mut buffer))
        }

        /// Appends `value` as `0x` and lowercase hexadecimal.
        pub fn push_hex(&mut self, value: u64) -> &mut Self {
            let mut buffer = [0; 16];
            self.push_bytes(b"0x")
                .push_bytes(format_hex(value, &mut buffer))
        }

        /// The text so far, without a newline.
        pub fn as_bytes(&self) -> &[u8] {
            &self.bytes[..self.length]
        }

        /// The text followed by `\n`, ready for a console.
        pub fn with_newline(&mut self) -> &[u8] {
            // `push_bytes` keeps `length < LINE_CAPACITY`, so the slot exists.
            self.bytes[self.length] = b'\n';
            &self.bytes[..self.length + 1]
        }
    }
}

pub mod cmdline {
    //! The guests' command-line syntax: whitespace-separated `key=value`
    //! words (a bare `key` has the empty value); when a key repeats, the last
    //! one wins, as in Linux.

    /// The value of `key`, if the command line has it.
    pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
        let mut found = None;
        for word in cmdline.split_ascii_whitespace() {
            let (name, value) = word.split_once('=').unwrap_or((word, ""));
            if name == key {
                found = Some(value);
            }
        }
        found
    }

    /// The value of `key` as a number above 0, else `default` (missing,
    /// malformed or 0).
    pub fn positive(cmdline: &str, key: &str, default: u64) -> u64 {
        value(cmdline, key).and_then(parse_u64).filter(|&number| number > 0).unwrap_or(default)
    }

    /// Parses a decimal or `0x`-prefixed hexadecimal number; `None` if empty,
    /// malformed or above `u64::MAX`.
    pub fn parse_u64(text: &str) -> Option<u64> {
        let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => (hex, 16),
            None => (text, 10),
        };
        if digits.is_empty() {
            return None;
        }
        digits.bytes().try_fold(0u64, |accumulator, byte| {
            let digit = (byte as char).to_digit(radix)?;
            accumulator
                .checked_mul(u64::from(radix))?
                .checked_add(u64::from(digit))
        })
    }

    /// The text of a NUL-terminated command line: the bytes before the first
    /// NUL (all of them if there is none), cut to the longest valid UTF-8
    /// prefix.
    pub fn from_bytes(bytes: &[u8]) -> &str {
        let end = bytes
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(bytes.len());
        let text = &bytes[..end];
        match core::str::from_utf8(text) {
            Ok(valid) => valid,
            // `valid_up_to` marks a character boundary, so this cannot fail.
            Err(error) => core::str::from_utf8(&text[..error.valid_up_to()]).unwrap_or(""),
        }
    }
}

pub mod memory {
    //! What the guests need from the PVH memory map.

    use ipc::pvh::{MemmapEntry, MEMMAP_RAM};

    /// The RAM a memory map describes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct RamSummary {
        /// Sum of the sizes of all RAM entries, bytes.
        pub total_bytes: u64,
        /// One past the highest RAM byte.
        pub end: u64,
    }

    /// Sums the RAM entries (type [`MEMMAP_RAM`]) and finds where RAM ends.
    /// Other entry types are ignored; arithmetic saturates, so a hostile map
    /// cannot overflow it.
    pub fn summarize(entries: impl IntoIterator<Item = MemmapEntry>) -> RamSummary {
        entries
            .into_iter()
            .filter(|entry| entry.kind == MEMMAP_RAM)
            .fold(RamSummary::default(), |summary, entry| RamSummary {
                total_bytes: summary.total_bytes.saturating_add(entry.size),
                end: summary.end.max(entry.addr.saturating_add(entry.size)),
            })
    }

    /// An address `gap` bytes past the end of RAM, rounded up to 8 bytes,
    /// that an 8-byte write can reach below `limit`; `None` if there is none.
    pub fn beyond_ram(ram_end: u64, gap: u64, limit: u64) -> Option<u64> {
        let address = ram_end.checked_add(gap)?.checked_add(7)? & !7;
        (address.checked_add(8)? <= limit).then_some(address)
    }

    /// Bytes per page.
    pub const PAGE_SIZE: u64 = 4096;

    /// A run of whole pages of free guest-physical RAM.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Region {
        /// First byte, page-aligned.
        pub start: u64,
        /// Number of pages.
        pub pages: u64,
    }

    impl Region {
        /// One past the last byte.
        pub fn end(&self) -> u64 {
            self.start + self.pages * PAGE_SIZE
        }

        /// The guest frame number of page `index`.
        pub fn gfn(&self, index: u64) -> u64 {
            self.start / PAGE_SIZE + index
        }
    }

    /// The free RAM above a guest's image: from `image_end` rounded up to a
    /// page, to the end of the RAM entry that holds that address (capped at
    /// `limit`, the end of what the guest can address), cut short where a
    /// `reserved` range (modules, boot data: `(start, end)`) begins and
    /// moved past one that covers the start; then at most `want_pages`.
    /// `None` when no whole page is free.
    pub fn free_region(
        entries: impl IntoIterator<Item = MemmapEntry>,
        image_end: u64,
        reserved: &[(u64, u64)],
        want_pages: u64,
        limit: u64,
    ) -> Option<Region> {
        let page_up = |address: u64| {
            address
                .checked_add(PAGE_SIZE - 1)
                .map(|up| up & !(PAGE_SIZE - 1))
        };
        let mut start = page_up(image_end)?;
        let entry = entries.into_iter().find(|entry| {
            entry.kind == MEMMAP_RAM
                && entry.addr <= start
                && start < entry.addr.saturating_add(entry.size)
        })?;
        let mut end = entry.addr.saturating_add(entry.size).min(limit) & !(PAGE_SIZE - 1);
        // Each pass either moves `start` past a range or lowers `end` to one;
        // with n ranges, n + 1 passes settle it.
        for _ in 0..=reserved.len() {
            let mut changed = false;
            for &(low, high) in reserved {
                if low >= high || high <= start || low >= end {
                    continue;
                }
                if low <= start {
                    start = page_up(high)?;
                } else {
                    end = low & !(PAGE_SIZE - 1);
                }
                changed = true;
            }
            if !changed || start >= end {
                break;
            }
        }
        let available = end.saturating_sub(start) / PAGE_SIZE;
        let pages = available.min(want_pages);
        (pages > 0).then_some(Region { start, pages })
    }
}

pub mod pattern {
    //! The page contents `memhog` and `balloon` write and check: each 4 KiB
    //! page holds 511 64-bit words derived from `(gfn, pass, seed)` and a
    //! checksum word over them, so a page that went to another frame, kept
    //! an earlier pass's data, or came back zeroed or torn is caught, and
    //! [`check`] tells those apart (a stale or misplaced page is still
    //! self-consistent; a zeroed or torn one is not).
    //!
    //! Word `i < 511` is `base + i * STEP` (wrapping), where `base` mixes the
    //! three inputs (splitmix64's finaliser); word 511 is [`checksum`] of the
    //! others. One add per word keeps it fast under TCG.

    /// 64-bit words per 4 KiB page.
    pub const WORDS: usize = 512;
    /// Index of the checksum word (the last one).
    pub const CHECKSUM_INDEX: usize = WORDS - 1;
    /// The increment between consecutive words (odd, so no word repeats).
    const STEP: u64 = 0x9e37_79b9_7f4a_7c15;
    /// Folded into every checksum, so a page of zeros does not check out.
    const CHECKSUM_TAG: u64 = 0x6361_6972_6e70_6773; // "cairnpgs"

    /// Reading and writing the 64-bit words of one page. The host tests use
    /// arrays; the guests use volatile accesses to their own RAM.
    pub trait PageWords {
        /// Word `index` (< [`WORDS`]).
        fn load(&self, index: usize) -> u64;
        /// Sets word `index` (< [`WORDS`]).
        fn store(&mut self, index: usize, value: u64);
    }

    impl PageWords for [u64; WORDS] {
        fn load(&self, index: usize) -> u64 {
            self[index]
        }

        fn store(&mut self, index: usize, value: u64) {
            self[index] = value;
        }
    }

    /// splitmix64's finaliser: a bijection that spreads every input bit.
    pub fn mix(value: u64) -> u64 {
        let mut x = value;
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// The first word of page `gfn` in pass `pass`.
    pub fn base(gfn: u64, pass: u64, seed: u64) -> u64 {
        mix(seed ^ mix(gfn.wrapping_add(mix(pass.wrapping_add(STEP)))))
    }

    /// Word `index` (< [`CHECKSUM_INDEX`]) of the page whose first word is `base`.
    pub fn word(base: u64, index: usize) -> u64 {
        base.wrapping_add((index as u64).wrapping_mul(STEP))
    }

    /// One step of the checksum fold.
    fn fold(accumulator: u64, word: u64) -> u64 {
        accumulator.rotate_left(7) ^ word
    }

    /// The checksum of words `0..CHECKSUM_INDEX`.
    pub fn checksum(words: impl IntoIterator<Item = u64>) -> u64 {
        words.into_iter().fold(0, fold) ^ CHECKSUM_TAG
    }

    /// Fills a page with its pattern for `(gfn, pass, seed)`.
    pub fn fill(page: &mut impl PageWords, gfn: u64, pass: u64, seed: u64) {
        let mut value = base(gfn, pass, seed);
        let mut sum = 0;
        for index in 0..CHECKSUM_INDEX {
            page.store(index, value);
            sum = fold(sum, value);
            value = value.wrapping_add(STEP);
        }
        page.store(CHECKSUM_INDEX, sum ^ CHECKSUM_TAG);
    }

    /// The first word of a page that differs from what was written.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Mismatch {
        /// Byte offset of the word in the page.
        pub offset: u64,
        /// What the word should be.
        pub expected: u64,
        /// What it is.
        pub found: u64,
        /// Whether the page's checksum word matches its other words: true
        /// for whole pages that are stale or misplaced, false for zeroed,
        /// torn or corrupted ones.
        pub self_consistent: bool,
    }

    /// Checks every word of a page against its pattern for `(gfn, pass,
    /// seed)`: `None` when all [`WORDS`] words (every byte) match.
    pub fn check(page: &impl PageWords, gfn: u64, pass: u64, seed: u64) -> Option<Mismatch> {
        let mut expected = base(gfn, pass, seed);
        let mut expected_sum = 0;
        let mut found_sum = 0;
        let mut first: Option<(usize, u64, u64)> = None;
        for index in 0..CHECKSUM_INDEX {
            let found = page.load(index);
            if found != expected && first.is_none() {
                first = Some((index, expected, found));
            }
            expected_sum = fold(expected_sum, expected);
            found_sum = fold(found_sum, found);
            expected = expected.wrapping_add(STEP);
        }
        let stored_sum = page.load(CHECKSUM_INDEX);
        let expected_sum = expected_sum ^ CHECKSUM_TAG;
        if first.is_none() && stored_sum != expected_sum {
            first = Some((CHECKSUM_INDEX, expected_sum, stored_sum));
        }
        first.map(|(index, expected, found)| Mismatch {
            offset: index as u64 * 8,
            expected,
            found,
            self_consistent: found_sum ^ CHECKSUM_TAG == stored_sum,
        })
    }

    /// Whether every word of a page is zero; else the first non-zero one.
    pub fn check_zero(page: &impl PageWords) -> Option<Mismatch> {
        (0..WORDS).find_map(|index| {
            let found = page.load(index);
            (found != 0).then_some(Mismatch {
                offset: index as u64 * 8,
                expected: 0,
                found,
                self_consistent: false,
            })
        })
    }

    /// What a page that failed [`check`] for `(gfn, pass, seed)` most
    /// likely is: `zeroed page`, `stale page from the previous pass`, `whole
    /// page from elsewhere` (self-consistent but another frame's or run's)
    /// or `corrupt page` (torn or damaged).
    pub fn classify(
        page: &impl PageWords,
        gfn: u64,
        pass: u64,
        seed: u64,
        mismatch: &Mismatch,
    ) -> &'static str {
        if check_zero(page).is_none() {
            "zeroed page"
        } else if pass > 1 && check(page, gfn, pass - 1, seed).is_none() {
            "stale page from the previous pass"
        } else if mismatch.self_consistent {
            "whole page from elsewhere"
        } else {
            "corrupt page"
        }
    }

    /// The report of a bad page: `PREFIXBAD gfn 0xG offset 0xO expected 0xE
    /// found 0xF (pass K, WHAT)`, WHAT from [`classify`].
    pub fn bad_line(
        prefix: &str,
        page: &impl PageWords,
        gfn: u64,
        pass: u64,
        seed: u64,
        mismatch: &Mismatch,
    ) -> crate::text::Line {
        let mut line = crate::text::Line::new();
        line.push_str(prefix)
            .push_str("BAD gfn ")
            .push_hex(gfn)
            .push_str(" offset ")
            .push_hex(mismatch.offset)
            .push_str(" expected ")
            .push_hex(mismatch.expected)
            .push_str(" found ")
            .push_hex(mismatch.found)
            .push_str(" (pass ")
            .push_decimal(pass)
            .push_str(", ")
            .push_str(classify(page, gfn, pass, seed, mismatch))
            .push_str(")");
        line
    }
}

pub mod signature {
    //! CPUID vendor signatures (12 ASCII bytes in EBX, ECX, EDX).

    /// The 12 signature bytes of a CPUID leaf's EBX, ECX, EDX.
    pub fn from_registers(ebx: u32, ecx: u32, edx: u32) -> [u8; 12] {
        let mut bytes = [0; 12];
        bytes[0..4].copy_from_slice(&ebx.to_le_bytes());
        bytes[4..8].copy_from_slice(&ecx.to_le_bytes());
        bytes[8..12].copy_from_slice(&edx.to_le_bytes());
        bytes
    }

    /// The signature as text, if all 12 bytes are printable ASCII (a CPU
    /// without the leaf returns zeros or another leaf's numbers).
    pub fn as_text(bytes: &[u8; 12]) -> Option<&str> {
        if bytes.iter().all(|byte| byte.is_ascii_graphic()) {
            core::str::from_utf8(bytes).ok()
        } else {
            None
        }
    }
}

pub mod spinner {
    //! The spinner's settings, from its command line:
    //!
    //! | key | meaning | default |
    //! |---|---|---|
    //! | `iterations=N` | progress lines before powering off; 0 = forever | 0 |
    //! | `label=X` | a word put before each line (`X: progress N`) | none |
    //! | `work=N` | busy-loop iterations between lines | [`DEFAULT_WORK`] |

    use crate::cmdline;

    /// Busy-loop iterations (`dec; jnz`) between two progress lines. Measured
    /// on bare QEMU TCG (`-cpu EPYC`, QEMU 7.2, the project's 2-core EPYC VM):
    /// 2.3-2.4 ns per iteration, so about 190 ms per line (`-M microvm`).
    pub const DEFAULT_WORK: u64 = 80_000_000;
    /// The default label.
    pub const DEFAULT_LABEL: &str = "";
    /// Longest label kept; longer ones are cut.
    pub const MAX_LABEL_LEN: usize = 32;

    /// What the spinner does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Settings<'a> {
        /// Progress lines before powering off; 0 = forever.
        pub iterations: u64,
        /// First word of each line.
        pub label: &'a str,
        /// Busy-loop iterations per line; at least 1.
        pub work: u64,
    }

    impl<'a> Settings<'a> {
        /// Reads the settings; a malformed or missing value keeps its default.
        pub fn parse(line: &'a str) -> Self {
            let number = |key| cmdline::value(line, key).and_then(cmdline::parse_u64);
            let label = cmdline::value(line, "label")
                .filter(|label| !label.is_empty())
                .map(|label| match label.char_indices().nth(MAX_LABEL_LEN) {
                    Some((cut, _)) => &label[..cut],
                    None => label,
                })
                .unwrap_or(DEFAULT_LABEL);
            Self {
                iterations: number("iterations").unwrap_or(0),
                label,
                work: number("work")
                    .filter(|&work| work > 0)
                    .unwrap_or(DEFAULT_WORK),
            }
        }
    }
}

pub mod memhog {
    //! `memhog`'s settings, from its command line:
    //!
    //! | key | meaning | default |
    //! |---|---|---|
    //! | `memhog_mib=N` | MiB to write and verify (cut to the free RAM above the image) | [`DEFAULT_MIB`] |
    //! | `passes=N` | write-then-verify passes, each with new contents | [`DEFAULT_PASSES`] |
    //! | `progress_mib=N` | a progress line every N MiB written or verified | [`DEFAULT_PROGRESS_MIB`] |
    //! | `seed=N` | mixed into every page's contents | [`DEFAULT_SEED`] |
    //! | `settle_ms=N` | sleep first (on the PV timer), so the pager has set up its swap device before memory fills | 0 |

    use crate::cmdline;

    /// MiB touched when the command line names none.
    pub const DEFAULT_MIB: u64 = 12;
    /// Passes when the command line names none.
    pub const DEFAULT_PASSES: u64 = 2;
    /// MiB between progress lines.
    pub const DEFAULT_PROGRESS_MIB: u64 = 4;
    /// The default seed ("memhog").
    pub const DEFAULT_SEED: u64 = 0x6d65_6d68_6f67;
    /// Most `BAD` lines printed per pass.
    pub const MAX_BAD_LINES: u64 = 4;

    /// What memhog does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Settings {
        /// MiB to touch, at least 1.
        pub mib: u64,
        /// Passes, at least 1.
        pub passes: u64,
        /// MiB between progress lines, at least 1.
        pub progress_mib: u64,
        /// Seed of the contents.
        pub seed: u64,
        /// Sleep before starting, ms.
        pub settle_ms: u64,
    }

    impl Settings {
        /// Reads the settings; a malformed, zero or missing value keeps its
        /// default (any seed is accepted).
        pub fn parse(line: &str) -> Self {
            let positive = |key: &str, default: u64| cmdline::positive(line, key, default);
            Self {
                settle_ms: positive("settle_ms", 0).min(60_000),
                mib: positive("memhog_mib", DEFAULT_MIB).min(1 << 20),
                passes: positive("passes", DEFAULT_PASSES),
                progress_mib: positive("progress_mib", DEFAULT_PROGRESS_MIB),
                seed: cmdline::value(line, "seed")
                    .and_then(cmdline::parse_u64)
                    .unwrap_or(DEFAULT_SEED),
            }
        }
    }
}

pub mod balloon {
    //! `balloon`'s settings, from its command line:
    //!
    //! | key | meaning | default |
    //! |---|---|---|
    //! | `balloon_pages=N` | pages filled (cut to the free RAM above the image) | [`DEFAULT_PAGES`] |
    //! | `drop_every=N` | give back every Nth page (1 = all of them) | [`DEFAULT_DROP_EVERY`] |
    //! | `pause_ms=N` | sleep between filling and giving back (the pager pages the region out meanwhile) | 0 |
    //! | `seed=N` | mixed into every page's contents | [`DEFAULT_SEED`] |
    //!
    //! At most [`MAX_DROPPED`] pages are given back (one hypercall's list).

    use crate::cmdline;

    /// Pages filled when the command line names none.
    pub const DEFAULT_PAGES: u64 = 512;
    /// Every this many pages one is given back.
    pub const DEFAULT_DROP_EVERY: u64 = 2;
    /// Most pages given back: the size of the gfn list.
    pub const MAX_DROPPED: usize = 1024;
    /// The default seed ("balloon").
    pub const DEFAULT_SEED: u64 = 0x62_616c_6c6f_6f6e;

    /// What balloon does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Settings {
        /// Pages filled, at least 1.
        pub pages: u64,
        /// Page `i` is given back when `i % drop_every == 0`; at least 1.
        pub drop_every: u64,
        /// Seed of the contents.
        pub seed: u64,
        /// Sleep between filling and giving back, ms (so the pager pages
        /// much of the region out first).
        pub pause_ms: u64,
    }

    impl Settings {
        /// Reads the settings; a malformed, zero or missing value keeps its
        /// default (any seed is accepted).
        pub fn parse(line: &str) -> Self {
            let positive = |key: &str, default: u64| cmdline::positive(line, key, default);
            Self {
                pause_ms: positive("pause_ms", 0).min(60_000),
                pages: positive("balloon_pages", DEFAULT_PAGES),
                drop_every: positive("drop_every", DEFAULT_DROP_EVERY),
                seed: cmdline::value(line, "seed")
                    .and_then(cmdline::parse_u64)
                    .unwrap_or(DEFAULT_SEED),
            }
        }

        /// Whether page `index` of the region is given back: every
        /// `drop_every`th page, while fewer than [`MAX_DROPPED`] are.
        pub fn dropped(&self, index: u64) -> bool {
            index.is_multiple_of(self.drop_every) && index / self.drop_every < MAX_DROPPED as u64
        }
    }
}

pub mod smpspin {
    //! `smpspin`'s settings, from its command line:
    //!
    //! | key | meaning | default |
    //! |---|---|---|
    //! | `vcpus=N` | vCPUs to run, 1..=[`smp::MAX_VCPUS`](crate::smp::MAX_VCPUS) (the domain's `vcpus` should match) | [`DEFAULT_VCPUS`] |
    //! | `spin_ms=N` | how long each vCPU counts, guest system time | [`DEFAULT_SPIN_MS`] |
    //! | `wait_ms=N` | how long vCPU 0 waits for the others after its own count | [`DEFAULT_WAIT_MS`] |

    use crate::cmdline;

    /// vCPUs when the command line names none.
    pub const DEFAULT_VCPUS: u8 = 2;
    /// Counting time when the command line names none, ms.
    pub const DEFAULT_SPIN_MS: u64 = 3000;
    /// How long vCPU 0 waits for the others, ms.
    pub const DEFAULT_WAIT_MS: u64 = 30_000;

    /// What smpspin does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Settings {
        /// vCPUs, 1..=8.
        pub vcpus: u8,
        /// Counting time, ms, at least 1.
        pub spin_ms: u64,
        /// Waiting time for the others, ms, at least 1.
        pub wait_ms: u64,
    }

    impl Settings {
        /// Reads the settings; a malformed, zero or missing value keeps its
        /// default, and `vcpus` is capped at 8.
        pub fn parse(line: &str) -> Self {
            let positive = |key: &str, default: u64| cmdline::positive(line, key, default);
            Self {
                vcpus: crate::smp::vcpus(positive("vcpus", u64::from(DEFAULT_VCPUS))),
                spin_ms: positive("spin_ms", DEFAULT_SPIN_MS).min(3_600_000),
                wait_ms: positive("wait_ms", DEFAULT_WAIT_MS).min(3_600_000),
            }
        }
    }
}

pub mod smpmem {
    //! `smpmem`'s settings and the layout of the RAM it touches.
    //!
    //! | key | meaning | default |
    //! |---|---|---|
    //! | `vcpus=N` | vCPUs taking part, 1..=8 (the domain's `vcpus` should match) | [`DEFAULT_VCPUS`] |
    //! | `private_mib=N` | MiB each vCPU writes and verifies alone | [`DEFAULT_PRIVATE_MIB`] |
    //! | `shared_mib=N` | MiB all vCPUs share (its first page holds the tally counters) | [`DEFAULT_SHARED_MIB`] |
    //! | `passes=N` | write-then-verify passes, each with new contents | [`DEFAULT_PASSES`] |
    //! | `seed=N` | mixed into every page's contents | [`DEFAULT_SEED`] |
    //! | `settle_ms=N` | sleep first, so the pager has its swap device before memory fills | 0 |
    //! | `wait_ms=N` | longest wait at a barrier before giving up (a vCPU that never ran) | [`DEFAULT_WAIT_MS`] |
    //!
    //! The region (free RAM above the image, [`Layout`]) holds, in order,
    //! each vCPU's private pages, then the shared region: one tally page of
    //! [`TALLY_WORDS`] counters, then the shared pattern pages. Shared
    //! pattern page `j` is written by vCPU `j % vcpus` (so neighbouring pages
    //! are written by different vCPUs at once) and read back by every vCPU.
    //! After writing its `s`-th shared page, a vCPU adds 1 to tally word
    //! `s % TALLY_WORDS` with a locked add, so all vCPUs hit the same words
    //! of the same page at once; [`Layout::expected_tally`] is what each word
    //! holds after all passes.

    use crate::cmdline;

    /// vCPUs when the command line names none.
    pub const DEFAULT_VCPUS: u8 = 2;
    /// Private MiB per vCPU when the command line names none.
    pub const DEFAULT_PRIVATE_MIB: u64 = 4;
    /// Shared MiB when the command line names none.
    pub const DEFAULT_SHARED_MIB: u64 = 4;
    /// Passes when the command line names none.
    pub const DEFAULT_PASSES: u64 = 2;
    /// The default seed ("smpmem").
    pub const DEFAULT_SEED: u64 = 0x736d_706d_656d;
    /// Longest barrier wait when the command line names none, ms.
    pub const DEFAULT_WAIT_MS: u64 = 120_000;
    /// Counters in the tally page (one page of 64-bit words).
    pub const TALLY_WORDS: usize = 512;
    /// Most `BAD` lines each vCPU prints per pass.
    pub const MAX_BAD_LINES: u64 = 4;
    /// Pages per MiB.
    const PAGES_PER_MIB: u64 = (1 << 20) / crate::memory::PAGE_SIZE;

    /// What smpmem does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Settings {
        /// vCPUs taking part, 1..=8.
        pub vcpus: u8,
        /// Private MiB per vCPU, at least 1.
        pub private_mib: u64,
        /// Shared MiB, at least 1.
        pub shared_mib: u64,
        /// Passes, at least 1.
        pub passes: u64,
        /// Seed of the contents.
        pub seed: u64,
        /// Sleep before starting, ms.
        pub settle_ms: u64,
        /// Longest barrier wait, ms.
        pub wait_ms: u64,
    }

    impl Settings {
        /// Reads the settings; a malformed, zero or missing value keeps its
        /// default (any seed is accepted), `vcpus` is capped at 8.
        pub fn parse(line: &str) -> Self {
            let positive = |key: &str, default: u64| cmdline::positive(line, key, default);
            Self {
                vcpus: crate::smp::vcpus(positive("vcpus", u64::from(DEFAULT_VCPUS))),
                private_mib: positive("private_mib", DEFAULT_PRIVATE_MIB).min(1 << 12),
                shared_mib: positive("shared_mib", DEFAULT_SHARED_MIB).min(1 << 12),
                passes: positive("passes", DEFAULT_PASSES),
                seed: cmdline::value(line, "seed")
                    .and_then(cmdline::parse_u64)
                    .unwrap_or(DEFAULT_SEED),
                settle_ms: positive("settle_ms", 0).min(60_000),
                wait_ms: positive("wait_ms", DEFAULT_WAIT_MS).min(3_600_000),
            }
        }

        /// The layout of the region these settings ask for.
        pub fn layout(&self) -> Layout {
            Layout {
                vcpus: u64::from(self.vcpus),
                private_pages: self.private_mib * PAGES_PER_MIB,
                // The tally page comes out of the shared MiB.
                shared_pages: self.shared_mib * PAGES_PER_MIB - 1,
            }
        }
    }

    /// Where each part of smpmem's region lies, in pages from its start.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Layout {
        /// vCPUs taking part, at least 1.
        pub vcpus: u64,
        /// Private pages per vCPU.
        pub private_pages: u64,
        /// Shared pattern pages (the tally page not counted).
        pub shared_pages: u64,
    }

    impl Layout {
        /// Pages of the whole region.
        pub fn total_pages(&self) -> u64 {
            self.vcpus * self.private_pages + 1 + self.shared_pages
        }

        /// Page `index` of vCPU `vcpu`'s private part.
        pub fn private_page(&self, vcpu: u64, index: u64) -> u64 {
            vcpu * self.private_pages + index
        }

        /// The tally page.
        pub fn tally_page(&self) -> u64 {
            self.vcpus * self.private_pages
        }

        /// Shared pattern page `index` (< [`shared_pages`](Self::shared_pages)).
        pub fn shared_page(&self, index: u64) -> u64 {
            self.tally_page() + 1 + index
        }

        /// The vCPU that writes shared pattern page `index`.
        pub fn shared_owner(&self, index: u64) -> u64 {
            index % self.vcpus
        }

        /// How many shared pattern pages vCPU `vcpu` writes; its `step`-th
        /// one is shared page `vcpu + step * vcpus`.
        pub fn owned_shared_pages(&self, vcpu: u64) -> u64 {
            (self.shared_pages + self.vcpus - 1 - vcpu) / self.vcpus
        }

        /// What tally word `word` holds after `passes` passes: every vCPU
        /// added 1 for each of its steps `s` with `s % TALLY_WORDS == word`.
        pub fn expected_tally(&self, word: usize, passes: u64) -> u64 {
            let words = TALLY_WORDS as u64;
            let per_pass: u64 = (0..self.vcpus)
                .map(|vcpu| {
                    let steps = self.owned_shared_pages(vcpu);
                    steps / words + u64::from((word as u64) < steps % words)
                })
                .sum();
            per_pass * passes
        }
    }
}

pub mod smp {
    //! Starting secondary vCPUs as a PVH guest does on Xen:
    //! `VCPUOP_initialise` with a 64-bit `vcpu_hvm_context`
    //! ([`ipc::hypercall::HvmContext64`]), then `VCPUOP_up`. The new vCPU
    //! starts in long mode on this guest's page tables at a small trampoline
    //! (`guest_secondary_entry`, target only) that loads the guest's GDT and
    //! empty IDT and its segments, then calls the [`Entry`] in RSI with the
    //! vCPU's index in RDI, on a 16 KiB stack of its own (`start_vcpu`, target only).
    //! Also a [`Barrier`] for the vCPUs of one guest.

    use core::sync::atomic::{AtomicU32, Ordering};

    use ipc::hypercall::HvmContext64;

    /// Most vCPUs a guest has ([`ipc::boot::MAX_VCPUS`]).
    pub const MAX_VCPUS: usize = ipc::boot::MAX_VCPUS as usize;
    /// Bytes of each secondary vCPU's stack.
    pub const STACK_SIZE: usize = 16 * 1024;

    /// What a secondary vCPU runs: called with its index, never returns.
    pub type Entry = extern "C" fn(u8) -> !;

    /// A vCPU count from the command line, held to 1..=[`MAX_VCPUS`].
    pub fn vcpus(requested: u64) -> u8 {
        requested.clamp(1, MAX_VCPUS as u64) as u8
    }

    /// The start state of secondary vCPU `index`: the caller's control
    /// registers (same page tables, long mode), RIP at `trampoline`, RSP at
    /// `stack_top`, RDI = `index`, RSI = `entry`, RFLAGS with only bit 1
    /// (interrupts off).
    pub fn start_context(
        index: u8,
        trampoline: u64,
        entry: u64,
        stack_top: u64,
        control: [u64; 4],
    ) -> HvmContext64 {
        let [cr0, cr3, cr4, efer] = control;
        HvmContext64 {
            rdi: u64::from(index),
            rsi: entry,
            rsp: stack_top,
            rip: trampoline,
            rflags: 0x2,
            cr0,
            cr3,
            cr4,
            efer,
            ..HvmContext64::default()
        }
    }

    /// A reusable barrier for `parties` vCPUs (the generation counter
    /// distinguishes one use from the next).
    #[derive(Debug)]
    pub struct Barrier {
        arrived: AtomicU32,
        generation: AtomicU32,
    }

    impl Default for Barrier {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Barrier {
        /// A barrier nobody has reached.
        pub const fn new() -> Self {
            Self {
                arrived: AtomicU32::new(0),
                generation: AtomicU32::new(0),
            }
        }

        /// Waits until `parties` callers have arrived; while waiting calls
        /// `keep_waiting` (which yields the pCPU, say) and gives up when it
        /// returns false. True when everyone arrived; after false the
        /// barrier is unusable (the guest is expected to crash).
        pub fn wait(&self, parties: u32, mut keep_waiting: impl FnMut() -> bool) -> bool {
            let generation = self.generation.load(Ordering::Acquire);
            if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 >= parties {
                self.arrived.store(0, Ordering::Relaxed);
                self.generation.fetch_add(1, Ordering::Release);
                return true;
            }
            while self.generation.load(Ordering::Acquire) == generation {
                if !keep_waiting() {
                    return false;
                }
            }
            true
        }
    }

    /// Why [`start_vcpu`] failed.
    #[cfg(target_os = "none")]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum StartError {
        /// No stack for that index (vCPU 0, or 8 and above): nothing was called.
        NoStack,
        /// `VCPUOP_initialise` returned this (negative Xen errno).
        Initialise(i64),
        /// `VCPUOP_up` returned this (negative Xen errno).
        Up(i64),
    }

    #[cfg(target_os = "none")]
    impl StartError {
        /// The call that failed.
        pub fn call(&self) -> &'static str {
            match self {
                Self::NoStack => "no stack",
                Self::Initialise(_) => "VCPUOP_initialise",
                Self::Up(_) => "VCPUOP_up",
            }
        }

        /// The hypercall's result (0 for [`StartError::NoStack`]).
        pub fn code(&self) -> i64 {
            match self {
                Self::NoStack => 0,
                Self::Initialise(code) | Self::Up(code) => *code,
            }
        }
    }

    /// The stacks of vCPUs 1..[`MAX_VCPUS`], in `.bss`. Only their
    /// addresses are taken: each is used by its vCPU alone, as a raw stack.
    #[cfg(target_os = "none")]
    #[repr(C, align(16))]
    struct Stacks([[u8; STACK_SIZE]; MAX_VCPUS - 1]);

    #[cfg(target_os = "none")]
    static mut STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_VCPUS - 1]);

    /// The top of vCPU `index`'s stack (16-byte aligned), if it has one.
    #[cfg(target_os = "none")]
    fn stack_top(index: u8) -> Option<u64> {
        let slot = usize::from(index).checked_sub(1).filter(|&slot| slot < MAX_VCPUS - 1)?;
        let base = (&raw mut STACKS) as u64;
        Some(base + ((slot + 1) * STACK_SIZE) as u64)
    }

    #[cfg(target_os = "none")]
    extern "C" {
        /// The trampoline in `entry` a secondary vCPU starts at.
        fn guest_secondary_entry();
    }

    /// This vCPU's CR0, CR3, CR4 and EFER.
    #[cfg(target_os = "none")]
    fn control_registers() -> [u64; 4] {
        let (cr0, cr3, cr4): (u64, u64, u64);
        // SAFETY: reading control registers changes nothing; the guest runs
        // at CPL 0.
        unsafe {
            core::arch::asm!(
                "mov {0}, cr0",
                "mov {1}, cr3",
                "mov {2}, cr4",
                out(reg) cr0,
                out(reg) cr3,
                out(reg) cr4,
                options(nomem, nostack, preserves_flags),
            );
        }
        let (low, high): (u32, u32);
        // SAFETY: RDMSR of EFER, which exists on every x86-64 CPU (and which
        // cairn emulates); it changes nothing.
        unsafe {
            core::arch::asm!(
                "rdmsr",
                in("ecx") 0xc000_0080u32,
                out("eax") low,
                out("edx") high,
                options(nomem, nostack, preserves_flags),
            );
        }
        [cr0, cr3, cr4, (u64::from(high) << 32) | u64::from(low)]
    }

    /// Starts secondary vCPU `index` (1..[`MAX_VCPUS`]) running `entry(index)`
    /// on its own static stack, with this vCPU's paging: `VCPUOP_initialise`
    /// with [`start_context`], then `VCPUOP_up`. `Ok` once both returned 0
    /// (the vCPU is runnable; when it runs is up to the hypervisor). A
    /// vCPU must be started once: its stack is not shared.
    #[cfg(target_os = "none")]
    pub fn start_vcpu(index: u8, entry: Entry) -> Result<(), StartError> {
        let stack_top = stack_top(index).ok_or(StartError::NoStack)?;
        let context = start_context(
            index,
            guest_secondary_entry as *const () as u64,
            entry as usize as u64,
            stack_top,
            control_registers(),
        );
        let result = crate::hypercall::vcpu_initialise(index, &context);
        if result < 0 {
            return Err(StartError::Initialise(result));
        }
        let result = crate::hypercall::vcpu_up(index);
        if result < 0 {
            return Err(StartError::Up(result));
        }
        Ok(())
    }

    /// Starts vCPUs `1..vcpus` with [`start_vcpu`]; on the first failure
    /// prints `vCPU N: CALL failed: error E` and crashes the domain
    /// (`SHUTDOWN_crash`), so a test sees it.
    #[cfg(target_os = "none")]
    pub fn start_others_or_crash(vcpus: u8, entry: Entry) {
        for index in 1..vcpus {
            if let Err(error) = start_vcpu(index, entry) {
                let mut line = crate::text::Line::new();
                line.push_str("vCPU ")
                    .push_decimal(u64::from(index))
                    .push_str(": ")
                    .push_str(error.call())
                    .push_str(" failed: error ")
                    .push_decimal(error.code().unsigned_abs());
                crate::hypercall::crash_line(&mut line);
            }
        }
    }

    /// Parks this vCPU for good without taking it down (`SCHEDOP_block`
    /// with no timer; a HLT with interrupts off would make the core warn):
    /// for a secondary vCPU whose work is done.
    #[cfg(target_os = "none")]
    pub fn park() -> ! {
        loop {
            crate::pv::set_timer(0);
            crate::pv::block();
        }
    }
}

pub mod smpipi {
    //! `smpipi`'s settings, from its command line:
    //!
    //! | key | meaning | default |
    //! |---|---|---|
    //! | `ipis=N` | IPIs vCPU 0 sends in each phase, 1..=[`MAX_IPIS`] | [`DEFAULT_IPIS`] |
    //! | `settle_us=N` | halted phase: how long vCPU 0 waits, once vCPU 1 said it is about to halt, before it sends (so the IPI finds vCPU 1 blocked, its pCPU past halt-polling) | [`DEFAULT_SETTLE_US`] |
    //! | `timeout_ms=N` | longest wait for one IPI to be handled (or for vCPU 1 to get ready for the next one) before `IPI lost` | [`DEFAULT_TIMEOUT_MS`] |
    //! | `wait_ms=N` | longest wait for vCPU 1 to come up and enable its APIC | [`DEFAULT_WAIT_MS`] |

    use crate::cmdline;

    /// IPIs per phase when the command line names none.
    pub const DEFAULT_IPIS: u64 = 1000;
    /// Most IPIs per phase (one latency sample each is kept).
    pub const MAX_IPIS: u64 = 10_000;
    /// Halted phase: pause before each IPI when the command line names none, µs.
    pub const DEFAULT_SETTLE_US: u64 = 500;
    /// Longest wait for one IPI when the command line names none, ms.
    pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
    /// Longest wait for vCPU 1 to come up when the command line names none, ms.
    pub const DEFAULT_WAIT_MS: u64 = 30_000;

    /// What smpipi does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Settings {
        /// IPIs per phase, 1..=[`MAX_IPIS`].
        pub ipis: u64,
        /// Pause before each IPI of the halted phase, µs (at least 1).
        pub settle_us: u64,
        /// Longest wait for one IPI, ms (at least 1).
        pub timeout_ms: u64,
        /// Longest wait for vCPU 1 to come up, ms (at least 1).
        pub wait_ms: u64,
    }

    impl Settings {
        /// Reads the settings; a malformed, zero or missing value keeps its
        /// default, and each is capped (`ipis` at [`MAX_IPIS`]).
        pub fn parse(line: &str) -> Self {
            let positive = |key: &str, default: u64| cmdline::positive(line, key, default);
            Self {
                ipis: positive("ipis", DEFAULT_IPIS).min(MAX_IPIS),
                settle_us: positive("settle_us", DEFAULT_SETTLE_US).min(1_000_000),
                timeout_ms: positive("timeout_ms", DEFAULT_TIMEOUT_MS).min(3_600_000),
                wait_ms: positive("wait_ms", DEFAULT_WAIT_MS).min(3_600_000),
            }
        }
    }
}

pub mod latency {
    //! Order statistics of a set of latency samples (nearest-rank
    //! percentiles), computed in place without an allocator.

    /// What a set of samples looks like, in the samples' unit.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Summary {
        /// Samples.
        pub count: u64,
        /// Smallest.
        pub min: u64,
        /// 50th percentile (nearest rank: the lower middle of an even set).
        pub median: u64,
        /// 99th percentile (nearest rank).
        pub p99: u64,
        /// Largest.
        pub max: u64,
    }

    impl Summary {
        /// Every statistic mapped through `convert` (a unit change, say).
        pub fn map(&self, convert: impl Fn(u64) -> u64) -> Self {
            Self {
                count: self.count,
                min: convert(self.min),
                median: convert(self.median),
                p99: convert(self.p99),
                max: convert(self.max),
            }
        }
    }

    /// The `per_mille`-th nearest-rank percentile of `sorted` (ascending,
    /// not empty): the smallest sample at or above that share of the set.
    pub fn percentile(sorted: &[u64], per_mille: u64) -> u64 {
        let count = sorted.len() as u64;
        let rank = (count * per_mille.min(1000)).div_ceil(1000).max(1);
        sorted[(rank - 1) as usize]
    }

    /// Sorts `samples` and summarizes them; `None` if there are none.
    pub fn summarize(samples: &mut [u64]) -> Option<Summary> {
        samples.sort_unstable();
        let (&min, &max) = (samples.first()?, samples.last()?);
        Some(Summary {
            count: samples.len() as u64,
            min,
            median: percentile(samples, 500),
            p99: percentile(samples, 990),
            max,
        })
    }
}

pub mod idt {
    //! An interrupt descriptor table for guests that take interrupts: one
    //! table of 256 64-bit interrupt gates, shared by every vCPU (each loads
    //! it with `load`, target only). Gates are set one by one with `set`
    //! (target only) before interrupts are enabled; an unset vector has no
    //! present gate, so an exception or interrupt there triple-faults, as
    //! with the entry code's empty IDT.

    /// The selector of the entry code's 64-bit code segment (boot and
    /// secondary vCPUs use the same GDT layout).
    pub const CODE_SELECTOR: u64 = 0x08;

    /// A present 64-bit interrupt gate (type 0xE, DPL 0, no IST) to
    /// `handler` in [`CODE_SELECTOR`]: the two quadwords of its IDT entry.
    pub fn gate(handler: u64) -> [u64; 2] {
        let low = (handler & 0xffff)
            | (CODE_SELECTOR << 16)
            | (0x8e00 << 32)
            | (((handler >> 16) & 0xffff) << 48);
        [low, handler >> 32]
    }

    #[cfg(target_os = "none")]
    pub use table::{install, load, set};

    #[cfg(target_os = "none")]
    mod table {
        use core::arch::asm;
        use core::sync::atomic::{AtomicU64, Ordering};

        /// 256 16-byte gates. `AtomicU64` has `u64`'s layout, so the CPU
        /// reads the table as usual; atomics let any vCPU set a gate
        /// without a `static mut`.
        #[repr(C, align(16))]
        struct Table([AtomicU64; 512]);

        static TABLE: Table = Table([const { AtomicU64::new(0) }; 512]);

        #[repr(C, packed)]
        struct Pointer {
            limit: u16,
            base: u64,
        }

        /// Points `vector`'s gate at `handler`.
        ///
        /// # Safety
        ///
        /// `handler` must be an interrupt entry for 64-bit mode: it keeps
        /// every register it uses and ends with `iretq` (no error code is
        /// pushed for vectors 32 and above). Vectors that raise an error
        /// code (8, 10..=14, 17, 21, 29, 30) need an entry that pops it.
        pub unsafe fn set(vector: u8, handler: unsafe extern "C" fn()) {
            let [low, high] = super::gate(handler as usize as u64);
            let index = usize::from(vector) * 2;
            TABLE.0[index].store(low, Ordering::Release);
            TABLE.0[index + 1].store(high, Ordering::Release);
        }

        /// Points every external vector (0x20..=0xff) at `other`, except
        /// those `special` names, then loads the table.
        ///
        /// # Safety
        ///
        /// As for [`set`], for every handler given.
        pub unsafe fn install(special: &[(u8, unsafe extern "C" fn())], other: unsafe extern "C" fn()) {
            for vector in 0x20..=0xffu8 {
                let handler = special.iter().find(|(number, _)| *number == vector).map_or(other, |&(_, handler)| handler);
                // SAFETY: forwarded to the caller.
                unsafe { set(vector, handler) };
            }
            load();
        }

        /// Loads the table into this vCPU's IDTR.
        pub fn load() {
            let pointer = Pointer {
                limit: (core::mem::size_of::<Table>() - 1) as u16,
                base: TABLE.0.as_ptr() as u64,
            };
            // SAFETY: the table is a static, so it lives as long as the
            // program; every present gate in it was set through `set`,
            // whose callers vouch for the handlers.
            unsafe {
                asm!("lidt [{}]", in(reg) &raw const pointer, options(readonly, nostack, preserves_flags))
            };
        }
    }
}

pub mod xapic {
    //! The local APIC in xAPIC mode, as the guests drive it: register
    //! offsets and bits (SDM vol. 3A ch. 11), and (target only) access
    //! through the MMIO page at [`BASE`], which the entry code's identity
    //! map covers, plus the interrupt-flag and TSC instructions that go
    //! with it.
    //!
    //! Registers are reached with plain `mov`s in inline assembly, as
    //! Linux's `native_apic_mem_read`/`native_apic_mem_write` do: a volatile
    //! access in Rust may be folded into `cmp`/`bt` with a memory operand,
    //! which the hypervisor's MMIO decoder (like SEV-ES's) does not emulate.

    /// The APIC page's physical (and, identity-mapped, virtual) address.
    pub const BASE: u64 = 0xfee0_0000;
    /// Local APIC ID (bits 31:24).
    pub const ID: u64 = 0x20;
    /// Version.
    pub const VERSION: u64 = 0x30;
    /// Task priority.
    pub const TPR: u64 = 0x80;
    /// Processor priority.
    pub const PPR: u64 = 0xa0;
    /// End of interrupt.
    pub const EOI: u64 = 0xb0;
    /// Spurious-interrupt vector register.
    pub const SVR: u64 = 0xf0;
    /// In-service register (8 registers, 0x10 apart).
    pub const ISR: u64 = 0x100;
    /// Interrupt request register (8 registers, 0x10 apart).
    pub const IRR: u64 = 0x200;
    /// Error status.
    pub const ESR: u64 = 0x280;
    /// Interrupt command, low half (writing it sends).
    pub const ICR_LOW: u64 = 0x300;
    /// Interrupt command, high half (destination in bits 31:24).
    pub const ICR_HIGH: u64 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u64 = 0x320;
    /// Timer initial count.
    pub const INITIAL_COUNT: u64 = 0x380;
    /// Timer current count.
    pub const CURRENT_COUNT: u64 = 0x390;
    /// Timer divide configuration.
    pub const DIVIDE: u64 = 0x3e0;

    /// `IA32_APIC_BASE`.
    pub const APIC_BASE_MSR: u32 = 0x1b;
    /// `IA32_TSC_DEADLINE`.
    pub const TSC_DEADLINE_MSR: u32 = 0x6e0;

    /// SVR bit 8: the APIC is software-enabled.
    pub const SVR_ENABLE: u32 = 1 << 8;
    /// ICR destination shorthand "self".
    pub const ICR_SELF: u32 = 0b01 << 18;
    /// ICR bit 14: level assert (what Linux sets for every fixed IPI).
    pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
    /// ICR bit 12: delivery status (send pending).
    pub const ICR_SEND_PENDING: u32 = 1 << 12;

    /// The ICR low half of a fixed, physical-destination, edge-triggered
    /// IPI of `vector` (level assert set, no shorthand).
    pub const fn icr_fixed(vector: u8) -> u32 {
        ICR_LEVEL_ASSERT | vector as u32
    }

    /// The ICR high half naming physical APIC ID `id`.
    pub const fn icr_destination(id: u8) -> u32 {
        (id as u32) << 24
    }

    #[cfg(target_os = "none")]
    pub use access::*;

    #[cfg(target_os = "none")]
    mod access {
        use core::arch::asm;

        use super::*;

        /// Reads the 32-bit APIC register at `offset`.
        pub fn read(offset: u64) -> u32 {
            let value: u32;
            // SAFETY: the entry code identity-maps the first 4 GiB, the APIC
            // page included; a 32-bit aligned load from an APIC register has
            // no effect on this program's memory.
            unsafe {
                asm!("mov {value:e}, dword ptr [{address}]", address = in(reg) BASE + offset, value = out(reg) value, options(nostack, preserves_flags))
            };
            value
        }

        /// Writes the 32-bit APIC register at `offset`.
        pub fn write(offset: u64, value: u32) {
            // SAFETY: as for `read`; the store reaches the (virtual) APIC,
            // not this program's memory.
            unsafe {
                asm!("mov dword ptr [{address}], {value:e}", address = in(reg) BASE + offset, value = in(reg) value, options(nostack, preserves_flags))
            };
        }

        /// Software-enables the APIC with `spurious` as its spurious vector.
        pub fn enable(spurious: u8) {
            write(SVR, SVR_ENABLE | u32::from(spurious));
        }

        /// This vCPU's APIC ID.
        pub fn id() -> u8 {
            (read(ID) >> 24) as u8
        }

        /// Ends the interrupt in service.
        pub fn eoi() {
            write(EOI, 0);
        }

        /// Sends a fixed IPI of `vector` to APIC ID `destination`.
        pub fn send_fixed(destination: u8, vector: u8) {
            write(ICR_HIGH, icr_destination(destination));
            write(ICR_LOW, icr_fixed(vector));
        }

        /// Whether `vector` is set in the ISR or IRR (`base`).
        pub fn in_vector_set(base: u64, vector: u8) -> bool {
            read(base + u64::from(vector >> 5) * 0x10) & (1 << (vector & 31)) != 0
        }

        /// RDMSR of `msr`.
        pub fn rdmsr(msr: u32) -> u64 {
            let (low, high): (u32, u32);
            // SAFETY: reads an MSR; no memory touched (an MSR the CPU does
            // not have raises #GP, which ends the guest).
            unsafe {
                asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
            };
            (u64::from(high) << 32) | u64::from(low)
        }

        /// Arms (or, with 0, disarms) the TSC-deadline timer.
        pub fn write_tsc_deadline(value: u64) {
            // SAFETY: WRMSR of IA32_TSC_DEADLINE only arms the APIC timer.
            unsafe {
                asm!("wrmsr", in("ecx") TSC_DEADLINE_MSR, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags))
            };
        }

        /// The TSC (the same on every vCPU: cairn gives guests the host's).
        pub fn rdtsc() -> u64 {
            // SAFETY: RDTSC has no side effects.
            unsafe { core::arch::x86_64::_rdtsc() }
        }

        // The interrupt-flag helpers assume the program loaded an IDT with
        // gates for the vectors it enabled (`crate::idt`); an interrupt at a
        // vector without one triple-faults, which the hypervisor reports.

        /// `sti`.
        pub fn enable_interrupts() {
            // SAFETY: only sets RFLAGS.IF.
            unsafe { asm!("sti", options(nostack)) };
        }

        /// `cli`.
        pub fn disable_interrupts() {
            // SAFETY: only clears RFLAGS.IF.
            unsafe { asm!("cli", options(nostack)) };
        }

        /// `sti; nop; cli`: one instruction boundary at which a pending
        /// interrupt is taken.
        pub fn interrupt_window() {
            // SAFETY: the handlers an interrupt runs preserve all registers.
            unsafe { asm!("sti", "nop", "cli", options(nostack)) };
        }

        /// `sti; hlt; cli`: waits for an interrupt (the STI shadow covers
        /// the HLT, so one that is already pending is not missed) and
        /// returns with interrupts off.
        pub fn halt() {
            // SAFETY: as for `interrupt_window`; HLT returns after an
            // interrupt (or a wake-up the hypervisor decides on).
            unsafe { asm!("sti", "hlt", "cli", options(nostack)) };
        }
    }
}

/// The guest's own RAM as pages of 64-bit words, and where its image ends.
#[cfg(target_os = "none")]
pub mod physical {
    use crate::pattern::PageWords;

    extern "C" {
        /// End of `.bss`, the last section of the image (`guest.ld`).
        static __bss_end: u8;
    }

    /// One past the last byte of this guest's image (code, data, `.bss`
    /// with its page tables and stack).
    pub fn image_end() -> u64 {
        // Only the symbol's address is taken; the byte is never read.
        (&raw const __bss_end) as u64
    }

    /// A 4 KiB page of guest RAM, read and written with volatile 64-bit
    /// accesses, so every access really reaches memory (and the hypervisor
    /// behind it) in program order.
    #[derive(Debug)]
    pub struct PhysicalPage {
        words: *mut u64,
    }

    impl PhysicalPage {
        /// The page at `address`.
        ///
        /// # Safety
        ///
        /// `address` must be page-aligned RAM inside the identity map that
        /// no other part of the program uses (not the image, the boot data
        /// or a module) while the page is accessed through this value.
        pub unsafe fn new(address: u64) -> Self {
            Self {
                words: address as *mut u64,
            }
        }
    }

    impl PageWords for PhysicalPage {
        fn load(&self, index: usize) -> u64 {
            assert!(index < crate::pattern::WORDS);
            // SAFETY: `new`'s contract makes the page ours, mapped and
            // aligned; `index` is inside it.
            unsafe { self.words.add(index).read_volatile() }
        }

        fn store(&mut self, index: usize, value: u64) {
            assert!(index < crate::pattern::WORDS);
            // SAFETY: as in `load`; no reference to the page exists.
            unsafe { self.words.add(index).write_volatile(value) }
        }
    }
}

#[cfg(target_os = "none")]
mod entry {
    //! The PVH entry: 32-bit protected mode, paging off, `ebx` = start info.
    //! Zeroes `.bss`, builds the identity map, loads an empty IDT and a
    //! 64-bit GDT, enables PAE, EFER.LME and paging, far-jumps to 64-bit code,
    //! loads the data segments and the stack, then calls
    //! `guest_main(start_info_paddr)` (defined by [`entry!`](crate::entry)).
    core::arch::global_asm!(
        r#"
        .section .note.Xen, "a", @note
        .p2align 2
        .long 4                     /* namesz: "Xen\0" */
        .long 8                     /* descsz */
        .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .p2align 2
        .quad pvh_entry
        .p2align 2

        .section .text.pvh_entry, "ax", @progbits
        .code32
        .globl pvh_entry
    pvh_entry:
        cli
        cld
        movl %ebx, %esi             /* start info, kept in esi until the call */

        movl $__bss_start, %edi
        movl $__bss_end, %ecx
        subl %edi, %ecx
        xorl %eax, %eax
        rep stosb

        /* PML4[0] -> PDPT; PDPT[0..4] -> the four page directories. */
        movl $guest_pdpt, %eax
        orl $0x3, %eax              /* present, writable */
        movl %eax, guest_pml4
        movl $guest_pd, %eax
        orl $0x3, %eax
        xorl %ecx, %ecx
    .Lfill_pdpt:
        movl %eax, guest_pdpt(,%ecx,8)
        addl $0x1000, %eax
        incl %ecx
        cmpl $4, %ecx
        jne .Lfill_pdpt

        /* 2048 2 MiB pages: 0..4 GiB identity-mapped. */
        xorl %ecx, %ecx
    .Lfill_pd:
        movl %ecx, %eax
        shll $21, %eax
        orl $0x83, %eax             /* present, writable, 2 MiB page */
        movl %eax, guest_pd(,%ecx,8)
        incl %ecx
        cmpl $2048, %ecx
        jne .Lfill_pd

        lidt guest_idt_pointer      /* empty: an exception triple-faults */
        lgdt guest_gdt_pointer

        movl %cr4, %eax
        orl $0x20, %eax             /* CR4.PAE */
        movl %eax, %cr4
        movl $guest_pml4, %eax
        movl %eax, %cr3
        movl $0xc0000080, %ecx      /* EFER */
        movl $0x100, %eax           /* LME */
        xorl %edx, %edx
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax       /* CR0.PG | CR0.PE */
        movl %eax, %cr0
        ljmp $0x08, $.Llong_mode

        .code64
    .Llong_mode:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw %ax, %fs
        movw %ax, %gs
        movq $guest_stack_top, %rsp
        xorl %ebp, %ebp
        movl %esi, %edi             /* zero-extends: guest_main(start_info_paddr) */
        call guest_main
    .Lhalt:
        cli
        hlt
        jmp .Lhalt

        /* A secondary vCPU (smp::start_vcpu): 64-bit mode on the boot
           vCPU's page tables, rdi = its index, rsi = its entry, rsp = its
           stack top; GDTR and IDTR are the hypervisor's zeros. */
        .section .text.guest_secondary_entry, "ax", @progbits
        .code64
        .globl guest_secondary_entry
    guest_secondary_entry:
        cli
        cld
        lgdt guest_gdt_pointer64(%rip)
        lidt guest_idt_pointer64(%rip)
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw %ax, %fs
        movw %ax, %gs
        pushq $0x08                 /* reload CS from this GDT */
        leaq .Lsecondary_cs(%rip), %rax
        pushq %rax
        lretq
    .Lsecondary_cs:
        xorl %ebp, %ebp
        call *%rsi                  /* entry(index), never returns */
    .Lsecondary_halt:
        cli
        hlt
        jmp .Lsecondary_halt

        .section .rodata.guest_gdt, "a", @progbits
        .p2align 3
    guest_gdt:
        .quad 0
        .quad 0x00af9b000000ffff    /* 0x08: 64-bit code, present, accessed */
        .quad 0x00cf93000000ffff    /* 0x10: flat data, present, accessed */
    guest_gdt_end:
    guest_gdt_pointer:
        .word guest_gdt_end - guest_gdt - 1
        .long guest_gdt
    guest_idt_pointer:
        .word 0
        .long 0
        /* The same, in the 10-byte form LGDT/LIDT read in 64-bit mode. */
    guest_gdt_pointer64:
        .word guest_gdt_end - guest_gdt - 1
        .quad guest_gdt
    guest_idt_pointer64:
        .word 0
        .quad 0

        .section .bss.guest_page_tables, "aw", @nobits
        .p2align 12
    guest_pml4:
        .skip 4096
    guest_pdpt:
        .skip 4096
    guest_pd:
        .skip 4096 * 4

        .section .bss.guest_stack, "aw", @nobits
        .p2align 4
        .skip 65536
    guest_stack_top:

        .text
        "#,
        options(att_syntax)
    );
}

/// Defines the binary's `guest_main`, which the entry code calls: it reads
/// the start info into a [`Boot`] (or reports a crash) and calls `$run`, a
/// `fn(Boot) -> !`.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! entry {
    ($run:path) => {
        /// Called once by the PVH entry code, in long mode, on the boot stack.
        #[no_mangle]
        pub extern "C" fn guest_main(start_info_paddr: u64) -> ! {
            let run: fn($crate::Boot) -> ! = $run;
            run($crate::Boot::from_paddr(start_info_paddr))
        }
    };
}

#[cfg(target_os = "none")]
pub mod console {
    //! The console paths cairn emulates. Each takes whole lines; the core
    //! buffers guest output per domain and flushes it at `\n`.

    use core::arch::asm;
    use core::sync::atomic::{AtomicU8, Ordering};

    use crate::text::Line;

    const UART_DATA: u16 = 0x3f8;
    const UART_LINE_STATUS: u16 = 0x3fd;
    const LINE_STATUS_THR_EMPTY: u8 = 1 << 5;
    /// Polls of the line status before writing anyway: a UART that never says
    /// "empty" must not hang the guest.
    const UART_POLL_LIMIT: u32 = 100_000;
    const DEBUG_PORT: u16 = 0xe9;

    /// Where [`print`] sends lines.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u8)]
    pub enum Channel {
        /// The 16550 UART at 0x3F8 (two port accesses per byte).
        Uart = 0,
        /// The debug port 0xE9 (one port access per byte).
        DebugPort = 1,
        /// The Xen `console_io` hypercall (one hypercall per line); falls
        /// back to the UART when the hypercall fails.
        Hypercall = 2,
    }

    static DEFAULT_CHANNEL: AtomicU8 = AtomicU8::new(Channel::Uart as u8);

    /// Chooses the channel of [`print`].
    pub fn set_default(channel: Channel) {
        DEFAULT_CHANNEL.store(channel as u8, Ordering::Relaxed);
    }

    /// The channel of [`print`].
    pub fn default_channel() -> Channel {
        match DEFAULT_CHANNEL.load(Ordering::Relaxed) {
            1 => Channel::DebugPort,
            2 => Channel::Hypercall,
            _ => Channel::Uart,
        }
    }

    fn outb(port: u16, value: u8) {
        // SAFETY: a port write to one of the console devices; it touches no
        // memory of this program and the guest runs at CPL 0.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }

    fn inb(port: u16) -> u8 {
        let value: u8;
        // SAFETY: a read of the UART's line status register: no side effects
        // on memory, and the guest runs at CPL 0.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
        };
        value
    }

    /// Writes bytes to the UART, polling LSR.THRE before each one.
    pub fn uart_write(bytes: &[u8]) {
        for &byte in bytes {
            let mut polls = 0;
            while inb(UART_LINE_STATUS) & LINE_STATUS_THR_EMPTY == 0 && polls < UART_POLL_LIMIT {
                polls += 1;
                core::hint::spin_loop();
            }
            outb(UART_DATA, byte);
        }
    }

    /// Writes bytes to the debug port 0xE9.
    pub fn debug_port_write(bytes: &[u8]) {
        for &byte in bytes {
            outb(DEBUG_PORT, byte);
        }
    }

    /// Sends `line` (plus `\n`) on `channel`.
    pub fn write_line(channel: Channel, line: &mut Line) {
        let bytes = line.with_newline();
        match channel {
            Channel::Uart => uart_write(bytes),
            Channel::DebugPort => debug_port_write(bytes),
            Channel::Hypercall => {
                // A hypervisor without console_io still shows the line.
                if crate::hypercall::console_write(bytes) < 0 {
                    uart_write(bytes);
                }
            }
        }
    }

    /// Sends `line` (plus `\n`) on the default channel: the UART unless
    /// [`set_default`] chose another (see [`Boot::from_paddr`](crate::Boot::from_paddr)).
    pub fn print(line: &mut Line) {
        write_line(default_channel(), line);
    }

    /// Prints one piece of text as a line on the default channel.
    pub fn print_str(text: &str) {
        print(Line::new().push_str(text));
    }
}

#[cfg(target_os = "none")]
pub mod hypercall {
    //! Xen hypercalls through `vmmcall` (64-bit ABI: rax = number, rdi, rsi,
    //! rdx = arguments, rax = result). Numbers come from [`ipc::hypercall`].
    //! Without a hypervisor `vmmcall` raises #UD, which with the empty IDT
    //! triple-faults: on bare QEMU with `-no-reboot` that ends the run.

    use core::arch::asm;

    use ipc::hypercall::{ShutdownReason, CONSOLEIO_WRITE, CONSOLE_IO, SCHEDOP_SHUTDOWN, SCHED_OP};

    /// Issues hypercall `number` with three arguments.
    ///
    /// # Safety
    ///
    /// Pointer arguments must point at memory that the hypercall may read or
    /// write as Xen documents for `number`.
    pub unsafe fn call3(number: u64, argument1: u64, argument2: u64, argument3: u64) -> i64 {
        let result: u64;
        // SAFETY: the caller vouches for the pointer arguments; `vmmcall`
        // changes no other state of this program. Xen may clobber the
        // argument registers, so they are marked as clobbered.
        unsafe {
            asm!(
                "vmmcall",
                inout("rax") number => result,
                inout("rdi") argument1 => _,
                inout("rsi") argument2 => _,
                inout("rdx") argument3 => _,
                out("r10") _,
                out("r8") _,
                options(nostack),
            );
        }
        result as i64
    }

    /// `console_io(CONSOLEIO_write, len, buffer)`: the result is 0 (Xen) or
    /// another non-negative value on success, a negative Xen errno on failure.
    pub fn console_write(bytes: &[u8]) -> i64 {
        // SAFETY: the buffer is a live slice of exactly `bytes.len()` bytes,
        // which the hypervisor only reads.
        unsafe {
            call3(
                CONSOLE_IO,
                CONSOLEIO_WRITE,
                bytes.len() as u64,
                bytes.as_ptr() as u64,
            )
        }
    }

    /// `sched_op(SCHEDOP_shutdown, &sched_shutdown { reason })`. Should the
    /// hypercall return, halts forever with interrupts off.
    pub fn shutdown(reason: ShutdownReason) -> ! {
        let request: u32 = reason as u32; // struct sched_shutdown { uint32_t reason; }
                                          // SAFETY: the argument points at a live 4-byte `sched_shutdown` on
                                          // this stack, which the hypervisor only reads.
        unsafe { call3(SCHED_OP, SCHEDOP_SHUTDOWN, &raw const request as u64, 0) };
        loop {
            // SAFETY: stops this vCPU; nothing is left to do.
            unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }

    /// `memory_op(XENMEM_decrease_reservation, &xen_memory_reservation {
    /// extent_start: gfns, nr_extents, extent_order: 0, mem_flags: 0,
    /// domid: DOMID_SELF })`: gives the frames `gfns` back. Returns the
    /// number of frames released, or a negative Xen errno.
    pub fn decrease_reservation(gfns: &[u64]) -> i64 {
        let reservation = ipc::hypercall::MemoryReservation {
            extent_start: gfns.as_ptr() as u64,
            nr_extents: gfns.len() as u64,
            extent_order: 0,
            mem_flags: 0,
            domid: ipc::hypercall::DOMID_SELF,
        }
        .encode_64();
        // SAFETY: the argument points at a live 32-byte
        // `xen_memory_reservation` on this stack, whose `extent_start` is a
        // live array of `nr_extents` gfns; the hypervisor only reads both.
        unsafe {
            call3(
                ipc::hypercall::MEMORY_OP,
                ipc::hypercall::XENMEM_DECREASE_RESERVATION,
                reservation.as_ptr() as u64,
                0,
            )
        }
    }

    /// `vcpu_op(VCPUOP_initialise, index, &vcpu_hvm_context)` with a 64-bit
    /// start state: 0 or a negative Xen errno.
    pub fn vcpu_initialise(index: u8, context: &ipc::hypercall::HvmContext64) -> i64 {
        let raw = context.encode();
        // SAFETY: the argument points at a live 128-byte `vcpu_hvm_context`
        // on this stack, which the hypervisor only reads.
        unsafe {
            call3(
                ipc::hypercall::VCPU_OP,
                ipc::hypercall::VCPUOP_INITIALISE,
                u64::from(index),
                raw.as_ptr() as u64,
            )
        }
    }

    /// `vcpu_op(VCPUOP_up, index)`: 0 or a negative Xen errno.
    pub fn vcpu_up(index: u8) -> i64 {
        // SAFETY: no pointer arguments.
        unsafe { call3(ipc::hypercall::VCPU_OP, ipc::hypercall::VCPUOP_UP, u64::from(index), 0) }
    }

    /// `vcpu_op(VCPUOP_is_up, index)`: 1, 0 or a negative Xen errno.
    pub fn vcpu_is_up(index: u8) -> i64 {
        // SAFETY: no pointer arguments.
        unsafe { call3(ipc::hypercall::VCPU_OP, ipc::hypercall::VCPUOP_IS_UP, u64::from(index), 0) }
    }

    /// Powers the domain off: its work is done.
    pub fn poweroff() -> ! {
        shutdown(ShutdownReason::Poweroff)
    }

    /// Reports a crash: prints `line` (if any) and shuts down with
    /// `SHUTDOWN_crash`.
    pub fn crash(line: &str) -> ! {
        crate::console::print_str(line);
        shutdown(ShutdownReason::Crash)
    }

    /// Reports a crash with a built line: prints it and shuts down with
    /// `SHUTDOWN_crash`.
    pub fn crash_line(line: &mut crate::text::Line) -> ! {
        crate::console::print(line);
        shutdown(ShutdownReason::Crash)
    }

    /// Reports a failed check: prints `ERROR WHAT (VALUE)` (scenarios
    /// forbid `ERROR`) and shuts down with `SHUTDOWN_crash`.
    pub fn crash_error(what: &str, value: u64) -> ! {
        let mut line = crate::text::Line::new();
        line.push_str("ERROR ")
            .push_str(what)
            .push_str(" (")
            .push_decimal(value)
            .push_str(")");
        crash_line(&mut line)
    }
}

/// Xen's PV timer and scheduling calls: guest system time (ns, from the TSC
/// at the rate CPUID leaf `0x4000_0003` reports), `set_timer_op`, and
/// `sched_op` block, yield and poll.
#[cfg(target_os = "none")]
pub mod pv {
    use crate::hypercall::call3;
    use ipc::hypercall::{SCHEDOP_BLOCK, SCHEDOP_POLL, SCHEDOP_YIELD, SCHED_OP, SET_TIMER_OP};

    /// The TSC rate the hypervisor reports, kHz (0 if none).
    pub fn tsc_khz() -> u64 {
        // CPUID exits to the core: ask once (the rate never changes).
        static KHZ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
        let known = KHZ.load(core::sync::atomic::Ordering::Relaxed);
        if known != 0 {
            return known;
        }
        let khz = u64::from(core::arch::x86_64::__cpuid_count(ipc::hypercall::CPUID_XEN_TIME_LEAF, 0).ecx);
        KHZ.store(khz, core::sync::atomic::Ordering::Relaxed);
        khz
    }

    /// Guest system time, ns.
    pub fn now_ns() -> u64 {
        // SAFETY: RDTSC has no side effects.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        (u128::from(tsc) * 1_000_000 / u128::from(tsc_khz().max(1))) as u64
    }

    /// `set_timer_op(deadline)`: 0 cancels.
    pub fn set_timer(deadline_ns: u64) -> i64 {
        // SAFETY: no pointer arguments.
        unsafe { call3(SET_TIMER_OP, deadline_ns, 0, 0) }
    }

    /// `sched_op(SCHEDOP_block)`.
    pub fn block() -> i64 {
        // SAFETY: no pointer arguments.
        unsafe { call3(SCHED_OP, SCHEDOP_BLOCK, 0, 0) }
    }

    /// `sched_op(SCHEDOP_yield)`.
    pub fn yield_now() -> i64 {
        // SAFETY: no pointer arguments.
        unsafe { call3(SCHED_OP, SCHEDOP_YIELD, 0, 0) }
    }

    /// `sched_op(SCHEDOP_poll, &sched_poll { ports, nr_ports, timeout })`
    /// with the raw fields, so hostile values can be passed on purpose.
    pub fn poll_raw(ports: u64, count: u64, timeout_ns: u64) -> i64 {
        let request: [u64; 3] = [ports, count, timeout_ns];
        // SAFETY: the argument points at a live 24-byte `sched_poll` on the
        // stack; `ports` is only read by the hypervisor, through its own checks.
        unsafe { call3(SCHED_OP, SCHEDOP_POLL, &raw const request as u64, 0) }
    }

    /// Sleeps about `ns` with a timer and `SCHEDOP_block`.
    pub fn sleep_ns(ns: u64) -> i64 {
        set_timer(now_ns().saturating_add(ns));
        block()
    }
}

/// Reads CPUID leaf `leaf`'s vendor signature (EBX, ECX, EDX) as 12 bytes.
#[cfg(target_os = "none")]
pub fn cpuid_signature(leaf: u32) -> [u8; 12] {
    let result = core::arch::x86_64::__cpuid(leaf);
    signature::from_registers(result.ebx, result.ecx, result.edx)
}

/// Whether CPUID reports a Xen-compatible hypervisor (cairn or Xen).
#[cfg(target_os = "none")]
pub fn xen_hypervisor_present() -> bool {
    cpuid_signature(ipc::hypercall::CPUID_XEN_BASE) == *ipc::hypercall::CPUID_XEN_SIGNATURE
}

#[cfg(target_os = "none")]
mod boot {
    use ipc::pvh::{MemmapEntry, StartInfo, MEMMAP_ENTRY_SIZE, START_INFO_SIZE};

    use crate::console::{self, Channel};
    use crate::hypercall;
    use crate::memory::{self, RamSummary};
    use crate::text::Line;
    use crate::IDENTITY_MAP_END;

    /// Most memory map entries read.
    const MAX_MEMMAP_ENTRIES: usize = 128;
    /// Most command-line bytes read (cairn's limit is 255 plus the NUL).
    const MAX_CMDLINE_BYTES: usize = 1024;

    /// `len` bytes of guest-physical memory at `paddr`, if the identity map
    /// covers them (and `paddr` is not 0, which PVH uses for "none").
    fn physical_bytes(paddr: u64, len: usize) -> Option<&'static [u8]> {
        let end = paddr.checked_add(len as u64)?;
        if paddr == 0 || end > IDENTITY_MAP_END {
            return None;
        }
        // SAFETY: [paddr, end) lies in the identity map the entry code built,
        // so the addresses are mapped and the pointer is non-null. The range
        // holds boot data the loader wrote before entry (start info, memory
        // map, command line), outside this image, which nothing in the guest
        // writes: the shared borrow stays valid for the guest's life.
        Some(unsafe { core::slice::from_raw_parts(paddr as *const u8, len) })
    }

    /// The boot information the loader passed in `hvm_start_info`.
    #[derive(Debug, Clone, Copy)]
    pub struct Boot {
        start_info: StartInfo,
        start_info_paddr: u64,
        cmdline: &'static str,
    }

    impl Boot {
        /// Reads and checks the start info at `start_info_paddr`; a missing
        /// or malformed one ends the guest with a crash report. Then selects
        /// the console: `console=uart|debug|hypercall` on the command line,
        /// otherwise `console_io` when CPUID shows a Xen-compatible
        /// hypervisor (one exit per line instead of two per byte) and the
        /// UART on bare QEMU.
        pub fn from_paddr(start_info_paddr: u64) -> Self {
            let Some(start_info) =
                physical_bytes(start_info_paddr, START_INFO_SIZE).and_then(StartInfo::decode)
            else {
                let mut line = Line::new();
                line.push_str("guest: no PVH start info at ")
                    .push_hex(start_info_paddr);
                console::uart_write(line.with_newline());
                hypercall::shutdown(ipc::hypercall::ShutdownReason::Crash)
            };
            let cmdline = Self::read_cmdline(start_info.cmdline_paddr);
            let channel = match crate::cmdline::value(cmdline, "console") {
                Some("uart") => Channel::Uart,
                Some("debug") => Channel::DebugPort,
                Some("hypercall") => Channel::Hypercall,
                _ if crate::xen_hypervisor_present() => Channel::Hypercall,
                _ => Channel::Uart,
            };
            console::set_default(channel);
            Self {
                start_info,
                start_info_paddr,
                cmdline,
            }
        }

        fn read_cmdline(paddr: u64) -> &'static str {
            // Find the NUL byte by byte, so the read never runs past it into
            // memory that may not exist.
            let mut length = 0;
            while length < MAX_CMDLINE_BYTES {
                match physical_bytes(paddr + length as u64, 1) {
                    Some([0]) | None => break,
                    Some(_) => length += 1,
                }
            }
            physical_bytes(paddr, length)
                .map(crate::cmdline::from_bytes)
                .unwrap_or("")
        }

        /// The decoded start info.
        pub fn start_info(&self) -> &StartInfo {
            &self.start_info
        }

        /// Where the start info was.
        pub fn start_info_paddr(&self) -> u64 {
            self.start_info_paddr
        }

        /// The command line (empty if none).
        pub fn cmdline(&self) -> &'static str {
            self.cmdline
        }

        /// The memory map entries (none for a version-0 start info).
        pub fn memmap(&self) -> impl Iterator<Item = MemmapEntry> {
            let count = (self.start_info.memmap_entries as usize).min(MAX_MEMMAP_ENTRIES);
            let bytes = physical_bytes(self.start_info.memmap_paddr, count * MEMMAP_ENTRY_SIZE)
                .unwrap_or(&[]);
            bytes
                .chunks_exact(MEMMAP_ENTRY_SIZE)
                .filter_map(MemmapEntry::decode)
        }

        /// The modules (`hvm_modlist_entry`), at most 16, as byte slices.
        pub fn modules(&self) -> impl Iterator<Item = &'static [u8]> {
            let count = (self.start_info.nr_modules as usize).min(16);
            let list = physical_bytes(
                self.start_info.modlist_paddr,
                count * ipc::pvh::MODLIST_ENTRY_SIZE,
            )
            .unwrap_or(&[]);
            list.chunks_exact(ipc::pvh::MODLIST_ENTRY_SIZE)
                .filter_map(ipc::pvh::ModlistEntry::decode)
                .map(|module| physical_bytes(module.paddr, module.size as usize).unwrap_or(&[]))
        }

        /// Total RAM and where it ends, from the memory map.
        pub fn ram(&self) -> RamSummary {
            memory::summarize(self.memmap())
        }

        /// Up to `want_pages` of free RAM above this image, below every
        /// module and inside the identity map (the region memhog and balloon
        /// write); `None` if there is none.
        pub fn free_region(&self, want_pages: u64) -> Option<memory::Region> {
            let mut reserved = [(0u64, 0u64); 16];
            let mut count = 0;
            for module in self.modules() {
                let start = module.as_ptr() as u64;
                reserved[count] = (start, start + module.len() as u64);
                count += 1;
            }
            memory::free_region(
                self.memmap(),
                crate::physical::image_end(),
                &reserved[..count],
                want_pages,
                crate::IDENTITY_MAP_END,
            )
        }
    }
}

#[cfg(target_os = "none")]
pub use boot::Boot;

/// Prints `panic at FILE:LINE` and shuts down with `SHUTDOWN_crash`.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut line = text::Line::new();
    line.push_str("panic");
    if let Some(location) = info.location() {
        line.push_str(" at ")
            .push_str(location.file())
            .push_str(":")
            .push_decimal(u64::from(location.line()));
    }
    console::print(&mut line);
    hypercall::shutdown(ipc::hypercall::ShutdownReason::Crash)
}

/// Spins for `iterations` rounds of `dec; jnz` (two instructions each), so
/// the amount of work is the same in every build profile.
#[cfg(target_os = "none")]
pub fn busy_loop(iterations: u64) {
    if iterations == 0 {
        return;
    }
    // SAFETY: only counts a register down to zero; no memory, no stack.
    unsafe {
        core::arch::asm!(
            "2:",
            "dec {counter}",
            "jnz 2b",
            counter = inout(reg) iterations => _,
            options(nomem, nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use ipc::pvh::{MemmapEntry, MEMMAP_RAM, MEMMAP_RESERVED};

    use super::*;

    #[test]
    fn decimal_and_hex_formatting() {
        let mut decimal = [0; 20];
        assert_eq!(text::format_decimal(0, &mut decimal), b"0");
        assert_eq!(text::format_decimal(1_234_567, &mut decimal), b"1234567");
        assert_eq!(
            text::format_decimal(u64::MAX, &mut decimal),
            b"18446744073709551615"
        );
        let mut hex = [0; 16];
        assert_eq!(text::format_hex(0, &mut hex), b"0");
        assert_eq!(text::format_hex(0x1100000, &mut hex), b"1100000");
        assert_eq!(text::format_hex(u64::MAX, &mut hex), b"ffffffffffffffff");
    }

    #[test]
    fn line_builds_and_terminates() {
        let mut line = text::Line::new();
        line.push_str("memory: ")
            .push_decimal(16384)
            .push_str(" KiB at ")
            .push_hex(0xbeef);
        assert_eq!(line.as_bytes(), b"memory: 16384 KiB at 0xbeef");
        assert_eq!(line.with_newline(), b"memory: 16384 KiB at 0xbeef\n");
    }

    #[test]
    fn line_replaces_control_characters_and_truncates() {
        let mut line = text::Line::new();
        line.push_bytes(b"a\nb\x1b");
        assert_eq!(line.as_bytes(), b"a?b?");

        let mut long = text::Line::new();
        for _ in 0..100 {
            long.push_str("0123456789");
        }
        assert_eq!(long.as_bytes().len(), text::LINE_CAPACITY - 1);
        let terminated = long.with_newline();
        assert_eq!(terminated.len(), text::LINE_CAPACITY);
        assert_eq!(terminated.last(), Some(&b'\n'));
    }

    #[test]
    fn cmdline_values() {
        let line = "  iterations=3 label=fast  quiet label=slow x=";
        assert_eq!(cmdline::value(line, "iterations"), Some("3"));
        assert_eq!(cmdline::value(line, "label"), Some("slow"), "last one wins");
        assert_eq!(cmdline::value(line, "quiet"), Some(""));
        assert_eq!(cmdline::value(line, "x"), Some(""));
        assert_eq!(cmdline::value(line, "iter"), None);
        assert_eq!(cmdline::value("", "iterations"), None);
        assert_eq!(cmdline::value("a=b=c", "a"), Some("b=c"));
    }

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(cmdline::parse_u64("0"), Some(0));
        assert_eq!(cmdline::parse_u64("42"), Some(42));
        assert_eq!(cmdline::parse_u64("0x1F"), Some(31));
        assert_eq!(cmdline::parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(cmdline::parse_u64("18446744073709551616"), None);
        assert_eq!(cmdline::parse_u64("0x"), None);
        assert_eq!(cmdline::parse_u64(""), None);
        assert_eq!(cmdline::parse_u64("-1"), None);
        assert_eq!(cmdline::parse_u64("12k"), None);
    }

    #[test]
    fn cmdline_bytes_stop_at_nul_and_bad_utf8() {
        assert_eq!(
            cmdline::from_bytes(b"iterations=3\0garbage"),
            "iterations=3"
        );
        assert_eq!(cmdline::from_bytes(b"no terminator"), "no terminator");
        assert_eq!(cmdline::from_bytes(b"ok\xff\xfe\0"), "ok");
        assert_eq!(cmdline::from_bytes(b"\0"), "");
    }

    #[test]
    fn ram_summary_counts_only_ram() {
        let map = [
            MemmapEntry {
                addr: 0,
                size: 0x9fc00,
                kind: MEMMAP_RAM,
            },
            MemmapEntry {
                addr: 0x9fc00,
                size: 0x400,
                kind: MEMMAP_RESERVED,
            },
            MemmapEntry {
                addr: 0x100000,
                size: 0xf00000,
                kind: MEMMAP_RAM,
            },
            MemmapEntry {
                addr: 0xfeffc000,
                size: 0x4000,
                kind: MEMMAP_RESERVED,
            },
        ];
        let summary = memory::summarize(map);
        assert_eq!(summary.total_bytes, 0x9fc00 + 0xf00000);
        assert_eq!(summary.end, 0x1000000);
        assert_eq!(memory::summarize([]), memory::RamSummary::default());
    }

    #[test]
    fn ram_summary_saturates_on_hostile_maps() {
        let map = [
            MemmapEntry {
                addr: u64::MAX - 1,
                size: 16,
                kind: MEMMAP_RAM,
            },
            MemmapEntry {
                addr: 0,
                size: u64::MAX,
                kind: MEMMAP_RAM,
            },
        ];
        let summary = memory::summarize(map);
        assert_eq!(summary.total_bytes, u64::MAX);
        assert_eq!(summary.end, u64::MAX);
    }

    #[test]
    fn address_beyond_ram() {
        let mib = 1 << 20;
        assert_eq!(
            memory::beyond_ram(16 * mib, mib, IDENTITY_MAP_END),
            Some(17 * mib)
        );
        assert_eq!(
            memory::beyond_ram(16 * mib + 3, 0, IDENTITY_MAP_END),
            Some(16 * mib + 8)
        );
        assert_eq!(
            memory::beyond_ram(IDENTITY_MAP_END - mib, mib, IDENTITY_MAP_END),
            None
        );
        assert_eq!(
            memory::beyond_ram(IDENTITY_MAP_END - 2 * mib, mib, IDENTITY_MAP_END),
            Some(IDENTITY_MAP_END - mib)
        );
        assert_eq!(memory::beyond_ram(u64::MAX, mib, u64::MAX), None);
    }

    fn ram(addr: u64, size: u64) -> MemmapEntry {
        MemmapEntry {
            addr,
            size,
            kind: MEMMAP_RAM,
        }
    }

    #[test]
    fn free_region_lies_above_the_image_and_below_modules() {
        use memory::{free_region, Region};
        let mib = 1 << 20;
        let map = [ram(0, 16 * mib)];
        // 0x123456 rounds up to 0x124000; 16 MiB - 0x124000 = 3804 pages.
        let all = free_region(map, 0x12_3456, &[], u64::MAX, IDENTITY_MAP_END).unwrap();
        assert_eq!(
            all,
            Region {
                start: 0x12_4000,
                pages: 3804
            }
        );
        assert_eq!(all.end(), 16 * mib);
        assert_eq!(all.gfn(2), 0x126);
        let wanted = free_region(map, 0x12_4000, &[], 3072, IDENTITY_MAP_END).unwrap();
        assert_eq!(
            wanted,
            Region {
                start: 0x12_4000,
                pages: 3072
            }
        );
        // A module at the top of RAM ends the region; one over the start moves it.
        let module = [(15 * mib + 0x800, 16 * mib)];
        let below = free_region(map, 0x12_4000, &module, u64::MAX, IDENTITY_MAP_END).unwrap();
        assert_eq!(below.end(), 15 * mib);
        let over = [(0x12_0000, 0x20_0001)];
        let moved = free_region(map, 0x12_4000, &over, u64::MAX, IDENTITY_MAP_END).unwrap();
        assert_eq!(moved.start, 0x20_1000);
        // The RAM entry holding the image counts, capped at the limit.
        let split = [ram(0, 0x9_f000), ram(0x10_0000, 4 * mib)];
        assert_eq!(
            free_region(split, 0x10_8000, &[], u64::MAX, 3 * mib)
                .unwrap()
                .end(),
            3 * mib
        );
        assert_eq!(free_region(map, 16 * mib, &[], 1, IDENTITY_MAP_END), None);
        assert_eq!(free_region(map, 0x1000, &[], 0, IDENTITY_MAP_END), None);
        assert_eq!(free_region([], 0x1000, &[], 1, IDENTITY_MAP_END), None);
        assert_eq!(free_region(map, u64::MAX, &[], 1, u64::MAX), None);
    }

    #[test]
    fn a_filled_page_checks_out_and_is_never_zero() {
        let mut page = [0u64; pattern::WORDS];
        pattern::fill(&mut page, 0x312, 1, 7);
        assert_eq!(pattern::check(&page, 0x312, 1, 7), None);
        assert!(page.iter().all(|&word| word != 0));
        assert_eq!(
            page[pattern::CHECKSUM_INDEX],
            pattern::checksum(page[..pattern::CHECKSUM_INDEX].iter().copied())
        );
        assert!(pattern::check_zero(&page).is_some());
        assert_eq!(pattern::check_zero(&[0u64; pattern::WORDS]), None);
    }

    #[test]
    fn swapped_stale_zeroed_and_torn_pages_are_caught() {
        let (gfn, seed) = (0x400, 99);
        let mut page = [0u64; pattern::WORDS];

        // Swapped: another frame's contents, whole and self-consistent.
        pattern::fill(&mut page, gfn + 1, 2, seed);
        let swapped = pattern::check(&page, gfn, 2, seed).unwrap();
        assert_eq!(swapped.offset, 0);
        assert!(swapped.self_consistent);

        // Stale: the previous pass's contents.
        pattern::fill(&mut page, gfn, 1, seed);
        let stale = pattern::check(&page, gfn, 2, seed).unwrap();
        assert!(stale.self_consistent);
        assert_eq!(stale.found, page[0]);

        // Another seed (another run) differs too.
        assert!(pattern::check(&page, gfn, 1, seed + 1).is_some());

        // Zeroed.
        let zero = pattern::check(&[0u64; pattern::WORDS], gfn, 2, seed).unwrap();
        assert_eq!((zero.offset, zero.found), (0, 0));
        assert!(!zero.self_consistent);

        // Torn: one byte of one word.
        pattern::fill(&mut page, gfn, 2, seed);
        page[300] ^= 0xff << 40;
        let torn = pattern::check(&page, gfn, 2, seed).unwrap();
        assert_eq!(torn.offset, 300 * 8);
        assert_eq!(torn.expected ^ torn.found, 0xff << 40);
        assert!(!torn.self_consistent);

        // Only the checksum word damaged.
        pattern::fill(&mut page, gfn, 2, seed);
        page[pattern::CHECKSUM_INDEX] ^= 1;
        let sum = pattern::check(&page, gfn, 2, seed).unwrap();
        assert_eq!(sum.offset, 0xff8);
        assert!(!sum.self_consistent);
    }

    #[test]
    fn page_contents_differ_across_gfns_and_passes() {
        let mut seen = std::collections::HashSet::new();
        for gfn in 0..64 {
            for pass in 1..4 {
                assert!(
                    seen.insert(pattern::base(gfn, pass, 5)),
                    "gfn {gfn} pass {pass}"
                );
            }
        }
    }

    #[test]
    fn memhog_settings() {
        let defaults = memhog::Settings::parse("");
        assert_eq!(
            defaults,
            memhog::Settings {
                mib: memhog::DEFAULT_MIB,
                passes: memhog::DEFAULT_PASSES,
                progress_mib: memhog::DEFAULT_PROGRESS_MIB,
                seed: memhog::DEFAULT_SEED,
                settle_ms: 0,
            }
        );
        let custom = memhog::Settings::parse("memhog_mib=12 passes=3 progress_mib=2 seed=0x10 settle_ms=250");
        assert_eq!(
            custom,
            memhog::Settings {
                mib: 12,
                passes: 3,
                progress_mib: 2,
                seed: 16,
                settle_ms: 250,
            }
        );
        assert_eq!(memhog::Settings::parse("memhog_mib=0 passes=x"), defaults);
    }

    #[test]
    fn balloon_settings_and_the_dropped_set() {
        let defaults = balloon::Settings::parse("");
        assert_eq!(defaults.pages, balloon::DEFAULT_PAGES);
        assert_eq!(defaults.drop_every, balloon::DEFAULT_DROP_EVERY);
        let dropped = (0..512).filter(|&index| defaults.dropped(index)).count();
        assert_eq!(dropped, 256);
        let all = balloon::Settings::parse("balloon_pages=4096 drop_every=1");
        let dropped = (0..all.pages).filter(|&index| all.dropped(index)).count();
        assert_eq!(
            dropped,
            balloon::MAX_DROPPED,
            "capped at one hypercall's list"
        );
        assert_eq!(
            balloon::Settings::parse("drop_every=0").drop_every,
            balloon::DEFAULT_DROP_EVERY
        );
    }

    #[test]
    fn bad_pages_are_classified_and_reported() {
        let (gfn, seed) = (0x500, 3);
        let mut page = [0u64; pattern::WORDS];
        let zero = pattern::check(&page, gfn, 2, seed).unwrap();
        assert_eq!(pattern::classify(&page, gfn, 2, seed, &zero), "zeroed page");
        pattern::fill(&mut page, gfn, 1, seed);
        let stale = pattern::check(&page, gfn, 2, seed).unwrap();
        assert_eq!(
            pattern::classify(&page, gfn, 2, seed, &stale),
            "stale page from the previous pass"
        );
        pattern::fill(&mut page, gfn + 9, 2, seed);
        let elsewhere = pattern::check(&page, gfn, 2, seed).unwrap();
        assert_eq!(
            pattern::classify(&page, gfn, 2, seed, &elsewhere),
            "whole page from elsewhere"
        );
        pattern::fill(&mut page, gfn, 2, seed);
        page[7] = 1;
        let torn = pattern::check(&page, gfn, 2, seed).unwrap();
        assert_eq!(pattern::classify(&page, gfn, 2, seed, &torn), "corrupt page");
        let mut line = pattern::bad_line("vCPU 1: ", &page, gfn, 2, seed, &torn);
        let expected = format!(
            "vCPU 1: BAD gfn 0x500 offset 0x38 expected {:#x} found 0x1 (pass 2, corrupt page)",
            torn.expected
        );
        assert_eq!(line.as_bytes(), expected.as_bytes());
        assert_eq!(line.with_newline().last(), Some(&b'\n'));
    }

    #[test]
    fn smpspin_settings() {
        let defaults = smpspin::Settings::parse("");
        assert_eq!(
            defaults,
            smpspin::Settings {
                vcpus: 2,
                spin_ms: 3000,
                wait_ms: smpspin::DEFAULT_WAIT_MS
            }
        );
        let custom = smpspin::Settings::parse("vcpus=4 spin_ms=500 wait_ms=0x10");
        assert_eq!((custom.vcpus, custom.spin_ms, custom.wait_ms), (4, 500, 16));
        assert_eq!(smpspin::Settings::parse("vcpus=0 spin_ms=x"), defaults);
        assert_eq!(smpspin::Settings::parse("vcpus=255").vcpus, 8, "capped");
        assert_eq!(smpspin::Settings::parse("vcpus=99999999999999999999").vcpus, 2, "malformed");
        assert_eq!(smp::vcpus(1), 1);
        assert_eq!(smp::vcpus(u64::MAX), 8);
    }

    #[test]
    fn smpmem_settings_and_layout() {
        let defaults = smpmem::Settings::parse("");
        assert_eq!(
            (defaults.vcpus, defaults.private_mib, defaults.shared_mib, defaults.passes),
            (2, 4, 4, 2)
        );
        assert_eq!(defaults.seed, smpmem::DEFAULT_SEED);
        let layout = defaults.layout();
        assert_eq!(
            layout,
            smpmem::Layout {
                vcpus: 2,
                private_pages: 1024,
                shared_pages: 1023
            }
        );
        assert_eq!(layout.total_pages(), 3072, "12 MiB, like memhog");
        assert_eq!(layout.private_page(0, 0), 0);
        assert_eq!(layout.private_page(1, 5), 1029);
        assert_eq!(layout.tally_page(), 2048);
        assert_eq!(layout.shared_page(0), 2049);
        assert_eq!(layout.shared_page(1022), 3071, "the last page of the region");
        assert_eq!((layout.owned_shared_pages(0), layout.owned_shared_pages(1)), (512, 511));
        let custom = smpmem::Settings::parse(
            "vcpus=3 private_mib=1 shared_mib=2 passes=5 seed=7 settle_ms=100 wait_ms=9",
        );
        assert_eq!(
            custom,
            smpmem::Settings {
                vcpus: 3,
                private_mib: 1,
                shared_mib: 2,
                passes: 5,
                seed: 7,
                settle_ms: 100,
                wait_ms: 9
            }
        );
        assert_eq!(smpmem::Settings::parse("vcpus=12").vcpus, 8);
    }

    #[test]
    fn smpmem_owners_cover_the_shared_pages_and_the_tally_adds_up() {
        for (vcpus, shared_pages) in [(1, 1), (2, 1023), (3, 1100), (8, 5), (8, 4095)] {
            let layout = smpmem::Layout {
                vcpus,
                private_pages: 3,
                shared_pages,
            };
            // What the vCPUs do: vCPU v writes shared pages v, v + vcpus, …
            // and adds 1 to tally word `step % TALLY_WORDS` after each.
            let mut written = vec![0u32; shared_pages as usize];
            let mut tally = [0u64; smpmem::TALLY_WORDS];
            for vcpu in 0..vcpus {
                for step in 0..layout.owned_shared_pages(vcpu) {
                    let index = vcpu + step * vcpus;
                    assert_eq!(layout.shared_owner(index), vcpu);
                    written[index as usize] += 1;
                    tally[step as usize % smpmem::TALLY_WORDS] += 1;
                }
            }
            assert!(written.iter().all(|&count| count == 1), "every page once ({vcpus}, {shared_pages})");
            for (word, &count) in tally.iter().enumerate() {
                assert_eq!(layout.expected_tally(word, 1), count, "word {word}");
                assert_eq!(layout.expected_tally(word, 3), 3 * count);
            }
            let total: u64 = (0..smpmem::TALLY_WORDS).map(|word| layout.expected_tally(word, 1)).sum();
            assert_eq!(total, shared_pages);
        }
    }

    #[test]
    fn secondary_start_context() {
        let context = smp::start_context(3, 0x10_2000, 0x10_3000, 0x20_4000, [0x8000_0011, 0x11_2000, 0x20, 0x500]);
        assert_eq!(
            context,
            ipc::hypercall::HvmContext64 {
                rdi: 3,
                rsi: 0x10_3000,
                rsp: 0x20_4000,
                rip: 0x10_2000,
                rflags: 0x2,
                cr0: 0x8000_0011,
                cr3: 0x11_2000,
                cr4: 0x20,
                efer: 0x500,
                ..Default::default()
            }
        );
        let raw = context.encode();
        assert_eq!(ipc::hypercall::HvmContext64::mode(&raw), Some(ipc::hypercall::VCPU_HVM_MODE_64B));
    }

    #[test]
    fn barrier_holds_every_party_until_the_last_arrives() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        const PARTIES: u32 = 4;
        const ROUNDS: u64 = 200;
        let barrier = Arc::new(smp::Barrier::new());
        let arrived = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..PARTIES)
            .map(|_| {
                let (barrier, arrived) = (barrier.clone(), arrived.clone());
                std::thread::spawn(move || {
                    for round in 1..=ROUNDS {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        assert!(barrier.wait(PARTIES, || {
                            std::thread::yield_now();
                            true
                        }));
                        // Nobody passes before all arrived for this round.
                        assert!(arrived.load(Ordering::SeqCst) >= round * u64::from(PARTIES));
                        assert!(barrier.wait(PARTIES, || {
                            std::thread::yield_now();
                            true
                        }));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // Alone, a party gives up when told to.
        let lonely = smp::Barrier::new();
        let mut polls = 0;
        assert!(!lonely.wait(2, || {
            polls += 1;
            polls < 10
        }));
        assert_eq!(polls, 10);
        assert!(smp::Barrier::new().wait(1, || unreachable!()), "one party never waits");
    }

    #[test]
    fn signatures_decode() {
        let [ebx, ecx, edx] =
            ipc::hypercall::signature_registers(ipc::hypercall::CPUID_XEN_SIGNATURE);
        let bytes = signature::from_registers(ebx, ecx, edx);
        assert_eq!(&bytes, ipc::hypercall::CPUID_XEN_SIGNATURE);
        assert_eq!(signature::as_text(&bytes), Some("XenVMMXenVMM"));
        assert_eq!(signature::as_text(&[0; 12]), None);
        assert_eq!(signature::as_text(b"Xen VMM Xen "), None);
    }

    #[test]
    fn spinner_settings() {
        let defaults = spinner::Settings::parse("");
        assert_eq!(
            defaults,
            spinner::Settings {
                iterations: 0,
                label: "",
                work: spinner::DEFAULT_WORK
            }
        );
        let custom = spinner::Settings::parse("iterations=3 label=left work=0x10");
        assert_eq!(
            custom,
            spinner::Settings {
                iterations: 3,
                label: "left",
                work: 16
            }
        );
        let odd = spinner::Settings::parse("iterations=three label= work=0");
        assert_eq!(odd, defaults, "malformed values keep their defaults");
        let long = spinner::Settings::parse("label=abcdefghijklmnopqrstuvwxyz0123456789");
        assert_eq!(long.label.len(), spinner::MAX_LABEL_LEN);
    }

    #[test]
    fn smpipi_settings() {
        let defaults = smpipi::Settings::parse("");
        assert_eq!(
            defaults,
            smpipi::Settings {
                ipis: smpipi::DEFAULT_IPIS,
                settle_us: smpipi::DEFAULT_SETTLE_US,
                timeout_ms: smpipi::DEFAULT_TIMEOUT_MS,
                wait_ms: smpipi::DEFAULT_WAIT_MS,
            }
        );
        let custom = smpipi::Settings::parse("ipis=50 settle_us=10 timeout_ms=0x10 wait_ms=7");
        assert_eq!(
            custom,
            smpipi::Settings {
                ipis: 50,
                settle_us: 10,
                timeout_ms: 16,
                wait_ms: 7,
            }
        );
        assert_eq!(smpipi::Settings::parse("ipis=0 settle_us=x"), defaults);
        assert_eq!(
            smpipi::Settings::parse("ipis=99999999").ipis,
            smpipi::MAX_IPIS
        );
    }

    #[test]
    fn latency_summary_uses_nearest_ranks() {
        assert_eq!(latency::summarize(&mut []), None);
        assert_eq!(
            latency::summarize(&mut [7]),
            Some(latency::Summary {
                count: 1,
                min: 7,
                median: 7,
                p99: 7,
                max: 7
            })
        );
        // 1..=1000 shuffled: the median is the 500th value, p99 the 990th.
        let mut samples: [u64; 1000] =
            core::array::from_fn(|index| (index as u64 * 7919) % 1000 + 1);
        let summary = latency::summarize(&mut samples).unwrap();
        assert_eq!(
            summary,
            latency::Summary {
                count: 1000,
                min: 1,
                median: 500,
                p99: 990,
                max: 1000
            }
        );
        assert!(
            samples.windows(2).all(|pair| pair[0] <= pair[1]),
            "sorted in place"
        );
        assert_eq!(latency::percentile(&[1, 2, 3, 4], 500), 2);
        assert_eq!(latency::percentile(&[1, 2, 3, 4], 990), 4);
        assert_eq!(latency::percentile(&[1, 2, 3, 4], 0), 1);
        assert_eq!(summary.map(|value| value * 2).median, 1000);
        assert_eq!(summary.map(|value| value * 2).count, 1000);
    }

    #[test]
    fn idt_gates_and_icr_values() {
        // Linux's `pack_gate` for an interrupt gate at 0xffff_8000_1234_5678.
        let [low, high] = idt::gate(0xffff_8000_1234_5678);
        assert_eq!(low, 0x1234_8e00_0008_5678);
        assert_eq!(high, 0xffff_8000);
        assert_eq!(xapic::icr_fixed(0x40), 0x4040);
        assert_eq!(xapic::icr_destination(1), 0x0100_0000);
    }
}

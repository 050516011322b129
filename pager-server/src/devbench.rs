//! The swap device's own read rate, measured by the pager before paging
//! starts (`make bench`, issue #5 §7): how fast can the device serve reads
//! at all, next to how fast the paging path pages in?
//!
//! Only when asked (the server argument [`ARGUMENT`], in generation 1: a
//! restarted instance never delays the vCPUs waiting for it). The engine
//! runs the [`CASES`] one after the other once the swap layout is ready and
//! before it sends any `Partition`, so no paging I/O shares the queue. Each
//! case reads data slots of the swap device (never writes anything) in
//! short bursts: a burst keeps `depth` requests of `pages` blocks in flight
//! until `burst` of them completed, spinning on the used ring (no syscall
//! but the one `QueueNotify` per submission round), and is timed with the
//! clock read before and after it. Between bursts the pager waits (a switch
//! point: guests and the core run), so a burst stays well under a
//! scheduling tick and the pause is not counted. The rate of a case is its
//! reads over the sum of its bursts' times.
//!
//! What the rate includes: building the descriptors, the notify syscall
//! (the core's DMA guard walks the new chains), the device's work, and the
//! spin that sees the used ring move. What it leaves out: everything the
//! paging path adds around a read (the fault, the messages between the core
//! and the pager, the pager's poll interval and turns, the checksum, the
//! copy into the guest frame).
//!
//! Last, a case without the device: the CRC-32C of a 4 KiB block, the
//! check every page-in makes before the core loads the page
//! ([`crate::disk::verify_page`]), timed in bursts the same way.
//!
//! With the core's 4 KiB copy rate (`copy_4k_per_s`) the two give what any
//! verified page-in over this device could reach at best (`make bench`,
//! `page_in_bound_over_copy_ratio`): no page comes in faster than the
//! device reads it, at its best request size and depth, and each one takes
//! the pCPU a checksum and a copy.
//!
//! The result is one log line the bench parses (`xtask/src/bench.rs`,
//! `device_read_figures`), short enough for the core's 160-byte console
//! lines:
//!
//! ```text
//! pager: device: 4k qd1: 18000/s, qd16: 41000/s; 64k qd1: 9000/s, qd3: 12000/s; 128k qd1: 8000/s; crc32c 4k: 90000/s
//! ```

use components::LogLine;

/// The server argument that asks for the measurement.
pub const ARGUMENT: &str = "device-bench";

/// One measured case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Blocks (4 KiB) per request.
    pub pages: u16,
    /// Requests in flight at once.
    pub depth: usize,
    /// Requests completed in all.
    pub reads: u32,
    /// Requests completed per timed burst.
    pub burst: u32,
}

/// The cases, in order: 4 KiB reads one at a time and 16 at a time, 64 KiB
/// reads one at a time and 3 at a time, 128 KiB reads one at a time (the
/// larger ones use 48 and 32 of the pager's 62 DMA buffers).
pub const CASES: [Case; 5] = [
    Case {
        pages: 1,
        depth: 1,
        reads: 512,
        burst: 8,
    },
    Case {
        pages: 1,
        depth: 16,
        reads: 2048,
        burst: 128,
    },
    Case {
        pages: 16,
        depth: 1,
        reads: 256,
        burst: 4,
    },
    Case {
        pages: 16,
        depth: 3,
        reads: 384,
        burst: 12,
    },
    Case {
        pages: 32,
        depth: 1,
        reads: 128,
        burst: 2,
    },
];

/// Checksums of a 4 KiB block the last case times in all ...
pub const CHECKSUMS: u32 = 256;
/// ... and per burst (under QEMU TCG some 10 us each).
pub const CHECKSUM_BURST: u32 = 16;

/// Polls of the used ring without a completion after which a burst gives
/// up: the device is not answering (the engine's I/O timeout then deals
/// with the request, as with any other).
pub const SPIN_LIMIT: u64 = 50_000_000;

/// The first device block to read for request `index` of `case`, in a data
/// area of `slots` blocks starting at `first`: consecutive requests read
/// consecutive, non-overlapping extents, wrapping around the area. `None`
/// if the area is smaller than one request.
pub fn block_for(case: &Case, index: u32, first: u64, slots: u64) -> Option<u64> {
    let pages = u64::from(case.pages.max(1));
    let extents = slots / pages;
    if extents == 0 {
        return None;
    }
    Some(first + (u64::from(index) % extents) * pages)
}

/// Progress and results of the measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBench {
    case: usize,
    done: u32,
    elapsed_ns: u64,
    rates: [Option<u64>; CASES.len()],
    checksums_done: u32,
    checksums_ns: u64,
    checksum_rate: Option<u64>,
    failed: Option<&'static str>,
}

impl Default for DeviceBench {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceBench {
    /// Nothing measured yet.
    pub const fn new() -> Self {
        Self {
            case: 0,
            done: 0,
            elapsed_ns: 0,
            rates: [None; CASES.len()],
            checksums_done: 0,
            checksums_ns: 0,
            checksum_rate: None,
            failed: None,
        }
    }

    /// The case to measure next, or `None` when every case is done (or the
    /// measurement failed).
    pub fn case(&self) -> Option<Case> {
        if self.failed.is_some() {
            return None;
        }
        CASES.get(self.case).copied()
    }

    /// Index (over every case) of the next request of the current case.
    pub fn next_index(&self) -> u32 {
        self.done
    }

    /// Requests to complete in the next burst.
    pub fn burst_len(&self) -> u32 {
        self.case()
            .map_or(0, |case| case.burst.min(case.reads - self.done))
    }

    /// Records a burst of `reads` completions that took `elapsed_ns`; moves
    /// to the next case when this one has all its reads.
    pub fn record(&mut self, reads: u32, elapsed_ns: u64) {
        let Some(case) = self.case() else { return };
        self.done += reads;
        self.elapsed_ns = self.elapsed_ns.saturating_add(elapsed_ns);
        if self.done >= case.reads {
            self.rates[self.case] = Some(rate(u64::from(self.done), self.elapsed_ns));
            self.case += 1;
            self.done = 0;
            self.elapsed_ns = 0;
        }
    }

    /// Checksums to time in the next burst: none until every read case is
    /// done, and none once all are.
    pub fn checksum_burst_len(&self) -> u32 {
        if self.failed.is_some() || self.case().is_some() {
            return 0;
        }
        CHECKSUM_BURST.min(CHECKSUMS - self.checksums_done.min(CHECKSUMS))
    }

    /// Records a burst of `count` checksums that took `elapsed_ns`.
    pub fn record_checksums(&mut self, count: u32, elapsed_ns: u64) {
        self.checksums_done = self.checksums_done.saturating_add(count);
        self.checksums_ns = self.checksums_ns.saturating_add(elapsed_ns);
        if self.checksums_done >= CHECKSUMS {
            self.checksum_rate = Some(rate(u64::from(self.checksums_done), self.checksums_ns));
        }
    }

    /// Checksums of a 4 KiB block per second, once measured.
    pub fn checksum_rate(&self) -> Option<u64> {
        self.checksum_rate
    }

    /// Stops the measurement: `reason` is logged instead of the rates.
    pub fn fail(&mut self, reason: &'static str) {
        self.failed = Some(reason);
    }

    /// Whether there is nothing left to measure.
    pub fn finished(&self) -> bool {
        self.case().is_none() && self.checksum_burst_len() == 0
    }

    /// Requests per second of each case, `None` where not measured.
    pub fn rates(&self) -> [Option<u64>; CASES.len()] {
        self.rates
    }

    /// The result line (see the module doc).
    pub fn line(&self) -> LogLine {
        let mut text = LogLine::new();
        if let Some(reason) = self.failed {
            text.push_str("pager: device: measurement abandoned: ")
                .push_str(reason);
            return text;
        }
        let rate = |text: &mut LogLine, value: Option<u64>| {
            match value {
                Some(value) => text.push_decimal(value).push_str("/s"),
                None => text.push_str("-"),
            };
        };
        text.push_str("pager: device: ");
        let mut size = 0;
        for (case, value) in CASES.iter().zip(self.rates) {
            if case.pages != size {
                if size != 0 {
                    text.push_str("; ");
                }
                size = case.pages;
                text.push_decimal(u64::from(size) * 4).push_str("k ");
            } else {
                text.push_str(", ");
            }
            text.push_str("qd").push_decimal(case.depth as u64).push_str(": ");
            rate(&mut text, value);
        }
        text.push_str("; crc32c 4k: ");
        rate(&mut text, self.checksum_rate);
        text
    }
}

/// `count` events in `elapsed_ns`, per second (0 for no time).
fn rate(count: u64, elapsed_ns: u64) -> u64 {
    if elapsed_ns == 0 {
        return 0;
    }
    (u128::from(count) * 1_000_000_000 / u128::from(elapsed_ns)) as u64
}

/// Whether the server arguments ask for the measurement.
pub fn requested(arguments: &str) -> bool {
    arguments.split_whitespace().any(|word| word == ARGUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_measured_in_order_over_their_bursts() {
        let mut bench = DeviceBench::new();
        assert_eq!(bench.case(), Some(CASES[0]));
        assert_eq!(bench.burst_len(), 8);
        // 512 reads in 64 bursts of 8, 400 µs each: 20 000 reads/s.
        for burst in 0..64 {
            assert_eq!(bench.next_index(), burst * 8);
            bench.record(8, 400_000);
        }
        assert_eq!(bench.case(), Some(CASES[1]));
        assert_eq!(bench.next_index(), 0);
        for _ in 0..16 {
            bench.record(128, 1_000_000);
        }
        assert_eq!(bench.case(), Some(CASES[2]));
        for _ in 0..64 {
            bench.record(4, 1_000_000);
        }
        assert_eq!(bench.case(), Some(CASES[3]));
        assert_eq!(bench.checksum_burst_len(), 0, "checksums come after every read case");
        for _ in 0..32 {
            bench.record(12, 2_000_000);
        }
        assert_eq!(bench.case(), Some(CASES[4]));
        for _ in 0..64 {
            bench.record(2, 1_000_000);
        }
        assert_eq!(bench.case(), None);
        assert!(!bench.finished(), "the checksums are still to time");
        assert_eq!(bench.checksum_burst_len(), 16);
        for _ in 0..15 {
            bench.record_checksums(16, 200_000);
        }
        assert_eq!(bench.checksum_rate(), None);
        bench.record_checksums(16, 200_000);
        assert!(bench.finished());
        assert_eq!(bench.checksum_burst_len(), 0);
        assert_eq!(bench.checksum_rate(), Some(80_000));
        assert_eq!(bench.rates(), [Some(20_000), Some(128_000), Some(4_000), Some(6_000), Some(2_000)]);
        assert_eq!(
            bench.line().as_str(),
            "pager: device: 4k qd1: 20000/s, qd16: 128000/s; 64k qd1: 4000/s, qd3: 6000/s; \
             128k qd1: 2000/s; crc32c 4k: 80000/s"
        );
    }

    #[test]
    fn the_last_burst_is_cut_to_the_reads_left() {
        let mut bench = DeviceBench::new();
        bench.record(508, 1);
        assert_eq!(bench.burst_len(), 4);
    }

    #[test]
    fn a_failed_measurement_says_why_and_keeps_what_it_had() {
        let mut bench = DeviceBench::new();
        for _ in 0..64 {
            bench.record(8, 100_000);
        }
        bench.fail("a read did not complete");
        assert!(bench.finished());
        assert_eq!(bench.rates()[0], Some(80_000));
        assert_eq!(
            bench.line().as_str(),
            "pager: device: measurement abandoned: a read did not complete"
        );
    }

    #[test]
    fn requests_read_consecutive_extents_of_the_data_area_and_wrap() {
        let small = CASES[0];
        let large = CASES[2];
        assert_eq!(block_for(&small, 0, 10, 100), Some(10));
        assert_eq!(block_for(&small, 99, 10, 100), Some(109));
        assert_eq!(block_for(&small, 100, 10, 100), Some(10));
        assert_eq!(block_for(&large, 1, 10, 100), Some(26));
        // 6 whole extents of 16 in 100 slots: the 7th wraps to the first.
        assert_eq!(block_for(&large, 5, 10, 100), Some(90));
        assert_eq!(block_for(&large, 6, 10, 100), Some(10));
        assert_eq!(block_for(&large, 0, 10, 15), None);
    }

    #[test]
    fn only_the_exact_argument_asks_for_it() {
        assert!(requested("device-bench"));
        assert!(requested("verbose device-bench"));
        assert!(!requested(""));
        assert!(!requested("device-benchmark"));
    }

    #[test]
    fn rates_survive_large_counts_and_no_time() {
        assert_eq!(rate(3, 0), 0);
        assert_eq!(rate(u64::MAX / 2, 1_000_000_000), u64::MAX / 2);
    }
}

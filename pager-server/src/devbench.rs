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
//! The result is one log line the bench parses (`xtask/src/bench.rs`,
//! `device_read_figures`):
//!
//! ```text
//! pager: device: 4k reads qd1: 18000/s, qd16: 41000/s; 64k reads qd1: 9000/s (512, 2048, 256 reads)
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

/// The cases, in order: 4 KiB reads one at a time, 4 KiB reads 16 at a
/// time, 64 KiB reads one at a time.
pub const CASES: [Case; 3] = [
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
];

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

    /// Stops the measurement: `reason` is logged instead of the rates.
    pub fn fail(&mut self, reason: &'static str) {
        self.failed = Some(reason);
    }

    /// Whether there is nothing left to measure.
    pub fn finished(&self) -> bool {
        self.case().is_none()
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
        text.push_str("pager: device: 4k reads qd1: ");
        rate(&mut text, self.rates[0]);
        text.push_str(", qd16: ");
        rate(&mut text, self.rates[1]);
        text.push_str("; 64k reads qd1: ");
        rate(&mut text, self.rates[2]);
        text.push_str(" (");
        for (index, case) in CASES.iter().enumerate() {
            if index > 0 {
                text.push_str(", ");
            }
            text.push_decimal(u64::from(case.reads));
        }
        text.push_str(" reads)");
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
        for _ in 0..63 {
            bench.record(4, 1_000_000);
        }
        assert!(!bench.finished());
        bench.record(4, 1_000_000);
        assert!(bench.finished());
        assert_eq!(bench.rates(), [Some(20_000), Some(128_000), Some(4_000)]);
        assert_eq!(
            bench.line().as_str(),
            "pager: device: 4k reads qd1: 20000/s, qd16: 128000/s; 64k reads qd1: 4000/s (512, 2048, 256 reads)"
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

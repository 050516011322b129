//! Paging statistics of one domain, as `hvctl stats` shows them (issue #5 §4).
//!
//! Counters only grow; the gauges (`footprint_pages`, `free_slots`) are set
//! from the frame table and the slot allocator. Page-in latency goes into a
//! log2 histogram: bucket `b` counts latencies `l` (in TSC ticks) with
//! `floor(log2(max(l, 1))) = b`, i.e. bucket 0 holds 0–1 ticks, bucket `b ≥ 1`
//! holds `[2^b, 2^(b+1))`. A percentile is reported as the upper bound of the
//! bucket it falls in, so it over-estimates by less than 2×.

/// Buckets of the latency histogram: one per bit of a `u64`.
pub const LATENCY_BUCKETS: usize = 64;

/// A log2 histogram of page-in latencies in TSC ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    buckets: [u64; LATENCY_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            buckets: [0; LATENCY_BUCKETS],
        }
    }

    /// The bucket `ticks` falls in: `floor(log2(max(ticks, 1)))`.
    pub const fn bucket_of(ticks: u64) -> usize {
        (63 - (ticks | 1).leading_zeros()) as usize
    }

    /// Largest latency bucket `bucket` holds: `2^(bucket+1) − 1`.
    pub const fn bucket_upper_bound(bucket: usize) -> u64 {
        if bucket >= 63 {
            u64::MAX
        } else {
            (1u64 << (bucket + 1)) - 1
        }
    }

    /// Records one page-in that took `ticks`.
    pub fn record(&mut self, ticks: u64) {
        let bucket = &mut self.buckets[Self::bucket_of(ticks)];
        *bucket = bucket.saturating_add(1);
    }

    /// The buckets, for `hvctl stats`.
    pub const fn buckets(&self) -> &[u64; LATENCY_BUCKETS] {
        &self.buckets
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |sum, count| sum.saturating_add(*count))
    }

    /// Upper bound of the bucket holding the `percent`-th percentile (the
    /// smallest bucket whose cumulative count reaches `ceil(count · percent /
    /// 100)`); `None` when empty. `percent` is clamped to 100.
    pub fn percentile(&self, percent: u8) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let percent = u128::from(percent.min(100));
        let rank = (u128::from(count) * percent).div_ceil(100).max(1);
        let mut cumulative: u128 = 0;
        for (bucket, entries) in self.buckets.iter().enumerate() {
            cumulative += u128::from(*entries);
            if cumulative >= rank {
                return Some(Self::bucket_upper_bound(bucket));
            }
        }
        None
    }
}

/// One domain's paging statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Pages evicted to the device.
    pub paged_out: u64,
    /// Pages loaded back (guest faults and restores).
    pub paged_in: u64,
    /// Evictions that did not complete: the core refused the nomination or
    /// the eviction (the guest wrote or dropped the frame meanwhile).
    pub evict_failures: u64,
    /// Times eviction stopped because the partition was full.
    pub device_full: u64,
    /// Page-ins refused by verification or a read error (each stops its domain).
    pub page_in_failures: u64,
    /// Pages dropped by the guest while paged out.
    pub dropped_while_paged: u64,
    /// Pager restarts this domain went through.
    pub recoveries: u64,
    /// Current footprint: resident frames (`ram + paging_out`).
    pub footprint_pages: u64,
    /// Free slots in the domain's partition.
    pub free_slots: u32,
    /// Page-in latency, TSC ticks from request to load.
    pub page_in_latency: LatencyHistogram,
}

impl Stats {
    /// An eviction completed.
    pub fn record_page_out(&mut self) {
        self.paged_out += 1;
    }

    /// A page-in completed after `ticks`.
    pub fn record_page_in(&mut self, ticks: u64) {
        self.paged_in += 1;
        self.page_in_latency.record(ticks);
    }

    /// An eviction was refused or abandoned.
    pub fn record_evict_failure(&mut self) {
        self.evict_failures += 1;
    }

    /// Eviction stopped on a full partition.
    pub fn record_device_full(&mut self) {
        self.device_full += 1;
    }

    /// A page-in failed verification or reading.
    pub fn record_page_in_failure(&mut self) {
        self.page_in_failures += 1;
    }

    /// Sets the gauges.
    pub fn set_gauges(&mut self, footprint_pages: u64, free_slots: u32) {
        self.footprint_pages = footprint_pages;
        self.free_slots = free_slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2() {
        assert_eq!(LatencyHistogram::bucket_of(0), 0);
        assert_eq!(LatencyHistogram::bucket_of(1), 0);
        assert_eq!(LatencyHistogram::bucket_of(2), 1);
        assert_eq!(LatencyHistogram::bucket_of(3), 1);
        assert_eq!(LatencyHistogram::bucket_of(4), 2);
        assert_eq!(LatencyHistogram::bucket_of(1023), 9);
        assert_eq!(LatencyHistogram::bucket_of(1024), 10);
        assert_eq!(LatencyHistogram::bucket_of(u64::MAX), 63);
        assert_eq!(LatencyHistogram::bucket_upper_bound(9), 1023);
        assert_eq!(LatencyHistogram::bucket_upper_bound(63), u64::MAX);
    }

    #[test]
    fn percentiles_report_the_bucket_bound() {
        let mut histogram = LatencyHistogram::new();
        assert_eq!(histogram.percentile(50), None);
        for _ in 0..98 {
            histogram.record(1000); // bucket 9
        }
        histogram.record(5000); // bucket 12
        histogram.record(70_000); // bucket 16
        assert_eq!(histogram.count(), 100);
        assert_eq!(histogram.buckets()[9], 98);
        assert_eq!(histogram.percentile(50), Some(1023));
        assert_eq!(histogram.percentile(98), Some(1023));
        assert_eq!(histogram.percentile(99), Some(8191));
        assert_eq!(histogram.percentile(100), Some(131_071));
        assert_eq!(
            histogram.percentile(0),
            Some(1023),
            "p0 is the lowest bucket used"
        );
    }

    #[test]
    fn stats_count_events_and_hold_gauges() {
        let mut stats = Stats::default();
        stats.record_page_out();
        stats.record_page_out();
        stats.record_page_in(300);
        stats.record_evict_failure();
        stats.record_device_full();
        stats.record_page_in_failure();
        stats.set_gauges(1234, 56);
        assert_eq!((stats.paged_out, stats.paged_in), (2, 1));
        assert_eq!(
            (
                stats.evict_failures,
                stats.device_full,
                stats.page_in_failures
            ),
            (1, 1, 1)
        );
        assert_eq!((stats.footprint_pages, stats.free_slots), (1234, 56));
        assert_eq!(stats.page_in_latency.buckets()[8], 1);
    }
}

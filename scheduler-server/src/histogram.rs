//! A log2 histogram of durations, with no heap: one counter per power of
//! two, so recording is a `leading_zeros` and an add, and the whole
//! histogram is a few hundred bytes the `no_std` server keeps inline.
//!
//! Bucket 0 holds 0; bucket `k` (1..=64) holds `2^(k-1) ..= 2^k - 1`.
//! Quantiles are reported as the upper bound of the bucket the sample of
//! that rank falls in: the true value lies between half of it (rounded up)
//! and it.

/// Number of buckets: 0, then one per bit of a `u64`.
pub const BUCKETS: usize = 65;

/// Counts of samples per log2 bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log2Histogram {
    counts: [u32; BUCKETS],
    samples: u64,
}

impl Log2Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            counts: [0; BUCKETS],
            samples: 0,
        }
    }

    /// The bucket `value` falls in.
    pub const fn bucket_of(value: u64) -> usize {
        (u64::BITS - value.leading_zeros()) as usize
    }

    /// The largest value of bucket `bucket` (`u64::MAX` past the last).
    pub const fn upper_bound(bucket: usize) -> u64 {
        if bucket >= 64 {
            u64::MAX
        } else {
            (1u64 << bucket) - 1
        }
    }

    /// Counts one sample (a bucket's counter saturates, the total does not).
    pub fn record(&mut self, value: u64) {
        let bucket = &mut self.counts[Self::bucket_of(value)];
        *bucket = bucket.saturating_add(1);
        self.samples = self.samples.saturating_add(1);
    }

    /// Samples recorded.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The samples in bucket `bucket` (0 past the last).
    pub fn count(&self, bucket: usize) -> u32 {
        self.counts.get(bucket).copied().unwrap_or(0)
    }

    /// The upper bound of the bucket holding the sample of rank
    /// `⌈samples · per_mille / 1000⌉` (at least the first) in ascending
    /// order; `None` while empty. `per_mille` above 1000 counts as 1000.
    pub fn quantile(&self, per_mille: u32) -> Option<u64> {
        if self.samples == 0 {
            return None;
        }
        let per_mille = u64::from(per_mille.min(1000));
        let rank = (self.samples.saturating_mul(per_mille).div_ceil(1000)).max(1);
        let mut seen = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                return Some(Self::upper_bound(bucket));
            }
        }
        // Only when a bucket saturated: the rank lies in the last one used.
        let last = self.counts.iter().rposition(|&count| count > 0)?;
        Some(Self::upper_bound(last))
    }

    /// [`Self::quantile`] at 50 %.
    pub fn median(&self) -> Option<u64> {
        self.quantile(500)
    }

    /// [`Self::quantile`] at 99 %.
    pub fn p99(&self) -> Option<u64> {
        self.quantile(990)
    }
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(Log2Histogram::bucket_of(0), 0);
        assert_eq!(Log2Histogram::bucket_of(1), 1);
        assert_eq!(Log2Histogram::bucket_of(2), 2);
        assert_eq!(Log2Histogram::bucket_of(3), 2);
        assert_eq!(Log2Histogram::bucket_of(4), 3);
        assert_eq!(Log2Histogram::bucket_of(12_345), 14);
        assert_eq!(Log2Histogram::bucket_of(u64::MAX), 64);
        assert_eq!(Log2Histogram::upper_bound(0), 0);
        assert_eq!(Log2Histogram::upper_bound(14), 16_383);
        assert_eq!(Log2Histogram::upper_bound(64), u64::MAX);
        for value in [0, 1, 5, 1 << 20, (1 << 20) - 1, u64::MAX] {
            let bucket = Log2Histogram::bucket_of(value);
            assert!(value <= Log2Histogram::upper_bound(bucket));
            assert!(bucket == 0 || value > Log2Histogram::upper_bound(bucket - 1));
        }
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut histogram = Log2Histogram::new();
        assert_eq!((histogram.median(), histogram.p99()), (None, None));
        // 98 samples near 10 000 (bucket 14), 2 near 1 000 000 (bucket 20).
        for _ in 0..98 {
            histogram.record(10_000);
        }
        histogram.record(1_000_000);
        histogram.record(1_000_001);
        assert_eq!(histogram.samples(), 100);
        assert_eq!((histogram.count(14), histogram.count(20)), (98, 2));
        assert_eq!(histogram.median(), Some(16_383));
        // Rank 99 of 100 is one of the slow ones.
        assert_eq!(histogram.p99(), Some((1 << 20) - 1));
        assert_eq!(
            histogram.quantile(0),
            Some(16_383),
            "the first sample at least"
        );
        assert_eq!(histogram.quantile(980), Some(16_383));
        assert_eq!(histogram.quantile(5000), Some((1 << 20) - 1));
    }

    #[test]
    fn a_single_sample_is_every_quantile() {
        let mut histogram = Log2Histogram::default();
        histogram.record(0);
        assert_eq!((histogram.median(), histogram.p99()), (Some(0), Some(0)));
        assert_eq!(histogram.count(BUCKETS), 0);
    }
}

//! Adaptive halt polling, with KVM's semantics and parameters
//! (`virt/kvm/kvm_main.c`: `kvm_vcpu_halt`, `grow_halt_poll_ns`,
//! `shrink_halt_poll_ns`, `update_halt_poll_stats`;
//! `Documentation/virt/kvm/halt-polling.rst`).
//!
//! When a vCPU halts and nothing else is runnable on its pCPU, the core may
//! spin for up to the vCPU's `poll_ns` checking for a wake-up before it
//! really sleeps: a wake-up that arrives while polling skips the cost of
//! idling and waking the pCPU. The window adapts per vCPU:
//!
//! * a halt shorter than the max whose window was too small grows it:
//!   `poll = max(poll * grow, grow_start)`, capped at the max;
//! * a halt longer than the max (a long block: polling was wasted) shrinks
//!   it: `poll = poll / shrink` (`shrink == 0`: to 0), and below
//!   `grow_start` it drops to 0;
//! * an invalid wake-up (woken with nothing to do) shrinks it too;
//! * a halt that ended inside the window leaves it as it is.
//!
//! This runs in the core, on the HLT path, with parameters the idle policy
//! publishes ([`HaltPollParameters`], the max per domain): it is arithmetic
//! on a few integers, so it must not cost a server round trip per HLT.

/// Tunables, with KVM's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaltPollParameters {
    /// `halt_poll_ns`: the global maximum window, ns.
    pub max_ns: u64,
    /// `halt_poll_ns_grow`: multiplier (0 = never grow).
    pub grow: u64,
    /// `halt_poll_ns_grow_start`: first window when growing from 0, ns.
    pub grow_start_ns: u64,
    /// `halt_poll_ns_shrink`: divisor (0 = reset to 0).
    pub shrink: u64,
}

impl Default for HaltPollParameters {
    fn default() -> Self {
        Self { max_ns: 200_000, grow: 2, grow_start_ns: 10_000, shrink: 0 }
    }
}

/// Buckets of the log2 histograms: bucket `i` counts values in `[2^i, 2^(i+1))` ns
/// (bucket 0 also takes 0).
pub const HISTOGRAM_BUCKETS: usize = 32;

/// A log2 histogram of durations (ns here; TSC ticks for the core's pick
/// cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log2Histogram {
    /// Counts per bucket.
    pub buckets: [u32; HISTOGRAM_BUCKETS],
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self { buckets: [0; HISTOGRAM_BUCKETS] }
    }
}

impl Log2Histogram {
    /// Counts one duration.
    pub fn add(&mut self, ns: u64) {
        let bucket = (63 - ns.max(1).leading_zeros()) as usize;
        let bucket = bucket.min(HISTOGRAM_BUCKETS - 1);
        self.buckets[bucket] = self.buckets[bucket].saturating_add(1);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&count| u64::from(count)).sum()
    }

    /// The upper bound (exclusive) of the bucket holding the `percent`-th
    /// percentile: a value at or above it is above that percentile. `None`
    /// when empty.
    pub fn percentile_below(&self, percent: u64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = (count * percent.min(100)).div_ceil(100).max(1);
        let mut seen = 0;
        for (bucket, &counted) in self.buckets.iter().enumerate() {
            seen += u64::from(counted);
            if seen >= rank {
                return Some(1u64 << (bucket + 1).min(63));
            }
        }
        None
    }
}

/// Polling for a halt whose wake-up time is known: a vCPU blocked on its
/// own timer (a PV single-shot timer, `SCHEDOP_poll` with a timeout, an
/// armed local APIC timer). KVM polls at the start of every halt because it
/// cannot know when the wake-up comes; here the core knows, so polling at
/// the start would burn the whole sleep. Instead the pCPU sleeps until
/// `lead` before the deadline and polls only the rest: `lead` is how late a
/// sleeping pCPU wakes after its timer (its interrupt delivery and HLT exit,
/// learnt per pCPU as a moving average) plus [`TimedPoll::SLACK_NS`],
/// capped by the halt-polling max (0 turns it off like KVM's polling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimedPoll {
    late_ns: u64,
}

impl TimedPoll {
    /// Margin over the learnt lateness, ns.
    pub const SLACK_NS: u64 = 8_000;
    /// Lateness samples above this are outliers (a host that descheduled
    /// the pCPU), ns.
    const MAX_SAMPLE_NS: u64 = 200_000;

    /// How long before the deadline the pCPU should wake, ns.
    pub fn lead_ns(&self, max_ns: u64) -> u64 {
        if max_ns == 0 {
            0
        } else {
            self.late_ns.saturating_add(Self::SLACK_NS).min(max_ns)
        }
    }

    /// A pCPU armed for an early wake-up woke `late_ns` after it. The
    /// estimate follows a smaller sample fast (halfway) and a larger one
    /// slowly (an eighth of the way), so one outlier costs little.
    pub fn woke(&mut self, late_ns: u64) {
        let sample = late_ns.min(Self::MAX_SAMPLE_NS);
        self.late_ns = if sample < self.late_ns {
            self.late_ns - (self.late_ns - sample) / 2
        } else {
            self.late_ns + (sample - self.late_ns) / 8
        };
    }

    /// The halt was already inside the lead when the pCPU went idle, so it
    /// polled without sleeping and learnt nothing: let the estimate decay
    /// a sixteenth, so a lead grown too long shrinks back until sleeping
    /// (and measuring) happens again.
    pub fn polled_at_once(&mut self) {
        self.late_ns -= self.late_ns / 16;
    }

    /// The learnt lateness, ns.
    pub const fn late_ns(&self) -> u64 {
        self.late_ns
    }
}

/// Per-vCPU statistics, named after KVM's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HaltPollStats {
    /// `halt_successful_poll`: the wake-up came while polling.
    pub successful: u64,
    /// `halt_attempted_poll`: halts that polled at all.
    pub attempted: u64,
    /// `halt_poll_invalid`: wake-ups with nothing to do.
    pub invalid: u64,
    /// `halt_poll_success_ns`: time spent in successful polls.
    pub poll_success_ns: u64,
    /// `halt_poll_fail_ns`: time spent in polls that ended in a real wait.
    pub poll_fail_ns: u64,
    /// `halt_wait_ns`: time spent really waiting.
    pub wait_ns: u64,
    /// Successful poll durations.
    pub poll_success_histogram: Log2Histogram,
    /// Failed poll durations.
    pub poll_fail_histogram: Log2Histogram,
    /// Wait durations.
    pub wait_histogram: Log2Histogram,
}

/// How one halt went, as the core measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Halt {
    /// Time spent polling, ns.
    pub polled_ns: u64,
    /// Time spent really waiting after the poll, ns (0 if the poll succeeded).
    pub waited_ns: u64,
    /// Whether the wake-up had something for the vCPU to do.
    pub valid_wakeup: bool,
}

impl Halt {
    /// The whole halt, ns.
    pub const fn total_ns(&self) -> u64 {
        self.polled_ns.saturating_add(self.waited_ns)
    }
}

/// One vCPU's polling window and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HaltPoller {
    poll_ns: u64,
    /// Statistics.
    pub stats: HaltPollStats,
}

impl HaltPoller {
    /// The window now, ns.
    pub const fn window_ns(&self) -> u64 {
        self.poll_ns
    }

    /// At HLT: the window to poll for, capped at `max_ns` (the domain's
    /// override or the global max). 0 = go straight to sleep.
    pub fn begin(&mut self, max_ns: u64) -> u64 {
        self.poll_ns = self.poll_ns.min(max_ns);
        self.poll_ns
    }

    /// After the halt: statistics, then the window adapts.
    pub fn end(&mut self, halt: Halt, parameters: &HaltPollParameters, max_ns: u64) {
        self.count(halt, self.poll_ns > 0, halt.waited_ns == 0);
        let halt_ns = halt.total_ns();
        if !halt.valid_wakeup {
            self.stats.invalid += 1;
            self.shrink(parameters);
        } else if max_ns == 0 {
            self.poll_ns = 0;
        } else if halt_ns <= self.poll_ns {
            // Woken inside the window: it is right as it is.
        } else if self.poll_ns > 0 && halt_ns > max_ns {
            self.shrink(parameters);
        } else if self.poll_ns < max_ns && halt_ns < max_ns {
            self.grow(parameters, max_ns);
        }
    }

    /// After a timed halt ([`TimedPoll`]): statistics only. The window is
    /// KVM's guess at when an unannounced wake-up comes; a timed halt's
    /// wake-up was announced, so it neither grows nor shrinks the window.
    pub fn end_timed(&mut self, halt: Halt, woke_polling: bool) {
        self.count(halt, halt.polled_ns > 0, woke_polling);
    }

    /// KVM's statistics for one halt: a poll if it `attempted` one, which
    /// was `successful` if the wake-up came while polling.
    fn count(&mut self, halt: Halt, attempted: bool, successful: bool) {
        if attempted {
            self.stats.attempted += 1;
            if successful {
                self.stats.successful += 1;
                self.stats.poll_success_ns += halt.polled_ns;
                self.stats.poll_success_histogram.add(halt.polled_ns);
            } else {
                self.stats.poll_fail_ns += halt.polled_ns;
                self.stats.poll_fail_histogram.add(halt.polled_ns);
            }
        }
        if halt.waited_ns > 0 {
            self.stats.wait_ns += halt.waited_ns;
            self.stats.wait_histogram.add(halt.waited_ns);
        }
    }

    fn grow(&mut self, parameters: &HaltPollParameters, max_ns: u64) {
        if parameters.grow == 0 {
            return;
        }
        let grown = self.poll_ns.saturating_mul(parameters.grow).max(parameters.grow_start_ns);
        self.poll_ns = grown.min(max_ns);
    }

    fn shrink(&mut self, parameters: &HaltPollParameters) {
        let shrunk = self.poll_ns.checked_div(parameters.shrink).unwrap_or(0);
        self.poll_ns = if shrunk < parameters.grow_start_ns { 0 } else { shrunk };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: HaltPollParameters = HaltPollParameters { max_ns: 200_000, grow: 2, grow_start_ns: 10_000, shrink: 0 };

    fn short_wait(ns: u64) -> Halt {
        Halt { polled_ns: 0, waited_ns: ns, valid_wakeup: true }
    }

    #[test]
    fn short_halts_grow_the_window_to_the_max() {
        let mut poller = HaltPoller::default();
        assert_eq!(poller.begin(DEFAULTS.max_ns), 0, "no polling until a short halt was seen");
        poller.end(short_wait(5_000), &DEFAULTS, DEFAULTS.max_ns);
        assert_eq!(poller.window_ns(), 10_000, "grow_start");
        let mut windows = Vec::new();
        for _ in 0..6 {
            let window = poller.begin(DEFAULTS.max_ns);
            // The wake-up comes just after the window: the poll fails, the halt is short.
            poller.end(Halt { polled_ns: window, waited_ns: 1_000, valid_wakeup: true }, &DEFAULTS, DEFAULTS.max_ns);
            windows.push(poller.window_ns());
        }
        // At the max, a poll that fails makes the halt longer than the max:
        // KVM counts that as a long block and shrinks (to 0 with shrink = 0).
        assert_eq!(windows, [20_000, 40_000, 80_000, 160_000, 200_000, 0]);
        assert_eq!(poller.stats.attempted, 6);
        assert_eq!(poller.stats.successful, 0);
    }

    #[test]
    fn a_wakeup_inside_the_window_keeps_it_and_counts_success() {
        let mut poller = HaltPoller::default();
        poller.end(short_wait(5_000), &DEFAULTS, DEFAULTS.max_ns);
        let window = poller.begin(DEFAULTS.max_ns);
        poller.end(Halt { polled_ns: 3_000, waited_ns: 0, valid_wakeup: true }, &DEFAULTS, DEFAULTS.max_ns);
        assert_eq!(poller.window_ns(), window);
        assert_eq!((poller.stats.successful, poller.stats.attempted, poller.stats.poll_success_ns), (1, 1, 3_000));
        assert_eq!(poller.stats.poll_success_histogram.buckets[11], 1, "3000 ns is in [2048, 4096)");
    }

    #[test]
    fn long_blocks_and_invalid_wakeups_shrink() {
        let mut poller = HaltPoller::default();
        for _ in 0..5 {
            let window = poller.begin(DEFAULTS.max_ns);
            poller.end(Halt { polled_ns: window, waited_ns: 1_000, valid_wakeup: true }, &DEFAULTS, DEFAULTS.max_ns);
        }
        assert_eq!(poller.window_ns(), 160_000);
        let window = poller.begin(DEFAULTS.max_ns);
        poller.end(Halt { polled_ns: window, waited_ns: 10_000_000, valid_wakeup: true }, &DEFAULTS, DEFAULTS.max_ns);
        assert_eq!(poller.window_ns(), 0, "shrink = 0 resets, as KVM's default");
        assert_eq!(poller.stats.wait_ns, 5_000 + 10_000_000);

        let halving = HaltPollParameters { shrink: 2, ..DEFAULTS };
        let mut poller = HaltPoller::default();
        for _ in 0..4 {
            let window = poller.begin(halving.max_ns);
            poller.end(Halt { polled_ns: window, waited_ns: 1_000, valid_wakeup: true }, &halving, halving.max_ns);
        }
        assert_eq!(poller.window_ns(), 80_000);
        poller.end(Halt { polled_ns: 80_000, waited_ns: 0, valid_wakeup: false }, &halving, halving.max_ns);
        assert_eq!((poller.window_ns(), poller.stats.invalid), (40_000, 1));
        poller.end(Halt { polled_ns: 0, waited_ns: 1_000_000, valid_wakeup: true }, &halving, halving.max_ns);
        assert_eq!(poller.window_ns(), 20_000);
        poller.end(Halt { polled_ns: 0, waited_ns: 1_000_000, valid_wakeup: true }, &halving, halving.max_ns);
        assert_eq!(poller.window_ns(), 10_000);
        poller.end(Halt { polled_ns: 0, waited_ns: 1_000_000, valid_wakeup: true }, &halving, halving.max_ns);
        assert_eq!(poller.window_ns(), 0, "below grow_start drops to 0");
    }

    #[test]
    fn the_max_caps_and_zero_disables() {
        let mut poller = HaltPoller::default();
        for _ in 0..6 {
            let window = poller.begin(DEFAULTS.max_ns);
            poller.end(Halt { polled_ns: window, waited_ns: 1_000, valid_wakeup: true }, &DEFAULTS, DEFAULTS.max_ns);
        }
        assert_eq!(poller.window_ns(), 200_000);
        assert_eq!(poller.begin(50_000), 50_000, "a lower per-domain max caps at once");
        poller.end(short_wait(1_000), &DEFAULTS, 0);
        assert_eq!(poller.begin(0), 0, "max 0 turns polling off");
    }

    #[test]
    fn histogram_percentiles_are_bucket_upper_bounds() {
        let mut histogram = Log2Histogram::default();
        assert_eq!(histogram.percentile_below(50), None);
        for value in [3, 5, 6, 7, 100] {
            histogram.add(value);
        }
        assert_eq!(histogram.count(), 5);
        // 3 is in [2, 4); 5, 6, 7 in [4, 8); 100 in [64, 128).
        assert_eq!(histogram.percentile_below(20), Some(4));
        assert_eq!(histogram.percentile_below(50), Some(8));
        assert_eq!(histogram.percentile_below(99), Some(128));
    }

    #[test]
    fn timed_polls_lead_by_the_learnt_lateness_and_keep_the_window() {
        let mut timed = TimedPoll::default();
        assert_eq!(timed.lead_ns(200_000), TimedPoll::SLACK_NS, "nothing learnt yet: the slack alone");
        assert_eq!(timed.lead_ns(0), 0, "max 0 turns it off");
        for _ in 0..64 {
            timed.woke(40_000);
        }
        assert!((39_000..=40_000).contains(&timed.late_ns()), "converges on the lateness: {}", timed.late_ns());
        assert_eq!(timed.lead_ns(200_000), timed.late_ns() + TimedPoll::SLACK_NS);
        assert_eq!(timed.lead_ns(20_000), 20_000, "capped by the max");
        let before = timed.late_ns();
        timed.woke(u64::MAX);
        assert!(timed.late_ns() <= before + TimedPoll::MAX_SAMPLE_NS / 8, "an outlier moves it an eighth of the cap at most");
        timed.woke(10_000);
        assert!(timed.late_ns() < before, "a smaller sample pulls it down fast");
        let before = timed.late_ns();
        timed.polled_at_once();
        assert_eq!(timed.late_ns(), before - before / 16);

        let mut poller = HaltPoller::default();
        let window = poller.begin(DEFAULTS.max_ns);
        poller.end_timed(Halt { polled_ns: 9_000, waited_ns: 150_000, valid_wakeup: true }, true);
        poller.end_timed(Halt { polled_ns: 4_000, waited_ns: 150_000, valid_wakeup: true }, false);
        poller.end_timed(Halt { polled_ns: 0, waited_ns: 150_000, valid_wakeup: true }, false);
        assert_eq!(poller.window_ns(), window, "timed halts leave KVM's window alone");
        assert_eq!((poller.stats.attempted, poller.stats.successful), (2, 1));
        assert_eq!((poller.stats.poll_success_ns, poller.stats.poll_fail_ns, poller.stats.wait_ns), (9_000, 4_000, 450_000));
    }
}

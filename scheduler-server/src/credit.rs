//! The arithmetic of one accounting period, as `csched_acct()` in Xen's
//! `sched/credit.c`, with credit counted in nanoseconds of pCPU time.
//!
//! Notation: `T` is the timeslice in ns (one pCPU's credit per period),
//! `P` the number of online pCPUs, `w_d` a domain's weight, `n_d` its number
//! of *active* vCPUs, `W = Σ w_d·n_d`, `B` the credit balance left by the
//! previous period (the sum of all active vCPUs' credit), `⌈·⌉` rounding up.
//!
//! * credit to share: `C = P·T` less the hypervisor's own time in the period
//!   (see [`crate::Event::Overhead`]), plus `-B` if `B < 0` (the balance
//!   converges back to 0);
//! * domain fair share: `fair_d = ⌈C·w_d·n_d / W⌉`;
//! * domain peak: `peak_d = n_d·T`, plus `⌈-B·w_d·n_d / W⌉` if `B < 0`;
//!   with a cap `c_d` (percent), `peak_d = min(peak_d, ⌈c_d·T / 100⌉)`;
//! * surplus: if `fair_d ≥ peak_d` the domain gets `peak_d` and the rest is
//!   handed to the domains not yet visited: `C += ⌈(fair_d - peak_d)·W / W_left⌉`
//!   where `W_left` is the active weight after this domain;
//! * the hypervisor's time comes out of the uncapped domains: a capped
//!   domain whose fair share of `C` with that time left in reaches its cap
//!   gets its cap (`peak_d`), and the domains not yet visited share
//!   `⌈(peak_d - fair_d)·W / W_left⌉` less. Xen has no such time to take
//!   off; without this rule a cap equal to a domain's fair share (50 for
//!   one of two equal domains on one pCPU) would hold it below its cap by
//!   its part of the hypervisor's time (`cap` scenario: 48.5-48.9 % of a
//!   pCPU, 49.9-50.1 % with nothing taken off);
//! * per vCPU: `⌈fair_d / n_d⌉` is added to each active vCPU's credit;
//!   the cap per vCPU is `⌈⌈c_d·T / 100⌉ / n_d⌉`.
//!
//! Then for each active vCPU with credit `c` (`settle`):
//! `c < 0` → OVER, parked if capped and `c < -cap_vcpu`, clamped to `-T`;
//! `c ≥ 0` → UNDER, unparked, and if `c > T` it leaves the active set with
//! `c / 2` (it "holds more than one slice").

use crate::interface::Priority;

/// `⌈numerator / denominator⌉` for `numerator ≥ 0`, `denominator > 0`.
fn ceil_div(numerator: i128, denominator: i128) -> i128 {
    if denominator <= 0 {
        return 0;
    }
    let dividend = numerator + denominator - 1;
    // The same quotient in 64 bits whenever both fit, as they do for every
    // machine cairn runs: a 128-bit division is a library call of some
    // hundred instructions, and under QEMU TCG each `div` in it is a helper.
    if let (Ok(dividend), Ok(divisor)) = (i64::try_from(dividend), i64::try_from(denominator)) {
        return i128::from(dividend.div_euclid(divisor));
    }
    dividend.div_euclid(denominator)
}

/// The running state of one accounting period, fed one domain at a time in
/// accounting order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Period {
    timeslice: i128,
    previous_balance: i128,
    credit_total: i128,
    /// The hypervisor's time taken off `credit_total`.
    overhead: i128,
    weight_total: i128,
    weight_left: i128,
    extra_seen: bool,
}

/// One domain's outcome of the period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DomainShare {
    /// Credit added to each active vCPU of the domain.
    pub per_vcpu: i64,
    /// The cap per vCPU: a vCPU whose credit falls below `-cap` is parked.
    pub cap_per_vcpu: Option<i64>,
    /// Whether the domain gave up surplus after one that wanted more: Xen
    /// moves it to the head of the accounting order so the surplus reaches
    /// everyone next period.
    pub move_to_front: bool,
}

impl Period {
    /// Starts a period. `pcpu_time_ns` is the pCPU time to share (`P·T`),
    /// `overhead_ns` the hypervisor's part of it (taken off, at most all of
    /// it), `weight_total` is `W`, `balance` is `B`.
    pub fn new(timeslice_ns: u64, pcpu_time_ns: u64, overhead_ns: u64, weight_total: u64, balance: i64) -> Self {
        let timeslice = i128::from(timeslice_ns);
        let previous_balance = i128::from(balance);
        let overhead = i128::from(overhead_ns.min(pcpu_time_ns));
        let mut credit_total = i128::from(pcpu_time_ns) - overhead;
        if previous_balance < 0 {
            credit_total -= previous_balance;
        }
        let weight_total = i128::from(weight_total);
        Self {
            timeslice,
            previous_balance,
            credit_total,
            overhead,
            weight_total,
            weight_left: weight_total,
            extra_seen: false,
        }
    }

    /// The share of the next domain in accounting order, with `weight`,
    /// `active` active vCPUs (at least 1) and a cap in percent (0 = none).
    pub fn domain(&mut self, weight: u16, active: usize, cap_percent: u16) -> DomainShare {
        let weight = i128::from(weight);
        let active = (active as i128).max(1);
        let weight_total = self.weight_total.max(1);
        self.weight_left -= weight * active;

        let mut peak = active * self.timeslice;
        if self.previous_balance < 0 {
            peak += ceil_div(-self.previous_balance * weight * active, weight_total);
        }
        let mut cap_per_vcpu = None;
        if cap_percent != 0 {
            let cap = ceil_div(i128::from(cap_percent) * self.timeslice, 100);
            peak = peak.min(cap);
            cap_per_vcpu = Some(ceil_div(cap, active));
        }

        let mut fair = ceil_div(self.credit_total * weight * active, weight_total);
        if cap_percent != 0
            && fair < peak
            && ceil_div((self.credit_total + self.overhead) * weight * active, weight_total) >= peak
        {
            if self.weight_left > 0 {
                self.credit_total -= ceil_div((peak - fair) * weight_total, self.weight_left);
            }
            fair = peak;
        }
        let mut move_to_front = false;
        if fair < peak {
            self.extra_seen = true;
        } else {
            if self.weight_left > 0 {
                self.credit_total += ceil_div((fair - peak) * weight_total, self.weight_left);
            }
            move_to_front = self.extra_seen;
            fair = peak;
        }
        DomainShare {
            per_vcpu: saturate(ceil_div(fair, active)),
            cap_per_vcpu: cap_per_vcpu.map(saturate),
            move_to_front,
        }
    }
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// What accounting does to one active vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Its credit after the period.
    pub credit: i64,
    /// Its new priority (UNDER or OVER).
    pub priority: Priority,
    /// Whether it must be parked now.
    pub park: bool,
    /// Whether it must be let go now.
    pub unpark: bool,
    /// Whether it leaves the active set.
    pub deactivate: bool,
}

/// Adds `share` to a vCPU holding `credit` and applies the bounds, as the
/// per-vCPU loop of `csched_acct()`.
pub(crate) fn settle(credit: i64, parked: bool, share: DomainShare, timeslice_ns: u64) -> Settled {
    let timeslice = i64::try_from(timeslice_ns).unwrap_or(i64::MAX);
    let mut credit = credit.saturating_add(share.per_vcpu);
    if credit < 0 {
        let park = !parked && share.cap_per_vcpu.is_some_and(|cap| credit < -cap);
        credit = credit.max(-timeslice);
        Settled {
            credit,
            priority: Priority::Over,
            park,
            unpark: false,
            deactivate: false,
        }
    } else {
        let deactivate = credit > timeslice;
        if deactivate {
            credit /= 2;
        }
        Settled {
            credit,
            priority: Priority::Under,
            park: false,
            unpark: parked,
            deactivate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 30_000_000;

    #[test]
    fn ceil_div_takes_the_64_bit_path_without_changing_a_quotient() {
        let reference = |n: i128, d: i128| (n + d - 1).div_euclid(d);
        let values = [
            0i128, 1, -1, 7, -7, 29_999_999, -30_000_000, 1 << 40, -(1 << 40),
            i128::from(i64::MAX), i128::from(i64::MIN), i128::from(i64::MAX) + 5,
            i128::from(i64::MIN) - 5, 1 << 80, -(1 << 80),
        ];
        let divisors = [1i128, 2, 3, 100, 1792, 65_535 * 128, i128::from(i64::MAX), 1 << 70];
        for &n in &values {
            for &d in &divisors {
                assert_eq!(ceil_div(n, d), reference(n, d), "{n} / {d}");
            }
        }
        assert_eq!(ceil_div(5, 0), 0);
        assert_eq!(ceil_div(5, -3), 0);
    }

    #[test]
    fn fair_share_follows_weights() {
        // 1 pCPU, three domains of one vCPU each, weights 256 : 512 : 1024.
        let mut period = Period::new(T, T, 0, 1792, 0);
        let a = period.domain(256, 1, 0);
        let b = period.domain(512, 1, 0);
        let c = period.domain(1024, 1, 0);
        assert_eq!(a.per_vcpu, 4_285_715); // ⌈30 ms · 256 / 1792⌉
        assert_eq!(b.per_vcpu, 8_571_429);
        assert_eq!(c.per_vcpu, 17_142_858);
    }

    #[test]
    fn peak_is_one_slice_per_vcpu_and_surplus_moves_on() {
        // 2 pCPUs, a lone heavy vCPU cannot take more than one pCPU; its
        // surplus goes to the domain visited after it.
        let mut period = Period::new(T, 2 * T, 0, 1024 + 256, 0);
        let heavy = period.domain(1024, 1, 0);
        let light = period.domain(256, 1, 0);
        assert_eq!(heavy.per_vcpu, T as i64);
        // C grows to 60 ms + ⌈(48 ms - 30 ms)·1280/256⌉ = 150 ms; the light one gets
        // ⌈150 ms · 256 / 1280⌉ = 30 ms, its own peak.
        assert_eq!(light.per_vcpu, T as i64);
    }

    #[test]
    fn cap_limits_the_share_and_sets_the_park_threshold() {
        let mut period = Period::new(T, T, 0, 256, 0);
        let share = period.domain(256, 1, 50);
        assert_eq!(share.per_vcpu, 15_000_000);
        assert_eq!(share.cap_per_vcpu, Some(15_000_000));
        let mut period = Period::new(T, T, 0, 512, 0);
        let share = period.domain(256, 2, 50);
        assert_eq!(share.per_vcpu, 7_500_000);
        assert_eq!(share.cap_per_vcpu, Some(7_500_000));
    }

    #[test]
    fn the_hypervisors_time_comes_out_of_the_uncapped_domains() {
        // 1 pCPU, two equal domains, the hypervisor took 3 ms of the 30.
        // Uncapped, each gets half of the 27 ms left.
        let mut period = Period::new(T, T, 3_000_000, 512, 0);
        assert_eq!(period.domain(256, 1, 0).per_vcpu, 13_500_000);
        assert_eq!(period.domain(256, 1, 0).per_vcpu, 13_500_000);
        // Capped at 50 %: a fair share of the whole 30 ms reaches the cap,
        // so the capped domain gets its 15 ms, in either order, and the
        // other the 12 ms left.
        let mut period = Period::new(T, T, 3_000_000, 512, 0);
        assert_eq!(period.domain(256, 1, 50).per_vcpu, 15_000_000);
        assert_eq!(period.domain(256, 1, 0).per_vcpu, 12_000_000);
        let mut period = Period::new(T, T, 3_000_000, 512, 0);
        assert_eq!(period.domain(256, 1, 0).per_vcpu, 13_500_000);
        assert_eq!(period.domain(256, 1, 50).per_vcpu, 15_000_000);
        // A cap above the fair share of the whole period is no promise: the
        // capped domain shares the hypervisor's time like any other.
        let mut period = Period::new(T, T, 3_000_000, 512, 0);
        assert_eq!(period.domain(256, 1, 60).per_vcpu, 13_500_000);
    }

    #[test]
    fn negative_balance_raises_the_credit_handed_out() {
        let mut period = Period::new(T, T, 0, 256, -10_000_000);
        let share = period.domain(256, 1, 0);
        assert_eq!(share.per_vcpu, 40_000_000);
    }

    #[test]
    fn settle_bounds() {
        let share = DomainShare {
            per_vcpu: 10,
            cap_per_vcpu: None,
            move_to_front: false,
        };
        let over = settle(-(T as i64) * 3, false, share, T);
        assert_eq!((over.credit, over.priority), (-(T as i64), Priority::Over));
        let rich = settle(T as i64, false, share, T);
        assert!(rich.deactivate);
        assert_eq!(rich.credit, (T as i64 + 10) / 2);
        assert_eq!(rich.priority, Priority::Under);
        let capped = DomainShare {
            per_vcpu: 0,
            cap_per_vcpu: Some(100),
            ..share
        };
        assert!(settle(-101, false, capped, T).park);
        assert!(!settle(-100, false, capped, T).park);
        assert!(settle(0, true, capped, T).unpark);
        assert!(!settle(-1, true, capped, T).unpark);
    }
}

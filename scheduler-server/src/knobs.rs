//! The knobs of credit1, validated once, with Xen's ranges and defaults.
//!
//! | knob | range | default | Xen |
//! |---|---|---|---|
//! | weight (per domain) | `1..=65535` | 256 | `CSCHED_DEFAULT_WEIGHT` |
//! | cap (per domain) | `0..=800` % of one pCPU, 0 = none | 0 | `csched_dom.cap` |
//! | timeslice | `1..=1000` ms | 30 | `XEN_SYSCTL_CSCHED_TSLICE_{MIN,MAX}` |
//! | ratelimit | `100..=500000` µs, or 0 = off, ≤ timeslice | 1000 | `XEN_SYSCTL_SCHED_RATELIMIT_{MIN,MAX}` |
//!
//! A value of a knob type is valid by construction: the only way to get one
//! is through its checked constructor, which returns a [`KnobError`] naming
//! what is wrong. The checks of the timeslice and ratelimit are those of
//! `csched_sys_cntl()` in Xen's `sched/credit.c`. Xen does not bound the cap;
//! libxl rejects a cap above 100 % per vCPU of the domain, and with at most
//! [`MAX_VCPUS_PER_DOMAIN`] vCPUs that bound is 800 %.

use core::fmt;
use core::num::NonZeroU16;

use crate::MAX_VCPUS_PER_DOMAIN;

/// Smallest domain weight.
pub const WEIGHT_MIN: u32 = 1;
/// Largest domain weight.
pub const WEIGHT_MAX: u32 = 65_535;
/// Default domain weight (Xen's `CSCHED_DEFAULT_WEIGHT`).
pub const WEIGHT_DEFAULT: u16 = 256;
/// Largest cap, in percent of one pCPU: 100 % for each of the at most
/// [`MAX_VCPUS_PER_DOMAIN`] vCPUs of a domain.
pub const CAP_MAX: u32 = 100 * MAX_VCPUS_PER_DOMAIN as u32;
/// Shortest timeslice, in milliseconds.
pub const TIMESLICE_MS_MIN: u32 = 1;
/// Longest timeslice, in milliseconds.
pub const TIMESLICE_MS_MAX: u32 = 1000;
/// Default timeslice, in milliseconds (Xen's `CSCHED_DEFAULT_TSLICE_MS`).
pub const TIMESLICE_MS_DEFAULT: u16 = 30;
/// Shortest non-zero context-switch ratelimit, in microseconds.
pub const RATELIMIT_US_MIN: u32 = 100;
/// Longest context-switch ratelimit, in microseconds.
pub const RATELIMIT_US_MAX: u32 = 500_000;
/// Default context-switch ratelimit, in microseconds (Xen's `SCHED_DEFAULT_RATELIMIT_US`).
pub const RATELIMIT_US_DEFAULT: u32 = 1000;

/// Why a knob value was refused. Nothing changes when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnobError {
    /// A weight outside `1..=65535`.
    WeightOutOfRange {
        /// The weight asked for.
        requested: u32,
    },
    /// A cap above [`CAP_MAX`].
    CapOutOfRange {
        /// The cap asked for, in percent of one pCPU.
        requested: u32,
    },
    /// A timeslice outside `1..=1000` ms.
    TimesliceOutOfRange {
        /// The timeslice asked for, in milliseconds.
        requested_ms: u32,
    },
    /// A ratelimit that is neither 0 nor inside `100..=500000` µs.
    RatelimitOutOfRange {
        /// The ratelimit asked for, in microseconds.
        requested_us: u32,
    },
    /// A ratelimit longer than the timeslice it would apply to.
    RatelimitAboveTimeslice {
        /// The ratelimit that would result, in microseconds.
        ratelimit_us: u32,
        /// The timeslice that would result, in milliseconds.
        timeslice_ms: u32,
    },
}

impl fmt::Display for KnobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::WeightOutOfRange { requested } => write!(
                f,
                "weight {requested} is out of range: it must be {WEIGHT_MIN}..={WEIGHT_MAX}"
            ),
            Self::CapOutOfRange { requested } => write!(
                f,
                "cap {requested} is out of range: it must be 0 (no cap) ..={CAP_MAX} percent of one pCPU"
            ),
            Self::TimesliceOutOfRange { requested_ms } => write!(
                f,
                "timeslice {requested_ms} ms is out of range: it must be \
                 {TIMESLICE_MS_MIN}..={TIMESLICE_MS_MAX} ms"
            ),
            Self::RatelimitOutOfRange { requested_us } => write!(
                f,
                "ratelimit {requested_us} us is out of range: it must be 0 (off) or \
                 {RATELIMIT_US_MIN}..={RATELIMIT_US_MAX} us"
            ),
            Self::RatelimitAboveTimeslice {
                ratelimit_us,
                timeslice_ms,
            } => write!(
                f,
                "ratelimit {ratelimit_us} us is longer than the timeslice {timeslice_ms} ms"
            ),
        }
    }
}

/// A domain's weight: its share of the pCPUs relative to the other domains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(NonZeroU16);

impl Weight {
    /// Xen's default weight, 256.
    pub const DEFAULT: Self = match NonZeroU16::new(WEIGHT_DEFAULT) {
        Some(weight) => Self(weight),
        None => panic!("the default weight is not zero"),
    };

    /// A weight of `weight`, which must be `1..=65535`.
    pub fn new(weight: u32) -> Result<Self, KnobError> {
        u16::try_from(weight)
            .ok()
            .and_then(NonZeroU16::new)
            .map(Self)
            .ok_or(KnobError::WeightOutOfRange { requested: weight })
    }

    /// The weight as a number.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A domain's cap: the most CPU it may use, in percent of one pCPU, summed
/// over its vCPUs. 0 means no cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cap(u16);

impl Cap {
    /// No cap.
    pub const NONE: Self = Self(0);

    /// A cap of `percent` % of one pCPU, `0..=CAP_MAX`; 0 means no cap.
    pub fn new(percent: u32) -> Result<Self, KnobError> {
        if percent > CAP_MAX {
            return Err(KnobError::CapOutOfRange { requested: percent });
        }
        u16::try_from(percent)
            .map(Self)
            .map_err(|_| KnobError::CapOutOfRange { requested: percent })
    }

    /// The cap in percent of one pCPU (0 = none).
    pub const fn percent(self) -> u16 {
        self.0
    }

    /// Whether the domain is capped at all.
    pub const fn is_capped(self) -> bool {
        self.0 != 0
    }
}

/// A domain's scheduling parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DomainParams {
    /// Share relative to the other domains.
    pub weight: Weight,
    /// Upper bound on the CPU the domain uses.
    pub cap: Cap,
}

impl DomainParams {
    /// Parameters from raw numbers, each checked against its range.
    pub fn new(weight: u32, cap: u32) -> Result<Self, KnobError> {
        Ok(Self {
            weight: Weight::new(weight)?,
            cap: Cap::new(cap)?,
        })
    }
}

/// The system-wide knobs: timeslice and context-switch ratelimit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tunables {
    timeslice_ms: u16,
    ratelimit_us: u32,
}

impl Tunables {
    /// Xen's defaults: a 30 ms timeslice and a 1000 µs ratelimit.
    pub const DEFAULT: Self = Self {
        timeslice_ms: TIMESLICE_MS_DEFAULT,
        ratelimit_us: RATELIMIT_US_DEFAULT,
    };

    /// Checked tunables, as `csched_sys_cntl()` checks them:
    /// `1 <= timeslice_ms <= 1000`, `ratelimit_us == 0 ||
    /// 100 <= ratelimit_us <= 500000`, and `ratelimit <= timeslice`.
    pub fn new(timeslice_ms: u32, ratelimit_us: u32) -> Result<Self, KnobError> {
        if !(TIMESLICE_MS_MIN..=TIMESLICE_MS_MAX).contains(&timeslice_ms) {
            return Err(KnobError::TimesliceOutOfRange {
                requested_ms: timeslice_ms,
            });
        }
        if ratelimit_us != 0 && !(RATELIMIT_US_MIN..=RATELIMIT_US_MAX).contains(&ratelimit_us) {
            return Err(KnobError::RatelimitOutOfRange {
                requested_us: ratelimit_us,
            });
        }
        if u64::from(ratelimit_us) > u64::from(timeslice_ms) * 1000 {
            return Err(KnobError::RatelimitAboveTimeslice {
                ratelimit_us,
                timeslice_ms,
            });
        }
        Ok(Self {
            // In range: checked above against TIMESLICE_MS_MAX = 1000.
            timeslice_ms: timeslice_ms as u16,
            ratelimit_us,
        })
    }

    /// These tunables with some of them replaced, checked as a whole.
    pub fn with(
        self,
        timeslice_ms: Option<u32>,
        ratelimit_us: Option<u32>,
    ) -> Result<Self, KnobError> {
        Self::new(
            timeslice_ms.unwrap_or(u32::from(self.timeslice_ms)),
            ratelimit_us.unwrap_or(self.ratelimit_us),
        )
    }

    /// The timeslice in milliseconds.
    pub const fn timeslice_ms(self) -> u32 {
        self.timeslice_ms as u32
    }

    /// The ratelimit in microseconds (0 = off).
    pub const fn ratelimit_us(self) -> u32 {
        self.ratelimit_us
    }

    /// The timeslice in nanoseconds. This is also the credit one pCPU hands
    /// out per accounting period (Xen's `credits_per_tslice`, in ns).
    pub const fn timeslice_ns(self) -> u64 {
        self.timeslice_ms as u64 * 1_000_000
    }

    /// The ratelimit in nanoseconds (0 = off).
    pub const fn ratelimit_ns(self) -> u64 {
        self.ratelimit_us as u64 * 1_000
    }

    /// The tick period: `timeslice / 3`, or the whole timeslice when it is
    /// shorter than 3 ms, as `__csched_set_tslice()` in Xen's credit.c.
    pub const fn tick_period_ns(self) -> u64 {
        if self.timeslice_ms < 3 {
            self.timeslice_ns()
        } else {
            self.timeslice_ns() / 3
        }
    }
}

impl Default for Tunables {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_xens() {
        assert_eq!(Weight::default().get(), 256);
        assert_eq!(Cap::default(), Cap::NONE);
        assert_eq!(Tunables::default().timeslice_ms(), 30);
        assert_eq!(Tunables::default().ratelimit_us(), 1000);
        assert_eq!(Tunables::default().tick_period_ns(), 10_000_000);
        assert_eq!(
            Tunables::new(2, 0).map(Tunables::tick_period_ns),
            Ok(2_000_000)
        );
    }

    #[test]
    fn edges_of_every_range() {
        assert!(Weight::new(1).is_ok());
        assert!(Weight::new(65_535).is_ok());
        assert_eq!(
            Weight::new(0),
            Err(KnobError::WeightOutOfRange { requested: 0 })
        );
        assert_eq!(
            Weight::new(65_536),
            Err(KnobError::WeightOutOfRange { requested: 65_536 })
        );
        assert!(Cap::new(0).is_ok());
        assert!(Cap::new(800).is_ok());
        assert_eq!(
            Cap::new(801),
            Err(KnobError::CapOutOfRange { requested: 801 })
        );
        assert!(Tunables::new(1, 0).is_ok());
        assert!(Tunables::new(1000, 500_000).is_ok());
        assert!(Tunables::new(1, 100).is_ok());
        assert!(Tunables::new(1, 1000).is_ok());
        assert_eq!(
            Tunables::new(0, 0),
            Err(KnobError::TimesliceOutOfRange { requested_ms: 0 })
        );
        assert_eq!(
            Tunables::new(1001, 0),
            Err(KnobError::TimesliceOutOfRange { requested_ms: 1001 })
        );
        assert_eq!(
            Tunables::new(30, 99),
            Err(KnobError::RatelimitOutOfRange { requested_us: 99 })
        );
        assert_eq!(
            Tunables::new(1000, 500_001),
            Err(KnobError::RatelimitOutOfRange {
                requested_us: 500_001
            })
        );
        assert_eq!(
            Tunables::new(1, 1001),
            Err(KnobError::RatelimitAboveTimeslice {
                ratelimit_us: 1001,
                timeslice_ms: 1
            })
        );
    }

    #[test]
    fn errors_say_why() {
        let text = KnobError::RatelimitAboveTimeslice {
            ratelimit_us: 6000,
            timeslice_ms: 5,
        }
        .to_string();
        assert!(text.contains("6000 us") && text.contains("5 ms"), "{text}");
        let text = KnobError::WeightOutOfRange { requested: 0 }.to_string();
        assert!(text.contains("1..=65535"), "{text}");
    }

    #[test]
    fn with_checks_the_combination() {
        let tunables = Tunables::new(30, 20_000).unwrap();
        assert_eq!(
            tunables.with(Some(10), None),
            Err(KnobError::RatelimitAboveTimeslice {
                ratelimit_us: 20_000,
                timeslice_ms: 10
            })
        );
        assert_eq!(tunables.with(Some(10), Some(0)), Tunables::new(10, 0));
    }
}

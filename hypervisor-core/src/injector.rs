//! The core's seeded fault injector (issue #6): kills the scheduler or the
//! pager at points drawn from a seed, so a fault campaign is repeatable and
//! reaches the windows that matter: the N-th message of a server, the middle
//! of an eviction (the frame is copied and nominated, the pager has not yet
//! written it), the middle of a page-in (the pager was asked, the frame is
//! not back).
//!
//! Pure: time comes in as nanoseconds, observations as calls, and the kill
//! goes out as a value; the kernel carries it out (`restart_server` with
//! `ServerFault::Killed`). The PRNG is SplitMix64, which passes BigCrush and
//! is one line of arithmetic per draw.

/// Servers the injector may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The credit scheduler server.
    Scheduler,
    /// The pager server.
    Pager,
}

/// Where an armed kill strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// When the core has handled this many more messages from the server.
    AtMessage(u32),
    /// Right after the core copied a nominated frame for the pager.
    MidEviction,
    /// While the pager reads a page back: at its first message or the first
    /// tick after the core asked it for a page-in.
    MidPageIn,
    /// At the next tick.
    Now,
}

/// What the core tells the injector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The core handled a message from this server.
    Message(Target),
    /// The core answered a nomination (an eviction is in flight).
    Nominated,
    /// The core sent a page-in request.
    PageInAsked,
    /// A timer tick.
    Tick,
}

/// A kill to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// Which server.
    pub target: Target,
    /// Where it struck (`Now` also for an armed point that never came).
    pub point: Point,
    /// 1-based number of this kill.
    pub number: u32,
}

/// Kills made so far, by point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// At a message.
    pub at_message: u32,
    /// Mid-eviction.
    pub mid_eviction: u32,
    /// Mid-page-in.
    pub mid_page_in: u32,
    /// At a tick (drawn so, or the armed point did not come in time).
    pub immediate: u32,
    /// Of the scheduler.
    pub scheduler: u32,
    /// Of the pager.
    pub pager: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    target: Target,
    point: Point,
    /// Messages counted toward `AtMessage`.
    seen: u32,
    /// `MidPageIn`: a page-in has been asked; strike at the next chance.
    primed: bool,
    /// After this time the kill strikes at the next tick, wherever it was.
    give_up_ns: u64,
}

/// The injector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injector {
    state: u64,
    kills: u32,
    made: u32,
    scheduler: bool,
    pager: bool,
    interval_ns: u64,
    next_ns: u64,
    armed: Option<Armed>,
    counts: Counts,
}

impl Injector {
    /// An injector making `kills` kills of the allowed servers, about one per
    /// `interval_ns`, the first after one interval from `now_ns`. `None` if
    /// no server may be killed or `kills` is 0.
    pub fn new(seed: u64, kills: u32, scheduler: bool, pager: bool, interval_ns: u64, now_ns: u64) -> Option<Self> {
        if kills == 0 || !(scheduler || pager) {
            return None;
        }
        let mut injector = Self {
            state: seed,
            kills,
            made: 0,
            scheduler,
            pager,
            interval_ns: interval_ns.max(1_000_000),
            next_ns: 0,
            armed: None,
            counts: Counts::default(),
        };
        injector.schedule(now_ns);
        Some(injector)
    }

    /// SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
    /// generators", OOPSLA 2014).
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A draw in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound)) >> 64) as u64
    }

    /// The next kill is armed between half and one and a half intervals on.
    fn schedule(&mut self, now_ns: u64) {
        let jitter = self.below(self.interval_ns);
        self.next_ns = now_ns.saturating_add(self.interval_ns / 2).saturating_add(jitter);
    }

    fn arm(&mut self, now_ns: u64) {
        let target = if self.scheduler && self.pager {
            if self.below(2) == 0 { Target::Scheduler } else { Target::Pager }
        } else if self.scheduler {
            Target::Scheduler
        } else {
            Target::Pager
        };
        let point = match (target, self.below(4)) {
            (_, 0) => Point::Now,
            (Target::Pager, 1) => Point::MidEviction,
            (Target::Pager, 2) => Point::MidPageIn,
            _ => Point::AtMessage(1 + self.below(8) as u32),
        };
        let give_up_ns = now_ns.saturating_add(2 * self.interval_ns);
        self.armed = Some(Armed { target, point, seen: 0, primed: false, give_up_ns });
    }

    /// Whether every kill has been made.
    pub fn done(&self) -> bool {
        self.made >= self.kills
    }

    /// Kills asked for.
    pub fn kills(&self) -> u32 {
        self.kills
    }

    /// Kills made so far, by point and server.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The armed kill's target, if one is armed (for the core to know which
    /// server's events matter).
    pub fn armed_target(&self) -> Option<Target> {
        self.armed.map(|armed| armed.target)
    }

    /// Feeds one observation at `now_ns`; returns the kill to carry out now.
    pub fn observe(&mut self, observation: Observation, now_ns: u64) -> Option<Kill> {
        if self.done() {
            return None;
        }
        if self.armed.is_none() {
            if now_ns < self.next_ns {
                return None;
            }
            self.arm(now_ns);
        }
        let armed = self.armed.as_mut()?;
        let strike = match (armed.point, observation) {
            (_, Observation::Tick) if now_ns >= armed.give_up_ns => Some(Point::Now),
            (Point::Now, Observation::Tick) => Some(Point::Now),
            (Point::AtMessage(count), Observation::Message(target)) if target == armed.target => {
                armed.seen += 1;
                (armed.seen >= count).then_some(armed.point)
            }
            (Point::MidEviction, Observation::Nominated) if armed.target == Target::Pager => Some(Point::MidEviction),
            (Point::MidPageIn, Observation::PageInAsked) => {
                armed.primed = true;
                None
            }
            (Point::MidPageIn, Observation::Message(Target::Pager) | Observation::Tick) if armed.primed => Some(Point::MidPageIn),
            _ => None,
        }?;
        let target = armed.target;
        self.armed = None;
        self.made += 1;
        match strike {
            Point::AtMessage(_) => self.counts.at_message += 1,
            Point::MidEviction => self.counts.mid_eviction += 1,
            Point::MidPageIn => self.counts.mid_page_in += 1,
            Point::Now => self.counts.immediate += 1,
        }
        match target {
            Target::Scheduler => self.counts.scheduler += 1,
            Target::Pager => self.counts.pager += 1,
        }
        self.schedule(now_ns);
        Some(Kill { target, point: strike, number: self.made })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Drives an injector for `ms` milliseconds: a tick per ms, a scheduler
    /// and a pager message per ms, a nomination every 3 ms, a page-in every
    /// 5 ms. Returns the kills with their times.
    fn drive(injector: &mut Injector, ms: u64) -> Vec<(u64, Kill)> {
        let mut kills = Vec::new();
        for step in 0..ms {
            let now = step * MS;
            let mut observations = vec![Observation::Tick, Observation::Message(Target::Scheduler), Observation::Message(Target::Pager)];
            if step % 3 == 0 {
                observations.push(Observation::Nominated);
            }
            if step % 5 == 0 {
                observations.push(Observation::PageInAsked);
            }
            for observation in observations {
                if let Some(kill) = injector.observe(observation, now) {
                    kills.push((now, kill));
                }
            }
        }
        kills
    }

    #[test]
    fn the_same_seed_gives_the_same_kills() {
        let mut first = Injector::new(42, 40, true, true, 20 * MS, 0).unwrap();
        let mut second = Injector::new(42, 40, true, true, 20 * MS, 0).unwrap();
        let kills = drive(&mut first, 5_000);
        assert_eq!(kills, drive(&mut second, 5_000));
        assert_eq!(kills.len(), 40, "every kill is made");
        assert!(first.done());
        let mut other = Injector::new(43, 40, true, true, 20 * MS, 0).unwrap();
        assert_ne!(kills, drive(&mut other, 5_000), "another seed, other kills");
    }

    #[test]
    fn kills_reach_every_point_and_both_servers() {
        let mut injector = Injector::new(7, 200, true, true, 10 * MS, 0).unwrap();
        let kills = drive(&mut injector, 10_000);
        assert_eq!(kills.len(), 200);
        let counts = injector.counts();
        assert!(counts.at_message > 20 && counts.mid_eviction > 10 && counts.mid_page_in > 10 && counts.immediate > 10, "{counts:?}");
        assert!(counts.scheduler > 50 && counts.pager > 50, "{counts:?}");
        assert_eq!(counts.scheduler + counts.pager, 200);
        assert_eq!(counts.at_message + counts.mid_eviction + counts.mid_page_in + counts.immediate, 200);
        for (index, (_, kill)) in kills.iter().enumerate() {
            assert_eq!(kill.number as usize, index + 1);
            if matches!(kill.point, Point::MidEviction | Point::MidPageIn) {
                assert_eq!(kill.target, Target::Pager, "only the pager evicts and pages in");
            }
        }
    }

    #[test]
    fn kills_are_spaced_by_about_the_interval() {
        let mut injector = Injector::new(1, 50, true, false, 40 * MS, 0).unwrap();
        let kills = drive(&mut injector, 10_000);
        assert_eq!(kills.len(), 50);
        assert!(kills.iter().all(|(_, kill)| kill.target == Target::Scheduler));
        let gaps: Vec<u64> = kills.windows(2).map(|pair| pair[1].0 - pair[0].0).collect();
        assert!(gaps.iter().all(|&gap| gap >= 20 * MS), "at least half an interval apart: {gaps:?}");
        let mean = gaps.iter().sum::<u64>() / gaps.len() as u64;
        assert!((30 * MS..=60 * MS).contains(&mean), "mean gap {mean}");
    }

    #[test]
    fn an_armed_point_that_never_comes_strikes_after_two_intervals() {
        let mut injector = Injector::new(3, 5, false, true, 10 * MS, 0).unwrap();
        // Only ticks: no message, no eviction, no page-in ever.
        let mut kills = Vec::new();
        for step in 0..1_000 {
            if let Some(kill) = injector.observe(Observation::Tick, step * MS) {
                kills.push(kill);
            }
        }
        assert_eq!(kills.len(), 5);
        assert!(kills.iter().all(|kill| kill.point == Point::Now && kill.target == Target::Pager));
    }

    #[test]
    fn nothing_to_kill_means_no_injector() {
        assert!(Injector::new(1, 0, true, true, MS, 0).is_none());
        assert!(Injector::new(1, 5, false, false, MS, 0).is_none());
    }
}

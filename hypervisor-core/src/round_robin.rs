//! The core's built-in scheduler: round-robin over runnable vCPUs.
//!
//! It is mechanism, not policy: it runs whenever no scheduler server has
//! published decisions (at boot, and while the scheduler server is dead or
//! restarting), so no runnable vCPU ever starves. Each pick starts after the
//! vCPU picked last, so every runnable vCPU gets a slice in turn.

/// What a vCPU is doing, as far as the built-in scheduler cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Ready to run.
    Runnable,
    /// Executed HLT; parked until the next timer tick.
    Halted,
    /// Blocked until the core wakes it explicitly (a server in `wait`).
    Waiting,
    /// Will never run again (its domain ended).
    Stopped,
}

/// Round-robin over up to `N` vCPUs, identified by their index.
#[derive(Debug, Clone)]
pub struct RoundRobin<const N: usize> {
    states: heapless::Vec<RunState, N>,
    last: usize,
    wakeups: u64,
}

impl<const N: usize> Default for RoundRobin<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RoundRobin<N> {
    /// No vCPUs yet.
    pub const fn new() -> Self {
        Self { states: heapless::Vec::new(), last: usize::MAX, wakeups: 0 }
    }

    /// Adds a runnable vCPU; returns its index, or `None` when full.
    pub fn add(&mut self) -> Option<usize> {
        self.states.push(RunState::Runnable).ok()?;
        Some(self.states.len() - 1)
    }

    /// The state of vCPU `index`.
    pub fn state(&self, index: usize) -> Option<RunState> {
        self.states.get(index).copied()
    }

    /// Changes the state of vCPU `index`; a stopped vCPU stays stopped.
    pub fn set_state(&mut self, index: usize, state: RunState) {
        if let Some(slot) = self.states.get_mut(index) {
            if *slot != RunState::Stopped {
                if state == RunState::Runnable && *slot != RunState::Runnable {
                    self.wakeups += 1;
                }
                *slot = state;
            }
        }
    }

    /// The next runnable vCPU after the one picked last (possibly the same
    /// one if it is the only runnable vCPU), or `None` if none is runnable.
    pub fn pick(&mut self) -> Option<usize> {
        let count = self.states.len();
        let start = if self.last >= count { 0 } else { self.last + 1 };
        let found = (0..count)
            .map(|step| (start + step) % count)
            .find(|&index| self.states[index] == RunState::Runnable)?;
        self.last = found;
        Some(found)
    }

    /// Like [`Self::pick`], skipping entries `allowed` refuses (on SMP: a
    /// vCPU another pCPU runs). The rotation moves past refused entries.
    pub fn pick_where(&mut self, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let count = self.states.len();
        let start = if self.last >= count { 0 } else { self.last + 1 };
        let found = (0..count)
            .map(|step| (start + step) % count)
            .find(|&index| self.states[index] == RunState::Runnable && allowed(index))?;
        self.last = found;
        Some(found)
    }

    /// How many times an entry became runnable (the run loop compares it
    /// to see whether an idle pCPU may have work now).
    pub fn wakeups(&self) -> u64 {
        self.wakeups
    }

    /// A timer tick: every halted vCPU becomes runnable again.
    pub fn tick(&mut self) {
        for state in self.states.iter_mut() {
            if *state == RunState::Halted {
                *state = RunState::Runnable;
                self.wakeups += 1;
            }
        }
    }

    /// Whether every vCPU has stopped.
    pub fn all_stopped(&self) -> bool {
        self.states.iter().all(|&state| state == RunState::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_over_runnable_vcpus_only() {
        let mut scheduler: RoundRobin<4> = RoundRobin::new();
        for _ in 0..3 {
            scheduler.add().unwrap();
        }
        assert_eq!([scheduler.pick(), scheduler.pick(), scheduler.pick(), scheduler.pick()], [
            Some(0),
            Some(1),
            Some(2),
            Some(0)
        ]);
        scheduler.set_state(1, RunState::Halted);
        assert_eq!(scheduler.pick(), Some(2));
        assert_eq!(scheduler.pick(), Some(0));
        scheduler.set_state(0, RunState::Stopped);
        scheduler.set_state(2, RunState::Halted);
        assert_eq!(scheduler.pick(), None, "nothing runnable: the pCPU idles");
        scheduler.tick();
        assert_eq!(scheduler.pick(), Some(1));
        assert_eq!(scheduler.pick(), Some(2));
        scheduler.set_state(0, RunState::Runnable);
        assert_eq!(scheduler.state(0), Some(RunState::Stopped), "stopped is final");
        scheduler.set_state(1, RunState::Waiting);
        scheduler.tick();
        assert_eq!(scheduler.state(1), Some(RunState::Waiting), "a tick does not wake a waiter");
        assert!(!scheduler.all_stopped());
        scheduler.set_state(1, RunState::Stopped);
        scheduler.set_state(2, RunState::Stopped);
        assert!(scheduler.all_stopped());
    }

    #[test]
    fn pick_where_skips_refused_entries_and_counts_wakeups() {
        let mut scheduler: RoundRobin<4> = RoundRobin::new();
        for _ in 0..3 {
            scheduler.add().unwrap();
        }
        // Entry 1 runs on another pCPU.
        assert_eq!(scheduler.pick_where(|index| index != 1), Some(0));
        assert_eq!(scheduler.pick_where(|index| index != 1), Some(2));
        assert_eq!(scheduler.pick_where(|index| index != 1), Some(0));
        assert_eq!(scheduler.pick_where(|_| false), None, "everything refused: idle");
        let before = scheduler.wakeups();
        scheduler.set_state(2, RunState::Waiting);
        scheduler.set_state(2, RunState::Runnable);
        scheduler.set_state(2, RunState::Runnable);
        assert_eq!(scheduler.wakeups(), before + 1, "only a change to runnable counts");
        scheduler.set_state(0, RunState::Halted);
        scheduler.tick();
        assert_eq!(scheduler.wakeups(), before + 2);
    }

    #[test]
    fn refuses_more_than_capacity() {
        let mut scheduler: RoundRobin<1> = RoundRobin::new();
        assert_eq!(scheduler.add(), Some(0));
        assert_eq!(scheduler.add(), None);
    }
}

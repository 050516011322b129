//! Victim selection: xenpaging's default policy (`tools/xenpaging/policy_default.c`).
//!
//! Per domain, four bitmaps over the gfns and a ring of recently paged-in
//! gfns:
//!
//! * `excluded`: never chosen: gfn 0 (set at construction, as
//!   `policy_init()` does) and frames the caller marks non-pageable;
//! * `paged`: the content is on the device (`Paged` or `PagingIn`);
//! * `protected`: paged in recently and still in the MRU ring;
//! * `tried`: already returned as a victim and not (yet) paged out, so a
//!   frame the core refuses to nominate is not offered again at once
//!   (xenpaging's `unconsumed` bitmap).
//!
//! **Victim scan** (`policy_choose_victim()`): a cursor starts at gfn
//! `frames / 2` ("start in the middle to avoid paging during BIOS startup")
//! and moves up, wrapping to 0; the victim is the first gfn with none of the
//! four bits set, and it is marked `tried`. One call examines each gfn at most
//! once. A call that finds none counts an empty scan; after
//! `retry_after_empty_scans` of them (xenpaging: 123) `tried` is cleared, so
//! frames refused earlier are retried.
//!
//! **MRU protection** (`policy_handle_paged_in()`): a paged-in gfn enters a
//! ring of `capacity` entries (default 16384, tunable by the ring's length)
//! and stays `protected` until `capacity` later page-ins push it out, oldest
//! first. As in `xenpaging_resume_page()`, a page-in only protects its gfn
//! while more pages are paged out than the ring holds
//! (`paged_count > capacity`); otherwise it ages the ring without protecting,
//! so a small target does not pin every page it brings back.
//!
//! A protected gfn can only re-enter the ring after being paged out again,
//! which its protection forbids, so a gfn is in the ring at most once. A
//! dropped frame keeps its protection until the ring ages it out.

use crate::bitmap::{words_for, Bitmap};
use crate::frame::FrameState;
use crate::Gfn;

/// Default MRU capacity, `DEFAULT_MRU_SIZE` in xenpaging's `policy_default.c`.
pub const DEFAULT_MRU_CAPACITY: usize = 16 * 1024;
/// Default number of empty scans before refused victims are retried (the
/// `unconsumed_cleared > 123` of `policy_choose_victim()`).
pub const DEFAULT_RETRY_AFTER_EMPTY_SCANS: u32 = 123;

const EMPTY: u64 = u64::MAX;

/// A ring of the most recently paged-in gfns, oldest overwritten first.
#[derive(Debug)]
pub struct Mru<'a> {
    entries: &'a mut [u64],
    next: usize,
    len: usize,
}

impl<'a> Mru<'a> {
    /// An empty ring whose capacity is `entries.len()`.
    pub fn new(entries: &'a mut [u64]) -> Self {
        entries.fill(EMPTY);
        Self {
            entries,
            next: 0,
            len: 0,
        }
    }

    /// Entries the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Gfns in the ring.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// `true` if the ring holds no gfn.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the ring.
    pub fn clear(&mut self) {
        self.entries.fill(EMPTY);
        self.next = 0;
        self.len = 0;
    }

    /// Writes `entry` (a gfn, or `None` to age the ring without protecting)
    /// over the oldest entry and returns the gfn it displaced. With capacity
    /// 0 the gfn is displaced at once.
    pub fn push(&mut self, entry: Option<Gfn>) -> Option<Gfn> {
        let raw = entry.map_or(EMPTY, Gfn::get);
        let Some(oldest) = self.entries.get_mut(self.next) else {
            return entry;
        };
        let displaced = (*oldest != EMPTY).then(|| Gfn::new(*oldest));
        *oldest = raw;
        self.next = (self.next + 1) % self.entries.len();
        if displaced.is_some() {
            self.len -= 1;
        }
        if raw != EMPTY {
            self.len += 1;
        }
        displaced
    }

    /// The gfns in the ring, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Gfn> + '_ {
        let (newer, older) = self.entries.split_at(self.next);
        older
            .iter()
            .chain(newer)
            .filter(|raw| **raw != EMPTY)
            .map(|raw| Gfn::new(*raw))
    }

    /// Whether `gfn` is in the ring (linear; for checks and tests).
    pub fn contains(&self, gfn: Gfn) -> bool {
        self.entries.contains(&gfn.get())
    }
}

/// Tunables of the victim policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Empty scans after which victims refused earlier are retried.
    pub retry_after_empty_scans: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            retry_after_empty_scans: DEFAULT_RETRY_AFTER_EMPTY_SCANS,
        }
    }
}

/// The storage given to [`VictimPolicy::new`] is too small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageTooSmall {
    /// Words needed ([`VictimPolicy::storage_words`]).
    pub needed: usize,
    /// Words given.
    pub given: usize,
}

/// The victim policy of one domain.
#[derive(Debug)]
pub struct VictimPolicy<'a> {
    frames: u64,
    next: u64,
    excluded: Bitmap<'a>,
    paged: Bitmap<'a>,
    protected: Bitmap<'a>,
    tried: Bitmap<'a>,
    mru: Mru<'a>,
    paged_count: u64,
    empty_scans: u32,
    config: PolicyConfig,
}

impl<'a> VictimPolicy<'a> {
    /// Words of bitmap storage a domain of `frames` frames needs.
    pub const fn storage_words(frames: u64) -> usize {
        4 * words_for(frames)
    }

    /// The policy for a domain of `frames` frames, nothing paged, gfn 0
    /// excluded, the cursor at `frames / 2`. `bits` holds
    /// [`Self::storage_words`] words; `mru` is the MRU ring (its length is
    /// the MRU capacity, normally [`DEFAULT_MRU_CAPACITY`]).
    pub fn new(
        frames: u64,
        bits: &'a mut [u64],
        mru: &'a mut [u64],
        config: PolicyConfig,
    ) -> Result<Self, StorageTooSmall> {
        let words = words_for(frames);
        let needed = Self::storage_words(frames);
        let too_small = StorageTooSmall {
            needed,
            given: bits.len(),
        };
        let bits = bits.get_mut(..needed).ok_or(too_small)?;
        let (excluded, rest) = bits.split_at_mut(words);
        let (paged, rest) = rest.split_at_mut(words);
        let (protected, tried) = rest.split_at_mut(words);
        let bitmap = |words| Bitmap::new_cleared(words, frames).ok_or(too_small);
        let mut policy = Self {
            frames,
            next: frames / 2,
            excluded: bitmap(excluded)?,
            paged: bitmap(paged)?,
            protected: bitmap(protected)?,
            tried: bitmap(tried)?,
            mru: Mru::new(mru),
            paged_count: 0,
            empty_scans: 0,
            config,
        };
        policy.excluded.set(0);
        Ok(policy)
    }

    /// Frames in the domain.
    pub const fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames the policy believes paged out (`Paged` or `PagingIn`).
    pub const fn paged_count(&self) -> u64 {
        self.paged_count
    }

    /// The MRU ring.
    pub const fn mru(&self) -> &Mru<'a> {
        &self.mru
    }

    /// Never choose `gfn` again (not pageable: a ring page, a device buffer,
    /// a frame the core reports as mapped elsewhere).
    pub fn exclude(&mut self, gfn: Gfn) {
        self.excluded.set(gfn.get());
    }

    /// Whether [`Self::choose_victim`] may return `gfn` now.
    pub fn is_candidate(&self, gfn: Gfn) -> bool {
        let index = gfn.get();
        index < self.frames
            && !self.excluded.get(index)
            && !self.paged.get(index)
            && !self.protected.get(index)
            && !self.tried.get(index)
    }

    /// First candidate in `[low, high)`, a word at a time.
    fn first_candidate_in(&self, low: u64, high: u64) -> Option<u64> {
        let mut position = low;
        while position < high {
            let word = (position / 64) as usize;
            let busy = self.excluded.words()[word]
                | self.paged.words()[word]
                | self.protected.words()[word]
                | self.tried.words()[word];
            let base = word as u64 * 64;
            let from_mask = !0u64 << (position - base);
            let end = high.min(base + 64);
            let to_mask = if end - base == 64 {
                !0
            } else {
                (1u64 << (end - base)) - 1
            };
            let free = !busy & from_mask & to_mask;
            if free != 0 {
                return Some(base + u64::from(free.trailing_zeros()));
            }
            position = base + 64;
        }
        None
    }

    /// The next victim: the first candidate at or after the cursor, wrapping
    /// once round the domain (as `policy_choose_victim()`). `None` if every
    /// frame is excluded, paged, protected or tried.
    pub fn choose_victim(&mut self) -> Option<Gfn> {
        let found = self
            .first_candidate_in(self.next, self.frames)
            .or_else(|| self.first_candidate_in(0, self.next.min(self.frames)));
        match found {
            Some(index) => {
                self.tried.set(index);
                self.next = if index + 1 >= self.frames {
                    0
                } else {
                    index + 1
                };
                Some(Gfn::new(index))
            }
            None => {
                self.empty_scans += 1;
                if self.empty_scans >= self.config.retry_after_empty_scans {
                    self.tried.clear_all();
                    self.empty_scans = 0;
                }
                None
            }
        }
    }

    /// Up to `min(limit, out.len())` distinct victims, written to `out`;
    /// returns how many. The caller bounds `limit` by the eviction batch
    /// ([`crate::target::next_work`]).
    pub fn choose_batch(&mut self, limit: usize, out: &mut [Gfn]) -> usize {
        let mut chosen = 0;
        for entry in out.iter_mut().take(limit) {
            let Some(gfn) = self.choose_victim() else {
                break;
            };
            *entry = gfn;
            chosen += 1;
        }
        chosen
    }

    /// Makes every frame refused earlier a candidate again now, instead of
    /// after `retry_after_empty_scans` empty scans (for a caller that scans
    /// rarely and must not stall with work left).
    pub fn forget_tried(&mut self) {
        self.tried.clear_all();
        self.empty_scans = 0;
    }

    /// A victim was not used after all (e.g. no free slot): it becomes a
    /// candidate again.
    pub fn release(&mut self, gfn: Gfn) {
        self.tried.clear(gfn.get());
    }

    /// `gfn` was evicted (`policy_notify_paged_out()`).
    pub fn notify_paged_out(&mut self, gfn: Gfn) {
        if !self.paged.set(gfn.get()) && gfn.get() < self.frames {
            self.paged_count += 1;
        }
        self.tried.clear(gfn.get());
    }

    /// `gfn` was loaded back (`policy_notify_paged_in()`, or
    /// `policy_notify_paged_in_nomru()` while `paged_count ≤ capacity`).
    pub fn notify_paged_in(&mut self, gfn: Gfn) {
        let protect = self.paged_count > self.mru.capacity() as u64;
        if self.paged.clear(gfn.get()) {
            self.paged_count -= 1;
        }
        let entry = if protect && gfn.get() < self.frames {
            self.protected.set(gfn.get());
            Some(gfn)
        } else {
            None
        };
        if let Some(oldest) = self.mru.push(entry) {
            self.protected.clear(oldest.get());
        }
    }

    /// The guest dropped `gfn` (`policy_notify_dropped()`).
    pub fn notify_dropped(&mut self, gfn: Gfn) {
        if self.paged.clear(gfn.get()) {
            self.paged_count -= 1;
        }
    }

    /// Up to `min(limit, out.len())` paged gfns to bring back when the target
    /// rises above the footprint, lowest gfn first (as `resume_pages()` in
    /// `xenpaging.c`); returns how many. Changes nothing: the caller loads
    /// them and reports each with [`Self::notify_paged_in`].
    pub fn choose_restore(&self, limit: usize, out: &mut [Gfn]) -> usize {
        let mut chosen = 0;
        let wanted = limit.min(out.len());
        for (word_index, word) in self.paged.words().iter().enumerate() {
            let mut bits = *word;
            while bits != 0 && chosen < wanted {
                let index = word_index as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                out[chosen] = Gfn::new(index);
                chosen += 1;
            }
            if chosen == wanted {
                break;
            }
        }
        chosen
    }

    /// Resets the policy to the core's map after a pager restart: `paged` is
    /// set for exactly the `Paged`/`PagingIn` frames; `protected`, `tried`
    /// and the MRU ring start empty and the cursor goes back to the middle.
    /// Exclusions are kept.
    pub fn sync_from_states(&mut self, states: &[FrameState]) {
        self.paged.clear_all();
        self.protected.clear_all();
        self.tried.clear_all();
        self.mru.clear();
        self.paged_count = 0;
        self.empty_scans = 0;
        self.next = self.frames / 2;
        for (index, state) in states.iter().enumerate().take(self.frames as usize) {
            if state.slot().is_some() {
                self.paged.set(index as u64);
                self.paged_count += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Slot;

    struct Storage {
        bits: Vec<u64>,
        mru: Vec<u64>,
    }

    impl Storage {
        fn new(frames: u64, mru: usize) -> Self {
            Self {
                bits: vec![0; VictimPolicy::storage_words(frames)],
                mru: vec![0; mru],
            }
        }

        fn policy(&mut self, frames: u64) -> VictimPolicy<'_> {
            VictimPolicy::new(
                frames,
                &mut self.bits,
                &mut self.mru,
                PolicyConfig::default(),
            )
            .unwrap()
        }
    }

    fn gfns(raw: &[u64]) -> Vec<Gfn> {
        raw.iter().map(|raw| Gfn::new(*raw)).collect()
    }

    #[test]
    fn scan_starts_mid_memory_and_wraps_skipping_gfn_0() {
        let mut storage = Storage::new(8, 4);
        let mut policy = storage.policy(8);
        let mut order = Vec::new();
        while let Some(gfn) = policy.choose_victim() {
            order.push(gfn);
        }
        assert_eq!(
            order,
            gfns(&[4, 5, 6, 7, 1, 2, 3]),
            "mid-memory, wrap, never gfn 0"
        );
    }

    #[test]
    fn scan_crosses_word_boundaries_and_honours_the_last_partial_word() {
        let frames = 200;
        let mut storage = Storage::new(frames, 4);
        let mut policy = storage.policy(frames);
        for gfn in 100..200 {
            policy.exclude(Gfn::new(gfn));
        }
        for gfn in 1..130 {
            if gfn != 63 && gfn != 64 {
                policy.notify_paged_out(Gfn::new(gfn));
            }
        }
        assert_eq!(policy.choose_victim(), Some(Gfn::new(63)));
        assert_eq!(policy.choose_victim(), Some(Gfn::new(64)));
        assert_eq!(
            policy.choose_victim(),
            None,
            "bits past gfn 199 are not frames"
        );
    }

    #[test]
    fn never_chooses_excluded_paged_or_protected_frames() {
        let frames = 64;
        let mut storage = Storage::new(frames, 2);
        let mut policy = storage.policy(frames);
        policy.exclude(Gfn::new(40));
        policy.notify_paged_out(Gfn::new(33));
        for gfn in 1..frames {
            if ![33, 40, 50, 51, 52].contains(&gfn) {
                policy.notify_paged_out(Gfn::new(gfn));
            }
        }
        // 50 and 51 are paged in while more pages are out than the MRU holds:
        // protected. 52 is never paged: a candidate.
        policy.notify_paged_out(Gfn::new(50));
        policy.notify_paged_out(Gfn::new(51));
        policy.notify_paged_in(Gfn::new(50));
        policy.notify_paged_in(Gfn::new(51));
        assert!(!policy.is_candidate(Gfn::new(0)));
        assert!(!policy.is_candidate(Gfn::new(40)));
        assert!(!policy.is_candidate(Gfn::new(33)));
        assert!(!policy.is_candidate(Gfn::new(50)));
        assert_eq!(policy.choose_victim(), Some(Gfn::new(52)));
        assert_eq!(policy.choose_victim(), None);
    }

    #[test]
    fn mru_protects_recent_page_ins_until_pushed_out() {
        let frames = 16;
        let mut storage = Storage::new(frames, 2);
        let mut policy = storage.policy(frames);
        for gfn in 1..frames {
            policy.notify_paged_out(Gfn::new(gfn));
        }
        assert_eq!(policy.paged_count(), 15);
        policy.notify_paged_in(Gfn::new(3));
        policy.notify_paged_in(Gfn::new(4));
        assert_eq!(policy.choose_victim(), None, "3 and 4 are protected");
        policy.notify_paged_in(Gfn::new(5));
        // 5 pushed 3 out: 3 is the only candidate (4 and 5 protected).
        assert_eq!(policy.mru().iter().collect::<Vec<_>>(), gfns(&[4, 5]));
        assert_eq!(policy.choose_victim(), Some(Gfn::new(3)));
        assert!(!policy.is_candidate(Gfn::new(4)));
        assert!(!policy.is_candidate(Gfn::new(5)));
    }

    #[test]
    fn page_ins_do_not_protect_while_few_pages_are_out() {
        let frames = 16;
        let mut storage = Storage::new(frames, 4);
        let mut policy = storage.policy(frames);
        for gfn in [3, 4] {
            policy.notify_paged_out(Gfn::new(gfn));
        }
        policy.notify_paged_in(Gfn::new(3));
        assert!(
            policy.is_candidate(Gfn::new(3)),
            "2 paged ≤ capacity 4: no protection"
        );
        assert!(policy.mru().is_empty());
    }

    #[test]
    fn refused_victims_are_retried_after_the_configured_empty_scans() {
        let frames = 4;
        let mut bits = vec![0; VictimPolicy::storage_words(frames)];
        let mut mru = vec![0; 1];
        let config = PolicyConfig {
            retry_after_empty_scans: 3,
        };
        let mut policy = VictimPolicy::new(frames, &mut bits, &mut mru, config).unwrap();
        let mut victims = Vec::new();
        while let Some(gfn) = policy.choose_victim() {
            victims.push(gfn); // first empty scan ends the loop
        }
        assert_eq!(victims, gfns(&[2, 3, 1]));
        // The core refused all three: they stay tried.
        assert_eq!(policy.choose_victim(), None, "second empty scan");
        assert_eq!(
            policy.choose_victim(),
            None,
            "third empty scan clears tried"
        );
        assert_eq!(policy.choose_victim(), Some(Gfn::new(2)));
    }

    #[test]
    fn batches_are_bounded_by_the_limit_and_the_buffer_and_are_distinct() {
        let frames = 100;
        let mut storage = Storage::new(frames, 4);
        let mut policy = storage.policy(frames);
        let mut out = [Gfn::default(); 42];
        assert_eq!(policy.choose_batch(10, &mut out), 10);
        assert_eq!(out[..10], gfns(&(50..60).collect::<Vec<_>>())[..]);
        assert_eq!(
            policy.choose_batch(100, &mut out),
            42,
            "bounded by the buffer"
        );
        let mut all: Vec<u64> = out.iter().map(|gfn| gfn.get()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 42);
        assert!(out
            .iter()
            .all(|gfn| gfn.get() >= 60 || gfn.get() < 13 && gfn.get() != 0));
        assert_eq!(policy.choose_batch(0, &mut out), 0);
        // 99 pageable frames: 52 taken, 47 left.
        assert_eq!(policy.choose_batch(100, &mut [Gfn::default(); 100]), 47);
    }

    #[test]
    fn released_victims_become_candidates_again() {
        let mut storage = Storage::new(8, 1);
        let mut policy = storage.policy(8);
        let victim = policy.choose_victim().unwrap();
        assert!(!policy.is_candidate(victim));
        policy.release(victim);
        assert!(policy.is_candidate(victim));
    }

    #[test]
    fn restore_picks_the_lowest_paged_frames() {
        let mut storage = Storage::new(130, 1);
        let mut policy = storage.policy(130);
        for gfn in [129, 7, 64, 65] {
            policy.notify_paged_out(Gfn::new(gfn));
        }
        let mut out = [Gfn::default(); 8];
        assert_eq!(policy.choose_restore(3, &mut out), 3);
        assert_eq!(out[..3], gfns(&[7, 64, 65])[..]);
        assert_eq!(policy.choose_restore(8, &mut out), 4);
        policy.notify_dropped(Gfn::new(7));
        assert_eq!(policy.paged_count(), 3);
        assert_eq!(policy.choose_restore(1, &mut out), 1);
        assert_eq!(out[0], Gfn::new(64));
    }

    #[test]
    fn sync_from_states_rebuilds_paged_and_resets_the_rest() {
        let mut storage = Storage::new(8, 2);
        let mut policy = storage.policy(8);
        policy.exclude(Gfn::new(7));
        let _ = policy.choose_victim();
        let mut states = [FrameState::Ram; 8];
        states[5] = FrameState::Paged { slot: Slot::new(0) };
        states[6] = FrameState::PagingIn { slot: Slot::new(1) };
        policy.sync_from_states(&states);
        assert_eq!(policy.paged_count(), 2);
        let mut order = Vec::new();
        while let Some(gfn) = policy.choose_victim() {
            order.push(gfn.get());
        }
        assert_eq!(
            order,
            [4, 1, 2, 3],
            "5, 6 paged, 7 still excluded, cursor back at 4"
        );
    }

    #[test]
    fn mru_ring_keeps_capacity_and_evicts_oldest_first() {
        let mut entries = [0u64; 3];
        let mut mru = Mru::new(&mut entries);
        assert_eq!(mru.capacity(), 3);
        assert_eq!(mru.push(Some(Gfn::new(1))), None);
        assert_eq!(mru.push(Some(Gfn::new(2))), None);
        assert_eq!(mru.push(Some(Gfn::new(3))), None);
        assert_eq!(mru.len(), 3);
        assert_eq!(mru.push(Some(Gfn::new(4))), Some(Gfn::new(1)));
        assert_eq!(
            mru.push(None),
            Some(Gfn::new(2)),
            "an unprotected page-in still ages the ring"
        );
        assert_eq!(mru.len(), 2);
        assert_eq!(mru.iter().collect::<Vec<_>>(), gfns(&[3, 4]));
        assert!(mru.contains(Gfn::new(4)) && !mru.contains(Gfn::new(1)));
        assert_eq!(mru.push(Some(Gfn::new(5))), Some(Gfn::new(3)));
        assert_eq!(mru.iter().collect::<Vec<_>>(), gfns(&[4, 5]));
        mru.clear();
        assert!(mru.is_empty());

        let mut none: [u64; 0] = [];
        let mut zero = Mru::new(&mut none);
        assert_eq!(
            zero.push(Some(Gfn::new(9))),
            Some(Gfn::new(9)),
            "capacity 0 protects nothing"
        );
    }

    #[test]
    fn default_mru_capacity_is_xenpagings() {
        let frames = 40_000;
        let mut bits = vec![0; VictimPolicy::storage_words(frames)];
        let mut mru = vec![0; DEFAULT_MRU_CAPACITY];
        let mut policy =
            VictimPolicy::new(frames, &mut bits, &mut mru, PolicyConfig::default()).unwrap();
        assert_eq!(policy.mru().capacity(), 16_384);
        for gfn in 1..frames {
            policy.notify_paged_out(Gfn::new(gfn));
        }
        for gfn in 1..=16_385 {
            policy.notify_paged_in(Gfn::new(gfn));
        }
        // 16385 page-ins into 16384 entries: gfn 1 pushed out, 2..=16385 protected.
        assert!(policy.is_candidate(Gfn::new(1)));
        assert!(!policy.is_candidate(Gfn::new(2)));
        assert!(!policy.is_candidate(Gfn::new(16_385)));
        assert_eq!(policy.mru().len(), 16_384);
    }

    #[test]
    fn too_little_storage_is_refused() {
        let mut bits = [0u64; 3];
        let mut mru = [0u64; 1];
        assert_eq!(
            VictimPolicy::new(64, &mut bits, &mut mru, PolicyConfig::default()).err(),
            Some(StorageTooSmall {
                needed: 4,
                given: 3
            })
        );
    }
}

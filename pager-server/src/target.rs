//! Memory targets, the eviction deficit, and what the pager does next.
//!
//! A domain's **footprint** is its resident frames, `ram + paging_out`
//! ([`crate::frame::FrameCounts::resident`]); that is what `memory_target`
//! (appliance config) and `hvctl mem-set DOM SIZE` bound, as xenpaging bounds
//! `tot_pages` by `memory/target-tot_pages`.
//!
//! Formulas:
//! * accepted target `t`: `floor ≤ t ≤ memory`, with
//!   `floor = max(DEFAULT_FLOOR_PAGES, unpageable)` (a target below the
//!   frames that can never be paged could never be met);
//! * eviction deficit: `max(0, resident − t)`;
//! * restore amount when the target rises: `min(t − resident, paged)`;
//!   with no target at all, every paged frame is restored (xenpaging's
//!   `target_tot_pages == 0` case);
//! * [`next_work`]: a pending page-in first, always; then an eviction batch of
//!   `min(deficit, max_batch, free_slots)` pages; then a restore batch of
//!   `min(restore, max_batch)`; else idle. `max_batch` defaults to 42, the
//!   bound xenpaging's main loop puts on `evict_pages()` "to be able to
//!   process page-in requests".

use core::fmt;

use crate::PAGE_SIZE;

/// Smallest accepted target, in pages: `ipc::boot::MIN_DOMAIN_MEMORY_MIB`
/// (2 MiB), the least memory a domain may be configured with.
pub const DEFAULT_FLOOR_PAGES: u64 =
    ipc::boot::MIN_DOMAIN_MEMORY_MIB as u64 * 1024 * 1024 / PAGE_SIZE as u64;

/// Default bound on one eviction or restore batch.
pub const DEFAULT_MAX_BATCH: u32 = 42;

/// A validated memory target, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target(u64);

impl Target {
    /// The target in pages.
    pub const fn pages(self) -> u64 {
        self.0
    }
}

/// Why a requested target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// More than the domain's memory: paging cannot add memory.
    AboveMemory {
        /// Pages requested.
        requested: u64,
        /// The domain's memory, pages.
        memory: u64,
    },
    /// Below the floor.
    BelowFloor {
        /// Pages requested.
        requested: u64,
        /// The floor, pages.
        floor: u64,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AboveMemory { requested, memory } => write!(
                f,
                "target of {requested} pages is larger than the domain's memory of {memory} pages"
            ),
            Self::BelowFloor { requested, floor } => {
                write!(
                    f,
                    "target of {requested} pages is below the floor of {floor} pages"
                )
            }
        }
    }
}

/// The bounds a domain's target must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetLimits {
    memory_pages: u64,
    floor_pages: u64,
}

impl TargetLimits {
    /// Limits for a domain of `memory_pages` frames of which `unpageable` can
    /// never be paged: `floor = max(DEFAULT_FLOOR_PAGES, unpageable)`, and at
    /// most `memory_pages`.
    pub fn new(memory_pages: u64, unpageable: u64) -> Self {
        Self::with_floor(memory_pages, DEFAULT_FLOOR_PAGES.max(unpageable))
    }

    /// Limits with an explicit floor (clamped to `memory_pages`).
    pub fn with_floor(memory_pages: u64, floor_pages: u64) -> Self {
        Self {
            memory_pages,
            floor_pages: floor_pages.min(memory_pages),
        }
    }

    /// The domain's memory, pages.
    pub const fn memory_pages(&self) -> u64 {
        self.memory_pages
    }

    /// The floor, pages.
    pub const fn floor_pages(&self) -> u64 {
        self.floor_pages
    }

    /// Accepts `requested` pages if `floor ≤ requested ≤ memory`.
    pub const fn validate(&self, requested: u64) -> Result<Target, TargetError> {
        if requested > self.memory_pages {
            Err(TargetError::AboveMemory {
                requested,
                memory: self.memory_pages,
            })
        } else if requested < self.floor_pages {
            Err(TargetError::BelowFloor {
                requested,
                floor: self.floor_pages,
            })
        } else {
            Ok(Target(requested))
        }
    }

    /// [`Self::validate`] for a size in bytes, rounded up to whole pages.
    pub const fn validate_bytes(&self, bytes: u64) -> Result<Target, TargetError> {
        self.validate(bytes.div_ceil(PAGE_SIZE as u64))
    }
}

/// Pages to evict to bring `resident` down to `target`: `max(0, resident − target)`.
pub const fn eviction_deficit(resident: u64, target: Target) -> u64 {
    resident.saturating_sub(target.0)
}

/// Where the footprint stands against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    /// Evict this many pages.
    Evict {
        /// The eviction deficit.
        pages: u64,
    },
    /// Bring this many paged frames back.
    Restore {
        /// Pages to restore.
        pages: u64,
    },
    /// The target is met.
    Hold,
}

/// The formulas of the module doc. `paged` counts frames on the device
/// (`Paged + PagingIn`); `target` is `None` when the domain has none.
pub const fn target_action(resident: u64, paged: u64, target: Option<Target>) -> TargetAction {
    let limit = match target {
        Some(target) => target.0,
        None => u64::MAX,
    };
    if resident > limit {
        TargetAction::Evict {
            pages: resident - limit,
        }
    } else if paged > 0 && resident < limit {
        let room = limit - resident;
        TargetAction::Restore {
            pages: if room < paged { room } else { paged },
        }
    } else {
        TargetAction::Hold
    }
}

/// What the pager knows when it picks its next piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkState {
    /// Page-in requests waiting (guest faults, and recovery roll-forwards).
    pub pending_page_ins: usize,
    /// From [`target_action`].
    pub action: TargetAction,
    /// Free slots in the domain's partition.
    pub free_slots: u32,
    /// Bound on one batch ([`DEFAULT_MAX_BATCH`]).
    pub max_batch: u32,
}

/// Why the pager has nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleReason {
    /// Footprint matches the target.
    TargetMet,
    /// Eviction is needed but every slot is in use: eviction stops; the
    /// guest is unaffected (issue #5 §5).
    DeviceFull,
}

/// The next piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum WorkItem {
    /// Serve the oldest page-in request.
    PageIn,
    /// Evict a batch of this many pages.
    Evict {
        /// Batch size, at least 1.
        count: u32,
    },
    /// Restore a batch of this many paged frames.
    Restore {
        /// Batch size, at least 1.
        count: u32,
    },
    /// Nothing to do.
    Idle(IdleReason),
}

fn batch(pages: u64, max_batch: u32) -> u32 {
    u32::try_from(pages)
        .unwrap_or(u32::MAX)
        .min(max_batch.max(1))
}

/// Picks the next piece of work: page-ins always first, so a waiting vCPU is
/// never held up by more than one eviction batch.
pub fn next_work(state: &WorkState) -> WorkItem {
    if state.pending_page_ins > 0 {
        return WorkItem::PageIn;
    }
    match state.action {
        TargetAction::Evict { pages } if pages > 0 => {
            if state.free_slots == 0 {
                WorkItem::Idle(IdleReason::DeviceFull)
            } else {
                WorkItem::Evict {
                    count: batch(pages, state.max_batch).min(state.free_slots),
                }
            }
        }
        TargetAction::Restore { pages } if pages > 0 => WorkItem::Restore {
            count: batch(pages, state.max_batch),
        },
        _ => WorkItem::Idle(IdleReason::TargetMet),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_floor_is_two_mib() {
        assert_eq!(DEFAULT_FLOOR_PAGES, 512);
    }

    #[test]
    fn targets_above_memory_or_below_the_floor_are_rejected_with_the_reason() {
        let limits = TargetLimits::new(8192, 10);
        assert_eq!(limits.floor_pages(), 512);
        assert_eq!(limits.validate(8192).map(Target::pages), Ok(8192));
        assert_eq!(limits.validate(512).map(Target::pages), Ok(512));
        assert_eq!(
            limits.validate(8193),
            Err(TargetError::AboveMemory {
                requested: 8193,
                memory: 8192
            })
        );
        assert_eq!(
            limits.validate(511),
            Err(TargetError::BelowFloor {
                requested: 511,
                floor: 512
            })
        );
        assert_eq!(
            format!("{}", limits.validate(9000).unwrap_err()),
            "target of 9000 pages is larger than the domain's memory of 8192 pages"
        );
        assert_eq!(
            format!("{}", limits.validate(100).unwrap_err()),
            "target of 100 pages is below the floor of 512 pages"
        );
    }

    #[test]
    fn unpageable_frames_raise_the_floor() {
        let limits = TargetLimits::new(8192, 1000);
        assert_eq!(
            limits.validate(999),
            Err(TargetError::BelowFloor {
                requested: 999,
                floor: 1000
            })
        );
        assert_eq!(
            TargetLimits::new(300, 0).floor_pages(),
            300,
            "floor never exceeds memory"
        );
    }

    #[test]
    fn byte_targets_round_up_to_pages() {
        let limits = TargetLimits::with_floor(1024, 1);
        assert_eq!(
            limits.validate_bytes(4096 * 10 + 1).map(Target::pages),
            Ok(11)
        );
        assert_eq!(
            limits.validate_bytes(4 * 1024 * 1024 + 1),
            Err(TargetError::AboveMemory {
                requested: 1025,
                memory: 1024
            })
        );
    }

    #[test]
    fn deficit_and_target_actions() {
        let target = TargetLimits::with_floor(1000, 1).validate(600).unwrap();
        assert_eq!(eviction_deficit(700, target), 100);
        assert_eq!(eviction_deficit(500, target), 0);
        assert_eq!(
            target_action(700, 0, Some(target)),
            TargetAction::Evict { pages: 100 }
        );
        assert_eq!(
            target_action(550, 30, Some(target)),
            TargetAction::Restore { pages: 30 }
        );
        assert_eq!(
            target_action(590, 30, Some(target)),
            TargetAction::Restore { pages: 10 }
        );
        assert_eq!(target_action(600, 30, Some(target)), TargetAction::Hold);
        assert_eq!(target_action(500, 0, Some(target)), TargetAction::Hold);
        assert_eq!(
            target_action(500, 77, None),
            TargetAction::Restore { pages: 77 }
        );
        assert_eq!(target_action(500, 0, None), TargetAction::Hold);
    }

    fn work(pending_page_ins: usize, action: TargetAction, free_slots: u32) -> WorkItem {
        next_work(&WorkState {
            pending_page_ins,
            action,
            free_slots,
            max_batch: DEFAULT_MAX_BATCH,
        })
    }

    #[test]
    fn page_in_always_comes_first() {
        for action in [
            TargetAction::Evict { pages: 1_000_000 },
            TargetAction::Restore { pages: 5 },
            TargetAction::Hold,
        ] {
            assert_eq!(work(1, action, 100), WorkItem::PageIn, "{action:?}");
            assert_eq!(
                work(1, action, 0),
                WorkItem::PageIn,
                "{action:?}, device full"
            );
        }
    }

    #[test]
    fn eviction_batches_are_bounded_by_deficit_batch_and_free_slots() {
        assert_eq!(
            work(0, TargetAction::Evict { pages: 1_000_000 }, 100),
            WorkItem::Evict { count: 42 }
        );
        assert_eq!(
            work(0, TargetAction::Evict { pages: 5 }, 100),
            WorkItem::Evict { count: 5 }
        );
        assert_eq!(
            work(0, TargetAction::Evict { pages: 100 }, 3),
            WorkItem::Evict { count: 3 }
        );
        assert_eq!(
            work(0, TargetAction::Evict { pages: 100 }, 0),
            WorkItem::Idle(IdleReason::DeviceFull)
        );
        assert_eq!(
            work(0, TargetAction::Restore { pages: 100 }, 0),
            WorkItem::Restore { count: 42 }
        );
        assert_eq!(
            work(0, TargetAction::Restore { pages: 2 }, 0),
            WorkItem::Restore { count: 2 }
        );
        assert_eq!(
            work(0, TargetAction::Hold, 0),
            WorkItem::Idle(IdleReason::TargetMet)
        );
        let tiny = next_work(&WorkState {
            pending_page_ins: 0,
            action: TargetAction::Evict { pages: 9 },
            free_slots: 9,
            max_batch: 0,
        });
        assert_eq!(
            tiny,
            WorkItem::Evict { count: 1 },
            "a zero bound still makes progress"
        );
    }
}

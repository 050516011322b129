//! Crash recovery, end to end, on a model of the whole system.
//!
//! The model has three parts, wired only through this crate's public API:
//! * the **core**: a [`FrameTable`] (the persistent gfn → slot map), the host
//!   frames' contents, and a message queue to the current pager instance;
//! * the **disk**: header block, slot-table blocks and data slots, laid out by
//!   [`pager_server::disk`];
//! * the **pager**: slot allocator, victim policy, cached slot table, page-in
//!   queue, and the one operation in flight, advanced one step at a time so a
//!   crash can land between any two steps.
//!
//! A guest writes checksummed patterns, reads them back, drops and
//! repopulates frames; the target moves; the pager is killed at random. After
//! every action the invariants of issue #6 §3 are checked, and at the end
//! every page is brought back and compared byte for byte with what the guest
//! last wrote.
// The model's helpers sit outside `#[test]` functions, where clippy.toml's
// allow-unwrap-in-tests does not reach; in a test model a failed unwrap is a
// failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap, VecDeque};

use pager_server::bitmap::words_for;
use pager_server::disk::{
    page_checksum, verify_page, Owner, Partition, SlotEntry, SlotTable, SwapHeader, BLOCK_SIZE,
};
use pager_server::frame::{
    DropEffect, FrameCounts, FrameState, FrameTable, Operation, Populate, StateKind,
    TransitionError,
};
use pager_server::policy::{PolicyConfig, VictimPolicy};
use pager_server::recovery::{check_slot_table, recover, RecoveryAction};
use pager_server::slots::SlotAllocator;
use pager_server::stats::Stats;
use pager_server::target::{
    next_work, target_action, Target, TargetError, TargetLimits, WorkItem, WorkState,
};
use pager_server::{Gfn, Slot, PAGE_SIZE};
use proptest::prelude::*;

const FRAMES: usize = 24;
/// Fewer slots than frames, so the partition fills up.
const SLOTS: u32 = 10;
/// The domain's partition starts at device slot 3 of a 13-slot device.
const PARTITION: Partition = Partition {
    first: 3,
    count: SLOTS,
};
const DEVICE_SLOTS: u32 = 13;
const DOMAIN: u16 = 1;
/// A frame the core would refuse to page (e.g. a ring page).
const UNPAGEABLE: u64 = 5;
const MRU_CAPACITY: usize = 3;
const MAX_BATCH: u32 = 3;
const FLOOR: u64 = 2;

type Page = [u8; PAGE_SIZE];

fn leak<T: Clone>(value: T, len: usize) -> &'static mut [T] {
    Box::leak(vec![value; len].into_boxed_slice())
}

/// The page a guest writes for `value`: zeros for 0, else a pattern.
fn pattern(value: u64) -> Box<Page> {
    let mut page = Box::new([0u8; PAGE_SIZE]);
    if value != 0 {
        let mut state = value;
        for chunk in page.chunks_exact_mut(8) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut mixed = state;
            mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.copy_from_slice(&(mixed ^ (mixed >> 31)).to_le_bytes());
        }
    }
    page
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    PageIn(Gfn),
    SlotReleased(Slot, Gfn),
}

struct Core {
    table: FrameTable<'static>,
    host: Vec<Option<Box<Page>>>,
    /// A host frame dropped while the copy window mapped it.
    orphan: Option<Box<Page>>,
    to_pager: VecDeque<Message>,
}

impl Core {
    fn nominate(&mut self, gfn: Gfn) -> Result<(), TransitionError> {
        assert_ne!(gfn.get(), 0, "the policy chose gfn 0");
        assert_ne!(
            gfn.get(),
            UNPAGEABLE,
            "the policy chose a non-pageable frame"
        );
        self.table.nominate(gfn)
    }
}

struct Disk {
    header: Page,
    table: Vec<Page>,
    data: Vec<Box<Page>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    EvictChosen,
    EvictNominated,
    EvictCopied,
    EvictDataWritten,
    EvictEntryWritten,
    EvictUnmapped,
    PageInTaken,
    PageInRead,
}

enum Op {
    Idle,
    Evict {
        gfn: Gfn,
        slot: Slot,
        phase: Phase,
        buffer: Option<Box<Page>>,
    },
    PageIn {
        gfn: Gfn,
        slot: Slot,
        phase: Phase,
        buffer: Option<Box<Page>>,
        started: u64,
    },
}

struct Pager {
    slots: SlotAllocator<'static>,
    policy: VictimPolicy<'static>,
    table: SlotTable<'static>,
    queue: VecDeque<Gfn>,
    op: Op,
}

impl Pager {
    /// Starts a pager instance the way a restarted one must: from the disk
    /// and the core's states only.
    fn start(disk: &Disk, states: &[FrameState]) -> Self {
        let header = SwapHeader::decode(&disk.header).expect("header");
        header
            .check_device(header.total_blocks())
            .expect("device size");
        let blocks = leak([0u8; BLOCK_SIZE], header.table_blocks() as usize);
        blocks.copy_from_slice(&disk.table);
        let table = SlotTable::load(blocks, header).expect("slot table reads back");

        let mut scratch = vec![0u64; words_for(u64::from(SLOTS))];
        let plan = recover(states, SLOTS, &mut scratch).expect("the core's map is consistent");
        assert_eq!(
            plan.summary().rolled_back,
            0,
            "the core rolled nominations back at death"
        );
        let mismatches = check_slot_table(states, DOMAIN, PARTITION, &table, |mismatch| {
            panic!("slot table disagrees with the map: {mismatch:?}")
        });
        assert_eq!(mismatches, 0);

        let slots = SlotAllocator::rebuild_from_states(
            SLOTS,
            leak(0, SLOTS as usize),
            leak(0, words_for(u64::from(SLOTS))),
            states,
        )
        .expect("allocator rebuilds from the map");
        assert_eq!(u64::from(slots.used_count()), plan.summary().slots_in_use);

        let mut policy = VictimPolicy::new(
            FRAMES as u64,
            leak(0, VictimPolicy::storage_words(FRAMES as u64)),
            leak(0, MRU_CAPACITY),
            PolicyConfig {
                retry_after_empty_scans: 5,
            },
        )
        .expect("policy storage");
        policy.exclude(Gfn::new(UNPAGEABLE));
        policy.sync_from_states(states);

        let queue = plan
            .actions()
            .filter_map(|(gfn, action)| match action {
                RecoveryAction::ResumePageIn { .. } => Some(gfn),
                RecoveryAction::CancelNomination => None,
            })
            .collect();
        Self {
            slots,
            policy,
            table,
            queue,
            op: Op::Idle,
        }
    }
}

struct World {
    core: Core,
    disk: Disk,
    pager: Pager,
    /// What the guest last wrote to each frame (0: zeros).
    truth: Vec<u64>,
    target: Option<Target>,
    stats: Stats,
    clock: u64,
    crashes: u64,
    /// Phases a crash interrupted.
    interrupted: BTreeSet<Phase>,
    expected_pages: HashMap<u64, (Box<Page>, u32)>,
}

impl World {
    fn new() -> Self {
        let header = SwapHeader::new(DEVICE_SLOTS, 0xC0FF_EE00_1234_5678).unwrap();
        let blocks = leak([0u8; BLOCK_SIZE], header.table_blocks() as usize);
        let mut formatted = SlotTable::format(blocks, header).unwrap();
        let table_blocks = (0..header.table_blocks())
            .map(|index| *formatted.sealed_block(index).unwrap())
            .collect();
        let disk = Disk {
            header: header.encode(),
            table: table_blocks,
            // Garbage in the data slots: nothing may rely on their contents.
            data: (0..DEVICE_SLOTS)
                .map(|slot| pattern(0xBAD0 + u64::from(slot)))
                .collect(),
        };
        let states = leak(FrameState::Ram, FRAMES);
        let table = FrameTable::new(states, leak(0, words_for(u64::from(SLOTS))), SLOTS).unwrap();
        let pager = Pager::start(&disk, table.states());
        let core = Core {
            table,
            host: (0..FRAMES).map(|_| Some(pattern(0))).collect(),
            orphan: None,
            to_pager: VecDeque::new(),
        };
        Self {
            core,
            disk,
            pager,
            truth: vec![0; FRAMES],
            target: None,
            stats: Stats::default(),
            clock: 0,
            crashes: 0,
            interrupted: BTreeSet::new(),
            expected_pages: HashMap::new(),
        }
    }

    fn expected(&mut self, gfn: usize) -> &(Box<Page>, u32) {
        let value = self.truth[gfn];
        self.expected_pages.entry(value).or_insert_with(|| {
            let page = pattern(value);
            let checksum = page_checksum(&page);
            (page, checksum)
        })
    }

    fn state(&self, gfn: Gfn) -> FrameState {
        self.core.table.state(gfn).unwrap()
    }

    fn request_page_in(&mut self, gfn: Gfn) {
        match self.core.table.populate(gfn).unwrap() {
            Populate::Requested { .. } => self.core.to_pager.push_back(Message::PageIn(gfn)),
            Populate::AlreadyRequested { .. } => {}
        }
    }

    // ---- the guest ----

    fn guest_write(&mut self, gfn: Gfn, value: u64) {
        match self.state(gfn) {
            FrameState::Ram | FrameState::PagingOut => {
                if self.state(gfn) == FrameState::PagingOut {
                    // Write fault on a read-only, nominated frame.
                    self.core.table.cancel_nomination(gfn).unwrap();
                }
                self.core.host[gfn.get() as usize] = Some(pattern(value));
                self.truth[gfn.get() as usize] = value;
            }
            FrameState::Paged { .. } | FrameState::PagingIn { .. } => self.request_page_in(gfn),
            FrameState::Dropped => {}
        }
    }

    fn guest_read(&mut self, gfn: Gfn) {
        match self.state(gfn) {
            FrameState::Ram | FrameState::PagingOut => {
                let index = gfn.get() as usize;
                let expected = self.expected(index).0.clone();
                let host = self.core.host[index]
                    .as_ref()
                    .expect("resident frame has memory");
                assert!(**host == *expected, "guest read wrong data at {gfn}");
            }
            FrameState::Paged { .. } | FrameState::PagingIn { .. } => self.request_page_in(gfn),
            FrameState::Dropped => {}
        }
    }

    fn guest_drop(&mut self, gfn: Gfn) {
        let index = gfn.get() as usize;
        match self.core.table.drop_frame(gfn) {
            Ok(DropEffect::FreeHostFrame) => {
                assert_ne!(self.core.table.copy_window().map(|w| w.gfn), Some(gfn));
                assert!(self.core.host[index].take().is_some());
            }
            Ok(DropEffect::FreeHostFrameOnUnmap) => {
                assert_eq!(self.core.table.copy_window().map(|w| w.gfn), Some(gfn));
                self.core.orphan = self.core.host[index].take();
                assert!(self.core.orphan.is_some());
            }
            Ok(DropEffect::ReleaseSlot { slot, .. }) => {
                self.core
                    .to_pager
                    .push_back(Message::SlotReleased(slot, gfn));
            }
            Err(error) => {
                assert_eq!(
                    error,
                    TransitionError::Illegal {
                        operation: Operation::Drop,
                        from: StateKind::Dropped
                    }
                );
                return;
            }
        }
        self.truth[index] = 0;
    }

    fn guest_repopulate(&mut self, gfn: Gfn) {
        if self.core.table.repopulate(gfn).is_ok() {
            self.core.host[gfn.get() as usize] = Some(pattern(0));
            assert_eq!(
                self.truth[gfn.get() as usize],
                0,
                "a dropped frame reads back as zeros"
            );
        }
    }

    fn set_target(&mut self, pages: u64) {
        let limits = TargetLimits::with_floor(FRAMES as u64, FLOOR);
        match limits.validate(pages) {
            Ok(target) => {
                assert!((FLOOR..=FRAMES as u64).contains(&pages));
                self.target = Some(target);
            }
            Err(TargetError::AboveMemory { .. }) => assert!(pages > FRAMES as u64),
            Err(TargetError::BelowFloor { .. }) => assert!(pages < FLOOR),
        }
    }

    // ---- the pager, one step at a time ----

    fn device_slot(slot: Slot) -> usize {
        PARTITION
            .device_slot(slot)
            .expect("slot inside the partition") as usize
    }

    /// One step of the pager. Returns `false` when it had nothing to do.
    fn pager_step(&mut self) -> bool {
        self.clock += 1;
        let op = std::mem::replace(&mut self.pager.op, Op::Idle);
        match op {
            Op::Idle => return self.pager_pick_work(),
            Op::Evict {
                gfn,
                slot,
                phase,
                buffer,
            } => self.evict_step(gfn, slot, phase, buffer),
            Op::PageIn {
                gfn,
                slot,
                phase,
                buffer,
                started,
            } => self.page_in_step(gfn, slot, phase, buffer, started),
        }
        true
    }

    fn pager_pick_work(&mut self) -> bool {
        if let Some(message) = self.core.to_pager.pop_front() {
            match message {
                Message::PageIn(gfn) => self.pager.queue.push_back(gfn),
                Message::SlotReleased(slot, gfn) => {
                    self.pager
                        .slots
                        .free(slot)
                        .expect("a released slot was in use");
                    self.pager.policy.notify_dropped(gfn);
                    self.stats.dropped_while_paged += 1;
                }
            }
            return true;
        }
        let counts = self.core.table.counts();
        let work = next_work(&WorkState {
            pending_page_ins: self.pager.queue.len(),
            action: target_action(counts.resident(), counts.swapped(), self.target),
            free_slots: self.pager.slots.free_count(),
            max_batch: MAX_BATCH,
        });
        match work {
            WorkItem::PageIn => {
                let gfn = self.pager.queue.pop_front().unwrap();
                match self.state(gfn) {
                    FrameState::Paged { slot } | FrameState::PagingIn { slot } => {
                        self.pager.op = Op::PageIn {
                            gfn,
                            slot,
                            phase: Phase::PageInTaken,
                            buffer: None,
                            started: self.clock,
                        };
                    }
                    FrameState::Ram | FrameState::Dropped => {
                        self.core
                            .table
                            .resume(gfn)
                            .expect("stale request acknowledged");
                    }
                    FrameState::PagingOut => {}
                }
                true
            }
            WorkItem::Evict { count } => {
                assert!((1..=MAX_BATCH).contains(&count));
                let slot = self.pager.slots.alloc().expect("free_slots > 0");
                match self.pager.policy.choose_victim() {
                    Some(gfn) => {
                        self.pager.op = Op::Evict {
                            gfn,
                            slot,
                            phase: Phase::EvictChosen,
                            buffer: None,
                        };
                        true
                    }
                    None => {
                        self.pager.slots.free(slot).unwrap();
                        false
                    }
                }
            }
            WorkItem::Restore { count } => {
                assert!((1..=MAX_BATCH).contains(&count));
                let mut out = [Gfn::default(); 1];
                assert_eq!(self.pager.policy.choose_restore(1, &mut out), 1);
                let gfn = out[0];
                let slot = self
                    .state(gfn)
                    .slot()
                    .expect("policy's paged set matches the map");
                self.pager.op = Op::PageIn {
                    gfn,
                    slot,
                    phase: Phase::PageInTaken,
                    buffer: None,
                    started: self.clock,
                };
                true
            }
            WorkItem::Idle(reason) => {
                if reason == pager_server::target::IdleReason::DeviceFull {
                    self.stats.record_device_full();
                }
                false
            }
        }
    }

    fn abandon_eviction(&mut self, slot: Slot) {
        self.pager.slots.free(slot).unwrap();
        self.stats.record_evict_failure();
    }

    fn evict_step(&mut self, gfn: Gfn, slot: Slot, phase: Phase, buffer: Option<Box<Page>>) {
        let owner = Owner {
            domain: DOMAIN,
            gfn,
        };
        let next = |phase, buffer| Op::Evict {
            gfn,
            slot,
            phase,
            buffer,
        };
        self.pager.op = match phase {
            Phase::EvictChosen => match self.core.nominate(gfn) {
                Ok(()) => next(Phase::EvictNominated, None),
                Err(TransitionError::Illegal {
                    operation: Operation::Nominate,
                    ..
                }) => {
                    self.abandon_eviction(slot);
                    Op::Idle
                }
                Err(error) => panic!("nominate {gfn}: {error}"),
            },
            Phase::EvictNominated => match self.core.table.open_copy_window(gfn) {
                Ok(()) => {
                    let copy = self.core.host[gfn.get() as usize]
                        .clone()
                        .expect("nominated frame");
                    next(Phase::EvictCopied, Some(copy))
                }
                Err(TransitionError::Illegal {
                    operation: Operation::MapForCopy,
                    ..
                }) => {
                    self.abandon_eviction(slot);
                    Op::Idle
                }
                Err(error) => panic!("map {gfn}: {error}"),
            },
            Phase::EvictCopied => {
                let data = buffer.expect("copied");
                *self.disk.data[Self::device_slot(slot)] = *data;
                next(Phase::EvictDataWritten, Some(data))
            }
            Phase::EvictDataWritten => {
                let data = buffer.expect("copied");
                let device_slot = PARTITION.device_slot(slot).unwrap();
                let block = self
                    .pager
                    .table
                    .set_entry(device_slot, SlotEntry::for_page(owner, &data))
                    .unwrap();
                self.disk.table[block as usize] = *self.pager.table.sealed_block(block).unwrap();
                next(Phase::EvictEntryWritten, None)
            }
            Phase::EvictEntryWritten => {
                let closed = self.core.table.close_copy_window().expect("window open");
                assert_eq!(closed.gfn, gfn);
                if closed.free_host_frame {
                    assert!(self.core.orphan.take().is_some());
                }
                next(Phase::EvictUnmapped, None)
            }
            Phase::EvictUnmapped => {
                match self.core.table.evict(gfn, slot) {
                    Ok(()) => {
                        assert!(self.core.host[gfn.get() as usize].take().is_some());
                        self.pager.policy.notify_paged_out(gfn);
                        self.stats.record_page_out();
                    }
                    // The guest wrote or dropped the frame during the copy.
                    Err(TransitionError::Illegal {
                        operation: Operation::Evict,
                        from,
                    }) => {
                        assert!(matches!(from, StateKind::Ram | StateKind::Dropped));
                        self.abandon_eviction(slot);
                    }
                    Err(error) => panic!("evict {gfn}: {error}"),
                }
                Op::Idle
            }
            _ => unreachable!("{phase:?} is not an eviction phase"),
        };
    }

    fn page_in_step(
        &mut self,
        gfn: Gfn,
        slot: Slot,
        phase: Phase,
        buffer: Option<Box<Page>>,
        started: u64,
    ) {
        self.pager.op = match phase {
            Phase::PageInTaken => {
                let device_slot = PARTITION.device_slot(slot).unwrap();
                let data = self.disk.data[device_slot as usize].clone();
                let entry = self.pager.table.entry(device_slot).unwrap();
                if let Err(error) = verify_page(
                    entry,
                    Owner {
                        domain: DOMAIN,
                        gfn,
                    },
                    &data,
                ) {
                    // Allowed only if the frame left the device meanwhile
                    // (dropped): then the read is discarded anyway.
                    assert!(
                        self.state(gfn).slot() != Some(slot),
                        "page-in of {gfn} from {slot} failed verification: {error}"
                    );
                }
                Op::PageIn {
                    gfn,
                    slot,
                    phase: Phase::PageInRead,
                    buffer: Some(data),
                    started,
                }
            }
            Phase::PageInRead => {
                let data = buffer.expect("read");
                match self.core.table.load(gfn, slot) {
                    Ok(loaded) => {
                        assert_eq!(loaded.released, slot);
                        self.core.host[gfn.get() as usize] = Some(data);
                        self.pager.slots.free(slot).expect("loaded slot was in use");
                        self.pager.policy.notify_paged_in(gfn);
                        self.stats.record_page_in(self.clock - started);
                    }
                    Err(TransitionError::Illegal {
                        operation: Operation::Load,
                        from,
                    }) => {
                        assert!(
                            matches!(from, StateKind::Dropped | StateKind::Ram),
                            "{from:?}"
                        );
                    }
                    Err(error) => panic!("load {gfn}: {error}"),
                }
                Op::Idle
            }
            _ => unreachable!("{phase:?} is not a page-in phase"),
        };
    }

    // ---- the crash ----

    fn crash(&mut self) {
        self.crashes += 1;
        self.stats.recoveries += 1;
        match &self.pager.op {
            Op::Idle => {}
            Op::Evict { phase, .. } | Op::PageIn { phase, .. } => {
                self.interrupted.insert(*phase);
            }
        }
        let cleanup = self.core.table.pager_crashed(|gfn| {
            assert!(gfn.get() != 0 && gfn.get() != UNPAGEABLE);
        });
        if let Some(window) = cleanup.revoked_window {
            assert_eq!(window.free_host_frame, self.core.orphan.is_some());
            self.core.orphan = None;
        }
        assert!(
            self.core.orphan.is_none(),
            "no host frame leaks past a crash"
        );
        // Messages to the dead generation are discarded; their effects are
        // all in the states.
        self.core.to_pager.clear();
        self.pager = Pager::start(&self.disk, self.core.table.states());
        assert_eq!(self.pager.queue.len() as u64, cleanup.page_ins_outstanding);
    }

    // ---- invariants ----

    fn check(&mut self) {
        let states: Vec<FrameState> = self.core.table.states().to_vec();
        assert_eq!(self.core.table.counts(), FrameCounts::of(&states));

        // The map is consistent: slots in range and unique.
        let mut scratch = vec![0u64; words_for(u64::from(SLOTS))];
        recover(&states, SLOTS, &mut scratch).expect("map consistent");

        // No page is lost: every frame's content is where its state says.
        for (index, state) in states.iter().enumerate() {
            let gfn = Gfn::new(index as u64);
            let (expected, checksum) = {
                let (page, checksum) = self.expected(index);
                (page.clone(), *checksum)
            };
            match *state {
                FrameState::Ram | FrameState::PagingOut => {
                    let host = self.core.host[index]
                        .as_ref()
                        .expect("resident frame has memory");
                    assert!(**host == *expected, "{gfn} ({state:?}) lost its content");
                }
                FrameState::Paged { slot } | FrameState::PagingIn { slot } => {
                    assert!(
                        self.core.host[index].is_none(),
                        "{gfn} evicted but still backed"
                    );
                    let device_slot = Self::device_slot(slot);
                    assert!(
                        *self.disk.data[device_slot] == *expected,
                        "{gfn} in {slot}: data on disk is not what the guest wrote"
                    );
                    // What a restarted pager would read: the on-disk entry.
                    let (block, entry) = pager_server::disk::table_position(device_slot as u32);
                    let mut bytes = [0u8; 16];
                    let offset = entry * 16;
                    bytes.copy_from_slice(&self.disk.table[block as usize][offset..offset + 16]);
                    let entry = SlotEntry::decode(&bytes).unwrap();
                    assert_eq!(
                        entry.owner,
                        Some(Owner {
                            domain: DOMAIN,
                            gfn
                        }),
                        "{gfn} entry"
                    );
                    assert_eq!(entry.checksum, checksum, "{gfn} entry checksum");
                    // Never both free and in use.
                    assert!(
                        self.pager.slots.is_in_use(slot),
                        "{slot} is used by {gfn} but free in the allocator"
                    );
                }
                FrameState::Dropped => {
                    assert!(self.core.host[index].is_none());
                    assert_eq!(self.truth[index], 0);
                }
            }
        }
        for slot in 0..SLOTS {
            let slot = Slot::new(slot);
            let named = states.iter().any(|state| state.slot() == Some(slot));
            assert_eq!(
                self.core.table.slot_in_use(slot),
                named,
                "core bitmap for {slot}"
            );
        }
        assert_eq!(
            self.pager.slots.free_count() + self.pager.slots.used_count(),
            SLOTS,
            "allocator conservation"
        );

        // The copy window maps only the frame being copied, only mid-copy.
        match (self.core.table.copy_window(), &self.pager.op) {
            (None, Op::Evict { phase, .. }) => assert!(
                !matches!(
                    phase,
                    Phase::EvictCopied | Phase::EvictDataWritten | Phase::EvictEntryWritten
                ),
                "window closed during the copy"
            ),
            (None, _) => {}
            (
                Some(window),
                Op::Evict {
                    gfn, slot, phase, ..
                },
            ) => {
                assert_eq!(window.gfn, *gfn);
                assert!(matches!(
                    phase,
                    Phase::EvictCopied | Phase::EvictDataWritten | Phase::EvictEntryWritten
                ));
                assert_eq!(window.orphaned, self.core.orphan.is_some());
                assert!(
                    !self.core.table.slot_in_use(*slot),
                    "eviction slot recorded early"
                );
            }
            (Some(window), _) => panic!("window on {} with no eviction in flight", window.gfn),
        }
    }

    /// Brings every page back (no target), then reads every frame.
    fn drain_and_verify(&mut self) {
        self.target = None;
        let mut idle_steps = 0;
        for _ in 0..20_000 {
            if self.pager_step() {
                idle_steps = 0;
            } else {
                idle_steps += 1;
            }
            self.check();
            if idle_steps > 2 {
                break;
            }
        }
        let counts = self.core.table.counts();
        assert_eq!(counts.swapped(), 0, "every page came back: {counts:?}");
        assert_eq!(
            self.pager.slots.free_count(),
            SLOTS,
            "every slot is free again"
        );
        for gfn in 0..FRAMES {
            self.guest_read(Gfn::new(gfn as u64));
        }
    }
}

#[derive(Debug, Clone)]
enum Action {
    Write { gfn: u64, value: u64 },
    Read { gfn: u64 },
    Drop { gfn: u64 },
    Repopulate { gfn: u64 },
    PagerStep,
    PagerRun { steps: u32 },
    SetTarget { pages: u64 },
    Crash,
}

fn action() -> impl Strategy<Value = Action> {
    let gfn = 0..FRAMES as u64;
    prop_oneof![
        4 => (gfn.clone(), 1..u64::MAX).prop_map(|(gfn, value)| Action::Write { gfn, value }),
        3 => gfn.clone().prop_map(|gfn| Action::Read { gfn }),
        1 => gfn.clone().prop_map(|gfn| Action::Drop { gfn }),
        // Repopulate more often than drop, so most frames stay in use.
        3 => gfn.prop_map(|gfn| Action::Repopulate { gfn }),
        12 => Just(Action::PagerStep),
        // A burst, as when the guest is idle: lets the partition fill up.
        2 => (1..30u32).prop_map(|steps| Action::PagerRun { steps }),
        1 => (0..=FRAMES as u64 + 4).prop_map(|pages| Action::SetTarget { pages }),
        // Low targets: more wanted evictions than the partition has slots.
        1 => (FLOOR..8).prop_map(|pages| Action::SetTarget { pages }),
        1 => Just(Action::Crash),
    ]
}

fn run(actions: &[Action]) -> World {
    let mut world = World::new();
    for action in actions {
        match *action {
            Action::Write { gfn, value } => world.guest_write(Gfn::new(gfn), value),
            Action::Read { gfn } => world.guest_read(Gfn::new(gfn)),
            Action::Drop { gfn } => world.guest_drop(Gfn::new(gfn)),
            Action::Repopulate { gfn } => world.guest_repopulate(Gfn::new(gfn)),
            Action::PagerStep => {
                let _ = world.pager_step();
            }
            Action::PagerRun { steps } => {
                for _ in 0..steps {
                    let _ = world.pager_step();
                    world.check();
                }
            }
            Action::SetTarget { pages } => world.set_target(pages),
            Action::Crash => world.crash(),
        }
        world.check();
    }
    world.drain_and_verify();
    world
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Random guest activity, target changes and pager kills at random
    /// points: no page is lost or corrupted, no slot is both free and in use,
    /// no frame is freed while mapped.
    #[test]
    fn random_crashes_lose_nothing(actions in prop::collection::vec(action(), 1..400)) {
        run(&actions);
    }
}

/// A fixed scenario: fill memory, shrink the target below what the partition
/// can hold (evictions until the device is full), fault every page back in,
/// write to and drop frames, then raise the target (restores). Returns the
/// number of pager steps it takes.
fn scenario(world: &mut World, crash_after: Option<u64>) -> u64 {
    let mut steps = 0;
    let step = |world: &mut World, steps: &mut u64| {
        if crash_after == Some(*steps) {
            world.crash();
            world.check();
        }
        let _ = world.pager_step();
        *steps += 1;
        world.check();
    };
    for gfn in 0..FRAMES as u64 {
        world.guest_write(Gfn::new(gfn), 1000 + gfn);
    }
    world.set_target(4);
    for _ in 0..90 {
        step(world, &mut steps);
    }
    for gfn in 0..FRAMES as u64 {
        world.guest_read(Gfn::new(gfn));
    }
    world.guest_write(Gfn::new(13), 77);
    world.guest_drop(Gfn::new(20));
    for _ in 0..60 {
        step(world, &mut steps);
    }
    world.set_target(FRAMES as u64);
    for _ in 0..60 {
        step(world, &mut steps);
    }
    steps
}

/// Crashes the pager after each step of the scenario in turn, so every step
/// of an eviction and of a page-in is interrupted at least once.
#[test]
fn crash_at_every_step_of_evict_and_page_in_loses_nothing() {
    let total = scenario(&mut World::new(), None);
    let mut interrupted = BTreeSet::new();
    for crash_after in 0..total {
        let mut world = World::new();
        let _ = scenario(&mut world, Some(crash_after));
        assert_eq!(world.crashes, 1);
        interrupted.extend(world.interrupted.iter().copied());
        world.drain_and_verify();
    }
    let every_phase: BTreeSet<Phase> = [
        Phase::EvictChosen,
        Phase::EvictNominated,
        Phase::EvictCopied,
        Phase::EvictDataWritten,
        Phase::EvictEntryWritten,
        Phase::EvictUnmapped,
        Phase::PageInTaken,
        Phase::PageInRead,
    ]
    .into_iter()
    .collect();
    assert_eq!(interrupted, every_phase, "a crash landed in every phase");
}

/// The scenario without crashes actually pages: evictions, page-ins, a full
/// partition and a drop of a paged frame all happen.
#[test]
fn scenario_exercises_paging() {
    let mut world = World::new();
    let _ = scenario(&mut world, None);
    assert!(
        world.stats.paged_out >= u64::from(SLOTS),
        "{:?}",
        world.stats
    );
    assert!(
        world.stats.paged_in >= u64::from(SLOTS),
        "{:?}",
        world.stats
    );
    assert!(
        world.stats.device_full >= 1,
        "the partition filled up: {:?}",
        world.stats
    );
    assert!(world.stats.dropped_while_paged >= 1, "{:?}", world.stats);
    assert!(world.stats.page_in_latency.count() == world.stats.paged_in);
    world.drain_and_verify();
}

/// A wrong block on page-in is caught, never loaded.
#[test]
fn a_corrupted_slot_is_refused_at_page_in() {
    let mut world = World::new();
    for gfn in 0..FRAMES as u64 {
        world.guest_write(Gfn::new(gfn), 5000 + gfn);
    }
    world.set_target(FRAMES as u64 - 1);
    while world.core.table.counts().swapped() == 0 {
        let _ = world.pager_step();
    }
    let (gfn, slot) = world
        .core
        .table
        .states()
        .iter()
        .enumerate()
        .find_map(|(index, state)| state.slot().map(|slot| (Gfn::new(index as u64), slot)))
        .unwrap();
    let device_slot = PARTITION.device_slot(slot).unwrap();
    world.disk.data[device_slot as usize][100] ^= 0x04;
    let entry = world.pager.table.entry(device_slot).unwrap();
    let data = world.disk.data[device_slot as usize].clone();
    let error = verify_page(
        entry,
        Owner {
            domain: DOMAIN,
            gfn,
        },
        &data,
    )
    .unwrap_err();
    assert!(
        matches!(error, pager_server::disk::PageInError::Corrupt { .. }),
        "{error:?}"
    );
}

//! The engine end to end: a simulated core (the authoritative frame states,
//! the frames' contents, the copies into and out of the DMA buffers) and the
//! fake virtio-blk device, wired through the engine's `Port` and
//! `Transport`. The pager is killed at many points and restarted; the core
//! checks every byte it loads against what the guest last wrote.

use std::collections::{BTreeSet, VecDeque};
use std::string::String;
use std::vec::Vec;

use heapless::Vec as HVec;
use ipc::messages::pager::{PagedFrame, PAGED_BATCH_LEN};

use super::*;
use crate::disk::{SlotTable, SwapHeader};
use crate::fake::FakeBlk;
use crate::frame::FrameState;

const DMA_PAGES: usize = 64;
const CORE_MAX_NOMINATIONS: usize = ipc::messages::pager::MAX_NOMINATIONS;

fn leak<T: Clone>(value: T, len: usize) -> &'static mut [T] {
    Box::leak(vec![value; len].into_boxed_slice())
}

fn storage(table_blocks: usize) -> Storage {
    Storage {
        words: leak(0u64, 64 * 1024),
        halves: leak(0u32, 64 * 1024),
        table: leak([0u8; BLOCK_SIZE], table_blocks),
    }
}

/// The bytes of a frame whose content is `value` (0: zeros).
fn pattern(domain: u16, gfn: u64, value: u64) -> Vec<u8> {
    if value == 0 {
        return vec![0; PAGE_SIZE];
    }
    let mut state = value ^ (gfn << 20) ^ (u64::from(domain) << 52);
    (0..PAGE_SIZE / 8)
        .flat_map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut mixed = (state ^ (state >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (mixed ^ (mixed >> 31)).to_le_bytes()
        })
        .collect()
}

#[derive(Debug)]
struct SimDomain {
    memory: u64,
    target: u64,
    states: Vec<FrameState>,
    content: Vec<u64>,
    partition: Option<u32>,
    nominated: BTreeSet<u64>,
    waiting: BTreeSet<u64>,
    failed: Vec<(u64, LoadFailure)>,
}

impl SimDomain {
    fn resident(&self) -> u64 {
        self.states
            .iter()
            .filter(|state| matches!(state, FrameState::Ram | FrameState::PagingOut))
            .count() as u64
    }

    fn paged(&self) -> Vec<(u64, Slot)> {
        self.states
            .iter()
            .enumerate()
            .filter_map(|(gfn, state)| state.slot().map(|slot| (gfn as u64, slot)))
            .collect()
    }
}

/// The core and the device, as the engine sees them.
#[derive(Debug)]
struct Sim {
    domains: Vec<SimDomain>,
    device: FakeBlk,
    clock: u64,
    outbox: VecDeque<ToCore>,
    inbox: VecDeque<ToServer>,
    sent: Vec<ToCore>,
    logs: Vec<String>,
    restart_requested: Option<String>,
    corruptions: Vec<String>,
    loads: u64,
    /// Every frame loaded, in order.
    loaded: Vec<(u16, u64)>,
}

impl Port for Sim {
    fn send(&mut self, message: ToCore) -> bool {
        self.sent.push(message.clone());
        self.outbox.push_back(message);
        true
    }
    fn log(&mut self, line: &LogLine) {
        self.logs.push(line.as_str().into());
    }
    fn now(&mut self) -> u64 {
        self.clock
    }
    fn now_fresh(&mut self) -> u64 {
        // Time passes while the device measurement spins.
        self.clock += 10_000;
        self.clock
    }
    fn restart(&mut self, reason: &str) {
        self.restart_requested = Some(reason.into());
    }
}

impl Transport for Sim {
    fn read32(&mut self, offset: u64) -> Result<u32, components::DeviceError> {
        self.device.read32(offset)
    }
    fn write32(&mut self, offset: u64, value: u32) -> Result<(), components::DeviceError> {
        self.device.write32(offset, value)
    }
    fn dma_bus(&self) -> u64 {
        self.device.dma_bus()
    }
    fn dma_pages(&self) -> u64 {
        self.device.dma_pages()
    }
    fn dma_read(&mut self, offset: usize, out: &mut [u8]) -> Result<(), components::DeviceError> {
        self.device.dma_read(offset, out)
    }
    fn dma_write(&mut self, offset: usize, data: &[u8]) -> Result<(), components::DeviceError> {
        self.device.dma_write(offset, data)
    }
    fn dma_load_u8(&mut self, offset: usize) -> Result<u8, components::DeviceError> {
        self.device.dma_load_u8(offset)
    }
    fn dma_load_u16(&mut self, offset: usize) -> Result<u16, components::DeviceError> {
        self.device.dma_load_u16(offset)
    }
    fn dma_load_u32(&mut self, offset: usize) -> Result<u32, components::DeviceError> {
        self.device.dma_load_u32(offset)
    }
    fn dma_store_u8(&mut self, offset: usize, value: u8) -> Result<(), components::DeviceError> {
        self.device.dma_store_u8(offset, value)
    }
    fn dma_store_u16(&mut self, offset: usize, value: u16) -> Result<(), components::DeviceError> {
        self.device.dma_store_u16(offset, value)
    }
    fn dma_store_u32(&mut self, offset: usize, value: u32) -> Result<(), components::DeviceError> {
        self.device.dma_store_u32(offset, value)
    }
    fn dma_store_u64(&mut self, offset: usize, value: u64) -> Result<(), components::DeviceError> {
        self.device.dma_store_u64(offset, value)
    }
}

impl Sim {
    /// The core's handling of one pager message (issue #5's mechanism).
    fn core(&mut self, message: ToCore) {
        match message {
            ToCore::Partition { domain, slots } => {
                self.domains[usize::from(domain)].partition = Some(slots)
            }
            ToCore::Nominate {
                domain,
                gfn,
                buffer,
            } => {
                let sim = &mut self.domains[usize::from(domain)];
                let reason = if gfn >= sim.memory {
                    Some(Refusal::OutOfRange)
                } else if gfn == 0 {
                    Some(Refusal::NotPageable)
                } else if sim.states[gfn as usize] != FrameState::Ram {
                    Some(Refusal::NotRam)
                } else if usize::from(buffer) >= DMA_PAGES || buffer < 2 {
                    Some(Refusal::BadBuffer)
                } else if sim.nominated.len() >= CORE_MAX_NOMINATIONS {
                    Some(Refusal::TooManyInFlight)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.inbox.push_back(ToServer::NominateRefused {
                        domain,
                        gfn,
                        reason,
                    });
                    return;
                }
                sim.states[gfn as usize] = FrameState::PagingOut;
                sim.nominated.insert(gfn);
                let bytes = pattern(domain, gfn, sim.content[gfn as usize]);
                self.device.dma[usize::from(buffer) * PAGE_SIZE..][..PAGE_SIZE]
                    .copy_from_slice(&bytes);
                self.inbox.push_back(ToServer::Nominated {
                    domain,
                    gfn,
                    buffer,
                });
            }
            ToCore::Evict { domain, gfn, slot } => {
                let sim = &mut self.domains[usize::from(domain)];
                assert!(
                    sim.nominated.remove(&gfn),
                    "Evict of a frame the core never nominated"
                );
                let partition = sim.partition.expect("Evict before Partition");
                assert!(
                    slot < partition,
                    "slot {slot} outside the partition of {partition}"
                );
                assert!(
                    sim.states
                        .iter()
                        .all(|state| state.slot() != Some(Slot::new(slot))),
                    "slot {slot} given to two frames"
                );
                let ok = sim.states[gfn as usize] == FrameState::PagingOut;
                if ok {
                    sim.states[gfn as usize] = FrameState::Paged {
                        slot: Slot::new(slot),
                    };
                }
                self.inbox.push_back(ToServer::Evicted {
                    domain,
                    gfn,
                    slot,
                    ok,
                });
            }
            ToCore::EvictFailed { domain, gfn, .. } => {
                let sim = &mut self.domains[usize::from(domain)];
                sim.nominated.remove(&gfn);
                if sim.states[gfn as usize] == FrameState::PagingOut {
                    sim.states[gfn as usize] = FrameState::Ram;
                }
            }
            ToCore::Load {
                domain,
                gfn,
                slot,
                buffer,
            } => {
                let sim = &mut self.domains[usize::from(domain)];
                match sim.states[gfn as usize] {
                    FrameState::Paged { slot: recorded }
                    | FrameState::PagingIn { slot: recorded }
                        if recorded.get() == slot => {}
                    other => panic!("Load of gfn {gfn} slot {slot} in state {other:?}"),
                }
                let expected = pattern(domain, gfn, sim.content[gfn as usize]);
                let got = &self.device.dma[usize::from(buffer) * PAGE_SIZE..][..PAGE_SIZE];
                if got != &expected[..] {
                    self.corruptions
                        .push(format!("domain {domain} gfn {gfn}: wrong bytes loaded"));
                }
                sim.states[gfn as usize] = FrameState::Ram;
                sim.waiting.remove(&gfn);
                self.loads += 1;
                self.loaded.push((domain, gfn));
                self.inbox.push_back(ToServer::Loaded { domain, gfn, slot });
            }
            ToCore::LoadFailed {
                domain,
                gfn,
                reason,
            } => {
                let sim = &mut self.domains[usize::from(domain)];
                sim.waiting.remove(&gfn);
                sim.failed.push((gfn, reason));
            }
            ToCore::Ready
            | ToCore::Heartbeat { .. }
            | ToCore::Target { .. }
            | ToCore::Stats { .. } => {}
        }
    }

    /// The guest touches `gfn`: a paged frame is paged in (the vCPU waits).
    fn touch(&mut self, domain: u16, gfn: u64) {
        let sim = &mut self.domains[usize::from(domain)];
        if let FrameState::Paged { slot } = sim.states[gfn as usize] {
            sim.states[gfn as usize] = FrameState::PagingIn { slot };
            sim.waiting.insert(gfn);
            self.inbox.push_back(ToServer::PageIn {
                domain,
                gfn,
                slot: slot.get(),
            });
        }
    }

    /// The guest writes `value` to a resident frame (a nominated one is
    /// cancelled, as the core does on a write to a read-only PagingOut frame).
    fn write(&mut self, domain: u16, gfn: u64, value: u64) {
        let sim = &mut self.domains[usize::from(domain)];
        match sim.states[gfn as usize] {
            FrameState::Ram => {}
            FrameState::PagingOut => sim.states[gfn as usize] = FrameState::Ram,
            other => panic!("write to a frame in state {other:?}"),
        }
        sim.content[gfn as usize] = value;
    }

    /// The rebuild stream of a (re)started pager.
    fn rebuild_stream(&mut self) {
        for (id, sim) in self.domains.iter().enumerate() {
            let id = id as u16;
            self.inbox.push_back(ToServer::Domain {
                domain: id,
                memory_pages: sim.memory,
                target_pages: sim.target,
            });
            self.inbox.push_back(ToServer::Footprint {
                domain: id,
                resident_pages: sim.resident(),
            });
        }
        for (id, sim) in self.domains.iter().enumerate() {
            for chunk in sim.paged().chunks(PAGED_BATCH_LEN) {
                let frames: HVec<PagedFrame, PAGED_BATCH_LEN> = chunk
                    .iter()
                    .map(|(gfn, slot)| PagedFrame {
                        gfn: *gfn,
                        slot: slot.get(),
                    })
                    .collect();
                self.inbox.push_back(ToServer::Paged {
                    domain: id as u16,
                    frames,
                });
            }
        }
        self.inbox.push_back(ToServer::RebuildDone);
        for (id, sim) in self.domains.iter().enumerate() {
            for gfn in &sim.waiting {
                if let FrameState::PagingIn { slot } = sim.states[*gfn as usize] {
                    self.inbox.push_back(ToServer::PageIn {
                        domain: id as u16,
                        gfn: *gfn,
                        slot: slot.get(),
                    });
                }
            }
        }
    }
}

/// The engine and its world.
struct World {
    engine: Engine,
    sim: Sim,
    table_blocks: usize,
    starts: u32,
}

impl World {
    /// Domains of `(memory, target)` pages, every frame written with a
    /// pattern; a device of `device_blocks` blocks; the engine started.
    fn new(domains: &[(u64, u64)], device_blocks: usize) -> Self {
        Self::build(domains, device_blocks, false)
    }

    /// [`Self::new`], with the device measurement asked of the first
    /// instance (as the server does for `args = "device-bench"`).
    fn with_device_bench(domains: &[(u64, u64)], device_blocks: usize) -> Self {
        Self::build(domains, device_blocks, true)
    }

    fn build(domains: &[(u64, u64)], device_blocks: usize, device_bench: bool) -> Self {
        let sim = Sim {
            domains: domains
                .iter()
                .map(|(memory, target)| SimDomain {
                    memory: *memory,
                    target: *target,
                    states: vec![FrameState::Ram; *memory as usize],
                    content: (0..*memory).map(|gfn| gfn * 7 + 1).collect(),
                    partition: None,
                    nominated: BTreeSet::new(),
                    waiting: BTreeSet::new(),
                    failed: Vec::new(),
                })
                .collect(),
            device: FakeBlk::new(device_blocks, DMA_PAGES),
            clock: 1_000_000,
            outbox: VecDeque::new(),
            inbox: VecDeque::new(),
            sent: Vec::new(),
            logs: Vec::new(),
            restart_requested: None,
            corruptions: Vec::new(),
            loads: 0,
            loaded: Vec::new(),
        };
        let mut world = Self {
            engine: Engine::new(storage(8)),
            sim,
            table_blocks: 8,
            starts: 0,
        };
        world.start_with(device_bench);
        world
    }

    fn start(&mut self) {
        self.start_with(false);
    }

    fn start_with(&mut self, device_bench: bool) {
        self.starts += 1;
        self.engine = Engine::new(storage(self.table_blocks));
        if device_bench {
            self.engine.request_device_bench();
        }
        self.sim.device.zero_dma();
        self.sim.restart_requested = None;
        self.engine.start(&mut self.sim, Ok(()));
        self.sim.rebuild_stream();
    }

    /// Kills the pager now: the core rolls back its nominations and drops
    /// the messages in flight both ways, then starts a new instance.
    fn restart(&mut self) {
        for sim in self.sim.domains.iter_mut() {
            for gfn in std::mem::take(&mut sim.nominated) {
                if sim.states[gfn as usize] == FrameState::PagingOut {
                    sim.states[gfn as usize] = FrameState::Ram;
                }
            }
        }
        self.sim.inbox.clear();
        self.sim.outbox.clear();
        self.start();
    }

    /// One step of the run loop: the core takes what the pager sent; the
    /// pager takes the core's messages, or its timeout fires (the device
    /// works meanwhile). Returns false when everything is quiet.
    fn step(&mut self) -> bool {
        assert!(
            self.sim.restart_requested.is_none(),
            "the engine asked for a restart: {:?}",
            self.sim.restart_requested
        );
        while let Some(message) = self.sim.outbox.pop_front() {
            self.sim.core(message);
        }
        if !self.sim.inbox.is_empty() {
            for _ in 0..components::BATCH_LIMIT {
                let Some(message) = self.sim.inbox.pop_front() else {
                    break;
                };
                self.engine.message(&mut self.sim, message);
            }
            if self.engine.next_wake(self.sim.clock) == NextWake::Now {
                self.engine.pump(&mut self.sim);
            }
            return true;
        }
        match self.engine.next_wake(self.sim.clock) {
            NextWake::Now => self.engine.pump(&mut self.sim),
            NextWake::Poll(nanoseconds) => {
                assert!(nanoseconds > 0, "a poll always waits");
                self.sim.clock += nanoseconds;
                self.sim.device.process();
                self.engine.pump(&mut self.sim);
            }
            NextWake::At(deadline) => {
                if deadline == self.engine.next_heartbeat() && deadline > self.sim.clock {
                    // Quiet: nothing in flight anywhere, only the heartbeat
                    // is due.
                    return false;
                }
                self.sim.clock = self.sim.clock.max(deadline);
                self.engine.pump(&mut self.sim);
            }
        }
        true
    }

    fn run(&mut self) {
        for _ in 0..200_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the engine never settled");
    }

    fn run_steps(&mut self, steps: usize) {
        for _ in 0..steps {
            if !self.step() {
                return;
            }
        }
    }

    fn domain(&self, id: usize) -> &SimDomain {
        &self.sim.domains[id]
    }

    /// Every paged frame's slot holds its bytes and a matching entry.
    fn check_disk(&self) {
        let header = SwapHeader::decode(&self.sim.device.disk[0]).expect("a formatted device");
        let mut blocks: Vec<[u8; BLOCK_SIZE]> = (0..header.table_blocks())
            .map(|index| {
                let mut block = [0u8; BLOCK_SIZE];
                block.copy_from_slice(
                    &self.sim.device.disk[header.table_block(index).unwrap() as usize],
                );
                block
            })
            .collect();
        let table =
            SlotTable::load(&mut blocks, header).expect("the table on the device is intact");
        let mut first = 0;
        for (id, sim) in self.sim.domains.iter().enumerate() {
            let count = sim.partition.unwrap_or(0);
            for (gfn, slot) in sim.paged() {
                let device_slot = first + slot.get();
                let data = &self.sim.device.disk[header.slot_block(device_slot).unwrap() as usize];
                let mut page = [0u8; PAGE_SIZE];
                page.copy_from_slice(data);
                let owner = Owner {
                    domain: id as u16,
                    gfn: Gfn::new(gfn),
                };
                assert_eq!(
                    verify_page(table.entry(device_slot).unwrap(), owner, &page),
                    Ok(()),
                    "domain {id} gfn {gfn}"
                );
                assert_eq!(
                    &page[..],
                    &pattern(id as u16, gfn, sim.content[gfn as usize])[..]
                );
            }
            first += count;
        }
    }

    /// Touches every paged frame of `domain`, runs until all are back, and
    /// checks that nothing failed or came back wrong.
    fn page_everything_in(&mut self, domain: usize) {
        // Raise the target first, so the page-ins do not cause evictions.
        let memory = self.sim.domains[domain].memory;
        self.sim.domains[domain].target = memory;
        self.sim.inbox.push_back(ToServer::Domain {
            domain: domain as u16,
            memory_pages: memory,
            target_pages: memory,
        });
        loop {
            let paged: Vec<u64> = self
                .domain(domain)
                .paged()
                .into_iter()
                .map(|(gfn, _)| gfn)
                .collect();
            if paged.is_empty() {
                break;
            }
            for gfn in paged.iter().take(8) {
                self.sim.touch(domain as u16, *gfn);
            }
            self.run();
            assert!(
                self.domain(domain).waiting.is_empty(),
                "every page-in is answered"
            );
        }
        assert_eq!(self.domain(domain).failed, [], "no page-in failed");
        assert_eq!(self.sim.corruptions, Vec::<String>::new());
    }
}

#[test]
fn first_start_formats_then_evicts_down_to_the_target() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    assert!(world.engine.is_paging());
    assert!(
        world
            .sim
            .logs
            .iter()
            .any(|line| line.starts_with("pager: swap header invalid")),
        "{:?}",
        world.sim.logs
    );
    assert!(world
        .sim
        .logs
        .contains(&"pager: swap device formatted".to_string()));
    let domain = world.domain(0);
    assert_eq!(domain.resident(), 600, "the footprint meets the target");
    assert_eq!(domain.paged().len(), 424);
    assert!(
        domain.states[0] == FrameState::Ram,
        "gfn 0 is never evicted"
    );
    let partition = domain.partition.unwrap();
    assert!(
        partition > 0 && partition <= 1024,
        "a partition never exceeds memory"
    );
    let report = world.engine.report(0).unwrap();
    assert_eq!(
        (report.paged, report.paged_out, report.free_slots),
        (424, 424, partition - 424)
    );
    world.check_disk();
    assert!(
        world.sim.device.violations.is_empty(),
        "{:?}",
        world.sim.device.violations
    );
    // The victim scan started mid-memory.
    let first_nominated = world.sim.sent.iter().find_map(|message| match message {
        ToCore::Nominate { gfn, .. } => Some(*gfn),
        _ => None,
    });
    assert_eq!(first_nominated, Some(512));
}

#[test]
fn page_ins_bring_back_every_byte() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    world.page_everything_in(0);
    assert_eq!(world.sim.loads, 424);
    assert_eq!(world.domain(0).resident(), 1024);
    let report = world.engine.report(0).unwrap();
    assert_eq!(report.paged, 0);
    assert_eq!(
        report.free_slots, report.partition_slots,
        "every slot is free again"
    );
}

#[test]
fn page_ins_go_before_evictions() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    // Lower the target (more evictions) and fault a page in, together.
    let gfn = world.domain(0).paged()[0].0;
    world.sim.domains[0].target = 520;
    world.sim.inbox.push_back(ToServer::Domain {
        domain: 0,
        memory_pages: 1024,
        target_pages: 520,
    });
    world.sim.touch(0, gfn);
    let sent_before = world.sim.sent.len();
    world.run();
    let after = &world.sim.sent[sent_before..];
    let load = after
        .iter()
        .position(|message| matches!(message, ToCore::Load { .. }))
        .unwrap();
    let first_evict = after
        .iter()
        .position(|message| matches!(message, ToCore::Evict { .. }))
        .unwrap();
    assert!(
        load < first_evict,
        "the page-in was answered before any new eviction completed"
    );
    assert_eq!(world.domain(0).resident(), 520);
    assert_eq!(world.sim.corruptions, Vec::<String>::new());
}

#[test]
fn a_restart_loads_the_table_instead_of_formatting() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    let header_before = world.sim.device.disk[0].clone();
    world.restart();
    world.run();
    assert_eq!(
        world.sim.device.disk[0], header_before,
        "the header was not rewritten"
    );
    assert!(world
        .sim
        .logs
        .iter()
        .any(|line| line.contains("loading the slot table")));
    assert_eq!(world.engine.report(0).unwrap().mismatches, 0);
    assert_eq!(
        world.engine.report(0).unwrap().paged,
        424,
        "the paged frames were relearnt"
    );
    world.page_everything_in(0);
}

#[test]
fn killing_the_pager_at_any_step_loses_nothing() {
    // Kill during the format, mid-eviction (requests in flight, entries
    // not yet durable, Evicts unanswered) and mid-page-in, at every step
    // of a window; each time the survivor finishes the job.
    let mut busy_kills = 0;
    for kill_at in (1..160).step_by(3) {
        let mut world = World::new(&[(1024, 700), (600, 560)], 1200);
        world.sim.device.defer = true;
        world.run_steps(kill_at);
        if world.engine.requests_in_flight() > 0 && world.engine.nominations_in_flight() > 0 {
            busy_kills += 1;
        }
        world.restart();
        world.run();
        assert_eq!(world.domain(0).resident(), 700, "kill at {kill_at}");
        assert_eq!(world.domain(1).resident(), 560, "kill at {kill_at}");
        world.check_disk();
        // Now fault pages in and kill again in the middle of that.
        let gfns: Vec<u64> = world
            .domain(0)
            .paged()
            .into_iter()
            .map(|(gfn, _)| gfn)
            .take(12)
            .collect();
        let loads = world.sim.loaded.len();
        for gfn in &gfns {
            world.sim.touch(0, *gfn);
        }
        world.run_steps(kill_at % 17 + 1);
        world.restart();
        world.run();
        assert!(
            world.domain(0).waiting.is_empty(),
            "kill at {kill_at}: every waiting vCPU was served"
        );
        // Each touched frame was loaded, once (the sim refuses a `Load`
        // of a resident frame); readahead may have loaded some of the
        // frames after them too, and the target may have sent some out
        // again since.
        let loaded = &world.sim.loaded[loads..];
        assert!(
            gfns.iter().all(|gfn| loaded.contains(&(0, *gfn))),
            "kill at {kill_at}: every touched frame was loaded"
        );
        assert_eq!(world.domain(0).failed, [], "kill at {kill_at}");
        assert_eq!(
            world.sim.corruptions,
            Vec::<String>::new(),
            "kill at {kill_at}"
        );
        world.page_everything_in(1);
        assert!(
            world.sim.device.violations.is_empty(),
            "{:?}",
            world.sim.device.violations
        );
        assert!(world.starts >= 3);
    }
    assert!(
        busy_kills >= 10,
        "only {busy_kills} kills landed with I/O and nominations in flight"
    );
}

#[test]
fn guest_writes_during_eviction_cancel_it_and_the_new_bytes_win() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.sim.device.defer = true;
    // Run until nominations are in flight, then write every nominated frame.
    for _ in 0..400 {
        world.step();
        let nominated: Vec<u64> = world.domain(0).nominated.iter().copied().collect();
        if !nominated.is_empty() {
            for gfn in nominated {
                if world.domain(0).states[gfn as usize] == FrameState::PagingOut {
                    world.sim.write(0, gfn, 999_000 + gfn);
                }
            }
        }
    }
    world.run();
    assert_eq!(world.domain(0).resident(), 600);
    world.check_disk();
    world.page_everything_in(0);
}

#[test]
fn a_full_partition_stops_eviction_with_a_counter_and_one_log_line() {
    // 1 header + 1 table block + 50 data blocks: 50 slots.
    let mut world = World::new(&[(1024, 600)], 52);
    world.run();
    let domain = world.domain(0);
    assert_eq!(domain.partition, Some(50));
    assert_eq!(domain.paged().len(), 50, "every slot is used, and no more");
    assert_eq!(
        domain.resident(),
        974,
        "the guest keeps running above its target"
    );
    let report = world.engine.report(0).unwrap();
    assert!(report.full && report.evict_failures >= 1, "{report:?}");
    let full_lines = world
        .sim
        .logs
        .iter()
        .filter(|line| *line == "pager: domain 0: swap full; eviction stopped")
        .count();
    assert_eq!(full_lines, 1);
    // The counter reaches the core with the next heartbeat.
    world.sim.clock += HEARTBEAT_INTERVAL_NS;
    world.engine.pump(&mut world.sim);
    let stats = world
        .sim
        .sent
        .iter()
        .rev()
        .find_map(|message| match message {
            ToCore::Stats {
                domain: 0,
                free_slots,
                evict_failures,
                ..
            } => Some((*free_slots, *evict_failures)),
            _ => None,
        });
    assert_eq!(stats, Some((0, report.evict_failures)));
    // A page-in frees a slot: eviction resumes.
    let gfn = world.domain(0).paged()[0].0;
    world.sim.touch(0, gfn);
    world.run();
    assert_eq!(
        world.domain(0).paged().len(),
        50,
        "the freed slot was used again"
    );
    assert_eq!(world.sim.corruptions, Vec::<String>::new());
}

#[test]
fn a_corrupted_block_fails_its_page_in_with_bad_checksum() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    let header = SwapHeader::decode(&world.sim.device.disk[0]).unwrap();
    let (gfn, slot) = world.domain(0).paged()[3];
    let block = header.slot_block(slot.get()).unwrap() as usize;
    world.sim.device.disk[block][100] ^= 0x04;
    world.sim.touch(0, gfn);
    world.run();
    assert_eq!(world.domain(0).failed, [(gfn, LoadFailure::BadChecksum)]);
    assert_ne!(
        world.domain(0).states[gfn as usize],
        FrameState::Ram,
        "wrong bytes are never loaded"
    );
    assert_eq!(world.sim.corruptions, Vec::<String>::new());
    // A read error is named as such.
    let (other, other_slot) = world.domain(0).paged()[5];
    world
        .sim
        .device
        .fail_reads
        .insert(header.slot_block(other_slot.get()).unwrap());
    world.sim.touch(0, other);
    world.run();
    assert_eq!(world.domain(0).failed[1], (other, LoadFailure::ReadError));
    assert!(world
        .sim
        .logs
        .iter()
        .any(|line| line.contains("checksum mismatch")));
}

#[test]
fn write_errors_fail_the_eviction_and_quarantine_the_slot() {
    let mut world = World::new(&[(1024, 1000)], 2000);
    // Slots are handed out lowest first: device slot 0's block fails.
    let data_start = SwapHeader::for_device(2000, 1).unwrap().data_start_block();
    world.sim.device.fail_writes.insert(data_start);
    world.run();
    assert_eq!(world.domain(0).resident(), 1000);
    assert!(world.sim.sent.iter().any(|message| matches!(
        message,
        ToCore::EvictFailed {
            reason: EvictFailure::WriteError,
            ..
        }
    )));
    let report = world.engine.report(0).unwrap();
    assert_eq!(report.evict_failures, 1, "the bad slot was not retried");
    assert!(world
        .domain(0)
        .paged()
        .iter()
        .all(|(_, slot)| slot.get() != 0));
    world.check_disk();
}

#[test]
fn released_slots_are_reused() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    // The guest gives back a paged-out frame.
    let (gfn, slot) = world.domain(0).paged()[0];
    world.sim.domains[0].states[gfn as usize] = FrameState::Dropped;
    world.sim.inbox.push_back(ToServer::Released {
        domain: 0,
        slot: slot.get(),
    });
    world.sim.inbox.push_back(ToServer::Footprint {
        domain: 0,
        resident_pages: 600,
    });
    world.run();
    let report = world.engine.report(0).unwrap();
    assert_eq!(report.paged, 423);
    // Lower the target by one: the released slot is the one reused.
    world.sim.domains[0].target = 599;
    world.sim.inbox.push_back(ToServer::Domain {
        domain: 0,
        memory_pages: 1024,
        target_pages: 599,
    });
    world.run();
    assert!(world
        .domain(0)
        .paged()
        .iter()
        .any(|(_, used)| *used == slot));
}

#[test]
fn partitions_follow_memory_and_survive_restarts() {
    let mut world = World::new(&[(3000, 3000), (1000, 1000)], 2000);
    world.run();
    let first = (world.domain(0).partition, world.domain(1).partition);
    assert_eq!(
        first,
        (Some(1494), Some(497)),
        "3:1 of the 1991 slots, the rounding slot to the first"
    );
    world.restart();
    world.run();
    assert_eq!(
        (world.domain(0).partition, world.domain(1).partition),
        first
    );
    // A small domain's partition is capped at its memory.
    let world = {
        let mut world = World::new(&[(600, 600), (600, 600)], 4000);
        world.run();
        world
    };
    assert_eq!(world.domain(0).partition, Some(600));
}

#[test]
fn targets_are_validated() {
    let mut world = World::new(&[(1024, 1024)], 2000);
    world.run();
    for (target, accepted) in [(2000, false), (100, false), (512, true)] {
        world.sim.inbox.push_back(ToServer::Domain {
            domain: 0,
            memory_pages: 1024,
            target_pages: target,
        });
        world.run();
        let verdict = world
            .sim
            .sent
            .iter()
            .rev()
            .find_map(|message| match message {
                ToCore::Target {
                    accepted,
                    floor_pages,
                    ..
                } => Some((*accepted, *floor_pages)),
                _ => None,
            });
        assert_eq!(verdict, Some((accepted, 512)), "target {target}");
    }
    assert_eq!(
        world.domain(0).resident(),
        512,
        "the refused targets changed nothing; 512 is in force"
    );
}

#[test]
fn the_engine_fits_comfortably_on_the_server_stack() {
    // The handler lives on the 64 KiB server stack (the run loop owns it).
    let size = core::mem::size_of::<Engine>();
    assert!(size <= 16 * 1024, "Engine is {size} bytes");
}

#[test]
fn the_device_measurement_reads_the_data_area_before_paging_starts() {
    let mut world = World::with_device_bench(&[(1024, 600)], 2000);
    world.run();
    let line = world
        .sim
        .logs
        .iter()
        .find(|line| line.starts_with("pager: device: "))
        .cloned()
        .unwrap_or_else(|| panic!("no measurement line: {:?}", world.sim.logs));
    assert!(line.starts_with("pager: device: 4k qd1: "), "{line}");
    assert!(line.contains("; 128k qd1: "), "{line}");
    assert!(line.contains("; crc32c 4k: "), "{line}");
    // The core's console lines hold 160 bytes, "server pager: " included.
    assert!(line.len() <= 146, "{line}");
    let bench = world.engine.device_bench().unwrap();
    assert!(bench.checksum_rate().is_some_and(|rate| rate > 0), "{line}");
    let rates = bench.rates();
    assert!(
        rates.iter().all(|rate| rate.is_some_and(|rate| rate > 0)),
        "{rates:?}"
    );
    assert!(
        rates[1] > rates[0],
        "16 reads share each timed notify and poll round: {rates:?}"
    );
    // Every measured read came before the first write of paging, and none
    // touched the header or the table.
    let header = SwapHeader::decode(&world.sim.device.disk[0]).unwrap();
    let first_data_write = world
        .sim
        .device
        .served
        .iter()
        .position(|(kind, block)| *kind == 1 && *block >= header.data_start_block())
        .expect("paging wrote data");
    let measured: Vec<u64> = world.sim.device.served[..first_data_write]
        .iter()
        .filter(|(kind, block)| *kind == 0 && *block >= header.data_start_block())
        .map(|(_, block)| *block)
        .collect();
    assert_eq!(measured.len(), 512 + 2048 + 256 + 384 + 128);
    let partition_at = world
        .sim
        .sent
        .iter()
        .position(|message| matches!(message, ToCore::Partition { .. }))
        .unwrap();
    let first_nominate = world
        .sim
        .sent
        .iter()
        .position(|message| matches!(message, ToCore::Nominate { .. }))
        .unwrap();
    assert!(partition_at < first_nominate);
    assert!(
        world.sim.device.violations.is_empty(),
        "{:?}",
        world.sim.device.violations
    );
    // Paging then runs as without the measurement, from free buffers.
    assert_eq!(world.domain(0).resident(), 600);
    world.check_disk();
    world.page_everything_in(0);
    assert_eq!(world.sim.loads, 424);
}

#[test]
fn a_restarted_pager_does_not_measure_again() {
    let mut world = World::with_device_bench(&[(1024, 600)], 2000);
    world.run();
    world.restart();
    world.run();
    assert!(world.engine.device_bench().is_none());
    let lines = world
        .sim
        .logs
        .iter()
        .filter(|line| line.starts_with("pager: device: "))
        .count();
    assert_eq!(lines, 1);
}

#[test]
fn a_page_in_read_is_spun_for_and_loaded_in_the_same_pump() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    let gfn = world.domain(0).paged()[0].0;
    world.sim.sent.clear();
    world.sim.touch(0, gfn);
    let message = world.sim.inbox.pop_front().unwrap();
    world.engine.message(&mut world.sim, message);
    world.engine.pump(&mut world.sim);
    assert!(
        world
            .sim
            .sent
            .iter()
            .any(|sent| matches!(sent, ToCore::Load { gfn: loaded, .. } if *loaded == gfn)),
        "the read completed while the pump spun: {:?}",
        world.sim.sent
    );
    // An eviction write is not spun for: its Evict needs another pump.
    world.run();
    world.sim.sent.clear();
    let (gfn, _) = world.domain(0).paged()[0];
    world.sim.touch(0, gfn);
    for _ in 0..4 {
        while let Some(message) = world.sim.outbox.pop_front() {
            world.sim.core(message);
        }
        while let Some(message) = world.sim.inbox.pop_front() {
            world.engine.message(&mut world.sim, message);
        }
        world.engine.pump(&mut world.sim);
        if world
            .sim
            .sent
            .iter()
            .any(|sent| matches!(sent, ToCore::Nominate { .. }))
        {
            break;
        }
    }
    while let Some(message) = world.sim.outbox.pop_front() {
        world.sim.core(message);
    }
    // Replies to the loads (readahead's among them) may come first.
    let nominated = loop {
        let message = world.sim.inbox.pop_front().unwrap();
        if matches!(message, ToServer::Nominated { .. }) {
            break message;
        }
        assert!(matches!(message, ToServer::Loaded { .. }), "{message:?}");
        world.engine.message(&mut world.sim, message);
    };
    world.engine.message(&mut world.sim, nominated);
    world.engine.pump(&mut world.sim);
    assert!(
        !world
            .sim
            .sent
            .iter()
            .any(|sent| matches!(sent, ToCore::Evict { .. })),
        "the data write is submitted, not waited for: {:?}",
        world.sim.sent
    );
    assert!(world.engine.requests_in_flight() > 0 || world.sim.device.defer);
    world.run();
    assert_eq!(world.domain(0).resident(), 600);
}

#[test]
fn an_eviction_writes_its_data_and_its_entry_at_once() {
    let mut world = World::new(&[(1024, 1000)], 2000);
    world.sim.device.defer = true;
    for _ in 0..10_000 {
        let data = world
            .engine
            .ops
            .iter()
            .any(|op| matches!(op, Some(Op::Data { .. })));
        if data {
            assert!(
                world
                    .engine
                    .ops
                    .iter()
                    .any(|op| matches!(op, Some(Op::Flush { .. }))),
                "the table write goes with the data write: {:?}",
                world.engine.ops
            );
            world.run();
            assert_eq!(world.domain(0).resident(), 1000);
            world.check_disk();
            return;
        }
        assert!(world.step(), "settled before any eviction");
    }
    panic!("no data write was ever submitted");
}

#[test]
fn a_failed_table_write_fails_the_evictions_it_carried() {
    let mut world = World::new(&[(1024, 1024)], 2000);
    world.sim.device.defer = true;
    world.run();
    assert!(world.engine.is_paging());
    // Every entry of the first 255 slots lives in table block 0.
    let header = SwapHeader::for_device(2000, 1).unwrap();
    world
        .sim
        .device
        .fail_writes
        .insert(header.table_block(0).unwrap());
    world.sim.domains[0].target = 1000;
    world.sim.inbox.push_back(ToServer::Domain {
        domain: 0,
        memory_pages: 1024,
        target_pages: 1000,
    });
    world.run_steps(2000);
    assert!(world.sim.sent.iter().any(|message| matches!(
        message,
        ToCore::EvictFailed {
            reason: EvictFailure::WriteError,
            ..
        }
    )));
    assert!(
        world
            .domain(0)
            .paged()
            .iter()
            .all(|(_, slot)| slot.get() >= 255),
        "no frame is Paged in a slot whose entry never reached the device"
    );
    assert!(!world.sim.sent.iter().any(|message| matches!(
        message,
        ToCore::Evict { slot, .. } if *slot < 255
    )));
    assert!(world.engine.report(0).unwrap().evict_failures > 0);
}

/// One domain of 1024 frames held to 600, settled, and its paged-out gfns.
fn settled_world() -> (World, Vec<u64>) {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    let paged = world.domain(0).paged().into_iter().map(|(gfn, _)| gfn).collect();
    (world, paged)
}

#[test]
fn a_fault_reads_ahead_the_paged_frames_after_it() {
    let (mut world, paged) = settled_world();
    // A run of paged-out frames after the one touched.
    let first = *paged
        .iter()
        .find(|&&gfn| (1..=READAHEAD_PAGES).all(|step| paged.contains(&(gfn + step))))
        .expect("a run of paged frames");
    let loads = world.sim.loads;
    world.sim.touch(0, first);
    world.run();
    for gfn in first..=first + READAHEAD_PAGES {
        assert_eq!(world.domain(0).states[gfn as usize], FrameState::Ram, "gfn {gfn} is back");
    }
    assert_eq!(world.sim.loads - loads, 1 + READAHEAD_PAGES);
    assert_eq!(world.sim.corruptions, Vec::<String>::new());
    // Touching a frame read ahead needs no page-in.
    let sent = world.sim.sent.len();
    world.sim.touch(0, first + 1);
    world.run();
    assert!(!world.sim.sent[sent..].iter().any(|message| matches!(message, ToCore::Load { .. } | ToCore::LoadFailed { .. })));
}

#[test]
fn a_failed_readahead_fails_nobody_until_a_vcpu_waits_for_that_frame() {
    let mut world = World::new(&[(1024, 600)], 2000);
    world.run();
    let header = SwapHeader::decode(&world.sim.device.disk[0]).unwrap();
    let paged = world.domain(0).paged();
    let (first, _) = *paged
        .iter()
        .find(|&&(gfn, _)| paged.iter().any(|&(other, _)| other == gfn + 1))
        .expect("two paged frames in a row");
    let (_, next_slot) = *paged.iter().find(|&&(gfn, _)| gfn == first + 1).expect("its successor");
    world
        .sim
        .device
        .fail_reads
        .insert(header.slot_block(next_slot.get()).unwrap());
    let failing = header.slot_block(next_slot.get()).unwrap();
    world.sim.touch(0, first);
    world.run();
    assert_eq!(world.domain(0).states[first as usize], FrameState::Ram);
    assert!(
        world.sim.device.served.iter().any(|&(kind, block)| kind == 0 && block == failing),
        "the frame after it was read ahead"
    );
    assert_eq!(world.domain(0).failed, [], "nobody waited for the frame read ahead");
    assert_ne!(world.domain(0).states[(first + 1) as usize], FrameState::Ram);
    // A vCPU touching it now gets the read error.
    world.sim.touch(0, first + 1);
    world.run();
    assert_eq!(world.domain(0).failed, [(first + 1, LoadFailure::ReadError)]);
}

#[test]
fn readahead_follows_a_walk_downward() {
    let (mut world, paged) = settled_world();
    // Two faults going down, the second above a run of paged-out frames.
    let second = *paged
        .iter()
        .find(|&&gfn| {
            gfn > READAHEAD_PAGES
                && (1..=READAHEAD_PAGES).all(|step| paged.contains(&(gfn - step)))
                && paged.iter().any(|&above| above > gfn + READAHEAD_PAGES)
        })
        .expect("a run of paged frames below a paged frame");
    let first = *paged.iter().rev().find(|&&above| above > second + READAHEAD_PAGES).expect("one above");
    world.sim.touch(0, first);
    world.run();
    let loads = world.sim.loaded.len();
    world.sim.touch(0, second);
    world.run();
    let loaded = &world.sim.loaded[loads..];
    for gfn in second - READAHEAD_PAGES..=second {
        assert!(loaded.contains(&(0, gfn)), "gfn {gfn} was read with the fault at {second}");
    }
    assert!(
        !loaded.iter().any(|&(_, gfn)| gfn > second),
        "nothing above the fault is read once the walk goes down: {loaded:?}"
    );
}

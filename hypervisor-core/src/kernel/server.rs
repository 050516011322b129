//! Ring-3 servers: their address spaces, built from the image the core keeps,
//! and their lifecycle (start, stop, restart with a new generation).

use hypervisor_core::addr::{HostPhysAddr, PAGE_SIZE};
use hypervisor_core::elf::{self, ElfError, Executable};
use hypervisor_core::frame::FrameAllocator;
use hypervisor_core::paging::{EntryFlags, MapError, PageSize, PageTable, Teardown, ADDRESS_MASK};
use hypervisor_core::server::{EchoCheck, Health, YieldState};
use ipc::boot::ServerSpec;
use ipc::server::{DEVICE_REGISTERS_BASE, DMA_REGION_BASE, DMA_REGION_PAGES, GRANT_REGION_BASE, IMAGE_BASE, IMAGE_LIMIT, RING_REGION_BASE, STACK_SIZE, STACK_TOP};

use core::ops::ControlFlow;
use hypervisor_core::server::{ServerFault, ECHO_PAYLOAD_LEN};
use ipc::messages::{self, pager, scheduler, test_server, Envelope};
use ipc::ring::{Consumer, Producer, SLOT_COUNT, SLOT_PAYLOAD};
use ipc::server::{syscall, ServerKind};

use crate::arch::memory::{self, OwnedFrames};
use crate::arch::user::UserContext;

/// Pages of both rings, at the start of the ring region.
pub const RING_PAGES: u64 = 2 * (ipc::ring::RING_BYTES as u64 / PAGE_SIZE);
/// Guest-virtual address of the argument page, after the rings.
pub const ARGUMENTS_ADDRESS: u64 = RING_REGION_BASE + RING_PAGES * PAGE_SIZE;
/// Pages of the publication area, after the argument page.
const PUBLICATION_PAGES: u64 = ipc::publication::PUBLICATION_PAGES as u64;
/// Pages of the whole ring region: rings, argument page, publication area.
const REGION_PAGES: u64 = RING_PAGES + 1 + PUBLICATION_PAGES;
const _: () = assert!(ipc::publication::PUBLICATION_OFFSET as u64 == (RING_PAGES + 1) * PAGE_SIZE);

/// Why a server could not be (re)built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerBuildError {
    /// The image was refused.
    Image(ElfError),
    /// Not enough memory.
    OutOfMemory,
    /// The ring region the allocator gave is not where the core can reach
    /// it (outside its identity map).
    Unreachable,
    /// A mapping failed.
    Mapping(MapError),
}

impl ServerBuildError {
    /// A fixed description.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Image(error) => error.reason(),
            Self::OutOfMemory => "not enough free memory for the server",
            Self::Unreachable => "the server's ring region is outside the core's identity map",
            Self::Mapping(_) => "server page table mapping failed",
        }
    }
}

impl From<MapError> for ServerBuildError {
    fn from(error: MapError) -> Self {
        match error {
            MapError::OutOfFrames => Self::OutOfMemory,
            other => Self::Mapping(other),
        }
    }
}

/// Whether the server is running, waiting, or gone for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRun {
    /// Ready to run.
    Runnable,
    /// In `wait`; woken by a message or at this TSC value.
    Waiting {
        /// TSC deadline, or none.
        deadline: Option<u64>,
    },
}

/// A device granted to a server (the pager's swap device): its registers,
/// mapped read-only, and a DMA region, kept across restarts.
pub struct Grant {
    /// Physical (bus) address of the device's registers.
    pub registers: u64,
    /// The DMA region's first frame (physically contiguous).
    pub dma: HostPhysAddr,
    /// Pages in the DMA region.
    pub pages: u64,
    /// What the server's register writes are checked against.
    pub guard: hypervisor_core::dma_guard::VirtioGuard,
}

/// One server slot: the kept image and the current instance.
pub struct Server<'a> {
    /// Its manifest entry.
    pub spec: &'a ServerSpec,
    image: &'a [u8],
    executable: Executable,
    ring_region: HostPhysAddr,
    space: Option<PageTable>,
    /// The instance's registers.
    pub context: UserContext,
    /// Restart counters and the generation.
    pub health: Health,
    /// Echo exchange state (test servers).
    pub echo: EchoCheck,
    /// Run state.
    pub run: ServerRun,
    /// TSC when the last instance was stopped, until the new one speaks.
    pub stopped_at: Option<u64>,
    to_server: Producer<'static>,
    to_core: Consumer<'static>,
    /// Fault injection bits (`hvctl hang`/`garble`) to hand over at the next wake.
    injection: u64,
    /// Crash-loop backoff: the new instance may not run before this TSC value.
    pub starts_at: Option<u64>,
    /// Since when (TSC) messages have waited in `to_server` without the
    /// server taking any.
    pub inbound_since: Option<u64>,
    /// Messages this instance has been sent.
    sent: u64,
    /// TSC of its last yield or wait, or of the last busy slice counted.
    pub busy_since: u64,
    /// Messages it had taken at the last progress check.
    taken_seen: u64,
    /// Whether it yielded and has not run since: then it runs only when
    /// nothing else wants the pCPU, unless messages wait for it.
    pub yield_state: YieldState,
    /// The device granted to it, if any.
    pub grant: Option<Grant>,
}

/// The publication area of the ring region at `region`, if the core can
/// reach it (`memory::shared_publication`).
fn publication_of(region: HostPhysAddr) -> Option<&'static ipc::publication::PublicationArea> {
    memory::shared_publication(HostPhysAddr::new_truncate(region.as_u64() + ipc::publication::PUBLICATION_OFFSET as u64))
}

fn in_ring_region(frame: u64, region: HostPhysAddr) -> bool {
    (region.as_u64()..region.as_u64() + REGION_PAGES * PAGE_SIZE).contains(&frame)
}

impl<'a> Server<'a> {
    /// Validates the image, allocates the ring region and starts generation 1.
    /// `device`: the registers of the device to grant it (the pager's swap
    /// device), which also gets a DMA region.
    pub fn new(frames: &mut FrameAllocator<'_>, spec: &'a ServerSpec, image: &'a [u8], device: Option<u64>) -> Result<Self, ServerBuildError> {
        let executable = elf::parse_executable(image, IMAGE_BASE..IMAGE_LIMIT).map_err(ServerBuildError::Image)?;
        let ring_region = frames.allocate_contiguous(REGION_PAGES as usize, 1).ok_or(ServerBuildError::OutOfMemory)?;
        // Checked once: `publication` is `None` only for such a region.
        if publication_of(ring_region).is_none() {
            return Err(ServerBuildError::Unreachable);
        }
        let ring = |index: u64| memory::shared_ring(HostPhysAddr::new_truncate(ring_region.as_u64() + index * ipc::ring::RING_BYTES as u64));
        let mut server = Self {
            spec,
            image,
            executable,
            ring_region,
            space: None,
            context: UserContext::default(),
            health: Health::new(),
            echo: EchoCheck::default(),
            run: ServerRun::Runnable,
            stopped_at: None,
            to_server: Producer::attach(ring(0)),
            to_core: Consumer::attach(ring(1)),
            injection: 0,
            starts_at: None,
            inbound_since: None,
            sent: 0,
            taken_seen: 0,
            busy_since: 0,
            yield_state: YieldState::default(),
            grant: None,
        };
        if let Some(registers) = device {
            let dma = frames.allocate_contiguous(DMA_REGION_PAGES as usize, 1).ok_or(ServerBuildError::OutOfMemory)?;
            let region = hypervisor_core::dma_guard::DmaRegion { base: dma.as_u64(), pages: DMA_REGION_PAGES };
            let guard = hypervisor_core::dma_guard::VirtioGuard::new(region, [crate::arch::virtio::QUEUE_NUM_MAX; hypervisor_core::dma_guard::QUEUES]);
            server.grant = Some(Grant { registers, dma, pages: DMA_REGION_PAGES, guard });
        }
        server.start(frames)?;
        Ok(server)
    }

    /// Physical address of the ring at `index` (0 = to_server, 1 = to_core).
    fn ring_frame(&self, index: u64) -> HostPhysAddr {
        HostPhysAddr::new_truncate(self.ring_region.as_u64() + index * ipc::ring::RING_BYTES as u64)
    }

    /// The publication area of this server's ring region
    /// (`ipc::publication`), kept across restarts like the rings (never
    /// `None`: `new` refuses a region the core cannot reach).
    pub fn publication(&self) -> Option<&'static ipc::publication::PublicationArea> {
        publication_of(self.ring_region)
    }

    /// Builds a fresh instance: zeroed rings and publication area, the
    /// image mapped from the kept copy, a fresh stack, and the entry
    /// registers.
    fn start(&mut self, frames: &mut FrameAllocator<'_>) -> Result<(), ServerBuildError> {
        let mut memory = OwnedFrames;
        // Fresh, empty rings; the core's ends start over from index 0.
        let (to_server, to_core) = (memory::shared_ring(self.ring_frame(0)), memory::shared_ring(self.ring_frame(1)));
        to_server.reset();
        to_core.reset();
        self.to_server = Producer::attach(to_server);
        self.to_core = Consumer::attach(to_core);
        // Whatever the last instance published was taken before it stopped.
        if let Some(area) = self.publication() {
            area.reset();
        }
        let arguments = HostPhysAddr::new_truncate(self.ring_region.as_u64() + RING_PAGES * PAGE_SIZE);
        memory.fill(arguments, 0);
        memory.write(arguments, 0, self.spec.args.as_bytes());

        let space = PageTable::new(&mut memory, frames)?;
        self.space = Some(space);
        // The core's first CORE_WINDOW bytes, supervisor-only: entry code,
        // per-CPU data, stacks.
        let mut window = 0;
        while window < crate::arch::user::CORE_WINDOW {
            space.map(&mut memory, frames, window, HostPhysAddr::new_truncate(window), PageSize::Size2MiB, EntryFlags::WRITABLE)?;
            window += PageSize::Size2MiB.bytes();
        }
        let user = EntryFlags::USER;
        for segment in &self.executable.segments {
            let mut flags = user;
            if segment.writable() {
                flags = flags.with(EntryFlags::WRITABLE);
            }
            if !segment.executable() {
                flags = flags.with(EntryFlags::NO_EXECUTE);
            }
            let end = segment.virtual_address + segment.memory_size;
            let mut page = segment.virtual_address;
            while page < end {
                let frame = frames.allocate().ok_or(ServerBuildError::OutOfMemory)?;
                memory.fill(frame, 0);
                // Copy the part of the file that lands in this page.
                let page_offset = page - segment.virtual_address;
                if page_offset < segment.file_size {
                    let length = (segment.file_size - page_offset).min(PAGE_SIZE) as usize;
                    let start = (segment.file_offset + page_offset) as usize;
                    memory.write(frame, 0, self.image.get(start..start + length).unwrap_or(&[]));
                }
                space.map(&mut memory, frames, page, frame, PageSize::Size4KiB, flags)?;
                page += PAGE_SIZE;
            }
        }
        let data = user.with(EntryFlags::WRITABLE).with(EntryFlags::NO_EXECUTE);
        let mut page = STACK_TOP - STACK_SIZE;
        while page < STACK_TOP {
            let frame = frames.allocate().ok_or(ServerBuildError::OutOfMemory)?;
            memory.fill(frame, 0);
            space.map(&mut memory, frames, page, frame, PageSize::Size4KiB, data)?;
            page += PAGE_SIZE;
        }
        for page in 0..RING_PAGES {
            let frame = HostPhysAddr::new_truncate(self.ring_region.as_u64() + page * PAGE_SIZE);
            space.map(&mut memory, frames, RING_REGION_BASE + page * PAGE_SIZE, frame, PageSize::Size4KiB, data)?;
        }
        space.map(&mut memory, frames, ARGUMENTS_ADDRESS, arguments, PageSize::Size4KiB, user.with(EntryFlags::NO_EXECUTE))?;
        for page in 0..PUBLICATION_PAGES {
            let offset = (RING_PAGES + 1 + page) * PAGE_SIZE;
            let frame = HostPhysAddr::new_truncate(self.ring_region.as_u64() + offset);
            space.map(&mut memory, frames, RING_REGION_BASE + offset, frame, PageSize::Size4KiB, data)?;
        }
        if let Some(grant) = self.grant.as_mut() {
            // The device stops using the old instance's queues, the new one
            // starts from zeroed DMA memory and a reset guard.
            crate::arch::virtio::reset(grant.registers);
            grant.guard.reset();
            for page in 0..grant.pages {
                let frame = HostPhysAddr::new_truncate(grant.dma.as_u64() + page * PAGE_SIZE);
                memory.fill(frame, 0);
                space.map(&mut memory, frames, DMA_REGION_BASE + page * PAGE_SIZE, frame, PageSize::Size4KiB, data)?;
            }
            let device = user.with(EntryFlags::NO_CACHE).with(EntryFlags::WRITE_THROUGH).with(EntryFlags::NO_EXECUTE);
            let page = HostPhysAddr::new_truncate(grant.registers & !(PAGE_SIZE - 1));
            space.map(&mut memory, frames, DEVICE_REGISTERS_BASE, page, PageSize::Size4KiB, device)?;
        }

        self.context = UserContext {
            rip: self.executable.entry,
            rsp: STACK_TOP,
            rflags: 0x202,
            rdi: u64::from(self.health.generation),
            rsi: RING_REGION_BASE,
            rdx: self.spec.kind as u64,
            rcx: ARGUMENTS_ADDRESS,
            cr3: space.root().as_u64(),
            ..UserContext::default()
        };
        self.run = ServerRun::Runnable;
        self.echo.reset();
        self.injection = 0;
        self.inbound_since = None;
        self.sent = 0;
        self.taken_seen = 0;
        self.busy_since = crate::arch::cpu::rdtsc();
        self.yield_state = YieldState::default();
        Ok(())
    }

    /// Frees the instance's memory: its pages and page tables, but not the
    /// ring region (kept across restarts) nor the core's window.
    fn tear_down(&mut self, frames: &mut FrameAllocator<'_>) {
        let Some(space) = self.space.take() else { return };
        let region = self.ring_region;
        // Every frame handed back here came from `frames` in `start`; a failed
        // free would mean a core bug, and it is not worth stopping for.
        space.teardown(&OwnedFrames, &mut |item| match item {
            Teardown::Leaf { entry, address } => {
                let frame = entry & ADDRESS_MASK;
                // The grant region (device registers, DMA region) is kept.
                let granted = (GRANT_REGION_BASE..STACK_TOP - STACK_SIZE).contains(&address);
                if entry & EntryFlags::USER.0 != 0 && !in_ring_region(frame, region) && !granted {
                    let _ = frames.free(HostPhysAddr::new_truncate(frame));
                }
            }
            Teardown::Table(table) => {
                let _ = frames.free(table);
            }
        });
    }

    /// Stops the current instance and starts the next generation.
    pub fn restart(&mut self, frames: &mut FrameAllocator<'_>) -> Result<u32, ServerBuildError> {
        self.tear_down(frames);
        let generation = self.health.restarted();
        self.start(frames)?;
        Ok(generation)
    }
}

/// What the core learned from a server's `to_core` ring.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drained {
    /// The server announced itself (first message of an instance).
    pub ready: bool,
    /// Well-formed messages taken.
    pub messages: u32,
    /// A heartbeat was among them.
    pub heartbeat: bool,
    /// Echo replies that matched.
    pub echoes: u32,
    /// Target verdicts from the pager: (domain, accepted, floor pages).
    pub targets: heapless::Vec<(u16, bool, u64), 8>,
    /// The pager's paging requests and reports, in ring order.
    pub pager: heapless::Vec<pager::ToCore, SLOT_COUNT>,
    /// The scheduler asked for a fresh rebuild stream.
    pub needs_rebuild: bool,
    /// The scheduler answered a control request.
    pub control: bool,
}

/// What the scheduler's messages are checked against and go to.
pub struct SchedulerInput<'l> {
    /// The machine's shape (pCPUs, vCPUs per domain).
    pub shape: scheduler::Shape,
    /// Where accepted messages go.
    pub link: &'l mut super::scheduling::SchedulerLink,
}

impl Server<'_> {
    /// Whether a runnable server should run before vCPUs: it did not yield
    /// (or ran since it did), or messages wait for it.
    pub fn has_work(&self) -> bool {
        self.yield_state.has_work(self.has_inbound())
    }

    /// Whether messages the core sent are still unread by the server.
    pub fn has_inbound(&self) -> bool {
        self.to_server.free_slots().map_or(true, |free| free < SLOT_COUNT)
    }

    /// Messages put into the `to_server` ring since the instance started
    /// (wrapping): where a bookkeeping log goes among them.
    pub fn sent_position(&self) -> u32 {
        self.to_server.position()
    }

    /// Encodes and sends a message with the current generation.
    pub fn send<M: messages::Message>(&mut self, message: M) -> bool {
        let mut buffer = [0u8; SLOT_PAYLOAD];
        let envelope = Envelope::new(self.health.generation, message);
        let sent = match messages::encode(&envelope, &mut buffer) {
            Ok(length) => self.to_server.try_send(&buffer[..length]).is_ok(),
            Err(_) => false,
        };
        if sent {
            self.sent += 1;
            if self.inbound_since.is_none() {
                self.inbound_since = Some(crate::arch::cpu::rdtsc());
            }
        }
        sent
    }

    /// The progress check's clock: it stops when the server has read
    /// everything, and starts over whenever it has taken any message since
    /// the last check (a busy server whose ring is never empty is not hung).
    pub fn note_progress(&mut self) {
        let pending = self.to_server.free_slots().map_or(SLOT_COUNT, |free| SLOT_COUNT - free) as u64;
        let taken = self.sent.saturating_sub(pending);
        if pending == 0 {
            self.inbound_since = None;
        } else if taken != self.taken_seen {
            self.inbound_since = Some(crate::arch::cpu::rdtsc());
        }
        self.taken_seen = taken;
    }

    /// Sends a test-protocol message.
    pub fn send_test(&mut self, message: test_server::ToServer) -> bool {
        self.send(message)
    }

    /// Tells the server a refused message's error code, in its protocol.
    fn send_error(&mut self, code: messages::ErrorCode) -> bool {
        match self.spec.kind {
            ServerKind::Test => self.send(test_server::ToServer::Error { code }),
            ServerKind::Pager => self.send(pager::ToServer::Error { code }),
            ServerKind::Scheduler => self.send(scheduler::ToServer::Error { code }),
        }
    }

    /// Sends the next echo request of the core's check, if none is outstanding.
    pub fn send_next_echo(&mut self) -> bool {
        let Some((sequence, payload)) = self.echo.next_request() else { return false };
        let mut bytes = test_server::EchoPayload::new();
        // ECHO_PAYLOAD_LEN is below the protocol's maximum payload.
        let _ = bytes.extend_from_slice(&payload[..ECHO_PAYLOAD_LEN]);
        self.send_test(test_server::ToServer::Echo { sequence, payload: bytes })
    }

    /// Reads and validates everything in the `to_core` ring. A malformed
    /// message is answered with an error and counted; past the limit the
    /// server's fault is returned.
    /// At most `max` messages are taken (the pager's replies must fit).
    /// What was learned goes into `drained`, the caller's: it holds up to a
    /// ring's worth of pager messages, kilobytes that a return by value
    /// would copy twice on every server turn.
    pub fn drain(&mut self, domains: u16, max: usize, mut scheduler_input: Option<SchedulerInput<'_>>, drained: &mut Drained) -> Result<(), ServerFault> {
        let mut fault = None;
        let mut errors: heapless::Vec<messages::ErrorCode, SLOT_COUNT> = heapless::Vec::new();
        let generation = self.health.generation;
        let kind = self.spec.kind;
        if let (Some(input), Some(area)) = (scheduler_input.as_mut(), self.publication()) {
            // The decisions first: a message after them (a tickle, `Ready`)
            // was computed with them. The server is stopped in a syscall
            // now, so no block is being written.
            for pcpu in 0..input.shape.pcpus {
                let sequence = area.decision_sequence(pcpu);
                if !input.link.decision_changed(pcpu, sequence) {
                    continue;
                }
                match area.read_decision(pcpu, &input.shape) {
                    Ok(Some(decision)) => input.link.take_decision(pcpu, decision),
                    Ok(None) => input.link.seen_decision(pcpu, sequence),
                    Err(error) => {
                        // Refused like a malformed message: the pCPU keeps
                        // its last decision, and the server, told, publishes
                        // everything again. Only a good block for the same
                        // pCPU clears its count, so a server cannot keep
                        // one block bad while others (or messages) are good;
                        // the first refusal of an instance is logged.
                        let (in_a_row, first) = input.link.refuse_decision(pcpu, sequence);
                        if first {
                            defmt::warn!("scheduler decision of pCPU {=u8} refused: {=str}", pcpu, error.reason());
                        }
                        let _ = errors.push(messages::ErrorCode::OutOfRange);
                        if in_a_row > hypervisor_core::server::MALFORMED_LIMIT {
                            fault = Some(ServerFault::TooManyMalformed { count: in_a_row });
                        }
                    }
                }
            }
        }
        let health = &mut self.health;
        let echo = &mut self.echo;
        let result = self.to_core.drain(max.min(SLOT_COUNT), |slot| {
            let verdict = match (kind, slot) {
                (ServerKind::Test, Ok(bytes)) => {
                    match messages::decode_from_server::<test_server::ToCore>(bytes, generation, &()) {
                        Ok(test_server::ToCore::Ready) => {
                            drained.ready = true;
                            Ok(())
                        }
                        Ok(test_server::ToCore::EchoReply { sequence, payload }) => {
                            if echo.reply(sequence, &payload) {
                                drained.echoes += 1;
                                Ok(())
                            } else {
                                Err(messages::ErrorCode::OutOfRange)
                            }
                        }
                        Ok(test_server::ToCore::Heartbeat { .. }) => {
                            drained.heartbeat = true;
                            Ok(())
                        }
                        Err(error) => Err(error.code()),
                    }
                }
                (ServerKind::Pager, Ok(bytes)) => {
                    let context = pager::PagerContext { domains };
                    match messages::decode_from_server::<pager::ToCore>(bytes, generation, &context) {
                        Ok(pager::ToCore::Ready) => {
                            drained.ready = true;
                            Ok(())
                        }
                        Ok(pager::ToCore::Heartbeat { .. }) => {
                            drained.heartbeat = true;
                            Ok(())
                        }
                        Ok(pager::ToCore::Target { domain, accepted, floor_pages }) => {
                            let _ = drained.targets.push((domain, accepted, floor_pages));
                            Ok(())
                        }
                        Ok(message) => {
                            // At most SLOT_COUNT messages are drained.
                            let _ = drained.pager.push(message);
                            Ok(())
                        }
                        Err(error) => Err(error.code()),
                    }
                }
                (ServerKind::Scheduler, Ok(bytes)) => match scheduler_input.as_mut() {
                    Some(input) => {
                        match messages::decode_from_server::<scheduler::ToCore>(bytes, generation, &input.shape) {
                            Ok(message) => {
                                drained.heartbeat |= matches!(message, scheduler::ToCore::Heartbeat { .. });
                                match input.link.accept(message, generation) {
                                    super::scheduling::Accepted::Ready => drained.ready = true,
                                    super::scheduling::Accepted::NeedsRebuild => drained.needs_rebuild = true,
                                    super::scheduling::Accepted::Control => drained.control = true,
                                    super::scheduling::Accepted::Other => {}
                                }
                                Ok(())
                            }
                            Err(error) => Err(error.code()),
                        }
                    }
                    None => Err(messages::ErrorCode::Unexpected),
                },
                (_, Err(_)) => Err(messages::ErrorCode::BadLength),
            };
            match verdict {
                Ok(()) => {
                    health.well_formed();
                    drained.messages += 1;
                }
                Err(code) => {
                    let _ = errors.push(code);
                    if let Some(limit) = health.malformed() {
                        fault = Some(limit);
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        });
        if result.is_err() {
            // The server corrupted its ring's indices: that is malformed input too.
            fault = fault.or(self.health.malformed());
        }
        for code in errors {
            let _ = self.send_error(code);
        }
        fault.map_or(Ok(()), Err)
    }

    /// Copies `length` bytes at `pointer` out of the server's own user
    /// mappings into `buffer`; `false` if any byte is not mapped
    /// user-accessible.
    pub fn copy_from_user(&self, pointer: u64, buffer: &mut [u8]) -> bool {
        let Some(space) = self.space.as_ref() else { return false };
        let frames = OwnedFrames;
        let mut done = 0;
        while done < buffer.len() {
            let address = pointer + done as u64;
            let Some(translation) = space.translate(&frames, address) else { return false };
            if !translation.flags.contains(EntryFlags::USER) {
                return false;
            }
            let offset = (address % PAGE_SIZE) as usize;
            let piece = (PAGE_SIZE as usize - offset).min(buffer.len() - done);
            frames.read(translation.phys.page_base(), offset, &mut buffer[done..done + piece]);
            done += piece;
        }
        true
    }

    /// The DMA region (first frame, pages), if a device is granted.
    pub fn dma_region(&self) -> Option<(HostPhysAddr, u64)> {
        self.grant.as_ref().map(|grant| (grant.dma, grant.pages))
    }

    /// Wakes the server out of `wait` with `bits` (and any pending fault
    /// injection) as the syscall's result.
    pub fn wake(&mut self, bits: u64) {
        if self.starts_at.is_some_and(|start| crate::arch::cpu::rdtsc() < start) {
            return; // Backing off: the messages wait in the ring for the new instance.
        }
        self.yield_state.woken();
        if matches!(self.run, ServerRun::Waiting { .. }) {
            self.context.rax = bits | core::mem::take(&mut self.injection);
            self.run = ServerRun::Runnable;
        }
    }

    /// Asks the server's runtime to misbehave at its next wake (fault
    /// injection: `syscall::WAKE_INJECT_*`).
    pub fn inject(&mut self, bits: u64) {
        self.injection |= bits;
    }

    /// The `wait` result bits the server would see now.
    pub fn wake_bits(&self, now: u64) -> u64 {
        let mut bits = self.injection;
        if self.has_inbound() {
            bits |= syscall::WAKE_MESSAGES;
        }
        if let ServerRun::Waiting { deadline: Some(deadline) } = self.run {
            if now >= deadline {
                bits |= syscall::WAKE_TIMEOUT;
            }
        }
        bits
    }
}

//! The pager as a server: the [`components::Handler`] around the paging
//! [`Engine`]. It only adapts: the engine's [`Port`] and [`Transport`] are
//! the [`Context`] (messages, log, clock, the device grant), and the
//! engine's wish for its next run becomes the run loop's timeout:
//!
//! * after messages that made work ready: at once, after the batch;
//! * while device requests are in flight: [`Context::poll_at`] the
//!   engine's poll interval (40 µs after a completion, doubling to 500 µs
//!   while nothing completes), so the pager waits in the core (guests run,
//!   and a message from the core ends the wait) instead of spinning (the
//!   one spin is short, in the engine, while a page-in read is out:
//!   [`Engine::pump`]);
//! * otherwise: the next heartbeat (100 ms), when `Heartbeat` and one
//!   `Stats` per domain are sent.
//!
//! The clock is read at most once per handler call (the engine's
//! [`Port::now`] and the timeout share the reading): every syscall costs
//! the core two address-space switches, and under QEMU TCG each one
//! flushes the emulated TLB, so a `time` syscall per use made the clock
//! the pager's most frequent syscall (`docs/paging.md`, "Performance").
//!
//! The server argument `device-bench` makes the first instance measure the
//! swap device's read rates before paging starts ([`crate::devbench`]).
//!
//! Storage: the engine's tables live in `static`s taken once
//! ([`components::StaticCell`]), zero-filled by the core at every start:
//! [`ARENA_WORDS`] words of bitmaps and MRU rings, [`ARENA_HALVES`] `u32`s
//! of gfn → slot mirrors and slot stacks, and [`TABLE_BLOCKS`] cached slot
//! table blocks, which bound the swap slots used to `255 ×` [`TABLE_BLOCKS`]
//! (a larger device is formatted with that many slots).

use components::{Context, DeviceError, Handler, LogLine};
use ipc::messages::pager::{ToCore, ToServer};

#[cfg(target_os = "none")]
use crate::disk::BLOCK_SIZE;
use crate::engine::{Engine, NextWake, Port, Storage};
use crate::virtio::Transport;

pub use crate::engine::{HEARTBEAT_INTERVAL_NS, MAX_DOMAINS};

/// Words of the engine's `u64` arena.
pub const ARENA_WORDS: usize = 64 * 1024;
/// Entries of the engine's `u32` arena.
pub const ARENA_HALVES: usize = 96 * 1024;
/// Cached slot-table blocks (32895 slots, 128 MiB of swap).
pub const TABLE_BLOCKS: usize = 129;
/// Exit code when the engine asks for a restart.
pub const EXIT_RESTART: u64 = 1;

#[cfg(target_os = "none")]
static WORDS: components::StaticCell<[u64; ARENA_WORDS]> =
    components::StaticCell::new([0; ARENA_WORDS]);
#[cfg(target_os = "none")]
static HALVES: components::StaticCell<[u32; ARENA_HALVES]> =
    components::StaticCell::new([0; ARENA_HALVES]);
#[cfg(target_os = "none")]
static TABLE: components::StaticCell<[[u8; BLOCK_SIZE]; TABLE_BLOCKS]> =
    components::StaticCell::new([[0; BLOCK_SIZE]; TABLE_BLOCKS]);

/// The pager server. The engine (some 13 KiB) lives in a `static` too, not
/// on the 64 KiB server stack.
#[derive(Debug)]
pub struct PagerServer {
    engine: &'static mut Engine,
}

#[cfg(target_os = "none")]
static ENGINE: components::StaticCell<Option<Engine>> = components::StaticCell::new(None);

impl PagerServer {
    /// The pager over its static storage: the server binary's constructor,
    /// called once per instance (the core starts each from a fresh image).
    #[cfg(target_os = "none")]
    // Not `Default`: it takes the statics, once.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let storage = Storage {
            words: WORDS.take().map_or(&mut [][..], |words| &mut words[..]),
            halves: HALVES.take().map_or(&mut [][..], |halves| &mut halves[..]),
            table: TABLE.take().map_or(&mut [][..], |table| &mut table[..]),
        };
        let slot = ENGINE
            .take()
            .unwrap_or_else(|| panic!("the pager is constructed once per instance"));
        Self::with_storage(storage, slot)
    }

    /// The pager over `storage`, its engine kept in `slot`.
    pub fn with_storage(storage: Storage, slot: &'static mut Option<Engine>) -> Self {
        let engine = slot.insert(Engine::new(storage));
        Self { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        self.engine
    }

    /// Runs `entry` on the engine with the [`Context`] as its port, then
    /// turns the engine's wish for its next run into the run loop's
    /// timeout. The clock is read at most once for both (each `time` is a
    /// syscall, and every syscall costs two address-space switches).
    fn run(
        &mut self,
        context: &mut Context<'_, ToCore>,
        entry: impl FnOnce(&mut Engine, &mut ContextPort<'_, '_>),
    ) {
        let mut port = ContextPort::new(context);
        entry(self.engine, &mut port);
        match self.engine.next_wake_with(|| port.now()) {
            // Any time not after now: the run loop takes it as passed.
            NextWake::Now => port.context.wake_at(port.clock.unwrap_or(0)),
            NextWake::Poll(nanoseconds) => {
                let now = port.now();
                port.context.poll_at(now.saturating_add(nanoseconds));
            }
            NextWake::At(deadline) => port.context.wake_at(deadline),
        }
    }
}

/// The engine's view of the [`Context`], for one handler call.
struct ContextPort<'c, 'a> {
    context: &'c mut Context<'a, ToCore>,
    dma_bus: u64,
    dma_pages: u64,
    /// The clock, read at the first [`Port::now`] of the call: a handler
    /// call is short next to anything the engine times (poll intervals of
    /// microseconds, timeouts of milliseconds and more).
    clock: Option<u64>,
}

impl<'c, 'a> ContextPort<'c, 'a> {
    fn new(context: &'c mut Context<'a, ToCore>) -> Self {
        let (dma_bus, dma_pages) = context
            .device()
            .map_or((0, 0), |device| (device.dma_bus(), device.dma_pages()));
        Self {
            context,
            dma_bus,
            dma_pages,
            clock: None,
        }
    }
}

impl Port for ContextPort<'_, '_> {
    fn send(&mut self, message: ToCore) -> bool {
        self.context.send(message).is_ok()
    }

    fn log(&mut self, line: &LogLine) {
        self.context.log_line(line);
    }

    fn now(&mut self) -> u64 {
        *self.clock.get_or_insert_with(|| self.context.now())
    }

    fn now_fresh(&mut self) -> u64 {
        let now = self.context.now();
        self.clock = Some(now);
        now
    }

    fn restart(&mut self, reason: &str) {
        self.context.log(reason);
        self.context.stop(EXIT_RESTART);
    }
}

impl Transport for ContextPort<'_, '_> {
    fn read32(&mut self, offset: u64) -> Result<u32, DeviceError> {
        self.context.device()?.read32(offset)
    }
    fn write32(&mut self, offset: u64, value: u32) -> Result<(), DeviceError> {
        self.context.device()?.write32(offset, value)
    }
    fn dma_bus(&self) -> u64 {
        self.dma_bus
    }
    fn dma_pages(&self) -> u64 {
        self.dma_pages
    }
    fn dma_read(&mut self, offset: usize, out: &mut [u8]) -> Result<(), DeviceError> {
        self.context.device()?.dma_read(offset, out)
    }
    fn dma_write(&mut self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        self.context.device()?.dma_write(offset, data)
    }
    fn dma_load_u8(&mut self, offset: usize) -> Result<u8, DeviceError> {
        self.context.device()?.dma_load_u8(offset)
    }
    fn dma_load_u16(&mut self, offset: usize) -> Result<u16, DeviceError> {
        self.context.device()?.dma_load_u16(offset)
    }
    fn dma_load_u32(&mut self, offset: usize) -> Result<u32, DeviceError> {
        self.context.device()?.dma_load_u32(offset)
    }
    fn dma_store_u8(&mut self, offset: usize, value: u8) -> Result<(), DeviceError> {
        self.context.device()?.dma_store_u8(offset, value)
    }
    fn dma_store_u16(&mut self, offset: usize, value: u16) -> Result<(), DeviceError> {
        self.context.device()?.dma_store_u16(offset, value)
    }
    fn dma_store_u32(&mut self, offset: usize, value: u32) -> Result<(), DeviceError> {
        self.context.device()?.dma_store_u32(offset, value)
    }
    fn dma_store_u64(&mut self, offset: usize, value: u64) -> Result<(), DeviceError> {
        self.context.device()?.dma_store_u64(offset, value)
    }
}

impl Handler for PagerServer {
    type Inbound = ToServer;
    type Outbound = ToCore;

    fn init(&mut self, context: &mut Context<'_, ToCore>) {
        let mut line = LogLine::new();
        line.push_str("pager: gen ")
            .push_decimal(u64::from(context.generation()))
            .push_str(" started");
        context.log_line(&line);
        if crate::devbench::requested(context.arguments()) {
            if context.generation() == 1 {
                self.engine.request_device_bench();
            } else {
                context.log("pager: device measurement skipped: not the first instance");
            }
        }
        let probe = context.device().map(|_| ()).map_err(DeviceError::reason);
        self.run(context, |engine, port| engine.start(port, probe));
    }

    fn request(&mut self, message: ToServer, context: &mut Context<'_, ToCore>) {
        self.run(context, |engine, port| engine.message(port, message));
    }

    fn notified(&mut self, context: &mut Context<'_, ToCore>) {
        self.run(context, |engine, port| engine.pump(port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use components::testing::{Harness, MockDevice};
    use ipc::messages::pager::LoadFailure;

    fn pager() -> PagerServer {
        let storage = Storage {
            words: &mut [],
            halves: &mut [],
            table: &mut [],
        };
        PagerServer::with_storage(storage, Box::leak(Box::new(None)))
    }

    fn sent(harness: &mut Harness<PagerServer>) -> Vec<ToCore> {
        harness
            .take_sent()
            .into_iter()
            .map(|message| message.unwrap())
            .collect()
    }

    #[test]
    fn without_a_device_paging_is_off_and_targets_below_memory_are_refused() {
        let mut harness = Harness::new(pager(), 1, "");
        harness.start().unwrap();
        assert_eq!(sent(&mut harness), [ToCore::Ready]);
        assert!(harness
            .take_logs()
            .contains(&"pager: no swap device: paging off".to_string()));
        harness.push(ToServer::Domain {
            domain: 0,
            memory_pages: 4096,
            target_pages: 1024,
        });
        harness.push(ToServer::Domain {
            domain: 1,
            memory_pages: 4096,
            target_pages: 4096,
        });
        harness.push(ToServer::PageIn {
            domain: 1,
            gfn: 7,
            slot: 0,
        });
        harness.turn().unwrap();
        assert_eq!(
            sent(&mut harness),
            [
                ToCore::Target {
                    domain: 0,
                    accepted: false,
                    floor_pages: 4096
                },
                ToCore::Target {
                    domain: 1,
                    accepted: true,
                    floor_pages: 4096
                },
                ToCore::LoadFailed {
                    domain: 1,
                    gfn: 7,
                    reason: LoadFailure::ReadError
                },
            ]
        );
        let logs = harness.take_logs();
        assert!(
            logs.iter()
                .any(|line| line.ends_with("refused: no swap device: paging off")),
            "{logs:?}"
        );
        // The heartbeat goes on.
        harness.turn().unwrap();
        assert_eq!(sent(&mut harness), [ToCore::Heartbeat { count: 1 }]);
    }

    #[test]
    fn an_unusable_device_turns_paging_off_with_the_reason() {
        let mut harness = Harness::new(pager(), 1, "");
        let device = MockDevice::new(64, 0x4000_0000);
        device.set_register(0, 0x1234);
        harness.platform_mut().device = Some(device);
        harness.start().unwrap();
        let logs = harness.take_logs();
        assert!(
            logs.contains(
                &"pager: swap device unusable: not a virtio-mmio device: paging off".to_string()
            ),
            "{logs:?}"
        );
        assert!(
            harness
                .platform()
                .device
                .as_ref()
                .unwrap()
                .writes
                .is_empty(),
            "nothing is written to a stranger"
        );
    }
}

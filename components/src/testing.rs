//! An in-memory stand-in for the core, so that the run loop and the servers'
//! handlers are tested on the host (feature `testing`; needs std).
//!
//! [`MockPlatform`] plays the core's side of the syscalls and of the two
//! rings (real [`RingMemory`]s, so the tests exercise the real ring code):
//! `wait` reports messages if the `to_server` ring has any, otherwise lets
//! the clock run to the timeout; `notify`, `wait` and `yield` drain the
//! `to_core` ring into [`MockPlatform::delivered`], as the core does; `log` and the raw hatches
//! are recorded. [`Harness`] wraps a [`Runtime`] over it with helpers to
//! send messages as the core and decode what the server sent.

use std::boxed::Box;
use std::string::String;
use std::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use ipc::messages::{self, DecodeError, Envelope, Message};
use ipc::publication::PublicationArea;
use ipc::ring::{Consumer, Producer, RingError, RingMemory, SLOT_COUNT, SLOT_PAYLOAD};
use ipc::server::syscall::{
    DEVICE_DMA, DEVICE_DMA_BUS, DEVICE_DMA_PAGES, DEVICE_REGISTERS, EINVAL, ENODEV, NO_TIMEOUT,
    WAKE_MESSAGES, WAKE_TIMEOUT,
};
use ipc::server::ServerKind;

use crate::handler::Handler;
use crate::platform::{Platform, Wake};
use crate::runtime::{Instance, Runtime, Stop};

/// A raw operation ([`crate::raw`]) the server performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawCall {
    /// [`crate::raw::Raw::syscall`].
    Syscall {
        /// The syscall number.
        number: u64,
        /// Its arguments.
        arguments: [u64; 5],
    },
    /// [`crate::raw::Raw::read_probe`].
    Read(u64),
    /// [`crate::raw::Raw::write_probe`].
    Write(u64),
    /// [`crate::raw::Raw::spin`].
    Spin,
}

/// One syscall of the run loop, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `yield`.
    Yield,
    /// `wait(timeout_ns)`.
    Wait(u64),
    /// `notify`.
    Notify,
}

/// One page of the mock device's register window (page-aligned, as the
/// core's mapping is).
#[repr(C, align(4096))]
struct RegisterPage([AtomicU32; 1024]);

/// One page of the mock DMA region.
#[repr(C, align(4096))]
struct DmaPage([AtomicU8; 4096]);

/// A granted device, played on the host: a register page and a DMA region
/// in (leaked, page-aligned) host memory, whose addresses `device_info`
/// returns, so [`crate::Device`]'s volatile accesses work unchanged.
/// `device_write` is recorded and, unless [`Self::write_result`] is an
/// error, stored into the register page.
#[derive(Debug)]
pub struct MockDevice {
    registers: &'static RegisterPage,
    dma: &'static [DmaPage],
    /// The bus address `device_info(DEVICE_DMA_BUS)` reports.
    pub dma_bus: u64,
    /// Every `device_write(offset, value)`, in order.
    pub writes: Vec<(u64, u32)>,
    /// What `device_write` returns (0, or a negative errno).
    pub write_result: i64,
}

impl core::fmt::Debug for RegisterPage {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str("RegisterPage")
    }
}

impl core::fmt::Debug for DmaPage {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str("DmaPage")
    }
}

impl MockDevice {
    /// A device with zeroed registers and `dma_pages` zeroed DMA pages at
    /// bus address `dma_bus`. (The memory is leaked: a few pages per test.)
    pub fn new(dma_pages: usize, dma_bus: u64) -> Self {
        let registers: &'static RegisterPage =
            Box::leak(Box::new(RegisterPage(core::array::from_fn(|_| AtomicU32::new(0)))));
        let pages: Vec<DmaPage> = (0..dma_pages)
            .map(|_| DmaPage(core::array::from_fn(|_| AtomicU8::new(0))))
            .collect();
        Self {
            registers,
            dma: Box::leak(pages.into_boxed_slice()),
            dma_bus,
            writes: Vec::new(),
            write_result: 0,
        }
    }

    /// The register at `offset` (a multiple of 4 below 4096).
    pub fn register(&self, offset: u64) -> u32 {
        self.registers.0[(offset / 4) as usize].load(Ordering::SeqCst)
    }

    /// Sets the register at `offset`, as the device would.
    pub fn set_register(&self, offset: u64, value: u32) {
        self.registers.0[(offset / 4) as usize].store(value, Ordering::SeqCst);
    }

    /// `length` bytes of the DMA region from `offset`.
    pub fn dma_bytes(&self, offset: usize, length: usize) -> Vec<u8> {
        (offset..offset + length)
            .map(|at| self.dma[at / 4096].0[at % 4096].load(Ordering::SeqCst))
            .collect()
    }

    /// Writes `bytes` into the DMA region at `offset`, as the device or the
    /// core would.
    pub fn set_dma_bytes(&self, offset: usize, bytes: &[u8]) {
        for (index, byte) in bytes.iter().enumerate() {
            let at = offset + index;
            self.dma[at / 4096].0[at % 4096].store(*byte, Ordering::SeqCst);
        }
    }

    fn info(&self, item: u64) -> i64 {
        match item {
            DEVICE_REGISTERS => core::ptr::from_ref(self.registers) as i64,
            DEVICE_DMA => self.dma.as_ptr() as i64,
            DEVICE_DMA_BUS => self.dma_bus as i64,
            DEVICE_DMA_PAGES => self.dma.len() as i64,
            _ => EINVAL,
        }
    }

    fn write(&mut self, offset: u64, value: u32) -> i64 {
        self.writes.push((offset, value));
        if self.write_result < 0 {
            return self.write_result;
        }
        if offset < 4096 {
            self.set_register(offset, value);
        }
        self.write_result
    }
}

/// The core, played on the host. Fields are public so tests can inspect and
/// steer it.
#[derive(Debug)]
pub struct MockPlatform {
    /// The clock `time` returns, in ns; `wait` advances it to the timeout.
    pub clock: u64,
    /// How many times `time` was called (each is a syscall on the core).
    pub clock_reads: u64,
    /// `yield`, `wait` and `notify`, in order.
    pub calls: Vec<Call>,
    /// Every `log` line.
    pub logs: Vec<String>,
    /// Every raw operation.
    pub raw: Vec<RawCall>,
    /// What a raw syscall returns.
    pub syscall_result: i64,
    /// What a read probe returns.
    pub probe_value: u64,
    /// Whether `notify`, `wait` and `yield` drain the `to_core` ring (as the
    /// core does); off, the ring fills up.
    pub drain_on_notify: bool,
    /// Raw messages the core sends at the next `wait` (then that `wait`
    /// reports messages).
    pub on_next_wait: Vec<Vec<u8>>,
    /// The raw messages drained from `to_core` at each `notify`, `wait` and
    /// `yield`, in order.
    pub delivered: Vec<Vec<u8>>,
    /// The granted device (`None`: `device_info` answers `-ENODEV`).
    pub device: Option<MockDevice>,
    to_server: Producer<'static>,
    to_core: Consumer<'static>,
}

impl MockPlatform {
    /// A mock core on the other end of `to_server` and `to_core`.
    pub fn new(to_server: &'static RingMemory, to_core: &'static RingMemory) -> Self {
        Self {
            clock: 1_000_000,
            clock_reads: 0,
            calls: Vec::new(),
            logs: Vec::new(),
            raw: Vec::new(),
            syscall_result: 0,
            probe_value: 0,
            drain_on_notify: true,
            on_next_wait: Vec::new(),
            delivered: Vec::new(),
            device: None,
            to_server: Producer::attach(to_server),
            to_core: Consumer::attach(to_core),
        }
    }

    /// Puts `bytes` into the `to_server` ring, as the core would.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), RingError> {
        self.to_server.try_send(bytes)
    }

    /// Drains the `to_core` ring into [`Self::delivered`] now.
    pub fn drain_to_core(&mut self) {
        let delivered = &mut self.delivered;
        let _ = self.to_core.drain(SLOT_COUNT, |slot| {
            if let Ok(bytes) = slot {
                delivered.push(bytes.to_vec());
            }
            core::ops::ControlFlow::Continue(())
        });
    }

    /// The number of `wait` calls so far.
    pub fn waits(&self) -> usize {
        self.calls
            .iter()
            .filter(|call| matches!(call, Call::Wait(_)))
            .count()
    }

    /// The number of `notify` calls so far.
    pub fn notifications(&self) -> usize {
        self.calls
            .iter()
            .filter(|call| matches!(call, Call::Notify))
            .count()
    }

    fn to_server_has_messages(&self) -> bool {
        self.to_server
            .free_slots()
            .map_or(true, |free| free < SLOT_COUNT)
    }
}

impl Platform for MockPlatform {
    fn yield_now(&mut self) {
        self.calls.push(Call::Yield);
        if self.drain_on_notify {
            self.drain_to_core();
        }
    }

    fn wait(&mut self, timeout_ns: u64) -> Wake {
        self.calls.push(Call::Wait(timeout_ns));
        if self.drain_on_notify {
            self.drain_to_core();
        }
        for bytes in std::mem::take(&mut self.on_next_wait) {
            let _ = self.to_server.try_send(&bytes);
        }
        if self.to_server_has_messages() {
            Wake(WAKE_MESSAGES)
        } else if timeout_ns != NO_TIMEOUT {
            self.clock = self.clock.saturating_add(timeout_ns);
            Wake(WAKE_TIMEOUT)
        } else {
            Wake(0)
        }
    }

    fn notify(&mut self) {
        self.calls.push(Call::Notify);
        if self.drain_on_notify {
            self.drain_to_core();
        }
    }

    fn time(&mut self) -> u64 {
        self.clock_reads += 1;
        self.clock
    }

    fn log(&mut self, bytes: &[u8]) {
        self.logs.push(String::from_utf8_lossy(bytes).into_owned());
    }

    fn device_info(&mut self, item: u64) -> i64 {
        self.device.as_ref().map_or(ENODEV, |device| device.info(item))
    }

    fn device_write(&mut self, offset: u64, value: u32) -> i64 {
        self.device.as_mut().map_or(ENODEV, |device| device.write(offset, value))
    }

    fn raw_syscall(&mut self, number: u64, arguments: [u64; 5]) -> i64 {
        self.raw.push(RawCall::Syscall { number, arguments });
        self.syscall_result
    }

    fn read_probe(&mut self, address: u64) -> u64 {
        self.raw.push(RawCall::Read(address));
        self.probe_value
    }

    fn write_probe(&mut self, address: u64) {
        self.raw.push(RawCall::Write(address));
    }

    fn spin(&mut self) {
        self.raw.push(RawCall::Spin);
    }
}

/// A [`Runtime`] over a [`MockPlatform`], with the core's side at hand.
#[derive(Debug)]
pub struct Harness<H> {
    runtime: Runtime<'static, H, MockPlatform>,
    to_server: &'static RingMemory,
    to_core: &'static RingMemory,
    publication: &'static PublicationArea,
}

impl<H: Handler> Harness<H> {
    /// A test-server instance of `generation` with `arguments`, not started.
    /// (The two rings are leaked: a few pages per test.)
    pub fn new(handler: H, generation: u32, arguments: &'static str) -> Self {
        let to_server: &'static RingMemory = Box::leak(Box::default());
        let to_core: &'static RingMemory = Box::leak(Box::default());
        let publication: &'static PublicationArea = Box::leak(Box::default());
        let instance = Instance {
            generation,
            kind: Some(ServerKind::Test),
            arguments,
        };
        let platform = MockPlatform::new(to_server, to_core);
        Self {
            runtime: Runtime::new(handler, platform, to_server, to_core, publication, instance),
            to_server,
            to_core,
            publication,
        }
    }

    /// The `to_server` ring's memory (to scribble on it as a broken core).
    pub fn to_server_ring(&self) -> &'static RingMemory {
        self.to_server
    }

    /// The publication area (what the core would read of it).
    pub fn publication(&self) -> &'static PublicationArea {
        self.publication
    }

    /// The `to_core` ring's memory.
    pub fn to_core_ring(&self) -> &'static RingMemory {
        self.to_core
    }

    /// [`Runtime::start`].
    pub fn start(&mut self) -> Result<(), Stop> {
        self.runtime.start()
    }

    /// [`Runtime::turn`].
    pub fn turn(&mut self) -> Result<(), Stop> {
        self.runtime.turn()
    }

    /// Sends `message` as the core, in an envelope of the instance's
    /// generation.
    pub fn push(&mut self, message: H::Inbound) {
        let generation = self.runtime.instance().generation;
        self.push_with_generation(generation, message);
    }

    /// Sends `message` as the core, in an envelope of `generation`.
    pub fn push_with_generation(&mut self, generation: u32, message: H::Inbound) {
        self.push_bytes(&encode(generation, message));
    }

    /// Sends `message` as the core when the server next calls `wait`.
    pub fn push_after_wait(&mut self, message: H::Inbound) {
        let generation = self.runtime.instance().generation;
        let bytes = encode(generation, message);
        self.runtime.platform_mut().on_next_wait.push(bytes);
    }

    /// Sends raw bytes as the core.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.runtime
            .platform_mut()
            .push_bytes(bytes)
            .unwrap_or_else(|error| panic!("the to_server ring refused a test message: {error:?}"));
    }

    /// Takes what the core has received so far, decoded as the core would
    /// (version, generation of this instance, encoding).
    pub fn take_sent(&mut self) -> Vec<Result<H::Outbound, DecodeError>> {
        let generation = self.runtime.instance().generation;
        // What the server put into `to_core` reaches the core at its next
        // `wait`, `yield` or `notify`; a test reads it at once.
        if self.runtime.platform().drain_on_notify {
            self.runtime.platform_mut().drain_to_core();
        }
        std::mem::take(&mut self.runtime.platform_mut().delivered)
            .iter()
            .map(|bytes| messages::decode_from_core::<H::Outbound>(bytes, generation))
            .collect()
    }

    /// Takes the log lines so far.
    pub fn take_logs(&mut self) -> Vec<String> {
        std::mem::take(&mut self.runtime.platform_mut().logs)
    }

    /// The run loop.
    pub fn runtime(&self) -> &Runtime<'static, H, MockPlatform> {
        &self.runtime
    }

    /// The run loop, mutably.
    pub fn runtime_mut(&mut self) -> &mut Runtime<'static, H, MockPlatform> {
        &mut self.runtime
    }

    /// The mock core.
    pub fn platform(&self) -> &MockPlatform {
        self.runtime.platform()
    }

    /// The mock core, mutably.
    pub fn platform_mut(&mut self) -> &mut MockPlatform {
        self.runtime.platform_mut()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        self.runtime.handler()
    }
}

/// Encodes `message` in an envelope of `generation`.
pub fn encode<M: Message>(generation: u32, message: M) -> Vec<u8> {
    let mut buffer = [0u8; SLOT_PAYLOAD];
    let length = messages::encode(&Envelope::new(generation, message), &mut buffer)
        .unwrap_or_else(|error| panic!("a test message must encode: {error:?}"));
    buffer[..length].to_vec()
}

/// Decodes `bytes` as an envelope of `generation` carrying an `M`.
pub fn decode<M: Message>(bytes: &[u8], generation: u32) -> Result<M, DecodeError> {
    messages::decode_from_core(bytes, generation)
}

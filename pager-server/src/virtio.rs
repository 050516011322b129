//! A user-level virtio-blk driver: virtio-mmio transport version 2 (virtio
//! 1.x, "modern"), one split virtqueue, polled.
//!
//! Pure: every register access and every byte of DMA memory goes through
//! [`Transport`], which the server implements over the core's device grant
//! ([`components::Device`]) and the tests over a fake device.
//!
//! Written from the virtio 1.x specification (§2 basic facilities, §3.1.1
//! driver initialization, §4.2 virtio over MMIO, §5.2 block device); no code
//! is taken from an existing driver.
//!
//! ## DMA layout
//!
//! | DMA page | bytes | what |
//! |---:|---|---|
//! | 0 | `0x000..0x400` | descriptor table, [`QUEUE_SIZE`] × 16 bytes |
//! | 0 | `0x400..0x486` | available ring (flags, idx, ring\[64\], used_event) |
//! | 0 | `0x800..0xA06` | used ring (flags, idx, 64 × {id, len}, avail_event) |
//! | 1 | `0x000..0x100` | request headers, 16 bytes per request slot |
//! | 1 | `0x800..0x810` | status bytes, one per request slot |
//! | 2 .. pages | | data buffers, one 4096-byte page each ([`FIRST_BUFFER_PAGE`]) |
//!
//! Request slot `r` always uses descriptors `3r` (header, device-readable),
//! `3r + 1` (the data: one 4096-byte page, or several consecutive pages for
//! a larger request; device-writable for a read) and
//! `3r + 2` (the status byte, device-writable), chained with `NEXT`. Every
//! address the driver hands the device is computed from the DMA region's bus
//! base and checked to lie inside the region before it is written: the core
//! refuses anything else (`-EFAULT`) when the queue is notified.
//!
//! No interrupt reaches the server: [`VirtioBlk::poll`] reads the used ring.

use components::DeviceError;

/// Bytes of a block on the swap device (a 4 KiB page).
pub const BLOCK_BYTES: usize = 4096;
/// 512-byte sectors per block.
pub const SECTORS_PER_BLOCK: u64 = (BLOCK_BYTES / 512) as u64;
/// Queue size the driver asks for (fewer if the device offers fewer).
pub const QUEUE_SIZE: u16 = 64;
/// Most requests in flight at once.
pub const MAX_REQUESTS: usize = 16;
/// First DMA page used as a data buffer; pages 0 and 1 hold the queue.
pub const FIRST_BUFFER_PAGE: u16 = 2;

/// Register offsets of the virtio-mmio transport (§4.2.2).
pub mod register {
    /// `0x74726976` ("virt").
    pub const MAGIC: u64 = 0x000;
    /// 2 for the modern transport.
    pub const VERSION: u64 = 0x004;
    /// 2 = block device; 0 = no device behind this transport.
    pub const DEVICE_ID: u64 = 0x008;
    /// Feature bits selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Selects feature word 0 (bits 0..32) or 1 (bits 32..64).
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Accepted feature bits, word selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Selects the driver feature word.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Selects the queue the queue registers address.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Largest queue size the device accepts (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Queue size in use.
    pub const QUEUE_NUM: u64 = 0x038;
    /// 1 once the queue is set up.
    pub const QUEUE_READY: u64 = 0x044;
    /// Written with the queue index: new buffers are available.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Device status (§2.1).
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Available ring address, high.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Used ring address, low.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Used ring address, high.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Changes whenever the configuration space changes.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Device configuration space; virtio-blk's `capacity` (u64, sectors).
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (§2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up.
    pub const FAILED: u32 = 128;
}

/// `"virt"`, little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The virtio device id of a block device.
pub const BLOCK_DEVICE_ID: u32 = 2;
/// `VIRTIO_F_VERSION_1`: feature bit 32, mandatory for the modern interface.
pub const FEATURE_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_BLK_F_RO`: the device is read-only.
pub const FEATURE_BLK_RO: u64 = 1 << 5;

/// virtio-blk request types (§5.2.6).
pub const REQUEST_IN: u32 = 0;
/// Write.
pub const REQUEST_OUT: u32 = 1;
/// Status byte values.
pub const STATUS_OK: u8 = 0;
/// The device reported an I/O error.
pub const STATUS_IOERR: u8 = 1;
/// The request type is not supported.
pub const STATUS_UNSUPP: u8 = 2;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Offsets in the DMA region (see the module doc).
const DESCRIPTORS: usize = 0;
const AVAIL: usize = 0x400;
const USED: usize = 0x800;
const HEADERS: usize = 4096;
const STATUSES: usize = 4096 + 0x800;
/// Status byte written before a request is handed over: a device that
/// "completes" without writing it is caught.
const STATUS_UNWRITTEN: u8 = 0xff;

/// What the driver needs of the device and its DMA region: 32-bit register
/// reads and (checked) writes, and the DMA memory.
pub trait Transport {
    /// Reads the register at `offset`.
    fn read32(&mut self, offset: u64) -> Result<u32, DeviceError>;
    /// Writes the register at `offset`.
    fn write32(&mut self, offset: u64, value: u32) -> Result<(), DeviceError>;
    /// Bus address of the DMA region.
    fn dma_bus(&self) -> u64;
    /// Pages in the DMA region.
    fn dma_pages(&self) -> u64;
    /// Copies bytes out of the DMA region.
    fn dma_read(&mut self, offset: usize, out: &mut [u8]) -> Result<(), DeviceError>;
    /// Copies bytes into the DMA region.
    fn dma_write(&mut self, offset: usize, data: &[u8]) -> Result<(), DeviceError>;
    /// Volatile load of a byte.
    fn dma_load_u8(&mut self, offset: usize) -> Result<u8, DeviceError>;
    /// Volatile load of an aligned `u16`.
    fn dma_load_u16(&mut self, offset: usize) -> Result<u16, DeviceError>;
    /// Volatile load of an aligned `u32`.
    fn dma_load_u32(&mut self, offset: usize) -> Result<u32, DeviceError>;
    /// Volatile store of a byte.
    fn dma_store_u8(&mut self, offset: usize, value: u8) -> Result<(), DeviceError>;
    /// Volatile store of an aligned `u16`.
    fn dma_store_u16(&mut self, offset: usize, value: u16) -> Result<(), DeviceError>;
    /// Volatile store of an aligned `u32`.
    fn dma_store_u32(&mut self, offset: usize, value: u32) -> Result<(), DeviceError>;
    /// Volatile store of an aligned `u64`.
    fn dma_store_u64(&mut self, offset: usize, value: u64) -> Result<(), DeviceError>;
}

impl Transport for components::Device<'_> {
    fn read32(&mut self, offset: u64) -> Result<u32, DeviceError> {
        components::Device::read32(self, offset)
    }
    fn write32(&mut self, offset: u64, value: u32) -> Result<(), DeviceError> {
        components::Device::write32(self, offset, value)
    }
    fn dma_bus(&self) -> u64 {
        components::Device::dma_bus(self)
    }
    fn dma_pages(&self) -> u64 {
        components::Device::dma_pages(self)
    }
    fn dma_read(&mut self, offset: usize, out: &mut [u8]) -> Result<(), DeviceError> {
        components::Device::dma_read(self, offset, out)
    }
    fn dma_write(&mut self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        components::Device::dma_write(self, offset, data)
    }
    fn dma_load_u8(&mut self, offset: usize) -> Result<u8, DeviceError> {
        components::Device::dma_load_u8(self, offset)
    }
    fn dma_load_u16(&mut self, offset: usize) -> Result<u16, DeviceError> {
        components::Device::dma_load_u16(self, offset)
    }
    fn dma_load_u32(&mut self, offset: usize) -> Result<u32, DeviceError> {
        components::Device::dma_load_u32(self, offset)
    }
    fn dma_store_u8(&mut self, offset: usize, value: u8) -> Result<(), DeviceError> {
        components::Device::dma_store_u8(self, offset, value)
    }
    fn dma_store_u16(&mut self, offset: usize, value: u16) -> Result<(), DeviceError> {
        components::Device::dma_store_u16(self, offset, value)
    }
    fn dma_store_u32(&mut self, offset: usize, value: u32) -> Result<(), DeviceError> {
        components::Device::dma_store_u32(self, offset, value)
    }
    fn dma_store_u64(&mut self, offset: usize, value: u64) -> Result<(), DeviceError> {
        components::Device::dma_store_u64(self, offset, value)
    }
}

/// Why the device could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The grant or a register access failed.
    Transport(DeviceError),
    /// Not a virtio-mmio register block.
    BadMagic(u32),
    /// Not the modern (version 2) transport.
    UnsupportedVersion(u32),
    /// Device id 0: the transport has no device behind it.
    NoDevice,
    /// Not a block device.
    NotBlock(u32),
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    NoVersion1,
    /// The device is read-only.
    ReadOnly,
    /// The device did not keep `FEATURES_OK`.
    FeaturesRejected,
    /// Queue 0 is missing, too small, or already live.
    QueueUnavailable(u32),
    /// The DMA region is too small for the queue and one buffer.
    DmaTooSmall(u64),
    /// The device did not finish its reset.
    ResetTimeout,
    /// The capacity kept changing while it was read.
    ConfigUnstable,
}

impl InitError {
    /// A fixed description for the console.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Transport(error) => error.reason(),
            Self::BadMagic(_) => "not a virtio-mmio device",
            Self::UnsupportedVersion(_) => "not a virtio-mmio version 2 device",
            Self::NoDevice => "the virtio-mmio transport has no device",
            Self::NotBlock(_) => "not a block device",
            Self::NoVersion1 => "the device does not offer VIRTIO_F_VERSION_1",
            Self::ReadOnly => "the device is read-only",
            Self::FeaturesRejected => "the device refused the features",
            Self::QueueUnavailable(_) => "queue 0 is unavailable",
            Self::DmaTooSmall(_) => "the DMA region is too small",
            Self::ResetTimeout => "the device did not reset",
            Self::ConfigUnstable => "the device configuration kept changing",
        }
    }
}

impl From<DeviceError> for InitError {
    fn from(error: DeviceError) -> Self {
        Self::Transport(error)
    }
}

/// Why a request could not be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// Every request slot is in flight.
    Busy,
    /// The buffer page is not a data page of the DMA region.
    BadBuffer(u16),
    /// The block is past the device's capacity.
    BeyondCapacity(u64),
    /// The notify (or a DMA access) was refused.
    Transport(DeviceError),
}

impl From<DeviceError> for SubmitError {
    fn from(error: DeviceError) -> Self {
        Self::Transport(error)
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// `VIRTIO_BLK_S_IOERR`.
    IoError,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupported,
    /// Any other status byte (including one the device never wrote).
    BadStatus(u8),
}

/// Why the used ring could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollError {
    /// A DMA access failed.
    Transport(DeviceError),
    /// The device returned a descriptor that heads no request in flight, or
    /// moved its index further than the requests in flight.
    BadUsedEntry(u32),
}

impl From<DeviceError> for PollError {
    fn from(error: DeviceError) -> Self {
        Self::Transport(error)
    }
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The request slot [`VirtioBlk::submit`] returned.
    pub request: u16,
    /// Its outcome.
    pub result: Result<(), RequestError>,
}

/// The direction of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device → buffer (`VIRTIO_BLK_T_IN`).
    Read,
    /// Buffer → device (`VIRTIO_BLK_T_OUT`).
    Write,
}

/// The driver's state: one virtqueue with up to [`MAX_REQUESTS`] requests.
#[derive(Debug, Clone)]
pub struct VirtioBlk {
    queue_size: u16,
    requests: u16,
    next_avail: u16,
    last_used: u16,
    in_flight: [bool; MAX_REQUESTS],
    /// Requests were enqueued since the last notify.
    unnotified: bool,
    capacity_sectors: u64,
    dma_pages: u64,
    dma_bus: u64,
}

/// Largest power of two ≤ `value` (0 for 0).
fn power_of_two_floor(value: u32) -> u32 {
    if value == 0 {
        0
    } else {
        1 << (31 - value.leading_zeros())
    }
}

impl VirtioBlk {
    /// Resets the device and brings it up (§3.1.1, §4.2.3.1): reset and wait
    /// for status 0, ACKNOWLEDGE, DRIVER, negotiate features (exactly
    /// `VIRTIO_F_VERSION_1`), FEATURES_OK and check it stuck, set up queue 0,
    /// DRIVER_OK; then read the capacity. Resetting also cancels whatever a
    /// previous instance left in flight (the device finishes or drops it
    /// before the reset completes). On error the device is marked FAILED
    /// where possible.
    pub fn init(transport: &mut impl Transport) -> Result<Self, InitError> {
        let magic = transport.read32(register::MAGIC)?;
        if magic != MAGIC_VALUE {
            return Err(InitError::BadMagic(magic));
        }
        let version = transport.read32(register::VERSION)?;
        if version != 2 {
            return Err(InitError::UnsupportedVersion(version));
        }
        match transport.read32(register::DEVICE_ID)? {
            0 => return Err(InitError::NoDevice),
            BLOCK_DEVICE_ID => {}
            other => return Err(InitError::NotBlock(other)),
        }
        let dma_pages = transport.dma_pages();
        if dma_pages <= u64::from(FIRST_BUFFER_PAGE) {
            return Err(InitError::DmaTooSmall(dma_pages));
        }
        transport.write32(register::STATUS, 0)?;
        let mut reset = false;
        for _ in 0..1000 {
            if transport.read32(register::STATUS)? == 0 {
                reset = true;
                break;
            }
        }
        if !reset {
            return Err(InitError::ResetTimeout);
        }
        let result = Self::negotiate(transport, dma_pages);
        if result.is_err() {
            let _ = transport.write32(register::STATUS, status::FAILED);
        }
        result
    }

    fn negotiate(transport: &mut impl Transport, dma_pages: u64) -> Result<Self, InitError> {
        let mut device_status = status::ACKNOWLEDGE;
        transport.write32(register::STATUS, device_status)?;
        device_status |= status::DRIVER;
        transport.write32(register::STATUS, device_status)?;

        transport.write32(register::DEVICE_FEATURES_SEL, 0)?;
        let low = transport.read32(register::DEVICE_FEATURES)?;
        transport.write32(register::DEVICE_FEATURES_SEL, 1)?;
        let high = transport.read32(register::DEVICE_FEATURES)?;
        let offered = u64::from(high) << 32 | u64::from(low);
        if offered & FEATURE_VERSION_1 == 0 {
            return Err(InitError::NoVersion1);
        }
        if offered & FEATURE_BLK_RO != 0 {
            return Err(InitError::ReadOnly);
        }
        let accepted = FEATURE_VERSION_1;
        transport.write32(register::DRIVER_FEATURES_SEL, 0)?;
        transport.write32(register::DRIVER_FEATURES, accepted as u32)?;
        transport.write32(register::DRIVER_FEATURES_SEL, 1)?;
        transport.write32(register::DRIVER_FEATURES, (accepted >> 32) as u32)?;
        device_status |= status::FEATURES_OK;
        transport.write32(register::STATUS, device_status)?;
        if transport.read32(register::STATUS)? & status::FEATURES_OK == 0 {
            return Err(InitError::FeaturesRejected);
        }

        transport.write32(register::QUEUE_SEL, 0)?;
        if transport.read32(register::QUEUE_READY)? != 0 {
            return Err(InitError::QueueUnavailable(0));
        }
        let maximum = transport.read32(register::QUEUE_NUM_MAX)?;
        let queue_size = power_of_two_floor(maximum.min(u32::from(QUEUE_SIZE))) as u16;
        let requests = (queue_size / 3).min(MAX_REQUESTS as u16);
        if requests == 0 {
            return Err(InitError::QueueUnavailable(maximum));
        }
        let bus = transport.dma_bus();
        // The rings are zeroed before the device learns where they are (the
        // core zeroes the region at every start; a reset does not).
        transport.dma_write(DESCRIPTORS, &[0u8; 2 * BLOCK_BYTES])?;
        transport.dma_store_u16(AVAIL, AVAIL_F_NO_INTERRUPT)?;
        transport.write32(register::QUEUE_NUM, u32::from(queue_size))?;
        for (low, address) in [
            (register::QUEUE_DESC_LOW, bus + DESCRIPTORS as u64),
            (register::QUEUE_DRIVER_LOW, bus + AVAIL as u64),
            (register::QUEUE_DEVICE_LOW, bus + USED as u64),
        ] {
            transport.write32(low, address as u32)?;
            transport.write32(low + 4, (address >> 32) as u32)?;
        }
        transport.write32(register::QUEUE_READY, 1)?;
        device_status |= status::DRIVER_OK;
        transport.write32(register::STATUS, device_status)?;

        let capacity_sectors = Self::read_capacity(transport)?;
        Ok(Self {
            queue_size,
            requests,
            next_avail: 0,
            last_used: 0,
            in_flight: [false; MAX_REQUESTS],
            unnotified: false,
            capacity_sectors,
            dma_pages,
            dma_bus: bus,
        })
    }

    /// `capacity` from the configuration space, read as two words between
    /// two equal configuration generations (§4.2.2, §2.5.1).
    fn read_capacity(transport: &mut impl Transport) -> Result<u64, InitError> {
        for _ in 0..16 {
            let before = transport.read32(register::CONFIG_GENERATION)?;
            let low = transport.read32(register::CONFIG)?;
            let high = transport.read32(register::CONFIG + 4)?;
            if transport.read32(register::CONFIG_GENERATION)? == before {
                return Ok(u64::from(high) << 32 | u64::from(low));
            }
        }
        Err(InitError::ConfigUnstable)
    }

    /// The device's size in 4096-byte blocks.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_sectors / SECTORS_PER_BLOCK
    }

    /// The queue size negotiated.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Request slots (requests that may be in flight at once).
    pub fn request_slots(&self) -> usize {
        usize::from(self.requests)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|busy| **busy).count()
    }

    /// Request slots free.
    pub fn free_requests(&self) -> usize {
        self.request_slots() - self.in_flight()
    }

    /// Pages of the DMA region usable as data buffers:
    /// `FIRST_BUFFER_PAGE .. dma_pages`.
    pub fn buffer_pages(&self) -> core::ops::Range<u16> {
        FIRST_BUFFER_PAGE..self.dma_pages.min(u64::from(u16::MAX)) as u16
    }

    /// The bus address of `length` bytes at `offset` of the DMA region,
    /// checked to lie inside it.
    fn bus_address(&self, offset: usize, length: usize) -> Option<u64> {
        let end = (offset as u64).checked_add(length as u64)?;
        if end > self.dma_pages * BLOCK_BYTES as u64 {
            return None;
        }
        self.dma_bus.checked_add(offset as u64)
    }

    fn write_descriptor(
        transport: &mut impl Transport,
        index: usize,
        address: u64,
        length: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), DeviceError> {
        let at = DESCRIPTORS + index * 16;
        transport.dma_store_u64(at, address)?;
        transport.dma_store_u32(at + 8, length)?;
        transport.dma_store_u16(at + 12, flags)?;
        transport.dma_store_u16(at + 14, next)
    }

    /// Queues one request: `direction` of device block `block` (4096 bytes)
    /// to or from DMA page `buffer`, then notifies the device. Returns the
    /// request slot its [`Completion`] will name.
    pub fn submit(
        &mut self,
        transport: &mut impl Transport,
        direction: Direction,
        block: u64,
        buffer: u16,
    ) -> Result<u16, SubmitError> {
        let request = self.enqueue(transport, direction, block, buffer, 1)?;
        self.notify(transport)?;
        Ok(request)
    }

    /// Makes one request available without notifying the device: `direction`
    /// of `pages` blocks from device block `block` to or from the `pages`
    /// consecutive DMA pages from `buffer` (one descriptor: the region is
    /// contiguous on the bus). The device may not see it before
    /// [`Self::notify`]; several requests can share one notify, which is
    /// one syscall (the core checks every new chain at the notify).
    pub fn enqueue(
        &mut self,
        transport: &mut impl Transport,
        direction: Direction,
        block: u64,
        buffer: u16,
        pages: u16,
    ) -> Result<u16, SubmitError> {
        let last = buffer
            .checked_add(pages.max(1) - 1)
            .ok_or(SubmitError::BadBuffer(buffer))?;
        if pages == 0
            || !self.buffer_pages().contains(&buffer)
            || !self.buffer_pages().contains(&last)
        {
            return Err(SubmitError::BadBuffer(buffer));
        }
        let end = block.checked_add(u64::from(pages));
        if end.is_none_or(|end| end > self.capacity_blocks()) {
            return Err(SubmitError::BeyondCapacity(block));
        }
        let length = usize::from(pages) * BLOCK_BYTES;
        let request = self.in_flight[..usize::from(self.requests)]
            .iter()
            .position(|busy| !busy)
            .ok_or(SubmitError::Busy)?;
        let header = HEADERS + request * 16;
        let status_byte = STATUSES + request;
        let data = usize::from(buffer) * BLOCK_BYTES;
        let (Some(header_bus), Some(data_bus), Some(status_bus)) = (
            self.bus_address(header, 16),
            self.bus_address(data, length),
            self.bus_address(status_byte, 1),
        ) else {
            return Err(SubmitError::BadBuffer(buffer));
        };
        let kind = match direction {
            Direction::Read => REQUEST_IN,
            Direction::Write => REQUEST_OUT,
        };
        transport.dma_store_u32(header, kind)?;
        transport.dma_store_u32(header + 4, 0)?;
        transport.dma_store_u64(header + 8, block * SECTORS_PER_BLOCK)?;
        transport.dma_store_u8(status_byte, STATUS_UNWRITTEN)?;
        let head = request * 3;
        let data_flags = match direction {
            Direction::Read => DESC_F_NEXT | DESC_F_WRITE,
            Direction::Write => DESC_F_NEXT,
        };
        Self::write_descriptor(
            transport,
            head,
            header_bus,
            16,
            DESC_F_NEXT,
            (head + 1) as u16,
        )?;
        Self::write_descriptor(
            transport,
            head + 1,
            data_bus,
            length as u32,
            data_flags,
            (head + 2) as u16,
        )?;
        Self::write_descriptor(transport, head + 2, status_bus, 1, DESC_F_WRITE, 0)?;
        let slot = usize::from(self.next_avail % self.queue_size);
        transport.dma_store_u16(AVAIL + 4 + 2 * slot, head as u16)?;
        // The ring entry is visible before the index that publishes it (the
        // store is volatile and ordered by the transport's release fence).
        self.next_avail = self.next_avail.wrapping_add(1);
        transport.dma_store_u16(AVAIL + 2, self.next_avail)?;
        self.in_flight[request] = true;
        self.unnotified = true;
        Ok(request as u16)
    }

    /// Tells the device about the requests [`Self::enqueue`]d since the last
    /// notify (one `QueueNotify` write); nothing if there are none.
    pub fn notify(&mut self, transport: &mut impl Transport) -> Result<(), SubmitError> {
        if self.unnotified {
            transport.write32(register::QUEUE_NOTIFY, 0)?;
            self.unnotified = false;
        }
        Ok(())
    }

    /// Whether requests were enqueued but the device not yet notified.
    pub fn has_unnotified(&self) -> bool {
        self.unnotified
    }

    /// Whether the device has finished a request [`Self::poll`] has not
    /// returned yet (one load of the used ring's index).
    pub fn has_completion(&self, transport: &mut impl Transport) -> Result<bool, DeviceError> {
        Ok(transport.dma_load_u16(USED + 2)? != self.last_used)
    }

    /// The next finished request, if any (reads the used ring once).
    pub fn poll(
        &mut self,
        transport: &mut impl Transport,
    ) -> Result<Option<Completion>, PollError> {
        let used_index = transport.dma_load_u16(USED + 2)?;
        if used_index == self.last_used {
            return Ok(None);
        }
        let outstanding = used_index.wrapping_sub(self.last_used);
        if usize::from(outstanding) > self.in_flight() {
            return Err(PollError::BadUsedEntry(u32::from(used_index)));
        }
        let slot = usize::from(self.last_used % self.queue_size);
        let id = transport.dma_load_u32(USED + 4 + 8 * slot)?;
        let request = (id / 3) as usize;
        if id % 3 != 0 || request >= usize::from(self.requests) || !self.in_flight[request] {
            return Err(PollError::BadUsedEntry(id));
        }
        let status_byte = transport.dma_load_u8(STATUSES + request)?;
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight[request] = false;
        let result = match status_byte {
            STATUS_OK => Ok(()),
            STATUS_IOERR => Err(RequestError::IoError),
            STATUS_UNSUPP => Err(RequestError::Unsupported),
            other => Err(RequestError::BadStatus(other)),
        };
        Ok(Some(Completion {
            request: request as u16,
            result,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBlk;

    fn page(seed: u8) -> Vec<u8> {
        (0..BLOCK_BYTES)
            .map(|index| (index as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn init_follows_the_specification_and_negotiates_version_1_only() {
        let mut device = FakeBlk::new(100, 64);
        let driver = VirtioBlk::init(&mut device).unwrap();
        assert!(device.violations.is_empty(), "{:?}", device.violations);
        assert_eq!(
            device.status(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
        assert_eq!(
            device.driver_features(),
            FEATURE_VERSION_1,
            "bit 9 (flush) is offered but not taken"
        );
        assert_eq!(driver.capacity_blocks(), 100);
        assert_eq!(driver.queue_size(), 64);
        assert_eq!(driver.request_slots(), MAX_REQUESTS);
        assert_eq!(driver.buffer_pages(), 2..64);
        let statuses: Vec<u32> = device
            .writes
            .iter()
            .filter(|(offset, _)| *offset == register::STATUS)
            .map(|(_, value)| *value)
            .collect();
        assert_eq!(
            statuses,
            [0, 1, 3, 11, 15],
            "reset, ACK, DRIVER, FEATURES_OK, DRIVER_OK"
        );
        let ready = device
            .writes
            .iter()
            .position(|write| *write == (register::QUEUE_READY, 1))
            .unwrap();
        let desc = device
            .writes
            .iter()
            .position(|(offset, _)| *offset == register::QUEUE_DESC_HIGH)
            .unwrap();
        assert!(desc < ready, "queue addresses before QueueReady");
    }

    #[test]
    fn a_small_queue_limits_the_requests_in_flight() {
        let mut device = FakeBlk::new(10, 64);
        device.queue_num_max = 10;
        let driver = VirtioBlk::init(&mut device).unwrap();
        assert_eq!((driver.queue_size(), driver.request_slots()), (8, 2));
        device.queue_num_max = 2;
        assert_eq!(
            VirtioBlk::init(&mut device).err(),
            Some(InitError::QueueUnavailable(2))
        );
    }

    #[test]
    fn unusable_devices_are_refused_with_typed_errors() {
        type Spoil = fn(&mut FakeBlk);
        let cases: [(Spoil, InitError); 7] = [
            (|device| device.magic = 0, InitError::BadMagic(0)),
            (
                |device| device.version = 1,
                InitError::UnsupportedVersion(1),
            ),
            (|device| device.device_id = 0, InitError::NoDevice),
            (|device| device.device_id = 1, InitError::NotBlock(1)),
            (|device| device.features = 1 << 9, InitError::NoVersion1),
            (
                |device| device.features |= FEATURE_BLK_RO,
                InitError::ReadOnly,
            ),
            (
                |device| device.accept_features = false,
                InitError::FeaturesRejected,
            ),
        ];
        for (spoil, expected) in cases {
            let mut device = FakeBlk::new(10, 64);
            spoil(&mut device);
            assert_eq!(VirtioBlk::init(&mut device).err(), Some(expected));
        }
        let mut tiny = FakeBlk::new(10, 2);
        assert_eq!(
            VirtioBlk::init(&mut tiny).err(),
            Some(InitError::DmaTooSmall(2))
        );
        let mut refused = FakeBlk::new(10, 64);
        refused.accept_features = false;
        let _ = VirtioBlk::init(&mut refused);
        assert_eq!(
            refused.status(),
            status::FAILED,
            "a failed init marks the device FAILED"
        );
    }

    #[test]
    fn writes_and_reads_round_trip_through_the_device() {
        let mut device = FakeBlk::new(16, 64);
        let mut driver = VirtioBlk::init(&mut device).unwrap();
        let data = page(3);
        device.dma_write(5 * BLOCK_BYTES, &data).unwrap();
        let request = driver.submit(&mut device, Direction::Write, 9, 5).unwrap();
        assert_eq!(
            driver.poll(&mut device),
            Ok(Some(Completion {
                request,
                result: Ok(())
            }))
        );
        assert_eq!(device.disk[9], data);
        let request = driver.submit(&mut device, Direction::Read, 9, 63).unwrap();
        assert_eq!(
            driver.poll(&mut device).unwrap().map(|done| done.result),
            Some(Ok(()))
        );
        assert_eq!(driver.poll(&mut device), Ok(None));
        let mut back = vec![0; BLOCK_BYTES];
        device.dma_read(63 * BLOCK_BYTES, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(device.served, [(REQUEST_OUT, 9), (REQUEST_IN, 9)]);
        let _ = request;
        assert!(device.violations.is_empty(), "{:?}", device.violations);
    }

    #[test]
    fn many_requests_in_flight_complete_in_any_number_and_wrap_the_rings() {
        let mut device = FakeBlk::new(64, 64);
        device.defer = true;
        let mut driver = VirtioBlk::init(&mut device).unwrap();
        let mut completed = 0;
        for round in 0..20u64 {
            let mut submitted = Vec::new();
            for index in 0..MAX_REQUESTS as u64 {
                let block = (round * 3 + index) % 64;
                submitted.push(
                    driver
                        .submit(&mut device, Direction::Read, block, 2 + index as u16)
                        .unwrap(),
                );
            }
            assert_eq!(
                driver.submit(&mut device, Direction::Read, 0, 40),
                Err(SubmitError::Busy),
                "every request slot is taken"
            );
            assert_eq!(
                driver.poll(&mut device),
                Ok(None),
                "nothing before the device works"
            );
            device.process();
            let mut seen = Vec::new();
            while let Some(done) = driver.poll(&mut device).unwrap() {
                assert_eq!(done.result, Ok(()));
                seen.push(done.request);
                completed += 1;
            }
            seen.sort_unstable();
            submitted.sort_unstable();
            assert_eq!(seen, submitted);
            assert_eq!(driver.in_flight(), 0);
        }
        assert_eq!(completed, 20 * MAX_REQUESTS);
        assert!(device.violations.is_empty(), "{:?}", device.violations);
    }

    #[test]
    fn device_errors_are_reported_per_request() {
        let mut device = FakeBlk::new(8, 64);
        let mut driver = VirtioBlk::init(&mut device).unwrap();
        device.fail_reads.insert(3);
        device.fail_writes.insert(4);
        driver.submit(&mut device, Direction::Read, 3, 2).unwrap();
        assert_eq!(
            driver.poll(&mut device).unwrap().unwrap().result,
            Err(RequestError::IoError)
        );
        driver.submit(&mut device, Direction::Write, 4, 2).unwrap();
        assert_eq!(
            driver.poll(&mut device).unwrap().unwrap().result,
            Err(RequestError::IoError)
        );
        driver.submit(&mut device, Direction::Write, 5, 2).unwrap();
        assert_eq!(driver.poll(&mut device).unwrap().unwrap().result, Ok(()));
    }

    #[test]
    fn out_of_range_requests_never_reach_the_device() {
        let mut device = FakeBlk::new(8, 64);
        let mut driver = VirtioBlk::init(&mut device).unwrap();
        let writes = device.writes.len();
        for buffer in [0, 1, 64, u16::MAX] {
            assert_eq!(
                driver.submit(&mut device, Direction::Read, 0, buffer),
                Err(SubmitError::BadBuffer(buffer)),
                "queue pages and pages past the region are not buffers"
            );
        }
        assert_eq!(
            driver.submit(&mut device, Direction::Read, 8, 2),
            Err(SubmitError::BeyondCapacity(8))
        );
        assert_eq!(
            device.writes.len(),
            writes,
            "no notify for a refused request"
        );
        assert!(device.violations.is_empty());
    }

    #[test]
    fn a_device_that_lies_about_the_used_ring_is_caught() {
        let mut device = FakeBlk::new(8, 64);
        device.defer = true;
        let mut driver = VirtioBlk::init(&mut device).unwrap();
        driver.submit(&mut device, Direction::Read, 1, 2).unwrap();
        // A used entry naming a descriptor that heads no request.
        device.dma_store_u32(USED + 4, 7).unwrap();
        device.dma_store_u16(USED + 2, 1).unwrap();
        assert_eq!(driver.poll(&mut device), Err(PollError::BadUsedEntry(7)));
        // An index that runs ahead of what is in flight.
        device.dma_store_u16(USED + 2, 5).unwrap();
        assert_eq!(driver.poll(&mut device), Err(PollError::BadUsedEntry(5)));
    }
}

//! Device access for a server the core granted a device (today: the pager
//! and its swap device, a virtio-mmio block device; `docs/server-abi.md`,
//! "Devices").
//!
//! What the core grants, found with the `device_info` syscall:
//! * the device's register page, mapped **read-only** (and uncached) at the
//!   `DEVICE_REGISTERS` address: [`Device::read32`] is one volatile 32-bit
//!   load from it;
//! * register writes go through the `device_write` syscall, which the core
//!   checks (queue addresses and descriptors must point into the DMA region):
//!   [`Device::write32`];
//! * the DMA region: `DEVICE_DMA_PAGES` physically contiguous pages mapped
//!   read-write at the `DEVICE_DMA` address, at bus address `DEVICE_DMA_BUS`
//!   for the device. The device reads and writes it behind the compiler's
//!   back, so no Rust reference to it is ever handed out: it is reached only
//!   through bounds-checked copies ([`Device::dma_read`],
//!   [`Device::dma_write`]) and volatile loads and stores of aligned
//!   integers ([`Device::dma_load_u16`] and friends) for the queue
//!   structures.
//!
//! [`crate::Context::device`] queries the grant once per instance (four
//! syscalls) and binds it to the platform for the writes. On the host the
//! mock core (`testing::MockDevice`) backs the register page and the DMA
//! region with host memory, so the same code runs in host tests.

use core::sync::atomic::{fence, Ordering};

use ipc::server::syscall::{
    DEVICE_DMA, DEVICE_DMA_BUS, DEVICE_DMA_PAGES, DEVICE_REGISTERS, EFAULT, EINVAL, ENODEV,
};

use crate::platform::Platform;

/// Bytes of the device's registers: one virtio-mmio transport.
pub const REGISTER_WINDOW: u64 = 0x200;
/// Bytes of one DMA page.
pub const DMA_PAGE_SIZE: usize = 4096;
/// The most DMA pages a grant may have (anything larger is refused as
/// [`DeviceError::BadGrant`]: the grant region is 16 MiB).
pub const MAX_DMA_PAGES: u64 = 4096;

/// Why a device operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// `-ENODEV`: this server has no device.
    NoDevice,
    /// `-EINVAL`: the core refused the register offset (not writable, or
    /// misaligned) or the item.
    Invalid,
    /// `-EFAULT`: the core refused an address outside the DMA region (a queue
    /// address, or a descriptor made available before a notify).
    Fault,
    /// Another negative result from the core.
    Refused(i64),
    /// `device_info` answered values that cannot be a grant (a null or
    /// unaligned address, no DMA pages, or too many).
    BadGrant,
    /// An offset outside the register page or the DMA region, or a
    /// misaligned one; checked here, before anything is touched.
    OutOfRange,
}

impl DeviceError {
    /// The error for a negative syscall result.
    pub fn from_result(result: i64) -> Self {
        match result {
            ENODEV => Self::NoDevice,
            EINVAL => Self::Invalid,
            EFAULT => Self::Fault,
            other => Self::Refused(other),
        }
    }

    /// A fixed description for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoDevice => "no device granted",
            Self::Invalid => "the core refused the register or item",
            Self::Fault => "the core refused an address outside the DMA region",
            Self::Refused(_) => "the core refused the device operation",
            Self::BadGrant => "the device grant is unusable",
            Self::OutOfRange => "offset outside the device window",
        }
    }
}

/// What the core granted: where the registers and the DMA region are.
/// Plain data; [`crate::Context::device`] binds it to the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceGrant {
    registers: u64,
    dma: u64,
    dma_bus: u64,
    dma_pages: u64,
}

fn info(platform: &mut dyn Platform, item: u64) -> Result<u64, DeviceError> {
    let result = platform.device_info(item);
    if result < 0 {
        Err(DeviceError::from_result(result))
    } else {
        Ok(result as u64)
    }
}

impl DeviceGrant {
    /// Asks the core (`device_info`, four items) and checks the answer.
    pub fn query(platform: &mut dyn Platform) -> Result<Self, DeviceError> {
        let registers = info(platform, DEVICE_REGISTERS)?;
        let dma = info(platform, DEVICE_DMA)?;
        let dma_bus = info(platform, DEVICE_DMA_BUS)?;
        let dma_pages = info(platform, DEVICE_DMA_PAGES)?;
        Self::new(registers, dma, dma_bus, dma_pages)
    }

    /// A grant from its four values, checked: the register address non-null
    /// and aligned to a virtio-mmio transport ([`REGISTER_WINDOW`] bytes; the
    /// core maps the page holding it), the DMA address non-null and
    /// page-aligned, the bus address page-aligned, 1 to [`MAX_DMA_PAGES`]
    /// pages, no range wrapping.
    pub fn new(
        registers: u64,
        dma: u64,
        dma_bus: u64,
        dma_pages: u64,
    ) -> Result<Self, DeviceError> {
        let page = DMA_PAGE_SIZE as u64;
        let aligned = |address: u64| address != 0 && address.is_multiple_of(page);
        if registers == 0
            || !registers.is_multiple_of(REGISTER_WINDOW)
            || !aligned(dma)
            || !dma_bus.is_multiple_of(page)
            || !(1..=MAX_DMA_PAGES).contains(&dma_pages)
            || registers.checked_add(REGISTER_WINDOW).is_none()
            || dma.checked_add(dma_pages * page).is_none()
            || dma_bus.checked_add(dma_pages * page).is_none()
        {
            return Err(DeviceError::BadGrant);
        }
        Ok(Self {
            registers,
            dma,
            dma_bus,
            dma_pages,
        })
    }

    /// Virtual address of the register page.
    pub fn registers_address(&self) -> u64 {
        self.registers
    }

    /// Virtual address of the DMA region.
    pub fn dma_address(&self) -> u64 {
        self.dma
    }

    /// Bus address of the DMA region (what the device is given).
    pub fn dma_bus(&self) -> u64 {
        self.dma_bus
    }

    /// Pages in the DMA region.
    pub fn dma_pages(&self) -> u64 {
        self.dma_pages
    }

    /// Bytes in the DMA region.
    pub fn dma_len(&self) -> usize {
        (self.dma_pages as usize) * DMA_PAGE_SIZE
    }

    /// The DMA address of `[offset, offset + length)`, if inside the region
    /// and aligned to `align`.
    fn dma_range(&self, offset: usize, length: usize, align: usize) -> Result<u64, DeviceError> {
        let end = offset.checked_add(length).ok_or(DeviceError::OutOfRange)?;
        if end > self.dma_len() || !offset.is_multiple_of(align) {
            return Err(DeviceError::OutOfRange);
        }
        Ok(self.dma + offset as u64)
    }
}

/// A granted device bound to the platform that makes its syscalls; from
/// [`crate::Context::device`].
pub struct Device<'a> {
    grant: DeviceGrant,
    platform: &'a mut dyn Platform,
}

impl core::fmt::Debug for Device<'_> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter
            .debug_struct("Device")
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

macro_rules! volatile_access {
    ($load:ident, $store:ident, $type:ty) => {
        /// Volatile load of an aligned integer at `offset` of the DMA region
        /// (for queue structures the device writes).
        pub fn $load(&mut self, offset: usize) -> Result<$type, DeviceError> {
            let size = core::mem::size_of::<$type>();
            let address = self.grant.dma_range(offset, size, size)?;
            // SAFETY: `dma_range` checked that the value lies inside the DMA
            // region and is aligned to its size; the core maps the region
            // read-write for this instance's whole life (on the host, the
            // mock's leaked memory). No Rust reference to the region exists
            // (only raw accesses like this one), and the integer type has no
            // invalid bit patterns, so a volatile load of whatever the device
            // wrote is defined.
            let value = unsafe { core::ptr::read_volatile(address as *const $type) };
            fence(Ordering::Acquire);
            Ok(<$type>::from_le(value))
        }

        /// Volatile store of an aligned integer at `offset` of the DMA
        /// region, ordered after every earlier access.
        pub fn $store(&mut self, offset: usize, value: $type) -> Result<(), DeviceError> {
            let size = core::mem::size_of::<$type>();
            let address = self.grant.dma_range(offset, size, size)?;
            fence(Ordering::Release);
            // SAFETY: as for the load: inside the region, aligned, mapped
            // writable for the instance's life, and no Rust reference to the
            // region exists that this store could invalidate.
            unsafe { core::ptr::write_volatile(address as *mut $type, value.to_le()) };
            Ok(())
        }
    };
}

impl<'a> Device<'a> {
    /// `grant` bound to `platform`.
    pub fn new(grant: DeviceGrant, platform: &'a mut dyn Platform) -> Self {
        Self { grant, platform }
    }

    /// The grant.
    pub fn grant(&self) -> DeviceGrant {
        self.grant
    }

    /// Bus address of the DMA region.
    pub fn dma_bus(&self) -> u64 {
        self.grant.dma_bus
    }

    /// Pages in the DMA region.
    pub fn dma_pages(&self) -> u64 {
        self.grant.dma_pages
    }

    /// Bytes in the DMA region.
    pub fn dma_len(&self) -> usize {
        self.grant.dma_len()
    }

    /// Reads the 32-bit register at `offset` (a multiple of 4 inside the
    /// register page): one volatile load from the read-only mapping.
    pub fn read32(&mut self, offset: u64) -> Result<u32, DeviceError> {
        if !offset.is_multiple_of(4) || offset + 4 > REGISTER_WINDOW {
            return Err(DeviceError::OutOfRange);
        }
        let address = self.grant.registers + offset;
        fence(Ordering::SeqCst);
        // SAFETY: `offset` is 4-aligned and inside the one-page register
        // window the core maps readable (uncached) for this instance's whole
        // life (on the host, the mock's leaked memory). A volatile load is
        // exactly one device register read; no reference is created and any
        // bit pattern is a valid `u32`.
        let value = unsafe { core::ptr::read_volatile(address as *const u32) };
        fence(Ordering::SeqCst);
        Ok(u32::from_le(value))
    }

    /// Writes `value` to the 32-bit register at `offset` through the
    /// `device_write` syscall (the mapping is read-only; the core checks the
    /// write). Every earlier DMA store is visible to the device first.
    pub fn write32(&mut self, offset: u64, value: u32) -> Result<(), DeviceError> {
        if !offset.is_multiple_of(4) || offset + 4 > REGISTER_WINDOW {
            return Err(DeviceError::OutOfRange);
        }
        fence(Ordering::SeqCst);
        let result = self.platform.device_write(offset, value);
        fence(Ordering::SeqCst);
        if result < 0 {
            Err(DeviceError::from_result(result))
        } else {
            Ok(())
        }
    }

    /// Copies `out.len()` bytes from `offset` of the DMA region. Only for
    /// memory the device is not writing now (a buffer whose request has
    /// completed).
    pub fn dma_read(&mut self, offset: usize, out: &mut [u8]) -> Result<(), DeviceError> {
        let address = self.grant.dma_range(offset, out.len(), 1)?;
        fence(Ordering::Acquire);
        // SAFETY: the source range lies inside the DMA region (checked), which
        // is mapped readable for the instance's whole life and never
        // overlaps `out` (a Rust object outside the grant region). No
        // reference to the region is created; `u8` has no invalid values.
        unsafe {
            core::ptr::copy_nonoverlapping(address as *const u8, out.as_mut_ptr(), out.len())
        };
        Ok(())
    }

    /// Copies `data` to `offset` of the DMA region. Only for memory the
    /// device is not reading now (a buffer not yet handed to it).
    pub fn dma_write(&mut self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        let address = self.grant.dma_range(offset, data.len(), 1)?;
        // SAFETY: the destination lies inside the DMA region (checked), mapped
        // writable for the instance's whole life, disjoint from `data`; no
        // Rust reference to the region exists that this write could alias.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), address as *mut u8, data.len()) };
        fence(Ordering::Release);
        Ok(())
    }

    volatile_access!(dma_load_u8, dma_store_u8, u8);
    volatile_access!(dma_load_u16, dma_store_u16, u16);
    volatile_access!(dma_load_u32, dma_store_u32, u32);
    volatile_access!(dma_load_u64, dma_store_u64, u64);
}

#[cfg(test)]
mod tests {
    use std::boxed::Box;
    use std::vec::Vec;

    use ipc::ring::RingMemory;

    use super::*;
    use crate::testing::{MockDevice, MockPlatform};

    fn platform(device: Option<MockDevice>) -> MockPlatform {
        let to_server: &'static RingMemory = Box::leak(Box::default());
        let to_core: &'static RingMemory = Box::leak(Box::default());
        let mut platform = MockPlatform::new(to_server, to_core);
        platform.device = device;
        platform
    }

    #[test]
    fn without_a_device_the_grant_is_no_device() {
        let mut platform = platform(None);
        assert_eq!(
            DeviceGrant::query(&mut platform),
            Err(DeviceError::NoDevice)
        );
        assert_eq!(platform.device_write(0x70, 1), ENODEV);
    }

    #[test]
    fn registers_are_read_at_the_mapping_and_written_through_the_core() {
        let mut platform = platform(Some(MockDevice::new(4, 0x8000_0000)));
        let grant = DeviceGrant::query(&mut platform).unwrap();
        assert_eq!(
            (grant.dma_bus(), grant.dma_pages(), grant.dma_len()),
            (0x8000_0000, 4, 4 * 4096)
        );
        platform
            .device
            .as_ref()
            .unwrap()
            .set_register(0x100, 0xfeed_beef);
        let mut device = Device::new(grant, &mut platform);
        assert_eq!(device.read32(0x100), Ok(0xfeed_beef));
        assert_eq!(
            device.read32(0x102),
            Err(DeviceError::OutOfRange),
            "misaligned"
        );
        assert_eq!(
            device.read32(4096),
            Err(DeviceError::OutOfRange),
            "past the page"
        );
        assert_eq!(device.write32(0x70, 3), Ok(()));
        assert_eq!(
            device.read32(0x70),
            Ok(3),
            "the mock stores written registers"
        );
        assert_eq!(device.write32(0x71, 3), Err(DeviceError::OutOfRange));
        platform.device.as_mut().unwrap().write_result = EFAULT;
        let mut device = Device::new(grant, &mut platform);
        assert_eq!(device.write32(0x50, 0), Err(DeviceError::Fault));
        let writes = &platform.device.as_ref().unwrap().writes;
        assert_eq!(
            writes,
            &[(0x70, 3), (0x50, 0)],
            "refused offsets never reach the core"
        );
    }

    #[test]
    fn dma_accesses_are_bounds_checked_and_round_trip() {
        let mut platform = platform(Some(MockDevice::new(2, 0)));
        let grant = DeviceGrant::query(&mut platform).unwrap();
        let mut device = Device::new(grant, &mut platform);
        device.dma_write(4090, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut back = [0u8; 8];
        device.dma_read(4090, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
        device.dma_store_u16(2, 0xabcd).unwrap();
        device.dma_store_u64(8, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(device.dma_load_u16(2), Ok(0xabcd));
        assert_eq!(device.dma_load_u32(8), Ok(0x0506_0708), "little-endian");
        assert_eq!(device.dma_load_u8(15), Ok(0x01));
        assert_eq!(
            device.dma_load_u32(2),
            Err(DeviceError::OutOfRange),
            "misaligned"
        );
        assert_eq!(
            device.dma_write(8190, &[0; 3]),
            Err(DeviceError::OutOfRange)
        );
        assert_eq!(
            device.dma_read(usize::MAX, &mut back),
            Err(DeviceError::OutOfRange)
        );
        assert_eq!(device.dma_store_u64(8192, 0), Err(DeviceError::OutOfRange));
        let seen: Vec<u8> = platform.device.as_ref().unwrap().dma_bytes(2, 2);
        assert_eq!(seen, [0xcd, 0xab], "the device sees what the server stored");
    }

    #[test]
    fn unusable_grants_are_refused() {
        assert_eq!(DeviceGrant::new(0, 4096, 0, 1), Err(DeviceError::BadGrant));
        assert_eq!(
            DeviceGrant::new(4096, 4097, 0, 1),
            Err(DeviceError::BadGrant)
        );
        assert_eq!(
            DeviceGrant::new(4096, 8192, 12, 1),
            Err(DeviceError::BadGrant)
        );
        assert_eq!(
            DeviceGrant::new(4096, 8192, 0, 0),
            Err(DeviceError::BadGrant)
        );
        assert_eq!(
            DeviceGrant::new(4096, 8192, 0, MAX_DMA_PAGES + 1),
            Err(DeviceError::BadGrant)
        );
        assert_eq!(
            DeviceGrant::new(4096, u64::MAX - 4095, 0, 2),
            Err(DeviceError::BadGrant)
        );
        assert!(DeviceGrant::new(4096, 8192, 0, 64).is_ok());
        assert_eq!(DeviceError::from_result(-5), DeviceError::Refused(-5));
    }
}

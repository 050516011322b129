//! The virtio-mmio register windows of `-M microvm` (QEMU's
//! `hw/i386/microvm.c`: 512-byte transports from `0xfeb0_0000`, 24 of them
//! with the second I/O APIC (the default), 8 without; QEMU 7.2 puts the first
//! `-device` on the highest one, transport 23 at `0xfeb0_2e00`), as the
//! core reaches them: finding the swap device at boot, and the register
//! writes it makes on the pager's behalf after `hypervisor_core::dma_guard`
//! allowed them. The core never drives the device itself.

/// First transport.
pub const TRANSPORTS_BASE: u64 = 0xfeb0_0000;
/// Bytes per transport.
pub const TRANSPORT_SIZE: u64 = 0x200;
/// Transports `-M microvm` provides (with `ioapic2`, the default).
pub const TRANSPORTS: u64 = 24;

const MAGIC: u32 = 0x7472_6976; // "virt"
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_STATUS: u64 = 0x070;
const DEVICE_ID_BLOCK: u32 = 2;

fn in_windows(address: u64) -> bool {
    (TRANSPORTS_BASE..TRANSPORTS_BASE + TRANSPORTS * TRANSPORT_SIZE).contains(&address) && address.is_multiple_of(4)
}

/// Reads the 32-bit register at `address` (inside the transport windows).
pub fn read32(address: u64) -> u32 {
    assert!(in_windows(address), "virtio register outside the transports");
    // SAFETY: the transports are mapped uncached in the core's page tables
    // (`memory::install_core_page_tables`), the address is aligned and
    // inside them; a read of an absent transport returns 0 without effect.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

/// Writes the 32-bit register at `address` (inside the transport windows).
pub fn write32(address: u64, value: u32) {
    assert!(in_windows(address), "virtio register outside the transports");
    // SAFETY: as for `read32`; callers write only registers the guard allowed.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}

/// The base of the first virtio-mmio version-2 block device, if any.
pub fn find_block_device() -> Option<u64> {
    (0..TRANSPORTS).map(|index| TRANSPORTS_BASE + index * TRANSPORT_SIZE).find(|&base| {
        read32(base + REG_MAGIC) == MAGIC && read32(base + REG_VERSION) == 2 && read32(base + REG_DEVICE_ID) == DEVICE_ID_BLOCK
    })
}

/// The version of the transport at `base` if it holds a block device of
/// another version (a legacy device the pager cannot drive), for the log.
pub fn legacy_block_device() -> Option<u32> {
    (0..TRANSPORTS).map(|index| TRANSPORTS_BASE + index * TRANSPORT_SIZE).find_map(|base| {
        let version = read32(base + REG_VERSION);
        (read32(base + REG_MAGIC) == MAGIC && version != 2 && read32(base + REG_DEVICE_ID) == DEVICE_ID_BLOCK).then_some(version)
    })
}

/// Resets the device at `base` (status 0): it stops using every queue.
pub fn reset(base: u64) {
    write32(base + REG_STATUS, 0);
}

/// Largest queue the core lets the pager configure (QEMU's virtio-blk
/// offers 256).
pub const QUEUE_NUM_MAX: u16 = 256;

/// The pager's DMA region as the guard reads it: identity-mapped frames the
/// core allocated and owns.
pub struct IdentityDma {
    /// The region.
    pub region: hypervisor_core::dma_guard::DmaRegion,
}

impl IdentityDma {
    fn read<const N: usize>(&self, address: u64) -> Option<[u8; N]> {
        if !self.region.contains(address, N as u64) || !address.is_multiple_of(N as u64) {
            return None;
        }
        let frame = hypervisor_core::addr::HostPhysAddr::new_truncate(address & !0xfff);
        let mut bytes = [0u8; N];
        super::memory::OwnedFrames.read(frame, (address & 0xfff) as usize, &mut bytes);
        Some(bytes)
    }
}

impl hypervisor_core::dma_guard::DmaMemory for IdentityDma {
    fn read_u16(&self, address: u64) -> Option<u16> {
        self.read::<2>(address).map(u16::from_le_bytes)
    }
    fn read_u32(&self, address: u64) -> Option<u32> {
        self.read::<4>(address).map(u32::from_le_bytes)
    }
    fn read_u64(&self, address: u64) -> Option<u64> {
        self.read::<8>(address).map(u64::from_le_bytes)
    }
}

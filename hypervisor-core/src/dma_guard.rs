//! The DMA guard: which register writes of the pager's user-level virtio
//! driver may reach the device.
//!
//! The pager drives the swap device, a virtio-mmio (version 2) block device,
//! from ring 3. Its mapping of the device registers is read-only; every
//! register write is a `device_write(offset, value)` syscall, and the core
//! asks [`VirtioGuard::check_write`] before it performs it. The point is DMA:
//! the device reads and writes whatever bus addresses the driver names, and
//! on this machine a bus address is a physical address of the whole machine
//! (the core, every domain). The pager was granted one DMA region, physically
//! contiguous ([`DmaRegion`]); the guard lets a write through only if, after
//! it, everything the device has been told to touch lies in that region:
//!
//! * the three rings of a queue (descriptor table, driver/avail ring,
//!   device/used ring), checked when the queue is made ready (`QueueReady`
//!   = 1), after which its address registers and size are frozen until a
//!   device reset (`Status` = 0);
//! * every buffer a descriptor names, checked at each `QueueNotify`: the
//!   guard reads the avail ring's `idx`, walks every entry made available
//!   since the last notify it allowed, follows each descriptor chain, and
//!   lets the notify through only if every buffer is inside the region.
//!
//! Besides, it keeps its model of the device exact: it refuses the feature
//! bits whose rings it cannot check (`VIRTIO_F_INDIRECT_DESC`,
//! `VIRTIO_F_RING_PACKED`, `VIRTIO_F_NOTIFICATION_DATA`), selector values a
//! device might fold (`DriverFeaturesSel` > 1, `QueueSel` beyond
//! [`QUEUES`]), status values with bits above the 8 the device keeps, and,
//! after a reset, every per-queue or feature register until its selector has
//! been written again (a device need not reset its selectors or the queue
//! registers it latches, so the guard assumes nothing about them).
//!
//! # Contract with the core
//! * `Ok(())` means the core must perform exactly that write: the guard has
//!   already updated its state as if it happened. `Err` means the core must
//!   not write, and returns [`Refusal::errno`] (`-EINVAL` or `-EFAULT`); a
//!   refused write leaves the guard unchanged.
//! * A guard starts in the state of a freshly reset device. The core creates
//!   one (or calls [`VirtioGuard::reset`]) only together with a device reset
//!   it performs itself, before each pager generation gets the device.
//! * [`DmaMemory`] reads the region as the device would, at bus addresses;
//!   the guard only asks for naturally aligned addresses it has checked are
//!   inside the region, and reads each field once.
//!
//! # Contract with the pager (what an honest driver must do)
//! Write `QueueSel` / `DriverFeaturesSel` before the registers they select
//! after every reset; write `QueueNum` and all six address halves before
//! `QueueReady` = 1; never negotiate the refused features; keep every
//! device-writable buffer off the descriptor tables and avail rings and the
//! used rings off both; no zero-length buffers; no more than `num` entries
//! and `num` descriptors in all between two notifies; and notify after every
//! batch it makes available, ignoring the device's suppression hints
//! (`VRING_USED_F_NO_NOTIFY`, `avail_event`): an entry the device takes
//! without a checked notify was never checked.
//!
//! # What this does not stop (read this before calling it isolation)
//! The rings and descriptors live in memory the pager can write, so a
//! malicious pager can change a descriptor, or bump the avail `idx` over
//! entries the core never saw, between the core's check and the device's
//! read: a time-of-check/time-of-use race. Nor does a device have to wait
//! for a notify (it may poll a ready queue, or still be working through an
//! earlier batch when new entries appear), so such a pager need not even
//! win a race. A buffer still in flight when its rings are reconfigured
//! after a reset is not re-checked against the new rings either. Closing
//! this needs an IOMMU in front of the device (virtio-iommu with
//! `VIRTIO_F_ACCESS_PLATFORM`) or rings and descriptor tables written by the
//! core and read-only to the pager. Until then the guard stops every honest
//! mistake of a driver that keeps the contract above, and any pager that
//! does not race itself (nor the device); it is not a boundary against a
//! pager that does.

use crate::addr::PAGE_SIZE;
use ipc::server::syscall::{EFAULT, EINVAL};

/// Virtqueues the guard tracks (0 and 1); `QueueSel` beyond is refused.
pub const QUEUES: usize = 2;

/// The largest split virtqueue the spec allows (§2.7: queue size ≤ 32768).
pub const MAX_QUEUE_SIZE: u16 = 32_768;

/// virtio-mmio version 2 register offsets the pager may write (virtio 1.x
/// §4.2.2). Every other offset is refused.
pub mod register {
    /// `DeviceFeaturesSel`: which 32 feature bits `DeviceFeatures` shows.
    pub const DEVICE_FEATURES_SEL: u32 = 0x014;
    /// `DriverFeatures`: the accepted feature bits of the selected word.
    pub const DRIVER_FEATURES: u32 = 0x020;
    /// `DriverFeaturesSel`: which word `DriverFeatures` writes (0 or 1).
    pub const DRIVER_FEATURES_SEL: u32 = 0x024;
    /// `QueueSel`: the queue the per-queue registers refer to.
    pub const QUEUE_SEL: u32 = 0x030;
    /// `QueueNum`: the selected queue's size.
    pub const QUEUE_NUM: u32 = 0x038;
    /// `QueueReady`: 1 lets the device use the selected queue.
    pub const QUEUE_READY: u32 = 0x044;
    /// `QueueNotify`: the index of a queue with new buffers.
    pub const QUEUE_NOTIFY: u32 = 0x050;
    /// `InterruptACK`: interrupt causes handled.
    pub const INTERRUPT_ACK: u32 = 0x064;
    /// `Status`: device status; 0 resets the device.
    pub const STATUS: u32 = 0x070;
    /// `QueueDescLow`: descriptor table address, bits 0..32.
    pub const QUEUE_DESC_LOW: u32 = 0x080;
    /// `QueueDescHigh`: descriptor table address, bits 32..64.
    pub const QUEUE_DESC_HIGH: u32 = 0x084;
    /// `QueueDriverLow`: driver (avail) ring address, bits 0..32.
    pub const QUEUE_DRIVER_LOW: u32 = 0x090;
    /// `QueueDriverHigh`: driver (avail) ring address, bits 32..64.
    pub const QUEUE_DRIVER_HIGH: u32 = 0x094;
    /// `QueueDeviceLow`: device (used) ring address, bits 0..32.
    pub const QUEUE_DEVICE_LOW: u32 = 0x0a0;
    /// `QueueDeviceHigh`: device (used) ring address, bits 32..64.
    pub const QUEUE_DEVICE_HIGH: u32 = 0x0a4;
}

/// Feature bits (virtio 1.x §6) the guard refuses in `DriverFeatures`.
pub mod feature {
    /// `VIRTIO_F_INDIRECT_DESC` (28): descriptor tables the guard would have
    /// to follow too.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `VIRTIO_F_RING_PACKED` (34): a ring layout the guard does not walk.
    pub const RING_PACKED: u64 = 1 << 34;
    /// `VIRTIO_F_NOTIFICATION_DATA` (38): notify values with more than the
    /// queue index.
    pub const NOTIFICATION_DATA: u64 = 1 << 38;
    /// All of them.
    pub const REFUSED: u64 = INDIRECT_DESC | RING_PACKED | NOTIFICATION_DATA;
}

/// Split-ring descriptor flags (virtio 1.x §2.7.5).
pub mod descriptor {
    /// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
    pub const NEXT: u16 = 1;
    /// `VIRTQ_DESC_F_WRITE`: the device writes the buffer.
    pub const WRITE: u16 = 2;
    /// `VIRTQ_DESC_F_INDIRECT`: the buffer is a descriptor table (refused).
    pub const INDIRECT: u16 = 4;
    /// Bytes per descriptor: `addr: u64, len: u32, flags: u16, next: u16`.
    pub const SIZE: u64 = 16;
}

/// The pager's DMA region: `pages` pages from bus address `base`, physically
/// contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRegion {
    /// Bus address of the first byte.
    pub base: u64,
    /// Size in pages of [`PAGE_SIZE`] bytes.
    pub pages: u64,
}

impl DmaRegion {
    /// Whether the `len` bytes from `addr` all lie in the region. False for
    /// `len == 0`, for a range that wraps past `u64::MAX`, and for a region
    /// whose own end does not fit in a `u64` (such a region holds nothing).
    pub const fn contains(&self, addr: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let Some(size) = self.pages.checked_mul(PAGE_SIZE) else {
            return false;
        };
        let Some(region_end) = self.base.checked_add(size) else {
            return false;
        };
        addr >= self.base && end <= region_end
    }
}

/// Reads of the DMA region as the device sees it, little-endian, at bus
/// addresses. The core implements it over its identity map of the region,
/// the tests over a `Vec`. `None`: the address is not readable (the guard
/// then refuses with [`Refusal::RingOutside`]).
pub trait DmaMemory {
    /// The `u16` at `addr` (2-aligned when the guard asks).
    fn read_u16(&self, addr: u64) -> Option<u16>;
    /// The `u32` at `addr` (4-aligned when the guard asks).
    fn read_u32(&self, addr: u64) -> Option<u32>;
    /// The `u64` at `addr` (8-aligned when the guard asks).
    fn read_u64(&self, addr: u64) -> Option<u64>;
}

/// Why a register write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The offset is not a multiple of 4.
    Misaligned,
    /// The offset is not a register the pager may write: read-only,
    /// reserved, legacy, configuration space, or past the registers.
    NotWritable,
    /// A value out of range for its register (`QueueSel` beyond [`QUEUES`],
    /// `QueueNum` not a power of two in `1..=max`, `QueueReady` not 0/1,
    /// `DriverFeaturesSel` > 1, `Status` > 0xff, `QueueNotify` not a queue
    /// index).
    BadValue,
    /// `DriverFeatures` accepts a feature in [`feature::REFUSED`].
    RefusedFeature,
    /// A per-queue or feature register before its selector was written
    /// (since the last reset).
    NoSelection,
    /// A write that would change a ready queue (`QueueNum`, an address
    /// register, `QueueReady` = 0): only a reset unreadies a queue.
    QueueLive,
    /// `QueueReady` = 1 before `QueueNum` and all six address halves were
    /// written.
    QueueIncomplete,
    /// `QueueNotify` for a queue that is not ready.
    QueueNotReady,
    /// A ring address not aligned as the spec requires (descriptor table
    /// 16, avail ring 2, used ring 4).
    RingMisaligned,
    /// A ring not entirely inside the DMA region, or unreadable.
    RingOutside,
    /// A used ring (written by the device) overlapping a descriptor table or
    /// avail ring (read by the device) of a ready queue.
    RingOverlap,
    /// The avail `idx` moved more than the queue size past the last
    /// checked index (or backwards).
    TooManyEntries,
    /// A head or `next` index not below the queue size.
    BadIndex,
    /// A descriptor with `VIRTQ_DESC_F_INDIRECT`.
    Indirect,
    /// A descriptor chain longer than the queue size: a loop.
    ChainLoop,
    /// The chains of one notify use more descriptors than the queue has.
    TooManyDescriptors,
    /// A descriptor with `len == 0`.
    EmptyBuffer,
    /// A buffer not entirely inside the DMA region.
    BufferOutside,
    /// A device-writable buffer overlapping a descriptor table or avail
    /// ring of a ready queue.
    BufferOverlapsRing,
}

impl Refusal {
    /// The syscall result: `-EFAULT` for an address outside the DMA region,
    /// `-EINVAL` for everything else.
    pub const fn errno(self) -> i64 {
        match self {
            Self::RingOutside | Self::BufferOutside => EFAULT,
            _ => EINVAL,
        }
    }
}

/// A ready queue, as the guard checked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRings {
    /// Queue size (a power of two).
    pub num: u16,
    /// Bus address of the descriptor table.
    pub desc: u64,
    /// Bus address of the driver (avail) ring.
    pub driver: u64,
    /// Bus address of the device (used) ring.
    pub device: u64,
    /// The avail index up to which every entry has been checked (the
    /// device's next entry, if it only reads at notifies).
    pub checked: u16,
}

impl QueueRings {
    const fn desc_bytes(&self) -> u64 {
        descriptor::SIZE * self.num as u64
    }

    const fn driver_bytes(&self) -> u64 {
        6 + 2 * self.num as u64
    }

    const fn device_bytes(&self) -> u64 {
        6 + 8 * self.num as u64
    }
}

/// What was written to one queue's registers since the last reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct QueueRegisters {
    num: Option<u16>,
    /// `[low, high]` halves.
    desc: [Option<u32>; 2],
    driver: [Option<u32>; 2],
    device: [Option<u32>; 2],
    /// Set by `QueueReady` = 1, with the last checked avail index.
    ready: Option<QueueRings>,
}

/// The core's model of the pager's virtio-mmio device, deciding each
/// register write (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioGuard {
    region: DmaRegion,
    queue_num_max: [u16; QUEUES],
    queue_sel: Option<usize>,
    driver_features_sel: Option<u32>,
    queues: [QueueRegisters; QUEUES],
}

impl VirtioGuard {
    /// A guard for a freshly reset device whose DMA may only reach
    /// `region`. `queue_num_max[q]` is queue `q`'s `QueueNumMax` as the
    /// device reported it (0: no such queue); values above
    /// [`MAX_QUEUE_SIZE`] count as that.
    pub fn new(region: DmaRegion, queue_num_max: [u16; QUEUES]) -> Self {
        let mut max = queue_num_max;
        for value in &mut max {
            *value = (*value).min(MAX_QUEUE_SIZE);
        }
        Self {
            region,
            queue_num_max: max,
            queue_sel: None,
            driver_features_sel: None,
            queues: [QueueRegisters::default(); QUEUES],
        }
    }

    /// The DMA region the guard holds the device to.
    pub const fn region(&self) -> DmaRegion {
        self.region
    }

    /// Queue `queue`'s rings, if it is ready.
    pub fn ready_queue(&self, queue: u16) -> Option<QueueRings> {
        self.queues.get(usize::from(queue)).and_then(|registers| registers.ready)
    }

    /// Back to the state of a freshly reset device: no queue ready, nothing
    /// selected, nothing latched. Done by a `Status` = 0 write; the core
    /// calls it when it resets the device itself.
    pub fn reset(&mut self) {
        self.queue_sel = None;
        self.driver_features_sel = None;
        self.queues = [QueueRegisters::default(); QUEUES];
    }

    /// Whether the pager may write `value` to the register at `offset`.
    /// `Ok`: the core must perform the write (the guard's state already
    /// includes it). `Err`: it must not; nothing changed.
    pub fn check_write(
        &mut self,
        offset: u32,
        value: u32,
        memory: &impl DmaMemory,
    ) -> Result<(), Refusal> {
        use register::*;
        if !offset.is_multiple_of(4) {
            return Err(Refusal::Misaligned);
        }
        match offset {
            DEVICE_FEATURES_SEL | INTERRUPT_ACK => Ok(()),
            DRIVER_FEATURES_SEL => {
                if value > 1 {
                    return Err(Refusal::BadValue);
                }
                self.driver_features_sel = Some(value);
                Ok(())
            }
            DRIVER_FEATURES => {
                let word = self.driver_features_sel.ok_or(Refusal::NoSelection)?;
                let refused = (feature::REFUSED >> (32 * word)) & u64::from(u32::MAX);
                if u64::from(value) & refused != 0 {
                    return Err(Refusal::RefusedFeature);
                }
                Ok(())
            }
            QUEUE_SEL => {
                let queue = usize::try_from(value).map_err(|_| Refusal::BadValue)?;
                if queue >= QUEUES {
                    return Err(Refusal::BadValue);
                }
                self.queue_sel = Some(queue);
                Ok(())
            }
            QUEUE_NUM => {
                let queue = self.unready_selected_queue()?;
                let max = u32::from(self.queue_num_max[queue]);
                if value == 0 || value > max || !value.is_power_of_two() {
                    return Err(Refusal::BadValue);
                }
                let num = u16::try_from(value).map_err(|_| Refusal::BadValue)?;
                self.queues[queue].num = Some(num);
                Ok(())
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                let queue = self.unready_selected_queue()?;
                let registers = &mut self.queues[queue];
                let half = usize::from(offset % 8 == 4);
                let field = match offset & !4 {
                    QUEUE_DESC_LOW => &mut registers.desc,
                    QUEUE_DRIVER_LOW => &mut registers.driver,
                    _ => &mut registers.device,
                };
                field[half] = Some(value);
                Ok(())
            }
            QUEUE_READY => {
                let queue = self.queue_sel.ok_or(Refusal::NoSelection)?;
                match value {
                    0 if self.queues[queue].ready.is_some() => Err(Refusal::QueueLive),
                    0 => Ok(()),
                    1 => self.make_ready(queue),
                    _ => Err(Refusal::BadValue),
                }
            }
            QUEUE_NOTIFY => self.notify(value, memory),
            STATUS => {
                if value > 0xff {
                    return Err(Refusal::BadValue);
                }
                if value == 0 {
                    self.reset();
                }
                Ok(())
            }
            _ => Err(Refusal::NotWritable),
        }
    }

    /// The selected queue, for a write that may not change a ready queue.
    fn unready_selected_queue(&self) -> Result<usize, Refusal> {
        let queue = self.queue_sel.ok_or(Refusal::NoSelection)?;
        if self.queues[queue].ready.is_some() {
            return Err(Refusal::QueueLive);
        }
        Ok(queue)
    }

    /// `QueueReady` = 1 for `queue`: the rings must be complete, aligned,
    /// inside the region, and the used ring off every ring the device reads.
    fn make_ready(&mut self, queue: usize) -> Result<(), Refusal> {
        let registers = self.queues[queue];
        if registers.ready.is_some() {
            // Nothing it depends on can have changed since it was checked.
            return Ok(());
        }
        let (
            Some(num),
            [Some(desc_low), Some(desc_high)],
            [Some(driver_low), Some(driver_high)],
            [Some(device_low), Some(device_high)],
        ) = (registers.num, registers.desc, registers.driver, registers.device)
        else {
            return Err(Refusal::QueueIncomplete);
        };
        let rings = QueueRings {
            num,
            desc: join(desc_low, desc_high),
            driver: join(driver_low, driver_high),
            device: join(device_low, device_high),
            checked: 0,
        };
        self.check_ring(rings.desc, rings.desc_bytes(), 16)?;
        self.check_ring(rings.driver, rings.driver_bytes(), 2)?;
        self.check_ring(rings.device, rings.device_bytes(), 4)?;
        let others = self.queues.iter().enumerate().filter(|&(index, _)| index != queue);
        for other in core::iter::once(&rings).chain(others.filter_map(|(_, r)| r.ready.as_ref())) {
            let writes_read_ring = |writer: &QueueRings, reader: &QueueRings| {
                overlaps(writer.device, writer.device_bytes(), reader.desc, reader.desc_bytes())
                    || overlaps(
                        writer.device,
                        writer.device_bytes(),
                        reader.driver,
                        reader.driver_bytes(),
                    )
            };
            if writes_read_ring(&rings, other) || writes_read_ring(other, &rings) {
                return Err(Refusal::RingOverlap);
            }
        }
        self.queues[queue].ready = Some(rings);
        Ok(())
    }

    fn check_ring(&self, addr: u64, len: u64, align: u64) -> Result<(), Refusal> {
        if !addr.is_multiple_of(align) {
            return Err(Refusal::RingMisaligned);
        }
        if !self.region.contains(addr, len) {
            return Err(Refusal::RingOutside);
        }
        Ok(())
    }

    /// `QueueNotify` = `value`: walk every entry made available since the
    /// last checked index; advance it only if all are fine.
    fn notify(&mut self, value: u32, memory: &impl DmaMemory) -> Result<(), Refusal> {
        let queue = usize::try_from(value).map_err(|_| Refusal::BadValue)?;
        let registers = self.queues.get(queue).ok_or(Refusal::BadValue)?;
        let rings = registers.ready.ok_or(Refusal::QueueNotReady)?;
        let avail_idx = memory.read_u16(offset(rings.driver, 2)?).ok_or(Refusal::RingOutside)?;
        let new = avail_idx.wrapping_sub(rings.checked);
        if new > rings.num {
            return Err(Refusal::TooManyEntries);
        }
        let mut walked = 0u16;
        for entry in 0..new {
            // `num` divides 2^16, so the slot of a wrapping index is its
            // remainder.
            let slot = rings.checked.wrapping_add(entry) % rings.num;
            let slot_addr = offset(rings.driver, 4 + 2 * u64::from(slot))?;
            let head = memory.read_u16(slot_addr).ok_or(Refusal::RingOutside)?;
            self.walk_chain(&rings, head, &mut walked, memory)?;
        }
        if let Some(ready) = &mut self.queues[queue].ready {
            ready.checked = avail_idx;
        }
        Ok(())
    }

    /// Follows the chain from `head`: every buffer inside the region, no
    /// indirect table, every index below `num`, at most `num` descriptors
    /// (`walked` counts them across the notify's chains).
    fn walk_chain(
        &self,
        rings: &QueueRings,
        head: u16,
        walked: &mut u16,
        memory: &impl DmaMemory,
    ) -> Result<(), Refusal> {
        let mut index = head;
        let mut length = 0u16;
        loop {
            if index >= rings.num {
                return Err(Refusal::BadIndex);
            }
            length += 1;
            if length > rings.num {
                return Err(Refusal::ChainLoop);
            }
            *walked += 1;
            if *walked > rings.num {
                return Err(Refusal::TooManyDescriptors);
            }
            let entry = offset(rings.desc, descriptor::SIZE * u64::from(index))?;
            let addr = memory.read_u64(entry).ok_or(Refusal::RingOutside)?;
            let len = memory.read_u32(offset(entry, 8)?).ok_or(Refusal::RingOutside)?;
            let flags = memory.read_u16(offset(entry, 12)?).ok_or(Refusal::RingOutside)?;
            let next = memory.read_u16(offset(entry, 14)?).ok_or(Refusal::RingOutside)?;
            if flags & descriptor::INDIRECT != 0 {
                return Err(Refusal::Indirect);
            }
            if len == 0 {
                return Err(Refusal::EmptyBuffer);
            }
            let len = u64::from(len);
            if !self.region.contains(addr, len) {
                return Err(Refusal::BufferOutside);
            }
            if flags & descriptor::WRITE != 0 && self.overlaps_read_ring(addr, len) {
                return Err(Refusal::BufferOverlapsRing);
            }
            if flags & descriptor::NEXT == 0 {
                return Ok(());
            }
            index = next;
        }
    }

    /// Whether `len` bytes from `addr` overlap a descriptor table or avail
    /// ring of a ready queue.
    fn overlaps_read_ring(&self, addr: u64, len: u64) -> bool {
        self.queues.iter().filter_map(|registers| registers.ready.as_ref()).any(|rings| {
            overlaps(addr, len, rings.desc, rings.desc_bytes())
                || overlaps(addr, len, rings.driver, rings.driver_bytes())
        })
    }
}

/// A 64-bit address from its register halves.
const fn join(low: u32, high: u32) -> u64 {
    ((high as u64) << 32) | low as u64
}

/// `base + delta`, for addresses inside a checked ring (cannot overflow; a
/// refusal rather than a panic if it ever did).
fn offset(base: u64, delta: u64) -> Result<u64, Refusal> {
    base.checked_add(delta).ok_or(Refusal::RingOutside)
}

/// Whether `[a, a + a_len)` and `[b, b + b_len)` intersect (ends saturate).
const fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

#[cfg(test)]
mod tests {
    use super::register::*;
    use super::*;

    const BASE: u64 = 0x0010_0000;
    const PAGES: u64 = 4;
    const REGION: DmaRegion = DmaRegion { base: BASE, pages: PAGES };
    const END: u64 = BASE + PAGES * PAGE_SIZE;
    const NUM: u16 = 8;
    // Queue 0's rings, at the start of the region.
    const DESC: u64 = BASE;
    const AVAIL: u64 = BASE + 0x100;
    const USED: u64 = BASE + 0x200;
    // Queue 1's rings.
    const DESC1: u64 = BASE + 0x400;
    const AVAIL1: u64 = BASE + 0x500;
    const USED1: u64 = BASE + 0x600;
    // Buffers.
    const DATA: u64 = BASE + 0x1000;

    /// The region's bytes, as the device would read them.
    struct Memory {
        base: u64,
        bytes: Vec<u8>,
    }

    impl Memory {
        fn new(region: DmaRegion) -> Self {
            let len = usize::try_from(region.pages * PAGE_SIZE).unwrap();
            Self { base: region.base, bytes: vec![0; len] }
        }

        fn range(&self, addr: u64, len: usize) -> Option<core::ops::Range<usize>> {
            let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
            let end = start.checked_add(len)?;
            (end <= self.bytes.len()).then_some(start..end)
        }

        fn put(&mut self, addr: u64, bytes: &[u8]) {
            let range = self.range(addr, bytes.len()).unwrap();
            self.bytes[range].copy_from_slice(bytes);
        }

        fn put_u16(&mut self, addr: u64, value: u16) {
            self.put(addr, &value.to_le_bytes());
        }

        fn put_desc(&mut self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let entry = table + 16 * u64::from(index);
            self.put(entry, &addr.to_le_bytes());
            self.put(entry + 8, &len.to_le_bytes());
            self.put(entry + 12, &flags.to_le_bytes());
            self.put(entry + 14, &next.to_le_bytes());
        }

        /// Makes `head` available at running index `idx` and sets the avail
        /// `idx` to `idx + 1`.
        fn publish(&mut self, avail: u64, num: u16, idx: u16, head: u16) {
            self.put_u16(avail + 4 + 2 * u64::from(idx % num), head);
            self.put_u16(avail + 2, idx.wrapping_add(1));
        }

        fn read<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
            let range = self.range(addr, N)?;
            self.bytes[range].try_into().ok()
        }
    }

    impl DmaMemory for Memory {
        fn read_u16(&self, addr: u64) -> Option<u16> {
            self.read(addr).map(u16::from_le_bytes)
        }
        fn read_u32(&self, addr: u64) -> Option<u32> {
            self.read(addr).map(u32::from_le_bytes)
        }
        fn read_u64(&self, addr: u64) -> Option<u64> {
            self.read(addr).map(u64::from_le_bytes)
        }
    }

    fn guard() -> VirtioGuard {
        VirtioGuard::new(REGION, [256, 256])
    }

    fn low(addr: u64) -> u32 {
        addr as u32
    }

    fn high(addr: u64) -> u32 {
        (addr >> 32) as u32
    }

    /// Selects `queue` and writes its size and ring addresses (not ready).
    fn configure(
        guard: &mut VirtioGuard,
        memory: &Memory,
        queue: u32,
        num: u16,
        rings: [u64; 3],
    ) -> Result<(), Refusal> {
        let [desc, driver, device] = rings;
        for (offset, value) in [
            (QUEUE_SEL, queue),
            (QUEUE_NUM, u32::from(num)),
            (QUEUE_DESC_LOW, low(desc)),
            (QUEUE_DESC_HIGH, high(desc)),
            (QUEUE_DRIVER_LOW, low(driver)),
            (QUEUE_DRIVER_HIGH, high(driver)),
            (QUEUE_DEVICE_LOW, low(device)),
            (QUEUE_DEVICE_HIGH, high(device)),
        ] {
            guard.check_write(offset, value, memory)?;
        }
        Ok(())
    }

    /// Configures `queue` and makes it ready.
    fn setup(
        guard: &mut VirtioGuard,
        memory: &Memory,
        queue: u32,
        num: u16,
        rings: [u64; 3],
    ) -> Result<(), Refusal> {
        configure(guard, memory, queue, num, rings)?;
        guard.check_write(QUEUE_READY, 1, memory)
    }

    /// A guard with queue 0 ready (size [`NUM`], standard rings).
    fn ready() -> (VirtioGuard, Memory) {
        let mut guard = guard();
        let memory = Memory::new(REGION);
        setup(&mut guard, &memory, 0, NUM, [DESC, AVAIL, USED]).unwrap();
        (guard, memory)
    }

    /// `check_write`, asserting that a refusal left the guard unchanged.
    fn write(
        guard: &mut VirtioGuard,
        offset: u32,
        value: u32,
        memory: &Memory,
    ) -> Result<(), Refusal> {
        let before = guard.clone();
        let result = guard.check_write(offset, value, memory);
        if result.is_err() {
            assert_eq!(*guard, before, "a refused write changed the guard");
        }
        result
    }

    fn notify(guard: &mut VirtioGuard, memory: &Memory) -> Result<(), Refusal> {
        write(guard, QUEUE_NOTIFY, 0, memory)
    }

    fn checked(guard: &VirtioGuard) -> u16 {
        guard.ready_queue(0).unwrap().checked
    }

    /// Publishes a one-descriptor chain `addr, len, flags` at running index
    /// `idx`, with descriptor `idx % NUM`.
    fn publish_one(memory: &mut Memory, idx: u16, addr: u64, len: u32, flags: u16) {
        let head = idx % NUM;
        memory.put_desc(DESC, head, addr, len, flags, 0);
        memory.publish(AVAIL, NUM, idx, head);
    }

    // ---- DmaRegion ----

    #[test]
    fn region_edges() {
        assert!(REGION.contains(BASE, 1), "first byte");
        assert!(REGION.contains(END - 1, 1), "last byte");
        assert!(REGION.contains(BASE, PAGES * PAGE_SIZE), "all of it");
        assert!(!REGION.contains(BASE, PAGES * PAGE_SIZE + 1), "one byte more");
        assert!(!REGION.contains(END, 1), "first byte after");
        assert!(!REGION.contains(END - 1, 2), "last byte and one after");
        assert!(!REGION.contains(BASE - 1, 1), "byte before");
        assert!(!REGION.contains(BASE - 1, 2), "straddles the start");
        assert!(!REGION.contains(BASE, 0), "empty");
        assert!(!REGION.contains(0, 1));
    }

    #[test]
    fn region_overflow() {
        assert!(!REGION.contains(u64::MAX, 1));
        assert!(!REGION.contains(u64::MAX - 0xf, 0x20), "wraps past u64::MAX");
        assert!(!REGION.contains(BASE, u64::MAX), "wraps");
        assert!(!REGION.contains(END - 1, u64::MAX), "wraps back into the region");
        // A region at the very top: its end (2^64) is not representable, so
        // it holds nothing.
        let top = DmaRegion { base: u64::MAX - PAGE_SIZE + 1, pages: 1 };
        assert!(!top.contains(top.base, 1));
        // One page lower it works, up to u64::MAX - PAGE_SIZE.
        let high = DmaRegion { base: u64::MAX - 2 * PAGE_SIZE + 1, pages: 1 };
        assert!(high.contains(high.base, PAGE_SIZE));
        assert!(!high.contains(high.base, PAGE_SIZE + 1));
        assert!(!DmaRegion { base: 0, pages: u64::MAX }.contains(0, 1), "size overflows");
        assert!(!DmaRegion { base: BASE, pages: 0 }.contains(BASE, 1), "no pages");
    }

    // ---- plain registers ----

    #[test]
    fn misaligned_offsets_are_refused() {
        let (mut guard, memory) = ready();
        for offset in
            [0x001, 0x015, 0x022, 0x033, 0x045, 0x051, 0x072, 0x081, 0x0a6, 0x103, u32::MAX]
        {
            assert_eq!(
                write(&mut guard, offset, 0, &memory),
                Err(Refusal::Misaligned),
                "{offset:#x}"
            );
        }
    }

    #[test]
    fn other_offsets_are_refused() {
        let (mut guard, memory) = ready();
        let refused = [
            0x000, 0x004, 0x008, 0x00c, 0x010, // magic, version, device, vendor, features
            0x018, 0x01c, 0x028, 0x02c, // reserved, legacy GuestPageSize
            0x034, 0x03c, 0x040, // QueueNumMax, legacy QueueAlign, QueuePFN
            0x048, 0x04c, 0x054, 0x060, 0x068, 0x074, // reserved, InterruptStatus
            0x088, 0x08c, 0x098, 0x09c, 0x0a8, // gaps between the address pairs
            0x0ac, 0x0b0, 0x0b4, 0x0b8, 0x0bc, // SHMSel, SHMLen, SHMBase
            0x0c0, 0x0fc, // QueueReset, ConfigGeneration
            0x100, 0x104, 0x1fc, 0x200, 0xffc, // configuration space and past it
            !3,
        ];
        for offset in refused {
            assert_eq!(
                write(&mut guard, offset, 0, &memory),
                Err(Refusal::NotWritable),
                "{offset:#x}"
            );
        }
    }

    #[test]
    fn device_features_sel_and_interrupt_ack_take_anything() {
        let mut guard = guard();
        let memory = Memory::new(REGION);
        for value in [0, 1, 2, 0xffff_ffff] {
            assert_eq!(write(&mut guard, DEVICE_FEATURES_SEL, value, &memory), Ok(()));
            assert_eq!(write(&mut guard, INTERRUPT_ACK, value, &memory), Ok(()));
        }
    }

    #[test]
    fn driver_features_need_a_selection_and_refuse_unchecked_features() {
        let mut guard = guard();
        let memory = Memory::new(REGION);
        assert_eq!(write(&mut guard, DRIVER_FEATURES, 0, &memory), Err(Refusal::NoSelection));
        assert_eq!(write(&mut guard, DRIVER_FEATURES_SEL, 2, &memory), Err(Refusal::BadValue));
        assert_eq!(
            write(&mut guard, DRIVER_FEATURES_SEL, u32::MAX, &memory),
            Err(Refusal::BadValue)
        );
        // Word 0: everything but INDIRECT_DESC (28); EVENT_IDX (29) is fine.
        assert_eq!(write(&mut guard, DRIVER_FEATURES_SEL, 0, &memory), Ok(()));
        assert_eq!(write(&mut guard, DRIVER_FEATURES, !(1 << 28), &memory), Ok(()));
        assert_eq!(
            write(&mut guard, DRIVER_FEATURES, 1 << 28, &memory),
            Err(Refusal::RefusedFeature)
        );
        // Word 1: VERSION_1 (32) and ACCESS_PLATFORM (33) fine, RING_PACKED
        // (34) and NOTIFICATION_DATA (38) refused.
        assert_eq!(write(&mut guard, DRIVER_FEATURES_SEL, 1, &memory), Ok(()));
        assert_eq!(write(&mut guard, DRIVER_FEATURES, 0b11, &memory), Ok(()));
        assert_eq!(write(&mut guard, DRIVER_FEATURES, 1 << 28, &memory), Ok(()), "bit 60");
        assert_eq!(
            write(&mut guard, DRIVER_FEATURES, 1 << 2, &memory),
            Err(Refusal::RefusedFeature)
        );
        assert_eq!(
            write(&mut guard, DRIVER_FEATURES, 1 << 6, &memory),
            Err(Refusal::RefusedFeature)
        );
        // The selection is forgotten at a reset.
        assert_eq!(write(&mut guard, STATUS, 0, &memory), Ok(()));
        assert_eq!(write(&mut guard, DRIVER_FEATURES, 0, &memory), Err(Refusal::NoSelection));
    }

    #[test]
    fn queue_sel_is_limited_to_the_tracked_queues() {
        let mut guard = guard();
        let memory = Memory::new(REGION);
        assert_eq!(write(&mut guard, QUEUE_SEL, 0, &memory), Ok(()));
        assert_eq!(write(&mut guard, QUEUE_SEL, 1, &memory), Ok(()));
        assert_eq!(write(&mut guard, QUEUE_SEL, 2, &memory), Err(Refusal::BadValue));
        assert_eq!(write(&mut guard, QUEUE_SEL, u32::MAX, &memory), Err(Refusal::BadValue));
    }

    #[test]
    fn status_takes_eight_bits() {
        let mut guard = guard();
        let memory = Memory::new(REGION);
        for value in [1, 3, 11, 15, 0x40, 0x80, 0xff] {
            assert_eq!(write(&mut guard, STATUS, value, &memory), Ok(()));
        }
        // 0x100 would reset a device that keeps only the low 8 bits.
        for value in [0x100, 0x10f, u32::MAX] {
            assert_eq!(write(&mut guard, STATUS, value, &memory), Err(Refusal::BadValue));
        }
    }

    #[test]
    fn queue_registers_need_a_selection() {
        let mut guard = guard();
        let memory = Memory::new(REGION);
        for offset in [
            QUEUE_NUM,
            QUEUE_READY,
            QUEUE_DESC_LOW,
            QUEUE_DESC_HIGH,
            QUEUE_DRIVER_LOW,
            QUEUE_DRIVER_HIGH,
            QUEUE_DEVICE_LOW,
            QUEUE_DEVICE_HIGH,
        ] {
            assert_eq!(
                write(&mut guard, offset, 1, &memory),
                Err(Refusal::NoSelection),
                "{offset:#x}"
            );
        }
    }

    #[test]
    fn queue_num_is_a_power_of_two_up_to_the_max() {
        let mut guard = VirtioGuard::new(REGION, [256, 0]);
        let memory = Memory::new(REGION);
        assert_eq!(write(&mut guard, QUEUE_SEL, 0, &memory), Ok(()));
        for value in [1, 2, 4, 128, 256] {
            assert_eq!(write(&mut guard, QUEUE_NUM, value, &memory), Ok(()), "{value}");
        }
        for value in [0, 3, 6, 255, 257, 512, 1 << 16, 1 << 31, u32::MAX] {
            assert_eq!(
                write(&mut guard, QUEUE_NUM, value, &memory),
                Err(Refusal::BadValue),
                "{value}"
            );
        }
        // Queue 1 does not exist (its max is 0): no size fits.
        assert_eq!(write(&mut guard, QUEUE_SEL, 1, &memory), Ok(()));
        assert_eq!(write(&mut guard, QUEUE_NUM, 1, &memory), Err(Refusal::BadValue));
        assert_eq!(write(&mut guard, QUEUE_READY, 1, &memory), Err(Refusal::QueueIncomplete));
    }

    #[test]
    fn queue_num_max_is_capped_at_the_spec_limit() {
        let mut guard = VirtioGuard::new(REGION, [u16::MAX, 0]);
        let memory = Memory::new(REGION);
        assert_eq!(write(&mut guard, QUEUE_SEL, 0, &memory), Ok(()));
        assert_eq!(write(&mut guard, QUEUE_NUM, 32_768, &memory), Ok(()));
        assert_eq!(write(&mut guard, QUEUE_NUM, 65_536, &memory), Err(Refusal::BadValue));
    }

    // ---- QueueReady ----

    #[test]
    fn queue_ready_needs_every_register() {
        let memory = Memory::new(REGION);
        let writes = [
            (QUEUE_NUM, u32::from(NUM)),
            (QUEUE_DESC_LOW, low(DESC)),
            (QUEUE_DESC_HIGH, 0),
            (QUEUE_DRIVER_LOW, low(AVAIL)),
            (QUEUE_DRIVER_HIGH, 0),
            (QUEUE_DEVICE_LOW, low(USED)),
            (QUEUE_DEVICE_HIGH, 0),
        ];
        for missing in 0..writes.len() {
            let mut guard = guard();
            assert_eq!(write(&mut guard, QUEUE_SEL, 0, &memory), Ok(()));
            for (index, &(offset, value)) in writes.iter().enumerate() {
                if index != missing {
                    assert_eq!(write(&mut guard, offset, value, &memory), Ok(()));
                }
            }
            assert_eq!(write(&mut guard, QUEUE_READY, 1, &memory), Err(Refusal::QueueIncomplete));
            assert_eq!(guard.ready_queue(0), None);
        }
    }

    #[test]
    fn queue_ready_records_the_rings() {
        let (guard, _) = ready();
        assert_eq!(
            guard.ready_queue(0),
            Some(QueueRings { num: NUM, desc: DESC, driver: AVAIL, device: USED, checked: 0 })
        );
        assert_eq!(guard.ready_queue(1), None);
        assert_eq!(guard.ready_queue(2), None);
        assert_eq!(guard.region(), REGION);
    }

    #[test]
    fn queue_ready_values() {
        let mut guard = guard();
        let memory = Memory::new(REGION);
        configure(&mut guard, &memory, 0, NUM, [DESC, AVAIL, USED]).unwrap();
        assert_eq!(write(&mut guard, QUEUE_READY, 0, &memory), Ok(()), "0 on an unready queue");
        assert_eq!(write(&mut guard, QUEUE_READY, 2, &memory), Err(Refusal::BadValue));
        assert_eq!(write(&mut guard, QUEUE_READY, u32::MAX, &memory), Err(Refusal::BadValue));
        assert_eq!(write(&mut guard, QUEUE_READY, 1, &memory), Ok(()));
        assert_eq!(write(&mut guard, QUEUE_READY, 1, &memory), Ok(()), "again: no change");
        assert_eq!(write(&mut guard, QUEUE_READY, 0, &memory), Err(Refusal::QueueLive));
        assert!(guard.ready_queue(0).is_some());
    }

    #[test]
    fn a_ready_queue_is_frozen_until_reset() {
        let (mut guard, memory) = ready();
        for offset in [
            QUEUE_NUM,
            QUEUE_DESC_LOW,
            QUEUE_DESC_HIGH,
            QUEUE_DRIVER_LOW,
            QUEUE_DRIVER_HIGH,
            QUEUE_DEVICE_LOW,
            QUEUE_DEVICE_HIGH,
        ] {
            assert_eq!(
                write(&mut guard, offset, 4, &memory),
                Err(Refusal::QueueLive),
                "{offset:#x}"
            );
        }
        // The other queue can still be set up.
        assert_eq!(setup(&mut guard, &memory, 1, NUM, [DESC1, AVAIL1, USED1]), Ok(()));
        assert!(guard.ready_queue(1).is_some());
    }

    #[test]
    fn rings_must_be_aligned() {
        let memory = Memory::new(REGION);
        for (rings, what) in [
            ([DESC + 8, AVAIL, USED], "desc 8"),
            ([DESC + 2, AVAIL, USED], "desc 2"),
            ([DESC, AVAIL + 1, USED], "avail 1"),
            ([DESC, AVAIL, USED + 2], "used 2"),
        ] {
            let mut guard = guard();
            assert_eq!(
                setup(&mut guard, &memory, 0, NUM, rings),
                Err(Refusal::RingMisaligned),
                "{what}"
            );
        }
        let mut guard = guard();
        assert_eq!(setup(&mut guard, &memory, 0, NUM, [DESC + 16, AVAIL + 2, USED + 4]), Ok(()));
    }

    #[test]
    fn rings_must_be_inside_the_region() {
        let memory = Memory::new(REGION);
        let n = u64::from(NUM);
        let desc_end = END - 16 * n;
        let avail_end = END - (6 + 2 * n);
        // (6 + 8 * num is 2 mod 4: the last 4-aligned start ends 2 bytes
        // before the end.)
        let used_end = (END - (6 + 8 * n)) & !3;
        // Each ring ending exactly at the region's end is fine...
        for rings in [[desc_end, AVAIL, USED], [DESC, avail_end, USED], [DESC, AVAIL, used_end]] {
            let mut guard = guard();
            assert_eq!(setup(&mut guard, &memory, 0, NUM, rings), Ok(()), "{rings:x?}");
        }
        // ...one alignment step further is not, nor anything before the
        // region, nor a high half that moves it away, nor one that wraps.
        for rings in [
            [desc_end + 16, AVAIL, USED],
            [DESC, avail_end + 2, USED],
            [DESC, AVAIL, used_end + 4],
            [BASE - 16, AVAIL, USED],
            [DESC, BASE - 2, USED],
            [DESC, AVAIL, BASE - 4],
            [DESC | 1 << 32, AVAIL, USED],
            [DESC, AVAIL | 1 << 63, USED],
            [DESC, AVAIL, u64::MAX - 3],
            [u64::MAX - 15, AVAIL, USED],
            [0, AVAIL, USED],
        ] {
            let mut guard = guard();
            assert_eq!(
                setup(&mut guard, &memory, 0, NUM, rings),
                Err(Refusal::RingOutside),
                "{rings:x?}"
            );
        }
        // The largest queue does not fit in this region.
        let mut guard = VirtioGuard::new(REGION, [MAX_QUEUE_SIZE, 0]);
        assert_eq!(
            setup(&mut guard, &memory, 0, MAX_QUEUE_SIZE, [DESC, AVAIL, USED]),
            Err(Refusal::RingOutside)
        );
    }

    #[test]
    fn used_rings_must_not_overlap_rings_the_device_reads() {
        let memory = Memory::new(REGION);
        for rings in
            [[DESC, AVAIL, DESC + 64], [DESC, AVAIL, AVAIL - 4], [DESC, DESC + 0x80, DESC + 0x7c]]
        {
            let mut guard = guard();
            assert_eq!(
                setup(&mut guard, &memory, 0, NUM, rings),
                Err(Refusal::RingOverlap),
                "{rings:x?}"
            );
        }
        // The descriptor table and the avail ring may share memory (the
        // device only reads both); adjacent rings are fine.
        let mut guard = guard();
        assert_eq!(setup(&mut guard, &memory, 0, NUM, [DESC, DESC + 0x80, DESC + 0x98]), Ok(()));

        // Across queues, both ways.
        let (mut guard, memory) = ready();
        assert_eq!(
            setup(&mut guard, &memory, 1, NUM, [DESC1, AVAIL1, AVAIL]),
            Err(Refusal::RingOverlap)
        );
        let (mut guard, memory) = ready();
        assert_eq!(
            setup(&mut guard, &memory, 1, NUM, [DESC1, AVAIL1, DESC + 0x70]),
            Err(Refusal::RingOverlap)
        );
        let (mut guard, memory) = ready();
        assert_eq!(
            setup(&mut guard, &memory, 1, NUM, [USED, AVAIL1, USED1]),
            Err(Refusal::RingOverlap)
        );
        let (mut guard, memory) = ready();
        assert_eq!(
            setup(&mut guard, &memory, 1, NUM, [DESC1, USED + 8, USED1]),
            Err(Refusal::RingOverlap)
        );
        // Sharing a used ring is the driver's own problem, not a DMA escape.
        let (mut guard, memory) = ready();
        assert_eq!(setup(&mut guard, &memory, 1, NUM, [DESC1, AVAIL1, USED]), Ok(()));
    }

    // ---- QueueNotify ----

    #[test]
    fn notify_needs_a_ready_queue() {
        let mut guard = guard();
        let memory = Memory::new(REGION);
        assert_eq!(write(&mut guard, QUEUE_NOTIFY, 0, &memory), Err(Refusal::QueueNotReady));
        let (mut guard, memory) = ready();
        assert_eq!(write(&mut guard, QUEUE_NOTIFY, 1, &memory), Err(Refusal::QueueNotReady));
        for value in [2, 0x1_0000, 0x8001_0000, u32::MAX] {
            assert_eq!(
                write(&mut guard, QUEUE_NOTIFY, value, &memory),
                Err(Refusal::BadValue),
                "{value:#x}"
            );
        }
        assert_eq!(write(&mut guard, QUEUE_NOTIFY, 0, &memory), Ok(()), "nothing new is fine");
    }

    #[test]
    fn notify_checks_and_advances() {
        let (mut guard, mut memory) = ready();
        publish_one(&mut memory, 0, DATA, 512, 0);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
        assert_eq!(checked(&guard), 1);
        assert_eq!(notify(&mut guard, &memory), Ok(()), "again: nothing new");
        assert_eq!(checked(&guard), 1);
        // A request as virtio-blk makes it: header, data, status.
        memory.put_desc(DESC, 1, DATA, 16, descriptor::NEXT, 2);
        memory.put_desc(DESC, 2, DATA + 0x200, 4096, descriptor::NEXT | descriptor::WRITE, 3);
        memory.put_desc(DESC, 3, DATA + 0x1200, 1, descriptor::WRITE, 0);
        memory.publish(AVAIL, NUM, 1, 1);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
        assert_eq!(checked(&guard), 2);
    }

    #[test]
    fn a_refused_notify_does_not_advance_and_is_rechecked() {
        let (mut guard, mut memory) = ready();
        publish_one(&mut memory, 0, DATA, 512, 0);
        publish_one(&mut memory, 1, END, 512, 0);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::BufferOutside));
        assert_eq!(errno_of(notify(&mut guard, &memory)), EFAULT);
        assert_eq!(checked(&guard), 0);
        // Fixed, the whole batch passes.
        memory.put_desc(DESC, 1, DATA + 512, 512, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
        assert_eq!(checked(&guard), 2);
    }

    fn errno_of(result: Result<(), Refusal>) -> i64 {
        result.map_or_else(Refusal::errno, |()| 0)
    }

    #[test]
    fn buffers_at_the_region_edges() {
        let cases: [(u64, u32, Result<(), Refusal>); 9] = [
            (BASE, 1, Ok(())),
            (END - 1, 1, Ok(())),
            (END - 4096, 4096, Ok(())),
            (BASE, (PAGES * PAGE_SIZE) as u32, Ok(())),
            (END, 1, Err(Refusal::BufferOutside)),
            (END - 1, 2, Err(Refusal::BufferOutside)),
            (BASE - 1, 1, Err(Refusal::BufferOutside)),
            (BASE - 1, 2, Err(Refusal::BufferOutside)),
            (0, 1, Err(Refusal::BufferOutside)),
        ];
        for (addr, len, expected) in cases {
            for flags in [0, descriptor::WRITE] {
                let (mut guard, mut memory) = ready();
                if flags == descriptor::WRITE && addr == BASE && expected.is_ok() {
                    // Would hit the descriptor table: see the overlap test.
                    continue;
                }
                publish_one(&mut memory, 0, addr, len, flags);
                assert_eq!(
                    notify(&mut guard, &memory),
                    expected,
                    "{addr:#x}+{len:#x} flags {flags}"
                );
            }
        }
    }

    #[test]
    fn buffers_that_overflow_are_refused() {
        for (addr, len) in [
            (u64::MAX, 1),
            (u64::MAX, u32::MAX),
            (u64::MAX - 0xff, 0x100),
            (u64::MAX - 0xff, 0x1000),
            (u64::MAX - (1 << 32) + 2, u32::MAX),
            (DATA | 1 << 32, 16),
            (DATA | 1 << 63, 16),
            (DATA, u32::MAX),
        ] {
            let (mut guard, mut memory) = ready();
            publish_one(&mut memory, 0, addr, len, descriptor::WRITE);
            assert_eq!(
                notify(&mut guard, &memory),
                Err(Refusal::BufferOutside),
                "{addr:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn empty_buffers_are_refused() {
        let (mut guard, mut memory) = ready();
        publish_one(&mut memory, 0, DATA, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::EmptyBuffer));
    }

    #[test]
    fn indirect_descriptors_are_refused() {
        for flags in [descriptor::INDIRECT, descriptor::INDIRECT | descriptor::NEXT, 0xffff] {
            let (mut guard, mut memory) = ready();
            publish_one(&mut memory, 0, DATA, 64, flags);
            assert_eq!(notify(&mut guard, &memory), Err(Refusal::Indirect), "{flags:#x}");
        }
        // Also in the middle of a chain.
        let (mut guard, mut memory) = ready();
        memory.put_desc(DESC, 0, DATA, 16, descriptor::NEXT, 1);
        memory.put_desc(DESC, 1, DATA + 16, 16, descriptor::INDIRECT, 0);
        memory.publish(AVAIL, NUM, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::Indirect));
    }

    #[test]
    fn unknown_descriptor_flags_are_ignored() {
        let (mut guard, mut memory) = ready();
        publish_one(&mut memory, 0, DATA, 64, 0x8080);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
    }

    #[test]
    fn indices_must_be_below_the_queue_size() {
        let (mut guard, mut memory) = ready();
        memory.put_desc(DESC, 0, DATA, 16, descriptor::NEXT, NUM);
        memory.publish(AVAIL, NUM, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::BadIndex), "next = num");

        let (mut guard, mut memory) = ready();
        memory.put_desc(DESC, 0, DATA, 16, descriptor::NEXT, u16::MAX);
        memory.publish(AVAIL, NUM, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::BadIndex), "next = 0xffff");

        // Without NEXT, `next` is not an index.
        let (mut guard, mut memory) = ready();
        memory.put_desc(DESC, 0, DATA, 16, 0, u16::MAX);
        memory.publish(AVAIL, NUM, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Ok(()));

        for head in [NUM, NUM + 1, u16::MAX] {
            let (mut guard, mut memory) = ready();
            memory.put_desc(DESC, 0, DATA, 16, 0, 0);
            memory.publish(AVAIL, NUM, 0, head);
            assert_eq!(notify(&mut guard, &memory), Err(Refusal::BadIndex), "head {head}");
        }
    }

    #[test]
    fn loops_are_refused() {
        // A descriptor pointing at itself.
        let (mut guard, mut memory) = ready();
        memory.put_desc(DESC, 3, DATA, 16, descriptor::NEXT, 3);
        memory.publish(AVAIL, NUM, 0, 3);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::ChainLoop));
        // A longer cycle, entered after a tail.
        let (mut guard, mut memory) = ready();
        memory.put_desc(DESC, 0, DATA, 16, descriptor::NEXT, 1);
        memory.put_desc(DESC, 1, DATA, 16, descriptor::NEXT, 2);
        memory.put_desc(DESC, 2, DATA, 16, descriptor::NEXT, 1);
        memory.publish(AVAIL, NUM, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::ChainLoop));
        // Every descriptor in one chain, in any order, is not a loop.
        let (mut guard, mut memory) = ready();
        let order = [5u16, 2, 7, 0, 1, 6, 3, 4];
        for pair in order.windows(2) {
            memory.put_desc(
                DESC,
                pair[0],
                DATA + 64 * u64::from(pair[0]),
                64,
                descriptor::NEXT,
                pair[1],
            );
        }
        memory.put_desc(DESC, 4, DATA + 256, 64, 0, 0);
        memory.publish(AVAIL, NUM, 0, 5);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
    }

    #[test]
    fn one_notify_uses_at_most_num_descriptors() {
        // Two entries naming the same 5-descriptor chain: 10 > 8.
        let (mut guard, mut memory) = ready();
        for index in 0..5 {
            let flags = if index < 4 { descriptor::NEXT } else { 0 };
            memory.put_desc(DESC, index, DATA, 16, flags, index + 1);
        }
        memory.publish(AVAIL, NUM, 0, 0);
        memory.publish(AVAIL, NUM, 1, 0);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::TooManyDescriptors));
        // Notified one at a time, each is fine (the device returned the
        // first before the driver reused it).
        let (mut guard, mut memory) = ready();
        for index in 0..5 {
            let flags = if index < 4 { descriptor::NEXT } else { 0 };
            memory.put_desc(DESC, index, DATA, 16, flags, index + 1);
        }
        memory.publish(AVAIL, NUM, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
        memory.publish(AVAIL, NUM, 1, 0);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
    }

    #[test]
    fn at_most_num_new_entries() {
        let (mut guard, mut memory) = ready();
        for idx in 0..NUM {
            publish_one(&mut memory, idx, DATA + 64 * u64::from(idx), 64, 0);
        }
        assert_eq!(notify(&mut guard, &memory), Ok(()), "exactly num");
        assert_eq!(checked(&guard), NUM);
        memory.put_u16(AVAIL + 2, 2 * NUM + 1);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::TooManyEntries), "num + 1");
        memory.put_u16(AVAIL + 2, NUM - 1);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::TooManyEntries), "backwards");
        memory.put_u16(AVAIL + 2, u16::MAX);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::TooManyEntries), "far");
        assert_eq!(checked(&guard), NUM);
    }

    #[test]
    fn indices_wrap() {
        let (mut guard, mut memory) = ready();
        // Around the u16 index space and a bit more, in batches of 1..=NUM.
        let mut idx = 0u16;
        let mut batch = 1u16;
        let mut total = 0u32;
        while total < 65_536 + 100 {
            for _ in 0..batch {
                publish_one(
                    &mut memory,
                    idx,
                    DATA + 64 * u64::from(idx % NUM),
                    64,
                    descriptor::WRITE,
                );
                idx = idx.wrapping_add(1);
            }
            assert_eq!(notify(&mut guard, &memory), Ok(()), "at {idx}");
            assert_eq!(checked(&guard), idx);
            total += u32::from(batch);
            batch = batch % NUM + 1;
        }
        // Across the wrap, the old rules hold: a bad entry at 0xffff...
        let (mut guard, mut memory) = ready();
        while checked(&guard) != 0xfff8 {
            let idx = checked(&guard);
            for step in 0..NUM {
                publish_one(&mut memory, idx.wrapping_add(step), DATA, 64, 0);
            }
            assert_eq!(notify(&mut guard, &memory), Ok(()));
        }
        for step in 0..NUM {
            publish_one(&mut memory, 0xfff8 + step, DATA, 64, 0);
        }
        publish_one(&mut memory, 0xffff, END, 64, 0);
        memory.put_u16(AVAIL + 2, 2); // 0xfff8..=0x0001: 10 entries
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::TooManyEntries));
        memory.put_u16(AVAIL + 2, 0);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::BufferOutside));
        publish_one(&mut memory, 0xffff, DATA, 64, 0);
        memory.put_u16(AVAIL + 2, 0);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
        assert_eq!(checked(&guard), 0);
    }

    #[test]
    fn writable_buffers_must_not_overlap_rings_the_device_reads() {
        let (mut guard, mut memory) = ready();
        setup(&mut guard, &memory, 1, NUM, [DESC1, AVAIL1, USED1]).unwrap();
        for (addr, len) in [
            (DESC, 1),
            (DESC + 16 * u64::from(NUM) - 1, 1),
            (AVAIL, 2),
            (AVAIL + 6 + 2 * u64::from(NUM) - 1, 1),
            (DESC1 + 0x40, 4),
            (AVAIL1 + 2, 2),
            (BASE, 4096),
        ] {
            let mut guard = guard.clone();
            publish_one(&mut memory, 0, addr, len, descriptor::WRITE);
            assert_eq!(
                notify(&mut guard, &memory),
                Err(Refusal::BufferOverlapsRing),
                "{addr:#x}+{len}"
            );
            // Read-only, the device cannot change what was checked.
            publish_one(&mut memory, 0, addr, len, 0);
            assert_eq!(notify(&mut guard, &memory), Ok(()), "{addr:#x}+{len} read");
        }
        // Just past the rings, or into a used ring: fine.
        for (addr, len) in [
            (DESC + 16 * u64::from(NUM), 16),
            (AVAIL + 6 + 2 * u64::from(NUM), 2),
            (USED, 64),
            (USED1, 64),
        ] {
            let mut guard = guard.clone();
            publish_one(&mut memory, 0, addr, len, descriptor::WRITE);
            assert_eq!(notify(&mut guard, &memory), Ok(()), "{addr:#x}+{len}");
        }
    }

    #[test]
    fn unreadable_memory_is_a_fault() {
        struct Nothing;
        impl DmaMemory for Nothing {
            fn read_u16(&self, _: u64) -> Option<u16> {
                None
            }
            fn read_u32(&self, _: u64) -> Option<u32> {
                None
            }
            fn read_u64(&self, _: u64) -> Option<u64> {
                None
            }
        }
        let (mut guard, _) = ready();
        assert_eq!(guard.check_write(QUEUE_NOTIFY, 0, &Nothing), Err(Refusal::RingOutside));
    }

    // ---- reset ----

    #[test]
    fn status_zero_resets_the_guard() {
        let (mut guard, mut memory) = ready();
        setup(&mut guard, &memory, 1, NUM, [DESC1, AVAIL1, USED1]).unwrap();
        publish_one(&mut memory, 0, DATA, 64, 0);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
        assert_eq!(write(&mut guard, STATUS, 0xf, &memory), Ok(()), "DRIVER_OK is no reset");
        assert!(guard.ready_queue(0).is_some());

        assert_eq!(write(&mut guard, STATUS, 0, &memory), Ok(()));
        assert_eq!(guard, VirtioGuard::new(REGION, [256, 256]));
        assert_eq!(guard.ready_queue(0), None);
        assert_eq!(guard.ready_queue(1), None);
        assert_eq!(notify(&mut guard, &memory), Err(Refusal::QueueNotReady));
        // Nothing is selected and nothing latched: the device may still hold
        // the old values, so the driver must write them again.
        assert_eq!(write(&mut guard, QUEUE_READY, 1, &memory), Err(Refusal::NoSelection));
        assert_eq!(write(&mut guard, QUEUE_SEL, 0, &memory), Ok(()));
        assert_eq!(write(&mut guard, QUEUE_READY, 1, &memory), Err(Refusal::QueueIncomplete));
        // Set up again, the queue starts from index 0 and may move.
        assert_eq!(setup(&mut guard, &memory, 0, NUM, [DESC1, AVAIL1, USED1]), Ok(()));
        assert_eq!(guard.ready_queue(0).unwrap().checked, 0);
        memory.put_desc(DESC1, 0, DATA, 64, 0, 0);
        memory.publish(AVAIL1, NUM, 0, 0);
        assert_eq!(notify(&mut guard, &memory), Ok(()));
        assert_eq!(checked(&guard), 1);
    }

    #[test]
    fn reset_method_matches_status_zero() {
        let (mut by_status, memory) = ready();
        let mut by_call = by_status.clone();
        by_status.check_write(STATUS, 0, &memory).unwrap();
        by_call.reset();
        assert_eq!(by_status, by_call);
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(Refusal::RingOutside.errno(), EFAULT);
        assert_eq!(Refusal::BufferOutside.errno(), EFAULT);
        for refusal in [
            Refusal::Misaligned,
            Refusal::NotWritable,
            Refusal::BadValue,
            Refusal::RefusedFeature,
            Refusal::NoSelection,
            Refusal::QueueLive,
            Refusal::QueueIncomplete,
            Refusal::QueueNotReady,
            Refusal::RingMisaligned,
            Refusal::RingOverlap,
            Refusal::TooManyEntries,
            Refusal::BadIndex,
            Refusal::Indirect,
            Refusal::ChainLoop,
            Refusal::TooManyDescriptors,
            Refusal::EmptyBuffer,
            Refusal::BufferOverlapsRing,
        ] {
            assert_eq!(refusal.errno(), EINVAL, "{refusal:?}");
        }
    }

    // ---- fuzz ----

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }

    /// An independent oracle: the rings of a ready queue lie in the region.
    fn assert_rings_inside(region: DmaRegion, rings: &QueueRings) {
        let n = u128::from(rings.num);
        for (addr, len) in
            [(rings.desc, 16 * n), (rings.driver, 6 + 2 * n), (rings.device, 6 + 8 * n)]
        {
            assert!(inside(region, addr, len), "ring {addr:#x}+{len:#x} outside {region:x?}");
        }
    }

    fn inside(region: DmaRegion, addr: u64, len: u128) -> bool {
        let start = u128::from(region.base);
        let end = start + u128::from(region.pages) * u128::from(PAGE_SIZE);
        len > 0 && u128::from(addr) >= start && u128::from(addr) + len <= end && end <= 1 << 64
    }

    /// An independent oracle: the entries `from..to` of an allowed notify
    /// name only chains of in-region buffers, without loops or indirection.
    fn assert_entries_inside(
        region: DmaRegion,
        memory: &Memory,
        rings: &QueueRings,
        from: u16,
        to: u16,
    ) {
        let num = usize::from(rings.num);
        let mut idx = from;
        while idx != to {
            let slot = u64::from(idx) % u64::from(rings.num);
            let mut index = usize::from(memory.read_u16(rings.driver + 4 + 2 * slot).unwrap());
            let mut seen = vec![false; num];
            loop {
                assert!(index < num, "index {index} of {num}");
                assert!(!seen[index], "loop at {index}");
                seen[index] = true;
                let entry = rings.desc + 16 * index as u64;
                let addr = memory.read_u64(entry).unwrap();
                let len = memory.read_u32(entry + 8).unwrap();
                let flags = memory.read_u16(entry + 12).unwrap();
                assert_eq!(flags & descriptor::INDIRECT, 0);
                assert!(inside(region, addr, u128::from(len)), "buffer {addr:#x}+{len:#x} outside");
                if flags & descriptor::NEXT == 0 {
                    break;
                }
                index = usize::from(memory.read_u16(entry + 14).unwrap());
            }
            idx = idx.wrapping_add(1);
        }
    }

    /// One fuzz run: a region, its memory and a guard, driven by a pager
    /// that is sometimes careful and sometimes not.
    struct Fuzz {
        rng: Rng,
        region: DmaRegion,
        size: u64,
        memory: Memory,
        guard: VirtioGuard,
        max: u16,
        stats: FuzzStats,
    }

    #[derive(Default)]
    struct FuzzStats {
        writes: u32,
        readied: u32,
        notifies: u32,
        entries: u32,
    }

    const FUZZ_OFFSETS: [u32; 15] = [
        DEVICE_FEATURES_SEL,
        DRIVER_FEATURES,
        DRIVER_FEATURES_SEL,
        QUEUE_SEL,
        QUEUE_NUM,
        QUEUE_READY,
        QUEUE_NOTIFY,
        INTERRUPT_ACK,
        STATUS,
        QUEUE_DESC_LOW,
        QUEUE_DESC_HIGH,
        QUEUE_DRIVER_LOW,
        QUEUE_DRIVER_HIGH,
        QUEUE_DEVICE_LOW,
        QUEUE_DEVICE_HIGH,
    ];

    impl Fuzz {
        fn new(mut rng: Rng) -> Self {
            let pages = 1 + rng.below(3);
            // Mostly an ordinary region; sometimes one at the very top of the
            // address space, where sums overflow (at the top itself, the
            // region holds nothing).
            let base = if rng.chance(15) {
                u64::MAX - (pages + rng.below(2)) * PAGE_SIZE + 1
            } else {
                (1 + rng.below(1 << 40)) * PAGE_SIZE
            };
            let region = DmaRegion { base, pages };
            let max = 1u16 << rng.below(7);
            let second = if rng.chance(50) { max } else { 0 };
            Self {
                region,
                size: pages * PAGE_SIZE,
                memory: Memory::new(region),
                guard: VirtioGuard::new(region, [max, second]),
                max,
                stats: FuzzStats::default(),
                rng,
            }
        }

        /// An address a driver might name: mostly in the region, sometimes
        /// just outside it or anywhere.
        fn near(&mut self) -> u64 {
            let base = self.region.base;
            match self.rng.below(12) {
                0 => self.rng.next(),
                1 => base.wrapping_sub(1 + self.rng.below(64)),
                2 => base.wrapping_add(self.size).wrapping_sub(self.rng.below(64)),
                _ => base + self.rng.below(self.size),
            }
        }

        /// A start in the region for `len` bytes aligned to `align`, if it fits.
        fn place(&mut self, len: u64, align: u64) -> u64 {
            let slots = self.size.saturating_sub(len) / align + 1;
            self.region.base + align * self.rng.below(slots)
        }

        /// The write, through the guard, with the oracles.
        fn write(&mut self, offset: u32, value: u32) {
            self.stats.writes += 1;
            let before = self.guard.clone();
            match self.guard.check_write(offset, value, &self.memory) {
                Ok(()) if offset == QUEUE_NOTIFY => {
                    let rings = before.ready_queue(value as u16).expect("notify on unready queue");
                    let now = self.guard.ready_queue(value as u16).unwrap();
                    assert_entries_inside(
                        self.region,
                        &self.memory,
                        &rings,
                        rings.checked,
                        now.checked,
                    );
                    self.stats.notifies += 1;
                    self.stats.entries += u32::from(now.checked.wrapping_sub(rings.checked));
                }
                Ok(()) if offset == QUEUE_READY && value == 1 => self.stats.readied += 1,
                Ok(()) => {}
                Err(_) => assert_eq!(self.guard, before, "a refusal changed the guard"),
            }
            for queue in 0..QUEUES as u16 {
                if let Some(rings) = self.guard.ready_queue(queue) {
                    assert_rings_inside(self.region, &rings);
                }
            }
        }

        /// Any register, any value, with a bias to plausible ones.
        fn random_write(&mut self) {
            let offset = if self.rng.chance(5) {
                self.rng.next() as u32 & 0x1ff
            } else {
                self.rng.pick(&FUZZ_OFFSETS)
            };
            let plausible = self.rng.chance(90);
            let value = match offset {
                _ if !plausible => self.rng.next() as u32,
                QUEUE_DESC_LOW | QUEUE_DRIVER_LOW | QUEUE_DEVICE_LOW => {
                    let align = self.rng.pick(&[16, 16, 4, 2, 1]);
                    (self.near() & !(align - 1)) as u32
                }
                QUEUE_DESC_HIGH | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_HIGH => {
                    (self.region.base >> 32) as u32
                }
                QUEUE_NUM => 1 << self.rng.below(8),
                STATUS => self.rng.pick(&[0, 1, 3, 11, 15, 15, 15]),
                _ => self.rng.below(3) as u32,
            };
            self.write(offset, value);
        }

        /// What a driver does to set a queue up, with the odd mistake.
        fn set_up_queue(&mut self) {
            let queue = if self.rng.chance(95) { self.rng.below(2) } else { 2 };
            let num = 1u64 << self.rng.below(u64::from(self.max.trailing_zeros()) + 2);
            let mut rings =
                [self.place(16 * num, 16), self.place(6 + 2 * num, 2), self.place(6 + 8 * num, 4)];
            for ring in &mut rings {
                if self.rng.chance(5) {
                    *ring = self.near();
                }
            }
            let writes = [
                (QUEUE_SEL, queue as u32),
                (QUEUE_NUM, num as u32),
                (QUEUE_DESC_LOW, low(rings[0])),
                (QUEUE_DESC_HIGH, high(rings[0])),
                (QUEUE_DRIVER_LOW, low(rings[1])),
                (QUEUE_DRIVER_HIGH, high(rings[1])),
                (QUEUE_DEVICE_LOW, low(rings[2])),
                (QUEUE_DEVICE_HIGH, high(rings[2])),
                (QUEUE_READY, 1),
            ];
            for (offset, value) in writes {
                if self.rng.chance(97) {
                    self.write(offset, value);
                }
            }
        }

        /// A descriptor as a driver might write it.
        fn put_descriptor(&mut self, rings: &QueueRings, index: u16, next: Option<u16>) {
            let len: u32 = if self.rng.chance(90) {
                self.rng.pick(&[1, 16, 512, 4096])
            } else {
                self.rng.pick(&[0, u32::MAX, 1 << 16])
            };
            let addr =
                if self.rng.chance(90) { self.place(u64::from(len), 1) } else { self.near() };
            let mut flags = if self.rng.chance(50) { descriptor::WRITE } else { 0 };
            if next.is_some() {
                flags |= descriptor::NEXT;
            }
            if self.rng.chance(3) {
                flags |= descriptor::INDIRECT;
            }
            let mut next = next.unwrap_or(self.rng.next() as u16);
            if self.rng.chance(3) {
                next = self.rng.below(u64::from(rings.num) + 2) as u16;
            }
            self.memory.put_desc(rings.desc, index, addr, len, flags, next);
        }

        /// Makes a batch of chains available on a ready queue, then usually
        /// notifies it.
        fn publish(&mut self) {
            let queue = self.rng.below(QUEUES as u64) as u16;
            let Some(rings) = self.guard.ready_queue(queue) else { return };
            let mut free: Vec<u16> = (0..rings.num).collect();
            let mut idx = rings.checked;
            let entries = 1 + self.rng.below(u64::from(rings.num));
            for _ in 0..entries {
                if free.is_empty() {
                    break;
                }
                let length = 1 + self.rng.below(3.min(free.len() as u64));
                let chain: Vec<u16> = (0..length)
                    .map(|_| free.swap_remove(self.rng.below(free.len() as u64) as usize))
                    .collect();
                for (position, &index) in chain.iter().enumerate() {
                    self.put_descriptor(&rings, index, chain.get(position + 1).copied());
                }
                let slot = u64::from(idx % rings.num);
                self.memory.put_u16(rings.driver + 4 + 2 * slot, chain[0]);
                idx = idx.wrapping_add(1);
            }
            if self.rng.chance(5) {
                idx = idx.wrapping_add(self.rng.next() as u16);
            }
            self.memory.put_u16(rings.driver + 2, idx);
            if self.rng.chance(90) {
                self.write(QUEUE_NOTIFY, u32::from(queue));
            }
        }

        /// Random bytes anywhere in the region.
        fn scribble(&mut self) {
            for _ in 0..1 + self.rng.below(4) {
                let addr = self.region.base + self.rng.below(self.size);
                let byte = self.rng.next() as u8;
                self.memory.put(addr, &[byte]);
            }
        }
    }

    #[test]
    fn fuzz_random_writes_and_memory() {
        let mut seeds = Rng(0x9e37_79b9_7f4a_7c15);
        let mut total = FuzzStats::default();
        for _ in 0..300 {
            let mut fuzz = Fuzz::new(Rng(seeds.next() | 1));
            for _ in 0..400 {
                match fuzz.rng.below(20) {
                    0..=7 => fuzz.random_write(),
                    8..=9 => fuzz.set_up_queue(),
                    10..=17 => fuzz.publish(),
                    _ => fuzz.scribble(),
                }
            }
            total.writes += fuzz.stats.writes;
            total.readied += fuzz.stats.readied;
            total.notifies += fuzz.stats.notifies;
            total.entries += fuzz.stats.entries;
        }
        eprintln!(
            "fuzz: {} writes, {} queues readied, {} notifies allowed, {} entries checked",
            total.writes, total.readied, total.notifies, total.entries
        );
        assert!(total.readied > 1_000, "the fuzz readied only {} queues", total.readied);
        assert!(total.notifies > 1_000, "the fuzz allowed only {} notifies", total.notifies);
        assert!(total.entries > 1_000, "the fuzz checked only {} entries", total.entries);
    }
}

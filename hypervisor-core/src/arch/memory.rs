//! Physical memory as the core sees it: identity-mapped, below
//! [`IDENTITY_LIMIT`]. The only ways in are the frame allocator (frames the
//! core owns) and the boot-module slice (a range the allocator reserved).

use core::sync::atomic::{AtomicBool, Ordering};
use hypervisor_core::addr::{HostPhysAddr, PAGE_SIZE};
use hypervisor_core::frame::FrameAllocator;
use hypervisor_core::paging::{EntryFlags, PageSize, PageTable, TableMemory};

/// Physical memory the core manages and identity-maps: 4 GiB.
pub const IDENTITY_LIMIT: u64 = 4 << 30;
const BITMAP_WORDS: usize = (IDENTITY_LIMIT / PAGE_SIZE / 64) as usize;

static mut FRAME_BITMAP: [u64; BITMAP_WORDS] = [0; BITMAP_WORDS];
static BITMAP_TAKEN: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical range of the core's own image (code, data, bss, stacks).
pub fn kernel_image() -> (u64, u64) {
    ((&raw const __kernel_start) as u64, (&raw const __kernel_end) as u64)
}

/// The frame allocator over the static bitmap; `None` after the first call.
pub fn take_frame_allocator() -> Option<FrameAllocator<'static>> {
    if BITMAP_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the swap above makes this the only reference ever created.
    Some(FrameAllocator::new(unsafe { &mut *(&raw mut FRAME_BITMAP) }))
}

/// A byte range of physical memory that the frame allocator has reserved
/// (boot information, boot modules), for reading.
///
/// Returns `None` if the range leaves the identity map.
pub fn reserved_bytes(start: u64, length: u64) -> Option<&'static [u8]> {
    let end = start.checked_add(length)?;
    if end > IDENTITY_LIMIT || start == 0 {
        return None;
    }
    // SAFETY: the range is identity-mapped and (by the caller's contract with
    // the allocator) reserved, so nothing writes it while the slice lives.
    Some(unsafe { core::slice::from_raw_parts(start as *const u8, length as usize) })
}

fn frame_pointer(frame: HostPhysAddr) -> *mut u8 {
    assert!(frame.as_u64() + PAGE_SIZE <= IDENTITY_LIMIT, "frame outside the identity map");
    frame.as_u64() as *mut u8
}

/// Access to frames the core owns (page tables, guest memory, VMCBs).
#[derive(Debug, Default, Clone, Copy)]
pub struct OwnedFrames;

impl OwnedFrames {
    /// Copies `data` into frame `frame` at `offset`.
    pub fn write(&mut self, frame: HostPhysAddr, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE_SIZE as usize, "write crosses a frame");
        // SAFETY: the frame is identity-mapped and owned by the core (it came
        // from the frame allocator); the range stays inside it.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), frame_pointer(frame).add(offset), data.len()) }
    }

    /// Copies bytes out of frame `frame` at `offset`.
    pub fn read(&self, frame: HostPhysAddr, offset: usize, buffer: &mut [u8]) {
        assert!(offset + buffer.len() <= PAGE_SIZE as usize, "read crosses a frame");
        // SAFETY: as for `write`.
        unsafe { core::ptr::copy_nonoverlapping(frame_pointer(frame).add(offset), buffer.as_mut_ptr(), buffer.len()) }
    }

    /// A frame's 64-bit word `index` (0..512), read volatile.
    pub fn read_u64(&self, frame: HostPhysAddr, index: usize) -> u64 {
        assert!(index < 512);
        // SAFETY: as for `write`; the word is aligned and inside the frame.
        unsafe { core::ptr::read_volatile((frame_pointer(frame) as *const u64).add(index)) }
    }

    /// Writes a frame's 64-bit word `index` (0..512), volatile.
    pub fn write_u64(&mut self, frame: HostPhysAddr, index: usize, value: u64) {
        assert!(index < 512);
        // SAFETY: as for `read_u64`.
        unsafe { core::ptr::write_volatile((frame_pointer(frame) as *mut u64).add(index), value) }
    }

    /// Copies frame `from` onto frame `to` (distinct frames).
    pub fn copy_frame(&mut self, from: HostPhysAddr, to: HostPhysAddr) {
        assert!(from != to, "a frame copied onto itself");
        // SAFETY: both frames are identity-mapped and owned by the core (or
        // lent to a server, whose own copy of the bytes it then is); distinct
        // page-aligned frames do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(frame_pointer(from), frame_pointer(to), PAGE_SIZE as usize) }
    }

    /// Fills a frame with `byte`.
    pub fn fill(&mut self, frame: HostPhysAddr, byte: u8) {
        // SAFETY: as for `write`.
        unsafe { core::ptr::write_bytes(frame_pointer(frame), byte, PAGE_SIZE as usize) }
    }
}

impl TableMemory for OwnedFrames {
    fn read_entry(&self, table: HostPhysAddr, index: usize) -> u64 {
        self.read_u64(table, index)
    }
    fn write_entry(&mut self, table: HostPhysAddr, index: usize, entry: u64) {
        self.write_u64(table, index, entry);
    }
    fn zero_frame(&mut self, frame: HostPhysAddr) {
        self.fill(frame, 0);
    }
}

/// Builds the core's own page tables (identity map of `[0, ram_end)` with
/// 2 MiB pages, plus the local APIC uncached) and switches to them.
pub fn install_core_page_tables(frames: &mut FrameAllocator<'_>, ram_end: u64) -> Result<PageTable, hypervisor_core::paging::MapError> {
    let mut memory = OwnedFrames;
    let table = PageTable::new(&mut memory, frames)?;
    let huge = PageSize::Size2MiB.bytes();
    let writable = EntryFlags::WRITABLE;
    let mut address = 0;
    while address < ram_end.min(IDENTITY_LIMIT) {
        table.map(&mut memory, frames, address, HostPhysAddr::new_truncate(address), PageSize::Size2MiB, writable)?;
        address += huge;
    }
    let device = writable.with(EntryFlags::NO_CACHE).with(EntryFlags::WRITE_THROUGH);
    // The virtio-mmio transports (0xfeb0_0000), the I/O APIC and the local APIC.
    for window in [0xfea0_0000u64, 0xfec0_0000, 0xfee0_0000] {
        if table.translate(&memory, window).is_none() {
            table.map(&mut memory, frames, window, HostPhysAddr::new_truncate(window), PageSize::Size2MiB, device)?;
        }
    }
    // SAFETY: the new tables identity-map all RAM the core uses (its image,
    // stacks, bitmap, boot data) and the APIC, exactly as the boot tables did.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) table.root().as_u64(), options(nostack, preserves_flags));
    }
    Ok(table)
}

/// The ring at `frame` (the start of `ipc::ring::RING_BYTES` of frames the
/// core allocated for a server's ring region and never frees).
pub fn shared_ring(frame: HostPhysAddr) -> &'static ipc::ring::RingMemory {
    let end = frame.as_u64() + ipc::ring::RING_BYTES as u64;
    assert!(frame.is_page_aligned() && end <= IDENTITY_LIMIT, "ring outside the identity map");
    // SAFETY: the frames are identity-mapped, page-aligned (RingMemory needs
    // 64), owned by the core for the ring's whole life, and `RingMemory` is
    // made only of atomics, so any bit pattern is valid and concurrent writes
    // by the server are not undefined behaviour.
    unsafe { &*(frame.as_u64() as *const ipc::ring::RingMemory) }
}

/// The publication area at `frame` (`ipc::publication::PUBLICATION_BYTES`
/// of frames in a server's ring region, which the core never frees);
/// `None` if the frames are not page-aligned inside the identity map.
pub fn shared_publication(frame: HostPhysAddr) -> Option<&'static ipc::publication::PublicationArea> {
    let end = frame.as_u64().checked_add(ipc::publication::PUBLICATION_BYTES as u64)?;
    if !frame.is_page_aligned() || end > IDENTITY_LIMIT {
        return None;
    }
    const _: () = assert!(core::mem::size_of::<ipc::publication::PublicationArea>() <= ipc::publication::PUBLICATION_BYTES);
    // SAFETY: as for `shared_ring`: identity-mapped frames the core owns
    // for the area's whole life, page-aligned (the area needs 64), and
    // `PublicationArea` is made only of atomics, so any bit pattern is
    // valid and concurrent writes by the server are not undefined
    // behaviour.
    Some(unsafe { &*(frame.as_u64() as *const ipc::publication::PublicationArea) })
}

//! The server ABI: address-space layout, entry registers and syscall
//! numbers, shared by the core and the `components` runtime. The prose is in
//! `docs/server-abi.md`.

use serde::{Deserialize, Serialize};

/// Lowest address of the server image.
pub const IMAGE_BASE: u64 = 0x4000_0000;
/// End (exclusive) of the range server segments may occupy.
pub const IMAGE_LIMIT: u64 = 0x5000_0000;
/// Base of the ring region (`to_server` ring, `to_core` ring, argument page,
/// publication area: `crate::publication`).
pub const RING_REGION_BASE: u64 = 0x5000_0000;
/// Base of the grant region (device windows, DMA buffers).
pub const GRANT_REGION_BASE: u64 = 0x5800_0000;
/// Where the device's register page is mapped (read-only), in the grant
/// region.
pub const DEVICE_REGISTERS_BASE: u64 = GRANT_REGION_BASE;
/// Where the DMA region is mapped (read-write), in the grant region.
pub const DMA_REGION_BASE: u64 = GRANT_REGION_BASE + 0x10_0000;
/// Pages of the DMA region granted with a device.
pub const DMA_REGION_PAGES: u64 = 64;
/// Top of the server stack (initial `rsp`).
pub const STACK_TOP: u64 = 0x6000_0000;
/// Size of the server stack.
pub const STACK_SIZE: u64 = 64 * 1024;
/// Longest argument string, without its NUL.
pub const MAX_ARGUMENTS_LEN: usize = 255;
/// Longest `log` syscall payload.
pub const MAX_LOG_LEN: usize = 256;

/// Which server a loaded image is; decides its message protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum ServerKind {
    /// The credit scheduler.
    Scheduler = 0,
    /// The pager.
    Pager = 1,
    /// The test server (echo, and misbehaviour on demand).
    Test = 2,
}

/// Syscall numbers (`rax`).
pub mod syscall {
    /// `exit(code) -> !`.
    pub const EXIT: u64 = 0;
    /// `yield() -> 0`.
    pub const YIELD: u64 = 1;
    /// `wait(timeout_ns) -> WAKE_* bits`.
    pub const WAIT: u64 = 2;
    /// `notify() -> 0`.
    pub const NOTIFY: u64 = 3;
    /// `time() -> ns since boot`.
    pub const TIME: u64 = 4;
    /// `clock_rate() -> TSC ticks per second`: ns since boot are
    /// `rdtsc × 10^9 / rate` (what `time` returns), so a server may read
    /// the clock without a syscall.
    pub const CLOCK_RATE: u64 = 8;
    /// `log(pointer, length) -> 0`.
    pub const LOG: u64 = 5;

    /// `device_info(item) -> value`: what the server was granted of its
    /// device (`DEVICE_*` items below); `-ENODEV` if it has no device,
    /// `-EINVAL` for an unknown item. Only the pager is granted one: the
    /// swap device (a virtio-mmio block device), found by the core at boot.
    pub const DEVICE_INFO: u64 = 6;
    /// `device_write(offset, value) -> 0`: a 32-bit write to the device
    /// register at `offset` (from the device's register base; the server's
    /// mapping of the registers is read-only). The core checks it first:
    /// queue addresses must lie in the server's DMA region, and at every
    /// queue notify each descriptor newly made available must point into the
    /// DMA region. `-EINVAL` for an offset the server may not write or a
    /// misaligned one, `-EFAULT` for an address outside the DMA region,
    /// `-ENODEV` without a device.
    pub const DEVICE_WRITE: u64 = 7;

    /// `device_info` item: virtual address of the device's registers
    /// (mapped read-only, uncached).
    pub const DEVICE_REGISTERS: u64 = 0;
    /// `device_info` item: virtual address of the DMA region (read-write,
    /// physically contiguous, zeroed at every server start).
    pub const DEVICE_DMA: u64 = 1;
    /// `device_info` item: the DMA region's bus (guest-of-QEMU physical)
    /// address, for descriptors and queue registers.
    pub const DEVICE_DMA_BUS: u64 = 2;
    /// `device_info` item: pages in the DMA region.
    pub const DEVICE_DMA_PAGES: u64 = 3;

    /// `-EFAULT`: an address outside the memory the server may name.
    pub const EFAULT: i64 = -14;
    /// `-ENODEV`: the server has no device.
    pub const ENODEV: i64 = -19;
    /// `-EINVAL`: an argument out of range.
    pub const EINVAL: i64 = -22;

    /// `wait` result bit: the `to_server` ring has messages.
    pub const WAKE_MESSAGES: u64 = 1 << 0;
    /// `wait` result bit: the timeout expired.
    pub const WAKE_TIMEOUT: u64 = 1 << 1;
    /// `wait` result bit, fault injection (`hvctl hang`): the runtime spins
    /// without yielding, so the core's hang detection must catch it.
    pub const WAKE_INJECT_HANG: u64 = 1 << 2;
    /// `wait` result bit, fault injection (`hvctl garble`): the runtime sends
    /// malformed messages until the core restarts it.
    pub const WAKE_INJECT_GARBLE: u64 = 1 << 3;

    /// `wait` timeout meaning "no timeout".
    pub const NO_TIMEOUT: u64 = u64::MAX;
}

//! The server ABI: address-space layout, entry registers and syscall
//! numbers, shared by the core and the `components` runtime. The prose is in
//! `docs/server-abi.md`.

use serde::{Deserialize, Serialize};

/// Lowest address of the server image.
pub const IMAGE_BASE: u64 = 0x4000_0000;
/// End (exclusive) of the range server segments may occupy.
pub const IMAGE_LIMIT: u64 = 0x5000_0000;
/// Base of the ring region (`to_server` ring, `to_core` ring, argument page).
pub const RING_REGION_BASE: u64 = 0x5000_0000;
/// Base of the grant region (device windows, DMA buffers).
pub const GRANT_REGION_BASE: u64 = 0x5800_0000;
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
    /// `log(pointer, length) -> 0`.
    pub const LOG: u64 = 5;

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

//! [`Platform`]: what the run loop needs from the machine, so that it runs
//! on the target (the `syscall` instruction) and on the host (a mock).

use ipc::server::syscall::{WAKE_MESSAGES, WAKE_TIMEOUT};

/// Why `wait` returned: the result bits of the `wait` syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake(pub u64);

impl Wake {
    /// The `to_server` ring has messages.
    pub fn messages(self) -> bool {
        self.0 & WAKE_MESSAGES != 0
    }

    /// The timeout expired.
    pub fn timed_out(self) -> bool {
        self.0 & WAKE_TIMEOUT != 0
    }
}

/// The core's syscalls as the run loop uses them (`docs/server-abi.md`),
/// plus the raw operations of [`crate::raw`]. On the target,
/// `components::target::Hardware` executes them; on the host,
/// `components::testing::MockPlatform` records them. `exit` is not here: the run
/// loop returns a [`crate::Stop`] instead and only the target entry exits.
pub trait Platform {
    /// `yield`: lets the core run something else; returns when rescheduled.
    fn yield_now(&mut self);
    /// `wait(timeout_ns)` (`u64::MAX` = no timeout): blocks until the
    /// `to_server` ring has messages or the timeout expires.
    fn wait(&mut self, timeout_ns: u64) -> Wake;
    /// `notify`: tells the core the `to_core` ring has messages.
    fn notify(&mut self);
    /// `time`: nanoseconds since boot.
    fn time(&mut self) -> u64;
    /// `log(pointer, length)`: one line of text (at most
    /// [`ipc::server::MAX_LOG_LEN`] bytes; the runtime never passes more).
    fn log(&mut self, bytes: &[u8]);
    /// `device_info(item)`: what the core granted of this server's device
    /// (`ipc::server::syscall::DEVICE_*` items); negative: `-ENODEV`,
    /// `-EINVAL`.
    fn device_info(&mut self, item: u64) -> i64;
    /// `device_write(offset, value)`: a checked 32-bit write to the device
    /// register at `offset`; 0, or `-EINVAL`, `-EFAULT`, `-ENODEV`.
    fn device_write(&mut self, offset: u64, value: u32) -> i64;

    /// Any syscall, unchecked (see [`crate::raw::Raw::syscall`]).
    fn raw_syscall(&mut self, number: u64, arguments: [u64; 5]) -> i64;
    /// Reads 8 bytes at `address` (see [`crate::raw::Raw::read_probe`]).
    fn read_probe(&mut self, address: u64) -> u64;
    /// Writes the byte at `address` back onto itself (see
    /// [`crate::raw::Raw::write_probe`]).
    fn write_probe(&mut self, address: u64);
    /// Loops without yielding; never returns on the target (see
    /// [`crate::raw::Raw::spin`]).
    fn spin(&mut self);
}

//! Escape hatches that break the rules on purpose. **For the hostile test
//! server only**: it uses them to check that the core catches each kind of
//! misbehaviour (issue #3, §6). A real server never needs them; everything
//! here bypasses the runtime's encoding, its syscall discipline, or both.
//!
//! Each hatch returns if the machine let it happen (a probe that did not
//! fault, a syscall the core answered), so the caller can report that the
//! core failed to stop it. On the target they execute the instruction; on
//! the host, `components::testing::MockPlatform` records them.

use crate::context::{self, Outbox, SendError, State};
use crate::platform::Platform;

/// The hatches, reached through [`crate::Context::raw`].
pub struct Raw<'a> {
    platform: &'a mut dyn Platform,
    outbox: &'a mut dyn Outbox,
    state: &'a mut State,
}

impl core::fmt::Debug for Raw<'_> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.debug_struct("Raw").finish_non_exhaustive()
    }
}

impl<'a> Raw<'a> {
    pub(crate) fn new(
        platform: &'a mut dyn Platform,
        outbox: &'a mut dyn Outbox,
        state: &'a mut State,
    ) -> Self {
        Self {
            platform,
            outbox,
            state,
        }
    }

    /// Puts `bytes` into the `to_core` ring as they are: no envelope, no
    /// encoding (test only: this is how the hostile server sends garbage).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        context::send_bytes(self.platform, self.outbox, self.state, bytes)
    }

    /// The `notify` syscall, now.
    pub fn notify(&mut self) {
        self.state.notify_pending = false;
        self.platform.notify();
    }

    /// Makes syscall `number` with `arguments` in `rdi, rsi, rdx, r10, r8`,
    /// unchecked (test only: unknown numbers and bad pointers are what the
    /// core must refuse). Returns `rax`. No syscall of the server ABI writes
    /// server memory, so whatever the arguments, nothing of this program
    /// changes underneath it.
    pub fn syscall(&mut self, number: u64, arguments: [u64; 5]) -> i64 {
        self.platform.raw_syscall(number, arguments)
    }

    /// Reads 8 bytes at `address` with one `mov` (test only: pointed at
    /// memory the server may not read, it must fault). Returns the value if
    /// the read was allowed.
    pub fn read_probe(&mut self, address: u64) -> u64 {
        self.platform.read_probe(address)
    }

    /// Reads the byte at `address` and writes it back (test only: pointed at
    /// memory the server may not write, the write must fault). If it is
    /// allowed, memory is unchanged, so the program can go on and report
    /// it. Not for memory another party writes concurrently (the rings).
    pub fn write_probe(&mut self, address: u64) {
        self.platform.write_probe(address);
    }

    /// Loops forever without a syscall (test only: the core's timer must
    /// still preempt the server and stop it). Returns only on the host mock.
    pub fn spin(&mut self) {
        self.platform.spin();
    }
}

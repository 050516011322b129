//! # components — the runtime every cairn server runs on
//!
//! A cairn server is a ring-3 program in its own address space that talks to
//! the core only through two postcard rings in shared pages and a handful of
//! syscalls (`docs/server-abi.md`). This crate is everything a server needs
//! besides its policy:
//!
//! * the entry point: [`server!`] defines the code the core enters (`_start`,
//!   with the registers of the server ABI) and hands control to the run loop;
//! * the [`Handler`] trait, in the shape of seL4 Microkit's protection
//!   domains: [`Handler::init`] once, [`Handler::request`] per message from
//!   the core, [`Handler::notified`] on a timeout or a bare wake-up, and
//!   [`Handler::fault`] when the core refused one of the server's messages;
//! * the run loop ([`Runtime`]) the server never writes itself: it drains a
//!   bounded batch of the `to_server` ring per wake, decodes each message
//!   with [`ipc::messages::decode_from_core`] (version and generation
//!   checked; a malformed message is logged, counted and skipped), calls the
//!   handler, sends what the handler sent through the `to_core` ring,
//!   notifies the core once per batch and waits with the handler's timeout;
//! * the [`Context`] a handler works through: its instance (generation,
//!   kind, argument string), sending, timeouts, the clock and logging
//!   ([`LogLine`] formats without an allocator);
//! * the syscalls (target only): `exit`, `yield`, `wait`, `notify`, `time`,
//!   `log`, `device_info`, `device_write`, behind the [`Platform`] trait so
//!   the run loop also runs on the host against a mock (module `testing`,
//!   feature `testing`);
//! * device access ([`device`], through [`Context::device`]): volatile reads
//!   of the read-only register page, checked register writes through the
//!   core, and bounds-checked copies and volatile accesses of the DMA region;
//! * [`StaticCell`]: a `static` taken `&'static mut` once, for state too big
//!   for the stack;
//! * a panic handler (target only) that logs `panic at FILE:LINE: MESSAGE`
//!   and exits with [`exit_code::PANIC`]: the core then restarts the server;
//! * `server.ld`, the linker script of every server binary (image at
//!   [`ipc::server::IMAGE_BASE`], separate page-aligned R+X, R and R+W
//!   segments). A server crate's build script reads its path from
//!   `DEP_COMPONENTS_LINKER_SCRIPT` (see `test-server/build.rs`);
//! * [`raw`]: escape hatches that break the rules on purpose (raw bytes into
//!   the ring, arbitrary syscalls, memory probes, spinning), for the hostile
//!   test server only.
//!
//! Principles: the server side's only `unsafe` is here: in the target-only
//! module that executes `syscall`, builds the ring views from the entry
//! registers and reads the argument page, in [`device`] (raw volatile
//! accesses to the granted register page and DMA region) and in
//! [`StaticCell`]; each block has its `// SAFETY:`.
//! Everything else is ordinary safe code that builds and tests on the host.
//! No allocator, and nothing from the core is trusted: its messages are
//! decoded with bounds, a broken ring ends the server cleanly
//! ([`exit_code::CORRUPT_RING`]) instead of panicking.
//!
//! Not in this crate: any server's policy, the wire contract (messages,
//! ring, syscall numbers: [`ipc`]), and anything of the core's side.
//! Logging is text through the `log` syscall, which is what the core
//! forwards today; defmt frames are not produced here.

#![cfg_attr(not(test), no_std)]

#[cfg(all(feature = "testing", not(test)))]
extern crate std;

mod cell;
mod context;
pub mod device;
mod handler;
mod log;
mod platform;
pub mod raw;
mod runtime;
#[cfg(target_os = "none")]
#[doc(hidden)]
pub mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use cell::StaticCell;
pub use context::{Context, SendError, Statistics};
pub use device::{Device, DeviceError, DeviceGrant};
pub use handler::{FromCore, Handler};
pub use log::LogLine;
pub use platform::{Platform, Wake};
pub use runtime::{Instance, Runtime, Stop, BATCH_LIMIT, SEND_ATTEMPTS};

/// Exit codes the runtime uses (the `exit` syscall's argument); the core
/// reports the code and restarts the server.
pub mod exit_code {
    /// A panic: the panic handler logged where, then exited.
    pub const PANIC: u64 = 101;
    /// A ring's indices were out of range (the core's side corrupted the
    /// ring); nothing more can be read or sent.
    pub const CORRUPT_RING: u64 = 102;
    /// The entry registers do not match the server ABI (ring region or
    /// argument pointer elsewhere, generation not a `u32`).
    pub const BAD_ENTRY: u64 = 103;
}

/// Defines a server binary's entry point: the core enters `_start` (in this
/// crate) with the registers of `docs/server-abi.md`, which calls the
/// `server_main` this macro defines; that builds the [`Instance`] and the
/// ring views, constructs the handler with `$constructor` (a function or
/// closure taking nothing and returning the [`Handler`]) and runs the loop
/// until the handler stops or a ring breaks, then exits. Expands to nothing
/// on the host, so a crate's host build gets no entry point from it.
///
/// ```ignore
/// #![cfg_attr(target_os = "none", no_std, no_main)]
/// components::server!(my_server::MyHandler::new);
/// ```
#[macro_export]
macro_rules! server {
    ($constructor:expr) => {
        /// Called by `_start` with the entry registers (rdi, rsi, rdx, rcx).
        #[cfg(target_os = "none")]
        #[no_mangle]
        extern "C" fn server_main(generation: u64, ring_base: u64, kind: u64, arguments: u64) -> ! {
            $crate::target::start(generation, ring_base, kind, arguments, $constructor)
        }
    };
}

//! # ipc — every wire contract of cairn, and nothing else
//!
//! Anything that crosses a privilege or machine boundary is defined here, once:
//!
//! * [`boot`]: the boot bundle the host runner (or, later, GRUB) hands the core:
//!   a postcard-encoded [`boot::Manifest`] followed by the guest and server images.
//! * [`hypercall`]: the guest-facing hypercall ABI. It is Xen's (numbers, layouts,
//!   error codes are taken from Xen's public headers) so unmodified PV-aware
//!   guests work.
//! * [`pvh`]: the PVH boot ABI (start info, memory map, ELF note) the core
//!   is booted with and boots its guests with.
//! * [`server`]: the server ABI (address space, entry, syscall numbers).
//! * [`ring`]: the SPSC message ring in the pages a server shares with the core.
//! * [`publication`]: the tables a server writes into shared memory for the
//!   core to read when it needs them (the scheduler's credits).
//! * [`messages`]: the envelope and per-server message enums carried in the
//!   rings, and the one validating decode path for server input.
//! * [`control`]: the host ↔ core control protocol (`hvctl` on COM2):
//!   requests, replies, errors, their COBS framing and their validation.
//! * [`fuzzing`]: the bodies of the fuzz targets for those decoders.
//! * [`exit_status`]: what the core writes to QEMU's isa-debug-exit port.
//!
//! Principles: every type has a fixed maximum encoded size, decoding never
//! allocates, and decoding untrusted bytes returns an error, never panics.
//!
//! Not in this crate: any I/O, any policy, anything that only one side uses.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(all(feature = "std", not(test)))]
extern crate std;

pub mod boot;
pub mod control;
pub mod exit_status;
pub mod fuzzing;
pub mod hypercall;
pub mod messages;
pub mod publication;
pub mod pvh;
pub mod ring;
pub mod server;

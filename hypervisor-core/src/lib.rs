//! # hypervisor-core — the pure half of cairn's privileged core
//!
//! cairn's core only switches contexts and handles VM exits; scheduling,
//! paging and idle policy live in deprivileged servers. This library holds
//! every part of the core that is plain logic, so it is tested on the host:
//!
//! * [`addr`]: `HostPhysAddr` / `GuestPhysAddr`, never mixed up.
//! * [`frame`]: the physical frame allocator, built from the boot memory map.
//! * [`paging`]: 4-level page tables, used both for the core's own address
//!   space and for every guest's nested page table (NPT).
//! * [`elf`]: the validating ELF/PVH image loader.
//! * [`exit`]: decoding an SVM `#VMEXIT`, once, into [`exit::VmExit`].
//! * [`instruction`]: the small x86 decoder for the `MOV`s a guest makes to
//!   emulated MMIO (the xAPIC), since TCG's SVM has no decode assists.
//! * [`vcpu`]: handling the decoded exits (CPUID filter, MSR allow-list, port
//!   I/O, hypercalls) against a vCPU described by a trait.
//! * [`cpuid`], [`msr`], [`uart`], [`console`], [`guest_memory`]: the pieces
//!   `vcpu` is built from.
//! * [`halt_poll`]: KVM-style adaptive halt polling (window and statistics).
//! * [`lapic`]: the virtual local APIC (xAPIC registers, one-shot, periodic
//!   and TSC-deadline timer, interrupt priority, IPIs), one per vCPU.
//! * [`apic_access`]: how guests reach it: MMIO to the APIC page decoded and
//!   emulated, interrupt injection or an interrupt window at VM entry, HLT
//!   against a pending or armed interrupt, IPI routing, `IA32_TSC_DEADLINE`.
//! * [`round_robin`]: the built-in scheduler the core uses when no scheduler
//!   server has published decisions.
//! * [`scheduler_events`]: what the core has not told the scheduler server
//!   yet, as a message batch or a bookkeeping log.
//!
//! Principles: no heap, no `unsafe` (the kernel binary's `arch` module is the
//! only place that touches hardware), and every value a guest or a server
//! hands the core is an allegation, checked here before it is used.
//!
//! Not in this crate: the boot path, SVM instructions, interrupt handling,
//! anything with inline assembly (see `src/arch/` of the kernel binary).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod addr;
pub mod apic_access;
pub mod console;
pub mod cpuid;
pub mod dma_guard;
pub mod elf;
pub mod exit;
pub mod frame;
pub mod frame_state;
pub mod guest_memory;
pub mod halt_poll;
pub mod injector;
pub mod instruction;
pub mod lapic;
pub mod msr;
pub mod paging;
pub mod round_robin;
pub mod scheduler_events;
pub mod server;
pub mod uart;
pub mod vcpu;

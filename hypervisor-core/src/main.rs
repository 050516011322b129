//! The cairn core, as a bootable image.
//!
//! `arch` is the only module with `unsafe`: boot, descriptor tables,
//! interrupts, the local APIC, SVM and physical memory access. `kernel`
//! builds domains and runs them, in safe code, on top of `arch` and of the
//! pure `hypervisor_core` library. On the host this file builds to a stub so
//! the workspace builds and tests everywhere.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
#[allow(unsafe_code)]
mod arch;
#[cfg(target_os = "none")]
mod kernel;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hypervisor-core is a kernel image: build it with --target x86_64-unknown-none");
    std::process::exit(1);
}

//! The core's path for a guest access to its local APIC page: fetch and
//! decode the instruction at RIP, the register access on the virtual APIC,
//! then interrupt delivery, HLT and IPIs (`apic_access::fuzz_mmio_access`;
//! `cargo test -p hypervisor-core` runs the same body over random inputs in
//! hypervisor-core/tests/apic_access_fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = hypervisor_core::apic_access::fuzz_mmio_access(data);
});

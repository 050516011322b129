//! The CPUID filter: what a guest sees of the host CPU, and cairn's own
//! hypervisor leaves.
//!
//! Host values pass through a mask: features the core does not virtualize
//! (SVM/VMX, MONITOR, x2APIC, XSAVE/AVX state, RDTSCP, MTRR, performance
//! counters) are hidden, the "hypervisor present" bit is set, the APIC ID
//! is the vCPU's, and the virtual xAPIC with its TSC-deadline timer
//! (`crate::lapic`) is advertised. Leaves `0x4000_0000..=0x4000_0002` are Xen's (signature,
//! version, hypercall-page MSR; `xen/include/public/arch-x86/cpuid.h`), and
//! `0x4000_0100..=0x4000_0101` are cairn's own (signature, ABI version).

use ipc::hypercall::{
    signature_registers, CPUID_CAIRN_BASE, CPUID_CAIRN_SIGNATURE, CPUID_XEN_BASE,
    CPUID_XEN_SIGNATURE, HYPERCALL_PAGE_MSR, REPORTED_XEN_VERSION,
};

/// The four result registers of CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Version of cairn's own guest ABI, reported at `CPUID_CAIRN_BASE + 1`.
pub const CAIRN_ABI_VERSION: u32 = 1;

const LEAF1_ECX_HIDDEN: u32 = (1 << 3) // MONITOR/MWAIT
    | (1 << 5)  // VMX
    | (1 << 21) // x2APIC
    | (1 << 26) // XSAVE
    | (1 << 27) // OSXSAVE
    | (1 << 28); // AVX
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// TSC-deadline mode of the virtual local APIC's timer (`crate::lapic`),
/// offered whatever the host has.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// The on-chip APIC: every vCPU has a virtual xAPIC at 0xFEE0_0000.
const LEAF1_EDX_APIC: u32 = 1 << 9;
const LEAF1_EDX_HIDDEN: u32 = (1 << 12) // MTRR
    | (1 << 22); // ACPI thermal MSRs
/// Leaf 7 EBX features safe to pass through (no extended state needed).
const LEAF7_EBX_ALLOWED: u32 = (1 << 0) // FSGSBASE
    | (1 << 3) // BMI1
    | (1 << 7) // SMEP
    | (1 << 8) // BMI2
    | (1 << 9) // ERMS
    | (1 << 18) // RDSEED
    | (1 << 19) // ADX
    | (1 << 20) // SMAP
    | (1 << 23) // CLFLUSHOPT
    | (1 << 24); // CLWB
const EXT1_ECX_HIDDEN: u32 = (1 << 2) // SVM
    | (1 << 23); // PerfCtrExtCore
const EXT1_EDX_HIDDEN: u32 = 1 << 27; // RDTSCP (TSC_AUX is not virtualized)

/// What a vCPU sees for `leaf`/`subleaf`, given what the host CPU returned.
/// `vcpu` is the vCPU's index (its APIC ID), `vcpus` the domain's count and
/// `tsc_khz` the TSC rate reported in Xen's time leaf.
pub fn filter(leaf: u32, subleaf: u32, host: CpuidResult, vcpu: u8, vcpus: u8, tsc_khz: u32) -> CpuidResult {
    let zero = CpuidResult::default();
    match leaf {
        0x0 => CpuidResult { eax: host.eax.min(0xd), ..host },
        0x1 => CpuidResult {
            eax: host.eax,
            // APIC ID in 31:24, logical processor count in 23:16.
            ebx: (host.ebx & 0x0000_ffff) | (u32::from(vcpu) << 24) | (u32::from(vcpus) << 16),
            ecx: (host.ecx & !LEAF1_ECX_HIDDEN) | LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE,
            edx: (host.edx & !LEAF1_EDX_HIDDEN) | LEAF1_EDX_APIC,
        },
        0x7 if subleaf == 0 => CpuidResult { eax: 0, ebx: host.ebx & LEAF7_EBX_ALLOWED, ecx: 0, edx: 0 },
        0x2 | 0x4 => host,
        0x8000_0000 => CpuidResult { eax: host.eax.min(0x8000_0008), ..host },
        0x8000_0001 => CpuidResult {
            ecx: host.ecx & !EXT1_ECX_HIDDEN,
            edx: host.edx & !EXT1_EDX_HIDDEN,
            ..host
        },
        0x8000_0002..=0x8000_0006 => host,
        // Address sizes only; the feature bits in EBX name speculation MSRs
        // the core does not virtualize.
        0x8000_0008 => CpuidResult { eax: host.eax, ..zero },
        base if base == CPUID_XEN_BASE => {
            let [ebx, ecx, edx] = signature_registers(CPUID_XEN_SIGNATURE);
            CpuidResult { eax: CPUID_XEN_BASE + 3, ebx, ecx, edx }
        }
        version if version == CPUID_XEN_BASE + 1 => CpuidResult {
            eax: (u32::from(REPORTED_XEN_VERSION.0) << 16) | u32::from(REPORTED_XEN_VERSION.1),
            ..zero
        },
        pages if pages == CPUID_XEN_BASE + 2 => {
            CpuidResult { eax: 1, ebx: HYPERCALL_PAGE_MSR, ..zero }
        }
        // Xen's time leaf, subleaf 0: ECX = TSC kHz (the guest's system time
        // is `tsc * 1e6 / tsc_khz` ns; see `ipc::hypercall::CPUID_XEN_TIME_LEAF`).
        time if time == CPUID_XEN_BASE + 3 && subleaf == 0 => CpuidResult { ecx: tsc_khz, ..zero },
        base if base == CPUID_CAIRN_BASE => {
            let [ebx, ecx, edx] = signature_registers(CPUID_CAIRN_SIGNATURE);
            CpuidResult { eax: CPUID_CAIRN_BASE + 1, ebx, ecx, edx }
        }
        abi if abi == CPUID_CAIRN_BASE + 1 => CpuidResult { eax: CAIRN_ABI_VERSION, ..zero },
        _ => zero,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: CpuidResult = CpuidResult { eax: 0x10, ebx: u32::MAX, ecx: u32::MAX, edx: u32::MAX };

    #[test]
    fn hides_virtualization_and_sets_the_hypervisor_bit() {
        let leaf1 = filter(1, 0, ALL, 3, 4, 0);
        assert_eq!(leaf1.ecx & (1 << 5), 0, "VMX hidden");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!(leaf1.ebx >> 24, 3, "APIC ID is the vCPU index");
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(filter(0x8000_0001, 0, ALL, 0, 1, 2_600_000).ecx & (1 << 2), 0, "SVM hidden");
        assert_eq!(filter(0x8000_000a, 0, ALL, 0, 1, 2_600_000), CpuidResult::default(), "no SVM leaf");
        assert_eq!(filter(0, 0, ALL, 0, 1, 2_600_000).eax, 0xd, "max basic leaf clamped");
        assert_eq!(filter(7, 0, ALL, 0, 1, 2_600_000).ebx & (1 << 5), 0, "AVX2 hidden");
    }

    #[test]
    fn advertises_the_virtual_apic_and_its_tsc_deadline_timer() {
        let leaf1 = filter(1, 0, CpuidResult::default(), 0, 1, 2_600_000);
        assert_ne!(leaf1.edx & (1 << 9), 0, "APIC");
        assert_ne!(leaf1.ecx & (1 << 24), 0, "TSC-deadline");
        assert_eq!(filter(1, 0, ALL, 0, 1, 2_600_000).ecx & (1 << 21), 0, "x2APIC stays hidden");
    }

    #[test]
    fn reports_xen_and_cairn_leaves() {
        let xen = filter(0x4000_0000, 0, CpuidResult::default(), 0, 1, 2_600_000);
        let mut signature = [0u8; 12];
        signature[..4].copy_from_slice(&xen.ebx.to_le_bytes());
        signature[4..8].copy_from_slice(&xen.ecx.to_le_bytes());
        signature[8..].copy_from_slice(&xen.edx.to_le_bytes());
        assert_eq!(&signature, b"XenVMMXenVMM");
        assert_eq!(xen.eax, 0x4000_0003);
        assert_eq!(filter(0x4000_0003, 0, ALL, 0, 1, 2_600_000).ecx, 2_600_000);
        assert_eq!(filter(0x4000_0001, 0, ALL, 0, 1, 2_600_000).eax, 0x0004_0011);
        assert_eq!(filter(0x4000_0002, 0, ALL, 0, 1, 2_600_000).ebx, 0x4000_0000);
        let cairn = filter(0x4000_0100, 0, ALL, 0, 1, 2_600_000);
        assert_eq!(cairn.ebx.to_le_bytes(), *b"Cair");
        assert_eq!(filter(0x4000_0101, 0, ALL, 0, 1, 2_600_000).eax, CAIRN_ABI_VERSION);
        assert_eq!(filter(0x4000_0050, 0, ALL, 0, 1, 2_600_000), CpuidResult::default());
    }
}

//! The MSR allow-list.
//!
//! MSRs whose guest copy lives in the VMCB and is switched by VMLOAD/VMSAVE
//! (FS/GS bases, the SYSCALL and SYSENTER MSRs) pass through without an exit:
//! [`PASS_THROUGH`]. The rest exit, and [`read`]/[`write`] decide: an MSR on
//! the allow-list is emulated, any other gets `#GP(0)` injected, as on a CPU
//! that lacks it. `IA32_TSC_DEADLINE` (0x6E0) is not on this list: it
//! belongs to the vCPU's local APIC, and the core hands it to
//! `apic_access::read_msr`/`write_msr` before this module sees it.

use ipc::hypercall::HYPERCALL_PAGE_MSR;

/// `IA32_TIME_STAMP_COUNTER`.
pub const TSC: u32 = 0x10;
/// `IA32_APIC_BASE`.
pub const APIC_BASE: u32 = 0x1b;
/// `IA32_BIOS_SIGN_ID` (microcode revision).
pub const MICROCODE_REVISION: u32 = 0x8b;
/// `IA32_MISC_ENABLE`.
pub const MISC_ENABLE: u32 = 0x1a0;
/// `IA32_PAT`.
pub const PAT: u32 = 0x277;
/// `EFER`.
pub const EFER: u32 = 0xc000_0080;

/// MSRs that need no exit: the VMCB holds the guest's copy.
pub const PASS_THROUGH: [u32; 10] = [
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
];

/// EFER bits a guest may set: SCE, LME, LMA, NXE.
pub const EFER_GUEST_BITS: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);
/// `EFER.SVME`: forced on in the VMCB (VMRUN requires it), hidden from the guest.
pub const EFER_SVME: u64 = 1 << 12;

/// The guest state an MSR access may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrContext {
    /// The guest's EFER as stored in the VMCB.
    pub efer: u64,
    /// The guest's PAT as stored in the VMCB.
    pub pat: u64,
    /// The vCPU index (vCPU 0 is the bootstrap processor).
    pub vcpu: u8,
    /// The guest's view of the time-stamp counter.
    pub tsc: u64,
}

/// What an allowed WRMSR changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrWrite {
    /// Accepted, no effect.
    Ignore,
    /// New EFER for the VMCB (SVME already added).
    Efer(u64),
    /// New guest PAT.
    Pat(u64),
    /// Install the hypercall page at this guest-physical page.
    HypercallPage(u64),
}

/// The guest gets `#GP(0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneralProtection;

/// RDMSR.
pub fn read(msr: u32, context: &MsrContext) -> Result<u64, GeneralProtection> {
    match msr {
        EFER => Ok(context.efer & !EFER_SVME),
        PAT => Ok(context.pat),
        TSC => Ok(context.tsc),
        // xAPIC at its architectural base, globally enabled; BSP flag on vCPU 0.
        APIC_BASE => Ok(0xfee0_0000 | (1 << 11) | if context.vcpu == 0 { 1 << 8 } else { 0 }),
        MICROCODE_REVISION => Ok(0),
        // Fast strings enabled, nothing else.
        MISC_ENABLE => Ok(1),
        _ => Err(GeneralProtection),
    }
}

fn valid_pat(value: u64) -> bool {
    // Each of the 8 entries must be UC(0), WC(1), WT(4), WP(5), WB(6) or UC-(7).
    value.to_le_bytes().iter().all(|&entry| matches!(entry, 0 | 1 | 4 | 5 | 6 | 7))
}

/// WRMSR.
pub fn write(msr: u32, value: u64, context: &MsrContext) -> Result<MsrWrite, GeneralProtection> {
    match msr {
        EFER => {
            if value & !EFER_GUEST_BITS != 0 {
                return Err(GeneralProtection);
            }
            // LMA is read-only: keep the current value, the CPU sets it.
            let lma = 1 << 10;
            Ok(MsrWrite::Efer((value & !lma) | (context.efer & lma) | EFER_SVME))
        }
        PAT if valid_pat(value) => Ok(MsrWrite::Pat(value)),
        PAT => Err(GeneralProtection),
        APIC_BASE if value == read(APIC_BASE, context)? => Ok(MsrWrite::Ignore),
        MISC_ENABLE | MICROCODE_REVISION => Ok(MsrWrite::Ignore),
        // Xen: the low 12 bits select the page index; only page 0 exists.
        HYPERCALL_PAGE_MSR if value & 0xfff == 0 => Ok(MsrWrite::HypercallPage(value)),
        _ => Err(GeneralProtection),
    }
}

/// Sets up an MSR permission map (8 KiB, two bits per MSR for the three
/// architectural ranges, AMD APM vol. 2 §15.11): every MSR intercepted except
/// [`PASS_THROUGH`].
pub fn fill_permission_map(map: &mut [u8; 8192]) {
    map.fill(0xff);
    for msr in PASS_THROUGH {
        if let Some(bit) = permission_bit(msr) {
            // Clear both the read (2n) and the write (2n+1) intercept.
            map[bit / 8] &= !(0b11 << (bit % 8));
        }
    }
}

/// Index of the read-intercept bit of `msr` in the permission map.
pub fn permission_bit(msr: u32) -> Option<usize> {
    let (range_base, byte_offset) = match msr {
        0x0000_0000..=0x0000_1fff => (0x0000_0000, 0x0000),
        0xc000_0000..=0xc000_1fff => (0xc000_0000, 0x0800),
        0xc001_0000..=0xc001_1fff => (0xc001_0000, 0x1000),
        _ => return None,
    };
    Some(byte_offset * 8 + ((msr - range_base) as usize) * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: MsrContext = MsrContext { efer: EFER_SVME | 0x500, pat: 0x0007_0406_0007_0406, vcpu: 0, tsc: 99 };

    #[test]
    fn efer_hides_svme_and_rejects_reserved_bits() {
        assert_eq!(read(EFER, &CONTEXT), Ok(0x500));
        assert_eq!(write(EFER, 0x101, &CONTEXT), Ok(MsrWrite::Efer(0x501 | EFER_SVME)));
        assert_eq!(write(EFER, EFER_SVME, &CONTEXT), Err(GeneralProtection));
        assert_eq!(write(EFER, 1 << 20, &CONTEXT), Err(GeneralProtection));
    }

    #[test]
    fn unknown_msrs_fault_and_known_ones_emulate() {
        assert_eq!(read(0xc001_0015, &CONTEXT), Err(GeneralProtection));
        assert_eq!(write(0x48, 1, &CONTEXT), Err(GeneralProtection));
        assert_eq!(read(APIC_BASE, &CONTEXT), Ok(0xfee0_0900));
        assert_eq!(read(APIC_BASE, &MsrContext { vcpu: 1, ..CONTEXT }), Ok(0xfee0_0800));
        assert_eq!(read(TSC, &CONTEXT), Ok(99));
        assert_eq!(write(PAT, 0x0606_0606_0606_0606, &CONTEXT), Ok(MsrWrite::Pat(0x0606_0606_0606_0606)));
        assert_eq!(write(PAT, 0x02, &CONTEXT), Err(GeneralProtection));
        assert_eq!(write(0x4000_0000, 0x7000, &CONTEXT), Ok(MsrWrite::HypercallPage(0x7000)));
        assert_eq!(write(0x4000_0000, 0x7001, &CONTEXT), Err(GeneralProtection));
    }

    #[test]
    fn permission_map_passes_only_vmcb_backed_msrs() {
        let mut map = [0u8; 8192];
        fill_permission_map(&mut map);
        let intercepted = |msr: u32| {
            let bit = permission_bit(msr).unwrap();
            (map[bit / 8] >> (bit % 8)) & 0b11
        };
        assert_eq!(intercepted(0xc000_0100), 0, "FS_BASE passes");
        assert_eq!(intercepted(0x174), 0, "SYSENTER_CS passes");
        assert_eq!(intercepted(EFER), 0b11, "EFER exits");
        assert_eq!(intercepted(APIC_BASE), 0b11);
        assert_eq!(permission_bit(0xc000_0080), Some(0x800 * 8 + 0x80 * 2));
        assert_eq!(permission_bit(0x4000_0000), None, "outside the map: always exits");
    }
}

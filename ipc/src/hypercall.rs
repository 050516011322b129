//! The guest hypercall ABI, which is Xen's.
//!
//! Numbers and layouts come from Xen's public headers (`xen/include/public/xen.h`,
//! `sched.h`, `version.h`, `arch-x86/cpuid.h`), so a PV-aware guest written for
//! Xen finds what it expects. Calling convention (HVM/PVH, AMD): the guest
//! executes `VMMCALL` (directly or through the hypercall page) with
//!
//! | mode    | number | arg1 | arg2 | arg3 | arg4 | arg5 | result |
//! |---------|--------|------|------|------|------|------|--------|
//! | 64-bit  | rax    | rdi  | rsi  | rdx  | r10  | r8   | rax    |
//! | 32-bit  | eax    | ebx  | ecx  | edx  | esi  | edi  | eax    |
//!
//! Pointer arguments are guest-virtual addresses. Results are `0` or a value
//! on success and a negative Xen errno on failure.

/// `__HYPERVISOR_memory_op`.
pub const MEMORY_OP: u64 = 12;
/// `__HYPERVISOR_set_timer_op`.
pub const SET_TIMER_OP: u64 = 15;
/// `__HYPERVISOR_xen_version`.
pub const XEN_VERSION: u64 = 17;
/// `__HYPERVISOR_console_io`.
pub const CONSOLE_IO: u64 = 18;
/// `__HYPERVISOR_vcpu_op`.
pub const VCPU_OP: u64 = 24;
/// `__HYPERVISOR_sched_op`.
pub const SCHED_OP: u64 = 29;

/// `CONSOLEIO_write`: arg2 = byte count, arg3 = buffer pointer.
pub const CONSOLEIO_WRITE: u64 = 0;

/// `SCHEDOP_yield`.
pub const SCHEDOP_YIELD: u64 = 0;
/// `SCHEDOP_block`.
pub const SCHEDOP_BLOCK: u64 = 1;
/// `SCHEDOP_shutdown`: arg2 points at a `struct sched_shutdown { uint32_t reason; }`.
pub const SCHEDOP_SHUTDOWN: u64 = 2;
/// `SCHEDOP_poll`.
pub const SCHEDOP_POLL: u64 = 3;

/// `VCPUOP_set_singleshot_timer`: arg2 = vCPU id (must be the caller),
/// arg3 points at `struct vcpu_set_singleshot_timer { u64 timeout_abs_ns; u32 flags; }`.
pub const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
/// `VCPUOP_stop_singleshot_timer`: arg2 = vCPU id.
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u64 = 9;
/// `VCPU_SSHOTTMR_future`: fail with `-ETIME` if the deadline has passed.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1;
/// Most ports `SCHEDOP_poll` accepts (Xen's limit).
pub const MAX_POLL_PORTS: u32 = 128;
/// Event-channel ports a 64-bit guest can name (2-level ABI: 64 × 64).
pub const EVENT_CHANNEL_PORTS: u32 = 4096;

/// `XENVER_version`: returns `major << 16 | minor`.
pub const XENVER_VERSION: u64 = 0;

/// Shutdown reasons (`SHUTDOWN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`: the domain is done.
    Poweroff = 0,
    /// `SHUTDOWN_reboot`.
    Reboot = 1,
    /// `SHUTDOWN_suspend`.
    Suspend = 2,
    /// `SHUTDOWN_crash`: the guest reports it crashed.
    Crash = 3,
    /// `SHUTDOWN_watchdog`.
    Watchdog = 4,
}

impl ShutdownReason {
    /// Decodes a guest-supplied reason; unknown values are refused.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Poweroff,
            1 => Self::Reboot,
            2 => Self::Suspend,
            3 => Self::Crash,
            4 => Self::Watchdog,
            _ => return None,
        })
    }
}

/// Xen errno values (`xen/include/public/errno.h`), returned negated.
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i64 = 1;
    /// Bad address (a pointer argument did not translate).
    pub const EFAULT: i64 = 14;
    /// Invalid argument.
    pub const EINVAL: i64 = 22;
    /// Function not implemented.
    pub const ENOSYS: i64 = 38;
    /// Timer deadline already passed (`VCPU_SSHOTTMR_future`).
    pub const ETIME: i64 = 62;
}

/// The Xen version cairn reports through `XENVER_version` and CPUID.
pub const REPORTED_XEN_VERSION: (u16, u16) = (4, 17);

/// First CPUID leaf of the Xen-compatible hypervisor range.
pub const CPUID_XEN_BASE: u32 = 0x4000_0000;
/// The signature at `CPUID_XEN_BASE` (EBX, ECX, EDX).
pub const CPUID_XEN_SIGNATURE: &[u8; 12] = b"XenVMMXenVMM";
/// cairn's own CPUID leaves (signature, then build information).
pub const CPUID_CAIRN_BASE: u32 = 0x4000_0100;
/// The signature at `CPUID_CAIRN_BASE` (EBX, ECX, EDX).
pub const CPUID_CAIRN_SIGNATURE: &[u8; 12] = b"CairnCairnHV";
/// The MSR a guest writes a page's guest-physical address to, to get the
/// hypercall page there (reported by CPUID leaf `CPUID_XEN_BASE + 2`).
pub const HYPERCALL_PAGE_MSR: u32 = 0x4000_0000;
/// Bytes per hypercall stub in the hypercall page; stub `n` is at `32 * n`.
pub const HYPERCALL_STUB_SIZE: usize = 32;

/// Guest system time, the clock of `set_timer_op` and the single-shot
/// timer: nanoseconds derived from the TSC, `tsc * 1_000_000 / tsc_khz`,
/// where `tsc_khz` is reported in ECX of CPUID leaf `CPUID_XEN_BASE + 3`
/// (subleaf 0), as Xen reports it.
pub const CPUID_XEN_TIME_LEAF: u32 = CPUID_XEN_BASE + 3;

/// Splits a 12-byte CPUID signature into the (EBX, ECX, EDX) words.
pub const fn signature_registers(signature: &[u8; 12]) -> [u32; 3] {
    let s = signature;
    [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_splits_like_xen() {
        let [ebx, ecx, edx] = signature_registers(CPUID_XEN_SIGNATURE);
        // Xen's own constants: XEN_CPUID_SIGNATURE_EBX/ECX/EDX.
        assert_eq!((ebx, ecx, edx), (0x566e_6558, 0x65584d4d, 0x4d4d566e));
    }

    #[test]
    fn shutdown_reasons_decode() {
        assert_eq!(ShutdownReason::from_raw(0), Some(ShutdownReason::Poweroff));
        assert_eq!(ShutdownReason::from_raw(3), Some(ShutdownReason::Crash));
        assert_eq!(ShutdownReason::from_raw(5), None);
    }
}

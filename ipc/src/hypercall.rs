//! The guest hypercall ABI, which is Xen's.
//!
//! Numbers and layouts come from Xen's public headers (`xen/include/public/xen.h`,
//! `sched.h`, `version.h`, `vcpu.h`, `hvm/hvm_vcpu.h`, `arch-x86/cpuid.h`), so a PV-aware guest written for
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

/// `VCPUOP_initialise`: arg2 = vCPU id, arg3 points at a
/// `struct vcpu_hvm_context` ([`HvmContext64`]): the state the vCPU starts in.
pub const VCPUOP_INITIALISE: u64 = 0;
/// `VCPUOP_up`: arg2 = vCPU id; makes an initialised vCPU runnable.
pub const VCPUOP_UP: u64 = 1;
/// `VCPUOP_is_up`: arg2 = vCPU id; returns 1 if it is up, else 0.
pub const VCPUOP_IS_UP: u64 = 3;
/// `VCPU_HVM_MODE_32B`: `vcpu_hvm_context.mode` for a 32-bit start state.
pub const VCPU_HVM_MODE_32B: u32 = 0;
/// `VCPU_HVM_MODE_64B`: `vcpu_hvm_context.mode` for a 64-bit (long mode)
/// start state.
pub const VCPU_HVM_MODE_64B: u32 = 1;
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

/// `XENMEM_decrease_reservation` (`memory_op` command, arg2 points at a
/// [`MemoryReservation`]): gives the listed frames back; returns how many
/// extents were released (a short count or a negative errno on failure).
pub const XENMEM_DECREASE_RESERVATION: u64 = 1;
/// `DOMID_SELF`: the calling domain, the only `domid` a guest may name.
pub const DOMID_SELF: u16 = 0x7ff0;

/// `struct xen_memory_reservation` (`xen/include/public/memory.h`):
///
/// | field | 64-bit guest | 32-bit guest |
/// |---|---|---|
/// | `extent_start` (guest handle to `xen_pfn_t[]`) | 0, 8 bytes | 0, 4 bytes |
/// | `nr_extents` (`xen_ulong_t`) | 8, 8 bytes | 4, 4 bytes |
/// | `extent_order` (`unsigned int`) | 16, 4 bytes | 8, 4 bytes |
/// | `mem_flags` (`unsigned int`) | 20, 4 bytes | 12, 4 bytes |
/// | `domid` (`domid_t`, u16) | 24, 2 bytes | 16, 2 bytes |
/// | size (padded) | 32 | 20 |
///
/// `extent_start` points at `nr_extents` `xen_pfn_t` entries: 8 bytes each
/// for a 64-bit guest, 4 for a 32-bit one. Each names the first gfn of an
/// extent of `1 << extent_order` pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryReservation {
    /// Guest-virtual address of the gfn array.
    pub extent_start: u64,
    /// Number of extents (array entries).
    pub nr_extents: u64,
    /// log2 of the pages per extent.
    pub extent_order: u32,
    /// `XENMEMF_*` flags (unused by `decrease_reservation`).
    pub mem_flags: u32,
    /// The domain; a guest may only name [`DOMID_SELF`].
    pub domid: u16,
}

impl MemoryReservation {
    /// Size of the structure a 64-bit guest passes.
    pub const SIZE_64: usize = 32;
    /// Size of the structure a 32-bit guest passes.
    pub const SIZE_32: usize = 20;

    /// Decodes the structure of a 64-bit (`long_mode`) or 32-bit guest from
    /// little-endian bytes; `None` if shorter than [`SIZE_64`](Self::SIZE_64)
    /// or [`SIZE_32`](Self::SIZE_32).
    pub fn decode(bytes: &[u8], long_mode: bool) -> Option<Self> {
        if bytes.len()
            < if long_mode {
                Self::SIZE_64
            } else {
                Self::SIZE_32
            }
        {
            return None;
        }
        let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        if long_mode {
            Some(Self {
                extent_start: u64_at(0)?,
                nr_extents: u64_at(8)?,
                extent_order: u32_at(16)?,
                mem_flags: u32_at(20)?,
                domid: u16_at(24)?,
            })
        } else {
            Some(Self {
                extent_start: u64::from(u32_at(0)?),
                nr_extents: u64::from(u32_at(4)?),
                extent_order: u32_at(8)?,
                mem_flags: u32_at(12)?,
                domid: u16_at(16)?,
            })
        }
    }

    /// The 64-bit guest layout (padding zeroed).
    pub fn encode_64(&self) -> [u8; Self::SIZE_64] {
        let mut bytes = [0u8; Self::SIZE_64];
        bytes[0..8].copy_from_slice(&self.extent_start.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.nr_extents.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.extent_order.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.mem_flags.to_le_bytes());
        bytes[24..26].copy_from_slice(&self.domid.to_le_bytes());
        bytes
    }
}

/// The 64-bit start state of `VCPUOP_initialise`: `struct vcpu_hvm_context`
/// (`xen/include/public/hvm/hvm_vcpu.h`) with `mode` =
/// [`VCPU_HVM_MODE_64B`], whose union holds `struct vcpu_hvm_x86_64`.
///
/// | field | offset | size |
/// |---|---|---|
/// | `mode` (u32) | 0 | 4 |
/// | `pad` (u32) | 4 | 4 |
/// | `rax`, `rcx`, `rdx`, `rbx`, `rsp`, `rbp`, `rsi`, `rdi` | 8, 16, … 64 | 8 each |
/// | `rip`, `rflags` | 72, 80 | 8 each |
/// | `cr0`, `cr3`, `cr4`, `efer` | 88, 96, 104, 112 | 8 each |
/// | size (the union is as large as `vcpu_hvm_x86_32`, 120 bytes) | | 128 |
///
/// The segments are implied: a vCPU started this way runs in 64-bit mode
/// with flat segments (Xen's rule for `VCPU_HVM_MODE_64B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HvmContext64 {
    /// RAX.
    pub rax: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RBX.
    pub rbx: u64,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl HvmContext64 {
    /// Size of `struct vcpu_hvm_context`, what a guest passes (whatever its mode).
    pub const SIZE: usize = 128;
    /// Offset of the register block (`cpu_regs`).
    const REGISTERS: usize = 8;

    /// The `mode` field of a `struct vcpu_hvm_context` ([`VCPU_HVM_MODE_32B`]
    /// or [`VCPU_HVM_MODE_64B`] if the guest follows the ABI); `None` if
    /// shorter than 4 bytes.
    pub fn mode(bytes: &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?))
    }

    /// Decodes the 64-bit register block of a `struct vcpu_hvm_context` from
    /// little-endian bytes, whatever its `mode` says (check that with
    /// [`mode`](Self::mode)); `None` if shorter than [`SIZE`](Self::SIZE).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        let field = |index: usize| {
            let at = Self::REGISTERS + 8 * index;
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Self {
            rax: field(0)?,
            rcx: field(1)?,
            rdx: field(2)?,
            rbx: field(3)?,
            rsp: field(4)?,
            rbp: field(5)?,
            rsi: field(6)?,
            rdi: field(7)?,
            rip: field(8)?,
            rflags: field(9)?,
            cr0: field(10)?,
            cr3: field(11)?,
            cr4: field(12)?,
            efer: field(13)?,
        })
    }

    /// The whole `struct vcpu_hvm_context` with `mode` =
    /// [`VCPU_HVM_MODE_64B`] (padding and the rest of the union zeroed).
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut bytes = [0u8; Self::SIZE];
        bytes[0..4].copy_from_slice(&VCPU_HVM_MODE_64B.to_le_bytes());
        let fields = [
            self.rax, self.rcx, self.rdx, self.rbx, self.rsp, self.rbp, self.rsi, self.rdi,
            self.rip, self.rflags, self.cr0, self.cr3, self.cr4, self.efer,
        ];
        for (index, value) in fields.iter().enumerate() {
            let at = Self::REGISTERS + 8 * index;
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }
}

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
    /// No such entry (a vCPU id beyond the domain's vCPUs).
    pub const ENOENT: i64 = 2;
    /// Bad address (a pointer argument did not translate).
    pub const EFAULT: i64 = 14;
    /// Already exists (`VCPUOP_initialise` of a vCPU that is up).
    pub const EEXIST: i64 = 17;
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
    fn memory_reservation_layouts() {
        let reservation = MemoryReservation {
            extent_start: 0x1234_5678_9abc,
            nr_extents: 3,
            extent_order: 0,
            mem_flags: 0,
            domid: DOMID_SELF,
        };
        let bytes = reservation.encode_64();
        assert_eq!(&bytes[24..26], &[0xf0, 0x7f]);
        assert_eq!(&bytes[26..], &[0; 6], "padding is zero");
        assert_eq!(MemoryReservation::decode(&bytes, true), Some(reservation));
        assert_eq!(MemoryReservation::decode(&bytes[..25], true), None);

        let mut compat = [0u8; MemoryReservation::SIZE_32];
        compat[0..4].copy_from_slice(&0x8000u32.to_le_bytes());
        compat[4..8].copy_from_slice(&5u32.to_le_bytes());
        compat[8..12].copy_from_slice(&1u32.to_le_bytes());
        compat[16..18].copy_from_slice(&DOMID_SELF.to_le_bytes());
        assert_eq!(
            MemoryReservation::decode(&compat, false),
            Some(MemoryReservation {
                extent_start: 0x8000,
                nr_extents: 5,
                extent_order: 1,
                mem_flags: 0,
                domid: DOMID_SELF
            })
        );
        assert_eq!(MemoryReservation::decode(&compat[..19], false), None);
        assert_eq!((XENMEM_DECREASE_RESERVATION, MEMORY_OP), (1, 12));
    }

    #[test]
    fn hvm_context_layout() {
        // Xen's vcpu.h and hvm_vcpu.h numbers.
        assert_eq!((VCPUOP_INITIALISE, VCPUOP_UP, VCPUOP_IS_UP, VCPU_OP), (0, 1, 3, 24));
        assert_eq!((VCPU_HVM_MODE_32B, VCPU_HVM_MODE_64B), (0, 1));
        // Each field holds its own index + 1 (rax = 1 … efer = 14).
        let context = HvmContext64 {
            rax: 1, rcx: 2, rdx: 3, rbx: 4, rsp: 5, rbp: 6, rsi: 7, rdi: 8,
            rip: 9, rflags: 10, cr0: 11, cr3: 12, cr4: 13, efer: 14,
        };
        let bytes = context.encode();
        assert_eq!(bytes.len(), 128, "sizeof(struct vcpu_hvm_context)");
        assert_eq!(HvmContext64::mode(&bytes), Some(VCPU_HVM_MODE_64B));
        assert_eq!(&bytes[4..8], &[0; 4], "pad");
        let at = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap());
        let offsets = [
            ("rax", 8), ("rcx", 16), ("rdx", 24), ("rbx", 32), ("rsp", 40), ("rbp", 48), ("rsi", 56),
            ("rdi", 64), ("rip", 72), ("rflags", 80), ("cr0", 88), ("cr3", 96), ("cr4", 104), ("efer", 112),
        ];
        for (index, (name, offset)) in offsets.iter().enumerate() {
            assert_eq!(at(*offset), index as u64 + 1, "{name} at {offset}");
        }
        assert_eq!(&bytes[120..], &[0; 8], "the rest of the union");
        assert_eq!(HvmContext64::decode(&bytes), Some(context));
        assert_eq!(HvmContext64::decode(&bytes[..127]), None, "the whole structure is read");
        assert_eq!(HvmContext64::mode(&bytes[..3]), None);
        let mut compat = bytes;
        compat[0..4].copy_from_slice(&VCPU_HVM_MODE_32B.to_le_bytes());
        assert_eq!(HvmContext64::mode(&compat), Some(0));
        assert_eq!((errno::ENOENT, errno::EEXIST), (2, 17));
    }

    #[test]
    fn shutdown_reasons_decode() {
        assert_eq!(ShutdownReason::from_raw(0), Some(ShutdownReason::Poweroff));
        assert_eq!(ShutdownReason::from_raw(3), Some(ShutdownReason::Crash));
        assert_eq!(ShutdownReason::from_raw(5), None);
    }
}

//! Decoding an SVM `#VMEXIT`, once, into [`VmExit`].
//!
//! The arch layer copies four raw VMCB fields into a [`RawExit`]; [`decode`]
//! turns them into a named-field enum that the rest of the core matches on.
//! Exit codes and field layouts follow the AMD64 Architecture Programmer's
//! Manual, vol. 2, appendix C ("SVM intercept exit codes") and §15.
//!
//! Under QEMU TCG there is no next-RIP save and no decode assist, so only the
//! IOIO exit tells the next RIP (EXITINFO2); the other handlers advance RIP by
//! the instruction lengths given in [`instruction_length`].

use crate::addr::GuestPhysAddr;

/// The VMCB fields that describe an exit, as the hardware wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawExit {
    /// EXITCODE.
    pub code: u64,
    /// EXITINFO1.
    pub info1: u64,
    /// EXITINFO2.
    pub info2: u64,
    /// EXITINTINFO: an event whose delivery the exit interrupted.
    pub interrupt_info: u64,
}

/// Exit codes the core handles by name.
pub mod code {
    /// First exception-intercept code (`0x40 + vector`).
    pub const EXCEPTION_BASE: u64 = 0x40;
    /// Physical interrupt.
    pub const INTR: u64 = 0x60;
    /// NMI.
    pub const NMI: u64 = 0x61;
    /// Virtual interrupt window (VINTR): the guest can take the virtual
    /// interrupt V_IRQ announced; the local APIC's injection waits for it.
    pub const VINTR: u64 = 0x64;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// HLT.
    pub const HLT: u64 = 0x78;
    /// IN/OUT/INS/OUTS.
    pub const IOIO: u64 = 0x7b;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7c;
    /// Shutdown (triple fault).
    pub const SHUTDOWN: u64 = 0x7f;
    /// VMRUN by the guest.
    pub const VMRUN: u64 = 0x80;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// SKINIT, the last of the SVM instruction intercepts.
    pub const SKINIT: u64 = 0x86;
    /// Nested page fault.
    pub const NPF: u64 = 0x400;
    /// VMRUN refused the VMCB (`-1`).
    pub const INVALID: u64 = u64::MAX;
}

/// Width of a port access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoWidth {
    /// 8 bits.
    Byte = 1,
    /// 16 bits.
    Word = 2,
    /// 32 bits.
    Dword = 4,
}

/// A decoded IOIO exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoAccess {
    /// The port.
    pub port: u16,
    /// Access width.
    pub width: IoWidth,
    /// IN (`false`) or OUT (`true`).
    pub write: bool,
    /// INS/OUTS.
    pub string: bool,
    /// With a REP prefix.
    pub repeat: bool,
    /// RIP of the next instruction (the hardware tells it for IOIO).
    pub next_rip: u64,
}

/// Error-code bits of a nested page fault (EXITINFO1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedFault {
    /// The guest-physical address that faulted.
    pub address: GuestPhysAddr,
    /// A present entry denied the access (else: nothing mapped).
    pub present: bool,
    /// The access was a write.
    pub write: bool,
    /// The access was an instruction fetch.
    pub fetch: bool,
    /// The fault hit while walking the guest's own page tables.
    pub in_guest_walk: bool,
}

/// An event (interrupt or exception) that was being delivered when the exit
/// happened, and must be re-injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEvent {
    /// Vector.
    pub vector: u8,
    /// Type field (0 interrupt, 2 NMI, 3 exception, 4 software interrupt).
    pub kind: u8,
    /// The error code, if the event has one.
    pub error_code: Option<u32>,
}

/// Why the guest stopped running, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// CPUID (2 bytes).
    Cpuid,
    /// RDMSR (`write == false`) or WRMSR, 2 bytes; ECX names the MSR.
    Msr {
        /// WRMSR.
        write: bool,
    },
    /// Port I/O.
    Io(IoAccess),
    /// HLT (1 byte).
    Hlt,
    /// VMMCALL (3 bytes): a hypercall.
    Vmmcall,
    /// A nested page fault.
    NestedPageFault(NestedFault),
    /// The guest triple-faulted.
    Shutdown,
    /// A physical interrupt arrived for the host.
    PhysicalInterrupt,
    /// A physical NMI arrived for the host.
    PhysicalNmi,
    /// An intercepted guest exception.
    Exception {
        /// Vector.
        vector: u8,
        /// Error code (EXITINFO1), when the exception has one.
        error_code: u64,
    },
    /// The guest executed an SVM instruction (VMRUN, VMLOAD, VMSAVE, STGI,
    /// CLGI, SKINIT): nested virtualization is not offered.
    SvmInstruction,
    /// VMRUN refused the VMCB state (a core bug or a guest state we allowed).
    InvalidState,
    /// Any other code; listed so the handler can stop the VM with it.
    Other {
        /// The raw exit code.
        code: u64,
    },
}

/// The decoded exit plus the event it interrupted, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// What happened.
    pub reason: VmExit,
    /// The interrupted event to re-inject, if EXITINTINFO was valid.
    pub interrupted: Option<PendingEvent>,
}

/// Decodes the raw fields. Total: every input gives some [`Exit`].
pub fn decode(raw: &RawExit) -> Exit {
    let reason = match raw.code {
        code::CPUID => VmExit::Cpuid,
        code::MSR => VmExit::Msr { write: raw.info1 & 1 != 0 },
        code::IOIO => {
            let info = raw.info1;
            let width = if info & (1 << 6) != 0 {
                IoWidth::Dword
            } else if info & (1 << 5) != 0 {
                IoWidth::Word
            } else {
                IoWidth::Byte
            };
            VmExit::Io(IoAccess {
                port: (info >> 16) as u16,
                width,
                write: info & 1 == 0,
                string: info & (1 << 2) != 0,
                repeat: info & (1 << 3) != 0,
                next_rip: raw.info2,
            })
        }
        code::HLT => VmExit::Hlt,
        code::VMMCALL => VmExit::Vmmcall,
        code::NPF => VmExit::NestedPageFault(NestedFault {
            address: GuestPhysAddr::new_truncate(raw.info2),
            present: raw.info1 & 1 != 0,
            write: raw.info1 & 2 != 0,
            fetch: raw.info1 & 16 != 0,
            in_guest_walk: raw.info1 & (1 << 33) != 0,
        }),
        code::SHUTDOWN => VmExit::Shutdown,
        code::INTR => VmExit::PhysicalInterrupt,
        code::NMI => VmExit::PhysicalNmi,
        code::VMRUN..=code::SKINIT if raw.code != code::VMMCALL => VmExit::SvmInstruction,
        code::INVALID => VmExit::InvalidState,
        exception @ code::EXCEPTION_BASE..=0x5f => VmExit::Exception {
            vector: (exception - code::EXCEPTION_BASE) as u8,
            error_code: raw.info1,
        },
        other => VmExit::Other { code: other },
    };
    // Bit 31 is the valid bit; TCG leaves stale vector bits when it is clear.
    let info = raw.interrupt_info;
    let interrupted = (info & (1 << 31) != 0).then(|| PendingEvent {
        vector: info as u8,
        kind: ((info >> 8) & 7) as u8,
        error_code: (info & (1 << 11) != 0).then_some((info >> 32) as u32),
    });
    Exit { reason, interrupted }
}

/// Length of the intercepted instruction, for exits whose instruction is
/// fixed (no next-RIP save under TCG). `None` for exits that do not advance.
pub const fn instruction_length(exit: &VmExit) -> Option<u64> {
    match exit {
        VmExit::Cpuid | VmExit::Msr { .. } => Some(2),
        VmExit::Hlt => Some(1),
        VmExit::Vmmcall | VmExit::SvmInstruction => Some(3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(code: u64, info1: u64, info2: u64) -> RawExit {
        RawExit { code, info1, info2, interrupt_info: 0 }
    }

    #[test]
    fn decodes_ioio_fields() {
        // OUT dx, al to 0x3f8: port in 31:16, SZ8 (bit 4), type OUT (bit 0 clear).
        let exit = decode(&raw(0x7b, (0x3f8 << 16) | (1 << 4), 0x10_0042));
        assert_eq!(
            exit.reason,
            VmExit::Io(IoAccess {
                port: 0x3f8,
                width: IoWidth::Byte,
                write: true,
                string: false,
                repeat: false,
                next_rip: 0x10_0042
            })
        );
        // REP INSW from 0x1f0: IN (bit 0), STR, REP, SZ16.
        let exit = decode(&raw(0x7b, (0x1f0 << 16) | (1 << 5) | (1 << 3) | (1 << 2) | 1, 0));
        let VmExit::Io(io) = exit.reason else { panic!("not io") };
        assert!(!io.write && io.string && io.repeat);
        assert_eq!(io.width, IoWidth::Word);
        let VmExit::Io(io) = decode(&raw(0x7b, (0xcf8 << 16) | (1 << 6), 0)).reason else {
            panic!("not io")
        };
        assert_eq!(io.width, IoWidth::Dword);
    }

    #[test]
    fn decodes_npf_msr_exceptions_and_others() {
        let exit = decode(&raw(0x400, 0x1_0000_0006, 0x5000_1234));
        assert_eq!(
            exit.reason,
            VmExit::NestedPageFault(NestedFault {
                address: GuestPhysAddr::try_new(0x5000_1234).unwrap(),
                present: false,
                write: true,
                fetch: false,
                in_guest_walk: false,
            })
        );
        assert_eq!(decode(&raw(0x7c, 1, 0)).reason, VmExit::Msr { write: true });
        assert_eq!(decode(&raw(0x7c, 0, 0)).reason, VmExit::Msr { write: false });
        assert_eq!(decode(&raw(0x4e, 0x2, 0)).reason, VmExit::Exception { vector: 14, error_code: 2 });
        assert_eq!(decode(&raw(0x7f, 0, 0)).reason, VmExit::Shutdown);
        assert_eq!(decode(&raw(u64::MAX, 0, 0)).reason, VmExit::InvalidState);
        assert_eq!(decode(&raw(0x89, 0, 0)).reason, VmExit::Other { code: 0x89 });
        assert_eq!(decode(&raw(0x80, 0, 0)).reason, VmExit::SvmInstruction);
        assert_eq!(decode(&raw(0x84, 0, 0)).reason, VmExit::SvmInstruction);
        assert_eq!(decode(&raw(0x81, 0, 0)).reason, VmExit::Vmmcall);
        assert_eq!(instruction_length(&VmExit::Vmmcall), Some(3));
        assert_eq!(instruction_length(&VmExit::Hlt), Some(1));
        assert_eq!(instruction_length(&VmExit::Shutdown), None);
    }

    #[test]
    fn interrupted_event_needs_the_valid_bit() {
        let mut exit = raw(0x400, 0, 0);
        exit.interrupt_info = 0x0e | (3 << 8); // stale vector, valid bit clear
        assert_eq!(decode(&exit).interrupted, None);
        exit.interrupt_info = 0x0e | (3 << 8) | (1 << 11) | (1 << 31) | (0x6 << 32);
        assert_eq!(
            decode(&exit).interrupted,
            Some(PendingEvent { vector: 14, kind: 3, error_code: Some(6) })
        );
    }
}

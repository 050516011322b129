//! Codes the core writes to QEMU's `isa-debug-exit` device (I/O port
//! [`DEBUG_EXIT_PORT`]). QEMU then exits with status `2 * code + 1`, so a
//! triple fault (QEMU status 0) can never look like success.

/// The I/O port of QEMU's `isa-debug-exit` device as the runner configures it.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the core asked QEMU to exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// Every domain powered itself off.
    AllPoweredOff = 0x10,
    /// Every domain has ended and at least one was stopped by the core or crashed.
    DomainFailed = 0x11,
    /// The core hit a broken invariant of its own (an epitaph precedes this).
    CorePanic = 0x12,
    /// The boot bundle or machine was unusable; nothing ran.
    BootError = 0x13,
    /// The appliance's `stop_after` time ran out with domains still running
    /// (measurement runs end this way).
    TimeLimit = 0x14,
}

impl ExitStatus {
    /// The process exit status QEMU reports for this code.
    pub const fn qemu_status(self) -> i32 {
        (self as i32) * 2 + 1
    }

    /// Maps a QEMU process exit status back to the code, if it is one of ours.
    pub fn from_qemu_status(status: i32) -> Option<Self> {
        [Self::AllPoweredOff, Self::DomainFailed, Self::CorePanic, Self::BootError, Self::TimeLimit]
            .into_iter()
            .find(|code| code.qemu_status() == status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_status_round_trips_and_never_is_zero() {
        for code in [
            ExitStatus::AllPoweredOff,
            ExitStatus::DomainFailed,
            ExitStatus::CorePanic,
            ExitStatus::BootError,
            ExitStatus::TimeLimit,
        ] {
            assert_ne!(code.qemu_status(), 0);
            assert_eq!(ExitStatus::from_qemu_status(code.qemu_status()), Some(code));
        }
        assert_eq!(ExitStatus::AllPoweredOff.qemu_status(), 33);
        assert_eq!(ExitStatus::from_qemu_status(0), None);
    }
}

//! Supervising ring-3 servers: decoding what brought a server back into the
//! core, deciding whether it misbehaved, and keeping the counters that decide
//! a restart. The kernel does the mechanism (address spaces, entry, copying);
//! the decisions are here, pure and tested.
//!
//! A server is stopped and restarted from its image when it faults, makes an
//! invalid syscall, exits, sends more than [`MALFORMED_LIMIT`] malformed
//! messages in a row, or is preempted [`HANG_SLICES`] times in a row without
//! yielding or waiting. Every restart bumps the generation, so messages from
//! an older instance are recognisable and rejected.

use ipc::server::{syscall, IMAGE_BASE, MAX_LOG_LEN, STACK_TOP};

/// Malformed messages in a row that make the core restart a server.
pub const MALFORMED_LIMIT: u32 = 8;
/// Whole timer slices (10 ms each) a server may run without yielding or
/// waiting, in a row, before it counts as hung: 200 ms. Under TCG on a loaded
/// host the guest-visible TSC runs on while QEMU's thread waits for a host
/// CPU, so a pager busy with a batch of CRCs for 5 ms of host time can see
/// 50 ms pass; 5 slices restarted a working pager in `memhog` runs.
pub const HANG_SLICES: u32 = 20;
/// How long messages may wait unread in a server's ring before the server
/// counts as hung (no progress on its rings), ns.
pub const PROGRESS_DEADLINE_NS: u64 = 1_000_000_000;
/// A server that has sent a heartbeat and sends none for this long is hung
/// (every protocol's servers beat every 100 ms; twice the progress deadline,
/// so a server that stops reading its ring is reported as such first).
pub const HEARTBEAT_DEADLINE_NS: u64 = 2_000_000_000;
/// Restarts in a crash loop that start at once; later ones back off.
pub const FREE_RESTARTS: u32 = 3;
/// A restart less than this long after the previous one continues a crash loop.
pub const CRASH_LOOP_WINDOW_NS: u64 = 1_000_000_000;
/// The first backoff delay; each further restart in the loop doubles it.
pub const BACKOFF_BASE_NS: u64 = 10_000_000;
/// The longest backoff delay.
pub const BACKOFF_MAX_NS: u64 = 1_000_000_000;

/// How a server came back into the core (filled by the arch layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserExit {
    /// 0: `syscall`; 1: interrupt or exception.
    pub kind: u64,
    /// Vector, for kind 1.
    pub vector: u64,
    /// Error code pushed by the CPU (0 if none).
    pub error_code: u64,
    /// CR2 at the time (page faults).
    pub fault_address: u64,
    /// Where the server was.
    pub rip: u64,
    /// Syscall number (RAX).
    pub number: u64,
    /// Syscall arguments (RDI, RSI, RDX, R10, R8).
    pub arguments: [u64; 5],
}

/// A syscall, decoded and checked for everything that does not need the
/// server's page tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// `exit(code)`.
    Exit {
        /// The code.
        code: u64,
    },
    /// `yield()`.
    Yield,
    /// `wait(timeout_ns)`; `None` = no timeout.
    Wait {
        /// Nanoseconds, or none.
        timeout_ns: Option<u64>,
    },
    /// `notify()`.
    Notify,
    /// `time()`.
    Time,
    /// `clock_rate()`.
    ClockRate,
    /// `log(pointer, length)`: the range is inside the user half of the
    /// address space; the kernel still checks it is mapped user-readable.
    Log {
        /// Start.
        pointer: u64,
        /// Bytes.
        length: usize,
    },
    /// `device_info(item)`: what the server was granted of its device.
    DeviceInfo {
        /// Which `DEVICE_*` item.
        item: u64,
    },
    /// `device_write(offset, value)`: a register write the core checks.
    DeviceWrite {
        /// Register offset from the device's base.
        offset: u64,
        /// The 32-bit value (upper bits must be zero).
        value: u64,
    },
}

/// Why the core stopped a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFault {
    /// A CPU exception in ring 3.
    Exception {
        /// Vector.
        vector: u8,
        /// Error code.
        error_code: u64,
        /// CR2 (page faults).
        address: u64,
        /// Where.
        rip: u64,
    },
    /// An unknown syscall number.
    InvalidSyscall {
        /// The number.
        number: u64,
    },
    /// A syscall argument the server may not pass (e.g. memory not its own).
    BadSyscallArgument {
        /// The syscall number.
        number: u64,
    },
    /// The server called `exit` (a panic in its runtime ends this way).
    Exited {
        /// Its exit code.
        code: u64,
    },
    /// Too many malformed messages in a row.
    TooManyMalformed {
        /// How many.
        count: u32,
    },
    /// Preempted too many slices in a row without yielding or waiting.
    Hung {
        /// Slices.
        slices: u32,
    },
    /// Messages waited unread longer than [`PROGRESS_DEADLINE_NS`].
    NoProgress,
    /// No heartbeat for [`HEARTBEAT_DEADLINE_NS`] after an earlier one.
    MissedHeartbeat,
    /// Stopped on purpose (fault injection, benchmarks).
    Killed,
}

impl ServerFault {
    /// A fixed description.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Exception { vector: 14, .. } => "page fault",
            Self::Exception { vector: 13, .. } => "general protection fault",
            Self::Exception { vector: 6, .. } => "invalid opcode",
            Self::Exception { .. } => "CPU exception",
            Self::InvalidSyscall { .. } => "invalid syscall number",
            Self::BadSyscallArgument { .. } => "syscall argument outside the server's memory",
            Self::Exited { .. } => "exited",
            Self::TooManyMalformed { .. } => "too many malformed messages",
            Self::Hung { .. } => "hung: preempted repeatedly without yielding",
            Self::NoProgress => "hung: messages left unread past the deadline",
            Self::MissedHeartbeat => "hung: no heartbeat within the deadline",
            Self::Killed => "killed",
        }
    }
}

/// What the exit means for the run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// A syscall to carry out.
    Syscall(Syscall),
    /// The core's timer (or another interrupt) preempted the server.
    Preempted {
        /// The vector, for the kernel to acknowledge.
        vector: u8,
    },
    /// The server must be stopped and restarted.
    Fault(ServerFault),
}

/// Decodes a [`UserExit`]. Vectors below 32 are exceptions: the server's
/// fault. Anything else is an interrupt that preempted it.
pub fn decode(exit: &UserExit) -> ServerEvent {
    if exit.kind != 0 {
        let vector = exit.vector as u8;
        // NMI (2) is the machine's, not the server's doing.
        if vector < 32 && vector != 2 {
            return ServerEvent::Fault(ServerFault::Exception {
                vector,
                error_code: exit.error_code,
                address: exit.fault_address,
                rip: exit.rip,
            });
        }
        return ServerEvent::Preempted { vector };
    }
    let [first, second, ..] = exit.arguments;
    let call = match exit.number {
        syscall::EXIT => Syscall::Exit { code: first },
        syscall::YIELD => Syscall::Yield,
        syscall::WAIT => Syscall::Wait { timeout_ns: (first != syscall::NO_TIMEOUT).then_some(first) },
        syscall::NOTIFY => Syscall::Notify,
        syscall::TIME => Syscall::Time,
        syscall::CLOCK_RATE => Syscall::ClockRate,
        syscall::LOG => {
            let in_user_half =
                first >= IMAGE_BASE && first.checked_add(second).is_some_and(|end| end <= STACK_TOP);
            if second > MAX_LOG_LEN as u64 || !in_user_half {
                return ServerEvent::Fault(ServerFault::BadSyscallArgument { number: exit.number });
            }
            Syscall::Log { pointer: first, length: second as usize }
        }
        syscall::DEVICE_INFO => Syscall::DeviceInfo { item: first },
        syscall::DEVICE_WRITE => Syscall::DeviceWrite { offset: first, value: second },
        number => return ServerEvent::Fault(ServerFault::InvalidSyscall { number }),
    };
    ServerEvent::Syscall(call)
}

/// The counters the core keeps per server instance and across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// The running instance's generation (1 for the first start).
    pub generation: u32,
    /// Restarts so far.
    pub restarts: u32,
    /// Malformed messages in a row from this instance.
    pub malformed_in_a_row: u32,
    /// Malformed messages ever.
    pub malformed_total: u64,
    /// Slices in a row this instance was preempted without yielding.
    pub busy_slices: u32,
    /// Restarts in the current crash loop.
    pub crash_loop: u32,
    /// When the last restart happened, ns.
    pub last_restart_ns: Option<u64>,
    /// When this instance last sent a heartbeat, ns (none yet: no deadline).
    pub last_heartbeat_ns: Option<u64>,
}

impl Health {
    /// A server about to start for the first time.
    pub const fn new() -> Self {
        Self {
            generation: 1,
            restarts: 0,
            malformed_in_a_row: 0,
            malformed_total: 0,
            busy_slices: 0,
            crash_loop: 0,
            last_restart_ns: None,
            last_heartbeat_ns: None,
        }
    }

    /// A malformed message arrived; returns the fault once past the limit.
    pub fn malformed(&mut self) -> Option<ServerFault> {
        self.malformed_in_a_row += 1;
        self.malformed_total += 1;
        (self.malformed_in_a_row > MALFORMED_LIMIT)
            .then_some(ServerFault::TooManyMalformed { count: self.malformed_in_a_row })
    }

    /// A valid message arrived.
    pub fn well_formed(&mut self) {
        self.malformed_in_a_row = 0;
    }

    /// The server was preempted by the timer; returns the fault once it has
    /// been busy for [`HANG_SLICES`] slices in a row.
    pub fn preempted(&mut self) -> Option<ServerFault> {
        self.busy_slices += 1;
        (self.busy_slices >= HANG_SLICES).then_some(ServerFault::Hung { slices: self.busy_slices })
    }

    /// The server yielded or waited: it is cooperating.
    pub fn cooperated(&mut self) {
        self.busy_slices = 0;
    }

    /// Crash-loop backoff: records a restart at `now_ns` and returns how long
    /// the new instance must wait before it starts. Restarts less than
    /// [`CRASH_LOOP_WINDOW_NS`] apart form a loop; the first
    /// [`FREE_RESTARTS`] of a loop start at once, then the delay is
    /// `BACKOFF_BASE_NS * 2^(n - FREE_RESTARTS)`, at most [`BACKOFF_MAX_NS`]
    /// (the shift is bounded, so a long loop cannot overflow it). A restart
    /// after a quiet window starts a new loop.
    pub fn restart_delay(&mut self, now_ns: u64) -> u64 {
        let in_loop = self.last_restart_ns.is_some_and(|last| now_ns.saturating_sub(last) < CRASH_LOOP_WINDOW_NS);
        self.crash_loop = if in_loop { self.crash_loop.saturating_add(1) } else { 0 };
        self.last_restart_ns = Some(now_ns);
        if self.crash_loop < FREE_RESTARTS {
            return 0;
        }
        let doublings = (self.crash_loop - FREE_RESTARTS).min(32);
        BACKOFF_BASE_NS.checked_shl(doublings).unwrap_or(u64::MAX).min(BACKOFF_MAX_NS)
    }

    /// The progress check: messages have been waiting in the server's ring
    /// since `waiting_since_ns` (if any); past [`PROGRESS_DEADLINE_NS`] the
    /// server is hung even if it yields (a server that only yields never
    /// trips the preemption count).
    pub fn progress(&self, waiting_since_ns: Option<u64>, now_ns: u64) -> Option<ServerFault> {
        let since = waiting_since_ns?;
        (now_ns.saturating_sub(since) > PROGRESS_DEADLINE_NS).then_some(ServerFault::NoProgress)
    }

    /// The instance sent a heartbeat at `now_ns`.
    pub fn heartbeat(&mut self, now_ns: u64) {
        self.last_heartbeat_ns = Some(now_ns);
    }

    /// The heartbeat check: once an instance has sent a heartbeat, a gap of
    /// more than [`HEARTBEAT_DEADLINE_NS`] means it is hung, even if it keeps
    /// reading its ring and yielding.
    pub fn heartbeat_missed(&self, now_ns: u64) -> Option<ServerFault> {
        let last = self.last_heartbeat_ns?;
        (now_ns.saturating_sub(last) > HEARTBEAT_DEADLINE_NS).then_some(ServerFault::MissedHeartbeat)
    }

    /// The instance was stopped and a new one starts: a new generation and
    /// fresh per-instance counters.
    pub fn restarted(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1).max(1);
        self.restarts += 1;
        self.malformed_in_a_row = 0;
        self.busy_slices = 0;
        self.last_heartbeat_ns = None;
        self.generation
    }
}

/// Whether a server that called `yield` still counts as yielded when the
/// core picks what pCPU 0 runs next.
///
/// A server that yielded with nothing to read runs only when no vCPU wants
/// the pCPU, so a server that loops on `yield` cannot starve guests; one
/// that yielded with messages unread (its runtime yields between full
/// batches) has work and runs before vCPUs. A yield lasts until the server
/// runs again: once it is dispatched it is working, and if its slice then
/// ends before its next `yield` or `wait` (a timer preemption, or a tick
/// during a syscall) it is a server with work, not a yielded one. Only a
/// new `yield` makes it yielded again: otherwise a server picked for its
/// messages and preempted later with its ring empty would wait for an idle
/// pCPU that busy guests never leave, and nothing would wake it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct YieldState {
    yielded: bool,
}

impl YieldState {
    /// The server called `yield`.
    pub fn yielded(&mut self) {
        self.yielded = true;
    }

    /// The server is about to run again: its yield is over.
    pub fn dispatched(&mut self) {
        self.yielded = false;
    }

    /// The core woke the server (a message, a timeout): it has work.
    pub fn woken(&mut self) {
        self.yielded = false;
    }

    /// Whether the server's last word was a `yield` it has not run since.
    pub const fn is_yielded(&self) -> bool {
        self.yielded
    }

    /// Whether a runnable server should run before vCPUs: it did not yield,
    /// or it yielded with messages still unread (`has_inbound`).
    pub const fn has_work(&self, has_inbound: bool) -> bool {
        !self.yielded || has_inbound
    }
}

/// The core's side of the echo exchange with a test server: it sends
/// numbered payloads and checks each reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EchoCheck {
    next_sequence: u32,
    outstanding: Option<u32>,
    /// Replies that matched.
    pub verified: u64,
    /// Replies that did not (wrong sequence or payload).
    pub mismatched: u64,
}

/// Bytes in an echo payload.
pub const ECHO_PAYLOAD_LEN: usize = 16;

/// The payload for `sequence`: a pattern the reply must reproduce exactly.
pub fn echo_payload(sequence: u32) -> [u8; ECHO_PAYLOAD_LEN] {
    let mut payload = [0u8; ECHO_PAYLOAD_LEN];
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte = (sequence.wrapping_mul(31).wrapping_add(index as u32 * 7) & 0xff) as u8;
    }
    payload
}

impl EchoCheck {
    /// The next echo to send, if none is outstanding.
    pub fn next_request(&mut self) -> Option<(u32, [u8; ECHO_PAYLOAD_LEN])> {
        if self.outstanding.is_some() {
            return None;
        }
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.outstanding = Some(sequence);
        Some((sequence, echo_payload(sequence)))
    }

    /// A reply arrived; returns whether it matched the outstanding echo.
    pub fn reply(&mut self, sequence: u32, payload: &[u8]) -> bool {
        let matched = self.outstanding == Some(sequence) && payload == echo_payload(sequence);
        if matched {
            self.outstanding = None;
            self.verified += 1;
        } else {
            self.mismatched += 1;
        }
        matched
    }

    /// The server restarted: the outstanding echo is lost with the old
    /// instance and will be sent again with a new number.
    pub fn reset(&mut self) {
        self.outstanding = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall_exit(number: u64, arguments: [u64; 5]) -> UserExit {
        UserExit { number, arguments, ..UserExit::default() }
    }

    #[test]
    fn syscalls_decode_and_invalid_ones_are_faults() {
        assert_eq!(decode(&syscall_exit(1, [0; 5])), ServerEvent::Syscall(Syscall::Yield));
        assert_eq!(
            decode(&syscall_exit(2, [u64::MAX, 0, 0, 0, 0])),
            ServerEvent::Syscall(Syscall::Wait { timeout_ns: None })
        );
        assert_eq!(
            decode(&syscall_exit(2, [5000, 0, 0, 0, 0])),
            ServerEvent::Syscall(Syscall::Wait { timeout_ns: Some(5000) })
        );
        assert_eq!(
            decode(&syscall_exit(5, [0x4000_1000, 10, 0, 0, 0])),
            ServerEvent::Syscall(Syscall::Log { pointer: 0x4000_1000, length: 10 })
        );
        assert_eq!(
            decode(&syscall_exit(99, [0; 5])),
            ServerEvent::Fault(ServerFault::InvalidSyscall { number: 99 })
        );
        // A log pointing into core memory, past the stack, too long, or wrapping.
        for (pointer, length) in [(0x10_0000, 8), (STACK_TOP - 4, 8), (0x4000_0000, 4096), (u64::MAX - 2, 8)] {
            assert_eq!(
                decode(&syscall_exit(5, [pointer, length, 0, 0, 0])),
                ServerEvent::Fault(ServerFault::BadSyscallArgument { number: 5 })
            );
        }
    }

    #[test]
    fn exceptions_are_faults_and_interrupts_preempt() {
        let page_fault = UserExit { kind: 1, vector: 14, error_code: 5, fault_address: 0x10_0000, rip: 0x4000_0123, ..UserExit::default() };
        let event = decode(&page_fault);
        assert_eq!(
            event,
            ServerEvent::Fault(ServerFault::Exception { vector: 14, error_code: 5, address: 0x10_0000, rip: 0x4000_0123 })
        );
        let ServerEvent::Fault(fault) = event else { unreachable!() };
        assert_eq!(fault.describe(), "page fault");
        assert_eq!(decode(&UserExit { kind: 1, vector: 0x20, ..UserExit::default() }), ServerEvent::Preempted { vector: 0x20 });
        assert_eq!(decode(&UserExit { kind: 1, vector: 2, ..UserExit::default() }), ServerEvent::Preempted { vector: 2 });
    }

    #[test]
    fn malformed_and_hang_thresholds() {
        let mut health = Health::new();
        for _ in 0..MALFORMED_LIMIT {
            assert_eq!(health.malformed(), None);
        }
        health.well_formed();
        for _ in 0..MALFORMED_LIMIT {
            assert_eq!(health.malformed(), None, "the count restarts after a good message");
        }
        assert_eq!(health.malformed(), Some(ServerFault::TooManyMalformed { count: MALFORMED_LIMIT + 1 }));
        for _ in 1..HANG_SLICES {
            assert_eq!(health.preempted(), None);
        }
        health.cooperated();
        for _ in 1..HANG_SLICES {
            assert_eq!(health.preempted(), None);
        }
        assert_eq!(health.preempted(), Some(ServerFault::Hung { slices: HANG_SLICES }));
        assert_eq!(health.restarted(), 2);
        assert_eq!((health.restarts, health.malformed_in_a_row, health.busy_slices), (1, 0, 0));
        assert_eq!(health.malformed_total, 2 * u64::from(MALFORMED_LIMIT) + 1);
    }

    #[test]
    fn unread_messages_past_the_deadline_mean_no_progress() {
        let health = Health::new();
        assert_eq!(health.progress(None, u64::MAX), None, "nothing waiting");
        assert_eq!(health.progress(Some(1_000), 1_000 + PROGRESS_DEADLINE_NS), None);
        assert_eq!(health.progress(Some(1_000), 1_001 + PROGRESS_DEADLINE_NS), Some(ServerFault::NoProgress));
        assert_eq!(health.progress(Some(u64::MAX), 0), None, "a clock going backwards is no fault");
    }

    #[test]
    fn a_missed_heartbeat_is_a_hang_once_the_server_has_beaten() {
        let mut health = Health::new();
        assert_eq!(health.heartbeat_missed(10 * HEARTBEAT_DEADLINE_NS), None, "no heartbeat yet: no deadline");
        health.heartbeat(1_000);
        assert_eq!(health.heartbeat_missed(1_000 + HEARTBEAT_DEADLINE_NS), None);
        assert_eq!(health.heartbeat_missed(1_001 + HEARTBEAT_DEADLINE_NS), Some(ServerFault::MissedHeartbeat));
        health.heartbeat(2 * HEARTBEAT_DEADLINE_NS);
        assert_eq!(health.heartbeat_missed(2 * HEARTBEAT_DEADLINE_NS + 5), None, "a new beat resets the deadline");
        health.restarted();
        assert_eq!(health.heartbeat_missed(u64::MAX), None, "a new instance starts without a deadline");
    }

    #[test]
    fn crash_loop_backoff_grows_caps_and_resets() {
        let mut health = Health::new();
        let mut now = 5_000_000_000u64;
        let mut delays = Vec::new();
        for _ in 0..12 {
            delays.push(health.restart_delay(now));
            now += 100_000_000; // a restart every 100 ms: a crash loop
        }
        let ms: Vec<u64> = delays.iter().map(|delay| delay / 1_000_000).collect();
        assert_eq!(ms, [0, 0, 0, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // A long loop never overflows the shift.
        for _ in 0..100 {
            now += 1;
            assert_eq!(health.restart_delay(now), BACKOFF_MAX_NS);
        }
        // A quiet second ends the loop: the next restart is immediate again.
        now += CRASH_LOOP_WINDOW_NS;
        assert_eq!(health.restart_delay(now), 0);
        assert_eq!(health.crash_loop, 0);
    }

    #[test]
    fn a_yield_with_nothing_to_read_waits_for_idle_time_until_woken() {
        let mut state = YieldState::default();
        assert!(state.has_work(false), "a fresh instance has work");
        state.yielded();
        assert!(!state.has_work(false), "a bare yield waits for an idle pCPU");
        assert!(state.has_work(true), "unless messages are unread");
        state.woken();
        assert!(state.has_work(false));
    }

    #[test]
    fn a_server_dispatched_after_its_yield_has_work_when_preempted() {
        // The runtime yields between two full batches; the core picks the
        // server again for its unread messages and it drains the rest...
        let mut state = YieldState::default();
        state.yielded();
        assert!(state.has_work(true));
        state.dispatched();
        // ...then its slice ends in the middle of its work (a timer
        // preemption: no event reaches the state), with its ring empty. It
        // must still run before vCPUs: nothing will wake it, and busy guests
        // never leave the pCPU idle.
        assert!(!state.is_yielded());
        assert!(state.has_work(false), "a preempted server is not a yielded one");
        // Its next yield counts again.
        state.yielded();
        assert!(!state.has_work(false));
        // Picked on an idle pCPU, it runs and its yield is over too.
        state.dispatched();
        assert!(state.has_work(false));
    }

    #[test]
    fn echo_check_matches_sequence_and_payload() {
        let mut check = EchoCheck::default();
        let (sequence, payload) = check.next_request().unwrap();
        assert_eq!(check.next_request(), None, "one at a time");
        assert!(!check.reply(sequence + 1, &payload));
        let mut wrong = payload;
        wrong[3] ^= 1;
        assert!(!check.reply(sequence, &wrong));
        assert!(check.reply(sequence, &payload));
        assert_eq!((check.verified, check.mismatched), (1, 2));
        let (next, _) = check.next_request().unwrap();
        assert_eq!(next, sequence + 1);
        check.reset();
        assert!(check.next_request().is_some());
    }
}

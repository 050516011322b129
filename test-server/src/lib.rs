//! # test-server — the server cairn's boundary is tested with
//!
//! A ring-3 server of kind `test` (protocol
//! [`ipc::messages::test_server`]). In echo mode it does what a well-behaved
//! server does: [`ToCore::Ready`] at start, an [`ToCore::EchoReply`] with the
//! same sequence number and payload for every [`ToServer::Echo`], and a
//! [`ToCore::Heartbeat`] every [`HEARTBEAT_INTERVAL_NS`] (100 ms) through the
//! run loop's timeout.
//!
//! With `hostile` in its argument string it also misbehaves, once per
//! generation, in the way the [phase table](attack_for) gives; the core must
//! catch each attempt and restart it with the next generation, which then
//! tries the next one:
//!
//! | generation | attempt (issue #3 §6) | first log line |
//! |---|---|---|
//! | 1 | (a) read core memory | `hostile: gen 1: reading core memory at 0x100000` |
//! | 2 | (b) write outside its grants | `hostile: gen 2: writing its read-only text at 0x40000000` |
//! | 3 | (c) send malformed postcard | `hostile: gen 3: sending 20 malformed messages` |
//! | 4 | (d) invalid syscalls | `hostile: gen 4: making invalid syscall 99` |
//! | 5 | (e) loop without yielding | `hostile: gen 5: looping forever without yielding` |
//! | 6 | (f) yields forever without reading its ring | `hostile: gen 6: yielding forever without reading its ring` |
//! | 7.. | none: echoes forever | `hostile: gen 7: behaving from now on` |
//!
//! Each hostile generation first behaves for [`HEARTBEATS_BEFORE_ATTACK`]
//! heartbeats (half a second), answering every echo meanwhile, so the
//! attempts are spread out and a guest's progress shows between them. It
//! logs the line above before it acts. Should an attempt not be stopped, it
//! logs
//! `hostile: gen N: survived: ...` and exits with [`SURVIVED_EXIT_CODE`], so
//! a test can forbid the word `survived` and the sequence still goes on.
//!
//! Principles: this library is the whole server and is pure: no `unsafe`,
//! no syscalls of its own. It runs on the `components` runtime, reaching the
//! machine only through [`components::Context`] (and, to misbehave, its
//! [`components::raw`] hatches), so every phase is tested on the host
//! against the runtime's mock core. `main.rs` only names the handler.
//!
//! Not here: the checks of the replies (the core's), the restart (the
//! core's), and anything a production server would do.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use components::{Context, Handler, LogLine};
use ipc::messages::test_server::{ToCore, ToServer};
use ipc::messages::{self, Envelope, ErrorCode};
use ipc::ring::SLOT_PAYLOAD;
use ipc::server::syscall;

/// Time between heartbeats, in ns.
pub const HEARTBEAT_INTERVAL_NS: u64 = 100_000_000;
/// Heartbeats a hostile generation sends (behaving) before it attacks, right
/// after the last of them.
pub const HEARTBEATS_BEFORE_ATTACK: u64 = 5;
/// An address of the core's image: mapped supervisor-only in every server.
pub const CORE_MEMORY_ADDRESS: u64 = 0x10_0000;
/// The server's own text (its first page, mapped R+X).
pub const TEXT_ADDRESS: u64 = ipc::server::IMAGE_BASE;
/// Malformed messages sent in a row in generation 3: more than the core's
/// limit of malformed messages in a row.
pub const MALFORMED_BURST: u32 = 20;
/// A syscall number the server ABI does not define.
pub const INVALID_SYSCALL: u64 = 99;
/// Bytes of the `log` syscall pointed at core memory in generation 4.
pub const CORE_LOG_LENGTH: u64 = 16;
/// Exit code after an attempt the core did not stop.
pub const SURVIVED_EXIT_CODE: u64 = 110;
/// The word in the argument string that turns on hostile mode.
pub const HOSTILE_ARGUMENT: &str = "hostile";
/// The word that turns on crash-loop mode (the core's backoff, issue #6).
pub const CRASH_LOOP_ARGUMENT: &str = "crashloop";
/// The word that turns on mute mode (the core's heartbeat deadline).
pub const MUTE_ARGUMENT: &str = "mute";
/// Generations that exit at once in crash-loop mode.
pub const CRASH_LOOP_GENERATIONS: u32 = 7;
/// Exit code of a crash-loop generation.
pub const CRASH_LOOP_EXIT_CODE: u64 = 3;
/// Heartbeats a mute generation sends before it falls silent.
pub const MUTE_AFTER_HEARTBEATS: u64 = 3;

/// How the server behaves, from its argument string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Echo and heartbeats only.
    Echo,
    /// Echo, heartbeats, and one attempt per generation.
    Hostile,
    /// Generations 1..=[`CRASH_LOOP_GENERATIONS`] exit as soon as they
    /// start; later ones echo.
    CrashLoop,
    /// Generation 1 stops its heartbeats after [`MUTE_AFTER_HEARTBEATS`]
    /// while it keeps reading and answering; later ones echo.
    Mute,
}

impl Mode {
    /// `Hostile` if `arguments` contains [`HOSTILE_ARGUMENT`].
    pub fn from_arguments(arguments: &str) -> Self {
        if arguments.contains(HOSTILE_ARGUMENT) {
            Self::Hostile
        } else if arguments.contains(CRASH_LOOP_ARGUMENT) {
            Self::CrashLoop
        } else if arguments.contains(MUTE_ARGUMENT) {
            Self::Mute
        } else {
            Self::Echo
        }
    }

    /// The mode's name in the start line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Hostile => "hostile",
            Self::CrashLoop => "crash-loop",
            Self::Mute => "mute",
        }
    }
}

/// One kind of misbehaviour the core must catch (issue #3, §6 (a)–(e)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// (a) Read the core's memory at [`CORE_MEMORY_ADDRESS`]: a page fault.
    ReadCoreMemory,
    /// (b) Write the server's own read-only text at [`TEXT_ADDRESS`]: a page
    /// fault (protection violation).
    WriteReadOnlyText,
    /// (c) Send [`MALFORMED_BURST`] messages that are not valid postcard for
    /// the protocol: past the core's limit.
    SendMalformed,
    /// (d) Syscall [`INVALID_SYSCALL`]; if still alive, a `log` whose pointer
    /// is in core memory.
    InvalidSyscalls,
    /// (e) Loop without yielding: the core's timer must preempt and stop it.
    SpinWithoutYielding,
    /// (f) Yield forever without reading its ring: the core's progress
    /// deadline must catch it (yielding alone looks cooperative).
    YieldWithoutReading,
}

impl Attack {
    /// What the server is about to do, as logged before it acts.
    pub fn announcement(self) -> &'static str {
        match self {
            Self::ReadCoreMemory => "reading core memory at 0x100000",
            Self::WriteReadOnlyText => "writing its read-only text at 0x40000000",
            Self::SendMalformed => "sending 20 malformed messages",
            Self::InvalidSyscalls => "making invalid syscall 99",
            Self::SpinWithoutYielding => "looping forever without yielding",
            Self::YieldWithoutReading => "yielding forever without reading its ring",
        }
    }
}

/// The phase table: what generation `generation` does in `mode`. Echo mode
/// never attacks; hostile mode attacks (a)–(e) in generations 1–5 and
/// behaves from generation 7 on.
pub fn attack_for(mode: Mode, generation: u32) -> Option<Attack> {
    match (mode, generation) {
        (Mode::Echo | Mode::CrashLoop | Mode::Mute, _) => None,
        (Mode::Hostile, 1) => Some(Attack::ReadCoreMemory),
        (Mode::Hostile, 2) => Some(Attack::WriteReadOnlyText),
        (Mode::Hostile, 3) => Some(Attack::SendMalformed),
        (Mode::Hostile, 4) => Some(Attack::InvalidSyscalls),
        (Mode::Hostile, 5) => Some(Attack::SpinWithoutYielding),
        (Mode::Hostile, 6) => Some(Attack::YieldWithoutReading),
        (Mode::Hostile, _) => None,
    }
}

/// Malformed message number `index` of a burst: each carries the right
/// version and generation (so the core gets as far as decoding the body)
/// followed by a body that is not valid postcard for [`ToCore`]. They rotate
/// through three faults: an unknown variant, a varint longer than a `u64`,
/// and an echo reply cut short.
pub fn malformed_message(generation: u32, index: u32) -> heapless::Vec<u8, SLOT_PAYLOAD> {
    let mut buffer = [0u8; SLOT_PAYLOAD];
    let mut bytes = heapless::Vec::new();
    let header = match messages::encode(&Envelope::new(generation, ToCore::Ready), &mut buffer) {
        // `Ready` is variant 0, one byte after the header.
        Ok(length) => length - 1,
        Err(_) => return bytes,
    };
    let _ = bytes.extend_from_slice(&buffer[..header]);
    match index % 3 {
        0 => {
            let _ = bytes.push(0x7f);
        }
        1 => {
            let _ = bytes.push(2); // Heartbeat
            let _ = bytes.extend_from_slice(&[0xff; 11]);
        }
        _ => {
            let _ = bytes.push(1); // EchoReply
            let _ = bytes.push(index as u8 & 0x7f); // sequence
            let _ = bytes.push(32); // payload length 32, and only 3 bytes of it
            let _ = bytes.extend_from_slice(&[0xaa; 3]);
        }
    }
    bytes
}

/// The test server's handler: the state of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestServer {
    mode: Mode,
    generation: u32,
    attack: Option<Attack>,
    echoes: u32,
    heartbeats: u64,
    next_heartbeat: u64,
}

impl TestServer {
    /// A server not started yet ([`Handler::init`] reads the mode and
    /// generation).
    pub const fn new() -> Self {
        Self {
            mode: Mode::Echo,
            generation: 0,
            attack: None,
            echoes: 0,
            heartbeats: 0,
            next_heartbeat: 0,
        }
    }

    /// The mode this instance runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Echo replies sent so far.
    pub fn echoes(&self) -> u32 {
        self.echoes
    }

    /// Heartbeats sent so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats
    }

    /// A log line starting `hostile: gen N: `.
    fn hostile_line(&self) -> LogLine {
        let mut line = LogLine::new();
        line.push_str("hostile: gen ")
            .push_decimal(u64::from(self.generation))
            .push_str(": ");
        line
    }

    /// Logs the attempt, makes it, and reports it if the core let it pass.
    fn attack(&mut self, attack: Attack, context: &mut Context<'_, ToCore>) {
        self.attack = None;
        let mut line = self.hostile_line();
        line.push_str(attack.announcement());
        context.log_line(&line);
        // What has been sent so far reaches the core before the attempt.
        context.flush();
        let mut survived = self.hostile_line();
        survived.push_str("survived: ");
        match attack {
            Attack::ReadCoreMemory => {
                let value = context.raw().read_probe(CORE_MEMORY_ADDRESS);
                survived.push_str("read core memory, got ").push_hex(value);
            }
            Attack::WriteReadOnlyText => {
                context.raw().write_probe(TEXT_ADDRESS);
                survived.push_str("wrote its read-only text");
            }
            Attack::SendMalformed => {
                let mut raw = context.raw();
                for index in 0..MALFORMED_BURST {
                    let _ = raw.send_bytes(&malformed_message(self.generation, index));
                    raw.notify();
                }
                // Give the core a chance to act on them before claiming
                // to have survived.
                raw.syscall(syscall::YIELD, [0; 5]);
                survived
                    .push_str("sent ")
                    .push_decimal(u64::from(MALFORMED_BURST));
                survived.push_str(" malformed messages");
            }
            Attack::InvalidSyscalls => {
                let result = context.raw().syscall(INVALID_SYSCALL, [0; 5]);
                let mut line = self.hostile_line();
                line.push_str("syscall 99 returned ")
                    .push_decimal(result.unsigned_abs())
                    .push_str(if result < 0 { " (negative)" } else { "" })
                    .push_str("; logging from core memory at 0x100000");
                context.log_line(&line);
                let arguments = [CORE_MEMORY_ADDRESS, CORE_LOG_LENGTH, 0, 0, 0];
                context.raw().syscall(syscall::LOG, arguments);
                survived.push_str("invalid syscall 99 and a log from core memory");
            }
            Attack::SpinWithoutYielding => {
                context.raw().spin();
                survived.push_str("looped without yielding");
            }
            Attack::YieldWithoutReading => {
                // Yield a long time without ever reading the ring; the core
                // must stop the instance long before this loop ends.
                for _ in 0..100_000_000u64 {
                    let _ = context.raw().syscall(ipc::server::syscall::YIELD, [0; 5]);
                }
                survived.push_str("yielded without reading its ring");
            }
        }
        context.log_line(&survived);
        context.stop(SURVIVED_EXIT_CODE);
    }
}

impl Default for TestServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler for TestServer {
    type Inbound = ToServer;
    type Outbound = ToCore;

    /// Logs `test-server: gen N started, MODE mode`, sends `Ready` and arms
    /// the first heartbeat.
    fn init(&mut self, context: &mut Context<'_, ToCore>) {
        self.mode = Mode::from_arguments(context.arguments());
        self.generation = context.generation();
        self.attack = attack_for(self.mode, self.generation);
        let mut line = LogLine::new();
        line.push_str("test-server: gen ")
            .push_decimal(u64::from(self.generation))
            .push_str(" started, ")
            .push_str(self.mode.name())
            .push_str(" mode");
        context.log_line(&line);
        if self.mode == Mode::CrashLoop && self.generation <= CRASH_LOOP_GENERATIONS {
            let mut line = LogLine::new();
            line.push_str("test-server: gen ").push_decimal(u64::from(self.generation)).push_str(": exiting at once");
            context.log_line(&line);
            context.raw().syscall(ipc::server::syscall::EXIT, [CRASH_LOOP_EXIT_CODE, 0, 0, 0, 0]);
        }
        if self.mode == Mode::Hostile && self.attack.is_none() {
            let mut line = self.hostile_line();
            line.push_str("behaving from now on");
            context.log_line(&line);
        }
        let _ = context.send(ToCore::Ready);
        self.next_heartbeat = context.now().saturating_add(HEARTBEAT_INTERVAL_NS);
        context.wake_at(self.next_heartbeat);
    }

    /// Answers an echo with the same sequence number and payload.
    fn request(&mut self, message: ToServer, context: &mut Context<'_, ToCore>) {
        match message {
            ToServer::Echo { sequence, payload } => {
                if context
                    .send(ToCore::EchoReply { sequence, payload })
                    .is_ok()
                {
                    self.echoes = self.echoes.saturating_add(1);
                }
            }
            ToServer::Error { code } => self.fault(code, context),
        }
    }

    /// Sends the heartbeat once its time has come and re-arms the timeout;
    /// a hostile generation attacks right after its
    /// [`HEARTBEATS_BEFORE_ATTACK`]th heartbeat.
    fn notified(&mut self, context: &mut Context<'_, ToCore>) {
        let now = context.now();
        let mute = self.mode == Mode::Mute && self.generation == 1 && self.heartbeats >= MUTE_AFTER_HEARTBEATS;
        if now >= self.next_heartbeat && mute {
            if self.heartbeats == MUTE_AFTER_HEARTBEATS {
                self.heartbeats += 1;
                context.log_line(LogLine::new().push_str("test-server: gen 1: no more heartbeats, still reading"));
            }
            self.next_heartbeat = now.saturating_add(HEARTBEAT_INTERVAL_NS);
        } else if now >= self.next_heartbeat {
            self.heartbeats = self.heartbeats.saturating_add(1);
            let _ = context.send(ToCore::Heartbeat {
                count: self.heartbeats,
            });
            self.next_heartbeat = now.saturating_add(HEARTBEAT_INTERVAL_NS);
        }
        if let Some(attack) = self.attack {
            if self.heartbeats >= HEARTBEATS_BEFORE_ATTACK {
                self.attack(attack, context);
                return;
            }
        }
        context.wake_at(self.next_heartbeat);
    }

    /// Logs `test-server: gen N: the core refused a message: CODE`.
    fn fault(&mut self, code: ErrorCode, context: &mut Context<'_, ToCore>) {
        let mut line = LogLine::new();
        line.push_str("test-server: gen ")
            .push_decimal(u64::from(self.generation))
            .push_str(": the core refused a message: ")
            .push_str(error_name(code));
        context.log_line(&line);
    }
}

/// The name of an error code, for log lines.
fn error_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadVersion => "BadVersion",
        ErrorCode::StaleGeneration => "StaleGeneration",
        ErrorCode::Malformed => "Malformed",
        ErrorCode::OutOfRange => "OutOfRange",
        ErrorCode::BadLength => "BadLength",
        ErrorCode::Unexpected => "Unexpected",
    }
}

#[cfg(test)]
mod tests;

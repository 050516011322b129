//! The run loop ([`Runtime`]): from ring slots to handler calls and back.

use core::fmt::Write;
use core::ops::ControlFlow;

use ipc::messages::{self, DecodeError};
use ipc::publication::PublicationArea;
use ipc::ring::{Consumer, Producer, RingError, RingMemory, SLOT_COUNT};
use ipc::server::syscall::{NO_TIMEOUT, WAKE_INJECT_GARBLE, WAKE_INJECT_HANG, WAKE_MESSAGES, WAKE_TIMEOUT};
use ipc::server::ServerKind;

use crate::context::{self, Context, State, Statistics};
use crate::handler::{FromCore, Handler};
use crate::log::LogLine;
use crate::platform::{Platform, Wake};

/// Most messages handled per wake (a quarter of the ring). What is left
/// stays in the ring; the loop yields once (so a core that keeps refilling
/// the ring cannot keep this server from giving the pCPU back) and takes the
/// next batch.
pub const BATCH_LIMIT: usize = SLOT_COUNT / 4;
/// Tries of a send into a full `to_core` ring, a wait apart (see
/// [`Context::send`]).
pub const SEND_ATTEMPTS: usize = 4;

/// Who this server instance is: what the core passed in the entry registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// The generation (1 for the first start, +1 per restart); every message
    /// is stamped with it, and messages from the core must carry it.
    pub generation: u32,
    /// The kind the core started the image as (`None` for a value this build
    /// does not know).
    pub kind: Option<ServerKind>,
    /// The `args` string of the `[[server]]` table.
    pub arguments: &'static str,
}

impl Instance {
    /// The [`ServerKind`] the entry register `rdx` holds, if it is one.
    pub fn kind_from_register(value: u64) -> Option<ServerKind> {
        [ServerKind::Scheduler, ServerKind::Pager, ServerKind::Test]
            .into_iter()
            .find(|kind| *kind as u64 == value)
    }
}

/// Why the run loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A handler called [`Context::stop`].
    Requested {
        /// The exit code it asked for.
        code: u64,
    },
    /// A ring's indices are out of range: nothing can be read or sent.
    CorruptRing(RingError),
}

impl Stop {
    /// The code the server exits with.
    pub fn exit_code(&self) -> u64 {
        match self {
            Self::Requested { code } => *code,
            Self::CorruptRing(_) => crate::exit_code::CORRUPT_RING,
        }
    }
}

/// The run loop of one server instance: a handler, the machine it runs on,
/// and the two rings.
///
/// Each [`turn`](Self::turn): if messages are queued, take them at once
/// (yielding first if the last batch was a full one); else `wait` until the
/// handler's deadline (or forever; an expired deadline skips the wait,
/// unless it was set with [`Context::poll_after`]).
/// Then drain up to [`BATCH_LIMIT`] messages: each is decoded with
/// [`messages::decode_from_core`] for this generation; a refusal from the
/// core goes to [`Handler::fault`], any other message to
/// [`Handler::request`], and a slot that does not decode is logged,
/// counted ([`Statistics::malformed`]) and skipped. If the deadline has
/// passed (or the wake carried neither messages nor a timeout),
/// [`Handler::notified`] is called. What a turn sent reaches the core at the
/// next turn's first syscall: its `wait` or `yield` (the core drains the
/// `to_core` ring at both), or a `notify` when the next turn needs neither.
#[derive(Debug)]
pub struct Runtime<'rings, H, P> {
    handler: H,
    platform: P,
    to_server: Consumer<'rings>,
    to_core: Producer<'rings>,
    publication: &'rings PublicationArea,
    instance: Instance,
    state: State,
    /// The last batch hit [`BATCH_LIMIT`]: yield before the next.
    batch_was_full: bool,
}

impl<'rings, H: Handler, P: Platform> Runtime<'rings, H, P> {
    /// A run loop over the two rings of `docs/server-abi.md`, not yet started.
    pub fn new(
        handler: H,
        platform: P,
        to_server: &'rings RingMemory,
        to_core: &'rings RingMemory,
        publication: &'rings PublicationArea,
        instance: Instance,
    ) -> Self {
        let to_server = Consumer::attach(to_server);
        let state = State {
            consumed: to_server.position(),
            ..State::default()
        };
        Self {
            handler,
            platform,
            to_server,
            to_core: Producer::attach(to_core),
            publication,
            instance,
            state,
            batch_was_full: false,
        }
    }

    /// Runs until the handler stops the loop or a ring breaks.
    pub fn run(&mut self) -> Stop {
        if let Err(stop) = self.start() {
            return stop;
        }
        loop {
            if let Err(stop) = self.turn() {
                return stop;
            }
        }
    }

    /// Calls [`Handler::init`] (what it sent goes with the first turn).
    pub fn start(&mut self) -> Result<(), Stop> {
        self.call(|handler, context| handler.init(context));
        self.finish_round()
    }

    /// One wake: deliver what the last turn sent, wait (unless messages are
    /// queued), drain a batch, maybe call [`Handler::notified`].
    pub fn turn(&mut self) -> Result<(), Stop> {
        let queued = self.to_server.pending().map_err(Stop::CorruptRing)?;
        // What the last turn sent reaches the core here: `yield` and `wait`
        // drain the `to_core` ring as `notify` does, so a turn that ends in
        // one of them needs no `notify` of its own (one syscall fewer per
        // turn, and every syscall costs two page-table switches).
        let wake = if queued > 0 {
            if self.batch_was_full {
                self.platform.yield_now();
                self.state.notify_pending = false;
            } else {
                context::flush(&mut self.platform, &mut self.state);
            }
            Wake(WAKE_MESSAGES)
        } else {
            let now = self.platform.time();
            let must_wait = core::mem::take(&mut self.state.must_wait);
            match self.state.deadline {
                Some(deadline) if deadline <= now && !must_wait => {
                    context::flush(&mut self.platform, &mut self.state);
                    Wake(WAKE_TIMEOUT)
                }
                Some(deadline) => self.wait(deadline.saturating_sub(now).max(1)),
                None => self.wait(NO_TIMEOUT),
            }
        };
        self.state.statistics.wakes += 1;
        self.injected_faults(wake);
        let waited_for = self.state.deadline;
        let drained = self.drain()?;
        self.batch_was_full = drained == BATCH_LIMIT;
        if self.state.stop.is_none() {
            let expired = match self.state.deadline {
                // The wake says this very deadline passed: no need to read
                // the clock (a syscall) to know it.
                Some(_) if wake.timed_out() && self.state.deadline == waited_for => true,
                Some(deadline) => self.platform.time() >= deadline,
                None => false,
            };
            if expired {
                self.state.deadline = None;
            }
            if expired || (drained == 0 && !wake.timed_out()) {
                self.call(|handler, context| handler.notified(context));
            }
        }
        self.finish_round()
    }

    /// Handles up to [`BATCH_LIMIT`] messages; returns how many slots were
    /// consumed.
    fn drain(&mut self) -> Result<usize, Stop> {
        let Self {
            handler,
            platform,
            to_server,
            to_core,
            publication,
            instance,
            state,
            ..
        } = self;
        let generation = instance.generation;
        let result = to_server.drain(BATCH_LIMIT, |slot| {
            handler.before_message(&mut Context::new(instance, publication, state, platform, to_core));
            let decoded = slot.map_err(Skipped::Ring).and_then(|bytes| {
                messages::decode_from_core::<H::Inbound>(bytes, generation).map_err(Skipped::Decode)
            });
            match decoded {
                Ok(message) => {
                    let refusal = message.refusal();
                    let statistics = &mut state.statistics;
                    match refusal {
                        Some(_) => statistics.refusals += 1,
                        None => statistics.requests += 1,
                    }
                    let mut context = Context::new(instance, publication, state, platform, to_core);
                    match refusal {
                        Some(code) => handler.fault(code, &mut context),
                        None => handler.request(message, &mut context),
                    }
                }
                Err(skipped) => {
                    state.statistics.malformed += 1;
                    let mut line = LogLine::new();
                    let _ = write!(line, "components: skipped a message from the core: ");
                    skipped.describe(&mut line);
                    platform.log(line.as_bytes());
                }
            }
            state.consumed = state.consumed.wrapping_add(1);
            if state.stop.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if state.stop.is_none() {
            handler.before_message(&mut Context::new(instance, publication, state, platform, to_core));
        }
        result.map_err(Stop::CorruptRing)
    }

    /// Runs one entry point of the handler with a fresh [`Context`].
    fn call(&mut self, entry: impl FnOnce(&mut H, &mut Context<'_, H::Outbound>)) {
        let mut context = Context::new(
            &self.instance,
            self.publication,
            &mut self.state,
            &mut self.platform,
            &mut self.to_core,
        );
        entry(&mut self.handler, &mut context);
    }

    /// Fault injection requested by the core through `wait`'s result bits
    /// (`hvctl hang` / `hvctl garble`): misbehave the way the core must
    /// detect, for every server alike.
    fn injected_faults(&mut self, wake: Wake) {
        if wake.0 & WAKE_INJECT_GARBLE != 0 {
            let mut line = LogLine::new();
            let _ = write!(line, "components: fault injection: sending malformed messages");
            self.log_line(&line);
            // And a decision block no core may take (a slice of 0), as a
            // broken scheduler might publish it: the core refuses it before
            // it reads the ring (only the scheduler's area is read).
            self.publication.publish_decision(0, &[], 0);
            for _ in 0..(ipc::ring::SLOT_COUNT / 2) {
                let _ = context::send_bytes(&mut self.platform, &mut self.to_core, &mut self.state, &[0xff; 12]);
            }
            context::flush(&mut self.platform, &mut self.state);
        }
        if wake.0 & WAKE_INJECT_HANG != 0 {
            let mut line = LogLine::new();
            let _ = write!(line, "components: fault injection: spinning without yielding");
            self.log_line(&line);
            self.platform.spin();
        }
    }

    /// The `wait` syscall, which also delivers what was sent.
    fn wait(&mut self, timeout_ns: u64) -> Wake {
        self.state.notify_pending = false;
        self.platform.wait(timeout_ns)
    }

    fn log_line(&mut self, line: &LogLine) {
        self.platform.log(line.as_bytes());
    }

    /// Ends a turn. What it sent is delivered by the next turn's `wait`,
    /// `yield` or `notify` ([`Self::turn`]); a loop that stops notifies now.
    fn finish_round(&mut self) -> Result<(), Stop> {
        match self.state.stop {
            Some(stop) => {
                context::flush(&mut self.platform, &mut self.state);
                Err(stop)
            }
            None => Ok(()),
        }
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The platform (the mock, in host tests).
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The platform, mutably (tests use it to play the core).
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    /// This instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The counters so far.
    pub fn statistics(&self) -> Statistics {
        self.state.statistics
    }

    /// The handler's deadline, in ns since boot.
    pub fn deadline(&self) -> Option<u64> {
        self.state.deadline
    }
}

/// A slot the run loop skipped.
#[derive(Debug, Clone, Copy)]
enum Skipped {
    Ring(RingError),
    Decode(DecodeError),
}

impl Skipped {
    fn describe(self, line: &mut LogLine) {
        let reason = match self {
            Self::Ring(error) => error.reason(),
            Self::Decode(error) => error.reason(),
        };
        line.push_str(reason);
        if let Self::Decode(DecodeError::StaleGeneration { found, expected }) = self {
            line.push_str(" (generation ")
                .push_decimal(u64::from(found))
                .push_str(", expected ")
                .push_decimal(u64::from(expected))
                .push_str(")");
        }
    }
}

#[cfg(test)]
mod tests;

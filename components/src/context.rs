//! [`Context`]: what a handler's entry point works through.

use core::fmt::Write;
use core::marker::PhantomData;

use ipc::messages::{self, EncodeError, Envelope, Message};
use ipc::publication::PublicationArea;
use ipc::ring::{Producer, RingError, SLOT_PAYLOAD};
use ipc::server::{ServerKind, MAX_LOG_LEN};

use crate::device::{Device, DeviceError, DeviceGrant};
use crate::log::LogLine;
use crate::platform::Platform;
use crate::raw::Raw;
use crate::runtime::{Instance, Stop, SEND_ATTEMPTS};

/// How long a send into a full `to_core` ring waits before it tries again,
/// ns.
pub const SEND_RETRY_WAIT_NS: u64 = 1_000_000;

/// Counters of one server instance, kept by the run loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Times the run loop woke (from `wait`, or after yielding with messages
    /// still queued).
    pub wakes: u64,
    /// Well-formed requests handed to [`crate::Handler::request`].
    pub requests: u64,
    /// The core's refusals handed to [`crate::Handler::fault`].
    pub refusals: u64,
    /// Messages from the core that were skipped: undecodable, wrong version
    /// or generation, or a slot length beyond a slot.
    pub malformed: u64,
    /// Messages put into the `to_core` ring (encoded or raw).
    pub sent: u64,
    /// Messages that could not be sent (ring full after every try, too big
    /// for a slot, or not encodable).
    pub send_failures: u64,
}

/// The run loop's mutable state, shared by every entry point.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// When to call [`crate::Handler::notified`], in ns since boot.
    pub(crate) deadline: Option<u64>,
    /// The run loop must `wait` before the deadline's `notified`, even if the
    /// deadline has passed ([`Context::poll_after`]).
    pub(crate) must_wait: bool,
    pub(crate) statistics: Statistics,
    /// Messages were sent since the last `notify`.
    pub(crate) notify_pending: bool,
    /// Set when the loop must end after the current entry point.
    pub(crate) stop: Option<Stop>,
    /// The device grant, asked of the core once ([`Context::device`]).
    pub(crate) device: Option<Result<DeviceGrant, DeviceError>>,
    /// Slots of the `to_server` ring consumed before the message being
    /// handled (all of them outside `request`), wrapping.
    pub(crate) consumed: u32,
}

/// The sending end the context writes to: the `to_core` ring's producer.
/// A trait object, so that [`Context`] has one lifetime whatever the ring's.
pub(crate) trait Outbox {
    fn try_send(&mut self, bytes: &[u8]) -> Result<(), RingError>;
}

impl Outbox for Producer<'_> {
    fn try_send(&mut self, bytes: &[u8]) -> Result<(), RingError> {
        Producer::try_send(self, bytes)
    }
}

/// Why [`Context::send`] failed. The failure is also logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The message could not be encoded.
    Encode(EncodeError),
    /// The `to_core` ring stayed full.
    Full,
    /// The message is longer than a ring slot.
    TooBig,
    /// The ring is corrupt; the run loop stops after this entry point.
    Ring(RingError),
}

/// What an entry point of a [`crate::Handler`] works through: the instance
/// it is (generation, kind, arguments), sending messages of the protocol's
/// outbound type `M`, its timeout, the clock and logging. Messages sent here
/// reach the core when the run loop notifies it, after the entry point
/// returns (or at [`Context::flush`]).
pub struct Context<'a, M> {
    instance: &'a Instance,
    publication: &'a PublicationArea,
    state: &'a mut State,
    platform: &'a mut dyn Platform,
    outbox: &'a mut dyn Outbox,
    message: PhantomData<fn(M)>,
}

impl<M> core::fmt::Debug for Context<'_, M> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter
            .debug_struct("Context")
            .field("instance", self.instance)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<'a, M: Message> Context<'a, M> {
    pub(crate) fn new(
        instance: &'a Instance,
        publication: &'a PublicationArea,
        state: &'a mut State,
        platform: &'a mut dyn Platform,
        outbox: &'a mut dyn Outbox,
    ) -> Self {
        Self {
            instance,
            publication,
            state,
            platform,
            outbox,
            message: PhantomData,
        }
    }

    /// This instance: generation, kind, arguments.
    pub fn instance(&self) -> &Instance {
        self.instance
    }

    /// The publication area this instance shares with the core
    /// (`ipc::publication`): tables the core reads when it needs them.
    pub fn publication(&self) -> &PublicationArea {
        self.publication
    }

    /// Slots of the `to_server` ring consumed before the message being
    /// handled (in [`crate::Handler::request`] and
    /// [`crate::Handler::fault`]), or so far (elsewhere), malformed ones
    /// included, wrapping: the ring's consumer index. A bookkeeping log is
    /// placed by it (`ipc::publication`).
    pub fn consumed(&self) -> u32 {
        self.state.consumed
    }

    /// This instance's generation (1 for the first start, +1 per restart).
    pub fn generation(&self) -> u32 {
        self.instance.generation
    }

    /// The server kind the core started this image as (`None` if the entry
    /// register held an unknown value).
    pub fn kind(&self) -> Option<ServerKind> {
        self.instance.kind
    }

    /// The `args` string of the appliance's `[[server]]` table.
    pub fn arguments(&self) -> &'static str {
        self.instance.arguments
    }

    /// Encodes `message` in an envelope of this generation and puts it into
    /// the `to_core` ring. A full ring is retried: wait
    /// [`SEND_RETRY_WAIT_NS`] (the core drains the ring at a wait), try
    /// again, [`crate::SEND_ATTEMPTS`] tries in all.
    /// A failure is logged and counted before it is returned.
    pub fn send(&mut self, message: M) -> Result<(), SendError> {
        let mut buffer = [0u8; SLOT_PAYLOAD];
        let envelope = Envelope::new(self.instance.generation, message);
        match messages::encode(&envelope, &mut buffer) {
            Ok(length) => self.send_bytes(&buffer[..length]),
            Err(error) => Err(self.send_failed(SendError::Encode(error))),
        }
    }

    /// Puts `bytes` into the `to_core` ring as they are (the send path of
    /// [`Context::send`] and of [`crate::raw::Raw::send_bytes`]).
    pub(crate) fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        send_bytes(self.platform, self.outbox, self.state, bytes)
    }

    fn send_failed(&mut self, error: SendError) -> SendError {
        send_failed(self.platform, self.state, error)
    }

    /// Notifies the core now if anything was sent since the last
    /// notification (the run loop does this after every entry point anyway).
    pub fn flush(&mut self) {
        flush(self.platform, self.state);
    }

    /// Calls [`crate::Handler::notified`] once the clock reaches `deadline`
    /// (ns since boot), replacing any earlier timeout.
    pub fn wake_at(&mut self, deadline: u64) {
        self.state.deadline = Some(deadline);
        self.state.must_wait = false;
    }

    /// Like [`Self::wake_after`], for polling a device: the run loop calls
    /// `wait` (for what is left of `nanoseconds`, at least 1 ns) before
    /// [`crate::Handler::notified`] even if the time has already passed, so a
    /// server polling in a tight cycle still gives the core a switch point
    /// (and guests the pCPU) at every poll instead of spinning. Messages
    /// from the core end the wait early, as always.
    pub fn poll_after(&mut self, nanoseconds: u64) {
        self.wake_after(nanoseconds);
        self.state.must_wait = true;
    }

    /// [`Self::poll_after`] with an absolute `deadline` (ns since boot), for
    /// a server that has just read the clock: it saves the `time` syscall
    /// `poll_after` makes (every syscall costs two address-space switches).
    pub fn poll_at(&mut self, deadline: u64) {
        self.wake_at(deadline);
        self.state.must_wait = true;
    }

    /// Calls [`crate::Handler::notified`] `nanoseconds` from now, replacing
    /// any earlier timeout.
    pub fn wake_after(&mut self, nanoseconds: u64) {
        let now = self.platform.time();
        self.wake_at(now.saturating_add(nanoseconds));
    }

    /// Cancels the timeout: the server sleeps until the core sends something.
    pub fn cancel_wake(&mut self) {
        self.state.deadline = None;
        self.state.must_wait = false;
    }

    /// The timeout set, in ns since boot.
    pub fn deadline(&self) -> Option<u64> {
        self.state.deadline
    }

    /// The clock: nanoseconds since boot (the `time` syscall).
    pub fn now(&mut self) -> u64 {
        self.platform.time()
    }

    /// Logs `text` as one console line (cut at [`MAX_LOG_LEN`] bytes, control
    /// characters replaced).
    pub fn log(&mut self, text: &str) {
        let mut line = LogLine::new();
        line.push_str(text);
        self.log_line(&line);
    }

    /// Logs a line built with [`LogLine`].
    pub fn log_line(&mut self, line: &LogLine) {
        self.platform.log(line.as_bytes());
    }

    /// Ends the run loop after this entry point returns (messages sent so far
    /// are still delivered); the server then exits with `code` and the core
    /// restarts it.
    pub fn stop(&mut self, code: u64) {
        self.state.stop.get_or_insert(Stop::Requested { code });
    }

    /// This instance's counters.
    pub fn statistics(&self) -> Statistics {
        self.state.statistics
    }

    /// The device the core granted this instance, bound to the platform for
    /// its register writes (`device_info` is asked once per instance; the
    /// answer, or the error, is kept). `Err(DeviceError::NoDevice)` for a
    /// server without a device. See [`crate::device`].
    pub fn device(&mut self) -> Result<Device<'_>, DeviceError> {
        let grant = match self.state.device {
            Some(known) => known,
            None => {
                let queried = DeviceGrant::query(self.platform);
                self.state.device = Some(queried);
                queried
            }
        }?;
        Ok(Device::new(grant, self.platform))
    }

    /// The escape hatches of [`crate::raw`]: for the hostile test server only.
    pub fn raw(&mut self) -> Raw<'_> {
        Raw::new(self.platform, self.outbox, self.state)
    }
}

/// The send path shared by [`Context`] and [`Raw`].
pub(crate) fn send_bytes(
    platform: &mut dyn Platform,
    outbox: &mut dyn Outbox,
    state: &mut State,
    bytes: &[u8],
) -> Result<(), SendError> {
    for attempt in 1..=SEND_ATTEMPTS {
        match outbox.try_send(bytes) {
            Ok(()) => {
                state.statistics.sent += 1;
                state.notify_pending = true;
                return Ok(());
            }
            Err(RingError::Full) if attempt < SEND_ATTEMPTS => {
                // The core drains `to_core` at a `wait` (as at `notify`) and
                // gets the pCPU for a while. Not a `yield`: with nothing to
                // read, a yielded server runs again only on an idle pCPU,
                // which busy guests may never leave.
                platform.wait(SEND_RETRY_WAIT_NS);
                state.notify_pending = false;
            }
            Err(RingError::Full) => return Err(send_failed(platform, state, SendError::Full)),
            Err(RingError::TooBig { .. }) => {
                return Err(send_failed(platform, state, SendError::TooBig))
            }
            Err(error) => {
                state.stop.get_or_insert(Stop::CorruptRing(error));
                return Err(send_failed(platform, state, SendError::Ring(error)));
            }
        }
    }
    Err(send_failed(platform, state, SendError::Full))
}

fn send_failed(platform: &mut dyn Platform, state: &mut State, error: SendError) -> SendError {
    state.statistics.send_failures += 1;
    let mut line = LogLine::new();
    let _ = write!(
        line,
        "components: a message to the core was dropped: {error:?}"
    );
    platform.log(line.as_bytes());
    error
}

/// Notifies the core if messages were sent since the last notification.
pub(crate) fn flush(platform: &mut dyn Platform, state: &mut State) {
    if state.notify_pending {
        state.notify_pending = false;
        platform.notify();
    }
}

const _: () = assert!(MAX_LOG_LEN <= 4096);

//! The [`Handler`] trait a server implements, and [`FromCore`], which tells
//! the run loop which of a protocol's messages is the core's error reply.

use core::fmt::Write;

use ipc::messages::{pager, test_server, ErrorCode, Message};

use crate::context::Context;
use crate::log::LogLine;

/// A protocol's core → server message type, as the run loop needs to know
/// it: every protocol in [`ipc::messages`] carries an `Error { code }`
/// variant with which the core refuses one of the server's messages, and the
/// run loop routes that variant to [`Handler::fault`] instead of
/// [`Handler::request`].
pub trait FromCore: Message {
    /// The error code if this message is the core's refusal of a message
    /// the server sent.
    fn refusal(&self) -> Option<ErrorCode>;
}

impl FromCore for pager::ToServer {
    fn refusal(&self) -> Option<ErrorCode> {
        match self {
            Self::Error { code } => Some(*code),
            _ => None,
        }
    }
}

impl FromCore for test_server::ToServer {
    fn refusal(&self) -> Option<ErrorCode> {
        match self {
            Self::Error { code } => Some(*code),
            Self::Echo { .. } => None,
        }
    }
}

/// A server: its state and its four entry points, in the shape of an seL4
/// Microkit protection domain (`init`, `notified`, `protected`, `fault`).
/// The run loop ([`crate::Runtime`]) calls them; a handler never loops,
/// blocks or touches a ring itself. Each entry point gets the [`Context`],
/// through which it sends messages (delivered to the core after the entry
/// point returns, one notification per batch), sets its timeout, reads the
/// clock and logs.
pub trait Handler {
    /// The protocol's core → server messages (e.g.
    /// [`ipc::messages::test_server::ToServer`]).
    type Inbound: FromCore;
    /// The protocol's server → core messages (e.g.
    /// [`ipc::messages::test_server::ToCore`]).
    type Outbound: Message;

    /// Called once, before the first message: announce the server, arm a
    /// timeout, read the arguments ([`Context::arguments`]).
    fn init(&mut self, context: &mut Context<'_, Self::Outbound>);

    /// Called for each well-formed message from the core, in ring order.
    fn request(&mut self, message: Self::Inbound, context: &mut Context<'_, Self::Outbound>);

    /// Called whenever the next message to handle is the one after
    /// [`Context::consumed`] slots of the `to_server` ring: before each slot
    /// (malformed ones and the core's refusals included) and once after
    /// each drain. A handler places there what the core shares outside the
    /// ring but orders among its messages (the scheduler's bookkeeping log,
    /// `ipc::publication`). The default does nothing.
    fn before_message(&mut self, context: &mut Context<'_, Self::Outbound>) {
        let _ = context;
    }

    /// Called when the timeout set with [`Context::wake_at`] or
    /// [`Context::wake_after`] has expired (it is cleared first), or when the
    /// core woke the server with neither messages nor an expired timeout. The
    /// default does nothing.
    fn notified(&mut self, context: &mut Context<'_, Self::Outbound>) {
        let _ = context;
    }

    /// Called when the core refused a message this server sent, with the
    /// reason. The default logs the code.
    fn fault(&mut self, code: ErrorCode, context: &mut Context<'_, Self::Outbound>) {
        let mut line = LogLine::new();
        let _ = write!(line, "components: the core refused a message: {code:?}");
        context.log_line(&line);
    }
}

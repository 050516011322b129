//! The test server's protocol: the core sends numbered echo requests, the
//! server answers each with the same sequence number and payload, announces
//! itself once with `Ready` and sends heartbeats while it idles. The core
//! checks every reply; the hostile variant of the server uses the same
//! messages to misbehave (malformed bytes, wrong generations).

use heapless::Vec;
use serde::{Deserialize, Serialize};

use super::{envelope_max_size, size, DecodeError, ErrorCode, FromServer, Message};

/// Longest echo payload.
pub const ECHO_PAYLOAD_MAX: usize = 32;

/// An echo payload.
pub type EchoPayload = Vec<u8, ECHO_PAYLOAD_MAX>;

/// Core → test server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToServer {
    /// Send `payload` back in an [`ToCore::EchoReply`] with this `sequence`.
    Echo {
        /// Number of the request; the reply carries it back.
        sequence: u32,
        /// Bytes to send back.
        payload: EchoPayload,
    },
    /// The core refused a message from the server, for this reason.
    Error {
        /// What was wrong.
        code: ErrorCode,
    },
}

/// Test server → core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCore {
    /// The server has started and reads its ring.
    Ready,
    /// The answer to [`ToServer::Echo`].
    EchoReply {
        /// The request's sequence number.
        sequence: u32,
        /// The request's payload.
        payload: EchoPayload,
    },
    /// The server is alive; `count` increases by one per heartbeat.
    Heartbeat {
        /// Heartbeats sent by this instance so far.
        count: u64,
    },
}

const ECHO_SIZE: usize = size::U32 + size::collection(ECHO_PAYLOAD_MAX, size::U8);

impl Message for ToServer {
    const MAX_ENCODED_SIZE: usize =
        size::VARIANT + size::max(ECHO_SIZE, ErrorCode::MAX_ENCODED_SIZE);
}

impl Message for ToCore {
    const MAX_ENCODED_SIZE: usize = size::VARIANT + size::max(ECHO_SIZE, size::U64);
}

impl FromServer for ToCore {
    type Context = ();

    /// Every value the types admit is in range; sequence numbers and counts
    /// are checked against protocol state by the core's handler.
    fn validate(&self, _context: &()) -> Result<(), DecodeError> {
        Ok(())
    }
}

const _: () = assert!(envelope_max_size::<ToServer>() <= crate::ring::SLOT_PAYLOAD);
const _: () = assert!(envelope_max_size::<ToCore>() <= crate::ring::SLOT_PAYLOAD);

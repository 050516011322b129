//! Server messages: the envelope every ring message travels in, one protocol
//! module per server, and the one decode path the core runs on server input.
//!
//! # Wire format
//!
//! A ring slot holds one postcard-encoded [`Envelope`]:
//!
//! ```text
//! byte 0     version      = PROTOCOL_VERSION
//! bytes 1..  generation   varint u32, 1..=5 bytes: the server instance's generation
//! then       body         the protocol's enum: varint variant index, then its fields
//! ```
//!
//! Nothing may follow the body. Every message type states its largest
//! encoding ([`Message::MAX_ENCODED_SIZE`], computed with [`size`]), and each
//! protocol module asserts at compile time that its envelopes fit a ring slot
//! ([`crate::ring::SLOT_PAYLOAD`]), so receive buffers are sized at compile
//! time. (postcard's own `MaxSize` derive cannot be used: it implements the
//! trait for heapless 0.7 only, and the workspace uses heapless 0.8.)
//!
//! # Validation
//!
//! The core decodes server input only with [`decode_from_server`], which
//! checks, in order: the version, the generation (a message of an old or any
//! other instance is rejected), the encoding (postcard, exact length), and
//! the protocol's own ids and ranges ([`FromServer::validate`], given the
//! runtime facts it needs as a context). Every failure is a [`DecodeError`]
//! whose [`DecodeError::code`] is the [`ErrorCode`] the core replies with.
//! Servers decode what the core sends with [`decode_from_core`].
//!
//! # Protocols
//!
//! * [`test_server`]: the test server (echo, heartbeat).
//! * [`scheduler`]: the credit scheduler (issue #4).
//! * [`pager`]: the pager (issue #5).
//!
//! Each protocol module has a `ToServer` enum (core → server), which carries
//! an `Error { code: ErrorCode }` variant for replies to malformed messages,
//! and a `ToCore` enum (server → core) implementing [`FromServer`].
//!
//! Not here: protocol state (which message may come when; the core's
//! handlers check that and answer [`ErrorCode::Unexpected`]), the rings
//! themselves ([`crate::ring`]).

pub mod pager;
pub mod scheduler;
pub mod test_server;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of the envelope and of every protocol in this module; bumped on
/// any change to either, so a stale server image is refused at its first
/// message.
pub const PROTOCOL_VERSION: u8 = 2;

/// Largest encoded envelope header: the version byte and the generation.
pub const ENVELOPE_HEADER_MAX_SIZE: usize = size::U8 + size::U32;

/// Largest encoded envelope of any protocol defined here.
pub const MAX_MESSAGE_SIZE: usize = size::max(
    envelope_max_size::<test_server::ToServer>(),
    envelope_max_size::<test_server::ToCore>(),
);

const _: () = assert!(MAX_MESSAGE_SIZE <= crate::ring::SLOT_PAYLOAD);

/// Largest encoded envelope carrying an `M`.
pub const fn envelope_max_size<M: Message>() -> usize {
    ENVELOPE_HEADER_MAX_SIZE + M::MAX_ENCODED_SIZE
}

/// What every ring message is wrapped in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<M> {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u8,
    /// Generation of the server instance the message is from or for (1 for
    /// the first start, +1 per restart; the entry register `rdi`).
    pub generation: u32,
    /// The message.
    pub body: M,
}

impl<M> Envelope<M> {
    /// An envelope of the current protocol version.
    pub const fn new(generation: u32, body: M) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            generation,
            body,
        }
    }
}

/// A message type of some protocol.
pub trait Message: Serialize + DeserializeOwned {
    /// Largest postcard encoding of any value of the type, in bytes.
    const MAX_ENCODED_SIZE: usize;
}

/// A message type the core receives from a server: it says how to validate
/// what decoding alone cannot (ids, ranges).
pub trait FromServer: Message {
    /// Runtime facts the check needs (numbers of domains, vCPUs, frames); `()`
    /// if none.
    type Context;

    /// Checks ids and ranges; [`DecodeError::OutOfRange`] if one is wrong.
    fn validate(&self, context: &Self::Context) -> Result<(), DecodeError>;
}

/// What the core tells a server about a message it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The envelope's version is not [`PROTOCOL_VERSION`].
    BadVersion,
    /// The envelope's generation is not the server's current one.
    StaleGeneration,
    /// The bytes are not a valid encoding of the protocol's message.
    Malformed,
    /// An id or number is outside its range.
    OutOfRange,
    /// The ring slot's length word was larger than a slot.
    BadLength,
    /// A valid message the protocol does not allow at this point.
    Unexpected,
}

impl ErrorCode {
    /// Largest encoding of an error code.
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT;
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The version byte is not [`PROTOCOL_VERSION`].
    BadVersion {
        /// The version found.
        found: u8,
    },
    /// The generation is not the expected one.
    StaleGeneration {
        /// The generation found.
        found: u32,
        /// The server instance's generation.
        expected: u32,
    },
    /// The bytes are not a valid postcard encoding of the envelope (truncated,
    /// unknown variant, a collection too long, a bad varint...).
    Malformed,
    /// Bytes are left over after the message.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A protocol check failed.
    OutOfRange {
        /// The field that was out of range.
        field: &'static str,
    },
}

impl DecodeError {
    /// The error code the core replies with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadVersion { .. } => ErrorCode::BadVersion,
            Self::StaleGeneration { .. } => ErrorCode::StaleGeneration,
            Self::Malformed | Self::TrailingBytes { .. } => ErrorCode::Malformed,
            Self::OutOfRange { .. } => ErrorCode::OutOfRange,
        }
    }

    /// A one-line reason for the console.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadVersion { .. } => "message version is not the core's protocol version",
            Self::StaleGeneration { .. } => "message from another server generation",
            Self::Malformed => "message is not valid postcard for its protocol",
            Self::TrailingBytes { .. } => "bytes left over after the message",
            Self::OutOfRange { .. } => "message field out of range",
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The buffer is shorter than the encoding.
    BufferTooSmall,
    /// The serializer refused the value.
    Serialize,
}

/// Encodes `envelope` into the front of `buffer`; returns the encoded length.
/// A buffer of [`envelope_max_size::<M>()`](envelope_max_size) bytes (or a
/// ring slot) is always large enough.
pub fn encode<M: Message>(envelope: &Envelope<M>, buffer: &mut [u8]) -> Result<usize, EncodeError> {
    match postcard::to_slice(envelope, buffer) {
        Ok(encoded) => Ok(encoded.len()),
        Err(postcard::Error::SerializeBufferFull) => Err(EncodeError::BufferTooSmall),
        Err(_) => Err(EncodeError::Serialize),
    }
}

/// The core's one decode path for server input: checks version, generation,
/// encoding and the protocol's ranges, and returns the message body.
pub fn decode_from_server<M: FromServer>(
    bytes: &[u8],
    expected_generation: u32,
    context: &M::Context,
) -> Result<M, DecodeError> {
    let body = decode_envelope::<M>(bytes, expected_generation)?;
    body.validate(context)?;
    Ok(body)
}

/// A server's decode path for what the core sends: version, generation and
/// encoding (the core is trusted for ranges).
pub fn decode_from_core<M: Message>(
    bytes: &[u8],
    expected_generation: u32,
) -> Result<M, DecodeError> {
    decode_envelope(bytes, expected_generation)
}

/// Decodes an [`Envelope`] field by field, so a wrong version or generation
/// is reported as such before the body (whose format may differ) is touched.
fn decode_envelope<M: Message>(bytes: &[u8], expected_generation: u32) -> Result<M, DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Malformed)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::BadVersion { found: version });
    }
    let (generation, rest) =
        postcard::take_from_bytes::<u32>(rest).map_err(|_| DecodeError::Malformed)?;
    if generation != expected_generation {
        return Err(DecodeError::StaleGeneration {
            found: generation,
            expected: expected_generation,
        });
    }
    let (body, rest) = postcard::take_from_bytes::<M>(rest).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(body)
}

/// Largest postcard encodings of the building blocks of a message, for
/// [`Message::MAX_ENCODED_SIZE`]. postcard writes `u8` and `bool` as one
/// byte, wider integers (and `usize` lengths) as LEB128 varints (signed ones
/// zigzagged first), an enum variant as a varint index, an `Option` as a tag
/// byte and the value, a collection as a varint length and its elements.
pub mod size {
    /// `u8`, `i8`, `bool`.
    pub const U8: usize = 1;
    /// `u16`, `i16`.
    pub const U16: usize = varint(u16::MAX as u64);
    /// `u32`, `i32`.
    pub const U32: usize = varint(u32::MAX as u64);
    /// `u64`, `i64`.
    pub const U64: usize = varint(u64::MAX);
    /// A `usize` (a collection's length) on the 64-bit targets cairn runs on.
    pub const USIZE: usize = varint(usize::MAX as u64);
    /// The variant index of an enum with fewer than 128 variants.
    pub const VARIANT: usize = varint(127);

    /// Length of `value` as a LEB128 varint.
    pub const fn varint(value: u64) -> usize {
        let bits = 64 - value.leading_zeros() as usize;
        if bits == 0 {
            1
        } else {
            bits.div_ceil(7)
        }
    }

    /// A collection of at most `capacity` elements of at most `element` bytes
    /// each (`heapless::Vec<T, capacity>`, `heapless::String<capacity>` with
    /// `element` = 1).
    pub const fn collection(capacity: usize, element: usize) -> usize {
        varint(capacity as u64) + capacity * element
    }

    /// An `Option` of a value of at most `value` bytes.
    pub const fn option(value: usize) -> usize {
        1 + value
    }

    /// The larger of two sizes (for the variants of an enum).
    pub const fn max(a: usize, b: usize) -> usize {
        if a > b {
            a
        } else {
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_sizes_match_postcard() {
        let mut buffer = [0u8; 16];
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let encoded = postcard::to_slice(&value, &mut buffer).unwrap().len();
            assert_eq!(size::varint(value), encoded, "value {value}");
        }
        assert_eq!(
            (size::U16, size::U32, size::U64, size::VARIANT),
            (3, 5, 10, 1)
        );
        assert_eq!(size::collection(32, 1), 33);
        assert_eq!(size::collection(200, 1), 202);
    }

    #[test]
    fn error_codes_fit_their_bound() {
        let mut buffer = [0u8; 8];
        let codes = [
            ErrorCode::BadVersion,
            ErrorCode::StaleGeneration,
            ErrorCode::Malformed,
            ErrorCode::OutOfRange,
            ErrorCode::BadLength,
            ErrorCode::Unexpected,
        ];
        for code in codes {
            assert!(
                postcard::to_slice(&code, &mut buffer).unwrap().len()
                    <= ErrorCode::MAX_ENCODED_SIZE
            );
        }
    }
}

//! Encode/decode properties of every message type, and the checks of the
//! core's decode path on server input.

use heapless::Vec;
use ipc::messages::test_server::{EchoPayload, ToCore, ToServer, ECHO_PAYLOAD_MAX};
use ipc::messages::{
    decode_from_core, decode_from_server, encode, envelope_max_size, DecodeError, EncodeError,
    Envelope, ErrorCode, FromServer, Message, MAX_MESSAGE_SIZE, PROTOCOL_VERSION,
};
use ipc::ring::SLOT_PAYLOAD;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn payload() -> impl Strategy<Value = EchoPayload> {
    proptest::collection::vec(any::<u8>(), 0..=ECHO_PAYLOAD_MAX)
        .prop_map(|bytes| Vec::from_slice(&bytes).expect("at most the capacity"))
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadVersion),
        Just(ErrorCode::StaleGeneration),
        Just(ErrorCode::Malformed),
        Just(ErrorCode::OutOfRange),
        Just(ErrorCode::BadLength),
        Just(ErrorCode::Unexpected),
    ]
}

fn to_server() -> impl Strategy<Value = ToServer> {
    prop_oneof![
        (any::<u32>(), payload())
            .prop_map(|(sequence, payload)| ToServer::Echo { sequence, payload }),
        error_code().prop_map(|code| ToServer::Error { code }),
    ]
}

fn to_core() -> impl Strategy<Value = ToCore> {
    prop_oneof![
        Just(ToCore::Ready),
        (any::<u32>(), payload())
            .prop_map(|(sequence, payload)| ToCore::EchoReply { sequence, payload }),
        any::<u64>().prop_map(|count| ToCore::Heartbeat { count }),
    ]
}

fn encoded<M: Message>(generation: u32, body: M) -> std::vec::Vec<u8> {
    let mut buffer = [0; SLOT_PAYLOAD];
    let length =
        encode(&Envelope::new(generation, body), &mut buffer).expect("a slot holds any message");
    buffer[..length].to_vec()
}

fn full_payload() -> EchoPayload {
    Vec::from_slice(&[0xff; ECHO_PAYLOAD_MAX]).expect("exactly the capacity")
}

#[test]
fn worst_cases_meet_the_size_bounds_exactly() {
    let echo = ToServer::Echo {
        sequence: u32::MAX,
        payload: full_payload(),
    };
    assert_eq!(
        encoded(u32::MAX, echo).len(),
        envelope_max_size::<ToServer>()
    );
    let reply = ToCore::EchoReply {
        sequence: u32::MAX,
        payload: full_payload(),
    };
    assert_eq!(
        encoded(u32::MAX, reply).len(),
        envelope_max_size::<ToCore>()
    );
    assert_eq!(envelope_max_size::<ToServer>(), 45);
    assert_eq!(envelope_max_size::<ToCore>(), 45);
    assert_eq!(MAX_MESSAGE_SIZE, 45);
}

#[test]
fn envelope_is_version_then_generation_then_body() {
    let bytes = encoded(300, ToCore::Heartbeat { count: 5 });
    // version, varint 300, variant 2, varint 5
    assert_eq!(bytes, [PROTOCOL_VERSION, 0xac, 0x02, 2, 5]);
    assert_eq!(encoded(1, ToCore::Ready), [PROTOCOL_VERSION, 1, 0]);
}

#[test]
fn each_check_has_its_error() {
    let good = encoded(3, ToCore::Ready);
    assert_eq!(
        decode_from_server::<ToCore>(&good, 3, &()),
        Ok(ToCore::Ready)
    );

    let mut bad_version = good.clone();
    bad_version[0] = PROTOCOL_VERSION.wrapping_add(1);
    let error = decode_from_server::<ToCore>(&bad_version, 3, &()).unwrap_err();
    assert_eq!(
        error,
        DecodeError::BadVersion {
            found: PROTOCOL_VERSION.wrapping_add(1)
        }
    );
    assert_eq!(error.code(), ErrorCode::BadVersion);

    let error = decode_from_server::<ToCore>(&good, 4, &()).unwrap_err();
    assert_eq!(
        error,
        DecodeError::StaleGeneration {
            found: 3,
            expected: 4
        }
    );
    assert_eq!(error.code(), ErrorCode::StaleGeneration);

    for truncated in [&good[..0], &good[..1], &good[..2]] {
        assert_eq!(
            decode_from_server::<ToCore>(truncated, 3, &()),
            Err(DecodeError::Malformed)
        );
    }
    let mut unknown_variant = good.clone();
    unknown_variant[2] = 3;
    assert_eq!(
        decode_from_server::<ToCore>(&unknown_variant, 3, &()),
        Err(DecodeError::Malformed)
    );

    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0, 0]);
    let error = decode_from_server::<ToCore>(&trailing, 3, &()).unwrap_err();
    assert_eq!(error, DecodeError::TrailingBytes { count: 2 });
    assert_eq!(error.code(), ErrorCode::Malformed);

    // A payload longer than its capacity: variant 1, sequence 0, length 33.
    let mut too_long = vec![PROTOCOL_VERSION, 3, 1, 0, 33];
    too_long.extend_from_slice(&[0; 33]);
    assert_eq!(
        decode_from_server::<ToCore>(&too_long, 3, &()),
        Err(DecodeError::Malformed)
    );
    // A generation varint longer than a u32.
    let overlong = [PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0];
    assert_eq!(
        decode_from_server::<ToCore>(&overlong, 3, &()),
        Err(DecodeError::Malformed)
    );
}

#[test]
fn encode_reports_a_short_buffer() {
    let mut buffer = [0; 4];
    let envelope = Envelope::new(1, ToCore::Heartbeat { count: u64::MAX });
    assert_eq!(
        encode(&envelope, &mut buffer),
        Err(EncodeError::BufferTooSmall)
    );
}

/// A stand-in protocol with a range check, to show the validate hook runs.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Ranged {
    Vcpu { id: u8 },
}

impl Message for Ranged {
    const MAX_ENCODED_SIZE: usize = 2;
}

impl FromServer for Ranged {
    type Context = u8;

    fn validate(&self, vcpus: &u8) -> Result<(), DecodeError> {
        match self {
            Self::Vcpu { id } if id < vcpus => Ok(()),
            Self::Vcpu { .. } => Err(DecodeError::OutOfRange { field: "vcpu" }),
        }
    }
}

#[test]
fn validate_hook_rejects_out_of_range_ids() {
    let bytes = encoded(1, Ranged::Vcpu { id: 4 });
    assert_eq!(
        decode_from_server::<Ranged>(&bytes, 1, &5),
        Ok(Ranged::Vcpu { id: 4 })
    );
    let error = decode_from_server::<Ranged>(&bytes, 1, &4).unwrap_err();
    assert_eq!(error, DecodeError::OutOfRange { field: "vcpu" });
    assert_eq!(error.code(), ErrorCode::OutOfRange);
}

proptest! {
    #[test]
    fn to_server_round_trips(generation in any::<u32>(), body in to_server()) {
        let bytes = encoded(generation, body.clone());
        prop_assert!(bytes.len() <= envelope_max_size::<ToServer>());
        prop_assert_eq!(decode_from_core::<ToServer>(&bytes, generation), Ok(body.clone()));
        let envelope: Envelope<ToServer> = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(envelope, Envelope::new(generation, body));
    }

    #[test]
    fn to_core_round_trips(generation in any::<u32>(), body in to_core()) {
        let bytes = encoded(generation, body.clone());
        prop_assert!(bytes.len() <= envelope_max_size::<ToCore>());
        prop_assert_eq!(decode_from_server::<ToCore>(&bytes, generation, &()), Ok(body.clone()));
        prop_assert_eq!(decode_from_core::<ToCore>(&bytes, generation), Ok(body));
    }

    /// Random bytes: an error, or a message that re-encodes within bounds and
    /// decodes to itself.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(body) = decode_from_server::<ToCore>(&bytes, 1, &()) {
            let again = encoded(1, body.clone());
            prop_assert!(again.len() <= bytes.len());
            prop_assert_eq!(decode_from_server::<ToCore>(&again, 1, &()), Ok(body));
        }
        let _ = decode_from_core::<ToServer>(&bytes, 1);
    }

    /// Valid messages with a few bytes changed: same property, but near the
    /// valid encodings where the decoder has most to check.
    #[test]
    fn mutated_messages_never_panic(
        body in to_core(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(1, body);
        for (position, value) in edits {
            let position = position.index(bytes.len());
            bytes[position] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        if let Ok(body) = decode_from_server::<ToCore>(&bytes, 1, &()) {
            prop_assert_eq!(decode_from_server::<ToCore>(&encoded(1, body.clone()), 1, &()), Ok(body));
        }
    }
}

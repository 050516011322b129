//! The scheduler protocol (`ipc::messages::scheduler`): round trips, the
//! worst-case encodings against the size constants, and the core's range
//! checks.

use heapless::Vec;
use ipc::messages::scheduler::{
    Applied, ControlError, DomainRecord, Event, EventError, KnobError,
    PublishedCredit, RebuildError, Shape, ToCore, ToServer, Vcpu, VcpuRecord, VcpuState,
    EVENT_BATCH_LEN, MAX_DOMAINS, REBUILD_DOMAIN_BATCH_LEN,
    REBUILD_VCPU_BATCH_LEN,
};
use ipc::messages::{
    decode_from_core, decode_from_server, encode, envelope_max_size, DecodeError, Envelope,
    ErrorCode, Message,
};
use ipc::ring::SLOT_PAYLOAD;
use proptest::prelude::*;
use serde::Serialize;

fn encoded<M: Message>(generation: u32, body: M) -> std::vec::Vec<u8> {
    let mut buffer = [0; SLOT_PAYLOAD];
    let length =
        encode(&Envelope::new(generation, body), &mut buffer).expect("a slot holds any message");
    buffer[..length].to_vec()
}

fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::to_allocvec(value).expect("encodes").len()
}

// ----- strategies -----

fn vcpu() -> impl Strategy<Value = Vcpu> {
    (any::<u16>(), any::<u8>()).prop_map(|(domain, index)| Vcpu::new(domain, index))
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        any::<u8>().prop_map(|pcpu| Event::PcpuOnline { pcpu }),
        (any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(domain, weight, cap)| {
            Event::DomainCreated {
                domain,
                weight,
                cap,
            }
        }),
        any::<u16>().prop_map(|domain| Event::DomainDestroyed { domain }),
        (vcpu(), any::<bool>()).prop_map(|(vcpu, runnable)| Event::VcpuCreated { vcpu, runnable }),
        vcpu().prop_map(|vcpu| Event::VcpuDestroyed { vcpu }),
        (any::<u8>(), proptest::option::of(vcpu()), any::<u64>())
            .prop_map(|(pcpu, vcpu, at)| Event::Dispatched { pcpu, vcpu, at }),
        (vcpu(), any::<u8>(), any::<u64>()).prop_map(|(vcpu, pcpu, ns)| Event::Ran {
            vcpu,
            pcpu,
            ns
        }),
        (vcpu(), any::<u64>()).prop_map(|(vcpu, at)| Event::Blocked { vcpu, at }),
        (vcpu(), any::<u64>()).prop_map(|(vcpu, at)| Event::Woke { vcpu, at }),
        vcpu().prop_map(|vcpu| Event::Yielded { vcpu }),
        any::<u64>().prop_map(|now| Event::Tick { now }),
    ]
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

fn vcpu_state() -> impl Strategy<Value = VcpuState> {
    prop_oneof![
        any::<u8>().prop_map(|pcpu| VcpuState::Running { pcpu }),
        any::<u8>().prop_map(|pcpu| VcpuState::Runnable { pcpu }),
        Just(VcpuState::Blocked),
    ]
}

fn vcpu_record() -> impl Strategy<Value = VcpuRecord> {
    (
        vcpu(),
        vcpu_state(),
        any::<u64>(),
        proptest::option::of((any::<i64>(), any::<u64>())),
    )
        .prop_map(|(vcpu, state, run_time_ns, published)| VcpuRecord {
            vcpu,
            state,
            run_time_ns,
            published: published.map(|(credit_ns, run_time_ns)| PublishedCredit {
                credit_ns,
                run_time_ns,
            }),
        })
}

fn to_server() -> impl Strategy<Value = ToServer> {
    prop_oneof![
        proptest::collection::vec(event(), 0..=EVENT_BATCH_LEN).prop_map(|events| {
            ToServer::Events {
                batch: Vec::from_slice(&events).expect("within capacity"),
            }
        }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            proptest::option::of(any::<u64>()),
            any::<u8>()
        )
            .prop_map(|(now, timeslice_ms, ratelimit_us, accounted_at, pcpus)| {
                ToServer::RebuildBegin {
                    now,
                    timeslice_ms,
                    ratelimit_us,
                    accounted_at,
                    pcpus,
                }
            }),
        proptest::collection::vec(
            (any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(domain, weight, cap)| {
                DomainRecord {
                    domain,
                    weight,
                    cap,
                }
            }),
            0..=REBUILD_DOMAIN_BATCH_LEN
        )
        .prop_map(|records| ToServer::RebuildDomains {
            records: Vec::from_slice(&records).expect("within capacity"),
        }),
        proptest::collection::vec(vcpu_record(), 0..=REBUILD_VCPU_BATCH_LEN).prop_map(|records| {
            ToServer::RebuildVcpus {
                records: Vec::from_slice(&records).expect("within capacity"),
            }
        }),
        (any::<u16>(), any::<u16>())
            .prop_map(|(domains, vcpus)| ToServer::RebuildEnd { domains, vcpus }),
        (
            any::<u32>(),
            any::<u16>(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(request, domain, weight, cap)| ToServer::SetDomain {
                request,
                domain,
                weight,
                cap
            }),
        (
            any::<u32>(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(
                |(request, timeslice_ms, ratelimit_us)| ToServer::Configure {
                    request,
                    timeslice_ms,
                    ratelimit_us
                }
            ),
        error_code().prop_map(|code| ToServer::Error { code }),
    ]
}

fn knob_error() -> impl Strategy<Value = KnobError> {
    prop_oneof![
        any::<u32>().prop_map(|requested| KnobError::WeightOutOfRange { requested }),
        any::<u32>().prop_map(|requested| KnobError::CapOutOfRange { requested }),
        any::<u32>().prop_map(|requested_ms| KnobError::TimesliceOutOfRange { requested_ms }),
        any::<u32>().prop_map(|requested_us| KnobError::RatelimitOutOfRange { requested_us }),
        (any::<u32>(), any::<u32>()).prop_map(|(ratelimit_us, timeslice_ms)| {
            KnobError::RatelimitAboveTimeslice {
                ratelimit_us,
                timeslice_ms,
            }
        }),
    ]
}

fn event_error() -> impl Strategy<Value = EventError> {
    prop_oneof![
        any::<u16>().prop_map(EventError::UnknownDomain),
        vcpu().prop_map(EventError::UnknownVcpu),
        any::<u16>().prop_map(EventError::DomainExists),
        vcpu().prop_map(EventError::VcpuExists),
        Just(EventError::TooManyDomains),
        vcpu().prop_map(EventError::VcpuIndexOutOfRange),
        any::<u8>().prop_map(EventError::PcpuOutOfRange),
        any::<u8>().prop_map(EventError::PcpuOffline),
        Just(EventError::NoPcpuOnline),
    ]
}

/// Any `ToCore` the types admit (ids not necessarily in any shape's range).
fn to_core() -> impl Strategy<Value = ToCore> {
    let applied = prop_oneof![
        (any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(domain, weight, cap)| {
            Applied::Domain {
                domain,
                weight,
                cap,
            }
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(timeslice_ms, ratelimit_us)| {
            Applied::Tunables {
                timeslice_ms,
                ratelimit_us,
            }
        }),
    ];
    let control_error = prop_oneof![
        knob_error().prop_map(ControlError::Knob),
        any::<u16>().prop_map(|domain| ControlError::UnknownDomain { domain }),
        Just(ControlError::NotReady),
    ];
    let rebuild_error = prop_oneof![
        Just(RebuildError::OutOfOrder),
        Just(RebuildError::TooManyRecords),
        (any::<u16>(), any::<u16>())
            .prop_map(|(domains, vcpus)| RebuildError::Incomplete { domains, vcpus }),
        knob_error().prop_map(RebuildError::Knob),
        event_error().prop_map(RebuildError::Refused),
    ];
    prop_oneof![
        Just(ToCore::Ready),
        (any::<u8>(), proptest::option::of(vcpu()))
            .prop_map(|(pcpu, expected)| ToCore::Tickle { pcpu, expected }),
        (
            any::<u32>(),
            prop_oneof![applied.prop_map(Ok), control_error.prop_map(Err)]
        )
            .prop_map(|(request, result)| ToCore::ControlResult { request, result }),
        rebuild_error.prop_map(|reason| ToCore::RebuildFailed { reason }),
        any::<u64>().prop_map(|count| ToCore::Heartbeat { count }),
    ]
}

/// A shape in which every id of `ToCore` is valid: 255 pCPUs is more than a
/// u8 pCPU can name, and every domain of the first [`MAX_DOMAINS`] has 255
/// vCPUs. (Domain ids above that still fail; the round trip below uses
/// [`decode_from_core`] for the bytes and only checks validation as agreeing
/// with [`ToCore::validate`].)
fn wide_shape() -> Shape {
    Shape {
        pcpus: 255,
        vcpus: [255; MAX_DOMAINS],
    }
}

proptest! {
    #[test]
    fn to_server_round_trips(generation in any::<u32>(), body in to_server()) {
        let bytes = encoded(generation, body.clone());
        prop_assert!(bytes.len() <= envelope_max_size::<ToServer>());
        prop_assert_eq!(decode_from_core::<ToServer>(&bytes, generation), Ok(body));
    }

    #[test]
    fn to_core_round_trips(generation in any::<u32>(), body in to_core()) {
        let bytes = encoded(generation, body.clone());
        prop_assert!(bytes.len() <= envelope_max_size::<ToCore>());
        prop_assert_eq!(decode_from_core::<ToCore>(&bytes, generation), Ok(body.clone()));
        // The core's path agrees with the validation hook.
        use ipc::messages::FromServer;
        let shape = wide_shape();
        let expected = body.validate(&shape).map(|()| body);
        prop_assert_eq!(decode_from_server::<ToCore>(&bytes, generation, &shape), expected);
    }

    /// Random bytes: an error, or a message that re-encodes within bounds
    /// and decodes to itself.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let shape = wide_shape();
        if let Ok(body) = decode_from_server::<ToCore>(&bytes, 1, &shape) {
            let again = encoded(1, body.clone());
            prop_assert!(again.len() <= bytes.len());
            prop_assert_eq!(decode_from_server::<ToCore>(&again, 1, &shape), Ok(body));
        }
        if let Ok(body) = decode_from_core::<ToServer>(&bytes, 1) {
            prop_assert_eq!(decode_from_core::<ToServer>(&encoded(1, body.clone()), 1), Ok(body));
        }
    }
}

// ----- worst cases -----

const MAX_VCPU: Vcpu = Vcpu::new(u16::MAX, u8::MAX);

#[test]
fn worst_case_parts_meet_their_constants() {
    assert_eq!(encoded_len(&MAX_VCPU), Vcpu::MAX_ENCODED_SIZE);
    let dispatched = Event::Dispatched {
        pcpu: u8::MAX,
        vcpu: Some(MAX_VCPU),
        at: u64::MAX,
    };
    assert_eq!(encoded_len(&dispatched), Event::MAX_ENCODED_SIZE);
    assert_eq!(
        encoded_len(&worst_vcpu_record()),
        VcpuRecord::MAX_ENCODED_SIZE
    );
    assert_eq!(
        encoded_len(&worst_domain_record()),
        DomainRecord::MAX_ENCODED_SIZE
    );
    let knob = KnobError::RatelimitAboveTimeslice {
        ratelimit_us: u32::MAX,
        timeslice_ms: u32::MAX,
    };
    assert_eq!(encoded_len(&knob), KnobError::MAX_ENCODED_SIZE);
    assert_eq!(
        encoded_len(&ControlError::Knob(knob)),
        ControlError::MAX_ENCODED_SIZE
    );
    let applied = Applied::Domain {
        domain: u16::MAX,
        weight: u32::MAX,
        cap: u32::MAX,
    };
    assert_eq!(encoded_len(&applied), Applied::MAX_ENCODED_SIZE);
    assert_eq!(
        encoded_len(&EventError::VcpuIndexOutOfRange(MAX_VCPU)),
        EventError::MAX_ENCODED_SIZE
    );
    assert_eq!(
        encoded_len(&RebuildError::Knob(knob)),
        RebuildError::MAX_ENCODED_SIZE
    );
}

fn worst_vcpu_record() -> VcpuRecord {
    VcpuRecord {
        vcpu: MAX_VCPU,
        state: VcpuState::Running { pcpu: u8::MAX },
        run_time_ns: u64::MAX,
        published: Some(PublishedCredit {
            credit_ns: i64::MIN,
            run_time_ns: u64::MAX,
        }),
    }
}

fn worst_domain_record() -> DomainRecord {
    DomainRecord {
        domain: u16::MAX,
        weight: u32::MAX,
        cap: u32::MAX,
    }
}

#[test]
fn worst_case_messages_meet_the_size_bounds_exactly() {
    let dispatched = Event::Dispatched {
        pcpu: u8::MAX,
        vcpu: Some(MAX_VCPU),
        at: u64::MAX,
    };
    let events = ToServer::Events {
        batch: Vec::from_slice(&[dispatched; EVENT_BATCH_LEN]).expect("exactly the capacity"),
    };
    assert_eq!(
        encoded(u32::MAX, events).len(),
        envelope_max_size::<ToServer>()
    );
    let applied = ToCore::ControlResult {
        request: u32::MAX,
        result: Ok(Applied::Domain {
            domain: u16::MAX,
            weight: u32::MAX,
            cap: u32::MAX,
        }),
    };
    assert_eq!(
        encoded(u32::MAX, applied).len(),
        envelope_max_size::<ToCore>()
    );
    assert_eq!(envelope_max_size::<ToServer>(), 246);
    assert_eq!(envelope_max_size::<ToCore>(), 27);
    assert!(envelope_max_size::<ToServer>() <= SLOT_PAYLOAD);

    // The other large messages fit too, at their largest.
    let vcpus = ToServer::RebuildVcpus {
        records: Vec::from_slice(&[worst_vcpu_record(); REBUILD_VCPU_BATCH_LEN])
            .expect("exactly the capacity"),
    };
    assert!(encoded(u32::MAX, vcpus).len() <= envelope_max_size::<ToServer>());
    let domains = ToServer::RebuildDomains {
        records: Vec::from_slice(&[worst_domain_record(); REBUILD_DOMAIN_BATCH_LEN])
            .expect("exactly the capacity"),
    };
    assert!(encoded(u32::MAX, domains).len() <= envelope_max_size::<ToServer>());
}

#[test]
fn a_batch_longer_than_its_capacity_is_malformed() {
    // Events, with a length of EVENT_BATCH_LEN + 1 Yielded events.
    let mut bytes = encoded(
        1,
        ToServer::Events {
            batch: Vec::from_slice(
                &[Event::Yielded {
                    vcpu: Vcpu::new(0, 0),
                }; EVENT_BATCH_LEN],
            )
            .expect("exactly the capacity"),
        },
    );
    // version, generation, variant, length: patch the length, add one more.
    assert_eq!(bytes[3], EVENT_BATCH_LEN as u8);
    bytes[3] += 1;
    bytes.extend_from_slice(&[9, 0, 0]);
    assert_eq!(
        decode_from_core::<ToServer>(&bytes, 1),
        Err(DecodeError::Malformed)
    );
}

// ----- the core's range checks -----

/// 2 pCPUs; domain 0 with 2 vCPUs, domain 2 with 1 (domain 1 absent).
fn shape() -> Shape {
    Shape::new(2).with_domain(0, 2).with_domain(2, 1)
}

fn check(body: ToCore) -> Result<ToCore, DecodeError> {
    decode_from_server::<ToCore>(&encoded(4, body), 4, &shape())
}

fn out_of_range(field: &'static str) -> Result<ToCore, DecodeError> {
    Err(DecodeError::OutOfRange { field })
}

#[test]
fn validate_accepts_ids_in_range() {
    let good = [
        ToCore::Tickle {
            pcpu: 1,
            expected: None,
        },
        ToCore::Tickle {
            pcpu: 0,
            expected: Some(Vcpu::new(2, 0)),
        },
        ToCore::ControlResult {
            request: 1,
            result: Ok(Applied::Domain {
                domain: 2,
                weight: 1,
                cap: 800,
            }),
        },
        ToCore::ControlResult {
            request: 2,
            result: Ok(Applied::Tunables {
                timeslice_ms: 1,
                ratelimit_us: 1000,
            }),
        },
        ToCore::ControlResult {
            request: 3,
            result: Ok(Applied::Tunables {
                timeslice_ms: 1000,
                ratelimit_us: 0,
            }),
        },
        ToCore::ControlResult {
            request: 4,
            // A refusal names whatever was asked for, in range or not.
            result: Err(ControlError::UnknownDomain { domain: 999 }),
        },
    ];
    for body in good {
        assert_eq!(check(body.clone()), Ok(body));
    }
}

#[test]
fn validate_rejects_out_of_range_ids() {
    let tickle = |pcpu| ToCore::Tickle {
        pcpu,
        expected: None,
    };
    assert_eq!(check(tickle(255)), out_of_range("pcpu"));
    // Domain 1 does not exist, domain 0 has vCPUs 0 and 1 only, domain 16
    // is beyond the table.
    for vcpu in [Vcpu::new(1, 0), Vcpu::new(0, 2), Vcpu::new(16, 0), MAX_VCPU] {
        assert_eq!(
            check(ToCore::Tickle {
                pcpu: 0,
                expected: Some(vcpu)
            }),
            out_of_range("expected")
        );
    }
    assert_eq!(
        check(ToCore::Tickle {
            pcpu: 2,
            expected: None
        }),
        out_of_range("pcpu")
    );
    let applied = |applied| ToCore::ControlResult {
        request: 0,
        result: Ok(applied),
    };
    let domain = |domain, weight, cap| {
        applied(Applied::Domain {
            domain,
            weight,
            cap,
        })
    };
    assert_eq!(check(domain(1, 256, 0)), out_of_range("domain"));
    assert_eq!(check(domain(0, 0, 0)), out_of_range("weight"));
    assert_eq!(check(domain(0, 65_536, 0)), out_of_range("weight"));
    assert_eq!(check(domain(0, 256, 801)), out_of_range("cap"));
    let tunables = |timeslice_ms, ratelimit_us| {
        applied(Applied::Tunables {
            timeslice_ms,
            ratelimit_us,
        })
    };
    assert_eq!(check(tunables(0, 0)), out_of_range("timeslice_ms"));
    assert_eq!(check(tunables(1001, 0)), out_of_range("timeslice_ms"));
    assert_eq!(check(tunables(30, 99)), out_of_range("ratelimit_us"));
    assert_eq!(check(tunables(1000, 500_001)), out_of_range("ratelimit_us"));
    assert_eq!(check(tunables(1, 1001)), out_of_range("ratelimit_us"));
    let error = check(tickle(9)).unwrap_err();
    assert_eq!(error.code(), ErrorCode::OutOfRange);
}

//! The control protocol between the host (`hvctl`, the runner's scenario
//! steps) and the core (issue #4 §7; issue #5 §4 and issue #6 §4 add
//! commands at the end).
//!
//! # Transport
//!
//! The machine's second serial port, COM2 ([`COM2_PORT`], IRQ [`COM2_IRQ`]),
//! which the runner connects to a UNIX socket on the host. It is a byte
//! stream, so every message travels as one frame:
//!
//! ```text
//! frame      = COBS(postcard(message)) 0x00
//! request    = Request  { id: varint u32, command: variant index (varint), fields }
//! response   = Response { id: varint u32, result: 0 = Ok + Reply | 1 = Err + ControlError }
//! ```
//!
//! COBS (consistent-overhead byte stuffing) leaves no 0x00 inside a frame,
//! so 0x00 only ever ends one: a receiver that joins mid-frame, sees garbage
//! or overflows its buffer drops what it has and starts afresh after the next
//! 0x00 ([`FrameReceiver`]). Empty frames (0x00 0x00) are ignored, so a
//! sender may send a 0x00 first to flush whatever half frame the receiver
//! holds; `hvctl` does, at every connection.
//!
//! # Sizes
//!
//! A request frame, delimiter included, never exceeds
//! [`REQUEST_FRAME_LIMIT`] = 256 bytes and a response frame
//! [`RESPONSE_FRAME_LIMIT`] = 4096: these are the receive buffers of the
//! core and of `hvctl`, fixed for every version of the protocol. The largest
//! frames the commands of this version produce are
//! [`MAX_REQUEST_FRAME_SIZE`] and [`MAX_RESPONSE_FRAME_SIZE`] (the core's
//! send buffer), asserted below the limits at compile time. That is why
//! `Stats` asks for one domain at a time: 128 vCPUs' statistics would not
//! fit one response.
//!
//! # The conversation
//!
//! The host sends a [`Request`]; the core answers it with a [`Response`]
//! carrying the same id, in order, one request at a time. A request that
//! arrives while the core still waits for a server on an earlier one is
//! answered [`ControlError::Busy`]. A frame the core cannot read is answered
//! [`ControlError::Malformed`] with the request's id if that much was
//! readable, else [`UNKNOWN_REQUEST_ID`] (which the host never uses); a
//! command the core does not know (a newer `hvctl`) or does not implement
//! yet is answered [`ControlError::Unsupported`]. The core decodes requests
//! only with [`decode_request`].
//!
//! # The core's side, byte by byte
//!
//! * COM2 is a 16550 at [`COM2_PORT`]: received bytes are read from RBR
//!   (+0) while LSR (+5) bit 0 is set, polled or on IRQ [`COM2_IRQ`] with
//!   IER (+1) bit 0; bytes are sent by writing THR (+0) whenever LSR bit 5
//!   is set, never assuming it is. QEMU holds back what the UART cannot
//!   take yet, so nothing is lost while the core is slow, and drops what
//!   the core sends while no client is connected.
//! * Every received byte goes into a [`RequestReceiver`]; a
//!   [`Received::Frame`] goes to [`decode_request`], then
//!   [`Command::validate_in`]; a refusal or a [`Received::Overflow`] is
//!   answered at once ([`Response::refusal`], [`UNKNOWN_REQUEST_ID`] for an
//!   overflow), nothing else happens.
//! * Queries (`List`, `*Get`, `Stats`, `HaltPollHistograms`) are answered
//!   from the core's own state: it keeps the knob values the scheduler
//!   server last accepted. `SchedCreditSet` and `SchedGlobalSet` are
//!   relayed to the scheduler server (`SetDomain`, `Configure`) and
//!   answered when its `ControlResult` comes (`From` impls below), or
//!   [`ControlError::ServerUnavailable`] if it is down, restarts, or does
//!   not answer in time; a request that arrives meanwhile gets
//!   [`ControlError::Busy`]. `HaltPollSet` changes the core's own
//!   parameters. `MemSet` sets the domain's resident target in the core,
//!   passes it to the pager server (`Domain`, which applies it whenever it
//!   runs) and is answered [`Reply::Done`] at once. Commands not
//!   implemented yet get [`ControlError::Unsupported`].
//! * The response is encoded with [`encode_response`] into a buffer of
//!   [`MAX_RESPONSE_FRAME_SIZE`] bytes and sent from a non-hot path, a few
//!   bytes per visit; while a response is being sent, no request is read.
//!
//! # Validation
//!
//! In one place, [`Command::validate`] (the ranges, no context) and
//! [`Command::validate_in`] (with the machine's domains and vCPUs). `hvctl`
//! calls them before it sends, for a good message; the core calls them
//! before it acts, for safety. An invalid request changes nothing and the
//! error says why ([`ControlError`]'s `Display`, host side).
//!
//! | knob | range | source |
//! |---|---|---|
//! | weight | 1..=65535 | libxl `sched_credit_domain_set` |
//! | cap | 0 (none) or 1..=100 × the domain's vCPUs, so ≤ 800 | libxl `sched_credit_domain_set` |
//! | tslice_ms | 1..=1000 | `XEN_SYSCTL_CSCHED_TSLICE_{MIN,MAX}`, libxl `sched_credit_params_set` |
//! | ratelimit_us | 0 (off) or 100..=500000, and ≤ tslice | `XEN_SYSCTL_SCHED_RATELIMIT_{MIN,MAX}`, libxl `sched_ratelimit_check` |
//! | halt-poll max_ns | 0 (off)..=1 s | see [`HALT_POLL_MAX_NS`] |
//! | memory target, bytes | multiple of 4 KiB in 2 MiB..=the domain's memory | [`check_memory_target`]; 2 MiB is the pager's default floor (issue #5 §5) |
//!
//! The scheduler ranges are the constants of
//! [`messages::scheduler`](crate::messages::scheduler), which the scheduler
//! server checks too.
//!
//! # Evolution
//!
//! postcard encodes an enum variant by its index, so commands, replies and
//! errors are only ever appended, and an existing variant's fields never
//! change, with one exception: issue #5 appended `paging` to
//! [`Reply::Stats`] (a pre-#5 `hvctl` cannot read a new core's `Stats`).
//! `hvctl` and the core are built from one workspace.
//!
//! Not here: the COM2 driver and the dispatch (the core), the socket and
//! the tables (`hvctl`).

use core::fmt;

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::boot::{self, MAX_NAME_LEN};
use crate::messages::scheduler::{
    self, Priority, Shape, CAP_MAX, RATELIMIT_US_MAX, RATELIMIT_US_MIN, TIMESLICE_MS_MAX,
    TIMESLICE_MS_MIN, WEIGHT_MAX, WEIGHT_MIN,
};
use crate::messages::size;
use crate::server::ServerKind;

/// I/O base of COM2, the control port.
pub const COM2_PORT: u16 = 0x2F8;
/// ISA IRQ of COM2.
pub const COM2_IRQ: u8 = 3;
/// The byte that ends every frame, and never appears inside one.
pub const DELIMITER: u8 = 0x00;
/// Largest request frame, delimiter included, of any protocol version: the
/// core's receive buffer.
pub const REQUEST_FRAME_LIMIT: usize = 256;
/// Largest response frame, delimiter included, of any protocol version:
/// `hvctl`'s receive buffer.
pub const RESPONSE_FRAME_LIMIT: usize = 4096;
/// The id of a response to a request whose id could not be read.
pub const UNKNOWN_REQUEST_ID: u32 = 0;

/// Most domains ([`boot::MAX_DOMAINS`]).
pub const MAX_DOMAINS: usize = boot::MAX_DOMAINS;
/// Most servers ([`boot::MAX_SERVERS`]).
pub const MAX_SERVERS: usize = boot::MAX_SERVERS;
/// Most vCPUs of one domain ([`boot::MAX_VCPUS`]).
pub const MAX_VCPUS: usize = boot::MAX_VCPUS as usize;
/// Buckets of a halt-poll histogram: bucket `i` counts durations in
/// `[2^i, 2^(i+1))` ns, bucket 0 also 0, the last one everything above.
pub const HISTOGRAM_BUCKETS: usize = 32;

/// Largest halt-poll window, ns: 1 s. KVM bounds `halt_poll_ns` only by its
/// type (`unsigned int`, and `KVM_CAP_HALT_POLL` refuses values above
/// `u32::MAX`, 4.29 s); a window above 1 s would burn a whole pCPU per idle
/// vCPU for wake-ups that come seconds apart, which no latency gain pays
/// for (KVM's default is 200 µs), so 1 s is a sane ceiling that still
/// allows any experiment.
pub const HALT_POLL_MAX_NS: u64 = 1_000_000_000;
/// Smallest memory target, bytes ([`boot::MIN_DOMAIN_MEMORY_MIB`]).
pub const MEMORY_MIN_BYTES: u64 = boot::MIN_DOMAIN_MEMORY_MIB as u64 * MIB;
/// Largest memory target, bytes ([`boot::MAX_DOMAIN_MEMORY_MIB`]).
pub const MEMORY_MAX_BYTES: u64 = boot::MAX_DOMAIN_MEMORY_MIB as u64 * MIB;
/// A memory target is a whole number of these (4 KiB pages).
pub const MEMORY_GRANULE_BYTES: u64 = 4096;
const MIB: u64 = 1 << 20;

/// A domain: the core's id, its index in the boot manifest.
pub type DomainId = u16;

/// A domain or server name.
pub type Name = String<MAX_NAME_LEN>;

const DOMAIN_SIZE: usize = size::U16;
const NAME_SIZE: usize = size::collection(MAX_NAME_LEN, size::U8);
const SERVER_KIND_SIZE: usize = size::VARIANT;

/// The largest of `sizes` (for the variants of an enum).
const fn largest(sizes: &[usize]) -> usize {
    let mut largest = 0;
    let mut index = 0;
    while index < sizes.len() {
        largest = size::max(largest, sizes[index]);
        index += 1;
    }
    largest
}

/// Largest COBS encoding of `length` bytes, without the delimiter: one
/// overhead byte per started run of 254 bytes.
pub const fn cobs_max_size(length: usize) -> usize {
    length + length / 254 + 1
}

/// Host → core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host, never [`UNKNOWN_REQUEST_ID`]; echoed in the
    /// response.
    pub id: u32,
    /// What to do.
    pub command: Command,
}

impl Request {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::U32 + Command::MAX_ENCODED_SIZE;
}

/// What the host asks. New commands go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `hvctl list`: the domains and the servers ([`Reply::List`]).
    List,
    /// `hvctl sched-credit [-d DOM]`: weight and cap of one domain or all
    /// ([`Reply::SchedCredit`]).
    SchedCreditGet {
        /// The domain; `None`: every domain.
        domain: Option<DomainId>,
    },
    /// `hvctl sched-credit -d DOM [-w WEIGHT] [-c CAP]`: relayed to the
    /// scheduler server; answered with the values now in force
    /// ([`Reply::SchedCredit`] of that domain).
    SchedCreditSet {
        /// The domain.
        domain: DomainId,
        /// A new weight, `1..=65535`.
        weight: Option<u32>,
        /// A new cap in percent of one pCPU, 0 = none, at most 100 per
        /// vCPU of the domain.
        cap: Option<u32>,
    },
    /// `hvctl sched-credit -s`: timeslice and ratelimit
    /// ([`Reply::SchedGlobal`]).
    SchedGlobalGet,
    /// `hvctl sched-credit -s [-t TSLICE_MS] [-r RATELIMIT_US]`: relayed to
    /// the scheduler server, which checks the resulting pair (ratelimit ≤
    /// timeslice); answered with the values now in force
    /// ([`Reply::SchedGlobal`]).
    SchedGlobalSet {
        /// A new timeslice, ms, `1..=1000`.
        timeslice_ms: Option<u32>,
        /// A new ratelimit, µs, 0 (off) or `100..=500000`.
        ratelimit_us: Option<u32>,
    },
    /// `hvctl halt-poll [-d DOM]`: the global halt-poll parameters and the
    /// per-domain overrides of the max ([`Reply::HaltPoll`]).
    HaltPollGet {
        /// The domain; `None`: every domain.
        domain: Option<DomainId>,
    },
    /// `hvctl halt-poll [-d DOM] --max NS`: sets the global max window
    /// (`halt_poll_ns`) or a domain's override of it; answered like
    /// `HaltPollGet` of the same domain ([`Reply::HaltPoll`]).
    HaltPollSet {
        /// The domain; `None`: the global max.
        domain: Option<DomainId>,
        /// The max window, ns, `0..=`[`HALT_POLL_MAX_NS`]; 0 = no polling.
        max_ns: u64,
    },
    /// `hvctl stats`, one domain at a time (a response holds at most one
    /// domain's vCPUs): per vCPU run time, credit, priority, state and
    /// halt-poll counters ([`Reply::Stats`]).
    Stats {
        /// The domain.
        domain: DomainId,
    },
    /// `hvctl stats --histograms`: one vCPU's halt-poll log2 histograms
    /// ([`Reply::HaltPollHistograms`]).
    HaltPollHistograms {
        /// The domain.
        domain: DomainId,
        /// The vCPU's index in the domain.
        vcpu: u8,
    },
    /// `hvctl mem-set DOM SIZE`: the domain's resident memory target
    /// (issue #5): the core records it and passes it to the pager server,
    /// which pages out or back in toward it ([`Reply::Done`]; the effect
    /// shows in [`PagingStats`]). [`ControlError::NoSuchServer`] if the
    /// appliance has no pager.
    MemSet {
        /// The domain.
        domain: DomainId,
        /// The target, bytes: a multiple of [`MEMORY_GRANULE_BYTES`] in
        /// [`MEMORY_MIN_BYTES`]`..=`[`MEMORY_MAX_BYTES`], and at most the
        /// domain's memory ([`check_memory_target`]).
        bytes: u64,
    },
    /// `hvctl kill SERVER`: stop that server; the core restarts it
    /// (issue #6; [`ControlError::Unsupported`] until then; [`Reply::Done`]).
    Kill {
        /// Which server.
        server: ServerKind,
    },
    /// `hvctl hang SERVER`: make it spin without yielding (issue #6;
    /// [`ControlError::Unsupported`] until then; [`Reply::Done`]).
    Hang {
        /// Which server.
        server: ServerKind,
    },
    /// `hvctl garble SERVER`: make it send malformed messages (issue #6;
    /// [`ControlError::Unsupported`] until then; [`Reply::Done`]).
    Garble {
        /// Which server.
        server: ServerKind,
    },
}

/// Number of [`Command`] variants: a request whose variant index is at or
/// above it is from a newer host and is answered
/// [`ControlError::Unsupported`].
pub const COMMAND_COUNT: u32 = 13;

impl Command {
    /// Largest encoding (`SchedCreditSet`).
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT
        + largest(&[
            size::option(DOMAIN_SIZE),                                       // *Get
            DOMAIN_SIZE + size::option(size::U32) + size::option(size::U32), // SchedCreditSet
            size::option(size::U32) + size::option(size::U32),               // SchedGlobalSet
            size::option(DOMAIN_SIZE) + size::U64,                           // HaltPollSet
            DOMAIN_SIZE + size::U8,                                          // HaltPollHistograms
            DOMAIN_SIZE + size::U64,                                         // MemSet
            SERVER_KIND_SIZE,                                                // Kill, Hang, Garble
        ]);

    /// The name `hvctl` and the error messages use.
    pub fn name(&self) -> &'static str {
        match self {
            Self::List => "list",
            Self::SchedCreditGet { .. } | Self::SchedCreditSet { .. } => "sched-credit",
            Self::SchedGlobalGet | Self::SchedGlobalSet { .. } => "sched-credit -s",
            Self::HaltPollGet { .. } | Self::HaltPollSet { .. } => "halt-poll",
            Self::Stats { .. } => "stats",
            Self::HaltPollHistograms { .. } => "stats --histograms",
            Self::MemSet { .. } => "mem-set",
            Self::Kill { .. } => "kill",
            Self::Hang { .. } => "hang",
            Self::Garble { .. } => "garble",
        }
    }

    /// The domain the command is about, if any.
    pub fn domain(&self) -> Option<DomainId> {
        match *self {
            Self::SchedCreditGet { domain }
            | Self::HaltPollGet { domain }
            | Self::HaltPollSet { domain, .. } => domain,
            Self::SchedCreditSet { domain, .. }
            | Self::Stats { domain }
            | Self::HaltPollHistograms { domain, .. }
            | Self::MemSet { domain, .. } => Some(domain),
            Self::List
            | Self::SchedGlobalGet
            | Self::SchedGlobalSet { .. }
            | Self::Kill { .. }
            | Self::Hang { .. }
            | Self::Garble { .. } => None,
        }
    }

    /// Checks every argument against its range, without knowing the
    /// machine: domain ids below [`MAX_DOMAINS`], vCPU indices below
    /// [`MAX_VCPUS`], Xen's ranges for weight, cap (≤ [`CAP_MAX`]),
    /// timeslice and ratelimit (and ratelimit ≤ timeslice when both are
    /// given), [`HALT_POLL_MAX_NS`], the memory target's range and
    /// granule.
    pub fn validate(&self) -> Result<(), ControlError> {
        if let Some(domain) = self.domain() {
            if usize::from(domain) >= MAX_DOMAINS {
                return Err(ControlError::NoSuchDomain { domain });
            }
        }
        match *self {
            Self::List
            | Self::SchedCreditGet { .. }
            | Self::SchedGlobalGet
            | Self::HaltPollGet { .. }
            | Self::Stats { .. }
            | Self::Kill { .. }
            | Self::Hang { .. }
            | Self::Garble { .. } => Ok(()),
            Self::SchedCreditSet { weight, cap, .. } => {
                if let Some(weight) = weight {
                    check_weight(weight)?;
                }
                match cap {
                    Some(cap) => check_cap(cap, CAP_MAX),
                    None => Ok(()),
                }
            }
            Self::SchedGlobalSet {
                timeslice_ms,
                ratelimit_us,
            } => {
                if let Some(timeslice_ms) = timeslice_ms {
                    check_range(
                        Field::TimesliceMs,
                        timeslice_ms.into(),
                        TIMESLICE_MS_MIN.into(),
                        TIMESLICE_MS_MAX.into(),
                    )?;
                }
                if let Some(ratelimit_us) = ratelimit_us {
                    check_ratelimit(ratelimit_us)?;
                }
                match (timeslice_ms, ratelimit_us) {
                    (Some(timeslice_ms), Some(ratelimit_us)) => {
                        check_global(timeslice_ms, ratelimit_us)
                    }
                    _ => Ok(()),
                }
            }
            Self::HaltPollSet { max_ns, .. } => {
                check_range(Field::MaxNs, max_ns, 0, HALT_POLL_MAX_NS)
            }
            Self::HaltPollHistograms { vcpu, .. } => {
                check_range(Field::Vcpu, vcpu.into(), 0, MAX_VCPUS as u64 - 1)
            }
            Self::MemSet { bytes, .. } => check_memory_bytes(bytes),
        }
    }

    /// [`validate`](Self::validate), then the checks that need the machine
    /// (`shape.vcpus[d]` = vCPUs of domain `d`, 0 = no such domain): the
    /// domain exists, a cap is at most 100 × its vCPUs, a vCPU index is
    /// below its vCPU count. (Whether a server of a kind exists, and a
    /// memory target against the domain's memory, only the core knows.)
    pub fn validate_in(&self, shape: &Shape) -> Result<(), ControlError> {
        self.validate()?;
        let Some(domain) = self.domain() else {
            return Ok(());
        };
        let vcpus = shape.vcpus.get(usize::from(domain)).copied().unwrap_or(0);
        if vcpus == 0 {
            return Err(ControlError::NoSuchDomain { domain });
        }
        match *self {
            Self::SchedCreditSet { cap: Some(cap), .. } => check_cap(cap, cap_max_for(vcpus)),
            Self::HaltPollHistograms { vcpu, .. } => {
                check_range(Field::Vcpu, vcpu.into(), 0, u64::from(vcpus) - 1)
            }
            _ => Ok(()),
        }
    }
}

/// The largest cap of a domain of `vcpus` vCPUs: 100 % per vCPU (libxl
/// `sched_credit_domain_set`).
pub const fn cap_max_for(vcpus: u8) -> u32 {
    100 * vcpus as u32
}

fn invalid(field: Field, reason: Reason) -> ControlError {
    ControlError::InvalidArgument { field, reason }
}

fn check_range(field: Field, value: u64, min: u64, max: u64) -> Result<(), ControlError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, Reason::OutOfRange { value, min, max }))
    }
}

fn check_memory_bytes(bytes: u64) -> Result<(), ControlError> {
    check_range(Field::Bytes, bytes, MEMORY_MIN_BYTES, MEMORY_MAX_BYTES)?;
    if !bytes.is_multiple_of(MEMORY_GRANULE_BYTES) {
        return Err(invalid(
            Field::Bytes,
            Reason::NotMultipleOf {
                value: bytes,
                unit: MEMORY_GRANULE_BYTES,
            },
        ));
    }
    Ok(())
}

/// Checks a memory target of `bytes` for a domain of `memory_bytes`: what
/// [`Command::validate`] checks (a multiple of [`MEMORY_GRANULE_BYTES`] in
/// [`MEMORY_MIN_BYTES`]`..=`[`MEMORY_MAX_BYTES`]), then that it is at most
/// the domain's memory (else [`Reason::OutOfRange`] up to `memory_bytes`).
/// Returns the target in 4 KiB pages. The core runs it before it acts on
/// a `MemSet`, `hvctl` before it sends one.
pub fn check_memory_target(bytes: u64, memory_bytes: u64) -> Result<u64, ControlError> {
    check_memory_bytes(bytes)?;
    if bytes > memory_bytes {
        return Err(invalid(
            Field::Bytes,
            Reason::OutOfRange {
                value: bytes,
                min: MEMORY_MIN_BYTES,
                max: memory_bytes,
            },
        ));
    }
    Ok(bytes / MEMORY_GRANULE_BYTES)
}

fn check_weight(weight: u32) -> Result<(), ControlError> {
    check_range(
        Field::Weight,
        weight.into(),
        WEIGHT_MIN.into(),
        WEIGHT_MAX.into(),
    )
}

fn check_cap(cap: u32, max: u32) -> Result<(), ControlError> {
    check_range(Field::Cap, cap.into(), 0, max.into())
}

fn check_ratelimit(ratelimit_us: u32) -> Result<(), ControlError> {
    if ratelimit_us == 0 || (RATELIMIT_US_MIN..=RATELIMIT_US_MAX).contains(&ratelimit_us) {
        Ok(())
    } else {
        Err(invalid(
            Field::RatelimitUs,
            Reason::NeitherOffNorInRange {
                value: ratelimit_us.into(),
                min: RATELIMIT_US_MIN.into(),
                max: RATELIMIT_US_MAX.into(),
            },
        ))
    }
}

/// Checks a timeslice and ratelimit pair as it would be in force: each in
/// its range, and the ratelimit no longer than the timeslice (libxl
/// `sched_credit_params_set`). For a `SchedGlobalSet` that gives one of
/// them, call it with the other's current value.
pub fn check_global(timeslice_ms: u32, ratelimit_us: u32) -> Result<(), ControlError> {
    check_range(
        Field::TimesliceMs,
        timeslice_ms.into(),
        TIMESLICE_MS_MIN.into(),
        TIMESLICE_MS_MAX.into(),
    )?;
    check_ratelimit(ratelimit_us)?;
    if u64::from(ratelimit_us) > u64::from(timeslice_ms) * 1000 {
        return Err(invalid(
            Field::RatelimitUs,
            Reason::AboveTimeslice {
                ratelimit_us,
                timeslice_ms,
            },
        ));
    }
    Ok(())
}

/// Core → host: the answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id, or [`UNKNOWN_REQUEST_ID`].
    pub id: u32,
    /// What the command gave, or why nothing changed.
    pub result: Result<Reply, ControlError>,
}

impl Response {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::U32
        + size::VARIANT
        + size::max(Reply::MAX_ENCODED_SIZE, ControlError::MAX_ENCODED_SIZE);

    /// The answer to a request [`decode_request`] refused.
    pub fn refusal(refusal: Refusal) -> Self {
        Self {
            id: refusal.id,
            result: Err(refusal.error),
        }
    }
}

/// What a command gave. New replies go at the end.
// Sizes differ (`Done` is empty, `List` is the whole machine); boxing would
// need a heap, which the core does not have.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Command::List`].
    List {
        /// Every domain, by id.
        domains: Vec<DomainInfo, MAX_DOMAINS>,
        /// Every server, in start order.
        servers: Vec<ServerInfo, MAX_SERVERS>,
    },
    /// To [`Command::SchedCreditGet`] and [`Command::SchedCreditSet`].
    SchedCredit {
        /// The domains asked for, by id.
        domains: Vec<DomainCredit, MAX_DOMAINS>,
    },
    /// To [`Command::SchedGlobalGet`] and [`Command::SchedGlobalSet`].
    SchedGlobal {
        /// The timeslice, ms.
        timeslice_ms: u32,
        /// The ratelimit, µs (0 = off).
        ratelimit_us: u32,
    },
    /// To [`Command::HaltPollGet`] and [`Command::HaltPollSet`].
    HaltPoll {
        /// The global parameters.
        global: HaltPollGlobal,
        /// The domains asked for, by id, with their overrides.
        domains: Vec<DomainHaltPoll, MAX_DOMAINS>,
    },
    /// To [`Command::Stats`].
    Stats {
        /// The domain.
        domain: DomainId,
        /// Its vCPUs, by index.
        vcpus: Vec<VcpuStats, MAX_VCPUS>,
        /// Its paging (issue #5); `None` if the core keeps no paging state
        /// for it (a domain that failed to build).
        paging: Option<PagingStats>,
    },
    /// To [`Command::HaltPollHistograms`].
    HaltPollHistograms {
        /// The domain.
        domain: DomainId,
        /// The vCPU's index.
        vcpu: u8,
        /// Durations of successful polls.
        poll_success: Histogram,
        /// Durations of polls that ended in a real wait.
        poll_fail: Histogram,
        /// Durations of real waits.
        wait: Histogram,
    },
    /// To [`Command::MemSet`], [`Command::Kill`], [`Command::Hang`] and
    /// [`Command::Garble`]: accepted; the effect shows in `List` and
    /// `Stats`.
    Done,
}

impl Reply {
    /// Largest encoding (`Stats` with 8 vCPUs and paging).
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT
        + largest(&[
            size::collection(MAX_DOMAINS, DomainInfo::MAX_ENCODED_SIZE)
                + size::collection(MAX_SERVERS, ServerInfo::MAX_ENCODED_SIZE),
            size::collection(MAX_DOMAINS, DomainCredit::MAX_ENCODED_SIZE),
            size::U32 + size::U32,
            HaltPollGlobal::MAX_ENCODED_SIZE
                + size::collection(MAX_DOMAINS, DomainHaltPoll::MAX_ENCODED_SIZE),
            DOMAIN_SIZE
                + size::collection(MAX_VCPUS, VcpuStats::MAX_ENCODED_SIZE)
                + size::option(PagingStats::MAX_ENCODED_SIZE),
            DOMAIN_SIZE + size::U8 + 3 * Histogram::MAX_ENCODED_SIZE,
            0,
        ]);
}

/// Where a domain is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DomainState {
    /// Has vCPUs that run or may run.
    Running,
    /// Powered itself off.
    PoweredOff,
    /// Stopped by the core, crashed, or never started.
    Failed,
}

impl DomainState {
    /// Lower-case word for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::PoweredOff => "powered-off",
            Self::Failed => "failed",
        }
    }
}

/// One domain in [`Reply::List`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Its id.
    pub id: DomainId,
    /// Its name.
    pub name: Name,
    /// Its memory, MiB.
    pub memory_mib: u32,
    /// Its number of vCPUs.
    pub vcpus: u8,
    /// Its state.
    pub state: DomainState,
}

impl DomainInfo {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize =
        DOMAIN_SIZE + NAME_SIZE + size::U32 + size::U8 + size::VARIANT;
}

/// Where a server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerState {
    /// Its current generation runs.
    Running,
    /// It stopped and its next generation is being started.
    Restarting,
    /// It stopped and will not be started again.
    Stopped,
}

impl ServerState {
    /// Lower-case word for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        }
    }
}

/// One server in [`Reply::List`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Its name in the appliance.
    pub name: Name,
    /// Which protocol it speaks.
    pub kind: ServerKind,
    /// Its current generation (1 at the first start).
    pub generation: u32,
    /// How often it was restarted.
    pub restarts: u32,
    /// Its state.
    pub state: ServerState,
}

impl ServerInfo {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize =
        NAME_SIZE + SERVER_KIND_SIZE + size::U32 + size::U32 + size::VARIANT;
}

/// The word for a server kind on the command line and in tables.
pub fn server_kind_name(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Scheduler => "scheduler",
        ServerKind::Pager => "pager",
        ServerKind::Test => "test",
    }
}

/// The server kind a word names (see [`server_kind_name`]).
pub fn parse_server_kind(word: &str) -> Option<ServerKind> {
    [ServerKind::Scheduler, ServerKind::Pager, ServerKind::Test]
        .into_iter()
        .find(|kind| server_kind_name(*kind) == word)
}

/// One domain's credit parameters in [`Reply::SchedCredit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainCredit {
    /// The domain.
    pub domain: DomainId,
    /// Its weight.
    pub weight: u32,
    /// Its cap, percent of one pCPU, 0 = none.
    pub cap: u32,
}

impl DomainCredit {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = DOMAIN_SIZE + size::U32 + size::U32;
}

/// The global halt-poll parameters (KVM's module parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltPollGlobal {
    /// `halt_poll_ns`: the max window, ns.
    pub max_ns: u64,
    /// `halt_poll_ns_grow`: the window's multiplier (0 = never grows).
    pub grow: u64,
    /// `halt_poll_ns_grow_start`, ns.
    pub grow_start_ns: u64,
    /// `halt_poll_ns_shrink`: the window's divisor (0 = back to 0).
    pub shrink: u64,
}

impl HaltPollGlobal {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = 4 * size::U64;
}

/// One domain's halt-poll max in [`Reply::HaltPoll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainHaltPoll {
    /// The domain.
    pub domain: DomainId,
    /// Its override of the global max, ns; `None`: the global max applies.
    pub max_ns: Option<u64>,
}

impl DomainHaltPoll {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = DOMAIN_SIZE + size::option(size::U64);

    /// The max that applies to the domain.
    pub fn effective_max_ns(&self, global: &HaltPollGlobal) -> u64 {
        self.max_ns.unwrap_or(global.max_ns)
    }
}

/// What a vCPU is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VcpuState {
    /// Running on this pCPU.
    Running {
        /// The pCPU.
        pcpu: u8,
    },
    /// Ready, waiting for a pCPU.
    Runnable,
    /// Blocked (HLT with IF=1, `SCHEDOP_block`), waiting for an event.
    Blocked,
    /// Down (HLT with IF=0, or never started).
    Down,
    /// Will not run again (its domain ended).
    Stopped,
}

impl VcpuState {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT + size::U8;
}

/// A vCPU's halt-poll counters and window, named after KVM's
/// (`halt_successful_poll`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HaltPollCounters {
    /// `halt_successful_poll`: the wake-up came while polling.
    pub successful: u64,
    /// `halt_attempted_poll`: halts that polled at all.
    pub attempted: u64,
    /// `halt_poll_invalid`: wake-ups with nothing to do.
    pub invalid: u64,
    /// `halt_poll_success_ns`.
    pub poll_success_ns: u64,
    /// `halt_poll_fail_ns`.
    pub poll_fail_ns: u64,
    /// `halt_wait_ns`.
    pub wait_ns: u64,
    /// The current window, ns.
    pub window_ns: u64,
}

impl HaltPollCounters {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = 7 * size::U64;
}

/// One vCPU in [`Reply::Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStats {
    /// Its index in the domain.
    pub index: u8,
    /// CPU time used since it was created, ns.
    pub run_time_ns: u64,
    /// Its credit as the scheduler server last published it, ns; `None`
    /// while no server has.
    pub credit_ns: Option<i64>,
    /// Its credit1 priority, likewise.
    pub priority: Option<Priority>,
    /// Whether its domain's cap holds it off the pCPUs.
    pub parked: bool,
    /// What it is doing.
    pub state: VcpuState,
    /// Its halt polling.
    pub halt_poll: HaltPollCounters,
}

impl VcpuStats {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::U8
        + size::U64
        + size::option(size::U64)
        + size::option(size::VARIANT)
        + size::U8
        + VcpuState::MAX_ENCODED_SIZE
        + HaltPollCounters::MAX_ENCODED_SIZE;
}

/// A log2 histogram of durations (see [`HISTOGRAM_BUCKETS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Histogram {
    /// Counts per bucket.
    pub buckets: [u32; HISTOGRAM_BUCKETS],
}

impl Histogram {
    /// Largest encoding (a fixed-size array has no length prefix).
    pub const MAX_ENCODED_SIZE: usize = HISTOGRAM_BUCKETS * size::U32;

    /// The histogram whose first buckets hold `counts` (the rest 0); counts
    /// beyond [`HISTOGRAM_BUCKETS`] are added to the last bucket, which
    /// counts everything above anyway.
    pub fn from_counts(counts: &[u32]) -> Self {
        let mut histogram = Self::default();
        for (index, &count) in counts.iter().enumerate() {
            let bucket = &mut histogram.buckets[index.min(HISTOGRAM_BUCKETS - 1)];
            *bucket = bucket.saturating_add(count);
        }
        histogram
    }
}

/// Buckets of [`PagingStats::page_in_latency`] the core fills (the pager
/// protocol's [`LATENCY_BUCKETS`](crate::messages::pager::LATENCY_BUCKETS)):
/// bucket `i` counts page-ins that took `[2^i, 2^(i+1))` µs, bucket 0 also
/// those under 1 µs, and bucket `PAGE_IN_LATENCY_BUCKETS - 1` (32.768 ms)
/// everything longer; the buckets above it stay 0.
pub const PAGE_IN_LATENCY_BUCKETS: usize = crate::messages::pager::LATENCY_BUCKETS;
const _: () = assert!(PAGE_IN_LATENCY_BUCKETS <= HISTOGRAM_BUCKETS);

/// One domain's paging in [`Reply::Stats`] (issue #5 §4), from the core's
/// own counters: they survive a pager restart. Pages are 4 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PagingStats {
    /// The domain's memory, pages.
    pub memory_pages: u64,
    /// The resident target in force, pages (`memory_pages`: no paging);
    /// set by `memory_target` in the appliance or `hvctl mem-set`.
    pub target_pages: u64,
    /// The current footprint: frames backed by host memory, pages (resident
    /// RAM, including frames being paged out).
    pub resident_pages: u64,
    /// Frames paged out to the swap device (including frames being paged
    /// back in), pages.
    pub paged_pages: u64,
    /// Frames the guest gave back (`XENMEM_decrease_reservation`) and has
    /// not touched since, pages: neither resident nor in swap.
    pub dropped_pages: u64,
    /// Evictions completed since boot (frames written to swap and freed).
    pub pages_out: u64,
    /// Page-ins completed since boot (frames loaded back from swap).
    pub pages_in: u64,
    /// Nominations that did not end in an eviction: the guest wrote the
    /// frame meanwhile, the device was full or failed, or the pager died.
    pub evict_failures: u64,
    /// Free slots of the domain's swap partition, as the pager last
    /// reported; `None` until it has.
    pub free_slots: Option<u32>,
    /// The pager reported the swap partition full and eviction has stopped
    /// (until a slot is freed).
    pub swap_full: bool,
    /// Page-in latency, from the faulting access to the frame being back,
    /// measured by the core: a log2 histogram of microseconds, bucket `i` =
    /// `[2^i, 2^(i+1))` µs (see [`PAGE_IN_LATENCY_BUCKETS`]).
    pub page_in_latency: Histogram,
}

impl PagingStats {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize =
        8 * size::U64 + size::option(size::U32) + size::U8 + Histogram::MAX_ENCODED_SIZE;
}

/// The argument an [`ControlError::InvalidArgument`] is about, named as
/// on `hvctl`'s command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    /// A domain id.
    Domain,
    /// `-w`, `--weight`.
    Weight,
    /// `-c`, `--cap`.
    Cap,
    /// `-t`, `--tslice_ms`.
    TimesliceMs,
    /// `-r`, `--ratelimit_us`.
    RatelimitUs,
    /// `--max` (halt-poll max, ns).
    MaxNs,
    /// A vCPU index.
    Vcpu,
    /// A memory target, bytes.
    Bytes,
}

impl Field {
    /// The name shown to the user.
    pub fn name(self) -> &'static str {
        match self {
            Self::Domain => "domain",
            Self::Weight => "weight",
            Self::Cap => "cap",
            Self::TimesliceMs => "tslice_ms",
            Self::RatelimitUs => "ratelimit_us",
            Self::MaxNs => "max_ns",
            Self::Vcpu => "vcpu",
            Self::Bytes => "memory bytes",
        }
    }
}

/// Why an argument is invalid; numbers, so the core fills it in without
/// formatting text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// `value` is outside `min..=max`.
    OutOfRange {
        /// The value given.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// `value` is neither 0 (off) nor in `min..=max`.
    NeitherOffNorInRange {
        /// The value given.
        value: u64,
        /// The smallest allowed besides 0.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The ratelimit would be longer than the timeslice.
    AboveTimeslice {
        /// The ratelimit, µs.
        ratelimit_us: u32,
        /// The timeslice, ms.
        timeslice_ms: u32,
    },
    /// `value` is not a multiple of `unit`.
    NotMultipleOf {
        /// The value given.
        value: u64,
        /// The unit.
        unit: u64,
    },
}

impl Reason {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT + 3 * size::U64;
}

/// Why a request was refused; in every case nothing changed. New errors go
/// at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlError {
    /// An argument is out of its range.
    InvalidArgument {
        /// Which one.
        field: Field,
        /// What is wrong with it.
        reason: Reason,
    },
    /// No domain has this id.
    NoSuchDomain {
        /// The id asked for.
        domain: DomainId,
    },
    /// The server that would carry the command out is down or restarting.
    ServerUnavailable {
        /// Which server.
        server: ServerKind,
    },
    /// The core does not implement this command (yet), or does not know it.
    Unsupported,
    /// The core is still busy with an earlier request.
    Busy,
    /// The request frame could not be decoded.
    Malformed,
    /// The appliance has no server of this kind.
    NoSuchServer {
        /// The kind asked for.
        server: ServerKind,
    },
}

impl ControlError {
    /// Largest encoding.
    pub const MAX_ENCODED_SIZE: usize = size::VARIANT
        + largest(&[
            size::VARIANT + Reason::MAX_ENCODED_SIZE,
            DOMAIN_SIZE,
            SERVER_KIND_SIZE,
        ]);
}

impl fmt::Display for Field {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl fmt::Display for ControlError {
    /// The sentence `hvctl` shows (host side; the core never formats).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InvalidArgument { field, reason } => match reason {
                Reason::OutOfRange { value, min, max } if field == Field::Cap => write!(
                    formatter,
                    "cap {value} is out of range {min}..={max} (percent of one pCPU, 0 = no cap, at most 100 per vCPU)"
                ),
                Reason::OutOfRange { value, min, max } => {
                    write!(formatter, "{field} {value} is out of range {min}..={max}")
                }
                Reason::NeitherOffNorInRange { value, min, max } => write!(
                    formatter,
                    "{field} {value} is neither 0 (off) nor in range {min}..={max}"
                ),
                Reason::AboveTimeslice {
                    ratelimit_us,
                    timeslice_ms,
                } => write!(
                    formatter,
                    "ratelimit_us {ratelimit_us} is longer than the timeslice (tslice_ms {timeslice_ms} = {} us)",
                    u64::from(timeslice_ms) * 1000
                ),
                Reason::NotMultipleOf { value, unit } => {
                    write!(formatter, "{field} {value} is not a multiple of {unit}")
                }
            },
            Self::NoSuchDomain { domain } => write!(formatter, "no domain has id {domain}"),
            Self::ServerUnavailable { server } => write!(
                formatter,
                "the {} server is down or restarting; nothing was changed, try again",
                server_kind_name(server)
            ),
            Self::Unsupported => formatter.write_str("the core does not support this command yet"),
            Self::Busy => formatter.write_str(
                "the core is still busy with an earlier control request; nothing was changed, try again",
            ),
            Self::Malformed => formatter.write_str("the core could not decode the request"),
            Self::NoSuchServer { server } => write!(
                formatter,
                "the appliance has no {} server",
                server_kind_name(server)
            ),
        }
    }
}

impl From<scheduler::KnobError> for ControlError {
    /// The scheduler server's refusal of a knob value, as the host sees it.
    fn from(error: scheduler::KnobError) -> Self {
        use scheduler::KnobError;
        match error {
            KnobError::WeightOutOfRange { requested } => invalid(
                Field::Weight,
                Reason::OutOfRange {
                    value: requested.into(),
                    min: WEIGHT_MIN.into(),
                    max: WEIGHT_MAX.into(),
                },
            ),
            KnobError::CapOutOfRange { requested } => invalid(
                Field::Cap,
                Reason::OutOfRange {
                    value: requested.into(),
                    min: 0,
                    max: CAP_MAX.into(),
                },
            ),
            KnobError::TimesliceOutOfRange { requested_ms } => invalid(
                Field::TimesliceMs,
                Reason::OutOfRange {
                    value: requested_ms.into(),
                    min: TIMESLICE_MS_MIN.into(),
                    max: TIMESLICE_MS_MAX.into(),
                },
            ),
            KnobError::RatelimitOutOfRange { requested_us } => invalid(
                Field::RatelimitUs,
                Reason::NeitherOffNorInRange {
                    value: requested_us.into(),
                    min: RATELIMIT_US_MIN.into(),
                    max: RATELIMIT_US_MAX.into(),
                },
            ),
            KnobError::RatelimitAboveTimeslice {
                ratelimit_us,
                timeslice_ms,
            } => invalid(
                Field::RatelimitUs,
                Reason::AboveTimeslice {
                    ratelimit_us,
                    timeslice_ms,
                },
            ),
        }
    }
}

impl From<scheduler::ControlError> for ControlError {
    /// The scheduler server's answer to a relayed `SetDomain`/`Configure`.
    fn from(error: scheduler::ControlError) -> Self {
        match error {
            scheduler::ControlError::Knob(knob) => knob.into(),
            scheduler::ControlError::UnknownDomain { domain } => Self::NoSuchDomain { domain },
            scheduler::ControlError::NotReady => Self::ServerUnavailable {
                server: ServerKind::Scheduler,
            },
        }
    }
}

impl From<scheduler::Applied> for Reply {
    /// What the scheduler server says is now in force, as the reply to the
    /// relayed command.
    fn from(applied: scheduler::Applied) -> Self {
        match applied {
            scheduler::Applied::Domain {
                domain,
                weight,
                cap,
            } => {
                let mut domains = Vec::new();
                // Cannot fail: the capacity is MAX_DOMAINS >= 1.
                let _ = domains.push(DomainCredit {
                    domain,
                    weight,
                    cap,
                });
                Self::SchedCredit { domains }
            }
            scheduler::Applied::Tunables {
                timeslice_ms,
                ratelimit_us,
            } => Self::SchedGlobal {
                timeslice_ms,
                ratelimit_us,
            },
        }
    }
}

/// Largest request frame of this version, delimiter included.
pub const MAX_REQUEST_FRAME_SIZE: usize = cobs_max_size(Request::MAX_ENCODED_SIZE) + 1;
/// Largest response frame of this version, delimiter included: the core's
/// send buffer.
pub const MAX_RESPONSE_FRAME_SIZE: usize = cobs_max_size(Response::MAX_ENCODED_SIZE) + 1;

const _: () = assert!(MAX_REQUEST_FRAME_SIZE <= REQUEST_FRAME_LIMIT);
const _: () = assert!(MAX_RESPONSE_FRAME_SIZE <= RESPONSE_FRAME_LIMIT);

/// Why a message could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The buffer is shorter than the frame.
    BufferTooSmall,
    /// The serializer refused the value.
    Serialize,
}

fn encode_frame<T: Serialize>(message: &T, buffer: &mut [u8]) -> Result<usize, EncodeError> {
    match postcard::to_slice_cobs(message, buffer) {
        Ok(frame) => Ok(frame.len()),
        Err(postcard::Error::SerializeBufferFull) => Err(EncodeError::BufferTooSmall),
        Err(_) => Err(EncodeError::Serialize),
    }
}

/// Frames `request` (COBS, then the delimiter) into the front of `buffer`;
/// returns the frame's length. [`MAX_REQUEST_FRAME_SIZE`] bytes always
/// suffice.
pub fn encode_request(request: &Request, buffer: &mut [u8]) -> Result<usize, EncodeError> {
    encode_frame(request, buffer)
}

/// Frames `response` into the front of `buffer`; returns the frame's
/// length. [`MAX_RESPONSE_FRAME_SIZE`] bytes always suffice.
pub fn encode_response(response: &Response, buffer: &mut [u8]) -> Result<usize, EncodeError> {
    encode_frame(response, buffer)
}

/// Decodes COBS in place: `frame` (without its delimiter) becomes the
/// message bytes at its front; returns their length. `None` if the frame is
/// not valid COBS (a zero byte inside, or a block running past the end).
pub fn cobs_decode_in_place(frame: &mut [u8]) -> Option<usize> {
    let mut read = 0;
    let mut write = 0;
    while read < frame.len() {
        let code = usize::from(frame[read]);
        if code == 0 {
            return None;
        }
        let end = read + code;
        if end > frame.len() {
            return None;
        }
        for source in read + 1..end {
            let byte = frame[source];
            if byte == 0 {
                return None;
            }
            frame[write] = byte;
            write += 1;
        }
        read = end;
        // A block shorter than 254 data bytes stood for a zero after it,
        // except at the very end of the frame.
        if code < 0xFF && read < frame.len() {
            frame[write] = 0;
            write += 1;
        }
    }
    Some(write)
}

/// Why a request was refused before it was carried out: the id to answer
/// with and the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The request's id, or [`UNKNOWN_REQUEST_ID`] if it was unreadable.
    pub id: u32,
    /// Why.
    pub error: ControlError,
}

/// The core's one decode path for a request frame (without its delimiter,
/// decoded in place): COBS, postcard (exact length), then
/// [`Command::validate`]. A refusal carries the id when it was readable;
/// an unknown command variant (a newer host) is
/// [`ControlError::Unsupported`], anything else unreadable
/// [`ControlError::Malformed`]. The core adds [`Command::validate_in`] with
/// its machine before it acts.
pub fn decode_request(frame: &mut [u8]) -> Result<Request, Refusal> {
    let malformed = |id| Refusal {
        id,
        error: ControlError::Malformed,
    };
    let length = cobs_decode_in_place(frame).ok_or(malformed(UNKNOWN_REQUEST_ID))?;
    let bytes = &frame[..length];
    let (id, rest) =
        postcard::take_from_bytes::<u32>(bytes).map_err(|_| malformed(UNKNOWN_REQUEST_ID))?;
    let (variant, _) = postcard::take_from_bytes::<u32>(rest).map_err(|_| malformed(id))?;
    if variant >= COMMAND_COUNT {
        return Err(Refusal {
            id,
            error: ControlError::Unsupported,
        });
    }
    let (request, rest) = postcard::take_from_bytes::<Request>(bytes).map_err(|_| malformed(id))?;
    if !rest.is_empty() {
        return Err(malformed(id));
    }
    request
        .command
        .validate()
        .map_err(|error| Refusal { id, error })?;
    Ok(request)
}

/// Why a response frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Not valid COBS.
    Framing,
    /// Not a valid postcard `Response`, or bytes left over.
    Encoding,
}

/// The host's decode path for a response frame (without its delimiter,
/// decoded in place).
pub fn decode_response(frame: &mut [u8]) -> Result<Response, ResponseError> {
    let length = cobs_decode_in_place(frame).ok_or(ResponseError::Framing)?;
    match postcard::take_from_bytes::<Response>(&frame[..length]) {
        Ok((response, [])) => Ok(response),
        _ => Err(ResponseError::Encoding),
    }
}

/// What [`FrameReceiver::push`] found at a delimiter.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A complete frame, without its delimiter (still COBS-encoded).
    Frame(&'a mut [u8]),
    /// A frame longer than the buffer ended; it was dropped.
    Overflow,
}

/// Collects bytes from the stream into frames, in a fixed buffer of `N`
/// bytes (a frame of up to `N - 1` bytes plus its delimiter: size it with
/// [`REQUEST_FRAME_LIMIT`] or [`RESPONSE_FRAME_LIMIT`]). Resynchronises at
/// every delimiter: a frame that overflows is dropped whole, empty frames
/// are skipped.
#[derive(Debug, Clone)]
pub struct FrameReceiver<const N: usize> {
    buffer: [u8; N],
    length: usize,
    overflowed: bool,
}

/// The core's receiver.
pub type RequestReceiver = FrameReceiver<REQUEST_FRAME_LIMIT>;
/// The host's receiver.
pub type ResponseReceiver = FrameReceiver<RESPONSE_FRAME_LIMIT>;

impl<const N: usize> Default for FrameReceiver<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameReceiver<N> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            buffer: [0; N],
            length: 0,
            overflowed: false,
        }
    }

    /// Drops any partial frame.
    pub fn reset(&mut self) {
        self.length = 0;
        self.overflowed = false;
    }

    /// Takes one byte; at a delimiter returns what ended (`None` for an
    /// empty frame and between delimiters).
    pub fn push(&mut self, byte: u8) -> Option<Received<'_>> {
        if byte != DELIMITER {
            // N - 1: the delimiter counts against the frame limit.
            if self.length < N.saturating_sub(1) {
                self.buffer[self.length] = byte;
                self.length += 1;
            } else {
                self.overflowed = true;
            }
            return None;
        }
        let length = core::mem::take(&mut self.length);
        if core::mem::take(&mut self.overflowed) {
            return Some(Received::Overflow);
        }
        if length == 0 {
            return None;
        }
        Some(Received::Frame(&mut self.buffer[..length]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request_frame(request: &Request) -> std::vec::Vec<u8> {
        let mut buffer = [0u8; REQUEST_FRAME_LIMIT];
        let length = encode_request(request, &mut buffer).unwrap();
        buffer[..length].to_vec()
    }

    /// Feeds `bytes` and collects decoded requests (or refusals/overflows).
    fn receive(bytes: &[u8]) -> std::vec::Vec<Result<Request, Option<Refusal>>> {
        let mut receiver = RequestReceiver::new();
        let mut out = std::vec::Vec::new();
        for &byte in bytes {
            match receiver.push(byte) {
                Some(Received::Frame(frame)) => out.push(decode_request(frame).map_err(Some)),
                Some(Received::Overflow) => out.push(Err(None)),
                None => {}
            }
        }
        out
    }

    fn name(text: &str) -> Name {
        Name::try_from(text).unwrap()
    }

    fn server_kind() -> impl Strategy<Value = ServerKind> {
        prop_oneof![
            Just(ServerKind::Scheduler),
            Just(ServerKind::Pager),
            Just(ServerKind::Test)
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(Command::List),
            any::<Option<u16>>().prop_map(|domain| Command::SchedCreditGet { domain }),
            (any::<u16>(), any::<Option<u32>>(), any::<Option<u32>>()).prop_map(
                |(domain, weight, cap)| Command::SchedCreditSet {
                    domain,
                    weight,
                    cap
                }
            ),
            Just(Command::SchedGlobalGet),
            (any::<Option<u32>>(), any::<Option<u32>>()).prop_map(
                |(timeslice_ms, ratelimit_us)| {
                    Command::SchedGlobalSet {
                        timeslice_ms,
                        ratelimit_us,
                    }
                }
            ),
            any::<Option<u16>>().prop_map(|domain| Command::HaltPollGet { domain }),
            (any::<Option<u16>>(), any::<u64>())
                .prop_map(|(domain, max_ns)| Command::HaltPollSet { domain, max_ns }),
            any::<u16>().prop_map(|domain| Command::Stats { domain }),
            (any::<u16>(), any::<u8>())
                .prop_map(|(domain, vcpu)| Command::HaltPollHistograms { domain, vcpu }),
            (any::<u16>(), any::<u64>())
                .prop_map(|(domain, bytes)| Command::MemSet { domain, bytes }),
            server_kind().prop_map(|server| Command::Kill { server }),
            server_kind().prop_map(|server| Command::Hang { server }),
            server_kind().prop_map(|server| Command::Garble { server }),
        ]
    }

    fn name_strategy() -> impl Strategy<Value = Name> {
        "[A-Za-z0-9_-]{1,32}".prop_map(|text| name(&text))
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop_oneof![
            Just(Priority::Idle),
            Just(Priority::Over),
            Just(Priority::Under),
            Just(Priority::Boost)
        ]
    }

    fn vcpu_state() -> impl Strategy<Value = VcpuState> {
        prop_oneof![
            any::<u8>().prop_map(|pcpu| VcpuState::Running { pcpu }),
            Just(VcpuState::Runnable),
            Just(VcpuState::Blocked),
            Just(VcpuState::Down),
            Just(VcpuState::Stopped),
        ]
    }

    fn vcpu_stats() -> impl Strategy<Value = VcpuStats> {
        (
            any::<u8>(),
            any::<u64>(),
            any::<Option<i64>>(),
            proptest::option::of(priority()),
            any::<bool>(),
            vcpu_state(),
            any::<[u64; 7]>(),
        )
            .prop_map(
                |(index, run_time_ns, credit_ns, priority, parked, state, h)| VcpuStats {
                    index,
                    run_time_ns,
                    credit_ns,
                    priority,
                    parked,
                    state,
                    halt_poll: HaltPollCounters {
                        successful: h[0],
                        attempted: h[1],
                        invalid: h[2],
                        poll_success_ns: h[3],
                        poll_fail_ns: h[4],
                        wait_ns: h[5],
                        window_ns: h[6],
                    },
                },
            )
    }

    fn histogram() -> impl Strategy<Value = Histogram> {
        any::<[u32; HISTOGRAM_BUCKETS]>().prop_map(|buckets| Histogram { buckets })
    }

    fn paging_stats() -> impl Strategy<Value = PagingStats> {
        (
            any::<[u64; 8]>(),
            any::<Option<u32>>(),
            any::<bool>(),
            histogram(),
        )
            .prop_map(
                |(counts, free_slots, swap_full, page_in_latency)| PagingStats {
                    memory_pages: counts[0],
                    target_pages: counts[1],
                    resident_pages: counts[2],
                    paged_pages: counts[3],
                    dropped_pages: counts[4],
                    pages_out: counts[5],
                    pages_in: counts[6],
                    evict_failures: counts[7],
                    free_slots,
                    swap_full,
                    page_in_latency,
                },
            )
    }

    fn heapless_vec<T: core::fmt::Debug, const N: usize>(
        element: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Vec<T, N>> {
        proptest::collection::vec(element, 0..=N)
            .prop_map(|items| items.into_iter().collect::<Vec<T, N>>())
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let domain_info = (
            any::<u16>(),
            name_strategy(),
            any::<u32>(),
            any::<u8>(),
            prop_oneof![
                Just(DomainState::Running),
                Just(DomainState::PoweredOff),
                Just(DomainState::Failed)
            ],
        )
            .prop_map(|(id, name, memory_mib, vcpus, state)| DomainInfo {
                id,
                name,
                memory_mib,
                vcpus,
                state,
            });
        let server_info = (
            name_strategy(),
            server_kind(),
            any::<u32>(),
            any::<u32>(),
            prop_oneof![
                Just(ServerState::Running),
                Just(ServerState::Restarting),
                Just(ServerState::Stopped)
            ],
        )
            .prop_map(|(name, kind, generation, restarts, state)| ServerInfo {
                name,
                kind,
                generation,
                restarts,
                state,
            });
        let credit =
            (any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(domain, weight, cap)| {
                DomainCredit {
                    domain,
                    weight,
                    cap,
                }
            });
        let global = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(max_ns, grow, grow_start_ns, shrink)| HaltPollGlobal {
                max_ns,
                grow,
                grow_start_ns,
                shrink,
            },
        );
        let domain_poll = (any::<u16>(), any::<Option<u64>>())
            .prop_map(|(domain, max_ns)| DomainHaltPoll { domain, max_ns });
        prop_oneof![
            (heapless_vec(domain_info), heapless_vec(server_info))
                .prop_map(|(domains, servers)| Reply::List { domains, servers }),
            heapless_vec(credit).prop_map(|domains| Reply::SchedCredit { domains }),
            (any::<u32>(), any::<u32>()).prop_map(|(timeslice_ms, ratelimit_us)| {
                Reply::SchedGlobal {
                    timeslice_ms,
                    ratelimit_us,
                }
            }),
            (global, heapless_vec(domain_poll))
                .prop_map(|(global, domains)| Reply::HaltPoll { global, domains }),
            (
                any::<u16>(),
                heapless_vec(vcpu_stats()),
                proptest::option::of(paging_stats())
            )
                .prop_map(|(domain, vcpus, paging)| Reply::Stats {
                    domain,
                    vcpus,
                    paging
                }),
            (
                any::<u16>(),
                any::<u8>(),
                histogram(),
                histogram(),
                histogram()
            )
                .prop_map(|(domain, vcpu, poll_success, poll_fail, wait)| {
                    Reply::HaltPollHistograms {
                        domain,
                        vcpu,
                        poll_success,
                        poll_fail,
                        wait,
                    }
                }),
            Just(Reply::Done),
        ]
    }

    fn control_error() -> impl Strategy<Value = ControlError> {
        let field = prop_oneof![
            Just(Field::Domain),
            Just(Field::Weight),
            Just(Field::Cap),
            Just(Field::TimesliceMs),
            Just(Field::RatelimitUs),
            Just(Field::MaxNs),
            Just(Field::Vcpu),
            Just(Field::Bytes),
        ];
        let reason = prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(value, min, max)| Reason::OutOfRange { value, min, max }),
            (any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(value, min, max)| Reason::NeitherOffNorInRange { value, min, max }),
            (any::<u32>(), any::<u32>()).prop_map(|(ratelimit_us, timeslice_ms)| {
                Reason::AboveTimeslice {
                    ratelimit_us,
                    timeslice_ms,
                }
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(value, unit)| Reason::NotMultipleOf { value, unit }),
        ];
        prop_oneof![
            (field, reason)
                .prop_map(|(field, reason)| ControlError::InvalidArgument { field, reason }),
            any::<u16>().prop_map(|domain| ControlError::NoSuchDomain { domain }),
            server_kind().prop_map(|server| ControlError::ServerUnavailable { server }),
            Just(ControlError::Unsupported),
            Just(ControlError::Busy),
            Just(ControlError::Malformed),
            server_kind().prop_map(|server| ControlError::NoSuchServer { server }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip_through_frames(id in any::<u32>(), command in command()) {
            let request = Request { id, command };
            let frame = request_frame(&request);
            prop_assert!(frame.len() <= MAX_REQUEST_FRAME_SIZE);
            prop_assert_eq!(frame.iter().position(|&byte| byte == 0), Some(frame.len() - 1));
            let mut body = frame[..frame.len() - 1].to_vec();
            let length = cobs_decode_in_place(&mut body).unwrap();
            let (decoded, rest) = postcard::take_from_bytes::<Request>(&body[..length]).unwrap();
            prop_assert!(rest.is_empty());
            prop_assert_eq!(&decoded, &request);
            // The validating path agrees with `validate`.
            let expected = request.command.validate().map(|()| request.clone())
                .map_err(|error| Some(Refusal { id, error }));
            prop_assert_eq!(receive(&frame), std::vec![expected]);
        }

        #[test]
        fn responses_round_trip_through_frames(
            id in any::<u32>(),
            result in prop_oneof![reply().prop_map(Ok), control_error().prop_map(Err)],
        ) {
            let response = Response { id, result };
            let mut buffer = std::vec![0u8; MAX_RESPONSE_FRAME_SIZE];
            let length = encode_response(&response, &mut buffer).unwrap();
            prop_assert!(length <= MAX_RESPONSE_FRAME_SIZE);
            let mut receiver = ResponseReceiver::new();
            let mut decoded = std::vec::Vec::new();
            for &byte in &buffer[..length] {
                if let Some(Received::Frame(frame)) = receiver.push(byte) {
                    decoded.push(decode_response(frame));
                }
            }
            prop_assert_eq!(decoded, std::vec![Ok(response)]);
        }

        #[test]
        fn garbage_before_a_frame_costs_only_the_garbage(
            garbage in proptest::collection::vec(any::<u8>(), 0..600),
            command in command(),
        ) {
            let request = Request { id: 7, command };
            let mut stream = garbage.clone();
            stream.push(DELIMITER);
            stream.extend(request_frame(&request));
            let results = receive(&stream);
            // Whatever the garbage gave, the last result is the request's.
            let expected = request.command.validate().map(|()| request.clone())
                .map_err(|error| Some(Refusal { id: 7, error }));
            prop_assert_eq!(results.last(), Some(&expected));
        }

        #[test]
        fn decoding_arbitrary_frames_never_panics(mut bytes in proptest::collection::vec(1u8..=255, 0..300)) {
            let _ = decode_request(&mut bytes.clone());
            let _ = decode_response(&mut bytes);
        }

        #[test]
        fn cobs_decoding_inverts_postcard_encoding(data in proptest::collection::vec(any::<u8>(), 0..1000)) {
            let mut buffer = std::vec![0u8; cobs_max_size(data.len() + 2) + 1];
            // A byte slice is encoded with its length first; the COBS layer is what is tested.
            let frame = postcard::to_slice_cobs(&data[..], &mut buffer).unwrap().to_vec();
            prop_assert!(frame.len() <= cobs_max_size(data.len() + 2) + 1);
            let mut body = frame[..frame.len() - 1].to_vec();
            let length = cobs_decode_in_place(&mut body).unwrap();
            let decoded: std::vec::Vec<u8> = postcard::from_bytes(&body[..length]).unwrap();
            prop_assert_eq!(decoded, data);
        }
    }

    #[test]
    fn the_sizes_fit_the_limits() {
        assert_eq!(Command::MAX_ENCODED_SIZE, 1 + 3 + 6 + 6);
        assert_eq!(Request::MAX_ENCODED_SIZE, 21);
        assert_eq!(MAX_REQUEST_FRAME_SIZE, 23);
        assert_eq!(DomainInfo::MAX_ENCODED_SIZE, 43);
        assert_eq!(VcpuStats::MAX_ENCODED_SIZE, 97);
        assert_eq!(Histogram::MAX_ENCODED_SIZE, 32 * 5);
        assert_eq!(PagingStats::MAX_ENCODED_SIZE, 8 * 10 + 1 + 5 + 1 + 160);
        // Stats (8 vCPUs and paging) is now the largest reply, ahead of
        // List (1 + 1 + 16 * 43 + 1 + 4 * 45 = 871).
        assert_eq!(Reply::MAX_ENCODED_SIZE, 1 + 3 + 1 + 8 * 97 + 1 + 247);
        assert_eq!(Response::MAX_ENCODED_SIZE, 5 + 1 + 1029);
        assert_eq!(MAX_RESPONSE_FRAME_SIZE, 1041);
        const { assert!(MAX_RESPONSE_FRAME_SIZE <= RESPONSE_FRAME_LIMIT) };
    }

    #[test]
    fn the_largest_messages_reach_their_bound() {
        let request = Request {
            id: u32::MAX,
            command: Command::SchedCreditSet {
                domain: u16::MAX,
                weight: Some(u32::MAX),
                cap: Some(u32::MAX),
            },
        };
        assert_eq!(
            postcard::to_allocvec(&request).unwrap().len(),
            Request::MAX_ENCODED_SIZE
        );
        let long_name = name(&"n".repeat(MAX_NAME_LEN));
        let domain = DomainInfo {
            id: u16::MAX,
            name: long_name.clone(),
            memory_mib: u32::MAX,
            vcpus: u8::MAX,
            state: DomainState::Failed,
        };
        let server = ServerInfo {
            name: long_name,
            kind: ServerKind::Test,
            generation: u32::MAX,
            restarts: u32::MAX,
            state: ServerState::Stopped,
        };
        let response = Response {
            id: u32::MAX,
            result: Ok(Reply::List {
                domains: core::iter::repeat_n(domain, MAX_DOMAINS).collect(),
                servers: core::iter::repeat_n(server, MAX_SERVERS).collect(),
            }),
        };
        assert_eq!(
            postcard::to_allocvec(&response).unwrap().len(),
            size::U32
                + size::VARIANT
                + size::VARIANT
                + size::collection(MAX_DOMAINS, DomainInfo::MAX_ENCODED_SIZE)
                + size::collection(MAX_SERVERS, ServerInfo::MAX_ENCODED_SIZE)
        );
        let mut buffer = [0u8; MAX_RESPONSE_FRAME_SIZE];
        assert!(encode_response(&response, &mut buffer).is_ok());
        let stats = VcpuStats {
            index: u8::MAX,
            run_time_ns: u64::MAX,
            credit_ns: Some(i64::MIN),
            priority: Some(Priority::Boost),
            parked: true,
            state: VcpuState::Running { pcpu: u8::MAX },
            halt_poll: HaltPollCounters {
                successful: u64::MAX,
                attempted: u64::MAX,
                invalid: u64::MAX,
                poll_success_ns: u64::MAX,
                poll_fail_ns: u64::MAX,
                wait_ns: u64::MAX,
                window_ns: u64::MAX,
            },
        };
        assert_eq!(
            postcard::to_allocvec(&stats).unwrap().len(),
            VcpuStats::MAX_ENCODED_SIZE
        );
        let histogram = Histogram {
            buckets: [u32::MAX; HISTOGRAM_BUCKETS],
        };
        assert_eq!(
            postcard::to_allocvec(&histogram).unwrap().len(),
            Histogram::MAX_ENCODED_SIZE
        );
        let paging = PagingStats {
            memory_pages: u64::MAX,
            target_pages: u64::MAX,
            resident_pages: u64::MAX,
            paged_pages: u64::MAX,
            dropped_pages: u64::MAX,
            pages_out: u64::MAX,
            pages_in: u64::MAX,
            evict_failures: u64::MAX,
            free_slots: Some(u32::MAX),
            swap_full: true,
            page_in_latency: histogram,
        };
        assert_eq!(
            postcard::to_allocvec(&paging).unwrap().len(),
            PagingStats::MAX_ENCODED_SIZE
        );
        // The largest response: one domain's 8 vCPUs and its paging.
        let response = Response {
            id: u32::MAX,
            result: Ok(Reply::Stats {
                domain: u16::MAX,
                vcpus: core::iter::repeat_n(stats, MAX_VCPUS).collect(),
                paging: Some(paging),
            }),
        };
        assert_eq!(
            postcard::to_allocvec(&response).unwrap().len(),
            Response::MAX_ENCODED_SIZE
        );
        let length = encode_response(&response, &mut buffer).unwrap();
        assert!(length <= MAX_RESPONSE_FRAME_SIZE);
        let error = ControlError::InvalidArgument {
            field: Field::Bytes,
            reason: Reason::OutOfRange {
                value: u64::MAX,
                min: u64::MAX,
                max: u64::MAX,
            },
        };
        assert_eq!(
            postcard::to_allocvec(&error).unwrap().len(),
            ControlError::MAX_ENCODED_SIZE
        );
    }

    #[test]
    fn the_command_count_is_the_number_of_variants() {
        let last = Request {
            id: 1,
            command: Command::Garble {
                server: ServerKind::Pager,
            },
        };
        let bytes = postcard::to_allocvec(&last).unwrap();
        assert_eq!(u32::from(bytes[1]), COMMAND_COUNT - 1);
    }

    /// The command with one argument changed, and the error expected.
    fn refused(command: Command) -> ControlError {
        command.validate().expect_err("should be refused")
    }

    fn set_credit(weight: Option<u32>, cap: Option<u32>) -> Command {
        Command::SchedCreditSet {
            domain: 0,
            weight,
            cap,
        }
    }

    fn set_global(timeslice_ms: Option<u32>, ratelimit_us: Option<u32>) -> Command {
        Command::SchedGlobalSet {
            timeslice_ms,
            ratelimit_us,
        }
    }

    fn out_of_range(field: Field, value: u64, min: u64, max: u64) -> ControlError {
        ControlError::InvalidArgument {
            field,
            reason: Reason::OutOfRange { value, min, max },
        }
    }

    #[test]
    fn weight_edges() {
        assert_eq!(
            refused(set_credit(Some(0), None)),
            out_of_range(Field::Weight, 0, 1, 65535)
        );
        assert!(set_credit(Some(1), None).validate().is_ok());
        assert!(set_credit(Some(65535), None).validate().is_ok());
        assert_eq!(
            refused(set_credit(Some(65536), None)),
            out_of_range(Field::Weight, 65536, 1, 65535)
        );
        assert_eq!(
            refused(set_credit(Some(0), None)).to_string(),
            "weight 0 is out of range 1..=65535"
        );
        assert!(set_credit(None, None).validate().is_ok());
    }

    #[test]
    fn cap_edges() {
        assert!(set_credit(None, Some(0)).validate().is_ok());
        assert!(set_credit(None, Some(800)).validate().is_ok());
        assert_eq!(
            refused(set_credit(None, Some(801))),
            out_of_range(Field::Cap, 801, 0, 800)
        );
        let two_vcpus = Shape::new(1).with_domain(0, 2);
        assert!(set_credit(None, Some(200)).validate_in(&two_vcpus).is_ok());
        let error = set_credit(None, Some(201))
            .validate_in(&two_vcpus)
            .unwrap_err();
        assert_eq!(error, out_of_range(Field::Cap, 201, 0, 200));
        assert!(
            error
                .to_string()
                .starts_with("cap 201 is out of range 0..=200"),
            "{error}"
        );
        // The weight is checked before the cap, and before the machine.
        assert_eq!(
            set_credit(Some(0), Some(201)).validate_in(&two_vcpus),
            Err(out_of_range(Field::Weight, 0, 1, 65535))
        );
    }

    #[test]
    fn timeslice_and_ratelimit_edges() {
        assert_eq!(
            refused(set_global(Some(0), None)),
            out_of_range(Field::TimesliceMs, 0, 1, 1000)
        );
        assert!(set_global(Some(1), None).validate().is_ok());
        assert!(set_global(Some(1000), None).validate().is_ok());
        assert_eq!(
            refused(set_global(Some(1001), None)),
            out_of_range(Field::TimesliceMs, 1001, 1, 1000)
        );
        for ok in [0, 100, 500_000] {
            assert!(set_global(None, Some(ok)).validate().is_ok(), "{ok}");
        }
        for bad in [1, 99, 500_001] {
            assert_eq!(
                refused(set_global(None, Some(bad))),
                ControlError::InvalidArgument {
                    field: Field::RatelimitUs,
                    reason: Reason::NeitherOffNorInRange {
                        value: bad.into(),
                        min: 100,
                        max: 500_000
                    }
                }
            );
        }
        assert_eq!(
            refused(set_global(None, Some(99))).to_string(),
            "ratelimit_us 99 is neither 0 (off) nor in range 100..=500000"
        );
        // ratelimit <= timeslice, checked when both are known.
        assert!(set_global(Some(1), Some(1000)).validate().is_ok());
        let error = refused(set_global(Some(1), Some(1001)));
        assert_eq!(
            error,
            ControlError::InvalidArgument {
                field: Field::RatelimitUs,
                reason: Reason::AboveTimeslice {
                    ratelimit_us: 1001,
                    timeslice_ms: 1
                }
            }
        );
        assert!(error.to_string().contains("1000 us"), "{error}");
        assert!(check_global(30, 30_000).is_ok());
        assert!(check_global(30, 30_001).is_err());
        assert!(check_global(1000, 500_000).is_ok());
        assert!(check_global(0, 0).is_err());
    }

    #[test]
    fn halt_poll_edges() {
        let set = |max_ns| Command::HaltPollSet {
            domain: None,
            max_ns,
        };
        assert!(set(0).validate().is_ok());
        assert!(set(HALT_POLL_MAX_NS).validate().is_ok());
        assert_eq!(
            refused(set(HALT_POLL_MAX_NS + 1)),
            out_of_range(Field::MaxNs, HALT_POLL_MAX_NS + 1, 0, HALT_POLL_MAX_NS)
        );
        assert_eq!(
            refused(set(HALT_POLL_MAX_NS + 1)).to_string(),
            "max_ns 1000000001 is out of range 0..=1000000000"
        );
    }

    #[test]
    fn domain_and_vcpu_edges() {
        assert!(Command::Stats { domain: 15 }.validate().is_ok());
        assert_eq!(
            refused(Command::Stats { domain: 16 }),
            ControlError::NoSuchDomain { domain: 16 }
        );
        assert_eq!(
            refused(Command::HaltPollGet { domain: Some(16) }),
            ControlError::NoSuchDomain { domain: 16 }
        );
        assert!(Command::HaltPollGet { domain: None }.validate().is_ok());
        let shape = Shape::new(2).with_domain(0, 1).with_domain(2, 4);
        assert_eq!(
            Command::Stats { domain: 1 }.validate_in(&shape),
            Err(ControlError::NoSuchDomain { domain: 1 })
        );
        assert!(Command::Stats { domain: 2 }.validate_in(&shape).is_ok());
        let histograms = |vcpu| Command::HaltPollHistograms { domain: 2, vcpu };
        assert!(histograms(3).validate_in(&shape).is_ok());
        assert_eq!(
            histograms(4).validate_in(&shape),
            Err(out_of_range(Field::Vcpu, 4, 0, 3))
        );
        assert_eq!(
            histograms(8).validate(),
            Err(out_of_range(Field::Vcpu, 8, 0, 7))
        );
        assert!(Command::List.validate_in(&Shape::new(1)).is_ok());
    }

    #[test]
    fn memory_target_edges() {
        let set = |bytes| Command::MemSet { domain: 0, bytes };
        assert!(set(MEMORY_MIN_BYTES).validate().is_ok());
        assert!(set(MEMORY_MAX_BYTES).validate().is_ok());
        assert_eq!(
            refused(set(MEMORY_MIN_BYTES - 4096)),
            out_of_range(
                Field::Bytes,
                MEMORY_MIN_BYTES - 4096,
                MEMORY_MIN_BYTES,
                MEMORY_MAX_BYTES
            )
        );
        assert!(refused(set(MEMORY_MAX_BYTES + 4096))
            .to_string()
            .contains("out of range"));
        assert_eq!(
            refused(set(MEMORY_MIN_BYTES + 1)),
            ControlError::InvalidArgument {
                field: Field::Bytes,
                reason: Reason::NotMultipleOf {
                    value: MEMORY_MIN_BYTES + 1,
                    unit: 4096
                }
            }
        );
    }

    #[test]
    fn a_memory_target_is_checked_against_the_domains_memory() {
        let memory = 16 * MIB;
        assert_eq!(check_memory_target(memory, memory), Ok(4096));
        assert_eq!(check_memory_target(MEMORY_MIN_BYTES, memory), Ok(512));
        let error = check_memory_target(memory + 4096, memory).unwrap_err();
        assert_eq!(
            error,
            out_of_range(Field::Bytes, memory + 4096, MEMORY_MIN_BYTES, memory)
        );
        assert_eq!(
            error.to_string(),
            "memory bytes 16781312 is out of range 2097152..=16777216"
        );
        // What `validate` refuses comes first, with its own bounds.
        assert_eq!(
            check_memory_target(MEMORY_MIN_BYTES - 4096, memory),
            Err(out_of_range(
                Field::Bytes,
                MEMORY_MIN_BYTES - 4096,
                MEMORY_MIN_BYTES,
                MEMORY_MAX_BYTES
            ))
        );
        assert!(matches!(
            check_memory_target(MEMORY_MIN_BYTES + 1, memory),
            Err(ControlError::InvalidArgument {
                reason: Reason::NotMultipleOf { .. },
                ..
            })
        ));
    }

    #[test]
    fn a_short_histogram_fills_the_first_buckets() {
        let mut counts = [0u32; PAGE_IN_LATENCY_BUCKETS];
        counts[0] = 5;
        counts[PAGE_IN_LATENCY_BUCKETS - 1] = 2;
        let histogram = Histogram::from_counts(&counts);
        assert_eq!(histogram.buckets[0], 5);
        assert_eq!(histogram.buckets[PAGE_IN_LATENCY_BUCKETS - 1], 2);
        assert_eq!(histogram.buckets.iter().sum::<u32>(), 7);
        // Longer input folds into the last bucket, saturating.
        let long = [u32::MAX; HISTOGRAM_BUCKETS + 2];
        let histogram = Histogram::from_counts(&long);
        assert_eq!(histogram.buckets[HISTOGRAM_BUCKETS - 1], u32::MAX);
        assert_eq!(histogram.buckets[0], u32::MAX);
    }

    #[test]
    fn unknown_commands_are_unsupported_and_garbage_is_malformed() {
        // id 5, variant 200 (a newer host), no fields.
        let mut bytes = [0u8; 8];
        let frame = postcard::to_slice_cobs(&(5u32, 200u32), &mut bytes).unwrap();
        let length = frame.len() - 1;
        assert_eq!(
            decode_request(&mut frame[..length]),
            Err(Refusal {
                id: 5,
                error: ControlError::Unsupported
            })
        );
        // id 6, a known variant with its field missing.
        let frame = postcard::to_slice_cobs(&(6u32, 7u32), &mut bytes).unwrap();
        let length = frame.len() - 1;
        assert_eq!(
            decode_request(&mut frame[..length]),
            Err(Refusal {
                id: 6,
                error: ControlError::Malformed
            })
        );
        // Trailing bytes.
        let frame = postcard::to_slice_cobs(&(6u32, 0u32, 9u8), &mut bytes).unwrap();
        let length = frame.len() - 1;
        assert_eq!(
            decode_request(&mut frame[..length]).unwrap_err().error,
            ControlError::Malformed
        );
        // Not COBS: a block running past the end.
        assert_eq!(
            decode_request(&mut [0x05, 0x01]),
            Err(Refusal {
                id: UNKNOWN_REQUEST_ID,
                error: ControlError::Malformed
            })
        );
        assert_eq!(
            Response::refusal(Refusal {
                id: 3,
                error: ControlError::Busy
            }),
            Response {
                id: 3,
                result: Err(ControlError::Busy)
            }
        );
    }

    #[test]
    fn the_receiver_resynchronises_after_garbage_and_overflow() {
        let request = Request {
            id: 1,
            command: Command::List,
        };
        let frame = request_frame(&request);
        // Half a frame, then a delimiter: a malformed frame, then the good one.
        let mut stream = frame[..frame.len() / 2].to_vec();
        stream.push(0);
        stream.extend(&frame);
        let results = receive(&stream);
        assert_eq!(results.len(), 2);
        assert_eq!(results[1], Ok(request.clone()));
        // An overlong run of non-zero bytes is dropped whole.
        let mut stream = std::vec![0x55; REQUEST_FRAME_LIMIT * 3];
        stream.push(0);
        stream.extend(&frame);
        assert_eq!(receive(&stream), std::vec![Err(None), Ok(request.clone())]);
        // Empty frames are skipped.
        let mut stream = std::vec![0, 0, 0];
        stream.extend(&frame);
        stream.extend([0, 0]);
        assert_eq!(receive(&stream), std::vec![Ok(request.clone())]);
        // The largest frame the limit allows still fits: 255 bytes + delimiter.
        let mut receiver = RequestReceiver::new();
        for _ in 0..REQUEST_FRAME_LIMIT - 1 {
            assert!(receiver.push(1).is_none());
        }
        assert!(
            matches!(receiver.push(0), Some(Received::Frame(frame)) if frame.len() == REQUEST_FRAME_LIMIT - 1)
        );
        for _ in 0..REQUEST_FRAME_LIMIT {
            assert!(receiver.push(1).is_none());
        }
        assert_eq!(receiver.push(0), Some(Received::Overflow));
        receiver.push(1);
        receiver.reset();
        assert_eq!(receiver.push(0), None);
    }

    #[test]
    fn server_kinds_have_words() {
        for kind in [ServerKind::Scheduler, ServerKind::Pager, ServerKind::Test] {
            assert_eq!(parse_server_kind(server_kind_name(kind)), Some(kind));
        }
        assert_eq!(parse_server_kind("pagers"), None);
    }

    #[test]
    fn scheduler_answers_map_to_control_answers() {
        use scheduler::KnobError;
        assert_eq!(
            ControlError::from(scheduler::ControlError::Knob(KnobError::WeightOutOfRange {
                requested: 0
            }))
            .to_string(),
            "weight 0 is out of range 1..=65535"
        );
        assert_eq!(
            ControlError::from(scheduler::ControlError::NotReady),
            ControlError::ServerUnavailable {
                server: ServerKind::Scheduler
            }
        );
        assert_eq!(
            ControlError::from(scheduler::ControlError::UnknownDomain { domain: 3 }),
            ControlError::NoSuchDomain { domain: 3 }
        );
        assert!(matches!(
            ControlError::from(KnobError::RatelimitAboveTimeslice {
                ratelimit_us: 5000,
                timeslice_ms: 1
            }),
            ControlError::InvalidArgument {
                reason: Reason::AboveTimeslice { .. },
                ..
            }
        ));
        assert_eq!(
            Reply::from(scheduler::Applied::Tunables {
                timeslice_ms: 30,
                ratelimit_us: 1000
            }),
            Reply::SchedGlobal {
                timeslice_ms: 30,
                ratelimit_us: 1000
            }
        );
        let Reply::SchedCredit { domains } = Reply::from(scheduler::Applied::Domain {
            domain: 2,
            weight: 512,
            cap: 50,
        }) else {
            panic!("a domain's values give a SchedCredit reply");
        };
        assert_eq!(
            domains.as_slice(),
            [DomainCredit {
                domain: 2,
                weight: 512,
                cap: 50
            }]
        );
    }
}

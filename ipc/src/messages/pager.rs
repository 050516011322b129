//! The pager server's protocol. This is its first part: the core tells the
//! pager each domain's memory and resident target, and the pager answers
//! whether the target is acceptable (issue #5 adds the page-in and page-out
//! requests and completions to these enums).
//!
//! Budget: a body may take up to `SLOT_PAYLOAD - ENVELOPE_HEADER_MAX_SIZE`
//! = 242 bytes; a `u64` gfn or slot takes at most 10, so one message can
//! carry a batch of up to 11 (gfn, slot) pairs besides a domain and an
//! operation.

use serde::{Deserialize, Serialize};

use super::{envelope_max_size, size, DecodeError, ErrorCode, FromServer, Message};

/// Core → pager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToServer {
    /// A domain's size and its resident target, sent at every pager start
    /// (so a restarted pager relearns them) and whenever the target changes.
    Domain {
        /// The domain's id.
        domain: u16,
        /// Its memory, in 4 KiB pages.
        memory_pages: u64,
        /// The resident target, in pages.
        target_pages: u64,
    },
    /// The core refused a message from the pager, for this reason.
    Error {
        /// What was wrong.
        code: ErrorCode,
    },
}

/// Pager → core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCore {
    /// The pager has started and reads its ring.
    Ready,
    /// The pager is alive; `count` increases by one per heartbeat.
    Heartbeat {
        /// Heartbeats sent by this instance so far.
        count: u64,
    },
    /// The pager's verdict on a domain's target.
    Target {
        /// The domain's id.
        domain: u16,
        /// Whether the target is within `floor ..= memory`.
        accepted: bool,
        /// The lowest target the pager accepts for this domain, pages.
        floor_pages: u64,
    },
}

/// What the core checks pager messages against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagerContext {
    /// Number of domains.
    pub domains: u16,
}

impl Message for ToServer {
    const MAX_ENCODED_SIZE: usize =
        size::VARIANT + size::max(size::U16 + 2 * size::U64, ErrorCode::MAX_ENCODED_SIZE);
}

impl Message for ToCore {
    const MAX_ENCODED_SIZE: usize = size::VARIANT + size::max(size::U64, size::U16 + 1 + size::U64);
}

impl FromServer for ToCore {
    type Context = PagerContext;

    fn validate(&self, context: &PagerContext) -> Result<(), DecodeError> {
        match self {
            Self::Target { domain, .. } if *domain >= context.domains => {
                Err(DecodeError::OutOfRange { field: "domain" })
            }
            _ => Ok(()),
        }
    }
}

const _: () = assert!(envelope_max_size::<ToServer>() <= crate::ring::SLOT_PAYLOAD);
const _: () = assert!(envelope_max_size::<ToCore>() <= crate::ring::SLOT_PAYLOAD);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{decode_from_core, decode_from_server, encode, Envelope};

    #[test]
    fn worst_cases_fit_and_round_trip() {
        let mut buffer = [0u8; 64];
        let domain = ToServer::Domain { domain: u16::MAX, memory_pages: u64::MAX, target_pages: u64::MAX };
        let length = encode(&Envelope::new(u32::MAX, domain.clone()), &mut buffer).unwrap();
        assert_eq!(length, envelope_max_size::<ToServer>());
        assert_eq!(decode_from_core::<ToServer>(&buffer[..length], u32::MAX).unwrap(), domain);
        let target = ToCore::Target { domain: u16::MAX, accepted: true, floor_pages: u64::MAX };
        let length = encode(&Envelope::new(u32::MAX, target), &mut buffer).unwrap();
        assert_eq!(length, envelope_max_size::<ToCore>());
    }

    #[test]
    fn domains_out_of_range_are_refused() {
        let mut buffer = [0u8; 64];
        let context = PagerContext { domains: 2 };
        let good = ToCore::Target { domain: 1, accepted: false, floor_pages: 512 };
        let length = encode(&Envelope::new(3, good.clone()), &mut buffer).unwrap();
        assert_eq!(decode_from_server::<ToCore>(&buffer[..length], 3, &context).unwrap(), good);
        let bad = ToCore::Target { domain: 2, accepted: true, floor_pages: 0 };
        let length = encode(&Envelope::new(3, bad), &mut buffer).unwrap();
        assert_eq!(
            decode_from_server::<ToCore>(&buffer[..length], 3, &context),
            Err(DecodeError::OutOfRange { field: "domain" })
        );
    }
}

//! The pager as a server: the [`components::Handler`] that turns the core's
//! messages into calls on the policy library and answers.
//!
//! Today it learns each domain's size and resident target (the core sends
//! them at every start, so a restarted pager relearns them) and validates the
//! target against [`TargetLimits`]; paging itself (evict, page-in over the
//! block device) arrives with the rest of issue #5's protocol.

use components::{Context, Handler, LogLine};
use heapless::Vec;
use ipc::messages::pager::{ToCore, ToServer};

use crate::target::TargetLimits;

/// Heartbeat period, ns.
pub const HEARTBEAT_INTERVAL_NS: u64 = 100_000_000;
/// Most domains the pager tracks.
pub const MAX_DOMAINS: usize = ipc::boot::MAX_DOMAINS;

/// One domain as the pager knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainRecord {
    /// The domain's id.
    pub domain: u16,
    /// Its limits.
    pub limits: TargetLimits,
    /// The accepted target, pages (`None` if the last one was refused).
    pub target_pages: Option<u64>,
}

/// The pager server's state.
#[derive(Debug, Default)]
pub struct PagerServer {
    domains: Vec<DomainRecord, MAX_DOMAINS>,
    heartbeats: u64,
    next_heartbeat: u64,
}

impl PagerServer {
    /// A pager that knows no domain yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The domains learnt so far.
    pub fn domains(&self) -> &[DomainRecord] {
        &self.domains
    }

    fn learn(&mut self, domain: u16, memory_pages: u64, target_pages: u64) -> (bool, u64, Option<&'static str>) {
        let limits = TargetLimits::new(memory_pages, 0);
        let verdict = limits.validate(target_pages);
        let record = DomainRecord { domain, limits, target_pages: verdict.ok().map(|target| target.pages()) };
        match self.domains.iter_mut().find(|known| known.domain == domain) {
            Some(known) => *known = record,
            None => {
                if self.domains.push(record).is_err() {
                    return (false, limits.floor_pages(), Some("too many domains"));
                }
            }
        }
        let reason = verdict.err().map(|error| match error {
            crate::target::TargetError::AboveMemory { .. } => "larger than the domain's memory",
            crate::target::TargetError::BelowFloor { .. } => "below the floor",
        });
        (reason.is_none(), limits.floor_pages(), reason)
    }
}

impl Handler for PagerServer {
    type Inbound = ToServer;
    type Outbound = ToCore;

    fn init(&mut self, context: &mut Context<'_, ToCore>) {
        let mut line = LogLine::new();
        line.push_str("pager: gen ").push_decimal(u64::from(context.generation())).push_str(" started");
        context.log_line(&line);
        let _ = context.send(ToCore::Ready);
        self.next_heartbeat = context.now().saturating_add(HEARTBEAT_INTERVAL_NS);
        context.wake_at(self.next_heartbeat);
    }

    fn request(&mut self, message: ToServer, context: &mut Context<'_, ToCore>) {
        match message {
            ToServer::Domain { domain, memory_pages, target_pages } => {
                let (accepted, floor_pages, reason) = self.learn(domain, memory_pages, target_pages);
                let mut line = LogLine::new();
                line.push_str("pager: domain ")
                    .push_decimal(u64::from(domain))
                    .push_str(": target ")
                    .push_decimal(target_pages)
                    .push_str(" of ")
                    .push_decimal(memory_pages)
                    .push_str(" pages ");
                match reason {
                    None => line.push_str("accepted"),
                    Some(reason) => line.push_str("refused: ").push_str(reason),
                };
                context.log_line(&line);
                let _ = context.send(ToCore::Target { domain, accepted, floor_pages });
            }
            ToServer::Error { code } => self.fault(code, context),
            // Paging itself is not driven yet: no nomination is ever sent, so
            // none of these can concern work in flight.
            _ => {}
        }
    }

    fn notified(&mut self, context: &mut Context<'_, ToCore>) {
        let now = context.now();
        if now >= self.next_heartbeat {
            self.heartbeats = self.heartbeats.saturating_add(1);
            let _ = context.send(ToCore::Heartbeat { count: self.heartbeats });
            self.next_heartbeat = now.saturating_add(HEARTBEAT_INTERVAL_NS);
        }
        context.wake_at(self.next_heartbeat);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_validated_and_relearnt() {
        let mut pager = PagerServer::new();
        assert_eq!(pager.learn(0, 4096, 4096), (true, 512, None));
        assert_eq!(pager.learn(1, 4096, 8192), (false, 512, Some("larger than the domain's memory")));
        assert_eq!(pager.learn(1, 4096, 100), (false, 512, Some("below the floor")));
        assert_eq!(pager.learn(1, 4096, 1024), (true, 512, None));
        assert_eq!(pager.domains().len(), 2, "a domain sent again replaces its record");
        assert_eq!(pager.domains()[1].target_pages, Some(1024));
    }
}

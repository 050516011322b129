//! What the core has not told the scheduler server yet: a batch for the
//! next `Events` message, or a bookkeeping log for its publication area
//! (`ipc::publication`).
//!
//! Run time (`Ran`), dispatches (`Dispatched`) and the core's own time
//! (`Overhead`) are *bookkeeping*: the server needs them at its next turn,
//! not before. While nothing else is pending they collect in a log, which
//! the core writes into the server's publication area when the server next
//! runs, so that a busy machine's accounting turn decodes no message. Any
//! other event (a block, a wake, a yield, a vCPU or domain coming or going)
//! may change a decision now: it goes into the batch, and the log goes in
//! front of it, so the server sees every event in the order it happened.

use heapless::Vec;
use ipc::messages::scheduler::{Event, EVENT_BATCH_LEN};
use ipc::publication::LOG_LEN;

/// Whether `event` is bookkeeping the server can take at its next turn
/// (run time, dispatches, the core's own time) rather than something that
/// may change a decision now.
pub fn is_bookkeeping(event: &Event) -> bool {
    matches!(event, Event::Ran { .. } | Event::Dispatched { .. } | Event::Overhead { .. })
}

/// Events not yet sent or logged. The log is empty whenever the batch is
/// not: a log always holds the oldest events.
#[derive(Debug, Default)]
pub struct PendingEvents {
    batch: Vec<Event, EVENT_BATCH_LEN>,
    log: Vec<Event, LOG_LEN>,
    /// The batch holds an event that is not bookkeeping.
    urgent: bool,
}

impl PendingEvents {
    /// Nothing pending.
    pub const fn new() -> Self {
        Self {
            batch: Vec::new(),
            log: Vec::new(),
            urgent: false,
        }
    }

    /// Queues `event`; `false` when the batch is full (send it, then record
    /// again). Bookkeeping goes to the log while the batch is empty and the
    /// log has room; anything else first moves the log into the batch.
    pub fn record(&mut self, event: Event) -> bool {
        let bookkeeping = is_bookkeeping(&event);
        if bookkeeping && self.batch.is_empty() && self.log.push(event).is_ok() {
            return true;
        }
        self.log_to_batch();
        let recorded = self.batch.push(event).is_ok();
        if recorded {
            self.urgent |= !bookkeeping;
        }
        recorded
    }

    /// Moves the log into the batch, to go as a message (the server has not
    /// taken the last log it was given).
    pub fn log_to_batch(&mut self) {
        // The batch is empty whenever the log is not, and LOG_LEN is at
        // most EVENT_BATCH_LEN (`ipc::publication`): every push fits.
        for event in &self.log {
            let _ = self.batch.push(*event);
        }
        self.log.clear();
    }

    /// Whether the batch goes to the server at this switch point: it holds
    /// something urgent, or the server runs now (`server_runs`: it is
    /// runnable, or its timeout has come) and takes bookkeeping anyway.
    /// Waking the server for bookkeeping alone would cost a turn per slice
    /// on every pCPU; it comes before the server's next deadline, at most a
    /// timeslice away, which is also the shortest slice a decision gives.
    pub fn must_send(&self, server_runs: bool) -> bool {
        !self.batch.is_empty() && (self.urgent || server_runs)
    }

    /// Whether a batch is pending.
    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Takes the batch.
    pub fn take_batch(&mut self) -> Vec<Event, EVENT_BATCH_LEN> {
        self.urgent = false;
        core::mem::take(&mut self.batch)
    }

    /// The log: bookkeeping since the last message, oldest first.
    pub fn log(&self) -> &[Event] {
        &self.log
    }

    /// Forgets the log (it was written into the publication area).
    pub fn clear_log(&mut self) {
        self.log.clear();
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.log.is_empty()
    }

    /// Drops everything (a rebuild stream or a new instance replaces what
    /// it would have told).
    pub fn forget(&mut self) {
        self.batch.clear();
        self.log.clear();
        self.urgent = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::messages::scheduler::Vcpu;

    fn ran(ns: u64) -> Event {
        Event::Ran { vcpu: Vcpu::new(0, 0), pcpu: 1, ns }
    }

    fn woke(at: u64) -> Event {
        Event::Woke { vcpu: Vcpu::new(1, 0), at }
    }

    #[test]
    fn bookkeeping_alone_is_logged_and_sent_only_when_the_server_runs() {
        let mut pending = PendingEvents::new();
        assert!(pending.record(ran(1)));
        assert!(pending.record(Event::Dispatched { pcpu: 1, vcpu: None, at: 2 }));
        assert!(pending.record(Event::Overhead { pcpu: 1, ns: 3 }));
        assert_eq!(pending.log().len(), 3);
        assert!(!pending.must_send(true), "nothing is in the batch");
        pending.clear_log();
        assert!(pending.is_empty());
    }

    #[test]
    fn an_urgent_event_takes_the_log_in_front_of_itself() {
        let mut pending = PendingEvents::new();
        pending.record(ran(1));
        pending.record(ran(2));
        pending.record(woke(3));
        // Bookkeeping after a pending message follows it in the batch.
        pending.record(ran(4));
        assert!(pending.log().is_empty());
        assert!(pending.must_send(false), "a wake goes at once");
        assert_eq!(pending.take_batch().as_slice(), &[ran(1), ran(2), woke(3), ran(4)]);
        assert!(!pending.must_send(true));
        // With the batch gone, bookkeeping is logged again.
        pending.record(ran(5));
        assert_eq!(pending.log(), &[ran(5)]);
    }

    #[test]
    fn a_full_log_spills_into_the_batch_in_order() {
        let mut pending = PendingEvents::new();
        for ns in 0..=LOG_LEN as u64 {
            assert!(pending.record(ran(ns)));
        }
        assert!(pending.log().is_empty());
        assert!(!pending.must_send(false), "bookkeeping waits for the server");
        assert!(pending.must_send(true));
        let batch = pending.take_batch();
        assert!(batch.iter().zip(0..).all(|(event, ns)| *event == ran(ns)));
        assert_eq!(batch.len(), LOG_LEN + 1);
    }

    #[test]
    fn a_log_the_server_has_not_taken_goes_as_a_message() {
        let mut pending = PendingEvents::new();
        pending.record(ran(1));
        pending.log_to_batch();
        assert_eq!((pending.log().len(), pending.must_send(true)), (0, true));
        assert_eq!(pending.take_batch().as_slice(), &[ran(1)]);
    }

    #[test]
    fn a_full_batch_refuses_until_it_is_sent() {
        let mut pending = PendingEvents::new();
        for at in 0..EVENT_BATCH_LEN as u64 {
            assert!(pending.record(woke(at)));
        }
        assert!(!pending.record(ran(9)));
        pending.take_batch();
        assert!(pending.record(ran(9)));
        pending.forget();
        assert!(pending.is_empty());
    }
}

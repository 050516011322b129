//! The publication area: fixed-layout tables in memory a server shares with
//! the core, for state the other side reads only now and then.
//!
//! The rings carry what the core must act on at once (tickles, `Ready`,
//! control answers) and everything the core tells a server. The scheduler
//! server's *state* goes here instead of into messages:
//!
//! * its **credit table**, every vCPU's credit, priority and run time, which
//!   the core only keeps (it hands it back to a restarted instance and
//!   shows it in `hvctl stats`): the server overwrites it after every
//!   accounting and the core reads it when it needs it (at a restart, a
//!   rebuild, a `stats` request);
//! * its **decisions**, one run list and slice per pCPU: the server
//!   overwrites a pCPU's when it changes, and the core, each time the
//!   server gives the pCPU back, takes in those whose sequence moved.
//!
//! And one table goes the other way: the core's **bookkeeping log**, the
//! run time (`Ran`), dispatches (`Dispatched`) and the core's own time
//! (`Overhead`) the scheduler needs at its next turn but not before. On a
//! busy machine they are all the core has to tell it, so a turn that finds
//! them here reads no message at all.
//!
//! Under TCG every message costs the decode and validation code it runs on
//! both sides, at every accounting; a table costs the writer a few stores
//! and the reader a few loads (docs/benchmarks.md).
//!
//! # Layout (the ABI; `docs/server-abi.md`)
//!
//! [`PUBLICATION_BYTES`] at [`PUBLICATION_OFFSET`] from the ring region's
//! base, mapped read-write into the server, all little-endian 64-bit words:
//!
//! | word | what |
//! |---|---|
//! | 0 | `sequence`: completed publications; 0 = none yet. The complete copy is `sequence % 2` |
//! | 1..8 | reserved, zero |
//! | 8.. | credit table copy 0, [`COPY_WORDS`] words |
//! | 8 + [`COPY_WORDS`].. | credit table copy 1 |
//! | 8 + 2 × [`COPY_WORDS`].. | one decision block of [`DECISION_WORDS`] words per pCPU, pCPU 0 first |
//! | [`FIRST_LOG`].. | the bookkeeping log, [`LOG_WORDS`] words |
//!
//! A credit table copy: word 0 bit 0 = `accounted_at` is known, word 1 = `accounted_at`
//! (ns), word 2 = the number of entries (at most [`CREDIT_TABLE_LEN`]), then
//! three words per entry: `domain | index << 16 | priority << 24 | parked
//! << 32` (priority 0 = IDLE, 1 = OVER, 2 = UNDER, 3 = BOOST; parked 0 or
//! 1; the other bits zero), `credit_ns` (two's complement) and
//! `run_time_ns`.
//!
//! A decision block: word 0 is its own `sequence` (0 = nothing decided yet;
//! the complete copy is `sequence % 2`), copy 0 at word 1 and copy 1 at word
//! 1 + [`DECISION_COPY_WORDS`]. A copy: word 0 = `slice_ns`, word 1 = the
//! length of the run list (at most [`RUN_LIST_LEN`]), then one word per
//! vCPU, best first: `domain | index << 16`.
//!
//! # Protocol
//!
//! The writer fills the copy that is *not* current (after a release fence,
//! so its last `sequence` store is seen before any of these writes), then
//! stores the next sequence (release): `sequence + 1`, or 2 after
//! `u64::MAX`, so that copies keep alternating and 0 keeps meaning
//! "nothing yet". A writer stopped halfway (killed,
//! faulted) leaves the last complete copy current, so a restart never
//! loses the last publication to a torn one. The reader loads `sequence`
//! (acquire), copies the current copy out, and loads `sequence` again: if
//! it moved, the writer may have started on the copy being read, so the
//! read is tried again, a few times, then refused
//! ([`PublicationError::Torn`]). The core takes decisions in only while
//! the server is stopped in a syscall, but it may read the credit table
//! on another pCPU while the server runs (a rebuild stream), so a torn
//! read can happen there, rarely; the core then keeps its last copy.
//!
//! Every table follows it, each with its own sequence.
//!
//! # The bookkeeping log (written by the core)
//!
//! Words: 0 `sequence` (the core's; 0 = none yet), 1 `taken` (the server's:
//! the last sequence it took), 2 `after`, 3 the number of entries (at most
//! [`LOG_LEN`]), then two words per entry in the order the events happened:
//! `kind | pcpu << 8 | has_vcpu << 16 | domain << 32 | index << 48` (kind
//! 1 = `Ran`, 2 = `Dispatched`, 3 = `Overhead`) and the value (`ns`, or
//! `at` for a dispatch).
//!
//! One copy, not two: the core writes a log only when the server has taken
//! the last one (`taken` equals the sequence the core keeps of it), so
//! nobody reads what is being written; otherwise it sends the events as an
//! `Events` message.
//! The log's events happened after every message the core had put into the
//! `to_server` ring before it (`after`: the ring's producer index then) and
//! before every later one. The server takes the log when it has consumed
//! exactly `after` slots of that ring (before it handles the next slot, or
//! after a drain), applies its events, then stores `taken`. So the
//! scheduler sees every event in the order it happened whichever way it
//! came. `taken` is the server's word: the core only compares it with the
//! sequence it keeps of its last log, and a server that lies there (or in
//! any word of the log) loses bookkeeping of its own.
//!
//! Everything in the area is the server's input to the core:
//! [`PublicationArea::read_credits`] and [`PublicationArea::read_decision`]
//! validate every field against the machine's [`Shape`] and refuse the
//! whole table on any bad one. Of the log the core reads only `taken`, and
//! only to compare it with the sequence of the last log it wrote, which it
//! keeps itself.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use heapless::Vec;

use crate::messages::scheduler::{
    CreditEntry, Event, Pcpu, Priority, Shape, Vcpu, MAX_PCPUS, MAX_VCPUS, RUN_LIST_LEN,
    SLICE_NS_MAX, SLICE_NS_MIN,
};
use crate::ring::{ARGUMENT_PAGE_OFFSET, PAGE_SIZE, SLOT_COUNT};

/// Offset of the publication area from the ring region's base: after the
/// argument page.
pub const PUBLICATION_OFFSET: usize = ARGUMENT_PAGE_OFFSET + PAGE_SIZE;
/// Pages of the publication area.
pub const PUBLICATION_PAGES: usize = 2;
/// Bytes of the publication area.
pub const PUBLICATION_BYTES: usize = PUBLICATION_PAGES * PAGE_SIZE;
/// Most entries of a credit table: every vCPU the wire can name.
pub const CREDIT_TABLE_LEN: usize = MAX_VCPUS;
/// Words of a copy's header.
const HEADER_WORDS: usize = 3;
/// Words of one entry.
const ENTRY_WORDS: usize = 3;
/// Words of one copy, rounded up to whole cache lines.
pub const COPY_WORDS: usize = (HEADER_WORDS + ENTRY_WORDS * CREDIT_TABLE_LEN).next_multiple_of(8);
/// Word index of copy 0.
const FIRST_COPY: usize = 8;
/// Words of one copy of a decision: slice, length, run list.
pub const DECISION_COPY_WORDS: usize = 2 + RUN_LIST_LEN;
/// Words of one pCPU's decision block: sequence and two copies, rounded up
/// to whole cache lines.
pub const DECISION_WORDS: usize = (1 + 2 * DECISION_COPY_WORDS).next_multiple_of(8);
/// Word index of pCPU 0's decision block.
const FIRST_DECISION: usize = FIRST_COPY + 2 * COPY_WORDS;
/// Reads of a table before a reader gives up on a writer that keeps
/// moving it ([`PublicationError::Torn`]).
const READ_ATTEMPTS: usize = 4;
/// Word index of the bookkeeping log.
pub const FIRST_LOG: usize = FIRST_DECISION + MAX_PCPUS * DECISION_WORDS;
/// Most events of a bookkeeping log. A busy turn has about three per pCPU;
/// it must not exceed `EVENT_BATCH_LEN`, so that a log the core cannot
/// publish always fits into one `Events` message.
pub const LOG_LEN: usize = 12;
/// Words of the log's header: sequence, taken, after, count.
const LOG_HEADER_WORDS: usize = 4;
/// Words of the bookkeeping log, rounded up to whole cache lines.
pub const LOG_WORDS: usize = (LOG_HEADER_WORDS + 2 * LOG_LEN).next_multiple_of(8);
/// Words of the used layout.
pub const PUBLICATION_WORDS: usize = FIRST_LOG + LOG_WORDS;

const _: () = assert!(LOG_LEN <= crate::messages::scheduler::EVENT_BATCH_LEN);

const _: () = assert!(PUBLICATION_WORDS * 8 <= PUBLICATION_BYTES);

/// The shared memory of the publication area. An all-zero area is valid:
/// nothing published yet.
#[repr(C, align(64))]
pub struct PublicationArea {
    words: [AtomicU64; PUBLICATION_WORDS],
}

impl core::fmt::Debug for PublicationArea {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter
            .debug_struct("PublicationArea")
            .field("sequence", &self.sequence())
            .finish_non_exhaustive()
    }
}

impl Default for PublicationArea {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a publication was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationError {
    /// The writer moved on while it was read.
    Torn,
    /// A field is out of range (its name).
    OutOfRange {
        /// The field.
        field: &'static str,
    },
}

impl PublicationError {
    /// A fixed description, for the logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Torn => "torn by a concurrent write",
            Self::OutOfRange { field } => field,
        }
    }
}

/// A pCPU's decision as read: its run queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedDecision {
    /// The block's sequence it was read at.
    pub sequence: u64,
    /// Candidates, best first.
    pub run: Vec<Vcpu, RUN_LIST_LEN>,
    /// How long the pick may run, in ns.
    pub slice_ns: u64,
}

/// A credit table as read: what the server published after its last
/// accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditTable {
    /// When the server last accounted (ns, its clock), if it knew.
    pub accounted_at: Option<u64>,
    /// One entry per vCPU.
    pub entries: Vec<CreditEntry, CREDIT_TABLE_LEN>,
}

/// A bookkeeping log as the server took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenLog {
    /// Its sequence.
    pub sequence: u64,
    /// Its events, in the order they happened.
    pub events: Vec<Event, LOG_LEN>,
    /// Entries that named no bookkeeping event (a kind out of range, or
    /// bits where none belong), left out.
    pub refused: usize,
}

/// Event kinds in the log.
const LOG_RAN: u64 = 1;
const LOG_DISPATCHED: u64 = 2;
const LOG_OVERHEAD: u64 = 3;

/// The two words of a bookkeeping event; `None` for any other event.
fn log_entry(event: &Event) -> Option<(u64, u64)> {
    let vcpu_bits = |vcpu: Option<Vcpu>| {
        vcpu.map_or(0, |vcpu| 1 << 16 | u64::from(vcpu.domain) << 32 | u64::from(vcpu.index) << 48)
    };
    Some(match *event {
        Event::Ran { vcpu, pcpu, ns } => (LOG_RAN | u64::from(pcpu) << 8 | vcpu_bits(Some(vcpu)), ns),
        Event::Dispatched { pcpu, vcpu, at } => (LOG_DISPATCHED | u64::from(pcpu) << 8 | vcpu_bits(vcpu), at),
        Event::Overhead { pcpu, ns } => (LOG_OVERHEAD | u64::from(pcpu) << 8, ns),
        _ => return None,
    })
}

/// The event of an entry's two words; `None` if they name none.
fn log_event(id: u64, value: u64) -> Option<Event> {
    let pcpu = (id >> 8 & 0xff) as u8;
    let has_vcpu = id >> 16 & 0xffff;
    let vcpu = Vcpu::new((id >> 32 & 0xffff) as u16, (id >> 48 & 0xff) as u8);
    if id >> 56 != 0 || has_vcpu > 1 || (has_vcpu == 0 && id >> 32 != 0) {
        return None;
    }
    let vcpu = (has_vcpu == 1).then_some(vcpu);
    match id & 0xff {
        LOG_RAN => vcpu.map(|vcpu| Event::Ran { vcpu, pcpu, ns: value }),
        LOG_DISPATCHED => Some(Event::Dispatched { pcpu, vcpu, at: value }),
        LOG_OVERHEAD if vcpu.is_none() => Some(Event::Overhead { pcpu, ns: value }),
        _ => None,
    }
}

fn priority_code(priority: Priority) -> u64 {
    match priority {
        Priority::Idle => 0,
        Priority::Over => 1,
        Priority::Under => 2,
        Priority::Boost => 3,
    }
}

fn priority_from(code: u64) -> Option<Priority> {
    Some(match code {
        0 => Priority::Idle,
        1 => Priority::Over,
        2 => Priority::Under,
        3 => Priority::Boost,
        _ => return None,
    })
}

fn out_of_range(field: &'static str) -> PublicationError {
    PublicationError::OutOfRange { field }
}

/// The sequence after `sequence`: never 0 ("nothing yet"), and of the other
/// parity, so that consecutive publications use both copies even across
/// the wrap.
fn next_sequence(sequence: u64) -> u64 {
    sequence.checked_add(1).unwrap_or(2)
}

/// Runs `read` (one attempt at a table whose sequence word is `sequence`)
/// until it sees the sequence unchanged after its copy, at most
/// [`READ_ATTEMPTS`] times.
fn read_consistent<T>(
    sequence: &AtomicU64,
    mut read: impl FnMut(u64) -> Result<T, PublicationError>,
) -> Result<T, PublicationError> {
    for _ in 0..READ_ATTEMPTS {
        let before = sequence.load(Ordering::Acquire);
        let result = read(before);
        fence(Ordering::Acquire);
        if sequence.load(Ordering::Relaxed) == before {
            return result;
        }
    }
    Err(PublicationError::Torn)
}

/// One double-buffered table of the area: its sequence word, then (from
/// `first` words after it) its two copies of `copy_words` words each.
/// Every table the area holds follows the protocol above through
/// [`PublicationArea::publish`] and [`PublicationArea::read`].
#[derive(Debug, Clone, Copy)]
struct Table {
    /// Word index of the sequence.
    at: usize,
    /// Words from the sequence to copy 0.
    first: usize,
    /// Words of one copy.
    copy_words: usize,
}

/// The credit table.
const CREDITS: Table = Table {
    at: 0,
    first: FIRST_COPY,
    copy_words: COPY_WORDS,
};

/// pCPU `pcpu`'s decision block, if the layout has one.
fn decisions(pcpu: Pcpu) -> Option<Table> {
    (usize::from(pcpu) < MAX_PCPUS).then(|| Table {
        at: FIRST_DECISION + usize::from(pcpu) * DECISION_WORDS,
        first: 1,
        copy_words: DECISION_COPY_WORDS,
    })
}

impl PublicationArea {
    /// An empty area (all zero), for tests and for statics.
    pub const fn new() -> Self {
        Self {
            words: [const { AtomicU64::new(0) }; PUBLICATION_WORDS],
        }
    }

    /// Zeroes the area: nothing published. The core calls it before it
    /// starts a server instance, while no one else uses the area.
    pub fn reset(&self) {
        for word in &self.words {
            word.store(0, Ordering::Relaxed);
        }
        fence(Ordering::Release);
    }

    /// Completed publications of the credit table so far.
    pub fn sequence(&self) -> u64 {
        self.words[CREDITS.at].load(Ordering::Acquire)
    }

    /// Stores `value` at word `index` (ignored past the layout), as an
    /// untrusted writer may at any moment. For tests: the core and servers
    /// never call it.
    pub fn scribble_word(&self, index: usize, value: u64) {
        if let Some(word) = self.words.get(index) {
            word.store(value, Ordering::Relaxed);
        }
    }

    /// `table`'s copy for `sequence` (the tables are laid out inside the
    /// area at compile time, so the range always exists).
    fn copy_of(&self, table: Table, sequence: u64) -> &[AtomicU64] {
        let start = table.at + table.first + (sequence % 2) as usize * table.copy_words;
        &self.words[start..start + table.copy_words]
    }

    /// Publishes `table`: after a release fence, `fill` writes the copy
    /// that is not current, then the next sequence makes it current.
    fn publish<R>(&self, table: Table, fill: impl FnOnce(&[AtomicU64]) -> R) -> R {
        let sequence = &self.words[table.at];
        let next = next_sequence(sequence.load(Ordering::Relaxed));
        // The last publication's sequence store before this one's writes.
        fence(Ordering::Release);
        let result = fill(self.copy_of(table, next));
        sequence.store(next, Ordering::Release);
        result
    }

    /// Reads `table`'s current copy with `read` (given the sequence it
    /// reads at), retried while the writer moves it: `None` if nothing was
    /// published yet.
    fn read<T>(
        &self,
        table: Table,
        mut read: impl FnMut(u64, &[AtomicU64]) -> Result<T, PublicationError>,
    ) -> Result<Option<T>, PublicationError> {
        read_consistent(&self.words[table.at], |sequence| {
            if sequence == 0 {
                return Ok(None);
            }
            read(sequence, self.copy_of(table, sequence)).map(Some)
        })
    }

    /// Publishes a credit table: fills the copy that is not current with
    /// `accounted_at` and the first [`CREDIT_TABLE_LEN`] of `entries`, then
    /// makes it current. Returns the number of entries written.
    pub fn publish_credits(
        &self,
        accounted_at: Option<u64>,
        entries: impl IntoIterator<Item = CreditEntry>,
    ) -> usize {
        self.publish(CREDITS, |copy| {
            let mut count = 0;
            for entry in entries.into_iter().take(CREDIT_TABLE_LEN) {
                let at = HEADER_WORDS + count * ENTRY_WORDS;
                let id = u64::from(entry.vcpu.domain)
                    | u64::from(entry.vcpu.index) << 16
                    | priority_code(entry.priority) << 24
                    | u64::from(entry.parked) << 32;
                copy[at].store(id, Ordering::Relaxed);
                copy[at + 1].store(entry.credit_ns as u64, Ordering::Relaxed);
                copy[at + 2].store(entry.run_time_ns, Ordering::Relaxed);
                count += 1;
            }
            copy[0].store(u64::from(accounted_at.is_some()), Ordering::Relaxed);
            copy[1].store(accounted_at.unwrap_or(0), Ordering::Relaxed);
            copy[2].store(count as u64, Ordering::Relaxed);
            count
        })
    }

    /// Publishes pCPU `pcpu`'s decision (its first [`RUN_LIST_LEN`] vCPUs
    /// and the slice), the way [`Self::publish_credits`] publishes credits.
    /// Returns `false` (and writes nothing) for a pCPU past
    /// [`MAX_PCPUS`].
    pub fn publish_decision(&self, pcpu: Pcpu, run: &[Vcpu], slice_ns: u64) -> bool {
        let Some(table) = decisions(pcpu) else {
            return false;
        };
        self.publish(table, |copy| {
            let run = &run[..run.len().min(RUN_LIST_LEN)];
            for (word, vcpu) in copy[2..].iter().zip(run) {
                word.store(u64::from(vcpu.domain) | u64::from(vcpu.index) << 16, Ordering::Relaxed);
            }
            copy[0].store(slice_ns, Ordering::Relaxed);
            copy[1].store(run.len() as u64, Ordering::Relaxed);
        });
        true
    }

    /// pCPU `pcpu`'s decision sequence: completed publications (0 for none,
    /// or for a pCPU past [`MAX_PCPUS`]). The core compares it with the
    /// last one it took in, to read only what changed.
    pub fn decision_sequence(&self, pcpu: Pcpu) -> u64 {
        decisions(pcpu).map_or(0, |table| self.words[table.at].load(Ordering::Acquire))
    }

    /// Reads pCPU `pcpu`'s current decision, every field checked against
    /// `shape` (the pCPU online, each vCPU existing and named once, the
    /// slice within the timeslice's range): `None` if nothing was
    /// published for it yet, an error if anything is out of range or the
    /// block changed while it was read.
    pub fn read_decision(&self, pcpu: Pcpu, shape: &Shape) -> Result<Option<PublishedDecision>, PublicationError> {
        shape.check_pcpu(pcpu, "pcpu").map_err(|_| out_of_range("pcpu"))?;
        let table = decisions(pcpu).ok_or(out_of_range("pcpu"))?;
        self.read(table, |sequence, copy| {
            let slice_ns = copy[0].load(Ordering::Relaxed);
            if !(SLICE_NS_MIN..=SLICE_NS_MAX).contains(&slice_ns) {
                return Err(out_of_range("slice_ns"));
            }
            let length = usize::try_from(copy[1].load(Ordering::Relaxed))
                .ok()
                .filter(|&length| length <= RUN_LIST_LEN)
                .ok_or(out_of_range("run length"))?;
            let mut run = Vec::new();
            for word in &copy[2..2 + length] {
                let id = word.load(Ordering::Relaxed);
                if id >> 24 != 0 {
                    return Err(out_of_range("run"));
                }
                let vcpu = Vcpu::new((id & 0xffff) as u16, (id >> 16 & 0xff) as u8);
                shape.check_vcpu(vcpu, "run").map_err(|_| out_of_range("run"))?;
                if run.contains(&vcpu) {
                    return Err(out_of_range("run"));
                }
                // Cannot fail: `length` is at most the capacity.
                let _ = run.push(vcpu);
            }
            Ok(PublishedDecision { sequence, run, slice_ns })
        })
    }

    /// Whether the last bookkeeping log written is still untaken, by the
    /// area's own words (for tests and the fuzz target: the core compares
    /// `taken` with the sequence it keeps, [`Self::publish_log`], and the
    /// server just calls [`Self::take_log`]).
    pub fn log_untaken(&self) -> bool {
        let sequence = self.words[FIRST_LOG].load(Ordering::Acquire);
        sequence != self.words[FIRST_LOG + 1].load(Ordering::Acquire)
    }

    /// The core: writes `events` as the next bookkeeping log, placed after
    /// the first `after` messages of the `to_server` ring, and returns its
    /// sequence, `last` being the sequence of the last log it wrote into
    /// this area (0: none; the core keeps it, and reads only `taken` here).
    /// Writes nothing and returns `None` if the server has not taken that
    /// log yet, or if `events` is empty, holds more than [`LOG_LEN`] events
    /// or any that is not bookkeeping: the caller sends them as a message
    /// instead.
    pub fn publish_log(&self, last: u64, after: u32, events: &[Event]) -> Option<u64> {
        let log = &self.words[FIRST_LOG..FIRST_LOG + LOG_WORDS];
        if events.is_empty() || events.len() > LOG_LEN || log[1].load(Ordering::Acquire) != last {
            return None;
        }
        let mut entries: Vec<(u64, u64), LOG_LEN> = Vec::new();
        for event in events {
            // Cannot fail: at most LOG_LEN events.
            let _ = entries.push(log_entry(event)?);
        }
        let next = next_sequence(last);
        for (words, (id, value)) in log[LOG_HEADER_WORDS..].chunks(2).zip(&entries) {
            words[0].store(*id, Ordering::Relaxed);
            words[1].store(*value, Ordering::Relaxed);
        }
        log[2].store(u64::from(after), Ordering::Relaxed);
        log[3].store(entries.len() as u64, Ordering::Relaxed);
        log[0].store(next, Ordering::Release);
        Some(next)
    }

    /// The server: takes the bookkeeping log if there is an untaken one and
    /// its place has come, `consumed` being the slots of the `to_server`
    /// ring consumed so far. `None` if there is none, or if messages that
    /// came before it are still to be consumed. A log whose place has
    /// passed (which an honest core never writes) is taken with its events
    /// refused.
    pub fn take_log(&self, consumed: u32) -> Option<TakenLog> {
        let log = &self.words[FIRST_LOG..FIRST_LOG + LOG_WORDS];
        let sequence = log[0].load(Ordering::Acquire);
        if sequence == log[1].load(Ordering::Relaxed) {
            return None;
        }
        let after = log[2].load(Ordering::Relaxed);
        let ahead = u32::try_from(after).map_or(u32::MAX, |after| after.wrapping_sub(consumed));
        if ahead != 0 && ahead <= SLOT_COUNT as u32 {
            return None;
        }
        let mut taken = TakenLog {
            sequence,
            events: Vec::new(),
            refused: 0,
        };
        let count = log[3].load(Ordering::Relaxed);
        if ahead != 0 || count > LOG_LEN as u64 {
            taken.refused = count.min(LOG_LEN as u64) as usize;
        } else {
            for words in log[LOG_HEADER_WORDS..].chunks(2).take(count as usize) {
                match log_event(words[0].load(Ordering::Relaxed), words[1].load(Ordering::Relaxed)) {
                    // Cannot fail: at most LOG_LEN entries.
                    Some(event) => {
                        let _ = taken.events.push(event);
                    }
                    None => taken.refused += 1,
                }
            }
        }
        log[1].store(sequence, Ordering::Release);
        Some(taken)
    }

    /// Reads the current credit table, every field checked against `shape`:
    /// `None` if nothing was published yet, an error (and nothing of the
    /// table) if any field is out of range or the table changed while it
    /// was read.
    pub fn read_credits(&self, shape: &Shape) -> Result<Option<CreditTable>, PublicationError> {
        self.read(CREDITS, |_, copy| read_credit_copy(copy, shape))
    }
}

/// One credit table copy, checked against `shape`.
fn read_credit_copy(copy: &[AtomicU64], shape: &Shape) -> Result<CreditTable, PublicationError> {
    let flags = copy[0].load(Ordering::Relaxed);
    let accounted_at = copy[1].load(Ordering::Relaxed);
    let count = copy[2].load(Ordering::Relaxed);
    let mut table = CreditTable {
        accounted_at: None,
        entries: Vec::new(),
    };
    if flags > 1 {
        return Err(out_of_range("flags"));
    }
    if flags == 1 {
        table.accounted_at = Some(accounted_at);
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|&count| count <= CREDIT_TABLE_LEN)
        .ok_or(out_of_range("count"))?;
    for position in 0..count {
        let at = HEADER_WORDS + position * ENTRY_WORDS;
        let id = copy[at].load(Ordering::Relaxed);
        if id >> 33 != 0 {
            return Err(out_of_range("entry"));
        }
        let vcpu = Vcpu::new((id & 0xffff) as u16, (id >> 16 & 0xff) as u8);
        shape
            .check_vcpu(vcpu, "vcpu")
            .map_err(|_| out_of_range("vcpu"))?;
        if table.entries.iter().any(|entry| entry.vcpu == vcpu) {
            return Err(out_of_range("vcpu repeated"));
        }
        let priority = priority_from(id >> 24 & 0xff).ok_or(out_of_range("priority"))?;
        let entry = CreditEntry {
            vcpu,
            credit_ns: copy[at + 1].load(Ordering::Relaxed) as i64,
            run_time_ns: copy[at + 2].load(Ordering::Relaxed),
            priority,
            parked: id >> 32 & 1 == 1,
        };
        // Cannot fail: `count` is at most the capacity.
        let _ = table.entries.push(entry);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape::new(2).with_domain(0, 2).with_domain(3, 1)
    }

    fn entry(domain: u16, index: u8, credit_ns: i64, priority: Priority, parked: bool) -> CreditEntry {
        CreditEntry {
            vcpu: Vcpu::new(domain, index),
            credit_ns,
            run_time_ns: 7_000 + u64::from(index),
            priority,
            parked,
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // docs/server-abi.md gives these word indices.
        assert_eq!((COPY_WORDS, FIRST_DECISION, DECISION_WORDS), (392, 792, 24));
        assert_eq!((FIRST_LOG, LOG_WORDS, PUBLICATION_WORDS), (984, 32, 1016));
    }

    #[test]
    fn an_empty_area_has_published_nothing() {
        let area = PublicationArea::new();
        assert_eq!(area.read_credits(&shape()), Ok(None));
    }

    #[test]
    fn the_last_publication_is_read_back_whole() {
        let area = PublicationArea::new();
        let first = [entry(0, 0, 5, Priority::Under, false)];
        area.publish_credits(None, first);
        let second = [
            entry(0, 0, -30_000_000, Priority::Over, true),
            entry(0, 1, 12, Priority::Boost, false),
            entry(3, 0, 0, Priority::Idle, false),
        ];
        assert_eq!(area.publish_credits(Some(90_000_000), second), 3);
        let table = area.read_credits(&shape()).expect("valid").expect("published");
        assert_eq!(table.accounted_at, Some(90_000_000));
        assert_eq!(table.entries.as_slice(), &second);
        assert_eq!(area.sequence(), 2);
    }

    #[test]
    fn a_writer_stopped_halfway_leaves_the_last_complete_copy() {
        let area = PublicationArea::new();
        let complete = [entry(0, 0, 5, Priority::Under, false)];
        area.publish_credits(Some(30), complete);
        // The next publication writes copy 0 (sequence 1 → 2) and dies
        // before it bumps the sequence.
        let next = FIRST_COPY;
        area.scribble_word(next + 2, 9_999);
        area.scribble_word(next + HEADER_WORDS, u64::MAX);
        let table = area.read_credits(&shape()).expect("valid").expect("published");
        assert_eq!(table.entries.as_slice(), &complete);
        assert_eq!(table.accounted_at, Some(30));
    }

    #[test]
    fn every_bad_field_refuses_the_whole_table() {
        let current = FIRST_COPY + COPY_WORDS; // sequence 1 → copy 1
        let cases: [(usize, u64, &str); 6] = [
            (0, 2, "flags"),
            (2, CREDIT_TABLE_LEN as u64 + 1, "count"),
            (HEADER_WORDS, 5 | 1 << 16, "vcpu"),
            (HEADER_WORDS, 9 << 24, "priority"),
            (HEADER_WORDS, 1 << 40, "entry"),
            // Entry 1 names vCPU 0.1, as entry 0 does.
            (HEADER_WORDS + ENTRY_WORDS, 1 << 16 | 2 << 24, "vcpu repeated"),
        ];
        for (word, value, field) in cases {
            let area = PublicationArea::new();
            area.publish_credits(
                None,
                [entry(0, 1, 1, Priority::Under, false), entry(0, 0, 1, Priority::Under, false)],
            );
            area.scribble_word(current + word, value);
            assert_eq!(
                area.read_credits(&shape()),
                Err(PublicationError::OutOfRange { field }),
                "word {word}"
            );
        }
    }

    #[test]
    fn a_table_longer_than_the_capacity_is_cut() {
        let area = PublicationArea::new();
        let many = (0..CREDIT_TABLE_LEN + 5).map(|i| entry(0, (i % 2) as u8, 0, Priority::Under, false));
        assert_eq!(area.publish_credits(None, many), CREDIT_TABLE_LEN);
    }

    #[test]
    fn each_pcpu_has_its_own_decision() {
        let area = PublicationArea::new();
        let shape = shape();
        assert_eq!(area.read_decision(0, &shape), Ok(None));
        assert!(area.publish_decision(1, &[Vcpu::new(0, 1), Vcpu::new(3, 0)], 30_000_000));
        assert!(area.publish_decision(1, &[Vcpu::new(0, 0)], 1_000_000));
        assert!(area.publish_decision(0, &[], 30_000_000));
        assert_eq!(area.read_decision(0, &shape).expect("valid").expect("published").run.len(), 0);
        let decision = area.read_decision(1, &shape).expect("valid").expect("published");
        assert_eq!((decision.sequence, decision.run.as_slice(), decision.slice_ns), (2, &[Vcpu::new(0, 0)][..], 1_000_000));
        assert_eq!((area.decision_sequence(0), area.decision_sequence(1), area.decision_sequence(2)), (1, 2, 0));
        // pCPU 2 is not online in this shape; pCPU 8 does not exist.
        assert_eq!(area.read_decision(2, &shape), Err(PublicationError::OutOfRange { field: "pcpu" }));
        assert!(!area.publish_decision(MAX_PCPUS as u8, &[], 30_000_000));
        assert_eq!(area.decision_sequence(MAX_PCPUS as u8), 0);
        // A run list longer than the capacity is cut.
        let long = [Vcpu::new(0, 0); RUN_LIST_LEN + 3];
        assert!(area.publish_decision(0, &long[..RUN_LIST_LEN + 3], 30_000_000));
        assert_eq!(area.read_decision(0, &shape), Err(PublicationError::OutOfRange { field: "run" }), "repeated");
    }

    #[test]
    fn every_bad_decision_field_refuses_the_decision() {
        let block = FIRST_DECISION + DECISION_WORDS; // pCPU 1
        let current = block + 1 + DECISION_COPY_WORDS; // sequence 1 → copy 1
        let cases: [(usize, u64, &str); 6] = [
            (0, SLICE_NS_MIN - 1, "slice_ns"),
            (0, SLICE_NS_MAX + 1, "slice_ns"),
            (1, RUN_LIST_LEN as u64 + 1, "run length"),
            (2, 5, "run"),
            (2, 1 << 30, "run"),
            (3, 0, "run"),
        ];
        for (word, value, field) in cases {
            let area = PublicationArea::new();
            area.publish_decision(1, &[Vcpu::new(0, 0), Vcpu::new(0, 1)], 30_000_000);
            area.scribble_word(current + word, value);
            assert_eq!(
                area.read_decision(1, &shape()),
                Err(PublicationError::OutOfRange { field }),
                "word {word} = {value}"
            );
        }
    }

    #[test]
    fn a_decision_writer_stopped_halfway_leaves_the_last_decision() {
        let area = PublicationArea::new();
        area.publish_decision(0, &[Vcpu::new(3, 0)], 30_000_000);
        // The next publication writes copy 0 and dies before the sequence.
        area.scribble_word(FIRST_DECISION + 1, 0);
        area.scribble_word(FIRST_DECISION + 2, 99);
        let decision = area.read_decision(0, &shape()).expect("valid").expect("published");
        assert_eq!(decision.run.as_slice(), &[Vcpu::new(3, 0)]);
    }

    #[test]
    fn publications_alternate_copies_across_the_sequence_wrap() {
        assert_eq!(next_sequence(0), 1);
        assert_eq!(next_sequence(1), 2);
        assert_eq!(next_sequence(u64::MAX), 2);
        for sequence in [0, 1, 2, u64::MAX - 1, u64::MAX] {
            assert_ne!(next_sequence(sequence) % 2, sequence % 2, "{sequence}");
        }
        // A table published at u64::MAX is replaced by the next one whole.
        let area = PublicationArea::new();
        area.scribble_word(0, u64::MAX - 1);
        area.publish_credits(Some(1), [entry(0, 0, 1, Priority::Under, false)]);
        area.publish_credits(Some(2), [entry(0, 1, 2, Priority::Over, true)]);
        assert_eq!(area.sequence(), 2);
        let table = area.read_credits(&shape()).expect("valid").expect("published");
        assert_eq!((table.accounted_at, table.entries[0].vcpu), (Some(2), Vcpu::new(0, 1)));
    }

    #[test]
    fn a_table_that_keeps_moving_is_refused_as_torn() {
        let sequence = AtomicU64::new(4);
        let mut reads = 0;
        let result: Result<(), _> = read_consistent(&sequence, |_| {
            reads += 1;
            sequence.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        assert_eq!((result, reads), (Err(PublicationError::Torn), READ_ATTEMPTS));
        let mut moved = false;
        let result = read_consistent(&sequence, |seen| {
            if !moved {
                moved = true;
                sequence.fetch_add(1, Ordering::Relaxed);
            }
            Ok(seen)
        });
        assert_eq!(result, Ok(9), "the second read sees a steady sequence");
    }

    #[test]
    fn reset_forgets_everything() {
        let area = PublicationArea::new();
        area.publish_credits(Some(1), [entry(0, 0, 5, Priority::Under, false)]);
        area.publish_decision(0, &[Vcpu::new(0, 0)], 30_000_000);
        area.publish_log(0, 0, &bookkeeping());
        area.reset();
        assert_eq!(area.read_credits(&shape()), Ok(None));
        assert_eq!(area.read_decision(0, &shape()), Ok(None));
        assert!(!area.log_untaken());
        assert_eq!(area.take_log(0), None);
    }

    fn bookkeeping() -> [Event; 4] {
        [
            Event::Ran { vcpu: Vcpu::new(3, 0), pcpu: 1, ns: 29_980_000 },
            Event::Dispatched { pcpu: 1, vcpu: Some(Vcpu::new(0, 1)), at: 1 << 40 },
            Event::Dispatched { pcpu: 0, vcpu: None, at: u64::MAX },
            Event::Overhead { pcpu: 7, ns: 0 },
        ]
    }

    #[test]
    fn a_log_is_taken_whole_at_its_place_in_the_ring() {
        let area = PublicationArea::new();
        assert_eq!(area.publish_log(0, 5, &bookkeeping()), Some(1));
        assert!(area.log_untaken());
        // Two messages sent before the log are still to be consumed.
        assert_eq!(area.take_log(3), None);
        assert_eq!(area.take_log(4), None);
        let taken = area.take_log(5).expect("its place has come");
        assert_eq!((taken.sequence, taken.events.as_slice(), taken.refused), (1, &bookkeeping()[..], 0));
        assert!(!area.log_untaken());
        assert_eq!(area.take_log(5), None, "taken once");
        // Across the wrap of the ring's index.
        assert_eq!(area.publish_log(1, 1, &bookkeeping()[..1]), Some(2));
        assert_eq!(area.take_log(u32::MAX), None);
        assert_eq!(area.take_log(1).map(|log| log.events.len()), Some(1));
    }

    #[test]
    fn the_core_writes_no_log_over_an_untaken_one_nor_anything_but_bookkeeping() {
        let area = PublicationArea::new();
        assert_eq!(area.publish_log(0, 0, &bookkeeping()), Some(1));
        assert_eq!(area.publish_log(1, 0, &bookkeeping()[..1]), None, "the last is not taken");
        assert_eq!(area.take_log(0).map(|log| log.events.len()), Some(4));
        assert_eq!(area.publish_log(1, 0, &[]), None, "nothing to log");
        let wake = Event::Woke { vcpu: Vcpu::new(0, 0), at: 5 };
        assert_eq!(area.publish_log(1, 0, &[bookkeeping()[0], wake]), None);
        let many = [bookkeeping()[0]; LOG_LEN + 1];
        assert_eq!(area.publish_log(1, 0, &many), None);
        assert_eq!(area.publish_log(1, 0, &many[..LOG_LEN]), Some(2));
        assert_eq!(area.take_log(0).map(|log| log.events.len()), Some(LOG_LEN));
        // The core goes by the sequence it keeps, not the area's: a server
        // that rewrites `sequence` does not make it write over a log.
        area.scribble_word(FIRST_LOG, 7);
        assert_eq!(area.publish_log(2, 0, &bookkeeping()), Some(3));
        area.scribble_word(FIRST_LOG + 1, 3);
        assert_eq!(area.publish_log(2, 0, &bookkeeping()), None, "taken is not 2");
    }

    #[test]
    fn a_bad_log_entry_is_refused_alone() {
        let entries = FIRST_LOG + LOG_HEADER_WORDS;
        let cases: [(usize, u64); 5] = [
            (0, 9),                    // no such kind
            (0, LOG_RAN),              // a run time without a vCPU
            (0, LOG_OVERHEAD | 1 << 16), // the core's time with one
            (0, LOG_DISPATCHED | 2 << 16), // a has_vcpu that is neither 0 nor 1
            (0, LOG_DISPATCHED | 1 << 60), // bits where none belong
        ];
        for (word, value) in cases {
            let area = PublicationArea::new();
            area.publish_log(0, 0, &bookkeeping());
            area.scribble_word(entries + 2 + word, value);
            let taken = area.take_log(0).expect("taken");
            assert_eq!(taken.refused, 1, "{value:#x}");
            assert_eq!(taken.events.as_slice(), &[bookkeeping()[0], bookkeeping()[2], bookkeeping()[3]], "{value:#x}");
        }
    }

    #[test]
    fn a_log_whose_place_has_passed_or_that_lies_is_taken_and_refused() {
        for (after, count) in [(2, 4), (u64::from(u32::MAX) + 1, 4), (0, LOG_LEN as u64 + 1)] {
            let area = PublicationArea::new();
            area.publish_log(0, 0, &bookkeeping());
            area.scribble_word(FIRST_LOG + 2, after);
            area.scribble_word(FIRST_LOG + 3, count);
            let taken = area.take_log(if after == 2 { 3 } else { 0 }).expect("taken, not waited for");
            assert!(taken.events.is_empty(), "{after} {count}");
            assert_eq!(taken.refused, LOG_LEN.min(count as usize));
            assert!(!area.log_untaken());
        }
    }
}

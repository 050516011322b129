//! The publication area: fixed-layout tables a server writes into memory it
//! shares with the core, for state the core reads only now and then.
//!
//! The rings carry what the core must act on (decisions, tickles, control
//! answers). State the core only *keeps* — today the scheduler server's
//! credits, which the core hands back to a restarted instance and shows in
//! `hvctl stats` — does not need a message per accounting: the server
//! overwrites a table after every accounting and the core reads it when it
//! needs it (at a restart, a rebuild, a `stats` request). Under TCG every
//! message costs the decode and validate code it runs on both sides, at
//! every accounting, for data the core looks at a few times a run
//! (docs/benchmarks.md).
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
//! | 8.. | copy 0, [`COPY_WORDS`] words |
//! | 8 + [`COPY_WORDS`].. | copy 1 |
//!
//! A copy: word 0 bit 0 = `accounted_at` is known, word 1 = `accounted_at`
//! (ns), word 2 = the number of entries (at most [`CREDIT_TABLE_LEN`]), then
//! three words per entry: `domain | index << 16 | priority << 24 | parked
//! << 32` (priority 0 = IDLE, 1 = OVER, 2 = UNDER, 3 = BOOST; parked 0 or
//! 1; the other bits zero), `credit_ns` (two's complement) and
//! `run_time_ns`.
//!
//! # Protocol
//!
//! The writer fills the copy that is *not* current, then stores
//! `sequence + 1` (release). A writer stopped halfway (killed, faulted)
//! leaves the last complete copy current, so a restart never loses the
//! last publication to a torn one. The reader loads `sequence` (acquire),
//! copies the current copy out, and loads `sequence` again: if it moved,
//! the copy may be torn and the read is refused ([`PublicationError::Torn`];
//! the core runs a server only when it is not reading, so it does not
//! happen there, but the check costs two loads).
//!
//! Everything in the area is the server's input to the core: [`read_credits`]
//! validates every field against the machine's [`Shape`] and refuses the
//! whole table on any bad one.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use heapless::Vec;

use crate::messages::scheduler::{CreditEntry, Priority, Shape, Vcpu, MAX_VCPUS};
use crate::ring::{ARGUMENT_PAGE_OFFSET, PAGE_SIZE};

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
/// Words of the used layout.
pub const PUBLICATION_WORDS: usize = FIRST_COPY + 2 * COPY_WORDS;

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

/// A credit table as read: what the server published after its last
/// accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditTable {
    /// When the server last accounted (ns, its clock), if it knew.
    pub accounted_at: Option<u64>,
    /// One entry per vCPU.
    pub entries: Vec<CreditEntry, CREDIT_TABLE_LEN>,
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

    /// Completed publications so far.
    pub fn sequence(&self) -> u64 {
        self.words[0].load(Ordering::Acquire)
    }

    /// Stores `value` at word `index` (ignored past the layout), as an
    /// untrusted writer may at any moment. For tests: the core and servers
    /// never call it.
    pub fn scribble_word(&self, index: usize, value: u64) {
        if let Some(word) = self.words.get(index) {
            word.store(value, Ordering::Relaxed);
        }
    }

    fn copy(&self, which: u64) -> &[AtomicU64] {
        let start = FIRST_COPY + (which % 2) as usize * COPY_WORDS;
        &self.words[start..start + COPY_WORDS]
    }

    /// Publishes a credit table: fills the copy that is not current with
    /// `accounted_at` and the first [`CREDIT_TABLE_LEN`] of `entries`, then
    /// makes it current. Returns the number of entries written.
    pub fn publish_credits(
        &self,
        accounted_at: Option<u64>,
        entries: impl IntoIterator<Item = CreditEntry>,
    ) -> usize {
        let sequence = self.words[0].load(Ordering::Relaxed);
        // Sequence 0 means "nothing yet": a wrap skips it.
        let next = sequence.wrapping_add(1).max(1);
        let copy = self.copy(next);
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
        self.words[0].store(next, Ordering::Release);
        count
    }

    /// Reads the current credit table, every field checked against `shape`:
    /// `None` if nothing was published yet, an error (and nothing of the
    /// table) if any field is out of range or the table changed while it
    /// was read.
    pub fn read_credits(&self, shape: &Shape) -> Result<Option<CreditTable>, PublicationError> {
        let sequence = self.sequence();
        if sequence == 0 {
            return Ok(None);
        }
        let copy = self.copy(sequence);
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
        fence(Ordering::Acquire);
        if self.words[0].load(Ordering::Relaxed) != sequence {
            return Err(PublicationError::Torn);
        }
        Ok(Some(table))
    }
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
    fn reset_forgets_everything() {
        let area = PublicationArea::new();
        area.publish_credits(Some(1), [entry(0, 0, 5, Priority::Under, false)]);
        area.reset();
        assert_eq!(area.read_credits(&shape()), Ok(None));
    }
}

//! The SPSC message ring in shared pages, between the core and one server.
//!
//! Each server has two rings (`docs/server-abi.md`): `to_server`, which the
//! core produces and the server consumes, and `to_core`, the other way. The
//! core reaches a ring's pages by physical address (identity-mapped), the
//! server at [`crate::server::RING_REGION_BASE`]; both see one
//! [`RingMemory`].
//!
//! # Layout
//!
//! [`RingMemory`] is `#[repr(C)]`, 64-byte aligned, made only of atomics, and
//! an all-zero page is a valid empty ring:
//!
//! ```text
//! offset   0  producer index (u32), then 60 bytes of padding   written by the producer
//! offset  64  consumer index (u32), then 60 bytes of padding   written by the consumer
//! offset 128  slot 0 .. slot SLOT_COUNT-1, SLOT_BYTES each:
//!               word 0      message length in bytes (u64, at most SLOT_PAYLOAD)
//!               words 1..   message bytes, little-endian within each word
//! ```
//!
//! With 64 slots of 256 bytes that is 16 512 bytes, inside [`RING_BYTES`]
//! (five pages). Indices are free-running `u32`s: message `i` lives in slot
//! `i % SLOT_COUNT`, the ring holds `producer - consumer` (wrapping) messages,
//! and since `SLOT_COUNT` divides 2³² the indices wrap without a seam.
//!
//! # Trust
//!
//! The other side may write anything into the shared pages at any time. So:
//!
//! * each side keeps its own index in private memory ([`Producer`] and
//!   [`Consumer`] hold it) and only *publishes* it to the shared line; it
//!   never reads its own shared index back after attaching;
//! * the peer's index is an allegation: if it claims more than `SLOT_COUNT`
//!   messages in flight (or fewer than none) the call returns
//!   [`RingError::CorruptIndex`] and reads nothing;
//! * the consumer copies a slot into a private buffer word by word *before*
//!   anything looks at it, and checks the copied length, so no later write by
//!   the producer can change what is validated and decoded;
//! * every access is an atomic load or store, so a peer scribbling concurrently
//!   is never undefined behaviour here, only garbage that the decoder rejects.
//!
//! # Ordering
//!
//! The producer stores a slot's words (`Relaxed`), then publishes the producer
//! index with `Release`; the consumer loads it with `Acquire`, so every slot
//! write of an honest producer happens-before the consumer's copy. The consumer
//! copies the slot (`Relaxed` loads), then publishes the consumer index with
//! `Release`; the producer loads it with `Acquire` before it reuses a slot, so
//! the consumer's copy happens-before the overwrite and never sees a half-new
//! message. On x86-64 all of these are plain moves. `tests/loom_ring.rs`
//! checks the argument under loom, and `tests/ring_stress.rs` under Miri.
//!
//! # Notification and batches
//!
//! The ring itself never blocks. A server publishes and then makes the
//! `notify` syscall; the core wakes a server blocked in `wait` when it
//! publishes to `to_server`. Each wake, the consumer [`Consumer::drain`]s at
//! most a batch (typically `SLOT_COUNT`), so a producer that keeps refilling
//! the ring cannot hold the consumer forever.
//!
//! Not here: what the bytes mean (see [`crate::messages`]), the syscalls
//! (see [`crate::server`]), and mapping the pages (the core's arch layer).

use core::fmt;
use core::ops::ControlFlow;

#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Page size the ring is laid out in.
pub const PAGE_SIZE: usize = 4096;
/// Number of slots; a power of two. Loom runs use two, so that a few messages
/// already wrap the ring and reuse slots.
pub const SLOT_COUNT: usize = if cfg!(loom) { 2 } else { 64 };
/// Size of one slot: the length word and the payload words.
pub const SLOT_BYTES: usize = 256;
/// Size of one slot in 64-bit words.
pub const SLOT_WORDS: usize = SLOT_BYTES / 8;
/// Largest message one slot carries.
pub const SLOT_PAYLOAD: usize = SLOT_BYTES - 8;
/// Byte offset of the producer index in [`RingMemory`].
pub const PRODUCER_INDEX_OFFSET: usize = 0;
/// Byte offset of the consumer index in [`RingMemory`].
pub const CONSUMER_INDEX_OFFSET: usize = 64;
/// Byte offset of slot 0 in [`RingMemory`].
pub const SLOTS_OFFSET: usize = 128;
/// Bytes of the ring's used layout.
pub const RING_LAYOUT_BYTES: usize = SLOTS_OFFSET + SLOT_COUNT * SLOT_BYTES;
/// Bytes reserved for one ring in the ring region: its layout rounded up to
/// whole pages (five pages, 20 KiB).
pub const RING_BYTES: usize = RING_LAYOUT_BYTES.div_ceil(PAGE_SIZE) * PAGE_SIZE;
/// Offset of the `to_server` ring from the ring region's base.
pub const TO_SERVER_RING_OFFSET: usize = 0;
/// Offset of the `to_core` ring from the ring region's base.
pub const TO_CORE_RING_OFFSET: usize = RING_BYTES;
/// Offset of the argument page from the ring region's base.
pub const ARGUMENT_PAGE_OFFSET: usize = 2 * RING_BYTES;

const _: () = assert!(SLOT_COUNT.is_power_of_two() && SLOT_COUNT <= 1 << 31);
const _: () = assert!(SLOT_BYTES.is_multiple_of(8) && SLOT_WORDS >= 2);
const _: () = assert!(RING_BYTES.is_multiple_of(PAGE_SIZE));

// The layout above is the ABI; pin it. (Loom's atomics are bigger than the
// hardware's, so these hold only for real builds.)
#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::size_of::<RingMemory>() == RING_LAYOUT_BYTES);
    assert!(core::mem::size_of::<RingMemory>() <= RING_BYTES);
    assert!(core::mem::align_of::<RingMemory>() == 64);
    assert!(core::mem::offset_of!(RingMemory, producer) == PRODUCER_INDEX_OFFSET);
    assert!(core::mem::offset_of!(RingMemory, consumer) == CONSUMER_INDEX_OFFSET);
    assert!(core::mem::offset_of!(RingMemory, slots) == SLOTS_OFFSET);
    assert!(RING_BYTES == 5 * PAGE_SIZE);
};

/// One index on its own cache line, so the two sides' stores do not contend.
/// The padding is atomics too: the peer may write it, and every byte of the
/// ring must be one that safe code may see change.
#[repr(C, align(64))]
struct IndexLine {
    index: AtomicU32,
    padding: [AtomicU32; 15],
}

/// One slot: word 0 is the length, the rest the payload.
type Slot = [AtomicU64; SLOT_WORDS];

/// One atomic of the layout, for [`RingMemory::scribble`].
enum Cell<'ring> {
    Narrow(&'ring AtomicU32),
    Wide(&'ring AtomicU64),
}

impl Cell<'_> {
    fn width(&self) -> usize {
        match self {
            Self::Narrow(_) => 4,
            Self::Wide(_) => 8,
        }
    }

    /// Replaces the cell's bytes from `at` on with `bytes`.
    fn merge(&self, at: usize, bytes: &[u8]) {
        match self {
            Self::Narrow(cell) => {
                let mut value = [0; 4];
                if bytes.len() < 4 {
                    value = cell.load(Ordering::Relaxed).to_le_bytes();
                }
                value[at..at + bytes.len()].copy_from_slice(bytes);
                cell.store(u32::from_le_bytes(value), Ordering::Relaxed);
            }
            Self::Wide(cell) => {
                let mut value = [0; 8];
                if bytes.len() < 8 {
                    value = cell.load(Ordering::Relaxed).to_le_bytes();
                }
                value[at..at + bytes.len()].copy_from_slice(bytes);
                cell.store(u64::from_le_bytes(value), Ordering::Relaxed);
            }
        }
    }
}

/// The shared memory of one ring. See the module documentation for the
/// layout; an all-zero `RING_BYTES` region is a valid empty ring.
#[repr(C, align(64))]
pub struct RingMemory {
    producer: IndexLine,
    consumer: IndexLine,
    slots: [Slot; SLOT_COUNT],
}

impl IndexLine {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            index: AtomicU32::new(0),
            padding: [const { AtomicU32::new(0) }; 15],
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Self {
            index: AtomicU32::new(0),
            padding: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl RingMemory {
    /// An empty ring (all zero), for tests and for statics.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            producer: IndexLine::new(),
            consumer: IndexLine::new(),
            slots: [const { [const { AtomicU64::new(0) }; SLOT_WORDS] }; SLOT_COUNT],
        }
    }

    /// An empty ring (all zero), for tests and for statics.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            producer: IndexLine::new(),
            consumer: IndexLine::new(),
            slots: core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// Empties the ring and zeroes every slot, so nothing of a previous
    /// server instance is left in it. The core calls this before it starts a
    /// server (or starts it again), while no one else uses the ring.
    pub fn reset(&self) {
        self.reset_at(0);
    }

    /// Like [`reset`](Self::reset), with both indices at `index` instead of 0.
    /// Tests start high to cross the `u32` wrap.
    pub fn reset_at(&self, index: u32) {
        for slot in &self.slots {
            for word in slot {
                word.store(0, Ordering::Relaxed);
            }
        }
        for line in [&self.producer, &self.consumer] {
            for padding in &line.padding {
                padding.store(0, Ordering::Relaxed);
            }
            line.index.store(index, Ordering::Release);
        }
    }

    /// Overwrites bytes of the ring at byte `offset` (bytes past the layout
    /// are dropped), as an untrusted peer may at any moment. Whole aligned
    /// words are stored at once, partial ones loaded, merged and stored. For
    /// tests and fuzzing: the core and servers never call it.
    pub fn scribble(&self, offset: usize, bytes: &[u8]) {
        let end = offset.saturating_add(bytes.len()).min(RING_LAYOUT_BYTES);
        let mut position = offset;
        while position < end {
            let (cell, start) = self.cell(position);
            let cell_end = (start + cell.width()).min(end);
            cell.merge(
                position - start,
                &bytes[position - offset..cell_end - offset],
            );
            position = cell_end;
        }
    }

    /// The atomic holding byte `offset` of the layout, and its first byte.
    fn cell(&self, offset: usize) -> (Cell<'_>, usize) {
        if offset < SLOTS_OFFSET {
            let line = if offset < CONSUMER_INDEX_OFFSET {
                &self.producer
            } else {
                &self.consumer
            };
            let start = offset & !3;
            let word = (start % 64) / 4;
            let cell = if word == 0 {
                &line.index
            } else {
                &line.padding[word - 1]
            };
            (Cell::Narrow(cell), start)
        } else {
            let start = offset & !7;
            let relative = start - SLOTS_OFFSET;
            (
                Cell::Wide(&self.slots[relative / SLOT_BYTES][(relative % SLOT_BYTES) / 8]),
                start,
            )
        }
    }

    fn slot(&self, index: u32) -> &Slot {
        // `SLOT_COUNT` is a power of two no larger than 2³¹, so this is in range.
        &self.slots[index as usize % SLOT_COUNT]
    }
}

impl Default for RingMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RingMemory {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RingMemory")
            .field("producer", &self.producer.index.load(Ordering::Relaxed))
            .field("consumer", &self.consumer.index.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why a ring operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// Producer: every slot holds an unconsumed message; try again later.
    Full,
    /// Producer: the message is longer than [`SLOT_PAYLOAD`].
    TooBig {
        /// Its length.
        length: usize,
    },
    /// The peer's index claims more than [`SLOT_COUNT`] messages in flight, or
    /// fewer than none. Nothing was read or written; the ring stays unusable
    /// until it is reset, so the core treats this as a fault of the server.
    CorruptIndex {
        /// The producer index (ours if we produce, the peer's if we consume).
        producer: u32,
        /// The consumer index (ours if we consume, the peer's if we produce).
        consumer: u32,
    },
    /// Consumer: the slot's length word exceeds [`SLOT_PAYLOAD`]. The slot
    /// was consumed (skipped); the next message can be read.
    BadLength {
        /// The length word as found.
        length: u64,
    },
}

impl RingError {
    /// A one-line reason for the console.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Full => "ring full",
            Self::TooBig { .. } => "message longer than a ring slot",
            Self::CorruptIndex { .. } => "ring index out of range (peer corrupted the ring)",
            Self::BadLength { .. } => "ring slot length longer than a slot",
        }
    }
}

/// The producing end of a ring. It owns the producer index; only one may
/// exist per ring.
#[derive(Debug)]
pub struct Producer<'ring> {
    ring: &'ring RingMemory,
    next: u32,
}

impl<'ring> Producer<'ring> {
    /// Takes the producing end, starting at the producer index now in the
    /// ring. The core attaches right after [`RingMemory::reset`], before the
    /// server runs, so the index it reads is the one it wrote.
    pub fn attach(ring: &'ring RingMemory) -> Self {
        Self {
            ring,
            next: ring.producer.index.load(Ordering::Relaxed),
        }
    }

    /// The producer index: messages put into the ring since it was reset
    /// (wrapping).
    pub fn position(&self) -> u32 {
        self.next
    }

    /// Number of free slots, from the consumer index the peer published.
    pub fn free_slots(&self) -> Result<usize, RingError> {
        let consumer = self.ring.consumer.index.load(Ordering::Acquire);
        self.in_flight(consumer)
            .map(|in_flight| SLOT_COUNT - in_flight)
    }

    fn in_flight(&self, consumer: u32) -> Result<usize, RingError> {
        let in_flight = self.next.wrapping_sub(consumer) as usize;
        if in_flight > SLOT_COUNT {
            return Err(RingError::CorruptIndex {
                producer: self.next,
                consumer,
            });
        }
        Ok(in_flight)
    }

    /// Copies `message` into the next slot and publishes it.
    pub fn try_send(&mut self, message: &[u8]) -> Result<(), RingError> {
        if message.len() > SLOT_PAYLOAD {
            return Err(RingError::TooBig {
                length: message.len(),
            });
        }
        // Acquire: the consumer's copy of the slot we may reuse happens-before
        // our stores into it.
        let consumer = self.ring.consumer.index.load(Ordering::Acquire);
        if self.in_flight(consumer)? == SLOT_COUNT {
            return Err(RingError::Full);
        }
        let slot = self.ring.slot(self.next);
        for (chunk, word) in message.chunks(8).zip(&slot[1..]) {
            word.store(word_of(chunk), Ordering::Relaxed);
        }
        slot[0].store(message.len() as u64, Ordering::Relaxed);
        self.next = self.next.wrapping_add(1);
        // Release: the slot stores above happen-before the consumer's copy.
        self.ring.producer.index.store(self.next, Ordering::Release);
        Ok(())
    }
}

/// The slot word holding `chunk` (at most 8 bytes, little-endian, zero
/// padded). A whole 8-byte chunk converts directly, without a copy of
/// unknown length (a `memcpy` call per word): every message but its last
/// few bytes goes this way.
fn word_of(chunk: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(chunk) {
        Ok(bytes) => u64::from_le_bytes(bytes),
        Err(_) => {
            let mut bytes = [0; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(bytes)
        }
    }
}

/// The consuming end of a ring. It owns the consumer index; only one may
/// exist per ring.
#[derive(Debug)]
pub struct Consumer<'ring> {
    ring: &'ring RingMemory,
    next: u32,
}

impl<'ring> Consumer<'ring> {
    /// Takes the consuming end, starting at the consumer index now in the
    /// ring (see [`Producer::attach`] for when that value is trustworthy).
    pub fn attach(ring: &'ring RingMemory) -> Self {
        Self {
            ring,
            next: ring.consumer.index.load(Ordering::Relaxed),
        }
    }

    /// The consumer index: slots consumed since the ring was reset
    /// (wrapping).
    pub fn position(&self) -> u32 {
        self.next
    }

    /// Number of messages waiting, from the producer index the peer published.
    pub fn pending(&self) -> Result<usize, RingError> {
        let producer = self.ring.producer.index.load(Ordering::Acquire);
        self.available(producer)
    }

    fn available(&self, producer: u32) -> Result<usize, RingError> {
        let available = producer.wrapping_sub(self.next) as usize;
        if available > SLOT_COUNT {
            return Err(RingError::CorruptIndex {
                producer,
                consumer: self.next,
            });
        }
        Ok(available)
    }

    /// Copies the next message into `buffer` and consumes its slot. Returns
    /// its length, `None` if the ring is empty, or the error (a
    /// [`RingError::BadLength`] slot is consumed too).
    pub fn try_recv(
        &mut self,
        buffer: &mut [u8; SLOT_PAYLOAD],
    ) -> Result<Option<usize>, RingError> {
        // Acquire: an honest producer's slot stores happen-before our copy.
        let producer = self.ring.producer.index.load(Ordering::Acquire);
        if self.available(producer)? == 0 {
            return Ok(None);
        }
        let slot = self.ring.slot(self.next);
        // The length is read once, into a local, and only the local is used.
        let length = slot[0].load(Ordering::Relaxed);
        let result = match usize::try_from(length) {
            Ok(length) if length <= SLOT_PAYLOAD => {
                for (chunk, word) in buffer[..length].chunks_mut(8).zip(&slot[1..]) {
                    let bytes = word.load(Ordering::Relaxed).to_le_bytes();
                    match <&mut [u8; 8]>::try_from(&mut *chunk) {
                        Ok(whole) => *whole = bytes,
                        Err(_) => chunk.copy_from_slice(&bytes[..chunk.len()]),
                    }
                }
                Ok(Some(length))
            }
            _ => Err(RingError::BadLength { length }),
        };
        self.next = self.next.wrapping_add(1);
        // Release: our copy happens-before the producer's reuse of the slot.
        self.ring.consumer.index.store(self.next, Ordering::Release);
        result
    }

    /// Receives up to `limit` messages, handing each to `handle` (a
    /// [`RingError::BadLength`] slot as `Err`, already skipped). Stops early
    /// when the ring is empty or `handle` breaks. Returns how many slots were
    /// consumed; `Err` only for [`RingError::CorruptIndex`], after the slots
    /// before it were handled.
    pub fn drain<F>(&mut self, limit: usize, mut handle: F) -> Result<usize, RingError>
    where
        F: FnMut(Result<&[u8], RingError>) -> ControlFlow<()>,
    {
        let mut buffer = [0; SLOT_PAYLOAD];
        let mut consumed = 0;
        while consumed < limit {
            let flow = match self.try_recv(&mut buffer) {
                Ok(None) => break,
                Ok(Some(length)) => handle(Ok(&buffer[..length])),
                Err(error @ RingError::BadLength { .. }) => handle(Err(error)),
                Err(error) => return Err(error),
            };
            consumed += 1;
            if flow.is_break() {
                break;
            }
        }
        Ok(consumed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    fn ring_at(index: u32) -> Box<RingMemory> {
        let ring = Box::new(RingMemory::new());
        ring.reset_at(index);
        ring
    }

    fn message(sequence: u32, length: usize) -> Vec<u8> {
        (0..length)
            .map(|byte| (sequence as usize).wrapping_mul(31).wrapping_add(byte) as u8)
            .collect()
    }

    #[test]
    fn zeroed_ring_is_empty_and_round_trips() {
        let ring = RingMemory::new();
        let mut producer = Producer::attach(&ring);
        let mut consumer = Consumer::attach(&ring);
        let mut buffer = [0; SLOT_PAYLOAD];
        assert_eq!(consumer.try_recv(&mut buffer), Ok(None));
        assert_eq!(producer.free_slots(), Ok(SLOT_COUNT));
        for length in [0, 1, 7, 8, 9, 100, SLOT_PAYLOAD] {
            producer.try_send(&message(length as u32, length)).unwrap();
            assert_eq!(consumer.pending(), Ok(1));
            assert_eq!(consumer.try_recv(&mut buffer), Ok(Some(length)));
            assert_eq!(&buffer[..length], &message(length as u32, length)[..]);
        }
        assert_eq!(consumer.try_recv(&mut buffer), Ok(None));
    }

    #[test]
    fn full_ring_refuses_then_accepts_after_a_receive() {
        let ring = ring_at(0);
        let mut producer = Producer::attach(&ring);
        let mut consumer = Consumer::attach(&ring);
        for sequence in 0..SLOT_COUNT as u32 {
            producer.try_send(&message(sequence, 4)).unwrap();
        }
        assert_eq!(producer.try_send(b"x"), Err(RingError::Full));
        assert_eq!(producer.free_slots(), Ok(0));
        let mut buffer = [0; SLOT_PAYLOAD];
        assert_eq!(consumer.try_recv(&mut buffer), Ok(Some(4)));
        assert_eq!(&buffer[..4], &message(0, 4)[..]);
        producer.try_send(b"x").unwrap();
        assert_eq!(consumer.pending(), Ok(SLOT_COUNT));
    }

    #[test]
    fn oversize_message_is_refused() {
        let ring = ring_at(0);
        let mut producer = Producer::attach(&ring);
        let too_big = [0; SLOT_PAYLOAD + 1];
        assert_eq!(
            producer.try_send(&too_big),
            Err(RingError::TooBig {
                length: SLOT_PAYLOAD + 1
            })
        );
        assert_eq!(producer.free_slots(), Ok(SLOT_COUNT));
    }

    #[test]
    fn indices_wrap_past_u32_max() {
        for start in [u32::MAX - 3, u32::MAX - (SLOT_COUNT as u32) / 2, u32::MAX] {
            let ring = ring_at(start);
            let mut producer = Producer::attach(&ring);
            let mut consumer = Consumer::attach(&ring);
            let mut buffer = [0; SLOT_PAYLOAD];
            let mut received = 0u32;
            for sequence in 0..3 * SLOT_COUNT as u32 {
                producer
                    .try_send(&message(sequence, (sequence as usize * 7) % SLOT_PAYLOAD))
                    .unwrap();
                if sequence % 3 == 2 {
                    // Let the ring fill up partly before catching up.
                    while let Some(length) = consumer.try_recv(&mut buffer).unwrap() {
                        assert_eq!(&buffer[..length], &message(received, length)[..]);
                        received += 1;
                    }
                }
            }
            assert_eq!(received, 3 * SLOT_COUNT as u32);
        }
    }

    #[test]
    fn producer_index_beyond_capacity_is_corruption() {
        let ring = ring_at(10);
        let mut consumer = Consumer::attach(&ring);
        let mut buffer = [0; SLOT_PAYLOAD];
        for alleged in [10 + SLOT_COUNT as u32 + 1, 9, u32::MAX, 0] {
            ring.scribble(PRODUCER_INDEX_OFFSET, &alleged.to_le_bytes());
            let expected = RingError::CorruptIndex {
                producer: alleged,
                consumer: 10,
            };
            assert_eq!(consumer.try_recv(&mut buffer), Err(expected));
            assert_eq!(consumer.pending(), Err(expected));
            assert_eq!(
                consumer.drain(8, |_| ControlFlow::Continue(())),
                Err(expected)
            );
        }
        // Exactly full is not corruption.
        ring.scribble(
            PRODUCER_INDEX_OFFSET,
            &(10 + SLOT_COUNT as u32).to_le_bytes(),
        );
        assert_eq!(consumer.pending(), Ok(SLOT_COUNT));
    }

    #[test]
    fn consumer_index_beyond_producer_is_corruption() {
        let ring = ring_at(100);
        let mut producer = Producer::attach(&ring);
        ring.scribble(CONSUMER_INDEX_OFFSET, &101u32.to_le_bytes());
        let expected = RingError::CorruptIndex {
            producer: 100,
            consumer: 101,
        };
        assert_eq!(producer.try_send(b"hello"), Err(expected));
        assert_eq!(producer.free_slots(), Err(expected));
    }

    #[test]
    fn bad_length_is_reported_and_skipped() {
        let ring = ring_at(0);
        let mut producer = Producer::attach(&ring);
        let mut consumer = Consumer::attach(&ring);
        producer.try_send(b"first").unwrap();
        producer.try_send(b"second").unwrap();
        ring.scribble(SLOTS_OFFSET, &(SLOT_PAYLOAD as u64 + 1).to_le_bytes());
        let mut buffer = [0; SLOT_PAYLOAD];
        let bad = RingError::BadLength {
            length: SLOT_PAYLOAD as u64 + 1,
        };
        assert_eq!(consumer.try_recv(&mut buffer), Err(bad));
        assert_eq!(consumer.try_recv(&mut buffer), Ok(Some(6)));
        assert_eq!(&buffer[..6], b"second");
        ring.scribble(SLOTS_OFFSET + 2 * SLOT_BYTES, &u64::MAX.to_le_bytes());
        ring.scribble(PRODUCER_INDEX_OFFSET, &3u32.to_le_bytes());
        assert_eq!(
            consumer.try_recv(&mut buffer),
            Err(RingError::BadLength { length: u64::MAX })
        );
        assert_eq!(consumer.pending(), Ok(0));
    }

    #[test]
    fn drain_takes_a_bounded_batch_and_honours_break() {
        let ring = ring_at(0);
        let mut producer = Producer::attach(&ring);
        let mut consumer = Consumer::attach(&ring);
        for sequence in 0..10 {
            producer.try_send(&message(sequence, 3)).unwrap();
        }
        ring.scribble(SLOTS_OFFSET + 2 * SLOT_BYTES, &(1u64 << 40).to_le_bytes());
        let mut seen = Vec::new();
        let consumed = consumer
            .drain(4, |message| {
                seen.push(message.map(<[u8]>::to_vec));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(consumed, 4);
        assert_eq!(seen[0], Ok(message(0, 3)));
        assert_eq!(seen[2], Err(RingError::BadLength { length: 1 << 40 }));
        assert_eq!(seen[3], Ok(message(3, 3)));
        let mut count = 0;
        let consumed = consumer
            .drain(100, |_| {
                count += 1;
                if count == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(consumed, 2);
        assert_eq!(consumer.drain(100, |_| ControlFlow::Continue(())), Ok(4));
        assert_eq!(consumer.drain(100, |_| ControlFlow::Continue(())), Ok(0));
    }

    #[test]
    fn reset_zeroes_everything() {
        let ring = ring_at(0);
        let mut producer = Producer::attach(&ring);
        producer.try_send(&[0xaa; SLOT_PAYLOAD]).unwrap();
        ring.scribble(8, &[0xff; 8]);
        ring.reset();
        let consumer = Consumer::attach(&ring);
        assert_eq!(consumer.pending(), Ok(0));
        assert!(ring
            .slots
            .iter()
            .flatten()
            .all(|word| word.load(Ordering::Relaxed) == 0));
        assert!(ring
            .producer
            .padding
            .iter()
            .all(|word| word.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn scribble_lands_where_the_layout_says() {
        let ring = ring_at(0);
        ring.scribble(PRODUCER_INDEX_OFFSET, &0x0403_0201u32.to_le_bytes());
        ring.scribble(CONSUMER_INDEX_OFFSET + 1, &[0x7f]);
        ring.scribble(SLOTS_OFFSET + SLOT_BYTES + 8, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        ring.scribble(RING_LAYOUT_BYTES - 1, &[0xee, 0xdd]);
        assert_eq!(ring.producer.index.load(Ordering::Relaxed), 0x0403_0201);
        assert_eq!(ring.consumer.index.load(Ordering::Relaxed), 0x7f00);
        assert_eq!(
            ring.slots[1][1].load(Ordering::Relaxed),
            0x0807_0605_0403_0201
        );
        assert_eq!(ring.slots[1][2].load(Ordering::Relaxed), 9);
        assert_eq!(
            ring.slots[SLOT_COUNT - 1][SLOT_WORDS - 1].load(Ordering::Relaxed),
            0xee << 56
        );
    }
}

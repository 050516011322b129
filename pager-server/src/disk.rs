//! The on-disk layout of the swap device, and page verification.
//!
//! The device is an array of 4096-byte blocks (`DISK-FORMAT.md` beside
//! `Cargo.toml` is the reference; this module implements it):
//!
//! ```text
//! block 0                       header: magic "CAIRNSWP", version, slot size,
//!                               slot count, table geometry, format id, CRC-32C
//! blocks 1 .. 1+T               slot table: 255 entries of 16 bytes per block,
//!                               then a trailer (format id, block index, CRC-32C)
//! blocks 1+T .. 1+T+S           data: device slot s is block 1+T+s
//! ```
//!
//! with `S` the slot count and `T = ceil(S / 255)`. All integers are
//! little-endian. A slot-table entry records who owns the slot's data and the
//! CRC-32C of its 4096 bytes, so a page-in detects a wrong block, a stale
//! block or a flipped bit instead of handing the guest wrong data (issue #5
//! §5). Xen's xenpaging writes raw pages at `slot << PAGE_SHIFT` of its
//! pagefile (`write_page()` in `file_ops.c`) and checks nothing on read; this
//! layout adds the checks and the header.
//!
//! The table says what was *written*; the core's map says what is *in use*.
//! An entry is trusted only for slots the map names
//! ([`crate::recovery::check_slot_table`]); entries of free slots may be stale.
//!
//! Each domain gets a [`Partition`] of the device slots (as each xenpaging
//! instance has its own pagefile), so one domain filling its swap space never
//! takes another's.

use core::fmt;

use crate::{Gfn, Slot, PAGE_SIZE};

/// Size of every block of the layout: header, table block, data slot.
pub const BLOCK_SIZE: usize = PAGE_SIZE;
/// First eight bytes of the header block.
pub const MAGIC: [u8; 8] = *b"CAIRNSWP";
/// Version of this layout; bumped on any change.
pub const FORMAT_VERSION: u32 = 1;
/// Block holding the header.
pub const HEADER_BLOCK: u64 = 0;
/// First block of the slot table.
pub const TABLE_START_BLOCK: u64 = 1;
/// Bytes per slot-table entry.
pub const ENTRY_SIZE: usize = 16;
/// Slot-table entries per table block (the last 16 bytes are the trailer).
pub const ENTRIES_PER_TABLE_BLOCK: u32 = 255;
/// Offset of the trailer in a table block.
pub const TABLE_TRAILER_OFFSET: usize = ENTRIES_PER_TABLE_BLOCK as usize * ENTRY_SIZE;
/// Bytes of the header covered by its checksum.
pub const HEADER_CHECKED_LEN: usize = 48;
/// Entry flag: the slot holds a page.
pub const ENTRY_IN_USE: u16 = 1;

/// The CRC-32C tables for slicing by 8 (Intel's "slicing-by-8"): `[0]` is
/// the classic byte table; `[k][b]` is the CRC of byte `b` followed by `k`
/// zero bytes, so eight table lookups advance the CRC by eight bytes.
const fn crc32c_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][index] = crc;
        index += 1;
    }
    let mut slice = 1;
    while slice < 8 {
        let mut index = 0;
        while index < 256 {
            let previous = tables[slice - 1][index];
            tables[slice][index] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            index += 1;
        }
        slice += 1;
    }
    tables
}

static CRC32C_TABLES: [[u32; 256]; 8] = crc32c_tables();

/// CRC-32C (Castagnoli, reflected polynomial `0x82F63B78`, initial value and
/// final xor `0xFFFFFFFF`), as used by iSCSI, ext4 and btrfs. It detects every
/// error burst up to 32 bits, so every single flipped bit.
///
/// Eight bytes per step (slicing by 8), the tail a byte at a time: the
/// pager checksums three 4 KiB blocks per page it evicts and loads back
/// (the page, its table block, the page again), and under QEMU TCG a
/// byte-at-a-time loop cost about as much as a device read.
pub fn crc32c(data: &[u8]) -> u32 {
    let tables = &CRC32C_TABLES;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let low = crc ^ u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let high = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        crc = tables[7][(low & 0xff) as usize]
            ^ tables[6][((low >> 8) & 0xff) as usize]
            ^ tables[5][((low >> 16) & 0xff) as usize]
            ^ tables[4][(low >> 24) as usize]
            ^ tables[3][(high & 0xff) as usize]
            ^ tables[2][((high >> 8) & 0xff) as usize]
            ^ tables[1][((high >> 16) & 0xff) as usize]
            ^ tables[0][(high >> 24) as usize];
    }
    for byte in chunks.remainder() {
        crc = tables[0][usize::from((crc as u8) ^ byte)] ^ (crc >> 8);
    }
    !crc
}

/// The checksum recorded for a page: [`crc32c`] of its 4096 bytes.
pub fn page_checksum(page: &[u8; PAGE_SIZE]) -> u32 {
    crc32c(page)
}

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[offset..offset + 2]);
    u16::from_le_bytes(raw)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

fn write_bytes(bytes: &mut [u8], offset: usize, value: &[u8]) {
    bytes[offset..offset + value.len()].copy_from_slice(value);
}

/// Why a header block was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`BLOCK_SIZE`] bytes.
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// Not a cairn swap device (or not formatted).
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// A layout version this pager does not know.
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// The header's CRC-32C does not match its bytes.
    BadChecksum {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header.
        computed: u32,
    },
    /// Slot size is not 4096.
    BadSlotSize {
        /// The slot size found.
        found: u32,
    },
    /// Zero slots.
    NoSlots,
    /// The table geometry is not the one the slot count implies.
    BadLayout {
        /// Table blocks recorded.
        table_blocks: u32,
        /// Table start block recorded.
        table_start: u64,
        /// Data start block recorded.
        data_start: u64,
    },
    /// The device is smaller than the layout.
    DeviceTooSmall {
        /// Blocks the layout needs.
        needed: u64,
        /// Blocks the device has.
        device: u64,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "header block is {len} bytes, need {BLOCK_SIZE}"),
            Self::BadMagic { found } => write!(f, "bad magic {found:02x?}: not a cairn swap device"),
            Self::UnsupportedVersion { found } => {
                write!(f, "swap layout version {found}, this pager reads {FORMAT_VERSION}")
            }
            Self::BadChecksum { stored, computed } => {
                write!(f, "header checksum {stored:#010x} does not match {computed:#010x}")
            }
            Self::BadSlotSize { found } => write!(f, "slot size {found}, expected {BLOCK_SIZE}"),
            Self::NoSlots => write!(f, "swap device has no slots"),
            Self::BadLayout { table_blocks, table_start, data_start } => write!(
                f,
                "inconsistent layout: {table_blocks} table blocks at {table_start}, data at {data_start}"
            ),
            Self::DeviceTooSmall { needed, device } => {
                write!(f, "layout needs {needed} blocks, device has {device}")
            }
        }
    }
}

/// The decoded header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapHeader {
    slot_count: u32,
    format_id: u64,
}

impl SwapHeader {
    /// A header for `slot_count` data slots. `format_id` is chosen when the
    /// device is formatted (the runner picks a random one) and is repeated in
    /// every table block, so a table block from an older format is detected.
    pub fn new(slot_count: u32, format_id: u64) -> Result<Self, HeaderError> {
        if slot_count == 0 {
            return Err(HeaderError::NoSlots);
        }
        Ok(Self {
            slot_count,
            format_id,
        })
    }

    /// The header with the most slots that fit a device of `device_blocks`
    /// blocks: the largest `S` with `1 + ceil(S / 255) + S ≤ device_blocks`.
    pub fn for_device(device_blocks: u64, format_id: u64) -> Result<Self, HeaderError> {
        let usable = device_blocks.saturating_sub(1);
        // Each table block serves 255 slots: 256 blocks per 255 slots.
        let mut slots = (usable.saturating_mul(u64::from(ENTRIES_PER_TABLE_BLOCK)) / 256)
            .min(u64::from(u32::MAX));
        while slots > 0 && slots + slots.div_ceil(u64::from(ENTRIES_PER_TABLE_BLOCK)) > usable {
            slots -= 1;
        }
        while slots < u64::from(u32::MAX)
            && (slots + 1) + (slots + 1).div_ceil(u64::from(ENTRIES_PER_TABLE_BLOCK)) <= usable
        {
            slots += 1;
        }
        let slot_count = u32::try_from(slots).unwrap_or(u32::MAX);
        Self::new(slot_count, format_id).map_err(|_| HeaderError::DeviceTooSmall {
            needed: 3,
            device: device_blocks,
        })
    }

    /// Data slots on the device.
    pub const fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// The format id.
    pub const fn format_id(&self) -> u64 {
        self.format_id
    }

    /// Table blocks: `ceil(slot_count / 255)`.
    pub const fn table_blocks(&self) -> u32 {
        self.slot_count.div_ceil(ENTRIES_PER_TABLE_BLOCK)
    }

    /// First data block: `1 + table_blocks`.
    pub const fn data_start_block(&self) -> u64 {
        TABLE_START_BLOCK + self.table_blocks() as u64
    }

    /// Blocks the whole layout needs.
    pub const fn total_blocks(&self) -> u64 {
        self.data_start_block() + self.slot_count as u64
    }

    /// Block number of device slot `device_slot`, if it exists.
    pub const fn slot_block(&self, device_slot: u32) -> Option<u64> {
        if device_slot < self.slot_count {
            Some(self.data_start_block() + device_slot as u64)
        } else {
            None
        }
    }

    /// Block number of table block `index`, if it exists.
    pub const fn table_block(&self, index: u32) -> Option<u64> {
        if index < self.table_blocks() {
            Some(TABLE_START_BLOCK + index as u64)
        } else {
            None
        }
    }

    /// Checks that a device of `device_blocks` blocks holds the layout.
    pub const fn check_device(&self, device_blocks: u64) -> Result<(), HeaderError> {
        let needed = self.total_blocks();
        if device_blocks < needed {
            Err(HeaderError::DeviceTooSmall {
                needed,
                device: device_blocks,
            })
        } else {
            Ok(())
        }
    }

    /// The header block's bytes.
    pub fn encode(&self) -> [u8; BLOCK_SIZE] {
        let mut block = [0u8; BLOCK_SIZE];
        write_bytes(&mut block, 0, &MAGIC);
        write_bytes(&mut block, 8, &FORMAT_VERSION.to_le_bytes());
        write_bytes(&mut block, 12, &(BLOCK_SIZE as u32).to_le_bytes());
        write_bytes(&mut block, 16, &self.slot_count.to_le_bytes());
        write_bytes(&mut block, 20, &self.table_blocks().to_le_bytes());
        write_bytes(&mut block, 24, &TABLE_START_BLOCK.to_le_bytes());
        write_bytes(&mut block, 32, &self.data_start_block().to_le_bytes());
        write_bytes(&mut block, 40, &self.format_id.to_le_bytes());
        let crc = crc32c(&block[..HEADER_CHECKED_LEN]);
        write_bytes(&mut block, HEADER_CHECKED_LEN, &crc.to_le_bytes());
        block
    }

    /// Decodes and validates a header block read from the device: magic,
    /// then version, then checksum (so no field is trusted before it), then
    /// slot size and geometry. Bytes past the checksum are ignored.
    pub fn decode(block: &[u8]) -> Result<Self, HeaderError> {
        if block.len() < BLOCK_SIZE {
            return Err(HeaderError::TooShort { len: block.len() });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&block[..8]);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let version = read_u32(block, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion { found: version });
        }
        let stored = read_u32(block, HEADER_CHECKED_LEN);
        let computed = crc32c(&block[..HEADER_CHECKED_LEN]);
        if stored != computed {
            return Err(HeaderError::BadChecksum { stored, computed });
        }
        let slot_size = read_u32(block, 12);
        if slot_size != BLOCK_SIZE as u32 {
            return Err(HeaderError::BadSlotSize { found: slot_size });
        }
        let header = Self::new(read_u32(block, 16), read_u64(block, 40))?;
        let table_blocks = read_u32(block, 20);
        let table_start = read_u64(block, 24);
        let data_start = read_u64(block, 32);
        if table_blocks != header.table_blocks()
            || table_start != TABLE_START_BLOCK
            || data_start != header.data_start_block()
        {
            return Err(HeaderError::BadLayout {
                table_blocks,
                table_start,
                data_start,
            });
        }
        Ok(header)
    }
}

/// Who a slot's data belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The domain.
    pub domain: u16,
    /// The frame.
    pub gfn: Gfn,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain {} {}", self.domain, self.gfn)
    }
}

/// One slot-table entry: `gfn` (u64), `domain` (u16), `flags` (u16, bit 0 =
/// in use), `checksum` (u32). A free entry is sixteen zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotEntry {
    /// The page's owner; `None` for a free entry.
    pub owner: Option<Owner>,
    /// [`page_checksum`] of the slot's data (0 for a free entry).
    pub checksum: u32,
}

impl SlotEntry {
    /// The entry for `owner`'s page `data`.
    pub fn for_page(owner: Owner, data: &[u8; PAGE_SIZE]) -> Self {
        Self {
            owner: Some(owner),
            checksum: page_checksum(data),
        }
    }

    /// The entry's 16 bytes.
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut bytes = [0u8; ENTRY_SIZE];
        if let Some(owner) = self.owner {
            write_bytes(&mut bytes, 0, &owner.gfn.get().to_le_bytes());
            write_bytes(&mut bytes, 8, &owner.domain.to_le_bytes());
            write_bytes(&mut bytes, 10, &ENTRY_IN_USE.to_le_bytes());
            write_bytes(&mut bytes, 12, &self.checksum.to_le_bytes());
        }
        bytes
    }

    /// Decodes an entry; unknown flags or a free entry with data are refused.
    pub fn decode(bytes: &[u8; ENTRY_SIZE]) -> Result<Self, EntryError> {
        let flags = read_u16(bytes, 10);
        if flags & !ENTRY_IN_USE != 0 {
            return Err(EntryError::UnknownFlags { flags });
        }
        if flags & ENTRY_IN_USE == 0 {
            if bytes.iter().any(|byte| *byte != 0) {
                return Err(EntryError::FreeEntryNotZero);
            }
            return Ok(Self::default());
        }
        Ok(Self {
            owner: Some(Owner {
                domain: read_u16(bytes, 8),
                gfn: Gfn::new(read_u64(bytes, 0)),
            }),
            checksum: read_u32(bytes, 12),
        })
    }
}

/// Why one slot-table entry is unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryError {
    /// Flag bits this version does not define.
    UnknownFlags {
        /// The flags found.
        flags: u16,
    },
    /// The entry is marked free but is not all zeros.
    FreeEntryNotZero,
}

/// Why the slot table (or a block of it) is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// Fewer table blocks of storage than the header's table.
    StorageTooSmall {
        /// Blocks needed.
        needed: u32,
        /// Blocks given.
        given: usize,
    },
    /// A table block's CRC-32C does not match its bytes.
    BadChecksum {
        /// Table block index.
        block: u32,
        /// CRC stored in the trailer.
        stored: u32,
        /// CRC computed.
        computed: u32,
    },
    /// A table block carries another block's index (misdirected write or read).
    WrongBlockIndex {
        /// Where it was read from.
        block: u32,
        /// Index in its trailer.
        found: u32,
    },
    /// A table block belongs to another format of the device.
    WrongFormat {
        /// Table block index.
        block: u32,
        /// Format id in its trailer.
        found: u64,
    },
    /// A device slot past the end of the device.
    SlotOutOfRange {
        /// The device slot named.
        device_slot: u32,
        /// Slots on the device.
        slots: u32,
    },
    /// An entry in the block is unreadable.
    Entry {
        /// The device slot.
        device_slot: u32,
        /// What is wrong with it.
        error: EntryError,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StorageTooSmall { needed, given } => {
                write!(
                    f,
                    "slot table needs {needed} blocks of memory, {given} given"
                )
            }
            Self::BadChecksum {
                block,
                stored,
                computed,
            } => write!(
                f,
                "slot table block {block}: checksum {stored:#010x} does not match {computed:#010x}"
            ),
            Self::WrongBlockIndex { block, found } => {
                write!(f, "slot table block {block} carries index {found}")
            }
            Self::WrongFormat { block, found } => {
                write!(
                    f,
                    "slot table block {block} is from another format ({found:#x})"
                )
            }
            Self::SlotOutOfRange { device_slot, slots } => {
                write!(
                    f,
                    "device slot {device_slot} is past the device's {slots} slots"
                )
            }
            Self::Entry { device_slot, error } => {
                write!(
                    f,
                    "slot table entry of device slot {device_slot}: {error:?}"
                )
            }
        }
    }
}

/// Where device slot `device_slot`'s entry lives: (table block index, entry
/// index in that block).
pub const fn table_position(device_slot: u32) -> (u32, usize) {
    (
        device_slot / ENTRIES_PER_TABLE_BLOCK,
        (device_slot % ENTRIES_PER_TABLE_BLOCK) as usize,
    )
}

fn seal_block(block: &mut [u8; BLOCK_SIZE], index: u32, format_id: u64) {
    write_bytes(block, TABLE_TRAILER_OFFSET, &format_id.to_le_bytes());
    write_bytes(block, TABLE_TRAILER_OFFSET + 8, &index.to_le_bytes());
    let crc = crc32c(&block[..BLOCK_SIZE - 4]);
    write_bytes(block, BLOCK_SIZE - 4, &crc.to_le_bytes());
}

fn check_block(block: &[u8; BLOCK_SIZE], index: u32, format_id: u64) -> Result<(), TableError> {
    let stored = read_u32(block, BLOCK_SIZE - 4);
    let computed = crc32c(&block[..BLOCK_SIZE - 4]);
    if stored != computed {
        return Err(TableError::BadChecksum {
            block: index,
            stored,
            computed,
        });
    }
    let found_format = read_u64(block, TABLE_TRAILER_OFFSET);
    if found_format != format_id {
        return Err(TableError::WrongFormat {
            block: index,
            found: found_format,
        });
    }
    let found_index = read_u32(block, TABLE_TRAILER_OFFSET + 8);
    if found_index != index {
        return Err(TableError::WrongBlockIndex {
            block: index,
            found: found_index,
        });
    }
    Ok(())
}

/// The pager's in-memory copy of the slot table, over caller-provided blocks
/// (at least [`SwapHeader::table_blocks`] of them). The pager changes an
/// entry here, then writes the block [`SlotTable::set_entry`] names back to
/// the device before it asks the core to `evict`.
#[derive(Debug)]
pub struct SlotTable<'a> {
    blocks: &'a mut [[u8; BLOCK_SIZE]],
    header: SwapHeader,
}

impl<'a> SlotTable<'a> {
    fn storage(
        blocks: &'a mut [[u8; BLOCK_SIZE]],
        header: SwapHeader,
    ) -> Result<&'a mut [[u8; BLOCK_SIZE]], TableError> {
        let needed = header.table_blocks();
        let given = blocks.len();
        blocks
            .get_mut(..needed as usize)
            .ok_or(TableError::StorageTooSmall { needed, given })
    }

    /// An empty table (every entry free, every block sealed): what formatting
    /// writes to blocks `1 .. 1+T`.
    pub fn format(
        blocks: &'a mut [[u8; BLOCK_SIZE]],
        header: SwapHeader,
    ) -> Result<Self, TableError> {
        let blocks = Self::storage(blocks, header)?;
        for (index, block) in blocks.iter_mut().enumerate() {
            block.fill(0);
            seal_block(block, index as u32, header.format_id());
        }
        Ok(Self { blocks, header })
    }

    /// A table read back from the device (a restarted pager does this):
    /// every block's checksum, format id and index are checked.
    pub fn load(
        blocks: &'a mut [[u8; BLOCK_SIZE]],
        header: SwapHeader,
    ) -> Result<Self, TableError> {
        let blocks = Self::storage(blocks, header)?;
        for (index, block) in blocks.iter().enumerate() {
            check_block(block, index as u32, header.format_id())?;
        }
        Ok(Self { blocks, header })
    }

    /// A table read back from the device, repairing instead of refusing: a
    /// block that fails its checks (checksum, format id, index) is reported
    /// to `on_bad` and replaced by an empty sealed block, so one damaged
    /// block costs only the pages recorded in it (their page-ins then fail
    /// verification) instead of the whole table.
    pub fn load_repairing(
        blocks: &'a mut [[u8; BLOCK_SIZE]],
        header: SwapHeader,
        mut on_bad: impl FnMut(u32, TableError),
    ) -> Result<Self, TableError> {
        let blocks = Self::storage(blocks, header)?;
        for (index, block) in blocks.iter_mut().enumerate() {
            if let Err(error) = check_block(block, index as u32, header.format_id()) {
                on_bad(index as u32, error);
                block.fill(0);
                seal_block(block, index as u32, header.format_id());
            }
        }
        Ok(Self { blocks, header })
    }

    /// The header this table belongs to.
    pub const fn header(&self) -> SwapHeader {
        self.header
    }

    fn locate(&self, device_slot: u32) -> Result<(usize, usize), TableError> {
        let slots = self.header.slot_count();
        if device_slot >= slots {
            return Err(TableError::SlotOutOfRange { device_slot, slots });
        }
        let (block, entry) = table_position(device_slot);
        Ok((block as usize, entry * ENTRY_SIZE))
    }

    /// The entry of `device_slot`.
    pub fn entry(&self, device_slot: u32) -> Result<SlotEntry, TableError> {
        let (block, offset) = self.locate(device_slot)?;
        let mut bytes = [0u8; ENTRY_SIZE];
        bytes.copy_from_slice(&self.blocks[block][offset..offset + ENTRY_SIZE]);
        SlotEntry::decode(&bytes).map_err(|error| TableError::Entry { device_slot, error })
    }

    /// Records `entry` for `device_slot`; returns the table block index to
    /// write back (device block [`SwapHeader::table_block`] of it). The
    /// block's checksum is left stale until [`Self::sealed_block`]: the
    /// pager writes a table block once for all the entries set while the
    /// previous write was in flight, and a checksum per entry would cost a
    /// 4 KiB CRC per eviction instead of one per write.
    pub fn set_entry(&mut self, device_slot: u32, entry: SlotEntry) -> Result<u32, TableError> {
        let (block, offset) = self.locate(device_slot)?;
        write_bytes(&mut self.blocks[block], offset, &entry.encode());
        Ok(block as u32)
    }

    /// Table block `index`, sealed (trailer and checksum over its entries as
    /// they are now), as it is to be written to the device.
    pub fn sealed_block(&mut self, index: u32) -> Option<&[u8; BLOCK_SIZE]> {
        let format_id = self.header.format_id();
        let block = self.blocks.get_mut(index as usize)?;
        seal_block(block, index, format_id);
        Some(block)
    }
}

/// Why a page-in was refused. The waiting domain is stopped with this reason;
/// the guest never sees the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageInError {
    /// The device reported an error for the read.
    ReadFailed,
    /// The slot's entry is free: nothing was recorded as written there.
    NotRecorded,
    /// The slot's entry names another page (a misdirected or stale write).
    WrongOwner {
        /// The owner the entry records.
        found: Owner,
    },
    /// The data read does not have the recorded checksum.
    Corrupt {
        /// Checksum in the slot table.
        recorded: u32,
        /// Checksum of the data read.
        computed: u32,
    },
    /// The slot table itself is unreadable for this slot.
    Table(TableError),
}

impl fmt::Display for PageInError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadFailed => write!(f, "the swap device reported a read error"),
            Self::NotRecorded => write!(f, "the slot table records no page in this slot"),
            Self::WrongOwner { found } => write!(f, "the slot holds the page of {found}"),
            Self::Corrupt { recorded, computed } => write!(
                f,
                "checksum mismatch: recorded {recorded:#010x}, read {computed:#010x}"
            ),
            Self::Table(error) => write!(f, "{error}"),
        }
    }
}

/// A failed page-in, with everything the stop message needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInFailure {
    /// The page that could not be read back.
    pub owner: Owner,
    /// The domain-local slot it was read from.
    pub slot: Slot,
    /// What went wrong.
    pub error: PageInError,
}

impl fmt::Display for PageInFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "domain {} stopped: page-in of {} from {} failed: {}",
            self.owner.domain, self.owner.gfn, self.slot, self.error
        )
    }
}

/// Checks a page read from a slot against the slot's table entry before it is
/// loaded: the entry must be in use, name `expected`, and carry the data's
/// checksum.
pub fn verify_page(
    entry: SlotEntry,
    expected: Owner,
    data: &[u8; PAGE_SIZE],
) -> Result<(), PageInError> {
    let found = entry.owner.ok_or(PageInError::NotRecorded)?;
    if found != expected {
        return Err(PageInError::WrongOwner { found });
    }
    let computed = page_checksum(data);
    if computed != entry.checksum {
        return Err(PageInError::Corrupt {
            recorded: entry.checksum,
            computed,
        });
    }
    Ok(())
}

/// A domain's share of the device slots: device slots
/// `first .. first + count`. Slot `s` of the domain is device slot
/// `first + s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Partition {
    /// First device slot.
    pub first: u32,
    /// Slots in the partition.
    pub count: u32,
}

/// Why the slots could not be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionError {
    /// Every weight is zero.
    NoWeight,
    /// `weights` and `out` differ in length.
    LengthMismatch,
}

impl Partition {
    /// The device slot of domain-local `slot`, if inside the partition.
    pub fn device_slot(&self, slot: Slot) -> Option<u32> {
        if slot.get() < self.count {
            self.first.checked_add(slot.get())
        } else {
            None
        }
    }

    /// Splits `total` device slots into consecutive partitions in proportion
    /// to `weights` (each domain's memory in pages): partition `i` gets
    /// `floor(total · wᵢ / Σw)` slots, and the slots left by rounding go one
    /// each to the first domains with nonzero weight. Written to `out`.
    pub fn split(total: u32, weights: &[u64], out: &mut [Partition]) -> Result<(), PartitionError> {
        if weights.len() != out.len() {
            return Err(PartitionError::LengthMismatch);
        }
        let sum: u128 = weights.iter().map(|weight| u128::from(*weight)).sum();
        if sum == 0 {
            return Err(PartitionError::NoWeight);
        }
        let mut counts_total: u32 = 0;
        for (weight, partition) in weights.iter().zip(out.iter_mut()) {
            // ≤ total, since weight ≤ sum.
            let count = (u128::from(total) * u128::from(*weight) / sum) as u32;
            partition.count = count;
            counts_total += count;
        }
        let mut left = total - counts_total;
        for (weight, partition) in weights.iter().zip(out.iter_mut()) {
            if left == 0 {
                break;
            }
            if *weight > 0 {
                partition.count += 1;
                left -= 1;
            }
        }
        let mut first = 0;
        for partition in out.iter_mut() {
            partition.first = first;
            first += partition.count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(
            crc32c(&[0u8; 32]),
            0x8A91_36AA,
            "RFC 3720 B.4: 32 bytes of zeros"
        );
    }

    #[test]
    fn crc32c_by_eight_bytes_matches_the_byte_at_a_time_definition() {
        fn bytewise(data: &[u8]) -> u32 {
            !data.iter().fold(!0u32, |crc, byte| {
                CRC32C_TABLES[0][usize::from((crc as u8) ^ byte)] ^ (crc >> 8)
            })
        }
        let data: Vec<u8> = (0..4200u32)
            .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for length in (0..40).chain([4092, 4095, 4096, 4097, 4200]) {
            assert_eq!(
                crc32c(&data[..length]),
                bytewise(&data[..length]),
                "length {length}"
            );
        }
        for start in 1..8 {
            assert_eq!(
                crc32c(&data[start..start + 4096]),
                bytewise(&data[start..start + 4096])
            );
        }
    }

    #[test]
    fn header_round_trips() {
        let header = SwapHeader::new(1000, 0xDEAD_BEEF_0123_4567).unwrap();
        let block = header.encode();
        assert_eq!(&block[..8], b"CAIRNSWP");
        assert_eq!(SwapHeader::decode(&block), Ok(header));
        assert_eq!(header.table_blocks(), 4, "ceil(1000 / 255)");
        assert_eq!(header.data_start_block(), 5);
        assert_eq!(header.total_blocks(), 1005);
        assert_eq!(header.slot_block(0), Some(5));
        assert_eq!(header.slot_block(999), Some(1004));
        assert_eq!(header.slot_block(1000), None);
        assert_eq!(header.table_block(3), Some(4));
        assert_eq!(header.table_block(4), None);
    }

    #[test]
    fn each_corruption_of_the_header_gets_its_named_error() {
        let header = SwapHeader::new(300, 7).unwrap();
        let good = header.encode();

        assert_eq!(
            SwapHeader::decode(&good[..100]),
            Err(HeaderError::TooShort { len: 100 })
        );

        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(
            SwapHeader::decode(&bad),
            Err(HeaderError::BadMagic {
                found: *b"XAIRNSWP"
            })
        );

        let mut bad = good;
        bad[8] = 2;
        assert_eq!(
            SwapHeader::decode(&bad),
            Err(HeaderError::UnsupportedVersion { found: 2 })
        );

        // A flipped bit in the slot count: caught by the checksum.
        let mut bad = good;
        bad[16] ^= 0x01;
        assert!(matches!(
            SwapHeader::decode(&bad),
            Err(HeaderError::BadChecksum { .. })
        ));

        // Fields that are wrong but correctly checksummed.
        let reseal = |mut block: [u8; BLOCK_SIZE]| {
            let crc = crc32c(&block[..HEADER_CHECKED_LEN]);
            block[HEADER_CHECKED_LEN..HEADER_CHECKED_LEN + 4].copy_from_slice(&crc.to_le_bytes());
            block
        };
        let mut bad = good;
        bad[12..16].copy_from_slice(&512u32.to_le_bytes());
        assert_eq!(
            SwapHeader::decode(&reseal(bad)),
            Err(HeaderError::BadSlotSize { found: 512 })
        );

        let mut bad = good;
        bad[16..20].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(SwapHeader::decode(&reseal(bad)), Err(HeaderError::NoSlots));

        let mut bad = good;
        bad[32..40].copy_from_slice(&2u64.to_le_bytes());
        assert_eq!(
            SwapHeader::decode(&reseal(bad)),
            Err(HeaderError::BadLayout {
                table_blocks: 2,
                table_start: 1,
                data_start: 2
            })
        );

        // Bytes after the checksum are ignored.
        let mut tail = good;
        tail[BLOCK_SIZE - 1] = 0xFF;
        assert_eq!(SwapHeader::decode(&tail), Ok(header));
    }

    #[test]
    fn for_device_fills_the_device_exactly() {
        for device_blocks in [3u64, 4, 100, 256, 257, 258, 1 << 20, 65_536 + 257] {
            let header = SwapHeader::for_device(device_blocks, 1).unwrap();
            let slots = u64::from(header.slot_count());
            assert!(header.total_blocks() <= device_blocks, "{device_blocks}");
            let one_more = slots + 1;
            assert!(
                1 + one_more.div_ceil(255) + one_more > device_blocks,
                "{device_blocks}: one more slot would not fit"
            );
            assert_eq!(header.check_device(device_blocks), Ok(()));
        }
        assert_eq!(SwapHeader::for_device(3, 1).unwrap().slot_count(), 1);
        // 1 GiB of 4 KiB blocks: 1 header + 1024 table blocks + 261119 slots.
        let gib = SwapHeader::for_device(262_144, 1).unwrap();
        assert_eq!((gib.slot_count(), gib.table_blocks()), (261_119, 1024));
        assert_eq!(gib.total_blocks(), 262_144);
        assert_eq!(
            SwapHeader::for_device(2, 1),
            Err(HeaderError::DeviceTooSmall {
                needed: 3,
                device: 2
            })
        );
        assert_eq!(
            gib.check_device(262_143),
            Err(HeaderError::DeviceTooSmall {
                needed: 262_144,
                device: 262_143
            })
        );
    }

    fn page(seed: u8) -> [u8; PAGE_SIZE] {
        let mut page = [0u8; PAGE_SIZE];
        for (index, byte) in page.iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(31).wrapping_add(seed);
        }
        page
    }

    #[test]
    fn page_checksum_catches_every_single_flipped_bit() {
        let data = page(9);
        let owner = Owner {
            domain: 1,
            gfn: Gfn::new(0x42),
        };
        let entry = SlotEntry::for_page(owner, &data);
        assert_eq!(verify_page(entry, owner, &data), Ok(()));
        for bit in 0..PAGE_SIZE * 8 {
            let mut flipped = data;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    verify_page(entry, owner, &flipped),
                    Err(PageInError::Corrupt { recorded, .. }) if recorded == entry.checksum
                ),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn verify_names_a_wrong_owner_and_a_missing_entry() {
        let data = page(1);
        let owner = Owner {
            domain: 1,
            gfn: Gfn::new(5),
        };
        let other = Owner {
            domain: 1,
            gfn: Gfn::new(6),
        };
        let entry = SlotEntry::for_page(other, &data);
        assert_eq!(
            verify_page(entry, owner, &data),
            Err(PageInError::WrongOwner { found: other })
        );
        assert_eq!(
            verify_page(SlotEntry::default(), owner, &data),
            Err(PageInError::NotRecorded)
        );
        let failure = PageInFailure {
            owner,
            slot: Slot::new(3),
            error: PageInError::Corrupt {
                recorded: 1,
                computed: 2,
            },
        };
        assert_eq!(
            format!("{failure}"),
            "domain 1 stopped: page-in of gfn 0x5 from slot 3 failed: \
             checksum mismatch: recorded 0x00000001, read 0x00000002"
        );
    }

    #[test]
    fn entry_round_trips_and_rejects_garbage() {
        let entry = SlotEntry {
            owner: Some(Owner {
                domain: 513,
                gfn: Gfn::new(u64::MAX - 1),
            }),
            checksum: 0xABCD_EF01,
        };
        assert_eq!(SlotEntry::decode(&entry.encode()), Ok(entry));
        assert_eq!(SlotEntry::default().encode(), [0u8; ENTRY_SIZE]);
        assert_eq!(
            SlotEntry::decode(&[0u8; ENTRY_SIZE]),
            Ok(SlotEntry::default())
        );
        let mut bad = entry.encode();
        bad[10] = 0x03;
        assert_eq!(
            SlotEntry::decode(&bad),
            Err(EntryError::UnknownFlags { flags: 3 })
        );
        let mut bad = [0u8; ENTRY_SIZE];
        bad[0] = 1;
        assert_eq!(SlotEntry::decode(&bad), Err(EntryError::FreeEntryNotZero));
    }

    #[test]
    fn slot_table_round_trips_through_the_device_and_detects_damage() {
        let header = SwapHeader::new(600, 0x1111).unwrap();
        assert_eq!(header.table_blocks(), 3);
        let mut memory = [[0u8; BLOCK_SIZE]; 3];
        let mut table = SlotTable::format(&mut memory, header).unwrap();
        let owner = Owner {
            domain: 2,
            gfn: Gfn::new(77),
        };
        let entry = SlotEntry::for_page(owner, &page(3));
        assert_eq!(
            table.set_entry(300, entry),
            Ok(1),
            "slot 300 is in table block 1"
        );
        assert_eq!(table.entry(300), Ok(entry));
        assert_eq!(table.entry(301), Ok(SlotEntry::default()));
        assert_eq!(
            table.entry(600),
            Err(TableError::SlotOutOfRange {
                device_slot: 600,
                slots: 600
            })
        );

        // "Write" the blocks to a device and read them back.
        let mut device = [[0u8; BLOCK_SIZE]; 3];
        for index in 0..3 {
            device[index as usize] = *table.sealed_block(index).unwrap();
        }
        let mut reread = device;
        let loaded = SlotTable::load(&mut reread, header).unwrap();
        assert_eq!(loaded.entry(300), Ok(entry));

        let mut flipped = device;
        flipped[1][17] ^= 0x10;
        assert!(matches!(
            SlotTable::load(&mut flipped, header),
            Err(TableError::BadChecksum { block: 1, .. })
        ));

        let mut swapped = device;
        swapped.swap(0, 2);
        assert_eq!(
            SlotTable::load(&mut swapped, header).err(),
            Some(TableError::WrongBlockIndex { block: 0, found: 2 })
        );

        let other_format = SwapHeader::new(600, 0x2222).unwrap();
        let mut stale = device;
        assert_eq!(
            SlotTable::load(&mut stale, other_format).err(),
            Some(TableError::WrongFormat {
                block: 0,
                found: 0x1111
            })
        );

        let mut too_few = [[0u8; BLOCK_SIZE]; 2];
        assert_eq!(
            SlotTable::load(&mut too_few, header).err(),
            Some(TableError::StorageTooSmall {
                needed: 3,
                given: 2
            })
        );

        // A zero-filled (never formatted) table is refused, not read as empty.
        let mut zeros = [[0u8; BLOCK_SIZE]; 3];
        assert!(matches!(
            SlotTable::load(&mut zeros, header),
            Err(TableError::BadChecksum { block: 0, .. })
        ));
    }

    #[test]
    fn partitions_split_in_proportion_and_cover_every_slot() {
        let mut out = [Partition::default(); 3];
        Partition::split(100, &[1, 1, 1], &mut out).unwrap();
        assert_eq!(
            out,
            [
                Partition {
                    first: 0,
                    count: 34
                },
                Partition {
                    first: 34,
                    count: 33
                },
                Partition {
                    first: 67,
                    count: 33
                }
            ]
        );
        Partition::split(1000, &[8192, 0, 24576], &mut out).unwrap();
        assert_eq!(
            out,
            [
                Partition {
                    first: 0,
                    count: 250
                },
                Partition {
                    first: 250,
                    count: 0
                },
                Partition {
                    first: 250,
                    count: 750
                }
            ]
        );
        assert_eq!(out[2].device_slot(Slot::new(749)), Some(999));
        assert_eq!(out[2].device_slot(Slot::new(750)), None);
        assert_eq!(
            Partition::split(10, &[0, 0, 0], &mut out),
            Err(PartitionError::NoWeight)
        );
        assert_eq!(
            Partition::split(10, &[1], &mut out),
            Err(PartitionError::LengthMismatch)
        );
    }
}

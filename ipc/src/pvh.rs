//! The PVH boot ABI (`xen/include/public/arch-x86/hvm/start_info.h` and
//! `xen/include/public/elfnote.h`), as plain byte layouts.
//!
//! cairn meets it twice: QEMU boots the core through it, and the core boots
//! every guest through it. Entry state: 32-bit protected mode, paging off,
//! flat 4 GiB segments, `ebx` = guest-physical address of [`StartInfo`].
//! Everything here reads and writes little-endian byte slices, so it works on
//! memory of any alignment and never trusts the bytes it reads.

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const START_MAGIC: u32 = 0x336e_c578;
/// ELF note name of Xen notes.
pub const NOTE_NAME: &[u8] = b"Xen\0";
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note's payload is the 32-bit entry point.
pub const NOTE_PHYS32_ENTRY: u32 = 18;
/// Size of `struct hvm_start_info` (version 1).
pub const START_INFO_SIZE: usize = 56;
/// Size of `struct hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: usize = 24;
/// Size of `struct hvm_modlist_entry`.
pub const MODLIST_ENTRY_SIZE: usize = 32;
/// E820 type of usable RAM.
pub const MEMMAP_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const MEMMAP_RESERVED: u32 = 2;

/// `struct hvm_start_info`, version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartInfo {
    /// Must be [`START_MAGIC`].
    pub magic: u32,
    /// 0 (no memory map) or 1.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of entries at `modlist_paddr`.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line (0 = none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP (0 = none).
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version 1).
    pub memmap_paddr: u64,
    /// Number of memory map entries (version 1).
    pub memmap_entries: u32,
}

/// `struct hvm_memmap_table_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemmapEntry {
    /// First byte of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type ([`MEMMAP_RAM`], ...).
    pub kind: u32,
}

/// `struct hvm_modlist_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Physical address of its command line (0 = none).
    pub cmdline_paddr: u64,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

impl StartInfo {
    /// Decodes a start info; `None` if too short or the magic is wrong.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let info = Self {
            magic: u32_at(bytes, 0)?,
            version: u32_at(bytes, 4)?,
            flags: u32_at(bytes, 8)?,
            nr_modules: u32_at(bytes, 12)?,
            modlist_paddr: u64_at(bytes, 16)?,
            cmdline_paddr: u64_at(bytes, 24)?,
            rsdp_paddr: u64_at(bytes, 32)?,
            memmap_paddr: if u32_at(bytes, 4)? >= 1 { u64_at(bytes, 40)? } else { 0 },
            memmap_entries: if u32_at(bytes, 4)? >= 1 { u32_at(bytes, 48)? } else { 0 },
        };
        (info.magic == START_MAGIC).then_some(info)
    }

    /// Encodes into the first [`START_INFO_SIZE`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8; START_INFO_SIZE]) {
        out.fill(0);
        out[0..4].copy_from_slice(&self.magic.to_le_bytes());
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..12].copy_from_slice(&self.flags.to_le_bytes());
        out[12..16].copy_from_slice(&self.nr_modules.to_le_bytes());
        out[16..24].copy_from_slice(&self.modlist_paddr.to_le_bytes());
        out[24..32].copy_from_slice(&self.cmdline_paddr.to_le_bytes());
        out[32..40].copy_from_slice(&self.rsdp_paddr.to_le_bytes());
        out[40..48].copy_from_slice(&self.memmap_paddr.to_le_bytes());
        out[48..52].copy_from_slice(&self.memmap_entries.to_le_bytes());
    }
}

impl MemmapEntry {
    /// Decodes one entry.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Self { addr: u64_at(bytes, 0)?, size: u64_at(bytes, 8)?, kind: u32_at(bytes, 16)? })
    }

    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8; MEMMAP_ENTRY_SIZE]) {
        out.fill(0);
        out[0..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        out[16..20].copy_from_slice(&self.kind.to_le_bytes());
    }
}

impl ModlistEntry {
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8; MODLIST_ENTRY_SIZE]) {
        out.fill(0);
        out[0..8].copy_from_slice(&self.paddr.to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        out[16..24].copy_from_slice(&self.cmdline_paddr.to_le_bytes());
    }

    /// Decodes one entry.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            paddr: u64_at(bytes, 0)?,
            size: u64_at(bytes, 8)?,
            cmdline_paddr: u64_at(bytes, 16)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_round_trips_and_checks_magic() {
        let info = StartInfo {
            magic: START_MAGIC,
            version: 1,
            cmdline_paddr: 0x2000,
            memmap_paddr: 0x1040,
            memmap_entries: 2,
            ..StartInfo::default()
        };
        let mut bytes = [0u8; START_INFO_SIZE];
        info.encode(&mut bytes);
        assert_eq!(StartInfo::decode(&bytes), Some(info));
        bytes[0] ^= 1;
        assert_eq!(StartInfo::decode(&bytes), None);
        assert_eq!(StartInfo::decode(&bytes[..10]), None);
    }

    #[test]
    fn modlist_entry_round_trips() {
        let entry = ModlistEntry { paddr: 0xf0_0000, size: 21, cmdline_paddr: 0 };
        let mut bytes = [0u8; MODLIST_ENTRY_SIZE];
        entry.encode(&mut bytes);
        assert_eq!(ModlistEntry::decode(&bytes), Some(entry));
    }

    #[test]
    fn memmap_entry_round_trips() {
        let entry = MemmapEntry { addr: 0x10_0000, size: 0x80_0000, kind: MEMMAP_RAM };
        let mut bytes = [0u8; MEMMAP_ENTRY_SIZE];
        entry.encode(&mut bytes);
        assert_eq!(MemmapEntry::decode(&bytes), Some(entry));
    }
}

//! The validating ELF loader for guest kernels (PVH) and, later, server
//! images.
//!
//! An image is an allegation until [`parse_pvh`] accepts it: every header
//! field, program header and note is bounds-checked against the file, and
//! every failure is a named [`ElfError`]. Nothing here copies memory; the
//! caller places [`Segment`]s with [`PvhImage::check_placement`] and copies.

use heapless::Vec;

/// Most loadable segments an image may have.
pub const MAX_SEGMENTS: usize = 8;
const MAX_PROGRAM_HEADERS: u16 = 64;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than an ELF header.
    Truncated,
    /// Not `\x7fELF`.
    BadMagic,
    /// Not 64-bit little-endian, version 1.
    UnsupportedClass,
    /// Not an x86_64 image.
    WrongMachine,
    /// Program header table malformed or outside the file.
    BadProgramHeaders,
    /// A segment's file range is outside the file, or file size > memory size.
    BadSegment,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// No loadable segment.
    NoSegments,
    /// A note runs past its segment.
    BadNote,
    /// No `XEN_ELFNOTE_PHYS32_ENTRY` note: not a PVH kernel.
    NoPvhEntry,
    /// A segment or the entry lies outside the memory it must load into.
    OutsideMemory,
    /// A segment overlaps a range the loader reserves (e.g. the boot page)
    /// or another segment.
    OverlapsReserved,
    /// A server segment is not page-aligned.
    Misaligned,
    /// A server segment is both writable and executable.
    WritableAndExecutable,
    /// The entry point is not inside an executable segment.
    EntryNotExecutable,
}

impl ElfError {
    /// A fixed description for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "image shorter than an ELF header",
            Self::BadMagic => "not an ELF image",
            Self::UnsupportedClass => "not a 64-bit little-endian ELF",
            Self::WrongMachine => "not an x86_64 ELF",
            Self::BadProgramHeaders => "program headers malformed or outside the file",
            Self::BadSegment => "a segment lies outside the file",
            Self::TooManySegments => "too many loadable segments",
            Self::NoSegments => "no loadable segment",
            Self::BadNote => "malformed ELF note",
            Self::NoPvhEntry => "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)",
            Self::OutsideMemory => "image does not fit in the domain's memory",
            Self::OverlapsReserved => "segments overlap each other or a reserved range",
            Self::Misaligned => "segment not page-aligned",
            Self::WritableAndExecutable => "segment both writable and executable",
            Self::EntryNotExecutable => "entry point outside any executable segment",
        }
    }
}

/// A loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset of its bytes in the file.
    pub file_offset: u64,
    /// Bytes to copy from the file.
    pub file_size: u64,
    /// Bytes it occupies in memory (the rest is zero-filled).
    pub memory_size: u64,
    /// Physical load address.
    pub physical_address: u64,
    /// Virtual load address.
    pub virtual_address: u64,
    /// `p_flags`: `PF_X` = 1, `PF_W` = 2, `PF_R` = 4.
    pub flags: u32,
}

impl Segment {
    /// Whether `PF_W` is set.
    pub const fn writable(&self) -> bool {
        self.flags & 2 != 0
    }

    /// Whether `PF_X` is set.
    pub const fn executable(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// A validated PVH kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvhImage {
    /// The 32-bit physical entry point.
    pub entry: u32,
    /// Its loadable segments.
    pub segments: Vec<Segment, MAX_SEGMENTS>,
}

fn read<const N: usize>(bytes: &[u8], at: u64) -> Result<[u8; N], ElfError> {
    let start = usize::try_from(at).map_err(|_| ElfError::Truncated)?;
    bytes
        .get(start..start.checked_add(N).ok_or(ElfError::Truncated)?)
        .and_then(|slice| slice.try_into().ok())
        .ok_or(ElfError::Truncated)
}

fn u16_at(bytes: &[u8], at: u64) -> Result<u16, ElfError> {
    read::<2>(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: u64) -> Result<u32, ElfError> {
    read::<4>(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: u64) -> Result<u64, ElfError> {
    read::<8>(bytes, at).map(u64::from_le_bytes)
}

/// Finds the PVH entry in the notes between `start` and `end` of the file.
fn find_pvh_entry(image: &[u8], start: u64, end: u64) -> Result<Option<u32>, ElfError> {
    let align4 = |value: u64| value.div_ceil(4) * 4;
    let mut at = start;
    while at + 12 <= end {
        let name_size = u64::from(u32_at(image, at).map_err(|_| ElfError::BadNote)?);
        let desc_size = u64::from(u32_at(image, at + 4).map_err(|_| ElfError::BadNote)?);
        let kind = u32_at(image, at + 8).map_err(|_| ElfError::BadNote)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(align4(name_size)).ok_or(ElfError::BadNote)?;
        let next = desc_at.checked_add(align4(desc_size)).ok_or(ElfError::BadNote)?;
        if next > end {
            return Err(ElfError::BadNote);
        }
        let name = image
            .get(name_at as usize..(name_at + name_size) as usize)
            .ok_or(ElfError::BadNote)?;
        if name == ipc::pvh::NOTE_NAME && kind == ipc::pvh::NOTE_PHYS32_ENTRY {
            let entry = match desc_size {
                4 => u64::from(u32_at(image, desc_at)?),
                8 => u64_at(image, desc_at)?,
                _ => return Err(ElfError::BadNote),
            };
            return u32::try_from(entry).map(Some).map_err(|_| ElfError::OutsideMemory);
        }
        at = next;
    }
    Ok(None)
}

/// What every image kind shares: the header checks and the program headers.
struct Parsed {
    entry: u64,
    pvh_entry: Option<u32>,
    segments: Vec<Segment, MAX_SEGMENTS>,
}

fn parse_common(image: &[u8]) -> Result<Parsed, ElfError> {
    if image.len() < 64 {
        return Err(ElfError::Truncated);
    }
    if image[..4] != *b"\x7fELF" {
        return Err(ElfError::BadMagic);
    }
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little endian), EI_VERSION = 1.
    if image[4] != 2 || image[5] != 1 || image[6] != 1 {
        return Err(ElfError::UnsupportedClass);
    }
    if u16_at(image, 18)? != EM_X86_64 {
        return Err(ElfError::WrongMachine);
    }
    let entry = u64_at(image, 24)?;
    let program_header_offset = u64_at(image, 32)?;
    let program_header_size = u16_at(image, 54)?;
    let program_header_count = u16_at(image, 56)?;
    if program_header_size != 56 || program_header_count > MAX_PROGRAM_HEADERS {
        return Err(ElfError::BadProgramHeaders);
    }
    let table_end = program_header_offset
        .checked_add(u64::from(program_header_count) * 56)
        .ok_or(ElfError::BadProgramHeaders)?;
    if table_end > image.len() as u64 {
        return Err(ElfError::BadProgramHeaders);
    }
    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for number in 0..u64::from(program_header_count) {
        let header = program_header_offset + number * 56;
        let kind = u32_at(image, header)?;
        let flags = u32_at(image, header + 4)?;
        let file_offset = u64_at(image, header + 8)?;
        let virtual_address = u64_at(image, header + 16)?;
        let physical_address = u64_at(image, header + 24)?;
        let file_size = u64_at(image, header + 32)?;
        let memory_size = u64_at(image, header + 40)?;
        let file_end = file_offset.checked_add(file_size).ok_or(ElfError::BadSegment)?;
        if (kind == PT_LOAD || kind == PT_NOTE) && file_end > image.len() as u64 {
            return Err(ElfError::BadSegment);
        }
        match kind {
            PT_LOAD => {
                if file_size > memory_size
                    || physical_address.checked_add(memory_size).is_none()
                    || virtual_address.checked_add(memory_size).is_none()
                {
                    return Err(ElfError::BadSegment);
                }
                if memory_size == 0 {
                    continue;
                }
                segments
                    .push(Segment { file_offset, file_size, memory_size, physical_address, virtual_address, flags })
                    .map_err(|_| ElfError::TooManySegments)?;
            }
            PT_NOTE if pvh_entry.is_none() => pvh_entry = find_pvh_entry(image, file_offset, file_end)?,
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    Ok(Parsed { entry, pvh_entry, segments })
}

/// Validates a PVH ELF64 kernel image and returns its entry and segments.
pub fn parse_pvh(image: &[u8]) -> Result<PvhImage, ElfError> {
    let parsed = parse_common(image)?;
    let entry = parsed.pvh_entry.ok_or(ElfError::NoPvhEntry)?;
    Ok(PvhImage { entry, segments: parsed.segments })
}

/// A validated server executable, to be mapped at its virtual addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    /// The entry point (virtual).
    pub entry: u64,
    /// Its loadable segments.
    pub segments: Vec<Segment, MAX_SEGMENTS>,
}

/// Validates a server executable: every segment inside `allowed` (virtual
/// addresses), page-aligned, none both writable and executable, none
/// overlapping another, and the entry inside an executable segment.
pub fn parse_executable(image: &[u8], allowed: core::ops::Range<u64>) -> Result<Executable, ElfError> {
    let parsed = parse_common(image)?;
    for (index, segment) in parsed.segments.iter().enumerate() {
        let start = segment.virtual_address;
        let end = start + segment.memory_size;
        if start < allowed.start || end > allowed.end {
            return Err(ElfError::OutsideMemory);
        }
        if start % 4096 != segment.file_offset % 4096 || !start.is_multiple_of(4096) {
            return Err(ElfError::Misaligned);
        }
        if segment.writable() && segment.executable() {
            return Err(ElfError::WritableAndExecutable);
        }
        let page_end = |segment: &Segment| (segment.virtual_address + segment.memory_size).div_ceil(4096) * 4096;
        let overlaps = parsed.segments[..index].iter().any(|other| {
            other.virtual_address < page_end(segment) && segment.virtual_address < page_end(other)
        });
        if overlaps {
            return Err(ElfError::OverlapsReserved);
        }
    }
    let entry_executable = parsed.segments.iter().any(|segment| {
        segment.executable()
            && (segment.virtual_address..segment.virtual_address + segment.memory_size).contains(&parsed.entry)
    });
    if !entry_executable {
        return Err(ElfError::EntryNotExecutable);
    }
    Ok(Executable { entry: parsed.entry, segments: parsed.segments })
}

impl PvhImage {
    /// Checks that every segment and the entry lie inside `[0, memory_bytes)`
    /// and no segment overlaps `reserved` (a guest-physical byte range).
    pub fn check_placement(&self, memory_bytes: u64, reserved: core::ops::Range<u64>) -> Result<(), ElfError> {
        for segment in &self.segments {
            let end = segment.physical_address + segment.memory_size;
            if end > memory_bytes {
                return Err(ElfError::OutsideMemory);
            }
            if segment.physical_address < reserved.end && reserved.start < end {
                return Err(ElfError::OverlapsReserved);
            }
        }
        let entry_inside = self.segments.iter().any(|segment| {
            (segment.physical_address..segment.physical_address + segment.memory_size)
                .contains(&u64::from(self.entry))
        });
        if !entry_inside {
            return Err(ElfError::OutsideMemory);
        }
        Ok(())
    }
}

/// Test support: builds small ELF images (host only).
#[cfg(test)]
pub(crate) mod build {
    /// A minimal PVH image: one PT_LOAD of `code` at `load`, a PT_NOTE with
    /// the PVH entry note (`entry`, as `desc_size` bytes).
    pub fn pvh_image(load: u64, code: &[u8], entry: u64, desc_size: u32) -> Vec<u8> {
        image_with(load, 5, code, entry, desc_size, 0x1000)
    }

    /// An image with one PT_LOAD of `code` at `load` with `flags`, whose file
    /// offset is `code_offset`, entry `entry`, and the PVH note.
    pub fn image_with(load: u64, flags: u32, code: &[u8], entry: u64, desc_size: u32, code_offset: u64) -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&desc_size.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes()[..desc_size as usize]);
        let phoff = 64u64;
        let code_at = code_offset;
        let note_at = code_at + code.len() as u64;
        let mut image = vec![0u8; 64];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = 2;
        image[5] = 1;
        image[6] = 1;
        image[16..18].copy_from_slice(&2u16.to_le_bytes());
        image[18..20].copy_from_slice(&62u16.to_le_bytes());
        image[24..32].copy_from_slice(&entry.to_le_bytes());
        image[32..40].copy_from_slice(&phoff.to_le_bytes());
        image[54..56].copy_from_slice(&56u16.to_le_bytes());
        image[56..58].copy_from_slice(&2u16.to_le_bytes());
        let header = |kind: u32, offset: u64, addr: u64, size: u64| {
            let mut h = vec![0u8; 56];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            if kind == 1 {
                h[4..8].copy_from_slice(&flags.to_le_bytes());
            }
            h[8..16].copy_from_slice(&offset.to_le_bytes());
            h[16..24].copy_from_slice(&addr.to_le_bytes());
            h[24..32].copy_from_slice(&addr.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h[40..48].copy_from_slice(&size.to_le_bytes());
            h
        };
        image.extend(header(1, code_at, load, code.len() as u64));
        image.extend(header(4, note_at, 0, note.len() as u64));
        image.resize(code_at as usize, 0);
        image.extend_from_slice(code);
        image.extend(note);
        image
    }
}

#[cfg(test)]
mod tests {
    use super::build::pvh_image;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_a_pvh_image_with_4_or_8_byte_entry() {
        for size in [4, 8] {
            let image = pvh_image(0x10_0000, &[0x90; 32], 0x10_0010, size);
            let parsed = parse_pvh(&image).unwrap();
            assert_eq!(parsed.entry, 0x10_0010);
            assert_eq!(parsed.segments.len(), 1);
            assert_eq!(parsed.segments[0].physical_address, 0x10_0000);
            assert_eq!(parsed.check_placement(4 << 20, 0x1000..0x2000), Ok(()));
        }
    }

    #[test]
    fn rejects_bad_images_with_named_errors() {
        let good = pvh_image(0x10_0000, &[0x90; 32], 0x10_0010, 8);
        assert_eq!(parse_pvh(&good[..40]), Err(ElfError::Truncated));
        let mut bad = good.clone();
        bad[0] = 0;
        assert_eq!(parse_pvh(&bad), Err(ElfError::BadMagic));
        let mut bad = good.clone();
        bad[4] = 1;
        assert_eq!(parse_pvh(&bad), Err(ElfError::UnsupportedClass));
        let mut bad = good.clone();
        bad[18] = 3;
        assert_eq!(parse_pvh(&bad), Err(ElfError::WrongMachine));
        let mut bad = good.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse_pvh(&bad), Err(ElfError::BadProgramHeaders));
        // Segment file size pointing past the end of the file.
        let mut bad = good.clone();
        bad[64 + 32..64 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert_eq!(parse_pvh(&bad), Err(ElfError::BadSegment));
        // Note type changed: no PVH entry.
        let mut bad = good.clone();
        let note_type_at = good.len() - 8 - 4 - 4;
        bad[note_type_at] = 17;
        assert_eq!(parse_pvh(&bad), Err(ElfError::NoPvhEntry));
        // Note claiming a huge descriptor.
        let mut bad = good.clone();
        let desc_size_at = good.len() - 8 - 4 - 4 - 4;
        bad[desc_size_at..desc_size_at + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(parse_pvh(&bad), Err(ElfError::BadNote));
    }

    #[test]
    fn placement_checks_memory_and_reserved_ranges() {
        let image = parse_pvh(&pvh_image(0x10_0000, &[0x90; 32], 0x10_0010, 8)).unwrap();
        assert_eq!(image.check_placement(0x10_0010, 0..0), Err(ElfError::OutsideMemory));
        assert_eq!(image.check_placement(4 << 20, 0x10_0000..0x10_1000), Err(ElfError::OverlapsReserved));
        let outside_entry = parse_pvh(&pvh_image(0x10_0000, &[0x90; 32], 0x20_0000, 8)).unwrap();
        assert_eq!(outside_entry.check_placement(4 << 20, 0..0), Err(ElfError::OutsideMemory));
    }

    #[test]
    fn server_executables_are_checked() {
        use super::build::image_with;
        let allowed = 0x4000_0000..0x5000_0000;
        let good = image_with(0x4000_0000, 5, &[0x90; 64], 0x4000_0010, 8, 0x1000);
        let executable = parse_executable(&good, allowed.clone()).unwrap();
        assert_eq!(executable.entry, 0x4000_0010);
        assert_eq!(executable.segments[0].virtual_address, 0x4000_0000);
        let outside = image_with(0x1000, 5, &[0x90; 64], 0x1010, 8, 0x1000);
        assert_eq!(parse_executable(&outside, allowed.clone()), Err(ElfError::OutsideMemory));
        let wx = image_with(0x4000_0000, 7, &[0x90; 64], 0x4000_0010, 8, 0x1000);
        assert_eq!(parse_executable(&wx, allowed.clone()), Err(ElfError::WritableAndExecutable));
        let data_entry = image_with(0x4000_0000, 6, &[0x90; 64], 0x4000_0010, 8, 0x1000);
        assert_eq!(parse_executable(&data_entry, allowed.clone()), Err(ElfError::EntryNotExecutable));
        let misaligned = image_with(0x4000_0100, 5, &[0x90; 64], 0x4000_0110, 8, 0x1100);
        assert_eq!(parse_executable(&misaligned, allowed), Err(ElfError::Misaligned));
    }

    proptest! {
        /// Whatever the bytes, the parser returns and never panics; flipping
        /// any byte of a valid image is either accepted or named.
        #[test]
        fn never_panics_on_corruption(index in 0usize..300, value: u8) {
            let mut image = pvh_image(0x10_0000, &[0x90; 32], 0x10_0010, 8);
            let index = index % image.len();
            image[index] = value;
            let _ = parse_pvh(&image);
        }

        #[test]
        fn never_panics_on_noise(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_pvh(&bytes);
            let _ = parse_executable(&bytes, 0..u64::MAX);
        }
    }
}

//! Decoding the guest instruction behind an MMIO exit.
//!
//! Under QEMU TCG, SVM has no decode assists and no next-RIP save: a nested
//! page fault on an emulated MMIO page (the xAPIC at `0xfee0_0000`) tells only
//! the guest-physical address (EXITINFO2) and whether it was a write. To
//! emulate the access the core fetches the bytes at the guest's RIP
//! ([`fetch`]), decodes them here ([`decode`]) into an [`MmioInstruction`]
//! with named fields, performs the access on the device model, then either
//! completes a read into the guest's registers ([`MmioRead::complete`]) or
//! takes the value to write ([`MmioWrite::value`]), and advances RIP by the
//! decoded length ([`MmioInstruction::next_rip`]).
//!
//! # What is decoded, and why that set
//!
//! Only moves between memory and a general-purpose register or an immediate:
//!
//! | encoding | instruction |
//! |---|---|
//! | `88 /r`, `89 /r` | `MOV r/m, r` (8, 16, 32, 64 bits) |
//! | `8A /r`, `8B /r` | `MOV r, r/m` |
//! | `C6 /0 ib`, `C7 /0 iw/id` | `MOV r/m, imm` (`imm32` sign-extended for 64 bits) |
//! | `0F B6`, `0F B7` | `MOVZX r, r/m8` / `r/m16` |
//! | `0F BE`, `0F BF` | `MOVSX r, r/m8` / `r/m16` |
//! | `REX.W 63 /r` | `MOVSXD r64, r/m32` (64-bit mode) |
//! | `A0`–`A3` | `MOV AL/eAX, moffs` and back (64-bit mode: an 8-byte address) |
//!
//! with the prefixes REX (`40`–`4F`, 64-bit mode only), operand size (`66`),
//! address size (`67`, which changes only the length of the address bytes) and
//! the segment overrides (`2E 36 3E 26 64 65`, ignored: the hardware already
//! reports the guest-physical address). Every ModRM/SIB/displacement form is
//! measured, RIP-relative (`mod=00 rm=101`) and SIB without base
//! (`mod=00 base=101`) included, and 16-bit addressing under `67` in 32-bit
//! mode.
//!
//! That is what guests put on MMIO. Linux reaches the xAPIC through
//! `native_apic_mem_write` and `native_apic_mem_read`
//! (`arch/x86/include/asm/apic.h`): a `movl` from a register, or `xchgl` only
//! under the Pentium P54C erratum `X86_BUG_11AP`, and a 32-bit load that is
//! now `readl`. `readl`/`writel` and their `b`/`w`/`q` siblings
//! (`build_mmio_read` / `build_mmio_write` in `arch/x86/include/asm/io.h`) are
//! inline-assembly `mov`s between a register and memory, precisely so that
//! hypervisors only ever have to emulate `mov` (LKML, "x86/asm: Force
//! native_apic_mem_read to use mov", 2022: clang had folded the read into a
//! `testl` that SEV-ES's emulator could not handle). Small guests written in
//! C or Rust compile volatile stores of constants to `MOV r/m, imm`, and
//! narrow loads to `MOVZX`/`MOVSX`.
//!
//! # What is not
//!
//! String instructions (`MOVS`, `STOS`, `REP`: `F2`/`F3` are refused), any
//! read-modify-write or flag-setting instruction on MMIO (`ADD`, `OR`, `AND`,
//! `TEST`, `XCHG`, `CMPXCHG`, bit tests), SSE/AVX moves (`VEX`/`EVEX`),
//! moves involving segment or control registers, `LOCK` (which makes `MOV` an
//! invalid opcode, so the bytes cannot be what the guest executed), and 16-bit
//! code (real mode, virtual-8086, 16-bit segments). Each is a typed
//! [`DecodeError`]; the core stops the domain or injects `#UD` with it and
//! never guesses. The effective address is not computed either: the exit
//! already gives the guest-physical address.
//!
//! The decoder is total: it reads at most [`MAX_LENGTH`] bytes, has no heap,
//! and returns an error for every input it does not decode. [`fuzz_decode`]
//! is its fuzz body.

use crate::addr::{GuestPhysAddr, PAGE_SIZE};
use crate::guest_memory::{GuestMemory, GuestPaging, MemoryError};

/// The longest x86 instruction, in bytes; a longer one raises `#GP`.
pub const MAX_LENGTH: usize = 15;

/// How the guest's current code segment decodes instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionMode {
    /// 64-bit mode: long mode with `CS.L = 1`. REX prefixes exist, the
    /// default operand size is 32 and the default address size 64.
    Bits64,
    /// Protected mode, or compatibility mode, with `CS.D = 1`: default
    /// operand and address size 32.
    Bits32,
    /// Real mode, virtual-8086 mode, or a 16-bit code segment. Recognized so
    /// the core can name it; [`decode`] refuses it.
    Bits16,
}

const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_VM: u64 = 1 << 17;
/// `L` in the VMCB's packed segment attributes (descriptor bit 53).
const SEGMENT_LONG: u16 = 1 << 9;
/// `D/B` in the VMCB's packed segment attributes (descriptor bit 54).
const SEGMENT_DEFAULT_BIG: u16 = 1 << 10;

impl ExecutionMode {
    /// The mode from CR0, EFER, RFLAGS and the code segment's attributes as
    /// the VMCB packs them (descriptor bits 47:40 in 7:0, 55:52 in 11:8;
    /// AMD APM vol. 2 §15.5.1).
    pub fn from_guest_state(cr0: u64, efer: u64, rflags: u64, cs_attributes: u16) -> Self {
        if cr0 & CR0_PE == 0 {
            return Self::Bits16;
        }
        if efer & EFER_LMA != 0 {
            if cs_attributes & SEGMENT_LONG != 0 {
                return Self::Bits64;
            }
        } else if rflags & RFLAGS_VM != 0 {
            return Self::Bits16;
        }
        if cs_attributes & SEGMENT_DEFAULT_BIG != 0 {
            Self::Bits32
        } else {
            Self::Bits16
        }
    }
}

/// The sixteen general-purpose registers, in encoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Register {
    /// RAX.
    Rax,
    /// RCX.
    Rcx,
    /// RDX.
    Rdx,
    /// RBX.
    Rbx,
    /// RSP.
    Rsp,
    /// RBP.
    Rbp,
    /// RSI.
    Rsi,
    /// RDI.
    Rdi,
    /// R8.
    R8,
    /// R9.
    R9,
    /// R10.
    R10,
    /// R11.
    R11,
    /// R12.
    R12,
    /// R13.
    R13,
    /// R14.
    R14,
    /// R15.
    R15,
}

impl Register {
    /// All registers, in encoding order.
    pub const ALL: [Register; 16] = [
        Register::Rax,
        Register::Rcx,
        Register::Rdx,
        Register::Rbx,
        Register::Rsp,
        Register::Rbp,
        Register::Rsi,
        Register::Rdi,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];

    /// The register with encoding `number` (only its low four bits count).
    pub const fn from_number(number: u8) -> Self {
        Self::ALL[(number & 0xf) as usize]
    }

    /// The register's encoding, 0..=15.
    pub const fn number(self) -> usize {
        self as usize
    }
}

/// The guest's general-purpose registers, as the emulation reads and writes
/// them. The kernel backs it with the VMCB (RAX, RSP) and the saved GPRs;
/// `[u64; 16]`, indexed in encoding order, implements it for tests.
pub trait RegisterFile {
    /// The full 64-bit value of `register`.
    fn register(&self, register: Register) -> u64;
    /// Sets the full 64-bit value of `register`.
    fn set_register(&mut self, register: Register, value: u64);
}

impl RegisterFile for [u64; 16] {
    fn register(&self, register: Register) -> u64 {
        self[register.number()]
    }

    fn set_register(&mut self, register: Register, value: u64) {
        self[register.number()] = value;
    }
}

/// The width of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessSize {
    /// 8 bits.
    Byte = 1,
    /// 16 bits.
    Word = 2,
    /// 32 bits.
    Dword = 4,
    /// 64 bits.
    Qword = 8,
}

impl AccessSize {
    /// The width in bytes.
    pub const fn bytes(self) -> usize {
        self as usize
    }

    /// The mask of the low `bytes() * 8` bits.
    pub const fn mask(self) -> u64 {
        match self {
            Self::Byte => 0xff,
            Self::Word => 0xffff,
            Self::Dword => 0xffff_ffff,
            Self::Qword => u64::MAX,
        }
    }

    /// `value`'s low bits of this width, sign-extended to 64 bits.
    pub const fn sign_extend(self, value: u64) -> u64 {
        match self {
            Self::Byte => value as u8 as i8 as i64 as u64,
            Self::Word => value as u16 as i16 as i64 as u64,
            Self::Dword => value as u32 as i32 as i64 as u64,
            Self::Qword => value,
        }
    }
}

/// Which bits of a register an operand names, and so how writing it treats
/// the rest (AMD APM vol. 1 §3.1.2.3): 8- and 16-bit writes keep the other
/// bits, a 32-bit write zero-extends to 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterPart {
    /// Bits 7:0 (`AL`, `SIL`, `R8B`, ...).
    Low8,
    /// Bits 15:8: `AH`, `CH`, `DH`, `BH`, encoded as 4..=7 without a REX prefix.
    High8,
    /// Bits 15:0.
    Low16,
    /// Bits 31:0; writing clears bits 63:32.
    Low32,
    /// All 64 bits.
    Full,
}

/// A general-purpose register operand: a register and the part named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GprOperand {
    /// The register.
    pub register: Register,
    /// The bits named.
    pub part: RegisterPart,
}

impl GprOperand {
    /// The operand's value, zero-extended.
    pub fn read(&self, registers: &impl RegisterFile) -> u64 {
        let full = registers.register(self.register);
        match self.part {
            RegisterPart::Low8 => full & 0xff,
            RegisterPart::High8 => (full >> 8) & 0xff,
            RegisterPart::Low16 => full & 0xffff,
            RegisterPart::Low32 => full & 0xffff_ffff,
            RegisterPart::Full => full,
        }
    }

    /// Writes `value` (its low bits, as wide as the part) by the x86 rules:
    /// 8/16-bit parts merge, a 32-bit part zero-extends.
    pub fn write(&self, registers: &mut impl RegisterFile, value: u64) {
        let old = registers.register(self.register);
        let new = match self.part {
            RegisterPart::Low8 => (old & !0xff) | (value & 0xff),
            RegisterPart::High8 => (old & !0xff00) | ((value & 0xff) << 8),
            RegisterPart::Low16 => (old & !0xffff) | (value & 0xffff),
            RegisterPart::Low32 => value & 0xffff_ffff,
            RegisterPart::Full => value,
        };
        registers.set_register(self.register, new);
    }
}

/// How a value read from memory is widened into its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// None: the destination is as wide as the access (`MOV`).
    None,
    /// Zero-extended (`MOVZX`).
    Zero,
    /// Sign-extended (`MOVSX`, `MOVSXD`).
    Sign,
}

/// A load from MMIO into a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioRead {
    /// The register written.
    pub destination: GprOperand,
    /// The width of the memory access.
    pub size: AccessSize,
    /// How the loaded value is widened.
    pub extension: Extension,
}

impl MmioRead {
    /// `data` (the device's answer; only its low `size` bytes count) as the
    /// instruction widens it, before it is written to the destination part.
    pub fn extended(&self, data: u64) -> u64 {
        match self.extension {
            Extension::Sign => self.size.sign_extend(data),
            Extension::None | Extension::Zero => data & self.size.mask(),
        }
    }

    /// Completes the load: writes `data` (only its low `size` bytes count),
    /// widened, into the destination by the x86 merge rules.
    pub fn complete(&self, registers: &mut impl RegisterFile, data: u64) {
        self.destination.write(registers, self.extended(data));
    }
}

/// Where a store's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSource {
    /// A register.
    Register(GprOperand),
    /// An immediate, already sign-extended to the access width.
    Immediate(u64),
}

/// A store to MMIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWrite {
    /// The value stored.
    pub source: WriteSource,
    /// The width of the memory access.
    pub size: AccessSize,
}

impl MmioWrite {
    /// The value to store, in the low `size` bytes (the rest are zero).
    pub fn value(&self, registers: &impl RegisterFile) -> u64 {
        let value = match self.source {
            WriteSource::Register(operand) => operand.read(registers),
            WriteSource::Immediate(immediate) => immediate,
        };
        value & self.size.mask()
    }
}

/// The memory access an instruction makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioAccess {
    /// A load.
    Read(MmioRead),
    /// A store.
    Write(MmioWrite),
}

impl MmioAccess {
    /// The width of the access.
    pub fn size(&self) -> AccessSize {
        match self {
            Self::Read(read) => read.size,
            Self::Write(write) => write.size,
        }
    }

    /// Whether it is a store (to check against the fault's write bit).
    pub fn is_write(&self) -> bool {
        matches!(self, Self::Write(_))
    }
}

/// A decoded instruction that accesses MMIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioInstruction {
    /// Its length in bytes, 2..=15.
    pub length: u8,
    /// The mode it was decoded in.
    pub mode: ExecutionMode,
    /// The access it makes.
    pub access: MmioAccess,
}

impl MmioInstruction {
    /// The RIP after this instruction, for an instruction at `rip`. In
    /// 32-bit code the instruction pointer wraps at 4 GiB.
    pub fn next_rip(&self, rip: u64) -> u64 {
        let next = rip.wrapping_add(u64::from(self.length));
        match self.mode {
            ExecutionMode::Bits64 => next,
            ExecutionMode::Bits32 | ExecutionMode::Bits16 => next & 0xffff_ffff,
        }
    }
}

/// Why bytes were not decoded into an [`MmioInstruction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ended before the instruction did.
    Truncated,
    /// The instruction would be longer than [`MAX_LENGTH`] bytes.
    TooLong,
    /// Not an instruction this decoder emulates. `opcode` is the opcode
    /// byte, or `0x0F00 | byte` for the two-byte map.
    Unsupported {
        /// The opcode.
        opcode: u16,
    },
    /// A prefix this decoder refuses: `F2`/`F3` (REP, and XACQUIRE/XRELEASE).
    UnsupportedPrefix {
        /// The prefix byte.
        prefix: u8,
    },
    /// A `LOCK` prefix on a move: an invalid opcode on hardware.
    Lock,
    /// The operand is a register (`mod = 11`), so the instruction cannot
    /// have accessed memory.
    RegisterOperand,
    /// 16-bit code, which this decoder does not handle.
    UnsupportedMode,
}

/// Reads instruction bytes, counting them against [`MAX_LENGTH`].
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<u8, DecodeError> {
        if self.position >= MAX_LENGTH {
            return Err(DecodeError::TooLong);
        }
        let byte = *self
            .bytes
            .get(self.position)
            .ok_or(DecodeError::Truncated)?;
        self.position += 1;
        Ok(byte)
    }

    /// Reads a little-endian value of `count` (at most 8) bytes.
    fn little_endian(&mut self, count: usize) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for index in 0..count.min(8) {
            value |= u64::from(self.next()?) << (8 * index);
        }
        Ok(value)
    }
}

/// The prefixes in effect for the opcode.
#[derive(Default)]
struct Prefixes {
    operand_size: bool,
    address_size: bool,
    lock: bool,
    /// The REX byte, if one immediately precedes the opcode.
    rex: Option<u8>,
}

impl Prefixes {
    fn rex_bit(&self, bit: u8) -> bool {
        self.rex.is_some_and(|rex| rex & bit != 0)
    }
}

const REX_W: u8 = 8;
const REX_R: u8 = 4;

/// The supported instructions, by opcode.
enum Form {
    /// `88`, `89`: store a register.
    StoreRegister { byte: bool },
    /// `8A`, `8B`: load a register.
    LoadRegister { byte: bool },
    /// `C6 /0`, `C7 /0`: store an immediate.
    StoreImmediate { byte: bool },
    /// `0F B6/B7/BE/BF`, `REX.W 63`: load and widen.
    LoadExtend {
        size: AccessSize,
        extension: Extension,
    },
    /// `A0`–`A3`: the accumulator and an absolute address.
    Accumulator { byte: bool, store: bool },
}

/// Decodes the instruction at the start of `bytes` (the bytes at the guest's
/// RIP; only the first [`MAX_LENGTH`] are looked at) in `mode`.
pub fn decode(bytes: &[u8], mode: ExecutionMode) -> Result<MmioInstruction, DecodeError> {
    let long = match mode {
        ExecutionMode::Bits64 => true,
        ExecutionMode::Bits32 => false,
        ExecutionMode::Bits16 => return Err(DecodeError::UnsupportedMode),
    };
    let mut cursor = Cursor { bytes, position: 0 };
    let mut prefixes = Prefixes::default();
    let opcode = loop {
        let byte = cursor.next()?;
        match byte {
            0x66 => prefixes.operand_size = true,
            0x67 => prefixes.address_size = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            0xf0 => prefixes.lock = true,
            0xf2 | 0xf3 => return Err(DecodeError::UnsupportedPrefix { prefix: byte }),
            0x40..=0x4f if long => {
                prefixes.rex = Some(byte);
                continue;
            }
            _ => break byte,
        }
        // A REX prefix counts only directly before the opcode (AMD APM vol. 3 §1.2.7).
        prefixes.rex = None;
    };
    let form = match opcode {
        0x88 | 0x89 => Form::StoreRegister {
            byte: opcode == 0x88,
        },
        0x8a | 0x8b => Form::LoadRegister {
            byte: opcode == 0x8a,
        },
        0xc6 | 0xc7 => Form::StoreImmediate {
            byte: opcode == 0xc6,
        },
        0xa0..=0xa3 => Form::Accumulator {
            byte: opcode & 1 == 0,
            store: opcode >= 0xa2,
        },
        0x63 if long && prefixes.rex_bit(REX_W) => Form::LoadExtend {
            size: AccessSize::Dword,
            extension: Extension::Sign,
        },
        0x0f => {
            let second = cursor.next()?;
            let (size, extension) = match second {
                0xb6 => (AccessSize::Byte, Extension::Zero),
                0xb7 => (AccessSize::Word, Extension::Zero),
                0xbe => (AccessSize::Byte, Extension::Sign),
                0xbf => (AccessSize::Word, Extension::Sign),
                _ => {
                    return Err(DecodeError::Unsupported {
                        opcode: 0x0f00 | u16::from(second),
                    })
                }
            };
            Form::LoadExtend { size, extension }
        }
        _ => {
            return Err(DecodeError::Unsupported {
                opcode: u16::from(opcode),
            })
        }
    };
    if prefixes.lock {
        return Err(DecodeError::Lock);
    }

    let operand_size = if prefixes.rex_bit(REX_W) {
        AccessSize::Qword
    } else if prefixes.operand_size {
        AccessSize::Word
    } else {
        AccessSize::Dword
    };
    let sized = |byte: bool| if byte { AccessSize::Byte } else { operand_size };
    let address_16 = !long && prefixes.address_size;
    let reg_operand = |reg: u8, size: AccessSize| {
        let number = reg | if prefixes.rex_bit(REX_R) { 8 } else { 0 };
        gpr_operand(number, size, prefixes.rex.is_some())
    };

    let access = match form {
        Form::StoreRegister { byte } => {
            let size = sized(byte);
            let modrm = cursor.next()?;
            let reg = memory_operand(&mut cursor, modrm, address_16)?;
            MmioAccess::Write(MmioWrite {
                source: WriteSource::Register(reg_operand(reg, size)),
                size,
            })
        }
        Form::LoadRegister { byte } => {
            let size = sized(byte);
            let modrm = cursor.next()?;
            let reg = memory_operand(&mut cursor, modrm, address_16)?;
            MmioAccess::Read(MmioRead {
                destination: reg_operand(reg, size),
                size,
                extension: Extension::None,
            })
        }
        Form::StoreImmediate { byte } => {
            let size = sized(byte);
            let modrm = cursor.next()?;
            if (modrm >> 3) & 7 != 0 {
                // C6 /7 and C7 /7 are XABORT and XBEGIN; the rest are undefined.
                return Err(DecodeError::Unsupported {
                    opcode: u16::from(opcode),
                });
            }
            memory_operand(&mut cursor, modrm, address_16)?;
            let immediate = match size {
                AccessSize::Byte => cursor.little_endian(1)?,
                AccessSize::Word => cursor.little_endian(2)?,
                AccessSize::Dword => cursor.little_endian(4)?,
                AccessSize::Qword => AccessSize::Dword.sign_extend(cursor.little_endian(4)?),
            };
            MmioAccess::Write(MmioWrite {
                source: WriteSource::Immediate(immediate),
                size,
            })
        }
        Form::LoadExtend { size, extension } => {
            let modrm = cursor.next()?;
            let reg = memory_operand(&mut cursor, modrm, address_16)?;
            MmioAccess::Read(MmioRead {
                destination: reg_operand(reg, operand_size),
                size,
                extension,
            })
        }
        Form::Accumulator { byte, store } => {
            let address_bytes = match (long, prefixes.address_size) {
                (true, false) => 8,
                (true, true) | (false, false) => 4,
                (false, true) => 2,
            };
            cursor.little_endian(address_bytes)?;
            let size = sized(byte);
            // REX.B does not apply: the register is always AL/AX/EAX/RAX.
            let accumulator = gpr_operand(0, size, prefixes.rex.is_some());
            if store {
                MmioAccess::Write(MmioWrite {
                    source: WriteSource::Register(accumulator),
                    size,
                })
            } else {
                MmioAccess::Read(MmioRead {
                    destination: accumulator,
                    size,
                    extension: Extension::None,
                })
            }
        }
    };
    Ok(MmioInstruction {
        // The cursor never passes MAX_LENGTH (15).
        length: cursor.position as u8,
        mode,
        access,
    })
}

/// The operand named by register number `number` (0..=15) at `size`. Without
/// a REX prefix, byte registers 4..=7 are AH, CH, DH, BH; with one, they are
/// SPL, BPL, SIL, DIL.
fn gpr_operand(number: u8, size: AccessSize, rex_present: bool) -> GprOperand {
    let (number, part) = match size {
        AccessSize::Byte if !rex_present && (4..8).contains(&number) => {
            (number - 4, RegisterPart::High8)
        }
        AccessSize::Byte => (number, RegisterPart::Low8),
        AccessSize::Word => (number, RegisterPart::Low16),
        AccessSize::Dword => (number, RegisterPart::Low32),
        AccessSize::Qword => (number, RegisterPart::Full),
    };
    GprOperand {
        register: Register::from_number(number),
        part,
    }
}

/// Checks that the ModRM byte `modrm` (already read) names memory, consumes
/// its SIB byte and displacement, and returns its `reg` field (without
/// REX.R). The forms are those of AMD APM vol. 3 §1.4 (tables 1-12 to 1-15);
/// REX.B does not change them (`r13` as base still needs a displacement).
fn memory_operand(cursor: &mut Cursor<'_>, modrm: u8, address_16: bool) -> Result<u8, DecodeError> {
    let mode = modrm >> 6;
    let reg = (modrm >> 3) & 7;
    let rm = modrm & 7;
    if mode == 0b11 {
        return Err(DecodeError::RegisterOperand);
    }
    let displacement = if address_16 {
        match mode {
            0b00 if rm == 0b110 => 2, // [disp16]
            0b00 => 0,
            0b01 => 1,
            _ => 2,
        }
    } else {
        let base = if rm == 0b100 { cursor.next()? & 7 } else { rm };
        match mode {
            // rm = 101: [rip + disp32] in 64-bit mode, [disp32] otherwise;
            // SIB base = 101: [index * scale + disp32], no base.
            0b00 if base == 0b101 => 4,
            0b00 => 0,
            0b01 => 1,
            _ => 4,
        }
    };
    cursor.little_endian(displacement)?;
    Ok(reg)
}

/// Up to [`MAX_LENGTH`] instruction bytes fetched from guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstructionBytes {
    bytes: [u8; MAX_LENGTH],
    length: u8,
}

impl InstructionBytes {
    /// The bytes fetched.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.length).min(MAX_LENGTH)]
    }
}

/// Fetches up to [`MAX_LENGTH`] bytes at the guest-linear address `rip`
/// (`CS.base + RIP`, truncated to 32 bits outside 64-bit mode), translating
/// each page through the guest's own page tables.
///
/// The first page must be readable. The fetch stops early at the first later
/// page that is not: an instruction that ends before it still decodes, and one
/// that needs it gives [`DecodeError::Truncated`] (the guest changed its
/// mappings after executing it).
pub fn fetch(
    paging: &GuestPaging,
    memory: &impl GuestMemory,
    rip: u64,
) -> Result<InstructionBytes, MemoryError> {
    let mut fetched = InstructionBytes {
        bytes: [0; MAX_LENGTH],
        length: 0,
    };
    let mut done = 0usize;
    while done < MAX_LENGTH {
        let address = rip.wrapping_add(done as u64);
        let in_page = (PAGE_SIZE - (address & (PAGE_SIZE - 1))) as usize;
        let chunk = in_page.min(MAX_LENGTH - done);
        let result = paging
            .translate(memory, address)
            .and_then(|physical: GuestPhysAddr| {
                memory.read(physical, &mut fetched.bytes[done..done + chunk])
            });
        match result {
            Ok(()) => done += chunk,
            Err(error) if done == 0 => return Err(error),
            Err(_) => break,
        }
    }
    fetched.length = done as u8;
    Ok(fetched)
}

/// The fuzz body: decodes `data` in every mode and, when it decodes, checks
/// the decoder's invariants and exercises the result on a scratch register
/// file filled from `data`.
///
/// # Panics
///
/// Only when an invariant breaks: a decoded length beyond the input or 15
/// bytes, a result that depends on bytes past the instruction, a read that
/// changes anything but its destination or breaks the merge rules, or a
/// store value wider than the access.
pub fn fuzz_decode(data: &[u8]) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for &byte in data {
        seed = (seed ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut scratch = [0u64; 16];
    for (index, slot) in scratch.iter_mut().enumerate() {
        *slot =
            seed.rotate_left(index as u32 * 4) ^ (index as u64).wrapping_mul(0x0101_0101_0101_0101);
    }

    for mode in [
        ExecutionMode::Bits64,
        ExecutionMode::Bits32,
        ExecutionMode::Bits16,
    ] {
        let result = decode(data, mode);
        if mode == ExecutionMode::Bits16 {
            assert_eq!(result, Err(DecodeError::UnsupportedMode));
        }
        let Ok(instruction) = result else { continue };
        let length = usize::from(instruction.length);
        assert!((2..=MAX_LENGTH).contains(&length), "length {length}");
        assert!(
            length <= data.len(),
            "length {length} beyond {} input bytes",
            data.len()
        );
        assert_eq!(instruction.mode, mode);
        // The result depends only on the instruction's own bytes, and needs all of them.
        assert_eq!(decode(&data[..length], mode), Ok(instruction));
        assert_eq!(
            decode(&data[..length - 1], mode),
            Err(DecodeError::Truncated)
        );
        let next = instruction.next_rip(u64::MAX - 3);
        if mode == ExecutionMode::Bits32 {
            assert!(next <= 0xffff_ffff);
        }
        match instruction.access {
            MmioAccess::Read(read) => check_read(&read, &scratch, seed),
            MmioAccess::Write(write) => {
                let value = write.value(&scratch);
                assert_eq!(
                    value & !write.size.mask(),
                    0,
                    "a store wider than its access"
                );
                if let WriteSource::Register(source) = write.source {
                    assert_eq!(value, source.read(&scratch) & write.size.mask());
                }
            }
        }
    }
}

fn check_read(read: &MmioRead, scratch: &[u64; 16], data: u64) {
    let mut registers = *scratch;
    read.complete(&mut registers, data);
    let destination = read.destination.register;
    for register in Register::ALL {
        if register != destination {
            assert_eq!(
                registers.register(register),
                scratch.register(register),
                "{register:?} changed"
            );
        }
    }
    let before = scratch.register(destination);
    let after = registers.register(destination);
    let extended = read.extended(data);
    let (kept, written) = match read.destination.part {
        RegisterPart::Low8 => (!0xff, extended & 0xff),
        RegisterPart::High8 => (!0xff00, (extended & 0xff) << 8),
        RegisterPart::Low16 => (!0xffff, extended & 0xffff),
        RegisterPart::Low32 => (0, extended & 0xffff_ffff),
        RegisterPart::Full => (0, extended),
    };
    assert_eq!(after, (before & kept) | written, "{read:?} of {data:#x}");
    if read.extension == Extension::None {
        assert_eq!(read.destination.read(&registers), data & read.size.mask());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_memory::flat::FlatMemory;
    use proptest::prelude::*;
    use AccessSize::{Byte, Dword, Qword, Word};
    use ExecutionMode::{Bits16, Bits32, Bits64};
    use Register::*;
    use RegisterPart::{Full, High8, Low16, Low32, Low8};

    const fn operand(register: Register, part: RegisterPart) -> GprOperand {
        GprOperand { register, part }
    }

    const fn load(register: Register, part: RegisterPart, size: AccessSize) -> MmioAccess {
        load_extend(register, part, size, Extension::None)
    }

    const fn load_extend(
        register: Register,
        part: RegisterPart,
        size: AccessSize,
        extension: Extension,
    ) -> MmioAccess {
        MmioAccess::Read(MmioRead {
            destination: operand(register, part),
            size,
            extension,
        })
    }

    const fn store(register: Register, part: RegisterPart, size: AccessSize) -> MmioAccess {
        MmioAccess::Write(MmioWrite {
            source: WriteSource::Register(operand(register, part)),
            size,
        })
    }

    const fn store_immediate(value: u64, size: AccessSize) -> MmioAccess {
        MmioAccess::Write(MmioWrite {
            source: WriteSource::Immediate(value),
            size,
        })
    }

    /// Real encodings: each line was assembled by GNU as 2.40 (`as --64` or
    /// `as --32`, `.intel_syntax noprefix`) and the bytes copied from
    /// `objdump -d -M intel`, whose disassembly is the comment. The length
    /// of each entry is the length objdump reports.
    const ASSEMBLED: &[(ExecutionMode, &[u8], MmioAccess)] = &[
        // mov eax,DWORD PTR [rip+0xfffffffffee00300]
        (
            Bits64,
            &[0x8b, 0x05, 0x00, 0x03, 0xe0, 0xfe],
            load(Rax, Low32, Dword),
        ),
        // mov DWORD PTR ds:0xfffffffffee000b0,eax  (SIB, no base, no index)
        (
            Bits64,
            &[0x89, 0x04, 0x25, 0xb0, 0x00, 0xe0, 0xfe],
            store(Rax, Low32, Dword),
        ),
        // mov DWORD PTR ds:0xffffffffff5fb0b0,eax  (Linux's fixmap APIC_BASE)
        (
            Bits64,
            &[0x89, 0x04, 0x25, 0xb0, 0xb0, 0x5f, 0xff],
            store(Rax, Low32, Dword),
        ),
        // mov r12d,DWORD PTR [rax+0x20]
        (Bits64, &[0x44, 0x8b, 0x60, 0x20], load(R12, Low32, Dword)),
        // mov DWORD PTR [rax+0x80],0x0
        (
            Bits64,
            &[0xc7, 0x80, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            store_immediate(0, Dword),
        ),
        // mov rax,QWORD PTR [rax+0x80]
        (
            Bits64,
            &[0x48, 0x8b, 0x80, 0x80, 0x00, 0x00, 0x00],
            load(Rax, Full, Qword),
        ),
        // mov WORD PTR [rax],dx
        (Bits64, &[0x66, 0x89, 0x10], store(Rdx, Low16, Word)),
        // mov BYTE PTR [rax+0x10],ah
        (Bits64, &[0x88, 0x60, 0x10], store(Rax, High8, Byte)),
        // mov BYTE PTR [rax+0x10],sil
        (Bits64, &[0x40, 0x88, 0x70, 0x10], store(Rsi, Low8, Byte)),
        // movzx eax,BYTE PTR [rax+0x8]
        (
            Bits64,
            &[0x0f, 0xb6, 0x40, 0x08],
            load_extend(Rax, Low32, Byte, Extension::Zero),
        ),
        // movabs eax,ds:0xfee00030
        (
            Bits64,
            &[0xa1, 0x30, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00],
            load(Rax, Low32, Dword),
        ),
        // movabs ds:0xfee000b0,eax
        (
            Bits64,
            &[0xa3, 0xb0, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00],
            store(Rax, Low32, Dword),
        ),
        // movabs ds:0xfee00000000,al
        (
            Bits64,
            &[0xa2, 0x00, 0x00, 0x00, 0x00, 0xee, 0x0f, 0x00, 0x00],
            store(Rax, Low8, Byte),
        ),
        // movabs ds:0xfee00020,rax
        (
            Bits64,
            &[0x48, 0xa3, 0x20, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00],
            store(Rax, Full, Qword),
        ),
        // addr32 mov eax,ds:0x12345678
        (
            Bits64,
            &[0x67, 0xa1, 0x78, 0x56, 0x34, 0x12],
            load(Rax, Low32, Dword),
        ),
        // mov eax,DWORD PTR [eax]
        (Bits64, &[0x67, 0x8b, 0x00], load(Rax, Low32, Dword)),
        // mov QWORD PTR [rbx+0x8],0xfffffffffffffffe
        (
            Bits64,
            &[0x48, 0xc7, 0x43, 0x08, 0xfe, 0xff, 0xff, 0xff],
            store_immediate(0xffff_ffff_ffff_fffe, Qword),
        ),
        // mov QWORD PTR [r12+0x12345678],0x7fffffff
        (
            Bits64,
            &[
                0x49, 0xc7, 0x84, 0x24, 0x78, 0x56, 0x34, 0x12, 0xff, 0xff, 0xff, 0x7f,
            ],
            store_immediate(0x7fff_ffff, Qword),
        ),
        // mov WORD PTR [rdi],0x1234
        (
            Bits64,
            &[0x66, 0xc7, 0x07, 0x34, 0x12],
            store_immediate(0x1234, Word),
        ),
        // mov BYTE PTR [r13+0x0],0x7f
        (
            Bits64,
            &[0x41, 0xc6, 0x45, 0x00, 0x7f],
            store_immediate(0x7f, Byte),
        ),
        // movsx rcx,WORD PTR [r12+rsi*4+0x1000]
        (
            Bits64,
            &[0x49, 0x0f, 0xbf, 0x8c, 0xb4, 0x00, 0x10, 0x00, 0x00],
            load_extend(Rcx, Full, Word, Extension::Sign),
        ),
        // movsx edx,BYTE PTR [rbp-0x1]
        (
            Bits64,
            &[0x0f, 0xbe, 0x55, 0xff],
            load_extend(Rdx, Low32, Byte, Extension::Sign),
        ),
        // movzx r9w,WORD PTR [r8]
        (
            Bits64,
            &[0x66, 0x45, 0x0f, 0xb7, 0x08],
            load_extend(R9, Low16, Word, Extension::Zero),
        ),
        // movsxd r10,DWORD PTR [rsp+0x10]
        (
            Bits64,
            &[0x4c, 0x63, 0x54, 0x24, 0x10],
            load_extend(R10, Full, Dword, Extension::Sign),
        ),
        // mov bh,BYTE PTR [rcx]
        (Bits64, &[0x8a, 0x39], load(Rbx, High8, Byte)),
        // mov dil,BYTE PTR [rcx]
        (Bits64, &[0x40, 0x8a, 0x39], load(Rdi, Low8, Byte)),
        // mov r15b,BYTE PTR fs:[r14]
        (Bits64, &[0x64, 0x45, 0x8a, 0x3e], load(R15, Low8, Byte)),
        // mov esi,DWORD PTR [rsp]
        (Bits64, &[0x8b, 0x34, 0x24], load(Rsi, Low32, Dword)),
        // mov DWORD PTR [r13+0x0],r11d
        (Bits64, &[0x45, 0x89, 0x5d, 0x00], store(R11, Low32, Dword)),
        // mov DWORD PTR [rip+0x0],0xfee00000
        (
            Bits64,
            &[0xc7, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe0, 0xfe],
            store_immediate(0xfee0_0000, Dword),
        ),
        // mov DWORD PTR [rax*4+0x10],ecx  (SIB, index, no base)
        (
            Bits64,
            &[0x89, 0x0c, 0x85, 0x10, 0x00, 0x00, 0x00],
            store(Rcx, Low32, Dword),
        ),
        // mov ax,WORD PTR [rip+0x10]
        (
            Bits64,
            &[0x66, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00],
            load(Rax, Low16, Word),
        ),
        // mov r8,QWORD PTR [r9+r10*8+0x7f]
        (
            Bits64,
            &[0x4f, 0x8b, 0x44, 0xd1, 0x7f],
            load(R8, Full, Qword),
        ),
        // rex.W / mov ax,WORD PTR [rax]: a REX before another prefix is ignored.
        (Bits64, &[0x48, 0x66, 0x8b, 0x00], load(Rax, Low16, Word)),
        // data16 mov rax,QWORD PTR [rax]: REX.W wins over 66.
        (Bits64, &[0x66, 0x48, 0x8b, 0x00], load(Rax, Full, Qword)),
        // rex.B / es mov eax,DWORD PTR [rax]
        (Bits64, &[0x41, 0x26, 0x8b, 0x00], load(Rax, Low32, Dword)),
        // rex / mov eax,DWORD PTR [r8]: the last REX counts.
        (Bits64, &[0x40, 0x41, 0x8b, 0x00], load(Rax, Low32, Dword)),
        // 32-bit code (`as --32`).
        // mov eax,ds:0xfee00300
        (
            Bits32,
            &[0xa1, 0x00, 0x03, 0xe0, 0xfe],
            load(Rax, Low32, Dword),
        ),
        // mov DWORD PTR ds:0xfee000b0,0x0
        (
            Bits32,
            &[0xc7, 0x05, 0xb0, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00],
            store_immediate(0, Dword),
        ),
        // mov DWORD PTR [ebx+0xb0],eax
        (
            Bits32,
            &[0x89, 0x83, 0xb0, 0x00, 0x00, 0x00],
            store(Rax, Low32, Dword),
        ),
        // mov ax,WORD PTR [ebp+esi*2-0x4]
        (
            Bits32,
            &[0x66, 0x8b, 0x44, 0x75, 0xfc],
            load(Rax, Low16, Word),
        ),
        // mov BYTE PTR [esi],dh
        (Bits32, &[0x88, 0x36], store(Rdx, High8, Byte)),
        // movzx ecx,WORD PTR [edi+0x20]
        (
            Bits32,
            &[0x0f, 0xb7, 0x4f, 0x20],
            load_extend(Rcx, Low32, Word, Extension::Zero),
        ),
        // movsx eax,BYTE PTR [esp+0x4]
        (
            Bits32,
            &[0x0f, 0xbe, 0x44, 0x24, 0x04],
            load_extend(Rax, Low32, Byte, Extension::Sign),
        ),
        // mov ecx,DWORD PTR ds:0xfee00300
        (
            Bits32,
            &[0x8b, 0x0d, 0x00, 0x03, 0xe0, 0xfe],
            load(Rcx, Low32, Dword),
        ),
        // mov al,ds:0x1234
        (
            Bits32,
            &[0xa0, 0x34, 0x12, 0x00, 0x00],
            load(Rax, Low8, Byte),
        ),
        // 16-bit addressing under 67 in 32-bit code.
        // mov eax,DWORD PTR [bx+si]
        (Bits32, &[0x67, 0x8b, 0x00], load(Rax, Low32, Dword)),
        // mov WORD PTR [bp+0x0],cx
        (
            Bits32,
            &[0x67, 0x66, 0x89, 0x4e, 0x00],
            store(Rcx, Low16, Word),
        ),
        // mov eax,DWORD PTR [bp+0x12]
        (Bits32, &[0x67, 0x8b, 0x46, 0x12], load(Rax, Low32, Dword)),
        // mov eax,DWORD PTR [di+0x1234]
        (
            Bits32,
            &[0x67, 0x8b, 0x85, 0x34, 0x12],
            load(Rax, Low32, Dword),
        ),
        // mov edx,DWORD PTR ds:0x1234
        (
            Bits32,
            &[0x67, 0x8b, 0x16, 0x34, 0x12],
            load(Rdx, Low32, Dword),
        ),
        // addr16 mov eax,ds:0x1234
        (Bits32, &[0x67, 0xa1, 0x34, 0x12], load(Rax, Low32, Dword)),
    ];

    #[test]
    fn assembled_encodings_decode_with_their_length() {
        for &(mode, bytes, access) in ASSEMBLED {
            let expected = MmioInstruction {
                length: bytes.len() as u8,
                mode,
                access,
            };
            assert_eq!(decode(bytes, mode), Ok(expected), "{bytes:02x?}");
            // What follows the instruction does not matter.
            let mut padded = [0x0f; 20];
            padded[..bytes.len()].copy_from_slice(bytes);
            assert_eq!(decode(&padded, mode), Ok(expected), "{bytes:02x?} padded");
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..cut], mode),
                    Err(DecodeError::Truncated),
                    "{bytes:02x?}[..{cut}]"
                );
            }
            fuzz_decode(bytes);
        }
    }

    #[test]
    fn refused_encodings_give_typed_errors() {
        use DecodeError::*;
        let cases: &[(ExecutionMode, &[u8], DecodeError)] = &[
            // Assembled and disassembled as above.
            (Bits64, &[0xf0, 0x89, 0x00], Lock), // lock mov DWORD PTR [rax],eax
            (Bits64, &[0x89, 0xc0], RegisterOperand), // mov eax,eax
            (Bits64, &[0x48, 0xc7, 0xc0, 1, 0, 0, 0], RegisterOperand), // mov rax,0x1
            (Bits64, &[0xf3, 0xa5], UnsupportedPrefix { prefix: 0xf3 }), // rep movs
            (Bits64, &[0xa5], Unsupported { opcode: 0xa5 }), // movs
            (
                Bits64,
                &[0xf3, 0x89, 0x00],
                UnsupportedPrefix { prefix: 0xf3 },
            ), // xrelease mov
            (Bits64, &[0x01, 0x00], Unsupported { opcode: 0x01 }), // add DWORD PTR [rax],eax
            (Bits64, &[0x87, 0x00], Unsupported { opcode: 0x87 }), // xchg DWORD PTR [rax],eax
            // test DWORD PTR [rax+0x300],0x1000 (clang's folded APIC read)
            (
                Bits64,
                &[0xf7, 0x80, 0x00, 0x03, 0, 0, 0, 0x10, 0, 0],
                Unsupported { opcode: 0xf7 },
            ),
            (
                Bits64,
                &[0xc5, 0xf9, 0x6f, 0x00],
                Unsupported { opcode: 0xc5 },
            ), // vmovdqa
            (Bits64, &[0x0f, 0x10, 0x00], Unsupported { opcode: 0x0f10 }), // movups
            (
                Bits64,
                &[0xc7, 0xf8, 0, 0, 0, 0],
                Unsupported { opcode: 0xc7 },
            ), // xbegin
            (Bits64, &[0xc6, 0x08, 0x00], Unsupported { opcode: 0xc6 }),   // C6 /1: undefined
            (Bits64, &[0x63, 0x00], Unsupported { opcode: 0x63 }), // movsxd eax,DWORD PTR [rax]
            (Bits32, &[0x63, 0x00], Unsupported { opcode: 0x63 }), // arpl
            (Bits32, &[0x40, 0x8b, 0x00], Unsupported { opcode: 0x40 }), // inc eax
            (Bits32, &[0x48, 0x8b, 0x00], Unsupported { opcode: 0x48 }), // dec eax
            (Bits16, &[0x8b, 0x00], UnsupportedMode),
            (Bits64, &[], Truncated),
            (Bits64, &[0x48], Truncated),
            (Bits64, &[0x66, 0x66], Truncated),
            (Bits64, &[0x0f], Truncated),
            (Bits64, &[0x8b, 0x04], Truncated), // SIB missing
            (Bits64, &[0x8b, 0x05, 0x00, 0x03], Truncated), // disp32 cut
            (Bits64, &[0x8b, 0x04, 0x25, 0xb0], Truncated), // SIB no-base disp32 cut
            (Bits64, &[0xc7, 0x00, 0x01, 0x00], Truncated), // imm32 cut
            (Bits64, &[0xa1, 0, 0, 0, 0, 0, 0, 0], Truncated), // moffs64 cut
            (Bits64, &[0x66; 15], TooLong),
            (Bits64, &[0x66; 20], TooLong),
        ];
        for &(mode, bytes, error) in cases {
            assert_eq!(decode(bytes, mode), Err(error), "{bytes:02x?} in {mode:?}");
            fuzz_decode(bytes);
        }
    }

    #[test]
    fn length_limit_is_fifteen_bytes() {
        // 13 redundant prefixes, opcode, ModRM: exactly 15 bytes, allowed.
        let mut bytes = [0x3e; 16];
        bytes[13] = 0x8b;
        bytes[14] = 0x00;
        assert_eq!(
            decode(&bytes, Bits64),
            Ok(MmioInstruction {
                length: 15,
                mode: Bits64,
                access: load(Rax, Low32, Dword)
            })
        );
        // One prefix more needs a 16th byte.
        let mut bytes = [0x3e; 16];
        bytes[14] = 0x8b;
        bytes[15] = 0x00;
        assert_eq!(decode(&bytes, Bits64), Err(DecodeError::TooLong));
        // A displacement that would end past byte 15.
        let mut bytes = [0x3e; 16];
        bytes[10] = 0x8b;
        bytes[11] = 0x80;
        assert_eq!(decode(&bytes, Bits64), Err(DecodeError::TooLong));
    }

    #[test]
    fn reads_merge_and_extend_by_the_x86_rules() {
        let fill = 0x1111_2222_3333_4444u64;
        let cases: &[(&[u8], u64, Register, u64)] = &[
            // 32-bit destination zero-extends: mov eax,[rax+0x20]
            (&[0x8b, 0x40, 0x20], 0xdead_beef_8765_4321, Rax, 0x8765_4321),
            // 16-bit merges: mov ax,WORD PTR [rip+0x10]
            (
                &[0x66, 0x8b, 0x05, 0x10, 0, 0, 0],
                0xffff_abcd,
                Rax,
                0x1111_2222_3333_abcd,
            ),
            // 8-bit low merges: mov dil,[rcx]
            (&[0x40, 0x8a, 0x39], 0x1ee, Rdi, 0x1111_2222_3333_44ee),
            // AH-class writes bits 15:8: mov bh,[rcx]
            (&[0x8a, 0x39], 0x1ee, Rbx, 0x1111_2222_3333_ee44),
            // 64-bit: mov rax,[rax+0x80]
            (
                &[0x48, 0x8b, 0x80, 0x80, 0, 0, 0],
                0xdead_beef_8765_4321,
                Rax,
                0xdead_beef_8765_4321,
            ),
            // movzx eax,BYTE PTR [rax+0x8]
            (&[0x0f, 0xb6, 0x40, 0x08], 0xfff0, Rax, 0xf0),
            // movsx edx,BYTE PTR [rbp-0x1]: sign-extends to 32, then zero-extends.
            (&[0x0f, 0xbe, 0x55, 0xff], 0xf0, Rdx, 0xffff_fff0),
            // movsx rcx,WORD PTR [...]: sign-extends to 64.
            (
                &[0x49, 0x0f, 0xbf, 0x8c, 0xb4, 0, 0x10, 0, 0],
                0x8001,
                Rcx,
                0xffff_ffff_ffff_8001,
            ),
            // movzx r9w,WORD PTR [r8]: a 16-bit destination still merges.
            (
                &[0x66, 0x45, 0x0f, 0xb7, 0x08],
                0x8001,
                R9,
                0x1111_2222_3333_8001,
            ),
            // movsx ax,BYTE PTR [rax]: 66 0f be 00
            (&[0x66, 0x0f, 0xbe, 0x00], 0x80, Rax, 0x1111_2222_3333_ff80),
            // movsxd r10,DWORD PTR [rsp+0x10]
            (
                &[0x4c, 0x63, 0x54, 0x24, 0x10],
                0x8000_0000,
                R10,
                0xffff_ffff_8000_0000,
            ),
            // movabs al,ds:... (A0): only AL changes.
            (
                &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0],
                0x5a,
                Rax,
                0x1111_2222_3333_445a,
            ),
        ];
        for &(bytes, data, register, expected) in cases {
            let Ok(MmioInstruction {
                access: MmioAccess::Read(read),
                ..
            }) = decode(bytes, Bits64)
            else {
                panic!("{bytes:02x?} is a read");
            };
            let mut registers = [fill; 16];
            read.complete(&mut registers, data);
            assert_eq!(registers.register(register), expected, "{bytes:02x?}");
            for other in Register::ALL.into_iter().filter(|&other| other != register) {
                assert_eq!(
                    registers.register(other),
                    fill,
                    "{bytes:02x?} touched {other:?}"
                );
            }
        }
    }

    #[test]
    fn writes_take_the_source_at_the_access_width() {
        let mut registers = [0u64; 16];
        for register in Register::ALL {
            registers.set_register(register, 0x0102_0304_0506_0700 | register.number() as u64);
        }
        let cases: &[(ExecutionMode, &[u8], u64)] = &[
            (
                Bits64,
                &[0x89, 0x04, 0x25, 0xb0, 0, 0xe0, 0xfe],
                0x0506_0700,
            ), // eax
            (Bits64, &[0x88, 0x60, 0x10], 0x07),       // ah
            (Bits64, &[0x40, 0x88, 0x70, 0x10], 0x06), // sil
            (Bits64, &[0x66, 0x89, 0x10], 0x0702),     // dx
            (Bits64, &[0x45, 0x89, 0x5d, 0x00], 0x0506_070b), // r11d
            (
                Bits64,
                &[0x48, 0xa3, 0, 0, 0, 0, 0, 0, 0, 0],
                0x0102_0304_0506_0700,
            ), // rax
            (
                Bits64,
                &[0x48, 0xc7, 0x43, 0x08, 0xfe, 0xff, 0xff, 0xff],
                u64::MAX - 1,
            ),
            (Bits64, &[0x66, 0xc7, 0x07, 0x34, 0x12], 0x1234),
            (Bits64, &[0xc6, 0x00, 0xff], 0xff),
            (Bits64, &[0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], 0xffff_ffff),
            (Bits32, &[0x88, 0x36], 0x07), // dh
        ];
        for &(mode, bytes, expected) in cases {
            let Ok(MmioInstruction {
                access: MmioAccess::Write(write),
                ..
            }) = decode(bytes, mode)
            else {
                panic!("{bytes:02x?} is a write");
            };
            assert_eq!(write.value(&registers), expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn mode_from_guest_state() {
        const PE: u64 = 1;
        const LMA: u64 = 1 << 10;
        const VM: u64 = 1 << 17;
        const CODE64: u16 = 0x29b; // present, code, L
        const CODE32: u16 = 0x49b; // present, code, D
        const CODE16: u16 = 0x09b;
        assert_eq!(ExecutionMode::from_guest_state(PE, LMA, 0, CODE64), Bits64);
        assert_eq!(
            ExecutionMode::from_guest_state(PE, LMA, 0, CODE32),
            Bits32,
            "compatibility mode"
        );
        assert_eq!(ExecutionMode::from_guest_state(PE, LMA, 0, CODE16), Bits16);
        assert_eq!(ExecutionMode::from_guest_state(PE, 0, 0, CODE32), Bits32);
        assert_eq!(
            ExecutionMode::from_guest_state(PE, 0, 0, CODE64),
            Bits16,
            "L without LMA"
        );
        assert_eq!(
            ExecutionMode::from_guest_state(PE, 0, VM, CODE32),
            Bits16,
            "virtual-8086"
        );
        assert_eq!(
            ExecutionMode::from_guest_state(0, 0, 0, CODE32),
            Bits16,
            "real mode"
        );
    }

    #[test]
    fn next_rip_wraps_in_32_bit_code() {
        let bytes = [0x8b, 0x05, 0x00, 0x03, 0xe0, 0xfe];
        let long = decode(&bytes, Bits64).unwrap();
        assert_eq!(long.next_rip(0xffff_ffff_8100_0000), 0xffff_ffff_8100_0006);
        assert_eq!(long.next_rip(0xffff_fffe), 0x1_0000_0004);
        let legacy = decode(&bytes, Bits32).unwrap();
        assert_eq!(legacy.next_rip(0xffff_fffe), 4);
    }

    /// Long-mode tables mapping virtual 0x5000 to physical 0x8000 and
    /// virtual 0x6000 to physical 0x7000, so a fetch across 0x6000 must
    /// translate page by page.
    fn split_pages() -> (FlatMemory, GuestPaging) {
        let mut memory = FlatMemory(vec![0; 0x9000]);
        for (at, entry) in [
            (0x1000u64, 0x2003u64),
            (0x2000, 0x3003),
            (0x3000, 0x4003),
            (0x4028, 0x8003),
            (0x4030, 0x7003),
        ] {
            memory
                .write(GuestPhysAddr::new_truncate(at), &entry.to_le_bytes())
                .unwrap();
        }
        let paging = GuestPaging {
            cr0: (1 << 31) | 1,
            cr3: 0x1000,
            cr4: 1 << 5,
            efer: (1 << 10) | (1 << 8),
        };
        (memory, paging)
    }

    #[test]
    fn fetch_follows_each_page_and_stops_at_an_unmapped_one() {
        let (mut memory, paging) = split_pages();
        // mov eax,[rip+disp32], split 3 + 3 across the boundary.
        memory
            .write(GuestPhysAddr::new_truncate(0x8ffd), &[0x8b, 0x05, 0x00])
            .unwrap();
        memory
            .write(GuestPhysAddr::new_truncate(0x7000), &[0x03, 0xe0, 0xfe])
            .unwrap();
        let fetched = fetch(&paging, &memory, 0x5ffd).unwrap();
        assert_eq!(fetched.as_slice().len(), MAX_LENGTH);
        assert_eq!(decode(fetched.as_slice(), Bits64).unwrap().length, 6);
        assert_eq!(
            &fetched.as_slice()[..6],
            &[0x8b, 0x05, 0x00, 0x03, 0xe0, 0xfe]
        );

        // Virtual 0x6000 -> 0x7000; 0x7000 is followed by unmapped 0x7000+0x1000.
        memory
            .write(
                GuestPhysAddr::new_truncate(0x7ffc),
                &[0x8b, 0x40, 0x20, 0x90],
            )
            .unwrap();
        let fetched = fetch(&paging, &memory, 0x6ffc).unwrap();
        assert_eq!(fetched.as_slice(), &[0x8b, 0x40, 0x20, 0x90]);
        assert_eq!(decode(fetched.as_slice(), Bits64).unwrap().length, 3);
        memory
            .write(
                GuestPhysAddr::new_truncate(0x7ffc),
                &[0x8b, 0x80, 0x00, 0x01],
            )
            .unwrap();
        let fetched = fetch(&paging, &memory, 0x6ffc).unwrap();
        assert_eq!(
            decode(fetched.as_slice(), Bits64),
            Err(DecodeError::Truncated)
        );

        // The first page must be there.
        assert_eq!(
            fetch(&paging, &memory, 0x7000),
            Err(MemoryError::NotPresent(0x7000))
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..=15)) {
            fuzz_decode(&bytes);
            for mode in [Bits64, Bits32] {
                if let Ok(instruction) = decode(&bytes, mode) {
                    let length = usize::from(instruction.length);
                    prop_assert!(length <= bytes.len() && length <= MAX_LENGTH);
                }
            }
        }

        /// Mostly-valid instructions: prefixes, a supported opcode, then
        /// random ModRM, SIB, displacement and immediate bytes.
        #[test]
        fn near_valid_bytes_decode_consistently(
            prefixes in proptest::collection::vec(prop_oneof![
                Just(0x66u8), Just(0x67), Just(0x2e), Just(0x64), Just(0x65),
                Just(0xf0), 0x40u8..=0x4f,
            ], 0..4),
            opcode in prop_oneof![
                Just(vec![0x88u8]), Just(vec![0x89]), Just(vec![0x8a]), Just(vec![0x8b]),
                Just(vec![0xc6]), Just(vec![0xc7]), Just(vec![0x63]), Just(vec![0xa1]),
                Just(vec![0xa2]), Just(vec![0x0f, 0xb6]), Just(vec![0x0f, 0xb7]),
                Just(vec![0x0f, 0xbe]), Just(vec![0x0f, 0xbf]),
            ],
            tail in proptest::collection::vec(any::<u8>(), 0..14),
        ) {
            let mut bytes = prefixes;
            bytes.extend(opcode);
            bytes.extend(tail);
            fuzz_decode(&bytes);
        }
    }
}

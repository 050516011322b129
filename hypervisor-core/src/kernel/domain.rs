//! Building a domain from its manifest entry: guest memory and its nested
//! page table, the kernel image loaded from the boot bundle, the PVH start
//! info, vCPU 0's VMCB in the PVH entry state, and the VMCBs of secondary
//! vCPUs in the 64-bit state the guest gave with `VCPUOP_initialise`.

use hypervisor_core::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use hypervisor_core::elf::{self, ElfError};
use hypervisor_core::frame::FrameAllocator;
use hypervisor_core::guest_memory::GuestMemory;
use hypervisor_core::paging::{EntryFlags, MapError, PageSize, PageTable};
use hypervisor_core::vcpu::start_rflags;
use ipc::boot::DomainSpec;
use ipc::hypercall::HvmContext64;
use ipc::pvh::{MemmapEntry, StartInfo, MEMMAP_ENTRY_SIZE, MEMMAP_RAM, START_INFO_SIZE, START_MAGIC};

use crate::arch::memory::OwnedFrames;
use crate::arch::svm::{offset, GuestRegisters, VmcbSegment, Vmcb};
use super::vcpu::{DomainMemory, Vcpu};

/// Guest-physical page that holds the start info, memory map and command line.
pub const BOOT_INFO_PAGE: u64 = 0x1000;
const MEMMAP_OFFSET: u64 = 0x40;
const MODLIST_OFFSET: u64 = 0x80;
const CMDLINE_OFFSET: u64 = 0x100;

/// Why a domain could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// The kernel image was refused.
    Image(ElfError),
    /// Not enough free frames for its memory or tables.
    OutOfMemory,
    /// A nested page table mapping failed.
    Mapping(MapError),
    /// The ramdisk does not fit above the kernel.
    RamdiskOverlap,
}

impl BuildError {
    /// A fixed description.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Image(error) => error.reason(),
            Self::OutOfMemory => "not enough free memory for the domain",
            Self::Mapping(_) => "nested page table mapping failed",
            Self::RamdiskOverlap => "ramdisk does not fit between the kernel and the end of memory",
        }
    }
}

impl From<MapError> for BuildError {
    fn from(error: MapError) -> Self {
        match error {
            MapError::OutOfFrames => Self::OutOfMemory,
            other => Self::Mapping(other),
        }
    }
}

/// Allocates `bytes` of zeroed guest memory at guest-physical 0 and maps it
/// read/write/execute in a new nested page table.
pub fn build_memory(frames: &mut FrameAllocator<'_>, bytes: u64) -> Result<DomainMemory, BuildError> {
    let mut memory = OwnedFrames;
    let npt = PageTable::new(&mut memory, frames)?;
    let flags = EntryFlags::WRITABLE.with(EntryFlags::USER);
    let mut address = 0;
    while address < bytes {
        let frame = frames.allocate().ok_or(BuildError::OutOfMemory)?;
        memory.fill(frame, 0);
        npt.map(&mut memory, frames, address, frame, PageSize::Size4KiB, flags)?;
        address += PAGE_SIZE;
    }
    Ok(DomainMemory::new(npt))
}

fn write_guest(memory: &mut DomainMemory, address: u64, data: &[u8]) -> Result<(), BuildError> {
    memory
        .write(GuestPhysAddr::new_truncate(address), data)
        .map_err(|_| BuildError::Image(ElfError::OutsideMemory))
}

/// Loads a validated PVH image (and its ramdisk, at the top of memory, as
/// module 0) and writes the start info. Returns the entry point.
pub fn load_kernel(
    memory: &mut DomainMemory,
    spec: &DomainSpec,
    image: &[u8],
    ramdisk: Option<&[u8]>,
    memory_bytes: u64,
) -> Result<u32, BuildError> {
    let pvh = elf::parse_pvh(image).map_err(BuildError::Image)?;
    pvh.check_placement(memory_bytes, BOOT_INFO_PAGE..BOOT_INFO_PAGE + PAGE_SIZE)
        .map_err(BuildError::Image)?;
    for segment in &pvh.segments {
        // `parse_pvh` checked these ranges lie inside the image.
        let start = segment.file_offset as usize;
        let bytes = image.get(start..start + segment.file_size as usize).unwrap_or(&[]);
        write_guest(memory, segment.physical_address, bytes)?;
    }
    let mut memmap = [0u8; MEMMAP_ENTRY_SIZE];
    MemmapEntry { addr: 0, size: memory_bytes, kind: MEMMAP_RAM }.encode(&mut memmap);
    write_guest(memory, BOOT_INFO_PAGE + MEMMAP_OFFSET, &memmap)?;
    write_guest(memory, BOOT_INFO_PAGE + CMDLINE_OFFSET, spec.cmdline.as_bytes())?;
    write_guest(memory, BOOT_INFO_PAGE + CMDLINE_OFFSET + spec.cmdline.len() as u64, &[0])?;
    let mut nr_modules = 0;
    if let Some(bytes) = ramdisk {
        let kernel_end = pvh.segments.iter().map(|segment| segment.physical_address + segment.memory_size).max().unwrap_or(0);
        let start = memory_bytes.saturating_sub(bytes.len() as u64) & !(PAGE_SIZE - 1);
        if start < kernel_end.max(BOOT_INFO_PAGE + PAGE_SIZE) {
            return Err(BuildError::RamdiskOverlap);
        }
        write_guest(memory, start, bytes)?;
        let mut entry = [0u8; ipc::pvh::MODLIST_ENTRY_SIZE];
        ipc::pvh::ModlistEntry { paddr: start, size: bytes.len() as u64, cmdline_paddr: 0 }.encode(&mut entry);
        write_guest(memory, BOOT_INFO_PAGE + MODLIST_OFFSET, &entry)?;
        nr_modules = 1;
    }
    let mut start_info = [0u8; START_INFO_SIZE];
    StartInfo {
        magic: START_MAGIC,
        version: 1,
        nr_modules,
        modlist_paddr: if nr_modules > 0 { BOOT_INFO_PAGE + MODLIST_OFFSET } else { 0 },
        cmdline_paddr: BOOT_INFO_PAGE + CMDLINE_OFFSET,
        memmap_paddr: BOOT_INFO_PAGE + MEMMAP_OFFSET,
        memmap_entries: 1,
        ..StartInfo::default()
    }
    .encode(&mut start_info);
    write_guest(memory, BOOT_INFO_PAGE, &start_info)?;
    Ok(pvh.entry)
}

/// Intercepts (AMD APM vol. 2, appendix B, VMCB offsets 0x0C and 0x10).
const INTERCEPT_MISC1: u32 = (1 << 0) // INTR
    | (1 << 1)  // NMI
    | (1 << 4)  // VINTR: exits only while V_IRQ is set (the local APIC's interrupt window)
    | (1 << 18) // CPUID
    | (1 << 22) // INVD
    | (1 << 24) // HLT
    | (1 << 27) // IOIO_PROT
    | (1 << 28) // MSR_PROT
    | (1 << 31); // SHUTDOWN
const INTERCEPT_MISC2: u32 = 0x7f; // VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT
const V_INTR_MASKING: u64 = 1 << 24;

/// Shared permission maps: every port and every MSR but the VMCB-backed ones
/// exit.
#[derive(Debug, Clone, Copy)]
pub struct PermissionMaps {
    /// The I/O permission map (12 KiB).
    pub io: HostPhysAddr,
    /// The MSR permission map (8 KiB).
    pub msr: HostPhysAddr,
}

impl PermissionMaps {
    /// Allocates and fills both maps.
    pub fn new(frames: &mut FrameAllocator<'_>) -> Option<Self> {
        let io = frames.allocate_contiguous(3, 1)?;
        let msr = frames.allocate_contiguous(2, 1)?;
        let mut memory = OwnedFrames;
        for page in 0..3 {
            memory.fill(HostPhysAddr::new_truncate(io.as_u64() + page * PAGE_SIZE), 0xff);
        }
        let mut map = [0u8; 8192];
        hypervisor_core::msr::fill_permission_map(&mut map);
        for (page, chunk) in map.chunks_exact(PAGE_SIZE as usize).enumerate() {
            memory.write(HostPhysAddr::new_truncate(msr.as_u64() + page as u64 * PAGE_SIZE), 0, chunk);
        }
        Some(Self { io, msr })
    }
}

/// The control area every guest VMCB shares: cairn's intercepts, the
/// permission maps, the ASID (flushed at the first VMRUN), virtual interrupt
/// masking and the domain's nested page table.
fn init_controls(vmcb: &mut Vmcb, maps: &PermissionMaps, npt: &PageTable, asid: u32) {
    vmcb.write_u32(offset::INTERCEPT_MISC1, INTERCEPT_MISC1);
    vmcb.write_u32(offset::INTERCEPT_MISC2, INTERCEPT_MISC2);
    vmcb.write_u64(offset::IOPM_BASE, maps.io.as_u64());
    vmcb.write_u64(offset::MSRPM_BASE, maps.msr.as_u64());
    vmcb.write_u32(offset::ASID, asid);
    vmcb.write_u8(offset::TLB_CONTROL, 1);
    vmcb.write_u64(offset::INTERRUPT_CONTROL, V_INTR_MASKING);
    vmcb.write_u64(offset::NESTED_CONTROL, 1);
    vmcb.write_u64(offset::NESTED_CR3, npt.root().as_u64());
}

/// Selector of the flat code segment a vCPU starts with.
const CODE_SELECTOR: u16 = 0x08;
/// Selector of the flat data segments a vCPU starts with.
const DATA_SELECTOR: u16 = 0x10;
/// Attributes of a flat 32-bit code segment (G, D, P, S, type 0xb).
const CODE32_ATTRIBUTES: u16 = 0xc9b;
/// Attributes of a flat 64-bit code segment (G, L, P, S, type 0xb).
const CODE64_ATTRIBUTES: u16 = 0xa9b;
/// Attributes of a flat data segment (G, B, P, S, type 0x3).
const DATA_ATTRIBUTES: u16 = 0xc93;

/// The guest state every vCPU starts with whatever its mode: flat segments
/// (code with `code_attributes`), an empty TR and LDTR, GDTR and IDTR with
/// base 0 and limit `table_limit` (the guest loads its own), the reset
/// debug registers and PAT.
fn init_common_state(vmcb: &mut Vmcb, code_attributes: u16, table_limit: u32) {
    let flat = |selector: u16, attributes: u16| VmcbSegment { selector, attributes, limit: 0xffff_ffff, base: 0 };
    vmcb.set_segment(offset::CS, flat(CODE_SELECTOR, code_attributes));
    for data in [offset::DS, offset::ES, offset::SS, offset::FS, offset::GS] {
        vmcb.set_segment(data, flat(DATA_SELECTOR, DATA_ATTRIBUTES));
    }
    vmcb.set_segment(offset::TR, VmcbSegment { selector: 0, attributes: 0x8b, limit: 0x67, base: 0 });
    vmcb.set_segment(offset::LDTR, VmcbSegment { selector: 0, attributes: 0x82, limit: 0xffff, base: 0 });
    vmcb.set_segment(offset::GDTR, VmcbSegment { selector: 0, attributes: 0, limit: table_limit, base: 0 });
    vmcb.set_segment(offset::IDTR, VmcbSegment { selector: 0, attributes: 0, limit: table_limit, base: 0 });
    vmcb.write_u64(offset::DR6, 0xffff_0ff0);
    vmcb.write_u64(offset::DR7, 0x400);
    vmcb.write_u64(offset::G_PAT, 0x0007_0406_0007_0406);
}

/// Puts `vmcb` into the PVH entry state: 32-bit protected mode, paging off,
/// flat segments, `rbx` = start info, with cairn's intercepts and the given
/// nested page table and ASID.
pub fn init_vmcb(vmcb: &mut Vmcb, registers: &mut GuestRegisters, maps: &PermissionMaps, npt: &PageTable, asid: u32, entry: u64) {
    init_controls(vmcb, maps, npt, asid);
    init_common_state(vmcb, CODE32_ATTRIBUTES, 0xffff);
    vmcb.write_u64(offset::CR0, 0x11); // PE | ET
    vmcb.write_u64(offset::CR3, 0);
    vmcb.write_u64(offset::CR4, 0);
    vmcb.write_u64(offset::EFER, hypervisor_core::msr::EFER_SVME);
    vmcb.write_u64(offset::RFLAGS, 0x2);
    vmcb.write_u64(offset::RIP, entry);
    vmcb.write_u64(offset::RSP, 0);
    vmcb.write_u64(offset::RAX, 0);
    *registers = GuestRegisters { rbx: BOOT_INFO_PAGE, ..GuestRegisters::default() };
}

/// Puts `vmcb` into the 64-bit start state of `VCPUOP_initialise`
/// (`VCPU_HVM_MODE_64B`): long mode with a flat 64-bit code segment and flat
/// data segments, GDTR and IDTR zero, CR0, CR3, CR4 and EFER (plus SVME)
/// from `context`, RFLAGS cleaned by [`start_rflags`] (bit 1 set, IF clear),
/// RIP, RSP and the general-purpose registers from `context` (R8-R15 zero),
/// with cairn's intercepts and the given nested page table and ASID.
/// `context` must have passed `hypervisor_core::vcpu::check_start_context`
/// (the hypercall handler checks it before recording it).
pub fn init_vmcb_long_mode(vmcb: &mut Vmcb, registers: &mut GuestRegisters, maps: &PermissionMaps, npt: &PageTable, asid: u32, context: &HvmContext64) {
    init_controls(vmcb, maps, npt, asid);
    init_common_state(vmcb, CODE64_ATTRIBUTES, 0);
    vmcb.write_u64(offset::CR0, context.cr0);
    vmcb.write_u64(offset::CR3, context.cr3);
    vmcb.write_u64(offset::CR4, context.cr4);
    vmcb.write_u64(offset::EFER, context.efer | hypervisor_core::msr::EFER_SVME);
    vmcb.write_u64(offset::RFLAGS, start_rflags(context.rflags));
    vmcb.write_u64(offset::RIP, context.rip);
    vmcb.write_u64(offset::RSP, context.rsp);
    vmcb.write_u64(offset::RAX, context.rax);
    *registers = GuestRegisters {
        rbx: context.rbx,
        rcx: context.rcx,
        rdx: context.rdx,
        rsi: context.rsi,
        rdi: context.rdi,
        rbp: context.rbp,
        ..GuestRegisters::default()
    };
}

/// A vCPU around a prepared VMCB: timers off, nothing pending, its local
/// APIC in reset state with APIC ID `index`.
fn new_vcpu(vmcb: Vmcb, registers: GuestRegisters, domain: usize, index: u8) -> Vcpu {
    Vcpu {
        vmcb,
        registers,
        domain,
        index,
        timer: None,
        run_ticks: 0,
        wake_at: None,
        poller: Default::default(),
        halt: None,
        wake_latency: Default::default(),
        wake_reported: false,
        page_wait: None,
        tlb_seen: 0,
        apic: super::apic::VcpuApic::new(index),
    }
}

/// Builds vCPU 0 of a domain.
pub fn build_boot_vcpu(frames: &mut FrameAllocator<'_>, maps: &PermissionMaps, memory: &DomainMemory, domain: usize, asid: u32, entry: u32) -> Result<Vcpu, BuildError> {
    let mut vmcb = Vmcb::new(frames).ok_or(BuildError::OutOfMemory)?;
    let mut registers = GuestRegisters::default();
    init_vmcb(&mut vmcb, &mut registers, maps, &memory.npt, asid, u64::from(entry));
    Ok(new_vcpu(vmcb, registers, domain, 0))
}

/// Builds secondary vCPU `index` of domain `domain` from the start state the
/// guest gave with `VCPUOP_initialise` (what
/// `DomainDevices::take_start_request` returns), in 64-bit mode; see
/// [`init_vmcb_long_mode`]. The caller makes it runnable (and calls
/// `BringUp::start_failed` if this fails).
// The SMP run loop, which takes the start requests, is its caller.
pub fn build_secondary_vcpu(
    frames: &mut FrameAllocator<'_>,
    maps: &PermissionMaps,
    memory: &DomainMemory,
    domain: usize,
    index: u8,
    asid: u32,
    context: &HvmContext64,
) -> Result<Vcpu, BuildError> {
    let mut vmcb = Vmcb::new(frames).ok_or(BuildError::OutOfMemory)?;
    let mut registers = GuestRegisters::default();
    init_vmcb_long_mode(&mut vmcb, &mut registers, maps, &memory.npt, asid, context);
    Ok(new_vcpu(vmcb, registers, domain, index))
}

//! Reading a guest's memory on its behalf: guest-physical access through a
//! trait, and guest-virtual addresses translated by walking the guest's own
//! page tables (hypercall arguments are guest-virtual pointers).
//!
//! The walk follows the AMD64 APM vol. 2 §5: paging off (identity), 32-bit
//! two-level (with 4 MiB pages under CR4.PSE), PAE three-level, and long-mode
//! four-level (2 MiB and 1 GiB pages). Every guest page-table read goes
//! through [`GuestMemory`], so a table pointing outside the guest's memory
//! is a fault, never an access to someone else's memory.

use crate::addr::{GuestPhysAddr, PAGE_SIZE};

/// A guest-physical access that could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryError {
    /// The address is not backed by the guest's memory.
    Unmapped(GuestPhysAddr),
    /// The guest's page tables do not map the virtual address.
    NotPresent(u64),
    /// The frame is guest RAM but not accessible right now: paged out, being
    /// paged in or out, or given back. The access can be retried once the
    /// core has brought the frame back.
    NotResident(GuestPhysAddr),
}

/// What became of a frame the guest asked to give back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Given back: its host frame (or its swap slot) is freed.
    Released,
    /// Not a frame the guest holds (outside its memory, never pageable, or
    /// already given back).
    Invalid,
    /// This memory cannot give frames back.
    Unsupported,
}

/// A guest's physical memory, as the core may touch it.
pub trait GuestMemory {
    /// Reads `buffer.len()` bytes at `address` (may cross pages).
    fn read(&self, address: GuestPhysAddr, buffer: &mut [u8]) -> Result<(), MemoryError>;
    /// Writes `data` at `address` (may cross pages).
    fn write(&mut self, address: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError>;

    /// Gives guest frame `gfn` back (`XENMEM_decrease_reservation`).
    fn release(&mut self, gfn: u64) -> Release {
        let _ = gfn;
        Release::Unsupported
    }

    /// Reads a little-endian `u64`.
    fn read_u64(&self, address: GuestPhysAddr) -> Result<u64, MemoryError> {
        let mut bytes = [0u8; 8];
        self.read(address, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Reads a little-endian `u32`.
    fn read_u32(&self, address: GuestPhysAddr) -> Result<u32, MemoryError> {
        let mut bytes = [0u8; 4];
        self.read(address, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }
}

/// The control registers that decide how a guest translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestPaging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

fn gpa(address: u64) -> GuestPhysAddr {
    GuestPhysAddr::new_truncate(address)
}

impl GuestPaging {
    /// Translates a guest-virtual address to guest-physical.
    pub fn translate(&self, memory: &impl GuestMemory, virtual_address: u64) -> Result<GuestPhysAddr, MemoryError> {
        let not_present = MemoryError::NotPresent(virtual_address);
        if self.cr0 & CR0_PG == 0 {
            let width_mask = if self.efer & EFER_LMA != 0 { u64::MAX } else { 0xffff_ffff };
            return Ok(gpa(virtual_address & width_mask));
        }
        if self.efer & EFER_LMA != 0 {
            // Long mode: the address must be canonical (48-bit).
            let upper = virtual_address >> 47;
            if upper != 0 && upper != 0x1_ffff {
                return Err(not_present);
            }
            let mut table = self.cr3 & ADDRESS_MASK;
            for level in (1..=4u32).rev() {
                let shift = 12 + 9 * (level - 1);
                let index = (virtual_address >> shift) & 0x1ff;
                let entry = memory.read_u64(gpa(table + index * 8))?;
                if entry & PRESENT == 0 {
                    return Err(not_present);
                }
                if level == 1 || (level <= 3 && entry & LARGE != 0) {
                    let page_mask = (1u64 << shift) - 1;
                    return Ok(gpa((entry & ADDRESS_MASK & !page_mask) | (virtual_address & page_mask)));
                }
                table = entry & ADDRESS_MASK;
            }
            return Err(not_present);
        }
        let virtual_address = virtual_address & 0xffff_ffff;
        if self.cr4 & CR4_PAE != 0 {
            let pdpte = memory.read_u64(gpa((self.cr3 & 0xffff_ffe0) + (virtual_address >> 30) * 8))?;
            if pdpte & PRESENT == 0 {
                return Err(not_present);
            }
            let pde = memory.read_u64(gpa((pdpte & ADDRESS_MASK) + ((virtual_address >> 21) & 0x1ff) * 8))?;
            if pde & PRESENT == 0 {
                return Err(not_present);
            }
            if pde & LARGE != 0 {
                return Ok(gpa((pde & ADDRESS_MASK & !0x1f_ffff) | (virtual_address & 0x1f_ffff)));
            }
            let pte = memory.read_u64(gpa((pde & ADDRESS_MASK) + ((virtual_address >> 12) & 0x1ff) * 8))?;
            if pte & PRESENT == 0 {
                return Err(not_present);
            }
            return Ok(gpa((pte & ADDRESS_MASK) | (virtual_address & 0xfff)));
        }
        let pde = u64::from(memory.read_u32(gpa((self.cr3 & 0xffff_f000) + (virtual_address >> 22) * 4))?);
        if pde & PRESENT == 0 {
            return Err(not_present);
        }
        if pde & LARGE != 0 && self.cr4 & CR4_PSE != 0 {
            // 4 MiB page: bits 31:22 of the address, plus PSE-36 bits 20:13 as 39:32.
            let base = (pde & 0xffc0_0000) | ((pde & 0x001f_e000) << 19);
            return Ok(gpa(base | (virtual_address & 0x3f_ffff)));
        }
        let pte = u64::from(memory.read_u32(gpa((pde & 0xffff_f000) + ((virtual_address >> 12) & 0x3ff) * 4))?);
        if pte & PRESENT == 0 {
            return Err(not_present);
        }
        Ok(gpa((pte & 0xffff_f000) | (virtual_address & 0xfff)))
    }

    /// Reads `buffer.len()` bytes at a guest-virtual address, page by page.
    pub fn read_virtual(&self, memory: &impl GuestMemory, virtual_address: u64, buffer: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0;
        while done < buffer.len() {
            let address = virtual_address.wrapping_add(done as u64);
            let in_page = (PAGE_SIZE - (address & (PAGE_SIZE - 1))) as usize;
            let chunk = in_page.min(buffer.len() - done);
            let physical = self.translate(memory, address)?;
            memory.read(physical, &mut buffer[done..done + chunk])?;
            done += chunk;
        }
        Ok(())
    }
}

/// Test support: a flat guest memory of fixed size.
#[cfg(test)]
pub(crate) mod flat {
    use super::*;

    pub struct FlatMemory(pub Vec<u8>);

    impl GuestMemory for FlatMemory {
        fn read(&self, address: GuestPhysAddr, buffer: &mut [u8]) -> Result<(), MemoryError> {
            let start = address.as_u64() as usize;
            let source = self.0.get(start..start + buffer.len()).ok_or(MemoryError::Unmapped(address))?;
            buffer.copy_from_slice(source);
            Ok(())
        }
        fn write(&mut self, address: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError> {
            let start = address.as_u64() as usize;
            let target = self.0.get_mut(start..start + data.len()).ok_or(MemoryError::Unmapped(address))?;
            target.copy_from_slice(data);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::flat::FlatMemory;
    use super::*;

    fn put64(memory: &mut FlatMemory, at: u64, value: u64) {
        memory.write(gpa(at), &value.to_le_bytes()).unwrap();
    }

    #[test]
    fn unpaged_is_identity_and_32bit_wraps() {
        let memory = FlatMemory(vec![0; 4096]);
        let paging = GuestPaging::default();
        assert_eq!(paging.translate(&memory, 0x1_0000_1234).unwrap(), gpa(0x1234));
    }

    #[test]
    fn long_mode_walk_with_4k_2m_and_faults() {
        let mut memory = FlatMemory(vec![0; 0x10_0000]);
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000.
        put64(&mut memory, 0x1000, 0x2003);
        put64(&mut memory, 0x2000, 0x3003);
        put64(&mut memory, 0x3000, 0x4003);
        put64(&mut memory, 0x3008, 0x20_0083); // 2 MiB page at 2 MiB
        put64(&mut memory, 0x4000 + 5 * 8, 0x8_0003); // 4 KiB: 0x5000 -> 0x80000
        let paging = GuestPaging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) };
        assert_eq!(paging.translate(&memory, 0x5abc).unwrap(), gpa(0x8_0abc));
        assert_eq!(paging.translate(&memory, 0x21_2345).unwrap(), gpa(0x21_2345));
        assert_eq!(paging.translate(&memory, 0x6000), Err(MemoryError::NotPresent(0x6000)));
        assert_eq!(paging.translate(&memory, 0x8000_0000_0000), Err(MemoryError::NotPresent(0x8000_0000_0000)));
        // A table pointing outside guest memory is an unmapped access, not a panic.
        put64(&mut memory, 0x4000 + 6 * 8, 0x7fff_0000_0003);
        put64(&mut memory, 0x3010, 0x7fff_0000_0003);
        assert!(matches!(paging.translate(&memory, 0x40_0000), Err(MemoryError::Unmapped(_))));
    }

    #[test]
    fn pae_and_legacy_walks() {
        let mut memory = FlatMemory(vec![0; 0x10_0000]);
        // PAE: PDPT at 0x1000, PD at 0x2000 with a 2 MiB page, PT at 0x3000.
        put64(&mut memory, 0x1000, 0x2001);
        put64(&mut memory, 0x2000, 0x3003);
        put64(&mut memory, 0x2008, 0x40_0083);
        put64(&mut memory, 0x3000 + 8, 0x9003);
        let pae = GuestPaging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: 0 };
        assert_eq!(pae.translate(&memory, 0x1010).unwrap(), gpa(0x9010));
        assert_eq!(pae.translate(&memory, 0x20_0010).unwrap(), gpa(0x40_0010));
        // Legacy 32-bit: PD at 0x5000, a 4 MiB page for 4-8 MiB, PT at 0x6000.
        memory.write(gpa(0x5000), &0x6003u32.to_le_bytes()).unwrap();
        memory.write(gpa(0x5004), &0x0080_0083u32.to_le_bytes()).unwrap();
        memory.write(gpa(0x6000 + 4), &0xa003u32.to_le_bytes()).unwrap();
        let legacy = GuestPaging { cr0: CR0_PG | 1, cr3: 0x5000, cr4: CR4_PSE, efer: 0 };
        assert_eq!(legacy.translate(&memory, 0x1234).unwrap(), gpa(0xa234));
        assert_eq!(legacy.translate(&memory, 0x40_0123).unwrap(), gpa(0x80_0123));
        let mut buffer = [0u8; 3];
        memory.write(gpa(0xaffe), b"xy").unwrap();
        memory.write(gpa(0xb000), b"z").unwrap();
        memory.write(gpa(0x6000 + 8), &0xb003u32.to_le_bytes()).unwrap();
        legacy.read_virtual(&memory, 0x1ffe, &mut buffer).unwrap();
        assert_eq!(&buffer, b"xyz", "a read crossing pages follows both translations");
    }
}

//! Physical address types, in the style of the `x86_64` crate: one type per
//! address space, so a guest-physical address can never be used where a
//! host-physical one is meant.

/// Size of a small page and of a physical frame.
pub const PAGE_SIZE: u64 = 4096;
/// Bits of a physical address x86_64 allows (architectural maximum).
pub const PHYS_ADDR_BITS: u32 = 52;

macro_rules! phys_addr_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The address, if it fits in [`PHYS_ADDR_BITS`] bits.
            pub const fn try_new(addr: u64) -> Option<Self> {
                if addr >> PHYS_ADDR_BITS == 0 { Some(Self(addr)) } else { None }
            }

            /// The address with bits above [`PHYS_ADDR_BITS`] cleared.
            pub const fn new_truncate(addr: u64) -> Self {
                Self(addr & ((1 << PHYS_ADDR_BITS) - 1))
            }

            /// The raw value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// Rounded down to a page boundary.
            pub const fn page_base(self) -> Self {
                Self(self.0 & !(PAGE_SIZE - 1))
            }

            /// Offset inside its page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }

            /// Page frame number.
            pub const fn frame_number(self) -> u64 {
                self.0 / PAGE_SIZE
            }

            /// Whether it is page aligned.
            pub const fn is_page_aligned(self) -> bool {
                self.page_offset() == 0
            }

            /// This address plus `offset`, if no overflow past the address width.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(sum) => Self::try_new(sum),
                    None => None,
                }
            }
        }
    };
}

phys_addr_type!(
    /// An address in the machine's physical memory (what the core's page
    /// tables and the NPT point at).
    HostPhysAddr
);
phys_addr_type!(
    /// An address in a guest's physical memory (translated by its NPT).
    GuestPhysAddr
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_check_width_and_split_pages() {
        assert!(HostPhysAddr::try_new(1 << 52).is_none());
        let addr = GuestPhysAddr::try_new(0x12345).unwrap();
        assert_eq!(addr.page_base().as_u64(), 0x12000);
        assert_eq!(addr.page_offset(), 0x345);
        assert_eq!(addr.frame_number(), 0x12);
        assert!(!addr.is_page_aligned());
        assert_eq!(HostPhysAddr::new_truncate(u64::MAX).as_u64(), (1 << 52) - 1);
        assert!(HostPhysAddr::new_truncate((1 << 52) - 1).checked_add(1).is_none());
    }
}

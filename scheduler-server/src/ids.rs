//! Names of the things the policy schedules: domains, vCPUs, physical CPUs.

use crate::MAX_PCPUS;

/// A domain (guest), named by the core's domain id.
///
/// Any `u16` is accepted; the scheduler maps ids to its fixed table of
/// [`MAX_DOMAINS`](crate::MAX_DOMAINS) slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u16);

/// One virtual CPU: its domain and its index inside that domain
/// (`0..MAX_VCPUS_PER_DOMAIN`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId {
    /// The domain the vCPU belongs to.
    pub domain: DomainId,
    /// The vCPU's index inside its domain.
    pub index: u8,
}

impl VcpuId {
    /// The vCPU `index` of `domain`.
    pub const fn new(domain: DomainId, index: u8) -> Self {
        Self { domain, index }
    }
}

/// A physical CPU, numbered `0..MAX_PCPUS` by the core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcpuId(pub u8);

impl PcpuId {
    /// The pCPU's number as an index, if it is below [`MAX_PCPUS`].
    pub fn index(self) -> Option<usize> {
        let index = usize::from(self.0);
        (index < MAX_PCPUS).then_some(index)
    }
}

/// A set of physical CPUs, one bit per pCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PcpuSet(u8);

// The bit set must be able to hold every pCPU.
const _: () = assert!(MAX_PCPUS <= 8);

impl PcpuSet {
    /// No pCPU.
    pub const EMPTY: Self = Self(0);

    /// The pCPUs `0..count` (clamped to [`MAX_PCPUS`]).
    pub fn first(count: usize) -> Self {
        let mut set = Self::EMPTY;
        for index in 0..count.min(MAX_PCPUS) {
            set.0 |= 1 << index;
        }
        set
    }

    /// Adds `pcpu`; out-of-range ids are ignored and reported as `false`.
    pub fn insert(&mut self, pcpu: PcpuId) -> bool {
        match pcpu.index() {
            Some(index) => {
                self.0 |= 1 << index;
                true
            }
            None => false,
        }
    }

    /// Whether `pcpu` is in the set.
    pub fn contains(self, pcpu: PcpuId) -> bool {
        pcpu.index().is_some_and(|index| self.0 & (1 << index) != 0)
    }

    /// The number of pCPUs in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The pCPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = PcpuId> {
        (0..MAX_PCPUS as u8)
            .map(PcpuId)
            .filter(move |pcpu| self.contains(*pcpu))
    }
}

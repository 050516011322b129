//! The boot bundle: one boot module that carries the appliance.
//!
//! QEMU's PVH loader passes exactly one module (`-initrd`), and a GRUB entry
//! would pass it the same way, so everything the core needs at boot travels in
//! one blob:
//!
//! ```text
//! offset 0        BundleHeader: magic "CAIRNBDL", format version (u32 LE),
//!                 manifest length (u32 LE)
//! offset 16       Manifest, postcard-encoded
//! page-aligned    image 0, image 1, ...   (each starts on a 4 KiB boundary)
//! ```
//!
//! Images (guest kernels, later server images) are referenced from the
//! manifest by [`ImageRef`] (offset and length from the bundle's start). The
//! core validates the whole bundle with [`Bundle::parse`] before it uses any of
//! it; the host runner builds bundles with [`build`] (feature `std`).

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// First eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"CAIRNBDL";
/// Version of the bundle layout and manifest encoding; bumped on any change.
pub const FORMAT_VERSION: u32 = 8;
/// Size of the fixed header in front of the manifest.
pub const HEADER_SIZE: usize = 16;
/// Images start on this boundary.
pub const IMAGE_ALIGN: u64 = 4096;

/// Most domains one appliance may define.
pub const MAX_DOMAINS: usize = 16;
/// Longest domain name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// Longest guest command line, in bytes (without the terminating NUL).
pub const MAX_CMDLINE_LEN: usize = 255;
/// Most servers one appliance may define.
pub const MAX_SERVERS: usize = 4;
/// Most vCPUs one domain may have.
pub const MAX_VCPUS: u8 = 8;
/// Most pCPUs the core drives.
pub const MAX_CPUS: u8 = 8;
/// Largest halt-polling window a domain may ask for, ns (1 ms: polling
/// longer than a slice's tenth burns more CPU than a sleep and wake cost).
pub const MAX_HALT_POLL_NS: u64 = 1_000_000;
/// Default credit scheduler weight (Xen's).
pub const DEFAULT_CPU_WEIGHT: u32 = 256;
/// Largest cap, percent of one pCPU: every vCPU of a domain at full use.
pub const MAX_CAP: u32 = 100 * MAX_VCPUS as u32;
/// Smallest domain memory, MiB: room for a kernel, its boot page and a stack.
pub const MIN_DOMAIN_MEMORY_MIB: u32 = 2;
/// Largest domain memory, MiB. Guest-physical space above 3 GiB is kept free
/// for emulated device windows (LAPIC, later MMIO devices).
pub const MAX_DOMAIN_MEMORY_MIB: u32 = 3072;

/// A byte range of the bundle holding one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Offset from the start of the bundle; a multiple of [`IMAGE_ALIGN`].
    pub offset: u64,
    /// Length in bytes; nonzero.
    pub length: u64,
}

/// The `[machine]` table of the appliance file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Number of pCPUs the appliance expects (1..=[`MAX_CPUS`]).
    pub cpus: u8,
    /// RAM of the whole machine, MiB.
    pub memory_mib: u32,
    /// Stop the machine this many ms after boot, reporting every domain's
    /// CPU time (0 = run until the domains end).
    pub stop_after_ms: u32,
    /// A seeded fault-injection campaign the core runs against its servers
    /// (the appliance's `[faults]` table), if any.
    pub faults: Option<FaultPlan>,
}

/// A seeded fault-injection campaign (issue #6): the core's injector kills
/// the named servers `kills` times, at points drawn from `seed` (at the N-th
/// message of a server, in the middle of an eviction, in the middle of a
/// page-in). The same seed against the same events gives the same kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Seed of the injector's PRNG.
    pub seed: u64,
    /// Kills to make, 1..=[`MAX_FAULT_KILLS`].
    pub kills: u32,
    /// Which servers may be killed: bit `1 << kind` per
    /// [`crate::server::ServerKind`] (only the scheduler and the pager).
    pub servers: u8,
    /// Mean time between kills, ms (1..=60000).
    pub interval_ms: u32,
}

/// Most kills one campaign may ask for.
pub const MAX_FAULT_KILLS: u32 = 100_000;

/// One `[[domain]]` table of the appliance file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSpec {
    /// Unique name: ASCII letters, digits, `-` and `_`.
    pub name: String<MAX_NAME_LEN>,
    /// The guest's PVH ELF image.
    pub kernel: ImageRef,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Command line handed to the guest in `hvm_start_info`.
    pub cmdline: String<MAX_CMDLINE_LEN>,
    /// A module (initial ramdisk) handed to the guest as PVH module 0.
    pub ramdisk: Option<ImageRef>,
    /// This domain's halt-polling maximum, ns (`None`: the global one).
    pub halt_poll_max_ns: Option<u64>,
    /// Credit scheduler weight (xl.cfg `cpu_weight`), 1..=65535.
    pub cpu_weight: u32,
    /// Credit scheduler cap, percent of one pCPU (0 = none).
    pub cap: u32,
    /// Resident memory target, MiB (xl.cfg-style `memory_target`; `None`:
    /// all of `memory_mib`, no paging). The pager keeps the domain's resident
    /// frames at or below it.
    pub memory_target_mib: Option<u32>,
}

/// One `[[server]]` table of the appliance file: a ring-3 server image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// Unique name (same rules as a domain name).
    pub name: String<MAX_NAME_LEN>,
    /// Which protocol it speaks.
    pub kind: crate::server::ServerKind,
    /// Its ELF image.
    pub image: ImageRef,
    /// Argument string handed to it at every start.
    pub args: String<{ crate::server::MAX_ARGUMENTS_LEN }>,
}

/// What the core does after boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunMode {
    /// Run the domains until all of them have ended.
    Normal,
    /// Measure exit round trips (`iterations` each) before running the domains.
    Bench {
        /// Round trips per measured series.
        iterations: u32,
    },
}

/// Everything the core needs to know about the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The machine the appliance was written for.
    pub machine: Machine,
    /// The domains, in boot order; a domain's id is its index here.
    pub domains: Vec<DomainSpec, MAX_DOMAINS>,
    /// The ring-3 servers, in start order.
    pub servers: Vec<ServerSpec, MAX_SERVERS>,
    /// Normal run or benchmark.
    pub mode: RunMode,
}

/// Upper bound of an encoded manifest, used to size decode buffers.
pub const MAX_MANIFEST_SIZE: usize = 64
    + MAX_DOMAINS * (MAX_NAME_LEN + MAX_CMDLINE_LEN + 48)
    + MAX_SERVERS * (MAX_NAME_LEN + crate::server::MAX_ARGUMENTS_LEN + 48);

/// Why a bundle or manifest was refused. Each variant names what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleError {
    /// Shorter than the fixed header.
    Truncated,
    /// The first eight bytes are not [`MAGIC`].
    BadMagic,
    /// Built for another [`FORMAT_VERSION`].
    UnsupportedVersion(u32),
    /// The manifest length runs past the end of the bundle or the limit.
    ManifestLength(u32),
    /// The manifest bytes are not a valid postcard `Manifest`.
    ManifestEncoding,
    /// `machine.cpus` outside 1..=[`MAX_CPUS`].
    MachineCpus(u8),
    /// No domains.
    NoDomains,
    /// A domain name is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    DomainName { domain: usize },
    /// Two domains share a name.
    DuplicateName { domain: usize },
    /// `memory` outside the supported range.
    DomainMemory { domain: usize, memory_mib: u32 },
    /// `vcpus` outside 1..=[`MAX_VCPUS`].
    DomainVcpus { domain: usize, vcpus: u8 },
    /// The kernel image range is misaligned, empty or outside the bundle.
    DomainKernel { domain: usize },
    /// The ramdisk range is outside the bundle or larger than half the
    /// domain's memory.
    DomainRamdisk { domain: usize },
    /// `halt_poll_max` above [`MAX_HALT_POLL_NS`].
    DomainHaltPoll { domain: usize },
    /// `cpu_weight` outside 1..=65535.
    DomainWeight { domain: usize },
    /// `cap` above [`MAX_CAP`].
    DomainCap { domain: usize },
    /// The domains' memory adds up to more than the machine has.
    MachineMemory { needed_mib: u64, machine_mib: u32 },
    /// A server name is empty, too long, badly formed or used twice.
    ServerName { server: usize },
    /// A server image range is misaligned, empty or outside the bundle.
    ServerImage { server: usize },
    /// Two servers of the same kind.
    DuplicateServerKind { server: usize },
}

impl BundleError {
    /// A short, fixed description (no formatting, usable from the core).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "bundle shorter than its header",
            Self::BadMagic => "bundle magic is not CAIRNBDL",
            Self::UnsupportedVersion(_) => "bundle format version unsupported",
            Self::ManifestLength(_) => "manifest length out of bounds",
            Self::ManifestEncoding => "manifest is not valid postcard",
            Self::MachineCpus(_) => "machine.cpus out of range",
            Self::NoDomains => "no [[domain]] defined",
            Self::DomainName { .. } => "domain.name empty, too long or not [A-Za-z0-9_-]",
            Self::DuplicateName { .. } => "domain.name used twice",
            Self::DomainMemory { .. } => "domain.memory out of range",
            Self::DomainVcpus { .. } => "domain.vcpus out of range",
            Self::DomainKernel { .. } => "domain.kernel image outside the bundle",
            Self::DomainRamdisk { .. } => "domain.ramdisk outside the bundle or over half the domain's memory",
            Self::DomainHaltPoll { .. } => "domain.halt_poll_max above 1000000 ns",
            Self::DomainWeight { .. } => "domain.cpu_weight outside 1..=65535",
            Self::DomainCap { .. } => "domain.cap above 800 percent",
            Self::MachineMemory { .. } => "domains need more memory than machine.memory",
            Self::ServerName { .. } => "server.name empty, too long, not [A-Za-z0-9_-] or used twice",
            Self::ServerImage { .. } => "server.image outside the bundle",
            Self::DuplicateServerKind { .. } => "two servers of the same kind",
        }
    }
}

/// Checks a domain name: 1..=[`MAX_NAME_LEN`] bytes of `[A-Za-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Manifest {
    /// Checks every field against the limits above and every image range
    /// against a bundle of `bundle_len` bytes. The host runner calls this
    /// before it writes a bundle; the core calls it before it uses one.
    pub fn validate(&self, bundle_len: u64) -> Result<(), BundleError> {
        if self.machine.cpus == 0 || self.machine.cpus > MAX_CPUS {
            return Err(BundleError::MachineCpus(self.machine.cpus));
        }
        if self.domains.is_empty() {
            return Err(BundleError::NoDomains);
        }
        let mut needed_mib: u64 = 0;
        for (index, domain) in self.domains.iter().enumerate() {
            if !valid_name(&domain.name) {
                return Err(BundleError::DomainName { domain: index });
            }
            if self.domains[..index].iter().any(|other| other.name == domain.name) {
                return Err(BundleError::DuplicateName { domain: index });
            }
            if !(MIN_DOMAIN_MEMORY_MIB..=MAX_DOMAIN_MEMORY_MIB).contains(&domain.memory_mib) {
                return Err(BundleError::DomainMemory {
                    domain: index,
                    memory_mib: domain.memory_mib,
                });
            }
            if domain.vcpus == 0 || domain.vcpus > MAX_VCPUS {
                return Err(BundleError::DomainVcpus { domain: index, vcpus: domain.vcpus });
            }
            if !domain.kernel.fits(bundle_len) {
                return Err(BundleError::DomainKernel { domain: index });
            }
            if !(1..=65_535).contains(&domain.cpu_weight) {
                return Err(BundleError::DomainWeight { domain: index });
            }
            if domain.cap > MAX_CAP {
                return Err(BundleError::DomainCap { domain: index });
            }
            if domain.halt_poll_max_ns.is_some_and(|max| max > MAX_HALT_POLL_NS) {
                return Err(BundleError::DomainHaltPoll { domain: index });
            }
            if let Some(ramdisk) = domain.ramdisk {
                let half_memory = (u64::from(domain.memory_mib) << 20) / 2;
                if !ramdisk.fits(bundle_len) || ramdisk.length > half_memory {
                    return Err(BundleError::DomainRamdisk { domain: index });
                }
            }
            needed_mib += u64::from(domain.memory_mib);
        }
        if needed_mib > u64::from(self.machine.memory_mib) {
            return Err(BundleError::MachineMemory {
                needed_mib,
                machine_mib: self.machine.memory_mib,
            });
        }
        for (index, server) in self.servers.iter().enumerate() {
            let earlier = &self.servers[..index];
            if !valid_name(&server.name) || earlier.iter().any(|other| other.name == server.name) {
                return Err(BundleError::ServerName { server: index });
            }
            if earlier.iter().any(|other| other.kind == server.kind) {
                return Err(BundleError::DuplicateServerKind { server: index });
            }
            if !server.image.fits(bundle_len) {
                return Err(BundleError::ServerImage { server: index });
            }
        }
        Ok(())
    }
}

impl ImageRef {
    /// Whether the range is nonempty, aligned and inside a bundle of
    /// `bundle_len` bytes.
    pub fn fits(&self, bundle_len: u64) -> bool {
        let in_bounds = self.offset.checked_add(self.length).is_some_and(|end| end <= bundle_len);
        self.length != 0 && self.offset.is_multiple_of(IMAGE_ALIGN) && in_bounds
    }
}

/// A parsed, validated bundle borrowed from the module's bytes.
#[derive(Debug)]
pub struct Bundle<'a> {
    bytes: &'a [u8],
    /// The validated manifest.
    pub manifest: Manifest,
}

impl<'a> Bundle<'a> {
    /// Parses and validates a bundle. Never panics, whatever the bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BundleError> {
        let header = bytes.get(..HEADER_SIZE).ok_or(BundleError::Truncated)?;
        if header[..8] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion(version));
        }
        let manifest_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let manifest_bytes = usize::try_from(manifest_len)
            .ok()
            .filter(|&len| len <= MAX_MANIFEST_SIZE)
            .and_then(|len| bytes.get(HEADER_SIZE..HEADER_SIZE + len))
            .ok_or(BundleError::ManifestLength(manifest_len))?;
        let manifest: Manifest =
            postcard::from_bytes(manifest_bytes).map_err(|_| BundleError::ManifestEncoding)?;
        manifest.validate(bytes.len() as u64)?;
        Ok(Self { bytes, manifest })
    }

    /// The bytes of an image the manifest references (already bounds-checked
    /// by [`Manifest::validate`]).
    pub fn image(&self, image: ImageRef) -> &'a [u8] {
        let bytes: &'a [u8] = self.bytes;
        usize::try_from(image.offset)
            .ok()
            .zip(usize::try_from(image.length).ok())
            .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
            .unwrap_or(&[])
    }
}

/// Builds a bundle from a manifest whose `kernel` and `image` references are
/// indices into `images` (`offset` = index, `length` ignored); the references
/// are rewritten to real offsets. Used by the host runner.
#[cfg(any(test, feature = "std"))]
pub fn build(mut manifest: Manifest, images: &[&[u8]]) -> Result<std::vec::Vec<u8>, BundleError> {
    let align = |value: u64| value.div_ceil(IMAGE_ALIGN) * IMAGE_ALIGN;
    let indices: std::vec::Vec<usize> =
        manifest.domains.iter().map(|domain| domain.kernel.offset as usize).collect();
    if let Some(domain) = indices.iter().position(|&index| index >= images.len()) {
        return Err(BundleError::DomainKernel { domain });
    }
    let ramdisk_indices: std::vec::Vec<Option<usize>> = manifest
        .domains
        .iter()
        .map(|domain| domain.ramdisk.map(|ramdisk| ramdisk.offset as usize))
        .collect();
    if let Some(domain) = ramdisk_indices.iter().position(|index| index.is_some_and(|index| index >= images.len())) {
        return Err(BundleError::DomainRamdisk { domain });
    }
    let server_indices: std::vec::Vec<usize> =
        manifest.servers.iter().map(|server| server.image.offset as usize).collect();
    if let Some(server) = server_indices.iter().position(|&index| index >= images.len()) {
        return Err(BundleError::ServerImage { server });
    }
    // The offsets depend on the manifest's encoded length, which depends on the
    // offsets (varints): iterate until the layout is stable (two rounds at most
    // in practice, bounded here).
    let mut images_start = align(HEADER_SIZE as u64);
    for _ in 0..8 {
        let mut offsets = std::vec::Vec::with_capacity(images.len());
        let mut next = images_start;
        for image in images {
            offsets.push(next);
            next = align(next + image.len() as u64);
        }
        let reference = |index: usize| ImageRef { offset: offsets[index], length: images[index].len() as u64 };
        for ((domain, &index), ramdisk) in manifest.domains.iter_mut().zip(&indices).zip(&ramdisk_indices) {
            domain.kernel = reference(index);
            domain.ramdisk = ramdisk.map(reference);
        }
        for (server, &index) in manifest.servers.iter_mut().zip(&server_indices) {
            server.image = reference(index);
        }
        let encoded =
            postcard::to_stdvec(&manifest).map_err(|_| BundleError::ManifestEncoding)?;
        let needed = align((HEADER_SIZE + encoded.len()) as u64);
        if needed > images_start {
            images_start = needed;
            continue;
        }
        let total = offsets.last().map_or(images_start, |&last| {
            last + images.last().map_or(0, |image| image.len() as u64)
        });
        let mut bundle = std::vec![0u8; total as usize];
        bundle[..8].copy_from_slice(&MAGIC);
        bundle[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bundle[12..16].copy_from_slice(&(encoded.len() as u32).to_le_bytes());
        bundle[HEADER_SIZE..HEADER_SIZE + encoded.len()].copy_from_slice(&encoded);
        for (image, &offset) in images.iter().zip(&offsets) {
            bundle[offset as usize..offset as usize + image.len()].copy_from_slice(image);
        }
        manifest.validate(bundle.len() as u64)?;
        return Ok(bundle);
    }
    Err(BundleError::ManifestLength(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn domain(name: &str, image: u64, memory_mib: u32) -> DomainSpec {
        DomainSpec {
            name: String::try_from(name).unwrap(),
            kernel: ImageRef { offset: image, length: 0 },
            memory_mib,
            vcpus: 1,
            cmdline: String::try_from("console=hvc0").unwrap(),
            ramdisk: None,
            halt_poll_max_ns: None,
            cpu_weight: DEFAULT_CPU_WEIGHT,
            cap: 0,
            memory_target_mib: None,
        }
    }

    fn manifest(domains: &[DomainSpec]) -> Manifest {
        Manifest {
            machine: Machine { cpus: 1, memory_mib: 256, stop_after_ms: 0, faults: None },
            domains: domains.iter().cloned().collect(),
            servers: Vec::new(),
            mode: RunMode::Normal,
        }
    }

    #[test]
    fn build_then_parse_returns_the_images() {
        let kernel_a = vec![0xaa; 5000];
        let kernel_b = vec![0xbb; 10];
        let m = manifest(&[domain("a", 0, 16), domain("b", 1, 16), domain("c", 0, 16)]);
        let bytes = build(m, &[&kernel_a, &kernel_b]).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.manifest.domains.len(), 3);
        assert_eq!(bundle.image(bundle.manifest.domains[0].kernel), &kernel_a[..]);
        assert_eq!(bundle.image(bundle.manifest.domains[1].kernel), &kernel_b[..]);
        assert_eq!(bundle.manifest.domains[2].kernel, bundle.manifest.domains[0].kernel);
        for d in &bundle.manifest.domains {
            assert_eq!(d.kernel.offset % IMAGE_ALIGN, 0);
        }
    }

    #[test]
    fn header_errors_are_named() {
        assert_eq!(Bundle::parse(b"short").unwrap_err(), BundleError::Truncated);
        assert_eq!(Bundle::parse(&[0u8; 32]).unwrap_err(), BundleError::BadMagic);
        let mut bytes = build(manifest(&[domain("a", 0, 16)]), &[&[1, 2, 3]]).unwrap();
        bytes[8] = 9;
        assert_eq!(Bundle::parse(&bytes).unwrap_err(), BundleError::UnsupportedVersion(9));
        bytes[8] = FORMAT_VERSION as u8;
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Bundle::parse(&bytes).unwrap_err(), BundleError::ManifestLength(u32::MAX));
    }

    #[test]
    fn manifest_errors_name_the_field() {
        let bad = |m: Manifest| m.validate(1 << 20).unwrap_err();
        let mut m = manifest(&[domain("ok", 0, 16)]);
        m.domains[0].kernel = ImageRef { offset: 4096, length: 10 };
        assert_eq!(m.validate(1 << 20), Ok(()));

        let mut bad_name = m.clone();
        bad_name.domains[0].name = String::try_from("bad name").unwrap();
        assert_eq!(bad(bad_name), BundleError::DomainName { domain: 0 });

        let mut dup = m.clone();
        dup.domains.push(m.domains[0].clone()).unwrap();
        assert_eq!(bad(dup), BundleError::DuplicateName { domain: 1 });

        let mut mem = m.clone();
        mem.domains[0].memory_mib = 1;
        assert_eq!(bad(mem), BundleError::DomainMemory { domain: 0, memory_mib: 1 });

        let mut vcpus = m.clone();
        vcpus.domains[0].vcpus = 0;
        assert_eq!(bad(vcpus), BundleError::DomainVcpus { domain: 0, vcpus: 0 });

        let mut kernel = m.clone();
        kernel.domains[0].kernel = ImageRef { offset: 4096, length: 1 << 20 };
        assert_eq!(bad(kernel), BundleError::DomainKernel { domain: 0 });

        let mut total = m.clone();
        total.machine.memory_mib = 8;
        assert_eq!(bad(total), BundleError::MachineMemory { needed_mib: 16, machine_mib: 8 });

        let mut cpus = m.clone();
        cpus.machine.cpus = 0;
        assert_eq!(bad(cpus), BundleError::MachineCpus(0));
    }

    #[test]
    fn ramdisks_are_packed_and_checked() {
        let mut with_ramdisk = domain("a", 0, 2);
        with_ramdisk.ramdisk = Some(ImageRef { offset: 1, length: 0 });
        let bytes = build(manifest(&[with_ramdisk.clone()]), &[&[1; 10], b"payload"]).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        let ramdisk = bundle.manifest.domains[0].ramdisk.unwrap();
        assert_eq!(bundle.image(ramdisk), b"payload");
        let mut too_big = bundle.manifest.clone();
        too_big.domains[0].ramdisk = Some(ImageRef { offset: ramdisk.offset, length: (1 << 20) + 1 });
        assert_eq!(too_big.validate(u64::MAX), Err(BundleError::DomainRamdisk { domain: 0 }));
        with_ramdisk.ramdisk = Some(ImageRef { offset: 5, length: 0 });
        assert_eq!(build(manifest(&[with_ramdisk]), &[&[1; 10]]).unwrap_err(), BundleError::DomainRamdisk { domain: 0 });
    }

    fn server(name: &str, kind: crate::server::ServerKind, image: u64) -> ServerSpec {
        ServerSpec {
            name: String::try_from(name).unwrap(),
            kind,
            image: ImageRef { offset: image, length: 0 },
            args: String::try_from("hostile").unwrap(),
        }
    }

    #[test]
    fn servers_round_trip_and_are_validated() {
        use crate::server::ServerKind;
        let mut m = manifest(&[domain("a", 0, 16)]);
        m.servers.push(server("sched", ServerKind::Scheduler, 1)).unwrap();
        m.servers.push(server("test", ServerKind::Test, 2)).unwrap();
        let bytes = build(m.clone(), &[&[1; 10], &[2; 20], &[3; 30]]).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.image(bundle.manifest.servers[1].image), &[3; 30][..]);
        assert_eq!(bundle.manifest.servers[1].args.as_str(), "hostile");

        let mut dup_kind = bundle.manifest.clone();
        dup_kind.servers[1].kind = ServerKind::Scheduler;
        assert_eq!(dup_kind.validate(bytes.len() as u64), Err(BundleError::DuplicateServerKind { server: 1 }));
        let mut dup_name = bundle.manifest.clone();
        dup_name.servers[1].name = String::try_from("sched").unwrap();
        assert_eq!(dup_name.validate(bytes.len() as u64), Err(BundleError::ServerName { server: 1 }));
        let mut outside = bundle.manifest.clone();
        outside.servers[0].image.length = 1 << 30;
        assert_eq!(outside.validate(bytes.len() as u64), Err(BundleError::ServerImage { server: 0 }));
        assert_eq!(build(m, &[&[1; 10]]).unwrap_err(), BundleError::ServerImage { server: 0 });
    }

    proptest! {
        /// Whatever bytes arrive, parsing returns Ok or Err and never panics.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Bundle::parse(&bytes);
        }

        /// Corrupting any single byte of a valid manifest either still parses
        /// into a manifest that validates, or is refused.
        #[test]
        fn corrupted_manifest_is_refused_or_valid(index in 0usize..200, value: u8) {
            let mut bytes = build(manifest(&[domain("a", 0, 16)]), &[&[7; 100]]).unwrap();
            let index = HEADER_SIZE + index % 60;
            bytes[index] = value;
            if let Ok(bundle) = Bundle::parse(&bytes) {
                prop_assert!(bundle.manifest.validate(bytes.len() as u64).is_ok());
            }
        }
    }
}

//! From a parsed appliance to the boot bundle file the core receives as its
//! one boot module (`-initrd`).
//!
//! This module reads the kernel images (checking each exists and is an ELF),
//! builds an [`ipc::boot::Manifest`], checks it a second time with
//! [`ipc::boot::Manifest::validate`] (mapping each [`BundleError`] back to the
//! key it is about) and writes the bundle with [`ipc::boot::build`].

use std::path::{Path, PathBuf};

use ipc::boot::{BundleError, DomainSpec, ImageRef, Machine, Manifest, RunMode};

use crate::config::{Appliance, KernelSource};
use crate::table::KeyError;
use crate::workspace::display;

/// The first four bytes of every ELF file.
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// The path of a domain's kernel image, given where the guests are built.
pub fn kernel_path(source: &KernelSource, guest_images_directory: &Path) -> PathBuf {
    match source {
        KernelSource::WorkspaceGuest(name) => guest_images_directory.join(name),
        KernelSource::File(path) => path.clone(),
    }
}

/// Reads one kernel image and checks it is an ELF file.
fn read_kernel(
    appliance: &Appliance,
    index: usize,
    guest_images_directory: &Path,
) -> Result<(PathBuf, Vec<u8>), KeyError> {
    let source = &appliance.domains[index].kernel;
    let path = kernel_path(source, guest_images_directory);
    let key = Appliance::domain_key(index, "kernel");
    let error = |message: String| KeyError::new(&appliance.file, key.clone(), message);
    let bytes = std::fs::read(&path).map_err(|io_error| match source {
        KernelSource::WorkspaceGuest(name) => error(format!(
            "test guest `{name}` not found at {} ({io_error}); is `{name}` a binary of the guests crate?",
            display(&path)
        )),
        KernelSource::File(_) => error(format!("cannot read {}: {io_error}", display(&path))),
    })?;
    if bytes.get(..4) != Some(&ELF_MAGIC[..]) {
        return Err(error(format!(
            "{} is not an ELF file (no \\x7fELF magic)",
            display(&path)
        )));
    }
    Ok((path, bytes))
}

/// The key an [`ipc::boot::Manifest::validate`] error is about, and its text.
pub fn bundle_error_key(error: &BundleError) -> (String, String) {
    let reason = error.reason();
    match *error {
        BundleError::MachineCpus(cpus) => ("machine.cpus".into(), format!("{reason} ({cpus})")),
        BundleError::NoDomains => ("domain".into(), reason.into()),
        BundleError::DomainName { domain } | BundleError::DuplicateName { domain } => {
            (Appliance::domain_key(domain, "name"), reason.into())
        }
        BundleError::DomainMemory { domain, memory_mib } => (
            Appliance::domain_key(domain, "memory"),
            format!("{reason} ({memory_mib} MiB)"),
        ),
        BundleError::DomainVcpus { domain, vcpus } => (
            Appliance::domain_key(domain, "vcpus"),
            format!("{reason} ({vcpus})"),
        ),
        BundleError::DomainKernel { domain } => {
            (Appliance::domain_key(domain, "kernel"), reason.into())
        }
        BundleError::MachineMemory {
            needed_mib,
            machine_mib,
        } => (
            "machine.memory".into(),
            format!("{reason} ({needed_mib} MiB needed, {machine_mib} MiB present)"),
        ),
        BundleError::Truncated
        | BundleError::BadMagic
        | BundleError::UnsupportedVersion(_)
        | BundleError::ManifestLength(_)
        | BundleError::ManifestEncoding => ("bundle".into(), reason.into()),
    }
}

fn manifest_error(appliance: &Appliance, error: &BundleError) -> KeyError {
    let (key, message) = bundle_error_key(error);
    KeyError::new(&appliance.file, key, message)
}

/// Builds the bundle bytes for an appliance.
pub fn build_bundle(
    appliance: &Appliance,
    mode: RunMode,
    guest_images_directory: &Path,
) -> Result<Vec<u8>, KeyError> {
    // One image per distinct kernel file; domains sharing a kernel share it.
    let mut image_paths: Vec<PathBuf> = Vec::new();
    let mut images: Vec<Vec<u8>> = Vec::new();
    let mut domains = heapless::Vec::<DomainSpec, { ipc::boot::MAX_DOMAINS }>::new();
    for (index, domain) in appliance.domains.iter().enumerate() {
        let path = kernel_path(&domain.kernel, guest_images_directory);
        let image_index = match image_paths.iter().position(|known| *known == path) {
            Some(existing) => existing,
            None => {
                let (path, bytes) = read_kernel(appliance, index, guest_images_directory)?;
                image_paths.push(path);
                images.push(bytes);
                images.len() - 1
            }
        };
        let too_long = |key: &str| {
            KeyError::new(
                &appliance.file,
                Appliance::domain_key(index, key),
                "too long",
            )
        };
        let spec = DomainSpec {
            name: heapless::String::try_from(domain.name.as_str()).map_err(|_| too_long("name"))?,
            kernel: ImageRef {
                offset: image_index as u64,
                length: 0,
            },
            memory_mib: domain.memory_mib,
            vcpus: domain.vcpus,
            cmdline: heapless::String::try_from(domain.cmdline.as_str())
                .map_err(|_| too_long("cmdline"))?,
        };
        domains.push(spec).map_err(|_| {
            KeyError::new(
                &appliance.file,
                "domain",
                "more domains than the core supports",
            )
        })?;
    }
    let manifest = Manifest {
        machine: Machine {
            cpus: appliance.machine.cpus,
            memory_mib: appliance.machine.memory_mib,
        },
        domains,
        mode,
    };
    let image_slices: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
    ipc::boot::build(manifest, &image_slices).map_err(|error| manifest_error(appliance, &error))
}

/// Builds the bundle and writes it to `output_directory/<stem>.bundle`;
/// returns the written path.
pub fn write_bundle(
    appliance: &Appliance,
    config_path: &Path,
    mode: RunMode,
    guest_images_directory: &Path,
    output_directory: &Path,
) -> anyhow::Result<PathBuf> {
    let bytes = build_bundle(appliance, mode, guest_images_directory)?;
    let stem = config_path.file_stem().map_or_else(
        || "appliance".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    std::fs::create_dir_all(output_directory)
        .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", display(output_directory)))?;
    let path = output_directory.join(format!("{stem}.bundle"));
    std::fs::write(&path, &bytes)
        .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", display(&path)))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use ipc::boot::Bundle;

    fn scratch_directory(name: &str) -> PathBuf {
        let directory =
            std::env::temp_dir().join(format!("xtask-bundle-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        directory
    }

    fn fake_elf(directory: &Path, name: &str, length: usize) {
        let mut bytes = ELF_MAGIC.to_vec();
        bytes.resize(length, 0x90);
        std::fs::write(directory.join(name), bytes).unwrap();
    }

    #[test]
    fn a_bundle_round_trips_through_the_core_parser() {
        let directory = scratch_directory("round-trip");
        fake_elf(&directory, "hello", 5000);
        fake_elf(&directory, "own.elf", 100);
        let text = "[[domain]]\nname='a'\nkernel='cairn:hello'\n[[domain]]\nname='b'\nkernel='own.elf'\ncmdline='x=1'\n[[domain]]\nname='c'\nkernel='cairn:hello'\n";
        let appliance = config::parse(text, "t.toml", &directory).unwrap();
        let bytes = build_bundle(&appliance, RunMode::Bench { iterations: 7 }, &directory).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.manifest.mode, RunMode::Bench { iterations: 7 });
        let domains = &bundle.manifest.domains;
        assert_eq!(bundle.image(domains[0].kernel).len(), 5000);
        assert_eq!(bundle.image(domains[1].kernel).len(), 100);
        assert_eq!(
            domains[0].kernel, domains[2].kernel,
            "a shared kernel is stored once"
        );
        assert_eq!(domains[1].cmdline.as_str(), "x=1");

        let written = write_bundle(
            &appliance,
            Path::new("dir/demo.toml"),
            RunMode::Normal,
            &directory,
            &directory,
        )
        .unwrap();
        assert_eq!(written, directory.join("demo.bundle"));
        assert!(Bundle::parse(&std::fs::read(written).unwrap()).is_ok());
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn a_missing_kernel_file_is_named() {
        let directory = scratch_directory("missing");
        let text = "[[domain]]\nname='a'\nkernel='cairn:hello'\n[[domain]]\nname='b'\nkernel='nowhere.elf'\n";
        let appliance = config::parse(text, "t.toml", &directory).unwrap();
        let error = build_bundle(&appliance, RunMode::Normal, &directory).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("domain[0].kernel"));
        assert!(
            error.to_string().contains("test guest `hello` not found"),
            "{error}"
        );

        fake_elf(&directory, "hello", 10);
        let error = build_bundle(&appliance, RunMode::Normal, &directory).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("domain[1].kernel"));
        assert!(
            error
                .to_string()
                .starts_with("t.toml: domain[1].kernel: cannot read"),
            "{error}"
        );
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn a_kernel_that_is_not_elf_is_named() {
        let directory = scratch_directory("not-elf");
        std::fs::write(directory.join("text.bin"), b"hello").unwrap();
        let appliance = config::parse(
            "[[domain]]\nname='a'\nkernel='text.bin'\n",
            "t.toml",
            &directory,
        )
        .unwrap();
        let error = build_bundle(&appliance, RunMode::Normal, &directory).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("domain[0].kernel"));
        assert!(error.message.contains("not an ELF file"), "{error}");
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn every_validation_error_maps_to_a_key() {
        let cases = [
            (BundleError::MachineCpus(0), "machine.cpus"),
            (BundleError::NoDomains, "domain"),
            (BundleError::DomainName { domain: 2 }, "domain[2].name"),
            (BundleError::DuplicateName { domain: 1 }, "domain[1].name"),
            (
                BundleError::DomainMemory {
                    domain: 0,
                    memory_mib: 1,
                },
                "domain[0].memory",
            ),
            (
                BundleError::DomainVcpus {
                    domain: 3,
                    vcpus: 0,
                },
                "domain[3].vcpus",
            ),
            (BundleError::DomainKernel { domain: 1 }, "domain[1].kernel"),
            (
                BundleError::MachineMemory {
                    needed_mib: 9,
                    machine_mib: 8,
                },
                "machine.memory",
            ),
        ];
        for (error, key) in cases {
            assert_eq!(bundle_error_key(&error).0, key, "{error:?}");
        }
    }
}

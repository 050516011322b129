//! From a parsed appliance to the boot bundle file the core receives as its
//! one boot module (`-initrd`).
//!
//! This module reads the kernel and server images (checking each exists and
//! is an ELF), builds an [`ipc::boot::Manifest`], checks it a second time with
//! [`ipc::boot::Manifest::validate`] (mapping each [`BundleError`] back to the
//! key it is about) and writes the bundle with [`ipc::boot::build`].

use std::path::{Path, PathBuf};

use ipc::boot::{BundleError, DomainSpec, ImageRef, Machine, Manifest, RunMode, ServerSpec};

use crate::config::{Appliance, ImageSource};
use crate::table::KeyError;
use crate::workspace::display;

/// The first four bytes of every ELF file.
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// The path of an image (a domain's kernel, a server's image), given where
/// the workspace's bare-metal binaries are built.
pub fn image_path(source: &ImageSource, workspace_images_directory: &Path) -> PathBuf {
    match source {
        ImageSource::Workspace(name) => workspace_images_directory.join(name),
        ImageSource::File(path) => path.clone(),
    }
}

/// What an image is for: decides how a missing `cairn:NAME` is explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A domain's kernel: a binary of the `guests` crate.
    Kernel,
    /// A server image: a binary of a server crate.
    Server,
    /// A guest module: any nonempty file.
    Ramdisk,
}

impl Role {
    /// What a `cairn:NAME` image of this role is.
    fn noun(self) -> &'static str {
        match self {
            Self::Kernel => "test guest",
            Self::Server => "server binary",
            Self::Ramdisk => "ramdisk",
        }
    }

    /// Where a `cairn:NAME` image of this role comes from.
    fn home(self) -> &'static str {
        match self {
            Self::Kernel => "the guests crate",
            Self::Server => "a server crate listed in xtask's SERVER_PACKAGES",
            Self::Ramdisk => "the appliance's directory",
        }
    }
}

/// The distinct image files of a bundle, in the order they are packed.
/// Domains and servers naming the same file share one copy.
#[derive(Debug, Default)]
struct Images {
    paths: Vec<PathBuf>,
    contents: Vec<Vec<u8>>,
}

impl Images {
    /// The index of `source`'s image, reading it on first use. `key` is the
    /// config key that named it (`domain[0].kernel`, `server[1].image`).
    fn index_of(
        &mut self,
        file: &str,
        key: &str,
        source: &ImageSource,
        workspace_images_directory: &Path,
        role: Role,
    ) -> Result<usize, KeyError> {
        let path = image_path(source, workspace_images_directory);
        if let Some(existing) = self.paths.iter().position(|known| *known == path) {
            return Ok(existing);
        }
        let error = |message: String| KeyError::new(file, key, message);
        let bytes = std::fs::read(&path).map_err(|io_error| match source {
            ImageSource::Workspace(name) => error(format!(
                "{} `{name}` not found at {} ({io_error}); is `{name}` a binary of {}?",
                role.noun(),
                display(&path),
                role.home(),
            )),
            ImageSource::File(_) => error(format!("cannot read {}: {io_error}", display(&path))),
        })?;
        if role == Role::Ramdisk {
            if bytes.is_empty() {
                return Err(error(format!("{} is empty", display(&path))));
            }
        } else if bytes.get(..4) != Some(&ELF_MAGIC[..]) {
            return Err(error(format!(
                "{} is not an ELF file (no \\x7fELF magic)",
                display(&path)
            )));
        }
        self.paths.push(path);
        self.contents.push(bytes);
        Ok(self.contents.len() - 1)
    }
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
        BundleError::DomainRamdisk { domain } => {
            (Appliance::domain_key(domain, "ramdisk"), reason.into())
        }
        BundleError::DomainHaltPoll { domain } => {
            (Appliance::domain_key(domain, "halt_poll_max"), reason.into())
        }
        BundleError::DomainWeight { domain } => {
            (Appliance::domain_key(domain, "cpu_weight"), reason.into())
        }
        BundleError::DomainCap { domain } => (Appliance::domain_key(domain, "cap"), reason.into()),
        BundleError::MachineMemory {
            needed_mib,
            machine_mib,
        } => (
            "machine.memory".into(),
            format!("{reason} ({needed_mib} MiB needed, {machine_mib} MiB present)"),
        ),
        BundleError::ServerName { server } => {
            (Appliance::server_key(server, "name"), reason.into())
        }
        BundleError::ServerImage { server } => {
            (Appliance::server_key(server, "image"), reason.into())
        }
        BundleError::DuplicateServerKind { server } => {
            (Appliance::server_key(server, "kind"), reason.into())
        }
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

/// Builds the bundle bytes for an appliance; `cairn:NAME` images are read
/// from `workspace_images_directory`.
pub fn build_bundle(
    appliance: &Appliance,
    mode: RunMode,
    workspace_images_directory: &Path,
) -> Result<Vec<u8>, KeyError> {
    let file = appliance.file.as_str();
    let mut images = Images::default();
    let mut domains = heapless::Vec::<DomainSpec, { ipc::boot::MAX_DOMAINS }>::new();
    for (index, domain) in appliance.domains.iter().enumerate() {
        let key = |key: &str| Appliance::domain_key(index, key);
        let image_index = images.index_of(
            file,
            &key("kernel"),
            &domain.kernel,
            workspace_images_directory,
            Role::Kernel,
        )?;
        let too_long = |name: &str| KeyError::new(file, key(name), "too long");
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
            ramdisk: match &domain.ramdisk {
                Some(path) => {
                    let source = ImageSource::File(path.clone());
                    let index = images.index_of(file, &key("ramdisk"), &source, workspace_images_directory, Role::Ramdisk)?;
                    Some(ImageRef { offset: index as u64, length: 0 })
                }
                None => None,
            },
            halt_poll_max_ns: domain.halt_poll_max_ns,
            cpu_weight: domain.cpu_weight,
            cap: domain.cap,
            memory_target_mib: domain.memory_target_mib,
        };
        domains
            .push(spec)
            .map_err(|_| KeyError::new(file, "domain", "more domains than the core supports"))?;
    }
    let mut servers = heapless::Vec::<ServerSpec, { ipc::boot::MAX_SERVERS }>::new();
    for (index, server) in appliance.servers.iter().enumerate() {
        let key = |key: &str| Appliance::server_key(index, key);
        let image_index = images.index_of(
            file,
            &key("image"),
            &server.image,
            workspace_images_directory,
            Role::Server,
        )?;
        let too_long = |name: &str| KeyError::new(file, key(name), "too long");
        let spec = ServerSpec {
            name: heapless::String::try_from(server.name.as_str()).map_err(|_| too_long("name"))?,
            kind: server.kind,
            image: ImageRef {
                offset: image_index as u64,
                length: 0,
            },
            args: heapless::String::try_from(server.args.as_str()).map_err(|_| too_long("args"))?,
        };
        servers
            .push(spec)
            .map_err(|_| KeyError::new(file, "server", "more servers than the core supports"))?;
    }
    let manifest = Manifest {
        machine: Machine {
            cpus: appliance.machine.cpus,
            memory_mib: appliance.machine.memory_mib,
            stop_after_ms: appliance.machine.stop_after_ms,
            faults: appliance.faults.map(|faults| faults.plan()),
        },
        domains,
        servers,
        mode,
    };
    let image_slices: Vec<&[u8]> = images.contents.iter().map(Vec::as_slice).collect();
    ipc::boot::build(manifest, &image_slices).map_err(|error| manifest_error(appliance, &error))
}

/// Builds the bundle and writes it to `output_directory/<stem>.bundle`;
/// returns the written path.
pub fn write_bundle(
    appliance: &Appliance,
    config_path: &Path,
    mode: RunMode,
    workspace_images_directory: &Path,
    output_directory: &Path,
) -> anyhow::Result<PathBuf> {
    let bytes = build_bundle(appliance, mode, workspace_images_directory)?;
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
    fn the_faults_table_reaches_the_manifest() {
        let directory = scratch_directory("faults");
        fake_elf(&directory, "hello", 100);
        fake_elf(&directory, "pager-server", 100);
        let text = "[[domain]]\nname='a'\nkernel='cairn:hello'\n\
                    [[server]]\nname='pager'\nkind='pager'\nimage='cairn:pager-server'\n\
                    [faults]\nseed=42\nkills=7\ninterval_ms=250\n";
        let appliance = config::parse(text, "t.toml", &directory).unwrap();
        let bundle_bytes = build_bundle(&appliance, RunMode::Normal, &directory).unwrap();
        let bundle = Bundle::parse(&bundle_bytes).unwrap();
        assert_eq!(
            bundle.manifest.machine.faults,
            Some(ipc::boot::FaultPlan {
                seed: 42,
                kills: 7,
                servers: 1 << ipc::server::ServerKind::Pager as u8,
                interval_ms: 250,
            })
        );
        let plain = config::parse("[[domain]]\nname='a'\nkernel='cairn:hello'\n", "t.toml", &directory).unwrap();
        let bundle_bytes = build_bundle(&plain, RunMode::Normal, &directory).unwrap();
        assert_eq!(Bundle::parse(&bundle_bytes).unwrap().manifest.machine.faults, None);
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn servers_are_packed_and_share_images_with_domains() {
        let directory = scratch_directory("servers");
        fake_elf(&directory, "hello", 3000);
        fake_elf(&directory, "test-server", 7000);
        let text = "[[domain]]\nname='a'\nkernel='cairn:hello'\n\
                    [[server]]\nname='echo'\nkind='test'\nimage='cairn:test-server'\nargs='hostile'\n\
                    [[server]]\nname='odd'\nkind='pager'\nimage='cairn:hello'\n";
        let appliance = config::parse(text, "t.toml", &directory).unwrap();
        let bytes = build_bundle(&appliance, RunMode::Normal, &directory).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        let servers = &bundle.manifest.servers;
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].name.as_str(), "echo");
        assert_eq!(servers[0].kind, ipc::server::ServerKind::Test);
        assert_eq!(servers[0].args.as_str(), "hostile");
        assert_eq!(bundle.image(servers[0].image).len(), 7000);
        assert_eq!(servers[1].args.as_str(), "");
        assert_eq!(
            servers[1].image, bundle.manifest.domains[0].kernel,
            "an image named twice is stored once"
        );
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn a_missing_or_bad_server_image_is_named() {
        let directory = scratch_directory("missing-server");
        fake_elf(&directory, "hello", 10);
        let text = "[[domain]]\nname='a'\nkernel='cairn:hello'\n\
                    [[server]]\nname='t'\nkind='test'\nimage='cairn:test-server'\n";
        let appliance = config::parse(text, "t.toml", &directory).unwrap();
        let error = build_bundle(&appliance, RunMode::Normal, &directory).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("server[0].image"));
        assert!(
            error
                .to_string()
                .contains("server binary `test-server` not found")
                && error.message.contains("SERVER_PACKAGES"),
            "{error}"
        );
        std::fs::write(directory.join("test-server"), b"not an elf").unwrap();
        let error = build_bundle(&appliance, RunMode::Normal, &directory).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("server[0].image"));
        assert!(error.message.contains("not an ELF file"), "{error}");
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
            (BundleError::ServerName { server: 1 }, "server[1].name"),
            (BundleError::ServerImage { server: 0 }, "server[0].image"),
            (
                BundleError::DuplicateServerKind { server: 2 },
                "server[2].kind",
            ),
        ];
        for (error, key) in cases {
            assert_eq!(bundle_error_key(&error).0, key, "{error:?}");
        }
    }
}

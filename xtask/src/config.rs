//! The appliance file: a TOML description of the machine and its domains.
//!
//! ```toml
//! [machine]            # optional
//! cpus = 1             # pCPUs, 1..=ipc::boot::MAX_CPUS, default 1
//! memory = 256         # MiB for the whole machine, default 256
//!
//! [[domain]]           # one per domain, xl.cfg-style keys
//! name = "hello"       # required, [A-Za-z0-9_-], unique
//! kernel = "cairn:hello"   # required: cairn:NAME = test guest NAME of the
//!                          # `guests` crate, else a path relative to this file
//! memory = 16          # MiB, default 16
//! vcpus = 1            # default 1
//! cmdline = ""         # default empty
//! ```
//!
//! Parsing is pure ([`parse`]); it checks every key's type and range and
//! refuses unknown keys, naming each key as `domain[1].memory`. Whether the
//! kernel files exist is checked later by [`crate::bundle`], after the runner
//! has built the test guests. To add a key: add a field and one read call in
//! [`parse_domain`] or [`parse_machine`].

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use ipc::boot::{
    MAX_CMDLINE_LEN, MAX_CPUS, MAX_DOMAINS, MAX_DOMAIN_MEMORY_MIB, MAX_NAME_LEN, MAX_VCPUS,
    MIN_DOMAIN_MEMORY_MIB,
};

use crate::table::{parse_document, KeyError, TableReader};

/// pCPUs when `[machine]` gives none.
pub const DEFAULT_MACHINE_CPUS: u8 = 1;
/// Machine memory (MiB) when `[machine]` gives none.
pub const DEFAULT_MACHINE_MEMORY_MIB: u32 = 256;
/// Machine memory the runner accepts, MiB (QEMU `-m`).
pub const MACHINE_MEMORY_RANGE_MIB: RangeInclusive<u32> = 16..=65536;
/// Domain memory (MiB) when the domain gives none.
pub const DEFAULT_DOMAIN_MEMORY_MIB: u32 = 16;
/// vCPUs when the domain gives none.
pub const DEFAULT_DOMAIN_VCPUS: u8 = 1;
/// Prefix of a `kernel` value naming a test guest of the `guests` crate.
pub const WORKSPACE_GUEST_PREFIX: &str = "cairn:";

/// Where a domain's kernel image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// `cairn:NAME`: the binary NAME of the workspace's `guests` crate.
    WorkspaceGuest(String),
    /// Any other value: a file, already resolved against the config's directory.
    File(PathBuf),
}

/// The `[machine]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineConfig {
    /// Number of pCPUs (QEMU `-smp`).
    pub cpus: u8,
    /// RAM of the whole machine, MiB (QEMU `-m`).
    pub memory_mib: u32,
}

/// One `[[domain]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// Unique domain name.
    pub name: String,
    /// The kernel image.
    pub kernel: KernelSource,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest command line.
    pub cmdline: String,
}

/// A parsed appliance file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appliance {
    /// The file as shown in messages.
    pub file: String,
    /// The machine.
    pub machine: MachineConfig,
    /// The domains, in file order.
    pub domains: Vec<DomainConfig>,
}

impl Appliance {
    /// The key path of domain `index`'s `key`, e.g. `domain[1].memory`.
    pub fn domain_key(index: usize, key: &str) -> String {
        format!("domain[{index}].{key}")
    }
}

/// Reads and parses an appliance file; `file` is how messages name it.
pub fn load(path: &Path, file: &str) -> Result<Appliance, KeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| KeyError::whole_file(file, format!("cannot read the file: {error}")))?;
    let base_directory = path.parent().unwrap_or(Path::new("."));
    parse(&text, file, base_directory)
}

/// Parses appliance text. Relative kernel paths are resolved against
/// `base_directory` (the config file's directory).
pub fn parse(text: &str, file: &str, base_directory: &Path) -> Result<Appliance, KeyError> {
    let document = parse_document(text, file)?;
    let mut root = TableReader::new(&document, file, "");
    let machine = match root.table("machine")? {
        Some(table) => parse_machine(table)?,
        None => MachineConfig {
            cpus: DEFAULT_MACHINE_CPUS,
            memory_mib: DEFAULT_MACHINE_MEMORY_MIB,
        },
    };
    let domain_tables = root.table_array("domain")?;
    root.finish()?;

    if domain_tables.is_empty() {
        return Err(KeyError::new(
            file,
            "domain",
            "no [[domain]] table: an appliance needs at least one",
        ));
    }
    if domain_tables.len() > MAX_DOMAINS {
        return Err(KeyError::new(
            file,
            "domain",
            format!(
                "{} domains, more than the {MAX_DOMAINS} the core supports",
                domain_tables.len()
            ),
        ));
    }
    let mut domains: Vec<DomainConfig> = Vec::with_capacity(domain_tables.len());
    for (index, table) in domain_tables.into_iter().enumerate() {
        let domain = parse_domain(table, base_directory)?;
        if let Some(first) = domains.iter().position(|other| other.name == domain.name) {
            return Err(KeyError::new(
                file,
                Appliance::domain_key(index, "name"),
                format!("`{}` is already the name of domain[{first}]", domain.name),
            ));
        }
        domains.push(domain);
    }

    let needed_mib: u64 = domains
        .iter()
        .map(|domain| u64::from(domain.memory_mib))
        .sum();
    if needed_mib > u64::from(machine.memory_mib) {
        return Err(KeyError::new(
            file,
            "machine.memory",
            format!(
                "the domains need {needed_mib} MiB in total, more than the machine's {} MiB",
                machine.memory_mib
            ),
        ));
    }
    Ok(Appliance {
        file: file.to_owned(),
        machine,
        domains,
    })
}

/// Reads the `[machine]` table.
fn parse_machine(mut table: TableReader<'_>) -> Result<MachineConfig, KeyError> {
    let cpus = table
        .integer_in("cpus", 1..=MAX_CPUS, "")?
        .unwrap_or(DEFAULT_MACHINE_CPUS);
    let memory_mib = table
        .integer_in("memory", MACHINE_MEMORY_RANGE_MIB, " MiB")?
        .unwrap_or(DEFAULT_MACHINE_MEMORY_MIB);
    table.finish()?;
    Ok(MachineConfig { cpus, memory_mib })
}

/// Reads one `[[domain]]` table.
fn parse_domain(
    mut table: TableReader<'_>,
    base_directory: &Path,
) -> Result<DomainConfig, KeyError> {
    let name = table.required_string("name")?;
    if !ipc::boot::valid_name(name) {
        return Err(table.error(
            "name",
            format!("`{name}` must be 1..={MAX_NAME_LEN} characters of A-Z, a-z, 0-9, `-` and `_`"),
        ));
    }
    let kernel_text = table.required_string("kernel")?;
    let kernel = parse_kernel(kernel_text, base_directory)
        .map_err(|message| table.error("kernel", message))?;
    let memory_mib = table
        .integer_in(
            "memory",
            MIN_DOMAIN_MEMORY_MIB..=MAX_DOMAIN_MEMORY_MIB,
            " MiB",
        )?
        .unwrap_or(DEFAULT_DOMAIN_MEMORY_MIB);
    let vcpus = table
        .integer_in("vcpus", 1..=MAX_VCPUS, "")?
        .unwrap_or(DEFAULT_DOMAIN_VCPUS);
    let cmdline = table.string("cmdline")?.unwrap_or("");
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(table.error(
            "cmdline",
            format!(
                "{} bytes, longer than the limit of {MAX_CMDLINE_LEN}",
                cmdline.len()
            ),
        ));
    }
    if cmdline.contains('\0') {
        return Err(table.error("cmdline", "contains a NUL character"));
    }
    table.finish()?;
    Ok(DomainConfig {
        name: name.to_owned(),
        kernel,
        memory_mib,
        vcpus,
        cmdline: cmdline.to_owned(),
    })
}

/// Interprets a `kernel` value.
fn parse_kernel(text: &str, base_directory: &Path) -> Result<KernelSource, String> {
    if let Some(guest) = text.strip_prefix(WORKSPACE_GUEST_PREFIX) {
        let valid = !guest.is_empty()
            && guest
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        return if valid {
            Ok(KernelSource::WorkspaceGuest(guest.to_owned()))
        } else {
            Err(format!("`{text}`: after `{WORKSPACE_GUEST_PREFIX}` comes a guest binary name (A-Z, a-z, 0-9, `-`, `_`)"))
        };
    }
    if text.is_empty() {
        return Err("empty: give `cairn:NAME` or a path to a PVH ELF kernel".to_owned());
    }
    Ok(KernelSource::File(base_directory.join(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "appliances/test.toml";

    fn parse_text(text: &str) -> Result<Appliance, KeyError> {
        parse(text, FILE, Path::new("/base"))
    }

    /// Asserts that parsing fails on `key`, and that the message shows file and key.
    fn assert_error_on(text: &str, key: &str) -> KeyError {
        let error = parse_text(text).expect_err("the config should be refused");
        assert_eq!(error.key.as_deref(), Some(key), "wrong key in: {error}");
        assert!(
            error.to_string().starts_with(&format!("{FILE}: {key}: ")),
            "{error}"
        );
        error
    }

    const TWO_DOMAINS: &str = r#"
[machine]
cpus = 2
memory = 128

[[domain]]
name = "hello"
kernel = "cairn:hello"

[[domain]]
name = "own"
kernel = "images/own.elf"
memory = 32
vcpus = 2
cmdline = "iterations=5"
"#;

    #[test]
    fn a_full_file_parses_with_defaults() {
        let appliance = parse_text(TWO_DOMAINS).unwrap();
        assert_eq!(
            appliance.machine,
            MachineConfig {
                cpus: 2,
                memory_mib: 128
            }
        );
        assert_eq!(appliance.domains.len(), 2);
        let hello = &appliance.domains[0];
        assert_eq!(hello.kernel, KernelSource::WorkspaceGuest("hello".into()));
        assert_eq!(
            (hello.memory_mib, hello.vcpus, hello.cmdline.as_str()),
            (16, 1, "")
        );
        let own = &appliance.domains[1];
        assert_eq!(
            own.kernel,
            KernelSource::File(PathBuf::from("/base/images/own.elf"))
        );
        assert_eq!(
            (own.memory_mib, own.vcpus, own.cmdline.as_str()),
            (32, 2, "iterations=5")
        );
    }

    #[test]
    fn machine_table_is_optional() {
        let appliance = parse_text("[[domain]]\nname = 'a'\nkernel = 'cairn:hello'\n").unwrap();
        assert_eq!(
            appliance.machine,
            MachineConfig {
                cpus: 1,
                memory_mib: 256
            }
        );
    }

    #[test]
    fn missing_name_is_named() {
        assert_error_on("[[domain]]\nkernel = 'cairn:hello'\n", "domain[0].name");
    }

    #[test]
    fn missing_kernel_is_named() {
        assert_error_on("[[domain]]\nname = 'a'\n", "domain[0].kernel");
    }

    #[test]
    fn bad_memory_is_named_with_the_range() {
        let text = "[[domain]]\nname='a'\nkernel='cairn:hello'\n[[domain]]\nname='b'\nkernel='cairn:hello'\nmemory = 0\n";
        let error = assert_error_on(text, "domain[1].memory");
        assert_eq!(
            error.to_string(),
            "appliances/test.toml: domain[1].memory: 0 is out of range 2..=3072 MiB"
        );
        assert_error_on(
            "[[domain]]\nname='a'\nkernel='cairn:hello'\nmemory='16M'\n",
            "domain[0].memory",
        );
    }

    #[test]
    fn unknown_keys_are_named_everywhere() {
        let error = assert_error_on(
            "[[domain]]\nname='a'\nkernel='cairn:hello'\nmemroy=16\n",
            "domain[0].memroy",
        );
        assert!(error.message.contains("unknown key"), "{error}");
        assert!(
            error.message.contains("memory"),
            "known keys should be listed: {error}"
        );
        assert_error_on(
            "[machine]\ncpu = 1\n[[domain]]\nname='a'\nkernel='cairn:hello'\n",
            "machine.cpu",
        );
        assert_error_on(
            "colour = 1\n[[domain]]\nname='a'\nkernel='cairn:hello'\n",
            "colour",
        );
    }

    #[test]
    fn duplicate_name_is_named() {
        let text = "[[domain]]\nname='a'\nkernel='cairn:hello'\n[[domain]]\nname='a'\nkernel='cairn:hello'\n";
        let error = assert_error_on(text, "domain[1].name");
        assert!(error.message.contains("domain[0]"), "{error}");
    }

    #[test]
    fn too_much_total_memory_is_named() {
        let text = "[machine]\nmemory = 32\n[[domain]]\nname='a'\nkernel='cairn:hello'\nmemory=16\n[[domain]]\nname='b'\nkernel='cairn:hello'\nmemory=17\n";
        let error = assert_error_on(text, "machine.memory");
        assert!(error.message.contains("33 MiB"), "{error}");
    }

    #[test]
    fn bad_cpus_are_named() {
        let domain = "[[domain]]\nname='a'\nkernel='cairn:hello'\n";
        assert_error_on(&format!("[machine]\ncpus = 0\n{domain}"), "machine.cpus");
        assert_error_on(&format!("[machine]\ncpus = 99\n{domain}"), "machine.cpus");
        assert_error_on(
            "[[domain]]\nname='a'\nkernel='cairn:hello'\nvcpus=0\n",
            "domain[0].vcpus",
        );
    }

    #[test]
    fn bad_names_and_kernels_are_named() {
        assert_error_on(
            "[[domain]]\nname='has space'\nkernel='cairn:hello'\n",
            "domain[0].name",
        );
        assert_error_on(
            "[[domain]]\nname='a'\nkernel='cairn:'\n",
            "domain[0].kernel",
        );
        assert_error_on("[[domain]]\nname='a'\nkernel=''\n", "domain[0].kernel");
        assert_error_on("[[domain]]\nname='a'\nkernel=3\n", "domain[0].kernel");
    }

    #[test]
    fn no_domain_and_wrong_shapes_are_named() {
        assert_error_on("[machine]\ncpus = 1\n", "domain");
        assert_error_on("domain = 'x'\n", "domain");
        assert_error_on(
            "machine = 3\n[[domain]]\nname='a'\nkernel='cairn:hello'\n",
            "machine",
        );
    }

    #[test]
    fn long_cmdline_is_named() {
        let text = format!(
            "[[domain]]\nname='a'\nkernel='cairn:hello'\ncmdline='{}'\n",
            "x".repeat(300)
        );
        assert_error_on(&text, "domain[0].cmdline");
    }

    #[test]
    fn the_repository_appliances_parse_and_the_bad_one_is_refused() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliances");
        for name in ["default", "hello", "fault", "bench"] {
            let path = directory.join(format!("{name}.toml"));
            let appliance = load(&path, name).unwrap_or_else(|error| panic!("{error}"));
            assert!(!appliance.domains.is_empty());
        }
        let error = load(&directory.join("bad-memory.toml"), "bad-memory.toml").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("domain[0].memory"));
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let error = load(Path::new("/nonexistent/x.toml"), "x.toml").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("x.toml: cannot read the file"),
            "{error}"
        );
    }
}

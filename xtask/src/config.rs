//! The appliance file: a TOML description of the machine, its domains and
//! its ring-3 servers.
//!
//! ```toml
//! [machine]            # optional
//! cpus = 1             # pCPUs, 1..=ipc::boot::MAX_CPUS, default 1
//! memory = 256         # MiB for the whole machine, default 256
//! stop_after = 8000    # ms: stop and report CPU times (measurement runs)
//!
//! [[domain]]           # one per domain, xl.cfg-style keys
//! name = "hello"       # required, [A-Za-z0-9_-], unique
//! kernel = "cairn:hello"   # required: cairn:NAME = test guest NAME of the
//!                          # `guests` crate, else a path relative to this file
//! memory = 16          # MiB, default 16
//! vcpus = 1            # default 1
//! cmdline = ""         # default empty
//! ramdisk = "initrd.img"   # optional: a file (relative to this file) handed
//!                          # to the guest as PVH module 0
//! cpu_weight = 256         # credit scheduler weight, 1..=65535 (xl.cfg's key)
//! cap = 0                  # credit scheduler cap, percent of one pCPU (0 = none)
//! memory_target = 4        # optional: resident target, MiB, MIN..=memory
//!                          # (the pager pages the rest out; default: memory)
//! halt_poll_max = 200000   # optional: this domain's halt-polling max, ns
//!                          # (0 = no polling; default: the core's, 200000)
//!
//! [[server]]           # optional, at most ipc::boot::MAX_SERVERS
//! name = "test"        # required, same rules as a domain name, unique
//! kind = "test"        # required: "scheduler" | "pager" | "test", one server per kind
//! image = "cairn:test-server"  # required: cairn:NAME = server binary NAME of the
//!                              # workspace, else a path relative to this file
//! args = ""            # argument string, at most 255 bytes, default empty
//!
//! [faults]             # optional: a seeded fault campaign (issue #6)
//! seed = 1             # required: the core injector's PRNG seed,
//!                      # 0..=9223372036854775807 (a TOML integer)
//! kills = 50           # required: kills to make, 1..=ipc::boot::MAX_FAULT_KILLS
//! servers = ["scheduler", "pager"]  # which servers to kill, each listed once;
//!                      # every one must be a [[server]] of the appliance
//!                      # (default: the scheduler and the pager servers
//!                      # the appliance has; a test server is never killed)
//! interval_ms = 100    # mean ms between kills, 1..=60000, default 100
//! ```
//!
//! With `[faults]`, the core's seeded injector (hypervisor-core's
//! `injector`) kills the listed servers `kills` times, about one kill per
//! `interval_ms`, at points drawn from `seed` (at a server's N-th message,
//! mid-eviction, mid-page-in, or at once), and the servers restart as usual;
//! the same seed against the same events gives the same kills. `cargo xtask
//! campaign` (`make fault-campaign`) writes such an appliance and judges the
//! run ([`crate::campaign`]).
//!
//! Parsing is pure ([`parse`]); it checks every key's type and range and
//! refuses unknown keys, naming each key as `domain[1].memory`,
//! `server[0].kind` or `faults.servers[1]`. Whether the image files exist is
//! checked later by [`crate::bundle`], after the runner has built the test
//! guests and the servers. To add a key: add a field and one read call in
//! [`parse_domain`], [`parse_server`], [`parse_machine`] or [`parse_faults`].

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use ipc::boot::{
    FaultPlan, MAX_CMDLINE_LEN, MAX_CPUS, MAX_DOMAINS, MAX_DOMAIN_MEMORY_MIB, MAX_FAULT_KILLS,
    MAX_NAME_LEN, MAX_SERVERS, MAX_VCPUS, MIN_DOMAIN_MEMORY_MIB,
};
use ipc::server::{ServerKind, MAX_ARGUMENTS_LEN};

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
/// Prefix of a `kernel` or `image` value naming a binary built from the
/// workspace (a test guest of the `guests` crate, or a server).
pub const WORKSPACE_IMAGE_PREFIX: &str = "cairn:";
/// The `kind` values of a `[[server]]` table, with the kind each names.
pub const SERVER_KINDS: [(&str, ServerKind); 3] = [
    ("scheduler", ServerKind::Scheduler),
    ("pager", ServerKind::Pager),
    ("test", ServerKind::Test),
];

/// Mean time between kills (ms) when `[faults]` gives no `interval_ms`.
pub const DEFAULT_FAULT_INTERVAL_MS: u32 = 100;
/// The `interval_ms` values `[faults]` accepts.
pub const FAULT_INTERVAL_RANGE_MS: RangeInclusive<u32> = 1..=60_000;
/// The server kinds a fault campaign may kill (`[faults] servers`), in the
/// order the default lists them.
pub const KILLABLE_SERVER_KINDS: [ServerKind; 2] = [ServerKind::Scheduler, ServerKind::Pager];

/// Where an ELF image (a domain's kernel, a server's image) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `cairn:NAME`: the binary NAME built for the bare-metal target from the
    /// workspace (a test guest of the `guests` crate, or a server crate's
    /// binary).
    Workspace(String),
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
    /// Stop after this many ms, reporting CPU times (0 = never).
    pub stop_after_ms: u32,
}

/// One `[[domain]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// Unique domain name.
    pub name: String,
    /// The kernel image.
    pub kernel: ImageSource,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest command line.
    pub cmdline: String,
    /// The initial ramdisk (PVH module 0), if any.
    pub ramdisk: Option<PathBuf>,
    /// The domain's halt-polling maximum, ns (None: the core's global one).
    pub halt_poll_max_ns: Option<u64>,
    /// Credit scheduler weight (xl.cfg `cpu_weight`).
    pub cpu_weight: u32,
    /// Credit scheduler cap, percent of one pCPU (0 = none).
    pub cap: u32,
    /// Resident memory target, MiB (None: all of `memory_mib`).
    pub memory_target_mib: Option<u32>,
}

/// One `[[server]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Unique server name.
    pub name: String,
    /// Which server it is (decides its protocol).
    pub kind: ServerKind,
    /// The server's ELF image.
    pub image: ImageSource,
    /// Argument string handed to the server at every start.
    pub args: String,
}

/// The `[faults]` table: a seeded fault-injection campaign against the
/// appliance's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultsConfig {
    /// Seed of the core injector's PRNG.
    pub seed: u64,
    /// Kills to make.
    pub kills: u32,
    /// Which servers may be killed: bit `1 << kind` per [`ServerKind`]
    /// (scheduler and pager only), as in [`ipc::boot::FaultPlan`].
    pub servers: u8,
    /// Mean time between kills, ms.
    pub interval_ms: u32,
}

impl FaultsConfig {
    /// The bit of `kind` in [`Self::servers`].
    pub fn server_bit(kind: ServerKind) -> u8 {
        1 << kind as u8
    }

    /// Whether the campaign kills servers of `kind`.
    pub fn kills_kind(&self, kind: ServerKind) -> bool {
        self.servers & Self::server_bit(kind) != 0
    }

    /// The kinds killed, scheduler first.
    pub fn kinds(&self) -> Vec<ServerKind> {
        KILLABLE_SERVER_KINDS
            .into_iter()
            .filter(|kind| self.kills_kind(*kind))
            .collect()
    }

    /// The plan the core receives in its manifest.
    pub fn plan(&self) -> FaultPlan {
        FaultPlan {
            seed: self.seed,
            kills: self.kills,
            servers: self.servers,
            interval_ms: self.interval_ms,
        }
    }
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
    /// The servers, in file order (empty when the file has none).
    pub servers: Vec<ServerConfig>,
    /// The fault campaign of the `[faults]` table, if any.
    pub faults: Option<FaultsConfig>,
}

impl Appliance {
    /// The key path of domain `index`'s `key`, e.g. `domain[1].memory`.
    pub fn domain_key(index: usize, key: &str) -> String {
        format!("domain[{index}].{key}")
    }

    /// The key path of server `index`'s `key`, e.g. `server[0].kind`.
    pub fn server_key(index: usize, key: &str) -> String {
        format!("server[{index}].{key}")
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
            stop_after_ms: 0,
        },
    };
    let domain_tables = root.table_array("domain")?;
    let server_tables = root.table_array("server")?;
    let faults_table = root.table("faults")?;
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

    let servers = parse_servers(server_tables, file, base_directory)?;
    let faults = match faults_table {
        Some(table) => Some(parse_faults(table, &servers)?),
        None => None,
    };

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
        servers,
        faults,
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
    let stop_after_ms = table.integer_in("stop_after", 0..=3_600_000u32, " ms")?.unwrap_or(0);
    table.finish()?;
    Ok(MachineConfig { cpus, memory_mib, stop_after_ms })
}

/// Reads the `[faults]` table; `servers` are the appliance's servers, which
/// the listed kinds (or the default) are checked against.
fn parse_faults(mut table: TableReader<'_>, servers: &[ServerConfig]) -> Result<FaultsConfig, KeyError> {
    let seed = table
        .integer_in("seed", 0..=i64::MAX, "")?
        .ok_or_else(|| table.error("seed", "missing (this key is required: the injector's PRNG seed)"))?;
    let kills = table
        .integer_in("kills", 1..=MAX_FAULT_KILLS, "")?
        .ok_or_else(|| table.error("kills", "missing (this key is required: how many kills to make)"))?;
    let interval_ms = table
        .integer_in("interval_ms", FAULT_INTERVAL_RANGE_MS, " ms")?
        .unwrap_or(DEFAULT_FAULT_INTERVAL_MS);
    let listed = table.string_list("servers")?;
    let has = |kind: ServerKind| servers.iter().any(|server| server.kind == kind);
    let killable: Vec<&str> = KILLABLE_SERVER_KINDS.iter().map(|kind| kind_name(*kind)).collect();
    let mut mask = 0u8;
    match listed {
        None => {
            for kind in KILLABLE_SERVER_KINDS.into_iter().filter(|kind| has(*kind)) {
                mask |= FaultsConfig::server_bit(kind);
            }
            if mask == 0 {
                return Err(table.error(
                    "servers",
                    format!(
                        "the appliance has no server to kill: add a [[server]] of kind {}",
                        killable.join(" or ")
                    ),
                ));
            }
        }
        Some(names) => {
            if names.is_empty() {
                return Err(table.error(
                    "servers",
                    format!("empty: list the servers to kill ({})", killable.join(", ")),
                ));
            }
            for (index, name) in names.iter().enumerate() {
                let key = format!("servers[{index}]");
                let kind = KILLABLE_SERVER_KINDS
                    .into_iter()
                    .find(|kind| kind_name(*kind) == name)
                    .ok_or_else(|| {
                        table.error(
                            &key,
                            format!("`{name}` is not a server kind a campaign kills (known: {})", killable.join(", ")),
                        )
                    })?;
                let bit = FaultsConfig::server_bit(kind);
                if mask & bit != 0 {
                    return Err(table.error(&key, format!("`{name}` is listed twice")));
                }
                if !has(kind) {
                    return Err(table.error(
                        &key,
                        format!("the appliance has no server of kind `{name}` (add a [[server]] with kind = \"{name}\")"),
                    ));
                }
                mask |= bit;
            }
        }
    }
    table.finish()?;
    Ok(FaultsConfig {
        seed: seed as u64,
        kills,
        servers: mask,
        interval_ms,
    })
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
    let kernel = parse_image(kernel_text, base_directory, "a PVH ELF kernel")
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
    let cpu_weight = table.integer_in("cpu_weight", 1..=65_535u32, "")?.unwrap_or(ipc::boot::DEFAULT_CPU_WEIGHT);
    let cap = table.integer_in("cap", 0..=ipc::boot::MAX_CAP, " percent")?.unwrap_or(0);
    let halt_poll_max_ns = table
        .integer_in("halt_poll_max", 0..=ipc::boot::MAX_HALT_POLL_NS as u32, " ns")?
        .map(u64::from);
    let memory_target_mib = table.integer_in("memory_target", MIN_DOMAIN_MEMORY_MIB..=MAX_DOMAIN_MEMORY_MIB, " MiB")?;
    if let Some(target) = memory_target_mib {
        if target > memory_mib {
            return Err(table.error(
                "memory_target",
                format!("{target} MiB is larger than the domain's memory ({memory_mib} MiB)"),
            ));
        }
    }
    let ramdisk = match table.string("ramdisk")? {
        Some("") => return Err(table.error("ramdisk", "empty: give a path to the module file")),
        Some(path) => Some(base_directory.join(path)),
        None => None,
    };
    table.finish()?;
    Ok(DomainConfig {
        name: name.to_owned(),
        kernel,
        memory_mib,
        vcpus,
        cmdline: cmdline.to_owned(),
        ramdisk,
        halt_poll_max_ns,
        cpu_weight,
        cap,
        memory_target_mib,
    })
}

/// Reads the `[[server]]` tables: each one, then the limits across them
/// (count, unique names, one server per kind).
fn parse_servers(
    tables: Vec<TableReader<'_>>,
    file: &str,
    base_directory: &Path,
) -> Result<Vec<ServerConfig>, KeyError> {
    if tables.len() > MAX_SERVERS {
        return Err(KeyError::new(
            file,
            "server",
            format!(
                "{} servers, more than the {MAX_SERVERS} the core supports",
                tables.len()
            ),
        ));
    }
    let mut servers: Vec<ServerConfig> = Vec::with_capacity(tables.len());
    for (index, table) in tables.into_iter().enumerate() {
        let server = parse_server(table, base_directory)?;
        if let Some(first) = servers.iter().position(|other| other.name == server.name) {
            return Err(KeyError::new(
                file,
                Appliance::server_key(index, "name"),
                format!("`{}` is already the name of server[{first}]", server.name),
            ));
        }
        if let Some(first) = servers.iter().position(|other| other.kind == server.kind) {
            return Err(KeyError::new(
                file,
                Appliance::server_key(index, "kind"),
                format!(
                    "server[{first}] is already of kind `{}`: one server per kind",
                    kind_name(server.kind)
                ),
            ));
        }
        servers.push(server);
    }
    Ok(servers)
}

/// The `kind` value that names `kind`.
pub fn kind_name(kind: ServerKind) -> &'static str {
    SERVER_KINDS
        .iter()
        .find(|(_, known)| *known == kind)
        .map_or("?", |(name, _)| name)
}

/// Reads one `[[server]]` table.
fn parse_server(
    mut table: TableReader<'_>,
    base_directory: &Path,
) -> Result<ServerConfig, KeyError> {
    let name = table.required_string("name")?;
    if !ipc::boot::valid_name(name) {
        return Err(table.error(
            "name",
            format!("`{name}` must be 1..={MAX_NAME_LEN} characters of A-Z, a-z, 0-9, `-` and `_`"),
        ));
    }
    let kind_text = table.required_string("kind")?;
    let kind = SERVER_KINDS
        .iter()
        .find(|(known, _)| *known == kind_text)
        .map(|(_, kind)| *kind)
        .ok_or_else(|| {
            let known: Vec<&str> = SERVER_KINDS.iter().map(|(known, _)| *known).collect();
            table.error(
                "kind",
                format!(
                    "`{kind_text}` is not a server kind (known kinds: {})",
                    known.join(", ")
                ),
            )
        })?;
    let image_text = table.required_string("image")?;
    let image = parse_image(image_text, base_directory, "a server ELF image")
        .map_err(|message| table.error("image", message))?;
    let args = table.string("args")?.unwrap_or("");
    if args.len() > MAX_ARGUMENTS_LEN {
        return Err(table.error(
            "args",
            format!(
                "{} bytes, longer than the limit of {MAX_ARGUMENTS_LEN}",
                args.len()
            ),
        ));
    }
    if args.contains('\0') {
        return Err(table.error("args", "contains a NUL character"));
    }
    table.finish()?;
    Ok(ServerConfig {
        name: name.to_owned(),
        kind,
        image,
        args: args.to_owned(),
    })
}

/// Interprets a `kernel` or `image` value; `what` names the file expected
/// when the value is empty.
fn parse_image(text: &str, base_directory: &Path, what: &str) -> Result<ImageSource, String> {
    if let Some(binary) = text.strip_prefix(WORKSPACE_IMAGE_PREFIX) {
        let valid = !binary.is_empty()
            && binary
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        return if valid {
            Ok(ImageSource::Workspace(binary.to_owned()))
        } else {
            Err(format!("`{text}`: after `{WORKSPACE_IMAGE_PREFIX}` comes a workspace binary name (A-Z, a-z, 0-9, `-`, `_`)"))
        };
    }
    if text.is_empty() {
        return Err(format!("empty: give `cairn:NAME` or a path to {what}"));
    }
    Ok(ImageSource::File(base_directory.join(text)))
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
                memory_mib: 128,
                stop_after_ms: 0
            }
        );
        assert_eq!(appliance.domains.len(), 2);
        let hello = &appliance.domains[0];
        assert_eq!(hello.kernel, ImageSource::Workspace("hello".into()));
        assert_eq!(
            (hello.memory_mib, hello.vcpus, hello.cmdline.as_str()),
            (16, 1, "")
        );
        let own = &appliance.domains[1];
        assert_eq!(
            own.kernel,
            ImageSource::File(PathBuf::from("/base/images/own.elf"))
        );
        assert_eq!(
            (own.memory_mib, own.vcpus, own.cmdline.as_str()),
            (32, 2, "iterations=5")
        );
    }

    #[test]
    fn ramdisk_is_a_path_relative_to_the_file() {
        let appliance = parse_text("[[domain]]\nname='a'\nkernel='cairn:hello'\nramdisk='initrd.img'\n").unwrap();
        assert_eq!(appliance.domains[0].ramdisk, Some(PathBuf::from("/base/initrd.img")));
        assert_error_on("[[domain]]\nname='a'\nkernel='cairn:hello'\nramdisk=''\n", "domain[0].ramdisk");
        assert_error_on("[[domain]]\nname='a'\nkernel='cairn:hello'\nramdisk=3\n", "domain[0].ramdisk");
    }

    #[test]
    fn memory_target_is_checked_against_memory() {
        let appliance = parse_text("[[domain]]\nname='a'\nkernel='cairn:hello'\nmemory=32\nmemory_target=8\n").unwrap();
        assert_eq!(appliance.domains[0].memory_target_mib, Some(8));
        let defaults = parse_text("[[domain]]\nname='a'\nkernel='cairn:hello'\n").unwrap();
        assert_eq!(defaults.domains[0].memory_target_mib, None);
        assert_error_on("[[domain]]\nname='a'\nkernel='cairn:hello'\nmemory=16\nmemory_target=17\n", "domain[0].memory_target");
        assert_error_on("[[domain]]\nname='a'\nkernel='cairn:hello'\nmemory=16\nmemory_target=1\n", "domain[0].memory_target");
    }

    #[test]
    fn weight_and_cap_use_xen_ranges() {
        let appliance = parse_text("[[domain]]\nname='a'\nkernel='cairn:hello'\ncpu_weight=512\ncap=50\n").unwrap();
        assert_eq!((appliance.domains[0].cpu_weight, appliance.domains[0].cap), (512, 50));
        let defaults = parse_text("[[domain]]\nname='a'\nkernel='cairn:hello'\n").unwrap();
        assert_eq!((defaults.domains[0].cpu_weight, defaults.domains[0].cap), (256, 0));
        assert_error_on("[[domain]]\nname='a'\nkernel='cairn:hello'\ncpu_weight=0\n", "domain[0].cpu_weight");
        assert_error_on("[[domain]]\nname='a'\nkernel='cairn:hello'\ncpu_weight=65536\n", "domain[0].cpu_weight");
        assert_error_on("[[domain]]\nname='a'\nkernel='cairn:hello'\ncap=801\n", "domain[0].cap");
    }

    #[test]
    fn halt_poll_max_is_checked() {
        let appliance = parse_text("[[domain]]\nname='a'\nkernel='cairn:hello'\nhalt_poll_max=0\n").unwrap();
        assert_eq!(appliance.domains[0].halt_poll_max_ns, Some(0));
        assert_error_on("[[domain]]\nname='a'\nkernel='cairn:hello'\nhalt_poll_max=5000000\n", "domain[0].halt_poll_max");
    }

    #[test]
    fn machine_table_is_optional() {
        let appliance = parse_text("[[domain]]\nname = 'a'\nkernel = 'cairn:hello'\n").unwrap();
        assert_eq!(
            appliance.machine,
            MachineConfig {
                cpus: 1,
                memory_mib: 256,
                stop_after_ms: 0
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
        for name in ["default", "hello", "fault", "bench", "servers", "hostile", "campaign"] {
            let path = directory.join(format!("{name}.toml"));
            let appliance = load(&path, name).unwrap_or_else(|error| panic!("{error}"));
            assert!(!appliance.domains.is_empty());
        }
        let hostile = load(&directory.join("hostile.toml"), "hostile").unwrap();
        assert_eq!(hostile.servers.len(), 1);
        assert_eq!(hostile.servers[0].kind, ServerKind::Test);
        assert!(hostile.servers[0].args.contains("hostile"));
        let campaign = load(&directory.join("campaign.toml"), "campaign").unwrap();
        let faults = campaign.faults.expect("campaign.toml has a [faults] table");
        assert_eq!(faults.kinds(), vec![ServerKind::Scheduler, ServerKind::Pager]);
        assert!(faults.kills >= 50, "issue #6: at least 50 kills in make test");
        let error = load(&directory.join("bad-memory.toml"), "bad-memory.toml").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("domain[0].memory"));
    }

    const DOMAIN: &str = "[[domain]]\nname='a'\nkernel='cairn:hello'\n";

    #[test]
    fn servers_parse_with_defaults() {
        let text = format!(
            "{DOMAIN}[[server]]\nname='test'\nkind='test'\nimage='cairn:test-server'\nargs='hostile'\n\
             [[server]]\nname='sched'\nkind='scheduler'\nimage='bin/scheduler.elf'\n"
        );
        let appliance = parse_text(&text).unwrap();
        assert_eq!(
            appliance.servers,
            vec![
                ServerConfig {
                    name: "test".into(),
                    kind: ServerKind::Test,
                    image: ImageSource::Workspace("test-server".into()),
                    args: "hostile".into(),
                },
                ServerConfig {
                    name: "sched".into(),
                    kind: ServerKind::Scheduler,
                    image: ImageSource::File(PathBuf::from("/base/bin/scheduler.elf")),
                    args: String::new(),
                },
            ]
        );
        assert!(parse_text(DOMAIN).unwrap().servers.is_empty());
    }

    #[test]
    fn server_errors_name_the_key() {
        let server = |body: &str| format!("{DOMAIN}[[server]]\n{body}");
        let error = assert_error_on(
            &server("name='t'\nkind='tester'\nimage='cairn:test-server'\n"),
            "server[0].kind",
        );
        assert!(error.message.contains("scheduler, pager, test"), "{error}");
        assert_error_on(
            &server("name='t'\nimage='cairn:test-server'\n"),
            "server[0].kind",
        );
        assert_error_on(
            &server("kind='test'\nimage='cairn:test-server'\n"),
            "server[0].name",
        );
        assert_error_on(
            &server("name='bad name'\nkind='test'\nimage='cairn:test-server'\n"),
            "server[0].name",
        );
        assert_error_on(&server("name='t'\nkind='test'\n"), "server[0].image");
        assert_error_on(
            &server("name='t'\nkind='test'\nimage=''\n"),
            "server[0].image",
        );
        assert_error_on(
            &server("name='t'\nkind='test'\nimage='cairn:'\n"),
            "server[0].image",
        );
        assert_error_on(
            &server("name='t'\nkind='test'\nimage='cairn:test-server'\nargs=1\n"),
            "server[0].args",
        );
        let long = "x".repeat(MAX_ARGUMENTS_LEN + 1);
        let error = assert_error_on(
            &server(&format!(
                "name='t'\nkind='test'\nimage='cairn:test-server'\nargs='{long}'\n"
            )),
            "server[0].args",
        );
        assert!(error.message.contains("256 bytes"), "{error}");
        let exact = "x".repeat(MAX_ARGUMENTS_LEN);
        assert!(parse_text(&server(&format!(
            "name='t'\nkind='test'\nimage='cairn:test-server'\nargs='{exact}'\n"
        )))
        .is_ok());
        assert_error_on(
            &server("name='t'\nkind='test'\nimage='cairn:test-server'\nargs=\"a\\u0000b\"\n"),
            "server[0].args",
        );
        let error = assert_error_on(
            &server("name='t'\nkind='test'\nimage='cairn:test-server'\nmemory=4\n"),
            "server[0].memory",
        );
        assert!(error.message.contains("unknown key"), "{error}");
        assert_error_on(&format!("server = 'x'\n{DOMAIN}"), "server");
    }

    #[test]
    fn duplicate_server_names_kinds_and_too_many_servers_are_named() {
        let one = |name: &str, kind: &str| {
            format!("[[server]]\nname='{name}'\nkind='{kind}'\nimage='cairn:test-server'\n")
        };
        let error = assert_error_on(
            &format!("{DOMAIN}{}{}", one("a", "test"), one("a", "pager")),
            "server[1].name",
        );
        assert!(error.message.contains("server[0]"), "{error}");
        let error = assert_error_on(
            &format!("{DOMAIN}{}{}", one("a", "test"), one("b", "test")),
            "server[1].kind",
        );
        assert!(error.message.contains("one server per kind"), "{error}");
        let many: String = (0..=MAX_SERVERS)
            .map(|index| one(&format!("s{index}"), "test"))
            .collect();
        assert_error_on(&format!("{DOMAIN}{many}"), "server");
    }

    const KILLABLE: &str = "[[server]]\nname='sched'\nkind='scheduler'\nimage='cairn:scheduler-server'\n\
                            [[server]]\nname='pager'\nkind='pager'\nimage='cairn:pager-server'\n";

    fn with_faults(servers: &str, faults: &str) -> String {
        format!("{DOMAIN}{servers}[faults]\n{faults}")
    }

    #[test]
    fn faults_parse_with_defaults_and_map_to_the_plan() {
        assert_eq!(parse_text(DOMAIN).unwrap().faults, None);
        let both = FaultsConfig::server_bit(ServerKind::Scheduler) | FaultsConfig::server_bit(ServerKind::Pager);
        let appliance = parse_text(&with_faults(KILLABLE, "seed = 7\nkills = 50\n")).unwrap();
        let faults = appliance.faults.unwrap();
        assert_eq!(
            faults,
            FaultsConfig { seed: 7, kills: 50, servers: both, interval_ms: DEFAULT_FAULT_INTERVAL_MS }
        );
        assert_eq!(faults.kinds(), vec![ServerKind::Scheduler, ServerKind::Pager]);
        assert_eq!(
            faults.plan(),
            FaultPlan { seed: 7, kills: 50, servers: 0b11, interval_ms: 100 },
            "bit 1 << ServerKind as u8, as the core reads it"
        );
        let appliance = parse_text(&with_faults(
            KILLABLE,
            "seed = 9223372036854775807\nkills = 100000\nservers = ['pager']\ninterval_ms = 60000\n",
        ))
        .unwrap();
        let faults = appliance.faults.unwrap();
        assert_eq!((faults.seed, faults.kills, faults.interval_ms), (i64::MAX as u64, MAX_FAULT_KILLS, 60_000));
        assert!(faults.kills_kind(ServerKind::Pager) && !faults.kills_kind(ServerKind::Scheduler));
        assert_eq!(faults.plan().servers, 0b10);
        let scheduler_only = "[[server]]\nname='s'\nkind='scheduler'\nimage='cairn:scheduler-server'\n\
                              [[server]]\nname='t'\nkind='test'\nimage='cairn:test-server'\n";
        let appliance = parse_text(&with_faults(scheduler_only, "seed = 0\nkills = 1\n")).unwrap();
        assert_eq!(
            appliance.faults.unwrap().kinds(),
            vec![ServerKind::Scheduler],
            "the default is the killable servers the appliance has"
        );
    }

    #[test]
    fn fault_errors_name_the_key() {
        let error = assert_error_on(&with_faults(KILLABLE, "kills = 5\n"), "faults.seed");
        assert!(error.message.contains("required"), "{error}");
        assert_error_on(&with_faults(KILLABLE, "seed = 1\n"), "faults.kills");
        assert_error_on(&with_faults(KILLABLE, "seed = -1\nkills = 5\n"), "faults.seed");
        assert_error_on(&with_faults(KILLABLE, "seed = 'x'\nkills = 5\n"), "faults.seed");
        let error = assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 0\n"), "faults.kills");
        assert_eq!(error.message, "0 is out of range 1..=100000");
        assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 100001\n"), "faults.kills");
        let error = assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 5\ninterval_ms = 0\n"), "faults.interval_ms");
        assert_eq!(error.message, "0 is out of range 1..=60000 ms");
        assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 5\ninterval_ms = 60001\n"), "faults.interval_ms");
        let error = assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 5\nservers = ['pager', 'test']\n"), "faults.servers[1]");
        assert!(error.message.contains("scheduler, pager"), "{error}");
        let error = assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 5\nservers = ['pager', 'pager']\n"), "faults.servers[1]");
        assert!(error.message.contains("twice"), "{error}");
        assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 5\nservers = []\n"), "faults.servers");
        assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 5\nservers = 'pager'\n"), "faults.servers");
        assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 5\nservers = [1]\n"), "faults.servers[0]");
        let error = assert_error_on(&with_faults(KILLABLE, "seed = 1\nkills = 5\nkill = 3\n"), "faults.kill");
        assert!(error.message.contains("unknown key") && error.message.contains("interval_ms"), "{error}");
        assert_error_on(&format!("faults = 3\n{DOMAIN}"), "faults");
    }

    #[test]
    fn faults_refuse_a_server_kind_the_appliance_lacks() {
        let pager_only = "[[server]]\nname='pager'\nkind='pager'\nimage='cairn:pager-server'\n";
        let error = assert_error_on(&with_faults(pager_only, "seed = 1\nkills = 5\nservers = ['scheduler']\n"), "faults.servers[0]");
        assert!(error.message.contains("no server of kind `scheduler`"), "{error}");
        assert!(parse_text(&with_faults(pager_only, "seed = 1\nkills = 5\nservers = ['pager']\n")).is_ok());
        let error = assert_error_on(&with_faults("", "seed = 1\nkills = 5\n"), "faults.servers");
        assert!(error.message.contains("no server to kill"), "{error}");
        let test_only = "[[server]]\nname='t'\nkind='test'\nimage='cairn:test-server'\n";
        assert_error_on(&with_faults(test_only, "seed = 1\nkills = 5\n"), "faults.servers");
    }

    #[test]
    fn every_server_kind_has_a_name() {
        for (name, kind) in SERVER_KINDS {
            assert_eq!(kind_name(kind), name);
        }
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

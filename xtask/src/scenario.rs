//! QEMU scenarios: `tests/scenarios.toml`, and judging a run against one.
//!
//! ```toml
//! [[scenario]]
//! name = "hello"                       # required, unique
//! description = "hello boots and powers off"   # required, one line
//! config = "appliances/hello.toml"     # required, relative to the workspace root
//! machine = "microvm"                  # "microvm" (default) or "pc"
//! expect = ["hello: Hello from cairn"] # substrings, each in a later line than the last
//! forbid = ["panicked"]                # substrings no line may contain
//! exit = "AllPoweredOff"               # AllPoweredOff | DomainFailed | CorePanic | BootError
//! timeout = 30                         # seconds (default 60)
//! control = [                          # hvctl commands run during the boot
//!     { at = 2.0, command = "sched-credit -d spinner -c 50", expect = "spinner" },
//! ]
//! swap_mib = 64                        # a fresh zeroed swap disk of this size (microvm only)
//! swap_faults = "read"                 # device errors on it: "read" (needs swap_mib)
//! swap_faults_after_reads = 4000       # "read": this many reads succeed first (default 0)
//! pending = "the core's paging is not in yet"  # `cargo xtask test` skips it, saying why
//!
//! [[scenario]]                         # a config that must be refused
//! name = "bad-config"
//! description = "a bad appliance file is refused, naming the key"
//! config = "appliances/bad-memory.toml"
//! config_error = "domain[0].memory"    # text the runner's error must contain
//! ```
//!
//! A boot scenario passes when every expected substring is found in order
//! (each in a line after the line that matched the previous one), no line
//! contains a forbidden substring, QEMU exits with the expected code, and
//! all of it within the timeout. A `config_error` scenario boots nothing: it
//! passes when loading the appliance fails and the error contains the text.
//! Lines are matched as printed (`NAME: text`, `cairn  WARN ...`, `qemu: ...`).
//!
//! With `swap_mib`, every run gets a new zero-filled (sparse) raw image
//! `target/scenarios/NAME/swap.img` of that many MiB, attached as a
//! virtio-blk device on a virtio-mmio transport for the pager
//! ([`crate::qemu::swap_arguments`]); `machine = "pc"` is refused with it.
//! `swap_faults` attaches that image through QEMU's blkdebug driver with a
//! rules file written next to it (`swap.blkdebug`): `"read"` makes every
//! read after the first write fail with EIO while writes keep working, or,
//! with `swap_faults_after_reads = N`, every read after the first N that
//! follow the first write ([`crate::qemu::SwapFaults`]).
//! A scenario with `pending` is listed and run by `cargo xtask scenario
//! NAME` as usual, but `cargo xtask test` skips it and lists it as pending
//! with the reason (for a test written before the feature it checks).
//!
//! A boot scenario whose appliance has a `[faults]` table is also judged by
//! the fault campaign judge ([`crate::campaign::judge`]): every kill made
//! and answered by a ready line, no page lost, every guest progressing after
//! the last kill, the shares after recovery within ±3 points.
//!
//! A `control` step runs its `hvctl` command (checked when the file is
//! loaded) `at` seconds after QEMU was spawned, over the boot's control
//! socket ([`crate::control`]); its output lines join the transcript as
//! `hvctl: ...` (an error as `hvctl: error: ...`), so `expect` and `forbid`
//! see them too. Steps are listed in order of time, before the timeout. A
//! step passes when it ran and, with `expect`, one of its output lines
//! contains that text (which may be an error's), with `expect_any`, one
//! of its lines contains one of those texts, or, without either, the
//! command succeeded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipc::exit_status::ExitStatus as CoreExit;

use crate::control::{ControlStep, StepOutcome};
use crate::decode::Line;
use crate::qemu::{
    check_swap_machine, Ending, MachineType, QemuExit, SwapFaults, SWAP_FAULT_READS_OK_MAX,
};
use crate::table::{parse_document, KeyError, TableReader};

/// Timeout of a boot scenario that gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Output lines shown when a scenario fails.
pub const TAIL_LINES: usize = 40;
/// Largest swap disk, MiB (`swap_mib`, `run --swap-mib`).
pub const SWAP_MIB_MAX: u32 = 65_536;

/// The core exit codes by the names scenario files use.
const EXIT_NAMES: [(&str, CoreExit); 5] = [
    ("AllPoweredOff", CoreExit::AllPoweredOff),
    ("DomainFailed", CoreExit::DomainFailed),
    ("CorePanic", CoreExit::CorePanic),
    ("BootError", CoreExit::BootError),
    ("TimeLimit", CoreExit::TimeLimit),
];

/// What a scenario checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Boot the appliance and judge the run.
    Boot {
        /// QEMU machine model.
        machine: MachineType,
        /// Substrings expected in order.
        expect: Vec<String>,
        /// Substrings that must not appear.
        forbid: Vec<String>,
        /// The expected core exit code.
        exit: CoreExit,
        /// Wall-clock limit for the boot.
        timeout: Duration,
        /// `hvctl` commands to run during the boot.
        control: Vec<ControlStep>,
        /// Checks on the CPU time the core reports per domain.
        cpu: Vec<CpuCheck>,
        /// Size of a fresh swap disk for the boot, MiB (none: no disk).
        swap_mib: Option<u32>,
        /// Device errors injected into the swap disk (needs `swap_mib`).
        swap_faults: Option<SwapFaults>,
    },
    /// Loading the appliance must fail with an error containing this text.
    ConfigError(String),
}

/// A check on the core's `domain NAME: cpu time X us in Y us` lines (the
/// last such line of each domain counts).
#[derive(Debug, Clone, PartialEq)]
pub enum CpuCheck {
    /// `usage = [{ domain, min, max }]`: X / Y, percent of one pCPU.
    Usage {
        /// The domain.
        domain: String,
        /// Lowest allowed, percent.
        min: f64,
        /// Highest allowed, percent.
        max: f64,
    },
    /// `shares = [{ domains, expect, tolerance }]`: each domain's X as a
    /// percentage of the listed domains' total, within `tolerance` points of
    /// its `expect`.
    Shares {
        /// The domains.
        domains: Vec<String>,
        /// Their expected shares, percent.
        expect: Vec<f64>,
        /// Allowed deviation, percentage points.
        tolerance: f64,
    },
    /// `counters = [{ line, field, min, max, before }]`: in the last output
    /// line containing `line`, the number after the word `field` (before it
    /// with `before = true`) lies in `min..=max` (e.g. the core's
    /// `domain NAME: paging: out N, in M, ...`).
    Counter {
        /// Text that picks the line.
        line: String,
        /// The word the number follows (or precedes).
        field: String,
        /// The number comes before the word (`12 mid-eviction`).
        before: bool,
        /// Lowest allowed.
        min: f64,
        /// Highest allowed.
        max: f64,
    },
    /// `wake_latency = [{ faster, slower, max_ratio }]`: the median
    /// wake-to-run latency the core reports for domain `faster` is at most
    /// `max_ratio` times that of domain `slower`.
    WakeLatency {
        /// The domain that must wake faster.
        faster: String,
        /// The domain it is compared with.
        slower: String,
        /// Largest allowed ratio.
        max_ratio: f64,
    },
}

/// Reads `usage` and `shares`.
fn parse_cpu_checks(table: &mut TableReader<'_>) -> Result<Vec<CpuCheck>, KeyError> {
    let mut checks = Vec::new();
    for mut entry in table.table_array("usage")? {
        let domain = entry.required_string("domain")?.to_owned();
        let min = entry.number("min")?.unwrap_or(0.0);
        let max = entry.number("max")?.unwrap_or(100.0);
        if min > max {
            return Err(entry.error("min", format!("{min} is above max {max}")));
        }
        entry.finish()?;
        checks.push(CpuCheck::Usage { domain, min, max });
    }
    for mut entry in table.table_array("shares")? {
        let domains = entry.string_list("domains")?.unwrap_or_default();
        let expect = entry.number_list("expect")?.unwrap_or_default();
        let tolerance = entry.number("tolerance")?.ok_or_else(|| entry.error("tolerance", "missing (percentage points)"))?;
        if domains.len() < 2 || domains.len() != expect.len() {
            return Err(entry.error("expect", "give at least two domains and one expected share per domain"));
        }
        entry.finish()?;
        checks.push(CpuCheck::Shares { domains, expect, tolerance });
    }
    for mut entry in table.table_array("counters")? {
        let line = entry.required_string("line")?.to_owned();
        let field = entry.required_string("field")?.to_owned();
        let min = entry.number("min")?.unwrap_or(f64::MIN);
        let max = entry.number("max")?.unwrap_or(f64::MAX);
        let before = entry.boolean("before")?.unwrap_or(false);
        if min > max {
            return Err(entry.error("min", format!("{min} is above max {max}")));
        }
        entry.finish()?;
        checks.push(CpuCheck::Counter { line, field, before, min, max });
    }
    for mut entry in table.table_array("wake_latency")? {
        let faster = entry.required_string("faster")?.to_owned();
        let slower = entry.required_string("slower")?.to_owned();
        let max_ratio = entry.number("max_ratio")?.ok_or_else(|| entry.error("max_ratio", "missing"))?;
        entry.finish()?;
        checks.push(CpuCheck::WakeLatency { faster, slower, max_ratio });
    }
    Ok(checks)
}

/// The number after (or, with `before`, before) the word `field` in the
/// last line containing `pattern`.
fn counter(text: &[String], pattern: &str, field: &str, before: bool) -> Option<f64> {
    let line = text.iter().rev().find(|line| line.contains(pattern))?;
    let words: Vec<&str> = line.split_whitespace().map(|word| word.trim_matches(|c: char| c == ',' || c == ';' || c == '(' || c == ')')).collect();
    let at = words.iter().position(|word| *word == field)?;
    let number = if before { words.get(at.checked_sub(1)?)? } else { words.get(at + 1)? };
    number.parse().ok()
}

/// Median wake-to-run latency (ns) per domain, from the core's lines.
fn wake_latencies(text: &[String]) -> std::collections::HashMap<String, f64> {
    let mut latencies = std::collections::HashMap::new();
    for line in text {
        let Some(rest) = line.split("INFO domain ").nth(1) else { continue };
        let Some((head, tail)) = rest.split_once(": wake-to-run latency median ") else { continue };
        let name = head.split(" vCPU").next().unwrap_or(head);
        if let Some(value) = tail.split_whitespace().next().and_then(|word| word.parse::<f64>().ok()) {
            latencies.insert(name.to_owned(), value);
        }
    }
    latencies
}

/// The CPU time (µs) and the time it was measured over (µs) per domain,
/// from the core's `domain NAME: cpu time X us in Y us` lines (the last
/// line of a domain counts).
pub fn cpu_times(text: &[String]) -> std::collections::HashMap<String, (f64, f64)> {
    let mut times = std::collections::HashMap::new();
    for line in text {
        let Some(rest) = line.split("INFO domain ").nth(1) else { continue };
        let Some((name, numbers)) = rest.split_once(": cpu time ") else { continue };
        let mut words = numbers.split_whitespace();
        let used = words.next().and_then(|word| word.parse::<f64>().ok());
        let over = words.nth(2).and_then(|word| word.parse::<f64>().ok());
        if let (Some(used), Some(over)) = (used, over) {
            times.insert(name.to_owned(), (used, over));
        }
    }
    times
}

/// Each of `domains`' CPU time as a percentage of the domains' total, in
/// their order, from [`cpu_times`]; `None` if one has no cpu time line.
pub fn shares(times: &std::collections::HashMap<String, (f64, f64)>, domains: &[String]) -> Option<Vec<f64>> {
    let used: Vec<f64> = domains.iter().map(|domain| times.get(domain).map(|time| time.0)).collect::<Option<_>>()?;
    let total: f64 = used.iter().sum::<f64>().max(1.0);
    Some(used.iter().map(|used| used / total * 100.0).collect())
}

/// Judges the CPU checks against the output.
pub fn judge_cpu(text: &[String], checks: &[CpuCheck]) -> Vec<Failure> {
    let times = cpu_times(text);
    let latencies = wake_latencies(text);
    let mut failures = Vec::new();
    for check in checks {
        match check {
            CpuCheck::Usage { domain, min, max } => match times.get(domain) {
                None => failures.push(Failure::Cpu(format!("no cpu time line for domain {domain}"))),
                Some(&(used, over)) => {
                    let percent = used / over.max(1.0) * 100.0;
                    if percent < *min || percent > *max {
                        failures.push(Failure::Cpu(format!(
                            "domain {domain} used {percent:.2} % of a pCPU, outside {min}..={max} %"
                        )));
                    }
                }
            },
            CpuCheck::Shares { domains, expect, tolerance } => {
                let Some(measured) = shares(&times, domains) else {
                    failures.push(Failure::Cpu(format!("a cpu time line is missing for one of {domains:?}")));
                    continue;
                };
                for ((domain, share), expected) in domains.iter().zip(measured).zip(expect.iter()) {
                    if (share - expected).abs() > *tolerance {
                        failures.push(Failure::Cpu(format!(
                            "domain {domain} got {share:.1} % of the shared CPU time, expected {expected} ± {tolerance}"
                        )));
                    }
                }
            }
            CpuCheck::Counter { line, field, before, min, max } => match counter(text, line, field, *before) {
                None => failures.push(Failure::Cpu(format!("no line with `{line}` and a number after `{field}`"))),
                Some(value) if value < *min || value > *max => failures.push(Failure::Cpu(format!(
                    "`{line}` {field} {value} is outside {min}..={max}"
                ))),
                Some(_) => {}
            },
            CpuCheck::WakeLatency { faster, slower, max_ratio } => {
                match (latencies.get(faster), latencies.get(slower)) {
                    (Some(&fast), Some(&slow)) => {
                        let ratio = fast / slow.max(1.0);
                        if ratio > *max_ratio {
                            failures.push(Failure::Cpu(format!(
                                "wake latency of {faster} ({fast} ns) is {ratio:.3} × that of {slower} ({slow} ns), above {max_ratio}"
                            )));
                        }
                    }
                    _ => failures.push(Failure::Cpu(format!("no wake latency line for {faster} or {slower}"))),
                }
            }
        }
    }
    failures
}

/// One `[[scenario]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Unique name (`cargo xtask scenario NAME`).
    pub name: String,
    /// One-line description.
    pub description: String,
    /// The appliance file, resolved against the workspace root.
    pub config: PathBuf,
    /// What to check.
    pub check: Check,
    /// Why `cargo xtask test` skips it for now (None: it runs).
    pub pending: Option<String>,
}

impl Scenario {
    /// Where a run of this scenario keeps its swap image, under `target`.
    pub fn swap_image(&self, target: &Path) -> PathBuf {
        target.join("scenarios").join(&self.name).join("swap.img")
    }
}

/// Reads and parses the scenario file; `file` is how messages name it.
pub fn load(path: &Path, file: &str, workspace_root: &Path) -> Result<Vec<Scenario>, KeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| KeyError::whole_file(file, format!("cannot read the file: {error}")))?;
    parse(&text, file, workspace_root)
}

/// Parses scenario text; `config` paths are resolved against `workspace_root`.
pub fn parse(text: &str, file: &str, workspace_root: &Path) -> Result<Vec<Scenario>, KeyError> {
    let document = parse_document(text, file)?;
    let mut root = TableReader::new(&document, file, "");
    let tables = root.table_array("scenario")?;
    root.finish()?;
    let mut scenarios: Vec<Scenario> = Vec::with_capacity(tables.len());
    for table in tables {
        let scenario = parse_scenario(table, workspace_root)?;
        if scenarios.iter().any(|other| other.name == scenario.name) {
            return Err(KeyError::new(
                file,
                format!("scenario[{}].name", scenarios.len()),
                format!("`{}` is used by an earlier scenario", scenario.name),
            ));
        }
        scenarios.push(scenario);
    }
    Ok(scenarios)
}

fn parse_scenario(mut table: TableReader<'_>, workspace_root: &Path) -> Result<Scenario, KeyError> {
    let name = table.required_string("name")?.to_owned();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(table.error("name", "must be non-empty, without spaces"));
    }
    let description = table.required_string("description")?.to_owned();
    let config = workspace_root.join(table.required_string("config")?);
    let config_error = table.string("config_error")?;
    let machine = table.string("machine")?;
    let expect = table.string_list("expect")?;
    let forbid = table.string_list("forbid")?;
    let exit = table.string("exit")?;
    let timeout = table.seconds("timeout")?;
    let swap_mib = table.integer_in("swap_mib", 1..=SWAP_MIB_MAX, " MiB")?;
    let swap_faults = match table.string("swap_faults")? {
        None => None,
        Some(text) => Some(
            text.parse::<SwapFaults>()
                .map_err(|message| table.error("swap_faults", message))?,
        ),
    };
    let after_reads = table.integer_in(
        "swap_faults_after_reads",
        0..=SWAP_FAULT_READS_OK_MAX,
        " reads",
    )?;
    let swap_faults = match (swap_faults, after_reads) {
        (Some(SwapFaults::Read { .. }), Some(reads_ok)) => Some(SwapFaults::Read { reads_ok }),
        (None, Some(_)) => {
            return Err(table.error("swap_faults_after_reads", "needs swap_faults = \"read\""))
        }
        (faults, None) => faults,
    };
    let pending = match table.string("pending")? {
        Some(reason) if reason.trim().is_empty() => {
            return Err(table.error("pending", "give the reason it cannot run yet"))
        }
        other => other.map(str::to_owned),
    };
    let control = parse_control(&mut table)?;
    let cpu = parse_cpu_checks(&mut table)?;
    let check = match config_error {
        Some(text) => {
            let boot_keys = [
                ("machine", machine.is_some()),
                ("expect", expect.is_some()),
                ("forbid", forbid.is_some()),
                ("exit", exit.is_some()),
                ("timeout", timeout.is_some()),
                ("control", !control.is_empty()),
                ("usage", !cpu.is_empty()),
                ("swap_mib", swap_mib.is_some()),
                ("swap_faults", swap_faults.is_some()),
            ];
            if let Some((key, _)) = boot_keys.iter().find(|(_, present)| *present) {
                return Err(table.error(
                    key,
                    "does not apply to a config_error scenario (nothing boots)",
                ));
            }
            if text.is_empty() {
                return Err(table.error("config_error", "must not be empty"));
            }
            Check::ConfigError(text.to_owned())
        }
        None => {
            let machine = match machine {
                None => MachineType::default(),
                Some(text) => text
                    .parse()
                    .map_err(|message: String| table.error("machine", message))?,
            };
            if swap_mib.is_some() {
                if let Err(message) = check_swap_machine(machine) {
                    return Err(table.error("swap_mib", message));
                }
            }
            if swap_faults.is_some() && swap_mib.is_none() {
                return Err(table.error("swap_faults", "needs a swap disk: give swap_mib too"));
            }
            let exit_name = exit.ok_or_else(|| {
                table.error("exit", "missing (required unless config_error is given)")
            })?;
            let exit = EXIT_NAMES
                .iter()
                .find(|(known, _)| *known == exit_name)
                .map(|(_, code)| *code)
                .ok_or_else(|| {
                    let names: Vec<&str> = EXIT_NAMES.iter().map(|(known, _)| *known).collect();
                    table.error(
                        "exit",
                        format!("`{exit_name}` is not one of {}", names.join(", ")),
                    )
                })?;
            let timeout = timeout.map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64);
            if let Some((index, step)) = control
                .iter()
                .enumerate()
                .find(|(_, step)| step.at >= timeout)
            {
                return Err(table.error(
                    &format!("control[{index}].at"),
                    format!(
                        "{} s is not before the timeout ({} s)",
                        step.at.as_secs_f64(),
                        timeout.as_secs_f64()
                    ),
                ));
            }
            Check::Boot {
                machine,
                expect: expect.unwrap_or_default(),
                forbid: forbid.unwrap_or_default(),
                exit,
                timeout,
                control,
                cpu,
                swap_mib,
                swap_faults,
            }
        }
    };
    table.finish()?;
    Ok(Scenario {
        name,
        description,
        config,
        check,
        pending,
    })
}

/// Whether an `expect_any` given is empty or holds an empty text (an
/// absent key reads as no texts at all, which is fine).
fn entry_has_empty(texts: &Option<Vec<String>>) -> bool {
    texts.as_ref().is_some_and(|texts| texts.is_empty() || texts.iter().any(String::is_empty))
}

/// Reads the `control` steps: `at` (seconds, in order), `command` (a valid
/// `hvctl` command line) and an optional `expect`.
fn parse_control(table: &mut TableReader<'_>) -> Result<Vec<ControlStep>, KeyError> {
    let mut steps: Vec<ControlStep> = Vec::new();
    for mut entry in table.table_array("control")? {
        let at = entry
            .seconds("at")?
            .ok_or_else(|| entry.error("at", "missing (seconds after QEMU starts)"))?;
        let at = Duration::from_secs_f64(at);
        let command = entry.required_string("command")?.trim().to_owned();
        let expect_any = entry.string_list("expect_any")?;
        if entry_has_empty(&expect_any) {
            return Err(entry.error("expect_any", "must hold texts, none of them empty"));
        }
        let step = ControlStep {
            at,
            command,
            expect: entry.string("expect")?.map(str::to_owned),
            expect_any: expect_any.unwrap_or_default(),
        };
        if let Err(error) = hvctl::cli::parse(&step.words()) {
            return Err(entry.error("command", format!("not a valid hvctl command: {error}")));
        }
        if step.expect.as_deref() == Some("") {
            return Err(entry.error("expect", "must not be empty"));
        }
        if let Some(previous) = steps.last().filter(|previous| previous.at > at) {
            return Err(entry.error(
                "at",
                format!(
                    "{} s is before the previous step's {} s (list the steps in order)",
                    at.as_secs_f64(),
                    previous.at.as_secs_f64()
                ),
            ));
        }
        entry.finish()?;
        steps.push(step);
    }
    Ok(steps)
}

/// One reason a scenario failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// An expected substring was not found after the previous match.
    Missing {
        /// Position in `expect` (0-based).
        index: usize,
        /// The substring.
        text: String,
        /// The search started at this output line (1-based).
        from_line: usize,
    },
    /// A forbidden substring appeared.
    Forbidden {
        /// The substring.
        text: String,
        /// The output line (1-based).
        line_number: usize,
        /// The whole line.
        line: String,
    },
    /// QEMU ended otherwise than expected.
    Exit {
        /// The expected code.
        expected: CoreExit,
        /// What happened.
        actual: String,
    },
    /// A control step did not run, failed, or missed its expected text.
    Control {
        /// Position in `control` (0-based).
        index: usize,
        /// The command.
        command: String,
        /// What went wrong.
        problem: String,
    },
    /// A CPU-time check failed.
    Cpu(String),
    /// The fault campaign judge ([`crate::campaign`]) failed the run (an
    /// appliance with a `[faults]` table).
    Campaign(String),
    /// The runner could not boot at all (build, bundle or QEMU start failed).
    Setup(String),
    /// A config_error scenario's config loaded fine.
    ConfigAccepted(String),
    /// A config_error scenario failed with another error.
    WrongConfigError {
        /// The text expected in the error.
        expected: String,
        /// The error that occurred.
        actual: String,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing {
                index,
                text,
                from_line,
            } => write!(
                formatter,
                "expected line #{} `{text}` not found at or after output line {from_line}",
                index + 1
            ),
            Self::Forbidden {
                text,
                line_number,
                line,
            } => {
                write!(
                    formatter,
                    "forbidden `{text}` appeared on output line {line_number}: {line}"
                )
            }
            Self::Exit { expected, actual } => write!(
                formatter,
                "exit: expected {expected:?} (QEMU status {}), got {actual}",
                expected.qemu_status()
            ),
            Self::Control {
                index,
                command,
                problem,
            } => write!(
                formatter,
                "control step #{} `hvctl {command}`: {problem}",
                index + 1
            ),
            Self::Cpu(message) => write!(formatter, "cpu time: {message}"),
            Self::Campaign(message) => write!(formatter, "fault campaign: {message}"),
            Self::Setup(message) => write!(formatter, "could not boot: {message}"),
            Self::ConfigAccepted(file) => {
                write!(
                    formatter,
                    "{file} was accepted, but it should have been refused"
                )
            }
            Self::WrongConfigError { expected, actual } => {
                write!(
                    formatter,
                    "the config error does not mention `{expected}`: {actual}"
                )
            }
        }
    }
}

/// Checks the expected substrings in order and the forbidden ones anywhere.
pub fn match_lines(lines: &[String], expect: &[String], forbid: &[String]) -> Vec<Failure> {
    let mut failures = Vec::new();
    let mut next_line = 0;
    for (index, text) in expect.iter().enumerate() {
        let found = lines[next_line..]
            .iter()
            .position(|line| line.contains(text.as_str()));
        match found {
            Some(offset) => next_line += offset + 1,
            None => {
                failures.push(Failure::Missing {
                    index,
                    text: text.clone(),
                    from_line: next_line + 1,
                });
                break;
            }
        }
    }
    for text in forbid {
        if let Some(number) = lines.iter().position(|line| line.contains(text.as_str())) {
            failures.push(Failure::Forbidden {
                text: text.clone(),
                line_number: number + 1,
                line: lines[number].clone(),
            });
        }
    }
    failures
}

/// Checks how the run ended against the expected exit code.
pub fn judge_ending(ending: &Ending, expected: CoreExit) -> Option<Failure> {
    match ending {
        Ending::Exited(QemuExit::Core(code)) if *code == expected => None,
        other => Some(Failure::Exit {
            expected,
            actual: other.to_string(),
        }),
    }
}

/// Checks each control step against what it did.
pub fn judge_control(steps: &[ControlStep], outcomes: &[StepOutcome]) -> Vec<Failure> {
    let mut failures = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let failure = |problem: String| Failure::Control {
            index,
            command: step.command.clone(),
            problem,
        };
        let Some(outcome) = outcomes.iter().find(|outcome| outcome.index == index) else {
            failures.push(failure(format!(
                "did not run: the boot ended before {} s",
                step.at.as_secs_f64()
            )));
            continue;
        };
        match (&step.expect, &outcome.output) {
            (Some(text), _) => {
                let lines = outcome.output_lines();
                if !lines.iter().any(|line| line.contains(text.as_str())) {
                    failures.push(failure(format!(
                        "no output line contains `{text}`; the output was: {}",
                        lines.join(" | ")
                    )));
                }
            }
            (None, Err(message)) if step.expect_any.is_empty() => failures.push(failure(format!("failed: {message}"))),
            (None, _) => {}
        }
        if !step.expect_any.is_empty() {
            let lines = outcome.output_lines();
            let found = lines.iter().any(|line| step.expect_any.iter().any(|text| line.contains(text.as_str())));
            if !found {
                failures.push(failure(format!(
                    "no output line contains any of `{}`; the output was: {}",
                    step.expect_any.join("`, `"),
                    lines.join(" | ")
                )));
            }
        }
    }
    failures
}

/// Judges a boot scenario's run: every failure, in order of checking.
pub fn judge_boot(
    lines: &[Line],
    ending: &Ending,
    check: &Check,
    control: &[StepOutcome],
) -> Vec<Failure> {
    let Check::Boot {
        expect,
        forbid,
        exit,
        control: steps,
        cpu,
        ..
    } = check
    else {
        return Vec::new();
    };
    let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
    let mut failures = match_lines(&text, expect, forbid);
    failures.extend(judge_cpu(&text, cpu));
    failures.extend(judge_control(steps, control));
    failures.extend(judge_ending(ending, *exit));
    failures
}

/// Judges a config_error scenario from the result of loading its config.
pub fn judge_config_error(result: Result<(), String>, expected: &str, file: &str) -> Vec<Failure> {
    match result {
        Ok(()) => vec![Failure::ConfigAccepted(file.to_owned())],
        Err(actual) if actual.contains(expected) => Vec::new(),
        Err(actual) => vec![Failure::WrongConfigError {
            expected: expected.to_owned(),
            actual,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    const FILE: &str = r#"
[[scenario]]
name = "hello"
description = "hello boots"
config = "appliances/hello.toml"
expect = ["hello: Hello from cairn"]
exit = "AllPoweredOff"
timeout = 30

[[scenario]]
name = "hello-pc"
description = "on pc"
config = "appliances/hello.toml"
machine = "pc"
forbid = ["panicked"]
exit = "DomainFailed"

[[scenario]]
name = "bad-config"
description = "refused"
config = "appliances/bad-memory.toml"
config_error = "domain[0].memory"
"#;

    #[test]
    fn the_scenario_file_parses() {
        let scenarios = parse(FILE, "s.toml", Path::new("/root")).unwrap();
        assert_eq!(scenarios.len(), 3);
        assert_eq!(
            scenarios[0].config,
            PathBuf::from("/root/appliances/hello.toml")
        );
        assert_eq!(
            scenarios[0].check,
            Check::Boot {
                machine: MachineType::Microvm,
                expect: strings(&["hello: Hello from cairn"]),
                forbid: Vec::new(),
                exit: CoreExit::AllPoweredOff,
                timeout: Duration::from_secs(30),
                control: Vec::new(),
                cpu: Vec::new(),
                swap_mib: None,
                swap_faults: None,
            }
        );
        assert_eq!(scenarios[0].pending, None);
        let Check::Boot {
            machine,
            timeout,
            exit,
            ..
        } = &scenarios[1].check
        else {
            panic!("hello-pc should be a boot scenario");
        };
        assert_eq!(
            (*machine, *timeout, *exit),
            (MachineType::Pc, DEFAULT_TIMEOUT, CoreExit::DomainFailed)
        );
        assert_eq!(
            scenarios[2].check,
            Check::ConfigError("domain[0].memory".into())
        );
    }

    fn parse_error(text: &str) -> KeyError {
        parse(text, "s.toml", Path::new("/root")).expect_err("should be refused")
    }

    #[test]
    fn the_repository_scenarios_parse_and_their_configs_exist() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let scenarios = load(&root.join("tests/scenarios.toml"), "scenarios.toml", &root)
            .unwrap_or_else(|error| panic!("{error}"));
        for name in ["hello", "hello-pc", "fault", "bad-config"] {
            assert!(
                scenarios.iter().any(|scenario| scenario.name == name),
                "{name} is missing"
            );
        }
        for scenario in &scenarios {
            assert!(
                scenario.config.is_file(),
                "{}: {} is missing",
                scenario.name,
                scenario.config.display()
            );
        }
    }

    #[test]
    fn scenario_file_errors_name_the_key() {
        let base = "[[scenario]]\nname='a'\ndescription='d'\nconfig='c.toml'\n";
        assert_eq!(parse_error(base).key.as_deref(), Some("scenario[0].exit"));
        let error = parse_error(&format!("{base}exit='Fine'\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].exit"));
        assert!(error.message.contains("AllPoweredOff"), "{error}");
        let error = parse_error(&format!("{base}exit='AllPoweredOff'\nmachine='q35'\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].machine"));
        let error = parse_error(&format!("{base}exit='AllPoweredOff'\nexpected=['x']\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].expected"));
        let error = parse_error(&format!("{base}config_error='x'\nexit='AllPoweredOff'\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].exit"));
        let error = parse_error(&format!(
            "{base}exit='AllPoweredOff'\n{base}exit='AllPoweredOff'\n"
        ));
        assert_eq!(error.key.as_deref(), Some("scenario[1].name"));
        let error =
            parse_error("[[scenario]]\ndescription='d'\nconfig='c'\nexit='AllPoweredOff'\n");
        assert_eq!(error.key.as_deref(), Some("scenario[0].name"));
    }

    #[test]
    fn expectations_match_in_order_on_later_lines() {
        let lines = strings(&[
            "fault: touching",
            "cairn  WARN domain fault stopped",
            "spinner: progress 1",
            "spinner: progress 2",
        ]);
        let in_order = strings(&[
            "fault: touching",
            "domain fault stopped",
            "spinner: progress",
            "spinner: progress",
        ]);
        assert_eq!(match_lines(&lines, &in_order, &[]), Vec::new());

        let out_of_order = strings(&["domain fault stopped", "fault: touching"]);
        assert_eq!(
            match_lines(&lines, &out_of_order, &[]),
            vec![Failure::Missing {
                index: 1,
                text: "fault: touching".into(),
                from_line: 3
            }]
        );
        // The same line cannot satisfy two expectations.
        let three_progress = strings(&[
            "spinner: progress",
            "spinner: progress",
            "spinner: progress",
        ]);
        assert_eq!(match_lines(&lines, &three_progress, &[]).len(), 1);
    }

    #[test]
    fn forbidden_substrings_are_reported_with_their_line() {
        let lines = strings(&["ok", "core panicked at x"]);
        let failures = match_lines(&lines, &[], &strings(&["panicked", "absent"]));
        assert_eq!(
            failures,
            vec![Failure::Forbidden {
                text: "panicked".into(),
                line_number: 2,
                line: "core panicked at x".into()
            }]
        );
    }

    #[test]
    fn the_exit_code_must_match_and_zero_never_passes() {
        let powered_off = Ending::Exited(QemuExit::Core(CoreExit::AllPoweredOff));
        assert_eq!(judge_ending(&powered_off, CoreExit::AllPoweredOff), None);
        assert!(judge_ending(&powered_off, CoreExit::DomainFailed).is_some());
        assert!(judge_ending(&Ending::Exited(QemuExit::Zero), CoreExit::AllPoweredOff).is_some());
        let timeout = Ending::TimedOut(Duration::from_secs(5));
        let failure = judge_ending(&timeout, CoreExit::AllPoweredOff).unwrap();
        assert!(
            failure.to_string().contains("timeout after 5 s"),
            "{failure}"
        );
    }

    #[test]
    fn a_boot_is_judged_on_lines_and_exit() {
        let check = Check::Boot {
            machine: MachineType::Microvm,
            expect: strings(&["hello: Hello from cairn"]),
            forbid: strings(&["panicked"]),
            exit: CoreExit::AllPoweredOff,
            timeout: DEFAULT_TIMEOUT,
            control: Vec::new(),
            cpu: Vec::new(),
            swap_mib: None,
            swap_faults: None,
        };
        let lines = vec![Line::Guest("hello: Hello from cairn!".into())];
        let powered_off = Ending::Exited(QemuExit::Core(CoreExit::AllPoweredOff));
        assert!(judge_boot(&lines, &powered_off, &check, &[]).is_empty());
        assert_eq!(judge_boot(&[], &powered_off, &check, &[]).len(), 1);
        assert_eq!(
            judge_boot(&[], &Ending::Exited(QemuExit::Zero), &check, &[]).len(),
            2
        );
    }

    #[test]
    fn cpu_checks_judge_usage_and_shares() {
        let lines: Vec<String> = [
            "cairn  INFO domain a: cpu time 1000 us in 10000 us, 100 per mille of a pCPU",
            "cairn  INFO domain b: cpu time 2000 us in 10000 us, 200 per mille of a pCPU",
            "cairn  INFO domain c: cpu time 4100 us in 10000 us, 410 per mille of a pCPU",
        ]
        .iter()
        .map(|line| line.to_string())
        .collect();
        let usage = |domain: &str, min: f64, max: f64| CpuCheck::Usage { domain: domain.into(), min, max };
        assert!(judge_cpu(&lines, &[usage("a", 9.0, 11.0)]).is_empty());
        assert_eq!(judge_cpu(&lines, &[usage("a", 0.0, 5.0)]).len(), 1);
        assert_eq!(judge_cpu(&lines, &[usage("z", 0.0, 5.0)]).len(), 1, "a missing domain fails");
        let shares = |tolerance: f64| CpuCheck::Shares {
            domains: vec!["a".into(), "b".into(), "c".into()],
            expect: vec![14.3, 28.6, 57.1],
            tolerance,
        };
        assert!(judge_cpu(&lines, &[shares(3.0)]).is_empty(), "14.1/28.2/57.7 is within 3 points");
        assert_eq!(judge_cpu(&lines, &[shares(0.3)]).len(), 2, "a and c are more than 0.3 points off");
        let mut with_latency = lines.clone();
        with_latency.push("cairn  INFO domain a vCPU 0: wake-to-run latency median 1000 ns over 9 timed wake-ups".into());
        with_latency.push("cairn  INFO domain b vCPU 0: wake-to-run latency median 41000 ns over 9 timed wake-ups".into());
        let latency = |max_ratio: f64| CpuCheck::WakeLatency { faster: "a".into(), slower: "b".into(), max_ratio };
        assert!(judge_cpu(&with_latency, &[latency(0.7)]).is_empty());
        assert_eq!(judge_cpu(&with_latency, &[latency(0.01)]).len(), 1);
        assert_eq!(judge_cpu(&lines, &[latency(0.7)]).len(), 1, "missing lines fail");
        let paging = vec![
            "cairn  INFO domain m: paging: out 12, in 3, dropped 0".to_owned(),
            "cairn  INFO domain m: paging: out 3000, in 2900, dropped 4 (2 paged out)".to_owned(),
        ];
        let count = |field: &str, min: f64, max: f64| CpuCheck::Counter { line: "domain m: paging:".into(), field: field.into(), before: false, min, max };
        assert!(judge_cpu(&paging, &[count("out", 2000.0, f64::MAX), count("in", 1.0, 3000.0), count("dropped", 4.0, 4.0)]).is_empty(), "the last line counts");
        assert_eq!(judge_cpu(&paging, &[count("out", 4000.0, f64::MAX)]).len(), 1);
        assert_eq!(judge_cpu(&paging, &[count("missing", 0.0, 1.0)]).len(), 1, "a missing field fails");
        assert_eq!(judge_cpu(&lines, &[count("out", 0.0, 1.0)]).len(), 1, "a missing line fails");
        let done = vec!["cairn  INFO fault injection: done: 60 kills (20 at a message, 7 mid-eviction, 5 mid-page-in, 28 now; 29 scheduler, 31 pager)".to_owned()];
        let before = |field: &str, min: f64| CpuCheck::Counter { line: "fault injection: done:".into(), field: field.into(), before: true, min, max: f64::MAX };
        assert!(judge_cpu(&done, &[before("kills", 60.0), before("mid-eviction", 7.0), before("mid-page-in", 5.0), before("pager", 31.0)]).is_empty());
        assert_eq!(judge_cpu(&done, &[before("mid-eviction", 8.0)]).len(), 1);
    }

    /// The one scenario `text` declares (a boot scenario), and its swap
    /// disk size and faults.
    fn boot_swap(text: &str) -> (Scenario, Option<u32>, Option<SwapFaults>) {
        let mut scenarios = parse(text, "s.toml", Path::new("/root")).unwrap();
        let scenario = scenarios.remove(0);
        let Check::Boot { swap_mib, swap_faults, .. } = &scenario.check else {
            panic!("a boot scenario");
        };
        let (swap_mib, swap_faults) = (*swap_mib, *swap_faults);
        (scenario, swap_mib, swap_faults)
    }

    #[test]
    fn swap_faults_parse_and_need_a_swap_disk() {
        let base =
            "[[scenario]]\nname='read-error'\ndescription='d'\nconfig='c.toml'\nexit='DomainFailed'\n";
        let (_, swap_mib, swap_faults) = boot_swap(&format!("{base}swap_mib = 16\nswap_faults = 'read'\n"));
        assert_eq!(
            (swap_mib, swap_faults),
            (Some(16), Some(SwapFaults::Read { reads_ok: 0 }))
        );
        let (_, _, swap_faults) = boot_swap(&format!(
            "{base}swap_mib = 16\nswap_faults = 'read'\nswap_faults_after_reads = 4000\n"
        ));
        assert_eq!(swap_faults, Some(SwapFaults::Read { reads_ok: 4000 }));
        let error = parse_error(&format!(
            "{base}swap_mib = 16\nswap_faults_after_reads = 4\n"
        ));
        assert_eq!(
            error.key.as_deref(),
            Some("scenario[0].swap_faults_after_reads")
        );
        assert!(error.message.contains("swap_faults"), "{error}");
        let error = parse_error(&format!(
            "{base}swap_mib = 16\nswap_faults = 'read'\nswap_faults_after_reads = -1\n"
        ));
        assert_eq!(
            error.key.as_deref(),
            Some("scenario[0].swap_faults_after_reads")
        );

        let error = parse_error(&format!("{base}swap_faults = 'read'\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].swap_faults"));
        assert!(error.message.contains("swap_mib"), "{error}");
        let error = parse_error(&format!("{base}swap_mib = 16\nswap_faults = 'sometimes'\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].swap_faults"));
        assert!(error.message.contains("read"), "{error}");
        let error = parse_error(&format!("{base}swap_mib = 16\nswap_faults = true\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].swap_faults"));
        let error = parse_error(
            "[[scenario]]\nname='a'\ndescription='d'\nconfig='c'\nconfig_error='x'\nswap_faults='read'\n",
        );
        assert_eq!(error.key.as_deref(), Some("scenario[0].swap_faults"));
    }

    #[test]
    fn swap_and_pending_parse() {
        let base =
            "[[scenario]]\nname='memhog'\ndescription='d'\nconfig='c.toml'\nexit='AllPoweredOff'\n";
        let (scenario, swap_mib, swap_faults) =
            boot_swap(&format!("{base}swap_mib = 64\npending = 'core paging not in yet'\n"));
        assert_eq!(swap_mib, Some(64));
        assert_eq!(swap_faults, None);
        assert_eq!(
            scenario.pending.as_deref(),
            Some("core paging not in yet")
        );
        assert_eq!(
            scenario.swap_image(Path::new("/w/target")),
            PathBuf::from("/w/target/scenarios/memhog/swap.img")
        );

        let error = parse_error(&format!("{base}swap_mib = 0\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].swap_mib"));
        let error = parse_error(&format!("{base}swap_mib = 'big'\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].swap_mib"));
        let error = parse_error(&format!("{base}swap_mib = 64\nmachine = 'pc'\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].swap_mib"));
        assert!(error.message.contains("microvm"), "{error}");
        let error = parse_error(&format!("{base}pending = ' '\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].pending"));
        let error = parse_error(
            "[[scenario]]\nname='a'\ndescription='d'\nconfig='c'\nconfig_error='x'\nswap_mib=1\n",
        );
        assert_eq!(error.key.as_deref(), Some("scenario[0].swap_mib"));
        // A pending config_error scenario is fine.
        let scenarios = parse(
            "[[scenario]]\nname='a'\ndescription='d'\nconfig='c'\nconfig_error='x'\npending='later'\n",
            "s.toml",
            Path::new("/root"),
        )
        .unwrap();
        assert_eq!(scenarios[0].pending.as_deref(), Some("later"));
    }

    #[test]
    fn control_steps_parse() {
        let text = r#"
[[scenario]]
name = "cap"
description = "a cap set at run time holds"
config = "appliances/hello.toml"
exit = "AllPoweredOff"
timeout = 10
control = [
    { at = 2, command = "sched-credit -d spinner -c 50", expect = "spinner" },
    { at = 2.5, command = "  stats  " },
]
"#;
        let scenarios = parse(text, "s.toml", Path::new("/root")).unwrap();
        let Check::Boot { control, .. } = &scenarios[0].check else {
            panic!("a boot scenario");
        };
        assert_eq!(
            control,
            &vec![
                ControlStep {
                    at: Duration::from_secs(2),
                    command: "sched-credit -d spinner -c 50".into(),
                    expect: Some("spinner".into()),
                    expect_any: Vec::new(),
                },
                ControlStep {
                    at: Duration::from_millis(2500),
                    command: "stats".into(),
                    expect: None,
                    expect_any: Vec::new(),
                },
            ]
        );
    }

    #[test]
    fn control_step_errors_name_the_key() {
        let base = "[[scenario]]\nname='a'\ndescription='d'\nconfig='c.toml'\nexit='AllPoweredOff'\ntimeout=10\n";
        let error = parse_error(&format!("{base}control=[{{ command='list' }}]\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].control[0].at"));
        let error = parse_error(&format!("{base}control=[{{ at=1 }}]\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].control[0].command"));
        let error = parse_error(&format!(
            "{base}control=[{{ at=1, command='sched-credit -d x -w 0' }}]\n"
        ));
        assert_eq!(error.key.as_deref(), Some("scenario[0].control[0].command"));
        assert!(
            error.message.contains("weight 0 is out of range"),
            "{error}"
        );
        let error = parse_error(&format!("{base}control=[{{ at=1, command='fly' }}]\n"));
        assert!(error.message.contains("unknown command `fly`"), "{error}");
        let error = parse_error(&format!(
            "{base}control=[{{ at=2, command='list' }}, {{ at=1, command='list' }}]\n"
        ));
        assert_eq!(error.key.as_deref(), Some("scenario[0].control[1].at"));
        let error = parse_error(&format!("{base}control=[{{ at=10, command='list' }}]\n"));
        assert_eq!(error.key.as_deref(), Some("scenario[0].control[0].at"));
        assert!(error.message.contains("timeout"), "{error}");
        let error = parse_error(&format!(
            "{base}control=[{{ at=1, command='list', expected='x' }}]\n"
        ));
        assert_eq!(
            error.key.as_deref(),
            Some("scenario[0].control[0].expected")
        );
        let error = parse_error(&format!(
            "{base}control=[{{ at=1, command='list', expect='' }}]\n"
        ));
        assert_eq!(error.key.as_deref(), Some("scenario[0].control[0].expect"));
        let error = parse_error(
            "[[scenario]]\nname='a'\ndescription='d'\nconfig='c'\nconfig_error='x'\ncontrol=[{ at=1, command='list' }]\n",
        );
        assert_eq!(error.key.as_deref(), Some("scenario[0].control"));
    }

    #[test]
    fn control_steps_are_judged_on_their_output() {
        let step = |command: &str, expect: Option<&str>| ControlStep {
            at: Duration::from_secs(1),
            command: command.into(),
            expect: expect.map(str::to_owned),
            expect_any: Vec::new(),
        };
        let steps = vec![
            step("sched-credit -d spinner -c 50", Some("spinner")),
            step("sched-credit -d spinner -c 5000", Some("out of range")),
            step("list", None),
            step("stats", None),
        ];
        let outcome = |index, output: Result<&str, &str>| StepOutcome {
            index,
            ran_at: Duration::from_secs(1),
            output: output.map(str::to_owned).map_err(str::to_owned),
        };
        let outcomes = vec![
            outcome(
                0,
                Ok("Name     ID  Weight  Cap\nspinner   1     256   50\n"),
            ),
            outcome(1, Err("cap 5000 is out of range 0..=800")),
            outcome(2, Err("no answer from the core")),
        ];
        let failures = judge_control(&steps, &outcomes);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert_eq!(
            failures[0].to_string(),
            "control step #3 `hvctl list`: failed: no answer from the core"
        );
        assert_eq!(
            failures[1].to_string(),
            "control step #4 `hvctl stats`: did not run: the boot ended before 1 s"
        );
        let missed = judge_control(&steps[..1], &[outcome(0, Ok("hello 0 256 0\n"))]);
        assert!(missed[0]
            .to_string()
            .contains("no output line contains `spinner`"));
        let any = ControlStep { expect_any: vec![" under".into(), " over".into()], ..step("stats", None) };
        let row = |priority: &str| format!("Name ID VCPU Prio\nheavy 1 0 {priority} 5\n");
        assert!(judge_control(std::slice::from_ref(&any), &[outcome(0, Ok(&row("over,parked")))]).is_empty());
        assert!(judge_control(std::slice::from_ref(&any), &[outcome(0, Ok(&row("under")))]).is_empty());
        let none = judge_control(std::slice::from_ref(&any), &[outcome(0, Ok(&row("-")))]);
        assert!(none[0].to_string().contains("no output line contains any of ` under`, ` over`"), "{none:?}");
        let failed = judge_control(std::slice::from_ref(&any), &[outcome(0, Err("no answer from the core"))]);
        assert_eq!(failed.len(), 1, "{failed:?}");
    }

    #[test]
    fn config_error_scenarios_need_the_right_error() {
        assert!(judge_config_error(
            Err("f: domain[0].memory: 0 is out".into()),
            "domain[0].memory",
            "f"
        )
        .is_empty());
        assert_eq!(
            judge_config_error(Ok(()), "x", "f"),
            vec![Failure::ConfigAccepted("f".into())]
        );
        assert_eq!(judge_config_error(Err("other".into()), "x", "f").len(), 1);
    }
}

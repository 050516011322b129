//! Benchmark figures: collected from the core's `bench NAME VALUE` info
//! lines, completed with figures the runner measures or derives, printed as
//! a table and written as one flat JSON object (name → number).
//!
//! The harness is generic: any `bench NAME VALUE` line the core emits becomes
//! a figure. Only [`REQUIRED_CORE_FIGURES`] must be present.
//!
//! Derived figure: `cpuid_over_bare_ratio = cpuid_exit_median_ticks /
//! vmexit_bare_median_ticks`, the cost of a CPUID exit handled by the core
//! relative to the bare VMRUN → VMMCALL → #VMEXIT round trip; the goal is
//! at most [`RATIO_GOAL`].
//!
//! Paging figures (issue #5 §7) come from a second boot, of
//! `appliances/bench-paging.toml` with a swap disk: the core logs them when
//! the paging domain ends ([`PAGING_FIGURES`]). `page_out_per_s` and
//! `page_in_per_s` are end-to-end rates between the first and the last
//! eviction (load): guest faults, the ring-3 pager and its virtio-blk I/O
//! under QEMU TCG, and the guest's own work in between, all included. They
//! are set against `copy_4k_per_s`, the core copying one 4 KiB host frame to
//! another with the routine paging uses, timed at the end of the same boot:
//! `page_in_over_copy_ratio` has the goal at least [`PAGE_IN_RATIO_GOAL`].
//! The same boot measures the swap device itself: the pager (server
//! argument `device-bench`) times raw reads of its swap device before
//! paging starts and logs one line ([`device_read_figures`]):
//! `device_read_4k_qd1_per_s` (4 KiB reads one at a time),
//! `device_read_4k_qd16_per_s` (16 in flight), `device_read_64k_qd1_per_s`.
//! `page_in_over_device_ratio` is the page-in throughput over the device's
//! 4 KiB one-at-a-time read rate (how much of the device the paging path
//! gets), and `device_read_4k_qd1_over_copy_ratio` /
//! `device_read_4k_qd16_over_copy_ratio` bound what any page-in path over
//! this device could reach against the copy goal.
//!
//! Scheduling figures come from three more boots, each run to its time
//! limit: `appliances/weights.toml` and `appliances/balance.toml` give the
//! share tables ([`share_rows`], [`share_figures`], [`share_table`]);
//! `appliances/bench-smp.toml` (8 busy vCPUs on 2 pCPUs) gives the time
//! outside guests ([`pcpu_times`], [`smp_figures`]), the scheduler
//! server's decision cost ([`decide_figures`]) and, when the core prints
//! them, its switch-point pick times ([`switch_point_figures`]). Measured
//! figures with a goal are listed in [`FIGURE_GOALS`].

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::decode::{Level, Line};

/// Prefix of a core info message carrying a figure.
pub const BENCH_PREFIX: &str = "bench ";
/// Figures the core must report for `cargo xtask bench` to succeed.
pub const REQUIRED_CORE_FIGURES: [&str; 4] = [
    "vmexit_bare_median_ticks",
    "cpuid_exit_median_ticks",
    "vmexit_bare_p99_ticks",
    "cpuid_exit_p99_ticks",
];
/// Name of the derived ratio.
pub const RATIO_NAME: &str = "cpuid_over_bare_ratio";
/// The ratio's goal (at most).
pub const RATIO_GOAL: f64 = 1.10;
/// Figures the paging boot must report.
pub const PAGING_FIGURES: [&str; 5] = [
    "page_out_per_s",
    "page_in_per_s",
    "page_in_median_ticks",
    "page_in_p99_ticks",
    "copy_4k_per_s",
];
/// Name of the page-in throughput over in-core copy throughput ratio.
pub const PAGE_IN_RATIO_NAME: &str = "page_in_over_copy_ratio";
/// Its goal (at least).
pub const PAGE_IN_RATIO_GOAL: f64 = 0.5;

/// Which side of its goal a derived figure must be on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// The value must be at most this.
    AtMost(f64),
    /// The value must be at least this.
    AtLeast(f64),
}

impl Goal {
    /// Whether `value` meets the goal.
    pub fn met(self, value: f64) -> bool {
        match self {
            Self::AtMost(goal) => value <= goal,
            Self::AtLeast(goal) => value >= goal,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtMost(goal) => write!(formatter, "goal <= {goal:.2}"),
            Self::AtLeast(goal) => write!(formatter, "goal >= {goal:.2}"),
        }
    }
}

/// A figure computed from two others: `numerator / denominator * scale`,
/// with an optional goal.
#[derive(Debug, Clone, Copy)]
pub struct Derived {
    /// The derived figure's name.
    pub name: &'static str,
    /// Figure divided.
    pub numerator: &'static str,
    /// Figure divided by.
    pub denominator: &'static str,
    /// Multiplier applied to the quotient.
    pub scale: f64,
    /// The goal, if there is one.
    pub goal: Option<Goal>,
}

/// Prefix of the pager's device measurement line
/// (`pager-server/src/devbench.rs`).
pub const DEVICE_LINE_MARKER: &str = "pager: device: ";

/// Every derived figure, in table order.
pub const DERIVED: [Derived; 16] = [
    Derived {
        name: RATIO_NAME,
        numerator: "cpuid_exit_median_ticks",
        denominator: "vmexit_bare_median_ticks",
        scale: 1.0,
        goal: Some(Goal::AtMost(RATIO_GOAL)),
    },
    Derived {
        name: "ipc_over_vmexit_ratio",
        numerator: "ipc_round_trip_median_ticks",
        denominator: "vmexit_bare_median_ticks",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "ipc_round_trip_median_us",
        numerator: "ipc_round_trip_median_ticks",
        denominator: "tsc_mhz",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "server_restart_median_ms",
        numerator: "server_restart_median_ticks",
        denominator: "tsc_mhz",
        scale: 0.001,
        goal: None,
    },
    Derived {
        name: "page_out_over_copy_ratio",
        numerator: "page_out_per_s",
        denominator: "copy_4k_per_s",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: PAGE_IN_RATIO_NAME,
        numerator: "page_in_per_s",
        denominator: "copy_4k_per_s",
        scale: 1.0,
        goal: Some(Goal::AtLeast(PAGE_IN_RATIO_GOAL)),
    },
    Derived {
        name: "page_in_over_device_ratio",
        numerator: "page_in_per_s",
        denominator: "device_read_4k_qd1_per_s",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "device_read_4k_qd1_over_copy_ratio",
        numerator: "device_read_4k_qd1_per_s",
        denominator: "copy_4k_per_s",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "device_read_4k_qd16_over_copy_ratio",
        numerator: "device_read_4k_qd16_per_s",
        denominator: "copy_4k_per_s",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "device_read_best_pages_over_copy_ratio",
        numerator: DEVICE_BEST_NAME,
        denominator: "copy_4k_per_s",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "crc32c_4k_over_copy_ratio",
        numerator: CHECKSUM_RATE_NAME,
        denominator: "copy_4k_per_s",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "page_in_median_us",
        numerator: "page_in_median_ticks",
        denominator: "paging_tsc_mhz",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "page_in_p99_us",
        numerator: "page_in_p99_ticks",
        denominator: "paging_tsc_mhz",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "sched_decide_median_us",
        numerator: "sched_decide_median_ticks",
        denominator: "tsc_mhz",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "sched_decide_p99_us",
        numerator: "sched_decide_p99_ticks",
        denominator: "tsc_mhz",
        scale: 1.0,
        goal: None,
    },
    Derived {
        name: "core_pick_median_us",
        numerator: "core_pick_median_ticks",
        denominator: "tsc_mhz",
        scale: 1.0,
        goal: None,
    },
];
/// Name of the runner's own boot-time figure.
pub const SPAWN_TO_FIRST_LINE_NAME: &str = "qemu_spawn_to_first_guest_line_ms";

/// One figure's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Figure {
    /// A count reported by the core (ticks, exits, ...).
    Count(u64),
    /// A measured or derived real number.
    Real(f64),
}

impl Figure {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Self::Count(value) => value as f64,
            Self::Real(value) => value,
        }
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(value) => write!(formatter, "{value}"),
            Self::Real(value) => write!(formatter, "{value:.decimals$}", decimals = decimals(*value)),
        }
    }
}

/// Decimals a real figure is shown (and stored) with: 3, or as many as
/// keep 3 significant digits of a value below 0.1 (ratios far from 1, such
/// as paging's 0.00114, must not print as 0.001).
fn decimals(value: f64) -> usize {
    if value == 0.0 || !value.is_finite() || value.abs() >= 0.1 {
        return 3;
    }
    (2 - value.abs().log10().floor() as i64).clamp(3, 12) as usize
}

/// `value` rounded to [`decimals`] places.
fn round_to_decimals(value: f64) -> f64 {
    let scale = 10f64.powi(decimals(value) as i32);
    (value * scale).round() / scale
}

/// Parses a core message `bench NAME VALUE`. `None` when the message is not
/// a bench line at all; `Some(Err)` when it is one but malformed.
pub fn parse_bench_message(message: &str) -> Option<Result<(String, u64), String>> {
    let rest = message.strip_prefix(BENCH_PREFIX)?;
    let mut words = rest.split_whitespace();
    let parsed = match (words.next(), words.next(), words.next()) {
        (Some(name), Some(value), None) => value
            .parse::<u64>()
            .map(|value| (name.to_owned(), value))
            .map_err(|_| format!("`{value}` is not an unsigned integer")),
        _ => Err("expected `bench NAME VALUE`".to_owned()),
    };
    Some(parsed.map_err(|problem| format!("malformed bench line `{message}`: {problem}")))
}

/// The figures of one benchmark run, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchResults {
    figures: Vec<(String, Figure)>,
    /// Units (or notes) shown after a figure's value in the table.
    units: Vec<(String, String)>,
}

impl BenchResults {
    /// Collects the figures from a run's lines (info-level core lines only);
    /// returns them and the malformed bench lines.
    pub fn collect(lines: &[Line]) -> (Self, Vec<String>) {
        let mut results = Self::default();
        let mut problems = Vec::new();
        for line in lines {
            let Line::Core {
                level: Level::Info,
                message,
            } = line
            else {
                continue;
            };
            match parse_bench_message(message) {
                Some(Ok((name, value))) => results.set(&name, Figure::Count(value)),
                Some(Err(problem)) => problems.push(problem),
                None => {}
            }
        }
        (results, problems)
    }

    /// Adds or replaces a figure.
    pub fn set(&mut self, name: &str, figure: Figure) {
        match self.figures.iter_mut().find(|(known, _)| known == name) {
            Some(entry) => entry.1 = figure,
            None => self.figures.push((name.to_owned(), figure)),
        }
    }

    /// Sets the unit (or a short note) the table shows after a figure.
    pub fn set_unit(&mut self, name: &str, unit: &str) {
        match self.units.iter_mut().find(|(known, _)| known == name) {
            Some(entry) => entry.1 = unit.to_owned(),
            None => self.units.push((name.to_owned(), unit.to_owned())),
        }
    }

    /// A figure by name.
    pub fn get(&self, name: &str) -> Option<Figure> {
        self.figures
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, figure)| *figure)
    }

    /// Fails naming every required core figure that is missing.
    pub fn check_required(&self) -> Result<()> {
        self.check_present(&REQUIRED_CORE_FIGURES, "the core")
    }

    /// Fails naming every figure of `names` that is missing; `source` says
    /// who should have reported them.
    pub fn check_present(&self, names: &[&str], source: &str) -> Result<()> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| self.get(name).is_none())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{source} did not report these bench figures: {}",
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// Adds (or replaces) every figure of `other`, in its order.
    pub fn merge(&mut self, other: &Self) {
        for (name, figure) in &other.figures {
            self.set(name, *figure);
        }
        for (name, unit) in &other.units {
            self.set_unit(name, unit);
        }
    }

    /// Adds one [`Derived`] figure; returns it (None when an operand is
    /// missing or the denominator is zero).
    pub fn derive(&mut self, derived: &Derived) -> Option<f64> {
        let numerator = self.get(derived.numerator)?.as_f64();
        let denominator = self.get(derived.denominator)?.as_f64();
        if denominator == 0.0 {
            return None;
        }
        let value = numerator / denominator * derived.scale;
        self.set(derived.name, Figure::Real(value));
        Some(value)
    }


    /// The figures as an aligned two-column table.
    pub fn table(&self) -> String {
        let width = self
            .figures
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let mut text = format!("{:<width$}  {:>14}\n", "figure", "value");
        text.push_str(&format!("{}  {}\n", "-".repeat(width), "-".repeat(14)));
        for (name, figure) in &self.figures {
            let unit = self
                .units
                .iter()
                .find(|(known, _)| known == name)
                .map(|(_, unit)| format!("  {unit}"))
                .unwrap_or_default();
            text.push_str(&format!("{name:<width$}  {:>14}{unit}\n", figure.to_string()));
        }
        text
    }

    /// The figures as one flat JSON object, name → number.
    pub fn to_json(&self) -> String {
        let mut object = serde_json::Map::new();
        for (name, figure) in &self.figures {
            let value = match *figure {
                Figure::Count(value) => serde_json::Value::from(value),
                Figure::Real(value) => {
                    serde_json::Number::from_f64(round_to_decimals(value))
                        .map_or(serde_json::Value::Null, serde_json::Value::Number)
                }
            };
            object.insert(name.clone(), value);
        }
        let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(object))
            .unwrap_or_else(|_| "{}".to_owned());
        text.push('\n');
        text
    }

    /// Writes [`Self::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(directory) = path.parent() {
            std::fs::create_dir_all(directory)
                .with_context(|| format!("cannot create {}", directory.display()))?;
        }
        std::fs::write(path, self.to_json())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Halt-polling figures from a boot of `appliances/halt-poll.toml`: the
/// median wake-to-run latency of the `nopoll` and `poll` domains (ns), their
/// ratio (goal ≤ 0.7), and the points of one pCPU that polling burnt during
/// the `poll` domain's life (goal ≤ +2).
pub fn halt_poll_figures(text: &[String]) -> Vec<(&'static str, f64)> {
    let number_after = |line: &str, marker: &str| -> Option<f64> {
        line.split(marker).nth(1)?.split_whitespace().next()?.trim_end_matches(',').parse().ok()
    };
    let find = |domain: &str, marker: &str| -> Option<f64> {
        text.iter()
            .filter(|line| line.contains(&format!("INFO domain {domain}")))
            .find_map(|line| number_after(line, marker))
    };
    let mut figures = Vec::new();
    let off = find("nopoll vCPU 0", "latency median ");
    let on = find("poll vCPU 0", "latency median ");
    if let (Some(off), Some(on)) = (off, on) {
        figures.push(("wake_latency_polling_off_median_ns", off));
        figures.push(("wake_latency_polling_on_median_ns", on));
        figures.push(("wake_latency_on_over_off_ratio", on / off.max(1.0)));
    }
    let polled = find("poll vCPU 0", "poll ok ").zip(find("poll vCPU 0", "poll failed ")).map(|(ok, failed)| ok + failed);
    let life = find("poll", " us in ");
    if let (Some(polled), Some(life)) = (polled, life) {
        figures.push(("halt_poll_burn_points", polled / life.max(1.0) * 100.0));
    }
    figures
}

/// The swap device's read rates and the page checksum's rate from the
/// pager's measurement line (`pager-server/src/devbench.rs`)
///
/// ```text
/// server pager: pager: device: 4k qd1: 19455/s, qd16: 28162/s; 64k qd1: 12466/s, qd3: 15000/s; 128k qd1: 9000/s; crc32c 4k: 90000/s
/// ```
///
/// as `device_read_SIZE_qdN_per_s` for each case (`device_read_4k_qd1_per_s`,
/// ...), `device_read_64k_qd1_mib_per_s`, [`DEVICE_BEST_NAME`] (the most
/// 4 KiB pages per second any case read) and [`CHECKSUM_RATE_NAME`]. A rate
/// the pager could not measure (`-`) is left out; so is everything when
/// the line is missing. `Err` carries the reason of an abandoned
/// measurement (`pager: device: measurement abandoned: REASON`).
pub fn device_read_figures(text: &[String]) -> Result<Vec<(String, f64)>, String> {
    let Some(line) = text.iter().rev().find_map(|line| line.split_once(DEVICE_LINE_MARKER).map(|(_, rest)| rest)) else {
        return Ok(Vec::new());
    };
    if let Some(reason) = line.strip_prefix("measurement abandoned: ") {
        return Err(reason.to_owned());
    }
    let line = line.split(" (").next().unwrap_or(line);
    let rate = |value: &str| value.strip_suffix("/s")?.parse::<f64>().ok();
    let mut figures = Vec::new();
    let mut best: Option<f64> = None;
    for group in line.split("; ") {
        if let Some(value) = group.strip_prefix("crc32c 4k: ") {
            if let Some(value) = rate(value) {
                figures.push((CHECKSUM_RATE_NAME.to_owned(), value));
            }
            continue;
        }
        let Some((size, cases)) = group.split_once(' ') else { continue };
        let Some(kib) = size.strip_suffix('k').and_then(|kib| kib.parse::<u32>().ok()) else { continue };
        for case in cases.split(", ") {
            let Some((depth, value)) = case.split_once(": ") else { continue };
            let Some(value) = rate(value) else { continue };
            figures.push((format!("device_read_{size}_{depth}_per_s"), value));
            if size == "64k" && depth == "qd1" {
                figures.push(("device_read_64k_qd1_mib_per_s".to_owned(), value / 16.0));
            }
            let pages = value * f64::from(kib / 4);
            best = Some(best.map_or(pages, |known: f64| known.max(pages)));
        }
    }
    if let Some(best) = best {
        figures.push((DEVICE_BEST_NAME.to_owned(), best));
    }
    Ok(figures)
}

/// Most 4 KiB pages per second the swap device read in any case of the
/// pager's measurement.
pub const DEVICE_BEST_NAME: &str = "device_read_best_pages_per_s";
/// The pager's CRC-32C rate over 4 KiB blocks, per second.
pub const CHECKSUM_RATE_NAME: &str = "crc32c_4k_per_s";
/// Name of the most a verified page-in over this device could reach,
/// against the copy ([`page_in_bound`]).
pub const PAGE_IN_BOUND_NAME: &str = "page_in_bound_over_copy_ratio";

/// What any page-in over this swap device, checked as the pager checks it,
/// could reach at best, as a fraction of the core's 4 KiB copy rate `copy`:
/// no faster than the device reads pages at its best (`device_best`, pages
/// per second), and no faster than the pCPU can checksum and copy each page
/// (`1 / (1 / checksum + 1 / copy)` pages per second, `checksum` the
/// CRC-32C rate). Everything else a page-in costs (the fault, the messages,
/// the switches, a page-out to make room) only lowers it.
pub fn page_in_bound(copy: f64, device_best: f64, checksum: f64) -> Option<f64> {
    if copy <= 0.0 || device_best <= 0.0 || checksum <= 0.0 {
        return None;
    }
    let pcpu = 1.0 / (1.0 / checksum + 1.0 / copy);
    Some(device_best.min(pcpu) / copy)
}

/// Restart gaps from the core's `server NAME generation N ready, X us after
/// the stop` lines: the median, in ms, per server (`NAME_restart_gap_ms`),
/// from the kill to the new instance's first message (for the scheduler,
/// `Ready` follows its first decisions). Goals: scheduler ≤ 10 ms, pager
/// ≤ 20 ms.
pub fn restart_gap_figures(text: &[String]) -> Vec<(&'static str, f64)> {
    let mut figures = Vec::new();
    for (server, name) in [("scheduler", "scheduler_restart_gap_median_ms"), ("pager", "pager_restart_gap_median_ms")] {
        let marker = format!("server {server} generation ");
        let gaps: Vec<f64> = text
            .iter()
            .filter(|line| line.contains(&marker))
            .filter_map(|line| line.split("ready, ").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
            .map(|micros| micros / 1000.0)
            .collect();
        if let Some(gap) = median(&gaps) {
            figures.push((name, gap));
        }
    }
    figures
}

/// A domain of a share boot: its weight and the most of the machine it can
/// use (its vCPUs, or its cap, over the pCPUs), percent.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareDomain {
    /// The domain's name.
    pub name: String,
    /// Its credit scheduler weight.
    pub weight: u32,
    /// The most of the machine's CPU time it can use, percent.
    pub peak_percent: f64,
}

impl ShareDomain {
    /// The domains of an appliance, in file order.
    pub fn of(appliance: &crate::config::Appliance) -> Vec<Self> {
        let pcpus = f64::from(appliance.machine.cpus.max(1));
        appliance
            .domains
            .iter()
            .map(|domain| {
                let mut pcpus_usable = f64::from(domain.vcpus.max(1));
                if domain.cap > 0 {
                    pcpus_usable = pcpus_usable.min(f64::from(domain.cap) / 100.0);
                }
                Self {
                    name: domain.name.clone(),
                    weight: domain.cpu_weight,
                    peak_percent: (pcpus_usable / pcpus * 100.0).min(100.0),
                }
            })
            .collect()
    }
}

/// The shares of the machine's CPU time the credit scheduler should give
/// `domains` when every one of them is busy, percent, in their order:
/// proportional to the weights, except that a domain gets at most its
/// peak and what it cannot use goes to the others by weight (as
/// `csched_acct()` hands out credit).
pub fn expected_shares(domains: &[ShareDomain]) -> Vec<f64> {
    let mut shares: Vec<Option<f64>> = vec![None; domains.len()];
    let mut remaining = 100.0;
    loop {
        let open: Vec<usize> = (0..domains.len()).filter(|&index| shares[index].is_none()).collect();
        let weights: f64 = open.iter().map(|&index| f64::from(domains[index].weight)).sum();
        if open.is_empty() || weights <= 0.0 {
            break;
        }
        let fair = |index: usize| remaining * f64::from(domains[index].weight) / weights;
        let capped: Vec<usize> = open.iter().copied().filter(|&index| fair(index) > domains[index].peak_percent).collect();
        if capped.is_empty() {
            for index in open {
                shares[index] = Some(fair(index));
            }
            break;
        }
        for index in capped {
            shares[index] = Some(domains[index].peak_percent);
            remaining -= domains[index].peak_percent;
        }
    }
    shares.into_iter().map(|share| share.unwrap_or(0.0)).collect()
}

/// One row of a share table.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareRow {
    /// The domain.
    pub domain: String,
    /// Its weight.
    pub weight: u32,
    /// Its expected share of the boot's total CPU time, percent.
    pub expected: f64,
    /// Its measured share, percent.
    pub measured: f64,
}

impl ShareRow {
    /// Measured minus expected, percentage points.
    pub fn difference(&self) -> f64 {
        self.measured - self.expected
    }
}

/// The share table of a boot (issue "the share table"): each domain's
/// CPU time, from the core's `domain NAME: cpu time X us in Y us` lines,
/// as a share of the domains' total ([`crate::scenario::shares`], as the
/// scenarios judge it), against [`expected_shares`]. `None` when a domain
/// has no cpu time line.
pub fn share_rows(text: &[String], domains: &[ShareDomain]) -> Option<Vec<ShareRow>> {
    let names: Vec<String> = domains.iter().map(|domain| domain.name.clone()).collect();
    let measured = crate::scenario::shares(&crate::scenario::cpu_times(text), &names)?;
    Some(
        domains
            .iter()
            .zip(expected_shares(domains))
            .zip(measured)
            .map(|((domain, expected), measured)| ShareRow {
                domain: domain.name.clone(),
                weight: domain.weight,
                expected,
                measured,
            })
            .collect(),
    )
}

/// The figures of a share table: `share_BOOT_DOMAIN_points_off` (|measured
/// − expected|, points) per domain and `share_BOOT_worst_points_off`.
pub fn share_figures(boot: &str, rows: &[ShareRow]) -> Vec<(String, f64)> {
    let mut figures: Vec<(String, f64)> = rows
        .iter()
        .map(|row| (format!("share_{boot}_{}_points_off", row.domain), row.difference().abs()))
        .collect();
    if let Some(worst) = rows.iter().map(|row| row.difference().abs()).reduce(f64::max) {
        figures.push((format!("share_{boot}_worst_points_off"), worst));
    }
    figures
}

/// A share table as text: a title line, then domain, weight, expected
/// share, measured share and the difference in points.
pub fn share_table(title: &str, rows: &[ShareRow]) -> String {
    let width = rows.iter().map(|row| row.domain.len()).max().unwrap_or(0).max(6);
    let mut text = format!("{title}\n");
    text.push_str(&format!("{:<width$}  {:>6}  {:>10}  {:>10}  {:>10}\n", "domain", "weight", "expected", "measured", "difference"));
    text.push_str(&format!("{}  {}  {}  {}  {}\n", "-".repeat(width), "-".repeat(6), "-".repeat(10), "-".repeat(10), "-".repeat(10)));
    for row in rows {
        text.push_str(&format!(
            "{:<width$}  {:>6}  {:>8.2} %  {:>8.2} %  {:>+6.2} pts\n",
            row.domain,
            row.weight,
            row.expected,
            row.measured,
            row.difference()
        ));
    }
    text
}

/// One pCPU's time at the time limit, from the core's line `pCPU N: G us
/// in guests of T us, P ppm outside; idle I us; lock held H us, waited W us;
/// E exits` (`idle I us; ` is absent from the lines of older cores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcpuTime {
    /// The pCPU.
    pub cpu: u32,
    /// Time in guests, µs.
    pub guest_us: u64,
    /// Time since the pCPU started, µs.
    pub total_us: u64,
    /// Time holding the machine lock, µs.
    pub lock_held_us: u64,
    /// Time waiting for it, µs.
    pub lock_wait_us: u64,
    /// Guest exits handled.
    pub exits: u64,
}

/// The number right after `marker` in `line` (trailing `,` or `;` cut).
fn number_after(line: &str, marker: &str) -> Option<u64> {
    line.split(marker).nth(1)?.split_whitespace().next()?.trim_end_matches([',', ';']).parse().ok()
}

/// What `parse` reads from the text after ` pCPU ` in each line, the last
/// one of each pCPU (`cpu` of a parsed line), by pCPU.
fn last_per_pcpu<T>(text: &[String], parse: impl Fn(&str) -> Option<T>, cpu: impl Fn(&T) -> u32) -> Vec<T> {
    let mut found: Vec<T> = Vec::new();
    for rest in text.iter().filter_map(|line| line.split(" pCPU ").nth(1)) {
        if let Some(parsed) = parse(rest) {
            found.retain(|known| cpu(known) != cpu(&parsed));
            found.push(parsed);
        }
    }
    found.sort_by_key(&cpu);
    found
}

/// The pCPU lines of a transcript (the last one of each pCPU), by pCPU.
pub fn pcpu_times(text: &[String]) -> Vec<PcpuTime> {
    let parse = |rest: &str| {
        if !rest.contains(" us in guests of ") {
            return None;
        }
        Some(PcpuTime {
            cpu: rest.split(':').next()?.trim().parse().ok()?,
            guest_us: number_after(rest, ": ")?,
            total_us: number_after(rest, " in guests of ")?,
            lock_held_us: number_after(rest, "lock held ")?,
            lock_wait_us: number_after(rest, " waited ")?,
            exits: rest.rsplit("; ").next()?.split_whitespace().next()?.parse().ok()?,
        })
    };
    last_per_pcpu(text, parse, |time: &PcpuTime| time.cpu)
}

/// Name of the share of the pCPUs' time spent outside guests, whole boot.
pub const SMP_OUTSIDE_NAME: &str = "smp_outside_guest_percent";
/// Name of the same share in the pCPUs' steady windows (from the core's
/// `smp::STEADY_AFTER_MS` on): the figure held against the goal.
pub const SMP_STEADY_OUTSIDE_NAME: &str = "smp_steady_outside_guest_percent";

/// One pCPU's steady window at the time limit, from the core's line `pCPU
/// N from M ms on: G us in guests of T us, P ppm outside; idle I us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteadyTime {
    /// The pCPU.
    pub cpu: u32,
    /// When the window started, ms after the pCPU started (its first exit
    /// or wake-up at least the core's `STEADY_AFTER_MS` after).
    pub from_ms: u64,
    /// Time in guests, µs.
    pub guest_us: u64,
    /// Length of the window, µs.
    pub total_us: u64,
}

/// The steady-window lines of a transcript (the last one of each pCPU).
pub fn steady_times(text: &[String]) -> Vec<SteadyTime> {
    let parse = |rest: &str| {
        let (head, tail) = rest.split_once(" ms on: ")?;
        let (cpu, from_ms) = head.split_once(" from ")?;
        Some(SteadyTime {
            cpu: cpu.trim().parse().ok()?,
            from_ms: from_ms.trim().parse().ok()?,
            guest_us: tail.split_whitespace().next()?.parse().ok()?,
            total_us: number_after(tail, " in guests of ")?,
        })
    };
    last_per_pcpu(text, parse, |time: &SteadyTime| time.cpu)
}

/// The steady windows of a transcript if every pCPU with a whole-boot line
/// has one: a pCPU that never exited or woke after the window's start
/// prints none, and leaving it out would skew the figure; `None` then.
pub fn complete_steady_times(text: &[String]) -> Option<Vec<SteadyTime>> {
    let steady = steady_times(text);
    let complete = !steady.is_empty() && pcpu_times(text).iter().all(|time| steady.iter().any(|window| window.cpu == time.cpu));
    complete.then_some(steady)
}

/// The steady figure ([`SMP_STEADY_OUTSIDE_NAME`]) of one boot's transcript,
/// if every pCPU has a steady window ([`complete_steady_times`]).
pub fn steady_outside_percent(text: &[String]) -> Option<f64> {
    let steady = complete_steady_times(text)?;
    steady_figures(&steady).into_iter().find(|(name, ..)| name == SMP_STEADY_OUTSIDE_NAME).map(|(_, value, _)| value)
}

/// Which of several boots is the median by `figures` (the upper one of the
/// middle two for an even count, the conservative side for an at-most
/// goal); boots without the figure are left out, and if none has it the
/// first boot stands. `None` for no boots.
pub fn median_boot(figures: &[Option<f64>]) -> Option<usize> {
    let mut known: Vec<(usize, f64)> = figures.iter().enumerate().filter_map(|(index, figure)| figure.map(|value| (index, value))).collect();
    if known.is_empty() {
        return (!figures.is_empty()).then_some(0);
    }
    known.sort_by(|a, b| a.1.total_cmp(&b.1));
    Some(known[known.len() / 2].0)
}

/// Figures of the steady windows: per pCPU `smp_steady_pcpuN_outside_percent`,
/// and over all pCPUs [`SMP_STEADY_OUTSIDE_NAME`] = (Σ T − Σ G) / Σ T × 100,
/// plus the window's start.
pub fn steady_figures(times: &[SteadyTime]) -> Vec<(String, f64, &'static str)> {
    let percent = |part: u64, whole: u64| part as f64 / whole.max(1) as f64 * 100.0;
    let mut figures: Vec<(String, f64, &'static str)> = times
        .iter()
        .map(|time| {
            let outside = percent(time.total_us.saturating_sub(time.guest_us), time.total_us);
            (format!("smp_steady_pcpu{}_outside_percent", time.cpu), outside, "% of the pCPU's steady window outside guests")
        })
        .collect();
    let Some(latest) = times.iter().map(|time| time.from_ms).max() else { return figures };
    let total: u64 = times.iter().map(|time| time.total_us).sum();
    let guest: u64 = times.iter().map(|time| time.guest_us).sum();
    figures.push(("smp_steady_from_ms".to_owned(), latest as f64, "ms after its pCPU started: the latest start of a steady window"));
    figures.push((SMP_STEADY_OUTSIDE_NAME.to_owned(), percent(total.saturating_sub(guest), total), "% of all pCPUs' steady windows outside guests"));
    figures
}

/// Figures of the SMP boot (8 busy vCPUs on 2 pCPUs) from its pCPU lines,
/// with their unit: per pCPU `smp_pcpuN_outside_percent` (time outside
/// guests over the pCPU's time), `smp_pcpuN_lock_held_us`,
/// `smp_pcpuN_lock_wait_us` and `smp_pcpuN_exits`; over all pCPUs
/// [`SMP_OUTSIDE_NAME`] = (Σ total − Σ guest) / Σ total × 100, and the lock
/// held and waited for as percentages of Σ total.
pub fn smp_figures(times: &[PcpuTime]) -> Vec<(String, f64, &'static str)> {
    let mut figures = Vec::new();
    let percent = |part: u64, whole: u64| part as f64 / whole.max(1) as f64 * 100.0;
    for time in times {
        let cpu = time.cpu;
        figures.push((format!("smp_pcpu{cpu}_outside_percent"), percent(time.total_us.saturating_sub(time.guest_us), time.total_us), "% of the pCPU's time outside guests"));
        figures.push((format!("smp_pcpu{cpu}_lock_held_us"), time.lock_held_us as f64, "us holding the machine lock"));
        figures.push((format!("smp_pcpu{cpu}_lock_wait_us"), time.lock_wait_us as f64, "us waiting for the machine lock"));
        figures.push((format!("smp_pcpu{cpu}_exits"), time.exits as f64, "guest exits"));
    }
    if times.is_empty() {
        return figures;
    }
    let total: u64 = times.iter().map(|time| time.total_us).sum();
    let guest: u64 = times.iter().map(|time| time.guest_us).sum();
    let held: u64 = times.iter().map(|time| time.lock_held_us).sum();
    let waited: u64 = times.iter().map(|time| time.lock_wait_us).sum();
    figures.push((SMP_OUTSIDE_NAME.to_owned(), percent(total.saturating_sub(guest), total), "% of all pCPUs' time outside guests"));
    figures.push(("smp_lock_held_percent".to_owned(), percent(held, total), "% of all pCPUs' time holding the lock"));
    figures.push(("smp_lock_wait_percent".to_owned(), percent(waited, total), "% of all pCPUs' time waiting for it"));
    figures
}

/// The core's switch-point lines `switch points: N on pCPU P, pick median
/// M ticks, p99 Q ticks`, if it prints them: per pCPU
/// `core_pcpuP_switch_points`, `core_pcpuP_pick_median_ticks` and
/// `core_pcpuP_pick_p99_ticks`, then `core_pick_median_ticks` and
/// `core_pick_p99_ticks`, the largest over the pCPUs. Empty without such
/// lines.
pub fn switch_point_figures(text: &[String]) -> Vec<(String, f64)> {
    let mut per_cpu: Vec<(u64, u64, u64, u64)> = Vec::new();
    for line in text {
        let Some(rest) = line.split("switch points: ").nth(1) else { continue };
        let parsed = (|| {
            Some((
                number_after(rest, " on pCPU ")?,
                rest.split_whitespace().next()?.parse().ok()?,
                number_after(rest, "pick median ")?,
                number_after(rest, "p99 ")?,
            ))
        })();
        if let Some(entry) = parsed {
            per_cpu.retain(|known| known.0 != entry.0);
            per_cpu.push(entry);
        }
    }
    per_cpu.sort_unstable();
    let mut figures = Vec::new();
    for &(cpu, points, median, p99) in &per_cpu {
        figures.push((format!("core_pcpu{cpu}_switch_points"), points as f64));
        figures.push((format!("core_pcpu{cpu}_pick_median_ticks"), median as f64));
        figures.push((format!("core_pcpu{cpu}_pick_p99_ticks"), p99 as f64));
    }
    if let Some(median) = per_cpu.iter().map(|entry| entry.2).max() {
        figures.push(("core_pick_median_ticks".to_owned(), median as f64));
    }
    if let Some(p99) = per_cpu.iter().map(|entry| entry.3).max() {
        figures.push(("core_pick_p99_ticks".to_owned(), p99 as f64));
    }
    figures
}

/// The scheduler server's decision cost from its last line `scheduler-server:
/// gen G: decisions C, decide median M ticks, p99 Q ticks` (log2 bucket
/// upper bounds, over every decision pass of that instance):
/// `sched_decisions_timed`, `sched_decide_median_ticks` and
/// `sched_decide_p99_ticks`. Empty without such a line.
pub fn decide_figures(text: &[String]) -> Vec<(&'static str, f64)> {
    let Some(line) = text.iter().rev().find(|line| line.contains("scheduler-server: gen ") && line.contains(", decide median ")) else {
        return Vec::new();
    };
    let found = (|| Some((number_after(line, ": decisions ")?, number_after(line, "decide median ")?, number_after(line, " p99 ")?)))();
    match found {
        Some((count, median, p99)) => vec![
            ("sched_decisions_timed", count as f64),
            ("sched_decide_median_ticks", median as f64),
            ("sched_decide_p99_ticks", p99 as f64),
        ],
        None => Vec::new(),
    }
}

/// A figure measured directly (not [`Derived`]) that has a goal.
#[derive(Debug, Clone, Copy)]
pub struct FigureGoal {
    /// The figure.
    pub name: &'static str,
    /// Its goal.
    pub goal: Goal,
}

/// The goals of measured figures, in the order they are reported.
pub const FIGURE_GOALS: [FigureGoal; 3] = [
    FigureGoal { name: "share_weights_worst_points_off", goal: Goal::AtMost(3.0) },
    FigureGoal { name: "share_balance_worst_points_off", goal: Goal::AtMost(5.0) },
    FigureGoal { name: SMP_STEADY_OUTSIDE_NAME, goal: Goal::AtMost(0.5) },
];

/// One guest-progress boot's figures (issue #6 §6), from its transcript:
/// what the spinners got done by the machine's time limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpinnerProgress {
    /// Per spinner: its `NAME: progress N` lines.
    pub lines: Vec<(String, u64)>,
    /// Per spinner: the CPU time of its `domain NAME: cpu time X us in Y
    /// us` core line, µs (`None`: the core printed none).
    pub cpu_us: Vec<(String, Option<u64>)>,
    /// The injector's `fault injection: kill N of K` lines.
    pub kills: u64,
    /// Whether the core printed `time limit reached` (the boot ran its
    /// whole `stop_after`).
    pub time_limit: bool,
}

impl SpinnerProgress {
    /// Reads a transcript (lines as printed) for the domains `spinners`.
    pub fn read(text: &[String], spinners: &[&str]) -> Self {
        let mut progress = Self {
            lines: spinners.iter().map(|name| ((*name).to_owned(), 0)).collect(),
            cpu_us: spinners.iter().map(|name| ((*name).to_owned(), None)).collect(),
            ..Self::default()
        };
        for line in text {
            let line = line.trim();
            if line.starts_with("cairn ") {
                if line.contains(" fault injection: kill ") {
                    progress.kills += 1;
                } else if line.ends_with(" time limit reached") {
                    progress.time_limit = true;
                }
                for (name, cpu) in &mut progress.cpu_us {
                    let marker = format!(" domain {name}: cpu time ");
                    if let Some(micros) = line
                        .split_once(&marker)
                        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
                    {
                        *cpu = Some(micros);
                    }
                }
            } else if let Some((name, rest)) = line.split_once(": ") {
                if rest.starts_with("progress ") {
                    if let Some((_, count)) = progress.lines.iter_mut().find(|(known, _)| known == name) {
                        *count += 1;
                    }
                }
            }
        }
        progress
    }

    /// Progress lines, summed over the spinners.
    pub fn total_lines(&self) -> u64 {
        self.lines.iter().map(|(_, count)| count).sum()
    }

    /// CPU time, µs, summed over the spinners; `None` if one has no line.
    pub fn total_cpu_us(&self) -> Option<u64> {
        self.cpu_us.iter().map(|(_, micros)| *micros).sum()
    }
}

/// Guest progress lost per kill (issue #6 §6): `with` is the boot of the
/// campaign's appliance under the injector, `baselines` boots of the same
/// appliance for the same time without it (at least one). Figures, with
/// their unit:
///
/// * `campaign_spinner_progress_with_kills` / `..._without_kills`:
///   progress lines of the two spinners, summed (without: the baselines'
///   mean), and `campaign_spinner_progress_baseline_N` per baseline;
/// * `progress_lost_per_kill`: (without − with) / kills made, in spinner
///   progress lines (one line: [`crate::campaign::SPINNER_WORK`] busy-loop
///   iterations);
/// * `campaign_spinner_cpu_us_with_kills` / `..._without_kills`,
///   `cpu_time_lost_per_kill_us`: the same from the spinners' CPU time
///   (spinners only: memhog's work is fixed and it ends early);
/// * with two baselines or more, the noise: `progress_noise_per_kill` and
///   `cpu_time_noise_per_kill_us`, the baselines' spread (max − min) per
///   kill: a loss no larger than that is within run-to-run noise.
pub fn progress_lost_figures(
    with: &SpinnerProgress,
    baselines: &[SpinnerProgress],
) -> Vec<(&'static str, f64, &'static str)> {
    const LINES: &str = "spinner progress lines (light + heavy)";
    const LOST_LINES: &str = "spinner progress lines lost per kill";
    const MICROS: &str = "us of CPU (light + heavy)";
    const LOST_MICROS: &str = "us of spinner CPU lost per kill";
    let mut figures = Vec::new();
    if baselines.is_empty() {
        return figures;
    }
    let kills = with.kills as f64;
    figures.push(("campaign_kills_made", kills, "kills in the boot with kills"));
    let spread = |values: &[f64]| {
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        max - min
    };
    let per_kill = |value: f64| if kills > 0.0 { Some(value / kills) } else { None };

    let base_lines: Vec<f64> = baselines.iter().map(|base| base.total_lines() as f64).collect();
    let mean_lines = base_lines.iter().sum::<f64>() / base_lines.len() as f64;
    figures.push(("campaign_spinner_progress_with_kills", with.total_lines() as f64, LINES));
    figures.push(("campaign_spinner_progress_without_kills", mean_lines, "spinner progress lines (light + heavy), mean of the baselines"));
    const BASE_NAMES: [&str; 3] = [
        "campaign_spinner_progress_baseline_1",
        "campaign_spinner_progress_baseline_2",
        "campaign_spinner_progress_baseline_3",
    ];
    for (name, value) in BASE_NAMES.iter().zip(&base_lines) {
        figures.push((name, *value, LINES));
    }
    if let Some(lost) = per_kill(mean_lines - with.total_lines() as f64) {
        figures.push(("progress_lost_per_kill", lost, LOST_LINES));
    }
    if base_lines.len() >= 2 {
        if let Some(noise) = per_kill(spread(&base_lines)) {
            figures.push(("progress_noise_per_kill", noise, "baselines' spread per kill, progress lines"));
        }
    }

    let base_cpu: Option<Vec<f64>> = baselines
        .iter()
        .map(|base| base.total_cpu_us().map(|micros| micros as f64))
        .collect();
    if let (Some(with_cpu), Some(base_cpu)) = (with.total_cpu_us(), base_cpu) {
        let mean_cpu = base_cpu.iter().sum::<f64>() / base_cpu.len() as f64;
        figures.push(("campaign_spinner_cpu_us_with_kills", with_cpu as f64, MICROS));
        figures.push(("campaign_spinner_cpu_us_without_kills", mean_cpu, "us of CPU (light + heavy), mean of the baselines"));
        const CPU_NAMES: [&str; 3] = [
            "campaign_spinner_cpu_us_baseline_1",
            "campaign_spinner_cpu_us_baseline_2",
            "campaign_spinner_cpu_us_baseline_3",
        ];
        for (name, value) in CPU_NAMES.iter().zip(&base_cpu) {
            figures.push((name, *value, MICROS));
        }
        if let Some(lost) = per_kill(mean_cpu - with_cpu as f64) {
            figures.push(("cpu_time_lost_per_kill_us", lost, LOST_MICROS));
        }
        if base_cpu.len() >= 2 {
            if let Some(noise) = per_kill(spread(&base_cpu)) {
                figures.push(("cpu_time_noise_per_kill_us", noise, "baselines' spread per kill, us of spinner CPU"));
            }
        }
    }
    figures
}

/// A sentence on whether a per-kill loss stands out of the noise: `lost`
/// and `noise` per kill (same unit), `noise` from the baselines' spread.
/// Two baselines give a crude spread, so only a loss beyond twice it is
/// called one; up to twice it is "comparable to" the noise.
pub fn noise_verdict(name: &str, lost: f64, noise: Option<f64>) -> String {
    match noise {
        None => format!("{name}: {} (one baseline only: run-to-run noise not measured)", Figure::Real(lost)),
        Some(noise) if lost.abs() <= noise => format!(
            "{name}: {}, within run-to-run noise (the baselines alone differ by {} per kill): no loss measurable",
            Figure::Real(lost),
            Figure::Real(noise)
        ),
        Some(noise) if lost.abs() <= 2.0 * noise => format!(
            "{name}: {}, comparable to run-to-run noise (the baselines alone differ by {} per kill): not a clear loss",
            Figure::Real(lost),
            Figure::Real(noise)
        ),
        Some(noise) => format!(
            "{name}: {}, beyond twice the run-to-run noise (the baselines differ by {} per kill)",
            Figure::Real(lost),
            Figure::Real(noise)
        ),
    }
}

/// Sizes of an ELF image's loadable segments, by kind: `text` (executable),
/// `rodata` (read-only), `data` (writable, file-backed part) and `bss` (the
/// writable rest), in bytes. Malformed headers give no sizes.
pub fn image_sizes(elf: &[u8]) -> Vec<(&'static str, u64)> {
    let read = |at: usize, width: usize| -> Option<u64> {
        let bytes = elf.get(at..at + width)?;
        let mut word = [0u8; 8];
        word[..width].copy_from_slice(bytes);
        Some(u64::from_le_bytes(word))
    };
    let (mut text, mut rodata, mut data, mut bss) = (0, 0, 0, 0);
    let headers = (|| {
        if elf.get(..4)? != b"\x7fELF" {
            return None;
        }
        Some((read(32, 8)? as usize, read(54, 2)? as usize, read(56, 2)? as usize))
    })();
    let Some((offset, size, count)) = headers else { return Vec::new() };
    for index in 0..count {
        let header = offset + index * size;
        let (Some(1), Some(flags), Some(file), Some(memory)) =
            (read(header, 4), read(header + 4, 4), read(header + 32, 8), read(header + 40, 8))
        else {
            continue;
        };
        if flags & 1 != 0 {
            text += memory;
        } else if flags & 2 != 0 {
            data += file;
            bss += memory - file.min(memory);
        } else {
            rodata += memory;
        }
    }
    vec![("text", text), ("rodata", rodata), ("data", data), ("bss", bss)]
}

/// The median of some measurements (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        length if length % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(message: &str) -> Line {
        Line::Core {
            level: Level::Info,
            message: message.to_owned(),
        }
    }

    #[test]
    fn bench_messages_parse_or_explain() {
        assert_eq!(
            parse_bench_message("bench x_ticks 42"),
            Some(Ok(("x_ticks".into(), 42)))
        );
        assert_eq!(parse_bench_message("booting"), None);
        assert!(parse_bench_message("bench x -1").is_some_and(|parsed| parsed.is_err()));
        assert!(parse_bench_message("bench x").is_some_and(|parsed| parsed.is_err()));
        assert!(parse_bench_message("bench x 1 2").is_some_and(|parsed| parsed.is_err()));
    }

    #[test]
    fn only_info_core_lines_are_collected() {
        let lines = vec![
            info("bench vmexit_bare_median_ticks 20000"),
            Line::Guest("hello: bench fake 1".into()),
            Line::Core {
                level: Level::Warn,
                message: "bench warned 5".into(),
            },
            info("bench cpuid_exit_median_ticks 21000"),
            info("bench broken"),
            info("bench new_figure 7"),
        ];
        let (results, problems) = BenchResults::collect(&lines);
        assert_eq!(
            results.get("vmexit_bare_median_ticks"),
            Some(Figure::Count(20000))
        );
        assert_eq!(
            results.get("new_figure"),
            Some(Figure::Count(7)),
            "any figure is collected"
        );
        assert_eq!(results.get("fake"), None);
        assert_eq!(results.get("warned"), None);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn halt_poll_figures_come_from_the_core_lines() {
        let text: Vec<String> = [
            "cairn  INFO domain nopoll vCPU 0: wake-to-run latency median 90000 ns over 1999 timed wake-ups",
            "cairn  INFO domain poll: cpu time 100000 us in 2000000 us, 50 per mille of a pCPU",
            "cairn  INFO domain poll vCPU 0: halt polls 10 successful of 10, 0 invalid; poll ok 9000 us, poll failed 1000 us, waited 5 us; window 1 ns, max 2 ns",
            "cairn  INFO domain poll vCPU 0: wake-to-run latency median 9000 ns over 1999 timed wake-ups",
        ]
        .iter()
        .map(|line| line.to_string())
        .collect();
        let figures = halt_poll_figures(&text);
        let get = |name: &str| figures.iter().find(|(known, _)| *known == name).map(|(_, value)| *value);
        assert_eq!(get("wake_latency_polling_off_median_ns"), Some(90000.0));
        assert_eq!(get("wake_latency_polling_on_median_ns"), Some(9000.0));
        assert_eq!(get("wake_latency_on_over_off_ratio"), Some(0.1));
        assert_eq!(get("halt_poll_burn_points"), Some(0.5));
        assert!(halt_poll_figures(&[]).is_empty());
    }

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|line| line.to_string()).collect()
    }

    fn domain(name: &str, weight: u32, peak_percent: f64) -> ShareDomain {
        ShareDomain { name: name.into(), weight, peak_percent }
    }

    #[test]
    fn expected_shares_follow_weights_up_to_each_peak() {
        let weights = [domain("light", 256, 100.0), domain("medium", 512, 100.0), domain("heavy", 1024, 100.0)];
        let shares = expected_shares(&weights);
        let rounded: Vec<f64> = shares.iter().map(|share| (share * 100.0).round() / 100.0).collect();
        assert_eq!(rounded, vec![14.29, 28.57, 57.14]);
        // Four single-vCPU domains on two pCPUs: a quarter each.
        let balance: Vec<ShareDomain> = ["one", "two", "three", "four"].iter().map(|name| domain(name, 256, 50.0)).collect();
        assert_eq!(expected_shares(&balance), vec![25.0; 4]);
        // One heavy single-vCPU domain on two pCPUs cannot use 2/3 of the
        // machine: it gets one pCPU (50 %), the other two split the rest.
        let peaked = [domain("a", 1024, 50.0), domain("b", 256, 50.0), domain("c", 256, 50.0)];
        assert_eq!(expected_shares(&peaked), vec![50.0, 25.0, 25.0]);
        assert!(expected_shares(&[]).is_empty());
    }

    #[test]
    fn share_domains_come_from_the_appliance() {
        let appliance = crate::config::parse(
            "[machine]\ncpus = 2\n[[domain]]\nname='a'\nkernel='cairn:spinner'\ncpu_weight=512\n[[domain]]\nname='b'\nkernel='cairn:spinner'\ncap=25\n",
            "t.toml",
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(ShareDomain::of(&appliance), vec![domain("a", 512, 50.0), domain("b", 256, 12.5)]);
    }

    #[test]
    fn share_tables_compare_measured_with_expected() {
        let text = lines(&[
            "cairn  INFO time limit reached",
            "cairn  INFO domain light: cpu time 1170000 us in 8000000 us, 146 per mille of a pCPU",
            "cairn  INFO domain medium: cpu time 2340000 us in 8000000 us, 292 per mille of a pCPU",
            "cairn  INFO domain heavy: cpu time 4490000 us in 8000000 us, 561 per mille of a pCPU",
        ]);
        let domains = [domain("light", 256, 100.0), domain("medium", 512, 100.0), domain("heavy", 1024, 100.0)];
        let rows = share_rows(&text, &domains).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[2].domain.as_str(), rows[2].weight), ("heavy", 1024));
        // 4490 of 8000 ms: 56.125 % against 57.143 %.
        assert!((rows[2].measured - 56.125).abs() < 1e-9);
        assert!((rows[2].difference() + 1.018).abs() < 1e-3);
        let figures = share_figures("weights", &rows);
        let names: Vec<&str> = figures.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            ["share_weights_light_points_off", "share_weights_medium_points_off", "share_weights_heavy_points_off", "share_weights_worst_points_off"]
        );
        let worst = figures.last().unwrap().1;
        assert!((worst - 1.018).abs() < 1e-3, "{worst}");
        assert!(figures.iter().all(|(_, value)| *value >= 0.0));
        let table = share_table("weights (appliances/weights.toml)", &rows);
        assert!(table.starts_with("weights (appliances/weights.toml)\ndomain  weight    expected    measured  difference\n"), "{table}");
        assert!(table.contains("heavy     1024     57.14 %     56.12 %   -1.02 pts\n"), "{table}");
        // A domain without a cpu time line: no table.
        assert_eq!(share_rows(&text[..3], &domains), None);
        assert!(share_figures("x", &[]).is_empty());
    }

    #[test]
    fn pcpu_lines_give_the_time_outside_guests() {
        let text = lines(&[
            "cairn  INFO pCPU 0: 1 us in guests of 2 us, 500000 ppm outside; lock held 0 us, waited 0 us; 1 exits",
            "cairn  INFO time limit reached",
            "cairn  INFO pCPU 0: 5898314 us in guests of 6000306 us, 16997 ppm outside; lock held 57897 us, waited 1716 us; 864 exits",
            "cairn  INFO pCPU 1: 5940000 us in guests of 6000000 us, 10000 ppm outside; idle 3000 us; lock held 40000 us, waited 2000 us; 700 exits",
            "cairn  INFO switch points: 120 on pCPU 1, pick median 3000 ticks, p99 9000 ticks",
        ]);
        let times = pcpu_times(&text);
        assert_eq!(
            times[0],
            PcpuTime { cpu: 0, guest_us: 5_898_314, total_us: 6_000_306, lock_held_us: 57_897, lock_wait_us: 1_716, exits: 864 },
            "the last line of a pCPU counts"
        );
        assert_eq!(times.len(), 2);
        let figures = smp_figures(&times);
        let get = |name: &str| figures.iter().find(|(known, ..)| known == name).map(|(_, value, _)| *value);
        assert!((get("smp_pcpu0_outside_percent").unwrap() - 1.6997).abs() < 1e-3);
        assert_eq!(get("smp_pcpu1_outside_percent"), Some(1.0));
        assert_eq!(get("smp_pcpu0_lock_held_us"), Some(57_897.0));
        assert_eq!(get("smp_pcpu1_lock_wait_us"), Some(2_000.0));
        assert_eq!(get("smp_pcpu0_exits"), Some(864.0));
        // (12 000 306 - 11 838 314) / 12 000 306.
        let outside = get(SMP_OUTSIDE_NAME).unwrap();
        assert!((outside - 161_992.0 / 12_000_306.0 * 100.0).abs() < 1e-9, "{outside}");
        assert!((get("smp_lock_held_percent").unwrap() - 97_897.0 / 12_000_306.0 * 100.0).abs() < 1e-9);
        assert!((get("smp_lock_wait_percent").unwrap() - 3_716.0 / 12_000_306.0 * 100.0).abs() < 1e-9);
        assert!(smp_figures(&[]).is_empty());
        assert!(pcpu_times(&lines(&["cairn  INFO pCPU 0: garbled"])).is_empty());
        assert!(steady_times(&text).is_empty(), "whole-boot lines are not steady windows");
    }

    #[test]
    fn the_median_boot_is_chosen_by_its_figure() {
        assert_eq!(median_boot(&[Some(0.9), Some(0.4), Some(0.5)]), Some(2));
        assert_eq!(median_boot(&[Some(0.4), Some(0.6)]), Some(1), "the upper of the middle two");
        assert_eq!(median_boot(&[None, Some(0.7), Some(0.3), None, Some(0.5)]), Some(4));
        assert_eq!(median_boot(&[None, Some(0.7)]), Some(1));
        assert_eq!(median_boot(&[None, None]), Some(0), "no figure anywhere: the first boot");
        assert_eq!(median_boot(&[]), None);
    }

    #[test]
    fn steady_lines_give_the_figure_the_goal_is_held_against() {
        let text = lines(&[
            "cairn  INFO pCPU 0: 5918263 us in guests of 6000553 us, 13713 ppm outside; idle 0 us; lock held 44267 us, waited 407 us; 217 exits",
            "cairn  INFO pCPU 0 from 1000 ms on: 4912354 us in guests of 4975451 us, 12681 ppm outside; idle 0 us",
            "cairn  INFO pCPU 1 from 1000 ms on: 4961553 us in guests of 4973007 us, 2303 ppm outside; idle 0 us",
            "cairn  INFO pCPU 1 from 1000 ms: garbled",
        ]);
        let times = steady_times(&text);
        assert_eq!(times.len(), 2);
        assert_eq!(times[1], SteadyTime { cpu: 1, from_ms: 1000, guest_us: 4_961_553, total_us: 4_973_007 });
        assert_eq!(pcpu_times(&text).len(), 1, "steady lines are not whole-boot lines");
        let figures = steady_figures(&times);
        let get = |name: &str| figures.iter().find(|(known, ..)| known == name).map(|(_, value, _)| *value);
        assert!((get("smp_steady_pcpu0_outside_percent").unwrap() - 63_097.0 / 4_975_451.0 * 100.0).abs() < 1e-9);
        assert_eq!(get("smp_steady_from_ms"), Some(1000.0));
        // (9 948 458 - 9 873 907) / 9 948 458.
        let outside = get(SMP_STEADY_OUTSIDE_NAME).unwrap();
        assert!((outside - 74_551.0 / 9_948_458.0 * 100.0).abs() < 1e-9, "{outside}");
        let goal = FIGURE_GOALS.iter().find(|goal| goal.name == SMP_STEADY_OUTSIDE_NAME).unwrap().goal;
        assert!(!goal.met(outside));
        assert!(goal.met(0.5) && !goal.met(0.51));
        assert!(steady_figures(&[]).is_empty());
        assert_eq!(steady_outside_percent(&text[1..]), Some(outside), "no whole-boot line: nothing to miss");
        assert_eq!(steady_outside_percent(&text[..1]), None);
        let pcpu1_whole = "cairn  INFO pCPU 1: 4961553 us in guests of 6000000 us, 1000 ppm outside; idle 0 us; lock held 0 us, waited 0 us; 9 exits";
        let mut without_pcpu1 = lines(&[pcpu1_whole]);
        without_pcpu1.extend_from_slice(&text[..2]);
        assert_eq!(steady_outside_percent(&without_pcpu1), None, "pCPU 1 has no steady window: no figure");
        assert!(complete_steady_times(&without_pcpu1).is_none());
        assert_eq!(complete_steady_times(&text).map(|times| times.len()), Some(2));
    }

    #[test]
    fn switch_points_are_read_when_the_core_prints_them() {
        let text = lines(&[
            "cairn  INFO switch points: 1200 on pCPU 0, pick median 2500 ticks, p99 8000 ticks",
            "cairn  INFO switch points: 1100 on pCPU 1, pick median 3000 ticks, p99 7000 ticks",
        ]);
        let figures = switch_point_figures(&text);
        let get = |name: &str| figures.iter().find(|(known, _)| known == name).map(|(_, value)| *value);
        assert_eq!(get("core_pcpu0_switch_points"), Some(1200.0));
        assert_eq!(get("core_pcpu1_pick_median_ticks"), Some(3000.0));
        assert_eq!(get("core_pcpu0_pick_p99_ticks"), Some(8000.0));
        assert_eq!((get("core_pick_median_ticks"), get("core_pick_p99_ticks")), (Some(3000.0), Some(8000.0)));
        assert!(switch_point_figures(&lines(&["cairn  INFO time limit reached"])).is_empty());
    }

    #[test]
    fn the_decision_cost_is_the_servers_last_line() {
        let text = lines(&[
            "server scheduler: scheduler-server: gen 1: decisions 1000, decide median 16383 ticks, p99 65535 ticks (log2 bucket upper bounds)",
            "server scheduler: scheduler-server: gen 1: decisions 2000, decide median 32767 ticks, p99 131071 ticks (log2 bucket upper bounds)",
            "server scheduler: scheduler-server: gen 1: started; waiting for the core's rebuild stream",
        ]);
        assert_eq!(
            decide_figures(&text),
            vec![("sched_decisions_timed", 2000.0), ("sched_decide_median_ticks", 32767.0), ("sched_decide_p99_ticks", 131071.0)]
        );
        assert!(decide_figures(&text[2..]).is_empty());
        let mut results = BenchResults::default();
        results.set("tsc_mhz", Figure::Count(2600));
        for (name, value) in decide_figures(&text) {
            results.set(name, Figure::Real(value));
        }
        let derived = DERIVED.iter().find(|derived| derived.name == "sched_decide_median_us").unwrap();
        let micros = results.derive(derived).unwrap();
        assert!((micros - 32767.0 / 2600.0).abs() < 1e-9);
    }

    #[test]
    fn restart_gaps_are_medians_of_the_ready_lines() {
        let text: Vec<String> = [
            "cairn  INFO server scheduler generation 2 ready, 6000 us after the stop",
            "cairn  INFO server scheduler generation 3 ready, 16000 us after the stop",
            "cairn  INFO server scheduler generation 4 ready, 8000 us after the stop",
            "cairn  INFO server pager generation 2 ready, 1000 us after the stop",
            "cairn  INFO server scheduler generation 1 ready",
        ]
        .iter()
        .map(|line| line.to_string())
        .collect();
        assert_eq!(
            restart_gap_figures(&text),
            vec![("scheduler_restart_gap_median_ms", 8.0), ("pager_restart_gap_median_ms", 1.0)]
        );
    }

    /// A transcript of a guest-progress boot: `light` and `heavy` print
    /// `light_lines` and `heavy_lines` progress lines, `kills` kill lines,
    /// and the cpu time lines at the time limit.
    fn progress_transcript(light_lines: u64, heavy_lines: u64, kills: u64, light_us: u64, heavy_us: u64) -> Vec<String> {
        let mut text = vec!["cairn  INFO cairn core starting".to_owned()];
        for kill in 1..=kills {
            text.push(format!("cairn  WARN fault injection: kill {kill} of {kills}: scheduler now"));
            text.push(format!("cairn  WARN server scheduler stopped: killed; restarting as generation {}", kill + 1));
        }
        for count in 1..=light_lines.max(heavy_lines) {
            if count <= light_lines {
                text.push(format!("light: progress {count}"));
            }
            if count <= heavy_lines {
                text.push(format!("heavy: progress {count}"));
            }
        }
        text.push("memhog: progress of a non-spinner 1".to_owned());
        text.push("cairn  INFO domain memhog: cpu time 264307 us in 13503723 us, 19 per mille of a pCPU".to_owned());
        text.push("cairn  INFO time limit reached".to_owned());
        text.push(format!("cairn  INFO domain light: cpu time {light_us} us in 20050176 us, 248 per mille of a pCPU"));
        text.push(format!("cairn  INFO domain heavy: cpu time {heavy_us} us in 20026371 us, 459 per mille of a pCPU"));
        text
    }

    #[test]
    fn progress_lost_per_kill_is_the_baselines_mean_minus_the_kills_run_per_kill() {
        let spinners = ["light", "heavy"];
        let with = SpinnerProgress::read(&progress_transcript(95, 186, 40, 4_800_000, 9_000_000), &spinners);
        assert_eq!(with.lines, vec![("light".to_owned(), 95), ("heavy".to_owned(), 186)]);
        assert_eq!(with.cpu_us, vec![("light".to_owned(), Some(4_800_000)), ("heavy".to_owned(), Some(9_000_000))]);
        assert_eq!((with.kills, with.time_limit, with.total_lines(), with.total_cpu_us()), (40, true, 281, Some(13_800_000)));
        let base_1 = SpinnerProgress::read(&progress_transcript(100, 200, 0, 5_000_000, 9_600_000), &spinners);
        let base_2 = SpinnerProgress::read(&progress_transcript(99, 199, 0, 4_960_000, 9_600_000), &spinners);
        assert_eq!(base_1.kills, 0);

        let figures = progress_lost_figures(&with, &[base_1.clone(), base_2]);
        let get = |name: &str| figures.iter().find(|(known, ..)| *known == name).map(|(_, value, _)| *value);
        assert_eq!(get("campaign_kills_made"), Some(40.0));
        assert_eq!(get("campaign_spinner_progress_with_kills"), Some(281.0));
        assert_eq!(get("campaign_spinner_progress_baseline_1"), Some(300.0));
        assert_eq!(get("campaign_spinner_progress_baseline_2"), Some(298.0));
        assert_eq!(get("campaign_spinner_progress_without_kills"), Some(299.0));
        // (299 - 281) / 40 lines; the baselines differ by 2 lines: 0.05 a kill.
        assert_eq!(get("progress_lost_per_kill"), Some(0.45));
        assert_eq!(get("progress_noise_per_kill"), Some(0.05));
        // (14 580 000 - 13 800 000) / 40 µs; baselines 40 000 µs apart.
        assert_eq!(get("campaign_spinner_cpu_us_without_kills"), Some(14_580_000.0));
        assert_eq!(get("cpu_time_lost_per_kill_us"), Some(19_500.0));
        assert_eq!(get("cpu_time_noise_per_kill_us"), Some(1_000.0));
        let (_, _, unit) = figures.iter().find(|(name, ..)| *name == "progress_lost_per_kill").unwrap();
        assert!(unit.contains("progress lines"), "{unit}");

        assert!(noise_verdict("x", 0.45, Some(0.05)).contains("beyond twice the run-to-run noise"));
        assert!(noise_verdict("x", 4883.85, Some(4844.35)).contains("comparable to run-to-run noise"));
        assert!(noise_verdict("x", 0.04, Some(0.05)).contains("within run-to-run noise"));
        assert!(noise_verdict("x", -0.05, Some(0.05)).contains("within"));
        assert!(noise_verdict("x", 0.45, None).contains("not measured"));

        // One baseline: no noise figures; no kills: no per-kill figures;
        // a spinner without a cpu time line: no cpu figures.
        let one = progress_lost_figures(&with, std::slice::from_ref(&base_1));
        assert!(one.iter().all(|(name, ..)| !name.contains("noise")));
        assert!(one.iter().any(|(name, ..)| *name == "progress_lost_per_kill"));
        let no_kills = progress_lost_figures(&base_1, std::slice::from_ref(&base_1));
        assert!(no_kills.iter().all(|(name, ..)| !name.contains("per_kill")));
        let mut cut = progress_transcript(95, 186, 40, 1, 1);
        cut.pop();
        let cut = SpinnerProgress::read(&cut, &spinners);
        assert_eq!(cut.total_cpu_us(), None);
        assert!(progress_lost_figures(&cut, &[base_1]).iter().all(|(name, ..)| !name.contains("cpu")));
        assert!(progress_lost_figures(&with, &[]).is_empty());
    }

    #[test]
    fn units_show_in_the_table_only() {
        let mut results = BenchResults::default();
        results.set("lost", Figure::Real(0.5));
        results.set_unit("lost", "lines per kill");
        results.set("plain", Figure::Count(3));
        let table = results.table();
        assert!(table.contains(&format!("{:<6}  {:>14}  lines per kill\n", "lost", "0.500")), "{table}");
        assert!(table.ends_with(&format!("{:<6}  {:>14}\n", "plain", "3")), "{table}");
        let mut merged = BenchResults::default();
        merged.merge(&results);
        assert_eq!(merged.table(), table);
        assert!(!results.to_json().contains("lines per kill"));
    }

    #[test]
    fn image_sizes_split_segments_by_flags() {
        // A minimal ELF64 header with two program headers: RX 0x300 bytes,
        // RW 0x10 in the file and 0x1000 in memory.
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        for (index, (flags, file, memory)) in [(5u32, 0x300u64, 0x300u64), (6, 0x10, 0x1000)].into_iter().enumerate() {
            let header = 64 + index * 56;
            elf[header..header + 4].copy_from_slice(&1u32.to_le_bytes());
            elf[header + 4..header + 8].copy_from_slice(&flags.to_le_bytes());
            elf[header + 32..header + 40].copy_from_slice(&file.to_le_bytes());
            elf[header + 40..header + 48].copy_from_slice(&memory.to_le_bytes());
        }
        assert_eq!(image_sizes(&elf), vec![("text", 0x300), ("rodata", 0), ("data", 0x10), ("bss", 0xff0)]);
        assert!(image_sizes(b"not an elf").is_empty());
    }

    #[test]
    fn missing_required_figures_fail_by_name() {
        let (results, _) = BenchResults::collect(&[info("bench vmexit_bare_median_ticks 1")]);
        let error = results.check_required().unwrap_err().to_string();
        assert!(error.contains("cpuid_exit_median_ticks"), "{error}");
        assert!(!error.contains("vmexit_bare_median_ticks,"), "{error}");
    }

    #[test]
    fn the_ratio_is_cpuid_over_bare() {
        let mut results = BenchResults::default();
        results.set("vmexit_bare_median_ticks", Figure::Count(20000));
        assert_eq!(results.derive(&DERIVED[0]), None);
        results.set("cpuid_exit_median_ticks", Figure::Count(21000));
        assert_eq!(results.derive(&DERIVED[0]), Some(1.05));
        assert_eq!(results.get(RATIO_NAME), Some(Figure::Real(1.05)));
    }

    #[test]
    fn paging_ratios_are_throughputs_over_the_copy_with_an_at_least_goal() {
        let (paging, problems) = BenchResults::collect(&[
            info("bench page_out_per_s 3000"),
            info("bench page_in_per_s 2000"),
            info("bench page_in_median_ticks 260000"),
            info("bench page_in_p99_ticks 2600000"),
            info("bench copy_4k_per_s 40000"),
            info("bench paging_tsc_mhz 2600"),
        ]);
        assert!(problems.is_empty());
        paging.check_present(&PAGING_FIGURES, "the paging boot").unwrap();
        let mut results = BenchResults::default();
        results.set("tsc_mhz", Figure::Count(2600));
        results.merge(&paging);
        assert_eq!(results.get("page_in_per_s"), Some(Figure::Count(2000)));
        let value = |name: &str| {
            let derived = DERIVED.iter().find(|derived| derived.name == name).unwrap();
            (results.clone().derive(derived).unwrap(), derived.goal)
        };
        assert_eq!(value("page_out_over_copy_ratio"), (0.075, None));
        let (ratio, goal) = value(PAGE_IN_RATIO_NAME);
        assert_eq!(ratio, 0.05);
        assert_eq!(goal, Some(Goal::AtLeast(PAGE_IN_RATIO_GOAL)));
        assert!(!goal.unwrap().met(ratio));
        assert!(goal.unwrap().met(0.5));
        assert!(Goal::AtMost(RATIO_GOAL).met(1.0) && !Goal::AtMost(RATIO_GOAL).met(1.2));
        assert_eq!(value("page_in_median_us").0, 100.0);
        assert_eq!(value("page_in_p99_us").0, 1000.0);
        assert_eq!(Goal::AtLeast(0.5).to_string(), "goal >= 0.50");

        let error = BenchResults::default().check_present(&PAGING_FIGURES, "the paging boot").unwrap_err();
        assert!(error.to_string().starts_with("the paging boot did not report"), "{error}");
    }

    #[test]
    fn the_device_line_gives_the_read_rates() {
        let text = |line: &str| vec!["memhog: pass 1".to_owned(), line.to_owned()];
        let figures = device_read_figures(&text(
            "server pager: pager: device: 4k qd1: 19455/s, qd16: 28162/s; 64k qd1: 12466/s, qd3: 15000/s; \
             128k qd1: 9000/s; crc32c 4k: 90000/s",
        ))
        .unwrap();
        let names: Vec<(&str, f64)> = figures.iter().map(|(name, value)| (name.as_str(), *value)).collect();
        assert_eq!(
            names,
            [
                ("device_read_4k_qd1_per_s", 19455.0),
                ("device_read_4k_qd16_per_s", 28162.0),
                ("device_read_64k_qd1_per_s", 12466.0),
                ("device_read_64k_qd1_mib_per_s", 779.125),
                ("device_read_64k_qd3_per_s", 15000.0),
                ("device_read_128k_qd1_per_s", 9000.0),
                ("crc32c_4k_per_s", 90000.0),
                // 64k at qd3: 15 000 × 16 pages beats 9 000 × 32 and 28 162 × 1.
                ("device_read_best_pages_per_s", 288000.0),
            ]
        );
        let partial = device_read_figures(&text(
            "server pager: pager: device: 4k qd1: 100/s, qd16: -; 64k qd1: -, qd3: -; 128k qd1: -; crc32c 4k: -",
        ))
        .unwrap();
        assert_eq!(
            partial,
            [("device_read_4k_qd1_per_s".to_owned(), 100.0), ("device_read_best_pages_per_s".to_owned(), 100.0)]
        );
        assert_eq!(device_read_figures(&text("server pager: pager: gen 1 started")), Ok(Vec::new()));
        assert_eq!(
            device_read_figures(&text("server pager: pager: device: measurement abandoned: a read did not complete")),
            Err("a read did not complete".to_owned())
        );
    }

    #[test]
    fn the_page_in_bound_is_the_slower_of_the_device_and_the_pcpu() {
        // The pCPU: a checksum at the copy's own rate halves it.
        assert_eq!(page_in_bound(1_000_000.0, 5_000_000.0, 1_000_000.0), Some(0.5));
        // A checksum 9 times slower than the copy: a tenth.
        assert!((page_in_bound(900_000.0, 5_000_000.0, 100_000.0).unwrap() - 0.1).abs() < 1e-12);
        // The device below both.
        assert_eq!(page_in_bound(1_000_000.0, 200_000.0, 1_000_000.0), Some(0.2));
        assert_eq!(page_in_bound(0.0, 1.0, 1.0), None);
        assert_eq!(page_in_bound(1.0, 1.0, 0.0), None);
    }

    #[test]
    fn device_ratios_set_page_ins_and_the_device_against_each_other_and_the_copy() {
        let mut results = BenchResults::default();
        results.set("page_in_per_s", Figure::Count(2000));
        results.set("copy_4k_per_s", Figure::Count(1_000_000));
        let line = "pager: device: 4k qd1: 20000/s, qd16: 40000/s; 64k qd1: 10000/s";
        for (name, value) in device_read_figures(&[line.to_owned()]).unwrap() {
            results.set(&name, Figure::Real(value));
        }
        let value = |name: &str| {
            let derived = DERIVED.iter().find(|derived| derived.name == name).unwrap();
            assert_eq!(derived.goal, None, "{name} is a measurement, not a goal");
            results.clone().derive(derived).unwrap()
        };
        assert_eq!(value("page_in_over_device_ratio"), 0.1);
        assert_eq!(value("device_read_4k_qd1_over_copy_ratio"), 0.02);
        assert_eq!(value("device_read_4k_qd16_over_copy_ratio"), 0.04);
        assert_eq!(value("device_read_best_pages_over_copy_ratio"), 0.16);
    }

    #[test]
    fn json_is_a_flat_name_to_number_object() {
        let mut results = BenchResults::default();
        results.set("vmexit_bare_median_ticks", Figure::Count(23456));
        results.set(SPAWN_TO_FIRST_LINE_NAME, Figure::Real(31.25));
        results.set("weird \"name\"", Figure::Count(1));
        let parsed: serde_json::Value = serde_json::from_str(&results.to_json()).unwrap();
        let object = parsed.as_object().unwrap();
        assert_eq!(object.len(), 3);
        assert_eq!(object["vmexit_bare_median_ticks"], serde_json::json!(23456));
        assert_eq!(object[SPAWN_TO_FIRST_LINE_NAME], serde_json::json!(31.25));
        assert!(object.values().all(serde_json::Value::is_number));

        let path =
            std::env::temp_dir().join(format!("xtask-bench-{}/bench.json", std::process::id()));
        results.write_json(&path).unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written, parsed);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn small_reals_keep_three_significant_digits() {
        assert_eq!(Figure::Real(2.5).to_string(), "2.500");
        assert_eq!(Figure::Real(0.228).to_string(), "0.228");
        assert_eq!(Figure::Real(0.0011407).to_string(), "0.00114");
        assert_eq!(Figure::Real(0.0).to_string(), "0.000");
        assert_eq!(round_to_decimals(0.0011407), 0.00114);
        assert_eq!(round_to_decimals(31.2549), 31.255);
    }

    #[test]
    fn the_table_lists_every_figure() {
        let mut results = BenchResults::default();
        results.set("a", Figure::Count(1));
        results.set("a_longer_name", Figure::Real(2.5));
        let table = results.table();
        assert!(table.contains("a_longer_name           2.500"), "{table}");
        assert_eq!(table.lines().count(), 4);
    }

    #[test]
    fn median_handles_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}

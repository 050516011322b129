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

/// Every derived figure, in table order.
pub const DERIVED: [Derived; 8] = [
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

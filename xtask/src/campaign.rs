//! Seeded fault campaigns (issue #6 §4, §5): `cargo xtask campaign` (`make
//! fault-campaign SEED=… KILLS=…`) writes an appliance of a memhog guest and
//! two spinners under the core's seeded injector, boots it with a swap disk,
//! and judges the transcript; `cargo xtask test` judges every scenario whose
//! appliance has a `[faults]` table the same way.
//!
//! The appliance ([`appliance_text`]): `memhog` (16 MiB held to a 3 MiB
//! resident target, writing and verifying 12 MiB, enough passes to outlast
//! the kills), `light` and `heavy` (spinners of weight 256 and 512, forever),
//! the scheduler and the pager servers, and `[faults]` with the campaign's
//! seed, kills, servers and interval. The machine stops by its `stop_after`
//! ([`Timing`]), so both spinners run to the end and the shares the core
//! measures after each scheduler restart compare like with like.
//!
//! What the judge reads (core lines, `cairn  INFO|WARN ...`):
//!
//! * `fault injection: seed S, K kills, about one per M ms` (optional);
//! * `fault injection: kill N of K: SERVER POINT`, POINT one of `at message
//!   M`, `mid-eviction`, `mid-page-in`, `now` (SERVER: the server kind);
//! * `server NAME stopped: REASON; restarting as generation G` and `server
//!   NAME generation G ready, T us after the stop` (NAME: the server's name);
//! * `fault injection: done: K kills (A at a message, B mid-eviction, C
//!   mid-page-in, D now; S scheduler, P pager)`;
//! * `fault injection: shares after recovery: DOMAIN P.P %, DOMAIN P.P %`,
//!   or one `fault injection: share after recovery: DOMAIN N per mille (U
//!   us)` line per domain: CPU time in windows that open one accounting
//!   period after each scheduler restart;
//!
//! and guest lines: `MEMHOG: verified P pages, B bad` (B: pages lost or
//! corrupted), `MEMHOG: touching ... N passes ...`, `MEMHOG: BAD ...`, and
//! any line of a guest as its progress.
//!
//! [`judge`] is pure: lines and [`Expectations`] in, a [`Report`] out, whose
//! failures decide the verdict. A campaign passes when every kill asked for
//! was made, each was followed by a ready line of the killed server, memhog
//! verified its pages with 0 bad, every guest printed after the last kill,
//! and the shares after recovery (when the core printed them; they must be
//! there when the scheduler was killed) are within ±[`SHARE_TOLERANCE`]
//! points of the spinners' weights.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use ipc::server::ServerKind;

use crate::config::{self, Appliance, FaultsConfig, ImageSource};
use crate::decode::Line;

/// Allowed deviation of a share after recovery, percentage points.
pub const SHARE_TOLERANCE: f64 = 3.0;
/// Default seed of `cargo xtask campaign` (and `make fault-campaign`).
pub const DEFAULT_SEED: u64 = 1;
/// Default kills.
pub const DEFAULT_KILLS: u32 = 50;
/// Size of the campaign's swap disk, MiB (memhog pages out at most 13 MiB).
pub const SWAP_MIB: u32 = 64;
/// Busy-loop iterations per spinner progress line: about 48 ms of a whole
/// pCPU under TCG, so each spinner prints several lines a second at its
/// share while memhog pages.
pub const SPINNER_WORK: u64 = 20_000_000;
/// The guest the campaign verifies memory with, and its domain name.
pub const MEMHOG: &str = "memhog";
/// The spinners: domain name and weight (1 : 2).
pub const SPINNERS: [(&str, u32); 2] = [("light", 256), ("heavy", 512)];
/// memhog's sleep before it starts, ms (the pager sets up its disk).
const MEMHOG_SETTLE_MS: u64 = 500;
/// MiB memhog writes and verifies per pass (4× its resident target).
const MEMHOG_MIB: u64 = 12;
/// A short wall-clock time for one memhog pass (write and verify 12 MiB
/// against a 3 MiB target), ms, to size the passes so memhog is still
/// paging after the last kill. Measured with swap readahead: 1.2-1.4 s a
/// pass in `appliances/campaign.toml`, spinners and kills included (host
/// timestamps on `cargo xtask run --config appliances/campaign.toml`'s
/// memhog lines); 9.5 s before readahead, with memhog alone.
const MEMHOG_PASS_FAST_MS: u64 = 1_000;
/// A long wall-clock time for one memhog pass, ms, to stop the machine only
/// after memhog has surely finished: about three times the measured time.
const MEMHOG_PASS_SLOW_MS: u64 = 4_000;
/// How long the kills take at most, in intervals per kill: a kill is armed
/// between half and one and a half intervals after the previous one and
/// strikes at its point soon after (or gives up after two intervals).
const KILL_PHASE_INTERVALS_PER_KILL: f64 = 1.6;

/// What `cargo xtask campaign` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The injector's seed.
    pub seed: u64,
    /// Kills to make.
    pub kills: u32,
    /// Which servers to kill (scheduler and/or pager), each once.
    pub servers: Vec<ServerKind>,
    /// Mean time between kills, ms.
    pub interval_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            seed: DEFAULT_SEED,
            kills: DEFAULT_KILLS,
            servers: config::KILLABLE_SERVER_KINDS.to_vec(),
            interval_ms: config::DEFAULT_FAULT_INTERVAL_MS,
        }
    }
}

/// Longest `stop_after` an appliance may give, ms (an hour).
const MAX_STOP_AFTER_MS: u64 = 3_600_000;

impl Settings {
    /// Whether the campaign can run: a server to kill, and a run that fits
    /// the machine's longest `stop_after`.
    pub fn check(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("no server to kill".to_owned());
        }
        let timing = Timing::of(self.kills, self.interval_ms);
        if timing.stop_after_ms > MAX_STOP_AFTER_MS {
            return Err(format!(
                "{} kills about every {} ms take too long for one run (the machine would run {} s, at most {} s): ask for fewer kills or a shorter interval",
                self.kills,
                self.interval_ms,
                timing.stop_after_ms / 1000,
                MAX_STOP_AFTER_MS / 1000
            ));
        }
        Ok(())
    }
}

/// How long a campaign runs, derived from its kills and interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A generous bound on how long the kills take after boot, ms.
    pub kill_phase_ms: u64,
    /// memhog's passes: enough to still be paging after the last kill.
    pub memhog_passes: u64,
    /// The machine's `stop_after`, ms: memhog has finished well before.
    pub stop_after_ms: u64,
    /// The runner's wall-clock limit for the boot.
    pub timeout: Duration,
}

impl Timing {
    /// The timing of a campaign of `kills` kills about `interval_ms` apart:
    /// memhog's passes last past a generous bound on the kill phase even at
    /// a fast pass time, and the machine stops once they are over even at a
    /// slow one (memhog slows down on a loaded host, while the injector
    /// keeps wall-clock time).
    pub fn of(kills: u32, interval_ms: u32) -> Self {
        let kill_phase_ms =
            (f64::from(kills) * f64::from(interval_ms) * KILL_PHASE_INTERVALS_PER_KILL).ceil()
                as u64
                + 1_000;
        let memhog_passes = kill_phase_ms.div_ceil(MEMHOG_PASS_FAST_MS).max(2);
        let stop_after_ms = (MEMHOG_SETTLE_MS + memhog_passes * MEMHOG_PASS_SLOW_MS).max(10_000);
        Self {
            kill_phase_ms,
            memhog_passes,
            stop_after_ms,
            timeout: Duration::from_millis(stop_after_ms + 60_000),
        }
    }
}

/// The appliance file of a campaign.
pub fn appliance_text(settings: &Settings) -> String {
    let timing = Timing::of(settings.kills, settings.interval_ms);
    let servers: Vec<String> = settings
        .servers
        .iter()
        .map(|kind| format!("\"{}\"", config::kind_name(*kind)))
        .collect();
    let mut text = format!(
        "# Written by `cargo xtask campaign` (xtask/src/campaign.rs): a seeded fault
# campaign (issue #6). memhog writes and verifies {MEMHOG_MIB} MiB against a 3 MiB
# resident target, {passes} times, while two spinners of weight 256 and 512 run
# and the core's injector kills the servers; the machine stops after {stop} s.

[machine]
cpus = 1
memory = 128
stop_after = {stop_ms}

[[server]]
name = \"scheduler\"
kind = \"scheduler\"
image = \"cairn:scheduler-server\"

[[server]]
name = \"pager\"
kind = \"pager\"
image = \"cairn:pager-server\"

[[domain]]
name = \"{MEMHOG}\"
kernel = \"cairn:memhog\"
memory = 16
memory_target = 3
cmdline = \"memhog_mib={MEMHOG_MIB} passes={passes} settle_ms={MEMHOG_SETTLE_MS}\"
",
        passes = timing.memhog_passes,
        stop = timing.stop_after_ms / 1000,
        stop_ms = timing.stop_after_ms,
    );
    for (name, weight) in SPINNERS {
        let _ = write!(
            text,
            "
[[domain]]
name = \"{name}\"
kernel = \"cairn:spinner\"
memory = 8
cpu_weight = {weight}
cmdline = \"iterations=0 work={SPINNER_WORK}\"
"
        );
    }
    let _ = write!(
        text,
        "
[faults]
seed = {}
kills = {}
servers = [{}]
interval_ms = {}
",
        settings.seed,
        settings.kills,
        servers.join(", "),
        settings.interval_ms
    );
    text
}

/// The campaign's appliance for `cargo xtask bench`'s guest-progress
/// figures (issue #6 §6): [`appliance_text`]'s appliance with `stop_after`
/// set to `stop_after_ms`, and with its `[faults]` table when `faults`, or
/// without it (the same machine, guests and servers, no injector) when not.
pub fn progress_appliance_text(settings: &Settings, faults: bool, stop_after_ms: u64) -> String {
    let timing = Timing::of(settings.kills, settings.interval_ms);
    let mut text = appliance_text(settings).replacen(
        &format!("\nstop_after = {}\n", timing.stop_after_ms),
        &format!("\nstop_after = {stop_after_ms}\n"),
        1,
    );
    if !faults {
        if let Some(at) = text.find("\n[faults]\n") {
            text.truncate(at + 1);
        }
        text.push_str("\n# No [faults] table: the same appliance without the injector (the baseline).\n");
    }
    text
}

/// What a campaign's transcript is judged against.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectations {
    /// The seed asked for.
    pub seed: u64,
    /// Kills asked for.
    pub kills: u32,
    /// Mean ms between kills.
    pub interval_ms: u32,
    /// The servers that may be killed: (kind name as the kill lines print
    /// it, server name as the restart lines print it).
    pub servers: Vec<(String, String)>,
    /// Domains running memhog: each must verify its pages with none bad.
    pub memhogs: Vec<String>,
    /// Every domain: each must print after the last kill.
    pub guests: Vec<String>,
    /// Expected shares after recovery, percent, of the spinner domains (by
    /// weight); empty when fewer than two uncapped spinners run.
    pub shares: Vec<(String, f64)>,
    /// Allowed deviation of a share, percentage points.
    pub tolerance: f64,
}

impl Expectations {
    /// The expectations of an appliance with a `[faults]` table (`None`
    /// without one): memhog domains are those with `kernel =
    /// "cairn:memhog"`, spinners those with `kernel = "cairn:spinner"`.
    pub fn from_appliance(appliance: &Appliance) -> Option<Self> {
        let faults: FaultsConfig = appliance.faults?;
        let servers = faults
            .kinds()
            .into_iter()
            .filter_map(|kind| {
                let server = appliance
                    .servers
                    .iter()
                    .find(|server| server.kind == kind)?;
                Some((config::kind_name(kind).to_owned(), server.name.clone()))
            })
            .collect();
        fn runs(domain: &config::DomainConfig, binary: &str) -> bool {
            domain.kernel == ImageSource::Workspace(binary.to_owned())
        }
        let memhogs = appliance
            .domains
            .iter()
            .filter(|domain| runs(domain, "memhog"))
            .map(|domain| domain.name.clone())
            .collect();
        let spinners: Vec<&config::DomainConfig> = appliance
            .domains
            .iter()
            .filter(|domain| runs(domain, "spinner") && domain.cap == 0)
            .collect();
        let total_weight: f64 = spinners
            .iter()
            .map(|domain| f64::from(domain.cpu_weight))
            .sum();
        let shares = if spinners.len() >= 2 {
            spinners
                .iter()
                .map(|domain| {
                    (
                        domain.name.clone(),
                        f64::from(domain.cpu_weight) / total_weight * 100.0,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(Self {
            seed: faults.seed,
            kills: faults.kills,
            interval_ms: faults.interval_ms,
            servers,
            memhogs,
            guests: appliance
                .domains
                .iter()
                .map(|domain| domain.name.clone())
                .collect(),
            shares,
            tolerance: SHARE_TOLERANCE,
        })
    }

    fn server_name(&self, kind: &str) -> Option<&str> {
        self.servers
            .iter()
            .find(|(known, _)| known == kind)
            .map(|(_, name)| name.as_str())
    }
}

/// Where a kill struck, as the core's kill line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// `at message M`.
    AtMessage(u32),
    /// `mid-eviction`.
    MidEviction,
    /// `mid-page-in`.
    MidPageIn,
    /// `now`.
    Now,
    /// Anything else, as printed.
    Other(String),
}

impl Point {
    fn parse(text: &str) -> Self {
        match text {
            "mid-eviction" => Self::MidEviction,
            "mid-page-in" => Self::MidPageIn,
            "now" => Self::Now,
            other => match other
                .strip_prefix("at message ")
                .and_then(|count| count.parse().ok())
            {
                Some(count) => Self::AtMessage(count),
                None => Self::Other(other.to_owned()),
            },
        }
    }
}

impl std::fmt::Display for Point {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AtMessage(count) => write!(formatter, "at message {count}"),
            Self::MidEviction => formatter.write_str("mid-eviction"),
            Self::MidPageIn => formatter.write_str("mid-page-in"),
            Self::Now => formatter.write_str("now"),
            Self::Other(text) => formatter.write_str(text),
        }
    }
}

/// A `fault injection: kill N of K: SERVER POINT` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// N.
    pub number: u32,
    /// K.
    pub of: u32,
    /// SERVER (a kind name).
    pub server: String,
    /// POINT.
    pub point: Point,
    /// Index of the line in the transcript.
    pub line: usize,
}

/// A `server NAME stopped: REASON; restarting as generation G` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Restart {
    server: String,
    reason: String,
    line: usize,
}

/// A `server NAME generation G ready[, T us after the stop]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ready {
    server: String,
    generation: u32,
    micros: Option<u64>,
    line: usize,
}

/// The counts of the `fault injection: done: ...` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Done {
    /// Kills made.
    pub kills: u32,
    /// At a message.
    pub at_message: u32,
    /// Mid-eviction.
    pub mid_eviction: u32,
    /// Mid-page-in.
    pub mid_page_in: u32,
    /// At once.
    pub now: u32,
    /// Of the scheduler.
    pub scheduler: u32,
    /// Of the pager.
    pub pager: u32,
}

/// One domain's CPU time after recovery, as the core printed it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RecoveryTime {
    /// Its share of whatever total the core used, percent.
    percent: f64,
    /// Its CPU time in the windows, µs, when printed.
    micros: Option<f64>,
}

/// Everything the judge reads from a transcript.
#[derive(Debug, Clone, Default, PartialEq)]
struct Transcript {
    announced: Option<(u64, u32)>,
    kills: Vec<Kill>,
    restarts: Vec<Restart>,
    readies: Vec<Ready>,
    done: Option<Done>,
    shares: BTreeMap<String, RecoveryTime>,
    /// Per memhog domain: (pages, bad) of its `verified` line.
    verified: BTreeMap<String, (u64, u64)>,
    /// Per memhog domain: passes from its `touching` line.
    passes: BTreeMap<String, u64>,
    /// Per memhog domain: its `BAD` lines.
    bad_lines: BTreeMap<String, usize>,
    /// Per guest: the indices of its lines.
    guest_lines: BTreeMap<String, Vec<usize>>,
}

/// The first run of ASCII digits in `text`, as a number.
fn first_number<T: std::str::FromStr>(text: &str) -> Option<T> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn parse_kill(rest: &str, line: usize) -> Option<Kill> {
    // "N of K: SERVER POINT"
    let (numbers, what) = rest.split_once(": ")?;
    let (number, of) = numbers.split_once(" of ")?;
    let (server, point) = what.trim().split_once(' ')?;
    Some(Kill {
        number: number.trim().parse().ok()?,
        of: of.trim().parse().ok()?,
        server: server.to_owned(),
        point: Point::parse(point.trim()),
        line,
    })
}

fn parse_done(rest: &str) -> Option<Done> {
    // "K kills (A at a message, B mid-eviction, C mid-page-in, D now; S scheduler, P pager)"
    let mut done = Done {
        kills: first_number(rest)?,
        ..Done::default()
    };
    let inside = rest.split_once('(')?.1.trim_end_matches(')');
    for part in inside.split([',', ';']) {
        let part = part.trim();
        let Some((count, label)) = part.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u32>() else {
            continue;
        };
        let slot = match label.trim() {
            "at a message" | "at message" => &mut done.at_message,
            "mid-eviction" => &mut done.mid_eviction,
            "mid-page-in" => &mut done.mid_page_in,
            "now" => &mut done.now,
            "scheduler" => &mut done.scheduler,
            "pager" => &mut done.pager,
            _ => continue,
        };
        *slot = count;
    }
    Some(done)
}

/// `DOMAIN P.P %, DOMAIN P.P %`.
fn parse_shares(rest: &str, shares: &mut BTreeMap<String, RecoveryTime>) {
    for part in rest.split(',') {
        let mut words = part.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        if let Ok(percent) = value.trim_end_matches('%').parse::<f64>() {
            shares.insert(
                name.to_owned(),
                RecoveryTime {
                    percent,
                    micros: None,
                },
            );
        }
    }
}

/// `DOMAIN N per mille (U us)`.
fn parse_share(rest: &str, shares: &mut BTreeMap<String, RecoveryTime>) {
    let mut words = rest.split_whitespace();
    let (Some(name), Some(value)) = (words.next(), words.next()) else {
        return;
    };
    let Ok(value) = value.trim_end_matches('%').parse::<f64>() else {
        return;
    };
    let percent = if rest.contains("per mille") {
        value / 10.0
    } else {
        value
    };
    let micros = rest
        .split_once('(')
        .and_then(|(_, inside)| {
            inside
                .strip_suffix("us)")
                .or_else(|| inside.strip_suffix(" us)"))
        })
        .and_then(|number| number.trim().parse::<f64>().ok());
    shares.insert(name.to_owned(), RecoveryTime { percent, micros });
}

fn parse_transcript(lines: &[Line], expectations: &Expectations) -> Transcript {
    let mut transcript = Transcript::default();
    for (index, line) in lines.iter().enumerate() {
        match line {
            Line::Core { message, .. } => parse_core(message, index, &mut transcript),
            Line::Guest(text) => {
                let Some((name, rest)) = text.split_once(": ") else {
                    continue;
                };
                if !expectations.guests.iter().any(|guest| guest == name) {
                    continue;
                }
                transcript
                    .guest_lines
                    .entry(name.to_owned())
                    .or_default()
                    .push(index);
                if !expectations.memhogs.iter().any(|memhog| memhog == name) {
                    continue;
                }
                if let Some(numbers) = rest.strip_prefix("verified ") {
                    // "P pages, B bad"
                    if let Some((pages, bad)) = numbers.split_once(" pages, ") {
                        if let (Ok(pages), Some(bad)) = (pages.trim().parse(), first_number(bad)) {
                            transcript.verified.insert(name.to_owned(), (pages, bad));
                        }
                    }
                } else if rest.starts_with("touching ") {
                    if let Some(passes) = rest
                        .split(", ")
                        .find_map(|part| part.strip_suffix(" passes"))
                    {
                        if let Ok(passes) = passes.trim().parse() {
                            transcript.passes.insert(name.to_owned(), passes);
                        }
                    }
                } else if rest.starts_with("BAD ") {
                    *transcript.bad_lines.entry(name.to_owned()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    transcript
}

fn parse_core(message: &str, index: usize, transcript: &mut Transcript) {
    if let Some((_, rest)) = message.split_once("fault injection: ") {
        if let Some(kill) = rest
            .strip_prefix("kill ")
            .and_then(|rest| parse_kill(rest, index))
        {
            transcript.kills.push(kill);
        } else if let Some(done) = rest.strip_prefix("done: ").and_then(parse_done) {
            transcript.done = Some(done);
        } else if let Some(shares) = rest.strip_prefix("shares after recovery: ") {
            parse_shares(shares, &mut transcript.shares);
        } else if let Some(share) = rest.strip_prefix("share after recovery: ") {
            parse_share(share, &mut transcript.shares);
        } else if let Some(seed) = rest.strip_prefix("seed ") {
            // "S, K kills, about one per M ms"
            let mut parts = seed.split(", ");
            let seed = parts.next().and_then(|seed| seed.trim().parse().ok());
            let kills = parts.next().and_then(first_number);
            if let (Some(seed), Some(kills)) = (seed, kills) {
                transcript.announced = Some((seed, kills));
            }
        }
        return;
    }
    let Some(rest) = message.strip_prefix("server ") else {
        return;
    };
    if let Some((name, after)) = rest.split_once(" stopped: ") {
        if let Some((reason, generation)) = after.rsplit_once("restarting as generation") {
            if first_number::<u32>(generation).is_some() {
                let reason = reason
                    .split([';', '('])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                transcript.restarts.push(Restart {
                    server: name.to_owned(),
                    reason,
                    line: index,
                });
            }
        }
    } else if let Some((name, after)) = rest.split_once(" generation ") {
        let Some((generation, tail)) = after.split_once(" ready") else {
            return;
        };
        let Ok(generation) = generation.trim().parse() else {
            return;
        };
        let micros = tail
            .strip_prefix(", ")
            .and_then(|tail| tail.strip_suffix(" us after the stop"))
            .and_then(|micros| micros.trim().parse().ok());
        transcript.readies.push(Ready {
            server: name.to_owned(),
            generation,
            micros,
            line: index,
        });
    }
}

/// The service gap after one kill: the core's stop-to-ready time of the
/// killed server's next ready line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillGap {
    /// The kill.
    pub kill: Kill,
    /// The generation that came up, and the core's figure (µs) when printed.
    pub ready: Option<(u32, Option<u64>)>,
    /// The same server was killed again before it was ready (the core's
    /// figure then counts from the later stop).
    pub killed_again_first: bool,
}

/// Per killed server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSummary {
    /// Kind name (`scheduler`, `pager`).
    pub kind: String,
    /// Server name.
    pub name: String,
    /// Kills of it.
    pub kills: usize,
    /// Restart lines of it, and how many of them say `killed`.
    pub restarts: (usize, usize),
    /// Restarts for any other reason, with the reason.
    pub other_restarts: Vec<String>,
    /// The largest stop-to-ready figure of any ready line (µs), with its
    /// generation.
    pub largest_gap: Option<(u64, u32)>,
    /// The per-kill gaps (µs) that have a figure, in kill order.
    pub kill_gaps: Vec<u64>,
    /// The kill after which the largest per-kill gap came, with that gap.
    pub largest_kill_gap: Option<(u64, u32, Point)>,
}

/// What one memhog domain verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// The domain.
    pub domain: String,
    /// Pages verified (in every pass) and pages bad, from its `verified`
    /// line; `None` if it never printed one.
    pub verified: Option<(u64, u64)>,
    /// Passes, from its `touching` line.
    pub passes: Option<u64>,
    /// Its `BAD` lines.
    pub bad_lines: usize,
}

/// The campaign's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What was asked.
    pub expectations: Expectations,
    /// The seed and kills the core announced, if it did.
    pub announced: Option<(u64, u32)>,
    /// Kill lines, in order.
    pub kills: Vec<Kill>,
    /// The `done` line's counts.
    pub done: Option<Done>,
    /// Per kill, its gap.
    pub gaps: Vec<KillGap>,
    /// Per killed server.
    pub servers: Vec<ServerSummary>,
    /// Per memhog domain, what it verified.
    pub memhogs: Vec<Memory>,
    /// Per guest: lines after the first kill and after the last kill.
    pub progress: Vec<(String, usize, usize)>,
    /// Shares after recovery among the spinners, percent, with the expected
    /// share; `None` when the core printed none.
    pub shares: Option<Vec<(String, Option<f64>, f64)>>,
    /// How the run ended, when the caller says (`cargo xtask campaign`).
    pub ending: Option<String>,
    /// Why the campaign failed; empty: it passed.
    pub failures: Vec<String>,
}

impl Report {
    /// Whether the campaign passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Reads a campaign's transcript and judges it (pure).
pub fn judge(lines: &[Line], expectations: &Expectations) -> Report {
    let transcript = parse_transcript(lines, expectations);
    let mut failures = Vec::new();
    let asked = expectations.kills;

    // Kills asked and made.
    let made = transcript.kills.len();
    if let Some((seed, kills)) = transcript.announced {
        if seed != expectations.seed || kills != asked {
            failures.push(format!(
                "the core announced seed {seed} and {kills} kills, the campaign asked for seed {} and {asked}",
                expectations.seed
            ));
        }
    }
    if let Some(kill) = transcript.kills.iter().find(|kill| kill.of != asked) {
        failures.push(format!(
            "kill {} says `of {}`, the campaign asked for {asked} kills",
            kill.number, kill.of
        ));
    }
    let numbered_in_order = transcript
        .kills
        .iter()
        .enumerate()
        .all(|(index, kill)| kill.number as usize == index + 1);
    if !numbered_in_order {
        failures.push("the kill lines are not numbered 1, 2, 3, ... in order".to_owned());
    }
    match transcript.done {
        None => failures.push(format!(
            "the core printed no `fault injection: done` line ({made} of {asked} kills made)"
        )),
        Some(done) => {
            if done.kills != asked {
                failures.push(format!("kills made: {} of {asked} asked", done.kills));
            }
            let by_point = done.at_message + done.mid_eviction + done.mid_page_in + done.now;
            let by_server = done.scheduler + done.pager;
            if by_point != done.kills || by_server != done.kills {
                failures.push(format!(
                    "the done line's counts do not add up: {by_point} by point, {by_server} by server, {} kills",
                    done.kills
                ));
            }
        }
    }
    if made != asked as usize {
        failures.push(format!("{made} kill lines for {asked} kills asked"));
    }
    for kill in &transcript.kills {
        if expectations.server_name(&kill.server).is_none() {
            failures.push(format!(
                "kill {} hit `{}`, which the campaign does not kill",
                kill.number, kill.server
            ));
        }
        if let Point::Other(text) = &kill.point {
            failures.push(format!(
                "kill {} struck at an unknown point `{text}`",
                kill.number
            ));
        }
    }

    // Every kill answered by a ready line of that server.
    let gaps: Vec<KillGap> = transcript
        .kills
        .iter()
        .map(|kill| {
            let name = expectations
                .server_name(&kill.server)
                .unwrap_or(&kill.server);
            let ready = transcript
                .readies
                .iter()
                .find(|ready| ready.line > kill.line && ready.server == name);
            let killed_again_first = transcript.kills.iter().any(|other| {
                other.line > kill.line
                    && other.server == kill.server
                    && ready.is_none_or(|ready| other.line < ready.line)
            });
            KillGap {
                kill: kill.clone(),
                ready: ready.map(|ready| (ready.generation, ready.micros)),
                killed_again_first,
            }
        })
        .collect();
    let unanswered: Vec<String> = gaps
        .iter()
        .filter(|gap| gap.ready.is_none())
        .map(|gap| {
            format!(
                "{} ({} {})",
                gap.kill.number, gap.kill.server, gap.kill.point
            )
        })
        .collect();
    if !unanswered.is_empty() {
        failures.push(format!(
            "{} kill(s) not followed by a ready line of the killed server: {}",
            unanswered.len(),
            unanswered.join(", ")
        ));
    }

    let servers: Vec<ServerSummary> = expectations
        .servers
        .iter()
        .map(|(kind, name)| {
            let restarts: Vec<&Restart> = transcript
                .restarts
                .iter()
                .filter(|restart| &restart.server == name)
                .collect();
            let killed = restarts
                .iter()
                .filter(|restart| restart.reason.starts_with("killed"))
                .count();
            let other_restarts = restarts
                .iter()
                .filter(|restart| !restart.reason.starts_with("killed"))
                .map(|restart| restart.reason.clone())
                .collect();
            let largest_gap = transcript
                .readies
                .iter()
                .filter(|ready| &ready.server == name)
                .filter_map(|ready| Some((ready.micros?, ready.generation)))
                .max_by_key(|(micros, _)| *micros);
            let own: Vec<&KillGap> = gaps.iter().filter(|gap| &gap.kill.server == kind).collect();
            let kill_gaps: Vec<u64> = own.iter().filter_map(|gap| gap.ready?.1).collect();
            let largest_kill_gap = own
                .iter()
                .filter_map(|gap| Some((gap.ready?.1?, gap.kill.number, gap.kill.point.clone())))
                .max_by_key(|(micros, _, _)| *micros);
            ServerSummary {
                kind: kind.clone(),
                name: name.clone(),
                kills: own.len(),
                restarts: (restarts.len(), killed),
                other_restarts,
                largest_gap,
                kill_gaps,
                largest_kill_gap,
            }
        })
        .collect();

    // Pages.
    let mut memhogs = Vec::new();
    for name in &expectations.memhogs {
        let verified = transcript.verified.get(name).copied();
        let bad_lines = transcript.bad_lines.get(name).copied().unwrap_or(0);
        match verified {
            None => failures.push(format!(
                "{name} did not finish: no `{name}: verified P pages, B bad` line"
            )),
            Some((_, bad)) if bad > 0 => {
                failures.push(format!("{name}: {bad} pages lost or corrupted"))
            }
            Some(_) if bad_lines > 0 => failures.push(format!(
                "{name} printed {bad_lines} BAD line(s) but verified 0 bad"
            )),
            Some(_) => {}
        }
        memhogs.push(Memory {
            domain: name.clone(),
            verified,
            passes: transcript.passes.get(name).copied(),
            bad_lines,
        });
    }

    // Progress.
    let first_kill = transcript.kills.first().map(|kill| kill.line);
    let last_kill = transcript.kills.last().map(|kill| kill.line);
    let after = |name: &str, from: Option<usize>| -> usize {
        let Some(from) = from else { return 0 };
        transcript
            .guest_lines
            .get(name)
            .map_or(0, |lines| lines.iter().filter(|line| **line > from).count())
    };
    let progress: Vec<(String, usize, usize)> = expectations
        .guests
        .iter()
        .map(|name| {
            (
                name.clone(),
                after(name, first_kill),
                after(name, last_kill),
            )
        })
        .collect();
    if let Some(last) = transcript.kills.last() {
        let silent: Vec<&str> = progress
            .iter()
            .filter(|(_, _, after_last)| *after_last == 0)
            .map(|(name, _, _)| name.as_str())
            .collect();
        if !silent.is_empty() {
            failures.push(format!(
                "no progress after the last kill (kill {}): {}",
                last.number,
                silent.join(", ")
            ));
        }
    }

    // Shares after recovery.
    let scheduler_killed = transcript
        .kills
        .iter()
        .any(|kill| kill.server == config::kind_name(ServerKind::Scheduler));
    let shares = if transcript.shares.is_empty() || expectations.shares.is_empty() {
        None
    } else {
        let times: Vec<Option<RecoveryTime>> = expectations
            .shares
            .iter()
            .map(|(name, _)| transcript.shares.get(name).copied())
            .collect();
        let use_micros = times
            .iter()
            .all(|time| time.is_some_and(|time| time.micros.is_some()));
        let value = |time: &RecoveryTime| {
            if use_micros {
                time.micros.unwrap_or(0.0)
            } else {
                time.percent
            }
        };
        // Shares only among all the spinners: with one missing, none.
        let complete = times.iter().all(Option::is_some);
        let total: f64 = if complete {
            times.iter().flatten().map(value).sum()
        } else {
            0.0
        };
        Some(
            expectations
                .shares
                .iter()
                .zip(&times)
                .map(|((name, expected), time)| {
                    let share = time
                        .as_ref()
                        .filter(|_| total > 0.0)
                        .map(|time| value(time) / total * 100.0);
                    (name.clone(), share, *expected)
                })
                .collect::<Vec<_>>(),
        )
    };
    match &shares {
        Some(shares) => {
            for (name, share, expected) in shares {
                match share {
                    None if !transcript.shares.contains_key(name) => {
                        failures.push(format!("shares after recovery: no figure for {name}"))
                    }
                    None => {}
                    Some(share) if (share - expected).abs() > expectations.tolerance => failures.push(format!(
                        "shares after recovery: {name} got {share:.1} %, expected {expected:.1} ± {}",
                        expectations.tolerance
                    )),
                    Some(_) => {}
                }
            }
        }
        None if scheduler_killed && !expectations.shares.is_empty() => failures.push(
            "the scheduler was killed but the core printed no shares after recovery".to_owned(),
        ),
        None => {}
    }

    Report {
        expectations: expectations.clone(),
        announced: transcript.announced,
        kills: transcript.kills,
        done: transcript.done,
        gaps,
        servers,
        memhogs,
        progress,
        shares,
        ending: None,
        failures,
    }
}

fn milliseconds(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn median(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        length if length % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2),
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let expectations = &self.expectations;
        let kinds: Vec<&str> = expectations
            .servers
            .iter()
            .map(|(kind, _)| kind.as_str())
            .collect();
        writeln!(
            formatter,
            "fault campaign: seed {}, {} kills of {} about every {} ms",
            expectations.seed,
            expectations.kills,
            kinds.join(" and "),
            expectations.interval_ms
        )?;
        let count = |wanted: fn(&Point) -> bool| {
            self.kills.iter().filter(|kill| wanted(&kill.point)).count()
        };
        let by_server: Vec<String> = expectations
            .servers
            .iter()
            .map(|(kind, _)| {
                format!(
                    "{} {kind}",
                    self.kills
                        .iter()
                        .filter(|kill| &kill.server == kind)
                        .count()
                )
            })
            .collect();
        writeln!(
            formatter,
            "  kills:       {} made of {} asked: {} at a message, {} mid-eviction, {} mid-page-in, {} now; {}",
            self.kills.len(),
            expectations.kills,
            count(|point| matches!(point, Point::AtMessage(_))),
            count(|point| *point == Point::MidEviction),
            count(|point| *point == Point::MidPageIn),
            count(|point| *point == Point::Now),
            by_server.join(", ")
        )?;
        match self.done {
            Some(done) => writeln!(
                formatter,
                "               core's count: {} kills ({} at a message, {} mid-eviction, {} mid-page-in, {} now; {} scheduler, {} pager)",
                done.kills, done.at_message, done.mid_eviction, done.mid_page_in, done.now, done.scheduler, done.pager
            )?,
            None => writeln!(formatter, "               core's count: none (no `fault injection: done` line)")?,
        }
        for server in &self.servers {
            let (restarts, killed) = server.restarts;
            let mut line = format!(
                "  {:<12} {restarts} restarts seen ({killed} killed",
                format!("{}:", server.name)
            );
            if !server.other_restarts.is_empty() {
                let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
                for reason in &server.other_restarts {
                    *reasons.entry(reason.as_str()).or_default() += 1;
                }
                let reasons: Vec<String> = reasons
                    .iter()
                    .map(|(reason, count)| format!("{count}× {reason}"))
                    .collect();
                let _ = write!(line, "; not from a kill: {}", reasons.join(", "));
            }
            line.push(')');
            let answered = self
                .gaps
                .iter()
                .filter(|gap| gap.kill.server == server.kind && gap.ready.is_some())
                .count();
            let _ = write!(
                line,
                "; {answered} of {} kills answered by a ready line",
                server.kills
            );
            writeln!(formatter, "{line}")?;
            let largest =
                server
                    .largest_gap
                    .map_or("no figure".to_owned(), |(micros, generation)| {
                        format!("{} (generation {generation})", milliseconds(micros))
                    });
            let per_kill = match (median(&server.kill_gaps), &server.largest_kill_gap) {
                (Some(median), Some((micros, number, point))) => format!(
                    "kill to ready median {}, largest {} (kill {number}, {point})",
                    milliseconds(median),
                    milliseconds(*micros)
                ),
                _ => "kill to ready: no figure".to_owned(),
            };
            let again = self
                .gaps
                .iter()
                .filter(|gap| gap.kill.server == server.kind && gap.killed_again_first)
                .count();
            let again = if again > 0 {
                format!("; {again} killed again before ready")
            } else {
                String::new()
            };
            writeln!(
                formatter,
                "               largest service gap {largest}; {per_kill}{again}"
            )?;
        }
        for Memory {
            domain: name,
            verified,
            passes,
            bad_lines,
        } in &self.memhogs
        {
            let passes = passes.map_or(String::new(), |passes| {
                format!(" in each of {passes} passes")
            });
            match verified {
                Some((pages, bad)) => writeln!(
                    formatter,
                    "  pages:       {name}: {pages} verified{passes}, {bad} lost{}",
                    if *bad_lines > 0 {
                        format!(" ({bad_lines} BAD lines)")
                    } else {
                        String::new()
                    }
                )?,
                None => writeln!(
                    formatter,
                    "  pages:       {name}: not verified (no `verified` line){passes}"
                )?,
            }
        }
        let progress: Vec<String> = self
            .progress
            .iter()
            .map(|(name, first, last)| format!("{name} {first} / {last}"))
            .collect();
        writeln!(
            formatter,
            "  progress:    lines after the first / the last kill: {}",
            progress.join(", ")
        )?;
        match &self.shares {
            Some(shares) => {
                let text: Vec<String> = shares
                    .iter()
                    .map(|(name, share, expected)| match share {
                        Some(share) => format!("{name} {share:.1} % (expect {expected:.1})"),
                        None => format!("{name} missing (expect {expected:.1})"),
                    })
                    .collect();
                writeln!(
                    formatter,
                    "  shares after recovery: {} (± {} points)",
                    text.join(", "),
                    expectations.tolerance
                )?;
            }
            None => writeln!(formatter, "  shares after recovery: not reported")?,
        }
        if let Some(ending) = &self.ending {
            writeln!(formatter, "  run:         {ending}")?;
        }
        if self.failures.is_empty() {
            write!(formatter, "verdict: PASS")
        } else {
            writeln!(formatter, "verdict: FAIL")?;
            let reasons: Vec<String> = self
                .failures
                .iter()
                .map(|failure| format!("  - {failure}"))
                .collect();
            write!(formatter, "{}", reasons.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Level;
    use std::path::Path;

    /// Transcript text as printed: `cairn  INFO m` / `cairn  WARN m` are core
    /// lines, `xtask: ` runner lines, anything else a guest line.
    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| {
                if let Some(message) = line.strip_prefix("cairn  INFO ") {
                    Line::Core {
                        level: Level::Info,
                        message: message.to_owned(),
                    }
                } else if let Some(message) = line.strip_prefix("cairn  WARN ") {
                    Line::Core {
                        level: Level::Warn,
                        message: message.to_owned(),
                    }
                } else if let Some(note) = line.strip_prefix("xtask: ") {
                    Line::Runner(note.to_owned())
                } else {
                    Line::Guest(line.to_owned())
                }
            })
            .collect()
    }

    fn expectations(kills: u32) -> Expectations {
        let settings = Settings {
            seed: 7,
            kills,
            ..Settings::default()
        };
        let appliance =
            config::parse(&appliance_text(&settings), "campaign.toml", Path::new("/")).unwrap();
        Expectations::from_appliance(&appliance).unwrap()
    }

    /// Three kills, each answered, memhog fine, everyone progressing after
    /// the last kill, shares 1 : 2.
    const GOOD: &str = "
        cairn  INFO fault injection: seed 7, 3 kills, about one per 100 ms
        cairn  INFO scheduler generation 1 took over
        cairn  INFO server pager generation 1 ready
        memhog: touching 12 MiB (3072 pages) at 0x200000-0xe00000, 4 passes, seed 0x6d656d686f67
        light: progress 1
        heavy: progress 1
        cairn  WARN fault injection: kill 1 of 3: scheduler at message 4
        cairn  WARN server scheduler stopped: killed; restarting as generation 2
        light: progress 2
        cairn  INFO server scheduler generation 2 ready, 4890 us after the stop
        cairn  INFO scheduler generation 2 took over
        memhog: pass 1: wrote 4 MiB
        cairn  WARN fault injection: kill 2 of 3: pager mid-eviction
        cairn  WARN server pager stopped: killed by hvctl; restarting as generation 2
        cairn  INFO server pager generation 2 ready, 1650 us after the stop
        heavy: progress 2
        cairn  WARN fault injection: kill 3 of 3: pager mid-page-in
        cairn  WARN server pager stopped: killed; restarting as generation 3
        cairn  INFO server pager generation 3 ready, 2100 us after the stop
        cairn  INFO fault injection: done: 3 kills (1 at a message, 1 mid-eviction, 1 mid-page-in, 0 now; 1 scheduler, 2 pager)
        light: progress 3
        heavy: progress 3
        memhog: pass 4: 3072 pages ok
        memhog: verified 3072 pages, 0 bad
        cairn  INFO time limit reached
        cairn  INFO fault injection: shares after recovery: light 33.9 %, heavy 66.1 %
    ";

    fn report(text: &str, kills: u32) -> Report {
        judge(&lines(text), &expectations(kills))
    }

    #[test]
    fn a_good_campaign_passes_with_its_figures() {
        let report = report(GOOD, 3);
        assert_eq!(report.failures, Vec::<String>::new());
        assert!(report.passed());
        assert_eq!(report.kills.len(), 3);
        assert_eq!(report.kills[1].point, Point::MidEviction);
        assert_eq!(
            report.done,
            Some(Done {
                kills: 3,
                at_message: 1,
                mid_eviction: 1,
                mid_page_in: 1,
                now: 0,
                scheduler: 1,
                pager: 2
            })
        );
        let scheduler = &report.servers[0];
        assert_eq!(
            (scheduler.name.as_str(), scheduler.kills, scheduler.restarts),
            ("scheduler", 1, (1, 1))
        );
        assert_eq!(scheduler.largest_gap, Some((4890, 2)));
        let pager = &report.servers[1];
        assert_eq!(
            (pager.kills, pager.restarts),
            (2, (2, 2)),
            "`killed by hvctl` is a kill too"
        );
        assert_eq!(pager.largest_gap, Some((2100, 3)));
        assert_eq!(pager.kill_gaps, vec![1650, 2100]);
        assert_eq!(pager.largest_kill_gap, Some((2100, 3, Point::MidPageIn)));
        assert_eq!(
            report.memhogs,
            vec![Memory {
                domain: "memhog".to_owned(),
                verified: Some((3072, 0)),
                passes: Some(4),
                bad_lines: 0
            }]
        );
        assert_eq!(
            report.progress,
            vec![
                ("memhog".to_owned(), 3, 2),
                ("light".to_owned(), 2, 1),
                ("heavy".to_owned(), 2, 1)
            ]
        );
        let shares = report.shares.clone().unwrap();
        assert_eq!(shares[0].0, "light");
        assert!((shares[0].1.unwrap() - 33.9).abs() < 1e-9);
        assert!((shares[0].2 - 100.0 / 3.0).abs() < 1e-9);

        let text = report.to_string();
        for expected in [
            "fault campaign: seed 7, 3 kills of scheduler and pager about every 100 ms",
            "kills:       3 made of 3 asked: 1 at a message, 1 mid-eviction, 1 mid-page-in, 0 now; 1 scheduler, 2 pager",
            "scheduler:   1 restarts seen (1 killed); 1 of 1 kills answered by a ready line",
            "largest service gap 4.89 ms (generation 2); kill to ready median 4.89 ms, largest 4.89 ms (kill 1, at message 4)",
            "largest service gap 2.10 ms (generation 3); kill to ready median 1.88 ms, largest 2.10 ms (kill 3, mid-page-in)",
            "pages:       memhog: 3072 verified in each of 4 passes, 0 lost",
            "progress:    lines after the first / the last kill: memhog 3 / 2, light 2 / 1, heavy 2 / 1",
            "shares after recovery: light 33.9 % (expect 33.3), heavy 66.1 % (expect 66.7) (± 3 points)",
            "verdict: PASS",
        ] {
            assert!(text.contains(expected), "`{expected}` missing from:\n{text}");
        }
    }

    #[test]
    fn lost_pages_and_an_unfinished_memhog_fail() {
        let bad = GOOD.replace("verified 3072 pages, 0 bad", "verified 3072 pages, 2 bad");
        let bad = bad.replace(
            "memhog: pass 4: 3072 pages ok",
            "memhog: BAD gfn 0x300 offset 0x0 expected 0x1 found 0x0 (pass 4, zeroed page)",
        );
        let report = report(&bad, 3);
        assert_eq!(
            report.failures,
            vec!["memhog: 2 pages lost or corrupted".to_owned()]
        );
        assert!(report
            .to_string()
            .contains("memhog: 3072 verified in each of 4 passes, 2 lost (1 BAD lines)"));

        let unfinished = GOOD.replace("memhog: verified 3072 pages, 0 bad", "");
        let report = self::report(&unfinished, 3);
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(
            report.failures[0].contains("memhog did not finish"),
            "{:?}",
            report.failures
        );
        assert!(report
            .to_string()
            .contains("verdict: FAIL\n  - memhog did not finish"));
    }

    #[test]
    fn missing_kills_and_unanswered_kills_fail() {
        // The core made 3 but 4 were asked.
        let report = report(
            &GOOD
                .replace("of 3:", "of 4:")
                .replace("3 kills, about", "4 kills, about"),
            4,
        );
        assert!(
            report
                .failures
                .iter()
                .any(|failure| failure == "kills made: 3 of 4 asked"),
            "{:?}",
            report.failures
        );
        assert!(
            report
                .failures
                .iter()
                .any(|failure| failure == "3 kill lines for 4 kills asked"),
            "{:?}",
            report.failures
        );

        // No done line at all.
        let no_done: String = GOOD
            .lines()
            .filter(|line| !line.contains("done:"))
            .map(|line| format!("{line}\n"))
            .collect();
        let report = self::report(&no_done, 3);
        assert_eq!(
            report.failures,
            vec!["the core printed no `fault injection: done` line (3 of 3 kills made)".to_owned()]
        );

        // The last pager kill never came back.
        let unanswered = GOOD.replace(
            "cairn  INFO server pager generation 3 ready, 2100 us after the stop",
            "",
        );
        let report = self::report(&unanswered, 3);
        assert_eq!(
            report.failures,
            vec!["1 kill(s) not followed by a ready line of the killed server: 3 (pager mid-page-in)".to_owned()]
        );
        assert!(report
            .to_string()
            .contains("pager:       2 restarts seen (2 killed); 1 of 2 kills answered"));

        // A ready line of the other server does not answer a kill.
        let wrong = GOOD.replace(
            "server scheduler generation 2 ready",
            "server pager generation 9 ready",
        );
        assert!(self::report(&wrong, 3)
            .failures
            .iter()
            .any(|failure| failure.contains("1 (scheduler at message 4)")));

        // The core was handed another plan.
        let seed = GOOD.replace("seed 7, 3 kills", "seed 8, 3 kills");
        assert!(self::report(&seed, 3).failures[0].contains("announced seed 8"));
    }

    #[test]
    fn a_kill_before_the_ready_counts_from_the_later_stop() {
        let text = "
            cairn  WARN fault injection: kill 1 of 2: pager now
            cairn  WARN server pager stopped: killed; restarting as generation 2
            cairn  WARN fault injection: kill 2 of 2: pager at message 1
            cairn  WARN server pager stopped: killed; restarting as generation 3
            cairn  INFO server pager generation 3 ready, 900 us after the stop
            cairn  WARN server pager stopped: hung: messages left unread past the deadline; restarting as generation 4
            cairn  WARN server pager stopped: hung: messages left unread past the deadline; restarting as generation 5
            cairn  WARN server pager stopped: too many malformed messages (8 in a row); restarting as generation 6
            cairn  INFO fault injection: done: 2 kills (1 at a message, 0 mid-eviction, 0 mid-page-in, 1 now; 0 scheduler, 2 pager)
            memhog: verified 3072 pages, 0 bad
            light: progress 9
            heavy: progress 9
        ";
        let report = report(text, 2);
        assert_eq!(
            report.failures,
            Vec::<String>::new(),
            "no scheduler kill: shares may be absent"
        );
        assert!(report.gaps[0].killed_again_first && !report.gaps[1].killed_again_first);
        assert_eq!(report.gaps[0].ready, Some((3, Some(900))));
        assert!(report.to_string().contains("1 killed again before ready"));
        assert!(
            report.to_string().contains(
                "pager:       5 restarts seen (2 killed; not from a kill: 2× hung: messages left unread past the deadline, \
                 1× too many malformed messages); 2 of 2 kills answered"
            ),
            "{report}"
        );
        assert!(report
            .to_string()
            .contains("shares after recovery: not reported"));
    }

    #[test]
    fn silent_guests_after_the_last_kill_fail() {
        let text: String = GOOD
            .lines()
            .filter(|line| !line.contains("light: progress 3"))
            .map(|line| format!("{line}\n"))
            .collect();
        let report = report(&text, 3);
        assert_eq!(
            report.failures,
            vec!["no progress after the last kill (kill 3): light".to_owned()]
        );
    }

    #[test]
    fn shares_are_judged_within_three_points() {
        let off = GOOD.replace("light 33.9 %, heavy 66.1 %", "light 37.0 %, heavy 63.0 %");
        let report = report(&off, 3);
        assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
        assert!(
            report.failures[0].contains("light got 37.0 %, expected 33.3 ± 3"),
            "{:?}",
            report.failures
        );

        // Missing although the scheduler was killed.
        let missing: String = GOOD
            .lines()
            .filter(|line| !line.contains("shares after"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(
            self::report(&missing, 3).failures,
            vec![
                "the scheduler was killed but the core printed no shares after recovery".to_owned()
            ]
        );

        // One line per domain, with the core's µs: renormalised over the
        // spinners (memhog's time does not count).
        let per_domain = GOOD.replace(
            "cairn  INFO fault injection: shares after recovery: light 33.9 %, heavy 66.1 %",
            "cairn  INFO fault injection: share after recovery: memhog 250 per mille (1000000 us)
             cairn  INFO fault injection: share after recovery: light 251 per mille (1010000 us)
             cairn  INFO fault injection: share after recovery: heavy 499 per mille (1990000 us)",
        );
        let report = self::report(&per_domain, 3);
        assert_eq!(report.failures, Vec::<String>::new());
        let shares = report.shares.unwrap();
        assert!((shares[0].1.unwrap() - 33.666).abs() < 0.01, "{shares:?}");
        // Per mille only.
        let per_mille = per_domain
            .replace(" (1010000 us)", "")
            .replace(" (1990000 us)", "");
        let shares = self::report(&per_mille, 3).shares.unwrap();
        assert!((shares[0].1.unwrap() - 33.47).abs() < 0.01, "{shares:?}");
        // A spinner missing from the line.
        let one = GOOD.replace("light 33.9 %, heavy 66.1 %", "heavy 66.1 %");
        assert_eq!(
            self::report(&one, 3).failures,
            vec!["shares after recovery: no figure for light".to_owned()]
        );
    }

    #[test]
    fn a_transcript_without_the_injector_fails_on_everything_that_matters() {
        let text = "
            cairn  INFO scheduler generation 1 took over
            memhog: verified 3072 pages, 0 bad
            light: progress 1
            heavy: progress 1
            cairn  INFO time limit reached
        ";
        let report = report(text, 50);
        assert_eq!(
            report.failures,
            vec![
                "the core printed no `fault injection: done` line (0 of 50 kills made)".to_owned(),
                "0 kill lines for 50 kills asked".to_owned(),
            ]
        );
        assert!(report
            .to_string()
            .contains("kills:       0 made of 50 asked"));
    }

    #[test]
    fn kill_lines_and_the_done_line_parse() {
        assert_eq!(
            parse_kill("12 of 50: scheduler at message 7", 3),
            Some(Kill {
                number: 12,
                of: 50,
                server: "scheduler".into(),
                point: Point::AtMessage(7),
                line: 3
            })
        );
        assert_eq!(
            parse_kill("1 of 5: pager now", 0).unwrap().point,
            Point::Now
        );
        assert_eq!(
            parse_kill("1 of 5: pager mid-page-in", 0).unwrap().point,
            Point::MidPageIn
        );
        assert_eq!(
            parse_kill("1 of 5: pager sideways", 0).unwrap().point,
            Point::Other("sideways".into())
        );
        assert_eq!(parse_kill("x of 5: pager now", 0), None);
        assert_eq!(
            parse_done("50 kills (14 at a message, 7 mid-eviction, 6 mid-page-in, 23 now; 26 scheduler, 24 pager)"),
            Some(Done { kills: 50, at_message: 14, mid_eviction: 7, mid_page_in: 6, now: 23, scheduler: 26, pager: 24 })
        );
        let report = report(&GOOD.replace("(1 at a message", "(2 at a message"), 3);
        assert!(
            report.failures[0].contains("do not add up"),
            "{:?}",
            report.failures
        );
    }

    #[test]
    fn the_appliance_parses_and_outlasts_the_kills() {
        let settings = Settings {
            seed: 99,
            kills: 200,
            servers: vec![ServerKind::Pager],
            interval_ms: 50,
        };
        let text = appliance_text(&settings);
        let appliance = config::parse(&text, "c.toml", Path::new("/")).unwrap();
        let faults = appliance.faults.unwrap();
        assert_eq!(
            (faults.seed, faults.kills, faults.interval_ms),
            (99, 200, 50)
        );
        assert_eq!(faults.kinds(), vec![ServerKind::Pager]);
        assert_eq!(
            appliance.servers.len(),
            2,
            "both servers run; only the pager is killed"
        );
        let weights: Vec<(&str, u32)> = appliance
            .domains
            .iter()
            .map(|domain| (domain.name.as_str(), domain.cpu_weight))
            .collect();
        assert_eq!(
            weights,
            vec![("memhog", 256), ("light", 256), ("heavy", 512)]
        );
        assert_eq!(appliance.domains[0].memory_target_mib, Some(3));
        let timing = Timing::of(200, 50);
        assert_eq!(
            u64::from(appliance.machine.stop_after_ms),
            timing.stop_after_ms
        );
        assert!(appliance.domains[0]
            .cmdline
            .contains(&format!("passes={}", timing.memhog_passes)));
        assert!(
            timing.memhog_passes * MEMHOG_PASS_FAST_MS >= timing.kill_phase_ms,
            "memhog outlasts the kills"
        );
        assert!(
            timing.stop_after_ms >= MEMHOG_SETTLE_MS + timing.memhog_passes * MEMHOG_PASS_SLOW_MS
        );
        assert!(
            timing.kill_phase_ms as f64 >= 200.0 * 50.0 * 1.5,
            "a kill comes at most 1.5 intervals after the last"
        );
        assert!(timing.timeout > Duration::from_millis(timing.stop_after_ms));
        let expectations = Expectations::from_appliance(&appliance).unwrap();
        assert_eq!(
            expectations.servers,
            vec![("pager".to_owned(), "pager".to_owned())]
        );
        assert_eq!(expectations.memhogs, vec!["memhog".to_owned()]);
        assert_eq!(expectations.guests.len(), 3);
        assert_eq!(expectations.shares.len(), 2);
        // More kills, longer runs.
        assert!(Timing::of(1000, 100).stop_after_ms > Timing::of(50, 100).stop_after_ms);
    }

    #[test]
    fn the_progress_appliances_differ_only_in_faults_and_duration() {
        let settings = Settings {
            kills: 40,
            ..Settings::default()
        };
        let parse = |faults| {
            config::parse(
                &progress_appliance_text(&settings, faults, 20_000),
                "p.toml",
                Path::new("/"),
            )
            .unwrap()
        };
        let (with, without) = (parse(true), parse(false));
        assert_eq!(with.machine.stop_after_ms, 20_000);
        assert_eq!(with.faults.unwrap().kills, 40);
        assert_eq!(without.faults, None);
        assert_eq!(
            Appliance {
                faults: None,
                ..with
            },
            without
        );
    }

    #[test]
    fn the_make_test_campaign_is_what_the_command_writes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let appliance =
            config::load(&root.join("appliances/campaign.toml"), "campaign.toml").unwrap();
        let faults = appliance.faults.unwrap();
        let settings = Settings {
            seed: faults.seed,
            kills: faults.kills,
            servers: faults.kinds(),
            interval_ms: faults.interval_ms,
        };
        let written = config::parse(
            &appliance_text(&settings),
            "campaign.toml",
            &root.join("appliances"),
        )
        .unwrap();
        assert_eq!(
            appliance, written,
            "appliances/campaign.toml differs from `cargo xtask campaign`'s appliance"
        );
        let expectations = Expectations::from_appliance(&appliance).unwrap();
        assert!(expectations.kills >= 50, "issue #6: at least 50 kills");
        assert_eq!(expectations.servers.len(), 2, "both servers are killed");
        assert_eq!(expectations.memhogs, vec!["memhog".to_owned()]);
        let shares: Vec<f64> = expectations
            .shares
            .iter()
            .map(|(_, share)| share.round())
            .collect();
        assert_eq!(shares, vec![33.0, 67.0], "weights 1 : 2");
        assert!(
            appliance.machine.stop_after_ms <= 45_000,
            "the campaign in make test stays short"
        );
        let scenarios =
            crate::scenario::load(&root.join("tests/scenarios.toml"), "scenarios.toml", &root)
                .unwrap();
        let scenario = scenarios
            .iter()
            .find(|scenario| scenario.name == "campaign")
            .expect("a `campaign` scenario");
        let crate::scenario::Check::Boot {
            timeout, swap_mib, ..
        } = &scenario.check
        else {
            panic!("a boot scenario")
        };
        let stop_after = Duration::from_millis(u64::from(appliance.machine.stop_after_ms));
        assert!(
            *timeout >= stop_after + Duration::from_secs(30)
                && *timeout <= Duration::from_secs(150)
        );
        assert_eq!(*swap_mib, Some(SWAP_MIB));

        // The scenario's counters read the done line's counts right (each
        // count comes before its word: `before = true`).
        let crate::scenario::Check::Boot { cpu, .. } = &scenario.check else {
            unreachable!()
        };
        let done = |mid_eviction: u32| {
            vec![format!(
                "cairn  INFO fault injection: done: 60 kills (20 at a message, {mid_eviction} mid-eviction, 5 mid-page-in, {} now; 29 scheduler, 31 pager)",
                35 - mid_eviction
            )]
        };
        assert_eq!(crate::scenario::judge_cpu(&done(7), cpu), Vec::new());
        assert_eq!(
            crate::scenario::judge_cpu(&done(1), cpu).len(),
            1,
            "fewer than 2 mid-eviction fails"
        );
    }
}

//! The commands: each builds what it needs, boots, prints, and returns
//! whether it succeeded. The pieces they use live in the other modules.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use defmt_decoder::Table;
use ipc::boot::RunMode;

use crate::bench::{self, BenchResults, Figure};
use crate::config::{self, Appliance};
use crate::control::{ControlSocket, ControlStep};
use crate::decode::{self, Line};
use crate::qemu::{self, ControlPlan, Ending, MachineType, QemuConfig, StopRule};
use crate::scenario::{self, Check, Failure, Scenario};
use crate::workspace::{display, Workspace};
use crate::{bundle, campaign, interrupt, setup};

/// Iterations per measured series in `bench`.
const BENCH_ITERATIONS: u32 = 20_000;
/// Wall-clock limit of the bench boot.
const BENCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Boots of `appliances/hello.toml` whose spawn-to-first-line times are
/// reduced to a median.
const SPAWN_SAMPLES: usize = 5;
/// Wall-clock limit of one of those boots.
const SPAWN_SAMPLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Size of the swap disk of the paging bench boot, MiB (as the `memhog`
/// scenario's).
const BENCH_SWAP_MIB: u32 = 64;
/// Page-ins below which the paging boot is flagged as not representative:
/// the 2304 pages above the target, twice (the `memhog` scenario's minimum).
const BENCH_PAGING_MIN_PAGE_INS: u64 = 4608;
/// Size of the swap disk `run` attaches for an appliance with a pager
/// server, MiB, unless `--swap-mib` says otherwise.
pub const DEFAULT_RUN_SWAP_MIB: u32 = 64;

/// The built core and its defmt table.
struct Images {
    table: Option<Table>,
}

impl Images {
    /// Builds the core, guests and servers, then reads the core's defmt table.
    fn build(workspace: &Workspace) -> Result<Self> {
        say!("xtask: building the core, the test guests and the servers");
        workspace.build_images()?;
        let elf_path = workspace.core_elf();
        let elf = std::fs::read(&elf_path)
            .with_context(|| format!("cannot read {}", display(&elf_path)))?;
        let table = match decode::load_table(&elf) {
            Ok(table) => Some(table),
            Err(problem) => {
                say!("xtask: {problem}; the serial output will be shown as hex");
                None
            }
        };
        Ok(Self { table })
    }
}

/// An appliance loaded and turned into a bundle file.
struct Prepared {
    appliance: Appliance,
    bundle: PathBuf,
}

/// Loads an appliance file and writes its bundle.
fn prepare(workspace: &Workspace, config_path: &Path, mode: RunMode) -> Result<Prepared> {
    let file = display(config_path);
    let appliance = config::load(config_path, &file)?;
    let bundle = bundle::write_bundle(
        &appliance,
        config_path,
        mode,
        &workspace.kernel_images_directory(),
        &workspace.bundle_directory(),
    )?;
    Ok(Prepared { appliance, bundle })
}

/// Boots a prepared appliance with its control port on `control` (with
/// `echo`, the socket is announced as `xtask: control socket: PATH`), and
/// runs the control `steps` during the boot. With `swap`, that raw image
/// (already created) is the pager's swap disk.
#[allow(clippy::too_many_arguments)] // each is one independent choice of the caller
fn boot(
    workspace: &Workspace,
    images: &Images,
    prepared: &Prepared,
    machine: MachineType,
    stop: StopRule,
    echo: bool,
    control: &ControlSocket,
    steps: &[ControlStep],
    swap: Option<&Path>,
) -> Result<qemu::RunReport> {
    boot_with_swap_rules(
        workspace, images, prepared, machine, stop, echo, control, steps, swap, None,
    )
}

/// [`boot`], with the swap disk attached through the blkdebug rules file
/// `swap_rules` if given ([`qemu::SwapFaults`]).
#[allow(clippy::too_many_arguments)] // each is one independent choice of the caller
fn boot_with_swap_rules(
    workspace: &Workspace,
    images: &Images,
    prepared: &Prepared,
    machine: MachineType,
    stop: StopRule,
    echo: bool,
    control: &ControlSocket,
    steps: &[ControlStep],
    swap: Option<&Path>,
    swap_rules: Option<&Path>,
) -> Result<qemu::RunReport> {
    let kernel = workspace.core_elf();
    let arguments = qemu::arguments(&QemuConfig {
        machine,
        cpus: prepared.appliance.machine.cpus,
        memory_mib: prepared.appliance.machine.memory_mib,
        kernel: &kernel,
        bundle: &prepared.bundle,
        control_socket: control.path(),
        swap,
        swap_rules,
    })
    .map_err(anyhow::Error::msg)?;
    if echo {
        if let Some(note) = &control.note {
            say!("xtask: {note}");
        }
        say!("xtask: control socket: {}", display(control.path()));
        if let Some(image) = swap {
            say!(
                "xtask: swap disk: {} (virtio-blk on virtio-mmio at {:#x})",
                display(image),
                qemu::SWAP_MMIO_BASE
            );
        }
        if let (Some(_), Some(rules)) = (swap, swap_rules) {
            say!(
                "xtask: swap disk faults: through blkdebug with {}",
                display(rules)
            );
        }
    }
    let plan = ControlPlan {
        socket: control.path(),
        steps,
    };
    qemu::run(&arguments, images.table.as_ref(), stop, echo, Some(plan))
}

/// A control socket of its own for one scenario, test or bench boot.
fn per_run_socket(workspace: &Workspace) -> Result<ControlSocket> {
    ControlSocket::per_run(&workspace.bundle_directory())
}

fn print_first_line_time(report: &qemu::RunReport) {
    match report.first_guest_line {
        Some(time) => say!(
            "xtask: first guest console line {} ms after QEMU spawn",
            time.as_millis()
        ),
        None => say!("xtask: no guest console line"),
    }
}

/// The swap disk `run` attaches, MiB: `--swap-mib` (0: none), else
/// [`DEFAULT_RUN_SWAP_MIB`], and only for an appliance with a pager server.
/// An explicit size on `-M pc` is an error; the default is just left out
/// there (`-M pc` has no virtio-mmio). The note says why there is no disk.
fn run_swap_mib(
    appliance: &Appliance,
    machine: MachineType,
    requested: Option<u32>,
) -> Result<(Option<u32>, Option<String>)> {
    let has_pager = appliance
        .servers
        .iter()
        .any(|server| server.kind == ipc::server::ServerKind::Pager);
    let mib = requested.unwrap_or(DEFAULT_RUN_SWAP_MIB);
    if mib == 0 {
        return Ok((None, None));
    }
    if !has_pager {
        let note = requested.map(|_| {
            format!(
                "{} has no pager server: no swap disk attached",
                appliance.file
            )
        });
        return Ok((None, note));
    }
    match (qemu::check_swap_machine(machine), requested) {
        (Ok(()), _) => Ok((Some(mib), None)),
        (Err(problem), Some(_)) => bail!("--swap-mib: {problem}"),
        (Err(problem), None) => Ok((None, Some(format!("no swap disk for the pager: {problem}")))),
    }
}

/// `cargo xtask run`.
pub fn run(
    workspace: &Workspace,
    config: Option<PathBuf>,
    duration: Option<Duration>,
    machine: MachineType,
    swap_mib: Option<u32>,
) -> Result<bool> {
    setup::ensure(workspace, false)?;
    let config_path = config.unwrap_or_else(|| workspace.default_appliance());
    // Refuse a bad file (or a swap disk on -M pc) before spending time on the build.
    let appliance = config::load(&config_path, &display(&config_path))?;
    let (swap_mib, swap_note) = run_swap_mib(&appliance, machine, swap_mib)?;
    let images = Images::build(workspace)?;
    let prepared = prepare(workspace, &config_path, RunMode::Normal)?;
    let machine_config = prepared.appliance.machine;
    say!(
        "xtask: booting {} on -M {}: {} domain(s), {} pCPU(s), {} MiB; Ctrl-C stops",
        prepared.appliance.file,
        machine.name(),
        prepared.appliance.domains.len(),
        machine_config.cpus,
        machine_config.memory_mib
    );
    if let Some(note) = swap_note {
        say!("xtask: {note}");
    }
    let swap_image = workspace.target_directory().join("run").join("swap.img");
    if let Some(mib) = swap_mib {
        qemu::create_swap_image(&swap_image, mib)?;
        say!("xtask: swap disk: a fresh {mib} MiB image");
    }
    let stop = duration.map_or(StopRule::Never, StopRule::After);
    let control = ControlSocket::interactive(&workspace.bundle_directory())?;
    let report = boot(
        workspace,
        &images,
        &prepared,
        machine,
        stop,
        true,
        &control,
        &[],
        swap_mib.map(|_| swap_image.as_path()),
    )?;
    print_first_line_time(&report);
    let success = match report.ending {
        Ending::Exited(exit) => exit.is_success(),
        Ending::StoppedAfter(_) | Ending::Interrupted(_) => true,
        Ending::TimedOut(_) => false,
    };
    match report.ending {
        Ending::StoppedAfter(_) | Ending::Interrupted(_) => say!("xtask: {}", report.ending),
        _ => say!(
            "xtask: verdict: {}: {}",
            if success { "PASS" } else { "FAIL" },
            report.ending
        ),
    }
    Ok(success)
}

/// What running one scenario gave.
struct ScenarioOutcome {
    failures: Vec<Failure>,
    lines: Vec<Line>,
    elapsed: Duration,
}

fn run_scenario(
    workspace: &Workspace,
    images: Result<&Images, &str>,
    scenario: &Scenario,
    echo: bool,
) -> ScenarioOutcome {
    let started = Instant::now();
    let outcome = |failures: Vec<Failure>, lines: Vec<Line>| ScenarioOutcome {
        failures,
        lines,
        elapsed: started.elapsed(),
    };
    match &scenario.check {
        Check::ConfigError(expected) => {
            let result = prepare(workspace, &scenario.config, RunMode::Normal)
                .map(|_| ())
                .map_err(|error| format!("{error:#}"));
            if echo {
                if let Err(error) = &result {
                    say!("xtask: the runner refused the config: {error}");
                }
            }
            outcome(
                scenario::judge_config_error(result, expected, &display(&scenario.config)),
                Vec::new(),
            )
        }
        Check::Boot {
            machine,
            timeout,
            control,
            swap_mib,
            swap_faults,
            ..
        } => {
            let images = match images {
                Ok(images) => images,
                Err(problem) => {
                    return outcome(vec![Failure::Setup(problem.to_owned())], Vec::new())
                }
            };
            let report =
                prepare(workspace, &scenario.config, RunMode::Normal).and_then(|prepared| {
                    let socket = per_run_socket(workspace)?;
                    let swap_image = scenario.swap_image(&workspace.target_directory());
                    if let Some(mib) = swap_mib {
                        qemu::create_swap_image(&swap_image, *mib)?;
                    }
                    // The rules file goes next to the image (the parser
                    // accepts swap_faults only with swap_mib).
                    let swap_rules = swap_faults
                        .map(|faults| qemu::write_swap_rules(&swap_image, faults))
                        .transpose()?;
                    // An appliance with a [faults] table is also judged as
                    // a fault campaign.
                    let campaign = campaign::Expectations::from_appliance(&prepared.appliance);
                    boot_with_swap_rules(
                        workspace,
                        images,
                        &prepared,
                        *machine,
                        StopRule::Timeout(*timeout),
                        echo,
                        &socket,
                        control,
                        swap_mib.map(|_| swap_image.as_path()),
                        swap_rules.as_deref(),
                    )
                    .map(|report| (report, campaign))
                });
            match report {
                Ok((report, campaign)) => {
                    let mut failures = scenario::judge_boot(
                        &report.lines,
                        &report.ending,
                        &scenario.check,
                        &report.control,
                    );
                    if let Some(expectations) = campaign {
                        let judged = campaign::judge(&report.lines, &expectations);
                        if echo {
                            say!("{judged}");
                        }
                        failures.extend(judged.failures.into_iter().map(Failure::Campaign));
                    }
                    outcome(failures, report.lines)
                }
                Err(error) => outcome(vec![Failure::Setup(format!("{error:#}"))], Vec::new()),
            }
        }
    }
}

fn report_scenario(scenario: &Scenario, outcome: &ScenarioOutcome, show_tail: bool) {
    let time = format!("{:.1}", outcome.elapsed.as_secs_f64());
    if outcome.failures.is_empty() {
        say!("scenario {}: PASS ({time} s)", scenario.name);
        return;
    }
    say!("scenario {}: FAIL ({time} s)", scenario.name);
    for failure in &outcome.failures {
        say!("  - {failure}");
    }
    if show_tail && !outcome.lines.is_empty() {
        let start = outcome.lines.len().saturating_sub(scenario::TAIL_LINES);
        say!(
            "  --- last {} output lines ---",
            outcome.lines.len() - start
        );
        for line in &outcome.lines[start..] {
            say!("  | {line}");
        }
    }
}

fn load_scenarios(workspace: &Workspace) -> Result<Vec<Scenario>> {
    let path = workspace.scenario_file();
    Ok(scenario::load(&path, &display(&path), &workspace.root)?)
}

/// `cargo xtask scenario [NAME]`.
pub fn scenario(workspace: &Workspace, name: Option<&str>) -> Result<bool> {
    let scenarios = load_scenarios(workspace)?;
    let Some(name) = name else {
        let width = scenarios
            .iter()
            .map(|scenario| scenario.name.len())
            .max()
            .unwrap_or(0);
        for scenario in &scenarios {
            match &scenario.pending {
                Some(reason) => say!(
                    "{:<width$}  {} [pending: {reason}]",
                    scenario.name,
                    scenario.description
                ),
                None => say!("{:<width$}  {}", scenario.name, scenario.description),
            }
        }
        return Ok(true);
    };
    let Some(scenario) = scenarios.iter().find(|scenario| scenario.name == name) else {
        let names: Vec<&str> = scenarios
            .iter()
            .map(|scenario| scenario.name.as_str())
            .collect();
        bail!(
            "no scenario named `{name}`; the scenarios are: {}",
            names.join(", ")
        );
    };
    setup::ensure(workspace, false)?;
    let images = Images::build(workspace).map_err(|error| format!("{error:#}"));
    say!(
        "xtask: scenario {}: {}",
        scenario.name,
        scenario.description
    );
    if let Some(reason) = &scenario.pending {
        say!("xtask: note: this scenario is pending ({reason}); `cargo xtask test` skips it");
    }
    let outcome = run_scenario(
        workspace,
        images.as_ref().map_err(String::as_str),
        scenario,
        true,
    );
    // The output was streamed live, so the tail is not repeated.
    report_scenario(scenario, &outcome, false);
    Ok(outcome.failures.is_empty())
}

/// `cargo xtask test`.
pub fn test(workspace: &Workspace) -> Result<bool> {
    setup::ensure(workspace, false)?;
    let scenarios = load_scenarios(workspace)?;
    say!("xtask: host unit tests");
    let host_tests_passed = workspace.run_host_tests()?;
    let images = Images::build(workspace).map_err(|error| format!("{error:#}"));
    if let Err(problem) = &images {
        say!("xtask: build failed, boot scenarios cannot run: {problem}");
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut pending = Vec::new();
    for scenario in &scenarios {
        if let Some(reason) = &scenario.pending {
            say!("scenario {}: PENDING, not run ({reason})", scenario.name);
            pending.push(scenario.name.as_str());
            continue;
        }
        if interrupt::requested() {
            say!("xtask: interrupted; the remaining scenarios did not run");
            failed += 1;
            break;
        }
        let outcome = run_scenario(
            workspace,
            images.as_ref().map_err(String::as_str),
            scenario,
            false,
        );
        report_scenario(scenario, &outcome, true);
        if outcome.failures.is_empty() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    say!(
        "xtask: host unit tests {}",
        if host_tests_passed {
            "passed"
        } else {
            "FAILED"
        }
    );
    if !pending.is_empty() {
        say!(
            "xtask: {} pending scenario(s) not run: {} (run one with `cargo xtask scenario NAME`)",
            pending.len(),
            pending.join(", ")
        );
    }
    say!("{passed} passed, {failed} failed");
    Ok(host_tests_passed && failed == 0)
}

/// `cargo xtask bench`.
pub fn bench(workspace: &Workspace) -> Result<bool> {
    setup::ensure(workspace, false)?;
    let images = Images::build(workspace)?;
    let bench_config = workspace.root.join("appliances").join("bench.toml");
    let prepared = prepare(
        workspace,
        &bench_config,
        RunMode::Bench {
            iterations: BENCH_ITERATIONS,
        },
    )?;
    say!(
        "xtask: bench: booting {} ({BENCH_ITERATIONS} iterations per series)",
        prepared.appliance.file
    );
    let report = boot(
        workspace,
        &images,
        &prepared,
        MachineType::Microvm,
        StopRule::Timeout(BENCH_TIMEOUT),
        true,
        &per_run_socket(workspace)?,
        &[],
        None,
    )?;
    if report.ending
        != Ending::Exited(qemu::QemuExit::Core(
            ipc::exit_status::ExitStatus::AllPoweredOff,
        ))
    {
        bail!(
            "the bench boot did not end with every domain powered off: {}",
            report.ending
        );
    }
    let (mut results, problems) = BenchResults::collect(&report.lines);
    for problem in &problems {
        say!("xtask: bench: {problem}");
    }
    results.check_required()?;

    let hello_config = workspace.root.join("appliances").join("hello.toml");
    let hello = prepare(workspace, &hello_config, RunMode::Normal)?;
    let mut samples = Vec::with_capacity(SPAWN_SAMPLES);
    for _ in 0..SPAWN_SAMPLES {
        let sample = boot(
            workspace,
            &images,
            &hello,
            MachineType::Microvm,
            StopRule::Timeout(SPAWN_SAMPLE_TIMEOUT),
            false,
            &per_run_socket(workspace)?,
            &[],
            None,
        )?;
        let Some(time) = sample.first_guest_line else {
            bail!(
                "booting {} printed no guest line ({})",
                hello.appliance.file,
                sample.ending
            );
        };
        samples.push(time.as_secs_f64() * 1000.0);
    }
    if let Some(median) = bench::median(&samples) {
        results.set(bench::SPAWN_TO_FIRST_LINE_NAME, Figure::Real(median));
    }

    // Halt polling: the same sleeps with polling off and on, in one boot.
    let poll_config = workspace.root.join("appliances").join("halt-poll.toml");
    let poll = prepare(workspace, &poll_config, RunMode::Normal)?;
    let poll_report = boot(
        workspace,
        &images,
        &poll,
        MachineType::Microvm,
        StopRule::Timeout(BENCH_TIMEOUT),
        false,
        &per_run_socket(workspace)?,
        &[],
        None,
    )?;
    let text: Vec<String> = poll_report.lines.iter().map(ToString::to_string).collect();
    for (name, value) in bench::halt_poll_figures(&text) {
        results.set(name, Figure::Real(value));
    }

    // Restart gaps: the scheduler and the pager killed from the host while
    // they work, each three times.
    let restart_config = workspace.root.join("appliances").join("fault-injection.toml");
    let restart = prepare(workspace, &restart_config, RunMode::Normal)?;
    let steps: Vec<ControlStep> = [(2.0, "kill scheduler"), (3.0, "kill pager"), (4.0, "kill scheduler"), (5.0, "kill pager"), (6.0, "kill scheduler"), (7.0, "kill pager")]
        .iter()
        .map(|&(at, command)| ControlStep { at: Duration::from_secs_f64(at), command: command.to_owned(), expect: None, expect_any: Vec::new() })
        .collect();
    let restart_report = boot(
        workspace,
        &images,
        &restart,
        MachineType::Microvm,
        StopRule::Timeout(BENCH_TIMEOUT),
        false,
        &per_run_socket(workspace)?,
        &steps,
        None,
    )?;
    let text: Vec<String> = restart_report.lines.iter().map(ToString::to_string).collect();
    for (name, value) in bench::restart_gap_figures(&text) {
        results.set(name, Figure::Real(value));
    }

    // Guest progress lost per kill: the fault campaign's appliance booted
    // for the same time with the injector and (twice, before and after)
    // without it.
    bench_progress(workspace, &images, &mut results)?;

    // Paging: memhog held below its size pages through the ring-3 pager to
    // a fresh virtio-blk swap disk; the core logs throughput, page-in
    // latency and its own 4 KiB copy rate when the domain ends.
    let paging_results = bench_paging(workspace, &images)?;
    results.merge(&paging_results);

    // Scheduling: the share tables of `weights` and `balance`, and 8 busy
    // vCPUs on 2 pCPUs (time outside guests, the cost of a decision).
    let share_tables = bench_shares(workspace, &images, &mut results)?;
    bench_smp(workspace, &images, &mut results)?;

    let derived: Vec<_> = bench::DERIVED
        .iter()
        .map(|derived| (derived, results.derive(derived)))
        .collect();
    let core_path = workspace.core_elf();
    let core_elf = std::fs::read(&core_path).with_context(|| format!("cannot read {}", display(&core_path)))?;
    for (name, value) in bench::image_sizes(&core_elf) {
        results.set(&format!("core_{name}_bytes"), Figure::Count(value));
    }

    say!();
    say!("{}", results.table().trim_end());
    for table in &share_tables {
        say!();
        say!("{}", table.trim_end());
    }
    say!();
    for (derived, value) in derived {
        match (value, derived.goal) {
            (Some(value), Some(goal)) => say!(
                "{}: {}, {goal}: {}",
                derived.name,
                Figure::Real(value),
                if goal.met(value) { "met" } else { "NOT met" }
            ),
            (None, _) => say!(
                "{}: not computable (a figure is missing or zero)",
                derived.name
            ),
            (Some(_), None) => {}
        }
    }
    for figure in &bench::FIGURE_GOALS {
        match results.get(figure.name) {
            Some(value) => say!(
                "{}: {value}, {}: {}",
                figure.name,
                figure.goal,
                if figure.goal.met(value.as_f64()) { "met" } else { "NOT met" }
            ),
            None => say!("{}: not measured (see the notes above)", figure.name),
        }
    }
    if let Some(bound) = results.get(bench::PAGE_IN_BOUND_NAME) {
        say!(
            "{}: {bound}: the most any page-in over this swap device, checked as the pager checks it, could reach",
            bench::PAGE_IN_BOUND_NAME
        );
    }
    let json_path = workspace.target_directory().join("bench.json");
    results.write_json(&json_path)?;
    say!("xtask: wrote {}", display(&json_path));
    Ok(true)
}

/// Kills of the guest-progress boot with the injector.
const PROGRESS_KILLS: u32 = 40;
/// Mean ms between those kills.
const PROGRESS_INTERVAL_MS: u32 = 100;
/// `stop_after` of every guest-progress boot, ms: the kills are over within
/// about 7 s (see `campaign::Timing`), and three boots stay near a minute.
const PROGRESS_STOP_AFTER_MS: u64 = 20_000;

/// Guest progress lost per kill (issue #6 §6): the campaign's appliance
/// (memhog and the spinners `light` and `heavy` under the scheduler and
/// pager servers) booted three times for [`PROGRESS_STOP_AFTER_MS`], each
/// with a fresh swap disk: without the injector, with [`PROGRESS_KILLS`]
/// kills of both servers, and without again. The figures come from the
/// spinners' progress lines and cpu time lines
/// ([`bench::progress_lost_figures`]); a boot that did not run to its time
/// limit is reported and leaves the figures out.
fn bench_progress(workspace: &Workspace, images: &Images, results: &mut BenchResults) -> Result<()> {
    let settings = campaign::Settings {
        kills: PROGRESS_KILLS,
        interval_ms: PROGRESS_INTERVAL_MS,
        ..campaign::Settings::default()
    };
    let directory = workspace.target_directory().join("bench");
    std::fs::create_dir_all(&directory).with_context(|| format!("cannot create {}", display(&directory)))?;
    let spinners: Vec<&str> = campaign::SPINNERS.iter().map(|(name, _)| *name).collect();
    say!(
        "xtask: bench: guest progress: booting the campaign appliance 3 times for {} s each (without kills, with {PROGRESS_KILLS} kills about every {PROGRESS_INTERVAL_MS} ms, without kills)",
        PROGRESS_STOP_AFTER_MS / 1000
    );
    let mut boots = Vec::new();
    for (label, faults) in [("baseline-1", false), ("kills", true), ("baseline-2", false)] {
        let config_path = directory.join(format!("progress-{label}.toml"));
        std::fs::write(&config_path, campaign::progress_appliance_text(&settings, faults, PROGRESS_STOP_AFTER_MS))
            .with_context(|| format!("cannot write {}", display(&config_path)))?;
        let prepared = prepare(workspace, &config_path, RunMode::Normal)?;
        let swap_image = directory.join("progress-swap.img");
        qemu::create_swap_image(&swap_image, campaign::SWAP_MIB)?;
        let report = boot(
            workspace,
            images,
            &prepared,
            MachineType::Microvm,
            StopRule::Timeout(Duration::from_millis(PROGRESS_STOP_AFTER_MS) + Duration::from_secs(60)),
            false,
            &per_run_socket(workspace)?,
            &[],
            Some(&swap_image),
        )?;
        let text: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
        let log_path = directory.join(format!("progress-{label}.log"));
        std::fs::write(&log_path, text.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", display(&log_path)))?;
        let progress = bench::SpinnerProgress::read(&text, &spinners);
        say!(
            "xtask: bench: guest progress, {label}: {} kills; progress lines {}; cpu time {} ({}; log {})",
            progress.kills,
            progress
                .lines
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect::<Vec<_>>()
                .join(", "),
            progress
                .cpu_us
                .iter()
                .map(|(name, micros)| match micros {
                    Some(micros) => format!("{name} {micros} us"),
                    None => format!("{name} none"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            report.ending,
            display(&log_path)
        );
        if !progress.time_limit {
            say!("xtask: bench: guest progress: the {label} boot did not reach its time limit ({}): no progress figures", report.ending);
            return Ok(());
        }
        if faults && progress.kills < u64::from(PROGRESS_KILLS) {
            say!(
                "xtask: bench: guest progress: note: {} of {PROGRESS_KILLS} kills made; the figures are per kill made",
                progress.kills
            );
        }
        boots.push(progress);
    }
    let with = boots.remove(1);
    let figures = bench::progress_lost_figures(&with, &boots);
    for (name, value, unit) in &figures {
        results.set(name, Figure::Real(*value));
        results.set_unit(name, unit);
    }
    let get = |name: &str| figures.iter().find(|(known, ..)| *known == name).map(|(_, value, _)| *value);
    for (lost, noise) in [
        ("progress_lost_per_kill", "progress_noise_per_kill"),
        ("cpu_time_lost_per_kill_us", "cpu_time_noise_per_kill_us"),
    ] {
        if let Some(value) = get(lost) {
            say!("xtask: bench: {}", bench::noise_verdict(lost, value, get(noise)));
        }
    }
    Ok(())
}

/// The paging figures: one boot of `appliances/bench-paging.toml` with a
/// fresh swap disk. The guest must have verified every page (figures from a
/// run that lost data would mean nothing) and the core must have reported
/// every one of [`bench::PAGING_FIGURES`].
fn bench_paging(workspace: &Workspace, images: &Images) -> Result<BenchResults> {
    let config = workspace.root.join("appliances").join("bench-paging.toml");
    let prepared = prepare(workspace, &config, RunMode::Normal)?;
    let swap_image = workspace.target_directory().join("bench").join("swap.img");
    qemu::create_swap_image(&swap_image, BENCH_SWAP_MIB)?;
    say!(
        "xtask: bench: booting {} with a fresh {BENCH_SWAP_MIB} MiB swap disk (paging figures)",
        prepared.appliance.file
    );
    let report = boot(
        workspace,
        images,
        &prepared,
        MachineType::Microvm,
        StopRule::Timeout(BENCH_TIMEOUT),
        false,
        &per_run_socket(workspace)?,
        &[],
        Some(&swap_image),
    )?;
    let source = format!("the paging boot ({})", prepared.appliance.file);
    if report.ending
        != Ending::Exited(qemu::QemuExit::Core(
            ipc::exit_status::ExitStatus::AllPoweredOff,
        ))
    {
        bail!("{source} did not end with every domain powered off: {}", report.ending);
    }
    let text: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
    let log_path = workspace.target_directory().join("bench").join("paging.log");
    std::fs::write(&log_path, text.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", display(&log_path)))?;
    let verified = text
        .iter()
        .any(|line| line.contains(": verified ") && line.ends_with(" pages, 0 bad"));
    if !verified || text.iter().any(|line| line.contains("BAD")) {
        bail!("{source}: the guest did not verify every page, so its paging figures are not reported");
    }
    let restarts = text.iter().filter(|line| line.contains("server pager stopped")).count();
    if restarts > 0 {
        say!("xtask: bench: note: the pager was restarted {restarts} time(s) during {source}; its paging figures include the gaps");
    }
    let (mut results, problems) = BenchResults::collect(&report.lines);
    for problem in &problems {
        say!("xtask: bench: {problem}");
    }
    results.check_present(&bench::PAGING_FIGURES, &source)?;
    match bench::device_read_figures(&text) {
        Ok(figures) if figures.is_empty() => say!(
            "xtask: bench: note: the pager did not report its swap device's read rates in {source}; see {}",
            display(&log_path)
        ),
        Ok(figures) => {
            for (name, value) in figures {
                // Whole rates print as counts, like the core's.
                let figure = if value.fract() == 0.0 && value >= 0.0 { Figure::Count(value as u64) } else { Figure::Real(value) };
                results.set(&name, figure);
            }
            let figure = |name: &str| results.get(name).map_or(0.0, Figure::as_f64);
            if let Some(bound) = bench::page_in_bound(figure("copy_4k_per_s"), figure(bench::DEVICE_BEST_NAME), figure(bench::CHECKSUM_RATE_NAME)) {
                results.set(bench::PAGE_IN_BOUND_NAME, Figure::Real(bound));
            }
        }
        Err(reason) => say!("xtask: bench: note: the pager abandoned its device measurement in {source}: {reason}"),
    }
    let page_ins = results.get("paged_in_pages").map_or(0.0, Figure::as_f64);
    if page_ins < BENCH_PAGING_MIN_PAGE_INS as f64 {
        say!(
            "xtask: bench: note: only {page_ins} page-ins in {source} (expected at least {BENCH_PAGING_MIN_PAGE_INS}): its paging figures are not representative; see {}",
            display(&log_path)
        );
    }
    Ok(results)
}

/// Boots an appliance of `appliances/` once for the bench and returns its
/// transcript (also written to `target/bench/LABEL.log`) if it ran to its
/// time limit; otherwise says so and returns `None`.
fn bench_time_limit_boot(workspace: &Workspace, images: &Images, file: &str, label: &str, what: &str) -> Result<Option<(Appliance, Vec<String>)>> {
    let config = workspace.root.join("appliances").join(file);
    let prepared = prepare(workspace, &config, RunMode::Normal)?;
    say!(
        "xtask: bench: booting {} ({what}; {} s)",
        prepared.appliance.file,
        prepared.appliance.machine.stop_after_ms / 1000
    );
    let report = boot(
        workspace,
        images,
        &prepared,
        MachineType::Microvm,
        StopRule::Timeout(BENCH_TIMEOUT),
        false,
        &per_run_socket(workspace)?,
        &[],
        None,
    )?;
    let text: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
    let directory = workspace.target_directory().join("bench");
    std::fs::create_dir_all(&directory).with_context(|| format!("cannot create {}", display(&directory)))?;
    let log_path = directory.join(format!("{label}.log"));
    std::fs::write(&log_path, text.join("\n") + "\n").with_context(|| format!("cannot write {}", display(&log_path)))?;
    if report.ending != Ending::Exited(qemu::QemuExit::Core(ipc::exit_status::ExitStatus::TimeLimit)) {
        say!(
            "xtask: bench: {} did not run to its time limit ({}): its figures are left out; see {}",
            prepared.appliance.file,
            report.ending,
            display(&log_path)
        );
        return Ok(None);
    }
    Ok(Some((prepared.appliance, text)))
}

/// The share tables (issue "the share table"): one boot each of
/// `appliances/weights.toml` (3 spinners, 256:512:1024, one pCPU) and
/// `appliances/balance.toml` (4 spinners, two pCPUs). Sets
/// `share_BOOT_DOMAIN_points_off` and `share_BOOT_worst_points_off` and
/// returns the tables to print.
fn bench_shares(workspace: &Workspace, images: &Images, results: &mut BenchResults) -> Result<Vec<String>> {
    let mut tables = Vec::new();
    for (boot, file, what) in [
        ("weights", "weights.toml", "CPU shares by weight"),
        ("balance", "balance.toml", "CPU shares on two pCPUs"),
    ] {
        let Some((appliance, text)) = bench_time_limit_boot(workspace, images, file, &format!("share-{boot}"), what)? else {
            continue;
        };
        let Some(rows) = bench::share_rows(&text, &bench::ShareDomain::of(&appliance)) else {
            say!("xtask: bench: {}: a domain has no cpu time line: no share table", appliance.file);
            continue;
        };
        for (name, value) in bench::share_figures(boot, &rows) {
            results.set(&name, Figure::Real(value));
            results.set_unit(&name, "points off the expected share");
        }
        tables.push(bench::share_table(
            &format!(
                "share table, {boot} ({}: {} pCPU(s), {} s; shares of the domains' total CPU time)",
                appliance.file,
                appliance.machine.cpus,
                appliance.machine.stop_after_ms / 1000
            ),
            &rows,
        ));
    }
    Ok(tables)
}

/// Boots of `appliances/bench-smp.toml` per `make bench`. The host's load
/// moves the time outside guests by a third and more between boots minutes
/// apart (docs/benchmarks.md), so the bench reports the median boot.
const BENCH_SMP_BOOTS: usize = 3;

/// [`BENCH_SMP_BOOTS`] boots of `appliances/bench-smp.toml` (8 busy vCPUs
/// on 2 pCPUs); the figures are the median boot's by the steady time
/// outside guests, with the lowest and highest of the boots beside it: the
/// time outside guests from the core's pCPU lines, the scheduler server's
/// decision cost from its last `decide median` line, and the core's pick
/// times from its `switch points:` lines if it prints them.
fn bench_smp(workspace: &Workspace, images: &Images, results: &mut BenchResults) -> Result<()> {
    let mut boots = Vec::new();
    for boot in 1..=BENCH_SMP_BOOTS {
        let what = format!("8 busy vCPUs on 2 pCPUs, boot {boot} of {BENCH_SMP_BOOTS}");
        if let Some(booted) = bench_time_limit_boot(workspace, images, "bench-smp.toml", &format!("smp-{boot}"), &what)? {
            boots.push(booted);
        }
    }
    let steady: Vec<Option<f64>> = boots.iter().map(|(_, text)| bench::steady_outside_percent(text)).collect();
    let Some(median) = bench::median_boot(&steady) else {
        return Ok(());
    };
    let known: Vec<f64> = steady.iter().flatten().copied().collect();
    if let (Some(lowest), Some(highest)) = (known.iter().copied().reduce(f64::min), known.iter().copied().reduce(f64::max)) {
        say!(
            "xtask: bench: {}: steady time outside guests per boot: {}; the median boot's figures follow",
            boots[median].0.file,
            steady.iter().map(|figure| figure.map_or("-".to_owned(), |value| format!("{value:.3} %"))).collect::<Vec<_>>().join(", ")
        );
        for (name, value) in [("smp_steady_outside_guest_percent_lowest", lowest), ("smp_steady_outside_guest_percent_highest", highest)] {
            results.set(name, Figure::Real(value));
            results.set_unit(name, "% of all pCPUs' steady windows outside guests, of the bench-smp boots");
        }
    }
    results.set("smp_boots", Figure::Count(boots.len() as u64));
    results.set_unit("smp_boots", "bench-smp boots that ran to their time limit");
    let (appliance, text) = boots.swap_remove(median);
    let times = bench::pcpu_times(&text);
    if times.is_empty() {
        say!("xtask: bench: {}: the core printed no pCPU time lines", appliance.file);
    }
    let steady = bench::complete_steady_times(&text).unwrap_or_default();
    if steady.is_empty() {
        say!("xtask: bench: {}: the core printed no steady-window line for some pCPU: {} left out", appliance.file, bench::SMP_STEADY_OUTSIDE_NAME);
    }
    for (name, value, unit) in bench::smp_figures(&times).into_iter().chain(bench::steady_figures(&steady)) {
        // Percentages are real; the µs and exit counts whole numbers.
        let figure = if name.ends_with("_percent") { Figure::Real(value) } else { Figure::Count(value as u64) };
        results.set(&name, figure);
        results.set_unit(&name, unit);
    }
    let decide = bench::decide_figures(&text);
    if decide.is_empty() {
        say!("xtask: bench: {}: the scheduler server printed no `decide median` line", appliance.file);
    }
    for (name, value) in decide {
        results.set(name, Figure::Count(value as u64));
        results.set_unit(
            name,
            if name.ends_with("_ticks") { "ticks, log2 bucket upper bound (server's last line)" } else { "decision passes timed by the server" },
        );
    }
    let picks = bench::switch_point_figures(&text);
    if picks.is_empty() {
        say!("xtask: bench: {}: the core printed no `switch points:` lines: core_pick_* left out", appliance.file);
    }
    for (name, value) in picks {
        results.set(&name, Figure::Count(value as u64));
    }
    Ok(())
}

/// `cargo xtask campaign`: writes the campaign's appliance under
/// `target/campaign/`, boots it with a fresh swap disk, writes the log and
/// the report there, prints the report and returns the verdict.
pub fn campaign(workspace: &Workspace, settings: &campaign::Settings) -> Result<bool> {
    setup::ensure(workspace, false)?;
    let directory = workspace.target_directory().join("campaign");
    std::fs::create_dir_all(&directory).with_context(|| format!("cannot create {}", display(&directory)))?;
    let config_path = directory.join("fault-campaign.toml");
    std::fs::write(&config_path, campaign::appliance_text(settings))
        .with_context(|| format!("cannot write {}", display(&config_path)))?;
    let appliance = config::load(&config_path, &display(&config_path))?;
    let Some(expectations) = campaign::Expectations::from_appliance(&appliance) else {
        bail!("{} has no [faults] table", display(&config_path));
    };
    let timing = campaign::Timing::of(settings.kills, settings.interval_ms);
    let images = Images::build(workspace)?;
    let prepared = prepare(workspace, &config_path, RunMode::Normal)?;
    let swap_image = directory.join("swap.img");
    qemu::create_swap_image(&swap_image, campaign::SWAP_MIB)?;
    let log_path = directory.join("campaign.log");
    let report_path = directory.join("report.txt");
    say!(
        "xtask: campaign: seed {}, {} kills about every {} ms; booting {} with a {} MiB swap disk; \
         the machine stops after {} s (the log goes to {})",
        settings.seed,
        settings.kills,
        settings.interval_ms,
        prepared.appliance.file,
        campaign::SWAP_MIB,
        timing.stop_after_ms / 1000,
        display(&log_path)
    );
    let report = boot(
        workspace,
        &images,
        &prepared,
        MachineType::Microvm,
        StopRule::Timeout(timing.timeout),
        false,
        &per_run_socket(workspace)?,
        &[],
        Some(&swap_image),
    )?;
    let log: String = report.lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(&log_path, log).with_context(|| format!("cannot write {}", display(&log_path)))?;
    let mut judged = campaign::judge(&report.lines, &expectations);
    judged.ending = Some(report.ending.to_string());
    // The spinners run forever: the machine ends by its stop_after.
    if let Some(failure) = scenario::judge_ending(&report.ending, ipc::exit_status::ExitStatus::TimeLimit) {
        judged.failures.push(failure.to_string());
    }
    let text = judged.to_string();
    std::fs::write(&report_path, format!("{text}\n"))
        .with_context(|| format!("cannot write {}", display(&report_path)))?;
    say!("{text}");
    say!("xtask: campaign: log {}, report {}", display(&log_path), display(&report_path));
    Ok(judged.passed())
}

/// `cargo xtask setup`.
pub fn setup(workspace: &Workspace) -> Result<bool> {
    setup::ensure(workspace, true)?;
    say!("xtask: setup: everything is in place");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appliance(servers: &str) -> Appliance {
        let text = format!("{servers}\n[[domain]]\nname = \"hello\"\nkernel = \"cairn:hello\"\n");
        config::parse(&text, "a.toml", Path::new("/")).unwrap()
    }

    #[test]
    fn run_attaches_a_swap_disk_only_for_a_pager_on_microvm() {
        let pager = appliance(
            "[[server]]\nname = \"pager\"\nkind = \"pager\"\nimage = \"cairn:pager-server\"\n",
        );
        let none = appliance("");
        let microvm = MachineType::Microvm;
        assert_eq!(
            run_swap_mib(&pager, microvm, None).unwrap(),
            (Some(DEFAULT_RUN_SWAP_MIB), None)
        );
        assert_eq!(
            run_swap_mib(&pager, microvm, Some(8)).unwrap(),
            (Some(8), None)
        );
        assert_eq!(
            run_swap_mib(&pager, microvm, Some(0)).unwrap(),
            (None, None)
        );
        assert_eq!(run_swap_mib(&none, microvm, None).unwrap(), (None, None));
        let (mib, note) = run_swap_mib(&none, microvm, Some(8)).unwrap();
        assert_eq!(mib, None);
        assert!(note.unwrap().contains("no pager server"));
        let (mib, note) = run_swap_mib(&pager, MachineType::Pc, None).unwrap();
        assert_eq!(mib, None);
        assert!(note.unwrap().contains("microvm"));
        let error = run_swap_mib(&pager, MachineType::Pc, Some(8)).unwrap_err();
        assert!(format!("{error}").contains("--swap-mib"), "{error}");
    }
}

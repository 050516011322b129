//! Starting QEMU, streaming and decoding its output live, stopping it, and
//! judging how it ended.
//!
//! QEMU runs with the core's COM1 on its stdout (`-serial stdio`) and its own
//! diagnostics on stderr. Two reader threads forward both streams to the
//! calling thread, which decodes, prints and records the lines while it
//! watches the timeout and Ctrl-C. COM2, the core's control port, is on a
//! UNIX socket ([`crate::control`]); a scenario's control steps run on a
//! third thread at their times and their output joins the transcript.
//!
//! No QEMU outlives the runner: QEMU runs in its own process group (so the
//! terminal's Ctrl-C reaches only the runner, which then kills QEMU and still
//! reports), a guard kills it on every return path, and where util-linux
//! `setpriv` exists QEMU is started through `setpriv --pdeathsig KILL`, so
//! the kernel kills it even if the runner itself dies abruptly.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use defmt_decoder::Table;
use ipc::exit_status::{ExitStatus as CoreExit, DEBUG_EXIT_PORT};

use crate::control::{self, ControlStep, StepOutcome};
use crate::decode::{Line, SerialDecoder};
use crate::interrupt;
use crate::setup::find_program;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// How often the loop looks at the clock and Ctrl-C while output is quiet.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// QEMU's warning for each CPU feature of `-cpu EPYC` that TCG lacks: shown
/// once, the repeats are hidden.
const TCG_FEATURE_WARNING: &str = "TCG doesn't support requested feature";
/// How long to wait for QEMU's last output after it exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// QEMU's machine model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MachineType {
    /// `-M microvm`: no PCI, no firmware beyond qboot; boots fastest.
    #[default]
    Microvm,
    /// `-M pc`: i440FX with SeaBIOS, the classic PC.
    Pc,
}

impl MachineType {
    /// The name used on the command line and in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Microvm => "microvm",
            Self::Pc => "pc",
        }
    }
}

impl FromStr for MachineType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "microvm" => Ok(Self::Microvm),
            "pc" => Ok(Self::Pc),
            other => Err(format!("`{other}` is not a machine type (microvm or pc)")),
        }
    }
}

/// What QEMU is asked to boot.
#[derive(Debug, Clone)]
pub struct QemuConfig<'a> {
    /// Machine model.
    pub machine: MachineType,
    /// `-smp`.
    pub cpus: u8,
    /// `-m`, MiB.
    pub memory_mib: u32,
    /// The core ELF (`-kernel`, booted through its PVH note).
    pub kernel: &'a Path,
    /// The boot bundle (`-initrd`, the one boot module).
    pub bundle: &'a Path,
    /// The UNIX socket COM2 (the control port) is connected to.
    pub control_socket: &'a Path,
    /// The pager's swap disk (a raw image), attached as a virtio-blk device
    /// on a virtio-mmio transport ([`swap_arguments`]); `-M microvm` only.
    pub swap: Option<&'a Path>,
    /// A blkdebug rules file the swap disk is attached through, to inject
    /// device errors ([`SwapFaults`], [`write_swap_rules`]); none: the image
    /// is attached directly.
    pub swap_rules: Option<&'a Path>,
}

/// Where `-M microvm` puts its virtio-mmio transports (QEMU's
/// `hw/i386/microvm.c`, `VIRTIO_MMIO_BASE`): one 512-byte register window
/// each, transport `i` at `VIRTIO_MMIO_BASE + i * 512`.
pub const VIRTIO_MMIO_BASE: u64 = 0xfeb0_0000;
/// Size of one virtio-mmio transport's register window.
pub const VIRTIO_MMIO_TRANSPORT_SIZE: u64 = 0x200;
/// Transports `-M microvm` creates in QEMU 7.2 with its defaults (ACPI on,
/// so a second I/O APIC; their interrupts are GSIs 24..=47).
pub const VIRTIO_MMIO_TRANSPORTS: u64 = 24;
/// The transport the swap disk lands on: QEMU plugs a `-device
/// virtio-blk-device` into the last free virtio-mmio bus, so the first (and
/// only) one lands on the highest transport, 23 (`info qtree`:
/// `virtio-mmio-bus.23`, mmio 0xfeb02e00/0x200; checked with QEMU 7.2).
pub const SWAP_TRANSPORT_INDEX: u64 = VIRTIO_MMIO_TRANSPORTS - 1;
/// The swap disk's register window, guest-physical: `0xfeb0_2e00`.
pub const SWAP_MMIO_BASE: u64 =
    VIRTIO_MMIO_BASE + SWAP_TRANSPORT_INDEX * VIRTIO_MMIO_TRANSPORT_SIZE;

/// QEMU's arguments for the swap disk: a raw image as a virtio-blk device on
/// a modern (virtio 1.0, `force-legacy=false`) virtio-mmio transport.
///
/// With `rules`, the image is reached through QEMU's `blkdebug` driver with
/// that rules file (raw format over blkdebug over the file, so the raw
/// driver's `read_aio`/`write_aio` events reach blkdebug), and a failed read
/// is reported to the device's driver (`rerror=report`: the request
/// completes with `VIRTIO_BLK_S_IOERR`) instead of stopping the machine.
/// QEMU's virtio-blk merges requests for adjacent blocks into one (as the
/// pager's readahead produces); with rules it must not
/// (`request-merging=off`), so that blkdebug counts one `read_aio` event
/// per read the driver made and `swap_faults_after_reads` means reads.
pub fn swap_arguments(image: &Path, rules: Option<&Path>) -> [String; 6] {
    // QEMU's option syntax doubles a comma inside a value.
    let escape = |path: &Path| path.to_string_lossy().replace(',', ",,");
    let path = escape(image);
    let (drive, device) = match rules {
        None => (format!("file={path},if=none,id=swap,format=raw"), "virtio-blk-device,drive=swap"),
        Some(rules) => (
            format!(
                "driver=raw,if=none,id=swap,rerror=report,\
                 file.driver=blkdebug,file.config={},\
                 file.image.driver=file,file.image.filename={path}",
                escape(rules)
            ),
            "virtio-blk-device,drive=swap,request-merging=off",
        ),
    };
    [
        "-global".to_owned(),
        "virtio-mmio.force-legacy=false".to_owned(),
        "-drive".to_owned(),
        drive,
        "-device".to_owned(),
        device.to_owned(),
    ]
}

/// Device errors injected into the swap disk (scenario keys `swap_faults`
/// and `swap_faults_after_reads`), through QEMU's `blkdebug` driver
/// ([`write_swap_rules`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapFaults {
    /// `"read"`: once the disk has taken its first write, the first
    /// `reads_ok` reads succeed and every read after them fails with EIO;
    /// writes keep working. The pager's start (the header read of a fresh,
    /// zeroed image, then formatting, which writes) goes through, so every
    /// read counted is a page-in: pages are paged out, `reads_ok` of them
    /// come back, and then every page-in read fails.
    Read {
        /// Reads after the first write that still succeed.
        reads_ok: u32,
    },
}

/// Most reads [`SwapFaults::Read`] lets through (one blkdebug rule each).
pub const SWAP_FAULT_READS_OK_MAX: u32 = 100_000;

impl SwapFaults {
    /// The blkdebug rules file (QEMU's `docs/devel/blkdebug.rst`). State 1
    /// is blkdebug's initial state. The first `write_aio` event moves it to
    /// 2; each `read_aio` event in states 2..=`reads_ok`+1 moves it one
    /// further (that read succeeds: blkdebug compares a rule's state with
    /// the state before the event). In the last state every `read_aio`
    /// event activates an EIO (errno 5) rule for reads only (`iotype`),
    /// which fails that read and, not being `once`, every read after it.
    pub fn rules(self) -> String {
        use std::fmt::Write as _;
        match self {
            Self::Read { reads_ok } => {
                let mut text = format!(
                    "# cairn swap_faults = \"read\": once anything was written, \
                     {reads_ok} reads succeed, then every read fails with EIO\n\
                     [set-state]\nstate = \"1\"\nevent = \"write_aio\"\nnew_state = \"2\"\n"
                );
                for state in 2..2 + u64::from(reads_ok) {
                    let _ = write!(
                        text,
                        "\n[set-state]\nstate = \"{state}\"\nevent = \"read_aio\"\nnew_state = \"{}\"\n",
                        state + 1
                    );
                }
                let _ = write!(
                    text,
                    "\n[inject-error]\nstate = \"{}\"\nevent = \"read_aio\"\niotype = \"read\"\nerrno = \"5\"\n",
                    2 + u64::from(reads_ok)
                );
                text
            }
        }
    }
}

impl FromStr for SwapFaults {
    type Err = String;

    /// The kind, with its defaults (`"read"`: no read succeeds after the
    /// first write).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "read" => Ok(Self::Read { reads_ok: 0 }),
            other => Err(format!("`{other}` is not a kind of swap fault (read)")),
        }
    }
}

/// Writes the blkdebug rules for `faults` next to the swap image `image`
/// (same name, extension `blkdebug`) and returns their path.
pub fn write_swap_rules(image: &Path, faults: SwapFaults) -> Result<PathBuf> {
    let path = image.with_extension("blkdebug");
    std::fs::write(&path, faults.rules())
        .with_context(|| format!("cannot write the blkdebug rules {}", path.display()))?;
    Ok(path)
}

/// Checks that a swap disk can be attached on `machine`: only `-M microvm`
/// has virtio-mmio transports (`-M pc` would need virtio-blk-pci, which the
/// core does not drive).
pub fn check_swap_machine(machine: MachineType) -> Result<(), String> {
    match machine {
        MachineType::Microvm => Ok(()),
        MachineType::Pc => Err(format!(
            "a swap disk needs -M microvm (virtio-mmio); -M {} has none",
            machine.name()
        )),
    }
}

/// Creates (or replaces) a zero-filled raw swap image of `mib` MiB at
/// `path`, sparse (`set_len`), creating its directory first.
pub fn create_swap_image(path: &Path, mib: u32) -> Result<()> {
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
    }
    // Truncate to nothing first, so no block of an earlier run survives.
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the swap image {}", path.display()))?;
    file.set_len(u64::from(mib) << 20)
        .with_context(|| format!("cannot size the swap image {} to {mib} MiB", path.display()))?;
    Ok(())
}

/// The environment variable whose whitespace-separated words are appended
/// to QEMU's options, before the kernel (profiling: `docs/benchmarks.md`).
pub const EXTRA_ARGUMENTS_VARIABLE: &str = "CAIRN_QEMU_EXTRA";

/// QEMU's arguments for a configuration; an error if it asks for a swap
/// disk on a machine without virtio-mmio ([`check_swap_machine`]).
///
/// `microvm` needs no extra options: it has an ISA bus, so `isa-debug-exit`
/// works as on `pc`, and its ISA serial port (`isa-serial=on` by default)
/// is COM1 at 0x3F8, which `-serial stdio` connects. COM2 is added as an
/// explicit `isa-serial` device on both machines ([`control::qemu_arguments`]).
/// The swap disk, if any, follows ([`swap_arguments`]).
pub fn arguments(config: &QemuConfig<'_>) -> Result<Vec<OsString>, String> {
    let mut arguments: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| arguments.extend(items.iter().map(OsString::from));
    push(&["-M", config.machine.name(), "-accel", "tcg", "-cpu", "EPYC"]);
    push(&[
        "-m",
        &config.memory_mib.to_string(),
        "-smp",
        &config.cpus.to_string(),
    ]);
    push(&[
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]);
    let debug_exit = format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04");
    push(&["-device", &debug_exit]);
    arguments.extend(control::qemu_arguments(config.control_socket).map(OsString::from));
    if let Some(image) = config.swap {
        check_swap_machine(config.machine)?;
        arguments.extend(swap_arguments(image, config.swap_rules).map(OsString::from));
    }
    // For profiling only (`tools/tcg-exec-profile.py`): more QEMU options,
    // e.g. `-d exec -D FILE`. Never set by the runner itself.
    if let Ok(extra) = std::env::var(EXTRA_ARGUMENTS_VARIABLE) {
        arguments.extend(extra.split_whitespace().map(OsString::from));
    }
    arguments.push("-kernel".into());
    arguments.push(config.kernel.into());
    arguments.push("-initrd".into());
    arguments.push(config.bundle.into());
    Ok(arguments)
}

/// When the runner stops QEMU by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopRule {
    /// Only when QEMU exits or Ctrl-C is pressed.
    Never,
    /// After this long, as a failure (`timeout after N s`).
    Timeout(Duration),
    /// After this long, as planned (`run --duration`).
    After(Duration),
}

/// How QEMU's exit status is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuExit {
    /// The core wrote this code to the isa-debug-exit port.
    Core(CoreExit),
    /// Status 0: with `-no-reboot`, a triple fault or reset. Never success.
    Zero,
    /// Any other status: not written by the core (QEMU's own error, usually 1).
    Other(i32),
    /// QEMU died from a signal.
    Signal(i32),
}

impl QemuExit {
    /// Judges a process exit: a code, or else the signal that ended it.
    pub fn judge(code: Option<i32>, signal: Option<i32>) -> Self {
        match (code, signal) {
            (Some(0), _) => Self::Zero,
            (Some(code), _) => {
                CoreExit::from_qemu_status(code).map_or(Self::Other(code), Self::Core)
            }
            (None, signal) => Self::Signal(signal.unwrap_or(-1)),
        }
    }

    /// Success: every domain powered itself off, or the appliance's
    /// `stop_after` ended a measurement run as configured.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Core(CoreExit::AllPoweredOff | CoreExit::TimeLimit))
    }
}

impl fmt::Display for QemuExit {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Core(code) => {
                let meaning = match code {
                    CoreExit::AllPoweredOff => "every domain powered itself off",
                    CoreExit::DomainFailed => {
                        "every domain ended, at least one was stopped or crashed"
                    }
                    CoreExit::CorePanic => "the core panicked",
                    CoreExit::BootError => "the core refused the boot bundle or the machine",
                    CoreExit::TimeLimit => "the appliance's stop_after time ran out",
                };
                write!(
                    formatter,
                    "{code:?} (QEMU status {}): {meaning}",
                    code.qemu_status()
                )
            }
            Self::Zero => formatter.write_str(
                "QEMU status 0: a triple fault or machine reset (-no-reboot); never success",
            ),
            Self::Other(code) => {
                write!(
                    formatter,
                    "QEMU status {code}: not a cairn exit code (QEMU itself failed?)"
                )
            }
            Self::Signal(signal) => write!(formatter, "QEMU was killed by signal {signal}"),
        }
    }
}

/// How a boot ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ending {
    /// QEMU exited by itself.
    Exited(QemuExit),
    /// The timeout ran out; QEMU was killed.
    TimedOut(Duration),
    /// `--duration` ran out; QEMU was stopped as planned.
    StoppedAfter(Duration),
    /// Ctrl-C; QEMU was killed.
    Interrupted(Duration),
}

impl fmt::Display for Ending {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(exit) => write!(formatter, "{exit}"),
            Self::TimedOut(limit) => write!(formatter, "timeout after {} s", seconds(*limit)),
            Self::StoppedAfter(limit) => write!(formatter, "stopped after {} s", seconds(*limit)),
            Self::Interrupted(elapsed) => {
                write!(formatter, "stopped by Ctrl-C after {} s", seconds(*elapsed))
            }
        }
    }
}

/// Seconds for messages: whole when whole, else one decimal.
fn seconds(duration: Duration) -> String {
    let value = duration.as_secs_f64();
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Everything one boot produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub ending: Ending,
    /// Every line, in order, as printed.
    pub lines: Vec<Line>,
    /// Time from spawning QEMU to the first guest console line.
    pub first_guest_line: Option<Duration>,
    /// What the control steps did, in order (steps the boot did not live
    /// to see are missing).
    pub control: Vec<StepOutcome>,
}

/// Control steps to run during a boot, over its control socket.
#[derive(Debug, Clone, Copy)]
pub struct ControlPlan<'a> {
    /// The socket QEMU listens on.
    pub socket: &'a Path,
    /// The steps, in order of time.
    pub steps: &'a [ControlStep],
}

enum Event {
    Serial(Vec<u8>),
    Stderr(String),
}

/// Kills and reaps QEMU when dropped, whatever path the runner leaves by.
struct QemuProcess {
    child: Child,
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Best effort: the process may exit between the check and the kill.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn spawn(program: &OsStr, arguments: &[OsString]) -> Result<QemuProcess> {
    let mut command = match find_program("setpriv") {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(program);
            command
        }
        None => Command::new(program),
    };
    command
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
    Ok(QemuProcess { child })
}

fn forward_serial(mut stdout: impl Read, sender: Sender<Event>) {
    let mut buffer = [0u8; 4096];
    loop {
        match stdout.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(count) => {
                if sender
                    .send(Event::Serial(buffer[..count].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn forward_stderr(stderr: impl Read, sender: Sender<Event>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if sender.send(Event::Stderr(text)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Collects lines, prints them when echoing, and timestamps the first guest line.
struct Transcript {
    lines: Vec<Line>,
    echo: bool,
    started: Instant,
    first_guest_line: Option<Duration>,
    feature_warnings: usize,
}

impl Transcript {
    fn record(&mut self, line: Line) {
        if matches!(line, Line::Guest(_)) && self.first_guest_line.is_none() {
            self.first_guest_line = Some(self.started.elapsed());
        }
        if self.echo {
            say!("{line}");
        }
        self.lines.push(line);
    }

    fn handle(&mut self, event: Event, decoder: &mut SerialDecoder<'_>) {
        match event {
            Event::Serial(bytes) => {
                for line in decoder.push(&bytes) {
                    self.record(line);
                }
            }
            Event::Stderr(text) if text.contains(TCG_FEATURE_WARNING) => {
                self.feature_warnings += 1;
                if self.feature_warnings == 1 {
                    self.record(Line::Qemu(format!(
                        "{text} (repeats for other features hidden)"
                    )));
                }
            }
            Event::Stderr(text) => self.record(Line::Qemu(text)),
        }
    }
}

/// Boots QEMU with `arguments`, decoding the serial stream with `table`
/// (hex dump when `None`), until it exits, `stop` says so, or Ctrl-C.
/// With `echo`, every line is printed as it arrives. The `control` steps
/// run at their times while QEMU runs.
pub fn run(
    arguments: &[OsString],
    table: Option<&Table>,
    stop: StopRule,
    echo: bool,
    control: Option<ControlPlan<'_>>,
) -> Result<RunReport> {
    run_program(OsStr::new(QEMU), arguments, table, stop, echo, control)
}

/// Runs the control steps on a thread of their own; [`finish`](Self::finish)
/// stops the ones not yet due and waits for the one running.
struct ControlThread<'a> {
    steps: &'a [ControlStep],
    stop: Option<Sender<()>>,
    outcomes: Receiver<StepOutcome>,
    handle: Option<std::thread::JoinHandle<()>>,
    done: Vec<StepOutcome>,
}

impl<'a> ControlThread<'a> {
    fn start(plan: ControlPlan<'a>, started: Instant) -> Self {
        let (stop, stop_receiver) = mpsc::channel();
        let (outcome_sender, outcomes) = mpsc::channel();
        let socket = plan.socket.to_path_buf();
        let steps = plan.steps.to_vec();
        let handle = std::thread::spawn(move || {
            control::run_steps(&socket, &steps, started, &stop_receiver, |outcome| {
                // The receiver lives until after the join.
                let _ = outcome_sender.send(outcome);
            });
        });
        Self {
            steps: plan.steps,
            stop: Some(stop),
            outcomes,
            handle: Some(handle),
            done: Vec::new(),
        }
    }

    /// Records the outcomes that arrived.
    fn collect(&mut self, transcript: &mut Transcript) {
        loop {
            match self.outcomes.try_recv() {
                Ok(outcome) => {
                    if let Some(step) = self.steps.get(outcome.index) {
                        for line in outcome.lines(step) {
                            transcript.record(line);
                        }
                    }
                    self.done.push(outcome);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn finish(mut self, transcript: &mut Transcript) -> Vec<StepOutcome> {
        self.stop.take();
        if let Some(handle) = self.handle.take() {
            // A panic in a step is a bug of the runner; its outcome is missing.
            let _ = handle.join();
        }
        self.collect(transcript);
        self.done
    }
}

/// [`run`] with another program in QEMU's place (the tests use a shell).
fn run_program(
    program: &OsStr,
    arguments: &[OsString],
    table: Option<&Table>,
    stop: StopRule,
    echo: bool,
    control: Option<ControlPlan<'_>>,
) -> Result<RunReport> {
    let mut decoder = SerialDecoder::new(table);
    let started = Instant::now();
    let mut transcript = Transcript {
        lines: Vec::new(),
        echo,
        started,
        first_guest_line: None,
        feature_warnings: 0,
    };
    let mut process = spawn(program, arguments)?;
    let (sender, receiver): (Sender<Event>, Receiver<Event>) = mpsc::channel();
    if let Some(stdout) = process.child.stdout.take() {
        let sender = sender.clone();
        std::thread::spawn(move || forward_serial(stdout, sender));
    }
    if let Some(stderr) = process.child.stderr.take() {
        let sender = sender.clone();
        std::thread::spawn(move || forward_stderr(stderr, sender));
    }
    drop(sender);
    let mut control_thread = control
        .filter(|plan| !plan.steps.is_empty())
        .map(|plan| ControlThread::start(plan, started));

    let limit = match stop {
        StopRule::Never => None,
        StopRule::Timeout(limit) | StopRule::After(limit) => Some(limit),
    };
    let mut exited: Option<(QemuExit, Instant)> = None;
    let mut streams_open = true;
    let ending = loop {
        if let Some((exit, at)) = exited {
            if !streams_open || at.elapsed() >= DRAIN_AFTER_EXIT {
                break Ending::Exited(exit);
            }
        } else if let Some(status) = process.child.try_wait().context("cannot wait for QEMU")? {
            exited = Some((
                QemuExit::judge(status.code(), status.signal()),
                Instant::now(),
            ));
            continue;
        }
        let elapsed = started.elapsed();
        if exited.is_none() {
            if interrupt::requested() {
                break Ending::Interrupted(elapsed);
            }
            if let Some(limit) = limit.filter(|&limit| elapsed >= limit) {
                break match stop {
                    StopRule::After(_) => Ending::StoppedAfter(limit),
                    _ => Ending::TimedOut(limit),
                };
            }
        }
        let wait = limit.map_or(POLL_INTERVAL, |limit| {
            limit.saturating_sub(elapsed).min(POLL_INTERVAL)
        });
        if !streams_open {
            std::thread::sleep(wait.max(Duration::from_millis(1)));
            continue;
        }
        match receiver.recv_timeout(wait) {
            Ok(event) => transcript.handle(event, &mut decoder),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => streams_open = false,
        }
        if let Some(thread) = control_thread.as_mut() {
            thread.collect(&mut transcript);
        }
    };
    // Stop QEMU now (the guard would too) and keep whatever it still wrote.
    drop(process);
    let control = control_thread.map_or_else(Vec::new, |thread| thread.finish(&mut transcript));
    while let Ok(event) = receiver.recv_timeout(DRAIN_AFTER_EXIT) {
        transcript.handle(event, &mut decoder);
    }
    for line in decoder.finish() {
        transcript.record(line);
    }
    Ok(RunReport {
        ending,
        lines: transcript.lines,
        first_guest_line: transcript.first_guest_line,
        control,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_unknown_statuses_are_never_success() {
        assert_eq!(QemuExit::judge(Some(0), None), QemuExit::Zero);
        assert!(!QemuExit::judge(Some(0), None).is_success());
        assert_eq!(QemuExit::judge(Some(1), None), QemuExit::Other(1));
        assert!(!QemuExit::judge(Some(1), None).is_success());
        assert_eq!(QemuExit::judge(None, Some(9)), QemuExit::Signal(9));
        assert!(!QemuExit::judge(None, Some(9)).is_success());
    }

    #[test]
    fn core_codes_are_recognised() {
        assert_eq!(
            QemuExit::judge(Some(33), None),
            QemuExit::Core(CoreExit::AllPoweredOff)
        );
        assert!(QemuExit::judge(Some(33), None).is_success());
        assert_eq!(
            QemuExit::judge(Some(35), None),
            QemuExit::Core(CoreExit::DomainFailed)
        );
        assert!(!QemuExit::judge(Some(35), None).is_success());
        assert_eq!(
            QemuExit::judge(Some(37), None),
            QemuExit::Core(CoreExit::CorePanic)
        );
        assert_eq!(
            QemuExit::judge(Some(39), None),
            QemuExit::Core(CoreExit::BootError)
        );
        assert!(QemuExit::Zero.to_string().contains("never success"));
    }

    #[test]
    fn arguments_follow_the_platform_notes() {
        let config = QemuConfig {
            machine: MachineType::Pc,
            cpus: 2,
            memory_mib: 256,
            kernel: Path::new("/k"),
            bundle: Path::new("/b.bundle"),
            control_socket: Path::new("/c.sock"),
            swap: None,
            swap_rules: None,
        };
        let text: Vec<String> = arguments(&config)
            .unwrap()
            .iter()
            .map(|argument| argument.to_string_lossy().into_owned())
            .collect();
        let joined = text.join(" ");
        assert!(
            joined.starts_with("-M pc -accel tcg -cpu EPYC -m 256 -smp 2 "),
            "{joined}"
        );
        assert!(joined.contains("-serial stdio -no-reboot"), "{joined}");
        assert!(
            joined.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "-chardev socket,id=control,path=/c.sock,server=on,wait=off \
                 -device isa-serial,chardev=control,iobase=0x2f8,irq=3 "
            ),
            "{joined}"
        );
        assert!(joined.ends_with("-kernel /k -initrd /b.bundle"), "{joined}");
        assert!(
            !joined.contains("virtio"),
            "no swap disk unless asked: {joined}"
        );
    }

    #[test]
    fn a_swap_disk_is_a_virtio_blk_device_on_microvm_only() {
        let mut config = QemuConfig {
            machine: MachineType::Microvm,
            cpus: 1,
            memory_mib: 64,
            kernel: Path::new("/k"),
            bundle: Path::new("/b.bundle"),
            control_socket: Path::new("/c.sock"),
            swap: Some(Path::new("/t/scenarios/memhog/swap.img")),
            swap_rules: None,
        };
        let joined = joined_arguments(&config);
        assert!(
            joined.contains(
                "-global virtio-mmio.force-legacy=false \
                 -drive file=/t/scenarios/memhog/swap.img,if=none,id=swap,format=raw \
                 -device virtio-blk-device,drive=swap -kernel /k"
            ),
            "{joined}"
        );
        assert!(joined.starts_with("-M microvm "), "{joined}");
        let commas = swap_arguments(Path::new("/a,b/swap.img"), None);
        assert_eq!(commas[3], "file=/a,,b/swap.img,if=none,id=swap,format=raw");

        config.machine = MachineType::Pc;
        let error = arguments(&config).unwrap_err();
        assert!(error.contains("microvm"), "{error}");
        assert_eq!(SWAP_MMIO_BASE, 0xfeb0_2e00);
    }

    /// `config`'s QEMU command line, one string.
    fn joined_arguments(config: &QemuConfig) -> String {
        arguments(config)
            .unwrap()
            .iter()
            .map(|argument| argument.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn swap_faults_attach_the_disk_through_blkdebug() {
        let mut config = QemuConfig {
            machine: MachineType::Microvm,
            cpus: 1,
            memory_mib: 64,
            kernel: Path::new("/k"),
            bundle: Path::new("/b.bundle"),
            control_socket: Path::new("/c.sock"),
            swap: Some(Path::new("/t/scenarios/read-error/swap.img")),
            swap_rules: Some(Path::new("/t/scenarios/read-error/swap.blkdebug")),
        };
        let joined = joined_arguments(&config);
        assert!(
            joined.contains(
                "-global virtio-mmio.force-legacy=false \
                 -drive driver=raw,if=none,id=swap,rerror=report,\
                 file.driver=blkdebug,file.config=/t/scenarios/read-error/swap.blkdebug,\
                 file.image.driver=file,file.image.filename=/t/scenarios/read-error/swap.img \
                 -device virtio-blk-device,drive=swap,request-merging=off -kernel /k"
            ),
            "{joined}"
        );
        let commas = swap_arguments(Path::new("/a,b/swap.img"), Some(Path::new("/a,b/r")));
        assert!(commas[3].contains("file.config=/a,,b/r,"), "{}", commas[3]);
        assert!(
            commas[3].ends_with("file.image.filename=/a,,b/swap.img"),
            "{}",
            commas[3]
        );
        // The rules need the swap disk's machine like the disk itself.
        config.machine = MachineType::Pc;
        assert!(arguments(&config).unwrap_err().contains("microvm"));
    }

    #[test]
    fn swap_fault_rules_fail_reads_only_after_the_first_write() {
        assert_eq!(
            "read".parse::<SwapFaults>(),
            Ok(SwapFaults::Read { reads_ok: 0 })
        );
        assert!("write".parse::<SwapFaults>().unwrap_err().contains("read"));
        /// The rules as (section, [(key, value)]) in file order.
        fn sections(rules: &str) -> Vec<(String, Vec<(String, String)>)> {
            let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
            for line in rules
                .lines()
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
            {
                if let Some(name) = line.strip_prefix('[') {
                    sections.push((name.trim_end_matches(']').to_owned(), Vec::new()));
                } else {
                    let (key, value) = line.split_once(" = ").unwrap();
                    let value = value.trim_matches('"').to_owned();
                    sections.last_mut().unwrap().1.push((key.to_owned(), value));
                }
            }
            sections
        }
        let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
            items
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect()
        };
        let first_write = (
            "set-state".to_owned(),
            pairs(&[("state", "1"), ("event", "write_aio"), ("new_state", "2")]),
        );
        let eio = |state: &str| {
            (
                "inject-error".to_owned(),
                pairs(&[
                    ("state", state),
                    ("event", "read_aio"),
                    ("iotype", "read"),
                    ("errno", "5"),
                ]),
            )
        };
        // No read after the first write succeeds: the EIO rule is armed in
        // state 2; nothing for writes, and never `once`.
        let rules = SwapFaults::Read { reads_ok: 0 }.rules();
        assert_eq!(sections(&rules), [first_write.clone(), eio("2")], "{rules}");
        // Two reads succeed: two read steps, the EIO rule in state 4.
        let rules = SwapFaults::Read { reads_ok: 2 }.rules();
        let read_step = |from: &str, to: &str| {
            (
                "set-state".to_owned(),
                pairs(&[("state", from), ("event", "read_aio"), ("new_state", to)]),
            )
        };
        assert_eq!(
            sections(&rules),
            [
                first_write,
                read_step("2", "3"),
                read_step("3", "4"),
                eio("4")
            ],
            "{rules}"
        );
        assert!(rules.starts_with(
            "# cairn swap_faults = \"read\": once anything was written, 2 reads succeed"
        ));

        let directory = std::env::temp_dir().join(format!("xtask-rules-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let image = directory.join("swap.img");
        let faults = SwapFaults::Read { reads_ok: 0 };
        let path = write_swap_rules(&image, faults).unwrap();
        assert_eq!(path, directory.join("swap.blkdebug"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), faults.rules());
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_swap_image_is_fresh_sparse_zeros() {
        let directory = std::env::temp_dir().join(format!("xtask-swap-{}", std::process::id()));
        let path = directory.join("nested").join("swap.img");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"old contents of an earlier run").unwrap();
        create_swap_image(&path, 2).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 2 << 20);
        assert!(bytes.iter().all(|&byte| byte == 0));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn machine_types_parse() {
        assert_eq!("microvm".parse::<MachineType>(), Ok(MachineType::Microvm));
        assert_eq!("pc".parse::<MachineType>(), Ok(MachineType::Pc));
        assert!("q35".parse::<MachineType>().is_err());
    }

    fn shell(script: &str, stop: StopRule) -> RunReport {
        let arguments = [OsString::from("-c"), OsString::from(script)];
        run_program(OsStr::new("sh"), &arguments, None, stop, false, None).unwrap()
    }

    #[test]
    fn the_exit_status_and_all_output_are_collected() {
        let report = shell(
            "printf 'ABC'; echo oops >&2; exit 35",
            StopRule::Timeout(Duration::from_secs(20)),
        );
        assert_eq!(
            report.ending,
            Ending::Exited(QemuExit::Core(CoreExit::DomainFailed))
        );
        let text: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"qemu: oops".to_owned()), "{text:?}");
        assert!(
            text.iter()
                .any(|line| line.starts_with("serial| 41 42 43 ")),
            "{text:?}"
        );
        assert_eq!(report.first_guest_line, None);
    }

    #[test]
    fn a_hung_program_is_killed_at_the_timeout() {
        let started = Instant::now();
        let report = shell(
            "echo started >&2; exec sleep 30",
            StopRule::Timeout(Duration::from_millis(500)),
        );
        assert_eq!(report.ending, Ending::TimedOut(Duration::from_millis(500)));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(report.lines, vec![Line::Qemu("started".into())]);
        let report = shell("exec sleep 30", StopRule::After(Duration::from_millis(200)));
        assert_eq!(
            report.ending,
            Ending::StoppedAfter(Duration::from_millis(200))
        );
    }

    #[test]
    fn repeated_tcg_feature_warnings_are_shown_once() {
        let script = "for bit in 1 2 3; do echo \"warning: TCG doesn't support requested feature: bit $bit\" >&2; done; exit 33";
        let report = shell(script, StopRule::Timeout(Duration::from_secs(20)));
        assert_eq!(report.lines.len(), 1, "{:?}", report.lines);
        assert!(report.lines[0]
            .to_string()
            .contains("bit 1 (repeats for other features hidden)"));
    }

    #[test]
    fn control_steps_run_during_the_boot_and_join_the_transcript() {
        let steps = [
            ControlStep {
                at: Duration::from_millis(100),
                command: "help".into(),
                expect: None,
                expect_any: Vec::new(),
            },
            ControlStep {
                at: Duration::from_secs(60),
                command: "list".into(),
                expect: None,
                expect_any: Vec::new(),
            },
        ];
        let plan = ControlPlan {
            socket: Path::new("/nonexistent/control.sock"),
            steps: &steps,
        };
        let arguments = [OsString::from("-c"), OsString::from("sleep 1; exit 33")];
        let started = Instant::now();
        let report = run_program(
            OsStr::new("sh"),
            &arguments,
            None,
            StopRule::Timeout(Duration::from_secs(20)),
            false,
            Some(plan),
        )
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(report.control.len(), 1, "the 60 s step never ran");
        assert_eq!(report.control[0].index, 0);
        let text: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("xtask: control step 1 at 0."),
            "{text:?}"
        );
        assert_eq!(
            text[1],
            "hvctl: usage: hvctl [--socket PATH] COMMAND [OPTIONS]"
        );
    }

    #[test]
    fn a_triple_fault_exit_is_a_failure() {
        let report = shell("exit 0", StopRule::Timeout(Duration::from_secs(20)));
        assert_eq!(report.ending, Ending::Exited(QemuExit::Zero));
    }

    #[test]
    fn endings_read_as_sentences() {
        assert_eq!(
            Ending::TimedOut(Duration::from_secs(30)).to_string(),
            "timeout after 30 s"
        );
        assert_eq!(
            Ending::StoppedAfter(Duration::from_millis(2500)).to_string(),
            "stopped after 2.5 s"
        );
    }
}

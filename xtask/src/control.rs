//! The control channel of every boot: QEMU connects the machine's COM2 (the
//! core's control port, `ipc::control`) to a UNIX socket on the host, which
//! `hvctl` and a scenario's control steps talk to.
//!
//! `cargo xtask run` uses [`DEFAULT_SOCKET_NAME`] in `target/cairn/`, where
//! `hvctl` looks by default; scenario, test and bench boots use a socket of
//! their own per boot (`control-PID-N.sock`), so runs in parallel never
//! share one. A socket file nobody listens on is removed before QEMU starts,
//! and every socket is removed when its boot ends.
//!
//! A control step (`control = [{ at = 2.0, command = "sched-credit -d
//! spinner -c 50", expect = "50" }]` in a scenario) runs the `hvctl`
//! command `at` seconds after QEMU was spawned, through the `hvctl`
//! library; its output becomes `hvctl: ...` lines of the transcript.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::decode::Line;

/// The socket of `cargo xtask run`, in the bundle directory.
pub const DEFAULT_SOCKET_NAME: &str = "control.sock";
/// Longest UNIX socket path (`sun_path` is 108 bytes with its NUL).
const SOCKET_PATH_MAX: usize = 107;
/// How long a control step waits for each answer of the core.
pub const STEP_TIMEOUT: Duration = hvctl::DEFAULT_TIMEOUT;

/// A socket path reserved for one boot; the file is removed on drop.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    /// Why the path is not the one asked for, if it is not.
    pub note: Option<String>,
}

impl ControlSocket {
    /// For `cargo xtask run`: `directory/control.sock`, unless another live
    /// run holds it or the path is too long, then a per-run path.
    pub fn interactive(directory: &Path) -> Result<Self> {
        let path = directory.join(DEFAULT_SOCKET_NAME);
        if path.as_os_str().len() > SOCKET_PATH_MAX {
            let mut socket = Self::per_run(directory)?;
            socket.note = Some(format!("{} is too long for a UNIX socket", path.display()));
            return Ok(socket);
        }
        prepare_directory(directory)?;
        if clear_stale(&path)? {
            let mut socket = Self::per_run(directory)?;
            socket.note = Some(format!("{} is in use by another run", path.display()));
            return Ok(socket);
        }
        Ok(Self { path, note: None })
    }

    /// For scenario, test and bench boots: `directory/control-PID-N.sock`
    /// (in the temporary directory if that path would be too long).
    pub fn per_run(directory: &Path) -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "control-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut path = directory.join(&name);
        if path.as_os_str().len() > SOCKET_PATH_MAX {
            path = std::env::temp_dir().join(format!("cairn-{name}"));
        } else {
            prepare_directory(directory)?;
        }
        // Ours by name, so any file there is a leftover of a killed runner
        // that had the same process id.
        let _ = std::fs::remove_file(&path);
        Ok(Self { path, note: None })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // QEMU may have removed it already, or never created it.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn prepare_directory(directory: &Path) -> Result<()> {
    std::fs::create_dir_all(directory)
        .with_context(|| format!("cannot create {}", directory.display()))
}

/// Removes `path` if it is a socket nobody listens on; true if somebody
/// does (a live run).
fn clear_stale(path: &Path) -> Result<bool> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    if UnixStream::connect(path).is_ok() {
        return Ok(true);
    }
    std::fs::remove_file(path)
        .with_context(|| format!("cannot remove the stale control socket {}", path.display()))?;
    Ok(false)
}

/// QEMU's arguments for the control port: COM2 (I/O 0x2F8, IRQ 3, as
/// `ipc::control` says) on a UNIX socket QEMU listens on without waiting
/// for a client (`wait=off`: the machine boots at once). An explicit
/// `isa-serial` works on `-M microvm` too, which creates only COM1 from
/// `-serial` options.
pub fn qemu_arguments(socket: &Path) -> [String; 4] {
    // QEMU's option syntax doubles a comma inside a value.
    let path = socket.to_string_lossy().replace(',', ",,");
    [
        "-chardev".to_owned(),
        format!("socket,id=control,path={path},server=on,wait=off"),
        "-device".to_owned(),
        format!(
            "isa-serial,chardev=control,iobase={:#x},irq={}",
            ipc::control::COM2_PORT,
            ipc::control::COM2_IRQ
        ),
    ]
}

/// One `control` entry of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlStep {
    /// When to run, after QEMU was spawned.
    pub at: Duration,
    /// The `hvctl` command line, without `hvctl`.
    pub command: String,
    /// Text one output line (or the error) must contain; without it (and
    /// without `expect_any`) the command must succeed.
    pub expect: Option<String>,
    /// Texts of which one output line must contain one (a value that may
    /// be any of a few words, e.g. a vCPU's priority).
    pub expect_any: Vec<String>,
}

impl ControlStep {
    /// The command's words.
    pub fn words(&self) -> Vec<String> {
        self.command.split_whitespace().map(str::to_owned).collect()
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// Its position in the scenario's `control` list.
    pub index: usize,
    /// When it ran, after QEMU was spawned.
    pub ran_at: Duration,
    /// `hvctl`'s output, or its error message.
    pub output: Result<String, String>,
}

impl StepOutcome {
    /// The output as it is matched and printed, one line each (an error as
    /// `error: ...`).
    pub fn output_lines(&self) -> Vec<String> {
        match &self.output {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(message) => vec![format!("error: {message}")],
        }
    }

    /// The transcript lines: which step ran, then its output.
    pub fn lines(&self, step: &ControlStep) -> Vec<Line> {
        let mut lines = vec![Line::Runner(format!(
            "control step {} at {:.1} s: hvctl {}",
            self.index + 1,
            self.ran_at.as_secs_f64(),
            step.command
        ))];
        lines.extend(self.output_lines().into_iter().map(Line::Hvctl));
        lines
    }
}

/// Runs `steps` over `socket`, each at its time after `started`, and hands
/// each outcome to `report`; returns early (skipping the rest) when `stop`
/// is signalled or dropped.
pub fn run_steps(
    socket: &Path,
    steps: &[ControlStep],
    started: Instant,
    stop: &Receiver<()>,
    mut report: impl FnMut(StepOutcome),
) {
    for (index, step) in steps.iter().enumerate() {
        let wait = step.at.saturating_sub(started.elapsed());
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let ran_at = started.elapsed();
        let output = hvctl::run_words(socket, &step.words(), STEP_TIMEOUT)
            .map_err(|error| error.to_string());
        report(StepOutcome {
            index,
            ran_at,
            output,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;

    fn scratch() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let directory = std::env::temp_dir().join(format!(
            "xtask-control-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&directory).unwrap();
        directory
    }

    #[test]
    fn the_qemu_arguments_put_com2_on_the_socket() {
        let arguments = qemu_arguments(Path::new("/t/a,b.sock"));
        assert_eq!(
            arguments.join(" "),
            "-chardev socket,id=control,path=/t/a,,b.sock,server=on,wait=off \
             -device isa-serial,chardev=control,iobase=0x2f8,irq=3"
        );
    }

    #[test]
    fn stale_sockets_are_removed_and_live_ones_kept() {
        let directory = scratch();
        let path = directory.join(DEFAULT_SOCKET_NAME);
        // A stale socket (nobody listens) is removed and the path used.
        drop(UnixListener::bind(&path).unwrap());
        let socket = ControlSocket::interactive(&directory).unwrap();
        assert_eq!(socket.path(), path);
        assert!(!path.exists());
        assert_eq!(socket.note, None);
        drop(socket);
        // A live one is left alone; this run gets a path of its own.
        let listener = UnixListener::bind(&path).unwrap();
        let socket = ControlSocket::interactive(&directory).unwrap();
        assert_ne!(socket.path(), path);
        assert!(socket
            .note
            .as_deref()
            .unwrap()
            .contains("in use by another run"));
        assert!(path.exists());
        // Per-run paths differ and are removed on drop.
        let other = ControlSocket::per_run(&directory).unwrap();
        assert_ne!(other.path(), socket.path());
        std::fs::write(other.path(), b"").unwrap();
        let other_path = other.path().to_path_buf();
        drop(other);
        assert!(!other_path.exists());
        drop(listener);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn overlong_paths_fall_back_to_the_temporary_directory() {
        let deep = Path::new("/").join("d".repeat(120));
        let socket = ControlSocket::per_run(&deep).unwrap();
        assert!(socket.path().starts_with(std::env::temp_dir()));
        assert!(socket.path().as_os_str().len() <= SOCKET_PATH_MAX);
    }

    #[test]
    fn steps_run_in_order_and_stop_when_told() {
        let steps = vec![
            ControlStep {
                at: Duration::ZERO,
                command: "help".into(),
                expect: None,
                expect_any: Vec::new(),
            },
            ControlStep {
                at: Duration::from_millis(50),
                command: "list".into(),
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
        let (stop_sender, stop) = mpsc::channel();
        let started = Instant::now();
        let mut outcomes = Vec::new();
        let socket = scratch().join("absent.sock");
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(stop_sender);
        });
        run_steps(&socket, &steps, started, &stop, |outcome| {
            outcomes.push(outcome)
        });
        stopper.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert!(outcomes[0]
            .output
            .as_ref()
            .unwrap()
            .starts_with("usage: hvctl"));
        assert!(outcomes[1].ran_at >= Duration::from_millis(50));
        let error = outcomes[1].output.as_ref().unwrap_err();
        assert!(error.contains("no socket there"), "{error}");
        let lines: Vec<String> = outcomes[1]
            .lines(&steps[1])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            lines[0].starts_with("xtask: control step 2 at "),
            "{lines:?}"
        );
        assert!(lines[0].ends_with(" s: hvctl list"), "{lines:?}");
        assert!(
            lines[1].starts_with("hvctl: error: no core listening on"),
            "{lines:?}"
        );
    }
}

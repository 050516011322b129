//! Prerequisites on the host: the rustup target for the core and guests, and
//! QEMU. Every command that boots something runs [`ensure`] first; it costs
//! one `rustc --print sysroot` and a PATH search when all is present.
//!
//! What is installed automatically: the rustup target (`rustup target add`),
//! and QEMU through apt when running as root. Anything else is left to the
//! user, with the exact command to run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::qemu::QEMU;
use crate::workspace::{Workspace, KERNEL_TARGET};

/// The Debian package that provides [`QEMU`].
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Finds an executable in `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|directory| directory.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root (read from `/proc/self/status`, so no
/// unsafe `geteuid` call is needed).
fn running_as_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    effective_uid(&status) == Some(0)
}

/// The effective uid from the `Uid:` line of `/proc/<pid>/status`.
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn run_step(command: &mut Command, what: &str) -> Result<()> {
    say!("xtask: setup: {what}");
    let status = command
        .status()
        .with_context(|| format!("cannot run: {what}"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// Makes sure the kernel target is installed; installs it with rustup if not.
fn ensure_target(workspace: &Workspace, verbose: bool) -> Result<()> {
    // Run in the workspace so rustup picks the toolchain of rust-toolchain.toml.
    let output = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(&workspace.root)
        .output()
        .context("cannot run rustc: is a Rust toolchain installed (https://rustup.rs)?")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot.join("lib/rustlib").join(KERNEL_TARGET).is_dir() {
        if verbose {
            say!("xtask: setup: ok: Rust target {KERNEL_TARGET}");
        }
        return Ok(());
    }
    if find_program("rustup").is_none() {
        bail!(
            "the Rust target {KERNEL_TARGET} is missing and rustup is not installed; \
             install rustup, then run: rustup target add {KERNEL_TARGET}"
        );
    }
    run_step(
        Command::new("rustup")
            .args(["target", "add", KERNEL_TARGET])
            .current_dir(&workspace.root),
        &format!("rustup target add {KERNEL_TARGET}"),
    )
}

/// Makes sure QEMU is installed; installs it through apt when root.
fn ensure_qemu(verbose: bool) -> Result<()> {
    if let Some(path) = find_program(QEMU) {
        if verbose {
            say!("xtask: setup: ok: {}", path.display());
        }
        return Ok(());
    }
    let install = format!("apt-get install -y {QEMU_PACKAGE}");
    if !running_as_root() || find_program("apt-get").is_none() {
        bail!("{QEMU} is not installed; run: sudo apt-get update && sudo {install}");
    }
    run_step(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
    )?;
    run_step(
        Command::new("apt-get")
            .args(["install", "-y", QEMU_PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &install,
    )?;
    if find_program(QEMU).is_none() {
        bail!("{QEMU_PACKAGE} was installed but {QEMU} is still not in PATH");
    }
    Ok(())
}

/// Checks (and where possible installs) every prerequisite. `verbose`
/// reports each check even when it passes.
pub fn ensure(workspace: &Workspace, verbose: bool) -> Result<()> {
    ensure_target(workspace, verbose)?;
    ensure_qemu(verbose)?;
    if verbose && find_program("setpriv").is_none() {
        say!(
            "xtask: setup: note: setpriv (util-linux) not found; QEMU cannot be tied to the \
             runner's life if the runner is killed with SIGKILL"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
        assert_eq!(effective_uid("Name: x\n"), None);
    }

    #[test]
    fn programs_are_found_in_path_and_missing_ones_are_not() {
        assert!(find_program("sh").is_some());
        assert!(find_program("surely-not-a-program-xtask").is_none());
    }
}

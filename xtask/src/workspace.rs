//! Where things are in the workspace, and the cargo invocations the runner makes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The bare-metal target the core and the guests are built for.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";
/// Crates whose tests run on the host in `cargo xtask test`.
pub const HOST_TEST_PACKAGES: &[&str] = &[
    "ipc",
    "components",
    "guests",
    "scheduler-server",
    "pager-server",
    "test-server",
    "hypervisor-core",
    "hvctl",
    "xtask",
];
/// Crates built for [`KERNEL_TARGET`] with every boot: the core and the test
/// guests.
pub const IMAGE_PACKAGES: &[&str] = &["hypervisor-core", "guests"];
/// Server crates whose binaries are built for [`KERNEL_TARGET`] with every
/// boot, so an appliance can name them as `image = "cairn:NAME"`. The one
/// place to list a server crate once it has a binary.
pub const SERVER_PACKAGES: &[&str] = &["test-server", "pager-server", "scheduler-server"];

/// Paths of one workspace checkout.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The directory holding the workspace `Cargo.toml`.
    pub root: PathBuf,
}

impl Workspace {
    /// The workspace this runner was built from.
    pub fn locate() -> Self {
        let manifest_directory = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_directory
            .parent()
            .unwrap_or(manifest_directory)
            .to_path_buf();
        Self { root }
    }

    /// The workspace's own target directory (`CARGO_TARGET_DIR` is not
    /// honoured here: the runner builds the kernel without it).
    pub fn target_directory(&self) -> PathBuf {
        self.root.join("target")
    }

    /// Where release builds for [`KERNEL_TARGET`] land.
    pub fn kernel_images_directory(&self) -> PathBuf {
        self.target_directory().join(KERNEL_TARGET).join("release")
    }

    /// The core's ELF.
    pub fn core_elf(&self) -> PathBuf {
        self.kernel_images_directory().join("hypervisor-core")
    }

    /// Where bundles are written.
    pub fn bundle_directory(&self) -> PathBuf {
        self.target_directory().join("cairn")
    }

    /// The appliance `make run` boots.
    pub fn default_appliance(&self) -> PathBuf {
        self.root.join("appliances").join("default.toml")
    }

    /// The scenario file.
    pub fn scenario_file(&self) -> PathBuf {
        self.root.join("tests").join("scenarios.toml")
    }

    fn cargo(&self) -> Command {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(&self.root);
        command
    }

    /// Builds the core, the test guests and the servers (release,
    /// bare-metal target) into the workspace's own target directory.
    pub fn build_images(&self) -> Result<()> {
        let mut command = self.cargo();
        command
            .args(["build", "--release", "--target", KERNEL_TARGET])
            .env_remove("CARGO_TARGET_DIR");
        for package in IMAGE_PACKAGES.iter().chain(SERVER_PACKAGES) {
            command.args(["-p", package]);
        }
        let status = command
            .status()
            .context("cannot start cargo to build the core, guests and servers")?;
        if !status.success() {
            bail!("building the core, the guests and the servers failed ({status})");
        }
        if !self.core_elf().is_file() {
            bail!(
                "the build finished but the core ELF {} is missing (does hypervisor-core have a binary target?)",
                display(&self.core_elf())
            );
        }
        Ok(())
    }

    /// Runs `cargo test` for the host-testable crates; true when they pass.
    pub fn run_host_tests(&self) -> Result<bool> {
        let mut command = self.cargo();
        command.arg("test");
        for package in HOST_TEST_PACKAGES {
            command.args(["-p", package]);
        }
        let status = command.status().context("cannot start cargo test")?;
        if !status.success() {
            return Ok(false);
        }
        // The ring under loom's model of the memory model (its own target
        // directory: `--cfg loom` would otherwise rebuild everything).
        let mut loom = self.cargo();
        loom.args(["test", "--release", "-p", "ipc", "--test", "loom_ring"])
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", self.target_directory().join("loom"));
        let status = loom.status().context("cannot start the loom test")?;
        Ok(status.success())
    }
}

/// A path as shown to the user: relative to the current directory when it is
/// below it, else as it is.
pub fn display(path: &Path) -> String {
    let relative = std::env::current_dir()
        .ok()
        .and_then(|current| path.strip_prefix(current).ok().map(Path::to_path_buf));
    relative
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_root_holds_the_workspace_manifest() {
        let workspace = Workspace::locate();
        let manifest = std::fs::read_to_string(workspace.root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
        assert!(workspace
            .core_elf()
            .ends_with("target/x86_64-unknown-none/release/hypervisor-core"));
    }

    #[test]
    fn display_is_relative_below_the_current_directory() {
        let current = std::env::current_dir().unwrap();
        assert_eq!(display(&current.join("a").join("b.toml")), "a/b.toml");
        assert_eq!(display(Path::new("/elsewhere/x")), "/elsewhere/x");
    }
}

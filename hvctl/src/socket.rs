//! Where the control socket is: `--socket PATH`, else `$CAIRN_CONTROL`,
//! else [`DEFAULT_SOCKET`] under the cairn workspace that holds the current
//! directory (the path `make run` gives QEMU).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::Error;

/// The environment variable naming the socket.
pub const ENVIRONMENT_VARIABLE: &str = "CAIRN_CONTROL";
/// The socket of `make run`, relative to the workspace root.
pub const DEFAULT_SOCKET: &str = "target/cairn/control.sock";

/// The socket to use. `current` is the directory to search upward from.
pub fn resolve(
    explicit: Option<&Path>,
    environment: Option<OsString>,
    current: &Path,
) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = environment.filter(|path| !path.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let root = workspace_root(current).ok_or_else(|| {
        Error::Socket(format!(
            "{} is not inside the cairn workspace: give --socket PATH or set {ENVIRONMENT_VARIABLE}",
            current.display()
        ))
    })?;
    Ok(root.join(DEFAULT_SOCKET))
}

/// The nearest directory at or above `start` that is cairn's workspace
/// root: a `Cargo.toml` with a `[workspace]` table beside `hypervisor-core/`.
pub fn workspace_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|directory| {
            directory.join("hypervisor-core").is_dir()
                && std::fs::read_to_string(directory.join("Cargo.toml"))
                    .is_ok_and(|manifest| manifest.contains("[workspace]"))
        })
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    #[test]
    fn the_option_wins_then_the_environment_then_the_workspace() {
        let inside = workspace().join("hvctl").join("src");
        assert_eq!(
            resolve(Some(Path::new("/a.sock")), Some("/b.sock".into()), &inside).unwrap(),
            PathBuf::from("/a.sock")
        );
        assert_eq!(
            resolve(None, Some("/b.sock".into()), &inside).unwrap(),
            PathBuf::from("/b.sock")
        );
        assert_eq!(
            resolve(None, Some(OsString::new()), &inside).unwrap(),
            workspace().join("target/cairn/control.sock")
        );
    }

    #[test]
    fn outside_the_workspace_the_error_says_what_to_do() {
        let error = resolve(None, None, Path::new("/")).unwrap_err().to_string();
        assert!(error.contains("--socket"), "{error}");
        assert!(error.contains("CAIRN_CONTROL"), "{error}");
    }
}

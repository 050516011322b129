//! # xtask — cairn's host-side runner
//!
//! Runs on the Linux host as `cargo xtask <command>` (see [`cli::USAGE`]). It
//! reads an appliance file (TOML) into the boot bundle the core receives as
//! its one boot module, builds the core and the test guests, boots them in
//! QEMU (TCG, AMD SVM), decodes the core's defmt stream live, and judges the
//! run by QEMU's isa-debug-exit status, expected and forbidden lines and a
//! timeout. It also runs the scenario suite, the benchmark and the set-up of
//! prerequisites.
//!
//! Principles: every error in a user's file names the file and the key; QEMU
//! never outlives the runner; exit status 0 from QEMU (a triple fault) is
//! never success.
//!
//! Not in this crate: anything that runs on the target (core, servers,
//! guests), and the wire formats themselves, which live in `ipc`.

/// Prints a line to stdout like `println!`, but a closed stdout (`| head`,
/// a reader that quit) is ignored instead of aborting the runner while QEMU
/// still has to be stopped and reaped.
macro_rules! say {
    ($($argument:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($argument)*);
    }};
}

mod bench;
mod bundle;
mod campaign;
mod cli;
mod commands;
mod config;
mod control;
mod decode;
mod interrupt;
mod qemu;
mod scenario;
mod setup;
mod table;
mod workspace;

use std::process::ExitCode;

use cli::Command;
use workspace::Workspace;

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&arguments) {
        Ok(command) => command,
        Err(problem) => {
            eprintln!("xtask: {problem}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    if let Err(error) = interrupt::install() {
        eprintln!("xtask: {error:#}");
        return ExitCode::FAILURE;
    }
    let workspace = Workspace::locate();
    let result = match command {
        Command::Help => {
            say!("{}", cli::USAGE.trim_end());
            Ok(true)
        }
        Command::Run {
            config,
            duration,
            machine,
            swap_mib,
        } => commands::run(&workspace, config, duration, machine, swap_mib),
        Command::Scenario { name } => commands::scenario(&workspace, name.as_deref()),
        Command::Test => commands::test(&workspace),
        Command::Campaign(settings) => commands::campaign(&workspace, &settings),
        Command::Bench => commands::bench(&workspace),
        Command::Setup => commands::setup(&workspace),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! `hvctl`: see the crate documentation and `hvctl help`.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use hvctl::cli::{self, Action};
use hvctl::{client::Client, execute, socket, Error, DEFAULT_TIMEOUT};

fn run() -> Result<String, Error> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let invocation = cli::parse(&arguments)?;
    if invocation.action == Action::Help {
        return Ok(cli::USAGE.to_owned());
    }
    let current = std::env::current_dir()
        .map_err(|error| Error::Socket(format!("cannot read the current directory: {error}")))?;
    let socket = socket::resolve(
        invocation.socket.as_deref(),
        std::env::var_os(socket::ENVIRONMENT_VARIABLE),
        &current,
    )?;
    let mut client = Client::connect(&socket, DEFAULT_TIMEOUT)?;
    execute(&invocation.action, &mut client)
}

fn main() -> ExitCode {
    match run() {
        Ok(text) => {
            // A closed stdout (`| head`) is not an error of the command.
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hvctl: {error}");
            if let Error::Usage(_) = error {
                eprintln!("(`hvctl help` shows the usage)");
            }
            ExitCode::from(error.exit_code())
        }
    }
}

//! The command line: `cargo xtask <command> [options]`, parsed by hand.

use std::path::PathBuf;
use std::time::Duration;

use crate::qemu::MachineType;
use crate::scenario::SWAP_MIB_MAX;

/// The usage text.
pub const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  run [--config PATH] [--duration SECS] [--machine microvm|pc] [--swap-mib MIB]
            build, boot an appliance (default appliances/default.toml) and
            stream its log; stops on Ctrl-C or after SECS seconds. The core's
            control port (COM2) is the socket target/cairn/control.sock,
            where `hvctl` (cargo run -p hvctl -- COMMAND) finds it. An
            appliance with a pager server gets a fresh swap disk,
            target/run/swap.img, of MIB MiB (default 64; 0: none; microvm only)
  scenario [NAME]
            without NAME: list the scenarios; with NAME: run and judge it
            (each boot gets a control socket of its own, printed as
            `xtask: control socket: PATH`)
  test      host unit tests, then every scenario; ends with `N passed, M failed`
  bench     boot appliances/bench.toml in bench mode, print the figures and
            write target/bench.json
  setup     check and install the prerequisites (Rust target, QEMU)
  help      this text
";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `run`.
    Run {
        /// `--config`.
        config: Option<PathBuf>,
        /// `--duration`.
        duration: Option<Duration>,
        /// `--machine`.
        machine: MachineType,
        /// `--swap-mib` (None: the default).
        swap_mib: Option<u32>,
    },
    /// `scenario [NAME]`.
    Scenario {
        /// The scenario to run; `None` lists them.
        name: Option<String>,
    },
    /// `test`.
    Test,
    /// `bench`.
    Bench,
    /// `setup`.
    Setup,
    /// `help`, `-h`, `--help`.
    Help,
}

/// Parses the arguments after the program name.
pub fn parse(arguments: &[String]) -> Result<Command, String> {
    let Some((command, rest)) = arguments.split_first() else {
        return Err("no command given".to_owned());
    };
    let no_more = |rest: &[String]| match rest.first() {
        Some(extra) => Err(format!("unexpected argument `{extra}` for `{command}`")),
        None => Ok(()),
    };
    match command.as_str() {
        "run" => parse_run(rest),
        "scenario" => match rest {
            [] => Ok(Command::Scenario { name: None }),
            [name] if !name.starts_with('-') => Ok(Command::Scenario {
                name: Some(name.clone()),
            }),
            [other, ..] => Err(format!(
                "unexpected argument `{other}` for `scenario` (give one NAME)"
            )),
        },
        "test" => no_more(rest).map(|()| Command::Test),
        "bench" => no_more(rest).map(|()| Command::Bench),
        "setup" => no_more(rest).map(|()| Command::Setup),
        "help" | "-h" | "--help" => Ok(Command::Help),
        other => Err(format!("unknown command `{other}`")),
    }
}

fn parse_run(arguments: &[String]) -> Result<Command, String> {
    let mut config = None;
    let mut duration = None;
    let mut machine = MachineType::default();
    let mut swap_mib = None;
    let mut remaining = arguments.iter();
    while let Some(argument) = remaining.next() {
        let (option, inline_value) = match argument.split_once('=') {
            Some((option, value)) if option.starts_with("--") => (option, Some(value.to_owned())),
            _ => (argument.as_str(), None),
        };
        let mut value = || {
            inline_value
                .clone()
                .or_else(|| remaining.next().cloned())
                .filter(|value| !value.is_empty())
                .ok_or_else(|| format!("`{option}` needs a value"))
        };
        match option {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--duration" => {
                let text = value()?;
                let seconds: f64 = text
                    .parse()
                    .ok()
                    .filter(|seconds: &f64| seconds.is_finite() && *seconds > 0.0)
                    .ok_or_else(|| {
                        format!("--duration: `{text}` is not a positive number of seconds")
                    })?;
                duration = Some(Duration::from_secs_f64(seconds));
            }
            "--machine" => {
                machine = value()?
                    .parse()
                    .map_err(|error| format!("--machine: {error}"))?
            }
            "--swap-mib" => {
                let text = value()?;
                swap_mib = Some(
                    text.parse::<u32>()
                        .ok()
                        .filter(|mib| *mib <= SWAP_MIB_MAX)
                        .ok_or_else(|| {
                            format!("--swap-mib: `{text}` is not a size of 0..={SWAP_MIB_MAX} MiB")
                        })?,
                );
            }
            other => return Err(format!("unknown option `{other}` for `run`")),
        }
    }
    Ok(Command::Run {
        config,
        duration,
        machine,
        swap_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn run_takes_its_options_in_both_spellings() {
        assert_eq!(
            parse(&arguments("run")),
            Ok(Command::Run {
                config: None,
                duration: None,
                machine: MachineType::Microvm,
                swap_mib: None,
            })
        );
        assert_eq!(
            parse(&arguments(
                "run --config a.toml --duration 2.5 --machine pc"
            )),
            Ok(Command::Run {
                config: Some("a.toml".into()),
                duration: Some(Duration::from_millis(2500)),
                machine: MachineType::Pc,
                swap_mib: None,
            })
        );
        assert_eq!(
            parse(&arguments("run --config=b.toml --duration=3 --swap-mib 16")),
            Ok(Command::Run {
                config: Some("b.toml".into()),
                duration: Some(Duration::from_secs(3)),
                machine: MachineType::Microvm,
                swap_mib: Some(16),
            })
        );
        assert_eq!(
            parse(&arguments("run --swap-mib=0")),
            Ok(Command::Run {
                config: None,
                duration: None,
                machine: MachineType::Microvm,
                swap_mib: Some(0),
            })
        );
    }

    #[test]
    fn bad_arguments_are_explained() {
        assert!(parse(&[]).is_err());
        assert!(parse(&arguments("fly")).unwrap_err().contains("fly"));
        assert!(parse(&arguments("run --duration"))
            .unwrap_err()
            .contains("--duration"));
        assert!(parse(&arguments("run --duration 0")).is_err());
        assert!(parse(&arguments("run --duration=")).is_err());
        assert!(parse(&arguments("run --machine q35"))
            .unwrap_err()
            .contains("q35"));
        assert!(parse(&arguments("run --verbose"))
            .unwrap_err()
            .contains("--verbose"));
        assert!(parse(&arguments("run --swap-mib lots"))
            .unwrap_err()
            .contains("--swap-mib"));
        assert!(parse(&arguments("run --swap-mib 65537")).is_err());
        assert!(parse(&arguments("test extra")).is_err());
        assert!(parse(&arguments("scenario a b")).is_err());
    }

    #[test]
    fn scenario_lists_or_names_one() {
        assert_eq!(
            parse(&arguments("scenario")),
            Ok(Command::Scenario { name: None })
        );
        assert_eq!(
            parse(&arguments("scenario hello")),
            Ok(Command::Scenario {
                name: Some("hello".into())
            })
        );
        assert_eq!(parse(&arguments("--help")), Ok(Command::Help));
    }
}

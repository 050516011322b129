//! The command line: `cargo xtask <command> [options]`, parsed by hand.

use std::path::PathBuf;
use std::time::Duration;

use crate::campaign;
use crate::config::{self, KILLABLE_SERVER_KINDS};
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
  campaign [--seed S] [--kills K] [--servers scheduler,pager] [--interval-ms M]
            a seeded fault campaign: writes target/campaign/fault-campaign.toml
            (memhog and two spinners, weights 1:2, under the core's injector;
            default seed 1, 50 kills of both servers about every 100 ms),
            boots it with a swap disk, prints the report and fails unless no
            page was lost, every kill was made and answered, every guest
            progressed after the last kill and the shares held
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
    /// `campaign`.
    Campaign(campaign::Settings),
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
        "campaign" => parse_campaign(rest),
        "bench" => no_more(rest).map(|()| Command::Bench),
        "setup" => no_more(rest).map(|()| Command::Setup),
        "help" | "-h" | "--help" => Ok(Command::Help),
        other => Err(format!("unknown command `{other}`")),
    }
}

/// Splits `--option=value`, or takes `--option`'s value from the next argument.
fn option_and_value<'a>(
    argument: &'a str,
    remaining: &mut std::slice::Iter<'_, String>,
) -> (&'a str, Result<String, String>) {
    let (option, value) = match argument.split_once('=') {
        Some((option, value)) if option.starts_with("--") => (option, Some(value.to_owned())),
        _ => (argument, remaining.next().cloned()),
    };
    let value = value
        .filter(|value| !value.is_empty())
        .ok_or_else(|| format!("`{option}` needs a value"));
    (option, value)
}

fn parse_campaign(arguments: &[String]) -> Result<Command, String> {
    let mut settings = campaign::Settings::default();
    let mut remaining = arguments.iter();
    while let Some(argument) = remaining.next() {
        if !argument.starts_with("--") {
            return Err(format!("unexpected argument `{argument}` for `campaign`"));
        }
        let (option, value) = option_and_value(argument, &mut remaining);
        let known = ["--seed", "--kills", "--servers", "--interval-ms"];
        if !known.contains(&option) {
            return Err(format!("unknown option `{option}` for `campaign`"));
        }
        let text = value?;
        match option {
            "--seed" => {
                settings.seed = text
                    .parse::<u64>()
                    .ok()
                    .filter(|seed| i64::try_from(*seed).is_ok())
                    .ok_or_else(|| format!("--seed: `{text}` is not a number of 0..={}", i64::MAX))?;
            }
            "--kills" => {
                settings.kills = text
                    .parse::<u32>()
                    .ok()
                    .filter(|kills| (1..=ipc::boot::MAX_FAULT_KILLS).contains(kills))
                    .ok_or_else(|| {
                        format!("--kills: `{text}` is not a number of 1..={}", ipc::boot::MAX_FAULT_KILLS)
                    })?;
            }
            "--interval-ms" => {
                settings.interval_ms = text
                    .parse::<u32>()
                    .ok()
                    .filter(|interval| config::FAULT_INTERVAL_RANGE_MS.contains(interval))
                    .ok_or_else(|| {
                        let range = config::FAULT_INTERVAL_RANGE_MS;
                        format!("--interval-ms: `{text}` is not a number of {}..={} ms", range.start(), range.end())
                    })?;
            }
            _ => {
                let mut servers = Vec::new();
                for name in text.split(',').map(str::trim) {
                    let kind = KILLABLE_SERVER_KINDS
                        .into_iter()
                        .find(|kind| config::kind_name(*kind) == name)
                        .ok_or_else(|| format!("--servers: `{name}` is not scheduler or pager"))?;
                    if servers.contains(&kind) {
                        return Err(format!("--servers: `{name}` is listed twice"));
                    }
                    servers.push(kind);
                }
                settings.servers = servers;
            }
        }
    }
    settings.check().map_err(|problem| format!("campaign: {problem}"))?;
    Ok(Command::Campaign(settings))
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
    fn campaign_takes_its_options_with_defaults() {
        use ipc::server::ServerKind;
        assert_eq!(parse(&arguments("campaign")), Ok(Command::Campaign(campaign::Settings::default())));
        assert_eq!(
            parse(&arguments("campaign --seed 42 --kills=200 --servers pager --interval-ms 20")),
            Ok(Command::Campaign(campaign::Settings {
                seed: 42,
                kills: 200,
                servers: vec![ServerKind::Pager],
                interval_ms: 20,
            }))
        );
        let Ok(Command::Campaign(settings)) = parse(&arguments("campaign --servers=pager,scheduler")) else {
            panic!("a campaign");
        };
        assert_eq!(settings.servers, vec![ServerKind::Pager, ServerKind::Scheduler]);
        for (bad, named) in [
            ("campaign --seed -1", "--seed"),
            ("campaign --seed 9223372036854775808", "--seed"),
            ("campaign --kills 0", "--kills"),
            ("campaign --kills 100001", "--kills"),
            ("campaign --kills", "--kills"),
            ("campaign --kills=", "--kills"),
            ("campaign --interval-ms 0", "--interval-ms"),
            ("campaign --servers test", "test"),
            ("campaign --servers pager,pager", "twice"),
            ("campaign --fast", "--fast"),
            ("campaign 5", "`5`"),
            ("campaign --kills 100000 --interval-ms 60000", "too long"),
        ] {
            let problem = parse(&arguments(bad)).unwrap_err();
            assert!(problem.contains(named), "{bad}: {problem}");
        }
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

//! The command line, parsed by hand: `hvctl [--socket PATH] COMMAND ...`,
//! with `xl sched-credit`'s options where they apply. Every error names the
//! option or argument it is about; argument ranges are checked with
//! [`Command::validate`](ipc::control::Command::validate), the check the
//! core runs too.

use std::path::PathBuf;

use ipc::control::{self, Command};
use ipc::server::ServerKind;

use crate::Error;

/// The usage text.
pub const USAGE: &str = "\
usage: hvctl [--socket PATH] COMMAND [OPTIONS]

commands:
  list                          domains and servers
  sched-credit [-d DOM] [-w WEIGHT] [-c CAP]
                                show (no -w/-c) or set a domain's credit weight
                                (1..65535) and cap (% of one pCPU, 0 = none)
  sched-credit -s [-t TSLICE_MS] [-r RATELIMIT_US]
                                show or set the timeslice (1..1000 ms) and the
                                ratelimit (0 = off, or 100..500000 us, <= tslice)
  halt-poll [-d DOM] [--max NS]  show or set the halt-poll max window, global
                                or per domain (0..1000000000 ns, 0 = off)
  stats [-d DOM] [--histograms]  per vCPU: run time, credit, priority, state,
                                halt-poll counters (and histograms); per
                                domain: paging target, footprint, pages
                                out/in, evict failures, free swap slots and
                                the page-in latency histogram (us)
  mem-set DOM SIZE              set a domain's resident memory target, 2 MiB
                                up to its memory, in 4 KiB steps (SIZE like
                                xl: a number with b, k (default), m, g or t)
  kill|hang|garble SERVER       fault injection: scheduler, pager or test
  help                          this text

DOM is a domain name or numeric id. The socket is --socket, else
$CAIRN_CONTROL, else target/cairn/control.sock of the cairn workspace
around the current directory (the one `make run` opens).

long options: --domain, --weight, --cap, --schedparam, --tslice_ms,
--ratelimit_us (also as --option=VALUE)
";

/// A domain as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainReference {
    /// A numeric id.
    Id(u16),
    /// A name.
    Name(String),
}

impl DomainReference {
    /// Like `xl`: all digits is an id, anything else a name.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.is_empty() {
            return Err(Error::Usage("the domain must not be empty".to_owned()));
        }
        if text.bytes().all(|byte| byte.is_ascii_digit()) {
            return text.parse().map(Self::Id).map_err(|_| {
                Error::Domain(format!(
                    "no domain has id {text} (ids are below {})",
                    control::MAX_DOMAINS
                ))
            });
        }
        Ok(Self::Name(text.to_owned()))
    }
}

/// Which fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill`.
    Kill,
    /// `hang`.
    Hang,
    /// `garble`.
    Garble,
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `list`.
    List,
    /// `sched-credit [-d DOM] [-w WEIGHT] [-c CAP]`.
    SchedCredit {
        /// `-d`.
        domain: Option<DomainReference>,
        /// `-w`.
        weight: Option<u32>,
        /// `-c`.
        cap: Option<u32>,
    },
    /// `sched-credit -s [-t TSLICE_MS] [-r RATELIMIT_US]`.
    SchedGlobal {
        /// `-t`.
        timeslice_ms: Option<u32>,
        /// `-r`.
        ratelimit_us: Option<u32>,
    },
    /// `halt-poll [-d DOM] [--max NS]`.
    HaltPoll {
        /// `-d`.
        domain: Option<DomainReference>,
        /// `--max`.
        max_ns: Option<u64>,
    },
    /// `stats [-d DOM] [--histograms]`.
    Stats {
        /// `-d`.
        domain: Option<DomainReference>,
        /// `--histograms`.
        histograms: bool,
    },
    /// `mem-set DOM SIZE`.
    MemSet {
        /// The domain.
        domain: DomainReference,
        /// The target, bytes.
        bytes: u64,
    },
    /// `kill|hang|garble SERVER`.
    Fault {
        /// Which fault.
        fault: Fault,
        /// Which server.
        server: ServerKind,
    },
    /// `help`, `-h`, `--help`.
    Help,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// The command.
    pub action: Action,
}

fn usage(message: impl Into<String>) -> Error {
    Error::Usage(message.into())
}

/// Parses the arguments after the program name.
pub fn parse(arguments: &[String]) -> Result<Invocation, Error> {
    let mut socket = None;
    let mut rest = arguments;
    loop {
        match rest.first().map(String::as_str) {
            Some("--socket") => {
                let path = rest
                    .get(1)
                    .filter(|path| !path.is_empty())
                    .ok_or_else(|| usage("--socket needs a PATH"))?;
                socket = Some(PathBuf::from(path));
                rest = &rest[2..];
            }
            Some(option) if option.starts_with("--socket=") => {
                let path = &option["--socket=".len()..];
                if path.is_empty() {
                    return Err(usage("--socket needs a PATH"));
                }
                socket = Some(PathBuf::from(path));
                rest = &rest[1..];
            }
            _ => break,
        }
    }
    let Some((command, options)) = rest.split_first() else {
        return Err(usage("no command given"));
    };
    let action = match command.as_str() {
        "list" => no_more(command, options).map(|()| Action::List)?,
        "sched-credit" => parse_sched_credit(options)?,
        "halt-poll" => parse_halt_poll(options)?,
        "stats" => parse_stats(options)?,
        "mem-set" => parse_mem_set(options)?,
        "kill" | "hang" | "garble" => parse_fault(command, options)?,
        "help" | "-h" | "--help" => Action::Help,
        other => return Err(usage(format!("unknown command `{other}`"))),
    };
    probe(&action)?;
    Ok(Invocation { socket, action })
}

fn no_more(command: &str, options: &[String]) -> Result<(), Error> {
    match options.first() {
        Some(extra) => Err(usage(format!(
            "unexpected argument `{extra}` for `{command}`"
        ))),
        None => Ok(()),
    }
}

/// Walks `-x VALUE`, `--long VALUE` and `--long=VALUE` options; `flags`
/// take no value. Calls `take(name, value)` with the canonical name.
struct Options<'a> {
    command: &'static str,
    items: std::slice::Iter<'a, String>,
}

/// One option: its canonical name and its value (`None` for a flag).
type Parsed = (&'static str, Option<String>);

impl<'a> Options<'a> {
    fn new(command: &'static str, options: &'a [String]) -> Self {
        Self {
            command,
            items: options.iter(),
        }
    }

    /// `table`: (short, long, canonical name, takes a value).
    fn next(
        &mut self,
        table: &[(&str, &str, &'static str, bool)],
    ) -> Option<Result<Parsed, Error>> {
        let argument = self.items.next()?;
        let (spelled, inline) = match argument.split_once('=') {
            Some((option, value)) if option.starts_with("--") => (option, Some(value.to_owned())),
            _ => (argument.as_str(), None),
        };
        let Some(&(_, _, name, takes_value)) = table
            .iter()
            .find(|(short, long, _, _)| spelled == *short || spelled == *long)
        else {
            return Some(Err(usage(format!(
                "unknown option `{argument}` for `{}`",
                self.command
            ))));
        };
        if !takes_value {
            return Some(match inline {
                Some(_) => Err(usage(format!("{spelled} takes no value"))),
                None => Ok((name, None)),
            });
        }
        let value = inline
            .or_else(|| self.items.next().cloned())
            .filter(|value| !value.is_empty());
        Some(match value {
            Some(value) => Ok((name, Some(value))),
            None => Err(usage(format!("{spelled} needs a value"))),
        })
    }
}

fn number<T: std::str::FromStr>(option: &str, value: &str, what: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|_| usage(format!("{option}: `{value}` is not {what}")))
}

fn set_once<T>(slot: &mut Option<T>, option: &str, value: T) -> Result<(), Error> {
    if slot.replace(value).is_some() {
        return Err(usage(format!("{option} given twice")));
    }
    Ok(())
}

fn value(parsed: Option<String>) -> String {
    parsed.unwrap_or_default()
}

fn parse_sched_credit(options: &[String]) -> Result<Action, Error> {
    const TABLE: &[(&str, &str, &str, bool)] = &[
        ("-d", "--domain", "-d", true),
        ("-w", "--weight", "-w", true),
        ("-c", "--cap", "-c", true),
        ("-s", "--schedparam", "-s", false),
        ("-t", "--tslice_ms", "-t", true),
        ("-r", "--ratelimit_us", "-r", true),
    ];
    let (mut domain, mut weight, mut cap) = (None, None, None);
    let (mut global, mut timeslice_ms, mut ratelimit_us) = (false, None, None);
    let mut walker = Options::new("sched-credit", options);
    while let Some(item) = walker.next(TABLE) {
        let (name, parsed) = item?;
        match name {
            "-d" => set_once(&mut domain, "-d", DomainReference::parse(&value(parsed))?)?,
            "-w" => set_once(
                &mut weight,
                "-w",
                number("-w (weight)", &value(parsed), "a weight (1..65535)")?,
            )?,
            "-c" => set_once(
                &mut cap,
                "-c",
                number("-c (cap)", &value(parsed), "a cap in percent (0 = none)")?,
            )?,
            "-s" => global = true,
            "-t" => set_once(
                &mut timeslice_ms,
                "-t",
                number(
                    "-t (tslice_ms)",
                    &value(parsed),
                    "a timeslice in ms (1..1000)",
                )?,
            )?,
            _ => set_once(
                &mut ratelimit_us,
                "-r",
                number(
                    "-r (ratelimit_us)",
                    &value(parsed),
                    "a ratelimit in us (0, or 100..500000)",
                )?,
            )?,
        }
    }
    // xl's rules (tools/xl/xl_sched.c, main_sched_credit).
    if global && (domain.is_some() || weight.is_some() || cap.is_some()) {
        return Err(usage(
            "-s (scheduler parameters) cannot be combined with -d, -w or -c",
        ));
    }
    if domain.is_none() && (weight.is_some() || cap.is_some()) {
        return Err(usage("-w and -c need a domain: give -d DOM"));
    }
    if !global && (timeslice_ms.is_some() || ratelimit_us.is_some()) {
        return Err(usage("-t and -r set scheduler parameters: give -s too"));
    }
    Ok(if global {
        Action::SchedGlobal {
            timeslice_ms,
            ratelimit_us,
        }
    } else {
        Action::SchedCredit {
            domain,
            weight,
            cap,
        }
    })
}

fn parse_halt_poll(options: &[String]) -> Result<Action, Error> {
    const TABLE: &[(&str, &str, &str, bool)] = &[
        ("-d", "--domain", "-d", true),
        ("-m", "--max", "--max", true),
    ];
    let (mut domain, mut max_ns) = (None, None);
    let mut walker = Options::new("halt-poll", options);
    while let Some(item) = walker.next(TABLE) {
        let (name, parsed) = item?;
        match name {
            "-d" => set_once(&mut domain, "-d", DomainReference::parse(&value(parsed))?)?,
            _ => set_once(
                &mut max_ns,
                "--max",
                number("--max (max_ns)", &value(parsed), "a number of ns")?,
            )?,
        }
    }
    Ok(Action::HaltPoll { domain, max_ns })
}

fn parse_stats(options: &[String]) -> Result<Action, Error> {
    const TABLE: &[(&str, &str, &str, bool)] = &[
        ("-d", "--domain", "-d", true),
        ("-H", "--histograms", "--histograms", false),
    ];
    let (mut domain, mut histograms) = (None, false);
    let mut walker = Options::new("stats", options);
    while let Some(item) = walker.next(TABLE) {
        let (name, parsed) = item?;
        match name {
            "-d" => set_once(&mut domain, "-d", DomainReference::parse(&value(parsed))?)?,
            _ => histograms = true,
        }
    }
    Ok(Action::Stats { domain, histograms })
}

fn parse_mem_set(options: &[String]) -> Result<Action, Error> {
    let [domain, size] = options else {
        return Err(usage("mem-set needs a domain and a size: mem-set DOM SIZE"));
    };
    Ok(Action::MemSet {
        domain: DomainReference::parse(domain)?,
        bytes: parse_size(size)?,
    })
}

/// A memory size as `xl mem-set` reads it: a number and an optional suffix
/// `b`, `k` (the default), `m`, `g` or `t`, in either case.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let bad = || {
        usage(format!(
            "SIZE: `{text}` is not a size (a number with b, k, m, g or t; k by default)"
        ))
    };
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let count: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "b" => 0,
        "" | "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    count.checked_mul(1 << shift).ok_or_else(bad)
}

fn parse_fault(command: &str, options: &[String]) -> Result<Action, Error> {
    let fault = match command {
        "kill" => Fault::Kill,
        "hang" => Fault::Hang,
        _ => Fault::Garble,
    };
    let [server] = options else {
        return Err(usage(format!(
            "{command} needs one server: scheduler, pager or test"
        )));
    };
    let server = control::parse_server_kind(server).ok_or_else(|| {
        usage(format!(
            "{command}: `{server}` is not a server (scheduler, pager or test)"
        ))
    })?;
    Ok(Action::Fault { fault, server })
}

/// Checks the ranges of the arguments before anything is sent, with the
/// protocol's own validation (the domain is resolved later, so a stand-in
/// id is used).
fn probe(action: &Action) -> Result<(), Error> {
    let commands: Vec<Command> = match *action {
        Action::SchedCredit { weight, cap, .. } => vec![Command::SchedCreditSet {
            domain: 0,
            weight,
            cap,
        }],
        Action::SchedGlobal {
            timeslice_ms,
            ratelimit_us,
        } => vec![Command::SchedGlobalSet {
            timeslice_ms,
            ratelimit_us,
        }],
        Action::HaltPoll {
            max_ns: Some(max_ns),
            ..
        } => vec![Command::HaltPollSet {
            domain: None,
            max_ns,
        }],
        Action::MemSet { bytes, .. } => vec![Command::MemSet { domain: 0, bytes }],
        _ => Vec::new(),
    };
    commands
        .iter()
        .try_for_each(Command::validate)
        .map_err(Error::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::control::{ControlError, Field, Reason};

    fn arguments(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    fn action(text: &str) -> Action {
        parse(&arguments(text))
            .unwrap_or_else(|error| panic!("{text}: {error}"))
            .action
    }

    fn error(text: &str) -> String {
        parse(&arguments(text))
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn commands_parse() {
        assert_eq!(action("list"), Action::List);
        assert_eq!(
            action("sched-credit"),
            Action::SchedCredit {
                domain: None,
                weight: None,
                cap: None
            }
        );
        assert_eq!(
            action("sched-credit -d spinner -w 512 -c 50"),
            Action::SchedCredit {
                domain: Some(DomainReference::Name("spinner".into())),
                weight: Some(512),
                cap: Some(50)
            }
        );
        assert_eq!(
            action("sched-credit --domain=3 --cap 0"),
            Action::SchedCredit {
                domain: Some(DomainReference::Id(3)),
                weight: None,
                cap: Some(0)
            }
        );
        assert_eq!(
            action("sched-credit -s"),
            Action::SchedGlobal {
                timeslice_ms: None,
                ratelimit_us: None
            }
        );
        assert_eq!(
            action("sched-credit -s -t 10 --ratelimit_us=0"),
            Action::SchedGlobal {
                timeslice_ms: Some(10),
                ratelimit_us: Some(0)
            }
        );
        assert_eq!(
            action("halt-poll -d 0 --max 50000"),
            Action::HaltPoll {
                domain: Some(DomainReference::Id(0)),
                max_ns: Some(50_000)
            }
        );
        assert_eq!(
            action("halt-poll"),
            Action::HaltPoll {
                domain: None,
                max_ns: None
            }
        );
        assert_eq!(
            action("stats --histograms -d hello"),
            Action::Stats {
                domain: Some(DomainReference::Name("hello".into())),
                histograms: true
            }
        );
        assert_eq!(
            action("mem-set hello 8m"),
            Action::MemSet {
                domain: DomainReference::Name("hello".into()),
                bytes: 8 << 20
            }
        );
        assert_eq!(
            action("kill scheduler"),
            Action::Fault {
                fault: Fault::Kill,
                server: ServerKind::Scheduler
            }
        );
        assert_eq!(
            action("garble pager"),
            Action::Fault {
                fault: Fault::Garble,
                server: ServerKind::Pager
            }
        );
        assert_eq!(action("--help"), Action::Help);
    }

    #[test]
    fn the_socket_option_comes_first() {
        let invocation = parse(&arguments("--socket /tmp/x.sock list")).unwrap();
        assert_eq!(invocation.socket, Some(PathBuf::from("/tmp/x.sock")));
        let invocation = parse(&arguments("--socket=/tmp/y.sock stats")).unwrap();
        assert_eq!(invocation.socket, Some(PathBuf::from("/tmp/y.sock")));
        assert!(error("--socket").contains("--socket"));
        assert!(error("list --socket /x").contains("--socket"));
    }

    #[test]
    fn range_errors_name_the_field_before_anything_is_sent() {
        let invalid = parse(&arguments("sched-credit -d a -w 0")).unwrap_err();
        assert_eq!(
            invalid,
            Error::Invalid(ControlError::InvalidArgument {
                field: Field::Weight,
                reason: Reason::OutOfRange {
                    value: 0,
                    min: 1,
                    max: 65535
                }
            })
        );
        assert_eq!(invalid.to_string(), "weight 0 is out of range 1..=65535");
        assert!(error("sched-credit -d a -w 65536").starts_with("weight 65536"));
        assert!(error("sched-credit -d a -c 801").starts_with("cap 801"));
        assert!(error("sched-credit -s -t 0").starts_with("tslice_ms 0"));
        assert!(error("sched-credit -s -t 1001").starts_with("tslice_ms 1001"));
        assert!(error("sched-credit -s -r 99").starts_with("ratelimit_us 99"));
        assert!(error("sched-credit -s -r 500001").starts_with("ratelimit_us 500001"));
        assert!(error("sched-credit -s -t 1 -r 1001").starts_with("ratelimit_us 1001"));
        assert!(error("halt-poll --max 1000000001").starts_with("max_ns 1000000001"));
        assert!(error("mem-set a 1k").starts_with("memory bytes 1024"));
    }

    #[test]
    fn syntax_errors_name_the_option() {
        assert!(error("").contains("no command"));
        assert!(error("fly").contains("fly"));
        assert!(error("list extra").contains("extra"));
        assert!(error("sched-credit -w").contains("-w needs a value"));
        assert!(error("sched-credit -d a -w lots").contains("-w (weight): `lots`"));
        assert!(error("sched-credit -d a -c -1").contains("-c (cap): `-1`"));
        assert!(error("sched-credit -s -t x").contains("-t (tslice_ms)"));
        assert!(error("sched-credit -s -r x").contains("-r (ratelimit_us)"));
        assert!(error("sched-credit -w 5").contains("-d DOM"));
        assert!(error("sched-credit -s -d a").contains("-s"));
        assert!(error("sched-credit -t 5").contains("-s"));
        assert!(error("sched-credit -d a -d b").contains("-d given twice"));
        assert!(error("sched-credit --verbose").contains("--verbose"));
        assert!(error("sched-credit --schedparam=1").contains("takes no value"));
        assert!(error("halt-poll --max=").contains("--max needs a value"));
        assert!(error("halt-poll --max 1e3").contains("--max (max_ns)"));
        assert!(error("stats -d").contains("-d needs a value"));
        assert!(error("mem-set a").contains("mem-set DOM SIZE"));
        assert!(error("mem-set a 5x").contains("SIZE: `5x`"));
        assert!(error("kill").contains("scheduler, pager or test"));
        assert!(error("hang cpu").contains("`cpu`"));
        assert!(error("stats -d 70000").contains("no domain has id"));
    }

    #[test]
    fn sizes_read_like_xl() {
        assert_eq!(parse_size("4096b").unwrap(), 4096);
        assert_eq!(parse_size("2048").unwrap(), 2048 << 10);
        assert_eq!(parse_size("2048K").unwrap(), 2048 << 10);
        assert_eq!(parse_size("16m").unwrap(), 16 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert!(parse_size("").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("20000000000t").is_err());
    }
}

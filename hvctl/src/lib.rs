//! # hvctl — control a running cairn from the host
//!
//! `hvctl` talks to the core over the control port, COM2, which the runner
//! (`make run`, `cargo xtask run`) exposes as the UNIX socket
//! `target/cairn/control.sock`. The protocol, its framing and its
//! validation are [`ipc::control`]; this crate adds the command line
//! ([`cli`], with `xl sched-credit`'s options where they apply), the socket
//! client ([`client`]), where the socket is ([`socket`]) and the tables
//! ([`format`](mod@format)). The runner's scenario steps use it as a library
//! ([`run_words`]).
//!
//! Principles: every argument is checked with the protocol's own
//! validation before anything is sent, and every error says which argument
//! and why; a core that does not answer is a clear error after a timeout,
//! never a hang; nothing here formats what the core could not say (the
//! core sends numbers, `hvctl` words them).
//!
//! Not in this crate: the protocol itself (`ipc`), starting QEMU (`xtask`).
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod format;
pub mod socket;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipc::control::{self, Command, ControlError, DomainCredit, DomainInfo, Reply, ServerInfo};
use ipc::messages::scheduler::Shape;

use cli::{Action, DomainReference, Fault};

/// How long `hvctl` waits for each answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a command did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The command line is wrong.
    Usage(String),
    /// An argument is out of range; found before anything was sent.
    Invalid(ControlError),
    /// The core refused the request; nothing changed.
    Refused(ControlError),
    /// A domain name or id that does not exist.
    Domain(String),
    /// The socket could not be found or determined.
    Socket(String),
    /// Nothing answers at the socket.
    NoCore {
        /// The socket.
        socket: PathBuf,
        /// What connecting said.
        detail: String,
    },
    /// The core did not answer in time.
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// How long `hvctl` waited.
        after: Duration,
        /// What came back meanwhile that was not the answer, if anything.
        note: Option<&'static str>,
    },
    /// The socket closed (QEMU ended).
    Closed {
        /// The socket.
        socket: PathBuf,
    },
    /// Reading or writing the socket failed.
    Io {
        /// The socket.
        socket: PathBuf,
        /// The error.
        detail: String,
    },
    /// The core answered with a reply that does not fit the request.
    UnexpectedReply {
        /// The command sent.
        command: &'static str,
    },
}

impl Error {
    /// The process exit status: 2 for a usage error, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Domain(message) | Self::Socket(message) => {
                formatter.write_str(message)
            }
            Self::Invalid(error) => write!(formatter, "{error}"),
            Self::Refused(error) => write!(formatter, "refused by the core: {error}"),
            Self::NoCore { socket, detail } => write!(
                formatter,
                "no core listening on {} ({detail}): is `make run` running?",
                socket.display()
            ),
            Self::Timeout {
                socket,
                after,
                note,
            } => {
                write!(
                    formatter,
                    "no answer from the core on {} within {} s: is `make run` running?",
                    socket.display(),
                    after.as_secs_f64()
                )?;
                if let Some(note) = note {
                    write!(formatter, " ({note})")?;
                }
                Ok(())
            }
            Self::Closed { socket } => write!(
                formatter,
                "the core's control socket {} closed the connection (did QEMU exit?)",
                socket.display()
            ),
            Self::Io { socket, detail } => {
                write!(formatter, "control socket {}: {detail}", socket.display())
            }
            Self::UnexpectedReply { command } => write!(
                formatter,
                "the core answered `{command}` with a reply of another command"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Something that carries a command to the core and brings its reply back:
/// the socket [`client::Client`], or a fake in tests.
pub trait Core {
    /// Sends `command` and waits for its reply; a refusal is
    /// [`Error::Refused`].
    fn call(&mut self, command: Command) -> Result<Reply, Error>;
}

/// Connects to `socket` and runs a command given as words (`["sched-credit",
/// "-d", "spinner", "-c", "50"]`); returns what `hvctl` would print. A
/// `--socket` among the words wins over `socket`. The runner's scenario
/// steps use this.
pub fn run_words(socket: &Path, words: &[String], timeout: Duration) -> Result<String, Error> {
    let invocation = cli::parse(words)?;
    if invocation.action == Action::Help {
        return Ok(cli::USAGE.to_owned());
    }
    let socket = invocation.socket.as_deref().unwrap_or(socket);
    let mut client = client::Client::connect(socket, timeout)?;
    execute(&invocation.action, &mut client)
}

/// Runs `action` against `core`; returns the text to print.
pub fn execute(action: &Action, core: &mut dyn Core) -> Result<String, Error> {
    match action {
        Action::Help => Ok(cli::USAGE.to_owned()),
        Action::List => {
            let (domains, servers) = list(core)?;
            Ok(format::list(&domains, &servers))
        }
        Action::SchedCredit {
            domain,
            weight: None,
            cap: None,
        } => {
            let (domains, _) = list(core)?;
            let target = domain
                .as_ref()
                .map(|reference| resolve(&domains, reference).map(|info| info.id))
                .transpose()?;
            let credits = sched_credit(core, Command::SchedCreditGet { domain: target })?;
            let mut text = String::new();
            if target.is_none() {
                let (timeslice_ms, ratelimit_us) = sched_global(core, Command::SchedGlobalGet)?;
                text.push_str(&format::sched_global(timeslice_ms, ratelimit_us));
            }
            text.push_str(&format::sched_credit(&domains, &credits));
            Ok(text)
        }
        Action::SchedCredit {
            domain,
            weight,
            cap,
        } => {
            let (domains, _) = list(core)?;
            let reference = domain
                .as_ref()
                .ok_or_else(|| Error::Usage("-w and -c need a domain: give -d DOM".to_owned()))?;
            let info = resolve(&domains, reference)?;
            let command = Command::SchedCreditSet {
                domain: info.id,
                weight: *weight,
                cap: *cap,
            };
            command
                .validate_in(&shape(&domains))
                .map_err(Error::Invalid)?;
            let credits = sched_credit(core, command)?;
            Ok(format::sched_credit(&domains, &credits))
        }
        Action::SchedGlobal {
            timeslice_ms,
            ratelimit_us,
        } => {
            if let (None, None) = (timeslice_ms, ratelimit_us) {
                let (timeslice_ms, ratelimit_us) = sched_global(core, Command::SchedGlobalGet)?;
                return Ok(format::sched_global(timeslice_ms, ratelimit_us));
            }
            let command = Command::SchedGlobalSet {
                timeslice_ms: *timeslice_ms,
                ratelimit_us: *ratelimit_us,
            };
            command.validate().map_err(Error::Invalid)?;
            if timeslice_ms.is_none() || ratelimit_us.is_none() {
                // Check the pair as it would be, for a clear message; the
                // scheduler server checks it again.
                let (current_timeslice, current_ratelimit) =
                    sched_global(core, Command::SchedGlobalGet)?;
                control::check_global(
                    timeslice_ms.unwrap_or(current_timeslice),
                    ratelimit_us.unwrap_or(current_ratelimit),
                )
                .map_err(Error::Invalid)?;
            }
            let (timeslice_ms, ratelimit_us) = sched_global(core, command)?;
            Ok(format::sched_global(timeslice_ms, ratelimit_us))
        }
        Action::HaltPoll { domain, max_ns } => {
            let (domains, _) = list(core)?;
            let target = domain
                .as_ref()
                .map(|reference| resolve(&domains, reference).map(|info| info.id))
                .transpose()?;
            let command = match max_ns {
                Some(max_ns) => Command::HaltPollSet {
                    domain: target,
                    max_ns: *max_ns,
                },
                None => Command::HaltPollGet { domain: target },
            };
            command
                .validate_in(&shape(&domains))
                .map_err(Error::Invalid)?;
            match core.call(command.clone())? {
                Reply::HaltPoll {
                    global,
                    domains: overrides,
                } => Ok(format::halt_poll(&domains, &global, &overrides)),
                _ => Err(unexpected(&command)),
            }
        }
        Action::Stats { domain, histograms } => {
            let (domains, _) = list(core)?;
            let selected: Vec<&DomainInfo> = match domain {
                Some(reference) => vec![resolve(&domains, reference)?],
                None => domains.iter().collect(),
            };
            let mut per_domain = Vec::new();
            let mut paging = Vec::new();
            for info in &selected {
                let command = Command::Stats { domain: info.id };
                match core.call(command.clone())? {
                    Reply::Stats {
                        domain,
                        vcpus,
                        paging: stats,
                    } => {
                        per_domain.push((domain, vcpus));
                        paging.extend(stats.map(|stats| (domain, stats)));
                    }
                    _ => return Err(unexpected(&command)),
                }
            }
            let mut text = format::stats(&domains, &per_domain);
            text.push_str(&format::paging(&domains, &paging));
            if *histograms {
                for (domain, vcpus) in &per_domain {
                    for vcpu in vcpus {
                        let command = Command::HaltPollHistograms {
                            domain: *domain,
                            vcpu: vcpu.index,
                        };
                        match core.call(command.clone())? {
                            Reply::HaltPollHistograms {
                                poll_success,
                                poll_fail,
                                wait,
                                ..
                            } => text.push_str(&format::histograms(
                                &format::domain_name(&domains, *domain),
                                vcpu.index,
                                &poll_success,
                                &poll_fail,
                                &wait,
                            )),
                            _ => return Err(unexpected(&command)),
                        }
                    }
                }
            }
            Ok(text)
        }
        Action::MemSet { domain, bytes } => {
            let (domains, _) = list(core)?;
            let info = resolve(&domains, domain)?;
            let command = Command::MemSet {
                domain: info.id,
                bytes: *bytes,
            };
            command
                .validate_in(&shape(&domains))
                .map_err(Error::Invalid)?;
            control::check_memory_target(*bytes, u64::from(info.memory_mib) << 20)
                .map_err(Error::Invalid)?;
            done(core, command)?;
            Ok(format::mem_set(&info.name, *bytes, info.memory_mib))
        }
        Action::Fault { fault, server } => {
            let command = match fault {
                Fault::Kill => Command::Kill { server: *server },
                Fault::Hang => Command::Hang { server: *server },
                Fault::Garble => Command::Garble { server: *server },
            };
            let name = command.name();
            done(core, command)?;
            Ok(format!(
                "{name}: done for the {} server\n",
                control::server_kind_name(*server)
            ))
        }
    }
}

fn unexpected(command: &Command) -> Error {
    Error::UnexpectedReply {
        command: command.name(),
    }
}

fn list(core: &mut dyn Core) -> Result<(Vec<DomainInfo>, Vec<ServerInfo>), Error> {
    match core.call(Command::List)? {
        Reply::List { domains, servers } => Ok((domains.to_vec(), servers.to_vec())),
        _ => Err(unexpected(&Command::List)),
    }
}

fn sched_credit(core: &mut dyn Core, command: Command) -> Result<Vec<DomainCredit>, Error> {
    match core.call(command.clone())? {
        Reply::SchedCredit { domains } => Ok(domains.to_vec()),
        _ => Err(unexpected(&command)),
    }
}

fn sched_global(core: &mut dyn Core, command: Command) -> Result<(u32, u32), Error> {
    match core.call(command.clone())? {
        Reply::SchedGlobal {
            timeslice_ms,
            ratelimit_us,
        } => Ok((timeslice_ms, ratelimit_us)),
        _ => Err(unexpected(&command)),
    }
}

fn done(core: &mut dyn Core, command: Command) -> Result<(), Error> {
    match core.call(command.clone())? {
        Reply::Done => Ok(()),
        _ => Err(unexpected(&command)),
    }
}

/// The machine as far as [`Command::validate_in`] needs it: the vCPUs of
/// each domain.
pub fn shape(domains: &[DomainInfo]) -> Shape {
    domains.iter().fold(Shape::new(0), |shape, info| {
        shape.with_domain(info.id, info.vcpus)
    })
}

/// Finds the domain a reference names, like `xl`: an id by id, a name by
/// name; the error lists the domains there are.
pub fn resolve<'a>(
    domains: &'a [DomainInfo],
    reference: &DomainReference,
) -> Result<&'a DomainInfo, Error> {
    let found = match reference {
        DomainReference::Id(id) => domains.iter().find(|info| info.id == *id),
        DomainReference::Name(name) => domains.iter().find(|info| info.name.as_str() == name),
    };
    found.ok_or_else(|| {
        let known: Vec<String> = domains
            .iter()
            .map(|info| format!("{} ({})", info.name, info.id))
            .collect();
        let what = match reference {
            DomainReference::Id(id) => format!("no domain has id {id}"),
            DomainReference::Name(name) => format!("no domain is named `{name}`"),
        };
        let known = if known.is_empty() {
            "there are none".to_owned()
        } else {
            format!("the domains are {}", known.join(", "))
        };
        Error::Domain(format!("{what}; {known}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::control::{
        DomainHaltPoll, DomainState, Field, HaltPollCounters, HaltPollGlobal, Histogram, Name,
        PagingStats, Reason, ServerState, VcpuState, VcpuStats,
    };
    use ipc::messages::scheduler::Priority;
    use ipc::server::ServerKind;

    /// Answers from a script and records what it was asked.
    struct Scripted {
        answers: Vec<Result<Reply, ControlError>>,
        asked: Vec<Command>,
    }

    impl Core for Scripted {
        fn call(&mut self, command: Command) -> Result<Reply, Error> {
            self.asked.push(command);
            assert!(
                !self.answers.is_empty(),
                "asked more than scripted: {:?}",
                self.asked
            );
            self.answers.remove(0).map_err(Error::Refused)
        }
    }

    fn name(text: &str) -> Name {
        Name::try_from(text).unwrap()
    }

    fn listing() -> Reply {
        Reply::List {
            domains: [
                DomainInfo {
                    id: 0,
                    name: name("hello"),
                    memory_mib: 16,
                    vcpus: 1,
                    state: DomainState::Running,
                },
                DomainInfo {
                    id: 1,
                    name: name("spinner"),
                    memory_mib: 32,
                    vcpus: 2,
                    state: DomainState::PoweredOff,
                },
            ]
            .into_iter()
            .collect(),
            servers: [ServerInfo {
                name: name("sched"),
                kind: ServerKind::Scheduler,
                generation: 2,
                restarts: 1,
                state: ServerState::Running,
            }]
            .into_iter()
            .collect(),
        }
    }

    fn run(
        text: &str,
        answers: Vec<Result<Reply, ControlError>>,
    ) -> (Result<String, Error>, Vec<Command>) {
        let words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        let action = cli::parse(&words).unwrap().action;
        let mut core = Scripted {
            answers,
            asked: Vec::new(),
        };
        let result = execute(&action, &mut core);
        (result, core.asked)
    }

    fn credit(domain: u16, weight: u32, cap: u32) -> Reply {
        Reply::SchedCredit {
            domains: [DomainCredit {
                domain,
                weight,
                cap,
            }]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn list_prints_domains_and_servers() {
        let (text, asked) = run("list", vec![Ok(listing())]);
        assert_eq!(asked, vec![Command::List]);
        assert_eq!(
            text.unwrap(),
            "\
Name     ID  Mem(MiB)  VCPUs  State
hello     0        16      1  running
spinner   1        32      2  powered-off

Server  Kind       Generation  Restarts  State
sched   scheduler           2         1  running
"
        );
    }

    #[test]
    fn names_and_ids_resolve() {
        let (text, asked) = run(
            "sched-credit -d spinner -w 512",
            vec![Ok(listing()), Ok(credit(1, 512, 0))],
        );
        assert_eq!(
            asked[1],
            Command::SchedCreditSet {
                domain: 1,
                weight: Some(512),
                cap: None
            }
        );
        assert_eq!(
            text.unwrap(),
            "Name     ID  Weight  Cap\nspinner   1     512    0\n"
        );
        let (_, asked) = run(
            "sched-credit -d 0",
            vec![Ok(listing()), Ok(credit(0, 256, 0))],
        );
        assert_eq!(asked[1], Command::SchedCreditGet { domain: Some(0) });
        let (error, asked) = run("sched-credit -d nobody -c 5", vec![Ok(listing())]);
        assert_eq!(asked.len(), 1, "nothing is sent for an unknown domain");
        assert_eq!(
            error.unwrap_err().to_string(),
            "no domain is named `nobody`; the domains are hello (0), spinner (1)"
        );
        let (error, _) = run("stats -d 7", vec![Ok(listing())]);
        assert!(error
            .unwrap_err()
            .to_string()
            .starts_with("no domain has id 7;"));
    }

    #[test]
    fn the_cap_is_checked_against_the_domains_vcpus() {
        let (error, asked) = run("sched-credit -d hello -c 150", vec![Ok(listing())]);
        assert_eq!(asked.len(), 1);
        assert_eq!(
            error.unwrap_err(),
            Error::Invalid(ControlError::InvalidArgument {
                field: Field::Cap,
                reason: Reason::OutOfRange {
                    value: 150,
                    min: 0,
                    max: 100
                }
            })
        );
        let (result, _) = run(
            "sched-credit -d spinner -c 150",
            vec![Ok(listing()), Ok(credit(1, 256, 150))],
        );
        assert!(result.is_ok());
    }

    #[test]
    fn sched_credit_without_options_shows_everything() {
        let all = Reply::SchedCredit {
            domains: [
                DomainCredit {
                    domain: 0,
                    weight: 256,
                    cap: 0,
                },
                DomainCredit {
                    domain: 1,
                    weight: 1024,
                    cap: 50,
                },
            ]
            .into_iter()
            .collect(),
        };
        let global = Reply::SchedGlobal {
            timeslice_ms: 30,
            ratelimit_us: 1000,
        };
        let (text, asked) = run("sched-credit", vec![Ok(listing()), Ok(all), Ok(global)]);
        assert_eq!(
            asked,
            vec![
                Command::List,
                Command::SchedCreditGet { domain: None },
                Command::SchedGlobalGet
            ]
        );
        assert_eq!(
            text.unwrap(),
            "\
scheduler: credit, tslice=30ms, ratelimit=1000us
Name     ID  Weight  Cap
hello     0     256    0
spinner   1    1024   50
"
        );
    }

    #[test]
    fn a_single_global_knob_is_checked_against_the_other() {
        let current = Reply::SchedGlobal {
            timeslice_ms: 30,
            ratelimit_us: 1000,
        };
        let (error, asked) = run("sched-credit -s -r 40000", vec![Ok(current.clone())]);
        assert_eq!(asked, vec![Command::SchedGlobalGet]);
        assert!(error
            .unwrap_err()
            .to_string()
            .starts_with("ratelimit_us 40000 is longer than the timeslice"),);
        let applied = Reply::SchedGlobal {
            timeslice_ms: 50,
            ratelimit_us: 1000,
        };
        let (text, asked) = run("sched-credit -s -t 50", vec![Ok(current), Ok(applied)]);
        assert_eq!(
            asked[1],
            Command::SchedGlobalSet {
                timeslice_ms: Some(50),
                ratelimit_us: None
            }
        );
        assert_eq!(
            text.unwrap(),
            "scheduler: credit, tslice=50ms, ratelimit=1000us\n"
        );
        let (text, asked) = run(
            "sched-credit -s",
            vec![Ok(Reply::SchedGlobal {
                timeslice_ms: 30,
                ratelimit_us: 0,
            })],
        );
        assert_eq!(asked, vec![Command::SchedGlobalGet]);
        assert_eq!(
            text.unwrap(),
            "scheduler: credit, tslice=30ms, ratelimit=off\n"
        );
    }

    #[test]
    fn refusals_and_wrong_replies_are_errors() {
        let (error, _) = run(
            "sched-credit -d hello -w 5",
            vec![
                Ok(listing()),
                Err(ControlError::ServerUnavailable {
                    server: ServerKind::Scheduler,
                }),
            ],
        );
        assert_eq!(
            error.unwrap_err().to_string(),
            "refused by the core: the scheduler server is down or restarting; nothing was changed, try again"
        );
        let (error, _) = run("kill pager", vec![Err(ControlError::Unsupported)]);
        assert_eq!(
            error.unwrap_err().to_string(),
            "refused by the core: the core does not support this command yet"
        );
        let (error, _) = run("list", vec![Ok(Reply::Done)]);
        assert_eq!(
            error.unwrap_err(),
            Error::UnexpectedReply { command: "list" }
        );
        let (text, asked) = run("hang scheduler", vec![Ok(Reply::Done)]);
        assert_eq!(
            asked,
            vec![Command::Hang {
                server: ServerKind::Scheduler
            }]
        );
        assert_eq!(text.unwrap(), "hang: done for the scheduler server\n");
        let (text, _) = run("mem-set hello 8m", vec![Ok(listing()), Ok(Reply::Done)]);
        assert_eq!(
            text.unwrap(),
            "hello: memory target set to 8 MiB (2048 of 4096 pages)\n"
        );
    }

    #[test]
    fn mem_set_checks_the_domains_memory_and_reports_the_cores_answer() {
        let (text, asked) = run("mem-set spinner 3m", vec![Ok(listing()), Ok(Reply::Done)]);
        assert_eq!(
            asked,
            vec![
                Command::List,
                Command::MemSet {
                    domain: 1,
                    bytes: 3 << 20
                }
            ]
        );
        assert_eq!(
            text.unwrap(),
            "spinner: memory target set to 3 MiB (768 of 8192 pages)\n"
        );
        // More than hello's 16 MiB: refused before anything is sent.
        let (error, asked) = run("mem-set hello 17m", vec![Ok(listing())]);
        assert_eq!(asked, vec![Command::List]);
        assert_eq!(
            error.unwrap_err(),
            Error::Invalid(ControlError::InvalidArgument {
                field: Field::Bytes,
                reason: Reason::OutOfRange {
                    value: 17 << 20,
                    min: control::MEMORY_MIN_BYTES,
                    max: 16 << 20
                }
            })
        );
        // The core's refusals come back as they are.
        let (error, _) = run(
            "mem-set 0 4m",
            vec![
                Ok(listing()),
                Err(ControlError::NoSuchServer {
                    server: ServerKind::Pager,
                }),
            ],
        );
        assert_eq!(
            error.unwrap_err().to_string(),
            "refused by the core: the appliance has no pager server"
        );
    }

    #[test]
    fn halt_poll_shows_the_global_and_the_overrides() {
        let reply = Reply::HaltPoll {
            global: HaltPollGlobal {
                max_ns: 200_000,
                grow: 2,
                grow_start_ns: 10_000,
                shrink: 0,
            },
            domains: [
                DomainHaltPoll {
                    domain: 0,
                    max_ns: None,
                },
                DomainHaltPoll {
                    domain: 1,
                    max_ns: Some(0),
                },
            ]
            .into_iter()
            .collect(),
        };
        let (text, asked) = run("halt-poll", vec![Ok(listing()), Ok(reply.clone())]);
        assert_eq!(asked[1], Command::HaltPollGet { domain: None });
        assert_eq!(
            text.unwrap(),
            "\
halt_poll_ns=200000 grow=2 grow_start=10000 shrink=0
Name     ID  Max(ns)  From
hello     0   200000  global
spinner   1        0  domain (off)
"
        );
        let (_, asked) = run(
            "halt-poll -d spinner --max 0",
            vec![Ok(listing()), Ok(reply.clone())],
        );
        assert_eq!(
            asked[1],
            Command::HaltPollSet {
                domain: Some(1),
                max_ns: 0
            }
        );
        let (_, asked) = run("halt-poll --max 50000", vec![Ok(listing()), Ok(reply)]);
        assert_eq!(
            asked[1],
            Command::HaltPollSet {
                domain: None,
                max_ns: 50_000
            }
        );
    }

    #[test]
    fn stats_asks_per_domain_and_prints_per_vcpu() {
        let stats = |domain, vcpus: Vec<VcpuStats>| Reply::Stats {
            domain,
            vcpus: vcpus.into_iter().collect(),
            paging: None,
        };
        let vcpu = VcpuStats {
            index: 0,
            run_time_ns: 1_234_567_890,
            credit_ns: Some(-2_500_000),
            priority: Some(Priority::Over),
            parked: true,
            state: VcpuState::Running { pcpu: 1 },
            halt_poll: HaltPollCounters {
                successful: 7,
                attempted: 10,
                invalid: 1,
                poll_success_ns: 70_000,
                poll_fail_ns: 300_000,
                wait_ns: 5_000_000,
                window_ns: 40_000,
            },
        };
        let idle = VcpuStats {
            index: 1,
            run_time_ns: 0,
            credit_ns: None,
            priority: None,
            parked: false,
            state: VcpuState::Blocked,
            halt_poll: HaltPollCounters::default(),
        };
        let (text, asked) = run(
            "stats",
            vec![
                Ok(listing()),
                Ok(stats(0, vec![vcpu])),
                Ok(stats(1, vec![idle])),
            ],
        );
        assert_eq!(
            asked,
            vec![
                Command::List,
                Command::Stats { domain: 0 },
                Command::Stats { domain: 1 }
            ]
        );
        assert_eq!(
            text.unwrap(),
            "\
Name     ID  VCPU  State      Time(s)  Credit(us)  Prio         Polls  OK  Invalid  PollOK(us)  PollFail(us)  Wait(us)  Window(ns)
hello     0     0  running@1    1.235       -2500  over,parked     10   7        1          70           300      5000       40000
spinner   1     1  blocked      0.000           -  -                0   0        0           0             0         0           0
"
        );
        let mut histogram = Histogram::default();
        histogram.buckets[10] = 3;
        let histograms = Reply::HaltPollHistograms {
            domain: 0,
            vcpu: 0,
            poll_success: histogram,
            poll_fail: Histogram::default(),
            wait: Histogram::default(),
        };
        let (text, asked) = run(
            "stats -d hello -H",
            vec![Ok(listing()), Ok(stats(0, vec![vcpu])), Ok(histograms)],
        );
        assert_eq!(asked[2], Command::HaltPollHistograms { domain: 0, vcpu: 0 });
        let text = text.unwrap();
        assert!(
            text.ends_with("\nhello vCPU 0 halt-poll histograms (count per log2 bucket):\nFrom(ns)  Success  Fail  Wait\n    1024        3     0     0\n"),
            "{text}"
        );
    }

    #[test]
    fn stats_prints_each_domains_paging_after_the_vcpus() {
        let vcpu = VcpuStats {
            index: 0,
            run_time_ns: 2_000_000_000,
            credit_ns: None,
            priority: None,
            parked: false,
            state: VcpuState::Runnable,
            halt_poll: HaltPollCounters::default(),
        };
        let mut page_in_latency = Histogram::default();
        page_in_latency.buckets[3] = 40;
        page_in_latency.buckets[4] = 2;
        let paging = PagingStats {
            memory_pages: 4096,
            target_pages: 1024,
            resident_pages: 1030,
            paged_pages: 3000,
            dropped_pages: 66,
            pages_out: 3100,
            pages_in: 100,
            evict_failures: 1,
            free_slots: Some(5000),
            swap_full: false,
            page_in_latency,
        };
        let reply = |domain, paging| Reply::Stats {
            domain,
            vcpus: [VcpuStats { index: 0, ..vcpu }].into_iter().collect(),
            paging,
        };
        let (text, _) = run(
            "stats",
            vec![
                Ok(listing()),
                Ok(reply(0, Some(paging))),
                Ok(reply(1, None)),
            ],
        );
        assert_eq!(
            text.unwrap(),
            "\
Name     ID  VCPU  State     Time(s)  Credit(us)  Prio  Polls  OK  Invalid  PollOK(us)  PollFail(us)  Wait(us)  Window(ns)
hello     0     0  runnable    2.000           -  -         0   0        0           0             0         0           0
spinner   1     0  runnable    2.000           -  -         0   0        0           0             0         0           0

hello (0):
  paging: target 1024/4096 pages, resident 1030, paged out 3000, dropped 66; out 3100, in 100, evict failures 1, free slots 5000
  page-in latency (us): 8-16:40 16-32:2
"
        );
    }
}

//! The control channel: `hvctl` requests arriving on COM2, answered from the
//! core's own state, relayed to the scheduler server, or (a memory target)
//! recorded and passed on to the pager server. Polled at switch
//! points (never on an exit path); every request is validated with
//! `ipc::control` (the same code `hvctl` runs) before anything changes.

use heapless::Vec;
use ipc::control::{
    self, Command, ControlError, DomainCredit, DomainHaltPoll, DomainInfo, HaltPollCounters,
    HaltPollGlobal, Histogram, PagingStats, Received, Reply, Request, RequestReceiver, Response,
    ServerInfo, ServerState, VcpuStats,
};
use ipc::messages::scheduler as sched_wire;
use ipc::server::ServerKind;

use crate::arch::serial::control as com2;
use crate::arch::cpu;

/// Bytes taken from COM2 per visit (keeps a visit short).
const BYTES_PER_VISIT: usize = 64;
/// How long a relayed request may wait for the scheduler server, ms.
const RELAY_TIMEOUT_MS: u64 = 500;

/// A request relayed to the scheduler server.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// The request's id (also used on the scheduler ring).
    pub id: u32,
    /// TSC deadline for the answer.
    pub deadline: u64,
}

/// The channel's state.
#[derive(Debug, Default)]
pub struct ControlPort {
    receiver: RequestReceiver,
    /// The request waiting for the scheduler server, if any.
    pub relayed: Option<Relayed>,
}

impl ControlPort {
    /// Programs COM2.
    pub fn init() {
        com2::init();
    }

    /// Takes what COM2 has; returns the next complete request (or a refusal
    /// to send back at once).
    pub fn poll(&mut self) -> Option<Result<Request, Response>> {
        for _ in 0..BYTES_PER_VISIT {
            let byte = com2::read_byte()?;
            match self.receiver.push(byte) {
                None => {}
                Some(Received::Overflow) => {
                    return Some(Err(Response { id: control::UNKNOWN_REQUEST_ID, result: Err(ControlError::Malformed) }));
                }
                Some(Received::Frame(frame)) => {
                    return Some(control::decode_request(frame).map_err(Response::refusal));
                }
            }
        }
        None
    }

    /// Sends a response.
    pub fn respond(&self, response: &Response) {
        let mut buffer = [0u8; control::MAX_RESPONSE_FRAME_SIZE];
        if let Ok(length) = control::encode_response(response, &mut buffer) {
            com2::write(&buffer[..length]);
        }
    }

    /// Whether the relayed request's time is up.
    pub fn relay_expired(&self) -> bool {
        self.relayed.is_some_and(|relayed| cpu::rdtsc() >= relayed.deadline)
    }

    /// Starts relaying request `id`.
    pub fn relay(&mut self, id: u32, tsc_hz: u64) {
        self.relayed = Some(Relayed { id, deadline: cpu::rdtsc() + RELAY_TIMEOUT_MS * (tsc_hz / 1000) });
    }
}

/// One domain as the control channel reports it.
#[derive(Debug, Clone, Copy)]
pub struct DomainView<'m> {
    /// Name.
    pub name: &'m str,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// State.
    pub state: control::DomainState,
    /// Credit weight in force.
    pub weight: u32,
    /// Credit cap in force.
    pub cap: u32,
    /// Halt-polling max override, ns.
    pub halt_poll_max: Option<u64>,
}

/// What the machine tells the control channel about itself.
pub struct MachineView<'m> {
    /// The domains, by id.
    pub domains: &'m [DomainView<'m>],
    /// Servers: (name, kind, generation, restarts).
    pub servers: &'m [(&'m str, ServerKind, u32, u32)],
    /// Credit tunables in force.
    pub tunables: (u32, u32),
    /// Halt-poll tunables.
    pub halt_poll: HaltPollGlobal,
}

/// What to do with a request. (`Reply` is large: the core has no heap to
/// box it, and an `Action` lives only for one request.)
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Answer now.
    Reply(Result<Reply, ControlError>),
    /// Send this to the scheduler server and wait for its answer.
    Relay(sched_wire::ToServer),
    /// Change halt polling, then answer with the new settings.
    SetHaltPoll {
        /// The domain, or all (the global max).
        domain: Option<u16>,
        /// The new max.
        max_ns: u64,
    },
    /// Per-vCPU statistics of a domain (the machine fills them in).
    Stats(u16),
    /// Stop a server and start its next generation (fault injection).
    Kill(ServerKind),
    /// Make a server's runtime misbehave (`syscall::WAKE_INJECT_*` bits).
    Inject(ServerKind, u64),
    /// Set a domain's resident target and tell the pager.
    MemSet {
        /// The domain (it exists).
        domain: u16,
        /// The new target, 4 KiB pages (checked against its memory).
        pages: u64,
    },
}

/// Decides what a validated request needs.
pub fn plan(request: &Request, view: &MachineView<'_>, scheduler_ready: bool) -> Action {
    let domain_exists = |domain: u16| usize::from(domain) < view.domains.len();
    match request.command {
        Command::List => {
            let domains = view
                .domains
                .iter()
                .enumerate()
                .map(|(id, domain)| DomainInfo {
                    id: id as u16,
                    name: heapless::String::try_from(domain.name).unwrap_or_default(),
                    memory_mib: domain.memory_mib,
                    vcpus: domain.vcpus,
                    state: domain.state,
                })
                .collect();
            let servers = view
                .servers
                .iter()
                .map(|&(name, kind, generation, restarts)| ServerInfo {
                    name: heapless::String::try_from(name).unwrap_or_default(),
                    kind,
                    generation,
                    restarts,
                    state: ServerState::Running,
                })
                .collect();
            Action::Reply(Ok(Reply::List { domains, servers }))
        }
        Command::SchedCreditGet { domain } => {
            let domains: Vec<DomainCredit, { control::MAX_DOMAINS }> = view
                .domains
                .iter()
                .enumerate()
                .filter(|(id, _)| domain.is_none_or(|wanted| usize::from(wanted) == *id))
                .map(|(id, domain)| DomainCredit { domain: id as u16, weight: domain.weight, cap: domain.cap })
                .collect();
            Action::Reply(Ok(Reply::SchedCredit { domains }))
        }
        Command::SchedGlobalGet => {
            let (timeslice_ms, ratelimit_us) = view.tunables;
            Action::Reply(Ok(Reply::SchedGlobal { timeslice_ms, ratelimit_us }))
        }
        Command::SchedCreditSet { domain, .. } if !domain_exists(domain) => {
            Action::Reply(Err(ControlError::NoSuchDomain { domain }))
        }
        Command::SchedCreditSet { .. } | Command::SchedGlobalSet { .. } if !scheduler_ready => {
            Action::Reply(Err(ControlError::ServerUnavailable { server: ServerKind::Scheduler }))
        }
        Command::SchedCreditSet { domain, weight, cap } => {
            Action::Relay(sched_wire::ToServer::SetDomain { request: request.id, domain, weight, cap })
        }
        Command::SchedGlobalSet { timeslice_ms, ratelimit_us } => {
            Action::Relay(sched_wire::ToServer::Configure { request: request.id, timeslice_ms, ratelimit_us })
        }
        Command::HaltPollGet { .. } => Action::Reply(Ok(halt_poll_reply(view))),
        Command::HaltPollSet { domain: Some(domain), .. } if !domain_exists(domain) => {
            Action::Reply(Err(ControlError::NoSuchDomain { domain }))
        }
        Command::HaltPollSet { domain, max_ns } => Action::SetHaltPoll { domain, max_ns },
        Command::Stats { domain } if !domain_exists(domain) => Action::Reply(Err(ControlError::NoSuchDomain { domain })),
        Command::Stats { domain } => Action::Stats(domain),
        Command::Kill { server } | Command::Hang { server } | Command::Garble { server }
            if !view.servers.iter().any(|&(_, kind, ..)| kind == server) =>
        {
            Action::Reply(Err(ControlError::NoSuchServer { server }))
        }
        Command::Kill { server } => Action::Kill(server),
        Command::Hang { server } => Action::Inject(server, ipc::server::syscall::WAKE_INJECT_HANG),
        Command::Garble { server } => Action::Inject(server, ipc::server::syscall::WAKE_INJECT_GARBLE),
        Command::MemSet { domain, bytes } => match view.domains.get(usize::from(domain)) {
            None => Action::Reply(Err(ControlError::NoSuchDomain { domain })),
            Some(_) if !view.servers.iter().any(|&(_, kind, ..)| kind == ServerKind::Pager) => {
                Action::Reply(Err(ControlError::NoSuchServer { server: ServerKind::Pager }))
            }
            // Whole MiB (the manifest's `memory_mib`), so this is exact.
            Some(info) => match control::check_memory_target(bytes, u64::from(info.memory_mib) << 20) {
                Ok(pages) => Action::MemSet { domain, pages },
                Err(error) => Action::Reply(Err(error)),
            },
        },
        _ => Action::Reply(Err(ControlError::Unsupported)),
    }
}

/// The `HaltPoll` reply for the machine as it is.
pub fn halt_poll_reply(view: &MachineView<'_>) -> Reply {
    let domains = view
        .domains
        .iter()
        .enumerate()
        .map(|(id, domain)| DomainHaltPoll { domain: id as u16, max_ns: domain.halt_poll_max })
        .collect();
    Reply::HaltPoll { global: view.halt_poll, domains }
}

/// Converts the core's halt-poll statistics for a `Stats` reply.
pub fn counters(stats: &hypervisor_core::halt_poll::HaltPollStats, window_ns: u64) -> HaltPollCounters {
    HaltPollCounters {
        successful: stats.successful,
        attempted: stats.attempted,
        invalid: stats.invalid,
        poll_success_ns: stats.poll_success_ns,
        poll_fail_ns: stats.poll_fail_ns,
        wait_ns: stats.wait_ns,
        window_ns,
    }
}

/// A domain's paging for a `Stats` reply, from the core's counters.
pub fn paging_stats(paging: &super::paging::DomainPaging) -> PagingStats {
    PagingStats {
        memory_pages: paging.memory_pages,
        target_pages: paging.target_pages,
        resident_pages: paging.resident,
        paged_pages: paging.paged,
        dropped_pages: paging.dropped,
        pages_out: paging.pages_out,
        pages_in: paging.pages_in,
        evict_failures: paging.evict_failures,
        free_slots: paging.pager_free_slots,
        swap_full: paging.swap_full,
        page_in_latency: Histogram::from_counts(&paging.latency),
    }
}

/// A `Stats` entry: `credit` is the vCPU's entry of the scheduler's last
/// credit table (credit, priority, parked), if one was read.
pub fn vcpu_stats(
    index: u8,
    run_time_ns: u64,
    credit: Option<ipc::messages::scheduler::CreditEntry>,
    state: control::VcpuState,
    halt_poll: HaltPollCounters,
) -> VcpuStats {
    VcpuStats {
        index,
        run_time_ns,
        credit_ns: credit.map(|entry| entry.credit_ns),
        priority: credit.map(|entry| entry.priority),
        parked: credit.is_some_and(|entry| entry.parked),
        state,
        halt_poll,
    }
}

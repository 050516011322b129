//! End to end: `hvctl` (the library and the binary) against a fake core, a
//! thread on a UNIX socket that decodes requests with the core's own decode
//! path (`ipc::control::decode_request`) and answers them.
// The fake core's helpers are test code too: a failure there should stop
// the test where it happens.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc::control::{
    self, Command, ControlError, DomainCredit, DomainInfo, DomainState, HaltPollCounters,
    Histogram, Name, PagingStats, Received, Reply, RequestReceiver, Response, ServerInfo,
    ServerState, VcpuState, VcpuStats, MAX_RESPONSE_FRAME_SIZE,
};
use ipc::messages::scheduler::Shape;
use ipc::server::ServerKind;

fn socket_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "hvctl-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ))
}

/// The fake core's state: two domains and their credit parameters.
struct State {
    weights: [(u32, u32); 2],
    requests: Vec<Command>,
}

fn domains() -> Vec<DomainInfo> {
    [("hello", 16, 1), ("spinner", 32, 2)]
        .iter()
        .enumerate()
        .map(|(id, (name, memory_mib, vcpus))| DomainInfo {
            id: id as u16,
            name: Name::try_from(*name).unwrap(),
            memory_mib: *memory_mib,
            vcpus: *vcpus,
            state: DomainState::Running,
        })
        .collect()
}

fn answer(state: &mut State, command: Command) -> Result<Reply, ControlError> {
    let shape = domains().iter().fold(Shape::new(1), |shape, info| {
        shape.with_domain(info.id, info.vcpus)
    });
    command.validate_in(&shape)?;
    state.requests.push(command.clone());
    let credit = |state: &State, domain: u16| DomainCredit {
        domain,
        weight: state.weights[usize::from(domain)].0,
        cap: state.weights[usize::from(domain)].1,
    };
    match command {
        Command::List => Ok(Reply::List {
            domains: domains().into_iter().collect(),
            servers: [ServerInfo {
                name: Name::try_from("scheduler").unwrap(),
                kind: ServerKind::Scheduler,
                generation: 1,
                restarts: 0,
                state: ServerState::Running,
            }]
            .into_iter()
            .collect(),
        }),
        Command::SchedCreditGet { domain } => Ok(Reply::SchedCredit {
            domains: (0..2u16)
                .filter(|id| domain.is_none_or(|wanted| wanted == *id))
                .map(|id| credit(state, id))
                .collect(),
        }),
        Command::SchedCreditSet {
            domain,
            weight,
            cap,
        } => {
            let entry = &mut state.weights[usize::from(domain)];
            entry.0 = weight.unwrap_or(entry.0);
            entry.1 = cap.unwrap_or(entry.1);
            Ok(Reply::SchedCredit {
                domains: [credit(state, domain)].into_iter().collect(),
            })
        }
        Command::Kill { .. } => Err(ControlError::Unsupported),
        Command::MemSet { domain, bytes } => {
            let memory = u64::from(domains()[usize::from(domain)].memory_mib) << 20;
            control::check_memory_target(bytes, memory)?;
            Ok(Reply::Done)
        }
        // Large numbers everywhere: the frame is close to the largest.
        Command::Stats { domain } => Ok(Reply::Stats {
            domain,
            vcpus: (0..domains()[usize::from(domain)].vcpus)
                .map(|index| VcpuStats {
                    index,
                    run_time_ns: u64::MAX / 2,
                    credit_ns: Some(i64::MIN),
                    priority: None,
                    parked: false,
                    state: VcpuState::Runnable,
                    halt_poll: HaltPollCounters::default(),
                })
                .collect(),
            paging: (domain == 1).then(|| PagingStats {
                memory_pages: 8192,
                target_pages: 768,
                resident_pages: 768,
                paged_pages: u64::MAX,
                dropped_pages: 0,
                pages_out: u64::MAX,
                pages_in: 900,
                evict_failures: 3,
                free_slots: Some(u32::MAX),
                swap_full: true,
                page_in_latency: Histogram::from_counts(
                    &[u32::MAX; control::PAGE_IN_LATENCY_BUCKETS],
                ),
            }),
        }),
        _ => Err(ControlError::Busy),
    }
}

/// Serves `connections` connections on `path`; before each answer it sends
/// a stale answer and some garbage, which the client must skip.
fn fake_core(path: &Path, connections: usize) -> (JoinHandle<()>, Arc<Mutex<State>>) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    let state = Arc::new(Mutex::new(State {
        weights: [(256, 0), (256, 0)],
        requests: Vec::new(),
    }));
    let shared = Arc::clone(&state);
    let handle = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut receiver = RequestReceiver::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).unwrap_or(0) == 1 {
                let Some(Received::Frame(frame)) = receiver.push(byte[0]) else {
                    continue;
                };
                let response = match control::decode_request(frame) {
                    Ok(request) => Response {
                        id: request.id,
                        result: answer(&mut shared.lock().unwrap(), request.command),
                    },
                    Err(refusal) => Response::refusal(refusal),
                };
                let mut buffer = [0u8; MAX_RESPONSE_FRAME_SIZE];
                let stale = Response {
                    id: response.id.wrapping_sub(1000),
                    result: Ok(Reply::Done),
                };
                let length = control::encode_response(&stale, &mut buffer).unwrap();
                let mut bytes = buffer[..length].to_vec();
                bytes.extend([0x13, 0x37, 0xff, 0x00]);
                let length = control::encode_response(&response, &mut buffer).unwrap();
                bytes.extend(&buffer[..length]);
                // In two writes, split inside the frame.
                let (first, second) = bytes.split_at(bytes.len() / 2);
                stream.write_all(first).unwrap();
                stream.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
                stream.write_all(second).unwrap();
            }
        }
    });
    (handle, state)
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_library_talks_to_the_fake_core() {
    let path = socket_path();
    let (server, state) = fake_core(&path, 4);
    let timeout = Duration::from_secs(5);
    let list = hvctl::run_words(&path, &words("list"), timeout).unwrap();
    assert!(
        list.starts_with(
            "Name     ID  Mem(MiB)  VCPUs  State\nhello     0        16      1  running\n"
        ),
        "{list}"
    );
    let set = hvctl::run_words(
        &path,
        &words("sched-credit -d spinner -w 512 -c 150"),
        timeout,
    )
    .unwrap();
    assert_eq!(set, "Name     ID  Weight  Cap\nspinner   1     512  150\n");
    let show = hvctl::run_words(&path, &words("sched-credit -d 1"), timeout).unwrap();
    assert_eq!(show, set);
    let error = hvctl::run_words(&path, &words("kill scheduler"), timeout).unwrap_err();
    assert_eq!(
        error.to_string(),
        "refused by the core: the core does not support this command yet"
    );
    server.join().unwrap();
    let requests = state.lock().unwrap().requests.clone();
    assert_eq!(
        requests,
        vec![
            Command::List,
            Command::List,
            Command::SchedCreditSet {
                domain: 1,
                weight: Some(512),
                cap: Some(150)
            },
            Command::List,
            Command::SchedCreditGet { domain: Some(1) },
            Command::Kill {
                server: ServerKind::Scheduler
            },
        ]
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn mem_set_and_paging_stats_go_through_the_socket() {
    let path = socket_path();
    let (server, state) = fake_core(&path, 2);
    let timeout = Duration::from_secs(5);
    let set = hvctl::run_words(&path, &words("mem-set spinner 3m"), timeout).unwrap();
    assert_eq!(
        set,
        "spinner: memory target set to 3 MiB (768 of 8192 pages)\n"
    );
    let stats = hvctl::run_words(&path, &words("stats -d spinner"), timeout).unwrap();
    let paging = stats.split_once("\n\n").map(|(_, paging)| paging);
    assert_eq!(
        paging,
        Some(
            "spinner (1):\n  paging: target 768/8192 pages, resident 768, paged out 18446744073709551615, \
             dropped 0; out 18446744073709551615, in 900, evict failures 3, free slots 4294967295, swap full\n  \
             page-in latency (us): <2:4294967295 2-4:4294967295 4-8:4294967295 8-16:4294967295 \
             16-32:4294967295 32-64:4294967295 64-128:4294967295 128-256:4294967295 256-512:4294967295 \
             512-1024:4294967295 1024-2048:4294967295 2048-4096:4294967295 4096-8192:4294967295 \
             8192-16384:4294967295 16384-32768:4294967295 >=32768:4294967295\n"
        ),
        "{stats}"
    );
    server.join().unwrap();
    let requests = state.lock().unwrap().requests.clone();
    assert_eq!(
        requests,
        vec![
            Command::List,
            Command::MemSet {
                domain: 1,
                bytes: 3 << 20
            },
            Command::List,
            Command::Stats { domain: 1 },
        ]
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_silent_core_times_out_with_a_clear_message() {
    let path = socket_path();
    let listener = UnixListener::bind(&path).unwrap();
    let holder = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        drop(stream);
    });
    let started = Instant::now();
    let error = hvctl::run_words(&path, &words("list"), Duration::from_millis(300)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "no answer from the core on {} within 0.3 s",
            path.display()
        )),
        "{message}"
    );
    assert!(message.contains("is `make run` running?"), "{message}");
    holder.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn no_socket_and_a_stale_socket_are_told_apart() {
    let path = socket_path();
    let error = hvctl::run_words(&path, &words("list"), Duration::from_secs(1)).unwrap_err();
    assert!(error.to_string().contains("no socket there"), "{error}");
    drop(UnixListener::bind(&path).unwrap());
    let error = hvctl::run_words(&path, &words("list"), Duration::from_secs(1)).unwrap_err();
    assert!(error.to_string().contains("a stale socket"), "{error}");
    assert!(
        error.to_string().ends_with("is `make run` running?"),
        "{error}"
    );
    let _ = std::fs::remove_file(&path);
}

fn hvctl(arguments: &str, socket: &Path) -> (i32, String, String) {
    let output = Process::new(env!("CARGO_BIN_EXE_hvctl"))
        .args(words(arguments))
        .env("CAIRN_CONTROL", socket)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_prints_tables_and_errors_with_exit_codes() {
    let path = socket_path();
    let (server, _) = fake_core(&path, 1);
    let (code, stdout, stderr) = hvctl("sched-credit -d hello -c 50", &path);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(stdout, "Name   ID  Weight  Cap\nhello   0     256   50\n");
    server.join().unwrap();

    let (code, stdout, stderr) = hvctl("sched-credit -d hello -w 0", &path);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(stderr, "hvctl: weight 0 is out of range 1..=65535\n");
    let (code, _, stderr) = hvctl("frobnicate", &path);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("hvctl: unknown command `frobnicate`"),
        "{stderr}"
    );
    let (code, _, stderr) = hvctl("list", &path);
    assert_eq!(code, 1);
    assert!(stderr.contains("is `make run` running?"), "{stderr}");
    let (code, stdout, _) = hvctl("help", &path);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("usage: hvctl"));
    let _ = std::fs::remove_file(&path);
}

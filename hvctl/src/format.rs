//! The tables `hvctl` prints: columns padded to their widest cell, two
//! spaces apart, numbers right-aligned, no trailing spaces; every text ends
//! with a newline. Headers follow `xl` where it has the same table (`list`:
//! `Name ID Mem VCPUs State`; `sched-credit`: `Name ID Weight Cap`).

use ipc::control::{
    self, DomainCredit, DomainHaltPoll, DomainId, DomainInfo, HaltPollGlobal, Histogram,
    PagingStats, ServerInfo, VcpuState, VcpuStats, HISTOGRAM_BUCKETS, MEMORY_GRANULE_BYTES,
    PAGE_IN_LATENCY_BUCKETS,
};
use ipc::messages::scheduler::Priority;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table of text cells.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra ones dropped).
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as lines of text.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(index, (header, _))| {
                self.rows
                    .iter()
                    .map(|row| row[index].chars().count())
                    .chain([header.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let headers: Vec<String> = self
            .columns
            .iter()
            .map(|(header, _)| (*header).to_owned())
            .collect();
        let mut text = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&self.columns)
                .zip(&widths)
                .map(|((cell, (_, align)), &width)| match align {
                    Align::Left => format!("{cell:<width$}"),
                    Align::Right => format!("{cell:>width$}"),
                })
                .collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
}

/// A domain's name, or `#ID` if the listing does not have it.
pub fn domain_name(domains: &[DomainInfo], id: DomainId) -> String {
    domains
        .iter()
        .find(|info| info.id == id)
        .map_or_else(|| format!("#{id}"), |info| info.name.to_string())
}

/// `hvctl list`.
pub fn list(domains: &[DomainInfo], servers: &[ServerInfo]) -> String {
    let mut table = Table::new(&[
        ("Name", Align::Left),
        ("ID", Align::Right),
        ("Mem(MiB)", Align::Right),
        ("VCPUs", Align::Right),
        ("State", Align::Left),
    ]);
    for info in domains {
        table.row(vec![
            info.name.to_string(),
            info.id.to_string(),
            info.memory_mib.to_string(),
            info.vcpus.to_string(),
            info.state.name().to_owned(),
        ]);
    }
    let mut text = table.render();
    if !servers.is_empty() {
        let mut table = Table::new(&[
            ("Server", Align::Left),
            ("Kind", Align::Left),
            ("Generation", Align::Right),
            ("Restarts", Align::Right),
            ("State", Align::Left),
        ]);
        for server in servers {
            table.row(vec![
                server.name.to_string(),
                control::server_kind_name(server.kind).to_owned(),
                server.generation.to_string(),
                server.restarts.to_string(),
                server.state.name().to_owned(),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

/// `hvctl sched-credit -s`, and the first line of `hvctl sched-credit`.
pub fn sched_global(timeslice_ms: u32, ratelimit_us: u32) -> String {
    let ratelimit = if ratelimit_us == 0 {
        "off".to_owned()
    } else {
        format!("{ratelimit_us}us")
    };
    format!("scheduler: credit, tslice={timeslice_ms}ms, ratelimit={ratelimit}\n")
}

/// `hvctl sched-credit [-d DOM]`.
pub fn sched_credit(domains: &[DomainInfo], credits: &[DomainCredit]) -> String {
    let mut table = Table::new(&[
        ("Name", Align::Left),
        ("ID", Align::Right),
        ("Weight", Align::Right),
        ("Cap", Align::Right),
    ]);
    for credit in credits {
        table.row(vec![
            domain_name(domains, credit.domain),
            credit.domain.to_string(),
            credit.weight.to_string(),
            credit.cap.to_string(),
        ]);
    }
    table.render()
}

/// `hvctl halt-poll [-d DOM]`.
pub fn halt_poll(
    domains: &[DomainInfo],
    global: &HaltPollGlobal,
    overrides: &[DomainHaltPoll],
) -> String {
    let mut text = format!(
        "halt_poll_ns={} grow={} grow_start={} shrink={}\n",
        global.max_ns, global.grow, global.grow_start_ns, global.shrink
    );
    let mut table = Table::new(&[
        ("Name", Align::Left),
        ("ID", Align::Right),
        ("Max(ns)", Align::Right),
        ("From", Align::Left),
    ]);
    for entry in overrides {
        let max_ns = entry.effective_max_ns(global);
        let from = match (entry.max_ns, max_ns) {
            (None, 0) => "global (off)",
            (None, _) => "global",
            (Some(_), 0) => "domain (off)",
            (Some(_), _) => "domain",
        };
        table.row(vec![
            domain_name(domains, entry.domain),
            entry.domain.to_string(),
            max_ns.to_string(),
            from.to_owned(),
        ]);
    }
    text.push_str(&table.render());
    text
}

fn state(state: VcpuState) -> String {
    match state {
        VcpuState::Running { pcpu } => format!("running@{pcpu}"),
        VcpuState::Runnable => "runnable".to_owned(),
        VcpuState::Blocked => "blocked".to_owned(),
        VcpuState::Down => "down".to_owned(),
        VcpuState::Stopped => "stopped".to_owned(),
    }
}

fn priority(stats: &VcpuStats) -> String {
    let word = match stats.priority {
        None => return "-".to_owned(),
        Some(Priority::Boost) => "boost",
        Some(Priority::Under) => "under",
        Some(Priority::Over) => "over",
        Some(Priority::Idle) => "idle",
    };
    if stats.parked {
        format!("{word},parked")
    } else {
        word.to_owned()
    }
}

/// `hvctl stats`: one row per vCPU, domains in the order given.
pub fn stats(domains: &[DomainInfo], per_domain: &[(DomainId, impl AsRef<[VcpuStats]>)]) -> String {
    let mut table = Table::new(&[
        ("Name", Align::Left),
        ("ID", Align::Right),
        ("VCPU", Align::Right),
        ("State", Align::Left),
        ("Time(s)", Align::Right),
        ("Credit(us)", Align::Right),
        ("Prio", Align::Left),
        ("Polls", Align::Right),
        ("OK", Align::Right),
        ("Invalid", Align::Right),
        ("PollOK(us)", Align::Right),
        ("PollFail(us)", Align::Right),
        ("Wait(us)", Align::Right),
        ("Window(ns)", Align::Right),
    ]);
    for (domain, vcpus) in per_domain {
        for vcpu in vcpus.as_ref() {
            let poll = &vcpu.halt_poll;
            table.row(vec![
                domain_name(domains, *domain),
                domain.to_string(),
                vcpu.index.to_string(),
                state(vcpu.state),
                format!("{:.3}", vcpu.run_time_ns as f64 / 1e9),
                vcpu.credit_ns
                    .map_or_else(|| "-".to_owned(), |credit| (credit / 1000).to_string()),
                priority(vcpu),
                poll.attempted.to_string(),
                poll.successful.to_string(),
                poll.invalid.to_string(),
                (poll.poll_success_ns / 1000).to_string(),
                (poll.poll_fail_ns / 1000).to_string(),
                (poll.wait_ns / 1000).to_string(),
                poll.window_ns.to_string(),
            ]);
        }
    }
    table.render()
}

/// `hvctl stats`, after the vCPU table: each domain's paging in two
/// lines under its name, counts in 4 KiB pages (nothing if no domain has
/// paging state):
///
/// ```text
///
/// hello (0):
///   paging: target 768/4096 pages, resident 768, paged out 3328, dropped 0; out 4200, in 900, evict failures 3, free slots 12000
///   page-in latency (us): <2:5 2-4:10 64-128:2 >=32768:1
/// ```
///
/// `free slots -`: the pager has not reported yet; `, swap full` ends the
/// first line while the swap partition is full (eviction stopped).
pub fn paging(domains: &[DomainInfo], per_domain: &[(DomainId, PagingStats)]) -> String {
    let mut text = String::new();
    for (domain, paging) in per_domain {
        let free_slots = paging
            .free_slots
            .map_or_else(|| "-".to_owned(), |slots| slots.to_string());
        let swap_full = if paging.swap_full { ", swap full" } else { "" };
        text.push_str(&format!(
            "\n{} ({domain}):\n  paging: target {}/{} pages, resident {}, paged out {}, dropped {}; \
             out {}, in {}, evict failures {}, free slots {free_slots}{swap_full}\n  page-in latency (us): {}\n",
            domain_name(domains, *domain),
            paging.target_pages,
            paging.memory_pages,
            paging.resident_pages,
            paging.paged_pages,
            paging.dropped_pages,
            paging.pages_out,
            paging.pages_in,
            paging.evict_failures,
            latency(&paging.page_in_latency),
        ));
    }
    text
}

/// A page-in latency histogram on one line: `FROM-TO:COUNT` per bucket that
/// counted anything, µs (bucket 0 is `<2`, the core's last one is open,
/// `>=32768`); `none yet` if all are empty.
pub fn latency(histogram: &Histogram) -> String {
    let cells: Vec<String> = histogram
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, &count)| count > 0)
        .map(|(bucket, count)| {
            let from = 1u64 << bucket;
            let range = match bucket {
                0 => "<2".to_owned(),
                _ if bucket == PAGE_IN_LATENCY_BUCKETS - 1 => format!(">={from}"),
                _ => format!("{from}-{}", from << 1),
            };
            format!("{range}:{count}")
        })
        .collect();
    if cells.is_empty() {
        "none yet".to_owned()
    } else {
        cells.join(" ")
    }
}

/// A memory size for people: whole MiB as `N MiB`, else `N KiB`.
pub fn memory_size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// `hvctl mem-set`: what the core accepted.
pub fn mem_set(domain: &str, bytes: u64, memory_mib: u32) -> String {
    let memory_bytes = u64::from(memory_mib) << 20;
    format!(
        "{domain}: memory target set to {} ({} of {} pages)\n",
        memory_size(bytes),
        bytes / MEMORY_GRANULE_BYTES,
        memory_bytes / MEMORY_GRANULE_BYTES
    )
}

/// `hvctl stats --histograms`: one vCPU's three histograms, the buckets
/// that counted anything (all empty: one line saying so).
pub fn histograms(
    domain: &str,
    vcpu: u8,
    poll_success: &Histogram,
    poll_fail: &Histogram,
    wait: &Histogram,
) -> String {
    let mut text =
        format!("\n{domain} vCPU {vcpu} halt-poll histograms (count per log2 bucket):\n");
    let mut table = Table::new(&[
        ("From(ns)", Align::Right),
        ("Success", Align::Right),
        ("Fail", Align::Right),
        ("Wait", Align::Right),
    ]);
    let mut any = false;
    for bucket in 0..HISTOGRAM_BUCKETS {
        let counts = [
            poll_success.buckets[bucket],
            poll_fail.buckets[bucket],
            wait.buckets[bucket],
        ];
        if counts.iter().all(|&count| count == 0) {
            continue;
        }
        any = true;
        let from: u64 = if bucket == 0 { 0 } else { 1 << bucket };
        let mut row = vec![from.to_string()];
        row.extend(counts.iter().map(ToString::to_string));
        table.row(row);
    }
    if any {
        text.push_str(&table.render());
    } else {
        text.push_str("(no halts yet)\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_to_the_widest_cell_without_trailing_spaces() {
        let mut table = Table::new(&[
            ("Name", Align::Left),
            ("N", Align::Right),
            ("Note", Align::Left),
        ]);
        table.row(vec!["a".into(), "1000".into(), String::new()]);
        table.row(vec!["longer".into(), "7".into(), "x".into()]);
        table.row(vec!["short".into()]);
        assert_eq!(
            table.render(),
            "Name       N  Note\na       1000\nlonger     7  x\nshort\n"
        );
    }

    #[test]
    fn unknown_domains_show_their_id() {
        assert_eq!(domain_name(&[], 4), "#4");
    }

    #[test]
    fn empty_histograms_say_so() {
        let empty = Histogram::default();
        assert!(histograms("d", 0, &empty, &empty, &empty).ends_with("(no halts yet)\n"));
    }

    #[test]
    fn paging_shows_two_lines_per_domain() {
        let mut page_in_latency = Histogram::default();
        page_in_latency.buckets[0] = 5;
        page_in_latency.buckets[1] = 10;
        page_in_latency.buckets[6] = 2;
        page_in_latency.buckets[PAGE_IN_LATENCY_BUCKETS - 1] = 1;
        let busy = PagingStats {
            memory_pages: 4096,
            target_pages: 768,
            resident_pages: 768,
            paged_pages: 3328,
            dropped_pages: 0,
            pages_out: 4200,
            pages_in: 900,
            evict_failures: 3,
            free_slots: Some(12000),
            swap_full: false,
            page_in_latency,
        };
        let idle = PagingStats {
            memory_pages: 512,
            target_pages: 512,
            resident_pages: 500,
            dropped_pages: 12,
            free_slots: None,
            swap_full: true,
            ..PagingStats::default()
        };
        assert_eq!(paging(&[], &[]), "");
        assert_eq!(
            paging(&[], &[(0, busy), (3, idle)]),
            "
#0 (0):
  paging: target 768/4096 pages, resident 768, paged out 3328, dropped 0; out 4200, in 900, evict failures 3, free slots 12000
  page-in latency (us): <2:5 2-4:10 64-128:2 >=32768:1

#3 (3):
  paging: target 512/512 pages, resident 500, paged out 0, dropped 12; out 0, in 0, evict failures 0, free slots -, swap full
  page-in latency (us): none yet
"
        );
    }

    #[test]
    fn memory_sizes_read_as_mib_when_whole() {
        assert_eq!(memory_size(8 << 20), "8 MiB");
        assert_eq!(memory_size((2 << 20) + 4096), "2052 KiB");
        assert_eq!(
            mem_set("hello", 8 << 20, 16),
            "hello: memory target set to 8 MiB (2048 of 4096 pages)\n"
        );
    }

    #[test]
    fn the_ratelimit_can_be_off() {
        assert_eq!(
            sched_global(30, 0),
            "scheduler: credit, tslice=30ms, ratelimit=off\n"
        );
        assert_eq!(
            sched_global(1, 100),
            "scheduler: credit, tslice=1ms, ratelimit=100us\n"
        );
    }
}

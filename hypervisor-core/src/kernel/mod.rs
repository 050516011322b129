//! The core's boot sequence and run loop, in safe code over `arch`.

mod apic;
mod bench;
mod control;
mod domain;
mod paging;
mod run;
mod scheduling;
mod server;
mod smp;
mod vcpu;

fn server_kind_name(kind: ipc::server::ServerKind) -> &'static str {
    match kind {
        ipc::server::ServerKind::Scheduler => "scheduler",
        ipc::server::ServerKind::Pager => "pager",
        ipc::server::ServerKind::Test => "test",
    }
}

use hypervisor_core::addr::PAGE_SIZE;
use hypervisor_core::frame::FrameAllocator;
use ipc::boot::{Bundle, RunMode, MAX_DOMAINS};
use ipc::exit_status::ExitStatus;
use ipc::pvh::{MemmapEntry, ModlistEntry, StartInfo, MEMMAP_ENTRY_SIZE, MEMMAP_RAM, MODLIST_ENTRY_SIZE, START_INFO_SIZE};

use crate::arch::{self, cpu, interrupts, lapic, memory, serial, svm};
use domain::PermissionMaps;
use run::{DomainState, Machine, MAX_VCPUS_TOTAL};

/// Slices per second of the built-in scheduler (10 ms slices): the timer is
/// armed one-shot for the end of the slice or an earlier wake-up.
pub const TICK_HZ: u64 = 100;

fn fail_boot(reason: &str) -> ! {
    defmt::error!("boot failed: {=str}", reason);
    arch::exit_machine(ExitStatus::BootError)
}

/// Reads the PVH memory map and builds the frame allocator from it.
fn build_frame_allocator(info: &StartInfo) -> (FrameAllocator<'static>, u64) {
    let Some(mut frames) = memory::take_frame_allocator() else { fail_boot("frame allocator taken twice") };
    let entries = info.memmap_entries.min(128) as u64;
    let Some(table) = memory::reserved_bytes(info.memmap_paddr, entries * MEMMAP_ENTRY_SIZE as u64) else {
        fail_boot("PVH memory map unreadable")
    };
    let mut ram_end = 0;
    for raw in table.chunks_exact(MEMMAP_ENTRY_SIZE) {
        if let Some(entry) = MemmapEntry::decode(raw) {
            if entry.kind == MEMMAP_RAM {
                let end = entry.addr.saturating_add(entry.size);
                frames.add_free_range(entry.addr, end);
                ram_end = ram_end.max(end);
            }
        }
    }
    let (kernel_start, kernel_end) = memory::kernel_image();
    frames.reserve_range(0, 0x10_0000);
    frames.reserve_range(kernel_start, kernel_end);
    (frames, ram_end)
}

/// The boot module (the bundle), reserved in the allocator.
fn boot_module(info: &StartInfo, frames: &mut FrameAllocator<'_>) -> &'static [u8] {
    if info.nr_modules == 0 {
        fail_boot("no boot module: pass the appliance bundle with -initrd");
    }
    let Some(list) = memory::reserved_bytes(info.modlist_paddr, MODLIST_ENTRY_SIZE as u64) else {
        fail_boot("PVH module list unreadable")
    };
    let Some(module) = ModlistEntry::decode(list) else { fail_boot("PVH module list unreadable") };
    frames.reserve_range(module.paddr, module.paddr.saturating_add(module.size));
    match memory::reserved_bytes(module.paddr, module.size) {
        Some(bytes) => bytes,
        None => fail_boot("boot module outside the identity map"),
    }
}

/// The core's boot sequence, entered from the boot code in long mode with the
/// PVH start info address.
pub fn start(start_info_address: u64) -> ! {
    serial::init();
    defmt::info!("cairn core starting");
    let Some(info) = memory::reserved_bytes(start_info_address, START_INFO_SIZE as u64).and_then(StartInfo::decode) else {
        fail_boot("no PVH start info (bad magic in ebx)")
    };
    let selectors = cpu::load_descriptor_tables();
    interrupts::load_idt(selectors.kernel_code);

    let (mut frames, ram_end) = build_frame_allocator(&info);
    // Boot data (start info, memory map, module list) lives in the first MiB
    // under QEMU; reserve the pages anyway in case a loader puts it elsewhere.
    frames.reserve_range(start_info_address, start_info_address + PAGE_SIZE);
    frames.reserve_range(info.memmap_paddr, info.memmap_paddr + PAGE_SIZE);
    frames.reserve_range(info.modlist_paddr, info.modlist_paddr + PAGE_SIZE);
    let bundle_bytes = boot_module(&info, &mut frames);
    if memory::install_core_page_tables(&mut frames, ram_end).is_err() {
        fail_boot("could not build the core's page tables");
    }
    defmt::info!("memory: {=u64} MiB RAM, {=usize} frames free", ram_end >> 20, frames.free_frames());

    let (_, kernel_end) = memory::kernel_image();
    if kernel_end > arch::user::CORE_WINDOW {
        fail_boot("core image larger than the window server page tables map (arch::user::CORE_WINDOW)");
    }
    arch::user::init();
    control::ControlPort::init();

    let calibration = lapic::init_and_calibrate();
    if !calibration.measured {
        defmt::warn!("PIT did not answer: TSC and APIC timer rates are assumed, not measured");
    }
    defmt::info!("timer: TSC {=u64} MHz, APIC timer {=u64} kHz", calibration.tsc_hz / 1_000_000, calibration.timer_hz / 1000);

    static BUNDLE: arch::smp::BootCell<Bundle<'static>> = arch::smp::BootCell::new();
    let bundle = match Bundle::parse(bundle_bytes) {
        Ok(bundle) => bundle,
        Err(error) => fail_boot(error.reason()),
    };
    let Some(bundle) = BUNDLE.init(bundle) else { fail_boot("bundle parsed twice") };
    let bundle: &'static Bundle<'static> = bundle;
    let online = arch::smp::start_application_processors(bundle.manifest.machine.cpus);
    defmt::info!("pCPUs online: {=u32} of {=u8}", online, bundle.manifest.machine.cpus);
    let host = match svm::enable(&mut frames) {
        Ok(host) => host,
        Err(error) => fail_boot(error.reason()),
    };
    defmt::info!("SVM enabled with nested paging, {=u32} ASIDs", host.asid_count);
    let Some(maps) = PermissionMaps::new(&mut frames) else { fail_boot("no memory for permission maps") };

    // Every AP's SVM save areas, from the same allocator, before the
    // machine takes it.
    let mut hosts = [None; arch::smp::MAX_CPUS];
    for (cpu, slot) in hosts.iter_mut().enumerate().skip(1) {
        if arch::smp::is_online(cpu) {
            match svm::host_state(&mut frames, host.asid_count) {
                Ok(state) => *slot = Some(state),
                Err(error) => fail_boot(error.reason()),
            }
        }
    }
    static MACHINE: arch::smp::BootCell<Machine<'static>> = arch::smp::BootCell::new();
    let Some(machine) = MACHINE.init(Machine::new(host, maps, frames)) else { fail_boot("machine built twice") };
    // The APs are numbered 0..online by their APIC IDs (QEMU's numbering).
    machine.online = (0..arch::smp::MAX_CPUS).take_while(|&cpu| arch::smp::is_online(cpu)).count().max(1);
    defmt::info!("machine state: {=usize} bytes (static), boot stack {=usize}", core::mem::size_of::<Machine<'_>>(), arch::boot::BOOT_STACK_SIZE);
    for spec in &bundle.manifest.servers {
        match machine.start_server(spec, bundle.image(spec.image)) {
            Ok(()) => defmt::info!("server {=str} loaded ({=str})", spec.name.as_str(), server_kind_name(spec.kind)),
            Err(error) => defmt::error!("server {=str} not started: {=str}", spec.name.as_str(), error.reason()),
        }
    }
    for (index, spec) in bundle.manifest.domains.iter().enumerate().take(MAX_DOMAINS) {
        let ramdisk = spec.ramdisk.map(|ramdisk| bundle.image(ramdisk));
        let state = match machine.build_domain(index, spec, bundle.image(spec.kernel), ramdisk) {
            Ok(()) => {
                defmt::info!("domain {=str}: {=u32} MiB, {=u8} vCPU(s), started", spec.name.as_str(), spec.memory_mib, spec.vcpus);
                DomainState::Running
            }
            Err(error) => {
                defmt::error!("domain {=str} not started: {=str}", spec.name.as_str(), error.reason());
                DomainState::Failed
            }
        };
        machine.set_domain(index, spec.name.as_str(), state);
    }
    for index in 0..machine.servers.len() {
        machine.introduce_server(index);
    }
    if let RunMode::Bench { iterations } = bundle.manifest.mode {
        bench::run(machine, iterations);
    }
    if let Some(plan) = bundle.manifest.machine.faults {
        let allowed = |kind: ipc::server::ServerKind| plan.servers & (1 << kind as u8) != 0;
        let now_ns = cpu::rdtsc() / (calibration.tsc_hz / 1_000_000).max(1) * 1000;
        machine.injector = hypervisor_core::injector::Injector::new(
            plan.seed,
            plan.kills,
            allowed(ipc::server::ServerKind::Scheduler),
            allowed(ipc::server::ServerKind::Pager),
            u64::from(plan.interval_ms) * 1_000_000,
            now_ns,
        );
        defmt::info!("fault injection: seed {=u64}, {=u32} kills, about one per {=u32} ms", plan.seed, plan.kills, plan.interval_ms);
    }
    if bundle.manifest.machine.stop_after_ms > 0 {
        let ticks = u64::from(bundle.manifest.machine.stop_after_ms) * (calibration.tsc_hz / 1000);
        machine.stop_at = Some(cpu::rdtsc().saturating_add(ticks));
    }
    smp::start(machine, &hosts)
}

const _: () = assert!(MAX_VCPUS_TOTAL >= MAX_DOMAINS);

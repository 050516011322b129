//! Starting the application processors (APs): INIT-SIPI-SIPI through the
//! xAPIC (TCG has no x2APIC), a real-mode trampoline copied below 1 MiB that
//! takes each AP to long mode on the core's page tables, and a per-AP stack.
//!
//! An AP that comes up loads its own GDT and TSS and the shared IDT, enables
//! its local APIC, says it is online and waits, interrupts off, until the
//! bootstrap CPU has built the machine and hands it its SVM save areas; it
//! then enables SVM and enters the kernel's per-CPU loop.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use embedded_hal::delay::DelayNs;

use super::{cpu, interrupts, lapic, svm};

/// Where the trampoline runs (page 8: STARTUP vector 0x08).
const TRAMPOLINE: u64 = 0x8000;
/// Most CPUs the core starts.
pub const MAX_CPUS: usize = ipc::boot::MAX_CPUS as usize;
const AP_STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stacks([[u8; AP_STACK_SIZE]; MAX_CPUS - 1]);

static mut AP_STACKS: Stacks = Stacks([[0; AP_STACK_SIZE]; MAX_CPUS - 1]);
static ONLINE: AtomicU32 = AtomicU32::new(1);

// The trampoline has a fixed layout (`.org`), so its absolute addresses at
// 0x8000 are plain numbers: code16 at 0x00, GDT at 0x40, GDT pointer at
// 0x60, then CR3 (0x68), stack (0x70), entry (0x78), CPU index (0x80),
// code32 at 0x100, code64 at 0x180.
const SLOT_CR3: u64 = 0x68;
const SLOT_STACK: u64 = 0x70;
const SLOT_ENTRY: u64 = 0x78;
const SLOT_CPU: u64 = 0x80;

global_asm!(
    r#"
    .section .text.trampoline, "ax"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    xor ax, ax
    mov ds, ax
    lgdt [0x8060]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea
    .long 0x8100
    .word 0x08

    .org 0x40
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
    .org 0x60
    .word 31
    .long 0x8040
    .org 0x68
    .quad 0
    .quad 0
    .quad 0
    .quad 0

    .org 0x100
    .code32
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, dword ptr [0x8068]
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax
    .byte 0xea
    .long 0x8180
    .word 0x18

    .org 0x180
    .code64
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, qword ptr [0x8070]
    mov edi, dword ptr [0x8080]
    mov rax, qword ptr [0x8078]
    call rax
2:
    cli
    hlt
    jmp 2b
ap_trampoline_end:
"#
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The run-time address of a slot of the copied trampoline.
fn slot(offset: u64) -> *mut u64 {
    (TRAMPOLINE + offset) as *mut u64
}

/// Starts CPUs `1..cpus` (APIC IDs as QEMU numbers them) and returns how
/// many CPUs are online, the bootstrap one included.
pub fn start_application_processors(cpus: u8) -> u32 {
    let cpus = usize::from(cpus).min(MAX_CPUS);
    if cpus <= 1 {
        return 1;
    }
    let start = (&raw const ap_trampoline_start) as usize;
    let length = (&raw const ap_trampoline_end) as usize - start;
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    // SAFETY: page 0x8000 lies in the first MiB, which the frame allocator
    // never hands out and which is identity-mapped; nothing else uses it
    // after boot (the PVH start info, memory map and module list were read
    // before). The trampoline is shorter than a page.
    unsafe {
        assert!(length <= 4096, "trampoline larger than its page");
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, length);
        slot(SLOT_CR3).write_volatile(cr3);
        slot(SLOT_ENTRY).write_volatile(ap_entry as *const () as u64);
    }
    let mut delay = lapic::TscDelay;
    for cpu in 1..cpus {
        let before = ONLINE.load(Ordering::Acquire);
        // SAFETY: each AP gets its own stack, written here before its IPIs;
        // the trampoline's slots are read by one AP at a time (the next AP is
        // started only after this one is online or timed out).
        unsafe {
            let stacks = &raw const AP_STACKS;
            let top = (stacks as *const u8).add((cpu - 1 + 1) * AP_STACK_SIZE) as u64;
            slot(SLOT_STACK).write_volatile(top);
            slot(SLOT_CPU).write_volatile(cpu as u64);
        }
        // INIT (assert, level), then two STARTUPs with vector 0x08 (page 8).
        lapic::send_ipi(cpu as u8, 0x0000_4500);
        delay.delay_ms(10);
        for _ in 0..2 {
            lapic::send_ipi(cpu as u8, 0x0000_4600 | (TRAMPOLINE >> 12) as u32);
            delay.delay_us(200);
        }
        for _ in 0..100 {
            if ONLINE.load(Ordering::Acquire) != before {
                break;
            }
            delay.delay_ms(1);
        }
    }
    ONLINE.load(Ordering::Acquire).count_ones()
}

/// The bootstrap CPU's go-ahead: the kernel's per-CPU loop, as an address.
static GO: AtomicUsize = AtomicUsize::new(0);
/// Each AP's SVM save areas, written before `GO` is set.
static mut AP_HOSTS: [Option<svm::HostState>; MAX_CPUS] = [None; MAX_CPUS];

/// Whether CPU `cpu` came online.
pub fn is_online(cpu: usize) -> bool {
    cpu < 32 && ONLINE.load(Ordering::Acquire) & (1 << cpu) != 0
}

/// Lets every online AP enable SVM with its save areas (`hosts[cpu]`) and
/// enter `entry(cpu, host)`, the kernel's per-CPU loop.
pub fn release_application_processors(hosts: &[Option<svm::HostState>], entry: fn(usize, svm::HostState) -> !) {
    // SAFETY: APs read AP_HOSTS only after GO is set (acquire), which
    // happens after these writes (release); nothing writes it afterwards.
    unsafe {
        let slots = &mut *(&raw mut AP_HOSTS);
        for (slot, host) in slots.iter_mut().zip(hosts) {
            *slot = *host;
        }
    }
    GO.store(entry as usize, Ordering::Release);
}

/// Where an AP arrives in long mode, on its own stack.
extern "C" fn ap_entry(cpu: u32) -> ! {
    let cpu = cpu as usize;
    cpu::load_ap_tables(cpu);
    interrupts::load_shared_idt();
    lapic::enable_local();
    ONLINE.fetch_or(1 << cpu, Ordering::AcqRel);
    // Wait, interrupts off, for the machine to be built.
    let entry = loop {
        let entry = GO.load(Ordering::Acquire);
        if entry != 0 {
            break entry;
        }
        core::hint::spin_loop();
    };
    // SAFETY: GO was set after AP_HOSTS was written (see above).
    let host = unsafe { (*(&raw const AP_HOSTS)).get(cpu).copied().flatten() };
    let Some(host) = host else {
        loop {
            cpu::disable_interrupts();
            cpu::halt();
        }
    };
    svm::enable_here(&host);
    // SAFETY: GO holds the address of a `fn(usize, HostState) -> !` (the
    // only value `release_application_processors` stores).
    let entry: fn(usize, svm::HostState) -> ! = unsafe { core::mem::transmute::<usize, fn(usize, svm::HostState) -> !>(entry) };
    entry(cpu, host)
}

/// A value every pCPU reaches through one spin lock: the machine. The
/// holder gets `&mut T` for the duration of a closure; interrupts are off in
/// the core, so a holder is never interrupted into taking it again.
pub struct Shared<T> {
    value: AtomicPtr<T>,
    locked: AtomicBool,
}

// SAFETY: access to the value is serialised by the lock.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Nothing published yet.
    pub const fn new() -> Self {
        Self { value: AtomicPtr::new(core::ptr::null_mut()), locked: AtomicBool::new(false) }
    }

    /// Publishes the value (once; it lives for ever).
    pub fn publish(&self, value: &'static mut T) {
        self.value.store(value, Ordering::Release);
    }

    /// Runs `work` on the value with the lock held; `None` if nothing has
    /// been published.
    pub fn with<R>(&self, work: impl FnOnce(&mut T) -> R) -> Option<R> {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        let pointer = self.value.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from a `&'static mut T` handed
        // over in `publish`, and the lock makes this the only reference to
        // it until the lock is released below.
        let result = (!pointer.is_null()).then(|| work(unsafe { &mut *pointer }));
        self.locked.store(false, Ordering::Release);
        result
    }
}

/// A static slot filled once at boot with a value that lives for ever
/// (what `static_cell` does, in a dozen lines): the bundle and the machine,
/// which every pCPU reaches for the whole run.
pub struct BootCell<T> {
    value: core::cell::UnsafeCell<core::mem::MaybeUninit<T>>,
    taken: AtomicBool,
}

// SAFETY: the value is handed out once, as the only reference to it.
unsafe impl<T: Send> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    /// Empty.
    pub const fn new() -> Self {
        Self { value: core::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()), taken: AtomicBool::new(false) }
    }

    /// Moves `value` in and returns it for ever; `None` on a second call.
    #[allow(clippy::mut_from_ref, reason = "handed out once: the swap below admits one caller")]
    pub fn init(&'static self, value: T) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the swap above lets exactly one caller through, so this
        // is the only reference ever made to the slot.
        Some(unsafe { (*self.value.get()).write(value) })
    }
}

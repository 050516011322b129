//! The bare-metal half: the `_start` stub, the syscall instructions, the
//! ring views built from the entry registers, and the panic handler. This is
//! the only `unsafe` code of the server side.

use core::arch::{asm, global_asm};
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use ipc::ring::{
    RingMemory, ARGUMENT_PAGE_OFFSET, RING_BYTES, TO_CORE_RING_OFFSET, TO_SERVER_RING_OFFSET,
};
use ipc::publication::{PublicationArea, PUBLICATION_BYTES, PUBLICATION_OFFSET};
use ipc::server::{syscall, MAX_ARGUMENTS_LEN, RING_REGION_BASE};

use crate::handler::Handler;
use crate::log::LogLine;
use crate::platform::{Platform, Wake};
use crate::runtime::{Instance, Runtime};

// The core enters here in ring 3 with rsp = 0x6000_0000 (16-byte aligned)
// and rdi, rsi, rdx, rcx = generation, ring base, kind, argument pointer:
// exactly the first four arguments of the System V calling convention, so
// `server_main` (defined by `components::server!`) receives them as they
// are. `call` pushes the return address, as a called function expects.
global_asm!(
    ".section .text._start, \"ax\", @progbits",
    ".globl _start",
    ".type _start, @function",
    "_start:",
    "    cld",
    "    xor ebp, ebp",
    "    and rsp, -16",
    "    call server_main",
    "    ud2",
    ".size _start, . - _start",
);

/// Makes syscall `number` (`docs/server-abi.md`: arguments in rdi, rsi,
/// rdx, r10, r8; result in rax; rcx and r11 clobbered).
fn syscall(number: u64, arguments: [u64; 5]) -> i64 {
    let result: i64;
    // SAFETY: `syscall` enters the core, which saves and restores every
    // register but rax (the result), rcx and r11 (declared clobbered), and
    // returns to the next instruction. No syscall of the server ABI writes
    // server memory (the core only reads a `log` buffer; `device_write`
    // starts DMA only into the DMA region, which Rust code reaches through
    // raw volatile accesses alone, see `device.rs`), so Rust's view of
    // memory stays valid whatever the arguments; the asm is not `nomem`,
    // so it also orders the ring's atomics around `wait` and `notify`.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") number as i64 => result,
            in("rdi") arguments[0],
            in("rsi") arguments[1],
            in("rdx") arguments[2],
            in("r10") arguments[3],
            in("r8") arguments[4],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result
}

/// `exit(code)`: the core stops this instance (and starts a new one).
pub fn exit(code: u64) -> ! {
    syscall(syscall::EXIT, [code, 0, 0, 0, 0]);
    // The core never returns from `exit`; should it, keep yielding.
    loop {
        syscall(syscall::YIELD, [0; 5]);
    }
}

/// `log(pointer, length)`, cut to the ABI's limit.
fn log(bytes: &[u8]) {
    let length = bytes.len().min(ipc::server::MAX_LOG_LEN);
    syscall(
        syscall::LOG,
        [bytes.as_ptr() as u64, length as u64, 0, 0, 0],
    );
}

/// The TSC rate the core gave (`clock_rate`): 0 until asked, `u64::MAX`
/// if it gave none.
static CLOCK_RATE: AtomicU64 = AtomicU64::new(0);

/// The machine itself: each [`Platform`] call is the instruction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hardware;

impl Platform for Hardware {
    fn yield_now(&mut self) {
        syscall(syscall::YIELD, [0; 5]);
    }

    fn wait(&mut self, timeout_ns: u64) -> Wake {
        Wake(syscall(syscall::WAIT, [timeout_ns, 0, 0, 0, 0]) as u64)
    }

    fn notify(&mut self) {
        syscall(syscall::NOTIFY, [0; 5]);
    }

    /// `rdtsc` scaled by the rate the core gives once (`clock_rate`),
    /// which is exactly what the `time` syscall computes, without the trip
    /// to the core; the syscall if the core does not give the rate.
    fn time(&mut self) -> u64 {
        let mut rate = CLOCK_RATE.load(Ordering::Relaxed);
        if rate == 0 {
            let answer = syscall(syscall::CLOCK_RATE, [0; 5]);
            rate = u64::try_from(answer).ok().filter(|&rate| rate > 0).unwrap_or(u64::MAX);
            CLOCK_RATE.store(rate, Ordering::Relaxed);
        }
        if rate == u64::MAX {
            return syscall(syscall::TIME, [0; 5]) as u64;
        }
        // SAFETY: RDTSC has no side effects; the core leaves CR4.TSD clear,
        // so it is allowed in ring 3.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        (u128::from(tsc) * 1_000_000_000 / u128::from(rate)) as u64
    }

    fn log(&mut self, bytes: &[u8]) {
        log(bytes);
    }

    fn device_info(&mut self, item: u64) -> i64 {
        syscall(syscall::DEVICE_INFO, [item, 0, 0, 0, 0])
    }

    fn device_write(&mut self, offset: u64, value: u32) -> i64 {
        syscall(syscall::DEVICE_WRITE, [offset, u64::from(value), 0, 0, 0])
    }

    fn raw_syscall(&mut self, number: u64, arguments: [u64; 5]) -> i64 {
        syscall(number, arguments)
    }

    fn read_probe(&mut self, address: u64) -> u64 {
        let value: u64;
        // SAFETY: one 8-byte load from `address` inside the asm; no Rust
        // reference is created and nothing is written. If the address is not
        // readable from ring 3 the CPU faults and the core stops this server
        // before the next instruction; otherwise the value is returned.
        unsafe {
            asm!(
                "mov {value}, qword ptr [{address}]",
                address = in(reg) address,
                value = lateout(reg) value,
                options(nostack, readonly, preserves_flags),
            );
        }
        value
    }

    fn write_probe(&mut self, address: u64) {
        // SAFETY: reads the byte at `address` and stores the same value back,
        // so if the store is allowed memory is unchanged and nothing Rust
        // relies on is altered (the hatch is documented as not for memory
        // written concurrently, i.e. not the rings). If the address is not
        // writable from ring 3 the store faults and the core stops this
        // server before the next instruction.
        unsafe {
            asm!(
                "mov {byte}, byte ptr [{address}]",
                "mov byte ptr [{address}], {byte}",
                address = in(reg) address,
                byte = out(reg_byte) _,
                options(nostack, preserves_flags),
            );
        }
    }

    fn spin(&mut self) {
        // With the direction flag set, as a server preempted inside a
        // backward memmove has it: the core must not inherit it when the
        // timer takes the CPU back (a regression test of the `cld` in the
        // core's return path; `scenario hostile`, generation 5).
        // SAFETY: `std` only sets RFLAGS.DF; this loop never returns and
        // makes no call or string operation that DF would affect.
        unsafe { core::arch::asm!("std", options(nomem, nostack)) };
        loop {
            core::hint::spin_loop();
        }
    }
}

/// Logs `text` followed by `value` in hex, then exits with `code`.
fn refuse_entry(text: &str, value: u64) -> ! {
    let mut line = LogLine::new();
    line.push_str("components: ")
        .push_str(text)
        .push_str(" ")
        .push_hex(value);
    log(line.as_bytes());
    exit(crate::exit_code::BAD_ENTRY)
}

/// The argument string at `pointer`: NUL-terminated, at most
/// [`MAX_ARGUMENTS_LEN`] bytes, inside the argument page. A string that is
/// not UTF-8 is cut before the first bad byte.
fn arguments(pointer: u64) -> &'static str {
    let page = RING_REGION_BASE + ARGUMENT_PAGE_OFFSET as u64;
    let page_end = page + 4096;
    if pointer == 0 {
        return "";
    }
    if !(page..page_end).contains(&pointer) {
        refuse_entry("argument pointer outside the argument page:", pointer);
    }
    let length = ((page_end - pointer) as usize).min(MAX_ARGUMENTS_LEN + 1);
    // SAFETY: [pointer, pointer + length) lies in the argument page, which
    // the core maps readable for this instance's whole life and writes only
    // before the instance starts; `u8` has no invalid values and the pointer
    // is non-null, so a shared `'static` slice of it is valid.
    let bytes = unsafe { core::slice::from_raw_parts(pointer as *const u8, length) };
    let bytes = bytes.split(|&byte| byte == 0).next().unwrap_or(&[]);
    let bytes = &bytes[..bytes.len().min(MAX_ARGUMENTS_LEN)];
    match core::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => core::str::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or(""),
    }
}

/// The ring at `offset` from the ring region's base.
fn ring(offset: usize) -> &'static RingMemory {
    let address = RING_REGION_BASE + offset as u64;
    const _: () = assert!(RING_REGION_BASE.is_multiple_of(64) && RING_BYTES.is_multiple_of(64));
    // SAFETY: the server ABI maps `RING_BYTES` read-write at each ring's
    // offset for this instance's whole life; `RingMemory` is at most
    // `RING_BYTES`, 64-byte aligned like the address, and made only of
    // atomics, so every bit pattern is valid and the core writing it
    // concurrently is not a data race. Only shared references are made.
    unsafe { &*(address as *const RingMemory) }
}

/// The publication area (`ipc::publication`).
fn publication() -> &'static PublicationArea {
    let address = RING_REGION_BASE + PUBLICATION_OFFSET as u64;
    const _: () = assert!(PUBLICATION_OFFSET.is_multiple_of(64));
    const _: () = assert!(core::mem::size_of::<PublicationArea>() <= PUBLICATION_BYTES);
    // SAFETY: the server ABI maps `PUBLICATION_BYTES` read-write at that
    // offset for this instance's whole life; `PublicationArea` fits in it,
    // is 64-byte aligned like the address, and is made only of atomics, so
    // every bit pattern is valid and the core reading it is not a data
    // race. Only shared references are made.
    unsafe { &*(address as *const PublicationArea) }
}

/// What `server_main` (from [`crate::server!`]) calls: checks the entry
/// registers against the ABI, builds the instance and the ring views, runs
/// the handler's loop and exits with the loop's exit code.
pub fn start<H: Handler>(
    generation: u64,
    ring_base: u64,
    kind: u64,
    arguments_pointer: u64,
    constructor: impl FnOnce() -> H,
) -> ! {
    let Ok(generation) = u32::try_from(generation) else {
        refuse_entry("generation is not a u32:", generation)
    };
    if ring_base != RING_REGION_BASE {
        refuse_entry("ring region not at the ABI's base:", ring_base);
    }
    let instance = Instance {
        generation,
        kind: Instance::kind_from_register(kind),
        arguments: arguments(arguments_pointer),
    };
    let mut runtime = Runtime::new(
        constructor(),
        Hardware,
        ring(TO_SERVER_RING_OFFSET),
        ring(TO_CORE_RING_OFFSET),
        publication(),
        instance,
    );
    let stop = runtime.run();
    let mut line = LogLine::new();
    let _ = write!(line, "components: run loop ended: {stop:?}");
    log(line.as_bytes());
    exit(stop.exit_code())
}

/// Logs `panic at FILE:LINE: MESSAGE` and exits with
/// [`crate::exit_code::PANIC`]; the core restarts the server.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut line = LogLine::new();
    line.push_str("panic");
    if let Some(location) = info.location() {
        line.push_str(" at ")
            .push_str(location.file())
            .push_str(":")
            .push_decimal(u64::from(location.line()));
    }
    let _ = write!(line, ": {}", info.message());
    log(line.as_bytes());
    exit(crate::exit_code::PANIC)
}

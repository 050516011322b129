//! `fault`: writes to a guest-physical address outside its memory (1 MiB past
//! the end of RAM in the memory map, or `address=GPA` from the command line).
//! Prints `fault: touching 0xGPA` first; if the write does not stop the
//! domain, prints `fault: still running after out-of-bounds write` and shuts
//! down with `SHUTDOWN_crash`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(guest::run);

#[cfg(target_os = "none")]
mod guest {
    use guests::text::Line;
    use guests::{cmdline, console, hypercall, memory, Boot, IDENTITY_MAP_END};

    /// How far past the end of RAM the write goes.
    const GAP: u64 = 1 << 20;

    pub fn run(boot: Boot) -> ! {
        let requested = cmdline::value(boot.cmdline(), "address").and_then(cmdline::parse_u64);
        let target = match requested {
            Some(address) => memory::beyond_ram(address, 0, IDENTITY_MAP_END),
            None => memory::beyond_ram(boot.ram().end, GAP, IDENTITY_MAP_END),
        };
        let Some(target) = target else {
            hypercall::crash("no address outside RAM inside the identity map")
        };
        console::print(Line::new().push_str("touching ").push_hex(target));
        // SAFETY: `target` is 8-byte aligned and inside the identity map, so
        // the write is to a mapped address; it lies outside this guest's RAM
        // (or where the command line asked), so it overwrites none of this
        // program's memory. Provoking the hypervisor with it is the point.
        unsafe { core::ptr::write_volatile(target as *mut u64, 0x00c0_ffee_dead_beef) };
        hypercall::crash("still running after out-of-bounds write")
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

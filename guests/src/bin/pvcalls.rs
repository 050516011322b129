//! `pvcalls`: exercises the Xen-compatible PV interface and prints what each
//! call returned, then powers off:
//! `hypercall page: xen_version 0x40011`, `yield 0`,
//! `block slept N ms (asked 20)`, `poll timeout slept N ms (asked 20)`,
//! `poll result 0`, `poll 4096 ports -22`, `poll bad pointer -14`,
//! `unknown hypercall -38`, `done`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(pvcalls::run);

#[cfg(target_os = "none")]
mod pvcalls {
    use guests::text::Line;
    use guests::{console, hypercall, pv, Boot};

    /// A page for the hypercall stubs, in the guest's .bss.
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);
    static mut HYPERCALL_PAGE: Page = Page([0; 4096]);

    fn report(what: &str, value: i64) {
        let mut line = Line::new();
        line.push_str(what).push_str(" ");
        if value < 0 {
            line.push_str("-").push_decimal(value.unsigned_abs());
        } else {
            line.push_decimal(value as u64);
        }
        console::print(&mut line);
    }

    fn slept(what: &str, asked_ms: u64, start: u64) {
        let elapsed_ms = (pv::now_ns() - start) / 1_000_000;
        let mut line = Line::new();
        line.push_str(what)
            .push_str(" slept ")
            .push_decimal(elapsed_ms)
            .push_str(" ms (asked ")
            .push_decimal(asked_ms)
            .push_str(")");
        console::print(&mut line);
    }

    pub fn run(_boot: Boot) -> ! {
        // The hypercall page: write its address to the MSR CPUID leaf
        // 0x40000002 names, then call xen_version through stub 17.
        let page = (&raw const HYPERCALL_PAGE) as u64;
        let msr = core::arch::x86_64::__cpuid(ipc::hypercall::CPUID_XEN_BASE + 2).ebx;
        // SAFETY: writing the hypercall-page MSR makes the hypervisor fill
        // this page-aligned static with stubs; nothing else uses the page.
        unsafe {
            core::arch::asm!("wrmsr", in("ecx") msr, in("eax") page as u32, in("edx") (page >> 32) as u32, options(nostack));
        }
        let stub = page + 32 * ipc::hypercall::XEN_VERSION;
        let version: i64;
        // SAFETY: the stub is `mov eax, 17; vmmcall; ret`, written by the
        // hypervisor into the page above; it clobbers only rax and the
        // argument registers declared here.
        unsafe {
            core::arch::asm!("call {stub}", stub = in(reg) stub, inout("rdi") 0u64 => _, out("rax") version,
                out("rsi") _, out("rdx") _, out("r10") _, out("r8") _);
        }
        let mut line = Line::new();
        line.push_str("hypercall page: xen_version ").push_hex(version as u64);
        console::print(&mut line);

        report("yield", pv::yield_now());

        let start = pv::now_ns();
        pv::sleep_ns(20_000_000);
        slept("block", 20, start);

        let ports: [u32; 2] = [1, 2];
        let start = pv::now_ns();
        let result = pv::poll_raw(ports.as_ptr() as u64, 2, pv::now_ns() + 20_000_000);
        slept("poll timeout", 20, start);
        report("poll result", result);
        report("poll 4096 ports", pv::poll_raw(ports.as_ptr() as u64, 4096, 0));
        report("poll bad pointer", pv::poll_raw(0xfff0_0000, 2, 0));
        // SAFETY: an unknown hypercall number takes no pointer.
        report("unknown hypercall", unsafe { hypercall::call3(99, 0, 0, 0) });
        console::print_str("done");
        hypercall::poweroff()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

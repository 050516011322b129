//! `hello`: proves each console path and the boot information, then powers
//! off through `SCHEDOP_shutdown`.
//!
//! Lines, in order:
//! `Hello from cairn` (UART), `hello: debug port works` (port 0xE9),
//! `hello: console_io works` (hypercall; if it fails, `hello: console_io
//! failed: error N` on the UART; on bare QEMU, where there is no hypervisor
//! to call, `hello: console_io skipped: no Xen-compatible hypervisor` on the
//! UART), then on the default console (`guests::console::print`):
//! `cmdline: TEXT`, `hypervisor: XenVMMXenVMM (CairnCairnHV)` (the leaf
//! 0x40000000 signature, `none` if unprintable; the parenthesis only when
//! leaf 0x40000100 is cairn's), `memory: N KiB` (RAM in the memory map),
//! and `module I: N bytes: FIRST LINE` for each PVH module.
//! Then `SCHEDOP_shutdown(poweroff)`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(guest::run);

#[cfg(target_os = "none")]
mod guest {
    use guests::console::{self, Channel};
    use guests::text::Line;
    use guests::{hypercall, signature, Boot};
    use ipc::hypercall::{CPUID_CAIRN_BASE, CPUID_CAIRN_SIGNATURE, CPUID_XEN_BASE};

    pub fn run(boot: Boot) -> ! {
        console::write_line(Channel::Uart, Line::new().push_str("Hello from cairn"));
        console::write_line(
            Channel::DebugPort,
            Line::new().push_str("debug port works"),
        );
        let under_xen_abi = guests::xen_hypervisor_present();
        if under_xen_abi {
            let mut line = Line::new();
            line.push_str("console_io works");
            let result = hypercall::console_write(line.with_newline());
            if result < 0 {
                let mut error = Line::new();
                error
                    .push_str("console_io failed: error ")
                    .push_decimal(result.unsigned_abs());
                console::write_line(Channel::Uart, &mut error);
            }
        } else {
            console::write_line(
                Channel::Uart,
                Line::new().push_str("console_io skipped: no Xen-compatible hypervisor"),
            );
        }

        console::print(Line::new().push_str("cmdline: ").push_str(boot.cmdline()));

        let xen = guests::cpuid_signature(CPUID_XEN_BASE);
        let cairn = guests::cpuid_signature(CPUID_CAIRN_BASE);
        let mut line = Line::new();
        line.push_str("hypervisor: ")
            .push_str(signature::as_text(&xen).unwrap_or("none"));
        if under_xen_abi && cairn == *CPUID_CAIRN_SIGNATURE {
            line.push_str(" (CairnCairnHV)");
        }
        console::print(&mut line);

        let ram = boot.ram();
        console::print(
            Line::new()
                .push_str("memory: ")
                .push_decimal(ram.total_bytes / 1024)
                .push_str(" KiB"),
        );

        for (index, module) in boot.modules().enumerate() {
            // The first line of the module, if it is text.
            let first_line = module.split(|&byte| byte == b'\n').next().unwrap_or(&[]);
            let mut line = Line::new();
            line.push_str("module ")
                .push_decimal(index as u64)
                .push_str(": ")
                .push_decimal(module.len() as u64)
                .push_str(" bytes: ")
                .push_bytes(&first_line[..first_line.len().min(64)]);
            console::print(&mut line);
        }

        hypercall::poweroff()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

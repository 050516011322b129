//! `spinner`: busy-counts and prints `LABEL: progress N` after every fixed
//! amount of work; after `iterations=N` lines it prints `LABEL: done` and
//! powers off (`iterations=0` or none: forever). Settings:
//! [`guests::spinner::Settings`].
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(guest::run);

#[cfg(target_os = "none")]
mod guest {
    use guests::spinner::Settings;
    use guests::text::Line;
    use guests::{console, hypercall, Boot};

    /// A line starting with `LABEL: ` when a label was given; the core
    /// already prefixes every line with the domain name.
    fn labelled(label: &str) -> Line {
        let mut line = Line::new();
        if !label.is_empty() {
            line.push_str(label).push_str(": ");
        }
        line
    }

    pub fn run(boot: Boot) -> ! {
        let settings = Settings::parse(boot.cmdline());
        let mut progress: u64 = 0;
        loop {
            guests::busy_loop(settings.work);
            progress += 1;
            console::print(labelled(settings.label).push_str("progress ").push_decimal(progress));
            if progress == settings.iterations {
                console::print(labelled(settings.label).push_str("done"));
                hypercall::poweroff();
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

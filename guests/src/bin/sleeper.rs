//! `sleeper`: sleeps on its PV timer in a loop (`set_timer_op` +
//! `SCHEDOP_block`), `period_ms=` each (default 10; `period_us=` for finer
//! periods), and prints `woke N times` every 100 wake-ups; `iterations=N`
//! wake-ups, then powers off (0 or absent: forever). `delay_ms=` sleeps once
//! before the loop (to start a measurement after another domain's).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guests::entry!(sleeper::run);

#[cfg(target_os = "none")]
mod sleeper {
    use guests::text::Line;
    use guests::{cmdline, console, hypercall, pv, Boot};

    pub fn run(boot: Boot) -> ! {
        let number = |key: &str, default: u64| {
            cmdline::value(boot.cmdline(), key).and_then(|value| value.parse().ok()).unwrap_or(default)
        };
        let period_ns = match number("period_us", 0) {
            0 => number("period_ms", 10) * 1_000_000,
            micros => micros * 1000,
        };
        let iterations = number("iterations", 0);
        let delay_ns = number("delay_ms", 0) * 1_000_000;
        if delay_ns > 0 {
            pv::sleep_ns(delay_ns);
        }
        let mut wakes: u64 = 0;
        loop {
            pv::sleep_ns(period_ns);
            wakes += 1;
            if wakes.is_multiple_of(100) {
                let mut line = Line::new();
                line.push_str("woke ").push_decimal(wakes).push_str(" times");
                console::print(&mut line);
            }
            if wakes == iterations {
                hypercall::poweroff();
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for x86_64-unknown-none");
}

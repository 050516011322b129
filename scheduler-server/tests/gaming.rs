//! The credit1 tick-sampling exploit: a guest that stops just before every
//! tick is never seen running, and under sampled accounting runs for free.
//! With burn from reported run time it must not beat its fair share.
mod sim;
use scheduler_server::Tunables;
use sim::{print_shares, Action, Behavior, Sim, MS, US};

fn gamer_against_a_spinner(action: Action, sampled_burn: bool) -> (f64, f64) {
    // Ticks come every 10 ms (timeslice 30 ms / 3), starting at 10 ms; the
    // gamer runs 9.5 ms of each 10 ms period aligned with them.
    let mut sim = Sim::new(1, Tunables::DEFAULT);
    sim.sampled_burn = sampled_burn;
    let gamer = sim.add_guest(
        256,
        0,
        Behavior::Duty {
            period: 10 * MS,
            busy: 9500 * US,
            action,
        },
    );
    let spinner = sim.add_guest(256, 0, Behavior::Spin);
    sim.measure(300 * MS, 6300 * MS);
    sim.run_until(6300 * MS);
    let name = format!("gamer ({action:?}, sampled burn: {sampled_burn})");
    print_shares(&name, &sim, &["gamer", "spinner"]);
    (sim.share(gamer), sim.share(spinner))
}

#[test]
fn a_guest_that_blocks_before_every_tick_does_not_beat_its_share() {
    let (gamer, spinner) = gamer_against_a_spinner(Action::Block, false);
    assert!(gamer <= 51.0, "gamer {gamer:.2}% > fair 50%");
    assert!(spinner >= 49.0, "spinner {spinner:.2}% < fair 50%");
}

#[test]
fn a_guest_that_yields_before_every_tick_does_not_beat_its_share() {
    let (gamer, spinner) = gamer_against_a_spinner(Action::Yield, false);
    assert!(gamer <= 51.0, "gamer {gamer:.2}% > fair 50%");
    assert!(spinner >= 49.0, "spinner {spinner:.2}% < fair 50%");
}

#[test]
fn tick_sampled_burn_would_be_gamed() {
    // The control: fed the samples old credit1 took instead of exact run
    // time, the same policy hands the blocking gamer nearly the whole pCPU.
    let (gamer, spinner) = gamer_against_a_spinner(Action::Block, true);
    assert!(gamer > 80.0, "gamer {gamer:.2}%");
    assert!(spinner < 20.0, "spinner {spinner:.2}%");
}

//! Ctrl-C (and SIGTERM) handling: the signal only raises a flag; the QEMU
//! loop in [`crate::qemu`] notices it, kills QEMU and reports, so a stopped
//! run never leaves an orphaned QEMU behind.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler; call once at start-up.
pub fn install() -> anyhow::Result<()> {
    ctrlc::set_handler(|| REQUESTED.store(true, Ordering::SeqCst))
        .map_err(|error| anyhow::anyhow!("cannot install the Ctrl-C handler: {error}"))
}

/// Whether Ctrl-C (or SIGTERM) arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

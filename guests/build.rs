//! Links the guest binaries with `guest.ld`, but only for the bare-metal
//! target: on the host the binaries are ordinary stubs.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=guest.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/guest.ld");
    }
}

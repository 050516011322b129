//! Links the server binary with the components crate's `server.ld`, but only
//! for the bare-metal target: on the host the binary is an ordinary stub.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let script = env::var("DEP_COMPONENTS_LINKER_SCRIPT")
            .expect("the components crate publishes its linker script (links = \"components\")");
        println!("cargo:rerun-if-changed={script}");
        println!("cargo:rustc-link-arg-bins=-T{script}");
    }
}

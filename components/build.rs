//! Publishes the path of `server.ld` to the build scripts of the server
//! crates (they read `DEP_COMPONENTS_LINKER_SCRIPT` and link their binaries
//! with it for the bare-metal target).

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=server.ld");
    println!("cargo:rerun-if-changed=build.rs");
    let directory = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:linker_script={directory}/server.ld");
}

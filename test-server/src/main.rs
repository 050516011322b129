//! `test-server`: the ring-3 binary. All behaviour is in the library
//! ([`test_server::TestServer`]); this file only names the handler for the
//! components runtime's entry point.
#![cfg_attr(target_os = "none", no_std, no_main)]

components::server!(test_server::TestServer::new);

#[cfg(not(target_os = "none"))]
fn main() {
    println!("test-server is a cairn server: build it for x86_64-unknown-none");
}

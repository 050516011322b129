//! `scheduler-server`: the ring-3 binary. All behaviour is in the library
//! ([`scheduler_server::server::SchedulerServer`]); this file only names the
//! handler for the components runtime's entry point.
#![cfg_attr(target_os = "none", no_std, no_main)]

components::server!(scheduler_server::server::SchedulerServer::new);

#[cfg(not(target_os = "none"))]
fn main() {
    println!("scheduler-server is a cairn server: build it for x86_64-unknown-none");
}

//! The core's ends of a ring while the server scribbles over the shared
//! memory; each message received goes through the decode path too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipc::fuzzing::ring_consumer(data));

//! The core's reads of a publication area (credit table, decision blocks)
//! while the server writes anything into it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipc::fuzzing::publication_area(data));

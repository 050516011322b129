//! The core's decode path on test-server input: `decode_from_server::<ToCore>`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipc::fuzzing::decode_test_protocol(data));

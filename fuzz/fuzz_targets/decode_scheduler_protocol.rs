//! The core's decode path on scheduler-server input:
//! `decode_from_server::<scheduler::ToCore>` against a fixed machine shape.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipc::fuzzing::decode_scheduler_protocol(data));

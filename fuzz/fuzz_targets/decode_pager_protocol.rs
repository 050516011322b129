//! The core's decode path on pager-server input:
//! `decode_from_server::<pager::ToCore>` against a fixed domain count.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipc::fuzzing::decode_pager_protocol(data));

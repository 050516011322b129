//! The credit scheduler server's protocol (issue #4) belongs in this module,
//! in the shape of [`test_server`](super::test_server): a `ToServer` enum
//! (the core's batched run-time, block and wake reports, and its
//! `Error { code }` replies) and a `ToCore` enum (the server's per-pCPU
//! decisions) implementing [`FromServer`](super::FromServer), whose context
//! carries the numbers of domains, vCPUs and pCPUs the ids are checked
//! against.
//!
//! Budget: a body may take up to `SLOT_PAYLOAD - ENVELOPE_HEADER_MAX_SIZE`
//! = 242 bytes. A run list of 16 vCPUs, each named by a `u16` domain and a
//! `u8` vCPU index (4 bytes), plus a pCPU number, a `u64` slice in
//! nanoseconds and the list length, takes at most 1 + 1 + 10 + 1 + 64 = 77.

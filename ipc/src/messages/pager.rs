//! The pager server's protocol (issue #5) belongs in this module, in the
//! shape of [`test_server`](super::test_server): a `ToServer` enum (the
//! core's page-in and page-out requests and its `Error { code }` replies)
//! and a `ToCore` enum (the pager's completions and nominations)
//! implementing [`FromServer`](super::FromServer), whose context carries
//! each domain's frame count and the swap device's slot count that gfns and
//! slots are checked against.
//!
//! Budget: a body may take up to `SLOT_PAYLOAD - ENVELOPE_HEADER_MAX_SIZE`
//! = 242 bytes; a `u64` gfn or slot takes at most 10, so one message can
//! carry a batch of up to 11 (gfn, slot) pairs besides a domain and an
//! operation.

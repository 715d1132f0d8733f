//! ringmail's engine: the daemon that turns the durable queue into deliveries.
//!
//! Data comes in through the ingest API (HTTP and SMTP), is stored by
//! [`queue_store`], and leaves through per-core io_uring shards that resolve MX,
//! group recipients by destination site and egress address, and deliver over pooled
//! TLS connections (see `../shared/DESIGN.md`).
//!
//! Status: the queue (the `queue-store` crate) and the sans-IO SMTP protocol
//! ([`smtp`]) exist. The io_uring transport, the shards, scheduler, ingest and admin
//! API are the subject of later issues; nothing here pretends to do them yet.

pub use queue_store;

pub mod io;
pub mod smtp;

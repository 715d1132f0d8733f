//! ringmail's engine: the daemon that turns the durable queue into deliveries.
//!
//! Data comes in through the ingest API (HTTP and SMTP), is stored by
//! [`queue_store`], and leaves through per-core io_uring shards that resolve MX,
//! group recipients by destination site and egress address, and deliver over pooled
//! TLS connections (see `../shared/DESIGN.md`).
//!
//! Parts: [`config`], ingest (the HTTP inject API and the SMTP listener,
//! [`ingest`]), the [`admin`] API and its typed client (`ringmail ctl`, the command
//! line over it, is in the binary), the [`schedule`]r and completer, delivery
//! [`shard`]s on the io_uring loop ([`io`]), routes ([`dns`]), retry and bounce classification ([`policy`]), the delivery [`log`],
//! [`metrics`], the sans-IO protocol ([`smtp`]), and the wiring ([`daemon`]).

pub use queue_store;

pub mod admin;
pub mod config;
pub mod daemon;
pub mod dkim;
pub mod dns;
pub mod doctor;
pub mod health;
pub mod http_guard;
pub mod ingest;
pub mod io;
pub mod live;
pub mod log;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod schedule;
pub mod shard;
pub mod smtp;

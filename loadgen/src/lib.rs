//! loadgen: the load tools users run against ringmail and that its tests and
//! benchmarks use.
//!
//! The parts: the scenario file ([`scenario`]), the sink fleet ([`sink`]): fake MXs
//! on loopback addresses that behave like mailbox providers and record every
//! accepted recipient, the authoritative DNS for the scenario's domains ([`dns`]),
//! SMTP injection on ringmail's io_uring loop with a Zipf domain skew, a rate and
//! live counts ([`inject`]), the loss/duplicate oracle ([`oracle`]), a whole load
//! test with its `RESULT` line ([`run`]) and plot ([`plot`]), and a private Postfix
//! as an MTA under test ([`postfix`]). Not built: injection over HTTP (ringmail's
//! ingest API does not exist yet).

pub mod demo;
pub mod dns;
pub mod inject;
pub mod inject_http;
pub mod oracle;
pub mod plot;
pub mod postfix;
pub mod run;
pub mod scenario;
pub mod sink;

//! loadgen: the load tools users run against ringmail and that its tests and
//! benchmarks use.
//!
//! The parts: the scenario file ([`scenario`]), the sink fleet ([`sink`]): fake MXs
//! on loopback addresses that behave like mailbox providers and record every
//! accepted recipient, the authoritative DNS for the scenario's domains ([`dns`]),
//! SMTP injection on ringmail's io_uring loop with a Zipf domain skew, a rate and
//! live counts ([`inject`]) or over ringmail's HTTP API ([`inject_http`]), the
//! loss/duplicate oracle ([`oracle`]), a whole load test with its `RESULT` line
//! ([`run`]) and plot ([`plot`]), the demo ([`demo`]), the chaos soak ([`chaos`]) and what it reads off
//! a daemon ([`probe`]), and a private Postfix as an MTA under test ([`postfix`]).

pub mod chaos;
pub mod demo;
pub mod dns;
pub mod inject;
pub mod inject_http;
pub mod oracle;
pub mod plot;
pub mod postfix;
pub mod probe;
pub mod run;
pub mod scenario;
pub mod sink;

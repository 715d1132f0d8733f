//! loadgen: the load tools users run against ringmail and that its tests and
//! benchmarks use.
//!
//! Built so far: the scenario file ([`scenario`]), the sink fleet ([`sink`]): fake
//! MXs on loopback addresses that behave like mailbox providers and record every
//! accepted recipient, the authoritative DNS for the scenario's domains ([`dns`]),
//! SMTP injection with a Zipf domain skew ([`inject`]) and the loss/duplicate oracle
//! ([`oracle`]). Not built yet (issue 4 continues): HTTP injection, the live
//! progress display, `loadgen run` with its RESULT line and plot.

pub mod dns;
pub mod inject;
pub mod oracle;
pub mod scenario;
pub mod sink;

//! loadgen: the load tools users run against ringmail and that its tests and
//! benchmarks use.
//!
//! Built so far: the scenario file ([`scenario`]), the sink fleet ([`sink`]): fake
//! MXs on loopback addresses that behave like mailbox providers and record every
//! accepted recipient, and the authoritative DNS for the scenario's domains
//! ([`dns`]). Not built yet (issue 4 continues): the injector, `loadgen run` with its
//! loss/duplicate oracle and plot, and the command line.

pub mod dns;
pub mod scenario;
pub mod sink;

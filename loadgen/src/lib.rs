//! loadgen: the load tools users run against ringmail and that its tests and
//! benchmarks use.
//!
//! Built so far: the scenario file ([`scenario`]) and the sink fleet ([`sink`]): fake
//! MXs on loopback addresses that behave like mailbox providers and record every
//! accepted recipient. Not built yet (issue 4 continues): the local DNS server, the
//! injector, `loadgen run` with its loss/duplicate oracle and plot, and the command
//! line.

pub mod scenario;
pub mod sink;

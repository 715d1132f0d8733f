//! loadgen: the load tools users run against ringmail and that its tests and
//! benchmarks use: an injector (HTTP/SMTP), a fleet of strict fake MXs on loopback
//! addresses, an authoritative DNS server for `.test` domains, and an oracle that
//! proves after a run that nothing was lost or duplicated.
//!
//! Status: not built yet (a later issue). This crate exists so the workspace has its
//! final shape; it holds no code that pretends to work.

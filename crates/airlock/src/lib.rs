//! Airlock: the upload domain, the HTTP API, the pipeline's subscribers and the binary's wiring.
pub mod names;
pub mod range;
pub mod signing;
pub mod sniff;

//! Airlock: the upload domain, the HTTP API, the pipeline's subscribers and the binary's wiring.
//!
//! # Layout
//! - [`config`]: [`config::Settings`] (defaults → TOML file → `AIRLOCK_*` variables) and kinds.
//! - [`app`]: opening everything and running the API and/or the workers.
//! - [`api`]: the HTTP routes, one module per resource; [`error`]: problem+json errors.
//! - [`pipeline`]: the subscribers that validate, promote, quarantine and clean up.
//! - [`files`]: a file's record, status machine and SQL; [`blobs`]: the object store.
//! - [`auth`]: API keys and the tenant extractor; [`signing`]: signed URLs.
//! - [`sniff`], [`names`], [`range`]: content sniffing, filename hygiene, HTTP ranges.
//! - [`trace`]: the event-chain tree of `airlock trace`.
pub mod api;
pub mod app;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod error;
pub mod files;
pub mod images;
pub mod limits;
pub mod names;
pub mod pipeline;
pub mod range;
pub mod scanner;
pub mod signing;
pub mod sniff;
pub mod trace;
pub mod webhooks;

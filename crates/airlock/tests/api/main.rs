//! Airlock's API test suite: one binary; every test runs the real `airlock` binary as a child
//! process on its own data directory and port, and talks to it over HTTP.

mod cli;
mod config;
mod corpus;
mod crash;
mod helpers;
mod lifecycle;
mod ops;
mod quarantine;
mod scanning;
mod security;
mod trace;
mod uploads;
mod webhooks;

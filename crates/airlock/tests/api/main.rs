//! Airlock's API test suite: one binary, every test against the real `airlock` binary.

mod helpers;
mod ops;

//! Fuzz targets, run on the stable toolchain by proptest-driven mutation of real seeds (see
//! `tests/support/fuzz.rs`). `cargo test --test fuzz` runs a bounded number of cases per target;
//! the long campaign and its numbers are in README ("Fuzzing").
//!
//! Every target checks properties, not only the absence of panics.

#[path = "../support/fuzz.rs"]
mod harness;

mod annotation;
mod config;
mod review;
mod service;
mod webhook;

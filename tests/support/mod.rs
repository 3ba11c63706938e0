//! Shared test support. Include with `mod support;` from an integration test.

pub mod fake_apiserver;

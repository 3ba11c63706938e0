//! ConfigMap data -> Config.
#![allow(dead_code)]
mod parse;

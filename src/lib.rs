//! kube-vip-webhook: admission-time LoadBalancer address allocation for kube-vip.
//!
//! Data flow (see `docs/design.md`): `config` (ConfigMap -> pools) and `pools` (VIPPool objects
//! -> pools) -> `ipam` (pure address arithmetic) -> `state` (used-address index, reservations)
//! -> `engine` (the one allocation decision) -> `webhook` / `reconciler` / `plan`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod bootstrap;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod files;
pub mod forward;
pub mod index;
pub mod ipam;
pub mod leadership;
pub mod live;
pub mod metrics;
pub mod plan;
pub mod pools;
pub mod private_files;
pub mod reserved;
pub mod serve;
pub mod server;
pub mod service;
pub mod state;
pub mod status;
pub mod tls;
pub mod webhook;

//! kube-vip-webhook: admission-time LoadBalancer address allocation for kube-vip.
#![forbid(unsafe_code)]

# syntax=docker/dockerfile:1
#
# kube-vip-webhook image: static-ish Rust binary on distroless (glibc, no shell, non-root).
#   docker build -t ghcr.io/kube-vip/kube-vip-webhook:v0.1.0 .
# The tag in manifest/base/deployment.yaml is a placeholder: push your own build and point the
# Deployment at it (kustomize edit set image ...).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# 1. Dependencies only, cached as long as Cargo.toml and Cargo.lock do not change. Cargo refuses a
#    manifest whose declared [[bench]]/[[test]]/[[example]] files are missing, so those tables
#    are dropped from the copy used for this step (they do not affect the dependency graph or
#    the release binary), and an empty lib + main stand in for the sources.
COPY Cargo.toml Cargo.lock ./
RUN awk '/^\[\[(bench|test|example)\]\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' \
        Cargo.toml > Cargo.deps.toml \
 && mv Cargo.deps.toml Cargo.toml \
 && mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# 2. The real build. COPY keeps the files' original mtimes, which can be older than the stub
#    build above; touching the crate roots makes cargo rebuild our crate (and only it).
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin kube-vip-webhook \
 && strip target/release/kube-vip-webhook \
 && install -D -m 0755 target/release/kube-vip-webhook /out/kube-vip-webhook

# glibc (ring links against it) and CA certificates, nothing else; runs as 65532 by default.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="kube-vip-webhook" \
      org.opencontainers.image.description="Admission-time LoadBalancer IP allocation for kube-vip" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/kube-vip-webhook /usr/local/bin/kube-vip-webhook
# Same UID/GID as runAsUser/runAsGroup in the Deployment.
USER 65532:65532
# 8443: HTTPS admission (/mutate). 8080: admin (/livez, /readyz, /metrics).
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/kube-vip-webhook"]
CMD ["--help"]

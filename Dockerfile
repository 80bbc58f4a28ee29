# syntax=docker/dockerfile:1
# One image for every role: controller, gateway, bridge worker, standalone.
#   docker build -t ghcr.io/wsbridge/wsbridge:dev .
# The binary is static (musl, rustls with ring: no OpenSSL, no libc at run
# time); the final image is distroless "static" (CA roots for wss:// and
# /etc/passwd with the nonroot user 65532, nothing else).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
# The host target on Alpine is <arch>-unknown-linux-musl, linked statically
# by default; ring and mimalloc need a C compiler and the musl headers.
RUN apk add --no-cache musl-dev gcc
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_LTO=thin \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wsbridge \
    && cp target/release/wsbridge /wsbridge \
    && /wsbridge --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /wsbridge /wsbridge
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/wsbridge"]

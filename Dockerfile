# tierwise in a small image: built with the Rust toolchain, run as a non-root user on Debian slim
# (glibc, CA certificates for the API providers' TLS). Not built on our CI machines, which have no
# Docker engine; see examples/docker-compose.yml.
#
#   docker build -t tierwise .
#   docker run -p 4000:4000 -v $PWD/tierwise.toml:/etc/tierwise/tierwise.toml tierwise

FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tierwise \
    && strip target/release/tierwise

FROM debian:trixie-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tierwise --create-home tierwise
COPY --from=build /src/target/release/tierwise /usr/local/bin/tierwise
USER tierwise
WORKDIR /var/lib/tierwise
# The ledger (SQLite by default) and its spool live in the working directory: mount a volume there.
VOLUME /var/lib/tierwise
EXPOSE 4000
ENV TIERWISE_CONFIG=/etc/tierwise/tierwise.toml
ENTRYPOINT ["/usr/local/bin/tierwise"]
CMD ["serve"]

# syntax=docker/dockerfile:1

# Build a static ztgate binary.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The version and commit `ztgate version` and the start log line report:
#   docker build --build-arg VERSION=v1.2.3 --build-arg COMMIT=$(git rev-parse HEAD) .
# Empty (the default), the binary says what Go recorded, else dev/unknown.
ARG VERSION=
ARG COMMIT=
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
      -X github.com/ztgate/ztgate/internal/buildinfo.Version=${VERSION} \
      -X github.com/ztgate/ztgate/internal/buildinfo.Commit=${COMMIT}" \
    -o /out/ztgate ./cmd/ztgate
# The state directory, owned by the runtime user (distroless has no shell to
# create it later). A new named volume inherits this ownership.
RUN mkdir -p /out/var/lib/ztgate && chmod 0700 /out/var/lib/ztgate

# The configuration baked into the image: listen on all interfaces of the
# container, keep state in the volume. Mount your own file over it to change
# anything (see ztgate.example.yaml for every key).
COPY <<'YAML' /out/etc/ztgate/ztgate.yaml
data_dir: /var/lib/ztgate
mqtt_addr: 0.0.0.0:8883
api_addr: 0.0.0.0:8443
trust_domain: example.org
log_format: json
YAML

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=
ARG COMMIT=
LABEL org.opencontainers.image.title="ztgate" \
      org.opencontainers.image.description="Zero Trust MQTT gateway: SPIFFE X.509-SVID mTLS identities, every action decided by Rego policy" \
      org.opencontainers.image.source="https://github.com/ztgate/ztgate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
COPY --from=build /out/ztgate /ztgate
COPY --from=build /out/etc/ztgate/ztgate.yaml /etc/ztgate/ztgate.yaml
COPY --from=build --chown=65532:65532 /out/var/lib/ztgate /var/lib/ztgate
USER 65532:65532
VOLUME /var/lib/ztgate
EXPOSE 8883 8443
# GET /readyz on loopback, verified against the CA in the data volume; no
# client certificate (the probe is public). A config mounted over the
# default one is read for its api_addr and CA; with identity.source
# workload_api, override this with --ca.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/ztgate", "healthcheck", "--config", "/etc/ztgate/ztgate.yaml", "--timeout", "3s"]
ENTRYPOINT ["/ztgate"]
CMD ["serve", "--config", "/etc/ztgate/ztgate.yaml"]

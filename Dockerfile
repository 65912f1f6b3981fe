# syntax=docker/dockerfile:1

# Build a static ztgate binary.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/ztgate ./cmd/ztgate
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
COPY --from=build /out/ztgate /ztgate
COPY --from=build /out/etc/ztgate/ztgate.yaml /etc/ztgate/ztgate.yaml
COPY --from=build --chown=65532:65532 /out/var/lib/ztgate /var/lib/ztgate
USER 65532:65532
VOLUME /var/lib/ztgate
EXPOSE 8883 8443
ENTRYPOINT ["/ztgate"]
CMD ["serve", "--config", "/etc/ztgate/ztgate.yaml"]

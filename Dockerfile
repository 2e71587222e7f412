# syntax=docker/dockerfile:1
#
# amg, built static and run on distroless as a non-root user.
#
#   docker build -t amg:local --build-arg VERSION=$(git describe --tags --always) .
#
# The image holds only /amg, CA certificates and the example roles under
# /etc/amg/policies; it has no shell, so `docker exec` works only with
# /amg itself (e.g. /amg token issue --data-dir /var/lib/amg ...).

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -tags vtprotobuf -ldflags "-s -w -X main.version=${VERSION}" -o /out/amg ./cmd/amg \
 && mkdir -p /out/var/lib/amg

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/amg /amg
COPY policies/*.yaml /etc/amg/policies/
# The state directory (tokens, counters, audit log, keys), owned by the
# nonroot user (65532) so that a volume mounted here starts writable.
COPY --from=build --chown=65532:65532 /out/var/lib/amg /var/lib/amg
USER 65532:65532
WORKDIR /var/lib/amg
# 8080 MCP endpoint (standalone), 8081 admin (/healthz, /readyz),
# 8082 broker (Envoy mode), 9001 ext_authz gRPC, 18000 xDS (ADS) gRPC,
# 9100 `amg demo`.
EXPOSE 8080 8081 8082 9001 18000 9100
ENTRYPOINT ["/amg"]
# Standalone on the embedded defaults (the built-in demo upstream), but on
# all interfaces so that published ports reach it. docker compose and the
# Kubernetes manifests replace this with `serve --config` and their file.
CMD ["serve", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:8081", "--authz-listen", "0.0.0.0:9001", \
     "--policy-dir", "/etc/amg/policies", "--data-dir", "/var/lib/amg"]

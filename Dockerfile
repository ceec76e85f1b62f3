# The operator image: holds the manager and the receiver (the operator starts
# receivers from its own image unless a policy names another).
FROM golang:1.26 AS builder
ARG TARGETOS
ARG TARGETARCH
WORKDIR /workspace
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY internal/ internal/
RUN CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/manager ./cmd/manager && \
    CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/receiver ./cmd/receiver

FROM gcr.io/distroless/static:nonroot
COPY --from=builder /out/manager /out/receiver /
USER 65532:65532
ENTRYPOINT ["/manager"]

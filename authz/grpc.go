package authz

import (
	"runtime"

	"google.golang.org/grpc"

	"github.com/amgateway/amg/mcpfilter"
)

// GRPCServerOptions are the options AMG serves Check with, for bodies of
// up to maxBodyBytes (0 means mcpfilter.DefaultMaxBytes, as Options).
//
// A fixed pool of stream workers, one per CPU, saves the goroutine that
// gRPC otherwise starts for every RPC; with Envoy holding a few connections
// and many Checks in flight, that is 1.1 to 1.4 times the Checks/s on two
// cores (bench/checkload, concurrency 32). The codec decodes Envoy's
// CheckRequests and encodes responses faster than gRPC's default one does
// (see codec). A CheckRequest carries the body Envoy buffered, up to the
// configured limit, and the headers: gRPC's own limit on what it receives
// (4 MiB) must not refuse one, unaudited, that authz would decide on.
func GRPCServerOptions(maxBodyBytes int) []grpc.ServerOption {
	if maxBodyBytes <= 0 {
		maxBodyBytes = mcpfilter.DefaultMaxBytes
	}
	return []grpc.ServerOption{
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		grpc.ForceServerCodecV2(codec{}),
		grpc.MaxRecvMsgSize(max(defaultMaxRecv, maxBodyBytes+checkOverhead)),
	}
}

const (
	defaultMaxRecv = 4 << 20 // gRPC's
	// checkOverhead bounds what a CheckRequest holds besides the body:
	// the headers (Envoy's limit is 60 KiB by default) and the
	// attributes.
	checkOverhead = 1 << 20
)

package authz

import (
	"runtime"

	"google.golang.org/grpc"
)

// GRPCServerOptions are the options AMG serves Check with.
//
// A fixed pool of stream workers, one per CPU, saves the goroutine that
// gRPC otherwise starts for every RPC; with Envoy holding a few connections
// and many Checks in flight, that is 1.1 to 1.4 times the Checks/s on two
// cores (bench/checkload, concurrency 32). The codec decodes Envoy's
// CheckRequests and encodes responses faster than gRPC's default one does
// (see codec).
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		grpc.ForceServerCodecV2(codec{}),
	}
}

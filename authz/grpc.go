package authz

import (
	"context"
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/tap"

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
//
// The listener asks no credential, so what a client that is not Envoy
// can hold there is bounded: every Check ends by checkTimeout (see
// boundCheck), a connection carries at most maxConcurrentChecks of them,
// and one with none for idleTimeout is closed.
func GRPCServerOptions(maxBodyBytes int) []grpc.ServerOption {
	if maxBodyBytes <= 0 {
		maxBodyBytes = mcpfilter.DefaultMaxBytes
	}
	return []grpc.ServerOption{
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		grpc.ForceServerCodecV2(codec{}),
		grpc.MaxRecvMsgSize(max(defaultMaxRecv, maxBodyBytes+checkOverhead)),
		grpc.InTapHandle(boundCheck),
		grpc.MaxConcurrentStreams(maxConcurrentChecks),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: idleTimeout}),
		// Envoy's authz cluster sends no keepalive pings; one configured
		// as its xDS cluster is (envoy/envoy.yaml, every 30 s) must not
		// be told it pings too often and lose its connection.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
	}
}

// checkTimeout bounds a Check whose client sets no shorter grpc-timeout
// (Envoy sets authz_timeout): the timeout in which the agent listeners
// take a whole request (config.ReadTimeout). A variable so that tests can
// run it on a short clock.
var checkTimeout = 30 * time.Second

const (
	// maxConcurrentChecks is how many Checks one connection may carry
	// at once. Envoy sends all of a worker thread's Checks on one
	// connection, up to its authz cluster's circuit breaker (10000, over
	// all workers, so all of them with one worker), and it does not open
	// another when a server's limit is reached: it queues the Checks
	// over it in the connection, where they count against
	// authz_timeout. So the limit is that circuit breaker, well above
	// what a gateway answers at once, and bounds only clients that are
	// not Envoy.
	maxConcurrentChecks = 10000
	// idleTimeout closes a connection with no Check for as long as the
	// agent listeners keep an idle connection (config.IdleTimeout).
	// gRPC closes it with a GOAWAY, so Envoy sends no Check on it after.
	idleTimeout = 2 * time.Minute
	// keepaliveMinTime is the shortest interval between pings a client
	// may keep to; the xDS server allows the same.
	keepaliveMinTime = 10 * time.Second
)

// boundCheck gives every Check a deadline checkTimeout away, unless the
// client's grpc-timeout is sooner. A tap runs before the message is
// read, so the deadline bounds reading it too: a unary interceptor runs
// only once the whole message has come, and a client that declares a
// message of several MiB, sends part of it and stops would hold that
// part, and a stream, for as long as its connection lives. The stream's
// own cancellation, when it ends, stops the timer.
func boundCheck(ctx context.Context, _ *tap.Info) (context.Context, error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	_ = cancel // the stream's end cancels ctx's parent, which stops the timer
	return ctx, nil
}

const (
	defaultMaxRecv = 4 << 20 // gRPC's
	// checkOverhead bounds what a CheckRequest holds besides the body:
	// the headers (Envoy's limit is 60 KiB by default) and the
	// attributes.
	checkOverhead = 1 << 20
)

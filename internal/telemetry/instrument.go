package telemetry

import (
	"context"
	"net"
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
)

// The HTTP and gRPC instrumentation below only traces, with noop meters:
// AMG's own metrics say what operators need, and per-request HTTP
// histograms would cost every call.

// Tracing reports whether spans go anywhere: an OTLP exporter or a test's
// SpanExporter. Without one, spans are not recorded and the HTTP and gRPC
// instrumentation below only carries trace context.
func (t *Telemetry) Tracing() bool { return t.tracing }

// HTTPHandler instruments h, an HTTP server's handler. With Tracing, each
// request gets a server span with the semantic conventions' name (its
// method, and its route when h has one) and attributes (otelhttp); name is
// otelhttp's operation, which does not name the span. Without, the request
// only continues the trace context it carries, and a span named name is
// started so that the request has a trace id (for the audit log) at a
// fraction of the cost: on the request path, otelhttp's attribute building
// is what a gateway would pay for spans nobody receives.
func (t *Telemetry) HTTPHandler(h http.Handler, name string) http.Handler {
	if t.tracing {
		return otelhttp.NewHandler(peerClientAddress(h), name, otelhttp.WithTracerProvider(t.tp),
			otelhttp.WithMeterProvider(noopmetric.NewMeterProvider()), otelhttp.WithPropagators(t.propagator))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := t.propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// peerClientAddress makes the client.address of the server span in each
// request's context the request's peer. otelhttp takes it from the first
// X-Forwarded-For entry, which is whatever the agent wrote: the front faces
// agents, and Envoy passes the header on to the broker as the agent sent
// it. The request h serves keeps its headers.
func peerClientAddress(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Header["X-Forwarded-For"]; ok {
			peer, _, err := net.SplitHostPort(r.RemoteAddr)
			if err != nil {
				peer = r.RemoteAddr
			}
			trace.SpanFromContext(r.Context()).SetAttributes(semconv.ClientAddress(peer))
		}
		h.ServeHTTP(w, r)
	})
}

// HTTPTransport instruments rt, an HTTP client's transport, so that the
// server it calls hears the trace context of the request's context. With
// Tracing, each request also gets a client span (otelhttp).
func (t *Telemetry) HTTPTransport(rt http.RoundTripper) http.RoundTripper {
	if t.tracing {
		return otelhttp.NewTransport(rt, otelhttp.WithTracerProvider(t.tp),
			otelhttp.WithMeterProvider(noopmetric.NewMeterProvider()), otelhttp.WithPropagators(t.propagator))
	}
	if rt == nil {
		rt = http.DefaultTransport
	}
	return propagating{rt: rt, p: t.propagator}
}

// propagating injects the trace context of each request's context.
type propagating struct {
	rt http.RoundTripper
	p  propagation.TextMapPropagator
}

func (p propagating) RoundTrip(r *http.Request) (*http.Response, error) {
	if !trace.SpanContextFromContext(r.Context()).IsValid() {
		return p.rt.RoundTrip(r)
	}
	// A RoundTripper must not modify the request it is given.
	r = r.Clone(r.Context())
	p.p.Inject(r.Context(), propagation.HeaderCarrier(r.Header))
	return p.rt.RoundTrip(r)
}

// GRPCServerOptions instruments a gRPC server: with Tracing, a server span
// per RPC (otelgrpc); without, nothing. Any stats handler costs each RPC
// time (grpc-go then builds an event for every header and payload), so
// without Tracing a handler that needs its RPC's trace context takes it
// from the metadata, with ExtractRPC.
func (t *Telemetry) GRPCServerOptions() []grpc.ServerOption {
	if !t.tracing {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(t.grpcServerHandler())}
}

func (t *Telemetry) grpcServerHandler() stats.Handler {
	return otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(t.tp),
		otelgrpc.WithMeterProvider(noopmetric.NewMeterProvider()), otelgrpc.WithPropagators(t.propagator))
}

// ExtractRPC continues the trace context that a gRPC call's incoming
// metadata carries, if ctx is not already in a trace.
func (t *Telemetry) ExtractRPC(ctx context.Context) context.Context {
	if trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	// Without the header the propagator finds nothing, and the carrier
	// would cost an allocation on every call.
	if metadata.ValueFromIncomingContext(ctx, "traceparent") == nil {
		return ctx
	}
	return t.propagator.Extract(ctx, incomingCarrier{ctx})
}

// incomingCarrier reads trace context from a call's incoming metadata
// without copying all of it, as metadata.FromIncomingContext would.
type incomingCarrier struct{ ctx context.Context }

func (c incomingCarrier) Get(key string) string {
	if v := metadata.ValueFromIncomingContext(c.ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (incomingCarrier) Set(string, string) {}

func (c incomingCarrier) Keys() []string {
	md, _ := metadata.FromIncomingContext(c.ctx)
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	return keys
}

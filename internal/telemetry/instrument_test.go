package telemetry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
)

const (
	incomingTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	incomingParent = "00-" + incomingTrace + "-00f067aa0ba902b7-01"
)

// untraced is a Telemetry with no span receiver, as the gateway runs
// without an OTLP endpoint.
func untraced(t *testing.T) *Telemetry {
	t.Helper()
	tel, err := New(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	if tel.Tracing() {
		t.Fatal("Tracing() with no exporter")
	}
	return tel
}

// Without a span receiver the instrumentation still carries trace context:
// a request continues the trace it names, or starts one, and the upstream
// it calls hears it.
func TestUntracedHTTPCarriesTraceContext(t *testing.T) {
	tel := untraced(t)
	var upstreamHeard string
	upstream := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		upstreamHeard = r.Header.Get("traceparent")
	}))
	defer upstream.Close()
	client := &http.Client{Transport: tel.HTTPTransport(nil)}

	var seen string
	h := tel.HTTPHandler(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		seen = TraceID(r.Context())
		req, _ := http.NewRequestWithContext(r.Context(), "GET", upstream.URL, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
		if req.Header.Get("traceparent") != "" {
			t.Error("the transport modified the caller's request")
		}
	}), "test")

	req := httptest.NewRequest("POST", "/mcp", nil)
	req.Header.Set("traceparent", incomingParent)
	h.ServeHTTP(httptest.NewRecorder(), req)
	if seen != incomingTrace {
		t.Errorf("trace id in the handler = %q, want the incoming %s", seen, incomingTrace)
	}
	if !strings.HasPrefix(upstreamHeard, "00-"+incomingTrace+"-") {
		t.Errorf("upstream heard traceparent %q, want trace %s", upstreamHeard, incomingTrace)
	}

	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/mcp", nil))
	if len(seen) != 32 || seen == incomingTrace {
		t.Errorf("a request without traceparent has trace id %q, want a new one", seen)
	}
	if !strings.HasPrefix(upstreamHeard, "00-"+seen+"-") {
		t.Errorf("upstream heard traceparent %q, want the new trace %s", upstreamHeard, seen)
	}
}

// Outside any trace, the transport adds nothing.
func TestUntracedTransportWithoutTrace(t *testing.T) {
	tel := untraced(t)
	var heard []string
	upstream := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		heard = r.Header.Values("traceparent")
	}))
	defer upstream.Close()
	resp, err := (&http.Client{Transport: tel.HTTPTransport(nil)}).Get(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(heard) != 0 {
		t.Errorf("upstream heard traceparent %q outside any trace", heard)
	}
}

// Without tracing a gRPC server gets no stats handler, and a handler
// takes its RPC's trace context from the metadata; one already in a trace
// keeps it.
func TestUntracedGRPCCarriesTraceContext(t *testing.T) {
	tel := untraced(t)
	if opts := tel.GRPCServerOptions(); len(opts) != 0 {
		t.Errorf("GRPCServerOptions without tracing = %v, want none", opts)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", incomingParent))
	if got := TraceID(tel.ExtractRPC(ctx)); got != incomingTrace {
		t.Errorf("trace id of the RPC = %q, want the incoming %s", got, incomingTrace)
	}
	if got := TraceID(tel.ExtractRPC(context.Background())); got != "" {
		t.Errorf("trace id of an RPC without trace context = %q, want none", got)
	}
	// Baggage is not taken, and other metadata changes nothing.
	bctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", incomingParent, "baggage", "tenant=acme", "x-other", "1"))
	if got := baggage.FromContext(tel.ExtractRPC(bctx)); got.Len() != 0 {
		t.Errorf("baggage of the RPC: %v, want none", got)
	}
	if got := TraceID(tel.ExtractRPC(metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-other", "1")))); got != "" {
		t.Errorf("trace id of an RPC with other metadata only = %q, want none", got)
	}
	inTrace, span := tel.Tracer().Start(ctx, "already")
	defer span.End()
	if got, want := TraceID(tel.ExtractRPC(inTrace)), TraceID(inTrace); got != want {
		t.Errorf("an RPC already in trace %s moved to %s", want, got)
	}
}

// With a span receiver, the HTTP and gRPC servers get real server spans.
func TestTracedInstrumentationRecordsSpans(t *testing.T) {
	hs := newHarness(t)
	if !hs.tel.Tracing() {
		t.Fatal("Tracing() false with a span exporter")
	}
	req := httptest.NewRequest("POST", "/mcp", nil)
	req.Header.Set("traceparent", incomingParent)
	hs.tel.HTTPHandler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), "amg.front").ServeHTTP(httptest.NewRecorder(), req)

	if len(hs.tel.GRPCServerOptions()) != 1 {
		t.Error("no stats handler with tracing")
	}
	g := hs.tel.grpcServerHandler()
	ctx := g.TagRPC(metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", incomingParent)),
		&stats.RPCTagInfo{FullMethodName: "/envoy.service.auth.v3.Authorization/Check"})
	g.HandleRPC(ctx, &stats.End{EndTime: time.Now()})

	names := map[string]bool{}
	for _, s := range hs.spans.GetSpans() {
		if s.SpanContext.TraceID().String() != incomingTrace || s.SpanKind != trace.SpanKindServer {
			t.Errorf("span %s: trace %s kind %v, want a server span of trace %s", s.Name, s.SpanContext.TraceID(), s.SpanKind, incomingTrace)
		}
		names[s.Name] = true
	}
	// otelhttp names the HTTP span by the semantic conventions (the
	// method), not by the operation name.
	if len(names) != 2 || !names["POST"] || !names["envoy.service.auth.v3.Authorization/Check"] {
		t.Errorf("spans = %v, want the HTTP request's and the Check RPC's", names)
	}
}

// An agent's X-Forwarded-For does not become the client.address of the
// gateway's server span: the front faces agents, and Envoy passes the
// header on to the broker as the agent wrote it. The handler still sees
// the header.
func TestHTTPSpanClientAddressIsThePeer(t *testing.T) {
	for _, xff := range []string{"", "10.9.8.7", "10.9.8.7, 192.0.2.1"} {
		t.Run(xff, func(t *testing.T) {
			hs := newHarness(t)
			req := httptest.NewRequest("POST", "/mcp", nil)
			req.RemoteAddr = "198.51.100.4:40312"
			if xff != "" {
				req.Header.Set("X-Forwarded-For", xff)
			}
			var seen string
			hs.tel.HTTPHandler(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				seen = r.Header.Get("X-Forwarded-For")
			}), "amg.front").ServeHTTP(httptest.NewRecorder(), req)
			if seen != xff {
				t.Errorf("the handler saw X-Forwarded-For %q, want %q", seen, xff)
			}
			spans := hs.spans.GetSpans()
			if len(spans) != 1 {
				t.Fatalf("%d spans, want the request's", len(spans))
			}
			if got := attrMap(spans[0].Attributes)["client.address"]; got != "198.51.100.4" {
				t.Errorf("client.address = %q, want the peer 198.51.100.4", got)
			}
		})
	}
}

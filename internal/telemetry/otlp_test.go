package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is a minimal OTLP/HTTP collector: it decodes the protobuf
// bodies of POST /v1/traces and /v1/metrics and keeps them.
type otlpReceiver struct {
	t       *testing.T
	mu      sync.Mutex
	traces  []*coltracepb.ExportTraceServiceRequest
	metrics []*colmetricpb.ExportMetricsServiceRequest
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		r.t.Errorf("receiver: Content-Type %q, want application/x-protobuf", ct)
		http.Error(w, "unsupported media type", http.StatusUnsupportedMediaType)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer gz.Close()
		body = gz
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}

	var resp proto.Message
	switch req.URL.Path {
	case "/v1/traces":
		m := &coltracepb.ExportTraceServiceRequest{}
		if err := proto.Unmarshal(raw, m); err != nil {
			r.t.Errorf("receiver: decode traces: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.traces = append(r.traces, m)
		r.mu.Unlock()
		resp = &coltracepb.ExportTraceServiceResponse{}
	case "/v1/metrics":
		m := &colmetricpb.ExportMetricsServiceRequest{}
		if err := proto.Unmarshal(raw, m); err != nil {
			r.t.Errorf("receiver: decode metrics: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.metrics = append(r.metrics, m)
		r.mu.Unlock()
		resp = &colmetricpb.ExportMetricsServiceResponse{}
	default:
		http.NotFound(w, req)
		return
	}
	out, err := proto.Marshal(resp)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *otlpReceiver) spans() []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*tracepb.Span
	for _, req := range r.traces {
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				out = append(out, ss.GetSpans()...)
			}
		}
	}
	return out
}

func (r *otlpReceiver) metric(name string) []*metricpb.Metric {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*metricpb.Metric
	for _, req := range r.metrics {
		for _, rm := range req.GetResourceMetrics() {
			for _, sm := range rm.GetScopeMetrics() {
				for _, m := range sm.GetMetrics() {
					if m.GetName() == name {
						out = append(out, m)
					}
				}
			}
		}
	}
	return out
}

func (r *otlpReceiver) resourceServiceName() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, req := range r.traces {
		for _, rs := range req.GetResourceSpans() {
			if v, ok := kvMap(rs.GetResource().GetAttributes())["service.name"]; ok {
				return v
			}
		}
	}
	return ""
}

func kvMap(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	return m
}

// startReceiver serves an otlpReceiver on 127.0.0.1 explicitly, so the test
// never listens on other interfaces.
func startReceiver(t *testing.T) (*otlpReceiver, string) {
	t.Helper()
	rcv := &otlpReceiver{t: t}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := httptest.NewUnstartedServer(rcv)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return rcv, srv.URL
}

func TestOTLPExportToRealReceiver(t *testing.T) {
	clearOTLPEnv(t)
	rcv, url := startReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")

	tel, err := New(t.Context(), &Options{ServiceName: "amg-otlp", ServiceVersion: "0.0.1", OTLP: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if !tel.otlpTraces || !tel.otlpMetrics {
		t.Fatalf("OTLP exporters not created: traces=%v metrics=%v", tel.otlpTraces, tel.otlpMetrics)
	}

	// A client span whose context crosses an HTTP hop, and the gateway's
	// decision span continuing the trace on the other side.
	clientCtx, client := tel.Tracer().Start(t.Context(), "client.call")
	header := http.Header{}
	tel.Propagator().Inject(clientCtx, propagation.HeaderCarrier(header))
	client.End()

	ctx := tel.Propagator().Extract(context.Background(), propagation.HeaderCarrier(header))
	ctx, span := tel.StartDecisionSpan(ctx, "amg.decide")
	span.SetAttributes(DecisionAttributes("agent-1", "analyst", "github", "search",
		"allow", "deny", "read-only", "v7", "dec-42")...)
	tel.RecordDecision(ctx, "analyst", "allow", "enforce", "ok", 80*time.Microsecond)
	span.End()

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := tel.Shutdown(shutdownCtx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	// Shutdown flushed the batcher and ran a final metric export, so the
	// receiver has everything by now.
	var decide, parent *tracepb.Span
	for _, s := range rcv.spans() {
		switch s.GetName() {
		case "amg.decide":
			decide = s
		case "client.call":
			parent = s
		}
	}
	if decide == nil || parent == nil {
		t.Fatalf("receiver got spans %v, want amg.decide and client.call", spanNames(rcv.spans()))
	}
	attrs := kvMap(decide.GetAttributes())
	for k, v := range map[string]string{
		"amg.agent": "agent-1", "amg.role": "analyst", "amg.server": "github",
		"amg.tool": "search", "amg.verdict": "allow", "amg.shadow_verdict": "deny",
		"amg.rule": "read-only", "amg.policy_version": "v7", "amg.decision_id": "dec-42",
	} {
		if attrs[k] != v {
			t.Errorf("exported %s = %q, want %q", k, attrs[k], v)
		}
	}
	if !bytes.Equal(decide.GetTraceId(), parent.GetTraceId()) {
		t.Errorf("decision trace id %x, want parent's %x", decide.GetTraceId(), parent.GetTraceId())
	}
	if !bytes.Equal(decide.GetParentSpanId(), parent.GetSpanId()) {
		t.Errorf("decision parent span id %x, want %x", decide.GetParentSpanId(), parent.GetSpanId())
	}
	if got, want := hex.EncodeToString(decide.GetTraceId()), client.SpanContext().TraceID().String(); got != want {
		t.Errorf("exported trace id %s, want %s", got, want)
	}
	if got := rcv.resourceServiceName(); got != "amg-otlp" {
		t.Errorf("exported service.name = %q, want amg-otlp", got)
	}

	ms := rcv.metric(MetricDecisions)
	if len(ms) == 0 {
		t.Fatalf("receiver got no %s metric", MetricDecisions)
	}
	var found bool
	for _, m := range ms {
		sum := m.GetSum()
		if sum == nil || !sum.GetIsMonotonic() {
			t.Errorf("%s exported as %T, want a monotonic sum", MetricDecisions, m.GetData())
			continue
		}
		for _, dp := range sum.GetDataPoints() {
			a := kvMap(dp.GetAttributes())
			if a["role"] == "analyst" && a["verdict"] == "allow" && a["mode"] == "enforce" &&
				a["code"] == "ok" && dp.GetAsInt() == 1 {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no %s point {role=analyst, verdict=allow, mode=enforce, code=ok} = 1 in %v", MetricDecisions, ms)
	}
	if len(rcv.metric(MetricDecisionDuration)) == 0 {
		t.Errorf("receiver got no %s metric", MetricDecisionDuration)
	}
}

func spanNames(spans []*tracepb.Span) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.GetName())
	}
	return out
}

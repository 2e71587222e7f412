package authz

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	grpcmd "google.golang.org/grpc/metadata"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/telemetry"
)

// A decision's span goes under the Check's own RPC span when that RPC is
// in the agent's trace, as when Envoy traces: its ext_authz span rides in
// the gRPC metadata, in the trace the agent's traceparent began. An Envoy
// that does not trace passes the agent's traceparent in the request's
// headers only; the decision then continues it directly.
func TestDecisionSpanJoinsTheAgentsTrace(t *testing.T) {
	const (
		agentTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
		agentSpan  = "00f067aa0ba902b7" // the agent's span, in the request's traceparent
		envoySpan  = "b7ad6b7169203331" // Envoy's ext_authz span, in the RPC's metadata
		otherTrace = "0af7651916cd43dd8448eb211c80319c"
	)
	e, spans := tracingEnv(t)

	for _, tc := range []struct {
		name string
		// traceparents of the request (from the agent) and of the RPC
		// (from Envoy's tracer); "" for none.
		request, rpc string
		// wantTrace is the decision's trace; wantParent its parent
		// span, where "rpc" is the Check's server span.
		wantTrace, wantParent string
	}{
		{"Envoy traces", "00-" + agentTrace + "-" + agentSpan + "-01", "00-" + agentTrace + "-" + envoySpan + "-01", agentTrace, "rpc"},
		{"Envoy traces, the agent does not", "", "00-" + otherTrace + "-" + envoySpan + "-01", otherTrace, "rpc"},
		{"Envoy does not trace", "00-" + agentTrace + "-" + agentSpan + "-01", "", agentTrace, agentSpan},
		// The sampled flag is the agent's to write, and decides nothing:
		// 00 would otherwise keep the agent's decisions out of the trace
		// backend while their audit records link the trace.
		{"the agent's traceparent is not sampled", "00-" + agentTrace + "-" + agentSpan + "-00", "", agentTrace, agentSpan},
		{"Envoy keeps the agent's 00", "00-" + agentTrace + "-" + agentSpan + "-00", "00-" + agentTrace + "-" + envoySpan + "-00", agentTrace, "rpc"},
		{"no trace anywhere", "", "", "", "rpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spans.Reset()
			ctx := context.Background()
			if tc.rpc != "" {
				ctx = grpcmd.AppendToOutgoingContext(ctx, "traceparent", tc.rpc)
			}
			h := map[string]string{"authorization": "Bearer " + e.tokens["bot-1"], "mcp-protocol-version": "2025-06-18"}
			if tc.request != "" {
				h["traceparent"] = tc.request
			}
			resp, err := e.client.Check(ctx, envoyRequest("POST", h, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)))
			if err != nil || resp.GetOkResponse() == nil {
				t.Fatalf("Check: %v %v", resp, err)
			}
			decision, rpc := waitForSpans(t, spans)
			if tc.rpc != "" && rpc.Parent.SpanID().String() != envoySpan {
				t.Errorf("the RPC's span has parent %s, want Envoy's %s", rpc.Parent.SpanID(), envoySpan)
			}
			wantTrace := tc.wantTrace
			if wantTrace == "" {
				wantTrace = rpc.SpanContext.TraceID().String()
			}
			if got := decision.SpanContext.TraceID().String(); got != wantTrace {
				t.Errorf("decision in trace %s, want %s", got, wantTrace)
			}
			wantParent := tc.wantParent
			if wantParent == "rpc" {
				wantParent = rpc.SpanContext.SpanID().String()
			}
			if got := decision.Parent.SpanID().String(); got != wantParent {
				t.Errorf("decision's parent is span %s, want %s (the RPC's is %s)", got, wantParent, rpc.SpanContext.SpanID())
			}
		})
	}
}

// An operator who samples nothing records no decision of an agent whose
// traceparent asks for sampling.
func TestAgentsSampledFlagDoesNotOverrideTheSampler(t *testing.T) {
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "0")
	e, spans := tracingEnv(t)
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	h := map[string]string{"authorization": "Bearer " + e.tokens["bot-1"], "mcp-protocol-version": "2025-06-18",
		"traceparent": traceparent}
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), "traceparent", traceparent)
	resp, err := e.client.Check(ctx, envoyRequest("POST", h, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check: %v %v", resp, err)
	}
	// The decision's span ends, and so is exported, before the response.
	for _, s := range spans.GetSpans() {
		if s.Name == "amg.decide tools/call" {
			t.Fatalf("the sampler samples nothing, yet the agent's sampled flag had decision span %s recorded", s.SpanContext.SpanID())
		}
	}
	if got := e.audit.Last(t).TraceID; got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("audit record in trace %q, want the agent's", got)
	}
}

// waitForSpans returns the decision's span and the Check RPC's server span,
// which ends just after the response is sent.
func waitForSpans(t *testing.T, spans *tracetest.InMemoryExporter) (decision, rpc tracetest.SpanStub) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var found int
		for _, s := range spans.GetSpans() {
			switch {
			case s.Name == "amg.decide tools/call":
				decision, found = s, found+1
			case s.SpanKind == trace.SpanKindServer:
				rpc, found = s, found+1
			}
		}
		if found == 2 {
			return decision, rpc
		}
	}
	t.Fatalf("want a decision span and an RPC span, got %v", spans.GetSpans())
	return
}

// Without a span exporter no decision span is started, and the audit
// record still names the trace its decision is in: the agent's, else the
// one Envoy's metadata carries, else a new one for each Check.
func TestTraceIDWithoutTracing(t *testing.T) {
	const agentTrace, envoyTrace = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
	tel, err := telemetry.New(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	e := newEnv(t, func(_ *Deps, o *Options) { o.Telemetry = tel })
	inProcess, rpcParent := false, ""
	check := func(traceparent string) string {
		t.Helper()
		h := map[string]string{"authorization": "Bearer " + e.tokens["bot-1"], "mcp-protocol-version": "2025-06-18"}
		if traceparent != "" {
			h["traceparent"] = traceparent
		}
		req := envoyRequest("POST", h, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`))
		call := e.client.Check
		if inProcess { // no RPC, whose span would give a trace
			call = func(ctx context.Context, req *authv3.CheckRequest, _ ...grpc.CallOption) (*authv3.CheckResponse, error) {
				return e.srv.Check(ctx, req)
			}
		}
		ctx := context.Background()
		if rpcParent != "" {
			ctx = grpcmd.AppendToOutgoingContext(ctx, "traceparent", rpcParent)
		}
		resp, err := call(ctx, req)
		if err != nil || resp.GetOkResponse() == nil {
			t.Fatalf("Check: %v %v", resp, err)
		}
		return e.audit.Last(t).TraceID
	}
	if got := check("00-" + agentTrace + "-00f067aa0ba902b7-01"); got != agentTrace {
		t.Errorf("a Check in the agent's trace was recorded in trace %q, want %s", got, agentTrace)
	}
	rpcParent = "00-" + envoyTrace + "-b7ad6b7169203331-01"
	if got := check(""); got != envoyTrace {
		t.Errorf("a Check in Envoy's trace only was recorded in trace %q, want %s", got, envoyTrace)
	}
	if got := check("00-" + agentTrace + "-00f067aa0ba902b7-01"); got != agentTrace {
		t.Errorf("a Check in both traces was recorded in trace %q, want the agent's %s", got, agentTrace)
	}
	rpcParent = ""
	for _, inProcess = range []bool{false, true} {
		a, b := check(""), check("")
		for _, id := range []string{a, b} {
			if tid, err := trace.TraceIDFromHex(id); err != nil || !tid.IsValid() {
				t.Errorf("a Check in no trace (in process %v) was recorded in trace %q, want a new valid id", inProcess, id)
			}
		}
		if a == b {
			t.Errorf("two Checks in no trace (in process %v) share trace %s", inProcess, a)
		}
	}
}

// A decision span is named by its method when the gateway knows the
// method, and alike for every other: span names become metric labels, and
// an agent's method names are its own to invent.
func TestDecisionSpanNames(t *testing.T) {
	e, spans := tracingEnv(t)
	for body, want := range map[string]string{
		toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`):                "amg.decide tools/call",
		`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`:                                "amg.decide tools/list",
		`{"jsonrpc":"2.0","id":3,"method":"x/made-up-7f3a"}`:                            "amg.decide other",
		`{"jsonrpc":"2.0","method":"notifications/made-up-7f3a"}`:                       "amg.decide other",
		`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}`: "amg.decide notifications/cancelled",
	} {
		spans.Reset()
		e.check(t, "bot-1", nil, body)
		var names []string // of decision spans: the Check's RPC has one too
		for deadline := time.Now().Add(5 * time.Second); len(names) == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			for _, s := range spans.GetSpans() {
				if s.SpanKind != trace.SpanKindServer {
					names = append(names, s.Name)
				}
			}
		}
		if len(names) != 1 || names[0] != want {
			t.Errorf("%s: spans %q, want one named %q", body, names, want)
		}
	}
}

// tracingEnv is the test environment with its decision and RPC spans
// exported to spans.
func tracingEnv(t *testing.T) (*env, *tracetest.InMemoryExporter) {
	t.Helper()
	spans := tracetest.NewInMemoryExporter()
	tel, err := telemetry.New(t.Context(), &telemetry.Options{SpanExporter: spans})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	return newEnv(t, func(_ *Deps, o *Options) { o.Telemetry = tel }), spans
}

// A resource URI may carry a credential (a presigned URL's signature, an
// access_token, user:password@). The policy decides on the URI as the
// agent sent it; the audit record, the reason and the decision span show
// it with its userinfo and the values of its query parameters REDACTED.
func TestResourceURICredentialsAreRedacted(t *testing.T) {
	const role = `
role: reader
servers:
  notion:
    resources: ["notion://ws_abc123/*", "notion://ws_abc123/*?access_token=ok-*"]
`
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(role)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	spans := tracetest.NewInMemoryExporter()
	tel, err := telemetry.New(t.Context(), &telemetry.Options{SpanExporter: spans})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	e := newEnv(t, func(d *Deps, o *Options) { d.Policies, o.Telemetry = staticPolicies{set}, tel })
	read := func(uri string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":` + strconv.Quote(uri) + `}}`
	}
	for _, tc := range []struct {
		name, body, code, tool string
	}{
		{"granted by its query", read("amg:notion:notion://ws_abc123/p1?access_token=ok-SECRET&v=2"), "allowed",
			"notion://ws_abc123/p1?access_token=REDACTED&v=REDACTED"},
		{"denied", read("amg:notion:notion://ws_abc123/p1?access_token=SECRET"), "not_granted",
			"notion://ws_abc123/p1?access_token=REDACTED"},
		{"userinfo", read("amg:notion:notion://ann:SECRET@ws_abc123/p1"), "not_granted",
			"notion://REDACTED@ws_abc123/p1"},
		{"not a gateway URI", read("notion://ws_abc123/p1?sig=SECRET"), "invalid_name", ""},
		{"completion of a template", `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource",` +
			`"uri":"amg:notion:notion://ws_abc123/{id}?sig=SECRET"},"argument":{"name":"id","value":"x"}}}`, "not_granted",
			"notion://ws_abc123/{id}?sig=REDACTED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spans.Reset()
			e.check(t, "bot-1", nil, tc.body)
			rec := e.audit.Last(t)
			if rec.Code != tc.code || rec.Tool != tc.tool || strings.Contains(rec.Reason, "SECRET") {
				t.Errorf("audited %s tool %q reason %q, want %s tool %q without the credential", rec.Code, rec.Tool, rec.Reason, tc.code, tc.tool)
			}
			if tc.code != "allowed" && !strings.Contains(rec.Reason, "REDACTED") {
				t.Errorf("the reason %q does not show the URI", rec.Reason)
			}
			var decided []tracetest.SpanStub
			for deadline := time.Now().Add(5 * time.Second); len(decided) == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				for _, s := range spans.GetSpans() {
					if s.SpanKind != trace.SpanKindServer {
						decided = append(decided, s)
					}
				}
			}
			if len(decided) != 1 {
				t.Fatalf("%d decision spans, want 1", len(decided))
			}
			var tool string
			for _, kv := range decided[0].Attributes {
				if strings.Contains(kv.Value.String(), "SECRET") {
					t.Errorf("span attribute %s = %q", kv.Key, kv.Value.String())
				}
				if kv.Key == telemetry.SpanKeyTool {
					tool = kv.Value.AsString()
				}
			}
			if tool != tc.tool {
				t.Errorf("span's %s = %q, want %q", telemetry.SpanKeyTool, tool, tc.tool)
			}
		})
	}
}

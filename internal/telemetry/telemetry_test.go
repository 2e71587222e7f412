package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// harness is a Telemetry wired to in-memory sinks.
type harness struct {
	tel    *Telemetry
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{
		spans: tracetest.NewInMemoryExporter(),
	}
	tel, err := New(t.Context(), &Options{
		ServiceName:    "amg-test",
		ServiceVersion: "1.2.3",
		SpanExporter:   h.spans,
		MetricReader: func(p sdkmetric.Producer) sdkmetric.Reader {
			h.reader = sdkmetric.NewManualReader(sdkmetric.WithProducer(p))
			return h.reader
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.tel = tel
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return h
}

func (h *harness) collect(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(t.Context(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

func (h *harness) spanNamed(t *testing.T, name string) tracetest.SpanStub {
	t.Helper()
	for _, s := range h.spans.GetSpans() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no span named %q among %d spans", name, len(h.spans.GetSpans()))
	return tracetest.SpanStub{}
}

func attrMap(kvs []attribute.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

func TestDecisionSpanCarriesAttributes(t *testing.T) {
	h := newHarness(t)

	ctx, span := h.tel.StartDecisionSpan(t.Context(), "amg.decide")
	span.SetAttributes(DecisionAttributes("agent-7", "analyst", "github", "create_issue",
		"deny", "allow", "no-writes", "v42", "dec-0001")...)
	traceID := TraceID(ctx)
	span.End()

	got := h.spanNamed(t, "amg.decide")
	want := map[string]string{
		"amg.agent":          "agent-7",
		"amg.role":           "analyst",
		"amg.server":         "github",
		"amg.tool":           "create_issue",
		"amg.verdict":        "deny",
		"amg.shadow_verdict": "allow",
		"amg.rule":           "no-writes",
		"amg.policy_version": "v42",
		"amg.decision_id":    "dec-0001",
	}
	if diff := mapDiff(want, attrMap(got.Attributes)); diff != "" {
		t.Errorf("span attributes differ:\n%s", diff)
	}
	if got.SpanKind != trace.SpanKindInternal {
		t.Errorf("span kind = %v, want internal", got.SpanKind)
	}
	if traceID == "" || traceID != got.SpanContext.TraceID().String() {
		t.Errorf("TraceID = %q, span trace id = %s", traceID, got.SpanContext.TraceID())
	}
	res := attrMap(got.Resource.Attributes())
	if res["service.name"] != "amg-test" || res["service.version"] != "1.2.3" {
		t.Errorf("resource = %v, want service.name amg-test and service.version 1.2.3", res)
	}
	if got.InstrumentationScope.Name != ScopeName {
		t.Errorf("scope = %q, want %q", got.InstrumentationScope.Name, ScopeName)
	}
}

func TestDecisionAttributesOmitsEmpty(t *testing.T) {
	got := attrMap(DecisionAttributes("a", "r", "s", "t", "allow", "", "", "v1", "d"))
	for _, k := range []string{"amg.shadow_verdict", "amg.rule"} {
		if _, ok := got[k]; ok {
			t.Errorf("empty %s should be left out, got %v", k, got)
		}
	}
	if len(got) != 7 {
		t.Errorf("got %d attributes, want 7: %v", len(got), got)
	}
}

// An unauthenticated request's User-Agent and path, and a decision's
// tool (a resource URI may be long), reach spans cut to
// maxAttributeLength, whatever OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT
// says, unless it says less.
func TestSpanAttributesAreCapped(t *testing.T) {
	long := strings.Repeat("A", 64<<10)
	for _, tc := range []struct {
		env  string
		want int
	}{
		{"", maxAttributeLength},
		{"-1", maxAttributeLength},
		{"1000000", maxAttributeLength},
		{"16", 16},
	} {
		t.Run("limit="+tc.env, func(t *testing.T) {
			t.Setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", tc.env)
			h := newHarness(t)
			req := httptest.NewRequest("GET", "/"+long, nil)
			req.Header.Set("User-Agent", long)
			h.tel.HTTPHandler(http.NotFoundHandler(), "amg.front").ServeHTTP(httptest.NewRecorder(), req)
			_, span := h.tel.StartDecisionSpan(t.Context(), "amg.decide tools/call")
			span.SetAttributes(DecisionAttributes("agent-1", "r", "s", long, "allow", "", "", "v1", "dec-1")...)
			span.End()

			spans := h.spans.GetSpans()
			if len(spans) != 2 {
				t.Fatalf("got %d spans, want the request's and the decision's", len(spans))
			}
			for _, s := range spans {
				for _, kv := range s.Attributes {
					if n := len(kv.Value.String()); n > tc.want {
						t.Errorf("span %s: %s is %d bytes, want at most %d", s.Name, kv.Key, n, tc.want)
					}
				}
			}
			for _, key := range []string{"user_agent.original", "url.path"} {
				if got := attrMap(spans[0].Attributes)[key]; len(got) != tc.want {
					t.Errorf("%s is %d bytes, want it cut to %d", key, len(got), tc.want)
				}
			}
			if got := attrMap(h.spanNamed(t, "amg.decide tools/call").Attributes)["amg.tool"]; got != long[:tc.want] {
				t.Errorf("amg.tool is %d bytes, want it cut to %d", len(got), tc.want)
			}
		})
	}
}

func TestPropagationAcrossTraceparent(t *testing.T) {
	h := newHarness(t)

	// The "client" side: a span whose context goes out in HTTP headers,
	// with a baggage member, which is not carried: an agent's baggage
	// would reach every upstream.
	member, err := baggage.NewMember("tenant", "acme")
	if err != nil {
		t.Fatal(err)
	}
	bag, err := baggage.New(member)
	if err != nil {
		t.Fatal(err)
	}
	parentCtx, parent := h.tel.Tracer().Start(baggage.ContextWithBaggage(t.Context(), bag), "client")
	header := http.Header{}
	h.tel.Propagator().Inject(parentCtx, propagation.HeaderCarrier(header))
	parent.End()

	tp := header.Get("traceparent")
	if !strings.HasPrefix(tp, "00-"+parent.SpanContext().TraceID().String()+"-"+parent.SpanContext().SpanID().String()) {
		t.Fatalf("traceparent = %q, want it to name the parent span", tp)
	}

	// The "server" side starts from a fresh context and only the headers,
	// to which the client added a tracestate of its choosing: not carried
	// either.
	header.Set("tracestate", "exfil=c2stbGl2ZS0xMjM0NTY3ODkw,more=cGFzc3dvcmQ")
	ctx := h.tel.Propagator().Extract(context.Background(), propagation.HeaderCarrier(header))
	if header.Get("baggage") != "" || baggage.FromContext(ctx).Len() != 0 {
		t.Errorf("baggage carried: header %q, extracted %v", header.Get("baggage"), baggage.FromContext(ctx))
	}
	if ts := trace.SpanContextFromContext(ctx).TraceState(); ts.Len() != 0 {
		t.Errorf("tracestate carried: extracted %q", ts)
	}
	out := http.Header{}
	h.tel.Propagator().Inject(ctx, propagation.HeaderCarrier(out))
	if out.Get("traceparent") == "" || out.Get("tracestate") != "" {
		t.Errorf("passed on traceparent %q, tracestate %q; want the traceparent only", out.Get("traceparent"), out.Get("tracestate"))
	}
	if got, want := TraceID(ctx), parent.SpanContext().TraceID().String(); got != want {
		t.Errorf("TraceID of extracted context = %q, want %q", got, want)
	}
	childCtx, child := h.tel.StartDecisionSpan(ctx, "amg.decide")
	if got, want := TraceID(childCtx), parent.SpanContext().TraceID().String(); got != want {
		t.Errorf("TraceID of child context = %q, want %q", got, want)
	}
	child.End()

	got := h.spanNamed(t, "amg.decide")
	if got.SpanContext.TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("child trace id %s, want parent's %s", got.SpanContext.TraceID(), parent.SpanContext().TraceID())
	}
	if got.Parent.SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("child parent span id %s, want %s", got.Parent.SpanID(), parent.SpanContext().SpanID())
	}
	if !got.Parent.IsRemote() {
		t.Error("child's parent should be marked remote")
	}
	if got.SpanContext.SpanID() == parent.SpanContext().SpanID() {
		t.Error("child reused the parent's span id")
	}
}

// The operator's sampler decides whether a trace that comes from outside
// is recorded, never the sampled flag in its traceparent, which the agent
// wrote: 00 must not keep the gateway's spans out of the trace backend, nor
// 01 record them past the operator's choice. The trace id and parent span
// still join the agent's trace, and the gateway's own spans follow their
// parent.
func TestSamplingIgnoresTheRemoteSampledFlag(t *testing.T) {
	const agentTrace, agentSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, tc := range []struct {
		sampler, arg string
		want         bool
	}{
		{"", "", true},
		{"always_on", "", true},
		{"parentbased_always_on", "", true},
		{"always_off", "", false},
		{"parentbased_always_off", "", false},
		{"traceidratio", "1", true},
		{"parentbased_traceidratio", "", true},
		{"traceidratio", "0", false},
		{"parentbased_traceidratio", "0", false},
	} {
		for _, flags := range []string{"00", "01"} {
			t.Run(tc.sampler+"_"+tc.arg+"_"+flags, func(t *testing.T) {
				t.Setenv("OTEL_TRACES_SAMPLER", tc.sampler)
				t.Setenv("OTEL_TRACES_SAMPLER_ARG", tc.arg)
				h := newHarness(t)
				header := http.Header{"Traceparent": {"00-" + agentTrace + "-" + agentSpan + "-" + flags}}
				ctx := h.tel.Propagator().Extract(t.Context(), propagation.HeaderCarrier(header))
				ctx, span := h.tel.StartDecisionSpan(ctx, "amg.decide")
				_, child := h.tel.Tracer().Start(ctx, "child")
				child.End()
				span.End()
				sc := span.SpanContext()
				if sc.IsSampled() != tc.want || child.SpanContext().IsSampled() != tc.want {
					t.Errorf("span sampled %v, its child %v; want %v whatever the traceparent's flags",
						sc.IsSampled(), child.SpanContext().IsSampled(), tc.want)
				}
				if sc.TraceID().String() != agentTrace {
					t.Errorf("span in trace %s, want the agent's %s", sc.TraceID(), agentTrace)
				}
				if n := len(h.spans.GetSpans()); tc.want && n != 2 || !tc.want && n != 0 {
					t.Errorf("%d spans exported", n)
				}
				if tc.want && h.spanNamed(t, "amg.decide").Parent.SpanID().String() != agentSpan {
					t.Errorf("span's parent is not the agent's span %s", agentSpan)
				}
			})
		}
	}
}

func TestSamplerFromEnvRefusesWhatItCannotHonour(t *testing.T) {
	for _, tc := range []struct{ sampler, arg, want string }{
		{"jaeger_remote", "", `OTEL_TRACES_SAMPLER="jaeger_remote"`},
		{"always-on", "", `OTEL_TRACES_SAMPLER="always-on"`},
		{"traceidratio", "half", `OTEL_TRACES_SAMPLER_ARG="half"`},
		{"parentbased_traceidratio", "1.5", `OTEL_TRACES_SAMPLER_ARG="1.5"`},
		{"traceidratio", "-0.1", `OTEL_TRACES_SAMPLER_ARG="-0.1"`},
		{"traceidratio", "NaN", `OTEL_TRACES_SAMPLER_ARG="NaN"`},
	} {
		t.Run(tc.sampler+"_"+tc.arg, func(t *testing.T) {
			t.Setenv("OTEL_TRACES_SAMPLER", tc.sampler)
			t.Setenv("OTEL_TRACES_SAMPLER_ARG", tc.arg)
			tel, err := New(t.Context(), &Options{SpanExporter: tracetest.NewInMemoryExporter()})
			if err == nil {
				_ = tel.Shutdown(context.Background())
				t.Fatal("New accepted a sampler it cannot honour")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s", err, tc.want)
			}
		})
	}
}

func TestTraceIDWithoutSpan(t *testing.T) {
	if got := TraceID(context.Background()); got != "" {
		t.Errorf("TraceID(background) = %q, want empty", got)
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t)
	ctx := t.Context()

	h.tel.RecordDecision(ctx, "analyst", "allow", "enforce", "ok", 50*time.Microsecond)
	h.tel.RecordDecision(ctx, "analyst", "allow", "enforce", "ok", 2*time.Millisecond)
	h.tel.RecordDecision(ctx, "ops", "deny", "enforce", "rule", 20*time.Microsecond)
	h.tel.RecordUpstream(ctx, "github", StatusOK, 120*time.Millisecond)
	h.tel.RecordUpstream(ctx, "github", "timeout", 5*time.Second)
	h.tel.RecordUpstream(ctx, "jira", "error", 30*time.Millisecond)
	h.tel.RecordShadowDeny(ctx, "analyst")
	h.tel.RecordShadowDeny(ctx, "analyst")
	h.tel.RecordRateLimited(ctx, "ops")
	h.tel.RecordAuditFailure(ctx)
	h.tel.ObservePendingApprovals(func(context.Context) (int64, error) { return 3, nil })
	h.tel.ObserveAuditQueue(func() int64 { return 17 })

	ms := h.collect(t)

	wantSum(t, ms, MetricDecisions, map[string]int64{
		"code=ok,mode=enforce,role=analyst,verdict=allow": 2,
		"code=rule,mode=enforce,role=ops,verdict=deny":    1,
	})
	wantSum(t, ms, MetricUpstreamErrors, map[string]int64{
		"server=github": 1,
		"server=jira":   1,
	})
	wantSum(t, ms, MetricShadowDenies, map[string]int64{"role=analyst": 2})
	wantSum(t, ms, MetricRateLimited, map[string]int64{"role=ops": 1})
	wantSum(t, ms, MetricAuditFailures, map[string]int64{"": 1})
	wantGauge(t, ms, MetricPendingApprovals, 3)
	wantGauge(t, ms, MetricAuditQueue, 17)

	dd := histogram(t, ms, MetricDecisionDuration)
	if ms[MetricDecisionDuration].Unit != "s" {
		t.Errorf("%s unit = %q, want s", MetricDecisionDuration, ms[MetricDecisionDuration].Unit)
	}
	for _, dp := range dd.DataPoints {
		if !slices.Equal(dp.Bounds, decisionBuckets) {
			t.Errorf("decision buckets = %v, want %v", dp.Bounds, decisionBuckets)
		}
		attrs := setKey(dp.Attributes)
		switch attrs {
		case "code=ok,mode=enforce,role=analyst,verdict=allow":
			if dp.Count != 2 || !near(dp.Sum, 0.00205) {
				t.Errorf("%s: count %d sum %g, want 2 and 0.00205", attrs, dp.Count, dp.Sum)
			}
		case "code=rule,mode=enforce,role=ops,verdict=deny":
			if dp.Count != 1 || !near(dp.Sum, 0.00002) {
				t.Errorf("%s: count %d sum %g, want 1 and 0.00002", attrs, dp.Count, dp.Sum)
			}
		default:
			t.Errorf("unexpected decision duration point %s", attrs)
		}
	}
	if len(dd.DataPoints) != 2 {
		t.Errorf("decision duration has %d points, want 2", len(dd.DataPoints))
	}

	ud := histogram(t, ms, MetricUpstreamDuration)
	counts := map[string]uint64{}
	for _, dp := range ud.DataPoints {
		if !slices.Equal(dp.Bounds, upstreamBuckets) {
			t.Errorf("upstream buckets = %v, want %v", dp.Bounds, upstreamBuckets)
		}
		counts[setKey(dp.Attributes)] = dp.Count
	}
	wantCounts := map[string]uint64{
		"server=github,status=ok":      1,
		"server=github,status=timeout": 1,
		"server=jira,status=error":     1,
	}
	if diff := mapDiff(wantCounts, counts); diff != "" {
		t.Errorf("upstream duration counts differ:\n%s", diff)
	}
}

// Exemplars are off when no reader could carry them; a reader that can
// gets the trace each decision was made in.
func TestDecisionExemplarNamesItsTrace(t *testing.T) {
	h := newHarness(t)
	ctx, span := h.tel.StartDecisionSpan(t.Context(), "amg.decide tools/call")
	h.tel.RecordDecision(ctx, "analyst", "allow", "enforce", "ok", 50*time.Microsecond)
	span.End()

	dd := histogram(t, h.collect(t), MetricDecisionDuration)
	if len(dd.DataPoints) != 1 || len(dd.DataPoints[0].Exemplars) != 1 {
		t.Fatalf("decision duration points %+v, want one with one exemplar", dd.DataPoints)
	}
	got := trace.TraceID(dd.DataPoints[0].Exemplars[0].TraceID)
	if want := span.SpanContext().TraceID(); got != want {
		t.Errorf("exemplar trace id %s, want the decision's %s", got, want)
	}
}

func TestGaugeCallbacks(t *testing.T) {
	h := newHarness(t)

	// Nothing registered: the gauges report no points at all rather than a
	// misleading zero.
	ms := h.collect(t)
	for _, name := range []string{MetricPendingApprovals, MetricAuditQueue} {
		if m, ok := ms[name]; ok && len(m.Data.(metricdata.Gauge[int64]).DataPoints) > 0 {
			t.Errorf("%s reported a point with no callback", name)
		}
	}

	// A failing callback leaves its gauge out, the other still reports.
	h.tel.ObservePendingApprovals(func(context.Context) (int64, error) { return 0, errors.New("store down") })
	h.tel.ObserveAuditQueue(func() int64 { return 4 })
	ms = h.collect(t)
	if m, ok := ms[MetricPendingApprovals]; ok && len(m.Data.(metricdata.Gauge[int64]).DataPoints) > 0 {
		t.Errorf("%s reported a point although its callback failed", MetricPendingApprovals)
	}
	wantGauge(t, ms, MetricAuditQueue, 4)

	// A later registration replaces the earlier one.
	h.tel.ObservePendingApprovals(func(context.Context) (int64, error) { return 9, nil })
	h.tel.ObserveAuditQueue(func() int64 { return 5 })
	ms = h.collect(t)
	wantGauge(t, ms, MetricPendingApprovals, 9)
	wantGauge(t, ms, MetricAuditQueue, 5)
}

func TestPrometheusHandler(t *testing.T) {
	h := newHarness(t)
	ctx := t.Context()
	h.tel.RecordDecision(ctx, "analyst", "deny", "shadow", "rule", 300*time.Microsecond)
	h.tel.RecordUpstream(ctx, "github", "error", 40*time.Millisecond)
	h.tel.RecordShadowDeny(ctx, "analyst")
	h.tel.RecordRateLimited(ctx, "ops")
	h.tel.RecordAuditFailure(ctx)
	h.tel.ObservePendingApprovals(func(context.Context) (int64, error) { return 2, nil })
	h.tel.ObserveAuditQueue(func() int64 { return 8 })

	body := scrape(t, h.tel)

	for _, want := range []string{
		"# TYPE amg_decisions_total counter",
		`amg_decisions_total{code="rule",mode="shadow",otel_scope_name="` + ScopeName + `"`,
		`role="analyst"`,
		"# TYPE amg_decision_duration_seconds histogram",
		`amg_decision_duration_seconds_bucket{code="rule",mode="shadow",otel_scope_name="` + ScopeName + `"`,
		`le="1e-05"`,
		"# TYPE amg_upstream_duration_seconds histogram",
		"# TYPE amg_upstream_errors_total counter",
		`amg_upstream_errors_total{otel_scope_name="` + ScopeName + `"`,
		"# TYPE amg_shadow_denies_total counter",
		"# TYPE amg_rate_limited_total counter",
		"# TYPE amg_audit_failures_total counter",
		"# TYPE amg_approvals_pending gauge",
		"# TYPE amg_audit_queue gauge",
		`service_name="amg-test"`, // target_info
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics output lacks %q", want)
		}
	}
	// The decision counter line with the role label and its value.
	if !hasSample(body, "amg_decisions_total", `role="analyst"`, "1") {
		t.Errorf("no amg_decisions_total sample with role=analyst and value 1 in:\n%s", grepLines(body, "amg_decisions_total"))
	}
	if !hasSample(body, "amg_audit_queue", "", "8") {
		t.Errorf("no amg_audit_queue sample with value 8 in:\n%s", grepLines(body, "amg_audit_queue"))
	}
}

func TestNoGlobalsAndIndependentInstances(t *testing.T) {
	before := otel.GetTracerProvider()
	beforeMeter := otel.GetMeterProvider()
	beforeProp := otel.GetTextMapPropagator()

	a := newHarness(t)
	b := newHarness(t)
	a.tel.RecordDecision(t.Context(), "only-a", "allow", "enforce", "ok", time.Millisecond)

	if otel.GetTracerProvider() != before || otel.GetMeterProvider() != beforeMeter ||
		otel.GetTextMapPropagator() != beforeProp {
		t.Error("New changed an otel global")
	}
	if strings.Contains(scrape(t, b.tel), "only-a") {
		t.Error("a metric recorded on one Telemetry showed up on another's /metrics")
	}
	if !strings.Contains(scrape(t, a.tel), `role="only-a"`) {
		t.Error("metric missing from its own /metrics")
	}
}

func TestNilOptionsAndShutdownTwice(t *testing.T) {
	tel, err := New(t.Context(), nil)
	if err != nil {
		t.Fatalf("New(nil): %v", err)
	}
	if tel.otlpTraces || tel.otlpMetrics {
		t.Error("OTLP exporters created without Options.OTLP")
	}
	_, span := tel.StartDecisionSpan(t.Context(), "x")
	span.End()
	if err := tel.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := tel.Shutdown(t.Context()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	// Recording after Shutdown must not panic; the SDK drops it.
	tel.RecordDecision(t.Context(), "r", "allow", "enforce", "ok", time.Millisecond)
}

func clearOTLPEnv(t *testing.T) {
	t.Helper()
	for _, v := range []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
		"OTEL_EXPORTER_OTLP_PROTOCOL",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
		"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
		"OTEL_EXPORTER_OTLP_HEADERS",
		"OTEL_EXPORTER_OTLP_COMPRESSION",
		"OTEL_SERVICE_NAME",
		"OTEL_RESOURCE_ATTRIBUTES",
		"OTEL_TRACES_SAMPLER",
		"OTEL_SDK_DISABLED",
	} {
		t.Setenv(v, "")
	}
}

func TestOTLPWithoutEndpointCreatesNoExporter(t *testing.T) {
	clearOTLPEnv(t)
	tel, err := New(t.Context(), &Options{OTLP: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer func() { _ = tel.Shutdown(context.Background()) }()
	if tel.otlpTraces || tel.otlpMetrics {
		t.Errorf("exporters created without an endpoint: traces=%v metrics=%v", tel.otlpTraces, tel.otlpMetrics)
	}
}

func TestOTLPPerSignalEndpoint(t *testing.T) {
	clearOTLPEnv(t)
	// Nothing listens here; the exporters are only created, never used
	// before Shutdown, which has nothing to send.
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:1/v1/traces")
	tel, err := New(t.Context(), &Options{OTLP: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer func() { _ = tel.Shutdown(context.Background()) }()
	if !tel.otlpTraces || tel.otlpMetrics {
		t.Errorf("traces=%v metrics=%v, want only a trace exporter", tel.otlpTraces, tel.otlpMetrics)
	}
}

func TestOTLPRejectsOtherProtocols(t *testing.T) {
	for _, p := range []string{"grpc", "http/json"} {
		t.Run(p, func(t *testing.T) {
			clearOTLPEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", p)
			tel, err := New(t.Context(), &Options{OTLP: true})
			if err == nil {
				_ = tel.Shutdown(context.Background())
				t.Fatal("New accepted an unsupported protocol")
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the protocol", err)
			}
		})
	}
}

// --- helpers ---

func scrape(t *testing.T, tel *Telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want Prometheus text format", ct)
	}
	b, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// hasSample reports whether body has a sample line for metric whose labels
// contain label (if not empty) and whose value is value.
func hasSample(body, metric, label, value string) bool {
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, metric+"{") && !strings.HasPrefix(line, metric+" ") {
			continue
		}
		if label != "" && !strings.Contains(line, label) {
			continue
		}
		if strings.HasSuffix(line, " "+value) {
			return true
		}
	}
	return false
}

func grepLines(body, sub string) string {
	var out []string
	for line := range strings.Lines(body) {
		if strings.Contains(line, sub) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return strings.Join(out, "\n")
}

func setKey(s attribute.Set) string {
	var parts []string
	for _, kv := range s.ToSlice() { // ToSlice is sorted by key
		parts = append(parts, string(kv.Key)+"="+kv.Value.String())
	}
	return strings.Join(parts, ",")
}

func wantSum(t *testing.T, ms map[string]metricdata.Metrics, name string, want map[string]int64) {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		t.Errorf("metric %s not collected", name)
		return
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Errorf("%s is %T, want Sum[int64]", name, m.Data)
		return
	}
	if !sum.IsMonotonic {
		t.Errorf("%s is not monotonic", name)
	}
	got := map[string]int64{}
	for _, dp := range sum.DataPoints {
		got[setKey(dp.Attributes)] = dp.Value
	}
	if diff := mapDiff(want, got); diff != "" {
		t.Errorf("%s points differ:\n%s", name, diff)
	}
}

func wantGauge(t *testing.T, ms map[string]metricdata.Metrics, name string, want int64) {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		t.Errorf("metric %s not collected", name)
		return
	}
	g, ok := m.Data.(metricdata.Gauge[int64])
	if !ok {
		t.Errorf("%s is %T, want Gauge[int64]", name, m.Data)
		return
	}
	if len(g.DataPoints) != 1 || g.DataPoints[0].Value != want || g.DataPoints[0].Attributes.Len() != 0 {
		t.Errorf("%s points = %+v, want one unlabelled point of %d", name, g.DataPoints, want)
	}
}

func histogram(t *testing.T, ms map[string]metricdata.Metrics, name string) metricdata.Histogram[float64] {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		t.Fatalf("metric %s not collected", name)
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is %T, want Histogram[float64]", name, m.Data)
	}
	return h
}

func near(a, b float64) bool {
	d := a - b
	return d < 1e-12 && d > -1e-12
}

func mapDiff[V comparable](want, got map[string]V) string {
	var b strings.Builder
	for k, w := range want {
		if g, ok := got[k]; !ok {
			fmt.Fprintf(&b, "missing %s (want %v)\n", k, w)
		} else if g != w {
			fmt.Fprintf(&b, "%s = %v, want %v\n", k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "unexpected %s = %v\n", k, got[k])
		}
	}
	return b.String()
}

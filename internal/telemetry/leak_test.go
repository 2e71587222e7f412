package telemetry

import (
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// planted stands for a secret inside a tool call's arguments. The gateway
// sees it on every call; none of it may reach spans or metrics.
const planted = "sk-live-PLANTED-4f1e9c"

// TestNoArgumentLeak plays one gateway request the documented way: the
// handler has the call's arguments at hand but only feeds the telemetry
// API the fields it asks for. The exported span and metrics must then use
// only the allowed keys and never contain the planted value.
func TestNoArgumentLeak(t *testing.T) {
	h := newHarness(t)
	args := map[string]any{"query": planted, "token": planted}
	_ = args // what a real handler would pass to the upstream, not to telemetry

	ctx, span := h.tel.StartDecisionSpan(t.Context(), "amg.decide")
	span.SetAttributes(DecisionAttributes("agent-1", "analyst", "github", "search",
		"deny", "deny", "no-secrets", "v3", "dec-9")...)
	h.tel.RecordDecision(ctx, "analyst", "deny", "enforce", "rule", 40*time.Microsecond)
	h.tel.RecordShadowDeny(ctx, "analyst")
	h.tel.RecordRateLimited(ctx, "analyst")
	h.tel.RecordUpstream(ctx, "github", "error", 10*time.Millisecond)
	h.tel.RecordAuditFailure(ctx)
	span.End()

	allowedSpanKeys := map[attribute.Key]bool{
		SpanKeyAgent: true, SpanKeyRole: true, SpanKeyServer: true, SpanKeyTool: true,
		SpanKeyVerdict: true, SpanKeyShadowVerdict: true, SpanKeyRule: true,
		SpanKeyPolicyVersion: true, SpanKeyDecisionID: true,
	}
	for _, s := range h.spans.GetSpans() {
		for _, kv := range s.Attributes {
			if !allowedSpanKeys[kv.Key] {
				t.Errorf("span %s has attribute %s outside the allowed set", s.Name, kv.Key)
			}
			if strings.Contains(kv.Value.String(), planted) {
				t.Errorf("span %s attribute %s contains the planted value", s.Name, kv.Key)
			}
		}
		for _, ev := range s.Events {
			for _, kv := range ev.Attributes {
				if strings.Contains(kv.Value.String(), planted) {
					t.Errorf("span %s event %s contains the planted value", s.Name, ev.Name)
				}
			}
		}
	}

	allowedMetricKeys := map[attribute.Key]bool{
		KeyRole: true, KeyVerdict: true, KeyMode: true, KeyCode: true,
		KeyServer: true, KeyStatus: true,
	}
	for name, m := range h.collect(t) {
		for _, set := range pointSets(m.Data) {
			for _, kv := range set.ToSlice() {
				if !allowedMetricKeys[kv.Key] {
					t.Errorf("metric %s has attribute %s outside the allowed set", name, kv.Key)
				}
				if strings.Contains(kv.Value.String(), planted) {
					t.Errorf("metric %s attribute %s contains the planted value", name, kv.Key)
				}
			}
		}
	}
	if strings.Contains(scrape(t, h.tel), planted) {
		t.Error("/metrics output contains the planted value")
	}
}

// TestSpanAttributeKeysArePrefixed guards the naming rule: every key
// DecisionAttributes can produce is under amg., and there are exactly the
// nine documented ones.
func TestSpanAttributeKeysArePrefixed(t *testing.T) {
	kvs := DecisionAttributes("a", "b", "c", "d", "e", "f", "g", "h", "i")
	if len(kvs) != 9 {
		t.Fatalf("got %d attributes, want 9", len(kvs))
	}
	seen := map[attribute.Key]bool{}
	for _, kv := range kvs {
		if !strings.HasPrefix(string(kv.Key), "amg.") {
			t.Errorf("key %s is not under amg.", kv.Key)
		}
		if seen[kv.Key] {
			t.Errorf("duplicate key %s", kv.Key)
		}
		seen[kv.Key] = true
	}
}

// pointSets returns the attribute set of every data point in data.
func pointSets(data metricdata.Aggregation) []attribute.Set {
	var out []attribute.Set
	switch d := data.(type) {
	case metricdata.Sum[int64]:
		for _, dp := range d.DataPoints {
			out = append(out, dp.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, dp := range d.DataPoints {
			out = append(out, dp.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, dp := range d.DataPoints {
			out = append(out, dp.Attributes)
		}
	}
	return out
}

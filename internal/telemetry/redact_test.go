package telemetry

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
)

func TestRedactQuery(t *testing.T) {
	for _, tc := range []struct {
		in    string
		whole bool
		want  string
	}{
		{"https://up.example/mcp", false, "https://up.example/mcp"},
		{"https://up.example/mcp?api_key=s3cret", false, "https://up.example/mcp?api_key=" + Redacted},
		{"https://up.example/mcp?a=1&flag&b=x%26y=z", false, "https://up.example/mcp?a=" + Redacted + "&flag&b=" + Redacted},
		{"https://up.example/mcp?a=1#frag", false, "https://up.example/mcp?a=" + Redacted},
		{"https://up.example/mcp?", false, "https://up.example/mcp?"},
		{"token=s3cret&x=", true, "token=" + Redacted + "&x=" + Redacted},
	} {
		if got := redactQuery(tc.in, tc.whole); got != tc.want {
			t.Errorf("redactQuery(%q, %v) = %q, want %q", tc.in, tc.whole, got, tc.want)
		}
	}
	attrs := []attribute.KeyValue{attribute.String("url.full", "https://x/?k=v"), attribute.String("amg.tool", "?k=v")}
	got, changed := redactURLs(attrs)
	if !changed || got[0].Value.AsString() != "https://x/?k="+Redacted || got[1].Value.AsString() != "?k=v" {
		t.Errorf("redactURLs = %v, %v; want only url.full redacted", got, changed)
	}
	if attrs[0].Value.AsString() != "https://x/?k=v" {
		t.Error("redactURLs changed its argument")
	}
}

// An upstream URL may carry a credential in its query. The client span of
// a call to it names the URL and its parameters, never their values, in
// what reaches the exporter.
func TestUpstreamQueryIsRedactedInSpans(t *testing.T) {
	h := newHarness(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer upstream.Close()
	client := &http.Client{Transport: h.tel.HTTPTransport(nil)}
	ctx, span := h.tel.Tracer().Start(t.Context(), "call")
	req, _ := http.NewRequestWithContext(ctx, "POST", upstream.URL+"/mcp?api_key="+planted+"&workspace=ws1", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	span.End()
	if !strings.Contains(req.URL.RawQuery, planted) {
		t.Fatal("the request itself lost its query")
	}

	var full string
	for _, s := range h.spans.GetSpans() {
		for _, kv := range s.Attributes {
			if strings.Contains(kv.Value.String(), planted) {
				t.Errorf("span %s attribute %s holds the planted secret", s.Name, kv.Key)
			}
			if kv.Key == "url.full" {
				full = kv.Value.AsString()
			}
		}
	}
	if want := upstream.URL + "/mcp?api_key=" + Redacted + "&workspace=" + Redacted; full != want {
		t.Errorf("url.full = %q, want %q", full, want)
	}
}

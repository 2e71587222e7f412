package telemetry

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"

	"github.com/amgateway/amg/mcpfilter"
)

func TestRedactURL(t *testing.T) {
	for _, tc := range []struct {
		redact  func(string) string
		in, out string
	}{
		{redactURL, "https://up.example", "https://up.example"},
		{redactURL, "https://up.example/", "https://up.example/"},
		{redactURL, "https://up.example/mcp", "https://up.example/" + Redacted},
		{redactURL, "https://up.example:8443/api/s/k3y/mcp", "https://up.example:8443/" + Redacted},
		{redactURL, "https://up.example/mcp?api_key=s3cret", "https://up.example/" + Redacted + "?api_key=" + Redacted},
		// A segment without "=" may be a credential passed as ?KEY, and
		// cannot be told from a flag's name: it is redacted whole.
		{redactURL, "http://up.example?a=1&flag&b=x%26y=z", "http://up.example?a=" + Redacted + "&" + Redacted + "&b=" + Redacted},
		{redactURL, "https://up.example/mcp?" + planted, "https://up.example/" + Redacted + "?" + Redacted},
		{redactURL, "https://up.example/?a=1&&b", "https://up.example/?a=" + Redacted + "&&" + Redacted},
		{redactURL, "https://up.example/?a=1#frag", "https://up.example/?a=" + Redacted},
		{redactURL, "https://up.example/mcp?", "https://up.example/" + Redacted + "?"},
		{redactURL, "up.example/k3y", Redacted},
		{redactURL, "://up.example/k3y", Redacted},
		{redactURL, "https:///k3y", Redacted},
		{mcpfilter.RedactQuery, "token=s3cret&x=", "token=" + Redacted + "&x=" + Redacted},
		{redactTarget, "/mcp", "/mcp"},
		{redactTarget, "/mcp?token=s3cret#f", "/mcp?token=" + Redacted},
		{redactTarget, "/mcp?" + planted, "/mcp?" + Redacted},
		{mcpfilter.RedactQuery, planted, Redacted},
	} {
		if got := tc.redact(tc.in); got != tc.out {
			t.Errorf("redacting %q gave %q, want %q", tc.in, got, tc.out)
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

// An upstream URL may carry a credential in its path or query, as a
// parameter's value or as a bare segment (?KEY). The client span of a call
// to it names the host and the parameters, never the path, the values or
// a bare segment, in what reaches the exporter.
func TestUpstreamURLIsRedactedInSpans(t *testing.T) {
	h := newHarness(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer upstream.Close()
	client := &http.Client{Transport: h.tel.HTTPTransport(nil)}
	ctx, span := h.tel.Tracer().Start(t.Context(), "call")
	req, _ := http.NewRequestWithContext(ctx, "POST", upstream.URL+"/api/"+planted+"/mcp?api_key="+planted+"&workspace=ws1&"+planted, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	span.End()
	if !strings.Contains(req.URL.RawQuery, planted) || !strings.Contains(req.URL.Path, planted) {
		t.Fatal("the request itself lost its path or query")
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
	if want := upstream.URL + "/" + Redacted + "?api_key=" + Redacted + "&workspace=" + Redacted + "&" + Redacted; full != want {
		t.Errorf("url.full = %q, want %q", full, want)
	}
}

package gateway

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/audit"
)

// A decision continues the trace of the request's traceparent (Envoy
// propagates it): the audit record carries its trace id, and the admin
// listener's /metrics counts the decision by role and verdict.
func TestDecisionsAreTracedAndCounted(t *testing.T) {
	cfg := loopbackConfig(t, "../../policies")
	gw := serveForTest(t, cfg, nil)
	token, _, err := gw.IssueToken(context.Background(), "traced", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`
	resp, err := gw.Authz().Check(context.Background(), authztest.EnvoyRequest("POST", map[string]string{
		"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18",
		"traceparent": "00-" + traceID + "-00f067aa0ba902b7-01"}, body))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check: %v %v", resp, err)
	}

	waitFor(t, "the decision's audit record", func() bool {
		data, _ := os.ReadFile(filepath.Join(cfg.DataDir, audit.FileName))
		return strings.Contains(string(data), `"trace_id":"`+traceID+`"`)
	})

	m, err := http.Get("http://" + gw.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(m.Body)
	m.Body.Close()
	for _, want := range []string{"amg_decisions_total{", `role="notion_read"`, `verdict="allow"`, "amg_decision_duration_seconds_bucket"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(string(out), "ws_abc123") || strings.Contains(string(out), token) {
		t.Error("/metrics shows an argument value or a token")
	}
}

// connectWithHeaders connects a go-sdk client to mcpURL that sends header
// on every request; the session ends with the test.
func connectWithHeaders(t *testing.T, mcpURL string, header map[string]string) *mcp.ClientSession {
	t.Helper()
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		for k, v := range header {
			r.Header.Set(k, v)
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: mcpURL, HTTPClient: &http.Client{Transport: rt}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

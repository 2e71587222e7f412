package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/front"
)

// allowedOrigin is the one origin the gateways of these tests allow.
const allowedOrigin = "https://app.example.com"

// originModes serves a gateway that allows allowedOrigin and returns its
// MCP endpoint in each mode: standalone, on loopback, where the front
// refuses other Host names itself; and Envoy's, whose agent listener
// takes any Host (as does the standalone front on an address that is not
// loopback), so that a request addressed to a name that is not loopback
// reaches authz, which must then apply the rule for such a gateway.
func originModes(t *testing.T) (*Gateway, map[string]string) {
	cfg := loopbackConfig(t, "../../policies")
	cfg.BrokerListen = "127.0.0.1:0"
	cfg.AllowedOrigins = []string{allowedOrigin}
	gw := serveForTest(t, cfg, nil)
	envoy := envoyStandIn(t, gw)
	return gw, map[string]string{
		"standalone": "http://" + gw.MCPAddr() + config.MCPPath,
		"envoy":      envoy.URL + config.MCPPath,
	}
}

// A gateway refuses a browser page from an origin it does not allow with
// 403 and a JSON-RPC error, and records it, in both modes; it accepts
// agents that send no Origin, pages from the origins its config lists,
// and, on a request to a loopback host, pages served on loopback. A
// request for a host the standalone front on loopback does not serve is
// refused and recorded there.
func TestOriginThroughTheGateway(t *testing.T) {
	gw, modes := originModes(t)
	token, _, err := gw.IssueToken(context.Background(), "browser-agent", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const remote = "mcp.example.com:443" // a name that is not loopback
	tests := []struct {
		name   string
		modes  []string // every mode when empty
		host   string   // the endpoint's own when empty
		origin string
		code   string // the refusal's, "" when allowed
	}{
		{name: "no Origin"},
		{name: "allowed origin", origin: allowedOrigin},
		{name: "allowed origin, as written by another hand", origin: "HTTPS://App.Example.com:443"},
		{name: "loopback origin on loopback", origin: "http://localhost:6274"},
		{name: "other origin", origin: "https://evil.example", code: "origin_not_allowed"},
		{name: "other port of the allowed origin", origin: "https://app.example.com:8443", code: "origin_not_allowed"},
		{name: "malformed origin", origin: "https://app.example.com/", code: "origin_not_allowed"},
		{name: "allowed origin on another host", modes: []string{"envoy"}, host: remote, origin: allowedOrigin},
		{name: "no Origin on another host", modes: []string{"envoy"}, host: remote},
		{name: "loopback origin on another host", modes: []string{"envoy"}, host: remote, origin: "http://localhost:6274", code: "origin_not_allowed"},
		{name: "other origin on another host", modes: []string{"envoy"}, host: remote, origin: "https://evil.example", code: "origin_not_allowed"},
		{name: "another host", modes: []string{"standalone"}, host: remote, code: front.CodeHostNotAllowed},
	}
	for mode, endpoint := range modes {
		t.Run(mode, func(t *testing.T) {
			for _, tt := range tests {
				if len(tt.modes) > 0 && tt.modes[0] != mode {
					continue
				}
				t.Run(tt.name, func(t *testing.T) {
					status, hdr, body := initialize(t, endpoint, token, tt.host, tt.origin)
					if tt.code == "" {
						if status != http.StatusOK || hdr.Get("Mcp-Session-Id") == "" {
							t.Fatalf("status %d, session %q: %s; want 200 and a session", status, hdr.Get("Mcp-Session-Id"), body)
						}
						return
					}
					if status != http.StatusForbidden {
						t.Fatalf("status %d: %s; want 403", status, body)
					}
					id := refusalID(t, tt.code, body)
					rec := auditRecord(t, gw, id)
					if rec.Verdict != "deny" || rec.Code != tt.code {
						t.Errorf("audit record = %+v, want a denial with code %s", rec, tt.code)
					}
					if tt.code == "origin_not_allowed" && (rec.Agent != "browser-agent" || !strings.Contains(rec.Reason, tt.origin)) {
						t.Errorf("audit record = %+v, want the agent and its origin named", rec)
					}
				})
			}
		})
	}
}

// A page from an allowed origin holds a whole session through the
// gateway, its Origin on every request (the stream and the session's end
// included); one from another origin gets none.
func TestBrowserSessionFromAnAllowedOrigin(t *testing.T) {
	gw, modes := originModes(t)
	token, _, err := gw.IssueToken(context.Background(), "browser-agent", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for mode, endpoint := range modes {
		t.Run(mode, func(t *testing.T) {
			connect := func(origin string) (*mcp.ClientSession, error) {
				return mcp.NewClient(&mcp.Implementation{Name: "page", Version: "1"}, nil).Connect(ctx, &mcp.StreamableClientTransport{
					Endpoint: endpoint, HTTPClient: &http.Client{Transport: withOrigin{bearer{token}, origin}}}, nil)
			}
			cs, err := connect(allowedOrigin)
			if err != nil {
				t.Fatal(err)
			}
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages", Arguments: map[string]any{"workspace_id": "ws_abc123"}})
			if err != nil || res.IsError {
				t.Fatalf("call from an allowed origin: %v %+v", err, res)
			}
			if err := cs.Close(); err != nil {
				t.Errorf("closing the session: %v", err)
			}
			if cs, err := connect("https://evil.example"); err == nil {
				cs.Close()
				t.Fatal("a page from another origin got a session")
			}
		})
	}
}

// The admin listener on loopback (the admin API, the console and its
// approvals) answers loopback names only, as the MCP listener does: a page
// the operator visits that rebinds its own name to 127.0.0.1, or posts to
// it from its own origin, is refused.
func TestAdminListenerRefusesOtherHosts(t *testing.T) {
	gw := serveForTest(t, loopbackConfig(t, "../../policies"), nil)
	for _, tc := range []struct {
		name, host, origin string
		want               int
	}{
		{"loopback", "", "", http.StatusOK},
		{"loopback origin", "", "http://localhost:8081", http.StatusOK},
		{"rebound name", "rebound.evil.example", "", http.StatusForbidden},
		{"other origin", "", "http://rebound.evil.example", http.StatusForbidden},
	} {
		req, err := http.NewRequest("GET", "http://"+gw.AdminAddr()+"/api/v1/status", nil)
		if err != nil {
			t.Fatal(err)
		}
		if tc.host != "" {
			req.Host = tc.host
		}
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
}

type withOrigin struct {
	next   http.RoundTripper
	origin string
}

func (o withOrigin) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Origin", o.origin)
	return o.next.RoundTrip(r)
}

// initialize sends an agent's first request, as a page at origin would
// (none when ""), to the gateway as host (the endpoint's own when "").
func initialize(t *testing.T, endpoint, token, host, origin string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest("POST", endpoint, strings.NewReader(
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"page","version":"1"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+token)
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" {
		end, _ := http.NewRequest("DELETE", endpoint, nil)
		end.Header.Set("Authorization", "Bearer "+token)
		end.Header.Set("Mcp-Session-Id", sid)
		if r, err := http.DefaultClient.Do(end); err == nil {
			r.Body.Close()
		}
	}
	return resp.StatusCode, resp.Header, string(b)
}

var frontDecision = regexp.MustCompile(`\(decision ([0-9a-f]{32})\)`)

// refusalID is the decision id a refusal names: authz's in its JSON-RPC
// error, the front's in its text.
func refusalID(t *testing.T, code, body string) string {
	t.Helper()
	if code == front.CodeHostNotAllowed {
		m := frontDecision.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("refusal %q names no decision", body)
		}
		return m[1]
	}
	var r struct {
		ID    json.RawMessage `json:"id"`
		Error struct {
			Code    int
			Message string
			Data    struct {
				Code       string
				DecisionID string `json:"decision_id"`
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil || r.Error.Code != -32001 || r.Error.Data.Code != code ||
		r.Error.Message == "" || r.Error.Data.DecisionID == "" {
		t.Fatalf("refusal %s, want a JSON-RPC error -32001 with code %s and a decision id", body, code)
	}
	return r.Error.Data.DecisionID
}

// auditRecord waits for the record of decision id in the gateway's audit
// file.
func auditRecord(t *testing.T, gw *Gateway, id string) audit.Record {
	t.Helper()
	var recs []audit.Record
	waitFor(t, "the refusal's audit record", func() bool {
		recs, _, _ = audit.FileLog(filepath.Join(gw.cfg.DataDir, audit.FileName)).Search(context.Background(), audit.Query{DecisionID: id})
		return len(recs) > 0
	})
	if len(recs) != 1 {
		t.Errorf("%d records of decision %s, want 1", len(recs), id)
	}
	return recs[0]
}

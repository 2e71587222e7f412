package authz

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/code"
)

// The Origin header is checked on every request, in both modes: none
// passes, an allowed one passes, any other is refused with 403, a
// JSON-RPC error the agent can read and an audit record.
func TestOrigin(t *testing.T) {
	e := newEnv(t, func(_ *Deps, o *Options) {
		o.AllowedOrigins = []string{"https://app.example.com", "HTTP://Tools.Example.com:8443"}
	})
	body := toolCall(3, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)
	const remote = "mcp.example.com" // a Host that is not loopback
	tests := []struct {
		name   string
		method string // POST when empty
		host   string // the request's authority; 127.0.0.1:8080 when empty
		origin string // none when empty
		reason string // the refusal's, "" when allowed
	}{
		{name: "no Origin"},
		{name: "no Origin on a remote host", host: remote},
		{name: "allowed", host: remote, origin: "https://app.example.com"},
		{name: "allowed, other case", host: remote, origin: "HTTPS://APP.example.COM"},
		{name: "allowed, default port written", host: remote, origin: "https://app.example.com:443"},
		{name: "allowed with its port", host: remote, origin: "http://tools.example.com:8443"},
		{name: "loopback on loopback", origin: "http://localhost:6274"},
		{name: "loopback IPv4 on loopback", host: "localhost:8080", origin: "http://127.0.0.1:3000"},
		{name: "loopback IPv6 on loopback", host: "[::1]:8080", origin: "https://[::1]:3000"},
		{name: "GET, allowed", method: "GET", host: remote, origin: "https://app.example.com"},

		{name: "other origin", origin: "https://evil.example", reason: `origin "https://evil.example" is not allowed`},
		{name: "other origin on a remote host", host: remote, origin: "https://evil.example", reason: `origin "https://evil.example" is not allowed`},
		{name: "loopback on a remote host", host: remote, origin: "http://localhost:6274", reason: `origin "http://localhost:6274" is not allowed`},
		{name: "other scheme", host: remote, origin: "http://app.example.com", reason: `origin "http://app.example.com" is not allowed`},
		{name: "other port", host: remote, origin: "https://app.example.com:8443", reason: `origin "https://app.example.com:8443" is not allowed`},
		{name: "subdomain", host: remote, origin: "https://x.app.example.com", reason: `origin "https://x.app.example.com" is not allowed`},
		{name: "opaque", origin: "null", reason: `origin "null" is not allowed`},
		{name: "GET, other origin", method: "GET", origin: "https://evil.example", reason: `origin "https://evil.example" is not allowed`},
		{name: "DELETE, other origin", method: "DELETE", origin: "https://evil.example", reason: `origin "https://evil.example" is not allowed`},

		{name: "with a path", origin: "https://app.example.com/", reason: `Origin header "https://app.example.com/" is not an origin: must not have a path, not even "/"`},
		{name: "no scheme", origin: "app.example.com", reason: `Origin header "app.example.com" is not an origin: want scheme://host[:port]`},
		{name: "not http", origin: "chrome-extension://abcdef", reason: `Origin header "chrome-extension://abcdef" is not an origin: scheme must be http or https`},
		{name: "two origins", origin: "https://app.example.com,https://evil.example", reason: `Origin header "https://app.example.com,https://evil.example" is not an origin: must not have a path, not even "/"`},
		{name: "empty", origin: " ", reason: `Origin header " " is not an origin: want scheme://host[:port]`},
		{name: "user", origin: "https://app.example.com@evil.example", reason: `Origin header "https://app.example.com@evil.example" is not an origin: must not name a user`},
		{name: "bad port", origin: "https://app.example.com:99999", reason: `Origin header "https://app.example.com:99999" is not an origin: port must be a number from 1 to 65535`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, host := tt.method, tt.host
			if method == "" {
				method = "POST"
			}
			if host == "" {
				host = "127.0.0.1:8080"
			}
			h := map[string]string{"authorization": "Bearer " + e.tokens["bot-1"], "mcp-protocol-version": "2025-06-18", ":authority": host}
			if tt.origin != "" {
				h["origin"] = tt.origin
			}
			b := body
			if method != "POST" {
				b = ""
			}
			req := envoyRequest(method, h, b)
			req.GetAttributes().GetRequest().GetHttp().Host = host
			resp, err := e.client.Check(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if tt.reason == "" {
				okHeaders(t, resp)
				return
			}
			d := denied(t, resp)
			r := rpcErr(t, d.body)
			want := rpcResponse{JSONRPC: "2.0", ID: nullID, Error: rpcError{Code: RPCDenied, Message: tt.reason,
				Data: rpcErrorData{DecisionID: r.Error.Data.DecisionID, Code: CodeOriginNotAllowed}}}
			if diff := cmp.Diff(want, r); d.status != 403 || diff != "" {
				t.Errorf("status %d, want 403; body (-want +got):\n%s", d.status, diff)
			}
			if d.headers["content-type"] != "application/json" {
				t.Errorf("content type %q", d.headers["content-type"])
			}
			rec := e.audit.Last(t)
			if rec.Verdict != "deny" || rec.Code != string(CodeOriginNotAllowed) || rec.Reason != tt.reason ||
				rec.Agent != "bot-1" || rec.Role != "reader" || rec.DecisionID != r.Error.Data.DecisionID {
				t.Errorf("audit record = %+v", rec)
			}
		})
	}

	// The token comes first, as for every header check: without one the
	// agent is told to present it, and the refusal is recorded as such.
	d := denied(t, e.check(t, "", map[string]string{"origin": "https://evil.example"}, body))
	if d.status != 401 || e.audit.Last(t).Code != string(CodeUnauthenticated) {
		t.Errorf("no token, other origin: %d %s", d.status, d.body)
	}
}

// Without AllowedOrigins only the loopback rule applies: a gateway
// reached by another name accepts no browser origin at all.
func TestOriginDefault(t *testing.T) {
	e := newEnv(t)
	body := toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)
	for _, tc := range []struct {
		host, origin string
		allowed      bool
	}{
		{"127.0.0.1:8080", "http://localhost:6274", true},
		{"localhost:8080", "http://[::1]:6274", true},
		{"127.0.0.1:8080", "https://app.example.com", false},
		{"mcp.example.com", "http://localhost:6274", false},
		{"mcp.example.com", "https://mcp.example.com", false},
	} {
		req := envoyRequest("POST", map[string]string{"authorization": "Bearer " + e.tokens["bot-1"], "mcp-protocol-version": "2025-06-18",
			":authority": tc.host, "origin": tc.origin}, body)
		req.GetAttributes().GetRequest().GetHttp().Host = tc.host
		resp, err := e.client.Check(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetStatus().GetCode() == int32(code.Code_OK); got != tc.allowed { // all Envoy reads
			t.Errorf("Host %s, Origin %s: allowed %v, want %v", tc.host, tc.origin, got, tc.allowed)
		}
	}
}

func TestNewRefusesABadAllowedOrigin(t *testing.T) {
	e := newEnv(t)
	for _, o := range []string{"https://app.example.com/", "app.example.com", "ftp://files.example.com", "null", ""} {
		_, err := New(e.srv.deps, &Options{AllowedOrigins: []string{"https://ok.example", o}})
		if err == nil || !strings.Contains(err.Error(), "allowed origin "+quote(o)) {
			t.Errorf("AllowedOrigins %q: err = %v", o, err)
		}
	}
}

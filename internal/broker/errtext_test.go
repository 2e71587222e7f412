package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/syncbuf"
)

// An upstream URL may hold a credential in its path or its query. When a
// request to it fails, net/http quotes the whole URL in the error: the
// agent's message keeps none of it, the audit log's keeps the scheme and
// host.
func TestErrorTextHidesUpstreamURLs(t *testing.T) {
	const secretURL = "https://mcp.example:8443/mcp/sk-PATH-SECRET/sse?api_key=sk-QUERY-SECRET"
	req, _ := http.NewRequest("POST", secretURL, nil)
	client := &http.Client{Transport: failingTransport{}}
	_, err := client.Do(req)
	if err == nil || !strings.Contains(err.Error(), "sk-QUERY-SECRET") {
		t.Fatalf("net/http's error %v does not quote the URL, so this test checks nothing", err)
	}
	wrapped := fmt.Errorf("calling %q: %w", "tools/call", err)

	agent := errorText(wrapped, true)
	if strings.Contains(agent, "sk-") || strings.Contains(agent, "mcp.example") {
		t.Errorf("the agent's text shows the URL: %s", agent)
	}
	if !strings.Contains(agent, "Post request: connection refused") || !strings.HasPrefix(agent, `calling "tools/call": `) {
		t.Errorf("the agent's text lost what happened: %s", agent)
	}
	audited := errorText(wrapped, false)
	if strings.Contains(audited, "sk-") || !strings.Contains(audited, "Post https://mcp.example:8443: connection refused") {
		t.Errorf("the audit text is %q, want the scheme and host only", audited)
	}
	plain := errors.New("upstream answered 500")
	if errorText(plain, true) != plain.Error() {
		t.Error("an error without a URL changed")
	}
	if got := upstreamError("notion", wrapped).Error(); strings.Contains(got, "sk-") || !strings.Contains(got, `upstream "notion"`) {
		t.Errorf("upstreamError = %q", got)
	}
}

type failingTransport struct{}

func (failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("connection refused")
}

// A failed dial names the address dialled; the agent is not shown it.
func TestErrorTextHidesDialledAddresses(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	resp, err := http.Post("http://"+addr+"/mcp", "application/json", nil)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a request to a closed port succeeded")
	}
	if agent := errorText(err, true); strings.Contains(agent, addr) || !strings.Contains(agent, "dial: ") {
		t.Errorf("the agent's text is %q, want the dial's failure without %s", agent, addr)
	}
	if audited := errorText(err, false); !strings.Contains(audited, addr) {
		t.Errorf("the audit text %q lost the address, which operators need", audited)
	}
}

// The go-sdk flattens some failures with %v (its standalone event stream
// failing after its retries, a reconnect failing), which drops the
// *url.Error but keeps its text, URL and all. However an upstream URL
// reaches an error's text, neither the agent's message nor the audit
// log's keeps its path, query or user.
func TestErrorTextHidesURLsWithoutURLError(t *testing.T) {
	get := func(rawURL string) error {
		req, err := http.NewRequest("GET", rawURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = (&http.Client{Transport: failingTransport{}}).Do(req)
		return err
	}
	const secretURL = "https://mcp.example:8443/mcp/sk-PATH-SECRET?api_key=sk-QUERY-SECRET"
	tests := []struct {
		name         string
		err          error
		agent, audit string
	}{{
		name: "standalone stream",
		err: fmt.Errorf("standalone SSE request failed (session ID: %v): %v", "S1",
			fmt.Errorf("connection failed after %d attempts: %w", 5, get(secretURL))),
		agent: `standalone SSE request failed (session ID: S1): connection failed after 5 attempts: Get request: connection refused`,
		audit: `standalone SSE request failed (session ID: S1): connection failed after 5 attempts: Get https://mcp.example:8443: connection refused`,
	}, {
		name:  "reconnect",
		err:   fmt.Errorf("%s: failed to reconnect (session ID: %v): %v", `sending "tools/call"`, "S1", get(secretURL)),
		agent: `sending "tools/call": failed to reconnect (session ID: S1): Get request: connection refused`,
		audit: `sending "tools/call": failed to reconnect (session ID: S1): Get https://mcp.example:8443: connection refused`,
	}, {
		name:  "quote in the query",
		err:   fmt.Errorf("%v", get(`https://mcp.example/mcp?api_key=sk-"QUOTED-SECRET`)),
		agent: `Get request: connection refused`,
		audit: `Get https://mcp.example: connection refused`,
	}, {
		name:  "bare URL",
		err:   fmt.Errorf("connecting to %s: refused", "HTTPS://user@mcp.example/mcp?api_key=sk-BARE-SECRET"),
		agent: `connecting to request: refused`,
		audit: `connecting to https://mcp.example: refused`,
	}, {
		name:  "URL in a quoted text",
		err:   fmt.Errorf("upstream said %q", "moved to https://mcp.example/mcp?api_key=sk-INNER-SECRET, retry"),
		agent: `upstream said "moved to request, retry"`,
		audit: `upstream said "moved to https://mcp.example, retry"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if errors.As(tt.err, new(*url.Error)) {
				t.Fatal("the error still holds a *url.Error, so this test checks nothing")
			}
			if got := errorText(tt.err, true); got != tt.agent {
				t.Errorf("the agent's text is\n%s\nwant\n%s", got, tt.agent)
			}
			if got := errorText(tt.err, false); got != tt.audit {
				t.Errorf("the audit text is\n%s\nwant\n%s", got, tt.audit)
			}
		})
	}
}

// End to end: the go-sdk opens an upstream session's standalone event
// stream as it connects, and when that fails it flattens the failure,
// net/http's quoted URL and all, into the error Connect returns (or, as
// its goroutines race, ends the session with a bare "client is closing").
// Neither the agent, nor the audit log, nor the gateway's log sees the key
// in the upstream's URL.
func TestFlattenedUpstreamFailureHidesTheURL(t *testing.T) {
	const key = "sk-QUERY-SECRET-41d9"
	files := newUpstream()
	sdk := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return files.srv }, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet { // the standalone stream: dropped
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		sdk.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	var connects atomic.Int32
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if connects.Add(1) == 1 { // the catalogue's
			return files.transport(ctx)
		}
		// One attempt at the stream, not the go-sdk's five with waits.
		return &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp?api_key=" + key, MaxRetries: -1}, nil
	}
	var log syncbuf.Buffer
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport}},
		func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(&log, nil)) })
	cs := g.connect(t, nil)
	const flattened = "standalone SSE request failed"
	var err error
	for range 20 { // each call tries a new upstream session
		_, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
		if err == nil || strings.Contains(err.Error(), key) || strings.Contains(err.Error(), flattened) {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), flattened) || !strings.Contains(err.Error(), `upstream "files": `) {
		t.Fatalf("call: %v, want the go-sdk's flattened failure", err)
	}
	if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), "Get request: EOF") {
		t.Errorf("the agent's error is %v, want the failure without the upstream's URL", err)
	}
	var reason string
	eventually(t, "the failed call is audited", func() bool {
		for _, rec := range g.audit.All() {
			if strings.Contains(rec.Reason, flattened) {
				reason = rec.Reason
				return true
			}
		}
		return false
	})
	if strings.Contains(reason, key) || !strings.Contains(reason, "Get "+srv.URL+": EOF") {
		t.Errorf("the audit record's reason is %q, want the scheme and host only", reason)
	}
	if strings.Contains(log.String(), key) {
		t.Errorf("the gateway's log shows the upstream's URL:\n%s", log.String())
	}
}

// An upstream's JSON-RPC error is audited in the same words whichever
// path the call took, the URLs it quotes cut to their scheme and host.
func TestUpstreamErrorIsAuditedAlikeOnBothPaths(t *testing.T) {
	const key = "sk-ERROR-SECRET-5c2e"
	const msg = `Post "https://backend.example/v1/` + key + `?api_key=` + key + `": 401 Unauthorized`
	reasons := map[string]string{}
	for _, overHTTP := range []bool{false, true} {
		g := newGatewayOver(t, overHTTP)
		g.up.srv.AddTool(&mcp.Tool{Name: "fail", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return nil, &jsonrpc.Error{Code: -32000, Message: msg}
		})
		a := newRawAgent(t, g)
		warmRaw(a)
		a.post(`{"jsonrpc":"2.0","id":"f","method":"tools/call","params":{"name":"notion__fail","arguments":{}}}`)
		g.checkPath(t, "notion__fail")
		path := map[bool]string{false: "SDK", true: "direct"}[overHTTP]
		for _, rec := range g.audit.Await(t, 2) {
			if rec.Tool == "fail" {
				reasons[path] = rec.Reason
			}
		}
		if strings.Contains(reasons[path], key) {
			t.Errorf("the %s path audits the upstream's URL whole: %q", path, reasons[path])
		}
	}
	const want = `JSON-RPC error -32000: "Post https://backend.example: 401 Unauthorized"`
	if reasons["SDK"] != want || reasons["direct"] != want {
		t.Errorf("audited reasons: SDK path %q, direct path %q; want both %q", reasons["SDK"], reasons["direct"], want)
	}
}

// An upstream's JSON-RPC error may echo the call's arguments. The agent
// gets it whole; the audit record keeps the error's code and a bounded
// part of its message, without what the audit log hides of the
// arguments: a sensitive key's value, or one under the role's redaction
// rules.
func TestAuditedUpstreamErrorHidesTheArgumentsAndIsBounded(t *testing.T) {
	role := strings.Replace(testRole, "      - name: fail\n",
		"      - name: fail\n        constraints: { api_token: {}, cursor: {}, text: {} }\n", 1) + "redact: [cursor]\n"
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(role)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, overHTTP := range []bool{false, true} {
		path := map[bool]string{false: "SDK", true: "direct"}[overHTTP]
		t.Run(path, func(t *testing.T) {
			g := newGatewayOver(t, overHTTP)
			g.policy.set.Store(set)
			g.up.srv.AddTool(&mcp.Tool{Name: "fail", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				var args struct{ Text string }
				json.Unmarshal(req.Params.Arguments, &args)
				return nil, &jsonrpc.Error{Code: -32001, Message: "login refused for " + string(req.Params.Arguments) + args.Text}
			})
			a := newRawAgent(t, g)
			warmRaw(a)
			echo := func(text string) (answer string, rec audit.Record) {
				t.Helper()
				before := len(g.audit.All())
				args, _ := json.Marshal(map[string]string{"api_token": "tok-SECRET-1", "cursor": "cur-SECRET-2", "text": text})
				got := a.post(`{"jsonrpc":"2.0","id":"f","method":"tools/call","params":{"name":"notion__fail","arguments":` + string(args) + `}}`)
				g.checkPath(t, "notion__fail")
				recs := g.audit.Await(t, before+1)
				return strings.Join(got, "\n"), recs[len(recs)-1]
			}

			answer, rec := echo("")
			if !strings.Contains(answer, "tok-SECRET-1") {
				t.Errorf("the agent's error lost the upstream's words: %s", answer)
			}
			const want = `JSON-RPC error -32001: "login refused for {\"api_token\":\"[redacted]\",\"cursor\":\"[redacted]\",\"text\":\"\"}"`
			if rec.Code != CodeUpstreamError || rec.Reason != want {
				t.Errorf("audited %s %s\nwant %s", rec.Code, rec.Reason, want)
			}

			// A long message: the record keeps its first bytes, cut on a
			// rune boundary and marked, the agent gets it all.
			long := strings.Repeat("é", 20000)
			answer, rec = echo(long)
			if !strings.Contains(answer, long) {
				t.Errorf("the agent's error is %d bytes, want the upstream's %d whole", len(answer), len(long))
			}
			if strings.Contains(rec.Reason, "SECRET") || !strings.HasPrefix(rec.Reason, `JSON-RPC error -32001: "login refused for`) ||
				!strings.HasSuffix(rec.Reason, `\u00e9"…`) || len(rec.Reason) > 4*maxAuditedError {
				t.Errorf("audited %d bytes: %.400s…", len(rec.Reason), rec.Reason)
			}
		})
	}
}

// Without a way to hide the call's secrets in an upstream's error (no
// Redactor, or a role the policy in force no longer has), the audit
// record keeps the error's code only.
func TestAuditedUpstreamErrorWithoutRedactionKeepsTheCode(t *testing.T) {
	g := newGatewayOver(t, false, func(o *Options) { o.Redactor = nil })
	rpcErr := &jsonrpc.Error{Code: -32000, Message: "login refused for tok-SECRET"}
	args := json.RawMessage(`{"api_token":"tok-SECRET"}`)
	const want = "JSON-RPC error -32000 (its message is not recorded)"
	if got := g.broker.auditedError(rpcErr, "reader", args); got != want {
		t.Errorf("without a Redactor: %q, want %q", got, want)
	}
	g.broker.redactor = audit.NewRedactor([]byte("r"))
	if got := g.broker.auditedError(rpcErr, "gone", args); got != want {
		t.Errorf("for a role the policy does not have: %q, want %q", got, want)
	}
	if got := g.broker.auditedError(rpcErr, "reader", args); got != `JSON-RPC error -32000: "login refused for [redacted]"` {
		t.Errorf("for the agent's role: %q", got)
	}
}

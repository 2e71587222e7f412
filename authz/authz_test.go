package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/audit/audittest"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/redistest"
	"github.com/amgateway/amg/internal/replay"
	"github.com/amgateway/amg/internal/shadow"
	"github.com/amgateway/amg/internal/telemetry"
	"github.com/amgateway/amg/internal/tokens"
	"github.com/amgateway/amg/xds"
)

const testPolicy = `
role: reader
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { in: ["ws_abc123"] }
          limit: { lte: 100, optional: true }
          password: { optional: true }
      - name: delete_page
        constraints:
          page_id: { prefix: "pg_" }
      - name: search
        constraints:
          query: {}
        rate_limits:
          - { requests: 2, per: 1m }
    prompts:
      - name: summarize
    resources: ["notion://ws_abc123/*"]
approvals:
  - match: "delete*"
    require: human
    timeout: 5m
redact: ["query"]
`

const shadowPolicy = `
role: trial
mode: shadow
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { eq: "ws_abc123" }
      - name: delete_page
    prompts:
      - name: summarize
approvals:
  - match: "delete*"
    require: human
`

// lockedWriter serialises writes from concurrent handlers.
type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

type staticPolicies struct{ set *policy.Set }

func (p staticPolicies) Current() *policy.Set { return p.set }

type panickingPolicies struct{}

func (panickingPolicies) Current() *policy.Set { panic("policy store exploded") }

type failingAuth struct{}

func (failingAuth) Authenticate(context.Context, string) (tokens.Token, error) {
	return tokens.Token{}, errors.New("database is locked")
}

type failingLimiter struct{}

func (failingLimiter) AllowAll(context.Context, []ratelimit.Spend) (ratelimit.Result, int, error) {
	return ratelimit.Result{}, -1, errors.New("connection refused")
}

// unnamedRefusal refuses a request without saying which of its spends it
// refused.
type unnamedRefusal struct{}

func (unnamedRefusal) AllowAll(context.Context, []ratelimit.Spend) (ratelimit.Result, int, error) {
	return ratelimit.Result{RetryAfter: time.Second}, -1, nil
}

// env is a running authz gRPC server on loopback with its collaborators.
type env struct {
	client  authv3.AuthorizationClient
	addr    string  // where client reaches the server
	srv     *Server // the same server, called in process
	set     *policy.Set
	audit   *audittest.Recorder
	signer  *Signer
	store   *tokens.MemoryStore
	auth    *tokens.Authenticator
	shadow  *shadow.Memory
	tokens  map[string]string // agent -> secret
	now     time.Time
	limiter *ratelimit.Memory
}

type envOption func(*Deps, *Options)

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	ctx := context.Background()
	set, err := policy.Compile([]policy.File{
		{Name: "reader.yaml", Data: []byte(testPolicy)},
		{Name: "trial.yaml", Data: []byte(shadowPolicy)},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{set: set, audit: &audittest.Recorder{}, store: tokens.NewMemoryStore(), shadow: shadow.NewMemory(), tokens: map[string]string{},
		now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	clock := func() time.Time { return e.now }
	e.auth = tokens.NewAuthenticator(e.store, &tokens.AuthOptions{Now: clock, CacheTTL: -1})
	for agent, role := range map[string]string{"bot-1": "reader", "bot-2": "trial", "bot-3": "ghost"} {
		secret, _, err := tokens.Issue(ctx, e.store, agent, role, time.Hour, e.now)
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[agent] = secret
	}
	e.signer, err = NewSigner([]byte(strings.Repeat("k", 32)), &SignerOptions{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	e.limiter = ratelimit.NewMemory(&ratelimit.MemoryOptions{Now: clock})
	deps := Deps{
		Tokens:   e.auth,
		Policies: staticPolicies{set},
		Limiter:  e.limiter,
		Audit:    e.audit,
		Redactor: audit.NewRedactor([]byte(strings.Repeat("r", 32))),
		Signer:   e.signer,
	}
	o := &Options{Shadow: e.shadow, Now: clock}
	for _, opt := range opts {
		if opt != nil { // none, as a table row without one gives
			opt(&deps, o)
		}
	}
	srv, err := New(deps, o)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gsOpts := GRPCServerOptions(o.MaxBodyBytes)
	if o.Telemetry != nil { // as the gateway serves Check
		gsOpts = append(gsOpts, o.Telemetry.GRPCServerOptions()...)
	}
	gs := grpc.NewServer(gsOpts...)
	authv3.RegisterAuthorizationServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	e.addr = lis.Addr().String()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.client = authv3.NewAuthorizationClient(conn)
	return e
}

var envoyRequest = authztest.EnvoyRequest

func (e *env) check(t *testing.T, agent string, hdrs map[string]string, body string) *authv3.CheckResponse {
	t.Helper()
	h := map[string]string{"mcp-protocol-version": "2025-06-18"}
	if agent != "" {
		h["authorization"] = "Bearer " + e.tokens[agent]
	}
	for k, v := range hdrs {
		h[k] = v
	}
	resp, err := e.client.Check(context.Background(), envoyRequest("POST", h, body))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return resp
}

func toolCall(id int, tool, args string) string {
	return `{"jsonrpc":"2.0","id":` + itoa(id) + `,"method":"tools/call","params":{"name":"` + tool + `","arguments":` + args + `}}`
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// okHeaders returns the headers an OK response sets and removes.
func okHeaders(t *testing.T, resp *authv3.CheckResponse) (map[string]string, []string) {
	t.Helper()
	ok := resp.GetOkResponse()
	if ok == nil || resp.GetStatus().GetCode() != int32(code.Code_OK) {
		t.Fatalf("want OK, got status %v denied %v", resp.GetStatus(), resp.GetDeniedResponse())
	}
	h := map[string]string{}
	for _, o := range ok.GetHeaders() {
		if o.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %s is appended, must overwrite", o.GetHeader().GetKey())
		}
		h[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	return h, ok.GetHeadersToRemove()
}

// denial is a denied response as the agent sees it.
type denial struct {
	status  int
	headers map[string]string
	body    string
}

// denied returns the denial resp carries. Envoy decides on the gRPC
// status alone, and lets through any answer whose status is OK, so a
// denial must carry another status as well as the denied response.
func denied(t *testing.T, resp *authv3.CheckResponse) denial {
	t.Helper()
	d := resp.GetDeniedResponse()
	if d == nil || resp.GetStatus().GetCode() == int32(code.Code_OK) {
		t.Fatalf("want a denial with a status other than OK, got %v", resp)
	}
	out := denial{status: int(d.GetStatus().GetCode()), headers: map[string]string{}, body: d.GetBody()}
	for _, o := range d.GetHeaders() {
		out.headers[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	return out
}

// rpcErr decodes a single JSON-RPC error response.
func rpcErr(t *testing.T, body string) rpcResponse {
	t.Helper()
	var r rpcResponse
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("denial body is not a JSON-RPC response: %v\n%s", err, body)
	}
	return r
}

func TestAllow(t *testing.T) {
	e := newEnv(t)
	body := toolCall(7, "notion__get_pages", `{"workspace_id":"ws_abc123","limit":10}`)
	resp := e.check(t, "bot-1", map[string]string{
		"x-amg-role": "admin", "x-amg-verdict": "allow", "x-amg-extra": "1", "mcp-session-id": "sess-42",
	}, body)
	h, removed := okHeaders(t, resp)
	rec := e.audit.Last(t)
	want := map[string]string{
		HeaderAgent: "bot-1", HeaderRole: "reader", HeaderVerdict: "allow", HeaderDecisionID: rec.DecisionID,
		HeaderDecision: h[HeaderDecision],
	}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"authorization", "x-amg-extra"}, removed); diff != "" {
		t.Errorf("headers to remove (-want +got):\n%s", diff)
	}
	d, err := e.signer.Verify(h[HeaderDecision], []byte(body))
	if err != nil {
		t.Fatalf("decision token does not verify: %v", err)
	}
	if d.ID != rec.DecisionID || d.Agent != "bot-1" || d.Role != "reader" || d.Verdict != "allow" || d.PolicyVersion != rec.PolicyVersion ||
		d.TokenID == "" || d.TokenID != rec.TokenID || d.Method != "POST" || d.Session != "sess-42" {
		t.Errorf("decision token binds %+v, audit says %+v", d, rec)
	}
	if _, err := e.signer.Verify(h[HeaderDecision], []byte(body+" ")); !errors.Is(err, ErrDecisionBody) {
		t.Errorf("token verified against another body: %v", err)
	}
	md := resp.GetDynamicMetadata().GetFields()
	if got := md["decision_id"].GetStringValue(); got != rec.DecisionID {
		t.Errorf("dynamic metadata decision_id = %q, want %q", got, rec.DecisionID)
	}
	if got := md["verdict"].GetStringValue(); got != "allow" || len(md) != 2 {
		t.Errorf("dynamic metadata verdict = %q (of %d fields), want allow", got, len(md))
	}
	if rec.Verdict != "allow" || rec.Code != "allowed" || rec.Server != "notion" || rec.Tool != "get_pages" ||
		rec.Method != "tools/call" || rec.Rule != "reader/notion/get_pages" || rec.Agent != "bot-1" {
		t.Errorf("audit record = %+v", rec)
	}
}

func TestLifecycleMethodsAllowed(t *testing.T) {
	e := newEnv(t)
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
		`{"jsonrpc":"2.0","id":3,"method":"ping"}`,
		`{"jsonrpc":"2.0","id":4,"result":{"content":[]}}`,
	} {
		resp := e.check(t, "bot-1", nil, body)
		if resp.GetOkResponse() == nil {
			t.Errorf("%s: denied: %s", body, resp.GetDeniedResponse().GetBody())
		}
	}
	if code := e.audit.Last(t).Code; code != string(CodeLifecycle) {
		t.Errorf("audit code = %q", code)
	}
}

// A token whose role the policy does not define, or any token while no
// policy is loaded, reaches nothing: not even initialize, tools/list or
// the stream of server messages, which the broker could not serve. The agent reads why, from its first
// request on, and each denial is audited.
func TestLifecycleNeedsADefinedRole(t *testing.T) {
	bodies := []string{
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
		`{"jsonrpc":"2.0","id":3,"method":"ping"}`,
		`{"jsonrpc":"2.0","id":4,"result":{"content":[]}}`,
	}
	for _, tt := range []struct {
		name, agent string
		opt         envOption
		code        Code
		reason      string
	}{
		{"role not in policy", "bot-3", nil, "unknown_role", `role "ghost" is not defined`},
		{"no policy loaded", "bot-1", func(d *Deps, _ *Options) { d.Policies = staticPolicies{} }, "no_policy", "no policy is loaded"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.opt)
			for _, body := range bodies {
				d := denied(t, e.check(t, tt.agent, nil, body))
				r := rpcErr(t, d.body)
				if r.Error.Data.Code != tt.code || r.Error.Message != tt.reason {
					t.Errorf("%s: denied with %d %s; want %s, %q", body, d.status, d.body, tt.code, tt.reason)
				}
				if rec := e.audit.Last(t); rec.Code != string(tt.code) || rec.Verdict != "deny" {
					t.Errorf("%s: audited as %s %s", body, rec.Verdict, rec.Code)
				}
			}
			// Nor the stream of server messages, nor the end of a session.
			for _, method := range []string{"GET", "DELETE"} {
				resp, err := e.client.Check(context.Background(), envoyRequest(method,
					map[string]string{"authorization": "Bearer " + e.tokens[tt.agent], "mcp-session-id": "s1"}, ""))
				if err != nil {
					t.Fatal(err)
				}
				d := denied(t, resp)
				if r := rpcErr(t, d.body); d.status != 403 || r.Error.Code != RPCDenied || r.Error.Data.Code != tt.code || r.Error.Message != tt.reason {
					t.Errorf("%s: denied with %d %s; want 403, %s, %q", method, d.status, d.body, tt.code, tt.reason)
				}
				if rec := e.audit.Last(t); rec.Code != string(tt.code) || rec.Verdict != "deny" || rec.Method != "HTTP "+method {
					t.Errorf("%s: audited as %s %s %s", method, rec.Method, rec.Verdict, rec.Code)
				}
			}
		})
	}
}

func TestPolicyDeny(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, body string
		rpcCode    int
		code       Code
		message    string
	}{
		{"ungranted tool", toolCall(1, "notion__drop_db", `{}`), RPCDenied, "not_granted", `tool "notion__drop_db" is not granted to role "reader"`},
		{"unknown argument", toolCall(2, "notion__get_pages", `{"workspace_id":"ws_abc123","admin":true}`), RPCDenied, "unknown_argument", `argument "admin" is not allowed for "notion__get_pages"`},
		{"failed constraint", toolCall(3, "notion__get_pages", `{"workspace_id":"ws_other"}`), RPCDenied, "constraint_failed", `argument "workspace_id" is not one of the allowed values`},
		{"case folded tool name", toolCall(4, "notion__Get_Pages", `{}`), RPCDenied, "not_granted", `tool "notion__Get_Pages" is not granted to role "reader"`},
		{"path traversal", toolCall(5, "../notion__get_pages", `{}`), -32602, "invalid_name", ""},
		{"look-alike", toolCall(6, "notion__get_pаges", `{}`), -32602, "invalid_name", ""},
		{"no namespace", toolCall(7, "get_pages", `{}`), -32602, "invalid_name", ""},
		{"unknown method", `{"jsonrpc":"2.0","id":8,"method":"sampling/createMessage","params":{}}`, -32601, "method_not_allowed", `method "sampling/createMessage" is not allowed through the gateway`},
		{"ungranted resource", `{"jsonrpc":"2.0","id":9,"method":"resources/read","params":{"uri":"amg:notion:notion://ws_other/p"}}`, RPCDenied, "not_granted", `resource "notion://ws_other/p" on server "notion" is not granted to role "reader"`},
		{"resource without namespace", `{"jsonrpc":"2.0","id":10,"method":"resources/read","params":{"uri":"notion://ws_abc123/p"}}`, -32602, "invalid_name", `resource URI "notion://ws_abc123/p" is not a gateway URI (amg:<server>:<uri>)`},
		// Names an agent sent are quoted with their non-ASCII runes
		// escaped, and cut on a rune boundary: a look-alike shows as such.
		{"look-alike method", `{"jsonrpc":"2.0","id":12,"method":"tools/\u212aill","params":{}}`, -32601, "method_not_allowed", `method "tools/\u212aill" is not allowed through the gateway`},
		{"long method", `{"jsonrpc":"2.0","id":13,"method":"` + strings.Repeat("é", 100) + `","params":{}}`, -32601, "method_not_allowed", `method "` + strings.Repeat(`\u00e9`, 64) + `"… is not allowed through the gateway`},
		{"string id kept", `{"jsonrpc":"2.0","id":"req-11","method":"tools/call","params":{"name":"notion__drop_db"}}`, RPCDenied, "not_granted", `tool "notion__drop_db" is not granted to role "reader"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := denied(t, e.check(t, "bot-1", nil, tt.body))
			if d.status != 200 || d.headers["content-type"] != "application/json" {
				t.Errorf("status %d, headers %v; want 200 application/json", d.status, d.headers)
			}
			r := rpcErr(t, d.body)
			var req struct{ ID json.RawMessage }
			json.Unmarshal([]byte(tt.body), &req)
			rec := e.audit.Last(t)
			if string(r.ID) != string(req.ID) || r.Error.Code != tt.rpcCode || r.Error.Data.Code != tt.code || r.Error.Data.DecisionID != rec.DecisionID {
				t.Errorf("response %s", d.body)
			}
			if tt.message != "" && r.Error.Message != tt.message {
				t.Errorf("message = %q, want %q", r.Error.Message, tt.message)
			}
			if rec.Verdict != "deny" || rec.Code != string(tt.code) || rec.Reason != r.Error.Message {
				t.Errorf("audit record = %+v", rec)
			}
		})
	}
}

func TestNeedsApproval(t *testing.T) {
	e := newEnv(t)
	body := toolCall(1, "notion__delete_page", `{"page_id":"pg_123"}`)
	h, _ := okHeaders(t, e.check(t, "bot-1", nil, body))
	if h[HeaderVerdict] != "needs_approval" {
		t.Errorf("verdict header = %q", h[HeaderVerdict])
	}
	d, err := e.signer.Verify(h[HeaderDecision], []byte(body))
	if err != nil || d.Verdict != "needs_approval" || d.ApprovalTimeout != 5*time.Minute {
		t.Errorf("decision token %+v %v; want needs_approval, with the rule's timeout of 5m", d, err)
	}
	if digest, _ := tokens.Parse(e.tokens["bot-1"]); d.TokenID != digest.ID() {
		t.Errorf("decision token names token %q, want the agent's, %q", d.TokenID, digest.ID())
	}
	if rec := e.audit.Last(t); rec.Verdict != "needs_approval" || rec.Rule != "reader/approvals[0]" {
		t.Errorf("audit record = %+v", rec)
	}
}

// annotationSource gives the annotations of the tools it names, and none
// of others.
type annotationSource map[string]*policy.Annotations

func (a annotationSource) Annotations(server, tool string) *policy.Annotations {
	return a[server+"__"+tool]
}

// Approval rules on annotations see what the tool declared: a read-only
// tool is not parked by a rule for destructive ones, a tool that declared
// nothing is, as it is assumed destructive.
func TestApprovalRulesSeeToolAnnotations(t *testing.T) {
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(`
role: reader
servers:
  notion:
    tools: [{ name: get_pages }, { name: drop }]
approvals:
  - annotations: { destructiveHint: true }
    require: human
`)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	e := newEnv(t, func(d *Deps, o *Options) {
		d.Policies = staticPolicies{set}
		o.Annotations = annotationSource{"notion__get_pages": {ReadOnly: &yes}}
	})
	for tool, want := range map[string]string{"notion__get_pages": verdictAllow, "notion__drop": verdictNeedsApproval} {
		if h, _ := okHeaders(t, e.check(t, "bot-1", nil, toolCall(1, tool, `{}`))); h[HeaderVerdict] != want {
			t.Errorf("%s: verdict %q, want %q", tool, h[HeaderVerdict], want)
		}
	}
}

func TestShadowMode(t *testing.T) {
	e := newEnv(t)
	body := toolCall(1, "notion__get_pages", `{"workspace_id":"ws_other"}`)
	for range 3 {
		h, _ := okHeaders(t, e.check(t, "bot-2", nil, body))
		if h[HeaderVerdict] != "allow" {
			t.Fatalf("shadow role: verdict header %q", h[HeaderVerdict])
		}
	}
	rec := e.audit.Last(t)
	if rec.Verdict != "allow" || rec.ShadowVerdict != "deny" || rec.Code != "constraint_failed" || rec.Role != "trial" {
		t.Errorf("audit record = %+v", rec)
	}
	okHeaders(t, e.check(t, "bot-2", nil, toolCall(2, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)))
	if rec := e.audit.Last(t); rec.ShadowVerdict != "allow" {
		t.Errorf("a would-be allow is recorded with shadow verdict %q", rec.ShadowVerdict)
	}
	// A list is no call the policy decides: it is not counted.
	okHeaders(t, e.check(t, "bot-2", nil, `{"jsonrpc":"2.0","id":3,"method":"tools/list"}`))
	// Every call decided counts, the would-be denials among them.
	counts, _ := e.shadow.Counts(context.Background(), e.now, e.now)
	if diff := cmp.Diff([]shadow.Count{{Role: "trial", Day: "2026-11-25", N: 3, Calls: 4}}, counts); diff != "" {
		t.Errorf("shadow counts (-want +got):\n%s", diff)
	}
}

// A shadow role's call that enforce mode would park for a human runs at
// once, and is counted, in the report, the console's ready signal and the
// metrics, as the would-be denial replay shows it to be: a role whose calls
// would all wait for approval is not ready to enforce.
func TestShadowWouldBeApprovalIsAWouldBeDenial(t *testing.T) {
	var reader *sdkmetric.ManualReader
	tel, err := telemetry.New(t.Context(), &telemetry.Options{MetricReader: func(p sdkmetric.Producer) sdkmetric.Reader {
		reader = sdkmetric.NewManualReader(sdkmetric.WithProducer(p))
		return reader
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	e := newEnv(t, func(_ *Deps, o *Options) { o.Telemetry = tel })
	for i := range 3 {
		if h, _ := okHeaders(t, e.check(t, "bot-2", nil, toolCall(i, "notion__delete_page", `{}`))); h[HeaderVerdict] != "allow" {
			t.Fatalf("shadow role's call that needs approval: verdict header %q", h[HeaderVerdict])
		}
		if rec := e.audit.Last(t); rec.Verdict != "allow" || rec.ShadowVerdict != "needs_approval" {
			t.Fatalf("audit record = %+v", rec)
		}
	}

	counts, _ := e.shadow.Counts(context.Background(), e.now, e.now)
	if diff := cmp.Diff([]shadow.Count{{Role: "trial", Day: "2026-11-25", N: 3, Calls: 3}}, counts); diff != "" {
		t.Errorf("shadow counts (-want +got):\n%s", diff)
	}
	if s := shadow.Window(counts, []string{"trial"}, e.now, 1)[0]; s.ReadyToEnforce(1, 1) {
		t.Errorf("a role whose every call would wait for approval is ready to enforce: %+v", s)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var denies int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == telemetry.MetricShadowDenies {
				for _, dp := range sum.DataPoints {
					denies += dp.Value
				}
			}
		}
	}
	if denies != 3 {
		t.Errorf("%s = %d, want 3", telemetry.MetricShadowDenies, denies)
	}

	enforced, err := policy.Compile([]policy.File{
		{Name: "reader.yaml", Data: []byte(testPolicy)},
		{Name: "trial.yaml", Data: []byte(strings.Replace(shadowPolicy, "mode: shadow", "mode: enforce", 1))},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rep := replay.Replay(slices.Values(e.audit.All()), enforced, nil)
	if diff := cmp.Diff(map[replay.Key]*replay.Counts{
		{Role: "trial", Tool: "notion__delete_page"}: {ToApproval: 3},
	}, rep.Counts); diff != "" {
		t.Errorf("replay against the role in enforce mode (-want +got):\n%s", diff)
	}
}

// Every kind of denial carries a gRPC status other than OK, which is all
// Envoy reads to decide: a denied response under an OK status would be
// let through.
func TestDenialsCarryANonOKStatus(t *testing.T) {
	search := toolCall(1, "notion__search", `{"query":"q"}`)
	tests := []struct {
		name   string
		opt    envOption
		agent  string
		bodies []string // the last is denied
		want   code.Code
	}{
		{"policy", nil, "bot-1", []string{toolCall(1, "notion__drop_db", `{}`)}, code.Code_PERMISSION_DENIED},
		{"no token", nil, "", []string{search}, code.Code_UNAUTHENTICATED},
		{"malformed", nil, "bot-1", []string{`{`}, code.Code_PERMISSION_DENIED},
		{"role not in policy", nil, "bot-3", []string{`{"jsonrpc":"2.0","method":"notifications/initialized"}`}, code.Code_PERMISSION_DENIED},
		{"rate limited", nil, "bot-1", []string{search, search, search}, code.Code_PERMISSION_DENIED},
		{"rate limiter error", func(d *Deps, _ *Options) { d.Limiter = failingLimiter{} }, "bot-1", []string{search}, code.Code_UNAVAILABLE},
		{"token store error", func(d *Deps, _ *Options) { d.Tokens = failingAuth{} }, "bot-1", []string{search}, code.Code_UNAVAILABLE},
		{"audit failure", func(d *Deps, _ *Options) { d.Audit = &audittest.Recorder{Err: audit.ErrUnavailable} }, "bot-1", []string{search}, code.Code_UNAVAILABLE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.opt)
			var resp *authv3.CheckResponse
			for _, body := range tt.bodies {
				resp = e.check(t, tt.agent, nil, body)
			}
			denied(t, resp)
			if got := code.Code(resp.GetStatus().GetCode()); got != tt.want {
				t.Errorf("gRPC status %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t)
	body := toolCall(1, "notion__search", `{"query":"x"}`)
	for range 2 {
		okHeaders(t, e.check(t, "bot-1", nil, body))
	}
	d := denied(t, e.check(t, "bot-1", nil, body))
	r := rpcErr(t, d.body)
	if d.status != 200 || r.Error.Code != RPCRateLimited || r.Error.Data.Code != CodeRateLimited || r.Error.Data.RetryAfterMS != 30000 || d.headers["retry-after"] != "30" {
		t.Errorf("rate-limited response: %d %v %s", d.status, d.headers, d.body)
	}
	if want := `rate limit "reader/notion/search/rate_limits[0]" exceeded: 2 calls per 1m0s`; r.Error.Message != want {
		t.Errorf("message = %q, want %q", r.Error.Message, want)
	}
	e.now = e.now.Add(30 * time.Second)
	okHeaders(t, e.check(t, "bot-1", nil, body))
}

// retry_after_ms is rounded up, as Retry-After is, and a wait under a
// millisecond is one: a refusal never leaves it out.
func TestRetryAfterRoundsUp(t *testing.T) {
	if got := retryAfterMS(0); got != 1 {
		t.Errorf("retry_after_ms of no wait = %d, want 1", got)
	}
	tests := []struct {
		limit      string // of one call at a time
		wait       string
		ms         int64
		retryAfter string
	}{
		{"{ requests: 2000, per: 1s, burst: 1 }", "500µs", 1, "1"},
		{"{ requests: 1000, per: 1500ms, burst: 1 }", "1.5ms", 2, "1"},
		{"{ requests: 1, per: 1500ms, burst: 1 }", "1.5s", 1500, "2"},
	}
	for _, tt := range tests {
		t.Run(tt.wait, func(t *testing.T) {
			set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(`
role: reader
servers:
  notion:
    tools:
      - name: search
        constraints:
          query: {}
rate_limits:
  - ` + tt.limit + "\n")}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, func(d *Deps, _ *Options) { d.Policies = staticPolicies{set} })
			okHeaders(t, e.check(t, "bot-1", nil, toolCall(1, "notion__search", `{"query":"a"}`)))
			d := denied(t, e.check(t, "bot-1", nil, toolCall(2, "notion__search", `{"query":"a"}`)))
			if r := rpcErr(t, d.body); r.Error.Data.Code != CodeRateLimited || r.Error.Data.RetryAfterMS != tt.ms || d.headers["retry-after"] != tt.retryAfter {
				t.Errorf("refusal with %s to wait: %s, Retry-After %q; want retry_after_ms %d, Retry-After %s", tt.wait, d.body, d.headers["retry-after"], tt.ms, tt.retryAfter)
			}
		})
	}
}

// limitedPolicy's search has a limit of its own, and the role one that
// every agent of the role shares.
const limitedPolicy = `
role: reader
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { in: ["ws_abc123"] }
      - name: search
        constraints:
          query: {}
        rate_limits:
          - { requests: 1, per: 1h }
rate_limits:
  - { requests: 3, per: 1h, key: role }
`

func limitedEnv(t *testing.T, mode string) *env {
	t.Helper()
	src := limitedPolicy + "mode: " + mode + "\n"
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(src)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return newEnv(t, func(d *Deps, _ *Options) { d.Policies = staticPolicies{set} })
}

// A limit keyed on the role is one budget for all the role's agents.
func TestRoleLimitIsSharedByItsAgents(t *testing.T) {
	e := limitedEnv(t, "enforce")
	secret, _, err := tokens.Issue(context.Background(), e.store, "bot-4", "reader", time.Hour, e.now)
	if err != nil {
		t.Fatal(err)
	}
	e.tokens["bot-4"] = secret
	pages := func(id int) string { return toolCall(id, "notion__get_pages", `{"workspace_id":"ws_abc123"}`) }
	okHeaders(t, e.check(t, "bot-1", nil, pages(1)))
	okHeaders(t, e.check(t, "bot-1", nil, pages(2)))
	okHeaders(t, e.check(t, "bot-4", nil, pages(3)))
	if d := denied(t, e.check(t, "bot-4", nil, pages(4))); rpcErr(t, d.body).Error.Data.Code != CodeRateLimited {
		t.Errorf("a 4th call of the role, bot-4's 2nd: %s, want rate limited by the role's 3 an hour", d.body)
	}
}

// A call one limit refuses spends none of its other limits: an agent
// retrying a call over its grant's limit must not drain the budget its
// role's agents share.
func TestRateLimitedCallSpendsNoOtherLimit(t *testing.T) {
	search := func(id int) string { return toolCall(id, "notion__search", `{"query":"a"}`) }
	pages := func(id int) string { return toolCall(id, "notion__get_pages", `{"workspace_id":"ws_abc123"}`) }
	t.Run("enforce", func(t *testing.T) {
		e := limitedEnv(t, "enforce")
		okHeaders(t, e.check(t, "bot-1", nil, search(1)))
		for i := range 3 {
			if d := denied(t, e.check(t, "bot-1", nil, search(2+i))); rpcErr(t, d.body).Error.Data.Code != CodeRateLimited {
				t.Fatalf("search %d over its own limit: %s", i, d.body)
			}
		}
		// One call of the role's 3 an hour went through.
		for i := range 2 {
			if resp := e.check(t, "bot-1", nil, pages(10+i)); resp.GetOkResponse() == nil {
				t.Fatalf("get_pages %d, with %d of the role's 3 calls spent: %s", i, 1+i, resp.GetDeniedResponse().GetBody())
			}
		}
		if d := denied(t, e.check(t, "bot-1", nil, pages(12))); rpcErr(t, d.body).Error.Data.Code != CodeRateLimited {
			t.Errorf("a 4th call of the role: %s, want rate limited", d.body)
		}
	})
	t.Run("shadow", func(t *testing.T) {
		// A would-be denial spends nothing either.
		e := limitedEnv(t, "shadow")
		for i := range 4 {
			okHeaders(t, e.check(t, "bot-1", nil, search(1+i)))
			if rec := e.audit.Last(t); i > 0 && (rec.ShadowVerdict != "deny" || rec.Code != string(CodeRateLimited)) {
				t.Fatalf("search %d over its own limit: recorded %+v, want a would-be rate limit", i, rec)
			}
		}
		for i := range 2 {
			okHeaders(t, e.check(t, "bot-1", nil, pages(10+i)))
			if rec := e.audit.Last(t); rec.ShadowVerdict != "allow" {
				t.Fatalf("get_pages %d, with %d of the role's 3 calls spent: recorded %+v, want a would-be allow", i, 1+i, rec)
			}
		}
	})
}

// In shadow mode a call the policy would deny is let through but spends no
// budget, as it would not have run: its would-be denials leave the agent's
// and the role's limits whole for the calls that would.
func TestShadowWouldBeDenialSpendsNoBudget(t *testing.T) {
	e := limitedEnv(t, "shadow")
	for i, body := range []string{
		toolCall(1, "notion__search", `{"query":"a","scope":"all"}`),
		toolCall(2, "notion__get_pages", `{"workspace_id":"ws_other"}`),
		toolCall(3, "notion__get_pages", `{"workspace_id":"ws_other"}`),
	} {
		okHeaders(t, e.check(t, "bot-1", nil, body))
		if rec := e.audit.Last(t); rec.ShadowVerdict != "deny" || rec.Code == string(CodeRateLimited) {
			t.Fatalf("call %d breaking the policy: recorded %+v, want a would-be denial by the policy", i, rec)
		}
	}
	for i, body := range []string{
		toolCall(4, "notion__search", `{"query":"a"}`),
		toolCall(5, "notion__get_pages", `{"workspace_id":"ws_abc123"}`),
	} {
		okHeaders(t, e.check(t, "bot-1", nil, body))
		if rec := e.audit.Last(t); rec.ShadowVerdict != "allow" || rec.Code == string(CodeRateLimited) {
			t.Errorf("valid call %d after would-be denials: recorded %+v, want a would-be allow", i, rec)
		}
	}
}

// A batch runs all its calls or none, and spends their budgets so: a batch
// the policy denies, or one of whose calls a limit refuses, spends nothing.
func TestDeniedBatchSpendsNoBudget(t *testing.T) {
	v2025 := map[string]string{"mcp-protocol-version": "2025-03-26"}
	search := func(id int) string { return toolCall(id, "notion__search", `{"query":"a"}`) }
	e := limitedEnv(t, "enforce")
	// Denied by the policy: get_pages's workspace is not allowed.
	d := denied(t, e.check(t, "bot-1", v2025, "["+search(1)+","+toolCall(2, "notion__get_pages", `{"workspace_id":"ws_other"}`)+"]"))
	var rs []rpcResponse
	if err := json.Unmarshal([]byte(d.body), &rs); err != nil || len(rs) != 2 || rs[0].Error.Data.Code != CodeBatchDenied || rs[1].Error.Data.Code != "constraint_failed" {
		t.Fatalf("batch the policy denies: %s", d.body)
	}
	// Denied by search's limit, which allows one of its two searches.
	d = denied(t, e.check(t, "bot-1", v2025, "["+search(3)+","+search(4)+"]"))
	if err := json.Unmarshal([]byte(d.body), &rs); err != nil || len(rs) != 2 || rs[0].Error.Data.Code != CodeBatchDenied || rs[1].Error.Data.Code != CodeRateLimited {
		t.Fatalf("batch over search's limit: %s", d.body)
	}
	// Neither spent search's budget, nor the role's.
	okHeaders(t, e.check(t, "bot-1", nil, search(5)))
	okHeaders(t, e.check(t, "bot-1", v2025, "["+toolCall(6, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)+","+
		toolCall(7, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)+"]"))
}

// A batch's refusal is told of the call whose limit refused it, also when
// that limit is the first of a call after others.
func TestBatchRefusalNamesTheCallRefused(t *testing.T) {
	v2025 := map[string]string{"mcp-protocol-version": "2025-03-26"}
	pages := func(id int) string { return toolCall(id, "notion__get_pages", `{"workspace_id":"ws_abc123"}`) }
	e := limitedEnv(t, "enforce")
	okHeaders(t, e.check(t, "bot-1", nil, pages(1)))
	okHeaders(t, e.check(t, "bot-1", nil, pages(2)))
	// One of the role's 3 calls is left: get_pages takes it, and the
	// role's limit, the first of search's, refuses search.
	d := denied(t, e.check(t, "bot-1", v2025, "["+pages(3)+","+toolCall(4, "notion__search", `{"query":"a"}`)+"]"))
	var rs []rpcResponse
	if err := json.Unmarshal([]byte(d.body), &rs); err != nil || len(rs) != 2 || d.status != 200 ||
		rs[0].Error.Data.Code != CodeBatchDenied || rs[1].Error.Data.Code != CodeRateLimited ||
		rs[1].Error.Message != `rate limit "reader/rate_limits[0]" exceeded: 3 calls per 1h0m0s` {
		t.Errorf("batch over the role's limit: %d %s; want get_pages batch_denied, search refused by the role's limit", d.status, d.body)
	}
}

// A call is counted before its decision is recorded, and a call the
// audit log then cannot record (503) keeps what it spent, as the README
// says: nothing is given back.
func TestAuditFailureAfterCountingKeepsTheSpend(t *testing.T) {
	rec := &audittest.Recorder{}
	e := newEnv(t, func(d *Deps, _ *Options) { d.Audit = rec })
	check := func(id int) *authv3.CheckResponse {
		// In process, so that the recorder's Err set between Checks is
		// not a race.
		resp, err := e.srv.Check(context.Background(), envoyRequest("POST", map[string]string{
			"mcp-protocol-version": "2025-06-18", "authorization": "Bearer " + e.tokens["bot-1"]},
			toolCall(id, "notion__search", `{"query":"a"}`)))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	rec.Err = audit.ErrUnavailable
	for i := range 2 { // search: 2 per 1m
		if d := denied(t, check(1+i)); d.status != 503 || rpcErr(t, d.body).Error.Data.Code != CodeAuditUnavailable {
			t.Fatalf("with the audit log down: %d %s", d.status, d.body)
		}
	}
	rec.Err = nil
	if d := denied(t, check(3)); rpcErr(t, d.body).Error.Data.Code != CodeRateLimited {
		t.Errorf("the first call after the audit log is back: %s, want rate limited by the two it could not record", d.body)
	}
}

// swappedPolicies is a policy store whose set a test replaces, as a
// reload does.
type swappedPolicies struct{ set atomic.Pointer[policy.Set] }

func (p *swappedPolicies) Current() *policy.Set { return p.set.Load() }

// A limit's budget is its own, whatever a policy change does around it: a
// limit left as it was keeps what it spent when another before it in its
// list goes, and a limit changed starts afresh rather than taking over
// the budget of the one that was in its place.
func TestPolicyChangeKeepsEachLimitsBudget(t *testing.T) {
	const role = `
role: reader
servers:
  notion:
    tools:
      - name: search
        constraints:
          query: {}
`
	compile := func(limits string) *policy.Set {
		set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(role + "rate_limits:\n" + limits)}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	search := func(id int) string { return toolCall(id, "notion__search", `{"query":"a"}`) }
	tests := []struct {
		name, before, after string
		refusal             string // of the call after the change; "" if allowed
	}{
		{"the limit before it removed", "  - { requests: 1000, per: 1m }\n  - { requests: 2, per: 24h }\n",
			"  - { requests: 2, per: 24h }\n", `rate limit "reader/rate_limits[0]" exceeded: 2 calls per 24h0m0s`},
		{"a limit put before it", "  - { requests: 2, per: 24h }\n",
			"  - { requests: 1000, per: 1m }\n  - { requests: 2, per: 24h }\n", `rate limit "reader/rate_limits[1]" exceeded: 2 calls per 24h0m0s`},
		{"the limit replaced", "  - { requests: 2, per: 24h }\n",
			"  - { requests: 1000, per: 1m }\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pols := &swappedPolicies{}
			pols.set.Store(compile(tt.before))
			e := newEnv(t, func(d *Deps, _ *Options) { d.Policies = pols })
			for i := range 2 {
				okHeaders(t, e.check(t, "bot-1", nil, search(1+i)))
			}
			if d := denied(t, e.check(t, "bot-1", nil, search(3))); rpcErr(t, d.body).Error.Data.Code != CodeRateLimited {
				t.Fatalf("a 3rd call of 2 a day: %s", d.body)
			}
			pols.set.Store(compile(tt.after))
			resp := e.check(t, "bot-1", nil, search(4))
			refusal := ""
			if resp.GetOkResponse() == nil {
				refusal = rpcErr(t, denied(t, resp).body).Error.Message
			}
			if refusal != tt.refusal {
				t.Errorf("the call after the change: refused with %q, want %q", refusal, tt.refusal)
			}
		})
	}
}

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	expired, old, _ := tokens.Issue(context.Background(), e.store, "old", "reader", time.Minute, e.now.Add(-time.Hour))
	revoked, gone, _ := tokens.Issue(context.Background(), e.store, "gone", "reader", 0, e.now)
	if err := e.auth.Revoke(context.Background(), gone.ID); err != nil {
		t.Fatal(err)
	}
	// A refused token the store knows is recorded under its agent, role
	// and ID: after a leak, the attempts with the revoked token are found
	// under the agent, and told from its other tokens.
	tests := []struct {
		name      string
		authz     string
		code      Code
		challenge string
		known     tokens.Token
	}{
		{"missing", "", CodeUnauthenticated, `Bearer realm="amg"`, tokens.Token{}},
		{"not bearer", "Basic dXNlcjpwYXNz", CodeUnauthenticated, `Bearer realm="amg", error="invalid_request", error_description="authorization header is not a bearer token"`, tokens.Token{}},
		{"malformed", "Bearer amg_nothex", CodeTokenInvalid, `Bearer realm="amg", error="invalid_token", error_description="token is not valid"`, tokens.Token{}},
		{"unknown", "Bearer amg_" + strings.Repeat("ab", 32), CodeTokenInvalid, `Bearer realm="amg", error="invalid_token", error_description="token is not valid"`, tokens.Token{}},
		{"expired", "Bearer " + expired, CodeTokenExpired, `Bearer realm="amg", error="invalid_token", error_description="token has expired"`, old},
		{"revoked", "Bearer " + revoked, CodeTokenRevoked, `Bearer realm="amg", error="invalid_token", error_description="token has been revoked"`, gone},
		{"two tokens", "Bearer " + e.tokens["bot-1"] + ",Bearer " + e.tokens["bot-1"], CodeTokenInvalid, `Bearer realm="amg", error="invalid_token", error_description="token is not valid"`, tokens.Token{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{}
			if tt.authz != "" {
				h["authorization"] = tt.authz
			}
			d := denied(t, e.check(t, "", h, body))
			if d.status != 401 || d.headers["www-authenticate"] != tt.challenge {
				t.Errorf("status %d, challenge %q; want 401 %q", d.status, d.headers["www-authenticate"], tt.challenge)
			}
			r := rpcErr(t, d.body)
			if r.Error.Code != RPCUnauthorized || r.Error.Data.Code != tt.code {
				t.Errorf("body %s", d.body)
			}
			rec := e.audit.Last(t)
			if rec.Code != string(tt.code) || rec.Verdict != "deny" {
				t.Errorf("audit record = %+v", rec)
			}
			if rec.Agent != tt.known.Agent || rec.Role != tt.known.Role || rec.TokenID != tt.known.ID {
				t.Errorf("recorded under agent %q, role %q, token %q; want %q, %q, %q",
					rec.Agent, rec.Role, rec.TokenID, tt.known.Agent, tt.known.Role, tt.known.ID)
			}
		})
	}
}

// Envoy with encode_raw_headers sends the headers in header_map, as the
// agent sent them: in order, repeats kept, names in any case. They are read
// as from the headers map: a second Authorization header is joined to the
// first, never read in its place, and names match whatever their case.
func TestAuthenticationFromHeaderMap(t *testing.T) {
	e := newEnv(t)
	body := toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)
	check := func(kv ...[2]string) *authv3.CheckResponse {
		t.Helper()
		req := envoyRequest("POST", nil, body)
		h := req.GetAttributes().GetRequest().GetHttp()
		var hm []*corev3.HeaderValue
		for k, v := range h.GetHeaders() {
			hm = append(hm, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
		}
		for _, p := range append([][2]string{{"mcp-protocol-version", "2025-06-18"}}, kv...) {
			hm = append(hm, &corev3.HeaderValue{Key: p[0], RawValue: []byte(p[1])})
		}
		h.Headers, h.HeaderMap = nil, &corev3.HeaderMap{Headers: hm}
		resp, err := e.client.Check(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	okHeaders(t, check([2]string{"Authorization", "Bearer " + e.tokens["bot-1"]}))
	d := denied(t, check([2]string{"authorization", "Bearer not-a-token"}, [2]string{"authorization", "Bearer " + e.tokens["bot-1"]}))
	if r := rpcErr(t, d.body); d.status != 401 || r.Error.Data.Code != CodeTokenInvalid {
		t.Errorf("two Authorization headers: %d %s, want 401 %s", d.status, d.body, CodeTokenInvalid)
	}
}

func TestRevocationTakesEffectOnNextRequest(t *testing.T) {
	e := newEnv(t)
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	okHeaders(t, e.check(t, "bot-1", nil, body))
	d, _ := tokens.Parse(e.tokens["bot-1"])
	// Revoked through the store, as another process would.
	if err := e.store.Revoke(context.Background(), d.ID(), e.now); err != nil {
		t.Fatal(err)
	}
	if got := denied(t, e.check(t, "bot-1", nil, body)); got.status != 401 {
		t.Errorf("after revocation: status %d", got.status)
	}
}

func TestMalformedRequests(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name    string
		hdrs    map[string]string
		body    string
		status  int
		rpcCode int
		code    Code
		message string
		// id is the answer's id when it names the request (else null).
		id string
	}{
		{"invalid JSON", nil, `{"jsonrpc":"2.0",`, 400, -32700, CodeMalformedRequest, "", ""},
		{"duplicate key smuggling", nil, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123","limit":1,"limit":1000}`), 400, -32600, CodeMalformedRequest, "", ""},
		{"case-folded key", nil, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","Name":"notion__drop_db"}}`, 400, -32600, CodeMalformedRequest, "", ""},
		{"trailing data", nil, toolCall(1, "notion__get_pages", `{}`) + `{}`, 400, -32700, CodeMalformedRequest, "", ""},
		{"batch in 2025-06-18", nil, `[` + toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`) + `]`, 400, -32600, CodeMalformedRequest, "", ""},
		// Without the header a batch is of 2025-03-26, unless its _meta
		// names a version that has none.
		{"batch of 2026-07-28 by _meta", map[string]string{"mcp-protocol-version": ""}, `[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}},` + toolCall(2, "notion__get_pages", `{"workspace_id":"ws_abc123"}`) + `]`, 400, -32600, CodeMalformedRequest, `JSON-RPC batches are not allowed in protocol "2026-07-28", which a message's _meta names`, ""},
		{"unsupported version", map[string]string{"mcp-protocol-version": "1999-01-01"}, toolCall(1, "notion__get_pages", `{}`), 400, -32600, CodeUnsupportedVersion, `unsupported MCP protocol version "1999-01-01"`, ""},
		{"Mcp-Method disagrees", map[string]string{"mcp-method": "tools/list"}, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`), 400, -32600, CodeHeaderMismatch, `Mcp-Method header "tools/list" does not match the body's method "tools/call"`, "1"},
		{"Mcp-Name disagrees", map[string]string{"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "notion__search"}, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`), 400, -32600, CodeHeaderMismatch, "Mcp-Name header does not match the body", "1"},
		{"Mcp-Method missing in 2026-07-28", map[string]string{"mcp-protocol-version": "2026-07-28"}, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`), 400, -32600, CodeHeaderMismatch, "Mcp-Method header is required from protocol 2026-07-28", "1"},
		{"Mcp-Name missing in 2026-07-28", map[string]string{"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`), 400, -32600, CodeHeaderMismatch, "Mcp-Name header is required for tools/call from protocol 2026-07-28", "1"},
		// Wrong params of a request whose id came first: the answer names it.
		{"name not a string", nil, `{"jsonrpc":"2.0","id":"q-7","method":"tools/call","params":{"name":5}}`, 400, -32602, CodeMalformedRequest, "", `"q-7"`},
		{"partial body", map[string]string{"x-envoy-auth-partial-body": "true"}, toolCall(1, "notion__get_pages", `{}`), 413, -32600, CodeBodyTooLarge, "", ""},
		// MCP sends only notifications/* without an id: a call without one
		// could never be answered, nor waited on for approval.
		{"call without an id", nil, `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`, 400, -32600, CodeMalformedRequest, `"tools/call" is a request and needs an id`, ""},
		{"notification with an id", nil, `{"jsonrpc":"2.0","id":3,"method":"notifications/initialized"}`, 400, -32600, CodeMalformedRequest, `"notifications/initialized" is a notification and takes no id`, "3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := denied(t, e.check(t, "bot-1", tt.hdrs, tt.body))
			r := rpcErr(t, d.body)
			if tt.id == "" {
				tt.id = "null"
			}
			if d.status != tt.status || r.Error.Code != tt.rpcCode || r.Error.Data.Code != tt.code || string(r.ID) != tt.id {
				t.Errorf("got %d %s", d.status, d.body)
			}
			if tt.message != "" && r.Error.Message != tt.message {
				t.Errorf("message = %q, want %q", r.Error.Message, tt.message)
			}
			if rec := e.audit.Last(t); rec.Code != string(tt.code) || rec.Reason != r.Error.Message {
				t.Errorf("audit record = %+v", rec)
			}
		})
	}
	okHeaders(t, e.check(t, "bot-1", map[string]string{"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "notion__get_pages"},
		toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)))
}

// TestBodyNotWholeIsNeverDecidedOn checks what authz makes of a body it
// cannot know whole. Envoy sends a body as soon as it has
// max_request_bytes of it, and marks it partial only if its buffer holds
// more than it sends: when the agent's frames end exactly at the limit,
// a body over it arrives cut and marked whole. Valid JSON followed by
// padding would then be allowed, and audited as a call that never ran
// (the broker refuses the whole body), and one cut mid-JSON audited as
// malformed rather than too large.
func TestBodyNotWholeIsNeverDecidedOn(t *testing.T) {
	cfg := config.Default()
	cfg.MaxBodyBytes = 4096
	res, err := xds.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ea, err := xds.ExtAuthzConfig(res)
	if err != nil {
		t.Fatal(err)
	}
	cut := int(ea.GetWithRequestBody().GetMaxRequestBytes())
	e := newEnv(t, func(_ *Deps, o *Options) { o.MaxBodyBytes = cfg.MaxBodyBytes })
	call := toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123","limit":10}`)
	padded := call + strings.Repeat(" ", 2*cfg.MaxBodyBytes)
	long := toolCall(1, "notion__get_pages", `{"workspace_id":"`+strings.Repeat("w", 2*cfg.MaxBodyBytes)+`"}`)
	length := func(s string) string { return strconv.Itoa(len(s)) }
	tests := []struct {
		name   string
		hdrs   map[string]string
		body   string
		status int
		code   Code
	}{
		// As Envoy sends them, with and without the agent's Content-Length
		// (an HTTP/2 agent may send none).
		{"json then padding, cut", map[string]string{"content-length": length(padded)}, padded[:cut], 413, CodeBodyTooLarge},
		{"json then padding, cut, no length", nil, padded[:cut], 413, CodeBodyTooLarge},
		{"long argument, cut", map[string]string{"content-length": length(long)}, long[:cut], 413, CodeBodyTooLarge},
		{"long argument, cut, no length", nil, long[:cut], 413, CodeBodyTooLarge},
		// As an Envoy configured before max_request_bytes took the byte
		// more sends them: only the Content-Length tells.
		{"cut at the limit", map[string]string{"content-length": length(padded)}, padded[:cfg.MaxBodyBytes], 413, CodeBodyTooLarge},
		{"shorter than its length", map[string]string{"content-length": length(call + " ")}, call, 400, CodeMalformedRequest},
		{"longer than its length", map[string]string{"content-length": length(call[1:])}, call, 400, CodeMalformedRequest},
		{"length not a number", map[string]string{"content-length": "0x10"}, call, 400, CodeMalformedRequest},
		{"length negative", map[string]string{"content-length": "-1"}, call, 400, CodeMalformedRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"x-envoy-auth-partial-body": "false"}
			maps.Copy(h, tt.hdrs)
			resp := e.check(t, "bot-1", h, tt.body)
			if resp.GetOkResponse() != nil {
				t.Fatalf("a body of %d bytes (Content-Length %q) was allowed", len(tt.body), tt.hdrs["content-length"])
			}
			d := denied(t, resp)
			if r := rpcErr(t, d.body); d.status != tt.status || r.Error.Data.Code != tt.code {
				t.Errorf("got %d %s, want %d with code %s", d.status, d.body, tt.status, tt.code)
			}
			if rec := e.audit.Last(t); rec.Code != string(tt.code) {
				t.Errorf("audited as %q (%s), want %q", rec.Code, rec.Reason, tt.code)
			}
		})
	}
	// A whole body, up to the limit, is decided on.
	whole := call + strings.Repeat(" ", cfg.MaxBodyBytes-len(call))
	okHeaders(t, e.check(t, "bot-1", map[string]string{"x-envoy-auth-partial-body": "false", "content-length": length(whole)}, whole))
}

func TestBatches(t *testing.T) {
	e := newEnv(t)
	v2025 := map[string]string{"mcp-protocol-version": "2025-03-26"}
	good := toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)
	okHeaders(t, e.check(t, "bot-1", v2025, "["+good+`,{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}]`))
	// A 2025-03-26 agent need not send the version header, which came
	// with 2025-06-18: without it, a request is of 2025-03-26.
	okHeaders(t, e.check(t, "bot-1", map[string]string{"mcp-protocol-version": ""}, "["+good+"]"))

	d := denied(t, e.check(t, "bot-1", v2025, "["+good+","+toolCall(2, "notion__drop_db", `{}`)+"]"))
	var rs []rpcResponse
	if err := json.Unmarshal([]byte(d.body), &rs); err != nil || len(rs) != 2 {
		t.Fatalf("batch denial %s: %v", d.body, err)
	}
	if rs[0].Error.Data.Code != CodeBatchDenied || rs[1].Error.Data.Code != "not_granted" || string(rs[0].ID) != "1" || string(rs[1].ID) != "2" {
		t.Errorf("batch denial %s", d.body)
	}

	d = denied(t, e.check(t, "bot-1", v2025, "["+good+","+toolCall(2, "notion__delete_page", `{"page_id":"pg_1"}`)+"]"))
	if err := json.Unmarshal([]byte(d.body), &rs); err != nil || rs[1].Error.Message != "calls that need approval cannot be sent in a batch" {
		t.Errorf("batch with an approval: %s", d.body)
	}
}

var (
	_ Auditor = (*audittest.Recorder)(nil)
	_ Auditor = (*queueAudit)(nil)
)

// queueAudit is an audit queue with room for so many records more.
type queueAudit struct {
	mu   sync.Mutex
	room int
	recs []audit.Record
}

func (q *queueAudit) Log(rec *audit.Record) error { return q.LogAll([]*audit.Record{rec}) }

func (q *queueAudit) LogAll(recs []*audit.Record) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(recs) > q.room {
		return fmt.Errorf("%w: queue full", audit.ErrUnavailable)
	}
	q.room -= len(recs)
	for _, rec := range recs {
		q.recs = append(q.recs, *rec)
	}
	return nil
}

// A batch refused because the audit log had room for only some of its
// records leaves none of them: a record saying a call was allowed would
// stand for a decision the gateway did not make.
func TestBatchAuditedWhole(t *testing.T) {
	aud := &queueAudit{room: 1}
	e := newEnv(t, func(d *Deps, _ *Options) { d.Audit = aud })
	v2025 := map[string]string{"mcp-protocol-version": "2025-03-26"}
	batch := "[" + toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`) + "," + toolCall(2, "notion__get_pages", `{"workspace_id":"ws_abc123"}`) + "]"
	d := denied(t, e.check(t, "bot-1", v2025, batch))
	if d.status != 503 || !strings.Contains(d.body, string(CodeAuditUnavailable)) {
		t.Errorf("batch with room for one of its records: HTTP %d %s; want 503, %s", d.status, d.body, CodeAuditUnavailable)
	}
	if len(aud.recs) != 0 {
		t.Errorf("the refused batch left %d audit records: %+v", len(aud.recs), aud.recs)
	}
	okHeaders(t, e.check(t, "bot-1", v2025, toolCall(3, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)))
	if len(aud.recs) != 1 || aud.recs[0].Verdict != "allow" {
		t.Errorf("a single call with room for its record: records %+v, want one allow", aud.recs)
	}
}

// A shadow-mode role's batch is allowed, and recorded and counted as
// enforce mode would decide it: as a whole. Replay reads the records
// back: against the same policy nothing changes, and against the role in
// enforce mode the batches it would refuse are denied.
func TestShadowBatches(t *testing.T) {
	e := newEnv(t)
	v2025 := map[string]string{"mcp-protocol-version": "2025-03-26"}
	good := toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)
	for _, other := range []string{
		toolCall(2, "notion__drop_db", `{}`),
		toolCall(2, "notion__delete_page", `{}`),
		toolCall(2, "notion__get_pages", `{"workspace_id":"ws_abc123"}`),
	} {
		if h, _ := okHeaders(t, e.check(t, "bot-2", v2025, "["+good+","+other+"]")); h[HeaderVerdict] != "allow" {
			t.Fatalf("shadow role's batch: verdict header %q", h[HeaderVerdict])
		}
	}
	// A name that does not parse is denied in shadow mode too, and with it
	// the batch.
	denied(t, e.check(t, "bot-2", v2025, "["+good+","+toolCall(2, "get_pages", `{}`)+"]"))
	type recorded struct{ Tool, Verdict, ShadowVerdict, Code, Reason string }
	var got []recorded
	for _, rec := range e.audit.All() {
		got = append(got, recorded{rec.Tool, rec.Verdict, rec.ShadowVerdict, rec.Code, rec.Reason})
	}
	want := []recorded{
		{"get_pages", "allow", "deny", "batch_denied", "another call in the same batch was denied"},
		{"drop_db", "allow", "deny", "not_granted", `tool "notion__drop_db" is not granted to role "trial"`},
		{"get_pages", "allow", "deny", "batch_denied", "another call in the same batch was denied"},
		{"delete_page", "allow", "deny", "batch_denied", "calls that need approval cannot be sent in a batch"},
		{"get_pages", "allow", "allow", "allowed", ""},
		{"get_pages", "allow", "allow", "allowed", ""},
		{"get_pages", "deny", "deny", "batch_denied", "another call in the same batch was denied"},
		{"", "deny", "", "invalid_name", `tool name "get_pages" has no server prefix; expected server__tool`},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	counts, _ := e.shadow.Counts(context.Background(), e.now, e.now)
	if diff := cmp.Diff([]shadow.Count{{Role: "trial", Day: "2026-11-25", N: 5, Calls: 7}}, counts); diff != "" {
		t.Errorf("shadow counts (-want +got):\n%s", diff)
	}

	rep := replay.Replay(slices.Values(e.audit.All()), e.set, nil)
	if diff := cmp.Diff(map[replay.Key]*replay.Counts{
		{Role: "trial", Tool: "notion__get_pages"}:   {Unchanged: 5},
		{Role: "trial", Tool: "notion__drop_db"}:     {Unchanged: 1},
		{Role: "trial", Tool: "notion__delete_page"}: {Unchanged: 1},
	}, rep.Counts); diff != "" {
		t.Errorf("replay against the same policy (-want +got):\n%s", diff)
	}
	enforced, err := policy.Compile([]policy.File{
		{Name: "reader.yaml", Data: []byte(testPolicy)},
		{Name: "trial.yaml", Data: []byte(strings.Replace(shadowPolicy, "mode: shadow", "mode: enforce", 1))},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rep = replay.Replay(slices.Values(e.audit.All()), enforced, nil)
	if diff := cmp.Diff(map[replay.Key]*replay.Counts{
		{Role: "trial", Tool: "notion__get_pages"}:   {AllowToDeny: 2, Unchanged: 3},
		{Role: "trial", Tool: "notion__drop_db"}:     {AllowToDeny: 1},
		{Role: "trial", Tool: "notion__delete_page"}: {AllowToDeny: 1},
	}, rep.Counts); diff != "" {
		t.Errorf("replay against the role in enforce mode (-want +got):\n%s", diff)
	}
}

// Nothing bounds the messages of a batch below the body size: replay
// gathers the records of a batch of 1,100 calls whole, and finds that the
// policy that decided it decides it the same.
func TestReplayOfALargeBatch(t *testing.T) {
	e := newEnv(t)
	calls := []string{toolCall(0, "notion__drop_db", `{}`)}
	for i := 1; i < 1100; i++ {
		calls = append(calls, toolCall(i, "notion__get_pages", `{"workspace_id":"ws_abc123"}`))
	}
	denied(t, e.check(t, "bot-1", map[string]string{"mcp-protocol-version": "2025-03-26"}, "["+strings.Join(calls, ",")+"]"))
	recs := e.audit.All()
	if len(recs) != 1100 || recs[1099].Code != string(CodeBatchDenied) {
		t.Fatalf("%d audit records, the last %+v", len(recs), recs[len(recs)-1])
	}
	rep := replay.Replay(slices.Values(recs), e.set, nil)
	if diff := cmp.Diff(map[replay.Key]*replay.Counts{
		{Role: "reader", Tool: "notion__drop_db"}:   {Unchanged: 1},
		{Role: "reader", Tool: "notion__get_pages"}: {Unchanged: 1099},
	}, rep.Counts); diff != "" {
		t.Errorf("replay against the same policy (-want +got):\n%s", diff)
	}
	if len(rep.Changes) != 0 || rep.Replayed != 1100 {
		t.Errorf("%d replayed, %d changes; want 1100, none", rep.Replayed, len(rep.Changes))
	}
}

func TestNonPostMethods(t *testing.T) {
	e := newEnv(t)
	auth := map[string]string{"authorization": "Bearer " + e.tokens["bot-1"]}
	resp, err := e.client.Check(context.Background(), envoyRequest("GET", auth, ""))
	if err != nil {
		t.Fatal(err)
	}
	okHeaders(t, resp)
	resp, _ = e.client.Check(context.Background(), envoyRequest("PUT", auth, "{}"))
	if d := denied(t, resp); d.status != 405 {
		t.Errorf("PUT: status %d", d.status)
	}
	resp, _ = e.client.Check(context.Background(), envoyRequest("GET", nil, ""))
	if d := denied(t, resp); d.status != 401 {
		t.Errorf("GET without a token: status %d", d.status)
	}
}

func TestFailClosed(t *testing.T) {
	body := toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`)
	tests := []struct {
		name   string
		opt    envOption
		agent  string
		status int
		code   Code
	}{
		{"panic", func(d *Deps, _ *Options) { d.Policies = panickingPolicies{} }, "bot-1", 503, CodeInternalError},
		{"no policy loaded", func(d *Deps, _ *Options) { d.Policies = staticPolicies{} }, "bot-1", 200, "no_policy"},
		{"role not in policy", nil, "bot-3", 200, "unknown_role"},
		{"token store error", func(d *Deps, _ *Options) { d.Tokens = failingAuth{} }, "bot-1", 503, CodeTokenStoreError},
		{"rate limiter error", func(d *Deps, _ *Options) { d.Limiter = failingLimiter{} }, "bot-1", 503, CodeRateLimiterError},
		{"rate limiter refusing no spend", func(d *Deps, _ *Options) { d.Limiter = unnamedRefusal{} }, "bot-1", 503, CodeRateLimiterError},
		{"audit failure", func(d *Deps, _ *Options) { d.Audit = &audittest.Recorder{Err: audit.ErrUnavailable} }, "bot-1", 503, CodeAuditUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.opt)
			// The rate-limited grant exercises the limiter.
			b := body
			if tt.code == CodeRateLimiterError {
				b = toolCall(1, "notion__search", `{"query":"q"}`)
			}
			d := denied(t, e.check(t, tt.agent, nil, b))
			r := rpcErr(t, d.body)
			if d.status != tt.status || r.Error.Data.Code != tt.code {
				t.Errorf("got %d %s; want %d %s", d.status, d.body, tt.status, tt.code)
			}
			if tt.status == 503 && d.headers["retry-after"] != "1" {
				t.Errorf("503 without retry-after: %v", d.headers)
			}
		})
	}
}

// A dependency that stalls (Redis paused) fails the Check closed in time
// for its answer, 503 and -32003 with a decision id, to reach the agent
// before the Check's deadline, Envoy's authz_timeout: past it, Envoy
// gives up and answers a bare 403 of its own.
func TestStalledDependencyFailsClosedBeforeTheDeadline(t *testing.T) {
	tests := []struct {
		name string
		// use makes client the env's dependency, and returns the
		// secret of bot-1's token.
		use  func(t *testing.T, client *redis.Client) (envOption, func(e *env) string)
		body string
		code Code
	}{
		{"rate limiter", func(_ *testing.T, client *redis.Client) (envOption, func(*env) string) {
			return func(d *Deps, _ *Options) { d.Limiter = ratelimit.NewRedis(client, nil) },
				func(e *env) string { return e.tokens["bot-1"] }
		}, toolCall(1, "notion__search", `{"query":"q"}`), CodeRateLimiterError},
		{"token store", func(t *testing.T, client *redis.Client) (envOption, func(*env) string) {
			store := tokens.NewRedisStore(client, nil)
			return func(d *Deps, o *Options) {
					d.Tokens = tokens.NewAuthenticator(store, &tokens.AuthOptions{Now: o.Now, CacheTTL: -1})
				},
				func(e *env) string {
					secret, _, err := tokens.Issue(context.Background(), store, "bot-1", "reader", time.Hour, e.now)
					if err != nil {
						t.Fatal(err)
					}
					return secret
				}
		}, toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123"}`), CodeTokenStoreError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			// As the gateway dials Redis: a command ends at its context's
			// deadline.
			client := redis.NewClient(&redis.Options{Addr: srv.Addr, DisableIdentity: true, ContextTimeoutEnabled: true})
			t.Cleanup(func() { client.Close() })
			opt, secret := tt.use(t, client)
			e := newEnv(t, opt)
			h := map[string]string{"mcp-protocol-version": "2025-06-18", "authorization": "Bearer " + secret(e)}
			if _, err := e.client.Check(context.Background(), envoyRequest("POST", h, tt.body)); err != nil { // scripts loaded, the pool warm
				t.Fatal(err)
			}
			if err := client.ClientPause(context.Background(), 5*time.Second).Err(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second) // Envoy's authz_timeout
			defer cancel()
			resp, err := e.client.Check(ctx, envoyRequest("POST", h, tt.body))
			if err != nil {
				t.Fatalf("Check with Redis stalled: %v; Envoy would answer a 403 of its own", err)
			}
			d := denied(t, resp)
			if r := rpcErr(t, d.body); d.status != 503 || r.Error.Code != RPCUnavailable || r.Error.Data.Code != tt.code || r.Error.Data.DecisionID == "" {
				t.Errorf("Check with Redis stalled: %d %s, want 503 %s", d.status, d.body, tt.code)
			}
			if rec := e.audit.Last(t); rec.Code != string(tt.code) {
				t.Errorf("recorded %+v, want code %s", rec, tt.code)
			}
		})
	}
}

func TestRedactionAndNoSecretLeaks(t *testing.T) {
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewJSONHandler(lockedWriter{&logMu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := newEnv(t, func(_ *Deps, o *Options) { o.Logger = logger })
	const secret = "s3cr3t-7f3a9b2c"
	body := toolCall(1, "notion__get_pages", `{"workspace_id":"ws_abc123","password":"`+secret+`"}`)
	resp := e.check(t, "bot-1", map[string]string{"x-api-key": secret, "cookie": "session=" + secret}, body)
	okHeaders(t, resp)
	deniedResp := e.check(t, "bot-1", map[string]string{"x-api-key": secret}, toolCall(2, "notion__get_pages", `{"workspace_id":"ws_other","password":"`+secret+`"}`))
	searchResp := e.check(t, "bot-1", nil, toolCall(3, "notion__search", `{"query":"`+secret+`"}`))
	// A secret presented as the bearer token, and one in a body that fails
	// to parse, must not be echoed either.
	tokenResp := e.check(t, "", map[string]string{"authorization": "Bearer amg_" + secret}, body)
	badResp := e.check(t, "bot-1", nil, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x__y","arguments":{"password":"`+secret+`","password":1}}}`)
	// And a dependency failure is logged without the request's content.
	failing := newEnv(t, func(d *Deps, o *Options) { o.Logger = logger; d.Limiter = failingLimiter{} })
	failResp := failing.check(t, "bot-1", map[string]string{"x-api-key": secret}, toolCall(4, "notion__search", `{"query":"`+secret+`"}`))
	if logs.Len() == 0 {
		t.Fatal("nothing was logged; the log check below would prove nothing")
	}
	logMu.Lock()
	if strings.Contains(logs.String(), secret) {
		t.Errorf("logs carry the secret:\n%s", logs.String())
	}
	logMu.Unlock()
	for _, rec := range failing.audit.All() {
		if b, _ := json.Marshal(rec); strings.Contains(string(b), secret) {
			t.Errorf("audit record carries the secret: %s", b)
		}
	}
	for _, r := range []*authv3.CheckResponse{resp, deniedResp, searchResp, tokenResp, badResp, failResp} {
		if b, _ := json.Marshal(r); strings.Contains(string(b), secret) {
			t.Errorf("response carries the secret: %s", b)
		}
	}
	recs := e.audit.All()
	for _, rec := range recs {
		b, _ := json.Marshal(rec)
		if strings.Contains(string(b), secret) {
			t.Errorf("audit record carries the secret: %s", b)
		}
	}
	if args := string(recs[0].Args); !strings.Contains(args, `"password":"hmac-sha256:`) || !strings.Contains(args, `"workspace_id":"ws_abc123"`) {
		t.Errorf("redacted args = %s", args)
	}
}

func TestNewRequiresDependencies(t *testing.T) {
	_, err := New(Deps{}, nil)
	if err == nil || !strings.Contains(err.Error(), "Audit") || !strings.Contains(err.Error(), "Tokens") {
		t.Errorf("err = %v", err)
	}
}

func TestResourceAndPromptDecisions(t *testing.T) {
	e := newEnv(t)
	okHeaders(t, e.check(t, "bot-1", nil, `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"amg:notion:notion://ws_abc123/page-1"}}`))
	if rec := e.audit.Last(t); rec.Server != "notion" || rec.Tool != "notion://ws_abc123/page-1" || rec.Code != "allowed" {
		t.Errorf("audit record = %+v", rec)
	}
	okHeaders(t, e.check(t, "bot-1", nil, `{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"notion__summarize","arguments":{}}}`))
	d := denied(t, e.check(t, "bot-1", nil, `{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"notion__other"}}`))
	if r := rpcErr(t, d.body); r.Error.Data.Code != "not_granted" {
		t.Errorf("ungranted prompt: %s", d.body)
	}
}

func TestCompletionDecisions(t *testing.T) {
	e := newEnv(t)
	complete := func(ref string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":` + ref + `,"argument":{"name":"a","value":"x"}}}`
	}
	okHeaders(t, e.check(t, "bot-1", nil, complete(`{"type":"ref/prompt","name":"notion__summarize"}`)))
	okHeaders(t, e.check(t, "bot-1", nil, complete(`{"type":"ref/resource","uri":"amg:notion:notion://ws_abc123/{page}"}`)))
	// From protocol 2026-07-28 on, the Mcp-Name header names what a tool
	// call, prompt or read is of; a completion has none, as the go-sdk's
	// client sends it.
	okHeaders(t, e.check(t, "bot-1", map[string]string{"mcp-protocol-version": "2026-07-28", "mcp-method": "completion/complete"},
		complete(`{"type":"ref/prompt","name":"notion__summarize"}`)))
	for ref, want := range map[string]string{
		`{"type":"ref/prompt","name":"notion__other"}`:                 `prompt "other" on server "notion" is not granted to role "reader"`,
		`{"type":"ref/resource","uri":"amg:notion:notion://ws_b/{p}"}`: `resource "notion://ws_b/{p}" on server "notion" is not granted to role "reader"`,
		`{"type":"ref/prompt","name":"../x"}`:                          "",
	} {
		d := denied(t, e.check(t, "bot-1", nil, complete(ref)))
		if r := rpcErr(t, d.body); want != "" && r.Error.Message != want {
			t.Errorf("%s: %s", ref, d.body)
		}
	}
}

// A shadow role completing a prompt or resource it is not granted is a
// would-be denial like any other: allowed, audited as one, and counted.
func TestCompletionShadowMode(t *testing.T) {
	e := newEnv(t)
	complete := func(ref string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":` + ref + `,"argument":{"name":"a","value":"x"}}}`
	}
	tests := []struct {
		name, agent, ref string
		// The audit record's.
		verdict, shadowVerdict string
		code                   Code
		reason                 string
	}{
		{"shadow role, ungranted prompt", "bot-2", `{"type":"ref/prompt","name":"notion__secret_prompt"}`,
			"allow", "deny", "not_granted", `prompt "secret_prompt" on server "notion" is not granted to role "trial"`},
		{"shadow role, ungranted resource", "bot-2", `{"type":"ref/resource","uri":"amg:notion:notion://ws_b/{p}"}`,
			"allow", "deny", "not_granted", `resource "notion://ws_b/{p}" on server "notion" is not granted to role "trial"`},
		{"shadow role, granted prompt", "bot-2", `{"type":"ref/prompt","name":"notion__summarize"}`,
			"allow", "allow", "allowed", ""},
		{"enforce role, ungranted prompt", "bot-1", `{"type":"ref/prompt","name":"notion__secret_prompt"}`,
			"deny", "", "not_granted", `prompt "secret_prompt" on server "notion" is not granted to role "reader"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.check(t, tt.agent, nil, complete(tt.ref))
			if tt.verdict == "allow" {
				if h, _ := okHeaders(t, resp); h[HeaderVerdict] != "allow" {
					t.Errorf("verdict header %q", h[HeaderVerdict])
				}
			} else if r := rpcErr(t, denied(t, resp).body); r.Error.Data.Code != tt.code || r.Error.Message != tt.reason {
				t.Errorf("denial %+v", r)
			}
			rec := e.audit.Last(t)
			if rec.Verdict != tt.verdict || rec.ShadowVerdict != tt.shadowVerdict || rec.Code != string(tt.code) || rec.Reason != tt.reason ||
				rec.Method != "completion/complete" || rec.Server != "notion" {
				t.Errorf("audit record = %+v", rec)
			}
		})
	}
	counts, _ := e.shadow.Counts(context.Background(), e.now, e.now)
	if diff := cmp.Diff([]shadow.Count{{Role: "trial", Day: "2026-11-25", N: 2, Calls: 3}}, counts); diff != "" {
		t.Errorf("shadow counts (-want +got):\n%s", diff)
	}
}

// A progress token is a string or an integer that a float64 holds
// exactly: anything else is denied as a malformed request, whatever the
// method, before it reaches a broker that matches progress by token.
func TestProgressToken(t *testing.T) {
	e := newEnv(t)
	call := func(meta string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"},"_meta":{` + meta + `}}}`
	}
	const (
		notStringOrInteger = "progressToken must be a string or an integer at offset %d (params._meta.progressToken)"
		notInteger         = "progressToken must be an integer, without fraction or exponent at offset %d (params._meta.progressToken)"
		outOfRange         = "progressToken must be an integer between -(2^53-1) and 2^53-1 at offset %d (params._meta.progressToken)"
	)
	tests := []struct {
		name    string
		body    string
		rpcCode int    // 0 for allowed
		message string // with %d for the offset of the token, if any
	}{
		{"string", call(`"progressToken":"tok-1"`), 0, ""},
		{"integer", call(`"progressToken":42`), 0, ""},
		{"negative integer", call(`"progressToken":-7`), 0, ""},
		{"largest exact integer", call(`"progressToken":9007199254740991`), 0, ""},
		{"integer past 2^53", call(`"progressToken":9007199254740992`), -32602, outOfRange},
		{"huge integer", call(`"progressToken":123456789012345678901234567890`), -32602, outOfRange},
		{"object", call(`"progressToken":{"k":1}`), -32602, notStringOrInteger},
		{"array", call(`"progressToken":[1]`), -32602, notStringOrInteger},
		{"bool", call(`"progressToken":true`), -32602, notStringOrInteger},
		{"null", call(`"progressToken":null`), -32602, notStringOrInteger},
		{"fraction", call(`"progressToken":1.5`), -32602, notInteger},
		{"integral float", call(`"progressToken":1.0`), -32602, notInteger},
		{"exponent", call(`"progressToken":1e3`), -32602, notInteger},
		{"object on tools/list", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":{}}}}`, -32602, notStringOrInteger},
		{"array on a notification", `{"jsonrpc":"2.0","method":"notifications/initialized","params":{"_meta":{"progressToken":[]}}}`, -32602, notStringOrInteger},
		{"case variant of the key", call(`"ProgressToken":{"k":1}`), -32600,
			`key "ProgressToken" is a case variant of the field "progressToken" at offset 133 (params._meta)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.check(t, "bot-1", nil, tt.body)
			rec := e.audit.Last(t)
			if tt.rpcCode == 0 {
				okHeaders(t, resp)
				if rec.Verdict != "allow" || rec.Code != "allowed" {
					t.Errorf("audit record = %+v", rec)
				}
				return
			}
			message := tt.message
			if strings.Contains(message, "%d") {
				message = fmt.Sprintf(message, strings.Index(tt.body, `"progressToken":`)+len(`"progressToken":`))
			}
			d := denied(t, resp)
			r := rpcErr(t, d.body)
			if d.status != 400 || r.Error.Code != tt.rpcCode || r.Error.Data.Code != CodeMalformedRequest || r.Error.Message != message {
				t.Errorf("got %d %s\nwant message %s", d.status, d.body, message)
			}
			if rec.Verdict != "deny" || rec.Code != string(CodeMalformedRequest) || rec.Reason != message {
				t.Errorf("audit record = %+v", rec)
			}
		})
	}
}

// A body as large as the configured limit reaches authz over gRPC, which
// by itself refuses messages over 4 MiB with an error Envoy turns into a
// plain 403 and no one records: authz decides on it, as in standalone
// mode.
func TestLargeBodiesReachAuthzOverGRPC(t *testing.T) {
	const limit = 6 << 20
	e := newEnv(t, func(_ *Deps, o *Options) { o.MaxBodyBytes = limit })
	body := toolCall(1, "notion__delete_page", `{"page_id":"`+strings.Repeat("p", 5<<20)+`"}`)
	resp := e.check(t, "bot-1", nil, body)
	if d := resp.GetDeniedResponse(); d == nil || d.GetStatus().GetCode() != 200 || !strings.Contains(d.GetBody(), `"code":"constraint_failed"`) {
		t.Errorf("a %d-byte body: %v, want the policy's denial", len(body), resp)
	}
}

// Completing an argument counts against the limits getting the prompt,
// or reading the resource, would: it goes to the upstream as they do.
func TestCompletionIsRateLimited(t *testing.T) {
	const role = `
role: reader
rate_limits:
  - { requests: 1, per: 1h }
servers:
  notion:
    prompts:
      - name: summarize
    resources: ["notion://ws_abc123/*"]
`
	// The prompt's own limit, which the role's does not hide.
	const promptLimit = `
role: reader
servers:
  notion:
    prompts:
      - name: summarize
        rate_limits: [{ requests: 1, per: 1h }]
`
	complete := func(ref string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":` + ref + `,"argument":{"name":"a","value":"x"}}}`
	}
	getPrompt := `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"notion__summarize"}}`
	for _, tc := range []struct{ name, policy, first, then string }{
		{"prompt", role, getPrompt, complete(`{"type":"ref/prompt","name":"notion__summarize"}`)},
		{"resource", role, `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"amg:notion:notion://ws_abc123/p1"}}`,
			complete(`{"type":"ref/resource","uri":"amg:notion:notion://ws_abc123/{id}"}`)},
		{"prompt's own limit", promptLimit, getPrompt, complete(`{"type":"ref/prompt","name":"notion__summarize"}`)},
		{"prompt's own limit, completing first", promptLimit, complete(`{"type":"ref/prompt","name":"notion__summarize"}`), getPrompt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(tc.policy)}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, func(d *Deps, _ *Options) { d.Policies = staticPolicies{set} })
			okHeaders(t, e.check(t, "bot-1", nil, tc.first))
			d := denied(t, e.check(t, "bot-1", nil, tc.then))
			if r := rpcErr(t, d.body); r.Error.Data.Code != CodeRateLimited {
				t.Errorf("a call past the limit: %s", d.body)
			}
		})
	}
}

// A Check's dependencies get at least half of the time the Check was
// given, so that a short authz_timeout (config takes any) still lets the
// token store answer, and a longer one keeps at least
// minDependencyMargin for the audit record and the answer.
func TestDependencyContextLeavesShortDeadlinesTime(t *testing.T) {
	for _, timeout := range []time.Duration{10 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, time.Second, 10 * time.Second} {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		deadline, _ := ctx.Deadline()
		dep, depCancel := dependencyContext(ctx)
		depDeadline, ok := dep.Deadline()
		depCancel()
		cancel()
		if !ok {
			t.Fatalf("%v: the dependencies' context has no deadline", timeout)
		}
		margin := deadline.Sub(depDeadline)
		if margin > timeout/2 {
			t.Errorf("%v: the dependencies must end %v before the deadline, more than half of the time", timeout, margin)
		}
		if timeout >= 2*minDependencyMargin+50*time.Millisecond && margin < minDependencyMargin {
			t.Errorf("%v: the dependencies end only %v before the deadline, under %v", timeout, margin, minDependencyMargin)
		}
	}
}

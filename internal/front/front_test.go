package front

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/audit/audittest"
	"github.com/amgateway/amg/internal/hostguard"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/tokens"
)

const role = `
role: reader
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { eq: ws_abc123 }
`

type fixed struct{ set *policy.Set }

func (f fixed) Current() *policy.Set { return f.set }

// received is what the broker behind the front got.
type received struct {
	header http.Header
	body   string
}

type harness struct {
	url    string
	token  string
	signer *authz.Signer
	got    chan received
	audit  *audittest.Recorder
}

func newHarness(t *testing.T, check func(authz.Deps) Checker, opts *Options) *harness {
	t.Helper()
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(role)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := tokens.NewMemoryStore()
	token, _, err := tokens.Issue(context.Background(), store, "bot-1", "reader", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := authz.NewSigner([]byte(strings.Repeat("k", 32)), nil)
	h := &harness{token: token, signer: signer, got: make(chan received, 1), audit: &audittest.Recorder{}}
	deps := authz.Deps{
		Tokens: tokens.NewAuthenticator(store, nil), Policies: fixed{set}, Limiter: ratelimit.NewMemory(nil),
		Audit: h.audit, Redactor: audit.NewRedactor([]byte("r")), Signer: signer,
	}
	broker := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		select {
		case h.got <- received{header: r.Header.Clone(), body: string(b)}:
		default: // the test has not taken the last one: it fails on that, not by hanging
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	})
	srv := httptest.NewServer(New(check(deps), broker, opts))
	t.Cleanup(srv.Close)
	h.url = srv.URL + "/mcp"
	return h
}

func inProcess(t *testing.T) func(authz.Deps) Checker {
	return func(d authz.Deps) Checker {
		s, err := authz.New(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// overGRPC serves authz over gRPC on loopback and checks through a client,
// as Envoy does.
func overGRPC(t *testing.T) func(authz.Deps) Checker {
	return func(d authz.Deps) Checker {
		s, err := authz.New(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer(authz.GRPCServerOptions(0)...)
		authv3.RegisterAuthorizationServer(gs, s)
		go gs.Serve(lis)
		t.Cleanup(gs.Stop)
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return grpcChecker{authv3.NewAuthorizationClient(conn)}
	}
}

type grpcChecker struct{ c authv3.AuthorizationClient }

func (g grpcChecker) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return g.c.Check(ctx, req)
}

// modes are the two ways a Front reaches authz; every scenario runs in both.
func modes(t *testing.T) map[string]func(authz.Deps) Checker {
	return map[string]func(authz.Deps) Checker{"in-process": inProcess(t), "gRPC": overGRPC(t)}
}

func (h *harness) post(t *testing.T, body string, hdrs map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", h.url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
	req.Header.Set("Authorization", "Bearer "+h.token)
	for k, v := range hdrs {
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

const allowed = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`

func TestAllowedRequestReachesBrokerWithDecision(t *testing.T) {
	for mode, check := range modes(t) {
		t.Run(mode, func(t *testing.T) { testAllowed(t, newHarness(t, check, nil)) })
	}
}

func testAllowed(t *testing.T, h *harness) {
	resp := h.post(t, allowed, map[string]string{"X-Amg-Role": "admin", "X-Amg-Decision": "forged", "X-Amg-Other": "x"})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := <-h.got
	if got.body != allowed {
		t.Errorf("broker got body %q, want the agent's bytes", got.body)
	}
	if got.header.Get("Authorization") != "" || got.header.Get("X-Amg-Other") != "" {
		t.Errorf("agent headers reached the broker: %v", got.header)
	}
	if got.header.Get("X-Amg-Role") != "reader" || got.header.Get("X-Amg-Agent") != "bot-1" || got.header.Get("X-Amg-Verdict") != "allow" {
		t.Errorf("decision headers: %v", got.header)
	}
	d, err := h.signer.Verify(got.header.Get("X-Amg-Decision"), []byte(got.body))
	if err != nil || d.Agent != "bot-1" {
		t.Errorf("decision token: %+v %v", d, err)
	}
}

// Only what authz sets may reach the broker: the front removes the
// agent's x-amg-* headers itself, before the check, as Envoy's route
// configuration does, and does not count on the OK answer to remove them.
func TestAgentAMGHeadersReachNeitherAuthzNorTheBroker(t *testing.T) {
	ok := &authv3.CheckResponse{Status: &status.Status{Code: int32(code.Code_OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}
	checked := make(chan *authv3.CheckRequest, 1)
	h := newHarness(t, func(authz.Deps) Checker {
		return checkFunc(func(req *authv3.CheckRequest) *authv3.CheckResponse { checked <- req; return ok })
	}, nil)
	resp := h.post(t, allowed, map[string]string{"X-Amg-Role": "admin", "X-Amg-Decision": "forged", "X-Amg-Other": "x"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want the request let through", resp.StatusCode)
	}
	for k := range (<-checked).GetAttributes().GetRequest().GetHttp().GetHeaders() {
		if strings.HasPrefix(k, amgHeaderPrefix) {
			t.Errorf("the agent's header %s reached authz", k)
		}
	}
	for k := range (<-h.got).header {
		if strings.HasPrefix(strings.ToLower(k), amgHeaderPrefix) {
			t.Errorf("the agent's header %s reached the broker", k)
		}
	}
}

// checkFunc is an authorization service that answers with what the
// function returns.
type checkFunc func(*authv3.CheckRequest) *authv3.CheckResponse

func (f checkFunc) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return f(req), nil
}

func TestDenialsComeFromAuthz(t *testing.T) {
	for mode, check := range modes(t) {
		t.Run(mode, func(t *testing.T) { testDenials(t, newHarness(t, check, &Options{MaxBodyBytes: 4096})) })
	}
}

func testDenials(t *testing.T, h *harness) {
	tests := []struct {
		name   string
		body   string
		hdrs   map[string]string
		status int
		code   string
	}{
		{"policy deny", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__drop_db","arguments":{}}}`, nil, 200, "not_granted"},
		{"no token", allowed, map[string]string{"Authorization": ""}, 401, "unauthenticated"},
		{"malformed", `{"jsonrpc":`, nil, 400, "malformed_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := h.post(t, tt.body, tt.hdrs)
			var r struct {
				Error struct {
					Data struct{ Code string }
				}
			}
			b, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(b, &r); err != nil || resp.StatusCode != tt.status || r.Error.Data.Code != tt.code {
				t.Errorf("got %d %s; want %d with code %s", resp.StatusCode, b, tt.status, tt.code)
			}
			if resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("content type %q", resp.Header.Get("Content-Type"))
			}
			select {
			case <-h.got:
				t.Error("a denied request reached the broker")
			default:
			}
		})
	}
	if resp := h.post(t, allowed, map[string]string{"Authorization": ""}); resp.Header.Get("Www-Authenticate") == "" {
		t.Error("401 without a challenge")
	}
	// A body over the limit is checked cut and marked partial, as Envoy
	// does, and authz refuses it readably, whatever the agent claims of
	// it; the agent cannot mark a whole body partial to any effect but
	// its refusal.
	big := `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"` + strings.Repeat("x", 5000) + `"}}`
	for _, tc := range []struct {
		name string
		body string
		hdrs map[string]string
	}{
		{"oversized body", big, nil},
		{"oversized body said whole", big, map[string]string{"X-Envoy-Auth-Partial-Body": "false"}},
		{"whole body said partial", allowed, map[string]string{"X-Envoy-Auth-Partial-Body": "true"}},
	} {
		resp := h.post(t, tc.body, tc.hdrs)
		b, _ := io.ReadAll(resp.Body)
		var r struct {
			Error struct {
				Code int
				Data struct{ Code string }
			}
		}
		wantStatus := http.StatusRequestEntityTooLarge
		if tc.body == allowed {
			wantStatus = http.StatusOK // the flag is Envoy's: the agent's is overwritten
		}
		if resp.StatusCode != wantStatus {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, b, wantStatus)
			continue
		}
		if wantStatus == http.StatusRequestEntityTooLarge && (json.Unmarshal(b, &r) != nil || r.Error.Code != -32600 || r.Error.Data.Code != "body_too_large") {
			t.Errorf("%s: %s, want a JSON-RPC error with code body_too_large", tc.name, b)
		}
	}
}

// A body of exactly the limit is whole: it is checked, not marked
// partial, and reaches the broker byte for byte.
func TestBodyOfExactlyTheLimitIsWhole(t *testing.T) {
	for mode, check := range modes(t) {
		t.Run(mode, func(t *testing.T) {
			h := newHarness(t, check, &Options{MaxBodyBytes: len(allowed)})
			if resp := h.post(t, allowed, nil); resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("a body of exactly the limit: %d %s, want it let through", resp.StatusCode, b)
			}
			if got := <-h.got; got.body != allowed {
				t.Errorf("the broker got %q, want the agent's bytes", got.body)
			}
		})
	}
}

type failing struct{}

func (failing) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return nil, errors.New("connection refused")
}

// answer is an authorization service that gives every check one answer.
type answer struct{ resp *authv3.CheckResponse }

func (a answer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return a.resp, nil
}

func TestFailsClosed(t *testing.T) {
	for name, c := range map[string]Checker{"unreachable": failing{}, "no answer": answer{}} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, func(authz.Deps) Checker { return c }, nil)
			if resp := h.post(t, allowed, nil); resp.StatusCode != http.StatusForbidden {
				t.Errorf("status %d, want 403", resp.StatusCode)
			}
			select {
			case <-h.got:
				t.Error("request reached the broker")
			default:
			}
		})
	}
}

// Envoy's ext_authz filter decides on the answer's gRPC status alone: OK
// lets the request through whatever else the answer holds, anything else
// denies it with the denied response, or a bare 403 without one. The
// front agrees with it on every answer authz gives, and is stricter on
// the others: it lets through only an OK status with an OK response.
// authz never answers with a status that disagrees with its verdict (its
// tests hold it to that).
func TestDecidesOnTheGRPCStatusAndResponse(t *testing.T) {
	denial := &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests}, Body: "slow down"}}
	okStatus, deniedStatus := &status.Status{Code: int32(code.Code_OK)}, &status.Status{Code: int32(code.Code_PERMISSION_DENIED)}
	tests := []struct {
		name   string
		resp   *authv3.CheckResponse
		status int // 0: the request reaches the broker
		body   string
	}{
		{"OK with an OK response", &authv3.CheckResponse{Status: okStatus, HttpResponse: &authv3.CheckResponse_OkResponse{
			OkResponse: &authv3.OkHttpResponse{}}}, 0, ""},
		{"no status, so OK, with an OK response", &authv3.CheckResponse{HttpResponse: &authv3.CheckResponse_OkResponse{
			OkResponse: &authv3.OkHttpResponse{}}}, 0, ""},
		// Envoy would let these through; the front refuses an answer whose
		// parts disagree.
		{"OK with a denied response", &authv3.CheckResponse{Status: okStatus, HttpResponse: denial}, http.StatusTooManyRequests, "slow down"},
		{"OK and nothing else", &authv3.CheckResponse{Status: okStatus}, http.StatusForbidden, ""},
		{"no status and nothing else", &authv3.CheckResponse{}, http.StatusForbidden, ""},
		{"denied with a denied response", &authv3.CheckResponse{Status: deniedStatus, HttpResponse: denial}, http.StatusTooManyRequests, "slow down"},
		{"denied without a denied response", &authv3.CheckResponse{Status: deniedStatus}, http.StatusForbidden, ""},
		{"denied with an OK response", &authv3.CheckResponse{Status: deniedStatus, HttpResponse: &authv3.CheckResponse_OkResponse{
			OkResponse: &authv3.OkHttpResponse{}}}, http.StatusForbidden, ""},
		{"denied response without an HTTP status", &authv3.CheckResponse{Status: &status.Status{Code: int32(code.Code_UNAVAILABLE)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: "down"}}}, http.StatusForbidden, "down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(authz.Deps) Checker { return answer{tt.resp} }, nil)
			resp := h.post(t, allowed, nil)
			b, _ := io.ReadAll(resp.Body)
			var reached bool
			select {
			case <-h.got:
				reached = true
			default:
			}
			if tt.status == 0 {
				if resp.StatusCode != http.StatusOK || !reached {
					t.Errorf("got %d %q, reached the broker %v; want the request let through", resp.StatusCode, b, reached)
				}
				return
			}
			if reached || resp.StatusCode != tt.status || (tt.body != "" && string(b) != tt.body) {
				t.Errorf("got %d %q, reached the broker %v; want %d %q", resp.StatusCode, b, reached, tt.status, tt.body)
			}
		})
	}
}

func TestCheckRequestShape(t *testing.T) {
	r := httptest.NewRequest("POST", "http://127.0.0.1:8080/mcp?x=1", strings.NewReader("{}"))
	r.Header.Add("X-Multi", "a")
	r.Header.Add("X-Multi", "b")
	r.Header.Set("Authorization", "Bearer t")
	req := CheckRequest(r, []byte("{}"))
	h := req.GetAttributes().GetRequest().GetHttp()
	want := map[string]string{":method": "POST", ":path": "/mcp?x=1", ":authority": "127.0.0.1:8080", ":scheme": "http",
		"x-multi": "a,b", "authorization": "Bearer t"}
	for k, v := range want {
		if h.GetHeaders()[k] != v {
			t.Errorf("header %s = %q, want %q", k, h.GetHeaders()[k], v)
		}
	}
	if string(h.GetRawBody()) != "{}" || h.GetSize() != 2 || h.GetMethod() != "POST" || h.GetPath() != "/mcp?x=1" {
		t.Errorf("request = %v", h)
	}
	if req.GetAttributes().GetSource().GetAddress().GetSocketAddress().GetAddress() == "" {
		t.Error("no source address")
	}
}

// On loopback the front refuses other Host names itself, and records
// it; the Origin is authz's to check, so an origin the gateway allows is
// allowed on loopback too, and any other is refused by authz, readably.
func TestHostAndOriginChecks(t *testing.T) {
	refused := &audittest.Recorder{}
	withOrigins := func(d authz.Deps) Checker {
		s, err := authz.New(d, &authz.Options{AllowedOrigins: []string{"https://app.example.com"}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	h := newHarness(t, withOrigins, &Options{Hosts: hostguard.New(hostguard.Loopback...), Audit: refused})
	tests := []struct {
		host, origin string
		status       int
		code         string // the refusal's audit code
	}{
		{"", "", 200, ""},
		{"localhost:8080", "http://localhost:3000", 200, ""},
		{"[::1]:8080", "", 200, ""},
		{"127.0.0.1:8080", "https://app.example.com", 200, ""},
		{"evil.example.com", "", 403, CodeHostNotAllowed},
		{"evil.example.com", "http://localhost:3000", 403, CodeHostNotAllowed},
		{"127.0.0.1:8080", "http://evil.example.com", 403, "origin_not_allowed"},
		{"127.0.0.1:8080", "null", 403, "origin_not_allowed"},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("POST", h.url, strings.NewReader(allowed))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
		req.Header.Set("Authorization", "Bearer "+h.token)
		if tt.host != "" {
			req.Host = tt.host
		}
		if tt.origin != "" {
			req.Header.Set("Origin", tt.origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("Host %q Origin %q: status %d, want %d", tt.host, tt.origin, resp.StatusCode, tt.status)
		}
		switch tt.code {
		case "":
			if resp.StatusCode == 200 {
				<-h.got
			}
		case CodeHostNotAllowed:
			rec := refused.Last(t)
			want := audit.Record{Time: rec.Time, DecisionID: rec.DecisionID, Verdict: "deny", Code: CodeHostNotAllowed,
				Reason: fmt.Sprintf("Host %q is not allowed", tt.host), Method: "HTTP POST"}
			if diff := cmp.Diff(want, rec); diff != "" || len(rec.DecisionID) != 32 || rec.Time.IsZero() {
				t.Errorf("Host %q: audit record (-want +got):\n%s", tt.host, diff)
			}
			if !strings.Contains(string(b), rec.DecisionID) {
				t.Errorf("Host %q: answer %q does not name the decision %s", tt.host, b, rec.DecisionID)
			}
		default:
			var r struct {
				Error struct {
					Data struct{ Code string }
				}
			}
			if err := json.Unmarshal(b, &r); err != nil || r.Error.Data.Code != tt.code || h.audit.Last(t).Code != tt.code {
				t.Errorf("Origin %q: answer %s, want a JSON-RPC error with code %s, audited", tt.origin, b, tt.code)
			}
		}
	}
	if n := len(refused.All()); n != 2 {
		t.Errorf("the front recorded %d refusals, want 2", n)
	}
}

// Without an auditor, or with one that fails, a request for another host
// is refused all the same.
func TestHostRefusedWhateverTheAudit(t *testing.T) {
	for name, a := range map[string]Auditor{"none": nil, "failing": failingAudit{}} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, inProcess(t), &Options{Hosts: hostguard.New(hostguard.Loopback...), Audit: a})
			req, _ := http.NewRequest("POST", h.url, strings.NewReader(allowed))
			req.Host = "evil.example.com"
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("status %d, want 403", resp.StatusCode)
			}
		})
	}
}

type failingAudit struct{}

func (failingAudit) Log(*audit.Record) error { return audit.ErrUnavailable }

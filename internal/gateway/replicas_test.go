package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/admin"
	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/broker"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/demo"
	"github.com/amgateway/amg/internal/front"
	"github.com/amgateway/amg/internal/redistest"
)

const replicaRole = `
role: ops
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: {}
          limit: { lte: 100, optional: true }
        rate_limits:
          - { requests: 4, per: 1h }
      - name: delete_page
        constraints:
          page_id: {}
approvals:
  - match: "delete*"
    require: human
`

// replica starts one gateway sharing Redis at addr, with its own data
// directory and listeners, as a second pod would.
func replica(t *testing.T, policyDir, redisAddr string) *Gateway {
	t.Helper()
	cfg := loopbackConfig(t, policyDir)
	cfg.Redis.Address = redisAddr
	return serveForTest(t, cfg, nil)
}

func agentOn(t *testing.T, gw *Gateway, token string) *mcp.ClientSession {
	t.Helper()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: "http://" + gw.MCPAddr() + config.MCPPath, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

func getPages(cs *mcp.ClientSession) error {
	_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","limit":1}`)})
	return err
}

// Two replicas sharing one Redis behave as one gateway: a token issued on
// one works on the other, a rate limit holds across both, a call parked on
// one is approved through the other's admin API, a token revoked on one is
// refused by the other, and without Redis both refuse until it is back.
func TestReplicasShareStateThroughRedis(t *testing.T) {
	rs := redistest.Start(t)
	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "ops.yaml"), []byte(replicaRole), 0o600); err != nil {
		t.Fatal(err)
	}
	a, b := replica(t, policyDir, rs.Addr), replica(t, policyDir, rs.Addr)
	token, tok, err := a.IssueToken(context.Background(), "bot", "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	onA, onB := agentOn(t, a, token), agentOn(t, b, token)

	t.Run("one rate limit for both", func(t *testing.T) {
		allowed := 0
		for i := range 8 {
			cs := onA
			if i%2 == 1 {
				cs = onB
			}
			if err := getPages(cs); err == nil {
				allowed++
			} else if !strings.Contains(err.Error(), "rate") {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		if allowed != 4 {
			t.Errorf("%d calls allowed across both replicas, want the limit's 4 in total", allowed)
		}
	})

	t.Run("parked on A, approved through B", func(t *testing.T) {
		result := make(chan error, 1)
		go func() {
			res, err := onA.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"pg_launch01a"}`)})
			if err == nil && res.IsError {
				err = errString("tool error")
			}
			result <- err
		}()
		var id string
		for deadline := time.Now().Add(20 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if list, err := b.approvals.List(context.Background(), approval.Pending); err == nil && len(list) == 1 {
				id = list[0].ID
			}
		}
		if id == "" {
			t.Fatal("B never saw the call parked on A")
		}
		adminToken, err := admin.LoadOrCreateToken(filepath.Join(b.cfg.DataDir, AdminTokenFile))
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("POST", "http://"+b.AdminAddr()+"/api/v1/approvals/"+id+"/approve", strings.NewReader(`{"by":"alice"}`))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("approve through B: %v %v", resp, err)
		}
		resp.Body.Close()
		select {
		case err := <-result:
			if err != nil {
				t.Errorf("the call parked on A: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the call parked on A was not released by B's approval")
		}
	})

	t.Run("one session, requests alternating between replicas", func(t *testing.T) {
		// After initialize (on A), every request goes to the other
		// replica than the one before, as after a scale-out or a
		// replica's death; the agent keeps its session throughout.
		alt := &alternating{hosts: []string{a.MCPAddr(), b.MCPAddr()}, token: token}
		cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
			&mcp.StreamableClientTransport{Endpoint: "http://" + a.MCPAddr() + config.MCPPath, HTTPClient: &http.Client{Transport: alt}},
			&mcp.ClientSessionOptions{ProtocolVersion: sessionVersion})
		if err != nil {
			t.Fatal(err)
		}
		defer cs.Close()
		for i := range 4 {
			res, err := cs.ListTools(context.Background(), nil)
			if err != nil || len(res.Tools) != 2 {
				t.Fatalf("tools/list %d, on replica %d: %v %v", i, alt.last(), err, res)
			}
		}
		if len(alt.sessions()) != 1 {
			t.Errorf("the agent used sessions %v, want one", alt.sessions())
		}
		if seen := alt.seen(); seen[a.MCPAddr()] < 2 || seen[b.MCPAddr()] < 2 {
			t.Errorf("requests per replica: %v, want both used", seen)
		}
		// The agent ends the session: no replica may revive it.
		sid := alt.sessions()[0]
		cs.Close()
		waitFor(t, "the ended session's record to go", func() bool {
			_, ok, err := broker.NewRedisSessions(rs.Client()).Load(context.Background(), sid)
			return err == nil && !ok
		})
	})

	t.Run("decided by A's authz, served by B's broker", func(t *testing.T) {
		body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e","version":"1"}}}`
		resp, err := a.Authz().Check(context.Background(), authztest.EnvoyRequest("POST", map[string]string{
			"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"}, body))
		if err != nil || resp.GetOkResponse() == nil {
			t.Fatalf("Check on A: %v %v", resp, err)
		}
		req := httptest.NewRequest("POST", "/mcp", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		for _, h := range resp.GetOkResponse().GetHeaders() {
			req.Header.Set(h.GetHeader().GetKey(), h.GetHeader().GetValue())
		}
		rec := httptest.NewRecorder()
		b.Broker().ServeHTTP(rec, req)
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"serverInfo"`) {
			t.Errorf("B's broker on A's decision: %d %s", rec.Code, rec.Body.String())
		}
	})

	t.Run("revoked on A, refused by B", func(t *testing.T) {
		if err := a.auth.Revoke(context.Background(), tok.ID); err != nil {
			t.Fatal(err)
		}
		// A fresh agent on B: its first request needs the token. B may
		// have read the token from Redis less than its cache's lifetime
		// ago, and serve it until then (tokens.AuthOptions.CacheTTL).
		waitFor(t, "B to refuse the token revoked on A", func() bool {
			cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
				&mcp.StreamableClientTransport{Endpoint: "http://" + b.MCPAddr() + config.MCPPath, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
			if err == nil {
				cs.Close()
			}
			return err != nil
		})
	})

	t.Run("without Redis both refuse, and recover", func(t *testing.T) {
		fresh, _, err := a.IssueToken(context.Background(), "bot2", "ops", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		rs.Stop()
		for _, gw := range []*Gateway{a, b} {
			if _, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
				&mcp.StreamableClientTransport{Endpoint: "http://" + gw.MCPAddr() + config.MCPPath, HTTPClient: &http.Client{Transport: bearer{fresh}}}, nil); err == nil {
				t.Error("a replica admitted an agent while Redis was down")
			}
		}
		// The test's Redis keeps nothing across a restart: the token is
		// issued again, as an operator restoring Redis would find it gone.
		rs.Restart()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			fresh, _, err = a.IssueToken(context.Background(), "bot3", "ops", time.Hour)
			if err == nil {
				_, err = mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
					&mcp.StreamableClientTransport{Endpoint: "http://" + b.MCPAddr() + config.MCPPath, HTTPClient: &http.Client{Transport: bearer{fresh}}}, nil)
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no recovery after Redis came back: %v", err)
			}
		}
	})
}

type errString string

func (e errString) Error() string { return string(e) }

// The approval webhook hears of each new pending approval, without the
// request body, which may hold secrets. Its URL's secret path comes from a
// secret reference.
func TestApprovalWebhook(t *testing.T) {
	got := make(chan string, 4)
	const hookPath = "/services/T0SECRET/B0SECRET"
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r.URL.Path + " " + string(b)
	}))
	t.Cleanup(hook.Close)
	t.Setenv("AMG_TEST_WEBHOOK_PATH", hookPath)
	webhook, err := config.ParseTemplate(hook.URL + "${env:AMG_TEST_WEBHOOK_PATH}")
	if err != nil {
		t.Fatal(err)
	}
	ups := map[string]*config.Upstream{"notion": {Name: "notion", Builtin: "demo", ConnectTimeout: 5 * time.Second, CallTimeout: 30 * time.Second}}
	mcpURL, token := startGateway(t, ups, "ops", replicaRole, func(c *config.Config) {
		c.ApprovalWebhook, c.ApprovalTTL = webhook, 500*time.Millisecond
	})
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: mcpURL, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	secret := "pg_planted7731secret"
	_, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"` + secret + `"}`)})
	if err == nil || !strings.Contains(err.Error(), "approval expired") {
		t.Errorf("unanswered call: %v", err)
	}
	select {
	case body := <-got:
		if !strings.HasPrefix(body, hookPath+" ") || !strings.Contains(body, `"event":"approval.pending"`) ||
			!strings.Contains(body, `"tool":"delete_page"`) || strings.Contains(body, secret) {
			t.Errorf("webhook request = %s", body)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the webhook was not called")
	}
}

// alternating sends each request after the first to the other replica than
// the one before, with the agent's token, and notes the session ids used.
type alternating struct {
	hosts []string
	token string

	mu    sync.Mutex
	n     int
	byHop map[string]int
	sids  map[string]bool
}

func (a *alternating) RoundTrip(r *http.Request) (*http.Response, error) {
	a.mu.Lock()
	host := a.hosts[a.n%len(a.hosts)]
	a.n++
	if a.byHop == nil {
		a.byHop, a.sids = map[string]int{}, map[string]bool{}
	}
	a.byHop[host]++
	if sid := r.Header.Get("Mcp-Session-Id"); sid != "" {
		a.sids[sid] = true
	}
	a.mu.Unlock()
	r = r.Clone(r.Context())
	r.URL.Host, r.Host = host, host
	r.Header.Set("Authorization", "Bearer "+a.token)
	return http.DefaultTransport.RoundTrip(r)
}

func (a *alternating) last() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return (a.n - 1) % len(a.hosts)
}

func (a *alternating) seen() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.byHop)
}

func (a *alternating) sessions() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Collect(maps.Keys(a.sids))
}

// A gateway reaches a Redis that serves TLS only, asks for a client
// certificate and knows only an ACL user, as managed Redis services do;
// one that cannot (another CA, no certificate, no TLS, a wrong password)
// refuses to start, naming why.
func TestRedisOverTLSAsAnACLUser(t *testing.T) {
	rs := redistest.StartWith(t, redistest.Options{TLS: true, RequireClientCert: true, User: "amg", Password: "s3cret-pw"})
	other := redistest.StartWith(t, redistest.Options{TLS: true})
	password, err := config.ParseTemplate("${file:" + writeFile(t, "s3cret-pw") + "}")
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := config.ParseTemplate("${file:" + writeFile(t, "guess") + "}")
	if err != nil {
		t.Fatal(err)
	}
	good := config.Redis{Address: rs.Addr, Username: "amg", Password: password,
		TLS: &config.TLS{CAFile: rs.TLS.CA, CertFile: rs.TLS.ClientCert, KeyFile: rs.TLS.ClientKey}}
	withRedis := func(r config.Redis) *config.Config {
		cfg := loopbackConfig(t, "../../policies")
		cfg.Redis = r
		return cfg
	}

	gw := serveForTest(t, withRedis(good), nil)
	token, _, err := gw.IssueToken(context.Background(), "tls-bot", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := gw.Authz().Check(context.Background(), authztest.EnvoyRequest("POST", map[string]string{
		"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"},
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("a call with a token kept in Redis over TLS: %v, %v", resp, err)
	}

	for _, tc := range []struct {
		name string
		edit func(*config.Redis)
		want string
	}{
		{"another CA", func(r *config.Redis) { r.TLS.CAFile = other.TLS.CA }, "certificate signed by unknown authority"},
		{"no client certificate", func(r *config.Redis) { r.TLS.CertFile, r.TLS.KeyFile = "", "" }, "redis at " + rs.Addr},
		{"no TLS", func(r *config.Redis) { r.TLS = nil }, "redis at " + rs.Addr},
		{"wrong password", func(r *config.Redis) { r.Password = wrong }, "WRONGPASS"},
	} {
		r := good
		tlsCopy := *good.TLS
		r.TLS = &tlsCopy
		tc.edit(&r)
		gw, err := New(withRedis(r), nil)
		if err == nil {
			gw.Close()
			t.Errorf("%s: the gateway started", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("%s: %v; want it to say %q, and never the password", tc.name, err, tc.want)
		}
	}
}

// redis.db is the database a gateway keeps its shared state in, so that
// it can share a Redis with others: nothing of it lands in database 0.
func TestRedisDatabaseIsTheConfiguredOne(t *testing.T) {
	srv := redistest.Start(t)
	cfg := loopbackConfig(t, "../../policies")
	cfg.Redis.Address, cfg.Redis.DB = srv.Addr, 3
	gw := serveForTest(t, cfg, nil)
	if _, _, err := gw.IssueToken(context.Background(), "db-bot", "notion_read", time.Hour); err != nil {
		t.Fatal(err)
	}
	opts := *srv.Client().Options()
	opts.DB = 3
	db3 := redis.NewClient(&opts)
	defer db3.Close()
	if n, err := db3.DBSize(context.Background()).Result(); err != nil || n == 0 {
		t.Errorf("database 3 holds %d keys (%v), want the gateway's", n, err)
	}
	if keys, err := srv.Client().Keys(context.Background(), "*").Result(); err != nil || len(keys) != 0 {
		t.Errorf("database 0 holds %v (%v), want nothing", keys, err)
	}
}

// A replica whose Redis stalls answers a Check before its deadline,
// Envoy's authz_timeout, failing it closed with a decision id of its own:
// the commands it sends end with the Check's time for them, not at the
// client's read timeout, which is longer.
func TestStalledRedisFailsAChecksClosedInTime(t *testing.T) {
	rs := redistest.Start(t)
	gw := replica(t, "../../policies", rs.Addr)
	token, _, err := gw.IssueToken(context.Background(), "bot", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	check := func(ctx context.Context) (*authv3.CheckResponse, error) {
		return gw.Authz().Check(ctx, authztest.EnvoyRequest("POST", map[string]string{
			"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"},
			`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`))
	}
	if resp, err := check(context.Background()); err != nil || resp.GetOkResponse() == nil { // spends the role's limit, in Redis
		t.Fatalf("a call before Redis stalled: %v, %v", resp, err)
	}
	if err := rs.Client().ClientPause(context.Background(), 3*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // Envoy's authz_timeout
	defer cancel()
	resp, err := check(ctx)
	if ctx.Err() != nil {
		t.Fatalf("a call with Redis stalled answered after the Check's deadline (denied: %s, %v): Envoy would answer a 403 of its own", resp.GetDeniedResponse().GetBody(), err)
	}
	if d := resp.GetDeniedResponse(); err != nil || resp.GetStatus().GetCode() != int32(code.Code_UNAVAILABLE) || d.GetStatus().GetCode() != 503 || !strings.Contains(d.GetBody(), `"code":-32003`) {
		t.Errorf("a call with Redis stalled: %v, %v; want 503 and -32003", resp, err)
	}
}

// writeFile writes content to a new file and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// With redis.decision_key and redis.audit_key, replicas take their shared
// keys from the secret source, and Redis holds neither: whoever reads
// Redis cannot sign a decision. A key of at least 32 bytes is taken; one
// too short to sign with is refused at start.
func TestSharedKeysFromTheSecretSource(t *testing.T) {
	srv := redistest.Start(t)
	t.Setenv("AMG_TEST_DECISION_KEY", strings.Repeat("d", config.MinSharedKeyLen))
	t.Setenv("AMG_TEST_AUDIT_KEY", strings.Repeat("a", 40))
	ref := func(s string) config.Template {
		tmpl, err := config.ParseTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		return tmpl
	}
	cfg := loopbackConfig(t, "../../policies")
	cfg.Redis.Address = srv.Addr
	cfg.Redis.DecisionKey, cfg.Redis.AuditKey = ref("${env:AMG_TEST_DECISION_KEY}"), ref("${env:AMG_TEST_AUDIT_KEY}")
	gw := serveForTest(t, cfg, nil)
	token, _, err := gw.IssueToken(context.Background(), "keys", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := getPages(agentOn(t, gw, token)); err != nil {
		t.Errorf("a call signed with the configured key: %v", err)
	}
	keys, err := srv.Client().Keys(context.Background(), "amg:{keys}:*").Result()
	if err != nil || len(keys) != 0 {
		t.Errorf("keys in Redis: %v %v, want none", keys, err)
	}

	t.Setenv("AMG_TEST_DECISION_KEY", "short")
	short := loopbackConfig(t, "../../policies")
	short.Redis = cfg.Redis
	if _, err := New(short, nil); err == nil || err.Error() != "redis.decision_key: the key is 5 bytes, want at least 32" {
		t.Errorf("a short key: %v", err)
	}
}

// A shared key Redis holds that is not 32 bytes stops the start: one
// planted short would key the audit HMACs, and an empty one would panic
// the redactor.
func TestSharedKeyInRedisOfTheWrongLength(t *testing.T) {
	srv := redistest.Start(t)
	for _, v := range []string{"x", "", strings.Repeat("a", 33)} {
		if err := srv.Client().Set(context.Background(), "amg:{keys}:audit", v, 0).Err(); err != nil {
			t.Fatal(err)
		}
		cfg := loopbackConfig(t, "../../policies")
		cfg.Redis.Address = srv.Addr
		want := fmt.Sprintf("audit key in redis (amg:{keys}:audit) is %d bytes, want 32", len(v))
		gw, err := New(cfg, &Options{Builtins: Builtins{"demo": demo.NewServer(nil).MCP()}})
		if err == nil {
			gw.Close()
		}
		if err == nil || err.Error() != want {
			t.Errorf("an audit key of %d bytes in Redis: %v, want %q", len(v), err, want)
		}
	}
}

// A shared key given by a secret ref is read at start. Rotated in the
// secret source while replica A runs, it is taken by replica B, started
// after: B's broker refuses A's decisions. A says so on /readyz until
// restarted, naming the ref and never the key, nor the text around the
// ref, which is part of the key.
func TestSharedKeyRotatedInTheSecretSource(t *testing.T) {
	srv := redistest.Start(t)
	const literal = "KEYPART-"
	oldKey, newKey := strings.Repeat("d", 40), strings.Repeat("e", 40)
	decisionFile, auditFile := writeFile(t, oldKey), writeFile(t, strings.Repeat("a", 40))
	ref := func(s string) config.Template {
		tmpl, err := config.ParseTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		return tmpl
	}
	brokerReplica := func() *Gateway {
		cfg := loopbackConfig(t, "../../policies")
		cfg.BrokerListen = "127.0.0.1:0"
		cfg.Redis.Address = srv.Addr
		cfg.Redis.DecisionKey, cfg.Redis.AuditKey = ref(literal+"${file:"+decisionFile+"}"), ref("${file:"+auditFile+"}")
		return serveForTest(t, cfg, &Options{SharedKeyCheck: 10 * time.Millisecond})
	}
	a := brokerReplica()
	// Replaced whole, as an orchestrator updates a mounted secret.
	rotated := decisionFile + ".new"
	if err := os.WriteFile(rotated, []byte(newKey), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(rotated, decisionFile); err != nil {
		t.Fatal(err)
	}
	b := brokerReplica()
	token, _, err := a.IssueToken(context.Background(), "bot", "notion_editor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := callAcross(t, a, b, token); err == nil {
		t.Error("B's broker honoured a decision signed with the key A read before the rotation")
	}

	code, body := readyzBecomes(t, a, http.StatusServiceUnavailable)
	want := "the decision key (redis.decision_key, file:" + decisionFile + ") was rotated in the secret source: restart to take the rotated decision key"
	if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Errorf("/readyz of a replica whose decision key was rotated = %d %q, want 503 saying %q", code, body, want)
	}
	if strings.Contains(body, literal) || strings.Contains(body, oldKey) || strings.Contains(body, newKey) {
		t.Errorf("/readyz reveals a key: %q", body)
	}
	if code, body := getReadyz(t, b); code != http.StatusOK {
		t.Errorf("/readyz of the replica started with the rotated key = %d %q, want 200", code, body)
	}

	// Rotated back, the key is A's again, and A is ready.
	if err := os.WriteFile(rotated, []byte(oldKey), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(rotated, decisionFile); err != nil {
		t.Fatal(err)
	}
	if code, body := readyzBecomes(t, a, http.StatusOK); code != http.StatusOK {
		t.Errorf("/readyz of a replica whose decision key was rotated back = %d %q, want 200", code, body)
	}
}

// When Redis loses its data (a restart without persistence, as the
// compose file runs it), the running replicas put their shared keys back,
// so that a replica starting later takes them rather than make its own:
// Envoy sends one replica's authz decision to another's broker, which
// must honour it. A replica that finds another key in Redis (one made
// before it could put its own back) says so on /readyz until restarted.
func TestSharedKeysOutliveRedisLosingItsData(t *testing.T) {
	rs := redistest.Start(t)
	brokerReplica := func() *Gateway {
		cfg := loopbackConfig(t, "../../policies")
		cfg.BrokerListen = "127.0.0.1:0"
		cfg.Redis.Address = rs.Addr
		return serveForTest(t, cfg, &Options{SharedKeyCheck: 10 * time.Millisecond})
	}
	ctx := context.Background()
	a := brokerReplica()
	rs.Restart()
	for _, k := range []string{"amg:{keys}:decision", "amg:{keys}:audit"} {
		for deadline := time.Now().Add(10 * time.Second); rs.Client().Exists(ctx, k).Val() == 0; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the running replica did not put %s back in Redis", k)
			}
		}
	}
	b := brokerReplica()
	token, _, err := a.IssueToken(ctx, "bot", "notion_editor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := callAcross(t, a, b, token); err != nil {
		t.Errorf("A's authz and B's broker, B started after Redis lost its data: %v", err)
	}
	for _, gw := range []*Gateway{a, b} {
		if code, body := getReadyz(t, gw); code != http.StatusOK {
			t.Errorf("/readyz = %d %q, want 200", code, body)
		}
	}

	// Redis loses its data again, and before A and B put their keys back
	// a replica starting makes a decision key of its own.
	rs.Restart()
	rs.Client().Set(ctx, "amg:{keys}:decision", strings.Repeat("n", 32), 0)
	for _, gw := range []*Gateway{a, b} {
		code, body := readyzBecomes(t, gw, http.StatusServiceUnavailable)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "decision key in redis (amg:{keys}:decision) is not the one this replica uses") {
			t.Errorf("/readyz of a replica whose decision key is not Redis's = %d %q, want 503 saying so", code, body)
		}
	}

	// The replica with its own key is stopped, and its key taken out of
	// Redis: A and B put theirs back, and are ready again.
	rs.Client().Del(ctx, "amg:{keys}:decision")
	for _, gw := range []*Gateway{a, b} {
		if code, body := readyzBecomes(t, gw, http.StatusOK); code != http.StatusOK {
			t.Errorf("/readyz of a replica whose decision key is Redis's again = %d %q, want 200", code, body)
		}
	}
}

// readyzBecomes is gw's /readyz answer once its status is code, or after
// 10 s (a failsafe: the shared keys are checked every few ms).
func readyzBecomes(t *testing.T, gw *Gateway, code int) (int, string) {
	t.Helper()
	got, body := getReadyz(t, gw)
	for deadline := time.Now().Add(10 * time.Second); got != code && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		got, body = getReadyz(t, gw)
	}
	return got, body
}

// callAcross connects an agent with token through an Envoy that sends
// Check to authzOn's authz and the call to brokerOn's broker.
func callAcross(t *testing.T, authzOn, brokerOn *Gateway, token string) error {
	t.Helper()
	conn, err := grpc.NewClient(authzOn.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	target, _ := url.Parse("http://" + brokerOn.BrokerAddr())
	toBroker := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }, FlushInterval: -1}
	envoy := httptest.NewServer(front.New(grpcCheck{authv3.NewAuthorizationClient(conn)}, toBroker, nil))
	defer envoy.Close()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: envoy.URL + config.MCPPath, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
	if err != nil {
		return err
	}
	defer cs.Close()
	return getPages(cs)
}

// getReadyz is gw's /readyz answer.
func getReadyz(t *testing.T, gw *Gateway) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + gw.AdminAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// The pending-approvals gauge, read on every GET /metrics (which needs no
// token), counts the pending approvals in Redis without reading them: not
// their request bodies, which may be up to max_body_bytes each.
func TestMetricsCountPendingApprovalsWithoutReadingThem(t *testing.T) {
	rs := redistest.Start(t)
	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "ops.yaml"), []byte(replicaRole), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := replica(t, policyDir, rs.Addr)
	store := approval.NewRedis(rs.Client(), nil)
	const n, size = 8, 256 << 10
	body := []byte(`{"pad":"` + strings.Repeat("x", size) + `"}`)
	for i := range n {
		a, err := approval.New(fmt.Sprint("d", i), "bot", "ops", "notion", "delete_page", body, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Create(context.Background(), a); err != nil {
			t.Fatal(err)
		}
	}
	sent := func() int64 {
		t.Helper()
		info, err := rs.Client().Info(context.Background(), "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_net_output_bytes:"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
		t.Fatal("INFO stats without total_net_output_bytes")
		return 0
	}
	before := sent()
	resp, err := http.Get("http://" + gw.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^amg_approvals_pending\{[^}]*\} ` + fmt.Sprint(n) + `$`).Match(m) {
		t.Errorf("metrics lack amg_approvals_pending %d:\n%s", n, grepMetric(m, "amg_approvals_pending"))
	}
	if got := sent() - before; got >= size {
		t.Errorf("a /metrics scrape made Redis send %d bytes, as much as a request body", got)
	}
}

func grepMetric(m []byte, name string) string {
	var out []string
	for line := range strings.SplitSeq(string(m), "\n") {
		if strings.HasPrefix(line, name) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

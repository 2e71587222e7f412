package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/demo"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/internal/secrets/vaulttest"
	"github.com/amgateway/amg/internal/syncbuf"
)

// amg serve reads an upstream's credential from a real Vault and sends it
// upstream; the agent never sees it, and a Vault that cannot be reached at
// start stops the start.
func TestServeWithVault(t *testing.T) {
	v := vaulttest.Start(t)
	secret := "upstream-token-5f3a9c"
	v.PutKV(t, "amg/notion", map[string]any{"token": secret})

	srv := demo.NewServer(nil).MCP()
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	var mu syncbuf.Buffer
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+secret {
			mu.Write([]byte("refused " + r.Header.Get("Authorization") + "\n"))
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		mcpHandler.ServeHTTP(w, r)
	}))
	defer upstream.Close()

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "amg.yaml")
	writeCfg := func(vaultAddr string) {
		// A short cache, so that the test sees Vault go away.
		writeFile(t, cfgPath, "vault:\n  address: "+vaultAddr+"\n  token: \"${env:AMG_TEST_VAULT_TOKEN}\"\n  cache_ttl: 10ms\n"+
			"upstreams:\n  notion:\n    url: "+upstream.URL+"/mcp\n    headers:\n      Authorization: \"Bearer ${vault:kv/data/amg/notion#token}\"\n")
	}
	writeCfg(v.Addr)
	t.Setenv("AMG_TEST_VAULT_TOKEN", v.RootToken)

	// An OTLP receiver: what the gateway exports must not hold the secret.
	var exported syncbuf.Buffer
	otlp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		exported.Write([]byte(r.URL.Path + "\n"))
		exported.Write(b)
	}))
	defer otlp.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"serve", "--config", cfgPath, "--dev", "--policy-dir", "../../policies", "--data-dir", filepath.Join(dir, "data"),
			"--listen", "127.0.0.1:0", "--authz-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, &stdout, &stderr)
	}()
	var m []string
	for deadline := time.Now().Add(30 * time.Second); m == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		m = regexp.MustCompile(`msg=serving mcp=(\S+) ext_authz=\S+ admin=(\S+)`).FindStringSubmatch(stderr.String())
		select {
		case code := <-exited:
			t.Fatalf("serve exited with %d:\n%s", code, stderr.String())
		default:
		}
	}
	if m == nil {
		t.Fatalf("serve did not start:\n%s", stderr.String())
	}
	token := strings.TrimSpace(stdout.String())
	// Agent sessions, each with upstream sessions of its own: an agent of
	// protocol 2026-07-28 has none, and its token's upstream sessions
	// outlive its connections.
	session := &mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: m[1], HTTPClient: &http.Client{Transport: bearer{token}}}, session)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","limit":1}`)})
	if err != nil || res.IsError {
		t.Fatalf("call with the credential from Vault: %v %+v\nupstream: %s", err, res, mu.String())
	}
	out, _ := json.Marshal(res)
	if strings.Contains(string(out), secret) || strings.Contains(stderr.String(), secret) {
		t.Error("the upstream credential reached the agent or the log")
	}
	cs.Close()

	// Vault going away: a new agent session needs a new upstream
	// connection, which fails closed with an error naming the server.
	v.Stop()
	cs2, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: m[1], HTTPClient: &http.Client{Transport: bearer{token}}}, session)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs2.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","limit":1}`)})
	if err == nil || !strings.Contains(err.Error(), `upstream "notion"`) || strings.Contains(err.Error(), secret) {
		t.Errorf("call with Vault down: %v; want an error naming the upstream", err)
	}
	cs2.Close()
	metrics, err := http.Get(m[2] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(metrics.Body)
	metrics.Body.Close()
	cancel()
	<-exited
	auditLog, _ := os.ReadFile(filepath.Join(dir, "data", audit.FileName))
	if !strings.Contains(string(auditLog), `"code":"upstream_error"`) {
		t.Error("the failed upstream call is not in the audit log")
	}
	if !strings.Contains(exported.String(), "/v1/traces") {
		t.Error("no traces were exported over OTLP")
	}
	for what, text := range map[string]string{"audit log": string(auditLog), "metrics": string(body), "log": stderr.String(),
		"OTLP export": exported.String()} {
		if strings.Contains(text, secret) {
			t.Errorf("the credential from Vault is in the %s", what)
		}
	}

	// Vault down at start: amg does not start, and says why.
	code, _, errOut := runCLI(t, "serve", "--config", cfgPath, "--data-dir", filepath.Join(dir, "data"),
		"--listen", "127.0.0.1:0", "--authz-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	if code == 0 || !strings.Contains(errOut, "vault") || strings.Contains(errOut, secret) {
		t.Errorf("serve with Vault down: exit %d\n%s", code, errOut)
	}
}

// Vault's own credential is read from its reference again when Vault
// needs it: a token file rewritten while amg runs, as a Vault Agent sink
// is, replaces a token that cannot be renewed before it ends.
func TestServeRereadsVaultToken(t *testing.T) {
	v := vaulttest.Start(t)
	v.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	v.Policy(t, "amg-read", "kv/data/amg/*")
	dir := t.TempDir()
	tokenPath := filepath.Join(dir, "vault-token")
	writeFile(t, tokenPath, v.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, TTL: 3 * time.Second, NotRenewable: true}))
	cfgPath := filepath.Join(dir, "amg.yaml")
	writeFile(t, cfgPath, "vault:\n  address: "+v.Addr+"\n  token: \"${file:"+tokenPath+"}\"\n  cache_ttl: 10ms\n")
	base := secrets.NewDefault(nil)
	cfg, err := config.Load(cfgPath, &config.Options{Secrets: base, SkipVault: true})
	if err != nil {
		t.Fatal(err)
	}
	src, closeSecrets, err := secretSource(context.Background(), cfg, base, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer closeSecrets()

	next := filepath.Join(dir, "vault-token.new")
	writeFile(t, next, v.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, TTL: time.Hour}))
	if err := os.Rename(next, tokenPath); err != nil {
		t.Fatal(err)
	}
	ref, err := secrets.ParseRef("vault:kv/data/amg/notion#token")
	if err != nil {
		t.Fatal(err)
	}
	// Past the first token's end, reads go on.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		s, err := src.Resolve(context.Background(), ref)
		if err != nil || s.Reveal() != "v1" {
			t.Fatalf("Resolve %s before the end: %q, %v", time.Until(end).Round(time.Millisecond), s.Reveal(), err)
		}
	}
}

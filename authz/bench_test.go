package authz

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/tokens"
)

// BenchPolicy is a grant with twelve constraints of mixed matchers, one
// regular expression and one nested path: what BenchmarkCheck and the load
// harness decide on.
const BenchPolicy = `
role: bench
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { in: ["ws_abc123", "ws_def456", "ws_ghi789"] }
          limit:        { lte: 100, gte: 1 }
          offset:       { gte: 0 }
          cursor:       { max_len: 256 }
          sort:         { in: ["created", "updated", "title"] }
          direction:    { ne: "random" }
          include_body: { eq: false }
          page_id:      { pattern: "pg_[A-Za-z0-9]{8,32}" }
          path:         { prefix: "/teams/", suffix: ".md" }
          filter.owner: { eq: "alice" }
          tags:         { max_len: 10, min_len: 1 }
          query:        { min_len: 1, max_len: 4000 }
`

// BenchBody returns a tools/call body of about 2 KB for BenchPolicy.
func BenchBody() string {
	query := strings.Repeat("disk full on the primary database replica; ", 38)[:1630]
	return `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{` +
		`"workspace_id":"ws_abc123","limit":50,"offset":0,"cursor":"c_0123456789abcdef","sort":"updated",` +
		`"direction":"desc","include_body":false,"page_id":"pg_Ab12Cd34Ef56","path":"/teams/platform/runbook.md",` +
		`"filter":{"owner":"alice"},"tags":["ops","oncall"],"query":"` + query + `"}}}`
}

// newBenchServer builds a Server with the real collaborators of standalone
// mode: cached token authentication, the in-memory limiter, the redactor
// and the asynchronous audit logger writing a hash-chained file.
func newBenchServer(b *testing.B) (*Server, string, func()) {
	b.Helper()
	set, err := policy.Compile([]policy.File{{Name: "bench.yaml", Data: []byte(BenchPolicy)}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	store := tokens.NewMemoryStore()
	secret, _, err := tokens.Issue(context.Background(), store, "bench-agent", "bench", 0, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	dev, err := audit.NewFileDevice(filepath.Join(b.TempDir(), "audit.log"), &audit.FileOptions{Sync: audit.SyncNever})
	if err != nil {
		b.Fatal(err)
	}
	logger := audit.NewLogger([]audit.Device{dev}, &audit.Options{QueueSize: 1 << 16})
	signer, _ := NewSigner([]byte(strings.Repeat("k", 32)), nil)
	srv, err := New(Deps{
		Tokens:   tokens.NewAuthenticator(store, nil),
		Policies: staticPolicies{set},
		Limiter:  ratelimit.NewMemory(nil),
		Audit:    logger,
		Redactor: audit.NewRedactor([]byte(strings.Repeat("r", 32))),
		Signer:   signer,
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return srv, secret, func() { logger.Close(context.Background()) }
}

func BenchmarkCheck(b *testing.B) {
	srv, secret, done := newBenchServer(b)
	defer done()
	body := BenchBody()
	req := envoyRequest("POST", map[string]string{"authorization": "Bearer " + secret, "mcp-protocol-version": "2025-06-18"}, body)
	if resp, _ := srv.Check(context.Background(), req); resp.GetOkResponse() == nil {
		b.Fatalf("benchmark request denied: %s", resp.GetDeniedResponse().GetBody())
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		resp, _ := srv.Check(context.Background(), req)
		if resp.GetOkResponse() == nil {
			b.Fatal("denied")
		}
	}
}

var _ authv3.AuthorizationServer = (*Server)(nil)

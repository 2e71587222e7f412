package authz

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/telemetry"
	"github.com/amgateway/amg/internal/tokens"
)

// newBenchServer builds a Server with the real collaborators of standalone
// mode: cached token authentication, the in-memory limiter, the redactor,
// the asynchronous audit logger writing a hash-chained file, and the
// gateway's telemetry (metrics, and trace ids without an exporter).
func newBenchServer(b testing.TB) (*Server, string, func()) {
	b.Helper()
	set, err := policy.Compile([]policy.File{{Name: "bench.yaml", Data: []byte(authztest.BenchPolicy)}}, nil)
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
	tel, err := telemetry.New(context.Background(), &telemetry.Options{ServiceName: "amg"})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Deps{
		Tokens:   tokens.NewAuthenticator(store, nil),
		Policies: staticPolicies{set},
		Limiter:  ratelimit.NewMemory(nil),
		Audit:    logger,
		Redactor: audit.NewRedactor([]byte(strings.Repeat("r", 32))),
		Signer:   signer,
	}, &Options{Telemetry: tel})
	if err != nil {
		b.Fatal(err)
	}
	return srv, secret, func() {
		logger.Close(context.Background())
		tel.Shutdown(context.Background())
	}
}

func BenchmarkCheck(b *testing.B) {
	srv, secret, done := newBenchServer(b)
	defer done()
	body := authztest.BenchBody()
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

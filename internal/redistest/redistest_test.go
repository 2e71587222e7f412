package redistest

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestStartStopRestart(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	c := s.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr

	s.Stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded with the server stopped")
	}
	s.Stop() // a second Stop does nothing

	s.Restart()
	if s.Addr != addr {
		t.Errorf("Addr after Restart = %s, want %s", s.Addr, addr)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	// Persistence is off: a restarted server is empty.
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET after Restart = %v, want redis.Nil", err)
	}
}

func TestServersAreIndependent(t *testing.T) {
	ctx := context.Background()
	a, b := Start(t), Start(t)
	if a.Addr == b.Addr {
		t.Fatalf("both servers on %s", a.Addr)
	}
	if err := a.Client().Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.Client().Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET on the other server = %v, want redis.Nil", err)
	}
}

// A TLS server with an ACL user answers the Client it hands out, and
// refuses a client that speaks plain TCP or is not that user.
func TestTLSAndACL(t *testing.T) {
	ctx := context.Background()
	s := StartWith(t, Options{TLS: true, RequireClientCert: true, User: "amg", Password: "s3cret"})
	if err := s.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("PING over TLS as amg: %v", err)
	}
	plain := redis.NewClient(&redis.Options{Addr: s.Addr, DialerRetries: 1, MaxRetries: -1})
	defer plain.Close()
	if err := plain.Ping(ctx).Err(); err == nil {
		t.Error("PING over plain TCP succeeded")
	}
	c := s.Client()
	anon := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: c.Options().TLSConfig, MaxRetries: -1})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("PING as the default user: %v, want NOAUTH", err)
	}
	for _, f := range []string{s.TLS.CA, s.TLS.ClientCert, s.TLS.ClientKey} {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
}

// A reply the proxy holds back times the command out after the server ran
// it, and go-redis sends it again: a write that is not idempotent counts
// twice.
func TestProxyDelaysAReply(t *testing.T) {
	ctx := context.Background()
	p := Start(t).Proxy()
	c := p.Client()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	p.DelayReply("counter", 2*ProxyReadTimeout)
	if n, err := c.Incr(ctx, "counter").Result(); err != nil || n != 2 {
		t.Errorf("INCR with its reply held back = %d, %v; want 2, run again after the timeout", n, err)
	}
	if n, err := c.Incr(ctx, "counter").Result(); err != nil || n != 3 {
		t.Errorf("the next INCR = %d, %v; want 3, not held back", n, err)
	}
}

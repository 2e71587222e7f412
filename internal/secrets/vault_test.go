package secrets

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/secrets/vaulttest"
	"github.com/amgateway/amg/internal/syncbuf"
	"github.com/amgateway/amg/internal/testclock"
)

// newFakeClock is the cache's clock: tests move it instead of sleeping.
func newFakeClock() *testclock.Clock {
	return testclock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

// logBuffer collects JSON log lines written from several goroutines.
type logBuffer struct{ syncbuf.Buffer }

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func unique(t testing.TB, prefix string) string {
	t.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

func newTestVault(t testing.TB, opts VaultOptions) *Vault {
	t.Helper()
	v, err := NewVault(context.Background(), opts)
	if err != nil {
		t.Fatalf("NewVault: %v", err)
	}
	t.Cleanup(func() { _ = v.Close() })
	return v
}

func mustRef(t testing.TB, s string) Ref {
	t.Helper()
	r, err := ParseRef(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func resolve(t testing.TB, src Source, ref string) string {
	t.Helper()
	s, err := src.Resolve(context.Background(), mustRef(t, ref))
	if err != nil {
		t.Fatalf("Resolve(%s): %v", ref, err)
	}
	return s.Reveal()
}

func TestVaultToken(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	value := unique(t, "notion-")
	srv.PutKV(t, "amg/notion", map[string]any{"token": value, "number": 42})

	// A token limited to the secret, as an operator would issue.
	srv.Policy(t, "amg-read", "kv/data/amg/*")
	token := srv.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, TTL: time.Hour})
	v := newTestVault(t, VaultOptions{Address: srv.Addr, Token: New(token)})
	if got := resolve(t, v, "vault:kv/data/amg/notion#token"); got != value {
		t.Errorf("Resolve = %q, want %q", got, value)
	}
	if got := resolve(t, v, "vault:kv/data/amg/notion#number"); got != "42" {
		t.Errorf("Resolve(number) = %q, want 42", got)
	}
	// A trailing slash in the address is tolerated.
	v2 := newTestVault(t, VaultOptions{Address: srv.Addr + "/", Token: New(srv.RootToken)})
	if got := resolve(t, v2, "vault:kv/data/amg/notion#token"); got != value {
		t.Errorf("Resolve with root token = %q, want %q", got, value)
	}
}

func TestVaultAppRole(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	value := unique(t, "notion-")
	srv.PutKV(t, "amg/notion", map[string]any{"token": value})
	roleID, secretID := srv.SetupAppRole(t, vaulttest.AppRole{Name: "amg", Paths: []string{"kv/data/amg/*"}, TokenTTL: time.Hour})

	clock := newFakeClock()
	v := newTestVault(t, VaultOptions{
		Address: srv.Addr,
		AppRole: &VaultAppRole{RoleID: roleID, SecretID: New(secretID)},
		Now:     clock.Now,
	})
	if got := resolve(t, v, "vault:kv/data/amg/notion#token"); got != value {
		t.Errorf("Resolve = %q, want %q", got, value)
	}

	// A token revoked behind the source's back (or expired while the
	// machine slept) is replaced by a new login at the next read.
	old := v.client.Token()
	if err := srv.Client(t).Auth().Token().RevokeOrphan(old); err != nil {
		t.Fatal(err)
	}
	clock.Advance(DefaultVaultCacheTTL)
	if got := resolve(t, v, "vault:kv/data/amg/notion#token"); got != value {
		t.Errorf("Resolve after revocation = %q, want %q", got, value)
	}
	if v.client.Token() == old {
		t.Error("token not replaced after revocation")
	}

	// Close revokes the token the login made.
	tok := v.client.Token()
	if err := v.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := srv.Client(t).Auth().Token().Lookup(tok); err == nil {
		t.Error("AppRole token still valid after Close")
	}
	if _, err := v.Resolve(context.Background(), mustRef(t, "vault:kv/data/amg/notion#token")); err == nil ||
		err.Error() != "vault:kv/data/amg/notion#token: the vault source is closed" {
		t.Errorf("Resolve after Close: %v", err)
	}

	// A wrong secret ID fails at startup, saying so.
	_, err := NewVault(context.Background(), VaultOptions{
		Address: srv.Addr,
		AppRole: &VaultAppRole{RoleID: roleID, SecretID: New("wrong-" + secretID)},
	})
	if err == nil || !strings.HasPrefix(err.Error(), "vault AppRole login: Vault at "+srv.Addr+" answered HTTP ") ||
		!strings.Contains(err.Error(), "invalid secret id") {
		t.Errorf("NewVault with a wrong secret ID: %v", err)
	}
}

func TestVaultNotFound(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "x", "empty": "", "null": nil, "nested": map[string]any{"a": "b"}})
	srv.PutKV(t, "amg/deleted", map[string]any{"token": "x"})
	srv.DeleteKV(t, "amg/deleted")
	srv.Policy(t, "other", "kv/data/other/*")
	limited := srv.Token(t, vaulttest.TokenOptions{Policies: []string{"other"}, TTL: time.Hour})

	v := newTestVault(t, VaultOptions{Address: srv.Addr, Token: New(srv.RootToken)})
	vl := newTestVault(t, VaultOptions{Address: srv.Addr, Token: New(limited)})
	hint := " (KV version 2 paths have data/ after the mount: kv/data/amg/notion for the secret amg/notion on the mount kv)"
	for _, tc := range []struct {
		name     string
		v        *Vault
		ref      string
		wantErr  string
		notFound bool
	}{
		{name: "missing path", v: v, ref: "vault:kv/data/amg/nope#token",
			wantErr: "vault:kv/data/amg/nope#token does not exist in Vault at " + srv.Addr, notFound: true},
		{name: "missing mount", v: v, ref: "vault:nomount/data/x#token",
			wantErr: "vault:nomount/data/x#token does not exist in Vault at " + srv.Addr, notFound: true},
		{name: "missing field", v: v, ref: "vault:kv/data/amg/notion#password",
			wantErr: `vault:kv/data/amg/notion#password: the secret has no field "password"`, notFound: true},
		{name: "empty field", v: v, ref: "vault:kv/data/amg/notion#empty",
			wantErr: `vault:kv/data/amg/notion#empty: field "empty" is empty`, notFound: true},
		{name: "null field", v: v, ref: "vault:kv/data/amg/notion#null",
			wantErr: `vault:kv/data/amg/notion#null: field "null" is null`, notFound: true},
		{name: "object field", v: v, ref: "vault:kv/data/amg/notion#nested",
			wantErr: `vault:kv/data/amg/notion#nested: field "nested" is an object, not a string`},
		{name: "deleted", v: v, ref: "vault:kv/data/amg/deleted#token",
			wantErr: "vault:kv/data/amg/deleted#token: the latest version of the secret is deleted", notFound: true},
		{name: "no data segment", v: v, ref: "vault:kv/amg/notion#token",
			wantErr: "vault:kv/amg/notion#token does not exist in Vault at " + srv.Addr + hint, notFound: true},
		{name: "metadata path", v: v, ref: "vault:kv/metadata/amg/notion#token",
			wantErr: "vault:kv/metadata/amg/notion#token: not a KV version 2 secret (the response has no data and metadata)" + hint},
		{name: "forbidden", v: vl, ref: "vault:kv/data/amg/notion#token",
			wantErr: "vault:kv/data/amg/notion#token: Vault at " + srv.Addr + " denied reading kv/data/amg/notion (permission denied): the token has expired or been revoked, or its policy does not grant read on that path"},
		{name: "dot dot", v: v, ref: "vault:kv/data/../../sys/x#f",
			wantErr: "vault:kv/data/../../sys/x#f: path has a '.' or '..' segment"},
		{name: "dot", v: v, ref: "vault:kv/data/./amg/notion#token",
			wantErr: "vault:kv/data/./amg/notion#token: path has a '.' or '..' segment"},
		{name: "leading slash", v: v, ref: "vault:/kv/data/x#f",
			wantErr: "vault:/kv/data/x#f: path has an empty segment (a leading, trailing or doubled '/')"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.v.Resolve(context.Background(), mustRef(t, tc.ref))
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("Resolve(%s) error = %v, want %s", tc.ref, err, tc.wantErr)
			}
			if errors.Is(err, ErrNotFound) != tc.notFound {
				t.Errorf("errors.Is(err, ErrNotFound) = %v, want %v", !tc.notFound, tc.notFound)
			}
			if s.Reveal() != "" {
				t.Errorf("Resolve returned a value with an error")
			}
		})
	}

	for _, ref := range []Ref{{"env", "X"}, {"vault", "kv/data/x"}} {
		if _, err := v.Resolve(context.Background(), ref); err == nil {
			t.Errorf("Resolve(%s) succeeded", ref)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := v.Resolve(ctx, mustRef(t, "vault:kv/data/amg/notion#token")); !errors.Is(err, context.Canceled) {
		t.Errorf("Resolve with cancelled context: %v, want context.Canceled", err)
	}
}

func TestVaultRotation(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	clock := newFakeClock()
	ttl := 20 * time.Second
	v := newTestVault(t, VaultOptions{Address: srv.Addr, Token: New(srv.RootToken), CacheTTL: ttl, Now: clock.Now})
	const ref = "vault:kv/data/amg/notion#token"

	if got := resolve(t, v, ref); got != "v1" {
		t.Fatalf("Resolve = %q, want v1", got)
	}
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v2"})
	clock.Advance(ttl - time.Second)
	if got := resolve(t, v, ref); got != "v1" {
		t.Errorf("Resolve within the TTL = %q, want the cached v1", got)
	}
	clock.Advance(time.Second)
	if got := resolve(t, v, ref); got != "v2" {
		t.Errorf("Resolve after the TTL = %q, want the rotated v2", got)
	}
	// The new value is cached afresh.
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v3"})
	clock.Advance(ttl / 2)
	if got := resolve(t, v, ref); got != "v2" {
		t.Errorf("Resolve within the new TTL = %q, want v2", got)
	}
}

// TestVaultSharedRead resolves one reference from 32 goroutines while its
// read is held up, through a proxy that counts the reads reaching Vault:
// they must share one, and the first caller giving up must not fail the
// others.
func TestVaultSharedRead(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	const callers = 32
	var reads atomic.Int32
	first, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	front := inFrontOf(t, srv, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v1/kv/data/amg/notion" {
			switch reads.Add(1) {
			case 1:
				close(first)
			case callers:
				releaseOnce.Do(func() { close(release) })
			}
			<-release
		}
		return false
	})
	defer releaseOnce.Do(func() { close(release) })

	v := newTestVault(t, VaultOptions{Address: front.URL, Token: New(srv.RootToken), Now: newFakeClock().Now})
	ref := mustRef(t, "vault:kv/data/amg/notion#token")

	// The first caller's read is held up, then it gives up.
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := v.Resolve(ctx, ref)
		gaveUp <- err
	}()
	<-first
	errs := make(chan error, callers-1)
	for range callers - 1 {
		go func() {
			s, err := v.Resolve(context.Background(), ref)
			if err == nil && s.Reveal() != "v1" {
				err = fmt.Errorf("resolved %q, want v1", s.Reveal())
			}
			errs <- err
		}()
	}
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) ||
		err.Error() != "vault:kv/data/amg/notion#token: reading from Vault at "+front.URL+": context canceled" {
		t.Errorf("Resolve of the caller that gave up: %v", err)
	}
	// Give the others time to reach Vault if they each read: without a
	// shared read, all of them do and the last releases the reads.
	select {
	case <-release:
	case <-time.After(time.Second):
		releaseOnce.Do(func() { close(release) })
	}
	for range callers - 1 {
		if err := <-errs; err != nil {
			t.Errorf("Resolve: %v", err)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d concurrent resolutions made %d reads of Vault, want 1", callers, n)
	}
}

func TestVaultDown(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	clock := newFakeClock()
	v := newTestVault(t, VaultOptions{Address: srv.Addr, Token: New(srv.RootToken), Now: clock.Now})
	const ref = "vault:kv/data/amg/notion#token"
	if got := resolve(t, v, ref); got != "v1" {
		t.Fatalf("Resolve = %q, want v1", got)
	}
	srv.Stop()

	// Within the TTL the cached value is served: that is what the TTL is.
	if got := resolve(t, v, ref); got != "v1" {
		t.Errorf("Resolve within the TTL = %q, want v1", got)
	}
	// Past it, never.
	clock.Advance(DefaultVaultCacheTTL)
	s, err := v.Resolve(context.Background(), mustRef(t, ref))
	want := ref + ": cannot reach Vault at " + srv.Addr + ": "
	if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Resolve with Vault down: %v, want one line starting %q", err, want)
	}
	if errors.Is(err, ErrNotFound) {
		t.Error("an unreachable Vault is reported as not found")
	}
	if s.Reveal() != "" {
		t.Error("Resolve returned the stale value with the error")
	}

	// Startup needs Vault.
	_, err = NewVault(context.Background(), VaultOptions{Address: srv.Addr, Token: New(srv.RootToken), Timeout: 5 * time.Second})
	if err == nil || !strings.HasPrefix(err.Error(), "vault token lookup: cannot reach Vault at "+srv.Addr+": ") {
		t.Errorf("NewVault with Vault down: %v", err)
	}
}

// TestVaultLeak provokes every error path and checks that neither errors
// nor logs contain a secret value, the token or the AppRole secret ID.
func TestVaultLeak(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	value := unique(t, "PLANTED-")
	srv.PutKV(t, "amg/leak", map[string]any{
		"token": value, "empty": "", "nested": map[string]any{"inner": value}, "list": []any{value},
	})
	srv.PutKV(t, "amg/deleted", map[string]any{"token": value})
	srv.DeleteKV(t, "amg/deleted")
	roleID, secretID := srv.SetupAppRole(t, vaulttest.AppRole{Name: "leak", Paths: []string{"kv/data/amg/leak"}, TokenTTL: time.Hour})
	limited := srv.Token(t, vaulttest.TokenOptions{Policies: []string{"default"}, TTL: time.Hour})
	wrongSecretID := unique(t, "WRONG-SECRET-ID-")
	badToken := unique(t, "hvs.BADTOKEN")
	secrets := []string{value, srv.RootToken, secretID, limited, wrongSecretID, badToken}

	var logs logBuffer
	clock := newFakeClock()
	opts := func(o VaultOptions) VaultOptions {
		o.Address, o.Logger, o.Now, o.Timeout = srv.Addr, logs.logger(), clock.Now, 3*time.Second
		return o
	}
	root := newTestVault(t, opts(VaultOptions{Token: New(srv.RootToken)}))
	approle := newTestVault(t, opts(VaultOptions{AppRole: &VaultAppRole{RoleID: roleID, SecretID: New(secretID)}}))
	lim := newTestVault(t, opts(VaultOptions{Token: New(limited)}))

	var errs []error
	try := func(v *Vault, ref string) {
		_, err := v.Resolve(context.Background(), mustRef(t, ref))
		if err == nil {
			t.Errorf("Resolve(%s) succeeded", ref)
			return
		}
		errs = append(errs, err)
	}
	// The happy path logs nothing secret either.
	if got := resolve(t, approle, "vault:kv/data/amg/leak#token"); got != value {
		t.Fatalf("Resolve = %q", got)
	}
	for _, v := range []*Vault{root, approle, lim} {
		for _, ref := range []string{
			"vault:kv/data/amg/leak#missing",
			"vault:kv/data/amg/leak#empty",
			"vault:kv/data/amg/leak#nested",
			"vault:kv/data/amg/leak#list",
			"vault:kv/data/amg/deleted#token",
			"vault:kv/data/amg/nope#token",
			"vault:kv/amg/leak#token",
			"vault:kv/metadata/amg/leak#token",
			"vault:sys/mounts#kv/",
			"vault:kv/data/../amg/leak#token",
		} {
			try(v, ref)
		}
	}
	// A revoked AppRole token makes a new login; a revoked given token
	// cannot be replaced.
	if err := srv.Client(t).Auth().Token().RevokeOrphan(limited); err != nil {
		t.Fatal(err)
	}
	try(lim, "vault:kv/data/amg/leak#token")

	for _, o := range []VaultOptions{
		{AppRole: &VaultAppRole{RoleID: roleID, SecretID: New(wrongSecretID)}},
		{AppRole: &VaultAppRole{RoleID: "no-such-role", SecretID: New(wrongSecretID)}},
		{AppRole: &VaultAppRole{RoleID: roleID, SecretID: New(wrongSecretID), Mount: "nope"}},
		{Token: New(badToken)},
		{Token: New(limited)},
	} {
		if _, err := NewVault(context.Background(), opts(o)); err == nil {
			t.Errorf("NewVault succeeded with bad credentials")
		} else {
			errs = append(errs, err)
		}
	}

	srv.Stop()
	clock.Advance(DefaultVaultCacheTTL)
	for _, v := range []*Vault{root, approle} {
		try(v, "vault:kv/data/amg/leak#token")
	}
	if _, err := NewVault(context.Background(), opts(VaultOptions{AppRole: &VaultAppRole{RoleID: roleID, SecretID: New(secretID)}})); err != nil {
		errs = append(errs, err)
	}
	if err := approle.Close(); err != nil {
		errs = append(errs, err)
	}
	try(approle, "vault:kv/data/amg/leak#token")

	for _, err := range errs {
		msg := err.Error()
		for _, s := range secrets {
			if strings.Contains(msg, s) {
				t.Errorf("error reveals a secret: %s", msg)
			}
		}
	}
	out := logs.String()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("logs reveal a secret:\n%s", out)
		}
	}
	if !strings.Contains(out, "logged in to Vault with AppRole") {
		t.Errorf("logs lack the AppRole login; the leak check saw nothing:\n%s", out)
	}
}

// Vault's error text is cut to 300 bytes, so that whatever fills it (a
// proxy in between, a path echoed back) cannot flood an error or a log
// line.
func TestVaultLongError(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	// Runs of white space are one space in the error.
	long := strings.Repeat("012345678\n\t", 40)
	said := strings.Repeat("012345678 ", 40)
	front := inFrontOf(t, srv, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v1/kv/data/amg/long" {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]any{"errors": []string{long}})
		return true
	})

	v := newTestVault(t, VaultOptions{Address: front.URL, Token: New(srv.RootToken)})
	_, err := v.Resolve(context.Background(), mustRef(t, "vault:kv/data/amg/long#f"))
	want := "vault:kv/data/amg/long#f: Vault at " + front.URL + " answered HTTP 400: " + said[:300] + "..."
	if err == nil || err.Error() != want {
		t.Errorf("Resolve error = %v, want %s", err, want)
	}
}

// TestVaultTokenRenewal uses a token that lives 3 seconds unless renewed,
// for longer than that.
func TestVaultTokenRenewal(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	srv.Policy(t, "amg-read", "kv/data/amg/*")
	const period = 3 * time.Second
	token := srv.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, Period: period})

	var logs logBuffer
	clock := newFakeClock()
	v := newTestVault(t, VaultOptions{Address: srv.Addr, Token: New(token), Logger: logs.logger(), Now: clock.Now})
	checkAlive(t, srv, v, clock, 2*period+time.Second)
	if n := strings.Count(logs.String(), "renewed vault token"); n < 2 {
		t.Errorf("token renewed %d times, want at least 2:\n%s", n, logs.String())
	}
	sec, err := srv.Client(t).Auth().Token().Lookup(token)
	if err != nil {
		t.Fatalf("token expired: %v", err)
	}
	if ttl, _ := sec.TokenTTL(); ttl <= 0 {
		t.Errorf("token TTL %s after renewals", ttl)
	}
	// Close leaves a given token alone.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client(t).Auth().Token().Lookup(token); err != nil {
		t.Errorf("Close revoked the configured token: %v", err)
	}
}

// TestVaultTokenRenewalOutage makes Vault unreachable when a token that
// lives 10 s unless renewed is next due for renewal, and brings it back
// once a renewal has failed, seconds before the token would expire: the
// source must go on renewing the token, which is still valid, rather than
// give up on it and let it expire.
func TestVaultTokenRenewalOutage(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	srv.Policy(t, "amg-read", "kv/data/amg/*")
	const period = 10 * time.Second
	token := srv.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, Period: period})
	var down atomic.Bool
	front := inFrontOf(t, srv, func(w http.ResponseWriter, _ *http.Request) bool {
		isDown := down.Load()
		if isDown {
			w.WriteHeader(http.StatusBadGateway) // a load balancer with no Vault behind it
		}
		return isDown
	})

	var logs logBuffer
	clock := newFakeClock()
	// Calls give up after a second, so that the renewal due at two thirds
	// of the period fails seconds before the token expires.
	v := newTestVault(t, VaultOptions{Address: front.URL, Token: New(token), Logger: logs.logger(), Now: clock.Now, Timeout: time.Second})
	if !waitForLog(&logs, "renewed vault token", 5*time.Second) {
		t.Fatalf("the token was not renewed at start:\n%s", logs.String())
	}
	renewed := time.Now()
	down.Store(true)
	failed := waitForLog(&logs, "vault token renewal failed", period)
	down.Store(false)
	if !failed {
		t.Errorf("no failed renewal logged while Vault was down:\n%s", logs.String())
	}
	// Past the end of the period the renewal at start gave the token.
	time.Sleep(time.Until(renewed.Add(period + time.Second)))
	clock.Advance(DefaultVaultCacheTTL)
	if _, err := v.Resolve(context.Background(), mustRef(t, "vault:kv/data/amg/notion#token")); err != nil {
		t.Errorf("Resolve after Vault came back: %v\nlogs:\n%s", err, logs.String())
	}
	if _, err := srv.Client(t).Auth().Token().Lookup(token); err != nil {
		t.Errorf("the token expired: %v", err)
	}
	if strings.Contains(logs.String(), "end of its renewable lifetime") {
		t.Errorf("a failed renewal is logged as the end of the token's renewable lifetime:\n%s", logs.String())
	}
}

// waitForLog waits until logs contain s, for at most d, and reports
// whether they do.
func waitForLog(logs *logBuffer, s string, d time.Duration) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if strings.Contains(logs.String(), s) {
			return true
		}
	}
	return strings.Contains(logs.String(), s)
}

// TestVaultTokenRereadSameToken asks for a new token while the token's
// source still holds the one in use: the source renews that one if Vault
// still accepts it and renewing extends it, and says why it waits for a
// new one otherwise.
func TestVaultTokenRereadSameToken(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.Policy(t, "amg-read", "kv/data/amg/*")
	for _, tc := range []struct {
		name    string
		token   string
		revoke  bool
		wantErr string
	}{
		{name: "renewable", token: srv.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, Period: time.Hour})},
		{name: "not renewable", token: srv.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, TTL: time.Hour, NotRenewable: true}),
			wantErr: "vault token: its source still holds the token in use, which can no longer be renewed; waiting for a new one"},
		{name: "revoked", token: srv.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, TTL: time.Hour}), revoke: true,
			wantErr: "vault token: its source still holds the token in use, which cannot be used (vault token was rejected by Vault at " +
				srv.Addr + " (expired, revoked or not a token of this Vault)); waiting for a new one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			credential := func(context.Context) (Secret, error) { return New(tc.token), nil }
			v := newTestVault(t, VaultOptions{Address: srv.Addr, Token: New(tc.token), Credential: credential})
			if tc.revoke {
				if err := srv.Client(t).Auth().Token().RevokeOrphan(tc.token); err != nil {
					t.Fatal(err)
				}
			}
			v.loginMu.Lock()
			auth, err := v.newToken(context.Background())
			v.loginMu.Unlock()
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Errorf("newToken error = %v, want %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("newToken: %v", err)
			}
			if auth.LeaseDuration != int(time.Hour/time.Second) || !auth.Renewable {
				t.Errorf("newToken = TTL %ds, renewable %v; want the token renewed for an hour", auth.LeaseDuration, auth.Renewable)
			}
		})
	}
}

// TestVaultAppRoleRelogin uses an AppRole whose tokens live 2 seconds and
// can be renewed up to 3: the source must log in again, repeatedly.
func TestVaultAppRoleRelogin(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	roleID, secretID := srv.SetupAppRole(t, vaulttest.AppRole{
		Name: "short", Paths: []string{"kv/data/amg/*"}, TokenTTL: 2 * time.Second, TokenMaxTTL: 3 * time.Second,
	})
	var logs logBuffer
	clock := newFakeClock()
	v := newTestVault(t, VaultOptions{
		Address: srv.Addr,
		AppRole: &VaultAppRole{RoleID: roleID, SecretID: New(secretID)},
		Logger:  logs.logger(),
		Now:     clock.Now,
	})
	// Each token lives at most 3 s of Vault's time, so two re-logins take
	// about 7 s; how long exactly depends on when renewals land, so the
	// secret is read until they have happened or 15 s have passed.
	logins := func() int { return strings.Count(logs.String(), "logged in to Vault with AppRole") }
	for end := time.Now().Add(15 * time.Second); logins() < 3 && time.Now().Before(end); {
		checkAlive(t, srv, v, clock, time.Second)
	}
	if n := logins(); n < 3 {
		t.Errorf("%d AppRole logins, want at least 3 (the first and two after the token's max TTL):\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "renewed vault token"); n < 1 {
		t.Errorf("token never renewed:\n%s", logs.String())
	}
}

// writeSecretFile replaces the file at path with one holding value, as an
// orchestrator or a Vault Agent sink does: whole, in one rename.
func writeSecretFile(t *testing.T, path, value string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(value+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// fileCredential reads the credential from path as a file: reference.
func fileCredential(t *testing.T, path string) func(context.Context) (Secret, error) {
	ref := mustRef(t, "file:"+path)
	src := NewDefault(nil)
	return func(ctx context.Context) (Secret, error) { return src.Resolve(ctx, ref) }
}

// TestVaultAppRoleSecretIDRotation rotates the AppRole secret ID in its
// file and destroys the old one while the source runs, with tokens that
// live at most 3 s: the logins after that must use the new secret ID.
func TestVaultAppRoleSecretIDRotation(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	roleID, secretID := srv.SetupAppRole(t, vaulttest.AppRole{
		Name: "rotated", Paths: []string{"kv/data/amg/*"}, TokenTTL: 2 * time.Second, TokenMaxTTL: 3 * time.Second,
	})
	path := filepath.Join(t.TempDir(), "secret_id")
	writeSecretFile(t, path, secretID)
	var logs logBuffer
	clock := newFakeClock()
	v := newTestVault(t, VaultOptions{
		Address:    srv.Addr,
		AppRole:    &VaultAppRole{RoleID: roleID, SecretID: New(secretID)},
		Credential: fileCredential(t, path),
		Logger:     logs.logger(),
		Now:        clock.Now,
	})
	checkAlive(t, srv, v, clock, time.Second)

	writeSecretFile(t, path, srv.NewSecretID(t, "rotated"))
	srv.DestroySecretID(t, "rotated", secretID)
	// Past the end of the token the first login made, and of the one
	// after it: both logins must have read the new secret ID.
	logins := func() int { return strings.Count(logs.String(), "logged in to Vault with AppRole") }
	for end := time.Now().Add(15 * time.Second); logins() < 3 && time.Now().Before(end); {
		checkAlive(t, srv, v, clock, time.Second)
	}
	if n := logins(); n < 3 {
		t.Errorf("%d AppRole logins, want at least 3 (the first and two with the rotated secret ID):\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "getting a new vault token") {
		t.Errorf("a login failed:\n%s", logs.String())
	}
}

// TestVaultTokenReread gives a token that cannot be renewed and lives 3 s,
// from a file that is then rewritten with another, as a Vault Agent sink
// is: the source must go on to the new token before the old one ends.
func TestVaultTokenReread(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	srv.Policy(t, "amg-read", "kv/data/amg/*")
	first := srv.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, TTL: 3 * time.Second, NotRenewable: true})
	path := filepath.Join(t.TempDir(), "token")
	writeSecretFile(t, path, first)
	var logs logBuffer
	clock := newFakeClock()
	v := newTestVault(t, VaultOptions{
		Address:    srv.Addr,
		Token:      New(first),
		Credential: fileCredential(t, path),
		Logger:     logs.logger(),
		Now:        clock.Now,
	})
	second := srv.Token(t, vaulttest.TokenOptions{Policies: []string{"amg-read"}, TTL: time.Hour})
	writeSecretFile(t, path, second)
	checkAlive(t, srv, v, clock, 5*time.Second)
	if v.client.Token() != second {
		t.Errorf("the source does not use the token its file holds now:\n%s", logs.String())
	}
	// Close leaves a token it read alone.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client(t).Auth().Token().Lookup(second); err != nil {
		t.Errorf("Close revoked the token read from the file: %v", err)
	}
}

// TestVaultReloginPause revokes an AppRole token while the secret ID can
// no longer be read: reads denied one after another try one login, not
// one each.
func TestVaultReloginPause(t *testing.T) {
	t.Parallel()
	srv := vaulttest.Start(t)
	srv.PutKV(t, "amg/notion", map[string]any{"token": "v1"})
	roleID, secretID := srv.SetupAppRole(t, vaulttest.AppRole{Name: "paused", Paths: []string{"kv/data/amg/*"}, TokenTTL: time.Hour})
	var reads atomic.Int32
	var logs logBuffer
	clock := newFakeClock()
	v := newTestVault(t, VaultOptions{
		Address: srv.Addr,
		AppRole: &VaultAppRole{RoleID: roleID, SecretID: New(secretID)},
		Credential: func(context.Context) (Secret, error) {
			reads.Add(1)
			return Secret{}, errors.New("file:/run/secrets/secret_id does not exist")
		},
		Logger: logs.logger(),
		Now:    clock.Now,
	})
	// The renewal loop renews once at start, then not for most of an
	// hour: it will not notice the revocation.
	for end := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "renewed vault token") && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if err := srv.Client(t).Auth().Token().RevokeOrphan(v.client.Token()); err != nil {
		t.Fatal(err)
	}
	const n = 10
	for i := range n {
		clock.Advance(DefaultVaultCacheTTL)
		_, err := v.Resolve(context.Background(), mustRef(t, "vault:kv/data/amg/notion#token"))
		if err == nil || !strings.Contains(err.Error(), "denied reading kv/data/amg/notion") {
			t.Errorf("read %d with the token revoked: %v", i, err)
		}
	}
	if got := reads.Load(); got != 1 {
		t.Errorf("%d denied reads read the secret ID %d times, want 1", n, got)
	}
	if !strings.Contains(logs.String(), "not tried again within 5s of that failure") {
		t.Errorf("logs do not say the login was not tried again:\n%s", logs.String())
	}
}

// checkAlive reads through v, bypassing the cache, for the given time:
// every read must succeed, and the token must be valid throughout.
func checkAlive(t *testing.T, srv *vaulttest.Server, v *Vault, clock *testclock.Clock, d time.Duration) {
	t.Helper()
	end := time.Now().Add(d)
	for n := 0; time.Now().Before(end); n++ {
		clock.Advance(DefaultVaultCacheTTL)
		s, err := v.Resolve(context.Background(), mustRef(t, "vault:kv/data/amg/notion#token"))
		if err != nil {
			t.Fatalf("read %d, %s before the end: %v", n, time.Until(end).Round(time.Millisecond), err)
		}
		if s.Reveal() != "v1" {
			t.Fatalf("read %d = %q", n, s.Reveal())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestVaultOptions(t *testing.T) {
	t.Parallel()
	role := func(id, secret string) *VaultAppRole { return &VaultAppRole{RoleID: id, SecretID: New(secret)} }
	for _, tc := range []struct {
		name string
		opts VaultOptions
		want string
	}{
		{"no address", VaultOptions{Token: New("t")}, "vault address is required"},
		{"not a URL", VaultOptions{Address: "vault:8200", Token: New("t")}, `vault address "vault:8200" is not an http or https URL`},
		{"no host", VaultOptions{Address: "https://", Token: New("t")}, `vault address "https://" is not an http or https URL`},
		{"port, no host", VaultOptions{Address: "https://:8200", Token: New("t")}, `vault address "https://:8200" is not an http or https URL`},
		{"credentials", VaultOptions{Address: "https://user:pw@vault:8200", Token: New("t")}, "vault address must not contain credentials"},
		{"query", VaultOptions{Address: "https://vault:8200/?x=1", Token: New("t")}, `vault address "https://vault:8200/?x=1" must not have a query or fragment`},
		{"empty query", VaultOptions{Address: "https://vault:8200?", Token: New("t")}, `vault address "https://vault:8200?" must not have a query or fragment`},
		{"no auth", VaultOptions{Address: "https://vault:8200"}, "vault options need a token or an AppRole"},
		{"both", VaultOptions{Address: "https://vault:8200", Token: New("t"), AppRole: role("r", "s")}, "vault options set both a token and an AppRole; choose one"},
		{"empty token", VaultOptions{Address: "https://vault:8200", Token: New("")}, "vault token is empty"},
		{"no role ID", VaultOptions{Address: "https://vault:8200", AppRole: role("", "s")}, "vault AppRole has no role ID"},
		{"no secret ID", VaultOptions{Address: "https://vault:8200", AppRole: role("r", "")}, "vault AppRole has no secret ID"},
		{"bad mount", VaultOptions{Address: "https://vault:8200", AppRole: &VaultAppRole{RoleID: "r", SecretID: New("s"), Mount: "a//b"}},
			`vault AppRole mount "a//b" has an empty segment (a leading, trailing or doubled '/')`},
		{"negative TTL", VaultOptions{Address: "https://vault:8200", Token: New("t"), CacheTTL: -time.Second}, "vault cache TTL -1s is negative"},
		{"long TTL", VaultOptions{Address: "https://vault:8200", Token: New("t"), CacheTTL: time.Hour},
			"vault cache TTL 1h0m0s is longer than the maximum 10m0s, which bounds how long a rotated secret goes unused"},
		{"negative timeout", VaultOptions{Address: "https://vault:8200", Token: New("t"), Timeout: -time.Second}, "vault timeout -1s is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewVault(context.Background(), tc.opts)
			if err == nil || err.Error() != tc.want {
				t.Errorf("NewVault error = %v, want %s", err, tc.want)
			}
		})
	}
}

// inFrontOf serves handle before srv, as a proxy or load balancer would
// stand before Vault: srv gets each request handle does not answer
// (returning false).
func inFrontOf(t *testing.T, srv *vaulttest.Server, handle func(http.ResponseWriter, *http.Request) bool) *httptest.Server {
	t.Helper()
	target, err := url.Parse(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !handle(w, r) {
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(front.Close)
	return front
}

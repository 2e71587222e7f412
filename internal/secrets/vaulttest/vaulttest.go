// Package vaulttest runs a real Vault server for tests: a dev-mode server
// on a loopback port, with a fresh root token, a KV version 2 mount at kv/
// and helpers to write secrets, policies, tokens and AppRoles.
//
// The server is the one scripts/setup-vault builds into the tools
// directory (AMG_TOOLS_DIR, or .cache/amg-tools in the home directory).
// Tests that need it fail, never skip, when it is missing: a skipped
// secrets test looks like a passing one.
package vaulttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/amgateway/amg/internal/syncbuf"
	"github.com/amgateway/amg/internal/toolsdir"
)

// Version is the Vault version scripts/setup-vault builds.
const Version = "v1.13.2"

// KVMount is where Start mounts a KV version 2 secrets engine.
const KVMount = "kv"

// Server is a running dev-mode Vault.
type Server struct {
	// Addr is the base URL, http://127.0.0.1:PORT.
	Addr string
	// RootToken is the dev server's root token.
	RootToken string

	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	exit chan struct{} // closed when the process has exited

	stopMu  sync.Mutex
	stopped bool

	approleOnce sync.Once
}

// Binary returns where scripts/setup-vault puts the vault binary.
func Binary() (string, error) {
	dir, err := toolsdir.Dir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "vault", "vault"), nil
}

// Start starts a dev-mode Vault on a free loopback port and stops it when
// the test ends. It fails the test if Vault is not installed.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("vaulttest: %v", err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("vaulttest: Vault %s is not installed at %s; run scripts/setup (or scripts/setup-vault) to build it", Version, bin)
	}
	// The free port may be taken between finding and binding it; a
	// failed start is retried on another.
	var lastErr error
	for range 3 {
		s, err := start(t, bin)
		if err == nil {
			t.Cleanup(s.Stop)
			s.mountKV(t)
			return s
		}
		lastErr = err
	}
	t.Fatalf("vaulttest: %v", lastErr)
	return nil
}

func start(t testing.TB, bin string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	token := randomHex(16)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "server", "-dev",
		"-dev-root-token-id="+token,
		"-dev-listen-address="+addr,
		"-dev-no-store-token",
	)
	// A dev server reads VAULT_* settings and writes a token helper file
	// into the home directory: give it neither the caller's.
	env := []string{"HOME=" + t.TempDir()}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	s := &Server{Addr: "http://" + addr, RootToken: token, cmd: cmd, out: out, exit: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(s.exit)
	}()
	if err := s.waitReady(30 * time.Second); err != nil {
		s.Stop()
		return nil, fmt.Errorf("%w\nvault output:\n%s", err, tail(out.String(), 40))
	}
	return s, nil
}

// waitReady polls sys/health until the server is active and unsealed.
func (s *Server) waitReady(limit time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for {
		resp, err := c.Get(s.Addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.exit:
			return errors.New("vault server exited during startup")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vault server at %s not ready after %s", s.Addr, limit)
		}
	}
}

// Stop stops the server; Vault then refuses connections. The test's
// cleanup calls it too, so calling it early is fine.
func (s *Server) Stop() {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exit:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exit
	}
}

// Output returns what the server has printed, for failure messages.
func (s *Server) Output() string { return s.out.String() }

// Client returns an API client authenticated with the root token.
func (s *Server) Client(t testing.TB) *api.Client {
	t.Helper()
	return s.ClientWithToken(t, s.RootToken)
}

// ClientWithToken returns an API client authenticated with token.
func (s *Server) ClientWithToken(t testing.TB, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = s.Addr
	cfg.AgentAddress = ""
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("vaulttest: client: %v", err)
	}
	c.SetToken(token)
	return c
}

func (s *Server) mountKV(t testing.TB) {
	t.Helper()
	err := s.Client(t).Sys().Mount(KVMount, &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}})
	if err != nil {
		t.Fatalf("vaulttest: mounting KV v2 at %s/: %v", KVMount, err)
	}
}

// PutKV writes a new version of the KV version 2 secret at path (without
// the mount or data/: "amg/notion" is read as kv/data/amg/notion).
func (s *Server) PutKV(t testing.TB, path string, data map[string]any) {
	t.Helper()
	if _, err := s.Client(t).KVv2(KVMount).Put(context.Background(), path, data); err != nil {
		t.Fatalf("vaulttest: writing %s/%s: %v", KVMount, path, err)
	}
}

// DeleteKV soft-deletes the latest version of the secret at path.
func (s *Server) DeleteKV(t testing.TB, path string) {
	t.Helper()
	if err := s.Client(t).KVv2(KVMount).Delete(context.Background(), path); err != nil {
		t.Fatalf("vaulttest: deleting %s/%s: %v", KVMount, path, err)
	}
}

// Policy writes a policy granting read on each of paths, which are API
// paths such as kv/data/amg/notion (globs allowed).
func (s *Server) Policy(t testing.TB, name string, paths ...string) {
	t.Helper()
	var b strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"read\"]\n}\n", p)
	}
	if err := s.Client(t).Sys().PutPolicy(name, b.String()); err != nil {
		t.Fatalf("vaulttest: writing policy %s: %v", name, err)
	}
}

// TokenOptions shape a token made by Token.
type TokenOptions struct {
	Policies []string
	// TTL and Period are rounded to whole seconds. A periodic token
	// (Period > 0) can be renewed forever, a period at a time.
	TTL, Period time.Duration
	// NotRenewable makes a token that cannot be renewed.
	NotRenewable bool
}

// Token creates a token (not a child of the root token, so that it
// outlives nothing it should not) and returns it.
func (s *Server) Token(t testing.TB, o TokenOptions) string {
	t.Helper()
	renewable := !o.NotRenewable
	req := &api.TokenCreateRequest{
		Policies:  o.Policies,
		NoParent:  true,
		Renewable: &renewable,
	}
	if o.TTL > 0 {
		req.TTL = seconds(o.TTL)
	}
	if o.Period > 0 {
		req.Period = seconds(o.Period)
	}
	if len(req.Policies) == 0 {
		req.Policies = []string{"default"}
	}
	sec, err := s.Client(t).Auth().Token().CreateOrphan(req)
	if err != nil {
		t.Fatalf("vaulttest: creating token: %v", err)
	}
	return sec.Auth.ClientToken
}

// AppRole describes a role for SetupAppRole.
type AppRole struct {
	// Name is the role's name; its policy has the same name.
	Name string
	// Paths are the API paths the role may read.
	Paths []string
	// TokenTTL and TokenMaxTTL bound the tokens a login yields; zero
	// means Vault's defaults. They are rounded to whole seconds.
	TokenTTL, TokenMaxTTL time.Duration
}

// SetupAppRole enables the AppRole auth method at auth/approle (once per
// server), writes a policy reading r.Paths and a role with that policy,
// and returns the role's ID and a new secret ID.
func (s *Server) SetupAppRole(t testing.TB, r AppRole) (roleID, secretID string) {
	t.Helper()
	c := s.Client(t)
	var enableErr error
	s.approleOnce.Do(func() {
		enableErr = c.Sys().EnableAuthWithOptions("approle", &api.EnableAuthOptions{Type: "approle"})
	})
	if enableErr != nil {
		t.Fatalf("vaulttest: enabling auth/approle: %v", enableErr)
	}
	s.Policy(t, r.Name, r.Paths...)
	role := map[string]any{"token_policies": []string{r.Name}}
	if r.TokenTTL > 0 {
		role["token_ttl"] = seconds(r.TokenTTL)
	}
	if r.TokenMaxTTL > 0 {
		role["token_max_ttl"] = seconds(r.TokenMaxTTL)
	}
	base := "auth/approle/role/" + r.Name
	if _, err := c.Logical().Write(base, role); err != nil {
		t.Fatalf("vaulttest: writing role %s: %v", r.Name, err)
	}
	sec, err := c.Logical().Read(base + "/role-id")
	if err != nil || sec == nil {
		t.Fatalf("vaulttest: reading role ID of %s: %v", r.Name, err)
	}
	roleID, _ = sec.Data["role_id"].(string)
	if roleID == "" {
		t.Fatalf("vaulttest: role %s: Vault returned no role ID", r.Name)
	}
	return roleID, s.NewSecretID(t, r.Name)
}

// NewSecretID creates another secret ID of the AppRole role, as an
// operator rotating it would.
func (s *Server) NewSecretID(t testing.TB, role string) string {
	t.Helper()
	sec, err := s.Client(t).Logical().Write("auth/approle/role/"+role+"/secret-id", nil)
	if err != nil || sec == nil {
		t.Fatalf("vaulttest: creating secret ID of %s: %v", role, err)
	}
	id, _ := sec.Data["secret_id"].(string)
	if id == "" {
		t.Fatalf("vaulttest: role %s: Vault returned no secret ID", role)
	}
	return id
}

// DestroySecretID destroys the secret ID id of the AppRole role: logins
// with it fail from then on.
func (s *Server) DestroySecretID(t testing.TB, role, id string) {
	t.Helper()
	if _, err := s.Client(t).Logical().Write("auth/approle/role/"+role+"/secret-id/destroy", map[string]any{"secret_id": id}); err != nil {
		t.Fatalf("vaulttest: destroying a secret ID of %s: %v", role, err)
	}
}

func seconds(d time.Duration) string {
	return strconv.Itoa(int((d+time.Second-1)/time.Second)) + "s"
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

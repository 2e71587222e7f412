package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/gateway"
	"github.com/amgateway/amg/internal/redistest"
)

// --redis takes a rediss:// URL with an ACL user, the password and TLS
// files from the environment: token issue and list work against a Redis
// that serves TLS only, to clients with a certificate, as that user.
func TestRedisURLOverTLS(t *testing.T) {
	rs := redistest.StartWith(t, redistest.Options{TLS: true, RequireClientCert: true, User: "ops", Password: "pw-for-ops"})
	url := "rediss://ops@" + rs.Addr
	t.Setenv("AMG_REDIS_PASSWORD", "pw-for-ops")
	t.Setenv("AMG_REDIS_CA_FILE", rs.TLS.CA)
	t.Setenv("AMG_REDIS_CERT_FILE", rs.TLS.ClientCert)
	t.Setenv("AMG_REDIS_KEY_FILE", rs.TLS.ClientKey)

	code, stdout, stderr := runCLI(t, "token", "issue", "--redis", url, "--agent", "tls-bot", "--role", "notion_read")
	if code != 0 || !strings.HasPrefix(stdout, "amg_") {
		t.Fatalf("token issue: exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, "token", "list", "--redis", url)
	if code != 0 || !strings.Contains(stdout, "tls-bot") {
		t.Errorf("token list: exit %d, stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	// The store is named in messages, without the URL's password.
	code, _, stderr = runCLI(t, "token", "revoke", "--redis", "rediss://ops:pw-for-ops@"+rs.Addr, "0123456789abcdef")
	if want := "no token with ID 0123456789abcdef in Redis at rediss://ops:xxxxx@" + rs.Addr; code != 1 || !strings.Contains(stderr, want) {
		t.Errorf("revoking an unknown id: exit %d, stderr %q; want it to say %q", code, stderr, want)
	}

	for _, tc := range []struct {
		name, url, env, val, want string
	}{
		{"no client certificate", url, "AMG_REDIS_CERT_FILE", "", "--redis: AMG_REDIS_CERT_FILE and AMG_REDIS_KEY_FILE go together"},
		{"another password", url, "AMG_REDIS_PASSWORD", "guess", "WRONGPASS"},
		// With TLS files set, a plain address is a mistake, refused before
		// the password goes anywhere in clear.
		{"plain URL", "redis://ops@" + rs.Addr, "", "", "--redis: AMG_REDIS_CA_FILE is set, but the address is not a rediss:// URL"},
		{"host and port", rs.Addr, "", "", "--redis: AMG_REDIS_CA_FILE is set, but the address is not a rediss:// URL"},
		{"not a URL", "rediss://ops@" + rs.Addr + "/notadb", "", "", "--redis: redis: invalid database number"},
		{"a password in a malformed URL", "rediss://ops:pw-for-ops@" + rs.Addr + "x", "", "", "--redis: invalid port"},
	} {
		if tc.env != "" {
			t.Setenv(tc.env, tc.val)
		}
		code, _, stderr := runCLI(t, "token", "list", "--redis", tc.url)
		if code == 0 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "pw-for-ops") {
			t.Errorf("%s: exit %d, stderr:\n%s\nwant it to say %q", tc.name, code, stderr, tc.want)
		}
		if tc.env != "" {
			t.Setenv(tc.env, map[string]string{"AMG_REDIS_CERT_FILE": rs.TLS.ClientCert, "AMG_REDIS_PASSWORD": "pw-for-ops"}[tc.env])
		}
	}
}

// The TLS files are never ignored: with any of them set, an address that
// is not a rediss:// URL is refused, and nothing is sent to it.
func TestRedisTLSFilesNeedATLSAddress(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	dialled := make(chan struct{}, 1)
	go func() {
		if c, err := lis.Accept(); err == nil {
			dialled <- struct{}{}
			c.Close()
		}
	}()
	t.Setenv("AMG_REDIS_PASSWORD", "pw-for-ops")
	for _, env := range []string{"AMG_REDIS_CA_FILE", "AMG_REDIS_CERT_FILE", "AMG_REDIS_KEY_FILE"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, filepath.Join(t.TempDir(), "file.pem"))
			for _, addr := range []string{lis.Addr().String(), "redis://" + lis.Addr().String()} {
				client, err := redisClient(addr)
				if err == nil {
					client.Ping(context.Background())
					client.Close()
					t.Errorf("%s with %s set: not refused", addr, env)
				} else if want := env + " is set, but the address is not a rediss:// URL"; !strings.Contains(err.Error(), want) {
					t.Errorf("%s with %s set: %v; want it to say %q", addr, env, err, want)
				}
			}
		})
	}
	select {
	case <-dialled:
		t.Error("the plain address was dialled, the password on its way in clear")
	default:
	}
}

// amg audit tail --redis prints the latest records every replica shipped,
// as their files hold them, each naming its replica first.
func TestAuditTailFromRedis(t *testing.T) {
	rs := redistest.Start(t)
	log := writeReplayAudit(t)
	shipAll(t, rs, log, 6)
	_, fromFile, _ := runCLI(t, "audit", "tail", "-n", "2", log)
	want := strings.ReplaceAll("\n"+fromFile, "\n{", "\n"+`{"replica":"r1",`)[1:]
	code, stdout, stderr := runCLI(t, "audit", "tail", "-n", "2", "--redis", rs.Addr)
	if code != 0 || stdout != want || strings.Count(stdout, "\n") != 2 {
		t.Errorf("exit %d, stdout:\n%s\nwant the file's last two lines, with their replica:\n%s\nstderr:\n%s", code, stdout, want, stderr)
	}
}

// shipAll ships the audit log at path, of n records, to rs's audit stream,
// as a replica would.
func shipAll(t *testing.T, rs *redistest.Server, path string, n int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	shipped := make(chan error, 1)
	go func() { shipped <- audit.NewStream(rs.Client(), &audit.StreamOptions{Replica: "r1"}).Ship(ctx, path) }()
	for deadline := time.Now().Add(10 * time.Second); rs.Client().XLen(ctx, audit.DefaultStreamKey).Val() < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the records never reached Redis")
		}
	}
	cancel()
	if err := <-shipped; err != nil {
		t.Fatal(err)
	}
}

// amg audit verify --redis anchors the chain at the last record the
// replica shipped: a chain cut short since verifies alone, and not so.
func TestAuditVerifyAnchoredInRedis(t *testing.T) {
	rs := redistest.Start(t)
	dir := t.TempDir()
	path := filepath.Join(dir, audit.FileName)
	lines := writeAuditLog(t, path, nil, 1, 5)
	shipAll(t, rs, path, 5)
	if err := os.WriteFile(filepath.Join(dir, gateway.ReplicaIDFile), []byte("r1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "audit", "verify", "--data-dir", dir, "--redis", rs.Addr)
	if want := "ok: 5 records; anchor 5:" + lineHash(lines[4]) + "\n1 of 1 anchor checked\n"; code != 0 || stdout != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want %q", code, stdout, stderr, want)
	}

	if err := os.WriteFile(path, []byte(strings.Join(lines[:3], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := runCLI(t, "audit", "verify", "--data-dir", dir); code != 0 {
		t.Fatal("the cut chain does not verify on its own: the test tests nothing")
	}
	code, stdout, stderr = runCLI(t, "audit", "verify", "--data-dir", dir, "--redis", rs.Addr)
	want := path + ":3: anchor mismatch: the chain ends at seq 3, but an anchor names seq 5: records were cut from its end\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("cut chain: exit %d, stdout %q, stderr %q; want exit 1 and %q", code, stdout, stderr, want)
	}
	// Files given by name name their replica.
	code, _, stderr = runCLI(t, "audit", "verify", "--redis", rs.Addr, "--replica", "r1", path)
	if code != 1 || stderr != want {
		t.Errorf("cut chain, --replica r1: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runCLI(t, "audit", "verify", "--redis", rs.Addr, "--replica", "r2", path)
	if code == 0 || !strings.Contains(stderr, `replica "r2" has shipped no audit records`) {
		t.Errorf("a replica that shipped nothing: exit %d, stderr %q", code, stderr)
	}
}

package main

import (
	"strings"
	"testing"

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

	for _, tc := range []struct {
		name, url, env, val, want string
	}{
		{"no client certificate", url, "AMG_REDIS_CERT_FILE", "", "--redis: AMG_REDIS_CERT_FILE and AMG_REDIS_KEY_FILE go together"},
		{"another password", url, "AMG_REDIS_PASSWORD", "guess", "WRONGPASS"},
		{"plain URL", "redis://ops@" + rs.Addr, "", "", ""},
		{"not a URL", "rediss://ops@" + rs.Addr + "/notadb", "", "", "--redis: redis: invalid database number"},
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

package config

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/secrets"
)

// planted is a secret value no error may contain.
const planted = "sk-live-PLANTED-51c0de"

// parse parses src as a file named amg.yaml.
func parse(t *testing.T, src string, opts *Options) (*Config, error) {
	t.Helper()
	return Parse("amg.yaml", []byte(strings.TrimLeft(src, "\n")), opts)
}

func problemsOf(t *testing.T, err error) string {
	t.Helper()
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %v is not Problems", err)
	}
	return ps.Error()
}

// templates compares Templates by their text; their parsing is tested on
// its own.
var templates = cmp.Transformer("template", func(t Template) string { return t.String() })

// envSource resolves env refs from a map and counts lookups.
type envSource struct {
	mu    sync.Mutex
	vars  map[string]string
	calls map[secrets.Ref]int
}

func newEnvSource(vars map[string]string) *envSource {
	return &envSource{vars: vars, calls: map[secrets.Ref]int{}}
}

func (s *envSource) Resolve(ctx context.Context, ref secrets.Ref) (secrets.Secret, error) {
	s.mu.Lock()
	s.calls[ref]++
	s.mu.Unlock()
	return secrets.NewDefault(&secrets.Options{LookupEnv: func(k string) (string, bool) {
		v, ok := s.vars[k]
		return v, ok
	}}).Resolve(ctx, ref)
}

func demo() *Upstream {
	return &Upstream{Name: "notion", Builtin: "demo", ConnectTimeout: 5 * time.Second, CallTimeout: 60 * time.Second}
}

func TestDefault(t *testing.T) {
	want := &Config{
		Listen:                      "127.0.0.1:8080",
		AdminListen:                 "127.0.0.1:8081",
		AuthzListen:                 "127.0.0.1:9001",
		Envoy:                       Envoy{Listen: "0.0.0.0:10000", AuthzTimeout: 2 * time.Second, RouteTimeout: 17 * time.Minute, TracingSampling: 100},
		ApprovalTTL:                 15 * time.Minute,
		MaxPendingApprovalsPerAgent: 16,
		Console:                     Console{ReadyDays: 7, ReadyMinCalls: 1},
		Audit:                       Audit{MaxFileBytes: 100 << 20, Sync: audit.SyncOnInterval, SyncInterval: time.Second, StreamMaxRecords: audit.DefaultStreamMaxLen},
		DataDir:                     "./data",
		PolicyDir:                   "./policies",
		MaxBodyBytes:                1048576,
		MaxSessionsPerAgent:         64,
		MaxProtocolVersion:          "2025-11-25",
		Upstreams:                   map[string]*Upstream{"notion": demo()},
		Names:                       []string{"notion"},
	}
	if diff := cmp.Diff(want, Default(), templates); diff != "" {
		t.Errorf("Default() (-want +got):\n%s", diff)
	}
	// Each call is a fresh value: a caller changing its copy changes no one else's.
	d := Default()
	d.Upstreams["notion"].Builtin = "changed"
	d.Names[0] = "changed"
	if diff := cmp.Diff(want, Default(), templates); diff != "" {
		t.Errorf("Default() after changing an earlier result (-want +got):\n%s", diff)
	}
	if MCPPath != "/mcp" {
		t.Errorf("MCPPath = %q", MCPPath)
	}

	// A file that says nothing means the defaults.
	for _, src := range []string{"", "# nothing yet\n", "~\n", "---\n"} {
		got, err := parse(t, src, nil)
		if err != nil {
			t.Fatalf("Parse(%q): %v", src, err)
		}
		if diff := cmp.Diff(want, got, templates); diff != "" {
			t.Errorf("Parse(%q) (-want +got):\n%s", src, diff)
		}
	}
}

func TestLoadFull(t *testing.T) {
	// With a source that resolves every reference, as the server loads it.
	got, err := Load(filepath.Join("testdata", "full.yaml"), &Options{Secrets: anySource{}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join("testdata", "full.yaml")
	tmpl := func(s string, line, col int) Template {
		t.Helper()
		tp, err := ParseTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		tp.pos = Pos{File: file, Line: line, Col: col}
		return tp
	}
	want := &Config{
		Listen:         "0.0.0.0:8443",
		AllowedOrigins: []string{"https://console.example.com", "http://localhost:6274"},
		AdminListen:    "[::1]:9090",
		AuthzListen:    ":9001",
		BrokerListen:   "0.0.0.0:8082",
		XDSListen:      "127.0.0.1:18000",
		Envoy: Envoy{Listen: "0.0.0.0:10443", TLS: &ListenTLS{CertFile: "/etc/envoy-tls/tls.crt", KeyFile: "/etc/envoy-tls/tls.key", MinVersion: "1.3"},
			AuthzAddress: "amg:9001", BrokerAddresses: []string{"amg-0.amg:8082", "amg-1.amg:8082"},
			AuthzTimeout: 500 * time.Millisecond, RouteTimeout: 30 * time.Minute, TracingAddress: "otel-collector:4317", TracingSampling: 12.5},
		ApprovalTTL:                 5 * time.Minute,
		MaxPendingApprovalsPerAgent: 4,
		ApprovalWebhook:             tmpl("https://hooks.example/amg", 41, 12),
		Console:                     Console{ReadyDays: 14, ReadyMinCalls: 200, TraceURL: "https://jaeger.example/trace/{trace_id}", StagedPolicyDir: "/etc/amg/policies.next"},
		Audit:                       Audit{MaxFileBytes: 1 << 30, Sync: audit.SyncOnInterval, SyncInterval: 250 * time.Millisecond, Stdout: true, StreamMaxRecords: 500000},
		DataDir:                     "/var/lib/amg",
		PolicyDir:                   "/etc/amg/policies",
		MaxBodyBytes:                2097152,
		MaxSessionsPerAgent:         16,
		MaxProtocolVersion:          "2026-07-28",
		Upstreams: map[string]*Upstream{
			"notion": {
				Name: "notion",
				URL:  "https://mcp.notion.example/mcp",
				Headers: map[string]Template{
					"Authorization": tmpl("Bearer ${env:NOTION_TOKEN}", 12, 22),
					"X-Workspace":   tmpl("ws_abc123", 13, 20),
				},
				ConnectTimeout: 2 * time.Second,
				CallTimeout:    90 * time.Second,
				Pos:            Pos{File: file, Line: 9, Col: 3},
			},
			"local": {
				Name:           "local",
				URL:            "http://127.0.0.1:3000/mcp",
				ConnectTimeout: 5 * time.Second,
				CallTimeout:    10 * time.Second,
				Pos:            Pos{File: file, Line: 15, Col: 3},
			},
			"lan": {
				Name:           "lan",
				URL:            "http://mcp.internal:8080/mcp",
				AllowInsecure:  true,
				ConnectTimeout: 5 * time.Second,
				CallTimeout:    60 * time.Second,
				Pos:            Pos{File: file, Line: 18, Col: 3},
			},
			"files": {
				Name:    "files",
				Command: []string{"npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/data"},
				Env: map[string]Template{
					"HOME":    tmpl("/home/mcp", 23, 18),
					"API_KEY": tmpl("${file:/run/secrets/files_key}", 23, 38),
				},
				ConnectTimeout: 5 * time.Second,
				CallTimeout:    60 * time.Second,
				Pos:            Pos{File: file, Line: 21, Col: 3},
			},
			"demo": {
				Name:           "demo",
				Builtin:        "demo",
				ConnectTimeout: 5 * time.Second,
				CallTimeout:    60 * time.Second,
				Pos:            Pos{File: file, Line: 24, Col: 3},
			},
		},
		Names: []string{"demo", "files", "lan", "local", "notion"},
	}
	// Positions of templates matter (CheckSecrets reports at them), so
	// compare them too.
	withPos := cmp.Transformer("template", func(t Template) struct {
		Text string
		Pos  Pos
	} {
		return struct {
			Text string
			Pos  Pos
		}{t.String(), t.pos}
	})
	if diff := cmp.Diff(want, got, withPos); diff != "" {
		t.Errorf("Load (-want +got):\n%s", diff)
	}
}

// anySource resolves every reference.
type anySource struct{}

func (anySource) Resolve(context.Context, secrets.Ref) (secrets.Secret, error) {
	return secrets.New(planted), nil
}

func TestLoadReadError(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), nil)
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "read config: ") {
		t.Errorf("Load(missing) = %v, want a read config error wrapping fs.ErrNotExist", err)
	}
	var ps Problems
	if errors.As(err, &ps) {
		t.Errorf("Load(missing) returned Problems %v", ps)
	}
}

func TestMerge(t *testing.T) {
	// Keys the file leaves out keep their defaults, the demo upstream included.
	got, err := parse(t, "listen: 0.0.0.0:80\nmax_body_bytes: 10\nmax_sessions_per_agent: 8\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Listen, want.MaxBodyBytes, want.MaxSessionsPerAgent = "0.0.0.0:80", 10, 8
	if diff := cmp.Diff(want, got, templates); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	// Declaring upstreams replaces the default set: no demo.
	got, err = parse(t, `
upstreams:
  files:
    command: [server]
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	want = Default()
	want.Upstreams = map[string]*Upstream{"files": {
		Name: "files", Command: []string{"server"}, ConnectTimeout: 5 * time.Second, CallTimeout: 60 * time.Second,
		Pos: Pos{File: "amg.yaml", Line: 2, Col: 3},
	}}
	want.Names = []string{"files"}
	if diff := cmp.Diff(want, got, templates); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestValidValues(t *testing.T) {
	for _, src := range []string{
		"listen: :0",
		"listen: \"[::]:65535\"",
		"listen: localhost:8080",
		"upstreams: { a: { url: \"http://localhost:3000/mcp\" } }",
		"upstreams: { a: { url: \"http://LOCALHOST/mcp\" } }",
		"upstreams: { a: { url: \"http://127.9.9.9/mcp\" } }",
		"upstreams: { a: { url: \"http://[::1]:8080/mcp\" } }",
		"upstreams: { a: { url: \"HTTPS://x.example/mcp?tenant=1\" } }",
		"upstreams: { a.b-c_d: { builtin: demo } }",
		"upstreams: { a: { url: \"https://x.example/mcp\", headers: { Authorization: \"Basic ${file:a}\", X-Dollar: \"$$${env:X}$ {}$\" } } }",
		"upstreams: { a: { command: [srv, \"\"], env: { _X1: \"\", Y: \"a${env:Y}b${env:Z}c\" } } }",
		"upstreams: { notion: { builtin: demo }, notion2: { builtin: demo }, notion-a: { builtin: demo } }",
		"listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nauthz_listen: 127.0.0.1:0\nbroker_listen: \"[::1]:8081\"\nxds_listen: 127.0.0.2:8081\nenvoy: { authz_address: \"amg:9001\" }",
		"envoy: { listen: \"127.0.0.1:10000\", egress_listen: \"127.0.0.2:10000\" }",
		"envoy: { listen: \"0.0.0.0:10001\", egress_listen: \"\" }",
		"envoy: { listen: \"127.0.0.1:0\", egress_listen: \"127.0.0.1:0\" }",
		"envoy: { listen: \"0.0.0.0:8081\" }", // Envoy's, beside amg's admin listener
		"envoy: { route_timeout: 16m1s }",
		"approvals: { ttl: 1m }\nenvoy: { route_timeout: 2m1s }",
		"console: { ready_days: 366 }",
		"approvals: { webhook: \"https://amg:${env:HOOK_PASSWORD}@hooks.example/amg\" }",
		"approvals: { webhook: \"https://${env:HOOK_TOKEN}@hooks.example/amg\" }",
		"approvals: { webhook: \"${vault:kv/data/amg#webhook}\" }",
		"approvals: { webhook: \"${vault:kv/data/amg#webhook}\", webhook_secret: \"${vault:kv/data/amg#webhook_secret}\" }",
		// Without an xDS server nothing is told to Envoy.
		"max_body_bytes: 4294967295\nenvoy: { listen: \"envoy:10000\", authz_address: \"amg:0\", broker_addresses: [\"amg:0\"], tracing_address: \"otel:0\" }",
		"xds_listen: 127.0.0.1:18000\nmax_body_bytes: 4294967294\nenvoy: { listen: \"localhost:10000\", egress_listen: \":10001\", tracing_address: \"otel:4317\" }",
	} {
		if _, err := parse(t, src, nil); err != nil {
			t.Errorf("Parse(%q):\n%v", src, err)
		}
	}
}

func TestProblems(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
	}{
		{"yaml syntax", "listen: [a\n",
			"amg.yaml:1:1: invalid YAML: did not find expected ',' or ']'"},
		{"second document", "listen: :1\n---\nlisten: :2\n",
			"amg.yaml:2:1: a config file holds one YAML document; this is a second one"},
		{"not a mapping", "- listen\n",
			"amg.yaml:1:1: must be a mapping, got a list"},
		{"unknown key", "lisen: :80\n",
			`amg.yaml:1:1: lisen: unknown field "lisen" (expected one of: listen, allowed_origins, admin_listen, authz_listen, broker_listen, xds_listen, envoy, vault, redis, approvals, console, audit, data_dir, policy_dir, max_body_bytes, max_sessions_per_agent, max_protocol_version, unprefixed_names, upstreams)`},
		{"envoy: unknown key", "envoy: { listener: x }\n",
			`amg.yaml:1:10: envoy.listener: unknown field "listener" (expected one of: listen, tls, egress_listen, egress_address, authz_address, broker_addresses, authz_timeout, route_timeout, tracing_address, tracing_sampling)`},
		{"envoy: bad broker address", "envoy: { broker_addresses: [amg, \"amg:8082\"] }\n",
			`amg.yaml:1:29: envoy.broker_addresses[0]: must be host:port such as 127.0.0.1:8080, got "amg": missing port in address`},
		{"envoy: no broker", "envoy: { broker_addresses: [] }\n",
			"amg.yaml:1:28: envoy.broker_addresses: must list at least one broker address"},
		{"envoy: tls not a mapping", "envoy: { tls: true }\n",
			"amg.yaml:1:15: envoy.tls: must be a mapping, got a boolean"},
		{"envoy: tls without its key", "envoy: { tls: { cert_file: /etc/envoy-tls/tls.crt } }\n",
			"amg.yaml:1:15: envoy.tls: needs key_file: a certificate and its key, both"},
		{"envoy: tls file relative", "envoy: { tls: { cert_file: tls.crt, key_file: /etc/envoy-tls/tls.key } }\n",
			`amg.yaml:1:28: envoy.tls.cert_file: must be an absolute path, as the server finds the file on its own host, got "tls.crt"`},
		{"envoy: tls version unknown", "envoy: { tls: { cert_file: /c, key_file: /k, min_version: 1.1 } }\n",
			`amg.yaml:1:59: envoy.tls.min_version: must be "1.2" or "1.3", got "1.1"`},
		{"envoy: tls version not a scalar", "envoy: { tls: { cert_file: /c, key_file: /k, min_version: [1.3] } }\n",
			`amg.yaml:1:59: envoy.tls.min_version: must be "1.2" or "1.3", got a list`},
		{"protocol version not a cap", "max_protocol_version: 2025-06-18\n",
			"amg.yaml:1:23: max_protocol_version: must be 2025-11-25 or 2026-07-28"},
		{"protocol version not a scalar", "max_protocol_version: [2026-07-28]\n",
			"amg.yaml:1:23: max_protocol_version: must be 2025-11-25 or 2026-07-28"},
		{"envoy: egress address without listener", "envoy: { egress_listen: \"\", egress_address: envoy:10001 }\n",
			"amg.yaml:1:45: envoy.egress_address: needs egress_listen: no Envoy listens for upstream traffic"},
		{"vault: token and approle", "vault: { address: https://v.example:8200, token: \"${env:T}\", approle: { role_id: r, secret_id: \"${env:S}\" } }\n",
			"amg.yaml:1:8: vault: needs exactly one of token and approle"},
		{"vault: literal token", "vault: { address: https://v.example:8200, token: " + planted + " }\n",
			`amg.yaml:1:50: vault.token: is a credential: take it from a secret reference such as "${env:VAULT_TOKEN}" rather than writing it in the config file`},
		{"vault: literal secret id", "vault: { address: https://v.example:8200, approle: { role_id: r, secret_id: \"$${" + planted + "\" } }\n",
			`amg.yaml:1:77: vault.approle.secret_id: is a credential: take it from a secret reference such as "${file:/run/secrets/vault_secret_id}" rather than writing it in the config file`},
		{"vault: cache ttl above the maximum", "vault: { address: https://v.example:8200, token: \"${env:T}\", cache_ttl: 11m }\n",
			"amg.yaml:1:73: vault.cache_ttl: must be at most 10m0s, which bounds how long a rotated secret goes unused, got 11m"},
		{"vault: address with a query", "vault: { address: \"https://v.example:8200/?t=" + planted + "\", token: \"${env:T}\" }\n",
			"amg.yaml:1:19: vault.address: must not have a query or fragment"},
		{"vault: address with a fragment", "vault: { address: \"https://v.example:8200/#" + planted + "\", token: \"${env:T}\" }\n",
			"amg.yaml:1:19: vault.address: must not have a query or fragment"},
		{"vault: address with an empty query", "vault: { address: \"https://v.example:8200?\", token: \"${env:T}\" }\n",
			"amg.yaml:1:19: vault.address: must not have a query or fragment"},
		{"vault: address without a host", "vault: { address: \"https:///\", token: \"${env:T}\" }\n",
			`amg.yaml:1:19: vault.address: must be an http(s) URL such as https://vault.example:8200, got "https:///"`},
		{"vault: address with a port and no host", "vault: { address: \"https://:8200\", token: \"${env:T}\" }\n",
			`amg.yaml:1:19: vault.address: must be an http(s) URL such as https://vault.example:8200, got "https://:8200"`},
		{"vault: approle without a secret id", "vault: { address: https://v.example:8200, approle: { role_id: r } }\n",
			"amg.yaml:1:8: vault.approle: needs role_id and secret_id"},
		{"vault: approle without a role id", "vault: { address: https://v.example:8200, approle: { secret_id: \"${env:S}\" } }\n",
			"amg.yaml:1:8: vault.approle: needs role_id and secret_id"},
		{"vault: address with credentials", "vault: { address: \"https://u:" + planted + "@v.example:8200\", token: \"${env:T}\" }\n",
			"amg.yaml:1:19: vault.address: must not contain credentials (Vault's own come from token or approle)"},
		{"vault: its token from vault", "vault: { address: https://v.example:8200, token: \"${vault:kv/data/v#t}\" }\n",
			"amg.yaml:1:50: vault.token: Vault's own credentials cannot come from Vault; use env: or file:"},
		{"vault: no address", "vault: { token: \"${env:T}\" }\n",
			"amg.yaml:1:8: vault: needs an address"},
		{"redis: bad address", "redis: { address: nowhere }\n",
			`amg.yaml:1:19: redis.address: must be host:port such as 127.0.0.1:8080, got "nowhere": missing port in address`},
		// A URL, as the CLI's --redis takes: its password is never quoted.
		{"redis: a URL as its address", "redis: { address: \"redis://amg:" + planted + "@redis:6379/0\" }\n",
			`amg.yaml:1:19: redis.address: a URL is not an address: give "redis:6379", the user in redis.username and the password in redis.password, as a secret reference such as "${env:REDIS_PASSWORD}"`},
		{"redis: a TLS URL as its address", "redis: { address: \"rediss://:" + planted + "@redis.example:6380\" }\n",
			`amg.yaml:1:19: redis.address: a URL is not an address: give "redis.example:6380", the user in redis.username and the password in redis.password, as a secret reference such as "${env:REDIS_PASSWORD}", and set redis.tls`},
		{"redis: user and password before the host", "redis: { address: \"amg:" + planted + "@redis:6379\" }\n",
			`amg.yaml:1:19: redis.address: a URL is not an address: give "redis:6379", the user in redis.username and the password in redis.password, as a secret reference such as "${env:REDIS_PASSWORD}"`},
		{"redis: a URL that does not parse", "redis: { address: \"redis://amg:" + planted + "@redis:port\" }\n",
			`amg.yaml:1:19: redis.address: a URL is not an address: give host:port, the user in redis.username and the password in redis.password, as a secret reference such as "${env:REDIS_PASSWORD}"`},
		{"envoy: a URL as an address", "envoy: { authz_address: \"http://u:" + planted + "@amg:9001\" }\n",
			`amg.yaml:1:25: envoy.authz_address: must be host:port such as 127.0.0.1:8080, not a URL or user@host: give "amg:9001"`},
		{"redis: no address", "redis: { password: \"${env:P}\", db: 1 }\n",
			"amg.yaml:1:8: redis: needs an address"},
		{"redis: no address, block style", "redis:\n  username: amg\n",
			"amg.yaml:2:3: redis: needs an address"},
		{"redis: literal password", "redis: { address: \"r:6379\", password: " + planted + " }\n",
			`amg.yaml:1:39: redis.password: is a credential: take it from a secret reference such as "${env:REDIS_PASSWORD}" rather than writing it in the config file`},
		{"redis: literal decision key", "redis: { address: \"r:6379\", decision_key: " + planted + " }\n",
			`amg.yaml:1:43: redis.decision_key: is a credential: take it from a secret reference such as "${vault:kv/data/amg#decision_key}" rather than writing it in the config file`},
		{"redis: literal audit key", "redis: { address: \"r:6379\", audit_key: " + planted + " }\n",
			`amg.yaml:1:40: redis.audit_key: is a credential: take it from a secret reference such as "${vault:kv/data/amg#audit_key}" rather than writing it in the config file`},
		{"vault: address port out of range", "vault: { address: \"https://v.example:82000\", token: \"${env:T}\" }\n",
			`amg.yaml:1:19: vault.address: port must be a number from 1 to 65535, got "82000"`},
		{"approvals: webhook port 0", "approvals: { webhook: \"https://hooks.example:0/services/" + planted + "\" }\n",
			`amg.yaml:1:23: approvals.webhook: port must be a number from 1 to 65535, got "0"`},
		{"approvals: literal webhook secret", "approvals: { webhook: https://hooks.example/amg, webhook_secret: whsec_" + planted + " }\n",
			`amg.yaml:1:66: approvals.webhook_secret: is a credential: take it from a secret reference such as "${env:AMG_WEBHOOK_SECRET}" rather than writing it in the config file`},
		{"approvals: webhook secret without a webhook", "approvals: { webhook_secret: \"${env:S}\" }\n",
			`amg.yaml:1:30: approvals.webhook_secret: signs what approvals.webhook is sent, and no webhook is set`},
		{"approvals: webhook secret with a webhook refused", "approvals: { webhook: ftp://x, webhook_secret: \"${env:S}\" }\n",
			`amg.yaml:1:23: approvals.webhook: must be an http(s) URL with a host`},
		{"console: trace url port out of range", "console: { trace_url: \"http://jaeger:166860/trace/{trace_id}\" }\n",
			`amg.yaml:1:23: console.trace_url: port must be a number from 1 to 65535, got "166860"`},
		{"approvals: webhook with a password", "approvals: { webhook: \"https://amg:" + planted + "@hooks.example/amg\" }\n",
			`amg.yaml:1:23: approvals.webhook: must not contain a credential (user:password@) written in the config file: take it from a secret reference, such as "https://amg:${env:HOOK_PASSWORD}@hooks.example/amg"`},
		{"approvals: webhook with a password and a reference", "approvals: { webhook: \"https://${env:HOOK_USER}:" + planted + "@hooks.example/${env:HOOK_PATH}\" }\n",
			`amg.yaml:1:23: approvals.webhook: must not contain a credential (user:password@) written in the config file: take it from a secret reference, such as "https://amg:${env:HOOK_PASSWORD}@hooks.example/amg"`},
		{"approvals: webhook with a token as its user", "approvals: { webhook: \"https://" + planted + "@hooks.example/amg\" }\n",
			`amg.yaml:1:23: approvals.webhook: must not contain a credential (user:password@) written in the config file: take it from a secret reference, such as "https://amg:${env:HOOK_PASSWORD}@hooks.example/amg"`},
		{"approvals: webhook with a password and its port a reference", "approvals: { webhook: \"https://amg:" + planted + "@hooks.example:${env:HOOK_PORT}/amg\" }\n",
			`amg.yaml:1:23: approvals.webhook: must not contain a credential (user:password@) written in the config file: take it from a secret reference, such as "https://amg:${env:HOOK_PASSWORD}@hooks.example/amg"`},
		{"approvals: webhook with a token as its user and its port a reference", "approvals: { webhook: \"https://" + planted + "@hooks.example:${env:HOOK_PORT}/amg\" }\n",
			`amg.yaml:1:23: approvals.webhook: must not contain a credential (user:password@) written in the config file: take it from a secret reference, such as "https://amg:${env:HOOK_PASSWORD}@hooks.example/amg"`},
		{"approvals: webhook without a host", "approvals: { webhook: \"https:///hook\" }\n",
			`amg.yaml:1:23: approvals.webhook: must be an http(s) URL with a host`},
		{"approvals: webhook with a port and no host", "approvals: { webhook: \"https://:443/hook\" }\n",
			`amg.yaml:1:23: approvals.webhook: must be an http(s) URL with a host`},
		{"approvals: bad webhook", "approvals: { webhook: ftp://x }\n",
			`amg.yaml:1:23: approvals.webhook: must be an http(s) URL with a host`},
		{"approvals: webhook with its secret in the path", "approvals: { webhook: \"ftp://hooks.example/services/" + planted + "\" }\n",
			`amg.yaml:1:23: approvals.webhook: must be an http(s) URL with a host`},
		{"console: trace url without the id", "console: { trace_url: http://jaeger:16686/search }\n",
			`amg.yaml:1:23: console.trace_url: must be an http(s) URL containing {trace_id}, got "http://jaeger:16686/search"`},
		{"console: zero ready days", "console: { ready_days: 0 }\n",
			`amg.yaml:1:24: console.ready_days: must be at least 1, got 0`},
		{"console: ready days past the counts the console shows", "console: { ready_days: 367 }\n",
			`amg.yaml:1:24: console.ready_days: must be at most 366, the days of shadow counts the console shows, got 367`},
		{"console: ready days a page view could not hold", "console: { ready_days: 100000000 }\n",
			`amg.yaml:1:24: console.ready_days: must be at most 366, the days of shadow counts the console shows, got 100000000`},
		{"console: zero ready calls", "console: { ready_min_calls: 0 }\n",
			`amg.yaml:1:29: console.ready_min_calls: must be at least 1, got 0`},
		{"envoy: zero timeout", "envoy: { route_timeout: 0s }\n",
			`amg.yaml:1:25: envoy.route_timeout: must be a positive duration such as 30s, 1m or 1h30m, got "0s"`},
		{"envoy: egress on the agent listener", "envoy: { listen: \"0.0.0.0:10000\", egress_listen: \"0.0.0.0:10000\" }\n",
			"amg.yaml:1:50: envoy.egress_listen: 0.0.0.0:10000 overlaps envoy.listen (0.0.0.0:10000): Envoy would keep only one of the two listeners, " +
				"whichever it happened to process first, and with the egress one on the agent port, agents would reach the upstreams without ext_authz"},
		{"envoy: egress under the default agent listener", "envoy: { egress_listen: \"127.0.0.1:10000\" }\n",
			"amg.yaml:1:25: envoy.egress_listen: 127.0.0.1:10000 overlaps envoy.listen (0.0.0.0:10000): Envoy would keep only one of the two listeners, " +
				"whichever it happened to process first, and with the egress one on the agent port, agents would reach the upstreams without ext_authz"},
		{"envoy: agent listener over the default egress", "envoy: { listen: \":10001\", egress_address: \"envoy:10001\" }\n",
			"amg.yaml:1:18: envoy.listen: :10001 overlaps envoy.egress_listen (127.0.0.1:10001): Envoy would keep only one of the two listeners, " +
				"whichever it happened to process first, and with the egress one on the agent port, agents would reach the upstreams without ext_authz"},
		{"amg's listeners overlap", "listen: 0.0.0.0:8081\nbroker_listen: \"[::]:9001\"\nxds_listen: localhost:8081\n",
			"amg.yaml:1:9: listen: 0.0.0.0:8081 overlaps admin_listen (127.0.0.1:8081): amg cannot serve two listeners on one address\n" +
				"amg.yaml:2:16: broker_listen: [::]:9001 overlaps authz_listen (127.0.0.1:9001): amg cannot serve two listeners on one address\n" +
				"amg.yaml:3:13: xds_listen: localhost:8081 overlaps listen (0.0.0.0:8081): amg cannot serve two listeners on one address\n" +
				"amg.yaml:3:13: xds_listen: localhost:8081 overlaps admin_listen (127.0.0.1:8081): amg cannot serve two listeners on one address"},
		{"xds: authz and the broker on ports picked at start", "authz_listen: 127.0.0.1:0\nbroker_listen: 127.0.0.1:0\nxds_listen: 127.0.0.1:18000\n",
			"amg.yaml:1:15: authz_listen: 127.0.0.1:0 takes a free port at each start, which the xDS server cannot tell Envoy: give it a port, or set envoy.authz_address\n" +
				"amg.yaml:2:16: broker_listen: 127.0.0.1:0 takes a free port at each start, which the xDS server cannot tell Envoy: give it a port, or set envoy.broker_addresses"},
		{"xds: values Envoy cannot be told", `xds_listen: 127.0.0.1:18000
max_body_bytes: 4294967295
envoy:
  listen: envoy:10000
  egress_listen: egress.internal:10001
  authz_address: amg:0
  broker_addresses: [amg-0:8082, "amg-1:", amg-2:0]
  tracing_address: otel:0
`, "amg.yaml:2:17: max_body_bytes: must be at most 4294967294 with xds_listen: Envoy's buffer limits are 32-bit\n" +
			"amg.yaml:4:11: envoy.listen: envoy:10000: Envoy listens on IP addresses only, not on host names: give an IP address, or 0.0.0.0 for all of them\n" +
			"amg.yaml:5:18: envoy.egress_listen: egress.internal:10001: Envoy listens on IP addresses only, not on host names: give an IP address, or 0.0.0.0 for all of them\n" +
			"amg.yaml:6:18: envoy.authz_address: amg:0: port 0 cannot be connected to: give the port Envoy is to connect to\n" +
			`amg.yaml:7:34: envoy.broker_addresses[1]: port must be a number from 0 to 65535, got ""` + "\n" +
			"amg.yaml:7:44: envoy.broker_addresses[2]: amg-2:0: port 0 cannot be connected to: give the port Envoy is to connect to\n" +
			"amg.yaml:8:20: envoy.tracing_address: otel:0: port 0 cannot be connected to: give the port Envoy is to connect to"},
		{"envoy: route timeout within the approval wait", "envoy: { route_timeout: 16m }\n",
			"amg.yaml:1:25: envoy.route_timeout: must be longer than approvals.ttl + the longest upstream call timeout (15m0s + 1m0s of upstreams.notion = 16m0s): " +
				"Envoy's route timeout covers the whole response, so it would cut off a call approved late while its upstream still answers, " +
				"and one whose approval expires before the broker can say so (left out, it is 17m0s)"},
		{"envoy: route timeout within a long call", `
approvals: { ttl: 5m }
envoy: { route_timeout: 6m }
upstreams:
  a: { builtin: demo, timeouts: { call: 30s } }
  b: { builtin: demo, timeouts: { call: 2m } }
  c: { builtin: demo, timeouts: { call: 2m } }
`, "amg.yaml:2:25: envoy.route_timeout: must be longer than approvals.ttl + the longest upstream call timeout (5m0s + 2m0s of upstreams.b = 7m0s): " +
			"Envoy's route timeout covers the whole response, so it would cut off a call approved late while its upstream still answers, " +
			"and one whose approval expires before the broker can say so (left out, it is 8m0s)"},
		{"envoy: bad tracing address", "envoy: { tracing_address: jaeger }\n",
			`amg.yaml:1:27: envoy.tracing_address: must be host:port such as 127.0.0.1:8080, got "jaeger": missing port in address`},
		{"envoy: sampling over 100", "envoy: { tracing_address: \"c:4317\", tracing_sampling: 150 }\n",
			`amg.yaml:1:55: envoy.tracing_sampling: must be a percentage from 0 to 100, got 150`},
		{"envoy: sampling not a number", "envoy: { tracing_address: \"c:4317\", tracing_sampling: \"50%\" }\n",
			`amg.yaml:1:55: envoy.tracing_sampling: must be a percentage from 0 to 100, got a string`},
		{"envoy: sampling with a leading zero", "envoy: { tracing_address: \"c:4317\", tracing_sampling: 050 }\n",
			`amg.yaml:1:55: envoy.tracing_sampling: ambiguous leading zero: write 50, or 0o50 for octal`},
		{"envoy: sampling NaN", "envoy: { tracing_address: \"c:4317\", tracing_sampling: .nan }\n",
			`amg.yaml:1:55: envoy.tracing_sampling: must be a percentage from 0 to 100, got .nan`},
		{"audit: unknown sync", "audit: { sync: sometimes }\n",
			`amg.yaml:1:16: audit.sync: must be always, interval or never, got "sometimes"`},
		{"audit: interval without interval sync", "audit: { sync: always, sync_interval: 5s }\n",
			`amg.yaml:1:39: audit.sync_interval: applies only to sync: interval, not always`},
		{"audit: tiny file", "audit: { max_file_bytes: 10 }\n",
			`amg.yaml:1:26: audit.max_file_bytes: must be at least 4096, got 10`},
		{"audit: unknown key", "audit: { file: x }\n",
			`amg.yaml:1:10: audit.file: unknown field "file" (expected one of: max_file_bytes, sync, sync_interval, stdout, stream_max_records)`},
		{"audit: an empty stream", "audit: { stream_max_records: 0 }\n",
			`amg.yaml:1:30: audit.stream_max_records: must be at least 1, got 0`},
		{"audit: stdout not a boolean", "audit: { stdout: yes please }\n",
			`amg.yaml:1:18: audit.stdout: must be true or false, got a string`},
		{"envoy: sampling without a collector", "envoy: { tracing_sampling: 10 }\n",
			`amg.yaml:1:28: envoy.tracing_sampling: needs tracing_address: without a collector Envoy does not trace`},
		{"unknown upstream key", `
upstreams:
  a:
    url: https://x.example/mcp
    header: {}
`, `amg.yaml:4:5: upstreams.a.header: unknown field "header" (expected one of: url, command, builtin, env, headers, timeouts, allow_insecure)`},
		{"unknown timeout key", "upstreams: { a: { builtin: demo, timeouts: { read: 1s } } }\n",
			`amg.yaml:1:46: upstreams.a.timeouts.read: unknown field "read" (expected one of: connect, call)`},
		{"duplicate key", "listen: :1\nlisten: :2\n",
			"amg.yaml:2:1: listen: duplicate key (first at line 1)"},
		{"duplicate upstream", `
upstreams:
  a: { builtin: demo }
  a: { builtin: demo }
`, "amg.yaml:3:3: upstreams.a: duplicate key (first at line 2)"},
		{"string wanted", "listen: 8080\n",
			"amg.yaml:1:9: listen: must be a string, got a number"},
		{"integer wanted", "max_body_bytes: lots\n",
			"amg.yaml:1:17: max_body_bytes: must be an integer, got a string"},
		{"integer too small", "max_body_bytes: 0\n",
			"amg.yaml:1:17: max_body_bytes: must be at least 1, got 0"},
		{"no sessions", "max_sessions_per_agent: 0\n",
			"amg.yaml:1:25: max_sessions_per_agent: must be at least 1, got 0"},
		{"no calls waiting for approval", "approvals: { max_pending_per_agent: 0 }\n",
			"amg.yaml:1:37: approvals.max_pending_per_agent: must be at least 1, got 0"},
		{"boolean wanted", "upstreams: { a: { url: \"http://x.example/\", allow_insecure: \"yes\" } }\n",
			"amg.yaml:1:24: upstreams.a.url: plain http is allowed only to loopback hosts (localhost, 127.0.0.0/8, ::1): use https, or set allow_insecure: true to send this upstream's traffic and credentials unencrypted\n" +
				"amg.yaml:1:61: upstreams.a.allow_insecure: must be true or false, got a string"},
		{"mapping wanted", "upstreams: [a]\n",
			"amg.yaml:1:12: upstreams: must be a mapping, got a list"},
		{"null upstream", "upstreams:\n  a:\n",
			"amg.yaml:2:5: upstreams.a: must be a mapping, got null"},
		{"no upstreams", "upstreams: {}\n",
			"amg.yaml:1:12: upstreams: must declare at least one upstream; leave upstreams out to use the built-in demo"},
		{"address without port", "listen: localhost\n",
			`amg.yaml:1:9: listen: must be host:port such as 127.0.0.1:8080, got "localhost": missing port in address`},
		{"address too many colons", "admin_listen: ::1:80\n",
			`amg.yaml:1:15: admin_listen: must be host:port such as 127.0.0.1:8080, got "::1:80": too many colons in address`},
		{"named port", "authz_listen: 127.0.0.1:grpc\n",
			`amg.yaml:1:15: authz_listen: port must be a number from 0 to 65535, got "grpc"`},
		{"port out of range", "authz_listen: 127.0.0.1:65536\n",
			`amg.yaml:1:15: authz_listen: port must be a number from 0 to 65535, got "65536"`},
		{"empty dir", "data_dir: \"\"\npolicy_dir: []\n",
			"amg.yaml:1:11: data_dir: must not be empty\n" +
				"amg.yaml:2:13: policy_dir: must be a string, got a list"},
		{"bad URL", "upstreams: { a: { url: \"https://x.example:port/mcp\" } }\n",
			`amg.yaml:1:24: upstreams.a.url: invalid URL: invalid port ":port" after host`},
		{"relative URL", "upstreams: { a: { url: x.example/mcp } }\n",
			"amg.yaml:1:24: upstreams.a.url: must be an absolute URL starting with https:// or http://"},
		{"URL scheme", "upstreams: { a: { url: \"ws://x.example/mcp\" } }\n",
			`amg.yaml:1:24: upstreams.a.url: scheme must be http or https, got "ws"`},
		{"URL without host", "upstreams: { a: { url: \"https:///mcp\" } }\n",
			"amg.yaml:1:24: upstreams.a.url: has no host"},
		{"URL with credentials", "upstreams: { a: { url: \"https://me:" + planted + "@x.example/mcp\" } }\n",
			"amg.yaml:1:24: upstreams.a.url: must not contain credentials (user:password@); send them in headers with a secret reference"},
		{"URL port out of range", "upstreams: { a: { url: \"https://x.example:99999/mcp\" } }\n",
			`amg.yaml:1:24: upstreams.a.url: port must be a number from 1 to 65535, got "99999"`},
		{"URL port 65536", "upstreams: { a: { url: \"http://127.0.0.1:65536/mcp\" } }\n",
			`amg.yaml:1:24: upstreams.a.url: port must be a number from 1 to 65535, got "65536"`},
		{"URL port 0", "upstreams: { a: { url: \"https://x.example:0/mcp?key=" + planted + "\" } }\n",
			`amg.yaml:1:24: upstreams.a.url: port must be a number from 1 to 65535, got "0"`},
		{"URL with fragment", "upstreams: { a: { url: \"https://x.example/mcp#top\" } }\n",
			"amg.yaml:1:24: upstreams.a.url: must not have a fragment (#...)"},
		{"URL with an empty fragment", "upstreams: { a: { url: \"https://x.example/mcp#\" } }\n",
			"amg.yaml:1:24: upstreams.a.url: must not have a fragment (#...)"},
		{"plain http to a remote host", "upstreams: { a: { url: \"http://mcp.example/mcp\" } }\n",
			"amg.yaml:1:24: upstreams.a.url: plain http is allowed only to loopback hosts (localhost, 127.0.0.0/8, ::1): use https, or set allow_insecure: true to send this upstream's traffic and credentials unencrypted"},
		{"allow_insecure false", "upstreams: { a: { url: \"http://10.0.0.1/mcp\", allow_insecure: false } }\n",
			"amg.yaml:1:24: upstreams.a.url: plain http is allowed only to loopback hosts (localhost, 127.0.0.0/8, ::1): use https, or set allow_insecure: true to send this upstream's traffic and credentials unencrypted"},
		{"names differing only in case", `
upstreams:
  notion:
    url: https://mcp.notion.example/mcp
  files:
    command: [srv]
  Notion:
    builtin: demo
  NOTION:
    url: https://other.example/mcp
`, "amg.yaml:6:3: upstreams.Notion: differs from notion (line 2) only in case; upstream names must differ in more, since Envoy's egress listener routes on them as host names, which it matches ignoring case\n" +
			"amg.yaml:8:3: upstreams.NOTION: differs from notion (line 2) only in case; upstream names must differ in more, since Envoy's egress listener routes on them as host names, which it matches ignoring case"},
		{"name with separator", "upstreams: { a__b: { builtin: demo } }\n",
			`amg.yaml:1:14: upstreams.a__b: invalid upstream name: server name "a__b" contains "__", the server__tool separator`},
		{"name ending in _", "upstreams: { a_: { builtin: demo } }\n",
			`amg.yaml:1:14: upstreams.a_: invalid upstream name: server name "a_" ends with '_', which makes server__tool ambiguous`},
		{"name with ..", "upstreams: { a..b: { builtin: demo } }\n",
			`amg.yaml:1:14: upstreams.a..b: invalid upstream name: server name "a..b" contains ".." at byte 1`},
		{"name with /", "upstreams: { a/b: { builtin: demo } }\n",
			`amg.yaml:1:14: upstreams.a/b: invalid upstream name: server name "a/b" contains path separator '/' at byte 1`},
		{"name too long", "upstreams: { " + strings.Repeat("n", 129) + ": { builtin: demo } }\n",
			"amg.yaml:1:14: upstreams." + strings.Repeat("n", 129) + ": invalid upstream name: server name of 129 bytes is longer than 128"},
		{"no kind", "upstreams: { a: { timeouts: { call: 1s } } }\n",
			"amg.yaml:1:14: upstreams.a: must set exactly one of url, command or builtin"},
		{"two kinds", `
upstreams:
  a:
    url: https://x.example/mcp
    command: [srv]
`, "amg.yaml:4:5: upstreams.a.command: url and command are both set; set exactly one of url, command or builtin"},
		{"keys of another kind", `
upstreams:
  a:
    command: [srv]
    headers: { X-A: b }
    allow_insecure: true
  b:
    url: https://x.example/mcp
    env: { A: b }
`, "amg.yaml:4:5: upstreams.a.headers: headers applies only to url upstreams, and this one has command\n" +
			"amg.yaml:5:5: upstreams.a.allow_insecure: allow_insecure applies only to url upstreams, and this one has command\n" +
			"amg.yaml:8:5: upstreams.b.env: env applies only to command upstreams, and this one has url"},
		{"unknown builtin", "upstreams: { a: { builtin: notion } }\n",
			`amg.yaml:1:28: upstreams.a.builtin: unknown builtin "notion" (expected one of: demo)`},
		{"empty command", "upstreams: { a: { command: [] } }\n",
			"amg.yaml:1:28: upstreams.a.command: must not be empty: the first element is the program to run"},
		{"command as a string", "upstreams: { a: { command: npx -y server } }\n",
			`amg.yaml:1:28: upstreams.a.command: must be a list such as ["npx", "-y", "server"], got a string`},
		{"command elements", "upstreams: { a: { command: [\"\", 8080, \"a\\0b\"] } }\n",
			"amg.yaml:1:29: upstreams.a.command[0]: program must not be empty\n" +
				"amg.yaml:1:33: upstreams.a.command[1]: must be a string, got a number\n" +
				"amg.yaml:1:39: upstreams.a.command[2]: contains a NUL byte"},
		{"env", "upstreams: { a: { command: [srv], env: { 1X: a, B: 2, C: \"a\\0b\", D: \"${env:}\" } } }\n",
			`amg.yaml:1:42: upstreams.a.env.1X: invalid environment variable name "1X" (expected A-Z, a-z, 0-9 and '_', not starting with a digit)` + "\n" +
				"amg.yaml:1:52: upstreams.a.env.B: must be a string, got a number\n" +
				"amg.yaml:1:58: upstreams.a.env.C: contains a NUL byte\n" +
				`amg.yaml:1:69: upstreams.a.env.D: env secret reference has no variable name (expected env:NAME)`},
		{"bad refs", `
upstreams:
  a:
    url: https://x.example/mcp
    headers:
      Authorization: "Bearer ${aws:x} ${env:A-B}"
      X-Token: "${NOTION_TOKEN}"
      X-Open: "a ${env:X"
      X-Empty: "${}"
      X-Vault: "${vault:kv/data/x}"
`, `amg.yaml:5:22: upstreams.a.headers.Authorization: secret reference has unknown scheme "aws" (expected env, file or vault)` + "\n" +
			`amg.yaml:5:22: upstreams.a.headers.Authorization: env secret reference has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)` + "\n" +
			"amg.yaml:6:16: upstreams.a.headers.X-Token: secret reference has no scheme (expected env:NAME, file:PATH or vault:PATH#FIELD)\n" +
			`amg.yaml:7:15: upstreams.a.headers.X-Open: unterminated "${" (close it with "}", or write "$${" for a literal "${")` + "\n" +
			"amg.yaml:8:16: upstreams.a.headers.X-Empty: empty secret reference\n" +
			`amg.yaml:9:16: upstreams.a.headers.X-Vault: vault secret reference has no field (expected vault:PATH#FIELD)`},
		{"forbidden headers", `
upstreams:
  a:
    url: https://x.example/mcp
    headers:
      Host: x.example
      content-length: "1"
      Transfer-Encoding: chunked
      Connection: close
      Upgrade: h2c
      Mcp-Session-Id: abc
      mcp-protocol-version: "2025-06-18"
      Mcp-Method: tools/call
      X-AMG-Role: admin
      x-amg-decision: allow
`, "amg.yaml:5:7: upstreams.a.headers.Host: Host is set by the HTTP transport and cannot be configured\n" +
			"amg.yaml:6:7: upstreams.a.headers.content-length: content-length is set by the HTTP transport and cannot be configured\n" +
			"amg.yaml:7:7: upstreams.a.headers.Transfer-Encoding: Transfer-Encoding is set by the HTTP transport and cannot be configured\n" +
			"amg.yaml:8:7: upstreams.a.headers.Connection: Connection is set by the HTTP transport and cannot be configured\n" +
			"amg.yaml:9:7: upstreams.a.headers.Upgrade: Upgrade is set by the HTTP transport and cannot be configured\n" +
			"amg.yaml:10:7: upstreams.a.headers.Mcp-Session-Id: Mcp-Session-Id is an MCP protocol header; the gateway sets it\n" +
			"amg.yaml:11:7: upstreams.a.headers.mcp-protocol-version: mcp-protocol-version is an MCP protocol header; the gateway sets it\n" +
			"amg.yaml:12:7: upstreams.a.headers.Mcp-Method: Mcp-Method is an MCP protocol header; the gateway sets it\n" +
			"amg.yaml:13:7: upstreams.a.headers.X-AMG-Role: X-AMG-Role is reserved: x-amg-* headers carry the gateway's own decisions\n" +
			"amg.yaml:14:7: upstreams.a.headers.x-amg-decision: x-amg-decision is reserved: x-amg-* headers carry the gateway's own decisions"},
		{"bad headers", `
upstreams:
  a:
    url: https://x.example/mcp
    headers:
      X Bad: a
      "": a
      X-Dup: a
      x-dup: b
      X-Ctl: "a\r\nX-Injected: b"
      Authorization: "Bearer ` + planted + `"
      Proxy-Authorization: "Basic $${env:X}"
`, "amg.yaml:5:7: upstreams.a.headers.X Bad: invalid header name \"X Bad\": allowed are letters, digits and !#$%&'*+-.^_`|~\n" +
			"amg.yaml:6:7: upstreams.a.headers.: header name is empty\n" +
			"amg.yaml:8:7: upstreams.a.headers.x-dup: duplicate header: same as X-Dup at line 7 (header names are case-insensitive)\n" +
			"amg.yaml:9:14: upstreams.a.headers.X-Ctl: value contains a line break or other control character\n" +
			`amg.yaml:10:22: upstreams.a.headers.Authorization: Authorization carries a credential: take it from a secret reference such as "Bearer ${env:TOKEN}" rather than writing it in the config file` + "\n" +
			`amg.yaml:11:28: upstreams.a.headers.Proxy-Authorization: Proxy-Authorization carries a credential: take it from a secret reference such as "Bearer ${env:TOKEN}" rather than writing it in the config file`},
		{"header value with DEL", "upstreams: { a: { url: \"https://x.example/\", headers: { X-A: \"a\\x7fb\" } } }\n",
			"amg.yaml:1:62: upstreams.a.headers.X-A: value contains a line break or other control character"},
		{"headers not a mapping", "upstreams: { a: { url: \"https://x.example/\", headers: [a] } }\n",
			"amg.yaml:1:55: upstreams.a.headers: must be a mapping, got a list"},
		{"durations", `
upstreams:
  a:
    builtin: demo
    timeouts:
      connect: 5
      call: 0s
  b:
    builtin: demo
    timeouts: { connect: 5 minutes, call: -1s }
`, "amg.yaml:5:16: upstreams.a.timeouts.connect: must be a string, got a number\n" +
			`amg.yaml:6:13: upstreams.a.timeouts.call: must be a positive duration such as 30s, 1m or 1h30m, got "0s"` + "\n" +
			`amg.yaml:9:26: upstreams.b.timeouts.connect: must be a positive duration such as 30s, 1m or 1h30m, got "5 minutes"` + "\n" +
			`amg.yaml:9:43: upstreams.b.timeouts.call: must be a positive duration such as 30s, 1m or 1h30m, got "-1s"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.src, nil)
			if err == nil {
				t.Fatalf("Parse succeeded, want:\n%s", tc.want)
			}
			if diff := cmp.Diff(tc.want, problemsOf(t, err)); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if strings.Contains(err.Error(), planted) {
				t.Errorf("problems reveal a planted secret:\n%v", err)
			}
		})
	}
}

// TestEgressListen checks that Envoy gets an egress listener only when
// something is to use it: without egress_address, a forwarder to the
// upstreams on Envoy's host would serve whoever reaches it, with no Check.
func TestEgressListen(t *testing.T) {
	for _, tc := range []struct{ src, listen, address string }{
		{"", "", ""},
		{"envoy: { egress_address: \"envoy:10001\" }\n", DefaultEgressListen, "envoy:10001"},
		{"envoy: { egress_address: \"envoy:9\", egress_listen: \"0.0.0.0:9\" }\n", "0.0.0.0:9", "envoy:9"},
		{"envoy: { egress_listen: \"127.0.0.1:9\" }\n", "127.0.0.1:9", ""},
		{"envoy: { egress_address: \"\" }\n", "", ""},
	} {
		cfg, err := parse(t, tc.src, nil)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.src, err)
		}
		if cfg.Envoy.EgressListen != tc.listen || cfg.Envoy.EgressAddress != tc.address {
			t.Errorf("Parse(%q): egress_listen %q, egress_address %q; want %q, %q", tc.src,
				cfg.Envoy.EgressListen, cfg.Envoy.EgressAddress, tc.listen, tc.address)
		}
	}
}

// Envoy reaches authz and the broker where the file says, or else where
// amg listens for them, set by the file or afterwards (amg serve's
// flags), as a client on the same host connects.
func TestEnvoyAddressesFollowTheListeners(t *testing.T) {
	for _, tc := range []struct {
		src          string
		authzListen  string // set after loading, as a flag does
		brokerListen string
		authz        string
		brokers      []string
	}{
		{src: "", authz: "127.0.0.1:9001", brokers: []string{DefaultBrokerAddress}},
		{src: "authz_listen: 127.0.0.1:9101\nbroker_listen: 127.0.0.1:9102\n", authz: "127.0.0.1:9101", brokers: []string{"127.0.0.1:9102"}},
		{src: "authz_listen: 0.0.0.0:9101\nbroker_listen: \"[::]:9102\"\n", authz: "127.0.0.1:9101", brokers: []string{"[::1]:9102"}},
		{src: "authz_listen: localhost:9101\nbroker_listen: :9102\n", authz: "localhost:9101", brokers: []string{"127.0.0.1:9102"}},
		{src: "", authzListen: "127.0.0.1:9201", brokerListen: "127.0.0.1:9202", authz: "127.0.0.1:9201", brokers: []string{"127.0.0.1:9202"}},
		{src: "envoy: { authz_address: \"amg:9001\", broker_addresses: [\"amg-0:8082\", \"amg-1:8082\"] }\n",
			authzListen: "127.0.0.1:9201", brokerListen: "127.0.0.1:9202", authz: "amg:9001", brokers: []string{"amg-0:8082", "amg-1:8082"}},
	} {
		cfg, err := parse(t, tc.src, nil)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.src, err)
		}
		if tc.authzListen != "" {
			cfg.AuthzListen, cfg.BrokerListen = tc.authzListen, tc.brokerListen
		}
		authz, aerr := cfg.EnvoyAuthzAddress()
		brokers, berr := cfg.EnvoyBrokerAddresses()
		if authz != tc.authz || !slices.Equal(brokers, tc.brokers) || aerr != nil || berr != nil {
			t.Errorf("Parse(%q), authz_listen %s, broker_listen %s: Envoy reaches authz at %q (%v), brokers at %q (%v); want %q, %q",
				tc.src, cfg.AuthzListen, cfg.BrokerListen, authz, aerr, brokers, berr, tc.authz, tc.brokers)
		}
	}
}

// Listeners moved after loading (amg serve's flags) are checked as the
// file's are: none on another, and with an xDS server, none Envoy cannot
// be told of.
func TestCheckListenersAfterFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"defaults", func(*Config) {}, ""},
		{"ports picked at start, without xDS", func(c *Config) { c.AuthzListen, c.BrokerListen = "127.0.0.1:0", "127.0.0.1:0" }, ""},
		{"ports picked at start, with xDS", func(c *Config) {
			c.AuthzListen, c.BrokerListen, c.XDSListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:18000"
		}, "authz_listen: 127.0.0.1:0 takes a free port at each start, which the xDS server cannot tell Envoy: give it a port, or set envoy.authz_address\n" +
			"broker_listen: 127.0.0.1:0 takes a free port at each start, which the xDS server cannot tell Envoy: give it a port, or set envoy.broker_addresses"},
		{"ports picked at start, with xDS told where", func(c *Config) {
			c.AuthzListen, c.XDSListen, c.Envoy.AuthzAddress = "127.0.0.1:0", "127.0.0.1:18000", "amg:9001"
		}, ""},
		{"xDS with Envoy on a host name", func(c *Config) { c.XDSListen, c.Envoy.Listen = "127.0.0.1:18000", "envoy:10000" },
			"envoy.listen: envoy:10000: Envoy listens on IP addresses only, not on host names: give an IP address, or 0.0.0.0 for all of them"},
		{"authz on the MCP endpoint", func(c *Config) { c.AuthzListen = "127.0.0.1:8080" },
			"authz_listen: 127.0.0.1:8080 overlaps listen (127.0.0.1:8080): amg cannot serve two listeners on one address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			tc.edit(cfg)
			var got string
			if err := cfg.CheckListeners(); err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("CheckListeners() = %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestRouteTimeout checks the route timeout a file leaves out: longer
// than a call can take, waiting for approval and then for its upstream.
func TestRouteTimeout(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want time.Duration
	}{
		{"", 17 * time.Minute},
		{"approvals: { ttl: 1h }", time.Hour + 2*time.Minute},
		{"upstreams: { a: { builtin: demo, timeouts: { call: 10m } }, b: { builtin: demo } }", 26 * time.Minute},
		{"approvals: { ttl: 30s }\nupstreams: { a: { url: \"https://x.example/mcp\", timeouts: { call: 5s } } }", 95 * time.Second},
		{"envoy: { route_timeout: 1h }", time.Hour},
	} {
		cfg, err := parse(t, tc.src, nil)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.src, err)
		}
		if got := cfg.Envoy.RouteTimeout; got != tc.want {
			t.Errorf("Parse(%q): route timeout %v, want %v", tc.src, got, tc.want)
		}
	}
}

// allowed_origins takes origins as a browser sends them and nothing
// else: every one that could never match, or would match more than it
// names, is reported where it is written.
func TestAllowedOrigins(t *testing.T) {
	cfg, err := parse(t, "allowed_origins: [https://app.example.com, \"HTTP://Tools.Example.com:8443\", \"http://[::1]:6274\"]\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"https://app.example.com", "HTTP://Tools.Example.com:8443", "http://[::1]:6274"}, cfg.AllowedOrigins); diff != "" {
		t.Errorf("allowed_origins (-want +got):\n%s", diff)
	}
	if cfg, err := parse(t, "allowed_origins: []\n", nil); err != nil || len(cfg.AllowedOrigins) != 0 {
		t.Errorf("empty list: %v, %v", cfg, err)
	}

	_, err = parse(t, `
allowed_origins:
  - https://app.example.com/
  - app.example.com
  - ftp://files.example.com
  - "*"
  - "null"
  - https://user@app.example.com
  - https://app.example.com?x=1
  - https://app.example.com:70000
  - "https://:443"
  - 8080
  - https://ok.example.com
  - HTTPS://OK.example.com:443
  - "http://bad host"
allowed_origins_extra: 1
`, nil)
	want := `amg.yaml:2:5: allowed_origins[0]: "https://app.example.com/" is not an origin as browsers send it (scheme://host[:port]): must not have a path, not even "/"
amg.yaml:3:5: allowed_origins[1]: "app.example.com" is not an origin as browsers send it (scheme://host[:port]): want scheme://host[:port]
amg.yaml:4:5: allowed_origins[2]: "ftp://files.example.com" is not an origin as browsers send it (scheme://host[:port]): scheme must be http or https
amg.yaml:5:5: allowed_origins[3]: must be an origin, scheme://host[:port], such as https://app.example.com: "*" would allow pages the operator never named; list each origin
amg.yaml:6:5: allowed_origins[4]: must be an origin, scheme://host[:port], such as https://app.example.com: "null" would allow pages the operator never named; list each origin
amg.yaml:7:5: allowed_origins[5]: "https://user@app.example.com" is not an origin as browsers send it (scheme://host[:port]): must not name a user
amg.yaml:8:5: allowed_origins[6]: "https://app.example.com?x=1" is not an origin as browsers send it (scheme://host[:port]): must not have a query or fragment
amg.yaml:9:5: allowed_origins[7]: "https://app.example.com:70000" is not an origin as browsers send it (scheme://host[:port]): port must be a number from 1 to 65535
amg.yaml:10:5: allowed_origins[8]: "https://:443" is not an origin as browsers send it (scheme://host[:port]): has no host
amg.yaml:11:5: allowed_origins[9]: must be a string, got a number
amg.yaml:13:5: allowed_origins[11]: HTTPS://OK.example.com:443 is the same origin as https://ok.example.com at line 12
amg.yaml:14:5: allowed_origins[12]: "http://bad host" is not an origin as browsers send it (scheme://host[:port]): invalid character " " in host name
amg.yaml:15:1: allowed_origins_extra: unknown field "allowed_origins_extra" (expected one of: listen, allowed_origins, admin_listen, authz_listen, broker_listen, xds_listen, envoy, vault, redis, approvals, console, audit, data_dir, policy_dir, max_body_bytes, max_sessions_per_agent, max_protocol_version, unprefixed_names, upstreams)`
	if diff := cmp.Diff(want, problemsOf(t, err)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	_, err = parse(t, "allowed_origins: https://app.example.com\n", nil)
	if want := "amg.yaml:1:18: allowed_origins: must be a list, got a string"; err == nil || err.Error() != want {
		t.Errorf("not a list: %v, want %s", err, want)
	}
}

// TestManyProblems checks that one file's problems are all reported,
// in file order, not only the first.
func TestManyProblems(t *testing.T) {
	_, err := parse(t, `
listen: localhost
admin_listen: 127.0.0.1:8081
bogus: 1
upstreams:
  notion:
    url: http://mcp.notion.example/mcp
    headers:
      Host: x
      Authorization: "Bearer ${env:NOTION-TOKEN}"
    timeouts: { connect: soon }
  files:
    command: []
  a__b:
    builtin: demo
    timeouts: { call: 1 }
  demo:
    builtin: demo
    url: https://x.example/mcp
max_body_bytes: -1
`, nil)
	want := `amg.yaml:1:9: listen: must be host:port such as 127.0.0.1:8080, got "localhost": missing port in address
amg.yaml:3:1: bogus: unknown field "bogus" (expected one of: listen, allowed_origins, admin_listen, authz_listen, broker_listen, xds_listen, envoy, vault, redis, approvals, console, audit, data_dir, policy_dir, max_body_bytes, max_sessions_per_agent, max_protocol_version, unprefixed_names, upstreams)
amg.yaml:6:10: upstreams.notion.url: plain http is allowed only to loopback hosts (localhost, 127.0.0.0/8, ::1): use https, or set allow_insecure: true to send this upstream's traffic and credentials unencrypted
amg.yaml:8:7: upstreams.notion.headers.Host: Host is set by the HTTP transport and cannot be configured
amg.yaml:9:22: upstreams.notion.headers.Authorization: env secret reference has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)
amg.yaml:10:26: upstreams.notion.timeouts.connect: must be a positive duration such as 30s, 1m or 1h30m, got "soon"
amg.yaml:12:14: upstreams.files.command: must not be empty: the first element is the program to run
amg.yaml:13:3: upstreams.a__b: invalid upstream name: server name "a__b" contains "__", the server__tool separator
amg.yaml:15:23: upstreams.a__b.timeouts.call: must be a string, got a number
amg.yaml:18:5: upstreams.demo.url: builtin and url are both set; set exactly one of url, command or builtin
amg.yaml:19:17: max_body_bytes: must be at least 1, got -1`
	if diff := cmp.Diff(want, problemsOf(t, err)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

// FuzzParse checks that Parse never panics on a config file, and that it
// returns either a config or the problems it found, each naming the file.
func FuzzParse(f *testing.F) {
	full, err := os.ReadFile(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full)
	f.Add([]byte("upstreams:\n  a:\n    url: http://x\n    headers:\n      X: \"${vault:kv/a#b}$${x}\"\n"))
	f.Add([]byte("listen: 127.0.0.1:8080\nadmin_listen: 127.0.0.1:8080\nupstreams:\n  a: {command: [x], env: {K: '${env:K'}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("amg.yaml", data, nil)
		if err == nil {
			if cfg == nil {
				t.Fatal("Parse returned neither a config nor an error")
			}
			return
		}
		var ps Problems
		if !errors.As(err, &ps) || len(ps) == 0 {
			t.Fatalf("error %v is not a list of problems", err)
		}
		for _, p := range ps {
			if p.Pos.File != "amg.yaml" || p.Msg == "" {
				t.Fatalf("problem %q does not say what is wrong where", p.String())
			}
		}
	})
}

func TestSecrets(t *testing.T) {
	const src = `
upstreams:
  notion:
    url: https://mcp.notion.example/mcp
    headers:
      Authorization: "Bearer ${env:NOTION_TOKEN}"
      X-Workspace: "${env:WORKSPACE}"
      X-Tenant: "${env:WORKSPACE}-${env:REGION}"
  files:
    command: [srv]
    env:
      TOKEN: "${env:NOTION_TOKEN}"
      KEY: "${env:FILES_KEY}"
  vaulted:
    url: https://v.example/mcp
    headers:
      Authorization: "${vault:kv/data/v#token}"
`
	t.Run("resolved", func(t *testing.T) {
		s := newEnvSource(map[string]string{"NOTION_TOKEN": planted, "WORKSPACE": "ws", "REGION": "eu", "FILES_KEY": "k"})
		_, err := parse(t, strings.Replace(src, "${vault:kv/data/v#token}", "${env:NOTION_TOKEN}", 1), &Options{Secrets: s})
		if err != nil {
			t.Fatal(err)
		}
		// Each distinct reference is resolved once, however often it is written.
		want := map[secrets.Ref]int{{Scheme: "env", Path: "NOTION_TOKEN"}: 1, {Scheme: "env", Path: "WORKSPACE"}: 1, {Scheme: "env", Path: "REGION"}: 1, {Scheme: "env", Path: "FILES_KEY"}: 1}
		if diff := cmp.Diff(want, s.calls); diff != "" {
			t.Errorf("Resolve calls (-want +got):\n%s", diff)
		}
	})
	t.Run("missing", func(t *testing.T) {
		// Every place a missing reference is written is a problem, also
		// when the file has other problems.
		s := newEnvSource(map[string]string{"REGION": "", "FILES_KEY": "a\nb"})
		_, err := parse(t, src+"listen: nope\n", &Options{Secrets: s})
		want := `amg.yaml:5:22: upstreams.notion.headers.Authorization: env:NOTION_TOKEN is not set
amg.yaml:6:20: upstreams.notion.headers.X-Workspace: env:WORKSPACE is not set
amg.yaml:7:17: upstreams.notion.headers.X-Tenant: env:WORKSPACE is not set
amg.yaml:7:17: upstreams.notion.headers.X-Tenant: env:REGION is empty
amg.yaml:11:14: upstreams.files.env.TOKEN: env:NOTION_TOKEN is not set
amg.yaml:16:22: upstreams.vaulted.headers.Authorization: vault:kv/data/v#token: vault secrets need a vault source
amg.yaml:17:9: listen: must be host:port such as 127.0.0.1:8080, got "nope": missing port in address`
		if diff := cmp.Diff(want, problemsOf(t, err)); diff != "" {
			t.Errorf("problems (-want +got):\n%s", diff)
		}
	})
	t.Run("unusable values", func(t *testing.T) {
		// A header value must not smuggle a line break (header injection)
		// and an environment value must not hold a NUL; the problem names
		// the reference, never the value.
		s := newEnvSource(map[string]string{"NOTION_TOKEN": planted + "\r\nX-Evil: 1", "WORKSPACE": "ws", "REGION": "eu", "FILES_KEY": planted + "\x00"})
		_, err := parse(t, strings.Replace(src, "${vault:kv/data/v#token}", "x ${env:REGION}", 1), &Options{Secrets: s})
		want := `amg.yaml:5:22: upstreams.notion.headers.Authorization: env:NOTION_TOKEN holds a line break or other control character, which cannot go in a header value
amg.yaml:12:12: upstreams.files.env.KEY: env:FILES_KEY holds a NUL byte, which cannot go in an environment variable`
		if diff := cmp.Diff(want, problemsOf(t, err)); diff != "" {
			t.Errorf("problems (-want +got):\n%s", diff)
		}
		if strings.Contains(err.Error(), planted) {
			t.Errorf("problems reveal the secret:\n%v", err)
		}
	})
	t.Run("webhook secret", func(t *testing.T) {
		// What the webhook's signing secret resolves to must be a key
		// written as the Standard Webhooks specification writes one; a
		// problem never shows it.
		key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte(planted), 2)[:32])
		const bad = `amg.yaml:3:19: approvals.webhook_secret: must be "whsec_" and the base64 of 24 to 64 random bytes, such as the output of: echo whsec_$(openssl rand -base64 32)`
		for _, tc := range []struct{ secret, want string }{
			{"whsec_" + key, ""},
			{key, bad},                         // no prefix
			{"whsec_" + key[:len(key)-1], bad}, // not base64
			{"whsec_" + key + "\r", bad},       // base64 and a line break, which the decoder would skip
			{"whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte(planted), 2)[:23]), bad}, // too short
			{"whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte(planted), 9)[:65]), bad},
		} {
			s := newEnvSource(map[string]string{"HOOK_SECRET": tc.secret})
			_, err := parse(t, "approvals:\n  webhook: https://hooks.example/amg\n  webhook_secret: \"${env:HOOK_SECRET}\"\n", &Options{Secrets: s})
			if tc.want == "" {
				if err != nil {
					t.Errorf("%s: %v", tc.secret, err)
				}
				continue
			}
			if got := problemsOf(t, err); got != tc.want {
				t.Errorf("%s: problems %q, want %q", tc.secret, got, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), tc.secret) {
				t.Errorf("problems reveal the secret:\n%v", err)
			}
		}
	})
	t.Run("webhook", func(t *testing.T) {
		// The approval webhook's URL may take its secret from a
		// reference; what the references make of it must be an http(s)
		// URL, and a problem never shows the URL.
		for _, tc := range []struct{ hook, want string }{
			{"https://hooks.example/services/${env:HOOK_SECRET}", ""},
			{"${env:HOOK_URL}", ""},
			{"${env:HOOK_MISSING}", "amg.yaml:2:12: approvals.webhook: env:HOOK_MISSING is not set"},
			{"${env:HOOK_SECRET}", "amg.yaml:2:12: approvals.webhook: must be an http(s) URL with a host once its references are resolved"},
			{"ftp://hooks.example/${env:HOOK_SECRET}", "amg.yaml:2:12: approvals.webhook: must be an http(s) URL with a host once its references are resolved"},
			{"hooks.example/amg", "amg.yaml:2:12: approvals.webhook: must be an http(s) URL with a host"},
			{"${env:HOOK_BAD_PORT}", `amg.yaml:2:12: approvals.webhook: port must be a number from 1 to 65535, got "99999" once its references are resolved`},
		} {
			s := newEnvSource(map[string]string{"HOOK_SECRET": planted, "HOOK_URL": "https://hooks.example/services/" + planted,
				"HOOK_BAD_PORT": "https://hooks.example:99999/services/" + planted})
			cfg, err := parse(t, "approvals:\n  webhook: \""+tc.hook+"\"\n", &Options{Secrets: s})
			if tc.want == "" {
				if err != nil || cfg.ApprovalWebhook.String() != tc.hook {
					t.Errorf("%s: %v, webhook %q", tc.hook, err, cfg.ApprovalWebhook.String())
				}
				continue
			}
			if got := problemsOf(t, err); got != tc.want {
				t.Errorf("%s: problems %q, want %q", tc.hook, got, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), planted) {
				t.Errorf("%s: problems reveal the secret:\n%v", tc.hook, err)
			}
		}
	})
	t.Run("credentials", func(t *testing.T) {
		// Every credential's reference is resolved, each reported where
		// it is written.
		for _, tc := range []struct{ src, want string }{
			{"redis:\n  address: r:6379\n  password: \"${env:MISSING}\"\n", "amg.yaml:3:13: redis.password: env:MISSING is not set"},
			{"redis:\n  address: r:6379\n  decision_key: \"${env:MISSING}\"\n", "amg.yaml:3:17: redis.decision_key: env:MISSING is not set"},
			{"redis:\n  address: r:6379\n  audit_key: \"${env:MISSING}\"\n", "amg.yaml:3:14: redis.audit_key: env:MISSING is not set"},
			{"vault:\n  address: https://v.example:8200\n  token: \"${env:MISSING}\"\n", "amg.yaml:3:10: vault.token: env:MISSING is not set"},
			{"vault:\n  address: https://v.example:8200\n  approle:\n    role_id: r\n    secret_id: \"${env:MISSING}\"\n",
				"amg.yaml:5:16: vault.approle.secret_id: env:MISSING is not set"},
		} {
			cfg, err := parse(t, tc.src, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := problemsOf(t, cfg.CheckSecrets(context.Background(), newEnvSource(nil))); got != tc.want {
				t.Errorf("problems %q, want %q", got, tc.want)
			}
		}
	})
	t.Run("shared keys", func(t *testing.T) {
		// A shared key shorter than a replica takes is reported at load,
		// before Redis is dialled; text around a reference is part of
		// the key. A problem never shows the key.
		key := strings.Repeat(planted, 2)[:MinSharedKeyLen]
		for _, tc := range []struct{ decision, want string }{
			{"${env:KEY}", ""},
			{"x${env:SHORT}", ""},
			{"${env:BINARY}", ""}, // any bytes: a key is no header value
			{"${env:SHORT}", "amg.yaml:3:17: redis.decision_key: the key is 31 bytes once its references are resolved, want at least 32"},
			{"${env:EMPTY}", "amg.yaml:3:17: redis.decision_key: env:EMPTY is empty"},
		} {
			s := newEnvSource(map[string]string{"KEY": key, "SHORT": key[1:], "BINARY": "\x00\n" + key[2:], "EMPTY": ""})
			_, err := parse(t, "redis:\n  address: r:6379\n  decision_key: \""+tc.decision+"\"\n  audit_key: \"${env:KEY}\"\n", &Options{Secrets: s})
			if tc.want == "" {
				if err != nil {
					t.Errorf("%s: %v", tc.decision, err)
				}
				continue
			}
			if got := problemsOf(t, err); got != tc.want {
				t.Errorf("%s: problems %q, want %q", tc.decision, got, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), key[1:]) {
				t.Errorf("problems reveal the key:\n%v", err)
			}
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cfg, err := parse(t, src, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := cfg.CheckSecrets(ctx, secrets.NewDefault(nil)); !errors.Is(err, context.Canceled) {
			t.Errorf("CheckSecrets with a cancelled context = %v, want context.Canceled", err)
		}
	})
}

// TestNoSecretInErrors plants one value everywhere a careless message
// could pick it up and checks no error shows it.
func TestNoSecretInErrors(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("file modes are not checked on Windows")
	}
	dir := t.TempDir()
	group := filepath.Join(dir, "group-readable")
	if err := os.WriteFile(group, []byte(planted), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(group, 0o644); err != nil {
		t.Fatal(err)
	}
	src := `
upstreams:
  a:
    url: "https://u:` + planted + `@x.example/mcp"
    headers:
      Authorization: "Bearer ` + planted + `"
      X-Ctl: "` + planted + `\n"
      X-Env: "${env:PLANTED}"
      X-File: "${file:` + filepath.ToSlash(group) + `}"
      X-Pasted: "${` + planted + `}"
  b:
    command: [srv]
    env: { K: "${env:NUL}", L: "` + planted + `\u0000" }
`
	s := newEnvSource(map[string]string{"PLANTED": planted + "\n", "NUL": planted + "\x00"})
	_, err := parse(t, src, &Options{Secrets: s})
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	got := problemsOf(t, err)
	if strings.Contains(got, planted) {
		t.Errorf("problems reveal the planted secret:\n%s", got)
	}
	if n := strings.Count(got, "\n") + 1; n != 8 {
		t.Errorf("got %d problems, want 8:\n%s", n, got)
	}
}

// redis.tls is true for the system's CAs or a mapping of files, each read
// at load so that a bad one is reported where the config names it.
func TestRedisTLS(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte(testCA(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(src string) (*Config, error) { return Parse("amg.yaml", []byte(src), nil) }

	cfg, err := load("redis: { address: \"r:6380\", username: amg, tls: true }\n")
	if err != nil || cfg.Redis.TLS == nil || cfg.Redis.Username != "amg" {
		t.Fatalf("tls: true gave %+v, %v", cfg.Redis, err)
	}
	cfg, err = load("redis: { address: \"r:6379\", tls: false }\n")
	if err != nil || cfg.Redis.TLS != nil {
		t.Errorf("tls: false gave %+v, %v", cfg.Redis.TLS, err)
	}
	cfg, err = load("redis:\n  address: \"r:6380\"\n  tls:\n    ca_file: " + ca + "\n    server_name: redis.internal\n")
	if err != nil || cfg.Redis.TLS == nil || cfg.Redis.TLS.CAFile != ca || cfg.Redis.TLS.ServerName != "redis.internal" {
		t.Fatalf("tls mapping gave %+v, %v", cfg.Redis.TLS, err)
	}
	if tc, err := cfg.Redis.TLS.Config(); err != nil || tc.RootCAs == nil || tc.ServerName != "redis.internal" || tc.MinVersion != tls.VersionTLS12 {
		t.Errorf("Config() = %+v, %v", tc, err)
	}

	for _, tc := range []struct{ name, src, want string }{
		{"missing CA file", "redis: { address: \"r:1\", tls: { ca_file: " + filepath.Join(dir, "none.pem") + " } }\n",
			"amg.yaml:1:31: redis.tls: open " + filepath.Join(dir, "none.pem") + ": no such file or directory"},
		{"not a CA file", "redis: { address: \"r:1\", tls: { ca_file: " + junk + " } }\n",
			"amg.yaml:1:31: redis.tls: " + junk + " holds no PEM certificate"},
		{"cert without key", "redis: { address: \"r:1\", tls: { cert_file: " + ca + " } }\n",
			"amg.yaml:1:31: redis.tls: cert_file and key_file go together"},
		{"unknown key", "redis: { address: \"r:1\", tls: { verify: false } }\n",
			`amg.yaml:1:33: redis.tls.verify: unknown field "verify" (expected one of: ca_file, server_name, cert_file, key_file)`},
		{"empty file name", "redis: { address: \"r:1\", tls: { ca_file: \"\" } }\n",
			"amg.yaml:1:42: redis.tls.ca_file: must not be empty (leave it out instead)"},
		{"not a boolean", "redis: { address: \"r:1\", tls: on please }\n",
			"amg.yaml:1:31: redis.tls: must be true or false, got a string"},
	} {
		_, err := load(tc.src)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got\n%v\nwant\n%s", tc.name, err, tc.want)
		}
	}
}

// testCA is a self-signed CA certificate in PEM.
func testCA(t *testing.T) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

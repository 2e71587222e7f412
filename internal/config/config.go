// Package config loads amg.yaml, the gateway's own configuration: where it
// listens, where its data and policies live, and which upstream MCP servers
// it fronts with which credentials. Like the policy compiler, the loader
// reports every problem in the file at once, each as
// file:line:col: yaml.path: message.
//
// Every key is optional; what the file leaves out keeps its Default value:
//
//	listen: 127.0.0.1:8080          # agent-facing MCP endpoint (path MCPPath)
//	allowed_origins: []             # Origin values let through, e.g. [https://app.example.com]
//	admin_listen: 127.0.0.1:8081    # web console and HTTP API
//	authz_listen: 127.0.0.1:9001    # ext_authz gRPC for Envoy
//	broker_listen: ""               # Envoy mode: the broker, for Envoy's routes ("" off)
//	xds_listen: ""                  # Envoy mode: the ADS server Envoy is configured by ("" off)
//	envoy:                          # what the xDS server tells Envoy
//	  listen: 0.0.0.0:10000         # Envoy's agent listener
//	  tls:                          # the agent listener over TLS (left out: plain HTTP)
//	    cert_file: /etc/envoy-tls/tls.crt  # PEM files, as Envoy finds them on its host
//	    key_file: /etc/envoy-tls/tls.key
//	    min_version: "1.2"          # or "1.3"
//	  egress_listen: ""             # Envoy's listener for the upstreams ("" none;
//	                                #   127.0.0.1:10001 when egress_address is set)
//	  egress_address: ""            # where amg reaches it; set: upstream HTTP goes through Envoy
//	  authz_address: 127.0.0.1:9001   # where Envoy reaches AMG's ext_authz (default: authz_listen's)
//	  broker_addresses: [127.0.0.1:8082]  # where Envoy reaches AMG's broker replicas (default: broker_listen's)
//	  authz_timeout: 2s
//	  route_timeout: 17m            # default: approvals.ttl + the longest call timeout + 1m
//	vault:                          # for ${vault:...} references (left out: none)
//	  address: https://vault.example:8200
//	  token: "${env:VAULT_TOKEN}"   # or approle: { role_id: ..., secret_id: "${file:...}" }
//	  cache_ttl: 30s                # at most 10m
//	redis:                          # shared state for replicas (left out: standalone)
//	  address: redis:6379
//	  password: "${env:REDIS_PASSWORD}"  # credentials only ever as references
//	  db: 0
//	approvals:                      # calls that need a human
//	  ttl: 15m                      # how long one waits for a decision
//	  max_pending_per_agent: 16     # calls one agent may have waiting at once, per replica
//	  webhook: https://hooks.example/amg  # told of each new one ("" none); its secret part
//	                                #   from a reference: "https://hooks.example/${env:HOOK_PATH}"
//	  webhook_secret: "${env:AMG_WEBHOOK_SECRET}"  # signs what it is sent (Standard Webhooks): whsec_ and base64
//	console:                        # the web console on the admin listener
//	  ready_days: 7                 # shadow roles at zero this long are ready to enforce (at most 366),
//	  ready_min_calls: 1            #   over at least this many calls in those days
//	  trace_url: ""                 # e.g. http://localhost:16686/trace/{trace_id}
//	  staged_policy_dir: ""         # a next policy the console can replay against
//	data_dir: ./data
//	policy_dir: ./policies
//	max_body_bytes: 1048576
//	max_protocol_version: 2025-11-25  # or 2026-07-28: also serve agents without sessions
//	unprefixed_names: false          # true: one upstream, its names unchanged
//	upstreams:                      # replaces the default set (the demo) entirely
//	  notion:
//	    url: https://mcp.notion.example/mcp        # MCP Streamable HTTP
//	    headers:
//	      Authorization: "Bearer ${env:NOTION_TOKEN}"
//	      X-Workspace: ws_abc123
//	    timeouts: { connect: 5s, call: 60s }
//	  files:
//	    command: ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/data"]
//	    env: { HOME: /home/mcp, API_KEY: "${file:/run/secrets/files_key}" }
//	  demo:
//	    builtin: demo
//
// allowed_origins holds origins as browsers send them in the Origin header,
// scheme://host[:port] with no path: a request whose Origin is not listed
// is refused (403), in standalone and Envoy mode alike, while one without
// Origin, as non-browser agents send, passes. Loopback origins
// (http://localhost:PORT, http://127.0.0.1:PORT, any port) are allowed
// without being listed on requests addressed to a loopback host, so an
// empty list refuses every Origin but those of pages on the gateway's own
// machine that reach it on loopback. The gateway answers no CORS
// preflight: the list lets Origin values through, it does not let a
// browser page on another origin call the gateway.
//
// An upstream has exactly one of url (MCP Streamable HTTP), command (an MCP
// server run as a child process speaking stdio) or builtin (a server
// compiled into amg). Header and environment values are templates: ${REF}
// inserts the secret REF names (env:NAME, file:PATH or vault:PATH#FIELD,
// see package secrets), with any literal text around it; $${ writes a
// literal ${. Credentials never appear in the file itself.
package config

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/diag"
	"github.com/amgateway/amg/internal/secrets"
)

// MCPPath is the path of the MCP endpoint on Listen. It is fixed so that
// every agent configuration and Envoy route agrees on it.
const MCPPath = "/mcp"

// SessionProtocolVersion is the newest MCP protocol version with
// sessions, and SessionlessProtocolVersion the first without.
const (
	SessionProtocolVersion     = "2025-11-25"
	SessionlessProtocolVersion = "2026-07-28"
)

// agentProtocolCaps are the values of max_protocol_version.
var agentProtocolCaps = []string{SessionProtocolVersion, SessionlessProtocolVersion}

// Timeouts an upstream gets when the file sets none.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultCallTimeout    = 60 * time.Second
)

// Timeouts of the listeners agents reach, amg's own and Envoy's alike. A
// request's headers must arrive within HeaderTimeout and the whole
// request within ReadTimeout, so that a client trickling its body cannot
// hold a connection, and what serves it, for as long as it likes; a
// connection idle between requests is closed after IdleTimeout. The
// answer takes as long as it takes: a parked call waits for a human.
const (
	HeaderTimeout = 10 * time.Second
	ReadTimeout   = 30 * time.Second
	IdleTimeout   = 2 * time.Minute
)

// DefaultEgressListen is Envoy's egress listener when a file sets
// envoy.egress_address and leaves envoy.egress_listen out. With neither,
// there is none: a forwarder to the upstreams that nothing uses is one
// that anyone on Envoy's host could use, with no Check.
const DefaultEgressListen = "127.0.0.1:10001"

// routeTimeoutMargin is what the route timeout a file leaves out adds to
// LongestRequest: time for the Check, the broker's own work and its
// answer.
const routeTimeoutMargin = time.Minute

// Config is the gateway configuration.
type Config struct {
	// Listen is the agent-facing MCP endpoint of the standalone front.
	Listen string
	// AllowedOrigins are the Origin header values (scheme://host[:port])
	// let through, in either mode: a request with another Origin header
	// is refused, one without passes. Loopback
	// origins need not be listed for requests to a loopback host.
	AllowedOrigins []string
	// AdminListen serves the web console and the operator HTTP API.
	AdminListen string
	// AuthzListen serves Envoy's ext_authz gRPC Check.
	AuthzListen string
	// BrokerListen serves the broker over plain HTTP, for Envoy to route
	// allowed requests to; empty means no such listener.
	BrokerListen string
	// XDSListen serves the ADS (xDS) gRPC API Envoy is configured by;
	// empty means no xDS server.
	XDSListen string
	// Envoy is what the xDS server configures Envoy with.
	Envoy Envoy
	// Vault, when its Address is set, resolves vault: references.
	Vault Vault
	// Redis, when its Address is set, holds what replicas share: tokens,
	// rate limits and approvals. Without it all of that is per process.
	Redis Redis
	// ApprovalTTL is how long a call that needs approval waits for a
	// decision; ApprovalWebhook, if set, is POSTed each new approval. The
	// webhook's URL may hold secret references, as Slack- and Teams-style
	// URLs carry their secret in the path.
	ApprovalTTL     time.Duration
	ApprovalWebhook Template
	// ApprovalWebhookSecret, if set, signs what the webhook is sent, as
	// the Standard Webhooks specification does (see WebhookKey). Only
	// ever a secret reference.
	ApprovalWebhookSecret Template
	// MaxPendingApprovalsPerAgent bounds the calls one agent may have
	// waiting for approval on a replica at once; each holds its request
	// in the approval store.
	MaxPendingApprovalsPerAgent int
	// Console tunes the web console.
	Console Console
	// Audit tunes the audit log's devices.
	Audit Audit
	// DataDir and PolicyDir are used as written: a relative path is
	// relative to the working directory, as on the command line.
	DataDir   string
	PolicyDir string
	// MaxBodyBytes is the largest request body accepted; larger is denied.
	MaxBodyBytes int
	// MaxSessionsPerAgent bounds the MCP sessions one agent may have open
	// on a replica at once; each may hold a connection, or a process, per
	// upstream.
	MaxSessionsPerAgent int
	// MaxProtocolVersion is the newest MCP protocol version agents are
	// served: 2025-11-25, the newest with sessions, or 2026-07-28, which
	// has none and whose agents get no list changes, resource updates, nor
	// an upstream's sampling, elicitation or log messages (see the README,
	// "Protocol versions").
	MaxProtocolVersion string
	// UnprefixedNames shows agents the names of the one upstream unchanged
	// (echo rather than server__echo), as if they talked to it directly.
	// Only valid with exactly one upstream.
	UnprefixedNames bool
	// Upstreams are the MCP servers behind the gateway, by name.
	Upstreams map[string]*Upstream
	// Names are the keys of Upstreams, sorted.
	Names []string
}

// Audit says where decisions are recorded: always the hash-chained file in
// DataDir, which replay reads (and the console, unless replicas share a
// Redis, where each ships its file), and also stdout if asked.
type Audit struct {
	// MaxFileBytes is the size at which the file rotates.
	MaxFileBytes int64
	// Sync is when the file is forced to stable storage; SyncInterval is
	// the period of audit.SyncOnInterval.
	Sync         audit.SyncPolicy
	SyncInterval time.Duration
	// Stdout also writes each record to standard output as a JSON line,
	// for a log pipeline. A decision then counts as recorded when either
	// device records it.
	Stdout bool
	// StreamMaxRecords is about how many records the audit stream that
	// replicas share in Redis keeps, the latest; without Redis there is no
	// stream.
	StreamMaxRecords int64
}

// Console tunes the operator's web console.
type Console struct {
	// ReadyDays is how many days a shadow role's would-be denials must
	// stay at zero before the console calls it ready to enforce; at most
	// shadow.MaxDays.
	ReadyDays int
	// ReadyMinCalls is how many calls a shadow role must have made in
	// those days: with none, zero would-be denials say nothing.
	ReadyMinCalls int
	// TraceURL links audit records to a trace viewer; {trace_id} in it
	// is replaced by the record's trace id. Empty: no links.
	TraceURL string
	// StagedPolicyDir, if set, is a next policy the console replays the
	// audit log against.
	StagedPolicyDir string
}

// Envoy describes the Envoy in front of AMG, as the xDS server configures
// it. Addresses are host:port as Envoy reaches them (in a container
// network, by service name).
type Envoy struct {
	// Listen is Envoy's agent-facing listener.
	Listen string
	// TLS, when set, makes the agent listener serve TLS; nil serves plain
	// HTTP, bearer tokens and all.
	TLS *ListenTLS
	// EgressListen is a listener through which the broker can reach the
	// upstreams (one cluster each); empty means none. It is
	// DefaultEgressListen when a file sets EgressAddress and leaves it out.
	EgressListen string
	// EgressAddress is where the broker reaches that listener (host:port
	// as amg sees Envoy). When set, the broker sends its HTTP upstream
	// traffic there instead of to the upstreams directly, so that Envoy's
	// TLS, circuit breakers and outlier detection apply.
	EgressAddress string
	// AuthzAddress is AMG's ext_authz gRPC service; empty means
	// authz_listen, as Envoy on this host reaches it (see
	// Config.EnvoyAuthzAddress).
	AuthzAddress string
	// BrokerAddresses are the broker replicas; Envoy hashes each MCP
	// session to one of them. Empty means broker_listen, as Envoy on this
	// host reaches it (see Config.EnvoyBrokerAddresses).
	BrokerAddresses []string
	// AuthzTimeout bounds one Check; RouteTimeout one agent request,
	// which may wait for a human's approval and then for its upstream.
	// RouteTimeout must be longer than Config.LongestRequest: Envoy counts
	// the whole streamed response against it.
	AuthzTimeout time.Duration
	RouteTimeout time.Duration
	// TracingAddress is an OpenTelemetry collector's OTLP/gRPC address
	// (host:port as Envoy reaches it) for Envoy's own spans; empty means
	// Envoy does not trace.
	TracingAddress string
	// TracingSampling is the percentage of requests Envoy starts a trace
	// for (its random_sampling, 0 to 100). A request whose traceparent
	// carries a sampling decision keeps that decision.
	TracingSampling float64
}

// Vault is where vault: references are read. Its own credentials are
// env: or file: references: they cannot come from Vault itself.
type Vault struct {
	Address string
	// Exactly one of Token and AppRole (RoleID with SecretID) is set.
	Token           Template
	AppRoleID       string
	AppRoleSecretID Template
	AppRoleMount    string
	CacheTTL        time.Duration
	Pos             Pos // where the section is, for problems found later
}

// Redis is the Redis replicas share.
type Redis struct {
	Address string
	// Username is the ACL user (Redis 6 and later); "" is the default
	// user.
	Username string
	Password Template // may be empty
	DB       int
	// TLS, when set, makes every connection TLS.
	TLS *TLS
	// DecisionKey and AuditKey, when set, are secret references to the
	// key that signs decisions and the key of the audit HMACs, each at
	// least MinSharedKeyLen bytes, which every replica then takes from
	// the secret source. Unset, the first replica makes each and stores
	// it in Redis, where whoever reads Redis can read it.
	DecisionKey, AuditKey Template
}

// MinSharedKeyLen is the shortest redis.decision_key or redis.audit_key
// a replica takes: that of an HMAC-SHA256 key at full strength.
const MinSharedKeyLen = 32

// Upstream is one MCP server behind the gateway. Exactly one of URL,
// Command and Builtin is set.
type Upstream struct {
	// Name is the server part of the server__tool names agents see.
	Name string
	// URL is an MCP Streamable HTTP endpoint, https unless the host is
	// loopback or AllowInsecure is set.
	URL string
	// Command runs an MCP server speaking stdio: program, then arguments.
	// It gets Env, not the gateway's environment.
	Command []string
	Env     map[string]Template
	// Builtin names a server compiled into amg ("demo").
	Builtin string
	// Headers are added to every request to URL.
	Headers map[string]Template
	// ConnectTimeout bounds connecting (and the MCP initialize handshake);
	// CallTimeout bounds one request. Both are positive.
	ConnectTimeout time.Duration
	CallTimeout    time.Duration
	// AllowInsecure permits plain http to a host that is not loopback. It
	// does not relax certificate checks for https.
	AllowInsecure bool
	// Pos is where the upstream is declared; zero for the default one.
	Pos Pos
}

// Options tune loading. A nil *Options is the zero value.
type Options struct {
	// Secrets, when set, resolves every secret reference once while
	// loading, and each one that cannot be resolved is a problem: the
	// gateway must not start and only then find a credential missing.
	// Nil skips the check.
	Secrets secrets.Source
	// SkipVault, with Secrets, leaves vault: references unchecked: for a
	// caller that can reach Vault only with the credentials the file
	// names, so that those (env: or file:) are checked with the file's
	// other problems. It checks the vault: ones with CheckSecrets once
	// it has a source with Vault.
	SkipVault bool
}

// builtins are the servers compiled into amg.
var builtins = []string{"demo"}

// Default returns the configuration used for whatever a file leaves out: a
// gateway on loopback ports fronting only the built-in demo server.
func Default() *Config {
	cfg := &Config{
		Listen:      "127.0.0.1:8080",
		AdminListen: "127.0.0.1:8081",
		AuthzListen: "127.0.0.1:9001",
		Envoy: Envoy{
			Listen:          "0.0.0.0:10000",
			AuthzTimeout:    2 * time.Second,
			TracingSampling: 100,
		},
		ApprovalTTL:                 15 * time.Minute,
		MaxPendingApprovalsPerAgent: 16,
		Console:                     Console{ReadyDays: 7, ReadyMinCalls: 1},
		Audit: Audit{
			MaxFileBytes:     100 << 20,
			Sync:             audit.SyncOnInterval,
			SyncInterval:     time.Second,
			StreamMaxRecords: audit.DefaultStreamMaxLen,
		},
		DataDir:             "./data",
		PolicyDir:           "./policies",
		MaxBodyBytes:        1 << 20,
		MaxSessionsPerAgent: 64,
		MaxProtocolVersion:  SessionProtocolVersion,
		// The demo server is notion-like, and the example policies grant
		// its tools as notion__*.
		Upstreams: map[string]*Upstream{
			"notion": {
				Name:           "notion",
				Builtin:        "demo",
				ConnectTimeout: DefaultConnectTimeout,
				CallTimeout:    DefaultCallTimeout,
			},
		},
		Names: []string{"notion"},
	}
	cfg.Envoy.RouteTimeout = cfg.LongestRequest() + routeTimeoutMargin
	return cfg
}

// MaxEnvoyBodyBytes is the largest max_body_bytes Envoy can be told:
// its buffer limits are 32-bit, and it buffers a byte more than the limit
// (see package xds).
const MaxEnvoyBodyBytes = math.MaxUint32 - 1

// DefaultBrokerAddress is where Envoy reaches the broker when neither
// envoy.broker_addresses nor broker_listen says.
const DefaultBrokerAddress = "127.0.0.1:8082"

// EnvoyAuthzAddress is where Envoy reaches the ext_authz service:
// envoy.authz_address, or else authz_listen as a client on this host
// reaches it, so that moving the listener (--authz-listen) moves what
// Envoy is told.
func (c *Config) EnvoyAuthzAddress() (string, error) {
	if c.Envoy.AuthzAddress != "" {
		return c.Envoy.AuthzAddress, nil
	}
	return localAddress(c.AuthzListen, "envoy.authz_address")
}

// EnvoyBrokerAddresses is where Envoy reaches the broker replicas:
// envoy.broker_addresses, or else broker_listen as a client on this host
// reaches it (DefaultBrokerAddress without one).
func (c *Config) EnvoyBrokerAddresses() ([]string, error) {
	if len(c.Envoy.BrokerAddresses) > 0 {
		return c.Envoy.BrokerAddresses, nil
	}
	if c.BrokerListen == "" {
		return []string{DefaultBrokerAddress}, nil
	}
	a, err := localAddress(c.BrokerListen, "envoy.broker_addresses")
	if err != nil {
		return nil, err
	}
	return []string{a}, nil
}

// localAddress is the address a client on this host connects to for a
// listener on listen: a wildcard host is the loopback address. A port of
// 0, a free one picked at each start, is an error, which names the
// setting (explicit) that would tell Envoy where to connect instead.
func localAddress(listen, explicit string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("%q: %w", listen, err)
	}
	if port == "0" {
		return "", fmt.Errorf("%s takes a free port at each start, which the xDS server cannot tell Envoy: give it a port, or set %s", listen, explicit)
	}
	if ip := ListenIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port), nil
}

// CheckListeners checks what follows from the listen addresses, for a
// caller that changed them after loading (amg serve's flags): that no
// two of amg's listeners claim one address, and that with an xDS server
// Envoy can be told where authz and the broker listen, and the rest of
// what the envoy section and max_body_bytes say. Each problem is one line
// of the error, led by the setting it concerns.
func (c *Config) CheckListeners() error {
	var errs []error
	c.checkListeners(func(string) bool { return true }, func(path, msg string) {
		errs = append(errs, fmt.Errorf("%s: %s", path, msg))
	})
	return errors.Join(errs...)
}

// LongestRequest is the longest an agent request can rightly take: a wait
// of up to ApprovalTTL for a human's decision, then up to the longest
// CallTimeout of any upstream. Envoy's route timeout must be longer, or
// it cuts off calls approved late, and calls whose approval expires
// before the broker can say so.
func (c *Config) LongestRequest() time.Duration {
	_, call := c.longestCall()
	return c.ApprovalTTL + call
}

// longestCall is the upstream with the longest CallTimeout, the first by
// name of those that share it, and that timeout; "" when there is none.
func (c *Config) longestCall() (string, time.Duration) {
	var name string
	var call time.Duration
	for _, n := range slices.Sorted(maps.Keys(c.Upstreams)) {
		if u := c.Upstreams[n]; u != nil && u.CallTimeout > call {
			name, call = n, u.CallTimeout
		}
	}
	return name, call
}

// Load reads the config file at path and applies it over Default. Each
// top-level key the file sets replaces the default value; in particular a
// file that declares upstreams replaces the default set (the demo)
// entirely rather than adding to it, so what runs is exactly what the file
// lists. On failure the error is Problems listing everything found, unless
// the file cannot be read at all.
func Load(path string, opts *Options) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, opts)
}

// Parse is Load for a file already in memory; name is the file name
// problems report.
func Parse(name string, data []byte, opts *Options) (*Config, error) {
	if opts == nil {
		opts = &Options{}
	}
	cfg := Default()
	l := &loader{Walker: diag.Walker{File: name}}
	l.config(cfg, data)
	cfg.Names = slices.Sorted(maps.Keys(cfg.Upstreams))
	if opts.Secrets != nil {
		// Also when the file has other problems: the operator gets the
		// whole list in one go.
		err := cfg.checkSecrets(context.Background(), opts.Secrets, !opts.SkipVault)
		var ps Problems
		switch {
		case errors.As(err, &ps):
			l.Problems = append(l.Problems, ps...)
		case err != nil:
			return nil, err
		}
	}
	if len(l.Problems) > 0 {
		l.Problems.Sort()
		return nil, l.Problems
	}
	return cfg, nil
}

// CheckSecrets resolves every secret reference in c, each distinct one
// once, and returns Problems with one entry for every place a reference
// that cannot be resolved, or resolves to a value that cannot be used
// there, is written. The values are discarded: they are read again when
// the upstream connection is made, so a rotated secret is picked up.
func (c *Config) CheckSecrets(ctx context.Context, src secrets.Source) error {
	return c.checkSecrets(ctx, src, true)
}

// checkSecrets is CheckSecrets, leaving vault: references out unless
// vault is set.
func (c *Config) checkSecrets(ctx context.Context, src secrets.Source, vault bool) error {
	type result struct {
		err error
		// What the value holds, never the value.
		ctl, nul bool
	}
	seen := map[secrets.Ref]result{}
	var ps Problems
	// Where a value goes decides what it must not hold.
	const (
		inHeader = iota
		inEnv
		inKey // any bytes, or what the key's own check allows
	)
	check := func(t Template, path string, in int) {
		for _, ref := range t.Refs() {
			if ref.Scheme == secrets.SchemeVault && !vault {
				continue
			}
			r, ok := seen[ref]
			if !ok {
				s, err := src.Resolve(ctx, ref)
				r.err = err
				if err == nil {
					// Revealed only to classify it; nothing of it is kept.
					v := s.Reveal()
					r.ctl = badHeaderByte(v) >= 0
					r.nul = strings.IndexByte(v, 0) >= 0
				}
				seen[ref] = r
			}
			var msg string
			switch {
			case r.err != nil:
				msg = r.err.Error()
			case in == inHeader && r.ctl:
				msg = ref.String() + " holds a line break or other control character, which cannot go in a header value"
			case in == inEnv && r.nul:
				msg = ref.String() + " holds a NUL byte, which cannot go in an environment variable"
			default:
				continue
			}
			ps = append(ps, Problem{Pos: t.pos, Path: path, Msg: msg})
		}
	}
	isVault := func(r secrets.Ref) bool { return r.Scheme == secrets.SchemeVault }
	// resolved is what t's references make of it, for the checks of the
	// whole value; false when t has none, or one that is left out or
	// cannot be resolved (check reports that).
	resolved := func(t Template) (string, bool) {
		if len(t.Refs()) == 0 || (!vault && slices.ContainsFunc(t.Refs(), isVault)) {
			return "", false
		}
		s, err := t.Expand(ctx, src)
		if err != nil {
			return "", false
		}
		return s.Reveal(), true
	}
	check(c.Redis.Password, "redis.password", inHeader)
	for _, k := range []struct {
		t    Template
		path string
	}{{c.Redis.DecisionKey, "redis.decision_key"}, {c.Redis.AuditKey, "redis.audit_key"}} {
		check(k.t, k.path, inKey)
		if v, ok := resolved(k.t); ok && len(v) < MinSharedKeyLen {
			ps = append(ps, Problem{Pos: k.t.pos, Path: k.path,
				Msg: fmt.Sprintf("the key is %d bytes once its references are resolved, want at least %d", len(v), MinSharedKeyLen)})
		}
	}
	check(c.ApprovalWebhook, "approvals.webhook", inHeader)
	// Its text was checked at load; what its references make of it, only
	// now. Not the URL: it holds the secret.
	if v, ok := resolved(c.ApprovalWebhook); ok {
		if err := checkWebhook(v); err != nil {
			ps = append(ps, Problem{Pos: c.ApprovalWebhook.pos, Path: "approvals.webhook", Msg: err.Error() + " once its references are resolved"})
		}
	}
	// Not sent, only signed with: WebhookKey says what it must be.
	check(c.ApprovalWebhookSecret, "approvals.webhook_secret", inKey)
	if v, ok := resolved(c.ApprovalWebhookSecret); ok {
		if _, err := WebhookKey(v); err != nil {
			ps = append(ps, Problem{Pos: c.ApprovalWebhookSecret.pos, Path: "approvals.webhook_secret", Msg: err.Error()})
		}
	}
	check(c.Vault.Token, "vault.token", inHeader)
	check(c.Vault.AppRoleSecretID, "vault.approle.secret_id", inHeader)
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		u := c.Upstreams[name]
		for _, h := range slices.Sorted(maps.Keys(u.Headers)) {
			check(u.Headers[h], "upstreams."+name+".headers."+h, inHeader)
		}
		for _, e := range slices.Sorted(maps.Keys(u.Env)) {
			check(u.Env[e], "upstreams."+name+".env."+e, inEnv)
		}
	}
	// A cancelled check says nothing about the secrets.
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(ps) > 0 {
		ps.Sort()
		return ps
	}
	return nil
}

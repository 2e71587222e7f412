// Package gateway assembles AMG from its parts — policy, tokens, audit,
// authz, broker, front — for one configuration, and runs its listeners.
// amg serve and the end-to-end tests use it alike.
package gateway

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/admin"
	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/broker"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/internal/front"
	"github.com/amgateway/amg/internal/hostguard"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/internal/shadow"
	"github.com/amgateway/amg/internal/signout"
	"github.com/amgateway/amg/internal/spent"
	"github.com/amgateway/amg/internal/store"
	"github.com/amgateway/amg/internal/telemetry"
	"github.com/amgateway/amg/internal/tokens"
	"github.com/amgateway/amg/mcpfilter"
	"github.com/amgateway/amg/xds"
)

// DBFile is the embedded database's name inside the data directory.
const DBFile = "amg.db"

// AdminTokenFile, in the data directory, holds the admin token.
const AdminTokenFile = "admin.token"

// Options tune a Gateway; nil means defaults.
type Options struct {
	// Secrets resolves upstream credentials; nil means env: and file:.
	Secrets secrets.Source
	// Builtins are the servers a config's builtin field may name.
	Builtins Builtins
	// PolicyReload is how often the policy directory is reread; 0 means 2 s.
	PolicyReload time.Duration
	// SharedKeyCheck is how often a replica checks that Redis, or the
	// secret source, still holds the shared keys it took from there (see
	// watchSharedKeys); 0 means 5 s.
	SharedKeyCheck time.Duration
	// Version is the amg build the admin status reports.
	Version string
	// ConfigFile is the file cfg was loaded from, if any. With an xDS
	// server, a change to its envoy section reaches Envoy without a
	// restart (a broker replica added, a timeout changed); the rest of the
	// file is read at start only.
	ConfigFile string
	Logger     *slog.Logger
	// Stdout is where audit records go when the config's audit.stdout is
	// on; nil means os.Stdout.
	Stdout io.Writer
}

// Gateway is one running AMG.
type Gateway struct {
	cfg       *config.Config
	log       *slog.Logger
	reload    time.Duration
	dataLock  *os.File // LockFile, locked while the gateway uses the data directory
	db        *sql.DB
	tokens    tokens.Store
	auth      *tokens.Authenticator
	auditLog  *audit.Logger
	shadow    *shadow.Batch
	policies  *policy.Live
	authz     *authz.Server
	broker    *broker.Broker
	webhook   *webhook // nil without approvals.webhook
	front     http.Handler
	admin     http.Handler
	approvals approval.Store
	tel       *telemetry.Telemetry
	// With a redis section: the shared client, and the token store whose
	// revocations the Authenticator follows.
	redis       *redis.Client
	redisTokens *tokens.RedisStore
	// sharedKeys are the keys this replica took from Redis or from
	// keySource, and keyCheck how often it checks that they still hold
	// them; keyTrouble says, while one differs, which (see
	// watchSharedKeys).
	sharedKeys []heldKey
	keySource  secrets.Source
	keyCheck   time.Duration
	keyTrouble atomic.Pointer[string]
	// auditStream, with Redis, gathers every replica's audit records for
	// the console.
	auditStream *audit.Stream
	// stdio records the stdio upstreams' process groups, and kills those
	// still running when the gateway closes (see commandTransport).
	stdio *stdioGroups

	mcpLis, authzLis, adminLis net.Listener
	brokerLis                  net.Listener // nil unless BrokerListen is set
	xdsLis                     net.Listener // nil unless XDSListen is set
	xds                        *xds.Server  // nil unless XDSListen is set
	configFile                 string
	configSeen                 []byte // the file's content when New ran
	// draining is set once Serve begins to shut down: /readyz then says
	// the gateway is not ready.
	draining atomic.Bool
	// serving is set once Serve runs: the listeners are then its to
	// close, at its shutdown.
	serving atomic.Bool
}

// New builds a gateway for cfg: it locks the data directory (a second
// gateway on it is refused), opens the database and the audit log there,
// loads the policy (if it does not compile, everything is denied until it
// does) and prepares the broker's upstreams.
func New(cfg *config.Config, opts *Options) (g *Gateway, err error) {
	if opts == nil {
		opts = &Options{}
	}
	g = &Gateway{cfg: cfg, log: opts.Logger, reload: opts.PolicyReload, configFile: opts.ConfigFile, keyCheck: opts.SharedKeyCheck}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	g.stdio = newStdioGroups(g.log)
	if g.reload <= 0 {
		g.reload = 2 * time.Second
	}
	if g.keyCheck <= 0 {
		g.keyCheck = defaultSharedKeyCheck
	}
	src := opts.Secrets
	if src == nil {
		src = secrets.NewDefault(nil)
	}
	g.keySource = src
	// Returning an error sets g to nil: close what was opened through a
	// copy.
	opened := g
	defer func() {
		if err != nil {
			opened.Close()
		}
	}()

	if g.dataLock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if err = g.stdio.recordIn(cfg.DataDir); err != nil {
		return nil, err
	}
	if g.db, err = store.Open(filepath.Join(cfg.DataDir, DBFile)); err != nil {
		return nil, err
	}
	var limiter authz.Limiter = ratelimit.NewMemory(nil)
	g.approvals = approval.NewMemory(nil)
	if cfg.Redis.Address != "" {
		// Replicas share tokens, rate limits and approvals through Redis.
		if g.redis, err = dialRedis(cfg.Redis, src); err != nil {
			return nil, err
		}
		store := tokens.NewRedisStore(g.redis, nil)
		g.tokens, g.redisTokens = store, store
		limiter = ratelimit.NewRedis(g.redis, nil)
		g.approvals = approval.NewRedis(g.redis, nil)
	} else if g.tokens, err = tokens.NewSQLiteStore(g.db); err != nil {
		return nil, err
	}
	g.auth = tokens.NewAuthenticator(g.tokens, nil)
	var counts shadow.Store
	if g.redis != nil {
		counts = shadow.NewRedis(g.redis)
	} else if counts, err = shadow.NewSQLite(g.db); err != nil {
		return nil, err
	}
	// Every call of a shadow-mode role is counted: in memory, written
	// every few seconds.
	g.shadow = shadow.NewBatch(counts, 0, g.log)
	if g.redis != nil {
		id, err := replicaID(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		g.auditStream = audit.NewStream(g.redis, &audit.StreamOptions{Replica: id, MaxLen: cfg.Audit.StreamMaxRecords, Logger: g.log})
	}
	// Console sessions outlive a restart, and with Redis reach every
	// replica.
	var sessions signout.List
	if g.redis != nil {
		sessions = signout.NewRedis(g.redis)
	} else if sessions, err = signout.NewSQLite(g.db, nil); err != nil {
		return nil, err
	}
	// The decision key signs what authz hands the broker, and the audit key
	// keys the HMACs of redacted values: with replicas, authz on one and
	// the broker on another must agree, and so must their audit records,
	// so with Redis both keys are shared: taken from the secret source
	// when the config names them, else the ones Redis holds. Standalone,
	// the audit key is kept in the data directory, as it must outlive the
	// audit files, and the decision key (no file) is made afresh at each
	// start: authz and the broker are then this one process, and the
	// broker remembers the decisions it served in its memory, which a
	// restart empties, so a decision signed before a restart must not
	// verify after it.
	key := func(file, name string, ref config.Template) ([]byte, error) {
		switch {
		case g.redis != nil && ref.String() != "":
			k, err := keyFromSecret(ref, src, name)
			if err != nil {
				return nil, err
			}
			g.sharedKeys = append(g.sharedKeys, heldKey{name: name, ref: ref, value: k})
			return k, nil
		case g.redis != nil:
			k, err := g.sharedKey(name)
			if err != nil {
				return nil, err
			}
			g.sharedKeys = append(g.sharedKeys, k)
			return k.value, nil
		case file == "":
			return newKey(name)
		}
		return audit.LoadOrCreateKey(filepath.Join(cfg.DataDir, file))
	}
	auditKey, err := key(audit.KeyFileName, "audit", cfg.Redis.AuditKey)
	if err != nil {
		return nil, err
	}
	decisionKey, err := key("", "decision", cfg.Redis.DecisionKey)
	if err != nil {
		return nil, err
	}
	signer, err := authz.NewSigner(decisionKey, nil)
	if err != nil {
		return nil, err
	}
	devices, err := auditDevices(cfg, opts.Stdout, g.log)
	if err != nil {
		return nil, err
	}
	g.auditLog = audit.NewLogger(devices, &audit.Options{Logger: g.log})
	// Traces and metrics: /metrics on the admin listener, and OTLP when
	// the standard OTEL_EXPORTER_OTLP_* variables name an endpoint.
	if g.tel, err = telemetry.New(context.Background(), &telemetry.Options{ServiceName: "amg", ServiceVersion: opts.Version,
		Logger: g.log, OTLP: true}); err != nil {
		return nil, err
	}
	g.tel.ObserveAuditQueue(func() int64 { return int64(g.auditLog.Queued()) })

	g.policies = policy.NewLive(cfg.PolicyDir, &policy.Options{Servers: cfg.Names})
	if err := g.policies.Reload(); err != nil {
		g.log.Error("policy does not compile; denying everything until it does", "dir", cfg.PolicyDir, "err", err)
	} else {
		g.log.Info("policy loaded", "dir", cfg.PolicyDir, "version", g.policies.Current().VersionString())
	}

	ups, err := upstreams(g.stdio, cfg, src, opts.Builtins, func(rt http.RoundTripper) http.RoundTripper {
		// The upstream hears the trace context of the call it serves.
		return g.tel.HTTPTransport(rt)
	})
	if err != nil {
		return nil, err
	}
	var ns mcpfilter.Namespace
	if cfg.UnprefixedNames && len(cfg.Names) == 1 {
		ns.Only = cfg.Names[0]
	}
	// The admin token lets operators decide parked calls through the admin
	// API and `amg approvals`.
	adminToken, err := admin.LoadOrCreateToken(filepath.Join(cfg.DataDir, AdminTokenFile))
	if err != nil {
		return nil, err
	}
	if g.webhook, err = g.notifier(cfg.ApprovalWebhook, cfg.ApprovalWebhookSecret, src); err != nil {
		return nil, err
	}
	ledger, err := g.spentLedger()
	if err != nil {
		return nil, err
	}
	var notify func(*approval.Approval)
	if g.webhook != nil {
		notify = g.webhook.notify
	}
	redactor := audit.NewRedactor(auditKey)
	if g.broker, err = broker.New(ups, signer, g.policies, &broker.Options{MaxBodyBytes: cfg.MaxBodyBytes, MaxSessionsPerAgent: cfg.MaxSessionsPerAgent, Namespace: ns,
		Audit: g.auditLog, Redactor: redactor, Logger: g.log, Approvals: g.approvals, ApprovalTTL: cfg.ApprovalTTL, Notify: notify,
		MaxPendingApprovalsPerAgent: cfg.MaxPendingApprovalsPerAgent, Sessions: g.sessionStore(), Spent: ledger,
		LiveTokens: g.liveTokens, Telemetry: g.tel, Sessionless: cfg.MaxProtocolVersion == config.SessionlessProtocolVersion}); err != nil {
		return nil, err
	}
	g.authz, err = authz.New(authz.Deps{
		Tokens:   g.auth,
		Policies: g.policies,
		Limiter:  limiter,
		Audit:    g.auditLog,
		Redactor: redactor,
		Signer:   signer,
	}, &authz.Options{Shadow: g.shadow, Annotations: g.broker, Namespace: ns, Logger: g.log, MaxBodyBytes: cfg.MaxBodyBytes, Telemetry: g.tel,
		AllowedOrigins: cfg.AllowedOrigins})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	fopts := &front.Options{MaxBodyBytes: cfg.MaxBodyBytes, Logger: g.log, Hosts: hostguard.ForListener(cfg.Listen), Audit: g.auditLog}
	mux.Handle(config.MCPPath, front.New(g.authz, g.broker, fopts))
	g.front = mux
	if cfg.XDSListen != "" && g.configFile != "" {
		g.configSeen, _ = os.ReadFile(g.configFile)
	}
	if cfg.XDSListen != "" {
		// Envoy's configuration follows from this config alone; one that
		// does not build or validate stops the gateway from starting.
		g.xds = xds.NewServer(&xds.Options{Logger: g.log, GRPC: g.tel.GRPCServerOptions()})
		if err := g.xds.Update(cfg); err != nil {
			return nil, err
		}
	}
	con, err := console.New(console.Deps{Token: adminToken, Approvals: g.approvals, Tokens: consoleTokens{g}, Policies: g.policies,
		Upstreams: g.broker, Shadow: g.shadow, Audit: g.auditForConsole(), Sessions: sessions},
		&console.Options{ReadyDays: cfg.Console.ReadyDays, ReadyMinCalls: cfg.Console.ReadyMinCalls, TraceURL: cfg.Console.TraceURL, StagedPolicyDir: cfg.Console.StagedPolicyDir,
			Logger: g.log})
	if err != nil {
		return nil, err
	}
	g.admin = admin.Handler(admin.Deps{Policies: g.policies, Upstreams: g.broker.Status, Version: opts.Version,
		Started: time.Now(), Hosts: hostguard.ForListener(cfg.AdminListen), Approvals: g.approvals, Token: adminToken,
		Metrics: g.tel.MetricsHandler(), Console: con, Draining: g.draining.Load, Audit: g.auditLog,
		NotReady: g.keysNotReady})
	g.tel.ObservePendingApprovals(g.approvals.CountPending)
	return g, nil
}

// Authz is the ext_authz service, as Envoy reaches it over gRPC.
func (g *Gateway) Authz() *authz.Server { return g.authz }

// Broker is the handler Envoy routes allowed requests to.
func (g *Gateway) Broker() http.Handler { return g.broker }

// IssueToken issues a token for agent with role, as amg token issue does.
func (g *Gateway) IssueToken(ctx context.Context, agent, role string, ttl time.Duration) (string, tokens.Token, error) {
	return tokens.Issue(ctx, g.tokens, agent, role, ttl, time.Now())
}

// RevokeToken revokes the token with public ID id, as amg token revoke
// does, and drops it from this gateway's cache.
func (g *Gateway) RevokeToken(ctx context.Context, id string) error {
	return g.auth.Revoke(ctx, id)
}

// consoleTokens lets the console manage tokens as `amg token` does, with a
// revocation the gateway applies on the token's next request.
type consoleTokens struct{ g *Gateway }

func (t consoleTokens) List(ctx context.Context) ([]tokens.Token, error) { return t.g.tokens.List(ctx) }

// liveTokens is the IDs of the tokens neither revoked nor expired, for the
// broker to end the sessions of the others.
func (g *Gateway) liveTokens(ctx context.Context, ids []string) (map[string]bool, error) {
	return tokens.Live(ctx, g.tokens, ids, time.Now())
}
func (t consoleTokens) Revoke(ctx context.Context, id string) error { return t.g.RevokeToken(ctx, id) }
func (t consoleTokens) Issue(ctx context.Context, agent, role string, ttl time.Duration) (string, tokens.Token, error) {
	return t.g.IssueToken(ctx, agent, role, ttl)
}

// Listen binds the MCP, ext_authz and admin listeners, so that their
// addresses are known (and taken) before Serve.
func (g *Gateway) Listen() error {
	binds := []struct {
		lis        *net.Listener
		addr, what string
	}{
		{&g.mcpLis, g.cfg.Listen, "mcp"},
		{&g.authzLis, g.cfg.AuthzListen, "ext_authz"},
		{&g.adminLis, g.cfg.AdminListen, "admin"},
	}
	type bind = struct {
		lis        *net.Listener
		addr, what string
	}
	if g.cfg.BrokerListen != "" {
		binds = append(binds, bind{&g.brokerLis, g.cfg.BrokerListen, "broker"})
	}
	if g.cfg.XDSListen != "" {
		binds = append(binds, bind{&g.xdsLis, g.cfg.XDSListen, "xds"})
	}
	for i, b := range binds {
		lis, err := net.Listen("tcp", b.addr)
		if err != nil {
			for _, bound := range binds[:i] {
				(*bound.lis).Close()
			}
			return fmt.Errorf("%s listener: %w", b.what, err)
		}
		*b.lis = lis
	}
	return nil
}

// MCPAddr, AuthzAddr and AdminAddr are the bound listener addresses.
func (g *Gateway) MCPAddr() string   { return g.mcpLis.Addr().String() }
func (g *Gateway) AuthzAddr() string { return g.authzLis.Addr().String() }
func (g *Gateway) AdminAddr() string { return g.adminLis.Addr().String() }

// XDSAddr is the bound address of the xDS server, "" without one.
func (g *Gateway) XDSAddr() string {
	if g.xdsLis == nil {
		return ""
	}
	return g.xdsLis.Addr().String()
}

// BrokerAddr is the bound address of the broker listener, "" without one.
func (g *Gateway) BrokerAddr() string {
	if g.brokerLis == nil {
		return ""
	}
	return g.brokerLis.Addr().String()
}

// shutdownGrace is how long Serve's shutdown lets the calls in flight
// finish. It is a variable for tests.
var shutdownGrace = 10 * time.Second

// cutGrace is how long, once shutdownGrace is over and the calls still
// running are cut (broker.Cut), their answers have to reach the agents.
const cutGrace = time.Second

// Serve connects the upstreams and serves until ctx ends, then shuts down
// gracefully within shutdownGrace (10 s): the calls still running then
// are cut, answered and audited (see broker.Cut), within cutGrace more.
// Listen must have been called.
func (g *Gateway) Serve(ctx context.Context) error {
	g.serving.Store(true)
	g.broker.Start(ctx)
	// From now on the policy is checked against what the upstreams list:
	// at once, and at every reload.
	g.policies.CheckAgainst(g.broker)
	report := func(st policy.Status) {
		switch {
		case st.Err != nil:
			g.log.Error("policy reload failed; keeping the last good version", "version", st.Version.String(), "err", st.Err)
			return
		case st.Misfits != nil:
			g.log.Warn("the policy names what the upstreams do not offer", "version", st.Version.String(), "misfits", st.Misfits)
		}
		g.log.Info("policy in force", "version", st.Version.String())
		g.broker.Sync()
	}
	g.policies.Reload()
	report(g.policies.Status())
	go g.followRevocations(ctx)
	go g.watchSharedKeys(ctx)
	go g.policies.Watch(ctx, g.reload, report)

	gs := grpc.NewServer(append(authz.GRPCServerOptions(g.cfg.MaxBodyBytes), g.tel.GRPCServerOptions()...)...)
	authv3.RegisterAuthorizationServer(gs, g.authz)
	hs := newHTTPServer(g.tel.HTTPHandler(g.front, "amg.front"))
	as := newHTTPServer(g.admin)
	// Envoy routes allowed requests here; the broker serves only those
	// whose decision token verifies. It reads a body before it verifies
	// the decision, so whoever else reaches the listener is bounded as
	// on the agent listener: a body that stops coming, or a connection
	// left idle, is not held.
	bs := newHTTPServer(g.tel.HTTPHandler(g.broker, "amg.broker"))
	errs := make(chan error, 5)
	go func() { errs <- gs.Serve(g.authzLis) }()
	go func() { errs <- hs.Serve(g.mcpLis) }()
	go func() { errs <- as.Serve(g.adminLis) }()
	attrs := []any{"mcp", "http://" + g.MCPAddr() + config.MCPPath, "ext_authz", g.AuthzAddr(), "admin", "http://" + g.AdminAddr()}
	if g.brokerLis != nil {
		go func() { errs <- bs.Serve(g.brokerLis) }()
		attrs = append(attrs, "broker", "http://"+g.BrokerAddr()+config.MCPPath)
	}
	if g.xdsLis != nil {
		go func() { errs <- g.xds.Serve(g.xdsLis) }()
		defer g.xds.Stop()
		attrs = append(attrs, "xds", g.XDSAddr())
		if g.configFile != "" {
			go g.watchEnvoyConfig(ctx)
		}
	}
	attrs = append(attrs, "console", "http://"+g.AdminAddr()+"/console/", "admin_token", filepath.Join(g.cfg.DataDir, AdminTokenFile))
	g.log.Info("serving", attrs...)
	shipCtx, stopShipping := context.WithCancel(ctx)
	shipped := make(chan struct{})
	go func() {
		defer close(shipped)
		if g.auditStream != nil {
			g.auditStream.Ship(shipCtx, filepath.Join(g.cfg.DataDir, audit.FileName))
		}
	}()

	var err error
	select {
	case err = <-errs:
	case <-ctx.Done():
	}
	// From here on /readyz says the gateway is not ready.
	g.draining.Store(true)
	g.log.Info("shutting down")
	// Calls waiting for a human, and the agents' streams of server
	// messages, would hold the listeners' shutdown to its deadline: they
	// are ended first.
	g.broker.Drain()
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	// Together, so that each listener closes now and each server's calls
	// have the whole grace. The admin server goes last, so that /readyz
	// says the gateway is shutting down while it drains.
	servers := []*http.Server{hs, bs}
	shutdownAll := func(ctx context.Context) error {
		var down sync.WaitGroup
		errs := make([]error, len(servers))
		for i, s := range servers {
			down.Go(func() { errs[i] = s.Shutdown(ctx) })
		}
		down.Wait()
		return errors.Join(errs...)
	}
	herr := shutdownAll(shutdown)
	if errors.Is(herr, context.DeadlineExceeded) {
		// The calls still running are cut, each answered that the
		// gateway shut down and its outcome audited, and given a moment
		// for their answers to leave; what is left then is closed.
		g.broker.Cut()
		answered, cancel := context.WithTimeout(context.WithoutCancel(ctx), cutGrace)
		defer cancel()
		shutdownAll(answered)
		for _, s := range servers {
			s.Close()
		}
	}
	select {
	case <-stopped:
	case <-shutdown.Done():
		gs.Stop()
	}
	adminDown, cancelAdmin := context.WithTimeout(context.WithoutCancel(ctx), cutGrace)
	defer cancelAdmin()
	if as.Shutdown(adminDown) != nil {
		as.Close()
	}
	if err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	if herr != nil && !errors.Is(herr, context.DeadlineExceeded) {
		err = errors.Join(err, herr)
	}
	// What is written from here on is shipped by the next start.
	stopShipping()
	<-shipped
	return err
}

// auditForConsole is the audit log the console searches and replays:
// with Redis, the stream every replica ships its records to; else the
// file.
func (g *Gateway) auditForConsole() audit.Log {
	if g.auditStream != nil {
		return g.auditStream
	}
	return audit.FileLog(filepath.Join(g.cfg.DataDir, audit.FileName))
}

// ReplicaIDFile holds, in the data directory, the name this replica ships
// its audit records under.
const ReplicaIDFile = "replica.id"

// replicaID is this replica's name in the shared audit stream: the host's
// name and random digits, chosen once per data directory so that it
// survives restarts and two replicas never share it.
func replicaID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, ReplicaIDFile)
	data, err := os.ReadFile(path)
	if err == nil && len(bytes.TrimSpace(data)) > 0 {
		return string(bytes.TrimSpace(data)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("replica id: %w", err)
	}
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s-%08x", cmp.Or(host, "amg"), rand.Uint32())
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("replica id: %w", err)
	}
	return id, nil
}

// watchEnvoyConfig rereads the config file every reload interval until ctx
// ends and serves Envoy a new snapshot when its envoy section changed. A
// file that does not load, or whose Envoy resources do not validate, is
// logged and the last good snapshot stays. As with the policies (see
// policy.Live.Watch), a change is taken once two reads in a row agree: a
// file caught while being written, empty after its truncation, would
// load, and give Envoy the defaults.
func (g *Gateway) watchEnvoyConfig(ctx context.Context) {
	t := time.NewTicker(g.reload)
	defer t.Stop()
	current, last := g.cfg.Envoy, g.configSeen
	// What the last read found, if it was a change: taken if the next read
	// finds it too. (Not nil alone: an empty file is a change.)
	var held []byte
	holding := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := os.ReadFile(g.configFile)
		if err != nil || bytes.Equal(data, last) {
			holding = false
			continue
		}
		if !holding || !bytes.Equal(data, held) {
			held, holding = data, true
			continue
		}
		last, holding = data, false
		// Only the envoy section is taken, and it holds no secret: the
		// file's secret references are checked as written but not
		// resolved, so that a secret backend that is down (Vault, say)
		// cannot keep a change from Envoy. What is left fails only for
		// what the file says, so a file that fails is not read again
		// until it changes.
		fresh, err := config.Parse(g.configFile, data, nil)
		if err != nil {
			g.log.Error("config file changed but does not load; Envoy keeps its config", "file", g.configFile, "xds_version", g.xds.Version(), "err", err)
			continue
		}
		if reflect.DeepEqual(fresh.Envoy, current) {
			continue
		}
		next := *g.cfg
		next.Envoy = fresh.Envoy
		if err := g.xds.Update(&next); err != nil {
			g.log.Error("new envoy config refused; Envoy keeps its config", "xds_version", g.xds.Version(), "err", err)
			continue
		}
		current = fresh.Envoy
	}
}

// auditDevices are the hash-chained file in the data directory, which the
// console, replay and `amg audit verify` read, and stdout if the config
// asks for it.
func auditDevices(cfg *config.Config, stdout io.Writer, log *slog.Logger) ([]audit.Device, error) {
	file, err := audit.NewFileDevice(filepath.Join(cfg.DataDir, audit.FileName), &audit.FileOptions{
		MaxBytes: cfg.Audit.MaxFileBytes, Sync: cfg.Audit.Sync, SyncInterval: cfg.Audit.SyncInterval, Logger: log})
	if err != nil {
		return nil, err
	}
	devices := []audit.Device{file}
	if cfg.Audit.Stdout {
		if stdout == nil {
			stdout = os.Stdout
		}
		devices = append(devices, audit.NewWriterDevice(stdout))
	}
	return devices, nil
}

// sessionStore shares MCP sessions between replicas through Redis, if
// there is one.
func (g *Gateway) sessionStore() broker.SessionStore {
	if g.redis == nil {
		return nil
	}
	return broker.NewRedisSessions(g.redis)
}

// spentLedger is where the broker records the decisions it served: in
// the Redis the replicas share, if there is one, so that a decision
// served by one is refused by all; else the broker's own memory, which
// a restart empties, as it changes the decision key (see New).
func (g *Gateway) spentLedger() (spent.Ledger, error) {
	if g.redis == nil {
		return nil, nil
	}
	l := spent.NewRedis(g.redis)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Begin(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// XDSVersion is the version of the Envoy config being served, "" without
// an xDS server.
func (g *Gateway) XDSVersion() string {
	if g.xds == nil {
		return ""
	}
	return g.xds.Version()
}

// Close releases what New and Listen opened: the listeners, unless Serve
// ran, whose shutdown closes them (a gateway that failed, or was refused,
// between Listen and Serve would hold its ports until it exits), upstream
// sessions, the audit log (its queue is drained first), the shadow counts
// not yet written, the database and, last, the data directory's lock. The
// stdio upstreams' process groups still running are killed: servers the
// broker could not end in its close timeout, and whatever any server
// started.
func (g *Gateway) Close() error {
	var err error
	for _, lis := range []net.Listener{g.mcpLis, g.authzLis, g.adminLis, g.brokerLis, g.xdsLis} {
		if lis == nil || g.serving.Load() {
			continue
		}
		// Closed already if Listen failed after binding it, or by an
		// earlier Close.
		if cerr := lis.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = errors.Join(err, cerr)
		}
	}
	if g.broker != nil {
		g.broker.Close()
	}
	g.stdio.end()
	if g.webhook != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		g.webhook.Close(ctx)
		cancel()
	}
	if g.auditLog != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = errors.Join(err, g.auditLog.Close(ctx))
		cancel()
	}
	if g.shadow != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = errors.Join(err, g.shadow.Close(ctx))
		cancel()
	}
	if g.db != nil {
		err = errors.Join(err, g.db.Close())
	}
	if g.redis != nil {
		err = errors.Join(err, g.redis.Close())
	}
	if g.tel != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = errors.Join(err, g.tel.Shutdown(ctx))
		cancel()
	}
	if g.dataLock != nil {
		err = errors.Join(err, g.dataLock.Close())
		g.dataLock = nil // released; a second Close has nothing to release
	}
	return err
}

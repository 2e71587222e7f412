// Package broker is the MCP server agents talk to behind authz: it serves
// only requests that carry a valid decision for exactly their body, shows
// each role the upstream tools it may call as server__tool, and forwards
// calls to the upstream MCP servers with the gateway's own credentials.
//
// The agent side is a go-sdk MCP server per role, so sessions, streaming,
// pings and protocol versions behave as the SDK does; the upstream side is
// a go-sdk client session per agent session and upstream, opened on first
// use and closed with the agent's session.
package broker

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/yosida95/uritemplate/v3"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/spent"
	"github.com/amgateway/amg/internal/telemetry"
	"github.com/amgateway/amg/mcpfilter"
)

// Upstream is one upstream MCP server.
type Upstream struct {
	Name string
	// Transport opens a new connection to the server; the broker calls it
	// for its catalogue session and for every agent session that uses the
	// server.
	Transport func(ctx context.Context) (mcp.Transport, error)
	// ConnectTimeout bounds connecting and the MCP handshake; 0 means 5 s.
	ConnectTimeout time.Duration
	// CallTimeout bounds one tools/call, and each listing of the server's
	// tools, prompts and resources; 0 means 60 s.
	CallTimeout time.Duration
}

// Policies hands out the current policy set (nil: none compiled).
type Policies interface {
	Current() *policy.Set
}

// Auditor records the requests the broker refuses; authz records the
// rest.
type Auditor interface {
	Log(rec *audit.Record) error
}

// Redactor hides, in an upstream's error an audit record quotes, what
// the audit log hides of the call's arguments (see audit.Redactor.Hide).
type Redactor interface {
	Hide(text string, args json.RawMessage, rules []string) string
}

// Options tune a Broker; nil means defaults.
type Options struct {
	// Audit records refusals; nil records nothing (they are still logged).
	Audit Auditor
	// Redactor hides the call's secrets in the upstream errors Audit
	// records; nil records an upstream's JSON-RPC error by its code only.
	Redactor Redactor
	// MaxBodyBytes bounds a request body; 0 means mcpfilter.DefaultMaxBytes.
	MaxBodyBytes int
	// Namespace maps upstream names to the names agents see; the zero
	// value prefixes every name with its server.
	Namespace mcpfilter.Namespace
	// SessionIdle is how long an agent session may go without a request
	// before the broker ends it; 0 means 30 minutes.
	SessionIdle time.Duration
	// MaxSessionsPerAgent bounds the sessions one agent may have open at
	// once; 0 means 64. Each may hold a connection, or a process, per
	// upstream.
	MaxSessionsPerAgent int
	// Sessionless serves protocol 2026-07-28, which has no sessions, to
	// the agents that ask for it (see stateless.go). Without it, such an
	// agent is offered the versions with sessions, and the go-sdk's client
	// takes the newest of them: it then gets what a 2026-07-28 agent does
	// not (list changes, resource updates, an upstream's sampling,
	// elicitation and log messages relayed).
	Sessionless bool
	// MaxPendingApprovalsPerAgent bounds the calls one agent may have
	// waiting for approval at once; 0 means 16. Each holds its request in
	// the approval store, and an agent's request open.
	MaxPendingApprovalsPerAgent int
	// Approvals parks calls that need a human's approval; nil refuses
	// them. ApprovalTTL is how long one waits at most (0 means 15
	// minutes; the approval rule that parks a call may shorten it), and
	// KeepAlive how often the waiting agent hears from the gateway (0
	// means 15 s). Notify, if set, is told of each new pending approval.
	// StoreRetry is how long a waiting call leaves a failing approval
	// store before asking it again; 0 means 1 s.
	Approvals   approval.Store
	ApprovalTTL time.Duration
	KeepAlive   time.Duration
	Notify      func(*approval.Approval)
	StoreRetry  time.Duration
	// Sessions, if set, shares MCP sessions with other replicas.
	Sessions SessionStore
	// Spent records the decisions served, each of which is served once;
	// nil means a ledger in memory. Replicas that share a Redis share it.
	Spent spent.Ledger
	// LiveTokens, if set, reports which of the AMG tokens of public IDs
	// ids are still valid (neither revoked nor expired; see tokens.Live).
	// Every TokenCheck (0 means 10 s) the broker ends the sessions all of
	// whose tokens are gone: an agent's stream of server messages, and
	// its calls waiting for approval, do not outlive its tokens.
	LiveTokens func(ctx context.Context, ids []string) (map[string]bool, error)
	TokenCheck time.Duration
	// CatalogueRetry is how long the broker waits before trying again to
	// list an upstream it cannot reach; it doubles on each failure, up to
	// 30 s. 0 means 1 s.
	CatalogueRetry time.Duration
	// CloseTimeout bounds how long Close waits for upstream sessions to
	// end; 0 means 10 s.
	CloseTimeout time.Duration
	// Telemetry, if set, measures every upstream call.
	Telemetry *telemetry.Telemetry
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Broker is the http.Handler behind authz.
type Broker struct {
	signer   *authz.Signer
	policies Policies
	ups      map[string]*upstream
	names    []string
	maxBody  int
	ns       mcpfilter.Namespace
	idle     time.Duration

	// sessionsOf counts each agent's sessions, those being made
	// included, up to maxSessions (see reserveSession).
	sessionsMu  sync.Mutex
	sessionsOf  map[string]int
	maxSessions int
	// parkedOf counts each agent's calls waiting for approval, up to
	// maxParked (see reservePark).
	parkedMu  sync.Mutex
	parkedOf  map[string]int
	maxParked int

	sessionStore SessionStore
	spent        spent.Ledger
	liveTokens   func(ctx context.Context, ids []string) (map[string]bool, error)
	tokenCheck   time.Duration
	closing      atomic.Bool    // set by Close: ended sessions stay shared
	dropping     sync.WaitGroup // upstream sessions being closed after a failure
	watchers     sync.WaitGroup // upstream sessions watched for subscriptions (resubscribe.go)
	tel          *telemetry.Telemetry
	newSessions  sync.Mutex
	creating     *sessionCreation // guarded by newSessions

	catalogueRetry time.Duration
	closeTimeout   time.Duration
	stopKeepers    context.CancelFunc // ends keepCatalogue; set by Start
	keepers        sync.WaitGroup

	approvals   approval.Store
	approvalTTL time.Duration
	keepAlive   time.Duration
	storeRetry  time.Duration
	notify      func(*approval.Approval)
	now         func() time.Time
	drained     context.Context // done once Drain is called
	drain       context.CancelFunc
	cut         context.Context // done once Cut is called
	cutCalls    context.CancelFunc
	cancelling  sync.WaitGroup // cancelLater's retries

	audit    Auditor
	redactor Redactor
	log      *slog.Logger
	handler  *mcp.StreamableHTTPHandler
	// stateless serves the protocol versions without sessions, whose
	// agents' states are kept by token (stateless.go).
	stateless *mcp.StreamableHTTPHandler
	byToken   tokenStates

	mu       sync.Mutex
	roles    map[string]*roleServer
	synced   string                   // policy version the role servers reflect
	updated  map[string]relayedUpdate // role and resource URI -> last update relayed
	owners   sync.Map                 // MCP session id -> owner (agent and role)
	sessions sync.Map                 // *mcp.ServerSession -> *agentSession
	bySID    sync.Map                 // MCP session id -> *agentSession
	ending   sync.Map                 // *agentSession -> true while its upstream sessions close, once it ended
	buried   sync.Map                 // MCP session id -> time.Time until which it is not taken over (see bury)
	adopting sync.Map                 // MCP session id -> chan struct{} closed once it is taken over here, or not (see adopt)
	ended    io.Closer                // follows the sessions ended on other replicas; set by Start
	ids      atomic.Uint64
}

type upstream struct {
	Upstream
	refreshing sync.Mutex      // held by refresh, one at a time
	changed    chan struct{}   // the upstream said a list changed
	dropping   *sync.WaitGroup // the broker's: connections closing after a failure
	mu         sync.Mutex      // guards what follows
	catalog    *mcp.ClientSession
	catalogue
}

// catalogue is what an upstream lists, and the capabilities it declared
// at initialize, as its catalogue session last said.
type catalogue struct {
	caps  *mcp.ServerCapabilities
	tools []*mcp.Tool
	// headerTools are the tools whose input schema binds arguments to
	// HTTP headers (x-mcp-header), which only the SDK's client sets.
	headerTools map[string]bool
	prompts     []*mcp.Prompt
	resources   []*mcp.Resource
	templates   []*mcp.ResourceTemplate
}

// roleServer is the MCP server one role's agents talk to, with what is
// registered on it, by the name (or URI) agents see, pointing at the
// upstream's own definition.
type roleServer struct {
	srv       *mcp.Server
	tools     map[string]*mcp.Tool
	prompts   map[string]*mcp.Prompt
	resources map[string]*mcp.Resource
	templates map[string]*mcp.ResourceTemplate
}

// New returns a broker for ups. Call Start before serving.
func New(ups []Upstream, signer *authz.Signer, policies Policies, opts *Options) (*Broker, error) {
	b := &Broker{signer: signer, policies: policies, ups: map[string]*upstream{}, roles: map[string]*roleServer{},
		maxBody: mcpfilter.DefaultMaxBytes, idle: sessionIdle, maxSessions: defaultMaxSessions, sessionsOf: map[string]int{},
		maxParked: defaultMaxParked, parkedOf: map[string]int{}, spent: spent.NewMemory(nil),
		log:         slog.New(slog.DiscardHandler),
		approvalTTL: 15 * time.Minute, keepAlive: 15 * time.Second, storeRetry: time.Second, catalogueRetry: time.Second,
		closeTimeout: 10 * time.Second, now: time.Now}
	b.drained, b.drain = context.WithCancel(context.Background())
	b.cut, b.cutCalls = context.WithCancel(context.Background())
	if opts != nil {
		b.approvals, b.notify, b.sessionStore, b.tel = opts.Approvals, opts.Notify, opts.Sessions, opts.Telemetry
		if opts.Spent != nil {
			b.spent = opts.Spent
		}
		if opts.ApprovalTTL > 0 {
			b.approvalTTL = opts.ApprovalTTL
		}
		if opts.KeepAlive > 0 {
			b.keepAlive = opts.KeepAlive
		}
		if opts.StoreRetry > 0 {
			b.storeRetry = opts.StoreRetry
		}
		if opts.Now != nil {
			b.now = opts.Now
		}
		if opts.SessionIdle > 0 {
			b.idle = opts.SessionIdle
		}
		if opts.MaxSessionsPerAgent > 0 {
			b.maxSessions = opts.MaxSessionsPerAgent
		}
		if opts.MaxPendingApprovalsPerAgent > 0 {
			b.maxParked = opts.MaxPendingApprovalsPerAgent
		}
		b.liveTokens, b.tokenCheck = opts.LiveTokens, opts.TokenCheck
		if opts.CatalogueRetry > 0 {
			b.catalogueRetry = opts.CatalogueRetry
		}
		if opts.CloseTimeout > 0 {
			b.closeTimeout = opts.CloseTimeout
		}
		if opts.MaxBodyBytes > 0 {
			b.maxBody = opts.MaxBodyBytes
		}
		if opts.Logger != nil {
			b.log = opts.Logger
		}
		b.ns = opts.Namespace
		b.audit, b.redactor = opts.Audit, opts.Redactor
	}
	if b.ns.Only != "" && (len(ups) != 1 || ups[0].Name != b.ns.Only) {
		return nil, fmt.Errorf("broker: unprefixed names need exactly one upstream, %q", b.ns.Only)
	}
	for _, u := range ups {
		if err := mcpfilter.ValidateServerName(u.Name); err != nil {
			return nil, fmt.Errorf("broker: upstream %q: %w", u.Name, err)
		}
		if _, dup := b.ups[u.Name]; dup {
			return nil, fmt.Errorf("broker: upstream %q declared twice", u.Name)
		}
		if u.CallTimeout <= 0 {
			u.CallTimeout = 60 * time.Second
		}
		if u.ConnectTimeout <= 0 {
			u.ConnectTimeout = 5 * time.Second
		}
		b.ups[u.Name] = &upstream{Upstream: u, changed: make(chan struct{}, 1), dropping: &b.dropping}
		b.names = append(b.names, u.Name)
	}
	slices.Sort(b.names)
	b.handler = mcp.NewStreamableHTTPHandler(b.serverFor, &mcp.StreamableHTTPOptions{
		Logger: b.log,
		// The front or Envoy in front of the broker decides who may call;
		// the broker is reached through them, under any host name.
		DisableLocalhostProtection: true,
		MaxRequestBodyBytes:        int64(b.maxBody),
		// An agent that goes away without ending its session does not
		// keep it, and its upstream sessions, forever.
		// The broker ends idle sessions itself (see reapIdle): calls it
		// forwards without the SDK do not reach the SDK's timer.
	})
	if opts != nil && opts.Sessionless {
		b.stateless = b.statelessHandler()
	}
	return b, nil
}

// Start connects the catalogue session of every upstream and builds the
// role servers. An upstream that cannot be reached is logged and its tools
// stay invisible until it answers: until ctx ends or Close, the broker
// keeps trying, and keeps every catalogue current (see keepCatalogue).
// Idle agent sessions are ended until ctx ends.
func (b *Broker) Start(ctx context.Context) {
	go b.reapIdle(ctx, max(b.idle/30, 10*time.Millisecond))
	go b.keepTokenStates(ctx)
	if b.liveTokens != nil {
		go b.endRevoked(ctx, cmp.Or(b.tokenCheck, 10*time.Second))
	}
	ctx, b.stopKeepers = context.WithCancel(ctx)
	if b.sessionStore != nil {
		if sub, err := b.sessionStore.Ended(ctx, b.endedElsewhere); err != nil {
			b.log.Error("cannot follow the sessions other replicas end; a copy here ends when next used", "err", err)
		} else {
			b.ended = sub
		}
	}
	for _, name := range b.names {
		if err := b.refresh(ctx, b.ups[name]); err != nil {
			b.log.Error("upstream unreachable; its tools are hidden until it answers", "upstream", name, "err", errorText(err, false))
		}
	}
	b.sync()
	for _, name := range b.names {
		u := b.ups[name]
		b.keepers.Go(func() { b.keepCatalogue(ctx, u) })
	}
}

// Drain ends, now and from now on, what would hold a shutdown to its
// deadline and then drop: every call waiting for approval is answered and
// its approval cancelled (else it would stay pending with no one to run
// it), and every agent's stream of server messages (its GET) ends, as the
// protocol lets a server do. Calls in flight go on; a call already
// approved runs.
func (b *Broker) Drain() { b.drain() }

// Cut ends the calls still running at their upstreams, and those begun
// after it, as a shutdown whose grace is over must: each is answered
// that the gateway shut down before its upstream answered, and its
// upstream outcome audited as such (upstream_error), rather than cut off
// unanswered and unrecorded when the listeners and sessions close.
func (b *Broker) Cut() { b.cutCalls() }

// errShutdown ends the calls Cut cuts.
var errShutdown = errors.New("the gateway shut down before the upstream answered")

// errShuttingDown refuses a call that would reach its upstream after Cut:
// sent now, it would run there while its agent is told it was cut.
var errShuttingDown = errors.New("the gateway is shutting down: the call was not sent")

// cutShort is err, or errShutdown if err is a call's context ending
// because Cut ended it.
func (b *Broker) cutShort(err error) error {
	if b.cut.Err() != nil && errors.Is(err, context.Canceled) {
		return errShutdown
	}
	return err
}

// Close drains the broker (Drain), cuts the calls in flight (Cut), and
// ends every agent session, with its upstream sessions, and every
// catalogue session, all at once. It waits for every upstream session
// being closed, those of agent sessions that ended before (by their
// agent, for being idle, for their tokens) included, up to the close
// timeout: past it, an upstream slow to end a session, or a stdio process
// slow to exit, is left to it.
func (b *Broker) Close() {
	b.drain()
	b.cutCalls()
	b.closing.Store(true)
	if b.stopKeepers != nil {
		b.stopKeepers()
	}
	if b.ended != nil {
		b.ended.Close()
	}
	b.keepers.Wait()
	// An agent session's end closes its upstream sessions (see
	// agentSession); those that ended before are still closing theirs.
	var ending []*agentSession
	b.sessions.Range(func(_, v any) bool {
		as := v.(*agentSession)
		ending = append(ending, as)
		go as.ss.Close()
		return true
	})
	b.ending.Range(func(as, _ any) bool {
		ending = append(ending, as.(*agentSession))
		return true
	})
	b.closeTokenStates()
	// As an agent session's end does: together, and without the lock.
	var catalogs []*mcp.ClientSession
	for _, u := range b.ups {
		u.mu.Lock()
		if u.catalog != nil {
			catalogs = append(catalogs, u.catalog)
			u.catalog = nil
		}
		u.mu.Unlock()
	}
	closed := make(chan struct{})
	go func() {
		closeTogether(catalogs)
		for _, as := range ending {
			<-as.closed
		}
		b.dropping.Wait()
		b.watchers.Wait()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(b.closeTimeout):
		b.log.Warn("upstream sessions still closing as the broker closes; left to end", "waited", b.closeTimeout)
	}
	b.cancelling.Wait()
}

// refresh lists an upstream's tools, prompts and resources through its
// catalogue session, connecting one first if it has none. Listing is
// bounded by the upstream's call timeout: an upstream that never answers
// must not hold up Start, nor its keeper, for good. The network is not
// touched under u.mu: decisions read the catalogue (annotations) on every
// call, and an upstream slow to answer must not hold them up. A session
// that fails to list (or not in time) is closed and forgotten, and the
// lists from before stay.
func (b *Broker) refresh(ctx context.Context, u *upstream) error {
	u.refreshing.Lock()
	defer u.refreshing.Unlock()
	u.mu.Lock()
	cs := u.catalog
	u.mu.Unlock()
	if cs == nil {
		// keepCatalogue lists again; a listing already due will do.
		changed := func() {
			select {
			case u.changed <- struct{}{}:
			default:
			}
		}
		var err error
		cs, _, err = u.connect(ctx, &mcp.ClientOptions{
			Capabilities:               noRoots(),
			ToolListChangedHandler:     func(context.Context, *mcp.ToolListChangedRequest) { changed() },
			PromptListChangedHandler:   func(context.Context, *mcp.PromptListChangedRequest) { changed() },
			ResourceListChangedHandler: func(context.Context, *mcp.ResourceListChangedRequest) { changed() },
		}, "", nil)
		if err != nil {
			return err
		}
		u.mu.Lock()
		u.catalog = cs
		u.mu.Unlock()
	}
	listCtx, cancel := context.WithTimeout(ctx, u.CallTimeout)
	c, err := b.list(listCtx, u.Name, cs)
	cancel()
	if err != nil {
		u.mu.Lock()
		if u.catalog == cs {
			u.catalog = nil
		}
		u.mu.Unlock()
		cs.Close()
		return err
	}
	u.mu.Lock()
	u.catalogue = c
	u.mu.Unlock()
	return nil
}

// list reads what server's catalogue session cs lists: each of tools,
// prompts and resources only if the server declares it can (one without
// tools may answer tools/list with "method not found").
func (b *Broker) list(ctx context.Context, server string, cs *mcp.ClientSession) (catalogue, error) {
	caps := cs.InitializeResult().Capabilities
	c := catalogue{caps: caps, headerTools: map[string]bool{}}
	hide := func(what, name string, err error) {
		b.log.Warn("upstream "+what+" cannot be served to agents; hidden", "upstream", server, what, name, "err", err)
	}
	if caps != nil && caps.Tools != nil {
		probe := mcp.NewServer(&mcp.Implementation{Name: "probe", Version: "1"}, nil)
		for tool, err := range cs.Tools(ctx, nil) {
			if err != nil {
				return catalogue{}, err
			}
			if err := mcpfilter.ValidateName(tool.Name); err != nil {
				hide("tool", tool.Name, err)
				continue
			}
			if err := servable(probe, tool); err != nil {
				hide("tool", tool.Name, err)
				continue
			}
			c.tools = append(c.tools, tool)
			if schema, err := json.Marshal(tool.InputSchema); err != nil || bytes.Contains(schema, []byte(`"x-mcp-header"`)) {
				c.headerTools[tool.Name] = true
			}
		}
	}
	if caps != nil && caps.Prompts != nil {
		for p, err := range cs.Prompts(ctx, nil) {
			if err != nil {
				return catalogue{}, err
			}
			if err := mcpfilter.ValidateName(p.Name); err != nil {
				hide("prompt", p.Name, err)
				continue
			}
			c.prompts = append(c.prompts, p)
		}
	}
	if caps != nil && caps.Resources != nil {
		for r, err := range cs.Resources(ctx, nil) {
			if err != nil {
				return catalogue{}, err
			}
			// What the SDK's server checks, on the URI agents see.
			if _, err := url.Parse(b.ns.JoinURI(server, r.URI)); err != nil {
				hide("resource", r.URI, err)
				continue
			}
			c.resources = append(c.resources, r)
		}
		for rt, err := range cs.ResourceTemplates(ctx, nil) {
			if err != nil {
				return catalogue{}, err
			}
			if _, err := uritemplate.New(b.ns.JoinURI(server, rt.URITemplate)); err != nil {
				hide("resource template", rt.URITemplate, err)
				continue
			}
			c.templates = append(c.templates, rt)
		}
	}
	return c, nil
}

// servable reports why the SDK's server would refuse to serve tool, as
// probe, a server no one connects to, tells: the SDK panics on a tool it
// cannot serve (one without an input schema, or whose schema is not an
// object's), and every role server would, taking the gateway down with
// it. It panics before it changes anything, so probe stays usable.
func servable(probe *mcp.Server, tool *mcp.Tool) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	probe.AddTool(tool, nil)
	return nil
}

// keepCatalogue keeps u's catalogue current until ctx ends. It lists again
// when the upstream says a list changed. When the catalogue session ends
// (the upstream went away, or restarted and forgot it) or there is none
// (the upstream could not be reached), it connects anew, waiting between
// attempts from the broker's retry interval, doubled on each failure, up
// to maxCatalogueRetry.
func (b *Broker) keepCatalogue(ctx context.Context, u *upstream) {
	wait := b.catalogueRetry
	var (
		watched *mcp.ClientSession // the session ended is about
		ended   chan struct{}
		retry   <-chan time.Time
	)
	for {
		u.mu.Lock()
		cs := u.catalog
		u.mu.Unlock()
		switch {
		case cs != nil && cs != watched:
			// The watcher closes its own channel: ended may be another's
			// (or none) by the time cs ends.
			done := make(chan struct{})
			watched, ended = cs, done
			go func() { cs.Wait(); close(done) }()
		case cs == nil:
			watched, ended = nil, nil // closed by a refresh that failed
			if retry == nil {
				retry = time.After(wait)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-u.changed:
		case <-ended:
			u.mu.Lock()
			if u.catalog == watched {
				u.catalog = nil
			}
			u.mu.Unlock()
			watched, ended = nil, nil
			b.log.Warn("upstream catalogue session ended; reconnecting", "upstream", u.Name)
		case <-retry:
		}
		retry = nil
		if err := b.refresh(ctx, u); err != nil {
			if ctx.Err() != nil {
				return
			}
			b.log.Warn("upstream unreachable; retrying", "upstream", u.Name, "in", wait, "err", errorText(err, false))
			retry = time.After(wait)
			wait = min(2*wait, maxCatalogueRetry)
			continue
		}
		wait = b.catalogueRetry
		b.sync()
	}
}

// maxCatalogueRetry bounds the wait between attempts to reach an upstream
// whose catalogue session is gone.
const maxCatalogueRetry = 30 * time.Second

// bindsHeaders reports whether calls of tool must go through the SDK's
// client, which sets the HTTP headers its schema binds arguments to.
func (u *upstream) bindsHeaders(tool string) bool {
	if u == nil {
		return true
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.headerTools[tool]
}

// Annotations returns the annotations server declared for tool, as its
// tool list last said, or nil when unknown (the decision engine then
// assumes the worst). It lets authz apply approval rules on annotations.
func (b *Broker) Annotations(server, tool string) *policy.Annotations {
	u := b.ups[server]
	if u == nil {
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, t := range u.tools {
		if t.Name == tool && t.Annotations != nil {
			return annotations(t)
		}
	}
	return nil
}

// Sync brings the role servers in line with the current policy at once;
// call it after a policy reload, so that connected agents hear of the
// change without waiting for their next request.
func (b *Broker) Sync() { b.sync() }

// sync makes every role server offer exactly the tools the policy lets that
// role see. The SDK tells connected sessions when their list changed.
func (b *Broker) sync() {
	set := b.policies.Current()
	defer b.endUngrantedSubscriptions(set)
	b.mu.Lock()
	defer b.mu.Unlock()
	if set != nil {
		b.synced = set.VersionString()
		for _, r := range set.Roles() {
			if b.roles[r.Name] == nil {
				b.roles[r.Name] = b.newRoleServer(r.Name)
			}
		}
	} else {
		b.synced = ""
	}
	for role, rs := range b.roles {
		b.syncRole(set, role, rs)
	}
}

// newRoleServer returns the MCP server of a role, with nothing registered
// yet: the agent side of the broker. The capabilities it is made with are
// all the broker can relay; each agent is told those of the role's
// upstreams only (see announce).
func (b *Broker) newRoleServer(role string) *roleServer {
	srv := mcp.NewServer(&mcp.Implementation{Name: "amg", Title: "AMG MCP gateway", Version: "1"}, &mcp.ServerOptions{
		SubscribeHandler:   b.subscribe,
		UnsubscribeHandler: b.unsubscribe,
		CompletionHandler:  b.complete,
		GetSessionID:       b.newSessionID,
		// Every list is the role's, filtered for it, and every resource
		// read one the role may make: no shared cache may serve them to
		// another client, whatever the upstream said of its own.
		SetCacheable: func(_ context.Context, _ mcp.Request, c *mcp.Cacheable) { c.CacheScope = "private" },
		// An agent asking for a version authz refuses (2024-11-05) is
		// offered the newest it accepts, as the handshake provides.
		SupportedProtocolVersions: authz.ProtocolVersions(),
		Capabilities: &mcp.ServerCapabilities{
			Tools:       &mcp.ToolCapabilities{ListChanged: true},
			Prompts:     &mcp.PromptCapabilities{ListChanged: true},
			Resources:   &mcp.ResourceCapabilities{ListChanged: true, Subscribe: true},
			Completions: &mcp.CompletionCapabilities{},
			// Deprecated from 2026-07-28 on; older agents use it.
			//lint:ignore SA1019 offered to protocol versions that have it
			Logging: &mcp.LoggingCapabilities{},
		},
	})
	srv.AddReceivingMiddleware(b.trackSession, b.passLogLevel, b.announce(role), hideUnlisted)
	srv.AddSendingMiddleware(restoreElicitSchema)
	srv.AddResourceTemplate(&mcp.ResourceTemplate{URITemplate: unlistedTemplate, Name: "unlisted"}, b.readUnlisted)
	return &roleServer{
		srv:       srv,
		tools:     map[string]*mcp.Tool{},
		prompts:   map[string]*mcp.Prompt{},
		resources: map[string]*mcp.Resource{},
		templates: map[string]*mcp.ResourceTemplate{},
	}
}

// syncRole brings one role server's tools, prompts and resources in line
// with what the policy lets the role see of each upstream's catalogue.
func (b *Broker) syncRole(set *policy.Set, role string, rs *roleServer) {
	tools, prompts, resources := map[string]*mcp.Tool{}, map[string]*mcp.Prompt{}, map[string]*mcp.Resource{}
	templates := map[string]*mcp.ResourceTemplate{}
	for _, name := range b.names {
		u := b.ups[name]
		u.mu.Lock()
		for _, t := range u.tools {
			if decision.ToolVisible(set, role, name, t.Name) {
				tools[b.ns.Join(name, t.Name)] = t
			}
		}
		for _, p := range u.prompts {
			if decision.PromptVisible(set, role, name, p.Name) {
				prompts[b.ns.Join(name, p.Name)] = p
			}
		}
		for _, r := range u.resources {
			if decision.ResourceVisible(set, role, name, r.URI) {
				resources[b.ns.JoinURI(name, r.URI)] = r
			}
		}
		// A template is listed when the role's resource globs cover it
		// as written ("notion://{ws}/pages/*" is covered by
		// "notion://*/pages/*"); each read is decided on its own URI.
		for _, rt := range u.templates {
			if decision.ResourceVisible(set, role, name, rt.URITemplate) {
				templates[b.ns.JoinURI(name, rt.URITemplate)] = rt
			}
		}
		u.mu.Unlock()
	}
	reconcile(rs.tools, tools, rs.srv.RemoveTools, func(n string, t *mcp.Tool) {
		server, _, _ := b.ns.Split(n)
		shown := *t
		shown.Name = n
		rs.srv.AddTool(&shown, b.forward(server, t.Name))
	})
	reconcile(rs.prompts, prompts, rs.srv.RemovePrompts, func(n string, p *mcp.Prompt) {
		server, _, _ := b.ns.Split(n)
		shown := *p
		shown.Name = n
		rs.srv.AddPrompt(&shown, b.forwardPrompt(server, p.Name))
	})
	reconcile(rs.resources, resources, rs.srv.RemoveResources, func(uri string, r *mcp.Resource) {
		server, _, _ := b.ns.SplitURI(uri)
		shown := *r
		shown.URI = uri
		rs.srv.AddResource(&shown, b.forwardResource(server, r.URI))
	})
	reconcile(rs.templates, templates, rs.srv.RemoveResourceTemplates, func(tmpl string, rt *mcp.ResourceTemplate) {
		server, _, _ := b.ns.SplitURI(tmpl)
		shown := *rt
		shown.URITemplate = tmpl
		rs.srv.AddResourceTemplate(&shown, b.forwardResource(server, ""))
	})
}

// unlistedTemplate matches every URI (made of the characters a URI may
// hold), so that the SDK reads through readUnlisted what no resource or
// template of the upstreams' lists serves. The SDK tries resources before
// templates, and templates in the order of their text, in which this one
// comes after every gateway URI.
const unlistedTemplate = "{+amg_unlisted}"

// readUnlisted reads a resource its upstream does not list: one it links
// to, or makes on demand, which the protocol does not promise to list.
// authz has decided on the URI as on any other. A URI that names no
// upstream is not found, as the SDK answers when nothing serves it.
func (b *Broker) readUnlisted(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	server, _, err := b.ns.SplitURI(req.Params.URI)
	if err != nil || b.ups[server] == nil {
		return nil, mcp.ResourceNotFoundError(req.Params.URI)
	}
	return b.forwardResource(server, "")(ctx, req)
}

// hideUnlisted is receiving middleware of a role server that keeps
// unlistedTemplate, which no upstream offers, out of the templates agents
// are shown.
func hideUnlisted(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		res, err := next(ctx, method, req)
		if r, ok := res.(*mcp.ListResourceTemplatesResult); ok {
			r.ResourceTemplates = slices.DeleteFunc(r.ResourceTemplates, func(rt *mcp.ResourceTemplate) bool {
				return rt.URITemplate == unlistedTemplate
			})
		}
		return res, err
	}
}

// reconcile makes what a role server has registered (have, keyed by the
// name agents see) equal to want: it removes what is gone, and adds what
// is new or whose upstream definition changed (each refresh of an
// upstream's lists brings new definitions, so pointers tell).
func reconcile[T any](have, want map[string]*T, remove func(...string), add func(string, *T)) {
	var gone []string
	for k := range have {
		if _, ok := want[k]; !ok {
			gone = append(gone, k)
			delete(have, k)
		}
	}
	if len(gone) > 0 {
		remove(gone...)
	}
	for k, v := range want {
		if have[k] != v {
			add(k, v)
			have[k] = v
		}
	}
}

// serverFor picks the role server for a request whose headers the
// broker has already checked against its decision token.
func (b *Broker) serverFor(r *http.Request) *mcp.Server {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rs := b.roles[r.Header.Get(authz.HeaderRole)]; rs != nil {
		return rs.srv
	}
	return nil
}

// ServeHTTP serves one agent request that authz allowed.
func (b *Broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(b.maxBody)+1))
	if err != nil || len(body) > b.maxBody {
		const why = "request body too large or unreadable"
		b.record(authz.Decision{}, string(authz.CodeBodyTooLarge), why)
		refuse(w, http.StatusRequestEntityTooLarge, why)
		return
	}
	d, err := b.signer.Verify(r.Header.Get(authz.HeaderDecision), body)
	if err != nil {
		b.log.Warn("request without a valid decision refused", "err", err, "remote", r.RemoteAddr)
		b.record(d, CodeDecisionInvalid, err.Error())
		refuse(w, http.StatusForbidden, "request was not authorized by the gateway: "+err.Error())
		return
	}
	if r.Header.Get(authz.HeaderAgent) != d.Agent || r.Header.Get(authz.HeaderRole) != d.Role ||
		r.Header.Get(authz.HeaderDecisionID) != d.ID {
		b.record(d, CodeIdentityMismatch, "identity headers do not match the decision")
		refuse(w, http.StatusForbidden, "identity headers do not match the decision")
		return
	}
	// A decision names its request's method and session (tokens of
	// replicas older than that name neither).
	if d.Method != "" && (r.Method != d.Method || r.Header.Get("Mcp-Session-Id") != d.Session) {
		b.record(d, CodeIdentityMismatch, "the request's method or session is not the one decided on")
		refuse(w, http.StatusForbidden, "the request's method or session is not the one decided on")
		return
	}
	// A decision is served once: the same token again is a replay.
	switch first, err := b.spent.Spend(r.Context(), d.ID, d.Expires); {
	case err != nil:
		b.log.Error("cannot record a decision as served; refusing it", "decision_id", d.ID, "err", err)
		b.record(d, CodeDecisionUnrecorded, "the gateway could not record the decision as served")
		refuse(w, http.StatusServiceUnavailable, "the gateway could not record the decision as served; try again")
		return
	case !first:
		b.log.Warn("a decision served before was presented again", "decision_id", d.ID, "remote", r.RemoteAddr)
		b.record(d, CodeDecisionReplayed, "the decision was served before")
		refuse(w, http.StatusForbidden, "request was not authorized by the gateway: its decision was served before")
		return
	}
	if b.stateless != nil && b.statelessRequest(r, body) {
		b.serveStateless(w, r, d, body)
		return
	}
	owner := d.Agent + "\x00" + d.Role
	sid := r.Header.Get("Mcp-Session-Id")
	if sid != "" {
		o, ok := b.owners.Load(sid)
		if !ok && b.sessionStore != nil && !b.isBuried(sid) {
			// Perhaps another replica's: take it over if it is this agent's.
			// Whose it is now is asked again: another agent's request may
			// have taken it over meanwhile, and one that nobody here owns
			// may be halfway through being taken over, already known to
			// the SDK.
			err := b.adopt(r, sid, owner, d.Role)
			if errors.Is(err, errSessionStore) {
				b.record(d, CodeSessionUnavailable, "the gateway could not look up the session in its session store")
				refuse(w, http.StatusServiceUnavailable, "the gateway could not look up this session; try again")
				return
			}
			if o, ok = b.owners.Load(sid); !ok {
				if errors.Is(err, errNotOwned) {
					b.record(d, CodeSessionNotOwned, "the session belongs to another agent")
				}
				http.Error(w, "session not found", http.StatusNotFound)
				return
			}
		}
		if ok && o != owner {
			// Another agent's session: answer as for an unknown one, and
			// record the attempt, which authz recorded as allowed.
			b.record(d, CodeSessionNotOwned, "the session belongs to another agent")
			http.Error(w, "session not found", http.StatusNotFound)
			return
		}
	} else {
		// Whether the request makes a session is read from its body as
		// authz read it; a body that cannot be read so is not guessed at.
		var parsed *mcpfilter.Body
		if r.Method == http.MethodPost {
			if parsed, err = b.envelope(r, body); err != nil {
				b.refuseUnreadable(w, d, err)
				return
			}
		}
		mayOpen, initializes := opensSession(r, parsed)
		if r.Method == http.MethodPost && !mayOpen {
			// The SDK would make a session of it, and then refuse the
			// request with a code JSON-RPC does not have.
			const why = "this request needs the Mcp-Session-Id header of a session; begin one with initialize"
			b.record(d, CodeSessionRequired, why)
			writeRPCError(w, http.StatusBadRequest, singleID(parsed), mcpfilter.CodeInvalidRequest, why)
			return
		}
		// An initialize makes a session: it takes one of the agent's,
		// given back if the SDK makes none.
		var slot *sessionSlot
		if initializes {
			var n int
			if slot, n = b.reserveSession(d.Agent); slot == nil {
				why := fmt.Sprintf("agent %q has %d sessions open, as many as the gateway allows it: end one (DELETE), or let one go idle", d.Agent, n)
				b.record(d, CodeSessionLimit, why)
				writeRPCError(w, http.StatusTooManyRequests, singleID(parsed), authz.RPCRateLimited, why)
				return
			}
			defer slot.release()
		}
		made := &sessionRecorder{ResponseWriter: w, b: b, owner: owner, slot: slot}
		defer made.settle()
		w = made
		// New sessions are made one at a time, until the SDK has taken
		// their id, so that an adoption's id goes to the adopted session
		// only (see newSessionID).
		defer b.endSession(b.beginSession(""))
	}
	as := b.sessionByID(sid)
	if !b.speaksSessionVersion(w, r, d, as, body) {
		return
	}
	// The session's tokens: once all are gone, so is the session.
	if as != nil && d.TokenID != "" {
		as.useToken(d.TokenID)
	}
	if set := b.policies.Current(); set != nil && set.VersionString() != b.syncedVersion() {
		b.sync()
	}
	if d.Verdict == "needs_approval" {
		if b.approvals == nil {
			// Without an approval store such calls are refused, never run.
			b.record(d, CodeApprovalUnavailable, "approval required but no approval store is configured")
			refuseCall(w, d, body, "this call needs human approval, and no approval store is configured")
			return
		}
		b.park(w, r, as, d, body)
		return
	}
	if as != nil {
		b.active(as)
		if b.serveDirect(w, r, as, d, body) {
			return
		}
	}
	if r.Method == http.MethodGet {
		// The agent's stream of server messages lasts as long as its
		// session, unless the gateway drains (the agent may reconnect).
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		defer context.AfterFunc(b.drained, cancel)()
		r = r.WithContext(ctx)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	b.handler.ServeHTTP(w, r)
}

// Codes of the broker's refusals, as metric labels and audit fields.
const (
	CodeDecisionInvalid = "decision_invalid"
	// A decision presented again after it was served (a replay), and one
	// the broker could not record as served.
	CodeDecisionReplayed    = "decision_replayed"
	CodeDecisionUnrecorded  = "decision_unrecorded"
	CodeIdentityMismatch    = "identity_mismatch"
	CodeApprovalUnavailable = "approval_unavailable"
	// A request naming another agent's session, refused as unknown, and
	// one naming a session another replica may hold, refused because the
	// session store could not be read.
	CodeSessionNotOwned    = "session_not_owned"
	CodeSessionUnavailable = "session_unavailable"
	// A request without a session that needs one.
	CodeSessionRequired = "session_required"
	// A new session past the agent's limit (Options.MaxSessionsPerAgent).
	CodeSessionLimit = "session_limit"
	// A request under the id of a call of its session still in flight or
	// waiting for approval, and a cancellation whose id names several
	// calls of a token's state (see idInUse and directCancel).
	CodeRequestIDInUse  = "request_id_in_use"
	CodeCancelAmbiguous = "cancel_ambiguous"
	// An allowed call that reached its upstream, and one that failed there.
	CodeExecuted      = "executed"
	CodeUpstreamError = "upstream_error"
)

// record audits a refusal. What the decision token said is recorded only
// when the token verified; a forged one's claims are not evidence.
func (b *Broker) record(d authz.Decision, code, reason string) {
	if b.audit == nil {
		return
	}
	rec := &audit.Record{Time: time.Now(), DecisionID: d.ID, Agent: d.Agent, Role: d.Role, TokenID: d.TokenID,
		PolicyVersion: d.PolicyVersion, Verdict: "deny", Code: code, Reason: reason, Method: "broker"}
	if err := b.audit.Log(rec); err != nil {
		b.log.Error("audit log cannot record a broker refusal", "code", code, "err", err)
	}
}

func (b *Broker) syncedVersion() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.synced
}

// refuse answers a request that may not be served at all with a JSON-RPC
// error, so that MCP clients show why.
func refuse(w http.ResponseWriter, status int, msg string) {
	writeError(w, status, json.RawMessage("null"), msg)
}

// refuseCall answers a call of d needing approval that cannot wait for
// it with a JSON-RPC error carrying its id, which MCP clients report as
// that call's result.
func refuseCall(w http.ResponseWriter, d authz.Decision, body []byte, msg string) {
	writeJSON(w, approvalError(requestID(body), authz.RPCDenied, CodeApprovalUnavailable, d.ID, "", msg))
}

// requestID is the id of body's request when body is one request, else
// null. body was read within the broker's limit, which may be above
// mcpfilter's default.
func requestID(body []byte) json.RawMessage {
	parsed, err := mcpfilter.Parse(body, &mcpfilter.Options{MaxBytes: len(body), SkipArgs: true})
	if err != nil {
		return json.RawMessage("null")
	}
	return singleID(parsed)
}

// singleID is the id of parsed's request when it is one request, else
// null.
func singleID(parsed *mcpfilter.Body) json.RawMessage {
	if parsed != nil && !parsed.Batch && len(parsed.Messages) == 1 && parsed.Messages[0].ID != nil {
		return parsed.Messages[0].ID
	}
	return json.RawMessage("null")
}

// envelope parses body as authz did (within the broker's limit, a batch
// only under the protocol version that has them), without the arguments
// authz decided on.
func (b *Broker) envelope(r *http.Request, body []byte) (*mcpfilter.Body, error) {
	return mcpfilter.Parse(body, &mcpfilter.Options{MaxBytes: b.maxBody, SkipArgs: true,
		AllowBatch: authz.BatchesAllowed(r.Header.Get("Mcp-Protocol-Version"))})
}

// refuseUnreadable answers a request whose body the broker cannot parse
// as authz did (their limits or protocol versions differ: replicas
// configured apart, say) with what is wrong with it, and records it.
func (b *Broker) refuseUnreadable(w http.ResponseWriter, d authz.Decision, err error) {
	code, rpcCode, id := authz.CodeMalformedRequest, mcpfilter.CodeInvalidRequest, json.RawMessage("null")
	var perr *mcpfilter.Error
	if errors.As(err, &perr) {
		rpcCode = perr.JSONRPCCode()
		if perr.ID != nil {
			id = perr.ID
		}
		if perr.Reason == mcpfilter.ReasonTooLarge {
			code = authz.CodeBodyTooLarge
		}
	}
	why := "the gateway cannot read the request: " + err.Error()
	b.record(d, string(code), why)
	writeRPCError(w, http.StatusBadRequest, id, rpcCode, why)
}

// opensSession reports whether a POST without a session id, whose body
// is parsed, may go to the SDK: one that begins a session (initialize,
// which initializes reports, alone or in a batch), or asks what the
// gateway serves (server/discover), or speaks a protocol version without
// sessions, which the SDK answers with the versions it serves.
func opensSession(r *http.Request, parsed *mcpfilter.Body) (may, initializes bool) {
	if parsed != nil {
		for _, m := range parsed.Messages {
			if m.Kind == mcpfilter.KindRequest && m.Method == "initialize" {
				return true, true
			}
			may = may || m.Kind == mcpfilter.KindRequest && m.Method == "server/discover"
		}
	}
	return may || r.Header.Get("Mcp-Protocol-Version") >= perRequestFrom, false
}

// writeError answers with a JSON-RPC error of the gateway's refusal code.
func writeError(w http.ResponseWriter, status int, id json.RawMessage, msg string) {
	writeRPCError(w, status, id, authz.RPCDenied, msg)
}

// writeRPCError answers with a JSON-RPC error of code.
func writeRPCError(w http.ResponseWriter, status int, id json.RawMessage, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": id,
		"error": map[string]any{"code": code, "message": msg}})
}

// sessionRecorder notes which agent a new MCP session belongs to, so that
// no other agent can use its session id, and counts it in the slot
// reserved for it.
type sessionRecorder struct {
	http.ResponseWriter
	b     *Broker
	owner string
	slot  *sessionSlot
	done  bool
	sid   string // the session recorded
}

func (s *sessionRecorder) WriteHeader(code int) {
	if !s.done {
		s.done = true
		switch sid := s.Header().Get("Mcp-Session-Id"); {
		case sid == "":
		case s.slot != nil:
			if _, had := s.b.owners.LoadOrStore(sid, s.owner); !had {
				s.slot.take()
				s.sid = sid
			}
		default:
			// A session the SDK made of something else than an
			// initialize: counted, whatever the limit, since it exists.
			s.b.own(sid, s.owner)
			s.sid = sid
		}
	}
	s.ResponseWriter.WriteHeader(code)
}

// settle, once the SDK has served the request, forgets the session it
// recorded if the broker has no state of it: the SDK gives a session its
// id before it reads the request, and closes it unused when it cannot
// (an initialize whose params it cannot decode), without the broker's
// middleware ever seeing it. Nothing else would count it out, and the
// agent would lose one of its sessions for good.
func (s *sessionRecorder) settle() {
	if s.sid != "" && s.b.sessionByID(s.sid) == nil {
		s.b.disown(s.sid)
	}
}

func (s *sessionRecorder) Write(p []byte) (int, error) {
	if !s.done {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(p)
}

func (s *sessionRecorder) Flush() { flush(s.ResponseWriter) }

func (s *sessionRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// forward is the handler of server__tool: it calls tool on server with the
// arguments exactly as the agent sent them and authz decided on. The
// resources its result links to or embeds are given the URIs agents read
// them by (see agentURIs).
func (b *Broker) forward(server, tool string) mcp.ToolHandler {
	return func(ctx context.Context, req *mcp.CallToolRequest) (res *mcp.CallToolResult, err error) {
		params := &mcp.CallToolParams{Name: tool, Meta: upstreamMeta(req.Params.Meta)}
		if len(req.Params.Arguments) > 0 {
			params.Arguments = req.Params.Arguments
		}
		start := time.Now()
		err = b.callUpstream(ctx, req.Session, server, req.Params.GetProgressToken(), func(ctx context.Context, cs *mcp.ClientSession) (err error) {
			res, err = cs.CallTool(ctx, params)
			return err
		})
		b.recordCall(req, server, tool, time.Since(start), res, err)
		if err != nil {
			return nil, upstreamError(server, err)
		}
		b.agentURIs(server, res.Content...)
		return res, nil
	}
}

// agentURIs gives the resource_link and embedded resource blocks of
// content, from server, the URIs agents read those resources by, so that
// an agent can read what an upstream links to in a tool result or prompt.
// Other content, and a tool result's structured content, is the
// upstream's own data, and stays as it was.
func (b *Broker) agentURIs(server string, content ...mcp.Content) {
	for _, c := range content {
		switch c := c.(type) {
		case *mcp.ResourceLink:
			if c.URI != "" {
				c.URI = b.ns.JoinURI(server, c.URI)
			}
		case *mcp.EmbeddedResource:
			if c.Resource != nil && c.Resource.URI != "" {
				c.Resource.URI = b.ns.JoinURI(server, c.Resource.URI)
			}
		}
	}
}

// recordCall audits what became of an allowed tool call upstream.
func (b *Broker) recordCall(req *mcp.CallToolRequest, server, tool string, took time.Duration, res *mcp.CallToolResult, err error) {
	if req.Extra == nil {
		return
	}
	status, reason := "ok", ""
	switch {
	case err != nil:
		status, reason = "error", b.auditedError(err, req.Extra.Header.Get(authz.HeaderRole), req.Params.Arguments)
	case res != nil && res.IsError:
		status = "tool_error"
	}
	b.recordUpstream(context.Background(), req.Extra.Header, server, tool, took, status, reason)
}

// recordUpstream audits the upstream outcome (ok, tool_error or error) of
// an allowed call, under the decision id authz recorded the decision with
// (ServeHTTP has checked the headers against the signed decision), and
// the approval that released it, if one did (see withApproval).
func (b *Broker) recordUpstream(ctx context.Context, h http.Header, server, tool string, took time.Duration, status, reason string) {
	if b.tel != nil {
		b.tel.RecordUpstream(context.Background(), server, status, took)
	}
	if b.audit == nil {
		return
	}
	rec := &audit.Record{Time: time.Now(), DecisionID: h.Get(authz.HeaderDecisionID), Agent: h.Get(authz.HeaderAgent),
		Role: h.Get(authz.HeaderRole), Server: server, Tool: tool, Method: "tools/call", Verdict: "allow",
		Code: CodeExecuted, UpstreamStatus: status, UpstreamMicros: took.Microseconds(), Reason: reason, ApprovalID: approvalOf(ctx)}
	if status == "error" {
		rec.Code = CodeUpstreamError
	}
	if err := b.audit.Log(rec); err != nil {
		b.log.Error("audit log cannot record an upstream call", "decision_id", rec.DecisionID, "err", err)
	}
}

// connect opens a client session to u within its connect timeout, asking
// for protocol version (empty: the latest). obs, if not nil, sees the
// session's notifications in wire order (see tap).
//
// It returns when ctx ends, or the timeout: the SDK closes the connection
// of a session that failed to initialize before it returns, and closing a
// stdio server's waits for the server to end (up to 10 s), which the
// request, and the agent's others waiting for this connection, must not.
// The closing goes on in the background, as dropUpstreamSession's does.
func (u *upstream) connect(ctx context.Context, opts *mcp.ClientOptions, version string, obs observer, mw ...mcp.Middleware) (*mcp.ClientSession, mcp.Transport, error) {
	ctx, cancel := context.WithTimeout(ctx, u.ConnectTimeout)
	defer cancel()
	t, err := u.Transport(ctx)
	if err != nil {
		return nil, nil, setupError{err}
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "amg", Version: "1"}, opts)
	c.AddReceivingMiddleware(mw...)
	type connected struct {
		cs  *mcp.ClientSession
		err error
	}
	done := make(chan connected, 1)
	go func() {
		cs, err := c.Connect(ctx, tap(t, obs), &mcp.ClientSessionOptions{ProtocolVersion: version})
		done <- connected{cs, err}
	}()
	select {
	case r := <-done:
		return r.cs, t, r.err
	case <-ctx.Done():
		u.dropping.Go(func() {
			if r := <-done; r.cs != nil {
				r.cs.Close() // connected as ctx ended: too late
			}
		})
		return nil, nil, fmt.Errorf("connecting: %w", context.Cause(ctx))
	}
}

// forwardPrompt is the handler of server__prompt. The resources its
// messages link to or embed are given the URIs agents read them by.
func (b *Broker) forwardPrompt(server, prompt string) mcp.PromptHandler {
	return func(ctx context.Context, req *mcp.GetPromptRequest) (res *mcp.GetPromptResult, err error) {
		err = b.onUpstream(ctx, req.Session, server, req.Params.GetProgressToken(), func(ctx context.Context, cs *mcp.ClientSession) (err error) {
			res, err = cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: prompt, Arguments: req.Params.Arguments, Meta: upstreamMeta(req.Params.Meta)})
			return err
		})
		if res != nil {
			for _, m := range res.Messages {
				if m != nil {
					b.agentURIs(server, m.Content)
				}
			}
		}
		return res, err
	}
}

// forwardResource is the handler of a resource's agent-side URI, or with
// an empty uri of a template's: the upstream URI is then the one the agent
// asked for, unprefixed. The contents carry the URI the agent asked for,
// not the upstream's.
func (b *Broker) forwardResource(server, uri string) mcp.ResourceHandler {
	return func(ctx context.Context, req *mcp.ReadResourceRequest) (res *mcp.ReadResourceResult, err error) {
		uri := uri
		if uri == "" {
			if _, uri, err = b.ns.SplitURI(req.Params.URI); err != nil {
				return nil, err
			}
		}
		err = b.onUpstream(ctx, req.Session, server, req.Params.GetProgressToken(), func(ctx context.Context, cs *mcp.ClientSession) (err error) {
			res, err = cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri, Meta: upstreamMeta(req.Params.Meta)})
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, c := range res.Contents {
			if c != nil && c.URI != "" {
				c.URI = b.ns.JoinURI(server, c.URI)
			}
		}
		return res, nil
	}
}

// complete passes a completion request (decided by authz like the prompt
// or template it refers to) to that prompt's or template's upstream, with
// the reference in the upstream's own names.
func (b *Broker) complete(ctx context.Context, req *mcp.CompleteRequest) (res *mcp.CompleteResult, err error) {
	ref := *req.Params.Ref
	var server string
	if ref.Type == mcpfilter.RefPrompt {
		server, ref.Name, err = b.ns.Split(ref.Name)
	} else {
		server, ref.URI, err = b.ns.SplitURI(ref.URI)
	}
	if err != nil {
		return nil, err
	}
	params := *req.Params
	params.Ref, params.Meta = &ref, upstreamMeta(params.Meta)
	err = b.onUpstream(ctx, req.Session, server, nil, func(ctx context.Context, cs *mcp.ClientSession) (err error) {
		res, err = cs.Complete(ctx, &params)
		return err
	})
	return res, err
}

// subscribe passes an agent's resource subscription (which authz has
// decided like a read) to the resource's upstream, on the agent's own
// upstream session; its updates come back through relayNotification.
func (b *Broker) subscribe(ctx context.Context, req *mcp.SubscribeRequest) error {
	server, uri, err := b.ns.SplitURI(req.Params.URI)
	if err != nil {
		return err
	}
	return b.onUpstream(ctx, req.Session, server, nil, func(ctx context.Context, cs *mcp.ClientSession) error {
		if err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); err != nil {
			return err
		}
		b.subscribed(b.agentSession(req.Session), b.ups[server], cs, uri)
		return nil
	})
}

func (b *Broker) unsubscribe(ctx context.Context, req *mcp.UnsubscribeRequest) error {
	server, uri, err := b.ns.SplitURI(req.Params.URI)
	if err != nil {
		return err
	}
	b.agentSession(req.Session).unsubscribed(server, uri)
	return b.onUpstream(ctx, req.Session, server, nil, func(ctx context.Context, cs *mcp.ClientSession) error {
		return cs.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: uri})
	})
}

// onUpstream runs fn on the agent session's connection to server, within
// the server's call timeout. A failure comes back as a JSON-RPC error
// naming the server; a broken connection is dropped so that the next call
// opens a new one (the upstream may have restarted).
//
// While fn runs, what the upstream says about the request (progress under
// token, log messages) is relayed to the agent on the request's stream.
func (b *Broker) onUpstream(ctx context.Context, ss *mcp.ServerSession, server string, token any, fn func(context.Context, *mcp.ClientSession) error) error {
	if err := b.callUpstream(ctx, ss, server, token, fn); err != nil {
		return upstreamError(server, err)
	}
	return nil
}

// callUpstream is onUpstream returning the failure itself rather than
// the agent's error, for a caller that audits it (see auditedError).
func (b *Broker) callUpstream(ctx context.Context, ss *mcp.ServerSession, server string, token any, fn func(context.Context, *mcp.ClientSession) error) error {
	u := b.ups[server]
	as, cs, err := b.upstreamSession(ctx, ss, u)
	if err != nil {
		return err
	}
	defer as.calls.add(ctx, ss, server, token)()
	ctx, cancel := context.WithTimeout(ctx, u.CallTimeout)
	defer cancel()
	defer context.AfterFunc(b.cut, cancel)()
	if b.cut.Err() != nil {
		return errShuttingDown
	}
	if err := fn(ctx, cs); err != nil {
		b.dropIfBroken(as, server, cs, err)
		return b.cutShort(err)
	}
	return nil
}

// dropIfBroken forgets an upstream session whose connection failed, so
// the next call opens a new one. Neither the upstream answering with a
// JSON-RPC error nor a call cancelled or timed out (the SDK then returns
// the context's error) says so: dropping the session would drop the
// agent's resource subscriptions with it.
func (b *Broker) dropIfBroken(as *agentSession, server string, cs *mcp.ClientSession, err error) {
	var rpcErr *jsonrpc.Error
	if errors.As(err, &rpcErr) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return
	}
	b.dropUpstreamSession(as, server, cs)
}

// upstreamError is the JSON-RPC error an agent gets when an upstream
// fails: it names the server, never a credential.
func upstreamError(server string, err error) error {
	msg := fmt.Sprintf("upstream %q: %s", server, errorText(err, true))
	if errors.As(err, new(setupError)) {
		// The gateway's own configuration (a secret reference, a file, a
		// Vault path): the gateway's log names it, the agent is told only
		// where the fault lies.
		msg = fmt.Sprintf("upstream %q: the gateway could not prepare its connection to it (its log says why)", server)
	}
	var rpcErr *jsonrpc.Error
	if errors.As(err, &rpcErr) {
		return &jsonrpc.Error{Code: rpcErr.Code, Message: fmt.Sprintf("upstream %q: %s", server, rpcErr.Message), Data: rpcErr.Data}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		msg = fmt.Sprintf("upstream %q did not answer in time", server)
	}
	return &jsonrpc.Error{Code: RPCUpstreamError, Message: msg}
}

// errorText is err's message as it may leave the broker. An upstream URL
// is configuration that may hold a credential in its path or query, and
// net/http quotes the whole URL in its errors: the agent is told the
// request failed without the URL or the address it dialled, the audit log
// gets the scheme and host. URLs are found in the text, not through a
// *url.Error: the go-sdk flattens some failures with %v (its standalone
// event stream's, a reconnect's), which keeps net/http's words but drops
// the *url.Error.
func errorText(err error, forAgent bool) string {
	msg := err.Error()
	var oe *net.OpError
	if forAgent && errors.As(err, &oe) && oe.Err != nil {
		msg = strings.ReplaceAll(msg, oe.Error(), oe.Op+": "+oe.Err.Error())
	}
	return shortURLs(msg, forAgent)
}

// shortURLs is errorText for a text: the URLs in msg keep their scheme
// and host, or, forAgent, read "request".
func shortURLs(msg string, forAgent bool) string {
	short := func(raw string) string {
		if u, perr := url.Parse(raw); !forAgent && perr == nil && u.Host != "" {
			return u.Scheme + "://" + u.Host
		}
		return "request"
	}
	return urlsInText.ReplaceAllStringFunc(msg, func(s string) string {
		if !strings.HasPrefix(s, `"`) {
			return short(s)
		}
		raw, uerr := strconv.Unquote(s)
		if at := bareURL.FindStringIndex(raw); uerr == nil && at != nil && at[0] == 0 {
			return short(raw)
		}
		// A quoted text that is not a URL may still hold one.
		return bareURL.ReplaceAllStringFunc(s, short)
	})
}

// maxAuditedError bounds how much of an upstream's error message an audit
// record keeps: the upstream chooses its length.
const maxAuditedError = 256

// auditedError is the reason the audit log records for a call that
// failed upstream, worded alike whichever path the call took: any failure
// as errorText gives it, URLs keeping only their scheme and host, but an
// upstream's JSON-RPC error by its code and, quoted, at most
// maxAuditedError bytes of its message. The agent gets the message whole:
// it holds the agent's own data, which the upstream may echo, arguments
// the audit log hides included; the audit record's hides them (see
// Redactor) under the redaction rules of the agent's role in the policy
// in force. A role the policy no longer has, or no Redactor, records no
// message. A connection the gateway could not prepare is recorded as the
// agent is told of it: what the failure names goes to the gateway's log
// only.
func (b *Broker) auditedError(err error, role string, args json.RawMessage) string {
	var rpcErr *jsonrpc.Error
	switch {
	case errors.As(err, new(setupError)):
		return "the gateway could not prepare its connection to the upstream (its log says why)"
	case errors.As(err, &rpcErr):
		var r *policy.Role
		if set := b.policies.Current(); set != nil {
			r, _ = set.Role(role)
		}
		if r == nil || b.redactor == nil {
			return fmt.Sprintf("JSON-RPC error %d (its message is not recorded)", rpcErr.Code)
		}
		msg := shortURLs(b.redactor.Hide(rpcErr.Message, args, r.Redact), false)
		return fmt.Sprintf("JSON-RPC error %d: %s", rpcErr.Code, mcpfilter.Quote(msg, maxAuditedError))
	}
	return errorText(err, false)
}

var (
	// bareURL is an http(s) URL in a text, up to a space or a quote and
	// without the punctuation that follows it (`https://host/path: EOF`).
	bareURL = regexp.MustCompile(`(?i:https?://)[^\s"]*[^\s"',.:;)]`)
	// urlsInText is a text quoted as Go quotes it, as net/http quotes a
	// request's URL in its errors (`Get "https://host/path": EOF`), or a
	// bare URL.
	urlsInText = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|` + bareURL.String())
)

// setupError is a failure to prepare an upstream connection before any
// of it reaches the upstream (Upstream.Transport's): resolving its
// credentials, starting its command.
type setupError struct{ err error }

func (e setupError) Error() string { return e.err.Error() }
func (e setupError) Unwrap() error { return e.err }

// RPCUpstreamError is the JSON-RPC error code of an upstream that could
// not be reached or failed without a JSON-RPC error of its own.
const RPCUpstreamError = -32010

// relay passes what an upstream asks of the client on to the agent's
// session, and the agent's answers back: sampling and elicitation
// requests. The upstream session exists only for this agent, so nothing
// crosses between agents. A request goes on the stream of the call that
// caused it, whose context call returns (with several calls to the
// upstream in flight, it cannot tell which: the session's own stream).
// Notifications are relayed by the tap (see inflight.relay). A request
// the upstream gives up on (its handler's context ends) is cancelled at
// the agent too.
//
// Elicitations pass unchecked both ways (see relayElicitation): the
// client options come with receiving middleware for the upstream
// session's client that hands them over before the SDK's client checks
// them.
func relay(ss *mcp.ServerSession, call func() context.Context) (*mcp.ClientOptions, mcp.Middleware) {
	routed := func(hctx context.Context) (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithCancel(call())
		stop := context.AfterFunc(hctx, cancel)
		return ctx, func() { stop(); cancel() }
	}
	elicit := func(hctx context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
		ctx, done := routed(hctx)
		defer done()
		return relayElicitation(ctx, ss, req.Params)
	}
	caps, sampling, elicitation := upstreamCapabilities(ss)
	opts := &mcp.ClientOptions{Capabilities: caps}
	if sampling {
		// Sampling is deprecated from protocol 2026-07-28 on, but agents
		// and upstreams on older versions still use it; a gateway must
		// relay it. The handler with tools passes a request and its answer
		// whole (the other takes one content block, and drops tools).
		//lint:ignore SA1019 relayed for protocol versions that have it
		opts.CreateMessageWithToolsHandler = func(hctx context.Context, req *mcp.CreateMessageWithToolsRequest) (*mcp.CreateMessageWithToolsResult, error) {
			ctx, done := routed(hctx)
			defer done()
			//lint:ignore SA1019 relayed for protocol versions that have it
			return ss.CreateMessageWithTools(ctx, req.Params)
		}
	}
	if elicitation {
		// The middleware below answers every elicitation before the SDK
		// would call this.
		opts.ElicitationHandler = elicit
	}
	uncheckedElicitation := func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			if er, ok := req.(*mcp.ElicitRequest); ok {
				return elicit(ctx, er)
			}
			return next(ctx, method, req)
		}
	}
	return opts, uncheckedElicitation
}

// upstreamCapabilities are what the broker's client offers an upstream
// for the agent of session ss, and whether it relays sampling and
// elicitation: what the agent declared of those at initialize, so that
// an upstream asks only what the agent can answer, and no roots (see
// noRoots). From protocol 2026-07-28 on, an agent declares its
// capabilities with each request, and both are offered.
func upstreamCapabilities(ss *mcp.ServerSession) (caps *mcp.ClientCapabilities, sampling, elicitation bool) {
	caps = noRoots()
	p := ss.InitializeParams()
	if p == nil || p.Capabilities == nil || p.ProtocolVersion >= perRequestFrom {
		// The SDK fills in what it offers for each handler.
		return caps, true, true
	}
	//lint:ignore SA1019 relayed for protocol versions that have it
	if a := p.Capabilities.Sampling; a != nil {
		c := *a
		//lint:ignore SA1019 relayed for protocol versions that have it
		caps.Sampling, sampling = &c, true
	}
	if a := p.Capabilities.Elicitation; a != nil {
		c := *a
		caps.Elicitation, elicitation = &c, true
	}
	return caps, sampling, elicitation
}

// perRequestFrom is the first protocol version without the initialize
// handshake, whose requests each carry the client's capabilities.
const perRequestFrom = "2026-07-28"

// noRoots are the capabilities the broker's clients start from: none,
// roots included, which the SDK's client otherwise offers. A server may
// take a client's roots as the directories it is allowed to work in (the
// filesystem server replaces those it was started with by them): relayed,
// the agent's would let an agent move the scope the operator gave an
// upstream, and the gateway has none of its own. The SDK adds sampling
// and elicitation for the handlers set.
func noRoots() *mcp.ClientCapabilities { return &mcp.ClientCapabilities{} }

// relayElicitation asks the agent's session for what an upstream asked
// with p, and returns the agent's answer, both as they were sent. The
// SDK, asking and answering elicitations itself, checks a form's schema,
// and the answer against it, by its own reading of the specification,
// which refuses schemas that other clients take (titled multi-select
// items that also give their type, as the SDK's own conformance server
// sends them), and it fills the answer in with the schema's defaults. The
// agent's client and the upstream are the ones to judge both. So the
// schema goes to the agent's session in the context, not in p, and
// restoreElicitSchema, sending middleware of every role server, puts it
// back into the request as it goes out.
func relayElicitation(ctx context.Context, ss *mcp.ServerSession, p *mcp.ElicitParams) (*mcp.ElicitResult, error) {
	if p == nil || p.RequestedSchema == nil {
		return ss.Elicit(ctx, p)
	}
	bare := *p
	bare.RequestedSchema = nil
	return ss.Elicit(context.WithValue(ctx, elicitSchemaKey{}, p.RequestedSchema), &bare)
}

// elicitSchemaKey is the context key of the schema of an elicitation
// being relayed.
type elicitSchemaKey struct{}

// restoreElicitSchema is sending middleware that puts the schema of an
// elicitation relayElicitation relays back into its request.
func restoreElicitSchema(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		schema := ctx.Value(elicitSchemaKey{})
		// The SDK sends its requests typed by the Params interface.
		if r, ok := req.(*mcp.ServerRequest[mcp.Params]); ok && schema != nil {
			if ep, ok := r.Params.(*mcp.ElicitParams); ok && ep != nil && ep.RequestedSchema == nil {
				p := *ep
				p.RequestedSchema = schema
				req = &mcp.ServerRequest[mcp.Params]{Session: r.Session, Params: &p, Extra: r.Extra}
			}
		}
		return next(ctx, method, req)
	}
}

// UpstreamStatus is what the broker knows of an upstream: whether its
// catalogue session is connected, and what its lists offered when last
// read.
type UpstreamStatus struct {
	Name      string `json:"name"`
	Connected bool   `json:"connected"`
	Tools     int    `json:"tools"`
	Prompts   int    `json:"prompts"`
	Resources int    `json:"resources"`
	Templates int    `json:"resource_templates"`
}

// Status reports every upstream, by name.
func (b *Broker) Status() []UpstreamStatus {
	out := make([]UpstreamStatus, 0, len(b.names))
	for _, name := range b.names {
		u := b.ups[name]
		u.mu.Lock()
		out = append(out, UpstreamStatus{Name: name, Connected: u.catalog != nil,
			Tools: len(u.tools), Prompts: len(u.prompts), Resources: len(u.resources), Templates: len(u.templates)})
		u.mu.Unlock()
	}
	return out
}

// Package console is the operator's web console, served on the admin
// listener under /console/: the approvals queue, the audit log, shadow
// mode's would-be denials, agent tokens, the policy in force and a what-if
// replay of the audit log against another policy.
//
// Pages are rendered on the server with html/template; a little JavaScript
// keeps the approvals queue live and counts down to each expiry. Every
// asset is embedded, so the console works with no network beyond the
// gateway. An operator signs in with the admin token; the session is a
// signed cookie that signing out revokes (Deps.Sessions), every state
// change needs the session's CSRF token (and must not come from another
// origin), and no page that shows data may be cached.
package console

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/shadow"
	"github.com/amgateway/amg/internal/signout"
	"github.com/amgateway/amg/internal/tokens"
)

// Policies is the policy in force and how the last reload went.
type Policies interface {
	Current() *policy.Set
	Status() policy.Status
}

// Tokens manages agent tokens as `amg token` does; Revoke must take effect
// on the agent's next request.
type Tokens interface {
	List(ctx context.Context) ([]tokens.Token, error)
	Issue(ctx context.Context, agent, role string, ttl time.Duration) (secret string, t tokens.Token, err error)
	Revoke(ctx context.Context, id string) error
}

// ShadowCounts are shadow mode's would-be denials per role per day.
type ShadowCounts interface {
	Counts(ctx context.Context, from, to time.Time) ([]shadow.Count, error)
}

// Upstreams is the live view of the upstream servers: their names, in the
// order they are configured, and each one's tools as it last listed them.
type Upstreams interface {
	Names() []string
	policy.Catalog
}

// Deps is what the console shows and acts on. Token, Approvals, Tokens,
// Policies, Upstreams and Shadow are required.
type Deps struct {
	// Token is the admin token operators sign in with.
	Token     string
	Approvals approval.Store
	Tokens    Tokens
	Policies  Policies
	Upstreams Upstreams
	Shadow    ShadowCounts
	// Audit is the audit log the console searches and replays: the
	// gateway's file, or with replicas the stream they all ship to.
	Audit audit.Log
	// Sessions lists the live console sessions; nil keeps the list in
	// memory, where only this replica finds them, and a restart ends them.
	Sessions signout.List
}

// Options tune the console. A nil *Options is the zero value.
type Options struct {
	// ReadyDays is how many days in a row a shadow role's would-be
	// denials must be zero before it shows as ready to enforce; 0 means 7.
	ReadyDays int
	// ReadyMinCalls is how many calls decided in shadow mode those days
	// must hold: days without calls are no evidence. 0 means 1.
	ReadyMinCalls int
	// ChartDays is how many days the shadow chart shows; 0 means 30. It
	// is never fewer than ReadyDays nor more than shadow.MaxDays: a role
	// whose ReadyDays are more never shows as ready to enforce.
	ChartDays int
	// TraceURL links an audit record's trace id to a trace viewer: its
	// {trace_id} is replaced by the id, e.g.
	// http://localhost:16686/trace/{trace_id} for Jaeger. Empty: no link.
	TraceURL string
	// StagedPolicyDir, if set, holds the next policy; the replay page
	// offers to replay the audit log against it.
	StagedPolicyDir string
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console serves the console's pages.
type Console struct {
	d     Deps
	opts  Options
	pages map[string]*template.Template
	mux   *http.ServeMux
	key   []byte // signs session cookies and CSRF tokens
}

// New returns the console for d. It refuses an empty d.Token: sessions
// are signed with a key derived from it, which anyone could derive from
// an empty one.
func New(d Deps, opts *Options) (*Console, error) {
	if d.Token == "" {
		return nil, errors.New("console: no admin token to sign sessions with")
	}
	c := &Console{d: d}
	if opts != nil {
		c.opts = *opts
	}
	if c.opts.ReadyDays <= 0 {
		c.opts.ReadyDays = 7
	}
	c.opts.ReadyMinCalls = max(c.opts.ReadyMinCalls, 1)
	if c.opts.ChartDays <= 0 {
		c.opts.ChartDays = 30
	}
	c.opts.ChartDays = min(max(c.opts.ChartDays, c.opts.ReadyDays), shadow.MaxDays)
	if c.opts.Now == nil {
		c.opts.Now = time.Now
	}
	if c.opts.Logger == nil {
		c.opts.Logger = slog.New(slog.DiscardHandler)
	}
	c.key = sessionKey(d.Token)
	if c.d.Sessions == nil {
		c.d.Sessions = signout.NewMemory(c.opts.Now)
	}
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	c.routes()
	return c, nil
}

// ServeHTTP serves the console. Requests that change state and come from
// another origin are refused before any handler runs.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mux.ServeHTTP(w, r)
}

func (c *Console) routes() {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /console/static/", http.StripPrefix("/console/static/", staticHandler(http.FileServerFS(static))))
	mux.HandleFunc("GET /console/signin", c.signInPage)
	mux.HandleFunc("POST /console/signin", c.signIn)
	mux.HandleFunc("POST /console/signout", c.signedIn(c.signOut))
	mux.HandleFunc("GET /console/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/console/approvals", http.StatusSeeOther)
	})

	mux.HandleFunc("GET /console/approvals", c.signedIn(c.approvalsPage))
	mux.HandleFunc("GET /console/approvals/rows", c.signedIn(c.approvalRows))
	mux.HandleFunc("GET /console/approvals/{id}", c.signedIn(c.approvalPage))
	mux.HandleFunc("POST /console/approvals/{id}/{decision}", c.signedIn(c.decide))
	mux.HandleFunc("GET /console/audit", c.signedIn(c.auditPage))
	mux.HandleFunc("GET /console/shadow", c.signedIn(c.shadowPage))
	mux.HandleFunc("GET /console/shadow/chart.svg", c.signedIn(c.shadowChart))
	mux.HandleFunc("GET /console/tokens", c.signedIn(c.tokensPage))
	mux.HandleFunc("POST /console/tokens", c.signedIn(c.issueToken))
	mux.HandleFunc("POST /console/tokens/{id}/revoke", c.signedIn(c.revokeToken))
	mux.HandleFunc("GET /console/policy", c.signedIn(c.policyPage))
	mux.HandleFunc("GET /console/replay", c.signedIn(c.replayPage))
	mux.HandleFunc("POST /console/replay", c.signedIn(c.replay))
	// A cross-origin POST is refused whatever it carries; the CSRF token
	// each handler checks covers browsers that send neither Origin nor
	// Sec-Fetch-Site.
	c.mux = http.NewServeMux()
	c.mux.Handle("/console/", noStore(http.NewCrossOriginProtection().Handler(mux)))
}

// noStore forbids caching every response but the static assets: pages
// show tokens, payloads and audit records.
func noStore(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/console/static/") {
			w.Header().Set("Cache-Control", "no-store")
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Referrer-Policy", "same-origin")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "+
			"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.ServeHTTP(w, r)
	})
}

// staticHandler serves the embedded assets, files only.
func staticHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

// page is what every page template gets.
type page struct {
	Title   string
	Nav     string // the nav entry to highlight
	Session *session
	CSRF    string
	// Notice and Problem are shown at the top: what the last action did,
	// or why it failed.
	Notice, Problem string
	Data            any
}

// render writes the named page with status.
func (c *Console) render(w http.ResponseWriter, status int, name string, p page) {
	c.execute(w, status, name, "layout", p)
}

// fragment writes a template that is part of a page, for the scripts that
// refresh it.
func (c *Console) fragment(w http.ResponseWriter, pageName, name string, data any) {
	c.execute(w, http.StatusOK, pageName, name, data)
}

// execute renders template name of page pageName in full before writing
// it, so that a failure halfway gives an error, not half a page.
func (c *Console) execute(w http.ResponseWriter, status int, pageName, name string, data any) {
	t, ok := c.pages[pageName]
	if !ok {
		http.Error(w, "no such page "+pageName, http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, data); err != nil {
		c.opts.Logger.Error("console: rendering a page", "page", pageName, "template", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

var funcs = template.FuncMap{
	"utc": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	// short is an id cut to a prefix that is still unique in practice,
	// for tables; the full id is a link or tooltip away.
	"short": func(s string) string {
		if len(s) <= 14 {
			return s
		}
		return s[:12] + "…"
	},
	"dash": func(s string) string {
		if s == "" {
			return "—"
		}
		return s
	},
}

// parsePages parses each page template with the layout.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, name := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(name, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", name)
		if err != nil {
			return nil, err
		}
		pages[base] = t
	}
	return pages, nil
}

// sortBy sorts s by the time key gives, newest first if desc; the sort is
// stable, so equal times keep the store's order.
func sortBy[T any](s []T, key func(T) time.Time, desc bool) {
	slices.SortStableFunc(s, func(a, b T) int {
		if desc {
			return key(b).Compare(key(a))
		}
		return key(a).Compare(key(b))
	})
}

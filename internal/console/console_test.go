package console_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/admin"
	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/shadow"
	"github.com/amgateway/amg/internal/signout"
	"github.com/amgateway/amg/internal/testclock"
	"github.com/amgateway/amg/internal/tokens"
)

// The fixtures every test shares: one console over real in-memory stores,
// a policy compiled from the role files below, a fake upstream catalogue
// and an audit log in a temporary directory, all on an injected clock.

const adminToken = "amgadm_0123456789abcdef0123456789abcdef"

// start is the injected clock's first reading.
var start = time.Date(2026, 3, 20, 12, 0, 0, 0, time.UTC)

// Role files in force. dev may call every notion tool it names, but
// deleting needs approval through its approval rule; ops needs approval
// for create_page through the grant; support and trial are in shadow
// mode.
const (
	devRole = `role: dev
servers:
  notion:
    tools:
      - name: get_pages
      - name: search
      - name: delete_page
approvals:
  - match: "delete*"
    require: human
`
	opsRole = `role: ops
servers:
  notion:
    tools:
      - name: get_pages
      - name: create_page
        require_approval: true
`
	supportRole = `role: support
mode: shadow
servers:
  notion:
    tools:
      - name: search
`
	trialRole = `role: trial
mode: shadow
servers:
  notion:
    tools:
      - name: search
`
)

func roleFiles() []policy.File {
	return []policy.File{
		{Name: "dev.yaml", Data: []byte(devRole)},
		{Name: "ops.yaml", Data: []byte(opsRole)},
		{Name: "support.yaml", Data: []byte(supportRole)},
		{Name: "trial.yaml", Data: []byte(trialRole)},
	}
}

type fakePolicies struct {
	mu  sync.Mutex
	set *policy.Set
	st  policy.Status
}

func (p *fakePolicies) Current() *policy.Set {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.set
}

func (p *fakePolicies) Status() policy.Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

func (p *fakePolicies) setStatus(st policy.Status) {
	p.mu.Lock()
	p.st = st
	p.mu.Unlock()
}

// fakeUpstreams is the broker's live view: notion lists its tools, github
// has not (yet) been reached.
type fakeUpstreams struct {
	names []string
	tools map[string][]policy.Tool
}

func (u fakeUpstreams) Names() []string { return u.names }

func (u fakeUpstreams) Tools(server string) ([]policy.Tool, bool) {
	t, ok := u.tools[server]
	return t, ok
}

func yes() *bool { b := true; return &b }
func no() *bool  { b := false; return &b }

func upstreams() fakeUpstreams {
	schema := json.RawMessage(`{"type":"object","properties":{}}`)
	return fakeUpstreams{
		names: []string{"notion", "github"},
		tools: map[string][]policy.Tool{"notion": {
			{Name: "get_pages", InputSchema: schema, Annotations: &policy.Annotations{ReadOnly: yes(), Idempotent: yes(), OpenWorld: no()}},
			{Name: "search", InputSchema: schema, Annotations: &policy.Annotations{ReadOnly: yes(), OpenWorld: no()}},
			{Name: "create_page", InputSchema: schema}, // declares nothing: destructive and open-world by default
			{Name: "delete_page", InputSchema: schema, Annotations: &policy.Annotations{ReadOnly: no(), Destructive: yes(), OpenWorld: no()}},
		}},
	}
}

// tokenAdmin is console.Tokens as the gateway implements it: issue into
// the store, revoke through the Authenticator so that it applies at once.
type tokenAdmin struct {
	store *tokens.MemoryStore
	auth  *tokens.Authenticator
	now   func() time.Time
}

func (a tokenAdmin) List(ctx context.Context) ([]tokens.Token, error) { return a.store.List(ctx) }
func (a tokenAdmin) Revoke(ctx context.Context, id string) error      { return a.auth.Revoke(ctx, id) }
func (a tokenAdmin) Issue(ctx context.Context, agent, role string, ttl time.Duration) (string, tokens.Token, error) {
	return tokens.Issue(ctx, a.store, agent, role, ttl, a.now())
}

type env struct {
	t         *testing.T
	clock     *testclock.Clock
	approvals *approval.Memory
	tokens    *tokens.MemoryStore
	auth      *tokens.Authenticator
	shadow    *shadow.Memory
	policies  *fakePolicies
	ups       fakeUpstreams
	auditFile string
	h         *console.Console
}

// newEnv returns a console over fresh stores; opts (nil: defaults) gets
// the env's clock unless it has a Now of its own, and edits change the
// console's Deps.
func newEnv(t *testing.T, opts *console.Options, edits ...func(*console.Deps)) *env {
	t.Helper()
	e := &env{t: t, clock: testclock.New(start), approvals: approval.NewMemory(nil), tokens: tokens.NewMemoryStore(),
		shadow: shadow.NewMemory(), ups: upstreams(), auditFile: filepath.Join(t.TempDir(), audit.FileName)}
	e.auth = tokens.NewAuthenticator(e.tokens, &tokens.AuthOptions{Now: e.clock.Now})
	set, err := policy.Compile(roleFiles(), &policy.Options{Servers: e.ups.names, Catalog: e.ups})
	if err != nil {
		t.Fatalf("compiling the test policy: %v", err)
	}
	e.policies = &fakePolicies{set: set, st: policy.Status{At: start.Add(-time.Hour), Version: set.Version()}}
	var o console.Options
	if opts != nil {
		o = *opts
	}
	if o.Now == nil {
		o.Now = e.clock.Now
	}
	d := console.Deps{Token: adminToken, Approvals: e.approvals,
		Tokens: tokenAdmin{store: e.tokens, auth: e.auth, now: e.clock.Now}, Policies: e.policies, Upstreams: e.ups,
		Shadow: e.shadow, Audit: audit.FileLog(e.auditFile)}
	for _, edit := range edits {
		edit(&d)
	}
	e.h, err = console.New(d, &o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// operator is a signed-in browser: its session cookie and the CSRF token
// its pages carry.
type operator struct {
	name   string
	cookie *http.Cookie
	csrf   string
}

func (e *env) serve(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec
}

func newRequest(method, target string, body io.Reader, op *operator) *http.Request {
	req := httptest.NewRequest(method, "http://console.test"+target, body)
	if op != nil && op.cookie != nil {
		req.AddCookie(op.cookie)
	}
	return req
}

func (e *env) get(op *operator, target string) *httptest.ResponseRecorder {
	return e.serve(newRequest(http.MethodGet, target, nil, op))
}

// post sends form as given, with op's cookie: it does not add a CSRF
// token.
func (e *env) post(op *operator, target string, form url.Values) *httptest.ResponseRecorder {
	req := newRequest(http.MethodPost, target, strings.NewReader(form.Encode()), op)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return e.serve(req)
}

// act posts form with op's CSRF token, as the console's own forms do.
func (e *env) act(op *operator, target string, form url.Values) *httptest.ResponseRecorder {
	if form == nil {
		form = url.Values{}
	}
	form.Set("csrf", op.csrf)
	return e.post(op, target, form)
}

// upload posts a multipart form with op's CSRF token and files under the
// field "policy".
func (e *env) upload(op *operator, target string, fields map[string]string, files ...policy.File) *httptest.ResponseRecorder {
	e.t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if err := mw.WriteField("csrf", op.csrf); err != nil {
		e.t.Fatal(err)
	}
	for k, v := range fields {
		if err := mw.WriteField(k, v); err != nil {
			e.t.Fatal(err)
		}
	}
	for _, f := range files {
		w, err := mw.CreateFormFile("policy", f.Name)
		if err != nil {
			e.t.Fatal(err)
		}
		w.Write(f.Data)
	}
	if err := mw.Close(); err != nil {
		e.t.Fatal(err)
	}
	req := newRequest(http.MethodPost, target, &buf, op)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	return e.serve(req)
}

func sessionCookie(t *testing.T, rec *httptest.ResponseRecorder) *http.Cookie {
	t.Helper()
	for _, c := range rec.Result().Cookies() {
		if c.Name == "amg_console" {
			return c
		}
	}
	return nil
}

var csrfMeta = regexp.MustCompile(`<meta name="csrf-token" content="([0-9a-f]+)">`)

// signIn signs in as name and reads the CSRF token off the approvals page.
func (e *env) signIn(name string) *operator {
	e.t.Helper()
	rec := e.post(nil, "/console/signin", url.Values{"name": {name}, "token": {adminToken}})
	if rec.Code != http.StatusSeeOther {
		e.t.Fatalf("sign-in as %q = %d, want 303:\n%s", name, rec.Code, rec.Body)
	}
	op := &operator{name: name, cookie: sessionCookie(e.t, rec)}
	if op.cookie == nil {
		e.t.Fatalf("sign-in as %q set no session cookie", name)
	}
	page := e.get(op, "/console/approvals")
	if page.Code != http.StatusOK {
		e.t.Fatalf("approvals page after sign-in = %d", page.Code)
	}
	m := csrfMeta.FindStringSubmatch(page.Body.String())
	if m == nil {
		e.t.Fatalf("the approvals page has no CSRF token:\n%s", page.Body)
	}
	op.csrf = m[1]
	return op
}

// writeAudit appends recs to the env's audit log through a real file
// device, hash chain included.
func (e *env) writeAudit(recs ...audit.Record) {
	e.t.Helper()
	d, err := audit.NewFileDevice(e.auditFile, &audit.FileOptions{Sync: audit.SyncNever})
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range recs {
		if err := d.Write(&recs[i]); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		e.t.Fatal(err)
	}
}

// text is a page's HTML with entities decoded, to look for what a person
// reads; raw HTML is checked separately where escaping matters.
func text(rec *httptest.ResponseRecorder) string { return html.UnescapeString(rec.Body.String()) }

// problem is the page's problem banner, decoded; "" if none.
func problem(rec *httptest.ResponseRecorder) string {
	m := regexp.MustCompile(`(?s)<p class="problem" role="alert" data-testid="problem">(.*?)</p>`).FindStringSubmatch(rec.Body.String())
	if m == nil {
		return ""
	}
	return html.UnescapeString(m[1])
}

// notice is the page's notice banner, decoded; "" if none.
func notice(rec *httptest.ResponseRecorder) string {
	m := regexp.MustCompile(`(?s)<p class="notice" role="status" data-testid="notice">(.*?)</p>`).FindStringSubmatch(rec.Body.String())
	if m == nil {
		return ""
	}
	return html.UnescapeString(m[1])
}

func wantStatus(t *testing.T, rec *httptest.ResponseRecorder, want int) {
	t.Helper()
	if rec.Code != want {
		t.Fatalf("status %d, want %d; body:\n%s", rec.Code, want, rec.Body)
	}
}

func wantRedirect(t *testing.T, rec *httptest.ResponseRecorder, want string) {
	t.Helper()
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != want {
		t.Fatalf("got %d to %q, want 303 to %q; body:\n%s", rec.Code, rec.Header().Get("Location"), want, rec.Body)
	}
}

// follow GETs the Location of a redirect, as a browser does after a form.
func (e *env) follow(op *operator, rec *httptest.ResponseRecorder) *httptest.ResponseRecorder {
	e.t.Helper()
	if rec.Code != http.StatusSeeOther {
		e.t.Fatalf("status %d, want a 303 to follow; body:\n%s", rec.Code, rec.Body)
	}
	return e.get(op, rec.Header().Get("Location"))
}

func count(body, s string) int { return strings.Count(body, s) }

// ---- signed out ----

func TestSignedOutPagesRedirectToSignIn(t *testing.T) {
	e := newEnv(t, nil)
	a := e.park("alice", `{"page_id":"pg_secret_42"}`)
	for _, target := range []string{
		"/console/approvals",
		"/console/approvals/" + a.ID,
		"/console/audit?agent=alice&verdict=deny",
		"/console/shadow",
		"/console/shadow/chart.svg",
		"/console/tokens",
		"/console/policy",
		"/console/replay",
	} {
		rec := e.get(nil, target)
		wantRedirect(t, rec, "/console/signin?next="+url.QueryEscape(target))
		if strings.Contains(rec.Body.String(), "pg_secret_42") {
			t.Errorf("%s showed a held call's arguments to a signed-out request", target)
		}
		wantRedirect(t, e.serve(newRequest(http.MethodHead, target, nil, nil)), "/console/signin?next="+url.QueryEscape(target))
	}
	// The console's root goes to the queue, which then asks for a sign-in.
	wantRedirect(t, e.get(nil, "/console/"), "/console/approvals")
}

func TestSignedOutFragmentsAndActionsAre401(t *testing.T) {
	e := newEnv(t, nil)
	a := e.park("alice", `{}`)
	rec := e.get(nil, "/console/approvals/rows")
	wantStatus(t, rec, http.StatusUnauthorized)
	if strings.Contains(rec.Body.String(), a.ID) {
		t.Error("the rows fragment showed the queue to a signed-out request")
	}
	for _, target := range []string{
		"/console/signout",
		"/console/approvals/" + a.ID + "/approve",
		"/console/approvals/" + a.ID + "/deny",
		"/console/tokens",
		"/console/tokens/0123456789abcdef/revoke",
		"/console/replay",
	} {
		rec := e.post(nil, target, url.Values{"csrf": {"x"}, "agent": {"bot"}, "role": {"dev"}, "ttl": {"24h"}})
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("signed-out POST %s = %d, want 401", target, rec.Code)
		}
		if sessionCookie(t, rec) != nil {
			t.Errorf("signed-out POST %s set a session cookie", target)
		}
	}
	if got := e.state(a.ID); got.State != approval.Pending {
		t.Errorf("a signed-out POST decided the approval: %s", got.State)
	}
	if list, _ := e.tokens.List(context.Background()); len(list) != 0 {
		t.Errorf("a signed-out POST issued %d tokens", len(list))
	}
}

// ---- sign-in ----

func TestSignInRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, who, token string
		problem          string
	}{
		{"wrong token", "alice", "amgadm_wrong", "That is not the admin token"},
		{"no token", "alice", "", "That is not the admin token"},
		{"token with a suffix", "alice", adminToken + "x", "That is not the admin token"},
		{"empty name", "", adminToken, "Give your name (up to 64 characters)"},
		{"blank name", "   ", adminToken, "Give your name (up to 64 characters)"},
		{"name over 64 characters", strings.Repeat("a", 65), adminToken, "Give your name (up to 64 characters)"},
		{"name with a control character", "ali\x01ce", adminToken, "Give your name (up to 64 characters)"},
		{"name with a newline", "alice\nadmin", adminToken, "Give your name (up to 64 characters)"},
		{"name with an ANSI escape", "\x1b[2Jalice", adminToken, "Give your name (up to 64 characters)"},
		{"name with a C1 control", "alice\u009b2J", adminToken, "Give your name (up to 64 characters)"},
		{"name that is not UTF-8", "ali\xffce", adminToken, "Give your name (up to 64 characters)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			rec := e.post(nil, "/console/signin", url.Values{"name": {tc.who}, "token": {tc.token}, "next": {"/console/tokens"}})
			wantStatus(t, rec, http.StatusUnauthorized)
			if got := problem(rec); !strings.Contains(got, tc.problem) {
				t.Errorf("problem %q, want it to contain %q", got, tc.problem)
			}
			if len(rec.Result().Cookies()) != 0 {
				t.Errorf("a refused sign-in set cookies: %v", rec.Result().Cookies())
			}
			// The form comes back ready for another try, still headed
			// for next.
			if !strings.Contains(rec.Body.String(), `name="next" value="/console/tokens"`) {
				t.Errorf("the form lost next:\n%s", rec.Body)
			}
		})
	}
}

// An operator who pastes a token into the name field (the form's first)
// must not have it written to the gateway's log, nor shown back in the
// form, nor recorded as the name of whoever decides. A name the check
// refuses is logged only by its length, and one that passes in full.
func TestSignInKeepsATokenPastedAsTheNameSecret(t *testing.T) {
	hex64 := strings.Repeat("0123456789abcdef", 4)
	const tokenProblem = "That looks like a token, not a name. Give your name (up to 64 characters), and the admin token in the field below it."
	const nameProblem = "Give your name (up to 64 characters): the audit log records who decides."
	for _, tc := range []struct {
		name, who, token string
		problem, logged  string
		echoed           bool
	}{
		{"the admin token", admin.TokenPrefix + hex64, "alice", tokenProblem, "name_bytes=71", false},
		{"an agent token", tokens.Prefix + hex64, "alice", tokenProblem, "name_bytes=68", false},
		// Short enough for a name, and with the right token beside it.
		{"the start of the admin token", (admin.TokenPrefix + hex64)[:64], adminToken, tokenProblem, "name_bytes=64", false},
		{"a token after a name", "alice " + tokens.Prefix + hex64[:20], adminToken, tokenProblem, "name_bytes=30", false},
		{"a name too long", strings.Repeat("a", 65), adminToken, nameProblem, "name_bytes=65", true},
		{"a name with a wrong token", "alice", "amgadm_wrong", "That is not the admin token", "name=alice", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			e := newEnv(t, &console.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			rec := e.post(nil, "/console/signin", url.Values{"name": {tc.who}, "token": {tc.token}})
			wantStatus(t, rec, http.StatusUnauthorized)
			if got := problem(rec); !strings.HasPrefix(got, tc.problem) {
				t.Errorf("problem %q, want %q", got, tc.problem)
			}
			if got := logs.String(); !strings.Contains(got, " "+tc.logged+" ") || !tc.echoed && strings.Contains(got, tc.who) {
				t.Errorf("the log, which should hold %s and no more of the name:\n%s", tc.logged, got)
			}
			input := regexp.MustCompile(`<input name="name" value="([^"]*)"`).FindStringSubmatch(rec.Body.String())
			if input == nil || (html.UnescapeString(input[1]) == tc.who) != tc.echoed {
				t.Errorf("the name field holds %q; want the name back: %v", input, tc.echoed)
			}
			if !tc.echoed && strings.Contains(rec.Body.String(), tc.who) {
				t.Error("the page shows the token")
			}
		})
	}
}

// Without an admin token there is no console: its sessions would be
// signed with a key anyone can derive.
func TestConsoleNeedsAnAdminToken(t *testing.T) {
	_, err := console.New(console.Deps{}, nil)
	if err == nil || !strings.Contains(err.Error(), "admin token") {
		t.Errorf("New without an admin token = %v, want an error naming the admin token", err)
	}
}

func TestSignInSetsAStrictCookie(t *testing.T) {
	for _, tc := range []struct {
		name   string
		proto  string // X-Forwarded-Proto
		tls    bool
		secure bool
	}{
		{"plain HTTP", "", false, false},
		{"HTTPS", "", true, true},
		{"behind a TLS proxy", "https", false, true},
		{"behind a plain proxy", "http", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			name := strings.Repeat("n", 64) // the longest name allowed
			form := url.Values{"name": {name}, "token": {"  " + adminToken + "\n"}, "next": {"/console/audit?agent=alice"}}
			req := newRequest(http.MethodPost, "/console/signin", strings.NewReader(form.Encode()), nil)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tc.proto != "" {
				req.Header.Set("X-Forwarded-Proto", tc.proto)
			}
			if !tc.tls {
				req.TLS = nil
			} else if req.TLS == nil {
				req.TLS = &tls.ConnectionState{}
			}
			rec := e.serve(req)
			wantRedirect(t, rec, "/console/audit?agent=alice")
			c := sessionCookie(t, rec)
			if c == nil {
				t.Fatal("no session cookie")
			}
			if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/console/" || c.Secure != tc.secure ||
				c.MaxAge != int((12*time.Hour)/time.Second) || c.Domain != "" || c.Value == "" {
				t.Errorf("cookie %+v, want HttpOnly, SameSite=Strict, Path=/console/, Max-Age=43200, no Domain, Secure %v", c, tc.secure)
			}
			page := e.get(&operator{cookie: c}, "/console/audit?agent=alice")
			wantStatus(t, page, http.StatusOK)
			if !strings.Contains(text(page), `<span data-testid="operator">`+name+`</span>`) {
				t.Error("the page does not name the signed-in operator")
			}
		})
	}
}

func TestSignInRedirectsOnlyInsideTheConsole(t *testing.T) {
	for _, tc := range []struct{ next, want string }{
		{"", "/console/approvals"},
		{"/console/tokens", "/console/tokens"},
		{"/console/audit?agent=alice&verdict=deny", "/console/audit?agent=alice&verdict=deny"},
		{"//evil.example", "/console/approvals"},
		{"//evil.example/console/", "/console/approvals"},
		{"https://evil.example", "/console/approvals"},
		{"https://evil.example/console/tokens", "/console/approvals"},
		{"/other", "/console/approvals"},
		{"/console", "/console/approvals"},
		{"/console/\\evil.example", "/console/approvals"},
		{"/console/x\r\nSet-Cookie: a=b", "/console/approvals"},
		{"javascript:alert(1)", "/console/approvals"},
		// Dot segments are resolved before the check, encoded or not.
		{"/console/../other", "/console/approvals"},
		{"/console/./../admin", "/console/approvals"},
		{"/console/%2e%2e/api/v1/approvals", "/console/approvals"},
		{"/console/./audit?agent=a", "/console/audit?agent=a"},
	} {
		e := newEnv(t, nil)
		rec := e.post(nil, "/console/signin", url.Values{"name": {"alice"}, "token": {adminToken}, "next": {tc.next}})
		if got := rec.Header().Get("Location"); rec.Code != http.StatusSeeOther || got != tc.want {
			t.Errorf("next %q: %d to %q, want 303 to %q", tc.next, rec.Code, got, tc.want)
		}
		// The sign-in page puts only a safe next in its form.
		page := e.get(nil, "/console/signin?next="+url.QueryEscape(tc.next))
		wantStatus(t, page, http.StatusOK)
		if want := `name="next" value="` + tc.want + `"`; !strings.Contains(text(page), want) {
			t.Errorf("sign-in page for next %q has no %s", tc.next, want)
		}
	}
}

// A name is shown on every page and recorded with decisions; whatever it
// holds, it is text.
func TestSignedInNameIsEscaped(t *testing.T) {
	e := newEnv(t, nil)
	hostile := `<img src=x onerror="alert(1)">`
	op := e.signIn(hostile)
	page := e.get(op, "/console/approvals")
	if strings.Contains(page.Body.String(), "<img") {
		t.Errorf("the operator's name was not escaped:\n%s", page.Body)
	}
	if !strings.Contains(text(page), hostile) {
		t.Error("the operator's name is not shown")
	}
}

// ---- sessions ----

// tamper returns c's value with its payload edited by edit and the
// signature kept.
func tamper(t *testing.T, c *http.Cookie, edit func(map[string]any)) *http.Cookie {
	t.Helper()
	p, sig, ok := strings.Cut(c.Value, ".")
	if !ok {
		t.Fatalf("cookie %q is not payload.signature", c.Value)
	}
	raw, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("cookie payload %s: %v", raw, err)
	}
	edit(m)
	raw, _ = json.Marshal(m)
	return &http.Cookie{Name: c.Name, Value: base64.RawURLEncoding.EncodeToString(raw) + "." + sig}
}

func TestInvalidSessionsAreSignedOut(t *testing.T) {
	for _, tc := range []struct {
		name string
		// cookie returns the cookie to present, from a valid session of
		// e's console.
		cookie func(t *testing.T, e *env, op *operator) *http.Cookie
	}{
		{"name changed, signature kept", func(t *testing.T, _ *env, op *operator) *http.Cookie {
			return tamper(t, op.cookie, func(m map[string]any) { m["n"] = "mallory" })
		}},
		{"expiry extended, signature kept", func(t *testing.T, e *env, op *operator) *http.Cookie {
			e.clock.Advance(13 * time.Hour)
			return tamper(t, op.cookie, func(m map[string]any) { m["e"] = e.clock.Now().Add(time.Hour).Unix() })
		}},
		{"expired", func(t *testing.T, e *env, op *operator) *http.Cookie {
			e.clock.Advance(12*time.Hour + time.Second)
			return op.cookie
		}},
		{"expired to the second", func(t *testing.T, e *env, op *operator) *http.Cookie {
			e.clock.Advance(12 * time.Hour)
			return op.cookie
		}},
		{"signed under another admin token", func(t *testing.T, e *env, _ *operator) *http.Cookie {
			other, err := console.New(console.Deps{Token: adminToken + "-old", Approvals: e.approvals, Tokens: tokenAdmin{store: e.tokens, auth: e.auth, now: e.clock.Now},
				Policies: e.policies, Upstreams: e.ups, Shadow: e.shadow, Audit: audit.FileLog(e.auditFile)}, &console.Options{Now: e.clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodPost, "/console/signin", strings.NewReader(url.Values{"name": {"alice"}, "token": {adminToken + "-old"}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			rec := httptest.NewRecorder()
			other.ServeHTTP(rec, req)
			c := sessionCookie(t, rec)
			if c == nil {
				t.Fatalf("the other console refused its own token: %d", rec.Code)
			}
			return c
		}},
		{"signature cut off", func(_ *testing.T, _ *env, op *operator) *http.Cookie {
			p, _, _ := strings.Cut(op.cookie.Value, ".")
			return &http.Cookie{Name: op.cookie.Name, Value: p}
		}},
		{"signature of another session", func(t *testing.T, e *env, op *operator) *http.Cookie {
			other := e.signIn("bob")
			p, _, _ := strings.Cut(op.cookie.Value, ".")
			_, sig, _ := strings.Cut(other.cookie.Value, ".")
			return &http.Cookie{Name: op.cookie.Name, Value: p + "." + sig}
		}},
		{"garbage", func(_ *testing.T, _ *env, op *operator) *http.Cookie {
			return &http.Cookie{Name: op.cookie.Name, Value: "not.a-session"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			a := e.park("agent-1", `{}`)
			op := e.signIn("alice")
			bad := &operator{name: "alice", cookie: tc.cookie(t, e, op), csrf: op.csrf}
			wantRedirect(t, e.get(bad, "/console/tokens"), "/console/signin?next=%2Fconsole%2Ftokens")
			wantStatus(t, e.get(bad, "/console/approvals/rows"), http.StatusUnauthorized)
			wantStatus(t, e.act(bad, "/console/approvals/"+a.ID+"/approve", nil), http.StatusUnauthorized)
			if got := e.state(a.ID); got.State != approval.Pending {
				t.Errorf("an invalid session decided the approval: %s by %q", got.State, got.DecidedBy)
			}
		})
	}
}

func TestSessionLastsTwelveHours(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	e.clock.Advance(12*time.Hour - time.Second)
	wantStatus(t, e.get(op, "/console/approvals"), http.StatusOK)
	wantStatus(t, e.get(op, "/console/approvals/rows"), http.StatusOK)
	e.clock.Advance(time.Second)
	wantRedirect(t, e.get(op, "/console/approvals"), "/console/signin?next=%2Fconsole%2Fapprovals")
}

func TestSignOut(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")

	// Signing out is a state change like any other.
	rec := e.post(op, "/console/signout", nil)
	wantStatus(t, rec, http.StatusForbidden)
	if len(rec.Result().Cookies()) != 0 {
		t.Error("a sign-out without the CSRF token touched the cookie")
	}

	bob := e.signIn("bob")
	rec = e.act(op, "/console/signout", nil)
	wantRedirect(t, rec, "/console/signin")
	c := sessionCookie(t, rec)
	if c == nil || c.Value != "" || c.MaxAge >= 0 || c.Path != "/console/" {
		t.Errorf("sign-out cookie %+v, want amg_console cleared (empty, Max-Age<=0, Path=/console/)", c)
	}

	// A copy of the cookie, kept after the browser dropped it, is signed
	// out too, for the rest of its twelve hours.
	e.clock.Advance(time.Hour)
	wantRedirect(t, e.get(op, "/console/approvals"), "/console/signin?next=%2Fconsole%2Fapprovals")
	wantStatus(t, e.get(op, "/console/approvals/rows"), http.StatusUnauthorized)
	wantStatus(t, e.act(op, "/console/tokens", url.Values{"agent": {"a"}, "role": {"reader"}}), http.StatusUnauthorized)
	if list, _ := e.tokens.List(context.Background()); len(list) != 0 {
		t.Errorf("a signed-out session issued a token: %v", list)
	}
	// Other sessions go on.
	wantStatus(t, e.get(bob, "/console/approvals"), http.StatusOK)
}

// A session is on the list of live sessions for as long as its cookie
// lasts, and a session the list does not hold (signed out, or begun
// before the list lost its data) does nothing.
func TestSessionLivesOnTheList(t *testing.T) {
	list := &recordingList{}
	e := newEnv(t, nil, func(d *console.Deps) { d.Sessions = list })
	list.List = signout.NewMemory(e.clock.Now)
	expires := e.clock.Now().Add(12 * time.Hour)
	op := e.signIn("alice")
	if !list.until.Equal(expires) {
		t.Errorf("the session is listed until %v, want its cookie's expiry %v", list.until, expires)
	}
	bob := e.signIn("bob")

	// The list loses its data: a Redis restarted without persistence.
	list.List = signout.NewMemory(e.clock.Now)
	wantRedirect(t, e.get(op, "/console/approvals"), "/console/signin?next=%2Fconsole%2Fapprovals")
	wantStatus(t, e.act(bob, "/console/tokens", url.Values{"agent": {"a"}, "role": {"reader"}}), http.StatusUnauthorized)
	if list, _ := e.tokens.List(context.Background()); len(list) != 0 {
		t.Errorf("a session the list lost issued a token: %v", list)
	}
	e.signIn("alice")
}

// recordingList keeps the until of the last session added.
type recordingList struct {
	signout.List
	until time.Time
}

func (l *recordingList) Add(ctx context.Context, id string, until time.Time) error {
	l.until = until
	return l.List.Add(ctx, id, until)
}

// When the list of live sessions cannot be read, no session works; when
// a sign-in or a sign-out cannot be recorded, the operator is told, and
// keeps the cookie to try again.
func TestSessionListUnavailable(t *testing.T) {
	list := &failingList{}
	e := newEnv(t, nil, func(d *console.Deps) { d.Sessions = list })
	list.List = signout.NewMemory(e.clock.Now)

	list.addFails = true
	rec := e.post(nil, "/console/signin", url.Values{"name": {"alice"}, "token": {adminToken}})
	wantStatus(t, rec, http.StatusServiceUnavailable)
	if !strings.Contains(rec.Body.String(), "signing in failed") {
		t.Errorf("body %q does not say the sign-in failed", rec.Body)
	}
	if c := sessionCookie(t, rec); c != nil {
		t.Errorf("a sign-in that was not recorded set a cookie: %+v", c)
	}
	list.addFails = false
	op := e.signIn("alice")

	list.removeFails = true
	rec = e.act(op, "/console/signout", nil)
	wantStatus(t, rec, http.StatusServiceUnavailable)
	if !strings.Contains(rec.Body.String(), "signing out failed") {
		t.Errorf("body %q does not say the sign-out failed", rec.Body)
	}
	if len(rec.Result().Cookies()) != 0 {
		t.Error("a sign-out that was not recorded cleared the cookie")
	}
	wantStatus(t, e.get(op, "/console/approvals"), http.StatusOK)

	list.removeFails, list.hasFails = false, true
	for _, rec := range []*httptest.ResponseRecorder{
		e.get(op, "/console/approvals"),
		e.get(op, "/console/approvals/rows"),
		e.act(op, "/console/tokens", url.Values{"agent": {"a"}, "role": {"reader"}}),
		e.act(op, "/console/signout", nil),
	} {
		wantStatus(t, rec, http.StatusServiceUnavailable)
		if !strings.Contains(rec.Body.String(), "cannot tell whether this session was signed out") {
			t.Errorf("body %q does not say why", rec.Body)
		}
	}
	if list, _ := e.tokens.List(context.Background()); len(list) != 0 {
		t.Errorf("a session the console could not check issued a token: %v", list)
	}

	list.hasFails = false
	wantRedirect(t, e.act(op, "/console/signout", nil), "/console/signin")
	wantRedirect(t, e.get(op, "/console/approvals"), "/console/signin?next=%2Fconsole%2Fapprovals")
}

// failingList is a list of live sessions whose store can be made to fail.
type failingList struct {
	signout.List
	addFails, removeFails, hasFails bool
}

var errStoreDown = errors.New("connection refused")

func (l *failingList) Add(ctx context.Context, id string, until time.Time) error {
	if l.addFails {
		return errStoreDown
	}
	return l.List.Add(ctx, id, until)
}

func (l *failingList) Remove(ctx context.Context, id string) error {
	if l.removeFails {
		return errStoreDown
	}
	return l.List.Remove(ctx, id)
}

func (l *failingList) Has(ctx context.Context, id string) (bool, error) {
	if l.hasFails {
		return false, errStoreDown
	}
	return l.List.Has(ctx, id)
}

// TestSignInAndOutInABrowser goes through a real HTTP server with a cookie
// jar, as a browser does: the cookie scoped to /console/ is sent back, and
// the one sign-out sends removes it.
func TestSignInAndOutInABrowser(t *testing.T) {
	e := newEnv(t, nil)
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := srv.Client()
	client.Jar = jar
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	do := func(method, path string, form url.Values) (*http.Response, string) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequest(method, srv.URL+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, _ := do("GET", "/console/policy", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/signin?next=%2Fconsole%2Fpolicy" {
		t.Fatalf("signed out: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = do("POST", "/console/signin", url.Values{"name": {"alice"}, "token": {adminToken}, "next": {"/console/policy"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/policy" {
		t.Fatalf("sign-in: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	u, _ := url.Parse(srv.URL + "/console/policy")
	if len(jar.Cookies(u)) != 1 {
		t.Fatalf("the jar holds %v for the console", jar.Cookies(u))
	}
	if other, _ := url.Parse(srv.URL + "/api/v1/status"); len(jar.Cookies(other)) != 0 {
		t.Errorf("the session cookie is sent outside /console/: %v", jar.Cookies(other))
	}
	resp, body := do("GET", "/console/policy", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("signed in: %d", resp.StatusCode)
	}
	m := csrfMeta.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no CSRF token on the policy page")
	}
	resp, _ = do("POST", "/console/signout", url.Values{"csrf": {m[1]}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/signin" {
		t.Fatalf("sign-out: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if len(jar.Cookies(u)) != 0 {
		t.Errorf("the jar still holds %v after sign-out", jar.Cookies(u))
	}
	resp, _ = do("GET", "/console/policy", nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after sign-out: %d, want 303 to sign-in", resp.StatusCode)
	}
}

// ---- CSRF and cross-origin requests ----

func TestDecisionsNeedTheSessionsCSRFToken(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.signIn("alice")
	bob := e.signIn("bob")
	if alice.csrf == bob.csrf {
		t.Fatal("two sessions share a CSRF token")
	}
	a := e.park("agent-1", `{"page_id":"pg_1"}`)
	for _, tc := range []struct {
		name   string
		csrf   string
		header string
	}{
		{"no token", "", ""},
		{"wrong token", strings.Repeat("0", len(alice.csrf)), ""},
		{"another session's token", bob.csrf, ""},
		{"another session's token in the header", "", bob.csrf},
		{"token with a suffix", alice.csrf + "0", ""},
		{"token cut short", alice.csrf[:len(alice.csrf)-1], ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			form := url.Values{"reason": {"sure"}}
			if tc.csrf != "" {
				form.Set("csrf", tc.csrf)
			}
			req := newRequest(http.MethodPost, "/console/approvals/"+a.ID+"/approve", strings.NewReader(form.Encode()), alice)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tc.header != "" {
				req.Header.Set("X-CSRF-Token", tc.header)
			}
			rec := e.serve(req)
			wantStatus(t, rec, http.StatusForbidden)
			if !strings.Contains(rec.Body.String(), "CSRF token missing or wrong") {
				t.Errorf("403 body %q does not say why", rec.Body)
			}
			if got := e.state(a.ID); got.State != approval.Pending {
				t.Fatalf("the approval was decided without the right CSRF token: %s", got.State)
			}
		})
	}

	rec := e.act(alice, "/console/approvals/"+a.ID+"/approve", url.Values{"reason": {"  checked the page id  "}})
	wantRedirect(t, rec, "/console/approvals?done=approved&id="+a.ID)
	got := e.state(a.ID)
	if got.State != approval.Approved || got.DecidedBy != "alice" || got.Reason != "checked the page id" || !got.DecidedAt.Equal(start) {
		t.Errorf("approval after the right CSRF token: %s by %q at %v, reason %q; want approved by alice at %v, reason %q",
			got.State, got.DecidedBy, got.DecidedAt, got.Reason, start, "checked the page id")
	}
}

func TestCSRFTokenInTheHeader(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	a := e.park("agent-1", `{}`)
	req := newRequest(http.MethodPost, "/console/approvals/"+a.ID+"/deny", nil, op)
	req.Header.Set("X-CSRF-Token", op.csrf)
	wantRedirect(t, e.serve(req), "/console/approvals?done=denied&id="+a.ID)
	if got := e.state(a.ID); got.State != approval.Denied || got.DecidedBy != "alice" {
		t.Errorf("approval %s by %q, want denied by alice", got.State, got.DecidedBy)
	}
}

func TestCrossOriginRequestsAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"Sec-Fetch-Site cross-site", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"Sec-Fetch-Site same-site", map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
		{"Origin of another host", map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"Origin of another port", map[string]string{"Origin": "http://console.test:8080"}, http.StatusForbidden},
		{"Sec-Fetch-Site same-origin", map[string]string{"Sec-Fetch-Site": "same-origin"}, http.StatusSeeOther},
		{"Origin of this host", map[string]string{"Origin": "http://console.test"}, http.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			op := e.signIn("alice")
			a := e.park("agent-1", `{}`)
			form := url.Values{"csrf": {op.csrf}}
			req := newRequest(http.MethodPost, "/console/approvals/"+a.ID+"/approve", strings.NewReader(form.Encode()), op)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			rec := e.serve(req)
			wantStatus(t, rec, tc.want)
			want := approval.Pending
			if tc.want == http.StatusSeeOther {
				want = approval.Approved
			}
			if got := e.state(a.ID); got.State != want {
				t.Errorf("approval %s, want %s", got.State, want)
			}
		})
	}
}

// A cross-site sign-in (login CSRF) is refused too.
func TestCrossOriginSignInIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	req := newRequest(http.MethodPost, "/console/signin", strings.NewReader(url.Values{"name": {"alice"}, "token": {adminToken}}.Encode()), nil)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	rec := e.serve(req)
	wantStatus(t, rec, http.StatusForbidden)
	if sessionCookie(t, rec) != nil {
		t.Error("a cross-site sign-in set a session cookie")
	}
}

// ---- headers ----

func TestPagesAreNeverCached(t *testing.T) {
	e := newEnv(t, &console.Options{StagedPolicyDir: t.TempDir()})
	op := e.signIn("alice")
	e.park("agent-1", `{}`)
	check := func(t *testing.T, what string, rec *httptest.ResponseRecorder, isHTML bool) {
		t.Helper()
		h := rec.Header()
		if h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", what, h.Get("Cache-Control"))
		}
		csp := h.Get("Content-Security-Policy")
		for _, d := range []string{"default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
			if !strings.Contains(csp, d) {
				t.Errorf("%s: Content-Security-Policy %q lacks %s", what, csp, d)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("%s: Content-Security-Policy %q allows inline code", what, csp)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: X-Content-Type-Options %q, X-Frame-Options %q", what, h.Get("X-Content-Type-Options"), h.Get("X-Frame-Options"))
		}
		if isHTML && h.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", what, h.Get("Content-Type"))
		}
	}
	for _, target := range []string{
		"/console/approvals", "/console/approvals/rows", "/console/audit", "/console/audit?agent=alice",
		"/console/shadow", "/console/tokens", "/console/policy", "/console/replay",
	} {
		rec := e.get(op, target)
		wantStatus(t, rec, http.StatusOK)
		check(t, target, rec, true)
	}
	check(t, "sign-in page", e.get(nil, "/console/signin"), true)
	check(t, "refused sign-in", e.post(nil, "/console/signin", url.Values{"name": {"a"}, "token": {"b"}}), true)
	check(t, "redirect to sign-in", e.get(nil, "/console/tokens"), false)
	check(t, "401", e.get(nil, "/console/approvals/rows"), false)
	check(t, "403", e.post(op, "/console/tokens", nil), false)
	check(t, "issued token", e.act(op, "/console/tokens", url.Values{"agent": {"bot"}, "role": {"dev"}, "ttl": {"24h"}}), true)
	check(t, "400", e.get(op, "/console/audit?from=nonsense"), true)
	check(t, "replay", e.upload(op, "/console/replay", nil, policy.File{Name: "dev.yaml", Data: []byte(devRole)}), true)

	chart := e.get(op, "/console/shadow/chart.svg")
	wantStatus(t, chart, http.StatusOK)
	if ct := chart.Header().Get("Content-Type"); ct != "image/svg+xml" {
		t.Errorf("chart Content-Type %q, want image/svg+xml", ct)
	}
	if cc := chart.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("chart Cache-Control %q, want no-store", cc)
	}
	if csp := chart.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "script") {
		t.Errorf("chart Content-Security-Policy %q, want default-src 'none' and no script", csp)
	}
}

// Static assets need no session (the sign-in page uses them) and may be
// cached; every asset a page links to is there.
func TestStaticAssets(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct{ path, contentType string }{
		{"/console/static/console.css", "text/css; charset=utf-8"},
		{"/console/static/console.js", "text/javascript; charset=utf-8"},
		{"/console/static/favicon.svg", "image/svg+xml"},
	} {
		rec := e.get(nil, tc.path)
		wantStatus(t, rec, http.StatusOK)
		h := rec.Header()
		if h.Get("Content-Type") != tc.contentType {
			t.Errorf("%s: Content-Type %q, want %q", tc.path, h.Get("Content-Type"), tc.contentType)
		}
		if cc := h.Get("Cache-Control"); !strings.Contains(cc, "max-age=") || strings.Contains(cc, "no-store") || strings.Contains(cc, "no-cache") {
			t.Errorf("%s: Cache-Control %q, want cacheable", tc.path, cc)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", tc.path)
		}
		if rec.Body.Len() == 0 {
			t.Errorf("%s is empty", tc.path)
		}
	}
	wantStatus(t, e.get(nil, "/console/static/nothing.css"), http.StatusNotFound)
	// Files only: no listing of the assets.
	wantStatus(t, e.get(nil, "/console/static/"), http.StatusNotFound)

	page := e.get(nil, "/console/signin").Body.String()
	refs := regexp.MustCompile(`(?:href|src)="(/console/static/[^"]+)"`).FindAllStringSubmatch(page, -1)
	if len(refs) < 3 {
		t.Fatalf("the sign-in page links %d assets, want the stylesheet, script and icon", len(refs))
	}
	for _, m := range refs {
		if rec := e.get(nil, m[1]); rec.Code != http.StatusOK {
			t.Errorf("linked asset %s: %d", m[1], rec.Code)
		}
	}
}

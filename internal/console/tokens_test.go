package console_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/internal/tokens"
)

var secretPre = regexp.MustCompile(`<pre class="secret" data-testid="secret">([^<]*)</pre>`)

func (e *env) storedTokens() []tokens.Token {
	e.t.Helper()
	list, err := e.tokens.List(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return list
}

func TestIssueTokenRefusals(t *testing.T) {
	for _, tc := range []struct {
		name            string
		agent, role     string
		ttl             string
		noPolicy        bool
		problem         string
		keepsTypedAgent bool
	}{
		{name: "agent with a space", agent: "build bot", role: "dev", ttl: "24h", problem: "Agent: "},
		{name: "agent with markup", agent: "<b>bot</b>", role: "dev", ttl: "24h", problem: "Agent: "},
		{name: "no agent", agent: "", role: "dev", ttl: "24h", problem: "Agent: "},
		{name: "agent too long", agent: strings.Repeat("a", 129), role: "dev", ttl: "24h", problem: "Agent: "},
		{name: "agent that is a token", agent: "amg_" + strings.Repeat("ab", 32), role: "dev", ttl: "24h", problem: "Agent: "},
		{name: "unknown role", agent: "build-bot", role: "nobody", ttl: "24h", problem: "Role: the policy in force has no role “nobody”.", keepsTypedAgent: true},
		{name: "no role", agent: "build-bot", role: "", ttl: "24h", problem: "Role: the policy in force has no role “”.", keepsTypedAgent: true},
		{name: "ttl not a duration", agent: "build-bot", role: "dev", ttl: "forever", problem: "Lifetime: choose one of the offered lifetimes.", keepsTypedAgent: true},
		{name: "negative ttl", agent: "build-bot", role: "dev", ttl: "-24h", problem: "Lifetime: choose one of the offered lifetimes.", keepsTypedAgent: true},
		{name: "no ttl", agent: "build-bot", role: "dev", ttl: "", problem: "Lifetime: choose one of the offered lifetimes.", keepsTypedAgent: true},
		{name: "no policy", agent: "build-bot", role: "dev", ttl: "24h", noPolicy: true, problem: "No policy is compiled", keepsTypedAgent: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			if tc.noPolicy {
				e.policies.mu.Lock()
				e.policies.set = nil
				e.policies.mu.Unlock()
			}
			op := e.signIn("alice")
			rec := e.act(op, "/console/tokens", url.Values{"agent": {tc.agent}, "role": {tc.role}, "ttl": {tc.ttl}})
			wantStatus(t, rec, http.StatusBadRequest)
			if p := problem(rec); !strings.HasPrefix(p, tc.problem) {
				t.Errorf("problem %q, want it to start with %q", p, tc.problem)
			}
			if n := len(e.storedTokens()); n != 0 {
				t.Errorf("%d tokens stored after a refused issue", n)
			}
			if strings.Contains(rec.Body.String(), `data-testid="issued"`) || secretPre.MatchString(rec.Body.String()) {
				t.Error("a refused issue shows an issued token")
			}
			if strings.Contains(rec.Body.String(), "<b>bot") {
				t.Error("the typed agent is echoed unescaped")
			}
			if tc.keepsTypedAgent && !strings.Contains(rec.Body.String(), `name="agent" value="build-bot"`) {
				t.Error("the form lost the typed agent")
			}
		})
	}
}

func TestIssueTokenNeedsCSRF(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	rec := e.post(op, "/console/tokens", url.Values{"agent": {"build-bot"}, "role": {"dev"}, "ttl": {"24h"}})
	wantStatus(t, rec, http.StatusForbidden)
	if n := len(e.storedTokens()); n != 0 {
		t.Errorf("%d tokens issued without the CSRF token", n)
	}
}

func TestIssueShowsTheSecretOnce(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	rec := e.act(op, "/console/tokens", url.Values{"agent": {"build-bot"}, "role": {"ops"}, "ttl": {"168h"}})
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	m := secretPre.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no secret on the page:\n%s", body)
	}
	secret := m[1]
	if n := count(body, secret); n != 1 {
		t.Errorf("the secret appears %d times on the page, want once", n)
	}
	if rec.Header().Get("Cache-Control") != "no-store" {
		t.Error("the page with the secret may be cached")
	}

	tok, err := e.auth.Authenticate(context.Background(), secret)
	if err != nil {
		t.Fatalf("the shown secret does not authenticate: %v", err)
	}
	if tok.Agent != "build-bot" || tok.Role != "ops" || !tok.Created.Equal(start) || !tok.Expires.Equal(start.Add(7*24*time.Hour)) {
		t.Errorf("issued %+v, want build-bot/ops created %v expiring 7 days later", tok, start)
	}
	if stored := e.storedTokens(); len(stored) != 1 || stored[0].ID != tok.ID {
		t.Fatalf("stored %+v, want the one token", stored)
	}
	issued := regexp.MustCompile(`(?s)<section class="card issued" data-testid="issued">.*?</section>`).FindString(body)
	if !strings.Contains(issued, "Token issued for build-bot (ops)") || !strings.Contains(issued, "<code>"+tok.ID+"</code>") {
		t.Errorf("the issued card does not name the agent, role and id:\n%s", issued)
	}
	if !strings.Contains(body, `<tr data-testid="token" data-id="`+tok.ID+`" data-agent="build-bot">`) {
		t.Error("the new token is not listed")
	}

	// Never again.
	later := e.get(op, "/console/tokens")
	wantStatus(t, later, http.StatusOK)
	if strings.Contains(later.Body.String(), secret) || strings.Contains(later.Body.String(), secret[len(tokens.Prefix):]) {
		t.Error("the tokens page shows the secret again")
	}
	if !strings.Contains(later.Body.String(), `data-id="`+tok.ID+`"`) {
		t.Error("the tokens page does not list the token")
	}
}

func TestIssueTokenThatNeverExpires(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	issued := e.act(op, "/console/tokens", url.Values{"agent": {"cron"}, "role": {"dev"}, "ttl": {"0"}})
	wantStatus(t, issued, http.StatusOK)
	if !strings.Contains(text(issued), "never expires.") {
		t.Error("the issued token's notice does not say it never expires")
	}
	list := e.storedTokens()
	if len(list) != 1 || !list[0].Expires.IsZero() {
		t.Fatalf("stored %+v, want one token without expiry", list)
	}
	e.clock.Advance(5 * 365 * 24 * time.Hour)
	op = e.signIn("alice") // the session did not last
	row := regexp.MustCompile(`(?s)<tr data-testid="token" data-id="` + list[0].ID + `".*?</tr>`).FindString(e.get(op, "/console/tokens").Body.String())
	if !strings.Contains(row, `<span class="badge active">active</span>`) || !strings.Contains(row, "<td>never</td>") {
		t.Errorf("a token without expiry is not active, and shown to never expire, five years on:\n%s", row)
	}
}

func TestRevokeToken(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	ctx := context.Background()
	secret, tok, err := tokens.Issue(ctx, e.tokens, "build-bot", "dev", 24*time.Hour, start)
	if err != nil {
		t.Fatal(err)
	}
	keep, _, err := tokens.Issue(ctx, e.tokens, "other-bot", "dev", 24*time.Hour, start)
	if err != nil {
		t.Fatal(err)
	}
	// Cached by the Authenticator, as on an agent's earlier request.
	if _, err := e.auth.Authenticate(ctx, secret); err != nil {
		t.Fatal(err)
	}
	page := e.get(op, "/console/tokens").Body.String()
	if !strings.Contains(page, `action="/console/tokens/`+tok.ID+`/revoke"`) {
		t.Fatalf("no revoke form for %s:\n%s", tok.ID, page)
	}

	wantStatus(t, e.post(op, "/console/tokens/"+tok.ID+"/revoke", nil), http.StatusForbidden)
	if _, err := e.auth.Authenticate(ctx, secret); err != nil {
		t.Fatalf("a revocation without the CSRF token took effect: %v", err)
	}

	e.clock.Advance(time.Minute)
	rec := e.act(op, "/console/tokens/"+tok.ID+"/revoke", nil)
	wantRedirect(t, rec, "/console/tokens?revoked="+tok.ID)
	if _, err := e.auth.Authenticate(ctx, secret); !errors.Is(err, tokens.ErrRevoked) {
		t.Errorf("Authenticate after revoking = %v, want ErrRevoked", err)
	}
	if _, err := e.auth.Authenticate(ctx, keep); err != nil {
		t.Errorf("revoking one token broke another: %v", err)
	}
	after := e.follow(op, rec)
	wantStatus(t, after, http.StatusOK)
	if n := notice(after); !strings.HasPrefix(n, "Revoked "+tok.ID) {
		t.Errorf("notice %q", n)
	}
	row := regexp.MustCompile(`(?s)<tr data-testid="token" data-id="` + tok.ID + `".*?</tr>`).FindString(after.Body.String())
	if !strings.Contains(row, `<span class="badge revoked">revoked</span>`) || strings.Contains(row, "/revoke") {
		t.Errorf("the revoked token's row:\n%s", row)
	}
}

func TestRevokeUnknownOrMalformedToken(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	if _, _, err := tokens.Issue(context.Background(), e.tokens, "build-bot", "dev", time.Hour, start); err != nil {
		t.Fatal(err)
	}
	rec := e.act(op, "/console/tokens/0123456789abcdef/revoke", nil)
	wantStatus(t, rec, http.StatusNotFound)
	if p := problem(rec); p != "There is no token 0123456789abcdef." {
		t.Errorf("problem %q", p)
	}
	if !strings.Contains(rec.Body.String(), `data-agent="build-bot"`) {
		t.Error("the 404 page does not list the tokens")
	}
	for _, id := range []string{"nothex", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0"} {
		rec := e.act(op, "/console/tokens/"+id+"/revoke", nil)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "not a token id") {
			t.Errorf("revoking %q: %d %q, want 400 not a token id", id, rec.Code, rec.Body)
		}
	}
	for _, tok := range e.storedTokens() {
		if !tok.Revoked.IsZero() {
			t.Errorf("%s was revoked", tok.ID)
		}
	}
	// A notice names only a real id.
	if n := notice(e.get(op, "/console/tokens?revoked="+url.QueryEscape("all tokens"))); n != "" {
		t.Errorf("notice %q for a revoked= that is not an id", n)
	}
}

// failingTokens is a token store whose calls can be made to fail.
type failingTokens struct {
	console.Tokens
	list, issue, revoke error
}

func (f *failingTokens) List(ctx context.Context) ([]tokens.Token, error) {
	if f.list != nil {
		return nil, f.list
	}
	return f.Tokens.List(ctx)
}

func (f *failingTokens) Issue(ctx context.Context, agent, role string, ttl time.Duration) (string, tokens.Token, error) {
	if f.issue != nil {
		return "", tokens.Token{}, f.issue
	}
	return f.Tokens.Issue(ctx, agent, role, ttl)
}

func (f *failingTokens) Revoke(ctx context.Context, id string) error {
	if f.revoke != nil {
		return f.revoke
	}
	return f.Tokens.Revoke(ctx, id)
}

// A token store that cannot be read is reported as such, never shown as
// one with no token.
func TestTokensPageSaysWhenTheStoreFails(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fail    func(*failingTokens)
		do      func(e *env, op *operator) *httptest.ResponseRecorder
		status  int
		problem string
	}{
		{
			name:    "list",
			fail:    func(f *failingTokens) { f.list = errStoreDown },
			do:      func(e *env, op *operator) *httptest.ResponseRecorder { return e.get(op, "/console/tokens") },
			status:  http.StatusServiceUnavailable,
			problem: "The token store could not be read: connection refused",
		},
		{
			name: "revoke and list",
			fail: func(f *failingTokens) { f.list, f.revoke = errStoreDown, errStoreDown },
			do: func(e *env, op *operator) *httptest.ResponseRecorder {
				return e.act(op, "/console/tokens/0123456789abcdef/revoke", nil)
			},
			status:  http.StatusServiceUnavailable,
			problem: "The token could not be revoked: connection refused",
		},
		{
			// The token was issued: its secret is shown, this once.
			name: "list after an issue",
			fail: func(f *failingTokens) { f.list = errStoreDown },
			do: func(e *env, op *operator) *httptest.ResponseRecorder {
				return e.act(op, "/console/tokens", url.Values{"agent": {"build-bot"}, "role": {"dev"}, "ttl": {"24h"}})
			},
			status:  http.StatusOK,
			problem: "The token store could not be read: connection refused",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &failingTokens{}
			e := newEnv(t, nil, func(d *console.Deps) { store.Tokens = d.Tokens; d.Tokens = store })
			op := e.signIn("alice")
			tc.fail(store)
			rec := tc.do(e, op)
			if rec.Code != tc.status {
				t.Errorf("status %d, want %d", rec.Code, tc.status)
			}
			if p := problem(rec); p != tc.problem {
				t.Errorf("problem %q, want %q", p, tc.problem)
			}
			if strings.Contains(rec.Body.String(), "No token has been issued.") {
				t.Errorf("the page says no token was issued despite the failure:\n%s", rec.Body)
			}
			if issued := secretPre.MatchString(rec.Body.String()); issued != (tc.status == http.StatusOK) {
				t.Errorf("secret shown: %v, want %v", issued, tc.status == http.StatusOK)
			}
		})
	}
}

// A store that fails to issue is the store's fault, not the form's.
func TestIssueTokenStoreFails(t *testing.T) {
	store := &failingTokens{issue: errStoreDown}
	e := newEnv(t, nil, func(d *console.Deps) { store.Tokens = d.Tokens; d.Tokens = store })
	op := e.signIn("alice")
	rec := e.act(op, "/console/tokens", url.Values{"agent": {"build-bot"}, "role": {"dev"}, "ttl": {"24h"}})
	wantStatus(t, rec, http.StatusServiceUnavailable)
	if p := problem(rec); p != "The token could not be issued: connection refused" {
		t.Errorf("problem %q", p)
	}
	if strings.Contains(rec.Body.String(), `data-testid="issued"`) || secretPre.MatchString(rec.Body.String()) {
		t.Error("a failed issue shows an issued token")
	}
	if !strings.Contains(rec.Body.String(), `name="agent" value="build-bot"`) {
		t.Error("the form lost the typed agent")
	}
}

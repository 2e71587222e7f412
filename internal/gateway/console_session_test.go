package gateway

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/amgateway/amg/internal/admin"
	"github.com/amgateway/amg/internal/redistest"
)

// consoleSession is a console sign-in made over HTTP: its cookie and the
// CSRF token its pages carry.
type consoleSession struct {
	cookie *http.Cookie
	csrf   string
}

var csrfToken = regexp.MustCompile(`<meta name="csrf-token" content="([0-9a-f]+)">`)

// noRedirects is a client that reports redirects rather than following
// them.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func signInConsole(t *testing.T, gw *Gateway, name string) consoleSession {
	t.Helper()
	token, err := admin.LoadOrCreateToken(filepath.Join(gw.cfg.DataDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := noRedirects.PostForm("http://"+gw.AdminAddr()+"/console/signin", url.Values{"name": {name}, "token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var s consoleSession
	for _, c := range resp.Cookies() {
		if c.Name == "amg_console" {
			s.cookie = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || s.cookie == nil {
		t.Fatalf("sign-in: %s, cookies %v", resp.Status, resp.Cookies())
	}
	code, body := consoleGet(t, gw, s)
	m := csrfToken.FindStringSubmatch(body)
	if code != http.StatusOK || m == nil {
		t.Fatalf("approvals page after sign-in: %d, CSRF token %v", code, m)
	}
	s.csrf = m[1]
	return s
}

// consoleGet fetches the approvals page with s's cookie.
func consoleGet(t *testing.T, gw *Gateway, s consoleSession) (int, string) {
	t.Helper()
	return consoleGetPage(t, gw, s, "/console/approvals")
}

// consoleGetPage fetches a console page with s's cookie.
func consoleGetPage(t *testing.T, gw *Gateway, s consoleSession, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+gw.AdminAddr()+path, nil)
	req.AddCookie(s.cookie)
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func signOutConsole(t *testing.T, gw *Gateway, s consoleSession) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+gw.AdminAddr()+"/console/signout",
		strings.NewReader(url.Values{"csrf": {s.csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(s.cookie)
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out: %s", resp.Status)
	}
}

// wantSignedOut checks that s's cookie, kept after sign-out, is sent to
// sign in again.
func wantSignedOut(t *testing.T, gw *Gateway, s consoleSession, where string) {
	t.Helper()
	if code, _ := consoleGet(t, gw, s); code != http.StatusSeeOther {
		t.Errorf("%s: a signed-out cookie got %d, want 303 to sign-in", where, code)
	}
}

// A console sign-out is kept in the embedded database: a copy of the
// cookie stays refused after the gateway restarts, while another session
// signed with the same key still works.
func TestConsoleSignOutSurvivesARestart(t *testing.T) {
	cfg := loopbackConfig(t, "../../policies")
	first := serveForTest(t, cfg, nil)
	alice, bob := signInConsole(t, first, "alice"), signInConsole(t, first, "bob")
	signOutConsole(t, first, alice)
	wantSignedOut(t, first, alice, "before the restart")
	first.Close()

	second := serveForTest(t, cfg, nil)
	wantSignedOut(t, second, alice, "after the restart")
	if code, _ := consoleGet(t, second, bob); code != http.StatusOK {
		t.Errorf("after the restart, a session that did not sign out got %d, want 200", code)
	}
}

// With Redis, signing out on one replica signs out on every replica that
// shares the admin token.
// consoleReplicas starts two replicas of the example policy sharing the
// Redis at addr and one admin token, as pods given it through one Secret
// would.
func consoleReplicas(t *testing.T, addr string) (a, b *Gateway) {
	t.Helper()
	token, err := admin.LoadOrCreateToken(filepath.Join(t.TempDir(), AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	replica := func() *Gateway {
		cfg := loopbackConfig(t, "../../policies")
		cfg.Redis.Address = addr
		if err := os.WriteFile(filepath.Join(cfg.DataDir, AdminTokenFile), []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return serveForTest(t, cfg, nil)
	}
	return replica(), replica()
}

func TestConsoleSignOutReachesEveryReplica(t *testing.T) {
	a, b := consoleReplicas(t, redistest.Start(t).Addr)
	alice, bob := signInConsole(t, a, "alice"), signInConsole(t, a, "bob")
	if code, _ := consoleGet(t, b, alice); code != http.StatusOK {
		t.Fatalf("a session from replica A got %d on replica B, want 200", code)
	}
	signOutConsole(t, b, alice)
	wantSignedOut(t, a, alice, "replica A")
	if code, _ := consoleGet(t, a, bob); code != http.StatusOK {
		t.Errorf("a session that did not sign out got %d, want 200", code)
	}
}

// A Redis that loses its data (a restart without persistence, as the
// compose file runs it, or a failover to a replica that lagged) ends every
// console session: a signed-out cookie does not work again, and the
// operators sign in anew.
func TestConsoleSignOutSurvivesRedisLosingItsData(t *testing.T) {
	rs := redistest.Start(t)
	a, b := consoleReplicas(t, rs.Addr)
	alice, bob := signInConsole(t, a, "alice"), signInConsole(t, a, "bob")
	signOutConsole(t, a, alice)
	wantSignedOut(t, a, alice, "before Redis lost its data")
	rs.Restart()
	wantSignedOut(t, a, alice, "after Redis lost its data")
	wantSignedOut(t, b, bob, "a session begun before Redis lost its data")
	if code, _ := consoleGet(t, b, signInConsole(t, b, "bob")); code != http.StatusOK {
		t.Errorf("a session begun after Redis lost its data got %d, want 200", code)
	}
}

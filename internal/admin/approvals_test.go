package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/broker"
)

func call(t *testing.T, h http.Handler, method, path, token, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, "http://127.0.0.1:8081"+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestApprovalsAPI(t *testing.T) {
	store := approval.NewMemory(nil)
	parked := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`
	a, _ := approval.New("dec", "bot", "editor", "notion", "delete_page", []byte(parked), time.Now(), time.Hour)
	if err := store.Create(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	tok := TokenPrefix + strings.Repeat("ab", 32)
	h := Handler(Deps{Policies: &policies{}, Upstreams: func() []broker.UpstreamStatus { return nil }, Approvals: store, Token: tok})

	for _, bad := range []string{"", "amg_notadmin", tok + "x"} {
		if code, body := call(t, h, "GET", "/api/v1/approvals", bad, ""); code != 401 || !strings.Contains(body, "admin token is required") {
			t.Errorf("token %q: %d %s, want 401", bad, code, body)
		}
	}
	code, body := call(t, h, "GET", "/api/v1/approvals?state=pending", tok, "")
	var list []approval.Approval
	if code != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list) != 1 || list[0].ID != a.ID || list[0].Tool != "delete_page" {
		t.Fatalf("list = %d %s", code, body)
	}
	if code, body := call(t, h, "GET", "/api/v1/approvals?state=pendng", tok, ""); code != 400 ||
		!strings.Contains(body, `unknown state \"pendng\": one of pending, approved, denied, expired, cancelled, executed`) {
		t.Errorf("list of an unknown state: %d %s, want 400 naming the states", code, body)
	}
	// One approval shows the request the approver judges, as it was sent.
	code, body = call(t, h, "GET", "/api/v1/approvals/"+a.ID, tok, "")
	var one struct {
		ID      string
		Request json.RawMessage
	}
	if code != 200 || json.Unmarshal([]byte(body), &one) != nil || one.ID != a.ID || compactJSON(t, one.Request) != parked {
		t.Errorf("one approval = %d %s, want its request %s", code, body, parked)
	}
	if code, _ := call(t, h, "GET", "/api/v1/approvals/apr_none", tok, ""); code != 404 {
		t.Errorf("unknown id: %d, want 404", code)
	}
	if code, body := call(t, h, "POST", "/api/v1/approvals/"+a.ID+"/approve", tok, `{}`); code != 400 || !strings.Contains(body, `must name who decides`) {
		t.Errorf("approve without by: %d %s", code, body)
	}
	if code, body := call(t, h, "POST", "/api/v1/approvals/"+a.ID+"/approve", tok, `{"by":"alice","reason":"OPS-1"}`); code != 200 ||
		!strings.Contains(body, `"state": "approved"`) || !strings.Contains(body, `"decided_by": "alice"`) {
		t.Errorf("approve: %d %s", code, body)
	}
	if code, _ := call(t, h, "POST", "/api/v1/approvals/"+a.ID+"/deny", tok, `{"by":"bob"}`); code != 409 {
		t.Errorf("deny after approve: %d, want 409", code)
	}
	late, _ := approval.New("dec-2", "bot", "editor", "notion", "delete_page", []byte(`{}`), time.Now().Add(-2*time.Hour), time.Hour)
	if err := store.Create(context.Background(), late); err != nil {
		t.Fatal(err)
	}
	if code, body := call(t, h, "POST", "/api/v1/approvals/"+late.ID+"/approve", tok, `{"by":"alice"}`); code != 409 ||
		!strings.Contains(body, "it expired before the decision") {
		t.Errorf("approve after the expiry: %d %s, want 409 saying it expired", code, body)
	}
	if strings.Contains(body, `"body"`) {
		t.Errorf("the API shows the request body, which may hold secrets: %s", body)
	}
	if code, body := call(t, h, "GET", "/api/v1/approvals?state=denied", tok, ""); code != 200 || body != "[]\n" {
		t.Errorf("list of none: %d %q, want 200 and an empty list", code, body)
	}
}

// What the approval API answers holds who waits for what, and one
// approval the agent's request: no cache between it and the operator
// keeps a copy.
func TestApprovalAnswersAreNotStored(t *testing.T) {
	h, _, a := pendingAPI(t)
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/api/v1/approvals", ""},
		{"GET", "/api/v1/approvals/" + a.ID, ""},
		{"POST", "/api/v1/approvals/" + a.ID + "/approve", `{"by":"alice"}`},
		{"GET", "/api/v1/status", ""},
	} {
		req := httptest.NewRequest(tc.method, "http://127.0.0.1:8081"+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s: %d, Cache-Control %q; want 200 and no-store", tc.method, tc.path, rec.Code, rec.Header().Get("Cache-Control"))
		}
	}
}

// Every approvals endpoint, not only the list, refuses a caller without
// the admin token, or with the token but not as a Bearer credential, and
// changes nothing; with no token configured, no caller gets in, not even
// one sending an empty one.
func TestEveryApprovalEndpointNeedsTheToken(t *testing.T) {
	for _, configured := range []string{testToken, ""} {
		store := approval.NewMemory(nil)
		a, _ := approval.New("dec", "bot", "editor", "notion", "delete_page", []byte(`{}`), time.Now(), time.Hour)
		if err := store.Create(context.Background(), a); err != nil {
			t.Fatal(err)
		}
		h := Handler(Deps{Policies: &policies{}, Upstreams: func() []broker.UpstreamStatus { return nil }, Approvals: store, Token: configured})
		for _, ep := range []struct{ method, path string }{
			{"GET", "/api/v1/approvals"}, {"GET", "/api/v1/approvals/" + a.ID},
			{"POST", "/api/v1/approvals/" + a.ID + "/approve"}, {"POST", "/api/v1/approvals/" + a.ID + "/deny"},
		} {
			for _, auth := range []string{"", "Bearer ", "Bearer amg_notadmin", "Basic " + testToken, testToken} {
				req := httptest.NewRequest(ep.method, "http://127.0.0.1:8081"+ep.path, strings.NewReader(`{"by":"mallory"}`))
				if auth != "" {
					req.Header.Set("Authorization", auth)
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != 401 || !strings.Contains(rec.Body.String(), "admin token is required") {
					t.Errorf("token %q configured, %s %s with %q: %d %s, want 401", configured, ep.method, ep.path, auth, rec.Code, rec.Body)
				}
			}
		}
		if got, err := store.Get(context.Background(), a.ID); err != nil || got.State != approval.Pending {
			t.Errorf("token %q configured: the approval is %v (%v) after refused calls, want pending", configured, got.State, err)
		}
	}
}

// A request nests as deep as its agent made it (the parser allows 64
// levels): the API shows it indented to a bounded depth, so that its
// answer is not many times the request.
func TestApprovalAnswerIsBoundedByTheRequest(t *testing.T) {
	store := approval.NewMemory(nil)
	parked := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"},"x":` +
		strings.Repeat("[", 60) + strings.Repeat("0,", 32<<10) + "0" + strings.Repeat("]", 60) + `}}`
	a, _ := approval.New("dec", "bot", "editor", "notion", "delete_page", []byte(parked), time.Now(), time.Hour)
	if err := store.Create(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	tok := TokenPrefix + strings.Repeat("ab", 32)
	h := Handler(Deps{Policies: &policies{}, Upstreams: func() []broker.UpstreamStatus { return nil }, Approvals: store, Token: tok})
	code, body := call(t, h, "GET", "/api/v1/approvals/"+a.ID, tok, "")
	var one struct{ Request json.RawMessage }
	if code != 200 || json.Unmarshal([]byte(body), &one) != nil || compactJSON(t, one.Request) != parked {
		t.Fatalf("one approval = %d %.500s…, want its request", code, body)
	}
	if n, bound := len(body), 6*len(parked)+4<<10; n > bound {
		t.Errorf("a request of %d KiB gives an answer of %d KiB, over %d KiB", len(parked)>>10, n>>10, bound>>10)
	}
	if !strings.Contains(body, "\n  \"request\": {\n    \"jsonrpc\": \"2.0\",\n") {
		t.Errorf("the answer is not indented:\n%.500s", body)
	}
}

// Who decides and why reach the audit log, the agent's error and the
// CLI's terminal: a decision is refused unless both are plain text.
func TestDecisionNeedsPlainText(t *testing.T) {
	const control = `must not contain control characters (newlines, escapes)`
	for _, tc := range []struct {
		name, body, err string
	}{
		{"no by", `{"reason":"fine"}`, `"by" must name who decides; the audit log records it`},
		{"blank by", `{"by":" \t "}`, `"by" must name who decides; the audit log records it`},
		{"by of 1 KB", `{"by":"` + strings.Repeat("a", 1024) + `"}`, `"by" must be at most 64 bytes`},
		{"by with a NUL", `{"by":"ali\u0000ce"}`, `"by" ` + control},
		{"by with a newline", `{"by":"alice\nroot"}`, `"by" ` + control},
		{"by with an ANSI escape", `{"by":"\u001b[2Jalice"}`, `"by" ` + control},
		{"reason with a newline", `{"by":"alice","reason":"ok\napproved by root"}`, `"reason" ` + control},
		{"reason with an ANSI escape", `{"by":"alice","reason":"\u001b]0;pwned\u0007"}`, `"reason" ` + control},
		{"reason not a string", `{"by":"alice","reason":5}`, `body must be JSON: {"by": "...", "reason": "..."}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, store, a := pendingAPI(t)
			code, body := call(t, h, "POST", "/api/v1/approvals/"+a.ID+"/deny", testToken, tc.body)
			var got struct{ Error string }
			if code != http.StatusBadRequest || json.Unmarshal([]byte(body), &got) != nil || got.Error != tc.err {
				t.Errorf("%d %s, want 400 with the error %q", code, body, tc.err)
			}
			if a, _ := store.Get(context.Background(), a.ID); a.State != approval.Pending {
				t.Errorf("a refused decision left the approval %s", a.State)
			}
		})
	}
}

// A long reason is cut to 500 bytes, as the console cuts it, and who
// decides is recorded trimmed.
func TestDecisionCutsALongReason(t *testing.T) {
	h, _, a := pendingAPI(t)
	code, body := call(t, h, "POST", "/api/v1/approvals/"+a.ID+"/approve", testToken,
		`{"by":"  alice ","reason":"`+strings.Repeat("€", 20<<10)+`"}`)
	var got approval.Approval
	if code != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil {
		t.Fatalf("%d %.200s", code, body)
	}
	if got.State != approval.Approved || got.DecidedBy != "alice" || got.Reason != strings.Repeat("€", 166) {
		t.Errorf("%s by %q with a reason of %d bytes; want approved by alice with 498", got.State, got.DecidedBy, len(got.Reason))
	}
}

// A decision's body is read up to 64 KiB: a longer one is refused as
// such, not as JSON that does not decode, and decides nothing.
func TestDecisionBodyIsBounded(t *testing.T) {
	h, store, a := pendingAPI(t)
	code, body := call(t, h, "POST", "/api/v1/approvals/"+a.ID+"/approve", testToken,
		`{"by":"alice","reason":"`+strings.Repeat("r", 70<<10)+`"}`)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "body must be at most 64 KiB") {
		t.Errorf("a decision of 70 KiB: %d %.200s, want 413 saying the bound", code, body)
	}
	if got, _ := store.Get(context.Background(), a.ID); got.State != approval.Pending {
		t.Errorf("a refused decision left the approval %s", got.State)
	}
}

const testToken = TokenPrefix + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// pendingAPI is the admin API, with testToken, over a store holding one
// pending approval.
func pendingAPI(t *testing.T) (http.Handler, approval.Store, *approval.Approval) {
	t.Helper()
	store := approval.NewMemory(nil)
	a, err := approval.New("dec", "bot", "editor", "notion", "delete_page", []byte(`{}`), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Create(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	return Handler(Deps{Policies: &policies{}, Upstreams: func() []broker.UpstreamStatus { return nil }, Approvals: store, Token: testToken}), store, a
}

func TestLoadOrCreateToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.token")
	tok, err := LoadOrCreateToken(path)
	if err != nil || !strings.HasPrefix(tok, TokenPrefix) {
		t.Fatalf("created %q, %v", tok, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode: %v %v", fi.Mode(), err)
	}
	again, err := LoadOrCreateToken(path)
	if err != nil || again != tok {
		t.Errorf("reloaded %q, %v; want the same token", again, err)
	}
	os.WriteFile(path, []byte("not a token\n"), 0o600)
	if _, err := LoadOrCreateToken(path); err == nil || !strings.Contains(err.Error(), "does not hold an admin token") {
		t.Errorf("a file without a token: %v", err)
	}
}

// The admin token approves parked calls and, through the console, issues
// tokens of any role: a token file that group or others may access is
// refused, as an audit key is, and so is one that holds anything but a
// token as LoadOrCreateToken makes them. A refused file is left as it is.
func TestLoadOrCreateTokenRefuses(t *testing.T) {
	good := TokenPrefix + strings.Repeat("ab", 32) + "\n"
	tests := []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"world readable", good, 0o644, "has mode 0644; it must not be accessible to group or others (chmod 600)"},
		{"group readable", good, 0o640, "has mode 0640; it must not be accessible to group or others (chmod 600)"},
		{"others writable", good, 0o602, "has mode 0602"},
		{"upper-case hex", TokenPrefix + strings.Repeat("AB", 32) + "\n", 0o600, "does not hold an admin token"},
		{"not hex", TokenPrefix + strings.Repeat("zz", 32) + "\n", 0o600, "does not hold an admin token"},
		{"short", TokenPrefix + strings.Repeat("ab", 31) + "\n", 0o600, "does not hold an admin token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "admin.token")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			if tok, err := LoadOrCreateToken(path); err == nil || !strings.Contains(err.Error(), path+" "+tt.want) {
				t.Errorf("LoadOrCreateToken = %.12q, %v; want an error containing %q", tok, err, path+" "+tt.want)
			}
			if b, _ := os.ReadFile(path); string(b) != tt.content {
				t.Errorf("the refused file now holds %q", b)
			}
		})
	}
	if _, err := LoadOrCreateToken(t.TempDir()); err == nil || !strings.Contains(err.Error(), "is not a regular file") {
		t.Errorf("a directory as the token file: %v", err)
	}
}

// Gateways started together on one data directory agree on one token: none
// reads the file half written, none fails because another created it.
func TestLoadOrCreateTokenConcurrent(t *testing.T) {
	for range 20 {
		path := filepath.Join(t.TempDir(), "admin.token")
		const n = 8
		toks, errs := make([]string, n), make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				toks[i], errs[i] = LoadOrCreateToken(path)
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("call %d: %v", i, errs[i])
			}
			if toks[i] != toks[0] {
				t.Fatalf("call %d got %q, call 0 %q; want one token", i, toks[i], toks[0])
			}
		}
	}
}

// compactJSON is raw without the indentation the API adds.
func compactJSON(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

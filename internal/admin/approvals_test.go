package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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
	a, _ := approval.New("dec", "bot", "editor", "notion", "delete_page", []byte(`{}`), time.Now(), time.Hour)
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

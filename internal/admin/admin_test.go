package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/broker"
	"github.com/amgateway/amg/internal/hostguard"
	"github.com/amgateway/amg/internal/policy"
)

type policies struct {
	set *policy.Set
	st  policy.Status
}

func (p *policies) Current() *policy.Set  { return p.set }
func (p *policies) Status() policy.Status { return p.st }

func compile(t *testing.T) *policy.Set {
	t.Helper()
	set, err := policy.Compile([]policy.File{{Name: "r.yaml", Data: []byte("role: reader\nservers:\n  notion:\n    tools:\n      - name: get_pages\n")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func get(t *testing.T, h http.Handler, path string, hdr map[string]string) (int, string) {
	t.Helper()
	req := httptest.NewRequest("GET", "http://127.0.0.1:8081"+path, nil)
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestReadinessFollowsThePolicy(t *testing.T) {
	p := &policies{}
	h := Handler(Deps{Policies: p, Upstreams: func() []broker.UpstreamStatus { return nil }})
	if code, body := get(t, h, "/healthz", nil); code != 200 || body != "ok\n" {
		t.Errorf("healthz = %d %q", code, body)
	}
	if code, body := get(t, h, "/readyz", nil); code != 503 || body != "no policy compiled\n" {
		t.Errorf("readyz without a policy = %d %q, want 503", code, body)
	}
	p.set = compile(t)
	if code, _ := get(t, h, "/readyz", nil); code != 200 {
		t.Errorf("readyz with a policy = %d, want 200", code)
	}
}

// Once shutdown begins the agents' listeners take no new calls: /readyz
// says so, policy or not, so that a load balancer sends them elsewhere.
func TestReadinessEndsAtShutdown(t *testing.T) {
	var draining atomic.Bool
	h := Handler(Deps{Policies: &policies{set: compile(t)}, Upstreams: func() []broker.UpstreamStatus { return nil }, Draining: draining.Load})
	if code, body := get(t, h, "/readyz", nil); code != 200 || body != "ready\n" {
		t.Errorf("readyz while serving = %d %q, want 200", code, body)
	}
	draining.Store(true)
	if code, body := get(t, h, "/readyz", nil); code != 503 || body != "shutting down\n" {
		t.Errorf("readyz while draining = %d %q, want 503 \"shutting down\"", code, body)
	}
}

type auditor struct{ healthy atomic.Bool }

func (a *auditor) Healthy() bool { return a.healthy.Load() }

// While the audit log cannot record, every call is refused: /readyz says
// the gateway is not ready, and why, until it can again.
func TestReadinessFollowsTheAuditLog(t *testing.T) {
	audit := &auditor{}
	h := Handler(Deps{Policies: &policies{set: compile(t)}, Upstreams: func() []broker.UpstreamStatus { return nil }, Audit: audit})
	if code, body := get(t, h, "/readyz", nil); code != 503 || body != "audit log cannot record\n" {
		t.Errorf("readyz with the audit log failing = %d %q, want 503 \"audit log cannot record\"", code, body)
	}
	audit.healthy.Store(true)
	if code, body := get(t, h, "/readyz", nil); code != 200 || body != "ready\n" {
		t.Errorf("readyz with the audit log recording = %d %q, want 200", code, body)
	}
}

// While Deps.NotReady gives a reason (the gateway's: its shared keys are
// no longer those of the other replicas), /readyz answers 503 saying it.
func TestReadinessFollowsNotReady(t *testing.T) {
	var why atomic.Pointer[string]
	notReady := func() string {
		if p := why.Load(); p != nil {
			return *p
		}
		return ""
	}
	h := Handler(Deps{Policies: &policies{set: compile(t)}, Upstreams: func() []broker.UpstreamStatus { return nil }, NotReady: notReady})
	if code, body := get(t, h, "/readyz", nil); code != 200 || body != "ready\n" {
		t.Errorf("readyz without a reason = %d %q, want 200", code, body)
	}
	reason := "the shared audit key in redis (amg:{keys}:audit) is not the one this replica uses: restart it"
	why.Store(&reason)
	if code, body := get(t, h, "/readyz", nil); code != 503 || body != reason+"\n" {
		t.Errorf("readyz with a reason = %d %q, want 503 %q", code, body, reason)
	}
}

func TestStatusReportsPolicyAndUpstreams(t *testing.T) {
	set := compile(t)
	at := time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)
	p := &policies{set: set, st: policy.Status{At: at, Err: errors.New("r.yaml:3:5: servers.notion.tools[0]: unknown tool"),
		Misfits: errors.New(`r.yaml:5:9: servers.notion.tools[0]: server "notion" has no tool "get_page"`)}}
	ups := []broker.UpstreamStatus{{Name: "notion", Connected: true, Tools: 5}, {Name: "github"}}
	h := Handler(Deps{Policies: p, Upstreams: func() []broker.UpstreamStatus { return ups }, Version: "v1.2.3", Started: at})
	code, body := get(t, h, "/api/v1/status", nil)
	if code != 200 {
		t.Fatalf("status = %d %s", code, body)
	}
	var got Status
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got.Version != "v1.2.3" || got.Policy.Version != set.VersionString() || strings.Join(got.Policy.Roles, ",") != "reader" ||
		!got.Policy.LastReload.Equal(at) || got.Policy.LastError != "r.yaml:3:5: servers.notion.tools[0]: unknown tool" ||
		got.Policy.Misfits != `r.yaml:5:9: servers.notion.tools[0]: server "notion" has no tool "get_page"` ||
		len(got.Upstreams) != 2 || !got.Upstreams[0].Connected || got.Upstreams[0].Tools != 5 || got.Upstreams[1].Connected {
		t.Errorf("status = %s", body)
	}
	if code, _ := get(t, h, "/api/v1/nothing", nil); code != 404 {
		t.Errorf("unknown path = %d, want 404", code)
	}
}

// On loopback the admin endpoints answer only to loopback names, so that a
// web page cannot read them through DNS rebinding.
func TestLoopbackAdminRefusesOtherHosts(t *testing.T) {
	h := Handler(Deps{Policies: &policies{}, Upstreams: func() []broker.UpstreamStatus { return nil }, Hosts: hostguard.ForListener("127.0.0.1:8081")})
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"loopback", map[string]string{"Host": "127.0.0.1:8081"}, 200},
		{"localhost", map[string]string{"Host": "localhost:8081"}, 200},
		{"rebound name", map[string]string{"Host": "attacker.example:8081"}, 403},
		{"foreign origin", map[string]string{"Host": "127.0.0.1:8081", "Origin": "http://attacker.example"}, 403},
	} {
		if code, _ := get(t, h, "/api/v1/status", tc.hdr); code != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, code, tc.want)
		}
	}
}

// The console is served under /console/, and the listener's root leads
// there; without one, neither exists.
func TestConsoleIsMountedUnderItsPrefix(t *testing.T) {
	console := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("console " + r.URL.Path)) })
	up := func() []broker.UpstreamStatus { return nil }
	h := Handler(Deps{Policies: &policies{}, Upstreams: up, Console: console})
	if code, body := get(t, h, "/console/approvals", nil); code != 200 || body != "console /console/approvals" {
		t.Errorf("/console/approvals = %d %q", code, body)
	}
	req := httptest.NewRequest("GET", "http://127.0.0.1:8081/", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/console/" {
		t.Errorf("/ = %d to %q, want 303 to /console/", rec.Code, rec.Header().Get("Location"))
	}
	without := Handler(Deps{Policies: &policies{}, Upstreams: up})
	for _, path := range []string{"/", "/console/approvals"} {
		if code, _ := get(t, without, path, nil); code != http.StatusNotFound {
			t.Errorf("without a console, %s = %d, want 404", path, code)
		}
	}
}

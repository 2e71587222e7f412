package console_test

import (
	"errors"
	"html"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/amgateway/amg/internal/policy"
)

type toolAccess struct {
	hints, roles, approval []string
}

// upstreamTools reads the policy page's table of server: each tool's hints,
// the roles that may call it and those that need approval.
func upstreamTools(t *testing.T, body, server string) map[string]toolAccess {
	t.Helper()
	table := regexp.MustCompile(`(?s)<table data-testid="upstream-tools" data-server="` + server + `">.*?</table>`).FindString(body)
	if table == "" {
		t.Fatalf("no table for upstream %s", server)
	}
	chips := func(s, class string) []string {
		var out []string
		for _, m := range regexp.MustCompile(`<span class="`+class+`">([^<]*)</span>`).FindAllStringSubmatch(s, -1) {
			out = append(out, html.UnescapeString(m[1]))
		}
		return out
	}
	tools := map[string]toolAccess{}
	for _, m := range regexp.MustCompile(`(?s)<tr data-testid="tool" data-tool="([^"]*)">(.*?)</tr>`).FindAllStringSubmatch(table, -1) {
		tools[m[1]] = toolAccess{hints: chips(m[2], "chip"), roles: chips(m[2], "chip role"), approval: chips(m[2], "chip role approval")}
	}
	return tools
}

func shownVersion(body string) string {
	m := regexp.MustCompile(`data-testid="policy-version"><code>([^<]*)</code>`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return m[1]
}

func TestPolicyPage(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	rec := e.get(op, "/console/policy")
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()

	version := e.policies.Current().VersionString()
	if got := shownVersion(body); got != version {
		t.Errorf("version %q, want %s", got, version)
	}
	if strings.Contains(body, `data-testid="policy-problems"`) || !strings.Contains(body, `<span class="badge allow">ok</span>`) {
		t.Error("a good reload is shown as failed")
	}
	for _, role := range []string{
		`<tr><td>dev</td><td><span class="badge enforce">enforce</span></td><td><code>dev.yaml:1</code></td></tr>`,
		`<tr><td>support</td><td><span class="badge shadow">shadow</span></td><td><code>support.yaml:1</code></td></tr>`,
	} {
		if !strings.Contains(body, role) {
			t.Errorf("the roles table lacks %s", role)
		}
	}

	tools := upstreamTools(t, body, "notion")
	want := map[string]toolAccess{
		"get_pages":   {hints: []string{"readOnlyHint", "idempotentHint"}, roles: []string{"dev", "ops"}},
		"search":      {hints: []string{"readOnlyHint"}, roles: []string{"dev", "support", "trial"}},
		"create_page": {hints: []string{"destructiveHint", "openWorldHint"}, approval: []string{"ops"}}, // the grant requires it
		"delete_page": {hints: []string{"destructiveHint"}, approval: []string{"dev"}},                  // dev's approval rule matches
	}
	if len(tools) != len(want) {
		t.Errorf("tools %v, want %d", tools, len(want))
	}
	for name, w := range want {
		got, ok := tools[name]
		if !ok {
			t.Errorf("no row for %s", name)
			continue
		}
		if !slices.Equal(got.hints, w.hints) || !slices.Equal(got.roles, w.roles) || !slices.Equal(got.approval, w.approval) {
			t.Errorf("%s: hints %v, may call %v, with approval %v; want %v, %v, %v", name, got.hints, got.roles, got.approval, w.hints, w.roles, w.approval)
		}
	}

	// github has listed no tools.
	if !regexp.MustCompile(`Upstream <code>github</code> <span class="badge deny">no tool list</span>`).MatchString(body) ||
		!strings.Contains(body, "The gateway is not connected to this server.") {
		t.Error("the page does not say github's tools are unknown")
	}
	if len(upstreamTools(t, body, "github")) != 0 {
		t.Error("github shows tools")
	}
}

func TestPolicyPageShowsReloadProblems(t *testing.T) {
	problems := policy.Problems{
		{Pos: policy.Pos{File: "dev.yaml", Line: 5, Col: 9}, Path: "servers.notion.tools[2].name", Msg: `server "notion" has no tool "<delete>"`},
		{Pos: policy.Pos{File: "ops.yaml", Line: 2, Col: 1}, Path: "mode", Msg: `unknown mode "audit"`},
	}
	for _, tc := range []struct {
		name string
		err  error
		want []string
	}{
		{"problems", problems, []string{problems[0].String(), problems[1].String()}},
		{"wrapped problems", errors.Join(errors.New("reload"), problems), []string{problems[0].String(), problems[1].String()}},
		{"another error", errors.New("open policies: permission denied"), []string{"open policies: permission denied"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.policies.setStatus(policy.Status{At: start, Version: e.policies.Current().Version(), Err: tc.err})
			op := e.signIn("alice")
			rec := e.get(op, "/console/policy")
			wantStatus(t, rec, http.StatusOK)
			body := rec.Body.String()
			section := regexp.MustCompile(`(?s)<section class="card problems" data-testid="policy-problems">.*?</section>`).FindString(body)
			var got []string
			for _, m := range regexp.MustCompile(`<li><code>(.*?)</code></li>`).FindAllStringSubmatch(section, -1) {
				got = append(got, html.UnescapeString(m[1]))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("problems shown %q, want %q", got, tc.want)
			}
			if strings.Contains(body, "<delete>") {
				t.Error("a problem was not escaped")
			}
			if !strings.Contains(body, `<span class="badge deny">failed</span>`) || !strings.Contains(body, "2026-03-20 12:00:00Z") {
				t.Error("the failed reload and its time are not shown")
			}
			// The version in force stays.
			if got := shownVersion(body); got != e.policies.Current().VersionString() {
				t.Errorf("version %q", got)
			}
		})
	}
}

func TestPolicyPageWithoutAPolicy(t *testing.T) {
	e := newEnv(t, nil)
	e.policies.mu.Lock()
	e.policies.set = nil
	e.policies.mu.Unlock()
	op := e.signIn("alice")
	rec := e.get(op, "/console/policy")
	wantStatus(t, rec, http.StatusOK)
	if !strings.Contains(rec.Body.String(), "none: every call is denied") {
		t.Error("no policy is not shown as denying everything")
	}
	for name, access := range upstreamTools(t, rec.Body.String(), "notion") {
		if len(access.roles)+len(access.approval) != 0 {
			t.Errorf("%s callable without a policy: %+v", name, access)
		}
	}
}

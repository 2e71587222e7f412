package console_test

import (
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/internal/policy"
)

// devWithoutSearch is dev's role file with the search grant removed.
var devWithoutSearch = strings.Replace(devRole, "      - name: search\n", "", 1)

// newPolicy is the policy replayed against: dev loses search, ops stays.
func newPolicy() []policy.File {
	return []policy.File{{Name: "dev.yaml", Data: []byte(devWithoutSearch)}, {Name: "ops.yml", Data: []byte(opsRole)}}
}

// replayLog is what the policy in force decided: five decisions the
// engine took and two records replay skips.
func replayLog() []audit.Record {
	at := func(m int) time.Time { return time.Date(2026, 3, 19, 9, m, 0, 0, time.UTC) }
	call := func(m int, id, role, tool, verdict, code string) audit.Record {
		return audit.Record{Time: at(m), DecisionID: id, Agent: role + "-agent", Role: role, Server: "notion", Tool: tool,
			Method: "tools/call", Args: json.RawMessage(`{}`), Verdict: verdict, Code: code}
	}
	return []audit.Record{
		call(0, "r1", "dev", "get_pages", "allow", "allowed"),
		call(10, "r2", "dev", "search", "allow", "allowed"),
		call(20, "r3", "dev", "search", "allow", "allowed"),
		call(30, "r4", "dev", "delete_page", "needs_approval", "approval_required"),
		{Time: at(31), DecisionID: "r4", Agent: "dev-agent", Role: "dev", Server: "notion", Tool: "delete_page", Method: "tools/call",
			Verdict: "allow", Code: "executed"},
		{Time: at(40), DecisionID: "r5", Method: "initialize", Verdict: "deny", Code: "unauthenticated"},
		call(50, "r6", "ops", "create_page", "needs_approval", "approval_required"),
	}
}

// replayCounts maps "role notion__tool" to the counts row's numbers.
func replayCounts(body string) map[string]string {
	out := map[string]string{}
	for _, m := range regexp.MustCompile(`(?s)<tr data-testid="replay-count"><td>([^<]*)</td><td><code>([^<]*)</code></td>(.*?)</tr>`).FindAllStringSubmatch(body, -1) {
		var nums []string
		for _, n := range regexp.MustCompile(`<td class="num">(\d+)</td>`).FindAllStringSubmatch(m[3], -1) {
			nums = append(nums, n[1])
		}
		out[m[1]+" "+m[2]] = strings.Join(nums, " ")
	}
	return out
}

var replayChangeRE = regexp.MustCompile(`(?s)<tr data-testid="replay-change">(.*?)</tr>`)

// wantNewPolicyReport checks the report of replaying replayLog against
// newPolicy.
func wantNewPolicyReport(t *testing.T, body, source string) {
	t.Helper()
	text := html.UnescapeString(body)
	if !strings.Contains(body, `data-testid="replay-report"`) || !strings.Contains(text, "<h2>Against "+source+"</h2>") {
		t.Fatalf("no report against %s:\n%s", source, body)
	}
	summary := regexp.MustCompile(`(?s)<p class="summary" data-testid="replay-summary">(.*?)</p>`).FindStringSubmatch(body)
	if summary == nil {
		t.Fatal("no summary")
	}
	if got := strings.Join(strings.Fields(regexp.MustCompile(`<[^>]+>`).ReplaceAllString(summary[1], "")), " "); got != "2 decisions would change: 5 replayed, 0 undecidable, 2 other records skipped." {
		t.Errorf("summary %q", got)
	}
	// Unchanged, allow→deny, deny→allow, →approval, approval→allow,
	// approval→deny, undecidable.
	want := map[string]string{
		"dev notion__delete_page": "1 0 0 0 0 0 0",
		"dev notion__get_pages":   "1 0 0 0 0 0 0",
		"dev notion__search":      "0 2 0 0 0 0 0",
		"ops notion__create_page": "1 0 0 0 0 0 0",
	}
	got := replayCounts(body)
	if len(got) != len(want) {
		t.Errorf("counts %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("counts of %s: %q, want %q", k, got[k], w)
		}
	}
	changes := replayChangeRE.FindAllStringSubmatch(body, -1)
	if len(changes) != 2 {
		t.Fatalf("%d changed decisions listed, want 2", len(changes))
	}
	for i, id := range []string{"r2", "r3"} {
		row := html.UnescapeString(changes[i][1])
		for _, want := range []string{`href="/console/audit?decision_id=` + id + `"`, "dev-agent", "notion__search",
			`<span class="badge allow">allow</span> → <span class="badge deny">deny</span>`} {
			if !strings.Contains(row, want) {
				t.Errorf("change %d lacks %s:\n%s", i, want, row)
			}
		}
	}
}

func TestReplayUploadedRoleFiles(t *testing.T) {
	e := newEnv(t, nil)
	e.writeAudit(replayLog()...)
	op := e.signIn("alice")

	page := e.get(op, "/console/replay")
	wantStatus(t, page, http.StatusOK)
	if strings.Contains(page.Body.String(), `data-testid="replay-staged"`) {
		t.Error("the staged button is offered with no staged policy directory")
	}
	if strings.Contains(page.Body.String(), `data-testid="replay-report"`) {
		t.Error("a report before any replay")
	}

	files := newPolicy()
	files[0].Name = "../../elsewhere/dev.yaml" // only the base name counts
	rec := e.upload(op, "/console/replay", nil, files...)
	wantStatus(t, rec, http.StatusOK)
	if p := problem(rec); p != "" {
		t.Errorf("problem %q", p)
	}
	wantNewPolicyReport(t, rec.Body.String(), "dev.yaml, ops.yml")

	// Replaying the policy in force changes nothing.
	rec = e.upload(op, "/console/replay", nil, roleFiles()...)
	wantStatus(t, rec, http.StatusOK)
	if !strings.Contains(rec.Body.String(), "<strong>No decision would change</strong>") || replayChangeRE.MatchString(rec.Body.String()) {
		t.Error("replaying the policy in force reports changes")
	}
}

// A log whose hash chain is broken is not replayed: the report would rest
// on records that are not the gateway's decisions.
func TestReplayRefusesABrokenChain(t *testing.T) {
	e := newEnv(t, nil)
	e.writeAudit(replayLog()...)
	data, err := os.ReadFile(e.auditFile)
	if err != nil {
		t.Fatal(err)
	}
	tampered := strings.Replace(string(data), `"decision_id":"r2"`, `"decision_id":"r7"`, 1)
	if tampered == string(data) {
		t.Fatal("nothing to tamper with")
	}
	if err := os.WriteFile(e.auditFile, []byte(tampered), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := e.upload(e.signIn("alice"), "/console/replay", nil, newPolicy()...)
	wantStatus(t, rec, http.StatusServiceUnavailable)
	if p := problem(rec); !strings.Contains(p, "The audit log could not be read") || !strings.Contains(p, ":2: hash mismatch") {
		t.Errorf("problem %q", p)
	}
	if strings.Contains(rec.Body.String(), `data-testid="replay-report"`) {
		t.Error("a report of a log whose chain is broken")
	}
}

func TestReplayNeedsCSRF(t *testing.T) {
	e := newEnv(t, nil)
	e.writeAudit(replayLog()...)
	op := e.signIn("alice")
	rec := e.upload(&operator{cookie: op.cookie}, "/console/replay", nil, newPolicy()...)
	wantStatus(t, rec, http.StatusForbidden)
}

func TestReplayRefusals(t *testing.T) {
	broken := `role: dev
servers:
  notion:
    tools:
      - name: nope
  jira:
    tools:
      - name: search
`
	for _, tc := range []struct {
		name     string
		files    []policy.File
		problem  string
		problems []string // substrings, one per problem listed
	}{
		{"does not compile", []policy.File{{Name: "dev.yaml", Data: []byte(broken)}, {Name: "ops.yaml", Data: []byte(opsRole)}},
			"The policy does not compile, so nothing was replayed.",
			[]string{`dev.yaml:5:`, `server "notion" has no tool "nope"`, `dev.yaml:6:`, `unknown server "jira"`}},
		{"not YAML", []policy.File{{Name: "dev.yaml", Data: []byte(devRole)}, {Name: "notes.txt", Data: []byte("hello")}},
			"notes.txt is not a role file: upload .yaml or .yml files", nil},
		{"no extension", []policy.File{{Name: "dev", Data: []byte(devRole)}},
			"dev is not a role file: upload .yaml or .yml files", nil},
		{"no files", nil, "choose the role files to replay against (every file of the new policy)", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.writeAudit(replayLog()...)
			op := e.signIn("alice")
			rec := e.upload(op, "/console/replay", nil, tc.files...)
			wantStatus(t, rec, http.StatusBadRequest)
			body := rec.Body.String()
			if p := problem(rec); p != tc.problem {
				t.Errorf("problem %q, want %q", p, tc.problem)
			}
			if strings.Contains(body, `data-testid="replay-report"`) {
				t.Error("a report despite the problem")
			}
			section := html.UnescapeString(regexp.MustCompile(`(?s)<section class="card problems" data-testid="replay-problems">.*?</section>`).FindString(body))
			for _, want := range tc.problems {
				if !strings.Contains(section, want) {
					t.Errorf("problems lack %q:\n%s", want, section)
				}
			}
			if tc.problems == nil && section != "" {
				t.Errorf("compile problems listed: %s", section)
			}
		})
	}
}

func TestReplayNeedsAMultipartForm(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	rec := e.act(op, "/console/replay", nil)
	wantStatus(t, rec, http.StatusBadRequest)
	if p := problem(rec); p != "upload the role files as a form (multipart/form-data)" {
		t.Errorf("problem %q", p)
	}
}

// A decision replay could not decide is never taken for one that would
// not change: the summary says how many could not be decided.
func TestReplaySaysWhatItCouldNotDecide(t *testing.T) {
	e := newEnv(t, nil)
	undecidable := replayLog()[0]
	undecidable.DecisionID, undecidable.Time = "r7", undecidable.Time.Add(time.Hour)
	undecidable.Args = json.RawMessage(`"` + audit.Unencodable + `"`)
	e.writeAudit(append(replayLog(), undecidable)...)
	op := e.signIn("alice")
	rec := e.upload(op, "/console/replay", nil, roleFiles()...)
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	if !strings.Contains(body, "<strong>1 decision could not be decided; none of the 5 others would change</strong>") ||
		strings.Contains(body, "No decision would change") {
		t.Errorf("the summary does not say a decision could not be decided:\n%s", body)
	}
	if got := replayCounts(body)["dev notion__get_pages"]; got != "1 0 0 0 0 0 1" {
		t.Errorf("counts of get_pages %q, want one unchanged, one undecidable", got)
	}
}

// Agents name the tools they call: past 50 of one role, the report
// counts the others in one row.
func TestReplayFoldsToolsPastFifty(t *testing.T) {
	e := newEnv(t, nil)
	var recs []audit.Record
	for i := range 55 {
		recs = append(recs, audit.Record{Time: start.Add(time.Duration(i-300) * time.Minute), DecisionID: fmt.Sprintf("t%03d", i),
			Agent: "a", Role: "dev", Server: "notion", Tool: fmt.Sprintf("made_up_%02d", i), Method: "tools/call", Verdict: "deny", Code: "not_granted"})
	}
	e.writeAudit(recs...)
	op := e.signIn("alice")
	rec := e.upload(op, "/console/replay", nil, newPolicy()...)
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	if n := len(replayCounts(body)); n != 50 {
		t.Errorf("%d tools counted apart, want 50", n)
	}
	others := regexp.MustCompile(`<tr data-testid="replay-count"><td>dev</td><td><em>other tools</em></td><td class="num">(\d+)</td>`).FindStringSubmatch(body)
	if others == nil || others[1] != "5" {
		t.Errorf("no row of dev's 5 other tools:\n%s", body)
	}
}

func TestReplayEmptyLog(t *testing.T) {
	e := newEnv(t, nil) // no audit log yet
	op := e.signIn("alice")
	rec := e.upload(op, "/console/replay", nil, newPolicy()...)
	wantStatus(t, rec, http.StatusOK)
	if !strings.Contains(rec.Body.String(), "<strong>No decision would change</strong>") {
		t.Errorf("replaying an empty log:\n%s", rec.Body)
	}
}

func TestReplayListsAtMost200Changes(t *testing.T) {
	e := newEnv(t, nil)
	var recs []audit.Record
	for i := range 205 {
		recs = append(recs, audit.Record{Time: start.Add(time.Duration(i-300) * time.Minute), DecisionID: fmt.Sprintf("s%03d", i),
			Agent: "a", Role: "dev", Server: "notion", Tool: "search", Method: "tools/call", Args: json.RawMessage(`{}`), Verdict: "allow", Code: "allowed"})
	}
	e.writeAudit(recs...)
	op := e.signIn("alice")
	rec := e.upload(op, "/console/replay", nil, newPolicy()...)
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	if n := len(replayChangeRE.FindAllString(body, -1)); n != 200 {
		t.Errorf("%d changes listed, want 200", n)
	}
	if !strings.Contains(body, "205 decisions would change") || !strings.Contains(body, "5 more changed decisions are not listed") {
		t.Error("the page does not count the changes it leaves out")
	}
	if got := replayCounts(body)["dev notion__search"]; got != "0 205 0 0 0 0 0" {
		t.Errorf("counts %q, want all 205", got)
	}
}

func TestReplayStagedPolicy(t *testing.T) {
	staged := t.TempDir()
	for _, f := range newPolicy() {
		if err := os.WriteFile(filepath.Join(staged, f.Name), f.Data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, &console.Options{StagedPolicyDir: staged})
	e.writeAudit(replayLog()...)
	op := e.signIn("alice")

	page := e.get(op, "/console/replay").Body.String()
	if !strings.Contains(page, `data-testid="replay-staged"`) {
		t.Fatal("no staged button with a staged policy directory")
	}
	form := regexp.MustCompile(`(?s)<form method="post" action="/console/replay" class="inline">.*?</form>`).FindString(page)
	if !strings.Contains(form, `name="csrf" value="`+op.csrf+`"`) || !strings.Contains(form, `name="staged" value="1"`) {
		t.Errorf("the staged form does not carry the CSRF token and staged:\n%s", form)
	}

	rec := e.act(op, "/console/replay", url.Values{"staged": {"1"}})
	wantStatus(t, rec, http.StatusOK)
	wantNewPolicyReport(t, rec.Body.String(), "the staged policy")

	// A staged policy that does not compile shows its problems.
	if err := os.WriteFile(filepath.Join(staged, "broken.yaml"), []byte("role: broken\nmode: loud\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec = e.act(op, "/console/replay", url.Values{"staged": {"1"}})
	wantStatus(t, rec, http.StatusBadRequest)
	if p := problem(rec); p != "The policy does not compile, so nothing was replayed." {
		t.Errorf("problem %q", p)
	}
	if !strings.Contains(rec.Body.String(), `data-testid="replay-problems"`) || !strings.Contains(rec.Body.String(), "broken.yaml:2:") {
		t.Errorf("the staged file's problem is not listed:\n%s", rec.Body)
	}
}

func TestReplayStagedWithoutADirectory(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	rec := e.act(op, "/console/replay", url.Values{"staged": {"1"}})
	wantStatus(t, rec, http.StatusBadRequest)
	if !strings.Contains(rec.Body.String(), "no staged policy directory is configured") {
		t.Errorf("body %q", rec.Body)
	}
}

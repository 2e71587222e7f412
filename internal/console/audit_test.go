package console_test

import (
	"context"
	"encoding/json"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/console"
)

const traceHex = "4bf92f3577b34da6a3ce929d0e0e4736"

var redactor = audit.NewRedactor([]byte("0123456789abcdef0123456789abcdef"))

// auditLog is a morning of decisions on 2026-03-10 (UTC):
//
//	09:00 d1 alice dev     notion__get_pages   allow (traced)
//	10:00 d2 bob   ops     notion__create_page needs_approval (redacted args)
//	10:30 d2 bob   ops     notion__create_page allow, executed by the broker
//	11:00 d3 alice dev     notion__delete_page deny (trace id not hex)
//	11:30 d4 carol support notion__search      allow, shadow verdict deny
//	11:59:30 d5 -  -       initialize          deny
func auditLog(t *testing.T) []audit.Record {
	t.Helper()
	at := func(h, m int) time.Time { return time.Date(2026, 3, 10, h, m, 0, 0, time.UTC) }
	redacted := redactor.Redact(map[string]any{"title": "Q3 plan", "api_key": "s3cret-value", "workspace_id": "ws_1"}, nil)
	if !strings.Contains(string(redacted), audit.HMACPrefix) {
		t.Fatalf("the redactor kept api_key: %s", redacted)
	}
	return []audit.Record{
		{Time: at(9, 0), DecisionID: "d1", Agent: "alice", Role: "dev", Server: "notion", Tool: "get_pages", Method: "tools/call",
			Args: json.RawMessage(`{"workspace_id":"ws_1"}`), Verdict: "allow", Code: "allowed", Rule: "dev/notion/get_pages", TraceID: traceHex, LatencyMicros: 41},
		{Time: at(10, 0), DecisionID: "d2", Agent: "bob", Role: "ops", Server: "notion", Tool: "create_page", Method: "tools/call",
			Args: redacted, Verdict: "needs_approval", Code: "approval_required", ApprovalID: "apr_0123", TraceID: traceHex},
		{Time: at(10, 30), DecisionID: "d2", Agent: "bob", Role: "ops", Server: "notion", Tool: "create_page", Method: "tools/call",
			Verdict: "allow", Code: "executed", UpstreamStatus: "ok", UpstreamMicros: 900},
		{Time: at(11, 0), DecisionID: "d3", Agent: "alice", Role: "dev", Server: "notion", Tool: "delete_page", Method: "tools/call",
			Args: json.RawMessage(`{}`), Verdict: "deny", Code: "not_granted", Reason: "<b>no grant</b>", TraceID: `"><script>x</script>`},
		{Time: at(11, 30), DecisionID: "d4", Agent: "carol", Role: "support", Server: "notion", Tool: "search", Method: "tools/call",
			Args: json.RawMessage(`{}`), Verdict: "allow", ShadowVerdict: "deny", Code: "allowed"},
		{Time: at(11, 59).Add(30 * time.Second), DecisionID: "d5", Method: "initialize", Verdict: "deny", Code: "unauthenticated"},
	}
}

var auditRowRE = regexp.MustCompile(`(?s)<tr data-testid="audit-row">(.*?)</tr>`)

// rowDecisions are the decision ids of a result table's rows, in order.
func rowDecisions(body string) []string {
	var ids []string
	for _, m := range auditRowRE.FindAllStringSubmatch(body, -1) {
		d := regexp.MustCompile(`href="/console/audit\?decision_id=([^"]*)"`).FindStringSubmatch(m[1])
		if d == nil {
			ids = append(ids, "?")
			continue
		}
		ids = append(ids, d[1])
	}
	return ids
}

func TestAuditSearch(t *testing.T) {
	e := newEnv(t, &console.Options{TraceURL: "https://jaeger.example/trace/{trace_id}"})
	e.writeAudit(auditLog(t)...)
	op := e.signIn("alice")
	for _, tc := range []struct {
		query string
		want  string // decision ids of the rows, newest first
	}{
		{"", "d5 d4 d3 d2 d2 d1"},
		{"agent=alice", "d3 d1"},
		{"agent=+alice+", "d3 d1"},
		{"agent=nobody", ""},
		{"role=ops", "d2 d2"},
		{"tool=notion__get_pages", "d1"},
		{"tool=search", "d4"},
		{"tool=github__search", ""},
		{"verdict=deny", "d5 d3"},
		{"verdict=needs_approval", "d2"},
		{"verdict=shadow_deny", "d4"},
		{"verdict=allow&agent=bob", "d2"},
		{"from=2026-03-10T10:00&to=2026-03-10T11:00", "d3 d2 d2"},
		{"from=2026-03-10T10:01", "d5 d4 d3 d2"},
		{"to=2026-03-10T09:59", "d1"},
		{"to=2026-03-10T11:59", "d5 d4 d3 d2 d2 d1"}, // to is a whole minute
		{"to=2026-03-10T11:58", "d4 d3 d2 d2 d1"},
		{"from=2026-03-10T11:59", "d5"},
		{"from=2026-03-11T00:00", ""},
		{"agent=alice&limit=1", "d3"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			rec := e.get(op, "/console/audit?"+tc.query)
			wantStatus(t, rec, http.StatusOK)
			body := rec.Body.String()
			if p := problem(rec); p != "" {
				t.Errorf("problem %q", p)
			}
			if got := strings.Join(rowDecisions(body), " "); got != tc.want {
				t.Errorf("rows %q, want %q", got, tc.want)
			}
			if tc.want == "" && !strings.Contains(body, "No record matches.") {
				t.Error("an empty result does not say so")
			}
			more := strings.Contains(body, "narrow the search to see older records")
			if more != strings.Contains(tc.query, "limit=1") {
				t.Errorf("the page says more matches: %v", more)
			}
		})
	}
}

func TestAuditSearchKeepsTheForm(t *testing.T) {
	e := newEnv(t, nil)
	e.writeAudit(auditLog(t)...)
	op := e.signIn("alice")
	rec := e.get(op, "/console/audit?agent=alice&role=dev&tool=notion__delete_page&verdict=deny&from=2026-03-10T10:00&to=2026-03-10T12:00")
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	for _, want := range []string{
		`name="agent" value="alice"`, `name="role" value="dev"`, `name="tool" value="notion__delete_page"`,
		`name="from" value="2026-03-10T10:00"`, `name="to" value="2026-03-10T12:00"`, `<option value="deny" selected>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the form lost %s", want)
		}
	}
	if got := rowDecisions(body); len(got) != 1 || got[0] != "d3" {
		t.Errorf("rows %v, want d3", got)
	}
	row := html.UnescapeString(auditRowRE.FindString(body))
	for _, want := range []string{"2026-03-10 11:00:00Z", "alice", "dev", "notion__delete_page", "deny", "not_granted"} {
		if !strings.Contains(row, want) {
			t.Errorf("the row lacks %q:\n%s", want, row)
		}
	}
}

func TestAuditSearchRefusesBadInput(t *testing.T) {
	e := newEnv(t, nil)
	e.writeAudit(auditLog(t)...)
	op := e.signIn("alice")
	for _, tc := range []struct{ query, problem string }{
		{"from=yesterday", "from must be a date and time (YYYY-MM-DDTHH:MM, UTC)."},
		{"from=2026-03-10", "from must be a date and time (YYYY-MM-DDTHH:MM, UTC)."},
		{"to=2026-03-10T25:00", "to must be a date and time (YYYY-MM-DDTHH:MM, UTC)."},
		{"verdict=maybe", "verdict must be one of allow, deny, needs_approval, shadow_deny."},
		{"from=x&to=y", "from must be a date and time (YYYY-MM-DDTHH:MM, UTC); to must be a date and time (YYYY-MM-DDTHH:MM, UTC)."},
	} {
		rec := e.get(op, "/console/audit?"+tc.query)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", tc.query, rec.Code)
		}
		if p := problem(rec); p != tc.problem {
			t.Errorf("%s: problem %q, want %q", tc.query, p, tc.problem)
		}
		if n := count(rec.Body.String(), `data-testid="audit-row"`); n != 0 {
			t.Errorf("%s: %d rows shown for a refused search", tc.query, n)
		}
		// What was typed comes back to be corrected.
		if q, _ := url.ParseQuery(tc.query); q.Get("from") != "" && !strings.Contains(rec.Body.String(), `name="from" value="`+q.Get("from")+`"`) {
			t.Errorf("%s: the form lost from", tc.query)
		}
	}
}

func TestAuditWithoutALog(t *testing.T) {
	e := newEnv(t, nil) // nothing written yet
	op := e.signIn("alice")
	rec := e.get(op, "/console/audit")
	wantStatus(t, rec, http.StatusOK)
	if p := problem(rec); p != "" || !strings.Contains(rec.Body.String(), "No record matches.") {
		t.Errorf("a log that does not exist yet: problem %q", p)
	}
}

// failingLog is an audit log that cannot be read.
type failingLog struct{ err error }

func (l failingLog) Search(context.Context, audit.Query) ([]audit.Record, bool, error) {
	return nil, false, l.err
}

func (l failingLog) Records(context.Context, func(audit.Record) bool) error { return l.err }

// A log that cannot be searched is reported as such, never shown as a
// search that matched nothing.
func TestAuditSaysWhenTheLogFails(t *testing.T) {
	e := newEnv(t, nil, func(d *console.Deps) { d.Audit = failingLog{errStoreDown} })
	op := e.signIn("alice")
	for _, query := range []string{"", "agent=alice", "decision_id=d2"} {
		rec := e.get(op, "/console/audit?"+query)
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("%q: %d, want 503", query, rec.Code)
		}
		if p := problem(rec); p != "The audit log could not be searched: connection refused" {
			t.Errorf("%q: problem %q", query, p)
		}
		if body := text(rec); strings.Contains(body, "No record matches.") || strings.Contains(body, "No record has decision id") {
			t.Errorf("%q: the page says nothing matched despite the failure:\n%s", query, body)
		}
	}
}

func TestAuditDecisionDetail(t *testing.T) {
	e := newEnv(t, &console.Options{TraceURL: "https://jaeger.example/trace/{trace_id}?uiFind={trace_id}"})
	e.writeAudit(auditLog(t)...)
	op := e.signIn("alice")

	rec := e.get(op, "/console/audit?decision_id=d2")
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	if n := count(body, `data-testid="audit-row"`); n != 0 {
		t.Errorf("the decision view has %d table rows, want cards", n)
	}
	cards := regexp.MustCompile(`(?s)<article class="card record" data-testid="record">.*?</article>`).FindAllString(body, -1)
	if len(cards) != 2 {
		t.Fatalf("%d records of d2, want 2:\n%s", len(cards), body)
	}
	// Newest first: the broker's outcome, then the decision with its args.
	first, second := html.UnescapeString(cards[0]), html.UnescapeString(cards[1])
	if !strings.Contains(first, "executed") || !strings.Contains(first, "ok in 900 µs") || strings.Contains(first, `data-testid="args"`) {
		t.Errorf("the first card is not the broker's outcome:\n%s", first)
	}
	args, ok := field(cards[1], "args")
	if !ok {
		t.Fatalf("the decision's card shows no arguments:\n%s", second)
	}
	var shown map[string]string
	if err := json.Unmarshal([]byte(args), &shown); err != nil {
		t.Fatalf("arguments shown are not JSON: %v\n%s", err, args)
	}
	if shown["title"] != "Q3 plan" || shown["workspace_id"] != "ws_1" || !strings.HasPrefix(shown["api_key"], audit.HMACPrefix) {
		t.Errorf("arguments shown %v, want api_key redacted and the rest as recorded", shown)
	}
	if strings.Contains(body, "s3cret") {
		t.Error("the page shows a redacted secret")
	}
	if !strings.Contains(args, "\n  \"api_key\"") {
		t.Errorf("arguments are not indented:\n%s", args)
	}
	if !strings.Contains(second, "apr_0123") || !strings.Contains(second, "approval_required") {
		t.Error("the decision's card lacks its approval id or code")
	}
	wantLink := `<a href="https://jaeger.example/trace/` + traceHex + `?uiFind=` + traceHex + `" rel="noreferrer" target="_blank" data-testid="trace">` + traceHex + `</a>`
	if !strings.Contains(second, wantLink) {
		t.Errorf("no trace link %s in\n%s", wantLink, second)
	}
	if strings.Contains(first, `data-testid="trace"`) {
		t.Error("a record without a trace id has a trace link")
	}

	// A trace id that is not hex gets no link, and is shown as text.
	rec = e.get(op, "/console/audit?decision_id=d3")
	wantStatus(t, rec, http.StatusOK)
	body = rec.Body.String()
	if strings.Contains(body, `data-testid="trace"`) || strings.Contains(body, "jaeger.example") {
		t.Errorf("a trace id that is not hex got a link:\n%s", body)
	}
	if count(body, "<script") != 1 || strings.Contains(body, "<b>no grant") {
		t.Error("a hostile trace id or reason was not escaped")
	}
	if !strings.Contains(text(rec), `"><script>x</script>`) || !strings.Contains(text(rec), "<b>no grant</b>") {
		t.Error("the trace id or the reason is not shown")
	}

	// An id with no record says so.
	rec = e.get(op, "/console/audit?decision_id=nothing")
	wantStatus(t, rec, http.StatusOK)
	if !strings.Contains(rec.Body.String(), "No record has decision id <code>nothing</code>.") {
		t.Error("an unknown decision id does not say so")
	}
}

// Recorded arguments nest as deep as the agent made them: a decision's
// page shows them indented to a bounded depth, never many times their
// size.
func TestAuditArgsRenderIsBoundedByTheArgs(t *testing.T) {
	e := newEnv(t, nil)
	args := `{"x":` + strings.Repeat("[", 60) + strings.Repeat("0,", 16<<10) + "0" + strings.Repeat("]", 60) + `}`
	e.writeAudit(audit.Record{Time: time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC), DecisionID: "d1", Agent: "bot", Role: "dev",
		Server: "notion", Tool: "delete_page", Method: "tools/call", Args: json.RawMessage(args), Verdict: "allow", Code: "allowed"})
	op := e.signIn("alice")
	rec := e.get(op, "/console/audit?decision_id=d1")
	wantStatus(t, rec, http.StatusOK)
	if n, bound := rec.Body.Len(), 6*len(args)+16<<10; n > bound {
		t.Errorf("arguments of %d KiB render as a page of %d KiB, over %d KiB", len(args)>>10, n>>10, bound>>10)
	}
	if got, _ := field(rec.Body.String(), "args"); !strings.HasPrefix(got, "{\n  \"x\": [\n    [\n      [\n        [[[") {
		t.Errorf("arguments shown as %.200s…", got)
	}
}

func TestAuditTraceLinks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		traceURL string
		want     int // trace links among the six rows
	}{
		{"trace viewer configured", "https://jaeger.example/trace/{trace_id}", 2}, // d1 and d2's decision
		{"no trace viewer", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, &console.Options{TraceURL: tc.traceURL})
			e.writeAudit(auditLog(t)...)
			op := e.signIn("alice")
			body := e.get(op, "/console/audit").Body.String()
			if n := count(body, `<a href="https://jaeger.example/trace/`+traceHex+`" rel="noreferrer" target="_blank">trace</a>`); n != tc.want {
				t.Errorf("%d trace links, want %d", n, tc.want)
			}
			if n := count(body, "jaeger.example"); n != tc.want {
				t.Errorf("%d mentions of the trace viewer, want %d", n, tc.want)
			}
		})
	}
}

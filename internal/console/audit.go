package console

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/amgateway/amg/internal/audit"
)

// formTime is the layout of an HTML datetime-local input; the console
// reads and shows every time in UTC.
const formTime = "2006-01-02T15:04"

type auditForm struct {
	From, To, Agent, Role, Tool, Verdict, DecisionID string
	Limit                                            int
}

type auditRow struct {
	audit.Record
	// ArgsJSON is the (already redacted) arguments, indented (see
	// Indent); only a decision's own records have it.
	ArgsJSON string
	TraceURL string
}

type auditData struct {
	Form     auditForm
	Verdicts []string
	Rows     []auditRow
	More     bool
	// Searched is set once the log has been searched; a log that could
	// not be shows no result, not even an empty one.
	Searched bool
	// Detail is set when the search is for one decision id: every
	// record of that decision is shown in full.
	Detail bool
}

var verdictChoices = []string{"allow", "deny", "needs_approval", "shadow_deny"}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	f := auditForm{From: q.Get("from"), To: q.Get("to"), Agent: strings.TrimSpace(q.Get("agent")), Role: strings.TrimSpace(q.Get("role")),
		Tool: strings.TrimSpace(q.Get("tool")), Verdict: q.Get("verdict"), DecisionID: strings.TrimSpace(q.Get("decision_id"))}
	f.Limit, _ = strconv.Atoi(q.Get("limit"))
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 100
	}
	p := page{Title: "Audit log", Nav: "audit", Session: s, CSRF: c.csrf(s)}
	data := auditData{Form: f, Verdicts: verdictChoices, Detail: f.DecisionID != ""}
	query := audit.Query{Agent: f.Agent, Role: f.Role, Tool: f.Tool, Verdict: f.Verdict, DecisionID: f.DecisionID, Limit: f.Limit}
	var bad []string
	if f.From != "" {
		t, err := time.Parse(formTime, f.From)
		if err != nil {
			bad = append(bad, "from must be a date and time (YYYY-MM-DDTHH:MM, UTC)")
		}
		query.From = t
	}
	if f.To != "" {
		t, err := time.Parse(formTime, f.To)
		if err != nil {
			bad = append(bad, "to must be a date and time (YYYY-MM-DDTHH:MM, UTC)")
		}
		// To is a minute: everything up to its last instant is in.
		query.To = t.Add(time.Minute - time.Nanosecond)
	}
	if f.Verdict != "" && !slices.Contains(verdictChoices, f.Verdict) {
		bad = append(bad, "verdict must be one of "+strings.Join(verdictChoices, ", "))
	}
	if len(bad) > 0 {
		p.Problem = strings.Join(bad, "; ") + "."
		p.Data = data
		c.render(w, http.StatusBadRequest, "audit", p)
		return
	}
	recs, more, err := c.d.Audit.Search(r.Context(), query)
	if err != nil {
		c.opts.Logger.Error("console: searching the audit log", "err", err)
		p.Problem = "The audit log could not be searched: " + err.Error()
		p.Data = data
		c.render(w, http.StatusServiceUnavailable, "audit", p)
		return
	}
	data.Searched, data.More = true, more
	for _, rec := range recs {
		row := auditRow{Record: rec, TraceURL: c.traceURL(rec.TraceID)}
		// Only a decision's own records show their arguments.
		if data.Detail && len(rec.Args) > 0 {
			args, _ := indented(rec.Args)
			row.ArgsJSON, _ = Visible(string(args))
		}
		data.Rows = append(data.Rows, row)
	}
	p.Data = data
	c.render(w, http.StatusOK, "audit", p)
}

// traceURL links a trace id to the configured trace viewer.
func (c *Console) traceURL(id string) string {
	if id == "" || c.opts.TraceURL == "" || !isHex(id) {
		return ""
	}
	return strings.ReplaceAll(c.opts.TraceURL, "{trace_id}", id)
}

func isHex(s string) bool {
	for i := range len(s) {
		if !strings.ContainsRune("0123456789abcdef", rune(s[i])) {
			return false
		}
	}
	return true
}

package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/amgateway/amg/internal/approval"
)

// pendingRow is one parked call in the queue.
type pendingRow struct {
	*approval.Approval
	// Payload is the exact request the agent sent, indented for reading
	// when it is JSON; Exact says whether it is shown byte for byte, and
	// Bytes, when it is not, is the request byte for byte. Both show what
	// a reader could not see as escapes (see visible); Hidden says there
	// was some.
	Payload string
	Exact   bool
	Bytes   string
	Hidden  bool
	Left    string // time left until expiry, as of rendering
	// Overdue is an approval past its expiry that nothing marked expired
	// (its call is gone): no decision on it can be taken.
	Overdue bool
}

type approvalsData struct {
	Rows []pendingRow
	// Err is why the queue could not be read.
	Err string
	// Recent are the last decided approvals, newest first.
	Recent []*approval.Approval
	// Now is when the queue was read: the page's script counts down from
	// it, whatever the browser's clock says.
	Now  time.Time
	CSRF string
}

const recentApprovals = 10

func (c *Console) approvalsData(r *http.Request, s *session) approvalsData {
	d := approvalsData{Now: c.opts.Now(), CSRF: c.csrf(s)}
	// Oldest first, as List returns them: the call waiting longest is
	// decided first.
	pending, err := c.d.Approvals.List(r.Context(), approval.Pending)
	if err == nil {
		d.Recent, err = c.d.Approvals.Recent(r.Context(), recentApprovals)
	}
	if err != nil {
		d.Err = err.Error()
		return d
	}
	for _, a := range pending {
		row := pendingRow{Approval: a, Left: left(a.Expires.Sub(d.Now)), Overdue: !d.Now.Before(a.Expires)}
		payload, exact := indented(a.Body)
		row.Exact = exact
		row.Payload, row.Hidden = Visible(payload)
		row.Bytes, _ = Visible(string(a.Body))
		d.Rows = append(d.Rows, row)
	}
	return d
}

func (c *Console) approvalsPage(w http.ResponseWriter, r *http.Request, s *session) {
	p := page{Title: "Approvals", Nav: "approvals", Session: s, CSRF: c.csrf(s), Data: c.approvalsData(r, s)}
	q := r.URL.Query()
	// The query carries codes and an approval id, never text, so that a
	// link cannot put words on the page.
	if id := q.Get("id"); approval.ValidID(id) {
		switch q.Get("done") {
		case "approved":
			p.Notice = "Approved " + id + ": the call has gone upstream and its result to the agent."
		case "denied":
			p.Notice = "Denied " + id + ": the agent was told, and nothing ran."
		}
	}
	if msg := q.Get("problem"); msg != "" && approval.ValidID(q.Get("id")) {
		p.Problem = problemText(msg, q.Get("id"))
	}
	c.render(w, http.StatusOK, "approvals", p)
}

// approvalRows is the queue alone, which the page's script fetches to stay
// current.
func (c *Console) approvalRows(w http.ResponseWriter, r *http.Request, s *session) {
	c.fragment(w, "approvals", "queue", c.approvalsData(r, s))
}

func (c *Console) decide(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	var to approval.State
	switch r.PathValue("decision") {
	case "approve":
		to = approval.Approved
	case "deny":
		to = approval.Denied
	default:
		http.NotFound(w, r)
		return
	}
	v := url.Values{"id": {id}}
	// session checked the name by the same rule, so only the reason can
	// fail here. A long reason is cut, as the admin API cuts it.
	by, reason, err := approval.CleanDecision(s.Name, r.PostFormValue("reason"))
	if err != nil {
		c.opts.Logger.Warn("console: decision refused", "id", id, "by", s.Name, "err", err)
		v.Set("problem", "reason")
		http.Redirect(w, r, "/console/approvals?"+v.Encode(), http.StatusSeeOther)
		return
	}
	_, err = c.d.Approvals.Finish(r.Context(), id, to, by, reason, c.opts.Now())
	switch {
	case err == nil && to == approval.Approved:
		v.Set("done", "approved")
	case err == nil:
		v.Set("done", "denied")
	case errors.Is(err, approval.ErrNotFound):
		v.Set("problem", "not_found")
	case errors.Is(err, approval.ErrExpired):
		v.Set("problem", "expired")
	case errors.Is(err, approval.ErrNotPending):
		v.Set("problem", "not_pending")
	default:
		c.opts.Logger.Error("console: deciding an approval", "id", id, "err", err)
		v.Set("problem", "store")
	}
	c.opts.Logger.Info("console: approval decided", "id", id, "decision", to, "by", s.Name, "err", err)
	http.Redirect(w, r, "/console/approvals?"+v.Encode(), http.StatusSeeOther)
}

// problemText is the message for a failed decision.
func problemText(code, id string) string {
	switch code {
	case "not_found":
		return "There is no approval " + id + "."
	case "expired":
		return id + " expired before the decision; nothing changed."
	case "not_pending":
		return id + " was already decided, expired, or its agent left; nothing changed."
	case "store":
		return "The approval store could not record the decision; nothing changed. The gateway's log says why."
	case "reason":
		return "The decision on " + id + " was refused: a reason must be one line of text, without control characters; nothing changed."
	}
	return ""
}

// indented is JSON data indented for reading, or data as it is, exact
// true, when it is not JSON.
func indented(data []byte) (text string, exact bool) {
	var buf bytes.Buffer
	if json.Indent(&buf, data, "", "  ") != nil {
		return string(data), true
	}
	return buf.String(), false
}

// Visible returns s with every character a reader would not see, or
// that reorders the text around it, written as its escape (\u202e for a
// right-to-left override, \u200b for a zero-width space, \xff for a byte
// that is not UTF-8), and whether there was one. Else an agent could show
// an approver one request and send another: the payload on screen would
// not be what the bytes say; and text printed to a terminal could hold
// escape sequences the terminal obeys. Line breaks and tabs stay, for
// indented JSON; in a JSON string the escape means the same character.
func Visible(s string) (string, bool) {
	var b strings.Builder
	hidden := false
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r > 0xffff && unseen(r):
			fmt.Fprintf(&b, `\U%08x`, r)
		case unseen(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
			i += n
			continue
		}
		hidden = true
		i += n
	}
	return b.String(), hidden
}

// unseen reports whether r draws nothing a reader would notice, or moves
// the text around it: control and format characters (the direction
// overrides and isolates, zero-width ones), line and paragraph
// separators, private-use characters, and the Hangul fillers, which are
// letters that draw nothing.
func unseen(r rune) bool {
	switch r {
	case '\n', '\t':
		return false
	case '\u115f', '\u1160', '\u3164', '\uffa0':
		return true
	}
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Co, unicode.Zl, unicode.Zp)
}

// left is d as the queue shows it before the script takes over.
func left(d time.Duration) string {
	if d <= 0 {
		return "expired"
	}
	d = d.Round(time.Second)
	if d >= time.Hour {
		return d.Truncate(time.Minute).String()
	}
	return d.String()
}

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
	"unicode/utf16"
	"unicode/utf8"

	"github.com/amgateway/amg/internal/approval"
)

// cardBytes is the most of a request a card in the queue shows. A larger
// one is cut there, and shown whole, byte for byte, on its approval's own
// page, the only place it can be approved: the queue renders every
// pending request every 2 s for every open console.
const cardBytes = 64 << 10

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
	// Cut says Payload is only the start of a request over cardBytes,
	// whose own page shows it whole; Size is its length in bytes.
	Cut  bool
	Size int
	Left string // time left until expiry, as of rendering
	// Overdue is an approval past its expiry that nothing marked expired
	// (its call is gone): no decision on it can be taken.
	Overdue bool
	CSRF    string
}

type approvalsData struct {
	Rows []pendingRow
	// One is set on an approval's own page: Rows holds it alone, with
	// its request whole.
	One bool
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
		d.Rows = append(d.Rows, d.row(a, false))
	}
	return d
}

// row is a as a card shows it: a request over cardBytes is cut, unless
// whole, when it is shown byte for byte and only so. Neither renders more
// than a few times the request, however deep it nests.
func (d approvalsData) row(a *approval.Approval, whole bool) pendingRow {
	row := pendingRow{Approval: a, Size: len(a.Body), Left: left(a.Expires.Sub(d.Now)), Overdue: !d.Now.Before(a.Expires), CSRF: d.CSRF}
	var payload []byte
	switch {
	case len(a.Body) <= cardBytes:
		payload, row.Exact = indented(a.Body)
		if !row.Exact {
			row.Bytes, _ = Visible(string(a.Body))
		}
	case whole:
		payload, row.Exact = a.Body, true
	case json.Valid(a.Body):
		payload, _ = indent(a.Body, cardBytes)
		row.Cut = true
	default:
		payload, row.Cut = cutText(a.Body, cardBytes), true
	}
	row.Payload, row.Hidden = Visible(string(payload))
	return row
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

// approvalPage is one pending approval with its request whole: a card in
// the queue shows at most cardBytes of it.
func (c *Console) approvalPage(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	v := url.Values{"id": {id}}
	a, err := c.d.Approvals.Get(r.Context(), id)
	switch {
	case errors.Is(err, approval.ErrNotFound):
		v.Set("problem", "not_found")
	case err != nil:
		c.opts.Logger.Error("console: reading an approval", "id", id, "err", err)
		v.Set("problem", "read")
	case a.State != approval.Pending:
		v.Set("problem", "not_waiting")
	}
	if v.Has("problem") {
		http.Redirect(w, r, "/console/approvals?"+v.Encode(), http.StatusSeeOther)
		return
	}
	d := approvalsData{Now: c.opts.Now(), CSRF: c.csrf(s), One: true}
	d.Rows = []pendingRow{d.row(a, true)}
	c.render(w, http.StatusOK, "approvals", page{Title: "Approval " + a.ID, Nav: "approvals", Session: s, CSRF: d.CSRF, Data: d})
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
	case "read":
		return id + " could not be read from the approval store; the gateway's log says why."
	case "not_waiting":
		return id + " is no longer waiting for a decision: it was decided, expired, or its agent left."
	case "reason":
		return "The decision on " + id + " was refused: a reason must be one line of text, without control characters; nothing changed."
	}
	return ""
}

// indentLevels is how many levels of nesting Indent indents: indenting
// each of the 64 a request may have would make it many times its size on
// screen, as every line carries two spaces a level.
const indentLevels = 4

// Indent returns the JSON data indented for reading, as json.Indent does
// with two spaces, but for its first indentLevels levels of nesting only:
// deeper ones are written compact. So what it adds is bounded by the size
// of data, whatever its depth: at most 2*indentLevels+1 bytes for each
// bracket, comma or colon. ok is false when data is not JSON.
func Indent(data []byte) (text []byte, ok bool) {
	if !json.Valid(data) {
		return nil, false
	}
	text, _ = indent(data, 0)
	return text, true
}

// indented is JSON data indented for reading (see Indent), or data as it
// is, exact true, when it is not JSON.
func indented(data []byte) (text []byte, exact bool) {
	text, ok := Indent(data)
	if !ok {
		return data, true
	}
	return text, false
}

// indent is Indent of data, which must be JSON, stopped once it reaches
// limit bytes (0: no limit) and cut there on a character's boundary; cut
// says it was.
func indent(data []byte, limit int) (text []byte, cut bool) {
	// As json.Indent does, space before the value is dropped and space
	// after it kept.
	body := bytes.TrimRight(data, " \t\r\n")
	var b []byte
	line := func(level int) {
		b = append(b, '\n')
		for range level {
			b = append(b, ' ', ' ')
		}
	}
	level := 0
	opened := false // a bracket was just opened: what it holds starts a line
	for i := 0; i < len(body); i++ {
		if limit > 0 && len(b) >= limit {
			return cutText(b, limit), true
		}
		c := body[i]
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '}', ']':
			if !opened && level <= indentLevels {
				line(level - 1)
			}
			opened = false
			level--
			b = append(b, c)
			continue
		}
		if opened {
			line(level)
			opened = false
		}
		switch c {
		case '{', '[':
			level++
			opened = level <= indentLevels
			b = append(b, c)
		case ',':
			b = append(b, c)
			if level <= indentLevels {
				line(level)
			}
		case ':':
			b = append(b, c)
			if level <= indentLevels {
				b = append(b, ' ')
			}
		case '"':
			j := i + 1
			for ; body[j] != '"'; j++ {
				if body[j] == '\\' {
					j++
				}
			}
			s := body[i : j+1]
			if limit > 0 {
				// A string can be most of the request: take only what
				// fits, and a byte more to tell it was cut.
				s = s[:min(len(s), limit-len(b)+1)]
			}
			b = append(b, s...)
			i = j
		default:
			b = append(b, c)
		}
	}
	b = append(b, data[len(body):]...)
	if limit > 0 && len(b) > limit {
		return cutText(b, limit), true
	}
	return b, false
}

// cutText is b cut to at most n bytes, on a character's boundary.
func cutText(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return b[:n]
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
	return escapeUnseen(s, func(b *strings.Builder, r rune, c byte) {
		switch {
		case r == utf8.RuneError:
			fmt.Fprintf(b, `\x%02x`, c)
		case r > 0xffff:
			fmt.Fprintf(b, `\U%08x`, r)
		default:
			fmt.Fprintf(b, `\u%04x`, r)
		}
	})
}

// VisibleJSON is Visible for a line of JSON, such as an audit record: it
// writes the same characters as JSON escapes (\u202e, and one outside the
// Basic Multilingual Plane as its surrogate pair), which in a JSON string
// mean the same character, so that the line decodes to the same value. A
// byte that is not UTF-8, which a JSON decoder reads as U+FFFD, is written
// \ufffd.
func VisibleJSON(s string) (string, bool) {
	return escapeUnseen(s, func(b *strings.Builder, r rune, _ byte) {
		if r1, r2 := utf16.EncodeRune(r); r1 != unicode.ReplacementChar {
			fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
			return
		}
		fmt.Fprintf(b, `\u%04x`, r)
	})
}

// escapeUnseen returns s with each unseen character, and each byte that is
// not UTF-8 (as utf8.RuneError and the byte), written by esc, and whether
// there was one.
func escapeUnseen(s string, esc func(b *strings.Builder, r rune, c byte)) (string, bool) {
	var b strings.Builder
	hidden := false
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || unseen(r) {
			esc(&b, r, s[i])
			hidden = true
		} else {
			b.WriteString(s[i : i+n])
		}
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

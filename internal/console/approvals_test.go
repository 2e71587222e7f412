package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/mcpfilter"
)

// park stores a pending call of agent to notion__delete_page with body,
// created now and expiring in 15 minutes.
func (e *env) park(agent, body string) *approval.Approval {
	e.t.Helper()
	ctx := context.Background()
	list, _ := e.approvals.List(ctx, "")
	a, err := approval.New(fmt.Sprintf("dec_%03d", len(list)+1), agent, "dev", "notion", "delete_page", []byte(body), e.clock.Now(), 15*time.Minute)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.approvals.Create(ctx, a); err != nil {
		e.t.Fatal(err)
	}
	return a
}

// state is the approval as the store has it now.
func (e *env) state(id string) *approval.Approval {
	e.t.Helper()
	a, err := e.approvals.Get(context.Background(), id)
	if err != nil {
		e.t.Fatalf("approval %s: %v", id, err)
	}
	return a
}

// card is the HTML of the queue's card for id; "" if there is none.
func card(body, id string) string {
	m := regexp.MustCompile(`(?s)<article class="card approval[^"]*" data-testid="approval" data-id="` + regexp.QuoteMeta(id) + `".*?</article>`).FindString(body)
	return m
}

func field(card, testid string) (string, bool) {
	m := regexp.MustCompile(`(?s)data-testid="` + testid + `">(.*?)</`).FindStringSubmatch(card)
	if m == nil {
		return "", false
	}
	return html.UnescapeString(m[1]), true
}

var queueIDs = regexp.MustCompile(`<div class="queue" data-ids="([^"]*)"`)

func TestApprovalsPageShowsThePendingCall(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	agent := `<script>alert("agent")</script>`
	body := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_page","arguments":{"page_id":"</pre><script>alert('payload')</script>"}}}`
	a := e.park(agent, body)
	e.clock.Advance(5 * time.Minute)

	rec := e.get(op, "/console/approvals")
	wantStatus(t, rec, http.StatusOK)
	raw := rec.Body.String()
	if n := count(raw, "<script"); n != 1 { // the console's own script tag
		t.Errorf("the page has %d script tags, want only the console's own: hostile values were not escaped\n%s", n, raw)
	}
	c := card(raw, a.ID)
	if c == "" {
		t.Fatalf("no card for %s:\n%s", a.ID, raw)
	}
	if got, _ := field(c, "agent"); got != agent {
		t.Errorf("agent %q, want %q", got, agent)
	}
	if !strings.Contains(c, "<code>notion__delete_page</code>") {
		t.Error("the card does not name the tool notion__delete_page")
	}
	wantPayload := `{
  "jsonrpc": "2.0",
  "id": 7,
  "method": "tools/call",
  "params": {
    "name": "delete_page",
    "arguments": {
      "page_id": "</pre><script>alert('payload')</script>"
    }
  }
}`
	if got, _ := field(c, "payload"); got != wantPayload {
		t.Errorf("payload shown as\n%s\nwant\n%s", got, wantPayload)
	}
	// Indented for reading, so the exact bytes are a click away.
	if !strings.Contains(html.UnescapeString(c), "<summary>Exact bytes</summary><pre class=\"payload\">"+body+"</pre>") {
		t.Error("the exact bytes of a JSON payload are not offered")
	}
	if !strings.Contains(c, a.BodySHA256) || !strings.Contains(c, `href="/console/audit?decision_id=`+a.DecisionID+`"`) {
		t.Error("the card lacks the payload's SHA-256 or the link to its decision")
	}
	if got, _ := field(c, "countdown"); got != "10m0s" {
		t.Errorf("time left %q, want 10m0s on the injected clock", got)
	}
	if !strings.Contains(c, `action="/console/approvals/`+a.ID+`/deny"`) || !strings.Contains(c, `formaction="/console/approvals/`+a.ID+`/approve"`) ||
		!strings.Contains(c, `name="csrf" value="`+op.csrf+`"`) {
		t.Errorf("the card's form does not post to approve and deny with the CSRF token:\n%s", c)
	}
	for _, b := range []string{"approve", "deny"} {
		if tag := button(c, b); tag == "" || strings.Contains(tag, "disabled") {
			t.Errorf("a pending approval's %s button is missing or disabled: %s", b, tag)
		}
	}
}

// button is the start tag of card's button with data-testid testid; ""
// if there is none.
func button(card, testid string) string {
	return regexp.MustCompile(`<button [^>]*data-testid="` + testid + `"[^>]*>`).FindString(card)
}

// Enter in a form's text field submits it with its default button, the
// first submit button in the form (HTML's implicit submission), unless
// that button is disabled. An operator who types a reason to deny and
// presses Enter must not approve the call, on a card whole or cut.
func TestEnterInTheReasonDoesNotApprove(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	whole := e.park("bot", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_page","arguments":{"page_id":"pg_1"}}}`)
	cut := e.park("bot", strings.Repeat("x", 65<<10))
	page := e.get(op, "/console/approvals").Body.String()
	decide := regexp.MustCompile(`(?s)<form method="post" action="([^"]*)" class="decide">(.*?)</form>`)
	for _, a := range []*approval.Approval{whole, cut} {
		form := decide.FindStringSubmatch(card(page, a.ID))
		if form == nil || !strings.Contains(form[2], `name="reason"`) {
			t.Fatalf("%s: no decide form with a reason field:\n%s", a.ID, card(page, a.ID))
		}
		first := regexp.MustCompile(`<button type="submit"[^>]*>`).FindString(form[2])
		if !regexp.MustCompile(`\sdisabled[\s>]`).MatchString(first) {
			t.Errorf("%s: Enter in the reason presses %s, which is not disabled", a.ID, first)
		}
		// Nor does a submission without a button approve.
		if strings.HasSuffix(form[1], "/approve") {
			t.Errorf("%s: the decide form posts to %s", a.ID, form[1])
		}
	}
	if tag := button(card(page, whole.ID), "approve"); !strings.Contains(tag, `formaction="/console/approvals/`+whole.ID+`/approve"`) {
		t.Errorf("the Approve button does not post to approve: %s", tag)
	}
}

// Characters that draw nothing, or reorder the text around them, are
// shown as their escapes, so that the payload an approver reads is the
// one the bytes hold: the right-to-left override here would show the
// path as ending in .pdf.
func TestApprovalsShowHiddenCharacters(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	body := "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"delete_page\"," +
		"\"arguments\":{\"page_id\":\"report\u202efdp.exe\",\"note\":\"a\u200bb\U000e0041\"}}}"
	a := e.park("bot", body)
	plain := e.park("bot", `{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"delete_page","arguments":{"page_id":"pg_1"}}}`)

	raw := e.get(op, "/console/approvals").Body.String()
	for _, r := range []string{"\u202e", "\u200b", "\U000e0041"} {
		if strings.Contains(raw, r) {
			t.Errorf("the page holds %U as it is", []rune(r)[0])
		}
	}
	c := card(raw, a.ID)
	payload, _ := field(c, "payload")
	if !strings.Contains(payload, `"page_id": "report\u202efdp.exe"`) || !strings.Contains(payload, `"note": "a\u200bb\U000e0041"`) {
		t.Errorf("payload shown as\n%s\nwant the hidden characters as escapes", payload)
	}
	if !strings.Contains(html.UnescapeString(c), `"page_id":"report\u202efdp.exe"`) {
		t.Error("the exact bytes do not show the override as its escape")
	}
	if _, ok := field(c, "hidden"); !ok {
		t.Error("the card does not warn of hidden characters")
	}
	if _, ok := field(card(raw, plain.ID), "hidden"); ok {
		t.Error("a card without hidden characters warns of them")
	}
	// Not JSON, not UTF-8, with a carriage return that would hide what
	// comes before it in a terminal.
	odd := e.park("bot", "pg_1\xff\rpg_2")
	raw = e.get(op, "/console/approvals").Body.String()
	if got, _ := field(card(raw, odd.ID), "payload"); got != `pg_1\xff\u000dpg_2` {
		t.Errorf("payload shown as %q", got)
	}
}

// VisibleJSON writes what Visible escapes as JSON escapes, so that the
// line decodes to what it did: a character outside the Basic
// Multilingual Plane as its surrogate pair, a byte that is not UTF-8 as
// the U+FFFD a decoder reads it as.
func TestVisibleJSON(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"page_id":"pg_1","note":"été \\u202e"}`, `{"page_id":"pg_1","note":"été \\u202e"}`},
		{"{\"page_id\":\"report\u202efdp.exe\",\"note\":\"a\u200bb\U000e0041\u009b\"}", `{"page_id":"report\u202efdp.exe","note":"a\u200bb\udb40\udc41\u009b"}`},
		{"{\"page_id\":\"pg_1\xffpg_2\"}", `{"page_id":"pg_1\ufffdpg_2"}`},
	}
	for _, tt := range tests {
		got, hidden := console.VisibleJSON(tt.in)
		if got != tt.want || hidden != (tt.in != tt.want) {
			t.Errorf("VisibleJSON(%q) = %q, %v; want %q", tt.in, got, hidden, tt.want)
		}
		var before, after any
		if err := json.Unmarshal([]byte(tt.in), &before); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(got), &after); err != nil {
			t.Fatalf("VisibleJSON(%q) = %q: %v", tt.in, got, err)
		}
		if fmt.Sprint(before) != fmt.Sprint(after) {
			t.Errorf("VisibleJSON(%q) decodes to %q, want %q", tt.in, after, before)
		}
	}
}

func TestApprovalsPayloadThatIsNotJSON(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	body := "not json <b>bold</b>\n  kept as is"
	a := e.park("agent-1", body)
	e.clock.Advance(20 * time.Minute)
	c := card(e.get(op, "/console/approvals").Body.String(), a.ID)
	if got, _ := field(c, "payload"); got != body {
		t.Errorf("payload %q, want the exact bytes %q", got, body)
	}
	if strings.Contains(c, "<b>") || strings.Contains(c, "Exact bytes") {
		t.Errorf("a non-JSON payload is shown unescaped or twice:\n%s", c)
	}
	if got, _ := field(c, "countdown"); got != "expired" {
		t.Errorf("time left %q past the expiry, want expired", got)
	}
	// No decision can be taken on it, even without the page's script.
	if strings.Count(c, " disabled>") != 2 || !strings.Contains(c, `class="card approval expired"`) {
		t.Errorf("an approval past its expiry offers a decision:\n%s", c)
	}
}

func TestDecide(t *testing.T) {
	for _, tc := range []struct {
		decision string
		state    approval.State
		done     string
		notice   string
	}{
		{"approve", approval.Approved, "approved", "the call has gone upstream"},
		{"deny", approval.Denied, "denied", "the agent was told, and nothing ran"},
	} {
		t.Run(tc.decision, func(t *testing.T) {
			e := newEnv(t, nil)
			op := e.signIn("Alice Example")
			a := e.park("agent-1", `{}`)
			other := e.park("agent-2", `{}`)
			e.clock.Advance(time.Minute)
			rec := e.act(op, "/console/approvals/"+a.ID+"/"+tc.decision, url.Values{"reason": {"ticket 42"}})
			wantRedirect(t, rec, "/console/approvals?"+url.Values{"done": {tc.done}, "id": {a.ID}}.Encode())
			got := e.state(a.ID)
			if got.State != tc.state || got.DecidedBy != "Alice Example" || got.Reason != "ticket 42" || !got.DecidedAt.Equal(start.Add(time.Minute)) {
				t.Errorf("after %s: %s by %q at %v, reason %q", tc.decision, got.State, got.DecidedBy, got.DecidedAt, got.Reason)
			}
			if e.state(other.ID).State != approval.Pending {
				t.Error("deciding one approval decided another")
			}
			page := e.follow(op, rec)
			wantStatus(t, page, http.StatusOK)
			if n := notice(page); !strings.Contains(n, a.ID) || !strings.Contains(n, tc.notice) {
				t.Errorf("notice %q", n)
			}
			if card(page.Body.String(), a.ID) != "" || card(page.Body.String(), other.ID) == "" {
				t.Error("the queue does not show exactly the approval left pending")
			}
		})
	}
}

func TestDecideWithoutReason(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	a := e.park("agent-1", `{}`)
	e.act(op, "/console/approvals/"+a.ID+"/deny", nil)
	if got := e.state(a.ID); got.State != approval.Denied || got.Reason != "" {
		t.Errorf("%s, reason %q", got.State, got.Reason)
	}
}

// The reason is cut to 500 bytes without breaking a character: what is
// recorded stays valid UTF-8.
func TestDecideCutsALongReason(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	for _, reason := range []string{strings.Repeat("x", 600), strings.Repeat("€", 200), strings.Repeat("é", 400)} {
		a := e.park("agent-1", `{}`)
		e.act(op, "/console/approvals/"+a.ID+"/approve", url.Values{"reason": {reason}})
		got := e.state(a.ID)
		if got.State != approval.Approved || got.Reason == "" || !strings.HasPrefix(reason, got.Reason) || !utf8.ValidString(got.Reason) ||
			utf8.RuneCountInString(got.Reason) > 500 || len(got.Reason) >= len(reason) {
			t.Errorf("a reason of %d bytes was recorded as %d bytes (valid UTF-8: %v)", len(reason), len(got.Reason), utf8.ValidString(got.Reason))
		}
	}
}

// A reason reaches the agent's error and operators' terminals: one that
// is not plain text is refused, as the admin API refuses it.
func TestDecideRefusesAReasonThatIsNotText(t *testing.T) {
	for _, reason := range []string{"fine\n[INFO] approved by root", "\x1b[2Jfine", "fine\x00", "fine\xff"} {
		e := newEnv(t, nil)
		op := e.signIn("alice")
		a := e.park("agent-1", `{}`)
		rec := e.act(op, "/console/approvals/"+a.ID+"/approve", url.Values{"reason": {reason}})
		wantRedirect(t, rec, "/console/approvals?"+url.Values{"id": {a.ID}, "problem": {"reason"}}.Encode())
		if got := e.state(a.ID); got.State != approval.Pending {
			t.Errorf("reason %q: the approval was %s", reason, got.State)
		}
		want := "The decision on " + a.ID + " was refused: a reason must be one line of text, without control characters; nothing changed."
		if p := problem(e.follow(op, rec)); p != want {
			t.Errorf("reason %q: problem %q, want %q", reason, p, want)
		}
	}
}

func TestDecideTwiceChangesNothing(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.signIn("alice")
	bob := e.signIn("bob")
	a := e.park("agent-1", `{}`)
	wantRedirect(t, e.act(alice, "/console/approvals/"+a.ID+"/approve", url.Values{"reason": {"fine"}}),
		"/console/approvals?done=approved&id="+a.ID)
	e.clock.Advance(time.Minute)
	for _, decision := range []string{"deny", "approve"} {
		rec := e.act(bob, "/console/approvals/"+a.ID+"/"+decision, url.Values{"reason": {"no"}})
		wantRedirect(t, rec, "/console/approvals?"+url.Values{"id": {a.ID}, "problem": {"not_pending"}}.Encode())
		page := e.follow(bob, rec)
		if p := problem(page); p != a.ID+" was already decided, expired, or its agent left; nothing changed." {
			t.Errorf("%s again: problem %q", decision, p)
		}
		if notice(page) != "" {
			t.Errorf("%s again: a notice too: %q", decision, notice(page))
		}
	}
	got := e.state(a.ID)
	if got.State != approval.Approved || got.DecidedBy != "alice" || got.Reason != "fine" || !got.DecidedAt.Equal(start) {
		t.Errorf("the first decision was changed: %s by %q at %v, reason %q", got.State, got.DecidedBy, got.DecidedAt, got.Reason)
	}
}

// A decision that comes after the approval expired is refused, and the
// page says so, even where nothing has marked it expired yet.
func TestDecideAfterExpiryChangesNothing(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	a := e.park("agent-1", `{}`)
	e.clock.Advance(16 * time.Minute) // past its 15
	rec := e.act(op, "/console/approvals/"+a.ID+"/approve", url.Values{"reason": {"late"}})
	wantRedirect(t, rec, "/console/approvals?"+url.Values{"id": {a.ID}, "problem": {"expired"}}.Encode())
	if p := problem(e.follow(op, rec)); p != a.ID+" expired before the decision; nothing changed." {
		t.Errorf("problem %q", p)
	}
	if got := e.state(a.ID); got.State != approval.Pending {
		t.Errorf("state after a late approval: %s, want it left pending", got.State)
	}
}

// The notice after a decision is built from codes and an approval id; a
// link cannot make the page say anything else.
func TestNoticeTakesNoTextFromTheLink(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	for _, q := range []string{
		"done=approved&id=" + url.QueryEscape("everything. Your session expired: sign in at https://evil.example"),
		"problem=store&id=" + url.QueryEscape("apr_x. Call +1 555 0100"),
		"done=denied&id=apr_0000000000000000000000zz",
	} {
		page := e.get(op, "/console/approvals?"+q)
		wantStatus(t, page, http.StatusOK)
		if n, p := notice(page), problem(page); n != "" || p != "" {
			t.Errorf("?%s: notice %q, problem %q; want neither", q, n, p)
		}
	}
}

func TestDecideUnknownApproval(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	pending := e.park("agent-1", `{}`)
	id := "apr_000000000000000000000000"
	rec := e.act(op, "/console/approvals/"+id+"/approve", nil)
	wantRedirect(t, rec, "/console/approvals?"+url.Values{"id": {id}, "problem": {"not_found"}}.Encode())
	if p := problem(e.follow(op, rec)); p != "There is no approval "+id+"." {
		t.Errorf("problem %q", p)
	}
	if e.state(pending.ID).State != approval.Pending {
		t.Error("an unknown id decided another approval")
	}
	// Neither approve nor deny.
	wantStatus(t, e.act(op, "/console/approvals/"+pending.ID+"/maybe", nil), http.StatusNotFound)
	if e.state(pending.ID).State != approval.Pending {
		t.Error("an unknown decision changed the approval")
	}
}

// The page shows only problems it knows by code: a link cannot put its own
// words in the banner.
func TestApprovalsProblemIsACode(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	rec := e.get(op, "/console/approvals?problem="+url.QueryEscape("Your session has expired, call 555-0100"))
	wantStatus(t, rec, http.StatusOK)
	if p := problem(rec); p != "" {
		t.Errorf("an unknown problem code was shown: %q", p)
	}
	if n := notice(e.get(op, "/console/approvals?done=whatever&id=apr_1")); n != "" {
		t.Errorf("an unknown outcome was shown: %q", n)
	}
}

func TestApprovalRowsFragment(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")

	empty := e.get(op, "/console/approvals/rows")
	wantStatus(t, empty, http.StatusOK)
	if m := queueIDs.FindStringSubmatch(empty.Body.String()); m == nil || m[1] != "" {
		t.Errorf("empty queue: data-ids %v", m)
	}
	if !strings.Contains(empty.Body.String(), `data-testid="queue-empty"`) {
		t.Error("an empty queue does not say so")
	}

	var ids []string
	for i := range 4 {
		ids = append(ids, e.park(fmt.Sprintf("agent-%d", i), `{}`).ID)
		e.clock.Advance(time.Minute)
	}
	e.act(op, "/console/approvals/"+ids[1]+"/deny", url.Values{"reason": {"not today"}})
	e.clock.Advance(time.Minute)
	e.act(op, "/console/approvals/"+ids[3]+"/approve", nil)
	if _, err := e.approvals.Void(context.Background(), ids[3], "the agent's token was revoked"); err != nil {
		t.Fatal(err)
	}

	rec := e.get(op, "/console/approvals/rows")
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	if strings.Contains(body, "<html") || strings.Contains(body, "<nav") {
		t.Error("the fragment is a whole page")
	}
	m := queueIDs.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no queue in the fragment:\n%s", body)
	}
	if got, want := strings.Fields(m[1]), []string{ids[0], ids[2]}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("data-ids %q, want the pending ones oldest first %q", got, want)
	}
	if n := count(body, `data-testid="approval"`); n != 2 {
		t.Errorf("%d cards, want 2", n)
	}
	if !strings.Contains(body, `data-now="`+e.clock.Now().Format(time.RFC3339Nano)+`"`) {
		t.Error("the fragment does not carry the server's clock")
	}
	// Recently decided, newest first, with who and why.
	recent := regexp.MustCompile(`(?s)<tr data-testid="recent" data-id="([^"]+)">(.*?)</tr>`).FindAllStringSubmatch(body, -1)
	if len(recent) != 2 || recent[0][1] != ids[3] || recent[1][1] != ids[1] {
		t.Fatalf("recently decided %v, want %s then %s", recent, ids[3], ids[1])
	}
	if r := html.UnescapeString(recent[1][2]); !strings.Contains(r, "denied") || !strings.Contains(r, "alice") || !strings.Contains(r, "not today") {
		t.Errorf("the denial's row %q lacks its outcome, operator or reason", r)
	}
	if r := html.UnescapeString(recent[0][2]); !strings.Contains(r, "voided") || !strings.Contains(r, "alice") ||
		!strings.Contains(r, "not run: the agent's token was revoked") {
		t.Errorf("the voided approval's row %q lacks its outcome, operator or why it did not run", r)
	}
}

func TestRecentlyDecidedShowsTheLastTen(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	var ids []string
	for range 12 {
		a := e.park("agent-1", `{}`)
		e.act(op, "/console/approvals/"+a.ID+"/approve", nil)
		e.clock.Advance(time.Second)
		ids = append(ids, a.ID)
	}
	body := e.get(op, "/console/approvals/rows").Body.String()
	recent := regexp.MustCompile(`<tr data-testid="recent" data-id="([^"]+)">`).FindAllStringSubmatch(body, -1)
	if len(recent) != 10 {
		t.Fatalf("%d recently decided, want 10", len(recent))
	}
	for i, m := range recent {
		if want := ids[11-i]; m[1] != want {
			t.Errorf("recent[%d] = %s, want %s (newest first)", i, m[1], want)
		}
	}
}

// failingApprovals is an approval store whose reads can be made to fail.
type failingApprovals struct {
	approval.Store
	list, recent, get error
}

func (f *failingApprovals) Get(ctx context.Context, id string) (*approval.Approval, error) {
	if f.get != nil {
		return nil, f.get
	}
	return f.Store.Get(ctx, id)
}

func (f *failingApprovals) List(ctx context.Context, s approval.State) ([]*approval.Approval, error) {
	if f.list != nil {
		return nil, f.list
	}
	return f.Store.List(ctx, s)
}

func (f *failingApprovals) Recent(ctx context.Context, n int) ([]*approval.Approval, error) {
	if f.recent != nil {
		return nil, f.recent
	}
	return f.Store.Recent(ctx, n)
}

// A store that cannot be read is reported as such, never shown as an
// empty queue.
func TestApprovalsPageSaysWhenTheStoreFails(t *testing.T) {
	for _, which := range []string{"list", "recent"} {
		t.Run(which, func(t *testing.T) {
			store := &failingApprovals{}
			e := newEnv(t, nil, func(d *console.Deps) { store.Store = d.Approvals; d.Approvals = store })
			op := e.signIn("alice")
			a := e.park("agent-1", `{}`)
			err := errors.New("redis: connection refused")
			if which == "list" {
				store.list = err
			} else {
				store.recent = err
			}
			body := e.get(op, "/console/approvals/rows").Body.String()
			if !strings.Contains(body, "The approval store could not be read: "+err.Error()) {
				t.Errorf("the queue does not report the failure:\n%s", body)
			}
			if strings.Contains(body, `data-testid="queue-empty"`) || card(body, a.ID) != "" {
				t.Errorf("the queue shows rows or says it is empty despite the failure:\n%s", body)
			}
		})
	}
}

func TestIndent(t *testing.T) {
	// Within four levels, Indent is json.Indent with two spaces.
	for _, in := range []string{
		`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_page","arguments":{"page_id":"pg_1","tags":["a","b"]}}}`,
		" {\"a\" : [ ] , \"b\":{ },\"c\":\"[\\\"{,:}\\\"]\\\\\",\"d\":[1,[2,{\"e\":null}]]}\n",
		`"just a string"`,
		`[]`,
		`12.5e3`,
	} {
		var want bytes.Buffer
		if err := json.Indent(&want, []byte(in), "", "  "); err != nil {
			t.Fatal(err)
		}
		if got, ok := console.Indent([]byte(in)); !ok || string(got) != want.String() {
			t.Errorf("Indent(%s) = %v\n%s\nwant\n%s", in, ok, got, want.String())
		}
	}
	// Deeper, it is compact.
	got, ok := console.Indent([]byte(`{"a":{"b":{"c":{"d":{"e": [1, 2,{}]},"f":[]}}}}`))
	want := `{
  "a": {
    "b": {
      "c": {
        "d": {"e":[1,2,{}]},
        "f": []
      }
    }
  }
}`
	if !ok || string(got) != want {
		t.Errorf("Indent of a deep value = %v\n%s\nwant\n%s", ok, got, want)
	}
	if got, ok := console.Indent([]byte(`{"a":`)); ok || got != nil {
		t.Errorf("Indent of what is not JSON = %q, %v", got, ok)
	}
}

// A request nests as deep as its agent makes it (the parser allows 64
// levels, and params may hold members no policy reads) and is up to
// max_body_bytes long, and the queue renders every pending one every 2 s
// for every open console. A card shows a request whole (indented, and
// byte for byte) up to 64 KiB, and the start of a longer one; an
// approval's own page shows it whole, byte for byte. Neither may render
// more than a few times the request, however deep it nests.
func TestApprovalsRenderIsBoundedByTheRequest(t *testing.T) {
	call := func(x string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"},"x":` + x + `}}`
	}
	// nested is call with x as depth nested arrays around n+1 elems.
	nested := func(depth, n int, elem string) string {
		return call(strings.Repeat("[", depth) + strings.Repeat(elem+",", n) + elem + strings.Repeat("]", depth))
	}
	for _, tc := range []struct {
		name string
		body string
		cut  bool
	}{
		{"deep, within a card", nested(60, 8<<10, "0"), false},
		{"deep, past a card", nested(60, 64<<10, "0"), true},
		{"deep, as long as the gateway takes", nested(60, 500<<10, "0"), true},
		// x's arrays put each string on a line of its own, indented
		// four levels: the most indentation a byte can get.
		{"wide at the deepest level indented", nested(2, 20<<10, `""`), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := mcpfilter.Parse([]byte(tc.body), &mcpfilter.Options{MaxBytes: 1 << 20}); err != nil {
				t.Fatalf("the gateway would not take the request: %v", err)
			}
			// A card shows a request twice, each copy a few times its
			// size as HTML at most ("" is &#34;&#34;).
			bound := 12*len(tc.body) + 16<<10
			e := newEnv(t, nil)
			op := e.signIn("alice")
			a := e.park("bot", tc.body)

			rec := e.get(op, "/console/approvals/rows")
			wantStatus(t, rec, http.StatusOK)
			if n := rec.Body.Len(); n > bound {
				t.Errorf("a request of %d KiB renders as a queue of %d KiB, over %d KiB", len(tc.body)>>10, n>>10, bound>>10)
			}
			c := card(rec.Body.String(), a.ID)
			_, cut := field(c, "cut")
			_, approve := field(c, "approve")
			if cut != tc.cut || approve == tc.cut {
				t.Errorf("the card of a request of %d KiB says it is cut: %v, offers to approve: %v; want %v, %v",
					len(tc.body)>>10, cut, approve, tc.cut, !tc.cut)
			}
			if cut && !strings.Contains(c, `<a href="/console/approvals/`+a.ID+`">`) {
				t.Errorf("the cut card does not link to the approval's page:\n%s", c)
			}

			rec = e.get(op, "/console/approvals/"+a.ID)
			wantStatus(t, rec, http.StatusOK)
			if n := rec.Body.Len(); n > bound {
				t.Errorf("a request of %d KiB renders as an approval page of %d KiB, over %d KiB", len(tc.body)>>10, n>>10, bound>>10)
			}
			whole := card(rec.Body.String(), a.ID)
			if _, ok := field(whole, "approve"); !ok {
				t.Errorf("the approval's page offers no approval:\n%.2000s", whole)
			}
			if tc.cut {
				if got, _ := field(whole, "payload"); got != tc.body {
					t.Errorf("the approval's page does not show the request byte for byte: %d bytes of %d", len(got), len(tc.body))
				}
			}
		})
	}
}

// A request too long for a card is read, and approved, on its own page:
// whole, byte for byte, with what would not show written as escapes, as
// on a card.
func TestApprovalPageShowsTheWholeRequest(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	tail := "report\u202efdp.exe"
	body := strings.Repeat("<b>", 30<<10) + tail
	a := e.park("bot", body)

	c := card(e.get(op, "/console/approvals").Body.String(), a.ID)
	payload, _ := field(c, "payload")
	if !strings.HasPrefix(body, payload) || len(payload) > 64<<10 || strings.Contains(c, "Exact bytes") {
		t.Errorf("the card shows %d bytes of a %d byte request, want its first 64 KiB once", len(payload), len(body))
	}
	if !strings.Contains(text(e.get(op, "/console/approvals")), fmt.Sprintf("This request is %d bytes", len(body))) {
		t.Error("the card does not say how long the request is")
	}

	rec := e.get(op, "/console/approvals/"+a.ID)
	wantStatus(t, rec, http.StatusOK)
	c = card(rec.Body.String(), a.ID)
	if got, _ := field(c, "payload"); got != strings.Repeat("<b>", 30<<10)+`report\u202efdp.exe` {
		t.Errorf("the approval's page shows %d bytes ending %q, want the request whole with the override escaped", len(got), got[max(0, len(got)-20):])
	}
	if _, ok := field(c, "hidden"); !ok {
		t.Error("the approval's page does not warn of hidden characters")
	}
	if _, ok := field(c, "cut"); ok || strings.Contains(c, "Exact bytes") {
		t.Errorf("the approval's page cuts the request, or shows it twice")
	}
	if count(rec.Body.String(), "<script") != 1 || strings.Contains(rec.Body.String(), "data-refresh") {
		t.Error("the approval's page runs more than the console's script, or refreshes as the queue does")
	}
	// Approved there, the call goes ahead.
	rec = e.act(op, "/console/approvals/"+a.ID+"/approve", nil)
	wantRedirect(t, rec, "/console/approvals?"+url.Values{"done": {"approved"}, "id": {a.ID}}.Encode())

	// Once decided, or for no approval, the page leads back to the queue
	// and says why.
	for id, want := range map[string]string{
		a.ID:                           a.ID + " is no longer waiting for a decision: it was decided, expired, or its agent left.",
		"apr_000000000000000000000000": "There is no approval apr_000000000000000000000000.",
	} {
		rec := e.get(op, "/console/approvals/"+id)
		if rec.Code != http.StatusSeeOther {
			t.Fatalf("%s: %d, want a redirect to the queue", id, rec.Code)
		}
		if got := problem(e.follow(op, rec)); got != want {
			t.Errorf("%s: problem %q, want %q", id, got, want)
		}
	}
}

func TestApprovalPageSaysWhenTheStoreFails(t *testing.T) {
	store := &failingApprovals{}
	var logs bytes.Buffer
	e := newEnv(t, &console.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))},
		func(d *console.Deps) { store.Store = d.Approvals; d.Approvals = store })
	op := e.signIn("alice")
	a := e.park("agent-1", `{}`)
	store.get = errors.New("redis: connection refused")
	rec := e.get(op, "/console/approvals/"+a.ID)
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("%d, want a redirect to the queue", rec.Code)
	}
	if got, want := problem(e.follow(op, rec)), a.ID+" could not be read from the approval store; the gateway's log says why."; got != want {
		t.Errorf("problem %q, want %q", got, want)
	}
	if !strings.Contains(logs.String(), "redis: connection refused") {
		t.Errorf("the log does not say why:\n%s", logs.String())
	}
}

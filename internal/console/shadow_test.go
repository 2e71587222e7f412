package console_test

import (
	"context"
	"html"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/internal/shadow"
)

// shadowRows maps each role of the shadow page's table to its row's
// cells, as text.
func shadowRows(t *testing.T, body string) map[string][]string {
	t.Helper()
	rows := map[string][]string{}
	for _, m := range regexp.MustCompile(`(?s)<tr data-testid="shadow-role" data-role="([^"]*)">(.*?)</tr>`).FindAllStringSubmatch(body, -1) {
		var cells []string
		for _, c := range regexp.MustCompile(`(?s)<td[^>]*>(.*?)</td>`).FindAllStringSubmatch(m[2], -1) {
			cells = append(cells, strings.TrimSpace(html.UnescapeString(regexp.MustCompile(`<[^>]+>`).ReplaceAllString(c[1], ""))))
		}
		if len(cells) != 6 {
			t.Fatalf("row of %s has %d cells: %q", m[1], len(cells), m[2])
		}
		rows[html.UnescapeString(m[1])] = cells
	}
	return rows
}

// countDenials records would-be denials: support 10 days ago, trial 3
// days ago, dev (enforce now) yesterday twice, and retired (no longer in
// the policy) 20 days ago; each is a call decided. support and trial also
// made calls that would have gone through: support 4 today, trial 2
// yesterday.
func countDenials(t *testing.T, s *shadow.Memory) {
	t.Helper()
	ctx := context.Background()
	day := 24 * time.Hour
	for _, d := range []struct {
		role           string
		ago            time.Duration
		calls, denials int64
	}{
		{"support", 10 * day, 1, 1}, {"trial", 3 * day, 1, 1}, {"dev", day, 1, 1}, {"dev", day, 1, 1},
		{"retired", 20 * day, 1, 1}, {"ancient", 40 * day, 1, 1},
		{"support", 0, 4, 0}, {"trial", day, 2, 0},
	} {
		if err := s.Add(ctx, d.role, start.Add(-d.ago), d.calls, d.denials); err != nil {
			t.Fatal(err)
		}
	}
}

func TestShadowReadiness(t *testing.T) {
	for _, tc := range []struct {
		readyDays int
		// state of support and trial; retired, gone from the policy, has
		// no state whatever its line says
		support, trial string
	}{
		{0, "ready to enforce", "not yet"}, // 0 means 7
		{7, "ready to enforce", "not yet"},
		{3, "ready to enforce", "ready to enforce"},
		{4, "ready to enforce", "not yet"},
		{11, "not yet", "not yet"},
		{21, "not yet", "not yet"},
	} {
		e := newEnv(t, &console.Options{ReadyDays: tc.readyDays})
		countDenials(t, e.shadow)
		op := e.signIn("alice")
		rec := e.get(op, "/console/shadow")
		wantStatus(t, rec, http.StatusOK)
		rows := shadowRows(t, rec.Body.String())
		if len(rows) != 4 {
			t.Fatalf("ReadyDays %d: roles %v, want dev, retired, support and trial (not ancient, outside the chart)", tc.readyDays, rows)
		}
		for role, want := range map[string]string{"support": tc.support, "trial": tc.trial, "retired": "—", "dev": "enforcing"} {
			if got := rows[role][5]; got != want {
				t.Errorf("ReadyDays %d: %s is %q, want %q", tc.readyDays, role, got, want)
			}
		}
	}
}

func TestShadowPage(t *testing.T) {
	e := newEnv(t, nil)
	countDenials(t, e.shadow)
	op := e.signIn("alice")
	rec := e.get(op, "/console/shadow")
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	rows := shadowRows(t, body)
	day := func(ago int) string { return shadow.Day(start.AddDate(0, 0, -ago)) }
	want := map[string][]string{
		"dev":     {"dev", "enforce", "2", day(1), "2", "enforcing"},
		"retired": {"retired", "no longer in the policy", "1", day(20), "0", "—"},
		"support": {"support", "shadow", "1", day(10), "4", "ready to enforce"},
		"trial":   {"trial", "shadow", "1", day(3), "3", "not yet"},
	}
	for role, w := range want {
		if strings.Join(rows[role], "|") != strings.Join(w, "|") {
			t.Errorf("row %s = %q, want %q", role, rows[role], w)
		}
	}
	order := regexp.MustCompile(`data-testid="shadow-role" data-role="([^"]*)"`).FindAllStringSubmatch(body, -1)
	var roles []string
	for _, m := range order {
		roles = append(roles, m[1])
	}
	if strings.Join(roles, " ") != "dev retired support trial" {
		t.Errorf("roles in order %q, want sorted", roles)
	}
	if !strings.Contains(body, `<img src="/console/shadow/chart.svg"`) {
		t.Error("the page does not show the chart")
	}
	if !strings.Contains(body, "at zero for the last 7 days, over at least 1 call decided in those days, is ready to enforce") {
		t.Error("the page does not say how many quiet days make a role ready")
	}
}

func TestShadowPageShowsShadowRolesWithoutDenials(t *testing.T) {
	e := newEnv(t, nil)
	op := e.signIn("alice")
	rows := shadowRows(t, e.get(op, "/console/shadow").Body.String())
	if len(rows) != 2 || rows["support"] == nil || rows["trial"] == nil {
		t.Fatalf("roles %v, want the two shadow roles", rows)
	}
	// No calls, no evidence: a role nobody used is not ready.
	for _, role := range []string{"support", "trial"} {
		if got := rows[role]; got[2] != "0" || got[3] != "—" || got[4] != "0" || got[5] != "not yet" {
			t.Errorf("%s without calls: %q", role, got)
		}
	}
	// Calls without denials are.
	if err := e.shadow.Add(context.Background(), "trial", start, 5, 0); err != nil {
		t.Fatal(err)
	}
	rows = shadowRows(t, e.get(op, "/console/shadow").Body.String())
	if got := rows["trial"]; got[2] != "0" || got[4] != "5" || got[5] != "ready to enforce" {
		t.Errorf("trial with 5 calls and no denials: %q", got)
	}
}

// ReadyMinCalls sets how many calls make the evidence.
func TestShadowReadyMinCalls(t *testing.T) {
	for _, tc := range []struct {
		minCalls int
		want     string
	}{{0, "ready to enforce"}, {4, "ready to enforce"}, {5, "not yet"}} {
		e := newEnv(t, &console.Options{ReadyMinCalls: tc.minCalls})
		countDenials(t, e.shadow)
		op := e.signIn("alice")
		body := e.get(op, "/console/shadow").Body.String()
		if got := shadowRows(t, body)["support"][5]; got != tc.want {
			t.Errorf("ReadyMinCalls %d: support with 4 calls is %q, want %q", tc.minCalls, got, tc.want)
		}
	}
}

// failingCounts are shadow counts that cannot be read.
type failingCounts struct{ err error }

func (f failingCounts) Counts(context.Context, time.Time, time.Time) ([]shadow.Count, error) {
	return nil, f.err
}

// Counts that cannot be read are reported as such, never shown as no role
// in shadow mode: the policy has two.
func TestShadowPageSaysWhenTheCountsFail(t *testing.T) {
	e := newEnv(t, nil, func(d *console.Deps) { d.Shadow = failingCounts{errStoreDown} })
	op := e.signIn("alice")
	rec := e.get(op, "/console/shadow")
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", rec.Code)
	}
	body := text(rec)
	if !strings.Contains(body, "The shadow counts could not be read: connection refused") {
		t.Errorf("the page does not report the failure:\n%s", body)
	}
	if strings.Contains(body, "No role is in shadow mode") {
		t.Errorf("the page says no role is in shadow mode despite the failure:\n%s", body)
	}
	wantStatus(t, e.get(op, "/console/shadow/chart.svg"), http.StatusServiceUnavailable)
}

// However many days a role must stay at zero, the console reads and draws
// at most shadow.MaxDays of counts on a view: each day of the window costs
// memory and Redis reads.
func TestShadowWindowIsBounded(t *testing.T) {
	e := newEnv(t, &console.Options{ReadyDays: 1000, ChartDays: 2000})
	countDenials(t, e.shadow)
	if err := e.shadow.Add(context.Background(), "trial", start.AddDate(0, 0, -500), 1, 1); err != nil {
		t.Fatal(err)
	}
	op := e.signIn("alice")
	rec := e.get(op, "/console/shadow")
	wantStatus(t, rec, http.StatusOK)
	body := rec.Body.String()
	if !strings.Contains(body, "Would-be denials, 366 days") {
		t.Error("the page does not show 366 days")
	}
	// A would-be denial 500 days ago is outside the window read.
	if got := shadowRows(t, body)["trial"]; len(got) != 6 || got[2] != "1" || got[3] != shadow.Day(start.AddDate(0, 0, -3)) {
		t.Errorf("trial = %q, want the one would-be denial of 3 days ago", got)
	}
	svg := e.get(op, "/console/shadow/chart.svg").Body.String()
	if want := "Would-be denials per day from " + shadow.Day(start.AddDate(0, 0, -365)) + " to " + shadow.Day(start); !strings.Contains(svg, want) {
		t.Errorf("the chart does not say %q", want)
	}
}

func TestShadowChart(t *testing.T) {
	e := newEnv(t, &console.Options{ChartDays: 14})
	countDenials(t, e.shadow)
	op := e.signIn("alice")
	rec := e.get(op, "/console/shadow/chart.svg")
	wantStatus(t, rec, http.StatusOK)
	if ct := rec.Header().Get("Content-Type"); ct != "image/svg+xml" {
		t.Errorf("Content-Type %q", ct)
	}
	svg := rec.Body.String()
	if !strings.HasPrefix(strings.TrimSpace(svg), "<svg") || !strings.HasSuffix(strings.TrimSpace(svg), "</svg>") {
		t.Fatalf("not an SVG document:\n%s", svg)
	}
	if strings.Contains(svg, "<script") {
		t.Error("the chart has a script")
	}
	for _, role := range []string{"dev", "support", "trial"} {
		if !regexp.MustCompile(`>` + role + `\b`).MatchString(svg) {
			t.Errorf("the chart does not list %s", role)
		}
	}
	// retired's only denial is 20 days ago, outside a 14-day chart.
	if strings.Contains(svg, "retired") {
		t.Error("the chart lists a role with no denial in its window")
	}
	if !strings.Contains(svg, "Would-be denials per role per day (UTC)") {
		t.Error("the chart has no title")
	}
}

// The chart's days are UTC days, and so are the days its counts are read
// for, whatever the time zone of the clock. A week back from just after
// midnight in Berlin, across the start of summer time, is a day short of
// a week back in UTC: the first day of the window must still be read.
func TestShadowChartAcrossSummerTime(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no time zone data: %v", err)
	}
	now := time.Date(2026, 4, 2, 1, 30, 0, 0, berlin) // 2026-04-01 23:30 UTC
	e := newEnv(t, &console.Options{ChartDays: 7, Now: func() time.Time { return now }})
	if err := e.shadow.Add(context.Background(), "support", time.Date(2026, 3, 26, 12, 0, 0, 0, time.UTC), 1, 1); err != nil {
		t.Fatal(err)
	}
	op := e.signIn("alice")
	rec := e.get(op, "/console/shadow")
	wantStatus(t, rec, http.StatusOK)
	if got := shadowRows(t, rec.Body.String())["support"]; len(got) < 4 || got[2] != "1" || got[3] != "2026-03-26" {
		t.Errorf("support = %q, want 1 would-be denial, last on 2026-03-26", got)
	}
	svg := e.get(op, "/console/shadow/chart.svg").Body.String()
	if !strings.Contains(svg, "Would-be denials per day from 2026-03-26 to 2026-04-01") {
		t.Errorf("the chart does not run from 2026-03-26 to 2026-04-01:\n%s", svg)
	}
	if !strings.Contains(svg, "<title>support 2026-03-26: 1 would-be denial</title>") {
		t.Errorf("the chart does not show support's denial on 2026-03-26:\n%s", svg)
	}
}

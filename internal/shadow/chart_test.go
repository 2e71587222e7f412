package shadow

import (
	"bytes"
	"encoding/xml"
	"flag"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/chart.svg from the current chart")

// today is the last day of the windows under test, late in the UTC day.
var today = time.Date(2026, 11, 24, 23, 30, 0, 0, time.UTC)

func TestWindow(t *testing.T) {
	counts := []Count{
		{Role: "admin", Day: "2026-11-20", N: 3}, // outside a 4-day window
		{Role: "admin", Day: "2026-11-21", N: 1, Calls: 10},
		{Role: "admin", Day: "2026-11-24", N: 5, Calls: 6},
		{Role: "admin", Day: "2026-11-25", N: 9}, // tomorrow
		{Role: "ci", Day: "2026-11-23", N: 2, Calls: 4},
		{Role: "ci", Day: "2026-11-23", N: 1, Calls: 1}, // same day again: added up
		{Role: "ci", Day: "2026-11-24", Calls: 8},
		{Role: "other", Day: "2026-11-22", N: 7},
	}
	days := []string{"2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24"}
	want := []Series{
		{Role: "ci", Days: days, N: []int64{0, 0, 3, 0}, Calls: []int64{0, 0, 5, 8}},
		{Role: "quiet", Days: days, N: []int64{0, 0, 0, 0}, Calls: []int64{0, 0, 0, 0}},
		{Role: "admin", Days: days, N: []int64{1, 0, 0, 5}, Calls: []int64{10, 0, 0, 6}},
	}
	got := Window(counts, []string{"ci", "quiet", "admin"}, today, 4)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Window:\n got %v\nwant %v", got, want)
	}
}

func TestWindowToday(t *testing.T) {
	// 00:30 on the 25th in UTC+2 is still the 24th in UTC.
	local := time.Date(2026, 11, 25, 0, 30, 0, 0, time.FixedZone("UTC+2", 2*3600))
	got := Window(nil, []string{"a"}, local, 3)
	want := []string{"2026-11-22", "2026-11-23", "2026-11-24"}
	if len(got) != 1 || !slices.Equal(got[0].Days, want) {
		t.Errorf("Window days = %v, want %v", got, want)
	}
	// Across the end of a month and a year.
	got = Window(nil, []string{"a"}, time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), 3)
	want = []string{"2026-12-30", "2026-12-31", "2027-01-01"}
	if !slices.Equal(got[0].Days, want) {
		t.Errorf("Window days = %v, want %v", got[0].Days, want)
	}
	if got := Window(nil, []string{"a"}, today, 0); len(got) != 1 || len(got[0].Days) != 0 || len(got[0].N) != 0 {
		t.Errorf("Window of 0 days = %v, want one empty series", got)
	}
	if got := Window([]Count{{Role: "a", Day: Day(today), N: 1}}, nil, today, 7); len(got) != 0 {
		t.Errorf("Window of no roles = %v, want none", got)
	}
}

// WindowRange spans the days Window builds, in UTC, whatever the time
// zone of today: a local week back across a change of the clocks is not
// seven UTC days.
func TestWindowRange(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no time zone data: %v", err)
	}
	for _, tc := range []struct {
		name     string
		today    time.Time
		days     int
		from, to string
	}{
		{"UTC", today, 4, "2026-11-21", "2026-11-24"},
		{"into summer time", time.Date(2026, 4, 2, 1, 30, 0, 0, berlin), 7, "2026-03-26", "2026-04-01"},
		{"out of summer time", time.Date(2026, 10, 26, 0, 30, 0, 0, berlin), 3, "2026-10-23", "2026-10-25"},
		{"one day", today, 1, "2026-11-24", "2026-11-24"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from, to := WindowRange(tc.today, tc.days)
			if Day(from) != tc.from || Day(to) != tc.to || from.Location() != time.UTC || !from.Equal(from.Truncate(24*time.Hour)) {
				t.Errorf("WindowRange = %v, %v; want the UTC midnights of %s and %s", from, to, tc.from, tc.to)
			}
			days := Window(nil, []string{"a"}, tc.today, tc.days)[0].Days
			if days[0] != Day(from) || days[len(days)-1] != Day(to) {
				t.Errorf("Window runs from %s to %s, WindowRange from %s to %s", days[0], days[len(days)-1], Day(from), Day(to))
			}
		})
	}
	if from, to := WindowRange(today, 0); !from.After(to) {
		t.Errorf("WindowRange of 0 days = %v, %v; want an empty range", from, to)
	}
}

func TestReadyToEnforce(t *testing.T) {
	days := []string{"2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24"}
	busy := []int64{9, 9, 9, 9, 9, 9}
	for _, tc := range []struct {
		name     string
		n, calls []int64
		quiet    int
		minCalls int64
		want     bool
	}{
		{"quiet for the last 3", []int64{4, 2, 1, 0, 0, 0}, busy, 3, 1, true},
		{"denial on the first quiet day", []int64{4, 2, 1, 1, 0, 0}, busy, 3, 1, false},
		{"denial today", []int64{0, 0, 0, 0, 0, 1}, busy, 3, 1, false},
		{"denial just before the quiet days", []int64{0, 0, 1, 0, 0, 0}, busy, 3, 1, true},
		{"quiet as long as the window", []int64{0, 0, 0, 0, 0, 0}, busy, 6, 1, true},
		{"quiet longer than the window", []int64{0, 0, 0, 0, 0, 0}, busy, 7, 1, false},
		{"quiet 0", []int64{0, 0, 0, 0, 0, 0}, busy, 0, 1, false},
		{"quiet negative", []int64{0, 0, 0, 0, 0, 0}, busy, -1, 1, false},
		// No calls, no evidence: a role nobody used is not ready.
		{"no calls at all", []int64{0, 0, 0, 0, 0, 0}, []int64{0, 0, 0, 0, 0, 0}, 3, 1, false},
		{"calls only before the quiet days", []int64{0, 0, 0, 0, 0, 0}, []int64{5, 5, 5, 0, 0, 0}, 3, 1, false},
		{"one call in the quiet days", []int64{0, 0, 0, 0, 0, 0}, []int64{0, 0, 0, 0, 1, 0}, 3, 1, true},
		{"minCalls 0 still needs a call", []int64{0, 0, 0, 0, 0, 0}, []int64{0, 0, 0, 0, 0, 0}, 3, 0, false},
		{"fewer calls than asked", []int64{0, 0, 0, 0, 0, 0}, busy, 3, 28, false},
		{"as many calls as asked", []int64{0, 0, 0, 0, 0, 0}, busy, 3, 27, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Series{Role: "r", Days: days, N: tc.n, Calls: tc.calls}
			if got := s.ReadyToEnforce(tc.quiet, tc.minCalls); got != tc.want {
				t.Errorf("ReadyToEnforce(%d, %d) of %v over %v calls = %v, want %v", tc.quiet, tc.minCalls, tc.n, tc.calls, got, tc.want)
			}
		})
	}
	if (Series{}).ReadyToEnforce(1, 1) {
		t.Error("an empty series is ready to enforce")
	}
}

func TestNiceMax(t *testing.T) {
	for _, tc := range []struct{ n, want int64 }{
		{-3, 1}, {0, 1}, {1, 1}, {2, 2}, {3, 5}, {5, 5}, {6, 10}, {10, 10}, {11, 20},
		{37, 50}, {50, 50}, {51, 100}, {199, 200}, {4001, 5000}, {5e18, 5e18},
	} {
		if got := niceMax(tc.n); got != tc.want {
			t.Errorf("niceMax(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
	if got := niceMax(math.MaxInt64); got < math.MaxInt64 {
		t.Errorf("niceMax(MaxInt64) = %d", got)
	}
}

func TestYTicks(t *testing.T) {
	for _, tc := range []struct {
		top  int64
		want []int64
	}{
		{1, []int64{0, 1}},
		{2, []int64{0, 1, 2}},
		{5, []int64{0, 1, 2, 3, 4, 5}},
		{10, []int64{0, 2, 4, 6, 8, 10}},
		{20, []int64{0, 5, 10, 15, 20}},
		{50, []int64{0, 10, 20, 30, 40, 50}},
		{1000, []int64{0, 200, 400, 600, 800, 1000}},
	} {
		if got := yTicks(tc.top); !slices.Equal(got, tc.want) {
			t.Errorf("yTicks(%d) = %v, want %v", tc.top, got, tc.want)
		}
	}
	if got := yTicks(math.MaxInt64); len(got) < 2 || len(got) > 6 || got[len(got)-1] != math.MaxInt64 {
		t.Errorf("yTicks(MaxInt64) = %v", got)
	}
}

func TestXLabels(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 8, 9, 14, 30, 31, 90, 365} {
		for _, plotW := range []float64{200, 660} {
			got := xLabels(n, plotW, 40)
			if got[0] != 0 || got[len(got)-1] != n-1 {
				t.Errorf("xLabels(%d, %v) = %v, want the first and the last day", n, plotW, got)
			}
			if len(got) > maxXLabels {
				t.Errorf("xLabels(%d, %v) = %v, more than %d", n, plotW, got, maxXLabels)
			}
			if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Errorf("xLabels(%d, %v) = %v, not increasing", n, plotW, got)
			}
			if n > 1 {
				dx := plotW / float64(n-1)
				for i := 1; i < len(got); i++ {
					if gap := float64(got[i]-got[i-1]) * dx; gap < 1.5*40 {
						t.Errorf("xLabels(%d, %v) = %v: labels %d and %d are %v apart, they overlap", n, plotW, got, got[i-1], got[i], gap)
					}
				}
			}
		}
	}
}

// node is an element of a parsed SVG document.
type node struct {
	name     string
	attr     map[string]string
	text     string // the character data directly inside
	children []*node
}

// all returns n and the elements under it named name, in document order.
func (n *node) all(name string) []*node {
	var out []*node
	if n.name == name {
		out = append(out, n)
	}
	for _, c := range n.children {
		out = append(out, c.all(name)...)
	}
	return out
}

// parseSVG decodes a whole document, strictly, into its root element.
func parseSVG(t *testing.T, doc []byte) *node {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	d.Strict = true
	var root *node
	var stack []*node
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG does not parse as XML: %v\n%s", err, doc)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			n := &node{name: tok.Name.Local, attr: map[string]string{}}
			for _, a := range tok.Attr {
				n.attr[a.Name.Local] = a.Value
			}
			if len(stack) == 0 {
				if root != nil {
					t.Fatal("SVG has more than one root element")
				}
				root = n
			} else {
				p := stack[len(stack)-1]
				p.children = append(p.children, n)
			}
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				stack[len(stack)-1].text += string(tok)
			} else if strings.TrimSpace(string(tok)) != "" {
				t.Fatalf("SVG has text outside its root: %q", tok)
			}
		}
	}
	if root == nil || root.name != "svg" {
		t.Fatalf("SVG root is %v, want svg", root)
	}
	return root
}

// roleGroups returns the data-role groups of an SVG document by role.
func roleGroups(root *node) (roles []string, groups []*node) {
	for _, g := range root.all("g") {
		if r, ok := g.attr["data-role"]; ok {
			roles = append(roles, r)
			groups = append(groups, g)
		}
	}
	return roles, groups
}

// sample is a fortnight of three roles, as a console would show it.
func sample() []Series {
	counts := []Count{
		{Role: "admin", Day: "2026-11-11", N: 12},
		{Role: "admin", Day: "2026-11-12", N: 9},
		{Role: "admin", Day: "2026-11-13", N: 14},
		{Role: "admin", Day: "2026-11-14", N: 6},
		{Role: "admin", Day: "2026-11-16", N: 3},
		{Role: "admin", Day: "2026-11-17", N: 2},
		{Role: "admin", Day: "2026-11-19", N: 1},
		{Role: "ci-deploy", Day: "2026-11-11", N: 31},
		{Role: "ci-deploy", Day: "2026-11-12", N: 28},
		{Role: "ci-deploy", Day: "2026-11-15", N: 37},
		{Role: "ci-deploy", Day: "2026-11-18", N: 22},
		{Role: "ci-deploy", Day: "2026-11-21", N: 19},
		{Role: "ci-deploy", Day: "2026-11-23", N: 8},
		{Role: "ci-deploy", Day: "2026-11-24", N: 11},
		{Role: "support", Day: "2026-11-13", N: 1},
	}
	return Window(counts, []string{"admin", "ci-deploy", "support", "readonly"}, today, 14)
}

func TestSVGStructure(t *testing.T) {
	for _, tc := range []struct {
		name   string
		series []Series
		opts   *ChartOptions
	}{
		{"fortnight", sample(), nil},
		{"narrow", sample(), &ChartOptions{Width: 360, Height: 240, Title: "Phone"}},
		{"one day", Window([]Count{{Role: "a", Day: Day(today), N: 3}}, []string{"a", "b"}, today, 1), nil},
		{"ninety days", Window(nil, []string{"a"}, today, 90), nil},
		{"no days", Window(nil, []string{"a"}, today, 0), nil},
		{"no roles", nil, nil},
		{"many roles", Window(nil, strings.Fields("r0 r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 r11 r12 r13 r14 r15 r16 r17 r18 r19 r20 r21"), today, 7), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := SVG(tc.series, tc.opts)
			root := parseSVG(t, doc)
			for _, a := range []string{"viewBox", "width", "role"} {
				if root.attr[a] == "" {
					t.Errorf("svg has no %s attribute", a)
				}
			}
			if root.attr["width"] != "100%" || root.attr["role"] != "img" {
				t.Errorf("svg width=%q role=%q, want 100%% and img", root.attr["width"], root.attr["role"])
			}
			if len(root.children) == 0 || root.children[0].name != "title" || root.children[0].text == "" {
				t.Error("svg does not start with a title")
			}
			if strings.Contains(string(doc), "url(") || strings.Contains(string(doc), "<script") || strings.Contains(string(doc), "href") {
				t.Error("svg refers to something outside itself")
			}
			vb := strings.Fields(root.attr["viewBox"])
			if len(vb) != 4 {
				t.Fatalf("viewBox = %q", root.attr["viewBox"])
			}
			w, _ := strconv.ParseFloat(vb[2], 64)
			h, _ := strconv.ParseFloat(vb[3], 64)

			roles, groups := roleGroups(root)
			var want []string
			for _, s := range tc.series {
				want = append(want, s.Role)
			}
			if !slices.Equal(roles, want) {
				t.Errorf("data-role groups = %q, want %q", roles, want)
			}
			colours := map[string]bool{}
			for i, g := range groups {
				s := tc.series[i]
				if i < len(palette) {
					colours[g.attr["stroke"]] = true
				}
				lines := g.all("polyline")
				if len(s.Days) == 0 {
					if len(lines) != 0 {
						t.Errorf("role %s without days has a line", s.Role)
					}
					continue
				}
				if len(lines) != 1 {
					t.Fatalf("role %s has %d polylines, want 1", s.Role, len(lines))
				}
				points := strings.Fields(lines[0].attr["points"])
				if len(points) != len(s.Days) {
					t.Errorf("role %s polyline has %d points, want %d", s.Role, len(points), len(s.Days))
				}
				for _, p := range points {
					xs, ys, ok := strings.Cut(p, ",")
					x, errX := strconv.ParseFloat(xs, 64)
					y, errY := strconv.ParseFloat(ys, 64)
					if !ok || errX != nil || errY != nil || x < 0 || x > w || y < 0 || y > h {
						t.Errorf("role %s point %q is not inside the %vx%v chart", s.Role, p, w, h)
					}
				}
				circles := g.all("circle")
				if len(circles) != len(s.Days) {
					t.Errorf("role %s has %d points, want %d", s.Role, len(circles), len(s.Days))
				}
				for j, c := range circles {
					tips := c.all("title")
					want := s.Role + " " + s.Days[j] + ": " + strconv.FormatInt(s.N[j], 10) + " would-be denial"
					if len(tips) != 1 || !strings.HasPrefix(tips[0].text, want) {
						t.Errorf("role %s point %d tooltip = %v, want %q", s.Role, j, tips, want)
					}
				}
			}
			if n := min(len(groups), len(palette)); len(colours) != n {
				t.Errorf("%d roles have %d colours, want %d", n, len(colours), n)
			}
			if len(tc.series) > 0 && len(tc.series[0].Days) > 0 {
				days := tc.series[0].Days
				labels := xLabelTexts(root)
				if len(labels) == 0 || len(labels) > maxXLabels {
					t.Errorf("x labels = %q, want 1 to %d", labels, maxXLabels)
				} else if labels[0] != shortDay(days[0]) || labels[len(labels)-1] != shortDay(days[len(days)-1]) {
					t.Errorf("x labels = %q, want the first and the last day", labels)
				}
			}
			legend := 0
			for _, g := range root.all("g") {
				if g.attr["class"] == "legend" {
					legend = len(g.all("text"))
				}
			}
			if legend != len(tc.series) {
				t.Errorf("legend has %d entries, want %d", legend, len(tc.series))
			}
		})
	}
}

func xLabelTexts(root *node) []string {
	var out []string
	for _, n := range root.all("text") {
		if n.attr["class"] == "x-label" {
			out = append(out, n.text)
		}
	}
	return out
}

func TestSVGYMax(t *testing.T) {
	for _, tc := range []struct {
		peak, want int64
	}{{0, 1}, {1, 1}, {2, 2}, {3, 5}, {37, 50}, {100, 100}, {101, 200}, {123456, 200000}} {
		s := Window([]Count{{Role: "a", Day: "2026-11-23", N: tc.peak}}, []string{"a", "b"}, today, 3)
		root := parseSVG(t, SVG(s, nil))
		var labels []int64
		for _, n := range root.all("text") {
			if n.attr["class"] != "y-label" {
				continue
			}
			v, err := strconv.ParseInt(n.text, 10, 64)
			if err != nil {
				t.Fatalf("y label %q is not a number", n.text)
			}
			labels = append(labels, v)
		}
		if len(labels) < 2 || labels[0] != 0 || slices.Max(labels) != tc.want {
			t.Errorf("peak %d: y labels = %v, want 0 up to %d", tc.peak, labels, tc.want)
		}
		// The peak's point is on the gridline of its value, or below the top.
		_, groups := roleGroups(root)
		top := math.Inf(1)
		for _, c := range groups[0].all("circle") {
			y, _ := strconv.ParseFloat(c.attr["cy"], 64)
			top = min(top, y)
		}
		var gridTop float64 = math.Inf(1)
		for _, l := range root.all("line") {
			if y, err := strconv.ParseFloat(l.attr["y1"], 64); err == nil && l.attr["y1"] == l.attr["y2"] && y < gridTop {
				gridTop = y
			}
		}
		if top < gridTop {
			t.Errorf("peak %d: point at y=%v is above the top gridline at %v", tc.peak, top, gridTop)
		}
		if tc.peak == tc.want && tc.peak > 0 && top != gridTop {
			t.Errorf("peak %d: point at y=%v, want on the top gridline at %v", tc.peak, top, gridTop)
		}
	}
}

func TestSVGEscapes(t *testing.T) {
	hostile := `<script>alert("x")</script>&'`
	s := Window([]Count{{Role: hostile, Day: Day(today), N: 2}}, []string{hostile, "ok"}, today, 5)
	doc := SVG(s, &ChartOptions{Title: `</title><script>alert(1)</script>`})
	if bytes.Contains(doc, []byte("<script")) || bytes.Contains(doc, []byte("</title><script")) {
		t.Errorf("hostile text made markup:\n%s", doc)
	}
	root := parseSVG(t, doc)
	for _, n := range root.all("script") {
		t.Errorf("SVG has a script element: %v", n)
	}
	roles, groups := roleGroups(root)
	if !slices.Equal(roles, []string{hostile, "ok"}) {
		t.Errorf("data-role = %q, want %q and ok", roles, hostile)
	}
	tip := groups[0].all("title")[4].text
	if want := hostile + " " + Day(today) + ": 2 would-be denials"; tip != want {
		t.Errorf("tooltip = %q, want %q", tip, want)
	}
	if got := root.children[0].text; got != `</title><script>alert(1)</script>` {
		t.Errorf("title = %q", got)
	}
	// Bytes that are not XML characters do not break the document.
	parseSVG(t, SVG([]Series{{Role: "bad\x00\xff", Days: []string{"2026-11-24"}, N: []int64{1}}}, nil))
}

func TestSVGDeterministic(t *testing.T) {
	want := SVG(sample(), nil)
	for range 20 {
		if got := SVG(sample(), nil); !bytes.Equal(got, want) {
			t.Fatal("SVG differs between two renderings of the same series")
		}
	}
	var zero ChartOptions
	if got := SVG(sample(), &zero); !bytes.Equal(got, want) {
		t.Error("zero ChartOptions do not render as nil ones")
	}
}

func TestSVGSize(t *testing.T) {
	root := parseSVG(t, SVG(sample(), &ChartOptions{Width: 500, Height: 300}))
	if got := root.attr["viewBox"]; got != "0 0 500 300" {
		t.Errorf("viewBox = %q, want 0 0 500 300", got)
	}
	// A legend of many roles makes the chart taller rather than squash it.
	many := Window(nil, strings.Fields(strings.Repeat("a-rather-long-role-name ", 30)), today, 7)
	root = parseSVG(t, SVG(many, &ChartOptions{Width: 500, Height: 300}))
	vb := strings.Fields(root.attr["viewBox"])
	if h, _ := strconv.ParseFloat(vb[3], 64); h <= 300 {
		t.Errorf("viewBox = %q, want taller than 300 for a legend of 30 roles", root.attr["viewBox"])
	}
}

// TestSVGGolden pins the whole chart of a sample fortnight: a change to the
// drawing shows up as a diff to review. go test -update accepts it.
func TestSVGGolden(t *testing.T) {
	got := SVG(sample(), nil)
	path := filepath.Join("testdata", "chart.svg")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/shadow -run TestSVGGolden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := range max(len(gl), len(wl)) {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s differs from line %d (go test ./internal/shadow -update to accept):\nwant %s\n got %s", path, i+1, w, g)
			}
		}
	}
}

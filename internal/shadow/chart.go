package shadow

import (
	"encoding/xml"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Series is one role's would-be denials, and calls decided in shadow
// mode, on each day of a window, oldest first.
type Series struct {
	Role  string
	Days  []string // YYYY-MM-DD, one per day of the window, oldest first
	N     []int64  // same length as Days; 0 on days without denials
	Calls []int64  // same length as Days; 0 on days without calls
}

// MaxDays is the most days a window of counts covers, in the console and
// in amg shadow report: a year, a leap day included. Redis keeps each
// day's counts 400 days, so a longer window would show days it no longer
// holds, and every day of a window costs the console memory and Redis
// reads on each view.
const MaxDays = 366

// Window returns one Series per role in roles, in that order, even if a role
// has no counts. The window is the days from days-1 days before today up to
// today (UTC), oldest first; days without counts are 0. Counts of roles not
// listed or of days outside the window are ignored, and counts of the same
// role and day are added up. With days <= 0 every Series is empty.
func Window(counts []Count, roles []string, today time.Time, days int) []Series {
	days = max(days, 0)
	from, _ := WindowRange(today, days)
	dayList := make([]string, days)
	dayIndex := make(map[string]int, days)
	for i := range days {
		d := Day(from.AddDate(0, 0, i))
		dayList[i] = d
		dayIndex[d] = i
	}
	out := make([]Series, len(roles))
	byRole := make(map[string][]int, len(roles)) // a role may be listed twice
	for i, r := range roles {
		out[i] = Series{Role: r, Days: dayList, N: make([]int64, days), Calls: make([]int64, days)}
		byRole[r] = append(byRole[r], i)
	}
	for _, c := range counts {
		d, ok := dayIndex[c.Day]
		if !ok {
			continue
		}
		for _, i := range byRole[c.Role] {
			out[i].N[d] += c.N
			out[i].Calls[d] += c.Calls
		}
	}
	return out
}

// WindowRange returns the first and the last day of the window Window
// builds for today and days, each as its midnight in UTC: the range to
// read counts for. Stepping back from today in a local time zone instead
// can miss the first day, as a day in which the clocks change is not 24
// hours long. With days <= 0 from is after to, a range of no days.
func WindowRange(today time.Time, days int) (from, to time.Time) {
	t := today.UTC()
	to = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	return to.AddDate(0, 0, 1-max(days, 0)), to
}

// ReadyToEnforce reports whether the last quiet days of s, today
// included, all have zero would-be denials over at least minCalls calls
// decided in shadow mode: days without calls are no evidence. It is false
// when quiet <= 0 or when s covers fewer than quiet days, as there is not
// enough data to say; minCalls below 1 counts as 1.
func (s Series) ReadyToEnforce(quiet int, minCalls int64) bool {
	if quiet <= 0 || quiet > len(s.Days) || quiet > len(s.N) || quiet > len(s.Calls) {
		return false
	}
	for _, n := range s.N[len(s.N)-quiet:] {
		if n != 0 {
			return false
		}
	}
	return s.CallsIn(quiet) >= max(minCalls, 1)
}

// CallsIn is the calls decided in shadow mode in the last days of s,
// today included.
func (s Series) CallsIn(days int) int64 {
	var n int64
	for _, c := range s.Calls[len(s.Calls)-min(max(days, 0), len(s.Calls)):] {
		n += c
	}
	return n
}

// ChartOptions sets the size and title of the chart SVG renders. A nil
// ChartOptions, or zero fields, take the defaults: 720 by 280 and the title
// "Would-be denials per role per day". Width and Height are the units of
// the SVG viewBox; the chart scales to the width of its container. Height
// grows if the legend needs more room.
type ChartOptions struct {
	Width, Height int
	Title         string
}

// Default chart settings.
const (
	defaultWidth  = 720
	defaultHeight = 280
	defaultTitle  = "Would-be denials per role per day"
	minWidth      = 240
	minPlotHeight = 80
	maxXLabels    = 8
	legendRowH    = 18
)

// palette is the colour of each role's line in turn: the Okabe-Ito colours
// that are distinct for colour-blind readers, less the yellow that is hard
// to see on white. Past its end, colours repeat with another dash pattern.
var palette = []string{"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000"}

// dashes is the stroke-dasharray of each round through palette.
var dashes = []string{"", "6 3", "2 3"}

// SVG renders series as a line chart, one polyline per role, and returns
// the SVG document. The x axis has the days of the longest series (series
// from Window all share the same days), the y axis runs from 0 to a round
// number at or above the largest count. The output depends only on its
// input, and every text from the input is escaped.
func SVG(series []Series, opts *ChartOptions) []byte {
	var o ChartOptions
	if opts != nil {
		o = *opts
	}
	if o.Width <= 0 {
		o.Width = defaultWidth
	}
	o.Width = max(o.Width, minWidth)
	if o.Height <= 0 {
		o.Height = defaultHeight
	}
	if o.Title == "" {
		o.Title = defaultTitle
	}

	// The x axis: the days of the longest series.
	var days []string
	var peak int64
	for _, s := range series {
		if n := min(len(s.Days), len(s.N)); n > len(days) {
			days = s.Days[:n]
		}
		for _, n := range s.N {
			peak = max(peak, n)
		}
	}
	top := niceMax(peak)
	ticks := yTicks(top)

	// Margins: room for the title above, the y labels on the left, the x
	// labels and the legend below.
	const (
		marginTop   = 36.0
		marginRight = 16.0
		charW       = 7.0 // rough width of a character at font-size 12
		smallCharW  = 6.5 // at font-size 11
	)
	labelChars := 1
	for _, v := range ticks {
		labelChars = max(labelChars, len(strconv.FormatInt(v, 10)))
	}
	left := 16 + float64(labelChars)*charW
	right := float64(o.Width) - marginRight
	plotW := right - left

	legend := layoutLegend(series, left, right, charW)
	rows := 0
	if len(legend) > 0 {
		rows = legend[len(legend)-1].row + 1
	}
	marginBottom := 28.0 + float64(rows)*legendRowH + 6
	height := max(float64(o.Height), marginTop+minPlotHeight+marginBottom)
	bottom := height - marginBottom
	plotH := bottom - marginTop

	x := func(i int) float64 {
		if len(days) <= 1 {
			return left + plotW/2
		}
		return left + plotW*float64(i)/float64(len(days)-1)
	}
	y := func(n int64) float64 { return bottom - plotH*float64(n)/float64(top) }

	var b strings.Builder
	b.WriteString(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 `)
	b.WriteString(strconv.Itoa(o.Width) + " " + num(height))
	b.WriteString(`" width="100%" preserveAspectRatio="xMidYMid meet" role="img" font-family="system-ui, sans-serif" font-size="12">` + "\n")
	b.WriteString("<title>" + esc(o.Title) + "</title>\n")
	b.WriteString("<desc>" + esc(describe(series, days)) + "</desc>\n")
	b.WriteString(`<rect width="` + strconv.Itoa(o.Width) + `" height="` + num(height) + `" fill="#ffffff"/>` + "\n")
	b.WriteString(`<text x="12" y="22" font-size="14" font-weight="600" fill="#222222">` + esc(o.Title) + "</text>\n")

	// Gridlines and y labels.
	b.WriteString(`<g class="y-axis">` + "\n")
	for _, v := range ticks {
		yv := num(y(v))
		stroke := "#e5e5e5"
		if v == 0 {
			stroke = "#888888"
		}
		b.WriteString(`<line x1="` + num(left) + `" y1="` + yv + `" x2="` + num(right) + `" y2="` + yv + `" stroke="` + stroke + `" stroke-width="1"/>` + "\n")
		b.WriteString(`<text class="y-label" x="` + num(left-6) + `" y="` + yv + `" dy="0.32em" text-anchor="end" fill="#555555">` + strconv.FormatInt(v, 10) + "</text>\n")
	}
	b.WriteString("</g>\n")

	// X labels, thinned out so they do not overlap.
	b.WriteString(`<g class="x-axis" font-size="11" fill="#555555">` + "\n")
	labelW := 0.0
	for _, d := range days {
		labelW = max(labelW, float64(utf8.RuneCountInString(shortDay(d)))*smallCharW)
	}
	for _, i := range xLabels(len(days), plotW, labelW) {
		anchor := "middle"
		switch {
		case len(days) == 1:
		case i == 0:
			anchor = "start"
		case i == len(days)-1:
			anchor = "end"
		}
		b.WriteString(`<text class="x-label" x="` + num(x(i)) + `" y="` + num(bottom+18) + `" text-anchor="` + anchor + `">` + esc(shortDay(days[i])) + "</text>\n")
	}
	b.WriteString("</g>\n")

	if len(series) == 0 || len(days) == 0 {
		b.WriteString(`<text x="` + num(left+plotW/2) + `" y="` + num(marginTop+plotH/2) + `" text-anchor="middle" fill="#777777">No data</text>` + "\n")
	}

	// One group per role: the line, and a point with a tooltip per day.
	for k, s := range series {
		colour, dash := style(k)
		b.WriteString(`<g data-role="` + esc(s.Role) + `" stroke="` + colour + `" fill="` + colour + `">` + "\n")
		n := min(len(s.N), len(s.Days), len(days))
		if n > 0 {
			b.WriteString(`<polyline fill="none" stroke-width="2" stroke-linejoin="round" stroke-linecap="round"`)
			if dash != "" {
				b.WriteString(` stroke-dasharray="` + dash + `"`)
			}
			b.WriteString(` points="`)
			for i := range n {
				if i > 0 {
					b.WriteByte(' ')
				}
				b.WriteString(num(x(i)) + "," + num(y(s.N[i])))
			}
			b.WriteString(`"/>` + "\n")
		}
		for i := range n {
			b.WriteString(`<circle cx="` + num(x(i)) + `" cy="` + num(y(s.N[i])) + `" r="3" stroke="#ffffff" stroke-width="1"><title>`)
			b.WriteString(esc(tooltip(s.Role, s.Days[i], s.N[i])))
			b.WriteString("</title></circle>\n")
		}
		b.WriteString("</g>\n")
	}

	// The legend, below the x labels.
	if len(legend) > 0 {
		b.WriteString(`<g class="legend" fill="#222222">` + "\n")
		for k, it := range legend {
			colour, dash := style(k)
			ly := bottom + 28 + float64(it.row)*legendRowH + legendRowH/2
			yv := num(ly)
			b.WriteString(`<line x1="` + num(it.x) + `" y1="` + yv + `" x2="` + num(it.x+16) + `" y2="` + yv + `" stroke="` + colour + `" stroke-width="2"`)
			if dash != "" {
				b.WriteString(` stroke-dasharray="` + dash + `"`)
			}
			b.WriteString("/>\n")
			b.WriteString(`<circle cx="` + num(it.x+8) + `" cy="` + yv + `" r="3" fill="` + colour + `"/>` + "\n")
			b.WriteString(`<text x="` + num(it.x+22) + `" y="` + yv + `" dy="0.32em">` + esc(it.label))
			if it.label != series[k].Role {
				b.WriteString("<title>" + esc(series[k].Role) + "</title>")
			}
			b.WriteString("</text>\n")
		}
		b.WriteString("</g>\n")
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

// niceMax is the least of 1, 2 and 5 times a power of ten that is at least
// n, and 1 when n <= 0.
func niceMax(n int64) int64 {
	for p := int64(1); ; p *= 10 {
		for _, f := range []int64{1, 2, 5} {
			if f*p >= n {
				return f * p
			}
		}
		if p > math.MaxInt64/10 {
			return n // no round number above n fits in an int64
		}
	}
}

// yTicks are the values of the gridlines from 0 to top, a result of
// niceMax: whole numbers only, two to six of them.
func yTicks(top int64) []int64 {
	var step int64
	switch {
	case top <= 2:
		step = 1
	case top == 5:
		step = 1
	default:
		p := int64(1)
		for p <= top/10 {
			p *= 10
		}
		switch top / p {
		case 1:
			step = top / 5
		case 2:
			step = top / 4
		case 5:
			step = top / 5
		default: // top is not round: niceMax overflowed
			step = max(top/4, 1)
		}
	}
	var ticks []int64
	for v := int64(0); v <= top-step; v += step {
		ticks = append(ticks, v)
	}
	return append(ticks, top)
}

// xLabels returns the indexes of the days to label on an axis of plotW
// units with n days and labels up to labelW wide: at most maxXLabels,
// evenly spaced, always the first and the last day.
func xLabels(n int, plotW, labelW float64) []int {
	switch n {
	case 0:
		return nil
	case 1:
		return []int{0}
	}
	// A label anchored at its start next to one centred needs 1.5 widths.
	slot := 1.5*labelW + 8
	most := min(maxXLabels, int(plotW/slot)+1, n)
	most = max(most, 2)
	step := (n - 1 + most - 2) / (most - 1) // ceil((n-1)/(most-1))
	dx := plotW / float64(n-1)
	var out []int
	for i := 0; i < n-1; i += step {
		// Leave room for the last label, which is anchored at its end.
		if i > 0 && float64(n-1-i)*dx < slot {
			break
		}
		out = append(out, i)
	}
	return append(out, n-1)
}

// legendItem is where one role's legend entry goes.
type legendItem struct {
	x     float64
	row   int
	label string
}

// maxLegendRunes is the most characters of a role name the legend shows;
// the full name is in a tooltip.
const maxLegendRunes = 32

// layoutLegend places one entry per series in rows from left to right.
func layoutLegend(series []Series, left, right, charW float64) []legendItem {
	items := make([]legendItem, len(series))
	x, row := left, 0
	for k, s := range series {
		label := s.Role
		if utf8.RuneCountInString(label) > maxLegendRunes {
			label = string([]rune(label)[:maxLegendRunes-1]) + "…"
		}
		w := 22 + float64(utf8.RuneCountInString(label))*charW + 16
		if x > left && x+w-16 > right {
			x, row = left, row+1
		}
		items[k] = legendItem{x: x, row: row, label: label}
		x += w
	}
	return items
}

// style is the colour and dash pattern of the k-th series.
func style(k int) (colour, dash string) {
	return palette[k%len(palette)], dashes[(k/len(palette))%len(dashes)]
}

// shortDay is a YYYY-MM-DD day as an axis label, "Nov 24"; other text is
// kept as it is.
func shortDay(d string) string {
	t, err := time.Parse(time.DateOnly, d)
	if err != nil {
		return d
	}
	return t.Format("Jan 2")
}

// tooltip is the text shown on a point of the chart.
func tooltip(role, day string, n int64) string {
	unit := "would-be denials"
	if n == 1 {
		unit = "would-be denial"
	}
	return role + " " + day + ": " + strconv.FormatInt(n, 10) + " " + unit
}

// describe is a summary of the chart for screen readers.
func describe(series []Series, days []string) string {
	if len(series) == 0 || len(days) == 0 {
		return "No data."
	}
	var b strings.Builder
	b.WriteString("Would-be denials per day from " + days[0] + " to " + days[len(days)-1] + ". ")
	for k, s := range series {
		if k > 0 {
			b.WriteString("; ")
		}
		var total int64
		for _, n := range s.N {
			total += n
		}
		b.WriteString(s.Role + ": " + strconv.FormatInt(total, 10) + " in total")
	}
	b.WriteString(".")
	return b.String()
}

// esc escapes s for XML text and attribute values.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}

// num formats a coordinate with at most one decimal.
func num(v float64) string {
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}

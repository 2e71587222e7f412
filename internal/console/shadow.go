package console

import (
	"net/http"
	"slices"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/shadow"
)

type shadowRow struct {
	Role string
	// Mode is the role's mode in the policy in force, "" when the policy
	// no longer has the role.
	Mode  string
	Total int64 // would-be denials in the chart's window
	Last  string
	// Calls is the calls decided in shadow mode in the last ReadyDays
	// days, the evidence for Ready.
	Calls int64
	Ready bool
}

type shadowData struct {
	Rows          []shadowRow
	ReadyDays     int
	ReadyMinCalls int
	ChartDays     int
	// Err is why the counts could not be read; the page then lists no
	// role, and does not claim that none is in shadow mode.
	Err string
}

// shadowSeries are the chart's series: every role in shadow mode now,
// and every role with would-be denials in the window (one switched to
// enforce since still shows its history).
func (c *Console) shadowSeries(r *http.Request) ([]shadow.Series, map[string]string, error) {
	now := c.opts.Now()
	from, to := shadow.WindowRange(now, c.opts.ChartDays)
	counts, err := c.d.Shadow.Counts(r.Context(), from, to)
	if err != nil {
		return nil, nil, err
	}
	modes := map[string]string{}
	var roles []string
	if set := c.d.Policies.Current(); set != nil {
		for _, role := range set.Roles() {
			modes[role.Name] = role.Mode.String()
			if role.Mode == policy.ModeShadow {
				roles = append(roles, role.Name)
			}
		}
	}
	for _, n := range counts {
		if !slices.Contains(roles, n.Role) {
			roles = append(roles, n.Role)
		}
	}
	slices.Sort(roles)
	return shadow.Window(counts, roles, now, c.opts.ChartDays), modes, nil
}

func (c *Console) shadowPage(w http.ResponseWriter, r *http.Request, s *session) {
	data := shadowData{ReadyDays: c.opts.ReadyDays, ReadyMinCalls: c.opts.ReadyMinCalls, ChartDays: c.opts.ChartDays}
	series, modes, err := c.shadowSeries(r)
	status := http.StatusOK
	if err != nil {
		c.opts.Logger.Error("console: reading shadow counts", "err", err)
		data.Err, status = err.Error(), http.StatusServiceUnavailable
	}
	for _, sr := range series {
		row := shadowRow{Role: sr.Role, Mode: modes[sr.Role], Calls: sr.CallsIn(c.opts.ReadyDays),
			Ready: sr.ReadyToEnforce(c.opts.ReadyDays, int64(c.opts.ReadyMinCalls))}
		for i, n := range sr.N {
			row.Total += n
			if n > 0 {
				row.Last = sr.Days[i]
			}
		}
		data.Rows = append(data.Rows, row)
	}
	c.render(w, status, "shadow", page{Title: "Shadow mode", Nav: "shadow", Session: s, CSRF: c.csrf(s), Data: data})
}

// shadowChart is the chart as an SVG image, rendered here so the page
// needs no charting script.
func (c *Console) shadowChart(w http.ResponseWriter, r *http.Request, _ *session) {
	series, _, err := c.shadowSeries(r)
	if err != nil {
		http.Error(w, "shadow counts could not be read: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	// The chart styles itself inline; it runs no script in any context.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.Write(shadow.SVG(series, &shadow.ChartOptions{Title: "Would-be denials per role per day (UTC)"}))
}

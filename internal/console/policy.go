package console

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/amgateway/amg/internal/policy"
)

type policyData struct {
	Version    string
	LastReload time.Time
	// Problems are every problem of the last reload, which failed when
	// there are any (the version above stays in force).
	Problems []string
	Roles    []roleRow
	Servers  []serverTools
}

type roleRow struct {
	Name, Mode, Source string
}

type serverTools struct {
	Name string
	// Connected is false when the gateway has no tool list from it.
	Connected bool
	Tools     []toolRow
}

type toolRow struct {
	Name  string
	Hints []string // the annotations the tool declared as true
	// Roles may call the tool; those in Approval only once a human agrees.
	Roles    []string
	Approval []string
}

func (c *Console) policyPage(w http.ResponseWriter, r *http.Request, s *session) {
	var d policyData
	st := c.d.Policies.Status()
	d.LastReload = st.At
	var problems policy.Problems
	switch {
	case errors.As(st.Err, &problems):
		for _, p := range problems {
			d.Problems = append(d.Problems, p.String())
		}
	case st.Err != nil:
		d.Problems = []string{st.Err.Error()}
	}
	set := c.d.Policies.Current()
	if set != nil {
		d.Version = set.VersionString()
		for _, role := range set.Roles() {
			d.Roles = append(d.Roles, roleRow{Name: role.Name, Mode: role.Mode.String(), Source: posString(role.Source)})
		}
	}
	for _, name := range c.d.Upstreams.Names() {
		tools, ok := c.d.Upstreams.Tools(name)
		st := serverTools{Name: name, Connected: ok}
		for _, t := range tools {
			st.Tools = append(st.Tools, toolAccess(set, name, t))
		}
		d.Servers = append(d.Servers, st)
	}
	c.render(w, http.StatusOK, "policy", page{Title: "Policy", Nav: "policy", Session: s, CSRF: c.csrf(s), Data: d})
}

// toolAccess says which roles of set may call server's tool t, and which
// of them only with approval: a grant that requires it, or a role's
// approval rule that matches the tool.
func toolAccess(set *policy.Set, server string, t policy.Tool) toolRow {
	row := toolRow{Name: t.Name}
	for _, h := range []policy.Hint{policy.ReadOnlyHint, policy.DestructiveHint, policy.IdempotentHint, policy.OpenWorldHint} {
		if t.Annotations.Effective(h) {
			row.Hints = append(row.Hints, h.String())
		}
	}
	if set == nil {
		return row
	}
	for _, role := range set.Roles() {
		sg := role.Servers[server]
		if sg == nil {
			continue
		}
		g := sg.Tools[t.Name]
		if g == nil {
			continue
		}
		needs := g.RequireApproval
		for _, rule := range role.Approvals {
			needs = needs || rule.Matches(server, t.Name, t.Annotations)
		}
		if needs {
			row.Approval = append(row.Approval, role.Name)
		} else {
			row.Roles = append(row.Roles, role.Name)
		}
	}
	return row
}

func posString(p policy.Pos) string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d", p.File, p.Line)
}

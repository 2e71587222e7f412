package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/policy"
)

func newPolicyDiffCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "diff OLD_DIR NEW_DIR",
		Short: "Show what changed between two policy directories, role by role",
		Long: `Compile the role files of OLD_DIR and NEW_DIR and print what the new policy
changes, role by role in name order: roles added or removed; mode
(enforce or shadow); per server, tools, prompts and resources granted or
no longer granted; for a tool or prompt granted in both, arguments added
or removed, constraints changed (old -> new), cel conditions,
require_approval and the grant's rate limits; then the role's approval
rules, rate limits and redaction rules. Only what the gateway enforces is
compared: comments, descriptions, file names and the order of keys are
not.

Problems in either directory are printed as "amg policy validate" prints
them. Like diff(1), exits 0 when there is no difference, 1 when there is,
and 2 on errors (a policy that does not compile included).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(2)(cmd, args); err != nil {
				return diffFailed(cmd, err)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			err := runPolicyDiff(cmd, args[0], args[1])
			var exit exitError
			if err != nil && !errors.As(err, &exit) {
				return diffFailed(cmd, err)
			}
			return err
		},
	}
	cmd.SetFlagErrorFunc(diffFailed)
	return cmd
}

// diffFailed reports err and returns exit status 2: exit 1 means "the
// policies differ", which scripts act on.
func diffFailed(cmd *cobra.Command, err error) error {
	fmt.Fprintln(cmd.ErrOrStderr(), "amg:", err)
	return exitError{code: 2}
}

func runPolicyDiff(cmd *cobra.Command, oldDir, newDir string) error {
	var sets [2]*policy.Set
	var problems policy.Problems
	for i, dir := range []string{oldDir, newDir} {
		set, err := policy.LoadDir(dir, nil)
		var ps policy.Problems
		if errors.As(err, &ps) {
			problems = append(problems, ps...)
			continue
		}
		if err != nil {
			return err
		}
		sets[i] = set
	}
	if len(problems) > 0 {
		printProblems(cmd.ErrOrStderr(), problems)
		return exitError{code: 2}
	}
	if !printPolicyDiff(cmd.OutOrStdout(), sets[0], sets[1]) {
		fmt.Fprintln(cmd.OutOrStdout(), "no differences")
		return nil
	}
	return exitError{code: 1}
}

// printPolicyDiff writes what changed from one set to the other and
// reports whether anything did.
func printPolicyDiff(w io.Writer, from, to *policy.Set) bool {
	names := map[string]bool{}
	for _, r := range from.Roles() {
		names[r.Name] = true
	}
	for _, r := range to.Roles() {
		names[r.Name] = true
	}
	changed := false
	for _, name := range slices.Sorted(maps.Keys(names)) {
		o, inOld := from.Role(name)
		n, inNew := to.Role(name)
		switch {
		case !inOld:
			fmt.Fprintf(w, "role %s: added\n", name)
		case !inNew:
			fmt.Fprintf(w, "role %s: removed\n", name)
		default:
			lines := diffRole(o, n)
			if len(lines) == 0 {
				continue
			}
			fmt.Fprintf(w, "role %s:\n", name)
			for _, l := range lines {
				fmt.Fprintf(w, "  %s\n", l)
			}
		}
		changed = true
	}
	return changed
}

func diffRole(o, n *policy.Role) []string {
	var d []string
	if o.Mode != n.Mode {
		d = append(d, fmt.Sprintf("mode: %s -> %s", o.Mode, n.Mode))
	}
	servers := map[string]bool{}
	for s := range o.Servers {
		servers[s] = true
	}
	for s := range n.Servers {
		servers[s] = true
	}
	for _, s := range slices.Sorted(maps.Keys(servers)) {
		og, ng := serverGrant(o, s), serverGrant(n, s)
		d = append(d, diffGrants(s+" tool ", og.Tools, ng.Tools)...)
		d = append(d, diffGrants(s+" prompt ", og.Prompts, ng.Prompts)...)
		for _, c := range diffSets(resourcePatterns(og.Resources), resourcePatterns(ng.Resources)) {
			state := "granted"
			if c.removed {
				state = "no longer granted"
			}
			d = append(d, fmt.Sprintf("%s resource %s: %s", s, c.item, state))
		}
	}
	d = append(d, diffApprovals(o.Approvals, n.Approvals)...)
	d = append(d, diffList("rate limit", rateLimits(o.RateLimits), rateLimits(n.RateLimits))...)
	d = append(d, diffList("redact", quoteAll(o.Redact), quoteAll(n.Redact))...)
	return d
}

// serverGrant returns the role's grants on server; a server the role does
// not name grants nothing, like one it names with no grants.
func serverGrant(r *policy.Role, server string) *policy.ServerGrant {
	if sg := r.Servers[server]; sg != nil {
		return sg
	}
	return &policy.ServerGrant{}
}

// diffGrants compares the tool (or prompt) grants of one server; label
// is "server tool " or "server prompt ".
func diffGrants(label string, from, to map[string]*policy.Grant) []string {
	names := map[string]bool{}
	for n := range from {
		names[n] = true
	}
	for n := range to {
		names[n] = true
	}
	var d []string
	for _, name := range slices.Sorted(maps.Keys(names)) {
		og, ng := from[name], to[name]
		switch {
		case og == nil:
			d = append(d, label+name+": granted")
		case ng == nil:
			d = append(d, label+name+": no longer granted")
		default:
			for _, c := range diffGrant(og, ng) {
				d = append(d, label+name+": "+c)
			}
		}
	}
	return d
}

func diffGrant(o, n *policy.Grant) []string {
	var d []string
	oa, na := map[string]string{}, map[string]string{}
	argumentTable(o.Args, oa)
	argumentTable(n.Args, na)
	paths := map[string]bool{}
	for p := range oa {
		paths[p] = true
	}
	for p := range na {
		paths[p] = true
	}
	for _, p := range slices.Sorted(maps.Keys(paths)) {
		ov, inOld := oa[p]
		nv, inNew := na[p]
		switch {
		case !inOld:
			d = append(d, fmt.Sprintf("argument %s added: %s", p, nv))
		case !inNew:
			d = append(d, fmt.Sprintf("argument %s removed: %s", p, ov))
		case ov != nv:
			d = append(d, fmt.Sprintf("argument %s: %s -> %s", p, ov, nv))
		}
	}
	if oc, nc := celSource(o.When), celSource(n.When); oc != nc {
		d = append(d, fmt.Sprintf("cel: %s -> %s", oc, nc))
	}
	if o.RequireApproval != n.RequireApproval {
		d = append(d, fmt.Sprintf("require_approval: %t -> %t", o.RequireApproval, n.RequireApproval))
	}
	d = append(d, diffList("rate limit", rateLimits(o.OwnRateLimits()), rateLimits(n.OwnRateLimits()))...)
	return d
}

// argumentTable describes every argument, nested field and array element
// f constrains, by its path.
func argumentTable(f *policy.Field, into map[string]string) {
	for _, name := range f.Names {
		c := f.Fields[name]
		into[c.Path] = describeField(c)
		argumentTable(c, into)
	}
	if f.Each != nil {
		into[f.Each.Path] = describeField(f.Each)
		argumentTable(f.Each, into)
	}
}

// describeField says what one value must be, its matchers in a fixed
// order so that the order they were written in does not show as a change.
// Its nested fields and elements are described under their own paths.
func describeField(f *policy.Field) string {
	var parts []string
	if f.Fields != nil {
		parts = append(parts, "object")
	}
	if f.Each != nil {
		parts = append(parts, "array")
	}
	ms := slices.Clone(f.Matchers)
	slices.SortStableFunc(ms, func(a, b policy.Matcher) int { return cmp.Compare(a.Op, b.Op) })
	for _, m := range ms {
		parts = append(parts, m.String())
	}
	switch {
	case len(parts) == 0 && !f.Required:
		return "any value"
	case len(parts) == 0:
		return "required"
	case !f.Required:
		parts = append(parts, "optional")
	}
	return strings.Join(parts, ", ")
}

// celSource quotes an expression as YAML would in single quotes, which
// CEL's own double-quoted strings read best in; one that spans lines is
// quoted with escapes, to stay on one line.
func celSource(e *policy.Expr) string {
	if e == nil {
		return "none"
	}
	src := strings.TrimSpace(e.Source)
	if strings.ContainsFunc(src, unicode.IsControl) {
		return strconv.Quote(src)
	}
	return "'" + strings.ReplaceAll(src, "'", "''") + "'"
}

// diffApprovals compares approval rules. The first rule that matches a
// call parks it, so besides rules added and removed, a new order of the
// rules both have is a change.
func diffApprovals(from, to []*policy.ApprovalRule) []string {
	o, n := make([]string, len(from)), make([]string, len(to))
	for i, a := range from {
		o[i] = describeApproval(a)
	}
	for i, a := range to {
		n[i] = describeApproval(a)
	}
	d := diffList("approval", o, n)
	// What is left of each list once the rules only one has are taken out.
	var keptOld, keptNew []string
	removed, added := multiset(o, n), multiset(n, o)
	for _, a := range o {
		if removed[a] > 0 {
			removed[a]--
			continue
		}
		keptOld = append(keptOld, a)
	}
	for _, a := range n {
		if added[a] > 0 {
			added[a]--
			continue
		}
		keptNew = append(keptNew, a)
	}
	if !slices.Equal(keptOld, keptNew) {
		d = append(d, fmt.Sprintf("approvals reordered: %s -> %s", strings.Join(keptOld, "; "), strings.Join(keptNew, "; ")))
	}
	return d
}

func describeApproval(a *policy.ApprovalRule) string {
	var parts []string
	if a.Tool != "" {
		parts = append(parts, "match "+strconv.Quote(a.Tool))
	}
	if a.Server != "" {
		parts = append(parts, "server "+strconv.Quote(a.Server))
	}
	if len(a.Annotations) > 0 {
		var hints []string
		for _, h := range slices.Sorted(maps.Keys(a.Annotations)) {
			hints = append(hints, fmt.Sprintf("%s: %t", h, a.Annotations[h]))
		}
		parts = append(parts, "annotations {"+strings.Join(hints, ", ")+"}")
	}
	if a.Timeout > 0 {
		parts = append(parts, "timeout "+formatDuration(a.Timeout))
	}
	return strings.Join(parts, ", ")
}

func rateLimits(ls []*policy.RateLimit) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = fmt.Sprintf("%d per %s, burst %d, key %s", l.Requests, formatDuration(l.Per), l.Burst, l.Key)
	}
	return out
}

// formatDuration drops the zero units time.Duration.String ends with:
// 1m, not 1m0s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func resourcePatterns(gs []*policy.ResourceGrant) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = strconv.Quote(g.Pattern)
	}
	return out
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strconv.Quote(s)
	}
	return out
}

// diffList reports the items only from has as "what removed: item" and
// those only to has as "what added: item".
func diffList(what string, from, to []string) []string {
	var d []string
	for _, c := range diffSets(from, to) {
		state := "added"
		if c.removed {
			state = "removed"
		}
		d = append(d, what+" "+state+": "+c.item)
	}
	return d
}

type setChange struct {
	item    string
	removed bool
}

// diffSets compares two lists as multisets: the items only from has
// (removed), sorted, then those only to has, sorted.
func diffSets(from, to []string) []setChange {
	var d []setChange
	for _, pass := range []struct {
		a, b    []string
		removed bool
	}{{from, to, true}, {to, from, false}} {
		extra := multiset(pass.a, pass.b)
		for _, item := range slices.Sorted(maps.Keys(extra)) {
			for range extra[item] {
				d = append(d, setChange{item, pass.removed})
			}
		}
	}
	return d
}

// multiset counts how many more times each item appears in a than in b,
// keeping only the items a has more of.
func multiset(a, b []string) map[string]int {
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for s, n := range m {
		if n <= 0 {
			delete(m, s)
		}
	}
	return m
}

package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMatcherString(t *testing.T) {
	set, err := compileOne(t, `
role: reader
rate_limits:
  - { requests: 60, per: 1m }
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          a: { eq: null }
          b: { ne: true }
          c: { in: [ws_b, 7, ws_a, ws_b, 1.50] }
          d: { not_in: ["x\"y"] }
          e: { lt: 1_000, lte: 0x10, gt: -2.5e3, gte: 0 }
          f: { pattern: '\d+', prefix: p, suffix: s }
          g: { path_within: /srv/../srv/docs/, min_len: 1, max_len: 9 }
        rate_limits:
          - { requests: 5, per: 1s }
      - name: search
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	role, _ := set.Role("reader")
	grant := role.Servers["notion"].Tools["get_pages"]
	got := map[string][]string{}
	for _, name := range grant.Args.Names {
		for _, m := range grant.Args.Fields[name].Matchers {
			got[name] = append(got[name], m.String())
		}
	}
	want := map[string][]string{
		"a": {"eq null"},
		"b": {"ne true"},
		"c": {`in ["ws_a", "ws_b", 1.50, 7]`},
		"d": {`not_in ["x\"y"]`},
		"e": {"lt 1000", "lte 16", "gt -2.5e3", "gte 0"},
		"f": {`pattern "\\d+"`, `prefix "p"`, `suffix "s"`},
		"g": {`path_within "/srv/docs"`, "min_len 1", "max_len 9"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("matchers (-want +got):\n%s", diff)
	}

	ids := func(ls []*RateLimit) []string {
		var out []string
		for _, l := range ls {
			out = append(out, l.ID)
		}
		return out
	}
	if diff := cmp.Diff([]string{"reader/notion/get_pages/rate_limits[0]"}, ids(grant.OwnRateLimits())); diff != "" {
		t.Errorf("own rate limits of get_pages (-want +got):\n%s", diff)
	}
	if own := role.Servers["notion"].Tools["search"].OwnRateLimits(); len(own) != 0 {
		t.Errorf("search has no limits of its own, got %v", ids(own))
	}
}

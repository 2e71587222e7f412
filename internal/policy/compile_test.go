package policy

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// compileOne compiles a single role file named role.yaml.
func compileOne(t *testing.T, src string, opts *Options) (*Set, error) {
	t.Helper()
	return Compile([]File{{Name: "role.yaml", Data: []byte(strings.TrimLeft(src, "\n"))}}, opts)
}

func problemsOf(t *testing.T, err error) string {
	t.Helper()
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %v is not Problems", err)
	}
	return ps.Error()
}

func TestExamplePoliciesCompile(t *testing.T) {
	set, err := LoadDir("../../policies", &Options{Servers: []string{"notion"}})
	if err != nil {
		t.Fatalf("example policies do not compile:\n%v", err)
	}
	var names []string
	for _, r := range set.Roles() {
		names = append(names, r.Name)
	}
	if diff := cmp.Diff([]string{"notion_editor", "notion_read", "support_shadow"}, names); diff != "" {
		t.Errorf("roles (-want +got):\n%s", diff)
	}
}

func TestCompileStructure(t *testing.T) {
	set, err := compileOne(t, `
role: reader
mode: shadow
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { in: [ws_a, ws_b, 7] }
          limit: { lte: 100, optional: true }
          filter.owner: { eq: me }
          filter.kind: {}
          tags: { each: { prefix: "t-" }, max_len: 3 }
        rate_limits:
          - { requests: 5, per: 1s, key: role }
    prompts:
      - name: summarize
    resources: ["notion://pages/*"]
approvals:
  - match: "delete*"
    server: notion
    require: human
    timeout: 10m
  - annotations: { destructiveHint: true, openWorldHint: false }
    require: human
rate_limits:
  - { requests: 60, per: 1m }
redact: ["*secret*"]
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := set.Role("reader")
	if !ok {
		t.Fatal("role reader missing")
	}
	if r.Mode != ModeShadow {
		t.Errorf("mode = %v, want shadow", r.Mode)
	}
	g := r.Servers["notion"].Tools["get_pages"]
	if g == nil {
		t.Fatal("grant get_pages missing")
	}
	if g.ID != "reader/notion/get_pages" {
		t.Errorf("grant ID = %q", g.ID)
	}
	if diff := cmp.Diff([]string{"filter", "limit", "tags", "workspace_id"}, g.Args.Names); diff != "" {
		t.Errorf("argument names (-want +got):\n%s", diff)
	}
	filter := g.Args.Fields["filter"]
	if diff := cmp.Diff([]string{"kind", "owner"}, filter.Names); diff != "" {
		t.Errorf("filter fields (-want +got):\n%s", diff)
	}
	required := map[string]bool{}
	for _, name := range g.Args.Names {
		required[name] = g.Args.Fields[name].Required
	}
	wantRequired := map[string]bool{"filter": true, "limit": false, "tags": true, "workspace_id": true}
	if diff := cmp.Diff(wantRequired, required); diff != "" {
		t.Errorf("required (-want +got):\n%s", diff)
	}
	if filter.Fields["kind"].Required {
		t.Error("filter.kind: {} must be optional")
	}
	tags := g.Args.Fields["tags"]
	if tags.Each == nil || tags.Each.Path != "tags[]" || tags.Each.Matchers[0].Op != OpPrefix {
		t.Errorf("tags.each = %+v", tags.Each)
	}
	ws := g.Args.Fields["workspace_id"].Matchers[0]
	if _, ok := ws.Strings["ws_b"]; !ok || len(ws.Values) != 3 || !ws.Values[2].IsInt || ws.Values[2].Int != 7 {
		t.Errorf("in matcher = %+v", ws)
	}
	var limits []string
	for _, l := range g.RateLimits {
		limits = append(limits, l.ID+" "+l.Key.String())
	}
	if diff := cmp.Diff([]string{"reader/rate_limits[0] agent", "reader/notion/get_pages/rate_limits[0] role"}, limits); diff != "" {
		t.Errorf("rate limits (-want +got):\n%s", diff)
	}
	if l := r.RateLimits[0]; l.Burst != 60 || l.Per != time.Minute {
		t.Errorf("role rate limit = %+v, want burst defaulting to requests", l)
	}
	if a := r.Approvals[0]; a.ID != "reader/approvals[0]" || a.Tool != "delete*" || a.Server != "notion" || a.Timeout != 10*time.Minute {
		t.Errorf("approval 0 = %+v", a)
	}
	if diff := cmp.Diff(map[Hint]bool{DestructiveHint: true, OpenWorldHint: false}, r.Approvals[1].Annotations); diff != "" {
		t.Errorf("approval annotations (-want +got):\n%s", diff)
	}
	if p := r.Servers["notion"].Prompts["summarize"]; p == nil || len(p.Args.Fields) != 0 {
		t.Errorf("prompt grant = %+v", p)
	}
	if res := r.Servers["notion"].Resources[0]; !res.Matches("notion://pages/p1") || res.Matches("notion://pages/p1/secret") {
		t.Errorf("resource glob %q matched wrongly", res.Pattern)
	}
	if diff := cmp.Diff([]string{"*secret*"}, r.Redact); diff != "" {
		t.Errorf("redact (-want +got):\n%s", diff)
	}
}

// A limit's State is where it is written and what it allows, never its
// place in its list: a limiter keys its budget by it, so a policy change
// must move no budget from one limit to another.
func TestRateLimitStateIsWhereAndWhat(t *testing.T) {
	set, err := compileOne(t, `
role: reader
servers:
  notion:
    tools:
      - name: search
        rate_limits:
          - { requests: 2, per: 1m }
          - { requests: 2, per: 1m, burst: 2 }
          - { requests: 2, per: 1h }
rate_limits:
  - { requests: 2, per: 1m, key: role }
  - { requests: 2, per: 1m }
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := set.Roles()[0].Servers["notion"].Tools["search"]
	var states []string
	for _, l := range g.RateLimits {
		states = append(states, l.State)
	}
	want := []string{
		"reader/rate_limit(2/1m0s,burst=2,key=role)",
		"reader/rate_limit(2/1m0s,burst=2,key=agent)",
		// Identical limits in one list each keep a budget.
		"reader/notion/search/rate_limit(2/1m0s,burst=2,key=agent)",
		"reader/notion/search/rate_limit(2/1m0s,burst=2,key=agent)#1",
		"reader/notion/search/rate_limit(2/1h0m0s,burst=2,key=agent)",
	}
	if diff := cmp.Diff(want, states); diff != "" {
		t.Errorf("states (-want +got):\n%s", diff)
	}
}

func TestCompileProblems(t *testing.T) {
	tests := []struct {
		name string
		src  string
		opts *Options
		want string
	}{{
		name: "unknown matcher",
		src: `
role: r
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          limit: { lower_than: 5 }
`,
		want: `role.yaml:7:20: servers.notion.tools[0].constraints.limit.lower_than: unknown field "lower_than" (expected one of: eq, ne, in, not_in, lt, lte, gt, gte, pattern, prefix, suffix, path_within, min_len, max_len, each, fields, optional)`,
	}, {
		name: "regex does not compile",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          query: { pattern: "[a-z" }
`,
		want: "role.yaml:7:29: servers.notion.tools[0].constraints.query.pattern: invalid pattern: missing closing ]: `[a-z`",
	}, {
		name: "lte on a string",
		src: `
role: r
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          limit: { lte: "100" }
`,
		want: `role.yaml:7:25: servers.notion.tools[0].constraints.limit.lte: lte needs a number, got a string`,
	}, {
		name: "matchers that need different types",
		src: `
role: r
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          limit: { pattern: "[0-9]+", gte: 1 }
`,
		want: `role.yaml:7:39: servers.notion.tools[0].constraints.limit.gte: gte needs a number, but the other matchers need a string`,
	}, {
		// Alone it is no regular expression; wrapped in ^(?:…)$ it would
		// be one that matches anything starting with ws_a or ending with
		// ws_b.
		name: "pattern that only compiles anchored",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          workspace: { pattern: "ws_a)|(ws_b" }
`,
		want: "role.yaml:7:33: servers.notion.tools[0].constraints.workspace.pattern: invalid pattern: unexpected ): `ws_a)|(ws_b`",
	}, {
		name: "numbers that compare with nothing",
		src: `
role: r
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          limit: { lte: .nan }
          offset: { gt: -.inf }
          cursor: { in: [1, .inf] }
          page: { ne: .NaN }
          score: { gte: 1e-400 }
`,
		want: "role.yaml:7:25: servers.notion.tools[0].constraints.limit.lte: must be a finite number, got .nan\n" +
			"role.yaml:8:25: servers.notion.tools[0].constraints.offset.gt: must be a finite number, got -.inf\n" +
			"role.yaml:9:29: servers.notion.tools[0].constraints.cursor.in[1]: must be a finite number, got .inf\n" +
			"role.yaml:10:23: servers.notion.tools[0].constraints.page.ne: must be a finite number, got .NaN\n" +
			"role.yaml:11:25: servers.notion.tools[0].constraints.score.gte: 1e-400 is too close to 0 for a float64: it would round to 0",
	}, {
		name: "dotted path into a value that cannot be an object",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          filter: { eq: "x" }
          filter.owner: { eq: me }
          sort.by: {}
          sort: { in: [a, b] }
          tags: { each: { prefix: t } }
          tags.first.name: {}
`,
		want: "role.yaml:8:11: servers.notion.tools[0].constraints.filter.owner: \"filter.owner\" needs \"filter\" to be an object, but its matchers need a string\n" +
			"role.yaml:10:19: servers.notion.tools[0].constraints.sort.in: in needs a string, but the other matchers need an object\n" +
			"role.yaml:12:11: servers.notion.tools[0].constraints.tags.first.name: \"tags.first.name\" needs \"tags\" to be an object, but its matchers need an array",
	}, {
		// ne and not_in need a scalar; a length without each, a string.
		name: "matchers of scalars beside each, fields or a nested path",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          tags: { ne: x, each: {} }
          filter: { not_in: [a, 1], fields: {} }
          query: { max_len: 10 }
          query.text: {}
`,
		want: "role.yaml:7:26: servers.notion.tools[0].constraints.tags.each: each needs an array, but the other matchers need a string or a number or a boolean or null\n" +
			"role.yaml:8:37: servers.notion.tools[0].constraints.filter.fields: fields needs an object, but the other matchers need a string or a number or a boolean or null\n" +
			"role.yaml:10:11: servers.notion.tools[0].constraints.query.text: \"query.text\" needs \"query\" to be an object, but its matchers need a string",
	}, {
		// YAML reads 010 as octal, eight, but 019 as nineteen.
		name: "numbers with a leading zero",
		src: `
role: r
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          code: { in: [010, 019, 0o10, 10] }
          limit: { lte: -0_10, ne: 00 }
          query: { max_len: 0200 }
rate_limits:
  - { requests: 010, per: 1m }
`,
		want: "role.yaml:7:24: servers.notion.tools[0].constraints.code.in[0]: ambiguous leading zero: write 10, or 0o10 for octal\n" +
			"role.yaml:7:29: servers.notion.tools[0].constraints.code.in[1]: ambiguous leading zero: write 19\n" +
			"role.yaml:8:25: servers.notion.tools[0].constraints.limit.lte: ambiguous leading zero: write -10, or -0o10 for octal\n" +
			"role.yaml:8:36: servers.notion.tools[0].constraints.limit.ne: ambiguous leading zero: write 0\n" +
			"role.yaml:9:29: servers.notion.tools[0].constraints.query.max_len: ambiguous leading zero: write 200, or 0o200 for octal\n" +
			"role.yaml:11:17: rate_limits[0].requests: ambiguous leading zero: write 10, or 0o10 for octal",
	}, {
		// Only a single tools/call can be parked: every prompts/get
		// would be refused.
		name: "approval on a prompt",
		src: `
role: r
servers:
  notion:
    tools:
      - { name: publish, require_approval: true }
    prompts:
      - { name: summarize, require_approval: true }
      - { name: draft, require_approval: false }
`,
		want: `role.yaml:7:46: servers.notion.prompts[0].require_approval: a prompt cannot wait for approval: the gateway parks only tool calls`,
	}, {
		name: "second YAML document",
		src: `
role: r
---
role: s
`,
		want: `role.yaml:2:1: a role file holds one YAML document, but a second starts here`,
	}, {
		name: "second YAML document that does not parse",
		src: `
role: r
---
servers: [
`,
		want: `role.yaml:3:1: invalid YAML: did not find expected node content`,
	}, {
		name: "unknown server",
		opts: &Options{Servers: []string{"github"}},
		src: `
role: r
servers:
  notion:
    tools:
      - name: get_pages
`,
		want: `role.yaml:3:3: servers.notion: unknown server "notion"`,
	}, {
		name: "server name with separator",
		src: `
role: r
servers:
  no__tion: {}
`,
		want: `role.yaml:3:3: servers.no__tion: invalid server name "no__tion": "__" separates server from tool and cannot appear in a server name`,
	}, {
		name: "missing role and bad mode",
		src: `
mode: audit
servers: {}
`,
		want: "role.yaml:1:1: missing required field \"role\"\n" +
			`role.yaml:1:7: mode: must be enforce or shadow, got "audit"`,
	}, {
		name: "duplicate YAML key",
		src: `
role: r
role: s
`,
		want: `role.yaml:2:1: role: duplicate key (first at line 1)`,
	}, {
		name: "length bounds that cannot both hold",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          query: { min_len: 10, max_len: 2 }
`,
		want: `role.yaml:7:18: servers.notion.tools[0].constraints.query: min_len 10 is greater than max_len 2: nothing can match`,
	}, {
		name: "empty in list and negative length",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          workspace_id: { in: [] }
          query: { max_len: -1 }
`,
		want: "role.yaml:7:31: servers.notion.tools[0].constraints.workspace_id.in: in needs a non-empty list of values, got a list\n" +
			"role.yaml:8:29: servers.notion.tools[0].constraints.query.max_len: must be at least 0, got -1",
	}, {
		name: "argument constrained twice",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          filter.owner: { eq: me }
          filter: { fields: { owner: { eq: you } } }
`,
		want: `role.yaml:8:31: servers.notion.tools[0].constraints.filter.fields.owner: argument "owner" is constrained twice (first at line 7)`,
	}, {
		name: "bad rate limits",
		src: `
role: r
rate_limits:
  - { requests: 0, per: 1m }
  - { requests: 5, per: soon }
  - { requests: 5, key: tenant }
  - { requests: 2000, per: 1us }
  - { requests: 1000001, per: 1s }
  - { requests: 1000000, per: 1s }
  - { requests: 1, per: 8760h, burst: 1000 }
  - { requests: 1, per: 8760h, burst: 290 }
`,
		want: "role.yaml:3:17: rate_limits[0].requests: must be at least 1, got 0\n" +
			"role.yaml:4:25: rate_limits[1].per: must be a positive duration such as 30s, 1m or 1h30m, got \"soon\"\n" +
			"role.yaml:5:5: rate_limits[2]: missing required field \"per\"\n" +
			"role.yaml:5:25: rate_limits[2].key: must be agent or role, got \"tenant\"\n" +
			"role.yaml:6:5: rate_limits[3]: 2000 requests per 1µs is more than one per microsecond: no gateway serves that rate, and the interval between requests, kept in whole nanoseconds, could be off by more than 0.1%\n" +
			"role.yaml:7:5: rate_limits[4]: 1000001 requests per 1s is more than one per microsecond: no gateway serves that rate, and the interval between requests, kept in whole nanoseconds, could be off by more than 0.1%\n" +
			"role.yaml:9:5: rate_limits[6]: a burst of 1000 at one per 8760h0m0s is too long a window: limiters count it in a time.Duration, at most about 292 years",
	}, {
		name: "bad approval rules",
		src: `
role: r
approvals:
  - match: "delete*"
    require: robot
  - require: human
  - match: "[a-"
    require: human
  - annotations: { dangerousHint: true }
    require: human
`,
		want: "role.yaml:4:14: approvals[0].require: must be human, got \"robot\"\n" +
			"role.yaml:5:5: approvals[1]: needs match or annotations: a rule without either would park every call\n" +
			"role.yaml:6:12: approvals[2].match: invalid glob \"[a-\"\n" +
			"role.yaml:8:20: approvals[3].annotations.dangerousHint: unknown field \"dangerousHint\" (expected one of: destructiveHint, idempotentHint, openWorldHint, readOnlyHint)",
	}, {
		name: "cel that does not compile",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          query: {}
        cel: 'args.query.startsWith("a") && nope'
`,
		want: `role.yaml:8:45: servers.notion.tools[0].cel: cel: undeclared reference to 'nope'`,
	}, {
		name: "cel in a block that does not compile",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          query: {}
        cel: |
          args.query.startsWith("a") &&
            nope
      - name: get_page
        constraints:
          id: {}
        cel: >-
          args.id == "a" ||
          nada
`,
		want: "role.yaml:10:13: servers.notion.tools[0].cel: cel: undeclared reference to 'nope'\n" +
			"role.yaml:14:14: servers.notion.tools[1].cel: cel: undeclared reference to 'nada'",
	}, {
		name: "cel that is not a condition",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        cel: size(args)
`,
		want: `role.yaml:6:14: servers.notion.tools[0].cel: cel expression must return bool, got int`,
	}, {
		name: "invalid YAML",
		src: `
role: r
servers: [
`,
		want: `role.yaml:2:1: invalid YAML: did not find expected node content`,
	}, {
		// The parser names no line for these: the compiler finds it.
		name: "control character",
		src:  "role: r\nmode: \"enforce\x01\"\n",
		want: `role.yaml:2:15: invalid YAML: control characters are not allowed`,
	}, {
		name: "invalid UTF-8",
		src:  "role: r\n\xff: x\n",
		want: `role.yaml:2:1: invalid YAML: invalid leading UTF-8 octet`,
	}, {
		name: "unknown anchor",
		src:  "role: r\ndescription: \"*x\"\nservers: *x\n",
		want: `role.yaml:3:10: invalid YAML: unknown anchor 'x' referenced`,
	}, {
		name: "argument paths with an empty segment",
		src: `
role: r
servers:
  notion:
    tools:
      - name: search
        constraints:
          filter..owner: {}
          .owner: {}
          filter.: {}
`,
		want: "role.yaml:7:11: servers.notion.tools[0].constraints.filter..owner: invalid argument path \"filter..owner\": empty segment\n" +
			"role.yaml:8:11: servers.notion.tools[0].constraints..owner: invalid argument path \".owner\": empty segment\n" +
			"role.yaml:9:11: servers.notion.tools[0].constraints.filter.: invalid argument path \"filter.\": empty segment",
	}, {
		name: "grant problems",
		src: `
role: r
servers:
  notion:
    tools:
      - constraints: {}
      - name: "../etc"
      - name: search
      - name: search
      - search
`,
		want: "role.yaml:5:9: servers.notion.tools[0]: missing required field \"name\"\n" +
			"role.yaml:6:15: servers.notion.tools[1].name: invalid name \"../etc\": names are 1 to 128 characters of A-Z a-z 0-9 _ . -\n" +
			"role.yaml:8:9: servers.notion.tools[3]: duplicate grant for \"search\" (first at line 7)\n" +
			"role.yaml:9:9: servers.notion.tools[4]: must be a mapping, got a string",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, err := compileOne(t, tt.src, tt.opts)
			if err == nil {
				t.Fatalf("compiled, want problems; set = %v", set)
			}
			if diff := cmp.Diff(tt.want, problemsOf(t, err)); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

// A CEL error is reported where it stands in the role file, however YAML
// wrote the expression: escapes, quotes written twice and folded line
// breaks are walked back to the source, and a literal block's lines are
// the file's behind its indentation.
func TestCELErrorAtItsPlaceInTheFile(t *testing.T) {
	const head = "role: r\nservers:\n  s:\n    tools:\n      - name: t\n        constraints: { q: {} }\n"
	tests := []struct{ name, cel, want string }{
		{"escapes in a double-quoted scalar", `        cel: "args.q == \"\\u00e9\" && nope"`, "7:40"},
		{"a quote written twice", `        cel: 'args.q == ''x'' && nope'`, "7:34"},
		{"a rune of more than one byte", `        cel: args.q == 'é' && nope`, "7:31"},
		{"a quoted scalar over two lines", "        cel: \"args.q == 'x' &&\n          nope\"", "8:11"},
		{"a plain scalar over two lines", "        cel: args.q == 'x' &&\n          nope", "8:11"},
		{"an escaped line break", "        cel: \"args.q == 'x' \\\n          && nope\"", "8:14"},
		{"a blank line in a quoted scalar", "        cel: 'args.q == ''x''\n\n          && nope'", "9:14"},
		{"a literal block starting with a blank line", "        cel: |\n\n          args.q == 'x' && nope", "9:28"},
		{"an indentation indicator", "        cel: |2\n            args.q == 'x' && nope", "8:30"},
		{"CRLF line breaks", "        cel: |\r\n          args.q == 'x' && nope\r\n", "8:28"},
		{"a tag, at the scalar's start", `        cel: !!str "args.q == 'x' && nope"`, "7:14"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := compileOne(t, head+tt.cel+"\n", nil)
			if err == nil {
				t.Fatal("compiled, want a problem")
			}
			want := "role.yaml:" + tt.want + ": servers.s.tools[0].cel: cel: undeclared reference to 'nope'"
			if diff := cmp.Diff(want, problemsOf(t, err)); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

// Document markers around the one document are fine.
func TestOneDocumentWithMarkers(t *testing.T) {
	for _, src := range []string{"---\nrole: r\n", "role: r\n...\n", "# a role\n---\nrole: r\n...\n"} {
		if _, err := compileOne(t, src, nil); err != nil {
			t.Errorf("%q: %v", src, err)
		}
	}
}

// A pattern at RE2's nesting limit is valid alone but not once anchored,
// which adds a level: a problem, not a panic.
func TestPatternAtNestingLimit(t *testing.T) {
	deep := strings.Repeat("(", 999) + "a" + strings.Repeat(")", 999)
	src := "role: r\nservers:\n  s:\n    tools:\n      - name: t\n        constraints:\n          v: { pattern: \"" + deep + "\" }\n"
	_, err := compileOne(t, src, nil)
	if err == nil {
		t.Fatal("compiled, want a problem")
	}
	if got := problemsOf(t, err); !strings.Contains(got, "servers.s.tools[0].constraints.v.pattern: invalid pattern: expression nests too deeply") {
		t.Errorf("problems = %.200s", got)
	}
}

func TestCompileReportsEveryProblemAcrossFiles(t *testing.T) {
	files := []File{
		{Name: "a.yaml", Data: []byte("role: dup\nmode: shadow\n")},
		{Name: "b.yaml", Data: []byte("role: dup\nservers:\n  notion:\n    tools:\n      - name: x\n        constraints:\n          n: { lt: true }\n")},
		{Name: "c.yaml", Data: []byte("role: ok\nextra: 1\n")},
	}
	_, err := Compile(files, nil)
	want := "b.yaml:1:7: role: duplicate role \"dup\" (also defined at a.yaml:1:7)\n" +
		"b.yaml:7:20: servers.notion.tools[0].constraints.n.lt: lt needs a number, got a boolean\n" +
		"c.yaml:2:1: extra: unknown field \"extra\" (expected one of: role, description, mode, servers, approvals, rate_limits, redact)"
	if err == nil {
		t.Fatal("compiled, want problems")
	}
	if diff := cmp.Diff(want, problemsOf(t, err)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

var notionCatalog = StaticCatalog{
	"notion": {
		{Name: "get_pages", InputSchema: json.RawMessage(`{"type":"object","properties":{
			"workspace_id":{"type":"string"},"limit":{"type":"integer"},
			"filter":{"type":"object","properties":{"owner":{"type":"string"}}},
			"tags":{"type":"array","items":{"type":"string"}}}}`)},
		{Name: "delete_page", InputSchema: json.RawMessage(`{"type":"object","properties":{"page_id":{"type":"string"}}}`)},
	},
}

func TestCompileAgainstCatalog(t *testing.T) {
	src := `
role: r
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { lte: 3 }
          limit: { max_len: 4 }
          filter.owner: { eq: me }
          filter.team: {}
          tags: { each: { gt: 1 } }
          page: {}
      - name: get_page
  github:
    tools:
      - name: list_repos
`
	_, err := compileOne(t, src, &Options{Catalog: notionCatalog})
	want := "role.yaml:7:11: servers.notion.tools[0].constraints.workspace_id: lte needs a number, but the input schema of notion__get_pages says \"workspace_id\" is a string\n" +
		"role.yaml:8:11: servers.notion.tools[0].constraints.limit: max_len needs a string, but the input schema of notion__get_pages says \"limit\" is a number\n" +
		"role.yaml:10:11: servers.notion.tools[0].constraints.filter.team: argument \"filter.team\" is not in the input schema of notion__get_pages\n" +
		"role.yaml:11:19: servers.notion.tools[0].constraints.tags[]: gt needs a number, but the input schema of notion__get_pages says \"tags[]\" is a string\n" +
		"role.yaml:12:11: servers.notion.tools[0].constraints.page: argument \"page\" is not in the input schema of notion__get_pages\n" +
		"role.yaml:13:9: servers.notion.tools[1]: server \"notion\" has no tool \"get_page\"\n" +
		"role.yaml:14:3: servers.github: unknown server \"github\""
	if err == nil {
		t.Fatal("compiled, want problems")
	}
	if diff := cmp.Diff(want, problemsOf(t, err)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}

	good := `
role: r
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { eq: ws }
          limit: { lte: 10 }
          filter.owner: { pattern: "[a-z]+" }
          tags: { each: { prefix: "t" }, max_len: 5 }
`
	if _, err := compileOne(t, good, &Options{Catalog: notionCatalog}); err != nil {
		t.Errorf("policy that fits the catalogue: %v", err)
	}
}

func TestVersion(t *testing.T) {
	a := []File{{Name: "dir/a.yaml", Data: []byte("role: a\n")}, {Name: "dir/b.yaml", Data: []byte("role: b\n")}}
	reordered := []File{a[1], a[0]}
	moved := []File{{Name: "other/a.yaml", Data: a[0].Data}, {Name: "other/b.yaml", Data: a[1].Data}}
	changed := []File{a[0], {Name: "dir/b.yaml", Data: []byte("role: b\nmode: shadow\n")}}
	// Moving bytes between file name and content must change the hash.
	shifted := []File{{Name: "dir/a.yaml", Data: []byte("role: a\n")}, {Name: "dir/b.yam", Data: []byte("role: b\n")}}

	version := func(files []File, seq uint64) Version {
		t.Helper()
		set, err := Compile(files, &Options{Sequence: seq})
		if err != nil {
			t.Fatal(err)
		}
		return set.Version()
	}
	base := version(a, 0)
	if base.Seq != 1 || len(base.Hash) != 64 {
		t.Fatalf("version = %+v, want sequence 1 and a SHA-256 hash", base)
	}
	if got := version(reordered, 0); got != base {
		t.Errorf("file order changed the version: %v != %v", got, base)
	}
	if got := version(moved, 0); got != base {
		t.Errorf("directory changed the version: %v != %v", got, base)
	}
	if got := version(changed, 0); got.Hash == base.Hash {
		t.Error("content change kept the hash")
	}
	if got := version(shifted, 0); got.Hash == base.Hash {
		t.Error("renamed file kept the hash")
	}
	if got := version(a, 7); got.Seq != 7 || got.Hash != base.Hash || got.String() != "7-"+base.Hash[:12] {
		t.Errorf("version with sequence 7 = %v", got)
	}
	if set, _ := Compile(a, &Options{Sequence: 7}); set.VersionString() != "7-"+base.Hash[:12] {
		t.Errorf("VersionString = %q", set.VersionString())
	}
}

func TestLoadDirWithoutRoleFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadDir(dir, nil)
	if want := dir + ": no role files (*.yaml, *.yml)"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
	if _, err := LoadDir(dir+"/missing", nil); err == nil || !strings.Contains(err.Error(), "read policy directory") {
		t.Errorf("missing directory: err = %v", err)
	}
}

func TestAnnotationsEffective(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name string
		ann  *Annotations
		want map[Hint]bool
	}{
		{"none declared", nil, map[Hint]bool{ReadOnlyHint: false, DestructiveHint: true, IdempotentHint: false, OpenWorldHint: true}},
		{"read-only is never destructive", &Annotations{ReadOnly: &yes, Destructive: &yes}, map[Hint]bool{ReadOnlyHint: true, DestructiveHint: false, IdempotentHint: false, OpenWorldHint: true}},
		{"declared", &Annotations{Destructive: &no, Idempotent: &yes, OpenWorld: &no}, map[Hint]bool{ReadOnlyHint: false, DestructiveHint: false, IdempotentHint: true, OpenWorldHint: false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[Hint]bool{}
			for h := range tt.want {
				got[h] = tt.ann.Effective(h)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("effective hints (-want +got):\n%s", diff)
			}
		})
	}
}

// The policy example in the README must compile as it stands.
func TestREADMEExampleCompiles(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## Policy format")
	if !ok {
		t.Fatal("README has no policy format section")
	}
	_, block, ok := strings.Cut(rest, "```yaml\n")
	if !ok {
		t.Fatal("policy format section has no yaml block")
	}
	block, _, _ = strings.Cut(block, "```")
	if _, err := Compile([]File{{Name: "README.md", Data: []byte(block)}}, &Options{Servers: []string{"notion"}}); err != nil {
		t.Errorf("README example does not compile:\n%v", err)
	}
}

// Where a pattern and a URI hold no '?', '#', '[' or '\', a resource
// glob matches as path.Match does: '*' within one segment.
func TestURIGlobIsPathMatchWithinSegments(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	gen := func(alphabet string, n int) string {
		b := make([]byte, rng.IntN(n))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	for range 200000 {
		pattern, uri := gen("ab/*", 7), gen("ab/", 7)
		want, _ := path.Match(pattern, uri)
		if got := uriGlob(pattern, uri); got != want {
			t.Fatalf("uriGlob(%q, %q) = %v, path.Match %v", pattern, uri, got, want)
		}
	}
}

// FuzzURIGlob holds uriGlob to a regular expression that reads a resource
// pattern as its doc says: '*' any run of characters but '/', '?' and '#',
// every other character itself. Patterns come from YAML and URIs from
// JSON, so both are valid UTF-8.
func FuzzURIGlob(f *testing.F) {
	for _, s := range [][2]string{
		{"file:///docs/*.md", "file:///docs/a.md"}, {"file:///docs/*.md", "file:///docs/key#.md"},
		{"notion://ws_abc123/pages/*", "notion://ws_abc123/pages/p1?x=/"}, {"*a*b", "xaab"},
		{"db://*/t*", "db://h/tab"}, {"*", ""}, {"a*b*c", "aXbYbZc"}, {"s://*x*y", "s://xxy"},
		{"**", "a/b"}, {"x*", "x?y"}, {"a?[b]*", "a?[b]é"}, {`a\*`, `a\x`},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, uri string) {
		if !utf8.ValidString(pattern) || !utf8.ValidString(uri) {
			return
		}
		parts := strings.Split(pattern, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		want := regexp.MustCompile(`^(?s:` + strings.Join(parts, `[^/?#]*`) + `)$`).MatchString(uri)
		if got := uriGlob(pattern, uri); got != want {
			t.Fatalf("uriGlob(%q, %q) = %v, want %v", pattern, uri, got, want)
		}
	})
}

// FuzzCompile checks that Compile never panics on a role file, and that it
// returns either a set or the problems it found, each naming the file.
func FuzzCompile(f *testing.F) {
	examples, err := filepath.Glob("../../policies/*.yaml")
	if err != nil || len(examples) == 0 {
		f.Fatalf("no example policies: %v", err)
	}
	for _, name := range examples {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("role: r\nservers:\n  s:\n    tools:\n      - name: t\n        constraints:\n          q: { pattern: '(a+)+$' }\n        cel: \"size(args.q) > 2\"\n"))
	f.Add([]byte("role: r\nservers:\n  s:\n    tools: [t, {name: u, constraints: {a.b: {each: {in: [1, '2']}}}}]\n    resources: ['x://*']\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Compile([]File{{Name: "role.yaml", Data: data}}, nil)
		if err == nil {
			if set == nil {
				t.Fatal("Compile returned neither a set nor an error")
			}
			return
		}
		var ps Problems
		if !errors.As(err, &ps) || len(ps) == 0 {
			t.Fatalf("error %v is not a list of problems", err)
		}
		for _, p := range ps {
			if p.Pos.File != "role.yaml" || p.Msg == "" {
				t.Fatalf("problem %q does not say what is wrong where", p.String())
			}
		}
	})
}

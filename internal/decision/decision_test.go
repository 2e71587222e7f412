package decision

import (
	"fmt"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
)

func mustCompile(t testing.TB, files ...string) *policy.Set {
	t.Helper()
	var fs []policy.File
	for i, src := range files {
		fs = append(fs, policy.File{Name: "role" + string(rune('a'+i)) + ".yaml", Data: []byte(strings.TrimLeft(src, "\n"))})
	}
	set, err := policy.Compile(fs, nil)
	if err != nil {
		t.Fatalf("compile:\n%v", err)
	}
	return set
}

// args decodes JSON the way the MCP parser hands arguments over: numbers
// stay json.Number.
func args(t testing.TB, s string) mcpfilter.Value {
	t.Helper()
	v, err := mcpfilter.ParseArguments([]byte(s))
	if err != nil {
		t.Fatalf("bad test arguments %s: %v", s, err)
	}
	return v
}

// matcherPolicy grants one tool per matcher so each row of the table below
// exercises exactly one of them.
const matcherPolicy = `
role: m
servers:
  s:
    tools:
      - { name: eq_str,   constraints: { v: { eq: "a" } } }
      - { name: eq_num,   constraints: { v: { eq: 5 } } }
      - { name: eq_bool,  constraints: { v: { eq: true } } }
      - { name: eq_null,  constraints: { v: { eq: null } } }
      - { name: ne,       constraints: { v: { ne: "root" } } }
      - { name: in,       constraints: { v: { in: ["a", "b", 3] } } }
      - { name: not_in,   constraints: { v: { not_in: ["admin", 0] } } }
      - { name: lt,       constraints: { v: { lt: 10 } } }
      - { name: lte,      constraints: { v: { lte: 10 } } }
      - { name: gt,       constraints: { v: { gt: 1.5 } } }
      - { name: gte,      constraints: { v: { gte: 9007199254740993 } } }
      - { name: eq_big,   constraints: { v: { eq: 9007199254740993 } } }
      - { name: in_big,   constraints: { v: { in: [9007199254740993] } } }
      - { name: lte_max,  constraints: { v: { lte: 9223372036854775807 } } }
      - { name: lte_zero, constraints: { v: { lte: 0 } } }
      - { name: lt_under, constraints: { v: { lt: 1_000.5 } } }
      - { name: gt_zero,  constraints: { v: { gt: 0 } } }
      - { name: ne_zero,  constraints: { v: { ne: 0 } } }
      - { name: eq_hex,   constraints: { v: { eq: !!float 0x10 } } }
      - { name: alt,      constraints: { v: { pattern: "ws_a|ws_b" } } }
      - { name: pattern,  constraints: { v: { pattern: "ws_[a-z]+" } } }
      - { name: prefix,   constraints: { v: { prefix: "/srv/" } } }
      - { name: suffix,   constraints: { v: { suffix: ".md" } } }
      - { name: within,   constraints: { v: { path_within: "/srv/data/" } } }
      - { name: within_root, constraints: { v: { path_within: "/" } } }
      - { name: min_len,  constraints: { v: { min_len: 2 } } }
      - { name: max_len,  constraints: { v: { max_len: 3 } } }
      - { name: len_each, constraints: { v: { each: {}, min_len: 2, max_len: 3 } } }
      - { name: nested,   constraints: { filter.owner: { eq: me }, filter.kind: { in: [page, db], optional: true } } }
      - { name: each,     constraints: { tags: { each: { pattern: "[a-z]+" } } } }
      - { name: each_obj, constraints: { items: { each: { fields: { id: { prefix: "pg_" } } } } } }
      - { name: no_fields, constraints: { v: { fields: {} } } }
      - { name: each_none, constraints: { items: { each: { fields: {} } } } }
      - { name: open,     constraints: { v: {} } }
      - { name: optional, constraints: { v: { lte: 5, optional: true } } }
      - { name: none }
      - name: cel
        constraints: { a: {}, b: {} }
        cel: 'args.a < args.b && agent.startsWith("bot-")'
      - name: cel_err
        constraints: { a: { optional: true } }
        cel: 'args.a > 1'
      - name: cel_int
        constraints: { n: {} }
        cel: 'args.n + 1 == 2'
      - name: cel_size
        cel: 'size(args) == 0'
      - name: cel_names
        cel: 'role == "m" && server == "s" && tool == "cel_names"'
      - name: cel_ts
        constraints: { when: {} }
        cel: 'timestamp(args.when) > timestamp("2020-01-01T00:00:00Z")'
`

// A condition CEL cannot evaluate on the arguments is a denial whose
// reason does not quote them, though CEL's error does: the reason goes to
// the agent and the audit log as it is. The error is kept for the
// policy's author (amg policy test prints it).
func TestCELErrorsDoNotQuoteArguments(t *testing.T) {
	set := mustCompile(t, matcherPolicy)
	const secret = "sk-live-4f1c9a"
	res := Evaluate(set, &Input{Agent: "bot-1", Role: "m", Server: "s", Name: "cel_ts", Arguments: args(t, `{"when":"`+secret+`"}`)})
	if res.Verdict != Deny || res.Code != CodeCELError {
		t.Fatalf("got %v %v, want a deny with %v", res.Verdict, res.Code, CodeCELError)
	}
	if strings.Contains(res.Reason, secret) {
		t.Errorf("the reason quotes the argument: %s", res.Reason)
	}
	if res.EvalError == nil || !strings.Contains(res.EvalError.Error(), secret) {
		t.Errorf("EvalError = %v, want CEL's own error, which names the value", res.EvalError)
	}
}

// A condition that runs out of time denies as one over its cost limit
// does: the cost limit does not count what the lists it compares nest.
func TestCELOutOfTimeDenies(t *testing.T) {
	set := mustCompile(t, `
role: m
servers:
  s:
    tools:
      - name: subset
        constraints: { items: {}, allowed: {} }
        cel: 'args.items.all(i, i in args.allowed)'
`)
	// Enough steps for the deadline to be checked, within the cost limit.
	items := strings.Repeat(`{"k":[1]},`, 200)
	var allowed strings.Builder
	for i := range 10 {
		fmt.Fprintf(&allowed, `{"k":[%d]},`, i)
	}
	in := &Input{Agent: "a", Role: "m", Server: "s", Name: "subset", Arguments: args(t,
		`{"items":[`+strings.TrimSuffix(items, ",")+`],"allowed":[`+strings.TrimSuffix(allowed.String(), ",")+`]}`)}
	if res := Evaluate(set, in); res.Verdict != Allow {
		t.Fatalf("with time to finish: %v %v %s, want allow", res.Verdict, res.Code, res.Reason)
	}
	was := celTimeout
	celTimeout = time.Nanosecond
	t.Cleanup(func() { celTimeout = was })
	res := Evaluate(set, in)
	if res.Verdict != Deny || res.Code != CodeCELError || res.EvalError == nil {
		t.Errorf("out of time: %v %v (%v), want a deny with %v", res.Verdict, res.Code, res.EvalError, CodeCELError)
	}
}

func TestMatchers(t *testing.T) {
	set := mustCompile(t, matcherPolicy)
	tests := []struct {
		tool, args string
		code       Code
		reason     string
	}{
		{"eq_str", `{"v":"a"}`, CodeAllowed, ""},
		{"eq_str", `{"v":"b"}`, CodeConstraintFailed, `argument "v" is not the allowed value`},
		{"eq_str", `{"v":1}`, CodeConstraintFailed, `argument "v" is not the allowed value`},
		{"eq_num", `{"v":5}`, CodeAllowed, ""},
		{"eq_num", `{"v":5.0}`, CodeAllowed, ""},
		{"eq_num", `{"v":5e0}`, CodeAllowed, ""},
		{"eq_num", `{"v":"5"}`, CodeConstraintFailed, `argument "v" is not the allowed value`},
		{"eq_bool", `{"v":true}`, CodeAllowed, ""},
		{"eq_bool", `{"v":"true"}`, CodeConstraintFailed, `argument "v" is not the allowed value`},
		{"eq_null", `{"v":null}`, CodeAllowed, ""},
		{"eq_null", `{"v":0}`, CodeConstraintFailed, `argument "v" is not the allowed value`},
		{"ne", `{"v":"alice"}`, CodeAllowed, ""},
		{"ne", `{"v":7}`, CodeAllowed, ""},
		{"ne", `{"v":"root"}`, CodeConstraintFailed, `argument "v" is a forbidden value`},
		{"ne", `{"v":null}`, CodeAllowed, ""},
		// What ne and not_in exclude says nothing of the members of an
		// array or an object.
		{"ne", `{"v":["root"]}`, CodeConstraintFailed, `argument "v" must be a string, number, boolean or null`},
		{"ne", `{"v":{"$ne":"nobody"}}`, CodeConstraintFailed, `argument "v" must be a string, number, boolean or null`},
		{"in", `{"v":"b"}`, CodeAllowed, ""},
		{"in", `{"v":3}`, CodeAllowed, ""},
		{"in", `{"v":"3"}`, CodeConstraintFailed, `argument "v" is not one of the allowed values`},
		{"in", `{"v":"c"}`, CodeConstraintFailed, `argument "v" is not one of the allowed values`},
		{"not_in", `{"v":"user"}`, CodeAllowed, ""},
		{"not_in", `{"v":"admin"}`, CodeConstraintFailed, `argument "v" is a forbidden value`},
		{"not_in", `{"v":true}`, CodeAllowed, ""},
		{"not_in", `{"v":["user"]}`, CodeConstraintFailed, `argument "v" must be a string, number, boolean or null`},
		{"not_in", `{"v":{"$ne":"nobody"}}`, CodeConstraintFailed, `argument "v" must be a string, number, boolean or null`},
		{"not_in", `{"v":0.0}`, CodeConstraintFailed, `argument "v" is a forbidden value`},
		// A number that is not 0 as written but is as most upstreams read
		// it (into a float64) is kept out as 0 is.
		{"not_in", `{"v":1e-400}`, CodeConstraintFailed, `argument "v" is a forbidden value`},
		{"ne_zero", `{"v":1e-400}`, CodeConstraintFailed, `argument "v" is a forbidden value`},
		{"ne_zero", `{"v":1e-300}`, CodeAllowed, ""},
		{"gt_zero", `{"v":1e-400}`, CodeConstraintFailed, `argument "v" must be > 0`},
		{"gt_zero", `{"v":5e-324}`, CodeAllowed, ""},
		{"lt", `{"v":9.99}`, CodeAllowed, ""},
		{"lt", `{"v":10}`, CodeConstraintFailed, `argument "v" must be < 10`},
		{"lte", `{"v":10}`, CodeAllowed, ""},
		{"lte", `{"v":-1e3}`, CodeAllowed, ""},
		{"lte", `{"v":10.5}`, CodeConstraintFailed, `argument "v" must be <= 10`},
		{"lte", `{"v":"1"}`, CodeConstraintFailed, `argument "v" must be a number`},
		{"gt", `{"v":2}`, CodeAllowed, ""},
		{"gt", `{"v":1.5}`, CodeConstraintFailed, `argument "v" must be > 1.5`},
		// Integers beyond 2^53 compare exactly, not as rounded floats.
		{"gte", `{"v":9007199254740993}`, CodeAllowed, ""},
		{"gte", `{"v":9007199254740992}`, CodeConstraintFailed, `argument "v" must be >= 9007199254740993`},
		// So do numbers written with a fraction or an exponent, and
		// numbers beyond int64, though float64 cannot tell them apart.
		{"gte", `{"v":9007199254740992.0}`, CodeConstraintFailed, `argument "v" must be >= 9007199254740993`},
		{"gte", `{"v":9.007199254740992e15}`, CodeConstraintFailed, `argument "v" must be >= 9007199254740993`},
		{"gte", `{"v":9007199254740992.5}`, CodeConstraintFailed, `argument "v" must be >= 9007199254740993`},
		{"gte", `{"v":9.007199254740993e15}`, CodeAllowed, ""},
		{"eq_big", `{"v":9007199254740993}`, CodeAllowed, ""},
		{"eq_big", `{"v":9007199254740993.000}`, CodeAllowed, ""},
		{"eq_big", `{"v":90071992547409930e-1}`, CodeAllowed, ""},
		{"eq_big", `{"v":9007199254740992.0}`, CodeConstraintFailed, `argument "v" is not the allowed value`},
		{"eq_big", `{"v":9.007199254740992e15}`, CodeConstraintFailed, `argument "v" is not the allowed value`},
		{"in_big", `{"v":9007199254740993E0}`, CodeAllowed, ""},
		{"in_big", `{"v":9007199254740992.0}`, CodeConstraintFailed, `argument "v" is not one of the allowed values`},
		{"in_big", `{"v":9.007199254740992e15}`, CodeConstraintFailed, `argument "v" is not one of the allowed values`},
		{"lte_max", `{"v":9223372036854775807}`, CodeAllowed, ""},
		{"lte_max", `{"v":9223372036854775808}`, CodeConstraintFailed, `argument "v" must be <= 9223372036854775807`},
		{"lte_max", `{"v":9223372036854775807.5}`, CodeConstraintFailed, `argument "v" must be <= 9223372036854775807`},
		{"lte", `{"v":10.000000000000000001}`, CodeConstraintFailed, `argument "v" must be <= 10`},
		// Within the bound as written, but not as read into a float64,
		// which rounds these onto it.
		{"lt", `{"v":9.999999999999999999}`, CodeConstraintFailed, `argument "v" must be < 10`},
		{"gt", `{"v":1.500000000000000001}`, CodeConstraintFailed, `argument "v" must be > 1.5`},
		{"lt", `{"v":9.99999999999999}`, CodeAllowed, ""},
		{"gt", `{"v":15e-1}`, CodeConstraintFailed, `argument "v" must be > 1.5`},
		// A number beyond float64's range is none to an upstream that
		// reads it into one: no bound holds for it.
		{"gt", `{"v":1e400}`, CodeConstraintFailed, `argument "v" must be a number`},
		{"gt_zero", `{"v":1e400}`, CodeConstraintFailed, `argument "v" must be a number`},
		{"gte", `{"v":1e400}`, CodeConstraintFailed, `argument "v" must be a number`},
		{"lt", `{"v":-1e400}`, CodeConstraintFailed, `argument "v" must be a number`},
		// A number too small for float64 is still not 0.
		{"lte_zero", `{"v":0}`, CodeAllowed, ""},
		{"lte_zero", `{"v":-0.0e7}`, CodeAllowed, ""},
		{"lte_zero", `{"v":-1e-400}`, CodeAllowed, ""},
		{"lte_zero", `{"v":1e-400}`, CodeConstraintFailed, `argument "v" must be <= 0`},
		{"lte_zero", `{"v":1e-99999999999999999999999}`, CodeConstraintFailed, `argument "v" must be <= 0`},
		// Policy numbers compare as written, whatever the YAML spelling.
		{"lt_under", `{"v":1000.4999999999}`, CodeAllowed, ""},
		{"lt_under", `{"v":1000.4999999999999999}`, CodeConstraintFailed, `argument "v" must be < 1000.5`},
		{"lt_under", `{"v":1000.5}`, CodeConstraintFailed, `argument "v" must be < 1000.5`},
		{"eq_hex", `{"v":16.0}`, CodeAllowed, ""},
		{"eq_hex", `{"v":16.000000000000000001}`, CodeConstraintFailed, `argument "v" is not the allowed value`},
		{"pattern", `{"v":"ws_abc"}`, CodeAllowed, ""},
		{"pattern", `{"v":"ws_abc!"}`, CodeConstraintFailed, `argument "v" does not match the required pattern`},
		{"pattern", `{"v":"xws_abc"}`, CodeConstraintFailed, `argument "v" does not match the required pattern`},
		{"pattern", `{"v":["ws_a"]}`, CodeConstraintFailed, `argument "v" must be a string`},
		// An alternation is anchored as a whole.
		{"alt", `{"v":"ws_b"}`, CodeAllowed, ""},
		{"alt", `{"v":"ws_a; DROP"}`, CodeConstraintFailed, `argument "v" does not match the required pattern`},
		{"alt", `{"v":"evil-ws_b"}`, CodeConstraintFailed, `argument "v" does not match the required pattern`},
		{"prefix", `{"v":"/srv/data"}`, CodeAllowed, ""},
		{"prefix", `{"v":"/etc/passwd"}`, CodeConstraintFailed, `argument "v" does not have the required prefix`},
		{"suffix", `{"v":"a.md"}`, CodeAllowed, ""},
		{"suffix", `{"v":"a.md.sh"}`, CodeConstraintFailed, `argument "v" does not have the required suffix`},
		{"within", `{"v":"/srv/data"}`, CodeAllowed, ""},
		{"within", `{"v":"/srv/data/a/b.txt"}`, CodeAllowed, ""},
		{"within", `{"v":"/srv/data/./a//b.txt"}`, CodeAllowed, ""},
		{"within", `{"v":"/srv/data/../secret"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		{"within", `{"v":"/srv/data/a/../../etc"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		{"within", `{"v":"/srv/database"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		{"within", `{"v":"srv/data/a"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		{"within", `{"v":"/srv/data/a\u0000b"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		{"within", `{"v":"/srv/data\\..\\etc"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		// A ".." is refused even where the path, cleaned, stays inside:
		// what it climbs out of is the upstream's to resolve (a symlink).
		{"within", `{"v":"/srv/data/a/../b"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		// A backslash is refused: to an upstream that reads it as a
		// separator, this path climbs out.
		{"within", `{"v":"/srv/data/..\\..\\etc"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		{"within", `{"v":7}`, CodeConstraintFailed, `argument "v" must be a string`},
		// Under "/" every absolute path is within, and still no relative
		// one: the upstream resolves that from a directory of its own.
		{"within_root", `{"v":"/etc/hosts"}`, CodeAllowed, ""},
		{"within_root", `{"v":"etc/passwd"}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		{"within_root", `{"v":""}`, CodeConstraintFailed, `argument "v" is not a path within the allowed directory`},
		{"min_len", `{"v":"éé"}`, CodeAllowed, ""},
		{"min_len", `{"v":"é"}`, CodeConstraintFailed, `argument "v" must have at least 2 characters or elements`},
		{"max_len", `{"v":"日本語"}`, CodeAllowed, ""},
		{"max_len", `{"v":"abcd"}`, CodeConstraintFailed, `argument "v" must have at most 3 characters or elements`},
		{"max_len", `{"v":"日本語x"}`, CodeConstraintFailed, `argument "v" must have at most 3 characters or elements`},
		{"min_len", `{"v":"日本"}`, CodeAllowed, ""},
		{"max_len", `{"v":12}`, CodeConstraintFailed, `argument "v" must be a string`},
		// Without each, a length measures a string: an array would pass
		// on its length whatever its elements.
		{"max_len", `{"v":[{"$where":"1"}]}`, CodeConstraintFailed, `argument "v" must be a string`},
		{"min_len", `{"v":[1,2]}`, CodeConstraintFailed, `argument "v" must be a string`},
		{"len_each", `{"v":[1,2]}`, CodeAllowed, ""},
		{"len_each", `{"v":[1,2,3]}`, CodeAllowed, ""},
		{"len_each", `{"v":[1,2,3,4]}`, CodeConstraintFailed, `argument "v" must have at most 3 characters or elements`},
		{"len_each", `{"v":[1]}`, CodeConstraintFailed, `argument "v" must have at least 2 characters or elements`},
		{"len_each", `{"v":"abc"}`, CodeConstraintFailed, `argument "v" must be an array`},
		{"nested", `{"filter":{"owner":"me"}}`, CodeAllowed, ""},
		{"nested", `{"filter":{"owner":"me","kind":"db"}}`, CodeAllowed, ""},
		{"nested", `{"filter":{"owner":"you"}}`, CodeConstraintFailed, `argument "filter.owner" is not the allowed value`},
		{"nested", `{"filter":{"owner":"me","scope":"all"}}`, CodeUnknownArgument, `argument "filter.scope" is not allowed for "s__nested"`},
		// An unknown key is reported before a constraint another key
		// breaks, even when the object has no more keys than the policy
		// names.
		{"nested", `{"filter":{"owner":"you","scope":"all"}}`, CodeUnknownArgument, `argument "filter.scope" is not allowed for "s__nested"`},
		{"nested", `{"filter":{}}`, CodeMissingArgument, `argument "filter.owner" is required by the policy for "s__nested"`},
		{"nested", `{}`, CodeMissingArgument, `argument "filter" is required by the policy for "s__nested"`},
		{"nested", `{"filter":"me"}`, CodeConstraintFailed, `argument "filter" must be an object`},
		{"each", `{"tags":["a","b"]}`, CodeAllowed, ""},
		{"each", `{"tags":[]}`, CodeAllowed, ""},
		{"each", `{"tags":["a","B","c"]}`, CodeConstraintFailed, `argument "tags[1]" does not match the required pattern`},
		{"each", `{"tags":"a"}`, CodeConstraintFailed, `argument "tags" must be an array`},
		// each constrains the argument, so it is required as any other
		// constrained one.
		{"each", `{}`, CodeMissingArgument, `argument "tags" is required by the policy for "s__each"`},
		{"each_obj", `{"items":[{"id":"pg_1"},{"id":"pg_2"}]}`, CodeAllowed, ""},
		{"each_obj", `{"items":[{"id":"pg_1"},{"id":"xx"}]}`, CodeConstraintFailed, `argument "items[1].id" does not have the required prefix`},
		{"each_obj", `{"items":[{"id":"pg_1","rm":true}]}`, CodeUnknownArgument, `argument "items[0].rm" is not allowed for "s__each_obj"`},
		// fields: {} allows only an empty object.
		{"no_fields", `{"v":{}}`, CodeAllowed, ""},
		{"no_fields", `{}`, CodeAllowed, ""},
		{"no_fields", `{"v":{"admin":true}}`, CodeUnknownArgument, `argument "v.admin" is not allowed for "s__no_fields"`},
		{"no_fields", `{"v":"a string"}`, CodeConstraintFailed, `argument "v" must be an object`},
		{"no_fields", `{"v":[1]}`, CodeConstraintFailed, `argument "v" must be an object`},
		{"each_none", `{"items":[{},{}]}`, CodeAllowed, ""},
		{"each_none", `{"items":[{},{"admin":true}]}`, CodeUnknownArgument, `argument "items[1].admin" is not allowed for "s__each_none"`},
		{"each_none", `{"items":["a"]}`, CodeConstraintFailed, `argument "items[0]" must be an object`},
		{"open", `{"v":{"anything":[1,{"x":null}]}}`, CodeAllowed, ""},
		{"open", `{}`, CodeAllowed, ""},
		{"optional", `{}`, CodeAllowed, ""},
		{"optional", `{"v":6}`, CodeConstraintFailed, `argument "v" must be <= 5`},
		{"none", `{}`, CodeAllowed, ""},
		{"none", `{"v":1}`, CodeUnknownArgument, `argument "v" is not allowed for "s__none"`},
		// The smallest unknown key is named, whatever the map order.
		{"none", `{"z":1,"b":2,"y":3}`, CodeUnknownArgument, `argument "b" is not allowed for "s__none"`},
		{"cel", `{"a":1,"b":2}`, CodeAllowed, ""},
		{"cel", `{"a":2.5,"b":2}`, CodeCELDenied, `the policy's condition for "s__cel" is not met`},
		{"cel_err", `{}`, CodeCELError, `the policy's condition for "s__cel_err" could not be evaluated on these arguments`},
		// An integer literal is an int to CEL, anything else a double,
		// and CEL adds no int to a double.
		{"cel_int", `{"n":1}`, CodeAllowed, ""},
		{"cel_int", `{"n":1.0}`, CodeCELError, `the policy's condition for "s__cel_int" could not be evaluated on these arguments`},
		{"cel_size", `{}`, CodeAllowed, ""},
		// role, server and tool are each the call's own (the agent is
		// bot-1).
		{"cel_names", `{}`, CodeAllowed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.tool+" "+tt.args, func(t *testing.T) {
			res := Evaluate(set, &Input{Agent: "bot-1", Role: "m", Server: "s", Name: tt.tool, Arguments: args(t, tt.args)})
			wantVerdict := Deny
			if tt.code == CodeAllowed {
				wantVerdict = Allow
			}
			got := []any{res.Verdict, res.Code, res.Reason, res.Rule}
			want := []any{wantVerdict, tt.code, tt.reason, "m/s/" + tt.tool}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// compareDecimal orders literals exactly, including those float64 rounds
// together: long mantissas, zeros written many ways, exponents that move
// the point across the digits or beyond anything a float64 holds.
func TestCompareDecimal(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"9007199254740993", "9007199254740992.0", 1},
		{"9007199254740993", "9.007199254740993e15", 0},
		{"0", "-0.000e9", 0},
		{"1e-400", "0", 1},
		{"-1e-400", "0", -1},
		{"1e-400", "1e-401", 1},
		{"0.1", "1e-1", 0},
		{"0.10000000000000000001", "0.1", 1},
		{"100", "1e2", 0},
		{"-100.5", "-1005e-1", 0},
		{"1e100000000000000000000000", "1e99", 1},
		{"1e-100000000000000000000000", "1e-99", -1},
		{"-1e100000000000000000000000", "-1e99", -1},
	}
	for _, tt := range tests {
		if got := compareDecimal(tt.a, tt.b); got != tt.want {
			t.Errorf("compareDecimal(%s, %s) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := compareDecimal(tt.b, tt.a); got != -tt.want {
			t.Errorf("compareDecimal(%s, %s) = %d, want %d", tt.b, tt.a, got, -tt.want)
		}
	}

	// Random literals against exact rational arithmetic.
	rng := rand.New(rand.NewPCG(1, 2))
	digits := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = "0000123456789"[rng.IntN(13)]
		}
		return string(b)
	}
	literal := func() string {
		s := digits(1 + rng.IntN(20))
		if rng.IntN(2) == 0 {
			s += "." + digits(1+rng.IntN(20))
		}
		if rng.IntN(2) == 0 {
			s += string("eE"[rng.IntN(2)]) + []string{"", "+", "-"}[rng.IntN(3)] + strconv.Itoa(rng.IntN(40))
		}
		if rng.IntN(2) == 0 {
			s = "-" + s
		}
		return s
	}
	exact := func(s string) *big.Rat {
		r, ok := new(big.Rat).SetString(s)
		if !ok {
			t.Fatalf("big.Rat cannot read %q", s)
		}
		return r
	}
	for range 20000 {
		a, b := literal(), literal()
		if rng.IntN(2) == 0 {
			// The same value written another way, or one close to it.
			b = exact(a).FloatString(rng.IntN(30))
		}
		want := exact(a).Cmp(exact(b))
		if got := compareDecimal(a, b); got != want {
			t.Fatalf("compareDecimal(%s, %s) = %d, want %d", a, b, got, want)
		}
	}
}

// A call without arguments shows CEL an empty map, not null.
func TestCELWithoutArguments(t *testing.T) {
	set := mustCompile(t, matcherPolicy)
	res := Evaluate(set, &Input{Agent: "bot-1", Role: "m", Server: "s", Name: "cel_size"})
	if res.Verdict != Allow {
		t.Errorf("got %v %v (%s), want allowed", res.Verdict, res.Code, res.Reason)
	}
}

func TestCELSeesAgent(t *testing.T) {
	set := mustCompile(t, matcherPolicy)
	res := Evaluate(set, &Input{Agent: "human-1", Role: "m", Server: "s", Name: "cel", Arguments: args(t, `{"a":1,"b":2}`)})
	if res.Verdict != Deny || res.Code != CodeCELDenied {
		t.Errorf("agent human-1: %v %v, want deny by cel", res.Verdict, res.Code)
	}
}

const approvalPolicy = `
role: editor
servers:
  notion:
    tools:
      - { name: get_pages }
      - { name: delete_page }
      - { name: archive_page }
      - { name: publish, require_approval: true }
    prompts:
      - { name: delete_summary }
  github:
    tools:
      - { name: delete_branch }
approvals:
  - match: "delete*"
    server: notion
    require: human
  - annotations: { destructiveHint: true, openWorldHint: true }
    require: human
`

func TestApprovals(t *testing.T) {
	set := mustCompile(t, approvalPolicy)
	yes, no := true, false
	readOnly := &policy.Annotations{ReadOnly: &yes}
	closedWorld := &policy.Annotations{OpenWorld: &no}
	tests := []struct {
		name         string
		server, tool string
		ann          *policy.Annotations
		verdict      Verdict
		rule         string
	}{
		{"glob on tool and server", "notion", "delete_page", readOnly, NeedsApproval, "editor/approvals[0]"},
		{"glob does not match another server", "github", "delete_branch", readOnly, Allow, "editor/github/delete_branch"},
		{"read-only tool is not destructive", "notion", "get_pages", readOnly, Allow, "editor/notion/get_pages"},
		// A tool that declared no annotations is assumed destructive.
		{"undeclared annotations park", "notion", "archive_page", nil, NeedsApproval, "editor/approvals[1]"},
		{"every annotation must match", "notion", "archive_page", closedWorld, Allow, "editor/notion/archive_page"},
		{"grant requires approval", "notion", "publish", readOnly, NeedsApproval, "editor/notion/publish"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Evaluate(set, &Input{Role: "editor", Server: tt.server, Name: tt.tool, Annotations: tt.ann})
			if res.Verdict != tt.verdict || res.Rule != tt.rule {
				t.Errorf("got %v by %q, want %v by %q (%s)", res.Verdict, res.Rule, tt.verdict, tt.rule, res.Reason)
			}
			if tt.verdict == NeedsApproval && res.Code != CodeApprovalRequired {
				t.Errorf("code = %v", res.Code)
			}
		})
	}
	// The approval rules are for tool calls: a prompt is not parked,
	// though its name matches one and it declares no annotations.
	if res := Evaluate(set, &Input{Role: "editor", Kind: Prompt, Server: "notion", Name: "delete_summary"}); res.Verdict != Allow || res.Approval != nil {
		t.Errorf("prompt: got %v by %q, want allow", res.Verdict, res.Rule)
	}
}

func TestShadowMode(t *testing.T) {
	shadow := strings.Replace(approvalPolicy, "role: editor", "role: editor\nmode: shadow", 1)
	set := mustCompile(t, shadow)
	yes := true
	tests := []struct {
		name   string
		in     Input
		shadow Verdict
		code   Code
	}{
		{"would be allowed", Input{Role: "editor", Server: "notion", Name: "get_pages", Annotations: &policy.Annotations{ReadOnly: &yes}}, Allow, CodeAllowed},
		{"would be denied", Input{Role: "editor", Server: "notion", Name: "drop_db"}, Deny, CodeNotGranted},
		{"unknown argument would be denied", Input{Role: "editor", Server: "notion", Name: "get_pages", Arguments: args(t, `{"x":1}`)}, Deny, CodeUnknownArgument},
		{"would be parked", Input{Role: "editor", Server: "notion", Name: "publish"}, NeedsApproval, CodeApprovalRequired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Evaluate(set, &tt.in)
			if res.Verdict != Allow || !res.Shadow || res.ShadowVerdict != tt.shadow || res.Code != tt.code {
				t.Errorf("got verdict %v shadow %v/%v code %v, want allow shadow %v code %v", res.Verdict, res.Shadow, res.ShadowVerdict, res.Code, tt.shadow, tt.code)
			}
		})
	}
	if !ToolVisible(set, "editor", "notion", "not_granted") {
		t.Error("a shadow role must see every tool")
	}
}

func TestEnforceModeIsNotShadow(t *testing.T) {
	set := mustCompile(t, approvalPolicy)
	res := Evaluate(set, &Input{Role: "editor", Server: "notion", Name: "drop_db"})
	if res.Verdict != Deny || res.Shadow {
		t.Errorf("got %v shadow=%v, want an enforced deny", res.Verdict, res.Shadow)
	}
}

func TestDefaultDeny(t *testing.T) {
	set := mustCompile(t, approvalPolicy)
	tests := []struct {
		name   string
		set    *policy.Set
		in     Input
		code   Code
		reason string
	}{
		{"no policy", nil, Input{Role: "editor", Server: "notion", Name: "get_pages"}, CodeNoPolicy, "no policy is loaded"},
		{"unknown role", set, Input{Role: "admin", Server: "notion", Name: "get_pages"}, CodeUnknownRole, `role "admin" is not defined`},
		{"empty role", set, Input{Server: "notion", Name: "get_pages"}, CodeUnknownRole, `role "" is not defined`},
		{"ungranted server", set, Input{Role: "editor", Server: "slack", Name: "post"}, CodeNotGranted, `tool "slack__post" is not granted to role "editor"`},
		{"ungranted tool", set, Input{Role: "editor", Server: "notion", Name: "drop_db"}, CodeNotGranted, `tool "notion__drop_db" is not granted to role "editor"`},
		{"names match exactly", set, Input{Role: "editor", Server: "notion", Name: "Get_Pages"}, CodeNotGranted, `tool "notion__Get_Pages" is not granted to role "editor"`},
		{"tool grant is not a prompt grant", set, Input{Role: "editor", Kind: Prompt, Server: "notion", Name: "get_pages"}, CodeNotGranted, `prompt "notion__get_pages" is not granted to role "editor"`},
		{"ungranted resource", set, Input{Role: "editor", Kind: Resource, Server: "notion", Name: "notion://x"}, CodeNotGranted, `resource "notion://x" on server "notion" is not granted to role "editor"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Evaluate(tt.set, &tt.in)
			if res.Verdict != Deny || res.Code != tt.code || res.Reason != tt.reason {
				t.Errorf("got %v %v %q, want deny %v %q", res.Verdict, res.Code, res.Reason, tt.code, tt.reason)
			}
		})
	}
	if ToolVisible(set, "editor", "notion", "drop_db") || !ToolVisible(set, "editor", "notion", "get_pages") || ToolVisible(nil, "editor", "notion", "get_pages") {
		t.Error("ToolVisible must show exactly the granted tools")
	}
}

func TestPromptsAndResources(t *testing.T) {
	set := mustCompile(t, `
role: r
servers:
  notion:
    prompts:
      - name: summarize
        constraints: { page_id: { prefix: "pg_" } }
    resources: ["notion://ws_a/*", "file:///srv/public/*/*.md", "https://*.example.com/*", "https://ex.com/report?id=42", "http://[::1]:8080/docs/*", "http://[fe80::1"]
`)
	tests := []struct {
		in      Input
		verdict Verdict
	}{
		{Input{Role: "r", Kind: Prompt, Server: "notion", Name: "summarize", Arguments: args(t, `{"page_id":"pg_1"}`)}, Allow},
		{Input{Role: "r", Kind: Prompt, Server: "notion", Name: "summarize", Arguments: args(t, `{"page_id":"x"}`)}, Deny},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "notion://ws_a/page1"}, Allow},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "notion://ws_a/page1/../../ws_b"}, Deny},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "notion://ws_b/page1"}, Deny},
		{Input{Role: "r", Kind: Resource, Server: "other", Name: "notion://ws_a/page1"}, Deny},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "file:///srv/public/docs/a.md"}, Allow},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "notion://ws_a/...md"}, Allow},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "notion://ws_a/a%20b"}, Allow},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "https://docs.example.com/a"}, Allow},
		// '?' and '[' stand for themselves, as they do in a URI.
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "https://ex.com/report?id=42"}, Allow},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "https://ex.com/reportXid=42"}, Deny},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "http://[::1]:8080/docs/a"}, Allow},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "http://1:8080/docs/a"}, Deny},
		{Input{Role: "r", Kind: Resource, Server: "notion", Name: "http://[fe80::1"}, Allow},
	}
	for _, tt := range tests {
		if res := Evaluate(set, &tt.in); res.Verdict != tt.verdict {
			t.Errorf("%v %s: got %v (%s), want %v", tt.in.Kind, tt.in.Name, res.Verdict, res.Reason, tt.verdict)
		}
	}
	// '*' matches any one segment, but not one the upstream could
	// resolve upwards, nor one hiding a separator it could decode.
	for _, uri := range []string{
		"notion://ws_a/..",
		"notion://ws_a/.",
		"notion://ws_a/%2e%2e",
		"notion://ws_a/%2E.",
		"notion://ws_a/.%2e",
		"notion://ws_a/%2e",
		"notion://ws_a/..;",
		"notion://ws_a/..?x=1",
		"notion://ws_a/..#top",
		"notion://ws_a/..%2fws_b",
		"notion://ws_a/ws_b%2Fsecret",
		"notion://ws_a/..%5cws_b",
		"notion://ws_a/a%5Cb",
		`notion://ws_a/..\ws_b`,
		"file:///srv/public/../secret.md",
		"file:///srv/public/./a.md",
		"file:///srv/public/%2e%2e/secret.md",
		"file:///srv/public/docs%2f..%2f../secret.md",
		// '*' stops at a query or a fragment, which the upstream cuts off
		// before it reads the path or the host.
		"file:///srv/public/docs/secret.key#.md",
		"file:///srv/public/docs/secret.key?.md",
		"file:///srv/public/docs/secret.key?x=.md",
		"https://internal.corp#.example.com/x",
		"https://169.254.169.254?.example.com/x",
		"https://docs.example.com/a?b/c",
	} {
		if res := Evaluate(set, &Input{Role: "r", Kind: Resource, Server: "notion", Name: uri}); res.Verdict != Deny {
			t.Errorf("resource %s: got %v by %q, want deny", uri, res.Verdict, res.Rule)
		}
	}
}

func TestResultCarriesVersionAndRateLimits(t *testing.T) {
	set := mustCompile(t, `
role: r
rate_limits: [{ requests: 60, per: 1m }]
servers:
  s:
    tools:
      - name: t
        rate_limits: [{ requests: 5, per: 1s }]
`)
	res := Evaluate(set, &Input{Role: "r", Server: "s", Name: "t"})
	if res.PolicyVersion != set.Version() {
		t.Errorf("version = %v, want %v", res.PolicyVersion, set.Version())
	}
	var ids []string
	for _, l := range res.RateLimits {
		ids = append(ids, l.ID)
	}
	if diff := cmp.Diff([]string{"r/rate_limits[0]", "r/s/t/rate_limits[0]"}, ids); diff != "" {
		t.Errorf("rate limits (-want +got):\n%s", diff)
	}
}

func TestPanicBecomesDeny(t *testing.T) {
	set := mustCompile(t, matcherPolicy)
	// Break a compiled matcher the way an engine bug would.
	r, _ := set.Role("m")
	r.Servers["s"].Tools["pattern"].Args.Fields["v"].Matchers[0].Re = nil
	res := Evaluate(set, &Input{Role: "m", Server: "s", Name: "pattern", Arguments: args(t, `{"v":"ws_a"}`)})
	if res.Verdict != Deny || res.Code != CodeInternalError || res.PolicyVersion != set.Version() {
		t.Errorf("got %+v, want an internal-error deny", res)
	}
}

func TestPanicIsNotShadowed(t *testing.T) {
	set := mustCompile(t, strings.Replace(matcherPolicy, "role: m", "role: m\nmode: shadow", 1))
	r, _ := set.Role("m")
	r.Servers["s"].Tools["pattern"].Args.Fields["v"].Matchers[0].Re = nil
	res := Evaluate(set, &Input{Role: "m", Server: "s", Name: "pattern", Arguments: args(t, `{"v":"ws_a"}`)})
	if res.Verdict != Deny || res.Code != CodeInternalError {
		t.Errorf("got %v %v, want an internal-error deny even in shadow mode", res.Verdict, res.Code)
	}
}

func TestReasonsNeverEchoValues(t *testing.T) {
	set := mustCompile(t, matcherPolicy)
	const secret = "s3cr3t-value-4242"
	for _, tool := range []string{"eq_str", "ne", "in", "not_in", "pattern", "prefix", "suffix", "max_len", "lte"} {
		for _, v := range []string{`"` + secret + `"`, `["` + secret + `"]`, `{"` + secret + `":"` + secret + `"}`} {
			res := Evaluate(set, &Input{Role: "m", Server: "s", Name: tool, Arguments: args(t, `{"v":`+v+`,"`+secret+`":1}`)})
			res2 := Evaluate(set, &Input{Role: "m", Server: "s", Name: tool, Arguments: args(t, `{"v":`+v+`}`)})
			for _, r := range []Result{res, res2} {
				if r.Verdict == Allow {
					continue
				}
				if strings.Contains(r.Reason, secret[:6]) && r.Code != CodeUnknownArgument {
					t.Errorf("%s: reason %q echoes the value", tool, r.Reason)
				}
			}
		}
	}
}

func TestPromptAndResourceVisibility(t *testing.T) {
	set := mustCompile(t, `
role: r
servers:
  notion:
    prompts:
      - name: summarize
    resources: ["notion://ws_a/*", "file:///srv/public/*/*.md"]
  slack: {}
`, `
role: trial
mode: shadow
`)
	tests := []struct {
		got, want bool
		what      string
	}{
		{PromptVisible(set, "r", "notion", "summarize"), true, "granted prompt"},
		{PromptVisible(set, "r", "notion", "other"), false, "ungranted prompt"},
		{PromptVisible(set, "r", "github", "summarize"), false, "prompt on another server"},
		{PromptVisible(set, "trial", "notion", "anything"), true, "shadow role sees every prompt"},
		{PromptVisible(nil, "r", "notion", "summarize"), false, "no policy"},
		{ResourceVisible(set, "r", "notion", "notion://ws_a/p1"), true, "granted resource"},
		{ResourceVisible(set, "r", "notion", "notion://ws_b/p1"), false, "ungranted resource"},
		{ResourceVisible(set, "r", "notion", "file:///srv/public/docs/a.md"), true, "granted file"},
		{ResourceVisible(set, "r", "notion", "notion://ws_a/.."), false, "dot-dot segment"},
		{ResourceVisible(set, "r", "notion", "notion://ws_a/%2E%2e"), false, "encoded dot-dot segment"},
		{ResourceVisible(set, "r", "notion", "file:///srv/public/../secret.md"), false, "dot-dot segment under a glob"},
		{ResourceVisible(set, "r", "notion", "notion://ws_a/ws_b%2fp1"), false, "encoded slash"},
		{ResourceVisible(set, "r", "notion", `notion://ws_a/ws_b\p1`), false, "backslash"},
		{ResourceVisible(set, "ghost", "notion", "notion://ws_a/p1"), false, "unknown role"},
		{ResourceVisible(set, "trial", "notion", "notion://ws_b/p1"), true, "shadow role sees every resource"},
		{ServerVisible(set, "r", "notion"), true, "server granted prompts and resources"},
		{ServerVisible(set, "r", "github"), false, "server granted nothing"},
		{ServerVisible(set, "r", "slack"), false, "server named with no grants"},
		{ServerVisible(set, "trial", "github"), true, "shadow role sees every server"},
		{ServerVisible(set, "ghost", "notion"), false, "unknown role sees no server"},
		{ServerVisible(nil, "r", "notion"), false, "no policy, no server"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.what, tt.got, tt.want)
		}
	}
}

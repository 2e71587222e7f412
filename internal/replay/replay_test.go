package replay

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/mcpfilter"
)

func compile(t *testing.T, src string) *policy.Set {
	t.Helper()
	set, err := policy.Compile([]policy.File{{Name: "dev.yaml", Data: []byte(strings.TrimLeft(src, "\n"))}}, nil)
	if err != nil {
		t.Fatalf("compile:\n%v", err)
	}
	return set
}

// base is the policy the records below were decided under.
const base = `
role: dev
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { in: ["ws_a", "ws_b"] }
          limit: { lte: 100, optional: true }
          note: { optional: true }
      - name: search
        constraints:
          filter.owner: { eq: "me" }
          filter.label: { optional: true }
      - name: tag_pages
        constraints:
          items: { each: { fields: { id: { prefix: "tag_" } } } }
    prompts:
      - name: summarize
        constraints:
          page_id: { prefix: "pg_" }
    resources:
      - "notion://pages/*"
`

var redactor = audit.NewRedactor([]byte("0123456789abcdef0123456789abcdef"))

// args redacts JSON arguments as authz records them, under the role's
// redaction globs.
func args(t *testing.T, s string, rules ...string) json.RawMessage {
	t.Helper()
	v, err := mcpfilter.ParseArguments([]byte(s))
	if err != nil {
		t.Fatalf("bad test arguments %s: %v", s, err)
	}
	return redactor.RedactRaw(json.RawMessage(s), v, rules)
}

// decisions numbers the decisions rec makes: each record is a decision of
// its own unless batch joins it to others.
var decisions int

func rec(method, tool, verdict, code string, args json.RawMessage) audit.Record {
	decisions++
	return audit.Record{
		Time: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), DecisionID: "d" + strconv.Itoa(decisions), Agent: "alice", Role: "dev",
		Server: "notion", Tool: tool, Method: method, Verdict: verdict, Code: code, Args: args,
	}
}

// msg is the record of a message authz decides without a server: a
// lifecycle message, or a call whose name did not parse.
func msg(method, verdict, code string) audit.Record {
	r := rec(method, "", verdict, code, nil)
	r.Server = ""
	return r
}

// batch makes recs the records of one decision on a JSON-RPC batch, as
// authz writes them: one per message, all with the decision id and the
// time of the Check.
func batch(recs ...audit.Record) []audit.Record {
	for i := range recs {
		recs[i].DecisionID, recs[i].Time = recs[0].DecisionID, recs[0].Time
	}
	return recs
}

func tool(tool, verdict, code string, args json.RawMessage) audit.Record {
	return rec("tools/call", tool, verdict, code, args)
}

// shadowDenied is r of a role in shadow mode that enforce mode would
// have denied.
func shadowDenied(r audit.Record) audit.Record {
	r.ShadowVerdict = "deny"
	return r
}

// edit returns base with old replaced by new.
func edit(t *testing.T, old, new string) string {
	t.Helper()
	if !strings.Contains(base, old) {
		t.Fatalf("base has no %q", old)
	}
	return strings.Replace(base, old, new, 1)
}

func TestReplay(t *testing.T) {
	const approvals = "approvals:\n  - match: \"get_*\"\n    require: human\n"
	tests := []struct {
		name    string
		policy  string
		opts    *Options
		records []audit.Record
		skipped int // records not replayed
		want    Counts
		changes []decision.Verdict // new verdicts of the changes, in order
	}{{
		name:    "unchanged allow",
		policy:  base,
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`))},
		want:    Counts{Unchanged: 1},
	}, {
		name:    "unchanged deny",
		policy:  base,
		records: []audit.Record{tool("get_pages", "deny", "constraint_failed", args(t, `{"workspace_id":"ws_z"}`))},
		want:    Counts{Unchanged: 1},
	}, {
		name:    "allow to deny: constraint tightened",
		policy:  edit(t, "lte: 100", "lte: 40"),
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`))},
		want:    Counts{AllowToDeny: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:    "deny to allow: tool granted",
		policy:  edit(t, "      - name: search\n", "      - name: delete_page\n      - name: search\n"),
		records: []audit.Record{tool("delete_page", "deny", "not_granted", nil)},
		want:    Counts{DenyToAllow: 1},
		changes: []decision.Verdict{decision.Allow},
	}, {
		name:    "to needs_approval: approval rule added",
		policy:  base + approvals,
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a"}`))},
		want:    Counts{ToApproval: 1},
		changes: []decision.Verdict{decision.NeedsApproval},
	}, {
		name:    "needs_approval to allow: approval rule removed",
		policy:  base,
		records: []audit.Record{tool("get_pages", "needs_approval", "approval_required", args(t, `{"workspace_id":"ws_a"}`))},
		want:    Counts{ApprovalToAllow: 1},
		changes: []decision.Verdict{decision.Allow},
	}, {
		name:    "needs_approval to deny",
		policy:  base,
		records: []audit.Record{tool("get_pages", "needs_approval", "approval_required", args(t, `{"workspace_id":"ws_q"}`))},
		want:    Counts{ApprovalToDeny: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:    "undecidable: redacted value under a constrained path",
		policy:  edit(t, "lte: 100", "lte: 40"),
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`, "limit"))},
		want:    Counts{Undecidable: 1},
	}, {
		name:    "undecidable: redacted object under a constrained child",
		policy:  base,
		records: []audit.Record{tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`, "filter"))},
		want:    Counts{Undecidable: 1},
	}, {
		name:    "undecidable: redacted nested value",
		policy:  base,
		records: []audit.Record{tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`, "*.owner"))},
		want:    Counts{Undecidable: 1},
	}, {
		name:    "undecidable: redacted value in an array's elements",
		policy:  base,
		records: []audit.Record{tool("tag_pages", "allow", "allowed", args(t, `{"items":[{"id":"tag_1"}]}`, "items.id"))},
		want:    Counts{Undecidable: 1},
	}, {
		name:    "undecidable: unencodable value under a constrained path",
		policy:  base,
		records: []audit.Record{tool("get_pages", "allow", "allowed", json.RawMessage(`{"workspace_id":"`+audit.Unencodable+`"}`))},
		want:    Counts{Undecidable: 1},
	}, {
		// Left out of the Redis stream's copy: even a grant that names no
		// argument decides on them (it denies each it does not name).
		name:   "undecidable: arguments left out of the stream",
		policy: edit(t, "      - name: search\n", "      - name: list_users\n      - name: search\n"),
		records: []audit.Record{
			func() audit.Record {
				r := tool("list_users", "deny", "unknown_argument", nil)
				r.ArgsCut = 20 << 10
				return r
			}(),
			func() audit.Record {
				r := tool("get_pages", "allow", "allowed", nil)
				r.ArgsCut = 20 << 10
				return r
			}(),
		},
		want: Counts{Undecidable: 2},
	}, {
		name:   "redacted value under an unconstrained path is decidable",
		policy: edit(t, "lte: 100", "lte: 40"),
		records: []audit.Record{
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50,"note":"x"}`, "note")),
			tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me","label":"x"}}`, "filter.label")),
		},
		want:    Counts{AllowToDeny: 1, Unchanged: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:    "redacted value under an argument the grant does not name is decidable",
		policy:  base,
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","api_key":"k"}`))},
		want:    Counts{AllowToDeny: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:    "undecidable: redacted value and a CEL condition",
		policy:  edit(t, "          note: { optional: true }\n", "          note: { optional: true }\n        cel: 'args.workspace_id == \"ws_a\"'\n"),
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","note":"x"}`, "note"))},
		want:    Counts{Undecidable: 1},
	}, {
		name:    "undecidable: no arguments recorded",
		policy:  base,
		records: []audit.Record{tool("get_pages", "deny", "missing_argument", nil)},
		want:    Counts{Undecidable: 1},
	}, {
		name:    "undecidable: arguments not an object",
		policy:  base,
		records: []audit.Record{tool("get_pages", "allow", "allowed", json.RawMessage(`"`+audit.Unencodable+`"`))},
		want:    Counts{Undecidable: 1},
	}, {
		name:    "redacted values do not matter to a tool no longer granted",
		policy:  edit(t, "      - name: get_pages\n", "      - name: get_page\n"),
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a"}`, "*"))},
		want:    Counts{AllowToDeny: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:    "undecidable: approval on annotations the record does not hold",
		policy:  base + "approvals:\n  - annotations: { destructiveHint: true }\n    require: human\n",
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a"}`))},
		want:    Counts{Undecidable: 1},
	}, {
		name:   "approval on known annotations",
		policy: base + "approvals:\n  - annotations: { destructiveHint: true }\n    require: human\n",
		opts: &Options{Annotations: func(server, tool string) (*policy.Annotations, bool) {
			return nil, server == "notion" && tool == "get_pages" // declared none: destructive
		}},
		records: []audit.Record{tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a"}`))},
		want:    Counts{ToApproval: 1},
		changes: []decision.Verdict{decision.NeedsApproval},
	}, {
		name:   "approval on annotations that cannot match is decidable",
		policy: base + "approvals:\n  - match: \"delete_*\"\n    annotations: { destructiveHint: true }\n    require: human\n",
		records: []audit.Record{
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a"}`)),
		},
		want: Counts{Unchanged: 1},
	}, {
		name:   "prompts and resources",
		policy: edit(t, `prefix: "pg_"`, `prefix: "page_"`),
		records: []audit.Record{
			rec("prompts/get", "summarize", "allow", "allowed", args(t, `{"page_id":"pg_1"}`)),
			rec("resources/read", "notion://pages/1", "allow", "allowed", nil),
		},
		want:    Counts{AllowToDeny: 1, Unchanged: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		// The records show a URI's userinfo and query values as
		// REDACTED: a glob may match what they held and not REDACTED, or
		// the other way round.
		name:   "a resource URI with redacted parts is undecidable",
		policy: edit(t, `"notion://pages/*"`, `"notion://pages/*?sig=ok*"`),
		records: []audit.Record{
			rec("resources/read", "notion://pages/1?sig=REDACTED", "deny", "not_granted", nil),
			rec("resources/read", "notion://REDACTED@pages/2", "allow", "allowed", nil),
			rec("resources/read", "notion://pages/3#REDACTED", "allow", "allowed", nil),
			rec("resources/read", "notion://pages/4", "allow", "allowed", nil),
		},
		want:    Counts{Undecidable: 3, AllowToDeny: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:   "a resource URI with redacted parts, of a role the policy drops",
		policy: strings.Replace(base, "role: dev", "role: ops", 1),
		records: []audit.Record{
			rec("resources/read", "notion://pages/1?sig=REDACTED", "allow", "allowed", nil),
		},
		want:    Counts{AllowToDeny: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:   "shadow mode: enforced verdicts are compared",
		policy: "mode: shadow\n" + edit(t, "lte: 100", "lte: 40"),
		records: []audit.Record{
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`)),
		},
		want: Counts{Unchanged: 1},
	}, {
		name:   "batch: a call newly denied denies the other",
		policy: edit(t, "lte: 100", "lte: 40"),
		records: batch(
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`)),
			tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`)),
		),
		want:    Counts{AllowToDeny: 2},
		changes: []decision.Verdict{decision.Deny, decision.Deny},
	}, {
		name:   "batch: a call newly granted in a batch that stays denied",
		policy: edit(t, "      - name: search\n", "      - name: delete_page\n      - name: search\n"),
		records: batch(
			tool("delete_page", "deny", "not_granted", nil),
			tool("get_pages", "deny", "constraint_failed", args(t, `{"workspace_id":"ws_z"}`)),
		),
		want: Counts{Unchanged: 2},
	}, {
		name:   "batch: unchanged",
		policy: base,
		records: batch(
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`)),
			tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`)),
		),
		want: Counts{Unchanged: 2},
	}, {
		name:   "batch: needs_approval in a batch denies it",
		policy: base + approvals,
		records: batch(
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a"}`)),
			tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`)),
		),
		want:    Counts{AllowToDeny: 2},
		changes: []decision.Verdict{decision.Deny, decision.Deny},
	}, {
		name:   "batch: approval rule removed from a batch it denied",
		policy: base,
		records: batch(
			tool("get_pages", "deny", "batch_denied", args(t, `{"workspace_id":"ws_a"}`)),
			tool("search", "deny", "batch_denied", args(t, `{"filter":{"owner":"me"}}`)),
		),
		want:    Counts{DenyToAllow: 2},
		changes: []decision.Verdict{decision.Allow, decision.Allow},
	}, {
		name:   "batch: a shadow role's batch enforce mode would deny, the role now enforced",
		policy: base,
		records: batch(
			shadowDenied(tool("get_pages", "allow", "batch_denied", args(t, `{"workspace_id":"ws_a"}`))),
			shadowDenied(tool("delete_page", "allow", "not_granted", nil)),
		),
		want:    Counts{AllowToDeny: 2},
		changes: []decision.Verdict{decision.Deny, decision.Deny},
	}, {
		name:   "batch: a shadow role's batch enforce mode would deny, the role still in shadow mode",
		policy: strings.Replace(base, "role: dev\n", "role: dev\nmode: shadow\n", 1),
		records: batch(
			shadowDenied(tool("get_pages", "allow", "batch_denied", args(t, `{"workspace_id":"ws_a"}`))),
			shadowDenied(tool("delete_page", "allow", "not_granted", nil)),
		),
		want: Counts{Unchanged: 2},
	}, {
		name:   "batch: undecidable as a whole when a call is",
		policy: edit(t, "lte: 100", "lte: 40"),
		records: batch(
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`, "limit")),
			tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`)),
		),
		want: Counts{Undecidable: 2},
	}, {
		name:   "batch: undecidable with a rate-limited call",
		policy: base,
		records: batch(
			tool("get_pages", "deny", "batch_denied", args(t, `{"workspace_id":"ws_a"}`)),
			tool("search", "deny", "rate_limited", args(t, `{"filter":{"owner":"me"}}`)),
		),
		skipped: 1,
		want:    Counts{Undecidable: 1},
	}, {
		name:   "batch: undecidable with a completion",
		policy: base,
		records: batch(
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a"}`)),
			rec("completion/complete", "summarize", "allow", "allowed", nil),
		),
		skipped: 1,
		want:    Counts{Undecidable: 1},
	}, {
		name:   "batch: lifecycle messages are allowed",
		policy: edit(t, "lte: 100", "lte: 40"),
		records: batch(
			msg("notifications/progress", "allow", "lifecycle"),
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`)),
		),
		skipped: 1,
		want:    Counts{AllowToDeny: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:   "batch: a lifecycle message the batch denied",
		policy: edit(t, "      - name: search\n", "      - name: delete_page\n      - name: search\n"),
		records: batch(
			msg("ping", "deny", "batch_denied"),
			tool("delete_page", "deny", "not_granted", nil),
		),
		skipped: 1,
		want:    Counts{DenyToAllow: 1},
		changes: []decision.Verdict{decision.Allow},
	}, {
		name:   "batch: a lifecycle message of a role the policy did not define",
		policy: base,
		records: batch(
			msg("ping", "deny", "unknown_role"),
			tool("get_pages", "deny", "unknown_role", args(t, `{"workspace_id":"ws_a"}`)),
		),
		skipped: 1,
		want:    Counts{DenyToAllow: 1},
		changes: []decision.Verdict{decision.Allow},
	}, {
		name:   "batch: a lifecycle message of a role the new policy drops",
		policy: strings.Replace(base, "role: dev", "role: ops", 1),
		records: batch(
			msg("ping", "allow", "lifecycle"),
			tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a"}`)),
		),
		skipped: 1,
		want:    Counts{AllowToDeny: 1},
		changes: []decision.Verdict{decision.Deny},
	}, {
		name:   "batch: a name that does not parse denies it whatever the policy",
		policy: base,
		records: batch(
			msg("tools/call", "deny", "invalid_name"),
			tool("get_pages", "deny", "batch_denied", args(t, `{"workspace_id":"ws_a"}`)),
		),
		skipped: 1,
		want:    Counts{Unchanged: 1},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := Replay(slices.Values(tt.records), compile(t, tt.policy), tt.opts)
			if rep.Replayed != len(tt.records)-tt.skipped || rep.Skipped != tt.skipped {
				t.Errorf("replayed %d, skipped %d; want %d, %d", rep.Replayed, rep.Skipped, len(tt.records)-tt.skipped, tt.skipped)
			}
			var got Counts
			for _, c := range rep.Counts {
				got.Unchanged += c.Unchanged
				got.AllowToDeny += c.AllowToDeny
				got.DenyToAllow += c.DenyToAllow
				got.ToApproval += c.ToApproval
				got.ApprovalToAllow += c.ApprovalToAllow
				got.ApprovalToDeny += c.ApprovalToDeny
				got.Undecidable += c.Undecidable
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
			var changes []decision.Verdict
			for _, c := range rep.Changes {
				changes = append(changes, c.New)
				if c.Result.Verdict != c.New || c.Record == nil {
					t.Errorf("inconsistent change %+v", c)
				}
			}
			if diff := cmp.Diff(tt.changes, changes); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if rep.Changed != len(changes) {
				t.Errorf("%d changed, %d changes listed", rep.Changed, len(changes))
			}
		})
	}
}

func TestReplaySkipsOtherRecords(t *testing.T) {
	lifecycle := rec("initialize", "", "allow", "lifecycle", nil)
	lifecycle.Server = ""
	records := []audit.Record{
		lifecycle,
		rec("HTTP GET", "", "allow", "lifecycle", nil),
		tool("get_pages", "allow", "executed", nil),
		tool("get_pages", "allow", "upstream_error", nil),
		tool("get_pages", "needs_approval", "approval_parked", nil),
		tool("get_pages", "needs_approval", "approval_approved", nil),
		rec("broker", "get_pages", "deny", "decision_invalid", nil),
		tool("get_pages", "deny", "rate_limited", args(t, `{"workspace_id":"ws_a"}`)),
		tool("get_pages", "deny", "batch_denied", args(t, `{"workspace_id":"ws_a"}`)),
		rec("completion/complete", "summarize", "deny", "not_granted", nil),
		tool("get_pages", "deny", "internal_error", nil),
		tool("get_pages", "maybe", "allowed", args(t, `{"workspace_id":"ws_a"}`)),
	}
	rep := Replay(slices.Values(records), compile(t, base), nil)
	if rep.Replayed != 0 || rep.Skipped != len(records) || len(rep.Counts) != 0 || len(rep.Changes) != 0 {
		t.Errorf("report %+v; want every record skipped", rep)
	}
}

func TestReplayReport(t *testing.T) {
	other := tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`))
	other.Role = "admin"
	records := []audit.Record{
		tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`)),
		tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`)),
		other,
		tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":5}`, "limit")),
		tool("get_pages", "deny", "constraint_failed", args(t, `{"workspace_id":"ws_a","limit":500}`)),
	}
	rep := Replay(slices.Values(records), compile(t, edit(t, "lte: 100", "lte: 40")), nil)
	want := map[Key]*Counts{
		{"admin", "notion__get_pages"}: {AllowToDeny: 1},
		{"dev", "notion__get_pages"}:   {Unchanged: 1, AllowToDeny: 1, Undecidable: 1},
		{"dev", "notion__search"}:      {Unchanged: 1},
	}
	if diff := cmp.Diff(want, rep.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if got := rep.Keys(); !slices.Equal(got, []Key{{"admin", "notion__get_pages"}, {"dev", "notion__get_pages"}, {"dev", "notion__search"}}) {
		t.Errorf("keys %v", got)
	}
	if len(rep.Changes) != 2 || rep.Changes[0].Record.Role != "dev" || rep.Changes[1].Result.Code != decision.CodeUnknownRole {
		t.Errorf("changes %+v", rep.Changes)
	}
	if rep.Undecidable() != 1 || rep.Replayed != 5 {
		t.Errorf("undecidable %d, replayed %d", rep.Undecidable(), rep.Replayed)
	}
}

// Outcome never says that nothing would change while some decisions could
// not be decided.
func TestReportOutcome(t *testing.T) {
	tests := []struct {
		replayed, changed, undecidable int
		want                           string
	}{
		{0, 0, 0, "no decision would change"},
		{3, 0, 0, "no decision would change"},
		{3, 1, 0, "1 decision would change"},
		{3, 2, 1, "2 decisions would change, and 1 could not be decided"},
		{4, 0, 4, "4 decisions could not be decided, and no other was replayed"},
		{2, 0, 1, "1 decision could not be decided; the other would not change"},
		{5, 0, 2, "2 decisions could not be decided; none of the 3 others would change"},
	}
	for _, tt := range tests {
		rep := Report{Replayed: tt.replayed, Changed: tt.changed, Counts: map[Key]*Counts{{"dev", "notion__get_pages"}: {Undecidable: tt.undecidable}}}
		if got := rep.Outcome(); got != tt.want {
			t.Errorf("%d replayed, %d changed, %d undecidable: %q, want %q", tt.replayed, tt.changed, tt.undecidable, got, tt.want)
		}
	}
}

// The records of a batch need not be next to each other: the records of
// concurrent decisions come between them, and the broker's records of the
// same decision come after, at a later time, and are not part of it.
func TestReplayGathersBatches(t *testing.T) {
	b := batch(
		tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`)),
		tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`)),
	)
	single := tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":5}`))
	executed := func(r audit.Record) audit.Record {
		r.Time, r.Code, r.Args = r.Time.Add(time.Second), "executed", nil
		return r
	}
	records := []audit.Record{b[0], single, b[1], executed(b[0]), executed(b[1])}
	rep := Replay(slices.Values(records), compile(t, edit(t, "lte: 100", "lte: 40")), nil)
	if rep.Replayed != 3 || rep.Skipped != 2 {
		t.Errorf("replayed %d, skipped %d; want 3, 2", rep.Replayed, rep.Skipped)
	}
	type change struct {
		Tool string
		Old  decision.Verdict
		New  decision.Verdict
		Code decision.Code
	}
	var got []change
	for _, c := range rep.Changes {
		got = append(got, change{c.Record.Tool, c.Old, c.New, c.Result.Code})
	}
	want := []change{
		{"search", decision.Allow, decision.Deny, "batch_denied"},
		{"get_pages", decision.Allow, decision.Deny, decision.CodeConstraintFailed},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

// A batch is gathered whole however many messages it has, the records
// of concurrent requests among them: the window follows its latest record.
func TestReplayGathersLargeBatches(t *testing.T) {
	calls := []audit.Record{tool("delete_page", "deny", "not_granted", nil)}
	for range 2 * gatherWindow {
		calls = append(calls, tool("get_pages", "deny", "batch_denied", args(t, `{"workspace_id":"ws_a"}`)))
	}
	calls = batch(calls...)
	var records []audit.Record
	for i, c := range calls {
		if i%500 == 0 {
			records = append(records, tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_b"}`)))
		}
		records = append(records, c)
	}
	rep := Replay(slices.Values(records), compile(t, base), nil)
	want := map[Key]*Counts{
		{"dev", "notion__delete_page"}: {Unchanged: 1},
		{"dev", "notion__get_pages"}:   {Unchanged: 2*gatherWindow + 5},
	}
	if diff := cmp.Diff(want, rep.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if len(rep.Changes) != 0 {
		t.Errorf("%d changes, want none", len(rep.Changes))
	}
}

// Records read from the stream replicas share interleave theirs: a batch
// is gathered among its own replica's records however many of another's
// come between, and the changes keep the order of the records.
func TestReplayGathersBatchesPerReplica(t *testing.T) {
	b := batch(
		tool("search", "allow", "allowed", args(t, `{"filter":{"owner":"me"}}`)),
		tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`)),
	)
	records := []audit.Record{b[0], tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":60}`))}
	for range 2 * gatherWindow {
		records = append(records, msg("ping", "allow", "lifecycle"))
	}
	records = append(records, b[1])
	for i := range records {
		records[i].Replica = "b"
	}
	records[0].Replica, records[len(records)-1].Replica = "a", "a"
	rep := Replay(slices.Values(records), compile(t, edit(t, "lte: 100", "lte: 40")), nil)
	if rep.Replayed != 3 || rep.Skipped != 2*gatherWindow {
		t.Errorf("replayed %d, skipped %d; want 3, %d", rep.Replayed, rep.Skipped, 2*gatherWindow)
	}
	var got []string
	for _, c := range rep.Changes {
		got = append(got, c.Record.Replica+" "+c.Record.Tool+" "+string(c.Result.Code))
	}
	want := []string{"a search batch_denied", "a get_pages constraint_failed", "b get_pages constraint_failed"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

// A report keeps the first changes whole, in record order, however the
// replicas' records interleave, and counts them all.
func TestReplayKeepsTheFirstChanges(t *testing.T) {
	var records []audit.Record
	for i := range 3 * gatherWindow {
		r := tool("get_pages", "allow", "allowed", args(t, `{"workspace_id":"ws_a","limit":50}`))
		r.Replica = []string{"a", "b"}[i%2]
		records = append(records, r)
	}
	rep := Replay(slices.Values(records), compile(t, edit(t, "lte: 100", "lte: 40")), &Options{MaxChanges: 5})
	var got []string
	for _, c := range rep.Changes {
		got = append(got, c.Record.DecisionID)
	}
	var want []string
	for _, r := range records[:5] {
		want = append(want, r.DecisionID)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes kept (-want +got):\n%s", diff)
	}
	if rep.Changed != len(records) || rep.Counts[Key{"dev", "notion__get_pages"}].AllowToDeny != len(records) {
		t.Errorf("%d changed, counts %+v; want all %d", rep.Changed, rep.Counts, len(records))
	}
}

// The tools agents name are theirs to invent: past MaxToolsPerRole, a
// role's tools are counted together.
func TestReplayFoldsToolsPastTheLimit(t *testing.T) {
	var records []audit.Record
	for _, name := range []string{"b", "a", "c", "a", "d", "e"} {
		records = append(records, tool(name, "deny", "not_granted", nil))
	}
	other := tool("z", "deny", "not_granted", nil)
	other.Role = "ops"
	records = append(records, other)
	rep := Replay(slices.Values(records), compile(t, base), &Options{MaxToolsPerRole: 2})
	want := map[Key]*Counts{
		{"dev", "notion__a"}: {Unchanged: 2},
		{"dev", "notion__b"}: {Unchanged: 1},
		{"dev", ""}:          {Unchanged: 3},
		{"ops", "notion__z"}: {Unchanged: 1},
	}
	if diff := cmp.Diff(want, rep.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Key{{"dev", "notion__a"}, {"dev", "notion__b"}, {"dev", ""}, {"ops", "notion__z"}}, rep.Keys()); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
}

// CatalogAnnotations knows the annotations of a listed tool, nil ones
// included, and nothing of a tool or server the catalogue does not list.
func TestCatalogAnnotations(t *testing.T) {
	ro := true
	ann := &policy.Annotations{ReadOnly: &ro}
	get := CatalogAnnotations(policy.StaticCatalog{"notion": {{Name: "get_pages", Annotations: ann}, {Name: "bare"}}})
	if a, known := get("notion", "get_pages"); !known || a != ann {
		t.Errorf("get_pages = %v, %v; want its annotations, known", a, known)
	}
	if a, known := get("notion", "bare"); !known || a != nil {
		t.Errorf("bare = %v, %v; want none, known", a, known)
	}
	for _, k := range [][2]string{{"notion", "delete_page"}, {"github", "get_pages"}} {
		if _, known := get(k[0], k[1]); known {
			t.Errorf("%s/%s is known, but the catalogue does not list it", k[0], k[1])
		}
	}
}

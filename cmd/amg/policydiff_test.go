package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const policyDiffDir = "testdata/policydiff/"

func TestPolicyDiff(t *testing.T) {
	code, stdout, stderr := runCLI(t, "policy", "diff", policyDiffDir+"old", policyDiffDir+"new")
	if code != 1 || stderr != "" {
		t.Errorf("exit %d, stderr:\n%s", code, stderr)
	}
	want := `role auditor: added
role editor:
  notion tool archive_page: no longer granted
  notion tool create_page: granted
  notion tool get_pages: argument cursor added: max_len 256, optional
  notion tool get_pages: argument filter.tags[]: max_len 20 -> max_len 30
  notion tool get_pages: argument limit: lte 100, gte 1, optional -> lte 50
  notion tool get_pages: argument owner removed: pattern "[a-z]+"
  notion tool get_pages: argument workspace_id: in ["ws_a", "ws_b"] -> in ["ws_a"]
  notion tool search: cel: 'size(args.query) < 100' -> 'size(args.query) < 200'
  notion tool update_page: cel: 'agent != "bot"' -> none
  notion tool update_page: require_approval: false -> true
  notion tool update_page: rate limit removed: 10 per 1m, burst 10, key agent
  notion tool update_page: rate limit added: 5 per 1m, burst 5, key role
  notion prompt summarize: argument lang added: in ["en", "fr"], optional
  notion prompt translate: no longer granted
  notion resource "notion://ws_b/*": no longer granted
  notion resource "notion://ws_c/*": granted
  slack tool post_message: granted
  approval removed: annotations {destructiveHint: true}
  approval removed: match "delete*", timeout 15m
  approval added: match "delete*", timeout 30m
  rate limit removed: 60 per 1m, burst 10, key agent
  rate limit added: 60 per 1m, burst 20, key agent
  redact removed: "*.token"
  redact added: "*.secret"
role legacy: removed
role trial:
  mode: shadow -> enforce
  approvals reordered: match "a*"; match "b*" -> match "b*"; match "a*"
`
	if diff := cmp.Diff(want, stdout); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
}

// Going back undoes every change: what was added is removed, what was
// granted is no longer, and each "a -> b" reads "b -> a".
func TestPolicyDiffReversed(t *testing.T) {
	_, forward, _ := runCLI(t, "policy", "diff", policyDiffDir+"old", policyDiffDir+"new")
	code, backward, stderr := runCLI(t, "policy", "diff", policyDiffDir+"new", policyDiffDir+"old")
	if code != 1 || stderr != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	swap := strings.NewReplacer(": added", ": removed", ": removed", ": added",
		" added: ", " removed: ", " removed: ", " added: ",
		": granted", ": no longer granted", ": no longer granted", ": granted")
	var want []string
	for _, l := range strings.Split(forward, "\n") {
		if i := strings.Index(l, " -> "); i >= 0 {
			j := strings.LastIndex(l[:i], ": ") + len(": ")
			l = l[:j] + l[i+len(" -> "):] + " -> " + l[j:i]
		}
		want = append(want, swap.Replace(l))
	}
	got := strings.Split(backward, "\n")
	slices.Sort(want)
	slices.Sort(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines of the reversed diff (-forward, undone +reversed):\n%s", diff)
	}
}

func TestPolicyDiffNoDifferences(t *testing.T) {
	tests := []struct {
		name     string
		old, new string
	}{
		{"the same directory", "old", "old"},
		// Written differently, deciding alike: file names, comments,
		// key order, fields: for a dotted path, default values spelt out,
		// unordered lists reordered.
		{"the same roles written differently", "old", "same"},
		{"and back", "same", "old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, "policy", "diff", policyDiffDir+tt.old, policyDiffDir+tt.new)
			if code != 0 || stderr != "" {
				t.Errorf("exit %d, stderr:\n%s", code, stderr)
			}
			if diff := cmp.Diff("no differences\n", stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
		})
	}
}

// Every failure exits 2, never 1, which says the policies differ.
func TestPolicyDiffErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a policy does not compile", []string{"testdata/broken", policyDiffDir + "old"}, `testdata/broken/reader.yaml:9:25: servers.notion.tools[0].constraints.limit.lte: lte needs a number, got a string
testdata/broken/reader.yaml:10:29: servers.notion.tools[0].constraints.owner.pattern: invalid pattern: missing closing ]: ` + "`[a-z`" + `
testdata/broken/reader.yaml:11:20: servers.notion.tools[0].constraints.title.starts_with: unknown field "starts_with" (expected one of: eq, ne, in, not_in, lt, lte, gt, gte, pattern, prefix, suffix, path_within, min_len, max_len, each, fields, optional)
testdata/broken/reader_copy.yaml:1:7: role: duplicate role "reader" (also defined at testdata/broken/reader.yaml:1:7)
testdata/broken/reader_copy.yaml:2:7: mode: must be enforce or shadow, got "strict"
5 problems
`},
		{"neither compiles", []string{policyDiffDir + "broken", "testdata/broken"}, `testdata/policydiff/broken/editor.yaml:6:15: servers.notion.tools[0].cel: cel: undeclared reference to 'user'
testdata/broken/reader.yaml:9:25: servers.notion.tools[0].constraints.limit.lte: lte needs a number, got a string
testdata/broken/reader.yaml:10:29: servers.notion.tools[0].constraints.owner.pattern: invalid pattern: missing closing ]: ` + "`[a-z`" + `
testdata/broken/reader.yaml:11:20: servers.notion.tools[0].constraints.title.starts_with: unknown field "starts_with" (expected one of: eq, ne, in, not_in, lt, lte, gt, gte, pattern, prefix, suffix, path_within, min_len, max_len, each, fields, optional)
testdata/broken/reader_copy.yaml:1:7: role: duplicate role "reader" (also defined at testdata/broken/reader.yaml:1:7)
testdata/broken/reader_copy.yaml:2:7: mode: must be enforce or shadow, got "strict"
6 problems
`},
		{"a missing directory", []string{policyDiffDir + "old", policyDiffDir + "nope"}, "amg: read policy directory: open testdata/policydiff/nope: no such file or directory\n"},
		{"one directory", []string{policyDiffDir + "old"}, "amg: accepts 2 arg(s), received 1\n"},
		{"an unknown flag", []string{"--servers", "notion", policyDiffDir + "old", policyDiffDir + "new"}, "amg: unknown flag: --servers\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"policy", "diff"}, tt.args...)...)
			if code != 2 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want exit 2 and nothing on stdout", code, stdout)
			}
			if diff := cmp.Diff(tt.want, stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

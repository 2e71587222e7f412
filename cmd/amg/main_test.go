package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestPolicyValidateExamples(t *testing.T) {
	code, stdout, stderr := runCLI(t, "policy", "validate", "--servers", "notion", "../../policies")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	if !strings.HasPrefix(stdout, "ok: 3 roles, policy version 1-") {
		t.Errorf("stdout = %q", stdout)
	}
}

// brokenProblems is what the policy commands print of testdata/broken,
// compiled with --servers notion.
const brokenProblems = `testdata/broken/reader.yaml:9:25: servers.notion.tools[0].constraints.limit.lte: lte needs a number, got a string
testdata/broken/reader.yaml:10:29: servers.notion.tools[0].constraints.owner.pattern: invalid pattern: missing closing ]: ` + "`[a-z`" + `
testdata/broken/reader.yaml:11:20: servers.notion.tools[0].constraints.title.starts_with: unknown field "starts_with" (expected one of: eq, ne, in, not_in, lt, lte, gt, gte, pattern, prefix, suffix, path_within, min_len, max_len, each, fields, optional)
testdata/broken/reader_copy.yaml:1:7: role: duplicate role "reader" (also defined at testdata/broken/reader.yaml:1:7)
testdata/broken/reader_copy.yaml:2:7: mode: must be enforce or shadow, got "strict"
testdata/broken/reader_copy.yaml:4:3: servers.slack: unknown server "slack"
6 problems
`

func TestPolicyValidateListsEveryProblem(t *testing.T) {
	code, stdout, stderr := runCLI(t, "policy", "validate", "--servers", "notion", "testdata/broken")
	want := brokenProblems
	if code != 1 || stdout != "" {
		t.Errorf("exit %d, stdout %q; want exit 1 and nothing on stdout", code, stdout)
	}
	if diff := cmp.Diff(want, stderr); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}

func TestPolicyValidateAgainstCatalog(t *testing.T) {
	code, _, stderr := runCLI(t, "policy", "validate", "--catalog", "testdata/catalog.json", "testdata/typo")
	want := `testdata/typo/reader.yaml:7:11: servers.notion.tools[0].constraints.workspace_id: lte needs a number, but the input schema of notion__get_pages says "workspace_id" is a string
testdata/typo/reader.yaml:8:11: servers.notion.tools[0].constraints.limt: argument "limt" is not in the input schema of notion__get_pages
testdata/typo/reader.yaml:9:9: servers.notion.tools[1]: server "notion" has no tool "delete_page"
3 problems
`
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if diff := cmp.Diff(want, stderr); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}

func TestPolicyValidateErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing directory", []string{"policy", "validate", "testdata/nope"}, "amg: read policy directory: open testdata/nope: no such file or directory\n"},
		{"missing catalogue", []string{"policy", "validate", "--catalog", "testdata/nope.json", "testdata/typo"}, "amg: read catalogue: open testdata/nope.json: no such file or directory\n"},
		{"no directory", []string{"policy", "validate"}, "amg: accepts 1 arg(s), received 0\n"},
		{"unknown command", []string{"polcy"}, "amg: unknown command \"polcy\" for \"amg\"\n\nDid you mean this?\n\tpolicy\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tt.args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			if diff := cmp.Diff(tt.want, stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "amg dev") {
		t.Errorf("exit %d, stdout %q", code, stdout)
	}
}

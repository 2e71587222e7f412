package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const policyTestDir = "testdata/policytest/"

func TestPolicyTest(t *testing.T) {
	policies := policyTestDir + "policies"
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "every case passes",
			args:       []string{"--servers", "notion", policies, policyTestDir + "pass.yaml"},
			wantStdout: "12 passed, 0 failed\n",
		},
		{
			// One line per failing case and per problem, in file order;
			// the cases of the file that pass are counted.
			name:     "failures and a misspelt key",
			args:     []string{policies, policyTestDir + "pass.yaml", policyTestDir + "fail.yaml"},
			wantCode: 1,
			wantStdout: `testdata/policytest/fail.yaml:6:3: wrong verdict: want allow; got deny, code constraint_failed, rule reader/notion/get_pages: argument "workspace_id" is not one of the allowed values
testdata/policytest/fail.yaml:11:3: reason mismatch: want deny, reason containing "workspace"; got deny, code unknown_argument, rule reader/notion/get_pages: argument "curser" is not allowed for "notion__get_pages"
testdata/policytest/fail.yaml:17:3: code mismatch: want deny, code not_granted; got deny, code constraint_failed, rule editor/notion/delete_page: argument "page_id" does not match the required pattern
testdata/policytest/fail.yaml:24:3: not a shadow role: want allow, shadow_verdict allow; got allow (role "reader" is not in shadow mode), code allowed, rule reader/notion/get_pages
testdata/policytest/fail.yaml:33:3: [5].argumnets: unknown field "argumnets" (expected one of: name, role, agent, method, tool, prompt, uri, arguments, annotations, want, code, reason, shadow_verdict)
13 passed, 4 failed, 1 problem in test files
`,
		},
		{
			// The catalogue says get_pages is read-only, so the editor's
			// rule on destructive tools does not park it.
			name:       "annotations from the catalogue",
			args:       []string{"--catalog", policyTestDir + "catalog.json", policies, policyTestDir + "annotated.yaml"},
			wantStdout: "1 passed, 0 failed\n",
		},
		{
			name:     "without the catalogue a tool declared no annotations",
			args:     []string{policies, policyTestDir + "annotated.yaml"},
			wantCode: 1,
			wantStdout: `testdata/policytest/annotated.yaml:3:3: reading is not parked: want allow; got needs_approval, code approval_required, rule editor/approvals[0]: calls to "notion__get_pages" need human approval
0 passed, 1 failed
`,
		},
		{
			// A case naming what the policy or the gateway does not know
			// would be denied whatever the policy says.
			name:     "a role, server or tool that does not exist",
			args:     []string{"--servers", "notion,github", "--catalog", policyTestDir + "catalog.json", policies, policyTestDir + "bad/scope.yaml"},
			wantCode: 1,
			wantStdout: `testdata/policytest/bad/scope.yaml:2:9: [0].role: role "raeder" is not defined in testdata/policytest/policies (roles: editor, reader, trial); a case testing an undefined role says code: unknown_role
testdata/policytest/bad/scope.yaml:13:9: [2].tool: unknown server "slack" (servers: notion)
testdata/policytest/bad/scope.yaml:17:9: [3].tool: server "notion" has no tool "get_pagse" in the catalogue
testdata/policytest/bad/scope.yaml:26:8: [5].uri: unknown server "slack" (servers: notion)
2 passed, 0 failed, 4 problems in test files
`,
		},
		{
			// Without --servers and --catalog, any server and tool will do.
			name:     "a role that does not exist",
			args:     []string{policies, policyTestDir + "bad/scope.yaml"},
			wantCode: 1,
			wantStdout: `testdata/policytest/bad/scope.yaml:2:9: [0].role: role "raeder" is not defined in testdata/policytest/policies (roles: editor, reader, trial); a case testing an undefined role says code: unknown_role
5 passed, 0 failed, 1 problem in test files
`,
		},
		{
			name:       "the policy does not compile",
			args:       []string{"--servers", "notion", "testdata/broken", policyTestDir + "pass.yaml"},
			wantCode:   1,
			wantStderr: brokenProblems,
		},
		{
			name:       "no test file",
			args:       []string{policies},
			wantCode:   1,
			wantStderr: "amg: requires at least 2 arg(s), only received 1\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"policy", "test"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d", code, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantStdout, stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantStderr, stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

// Test files are read strictly: every problem is reported at its
// file:line:col, a case with one is not run, and the run fails.
func TestPolicyTestFileProblems(t *testing.T) {
	bad := policyTestDir + "bad/"
	tests := []struct {
		file string
		want string
	}{
		{"syntax.yaml", `testdata/policytest/bad/syntax.yaml:1:1: invalid YAML: did not find expected node content
0 passed, 0 failed, 1 problem in test files
`},
		{"mapping.yaml", `testdata/policytest/bad/mapping.yaml:1:1: must be a list, got a mapping
0 passed, 0 failed, 1 problem in test files
`},
		{"empty.yaml", `testdata/policytest/bad/empty.yaml: empty test file
0 passed, 0 failed, 1 problem in test files
`},
		{"none.yaml", `testdata/policytest/bad/none.yaml:1:1: no test cases
0 passed, 0 failed, 1 problem in test files
`},
		{"two.yaml", `testdata/policytest/bad/two.yaml:6:1: a test file holds one YAML document, but a second starts here
1 passed, 0 failed, 1 problem in test files
`},
		{"missing.yaml", `testdata/policytest/bad/missing.yaml: cannot read test file: no such file or directory
0 passed, 0 failed, 1 problem in test files
`},
		{"cases.yaml", `testdata/policytest/bad/cases.yaml:1:3: [0]: must be a mapping, got a string
testdata/policytest/bad/cases.yaml:2:3: [1]: missing required field "name"
testdata/policytest/bad/cases.yaml:2:3: [1]: missing required field "role"
testdata/policytest/bad/cases.yaml:2:3: [1]: missing required field "want"
testdata/policytest/bad/cases.yaml:5:11: [2].method: must be tools/call, prompts/get or resources/read, got "tools/list"
testdata/policytest/bad/cases.yaml:7:9: [2].want: must be allow, deny or needs_approval, got "yes"
testdata/policytest/bad/cases.yaml:11:3: [3].prompt: a case calls one thing, but it has both tool and prompt
testdata/policytest/bad/cases.yaml:13:3: [4]: missing what the case calls: tool, prompt or uri
testdata/policytest/bad/cases.yaml:18:11: [5].method: prompts/get names what it calls with prompt, not tool
testdata/policytest/bad/cases.yaml:23:9: [6].tool: tool name "get_pages" has no server prefix; expected server__tool
testdata/policytest/bad/cases.yaml:27:8: [7].uri: resource URI "notion://ws_a/p1" is not a gateway URI (amg:<server>:<uri>)
testdata/policytest/bad/cases.yaml:32:14: [8].arguments: must be a mapping, got a list
testdata/policytest/bad/cases.yaml:37:13: [9].arguments: must be a mapping, got null
testdata/policytest/bad/cases.yaml:42:14: [10].arguments: resources/read calls have no arguments
testdata/policytest/bad/cases.yaml:47:25: [11].arguments.page_id: prompt argument values must be strings, got a number
testdata/policytest/bad/cases.yaml:48:16: [11].annotations: only tools have annotations
testdata/policytest/bad/cases.yaml:53:18: [12].annotations.readOnly: unknown field "readOnly" (expected one of: readOnlyHint, destructiveHint, idempotentHint, openWorldHint)
testdata/policytest/bad/cases.yaml:53:51: [12].annotations.destructiveHint: must be true or false, got a string
testdata/policytest/bad/cases.yaml:58:16: [13].arguments: keys must be strings, got a number
testdata/policytest/bad/cases.yaml:58:44: [13].arguments.workspace_id: duplicate key (first at line 58)
testdata/policytest/bad/cases.yaml:58:71: [13].arguments.limit: JSON has no .nan: must be a finite number
testdata/policytest/bad/cases.yaml:58:83: [13].arguments.tags: unsupported value "x" (!custom)
testdata/policytest/bad/cases.yaml:63:14: [14].arguments: key "Workspace_ID" is a case-insensitive duplicate of key "workspace_id"
testdata/policytest/bad/cases.yaml:68:23: [15].arguments.limit: ambiguous leading zero: write 10, or 0o10 for octal
testdata/policytest/bad/cases.yaml:68:36: [15].arguments.offset: ambiguous leading zero: write 19
testdata/policytest/bad/cases.yaml:73:33: [16].arguments.workspace_id: aliases are not allowed in test files: write the value out
testdata/policytest/bad/cases.yaml:73:59: [16].arguments.limit[0]: aliases are not allowed in test files: write the value out
testdata/policytest/bad/cases.yaml:78:14: [17].arguments: must be a mapping, got an alias
testdata/policytest/bad/cases.yaml:83:25: [18].arguments.page_id: prompt argument values must be strings, got an alias
0 passed, 0 failed, 29 problems in test files
`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, "policy", "test", policyTestDir+"policies", bad+tt.file)
			if code != 1 || stderr != "" {
				t.Errorf("exit %d, stderr %q; want exit 1 and nothing on stderr", code, stderr)
			}
			if diff := cmp.Diff(tt.want, stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
		})
	}
}

// Every case of pass.yaml decides something: with each want changed to
// another verdict, every case fails.
func TestPolicyTestEveryCaseCanFail(t *testing.T) {
	data, err := os.ReadFile(policyTestDir + "pass.yaml")
	if err != nil {
		t.Fatal(err)
	}
	other := map[string]string{"allow": "deny", "deny": "allow", "needs_approval": "allow"}
	flipped := regexp.MustCompile(`(?m)^(  want: )(\w+)$`).ReplaceAllStringFunc(string(data), func(s string) string {
		prefix, verdict, _ := strings.Cut(s, ": ")
		return prefix + ": " + other[verdict]
	})
	name := filepath.Join(t.TempDir(), "flipped.yaml")
	if err := os.WriteFile(name, []byte(flipped), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ := runCLI(t, "policy", "test", policyTestDir+"policies", name)
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if code != 1 || len(lines) != 13 || lines[12] != "0 passed, 12 failed" {
		t.Errorf("exit %d, stdout:\n%s", code, stdout)
	}
}

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/redistest"
	"github.com/amgateway/amg/mcpfilter"
)

const replayPolicy = `role: dev
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { in: ["ws_a", "ws_b"] }
          limit: { lte: 100, optional: true }
          api_key: { optional: true }
`

// writeReplayAudit writes an audit log through the real file device, as
// the gateway would under replayPolicy, and returns its path.
func writeReplayAudit(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), audit.FileName)
	dev, err := audit.NewFileDevice(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	red := audit.NewRedactor([]byte("0123456789abcdef0123456789abcdef"))
	redact := func(s string, rules ...string) json.RawMessage {
		v, err := mcpfilter.ParseArguments([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return red.RedactRaw(json.RawMessage(s), v, rules)
	}
	at := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	call := func(id, agent, tool, verdict, code string, args json.RawMessage) *audit.Record {
		at = at.Add(time.Second)
		return &audit.Record{Time: at, DecisionID: id, Agent: agent, Role: "dev", Server: "notion", Tool: tool,
			Method: "tools/call", Verdict: verdict, Code: code, Args: args, PolicyVersion: "1-abc"}
	}
	records := []*audit.Record{
		{Time: at, DecisionID: "d0", Agent: "alice", Role: "dev", Method: "initialize", Verdict: "allow", Code: "lifecycle"},
		call("d1", "alice", "get_pages", "allow", "allowed", redact(`{"workspace_id":"ws_a","limit":20}`)),
		call("d2", "alice", "get_pages", "allow", "allowed", redact(`{"workspace_id":"ws_a","limit":80,"api_key":"s3cr3t"}`)),
		call("d2", "", "get_pages", "allow", "executed", nil),
		call("d3", "bob", "get_pages", "allow", "allowed", redact(`{"workspace_id":"ws_b","limit":90}`, "limit")),
		call("d4", "bob", "delete_page", "deny", "not_granted", redact(`{"page_id":"pg_1"}`)),
	}
	for _, r := range records {
		if err := dev.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func writePolicyDir(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dev.yaml"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestReplayChanges(t *testing.T) {
	log := writeReplayAudit(t)
	tightened := strings.Replace(replayPolicy, "lte: 100", "lte: 50", 1) +
		"      - name: delete_page\n        constraints:\n          page_id: { prefix: \"pg_\" }\n"
	code, stdout, stderr := runCLI(t, "replay", "--audit", log, "--policy", writePolicyDir(t, tightened), "--servers", "notion")
	if code != 1 || stderr != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	want := `2026-03-01T10:00:02Z d2 alice dev notion__get_pages: allow -> deny: argument "limit" must be <= 50
2026-03-01T10:00:05Z d4 bob dev notion__delete_page: deny -> allow: allowed

ROLE  TOOL                 UNCHANGED  ALLOW->DENY  DENY->ALLOW  ->NEEDS_APPROVAL  NEEDS_APPROVAL->ALLOW  NEEDS_APPROVAL->DENY  UNDECIDABLE
dev   notion__delete_page  0          0            1            0                 0                      0                     0
dev   notion__get_pages    1          1            0            0                 0                      0                     1

2 decisions would change, and 1 could not be decided (4 decisions replayed, 1 undecidable, 2 other records skipped)
`
	if diff := cmp.Diff(want, stdout); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}

	// The first changes are printed, and the others counted.
	code, stdout, stderr = runCLI(t, "replay", "--audit", log, "--policy", writePolicyDir(t, tightened), "--servers", "notion", "--max-changes", "1")
	if code != 1 || stderr != "" {
		t.Fatalf("--max-changes 1: exit %d, stderr:\n%s", code, stderr)
	}
	first, _, _ := strings.Cut(want, "\n")
	want = strings.Replace(want, want[:strings.Index(want, "\n\n")], first+"\n... and 1 more changed decision, not printed (--max-changes)", 1)
	if diff := cmp.Diff(want, stdout); diff != "" {
		t.Errorf("--max-changes 1: stdout (-want +got):\n%s", diff)
	}
}

// The exit status tells "nothing would change" from "some decisions could
// not be decided": a CI gate must not pass a policy whose effect replay
// could not tell.
func TestReplayNoChange(t *testing.T) {
	log := writeReplayAudit(t)
	tests := []struct {
		name   string
		policy string
		flags  []string
		code   int
		last   string
	}{{
		name:   "every decision decided",
		policy: strings.Replace(replayPolicy, "limit: { lte: 100, optional: true }", "limit: { optional: true }", 1),
		last:   "no decision would change (4 decisions replayed, 0 undecidable, 2 other records skipped)",
	}, {
		name:   "a redacted argument the policy constrains",
		policy: replayPolicy,
		code:   3,
		last:   "1 decision could not be decided; none of the 3 others would change (4 decisions replayed, 1 undecidable, 2 other records skipped)",
	}, {
		name:   "a redacted argument the policy constrains, undecidable allowed",
		policy: replayPolicy,
		flags:  []string{"--allow-undecidable"},
		last:   "1 decision could not be decided; none of the 3 others would change (4 decisions replayed, 1 undecidable, 2 other records skipped)",
	}, {
		name:   "a CEL condition over redacted arguments",
		policy: replayPolicy + "        cel: 'args.workspace_id != \"ws_z\"'\n",
		code:   3,
		last:   "2 decisions could not be decided; none of the 2 others would change (4 decisions replayed, 2 undecidable, 2 other records skipped)",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"replay", "--audit", log, "--policy", writePolicyDir(t, tt.policy)}, tt.flags...)
			code, stdout, stderr := runCLI(t, args...)
			if code != tt.code || stderr != "" {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
			if last := lines[len(lines)-1]; last != tt.last {
				t.Errorf("last line %q, want %q; stdout:\n%s", last, tt.last, stdout)
			}
		})
	}
}

func TestReplayErrors(t *testing.T) {
	log := writeReplayAudit(t)
	policyDir := writePolicyDir(t, replayPolicy)

	code, _, stderr := runCLI(t, "replay", "--audit", log, "--policy", "testdata/broken")
	if code != 2 || !strings.Contains(stderr, "reader.yaml:") || !strings.HasSuffix(stderr, " problems\n") {
		t.Errorf("broken policy: exit %d, stderr:\n%s", code, stderr)
	}

	code, _, stderr = runCLI(t, "replay", "--audit", log+".missing", "--policy", policyDir)
	if code != 2 || !strings.HasPrefix(stderr, "amg: ") {
		t.Errorf("missing audit file: exit %d, stderr:\n%s", code, stderr)
	}

	bad := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(bad, []byte("not json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "replay", "--audit", bad, "--policy", policyDir)
	if code != 2 || !strings.Contains(stderr, bad+":1: bad JSON") {
		t.Errorf("bad audit file: exit %d, stderr:\n%s", code, stderr)
	}

	for _, args := range [][]string{{"--policy", policyDir}, {"--policy", policyDir, "--audit", log, "--redis", "127.0.0.1:1"}} {
		code, _, stderr = runCLI(t, append([]string{"replay"}, args...)...)
		if code != 2 || stderr != "amg: --policy and one of --audit or --redis are required\n" {
			t.Errorf("replay %v: exit %d, stderr:\n%s", args, code, stderr)
		}
	}
}

// Usage errors cobra catches before RunE exit 2 as well: a CI gate must
// never read a mistyped command line as "some decision would change".
func TestReplayUsageErrors(t *testing.T) {
	log := writeReplayAudit(t)
	policyDir := writePolicyDir(t, replayPolicy)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--audit", log, "--polcy", policyDir}, "amg: unknown flag: --polcy\n"},
		{"flag without value", []string{"--audit", log, "--policy"}, "amg: flag needs an argument: --policy\n"},
		{"no changes to print", []string{"--audit", log, "--policy", policyDir, "--max-changes", "0"}, "amg: --max-changes must be at least 1, not 0\n"},
		{"extra argument", []string{"--audit", log, "--policy", policyDir, "extra"}, "amg: unknown command \"extra\" for \"amg replay\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"replay"}, tt.args...)...)
			if code != 2 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want exit 2 and nothing on stdout", code, stdout)
			}
			if diff := cmp.Diff(tt.want, stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReplayTornLastLine(t *testing.T) {
	log := writeReplayAudit(t)
	f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"ts":"2026-03-01T10:00:09Z","decision_id":"d9"`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	code, stdout, stderr := runCLI(t, "replay", "--audit", log, "--policy", writePolicyDir(t, replayPolicy), "--allow-undecidable")
	if code != 0 || stderr != "warning: "+log+":7: skipped an incomplete last line\n" || !strings.HasPrefix(stdout, "ROLE") {
		t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// A log whose hash chain is broken (a record edited) is not replayed as
// the record of what happened: a CI gate would pass a policy change on
// falsified evidence. --no-verify replays it anyway, saying so.
func TestReplayBrokenChain(t *testing.T) {
	log := writeReplayAudit(t)
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	// Record d2, on line 3, asked for 80 pages; the edit makes it 20, which
	// the tightened policy allows.
	tampered := strings.Replace(string(data), `"limit":80`, `"limit":20`, 1)
	if tampered == string(data) {
		t.Fatal("nothing tampered")
	}
	if err := os.WriteFile(log, []byte(tampered), 0o600); err != nil {
		t.Fatal(err)
	}
	policyDir := writePolicyDir(t, strings.Replace(replayPolicy, "lte: 100", "lte: 50", 1))
	code, stdout, stderr := runCLI(t, "replay", "--audit", log, "--policy", policyDir, "--allow-undecidable")
	if code != 2 || stdout != "" || !strings.HasPrefix(stderr, "amg: the audit log does not verify, so nothing was replayed") ||
		!strings.Contains(stderr, log+":3: hash mismatch") {
		t.Errorf("tampered log: exit %d, want 2 naming %s:3\nstdout:\n%s\nstderr:\n%s", code, log, stdout, stderr)
	}

	code, stdout, stderr = runCLI(t, "replay", "--audit", log, "--policy", policyDir, "--allow-undecidable", "--no-verify")
	if code != 0 || !strings.HasPrefix(stdout, "ROLE") || stderr != "warning: --no-verify: the audit log's hash chain is not checked, and its records may have been altered\n" {
		t.Errorf("--no-verify: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	code, _, stderr = runCLI(t, "replay", "--redis", "127.0.0.1:1", "--policy", policyDir, "--no-verify")
	if code != 2 || stderr != "amg: --no-verify is for --audit: the Redis stream has no hash chain to verify\n" {
		t.Errorf("--no-verify with --redis: exit %d, stderr:\n%s", code, stderr)
	}
}

// With --redis, replay reads what the replicas shipped there: the same
// records, the same report as from the file.
func TestReplayFromRedis(t *testing.T) {
	log := writeReplayAudit(t)
	srv := redistest.Start(t)
	shipAll(t, srv, log, 6)
	policy := writePolicyDir(t, strings.Replace(replayPolicy, "lte: 100", "lte: 50", 1))
	fromFile, wantOut, _ := runCLI(t, "replay", "--audit", log, "--policy", policy, "--servers", "notion")
	code, stdout, stderr := runCLI(t, "replay", "--redis", srv.Addr, "--policy", policy, "--servers", "notion")
	// The stream has no hash chain, and the report says its records were
	// not verified.
	if code != fromFile || code != 1 || !strings.HasPrefix(stderr, "warning: the Redis stream has no hash chain: its records were replayed unverified") {
		t.Fatalf("exit %d (from the file %d), stderr:\n%s", code, fromFile, stderr)
	}
	if diff := cmp.Diff(wantOut, stdout); diff != "" {
		t.Errorf("stdout from Redis (-from the file +from Redis):\n%s", diff)
	}

	srv.Stop()
	if code, _, stderr := runCLI(t, "replay", "--redis", srv.Addr, "--policy", policy); code != 2 || !strings.HasPrefix(stderr, "amg: read audit stream: ") {
		t.Errorf("Redis down: exit %d, stderr:\n%s", code, stderr)
	}
}

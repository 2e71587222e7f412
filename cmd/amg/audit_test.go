package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/redistest"
	"github.com/amgateway/amg/internal/syncbuf"
)

// writeAuditLog writes records from..to to the audit log at path and
// returns the file's lines, newlines included.
func writeAuditLog(t *testing.T, path string, opts *audit.FileOptions, from, to int) []string {
	t.Helper()
	d, err := audit.NewFileDevice(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i <= to; i++ {
		rec := &audit.Record{
			Time:       time.Date(2026, 1, 2, 15, 4, i, 0, time.UTC),
			DecisionID: fmt.Sprintf("d%d", i),
			Role:       "notion_read",
			Tool:       "notion__get_pages",
			Verdict:    "allow",
			Code:       "allowed",
		}
		if err := d.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return auditLines(t, path)
}

func auditLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitAfter(string(b), "\n")[:bytes.Count(b, []byte("\n"))]
}

func lineHash(line string) string {
	line = strings.TrimSuffix(line, "\n")
	return line[len(line)-66 : len(line)-2]
}

func TestAuditVerify(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lines := writeAuditLog(t, path, nil, 1, 3)
	want := "ok: 3 records; anchor 3:" + lineHash(lines[2]) + "\n"
	for _, args := range [][]string{
		{"audit", "verify", path},
		{"audit", "verify", "--data-dir", dir},
	} {
		code, stdout, stderr := runCLI(t, args...)
		if code != 0 || stderr != "" {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
		if diff := cmp.Diff(want, stdout); diff != "" {
			t.Errorf("%v: stdout (-want +got):\n%s", args, diff)
		}
	}
}

func TestAuditVerifyTampered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	lines := writeAuditLog(t, path, nil, 1, 3)
	edited := strings.Replace(lines[1], `"verdict":"allow"`, `"verdict":"deny"`, 1)
	if err := os.WriteFile(path, []byte(lines[0]+edited+lines[2]), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "audit", "verify", path)
	sum := sha256.Sum256([]byte(edited[:len(edited)-1-75] + "}"))
	want := fmt.Sprintf("%s:2: hash mismatch: hash is %s, but the line hashes to %x (the record was altered)\n", path, lineHash(lines[1]), sum)
	if code != 1 || stdout != "" {
		t.Errorf("exit %d, stdout %q; want exit 1 and nothing on stdout", code, stdout)
	}
	if diff := cmp.Diff(want, stderr); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}

// An anchor from an earlier run of audit verify catches what the chain
// alone cannot: records cut from its end.
func TestAuditVerifyAnchors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lines := writeAuditLog(t, path, nil, 1, 5)
	_, stdout, _ := runCLI(t, "audit", "verify", path)
	_, anchor, ok := strings.Cut(strings.TrimSpace(stdout), "; anchor ")
	if !ok {
		t.Fatalf("no anchor in %q", stdout)
	}
	if code, stdout, _ := runCLI(t, "audit", "verify", "--anchor", anchor, "--anchor", "2", path); code != 0 || !strings.HasSuffix(stdout, "\n2 of 2 anchors checked\n") {
		t.Errorf("intact: exit %d, stdout %q", code, stdout)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines[:4], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "audit", "verify", "--anchor", anchor, path)
	want := path + ":4: anchor mismatch: the chain ends at seq 4, but an anchor names seq 5: records were cut from its end\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("cut: exit %d, stdout %q, stderr %q; want %q", code, stdout, stderr, want)
	}
	for args, want := range map[string]string{
		"--anchor 5:xyz": `amg: --anchor: anchor "5:xyz": the hash is not 64 lowercase hex digits` + "\n",
		"--anchor 0":     `amg: --anchor: anchor "0": want SEQ:HASH, SEQ a record's seq (from 1)` + "\n",
		"--replica r1":   "amg: --replica goes with --redis\n",
		"--redis 127.0.0.1:1": "amg: --redis: which replica's records these are is in " + filepath.Join(dir, "replica.id") + ", or give --replica: open " +
			filepath.Join(dir, "replica.id") + ": no such file or directory\n",
	} {
		code, _, stderr := runCLI(t, append([]string{"audit", "verify", "--data-dir", dir}, strings.Fields(args)...)...)
		if code != 1 || stderr != want {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 and %q", args, code, stderr, want)
		}
	}
}

func TestAuditVerifyRotated(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	one := writeAuditLog(t, path, nil, 1, 1)
	tick := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	opts := &audit.FileOptions{MaxBytes: int64(len(one[0])) * 2, Now: func() time.Time { tick = tick.Add(time.Second); return tick }}
	last := writeAuditLog(t, path, opts, 2, 5)
	files, err := audit.ChainFiles(path)
	if err != nil || len(files) != 3 {
		t.Fatalf("ChainFiles = %q, %v; want 3 files", files, err)
	}

	code, stdout, _ := runCLI(t, "audit", "verify", "--data-dir", dir)
	if want := "ok: 5 records; anchor 5:" + lineHash(last[0]) + "\n"; code != 0 || stdout != want {
		t.Errorf("verify --data-dir: exit %d, stdout %q, want %q", code, stdout, want)
	}
	code, stdout, _ = runCLI(t, "audit", "verify", files[1])
	middle := auditLines(t, files[1])
	first := auditLines(t, files[0])
	want := fmt.Sprintf("ok: 2 records (seq 3 to 4, continuing from prev %s); anchor 4:%s\n", lineHash(first[1]), lineHash(middle[1]))
	if code != 0 || stdout != want {
		t.Errorf("verify of a later file: exit %d, stdout %q, want %q", code, stdout, want)
	}
}

func TestAuditTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	lines := writeAuditLog(t, path, nil, 1, 3)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"audit", "tail", "-n", "2", path}, lines[1] + lines[2]},
		{[]string{"audit", "tail", "--data-dir", dir, "-n", "1"}, lines[2]},
		{[]string{"audit", "tail", path}, strings.Join(lines, "")},
		{[]string{"audit", "tail", "-n", "0", path}, ""},
	}
	for _, tt := range tests {
		code, stdout, stderr := runCLI(t, tt.args...)
		if code != 0 || stderr != "" {
			t.Errorf("%v: exit %d, stderr %q", tt.args, code, stderr)
		}
		if diff := cmp.Diff(tt.want, stdout); diff != "" {
			t.Errorf("%v: stdout (-want +got):\n%s", tt.args, diff)
		}
	}
}

// An agent's arguments and name may hold characters a terminal obeys, or
// that hide or reorder text: audit tail writes them as JSON escapes, and
// each line still decodes to the record the file holds.
func TestAuditTailEscapesWhatTerminalsObey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	d, err := audit.NewFileDevice(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const hidden = "\u202e\u009b\u200b\U000e0041"
	if err := d.Write(&audit.Record{Time: time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC), DecisionID: "d1", Agent: "dev" + hidden,
		Role: "notion_read", Tool: "notion__get_pages", Args: json.RawMessage(`{"workspace_id":"ws` + hidden + `31m"}`),
		Verdict: "deny", Code: "constraint_failed"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	stored := auditLines(t, path)[0]
	if !strings.Contains(stored, hidden) {
		t.Fatalf("the audit log does not hold the characters raw: %q", stored)
	}
	check := func(name, stdout string) {
		t.Helper()
		if strings.ContainsAny(stdout, hidden) || !strings.Contains(stdout, `\u202e\u009b\u200b\udb40\udc41`) {
			t.Errorf("%s: printed %q, want the characters as JSON escapes", name, stdout)
		}
		var want, got map[string]any
		if err := json.Unmarshal([]byte(stored), &want); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(stdout), &got); err != nil {
			t.Fatalf("%s: %v: %q", name, err, stdout)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: decodes to another record (-file +tail):\n%s", name, diff)
		}
	}
	code, stdout, stderr := runCLI(t, "audit", "tail", path)
	if code != 0 || stderr != "" {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	check("tail", stdout)

	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncbuf.Buffer
	done := make(chan int)
	go func() { done <- run(ctx, []string{"audit", "tail", "-f", path}, &out, &errOut) }()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "\n"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("tail -f printed %q", out.String())
		}
	}
	cancel()
	if code := <-done; code != 0 || errOut.String() != "" {
		t.Errorf("tail -f: exit %d, stderr %q", code, errOut.String())
	}
	check("tail -f", out.String())

	rs := redistest.Start(t)
	shipAll(t, rs, path, 1)
	code, stdout, stderr = runCLI(t, "audit", "tail", "--redis", rs.Addr)
	if code != 0 || stderr != "" {
		t.Errorf("tail --redis: exit %d, stderr %q", code, stderr)
	}
	stored = strings.Replace(stored, "{", `{"replica":"r1",`, 1)
	check("tail --redis", stdout)
}

func TestAuditErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeAuditLog(t, path, nil, 1, 1)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"tail negative count", []string{"audit", "tail", "-n", "-1", path}, "amg: -n must not be negative, got -1\n"},
		{"tail file and data dir", []string{"audit", "tail", "--data-dir", dir, path}, "amg: give one of FILE, --data-dir and --redis\n"},
		{"tail file and redis", []string{"audit", "tail", "--redis", "127.0.0.1:1", path}, "amg: give one of FILE, --data-dir and --redis\n"},
		{"tail two files", []string{"audit", "tail", path, path}, "amg: accepts at most 1 arg(s), received 2\n"},
		{"tail missing file", []string{"audit", "tail", filepath.Join(dir, "nope.log")}, "amg: audit tail: open " + filepath.Join(dir, "nope.log") + ": no such file or directory\n"},
		{"verify missing file", []string{"audit", "verify", filepath.Join(dir, "nope.log")}, "amg: verify audit chain: open " + filepath.Join(dir, "nope.log") + ": no such file or directory\n"},
		{"verify empty data dir", []string{"audit", "verify", "--data-dir", filepath.Join(dir, "empty")}, "amg: no audit log in " + filepath.Join(dir, "empty") + "\n"},
		{"verify files and data dir", []string{"audit", "verify", "--data-dir", dir, path}, "amg: give either FILE arguments or --data-dir, not both\n"},
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

func TestAuditTailFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	lines := writeAuditLog(t, path, nil, 1, 2)
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncbuf.Buffer
	done := make(chan int)
	go func() { done <- run(ctx, []string{"audit", "tail", "-f", "-n", "1", path}, &stdout, &stderr) }()

	waitOutput := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); stdout.String() != want; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("stdout %q, want %q", stdout.String(), want)
			}
		}
	}
	waitOutput(lines[1])
	lines = append(lines[1:], writeAuditLog(t, path, nil, 3, 4)[2:]...)
	waitOutput(strings.Join(lines, ""))
	cancel()
	if code := <-done; code != 0 || stderr.String() != "" {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}

// Following a log that does not exist waits for it, and says so: a
// mistyped path would otherwise wait in silence.
func TestAuditTailFollowWaits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mistyped", "audit.log")
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncbuf.Buffer
	done := make(chan int)
	go func() { done <- run(ctx, []string{"audit", "tail", "-f", path}, &stdout, &stderr) }()
	want := path + " does not exist yet; waiting for it"
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(stderr.String(), want); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("stderr %q, want it to say %q", stderr.String(), want)
		}
	}
	cancel()
	if code := <-done; code != 0 || stdout.String() != "" {
		t.Errorf("exit %d, stdout %q", code, stdout.String())
	}
}

package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/store"
	"github.com/amgateway/amg/internal/tokens"
)

const examplePolicies = "../../policies"

var tokenLine = regexp.MustCompile(`^amg_[0-9a-f]{64}\n$`)

// issueToken runs `amg token issue` in dataDir and returns the token.
func issueToken(t *testing.T, dataDir string, args ...string) string {
	t.Helper()
	args = append([]string{"token", "issue", "--data-dir", dataDir, "--policy-dir", examplePolicies}, args...)
	code, stdout, stderr := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("issue: exit %d, stderr:\n%s", code, stderr)
	}
	if !tokenLine.MatchString(stdout) {
		t.Fatalf("issue: stdout is not exactly one token line (%d bytes)", len(stdout))
	}
	return strings.TrimSuffix(stdout, "\n")
}

func idOf(t *testing.T, secret string) string {
	t.Helper()
	d, err := tokens.Parse(secret)
	if err != nil {
		t.Fatal(err)
	}
	return d.ID()
}

func TestTokenIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	code, stdout, stderr := runCLI(t, "token", "issue", "--data-dir", dir, "--policy-dir", examplePolicies,
		"--agent", "ci-bot", "--role", "notion_read", "--ttl", "720h")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	if !tokenLine.MatchString(stdout) {
		t.Fatalf("stdout is not exactly one token line: %d bytes, %d lines", len(stdout), strings.Count(stdout, "\n"))
	}
	secret := strings.TrimSuffix(stdout, "\n")
	id := idOf(t, secret)
	if strings.Contains(stderr, secret[len(tokens.Prefix):]) {
		t.Error("stderr repeats the token")
	}
	if !strings.Contains(stderr, "issued token "+id+" for agent ci-bot, role notion_read, expires ") {
		t.Errorf("stderr does not report the issued token:\n%s", stderr)
	}

	// The token works against the database a server would open.
	db, err := store.Open(filepath.Join(dir, "amg.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := tokens.NewSQLiteStore(db)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokens.NewAuthenticator(s, nil).Authenticate(context.Background(), secret)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Agent != "ci-bot" || tok.Role != "notion_read" || tok.Expires.Sub(tok.Created).Hours() != 720 {
		t.Errorf("stored token = %+v", tok)
	}

	if runtime.GOOS != "windows" {
		for path, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, "amg.db"): 0o600} {
			if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
				t.Errorf("%s: mode %v (%v), want %v", filepath.Base(path), fi.Mode(), err, want)
			}
		}
	}
}

func TestTokenList(t *testing.T) {
	dir := t.TempDir()
	forever := issueToken(t, dir, "--agent", "ci-bot", "--role", "notion_read")
	daily := issueToken(t, dir, "--agent", "support@example.com", "--role", "support_shadow", "--ttl", "24h")

	code, stdout, stderr := runCLI(t, "token", "list", "--data-dir", dir)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	for _, secret := range []string{forever, daily} {
		d := sha256.Sum256([]byte(secret))
		if strings.Contains(stdout, secret[len(tokens.Prefix):]) || strings.Contains(stdout, hex.EncodeToString(d[:])) {
			t.Fatal("list shows a token or a full digest")
		}
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	var got [][]string
	for _, l := range lines {
		got = append(got, strings.Fields(l))
	}
	const ts = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`
	// Both were created within the same second or two, so the order is by
	// creation time; compare each row to its token regardless of order.
	want := map[string][]string{
		idOf(t, forever): {idOf(t, forever), "ci-bot", "notion_read", ts, "never", "active"},
		idOf(t, daily):   {idOf(t, daily), "support@example.com", "support_shadow", ts, ts, "active"},
	}
	if diff := cmp.Diff([]string{"ID", "AGENT", "ROLE", "CREATED", "EXPIRES", "STATUS"}, got[0]); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	if len(got) != 3 {
		t.Fatalf("list has %d rows, want 2:\n%s", len(got)-1, stdout)
	}
	for _, row := range got[1:] {
		w, ok := want[row[0]]
		if !ok || len(row) != len(w) {
			t.Errorf("unexpected row %q", row)
			continue
		}
		for i := range w {
			if !regexp.MustCompile("^" + w[i] + "$").MatchString(row[i]) {
				t.Errorf("row %s column %s = %q, want %q", row[0], got[0][i], row[i], w[i])
			}
		}
	}
}

func TestTokenListWithoutDatabase(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	code, stdout, stderr := runCLI(t, "token", "list", "--data-dir", dir)
	if code != 0 {
		t.Errorf("exit %d", code)
	}
	if stdout != "ID  AGENT  ROLE  CREATED  EXPIRES  STATUS\n" {
		t.Errorf("stdout = %q, want the header only", stdout)
	}
	if want := "amg: no database at " + filepath.Join(dir, "amg.db") + " (see --data-dir)\n"; stderr != want {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("list created the data directory (%v)", err)
	}
}

func TestTokenRevoke(t *testing.T) {
	dir := t.TempDir()
	secret := issueToken(t, dir, "--agent", "ci-bot", "--role", "notion_read")
	other := issueToken(t, dir, "--agent", "ci-bot", "--role", "notion_editor")
	id := idOf(t, secret)

	for i := range 2 { // revoking twice is not an error
		code, stdout, stderr := runCLI(t, "token", "revoke", "--data-dir", dir, id)
		if code != 0 || stdout != "revoked "+id+"\n" {
			t.Fatalf("revoke %d: exit %d, stdout %q, stderr:\n%s", i+1, code, stdout, stderr)
		}
	}
	// The token itself is accepted, and never echoed.
	code, stdout, stderr := runCLI(t, "token", "revoke", "--data-dir", dir, other)
	if code != 0 || stdout != "revoked "+idOf(t, other)+"\n" || strings.Contains(stderr, other) {
		t.Fatalf("revoke by token: exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
	}

	_, stdout, _ = runCLI(t, "token", "list", "--data-dir", dir)
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n")[1:] {
		if f := strings.Fields(l); f[len(f)-1] != "revoked" {
			t.Errorf("after revoke, list shows %q", l)
		}
	}

	db, err := store.Open(filepath.Join(dir, "amg.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := tokens.NewSQLiteStore(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.NewAuthenticator(s, nil).Authenticate(context.Background(), secret); !errors.Is(err, tokens.ErrRevoked) {
		t.Errorf("Authenticate after revoke = %v, want ErrRevoked", err)
	}
}

func TestTokenRevokeErrors(t *testing.T) {
	dir := t.TempDir()
	issueToken(t, dir, "--agent", "ci-bot", "--role", "notion_read")
	missing := filepath.Join(t.TempDir(), "nothing-here")
	unknownSecret, _, _ := tokens.Generate()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown ID", []string{"--data-dir", dir, "0123456789abcdef"},
			"amg: no token with ID 0123456789abcdef in " + filepath.Join(dir, "amg.db") + "\n"},
		{"unknown token", []string{"--data-dir", dir, unknownSecret},
			"amg: no token with ID " + idOf(t, unknownSecret) + " in " + filepath.Join(dir, "amg.db") + "\n"},
		{"not an ID", []string{"--data-dir", dir, "amg_not-quite-a-token"},
			"amg: not a token ID: IDs are 16 lowercase hex digits, as shown by amg token list\n"},
		{"upper-case ID", []string{"--data-dir", dir, "0123456789ABCDEF"},
			"amg: not a token ID: IDs are 16 lowercase hex digits, as shown by amg token list\n"},
		{"no database", []string{"--data-dir", missing, "0123456789abcdef"},
			"amg: no database at " + filepath.Join(missing, "amg.db") + " (see --data-dir)\n"},
		{"no ID", []string{"--data-dir", dir}, "amg: accepts 1 arg(s), received 0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"token", "revoke"}, tt.args...)...)
			if code != 1 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want exit 1 and nothing on stdout", code, stdout)
			}
			if diff := cmp.Diff(tt.want, stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("revoke created the data directory (%v)", err)
	}
}

func TestTokenIssueRoleCheck(t *testing.T) {
	broken := t.TempDir()
	if err := os.WriteFile(filepath.Join(broken, "reader.yaml"), []byte("role: reader\nmode: strict\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "policies")
	tests := []struct {
		name string
		args []string
		want string // stderr on refusal; "" means issued
	}{
		{"defined role", []string{"--role", "notion_read", "--policy-dir", examplePolicies}, ""},
		{"undefined role", []string{"--role", "notion_admin", "--policy-dir", examplePolicies},
			`amg: role "notion_admin" is not defined in ../../policies (roles: notion_editor, notion_read, support_shadow); --force issues the token anyway` + "\n"},
		{"undefined role, forced", []string{"--role", "notion_admin", "--policy-dir", examplePolicies, "--force"}, ""},
		// The test runs where ./policies does not exist: nothing to check.
		{"default directory absent", []string{"--role", "anything"}, ""},
		{"named directory absent", []string{"--role", "notion_read", "--policy-dir", missing},
			"amg: check role against policies: stat " + missing + ": no such file or directory (--force skips the check)\n"},
		{"named directory absent, forced", []string{"--role", "notion_read", "--policy-dir", missing, "--force"}, ""},
		{"policies do not compile", []string{"--role", "reader", "--policy-dir", broken},
			`amg: cannot check role "reader": the policies in ` + broken + ` do not compile (1 problem; see amg policy validate ` + broken + `); --force skips the check` + "\n"},
		{"policies do not compile, forced", []string{"--role", "reader", "--policy-dir", broken, "--force"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			args := append([]string{"token", "issue", "--data-dir", dir, "--agent", "ci-bot"}, tt.args...)
			code, stdout, stderr := runCLI(t, args...)
			if tt.want == "" {
				if code != 0 || !tokenLine.MatchString(stdout) {
					t.Errorf("exit %d, stdout %d bytes; want a token. stderr:\n%s", code, len(stdout), stderr)
				}
				return
			}
			if code != 1 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want exit 1 and nothing on stdout", code, stdout)
			}
			if diff := cmp.Diff(tt.want, stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused issue created the data directory (%v)", err)
			}
		})
	}
}

// Issuing without checking the role says so, and what would check it.
func TestTokenIssueSaysWhenItDidNotCheck(t *testing.T) {
	const note = `role "notion_read" not checked: ./policies does not exist (--policy-dir names the gateway's policies)` + "\n"
	for _, tt := range []struct {
		args []string
		note bool
	}{
		{nil, true}, // the test runs where ./policies does not exist
		{[]string{"--policy-dir", examplePolicies}, false},
		{[]string{"--force"}, false},
	} {
		args := append([]string{"token", "issue", "--data-dir", filepath.Join(t.TempDir(), "data"), "--agent", "ci-bot", "--role", "notion_read"}, tt.args...)
		code, stdout, stderr := runCLI(t, args...)
		if code != 0 || !tokenLine.MatchString(stdout) {
			t.Fatalf("%v: exit %d; stderr:\n%s", tt.args, code, stderr)
		}
		if strings.Contains(stderr, note) != tt.note {
			t.Errorf("%v: stderr:\n%s\nnote %q shown: %v, want %v", tt.args, stderr, note, !tt.note, tt.note)
		}
	}
}

func TestTokenIssueBadFlags(t *testing.T) {
	pasted, _, _ := tokens.Generate()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"ttl not a duration", []string{"--agent", "a", "--role", "notion_read", "--ttl", "soon"},
			`amg: invalid argument "soon" for "--ttl" flag: time: invalid duration "soon"` + "\n"},
		{"ttl in days", []string{"--agent", "a", "--role", "notion_read", "--ttl", "30d"},
			`amg: invalid argument "30d" for "--ttl" flag: time: unknown unit "d" in duration "30d"` + "\n"},
		{"negative ttl", []string{"--agent", "a", "--role", "notion_read", "--ttl", "-5m"},
			"amg: --ttl must not be negative, got -5m0s\n"},
		{"no agent", []string{"--role", "notion_read"}, `amg: required flag(s) "agent" not set` + "\n"},
		{"no role", []string{"--agent", "a"}, `amg: required flag(s) "role" not set` + "\n"},
		{"bad agent name", []string{"--agent", "ci bot", "--role", "notion_read"},
			"amg: invalid --agent: names are 1 to 128 characters of A-Z a-z 0-9 _ . @ -\n"},
		{"token as agent", []string{"--agent", pasted, "--role", "notion_read"},
			"amg: invalid --agent: looks like a token secret, not a name\n"},
		{"stray argument", []string{"--agent", "a", "--role", "notion_read", "extra"},
			`amg: unknown command "extra" for "amg token issue"` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			args := append([]string{"token", "issue", "--data-dir", dir, "--policy-dir", examplePolicies}, tt.args...)
			code, stdout, stderr := runCLI(t, args...)
			if code != 1 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want exit 1 and nothing on stdout", code, stdout)
			}
			if diff := cmp.Diff(tt.want, stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

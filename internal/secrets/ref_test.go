package secrets

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Ref
		wantErr string
	}{
		{in: "env:NOTION_TOKEN", want: Ref{Scheme: "env", Path: "NOTION_TOKEN"}},
		{in: "env:_x1", want: Ref{Scheme: "env", Path: "_x1"}},
		{in: "file:/run/secrets/notion", want: Ref{Scheme: "file", Path: "/run/secrets/notion"}},
		{in: "file:secrets/a:b", want: Ref{Scheme: "file", Path: "secrets/a:b"}},
		{in: "vault:kv/data/notion#token", want: Ref{Scheme: "vault", Path: "kv/data/notion#token"}},

		{in: "", wantErr: "empty secret reference"},
		{in: "NOTION_TOKEN", wantErr: "secret reference has no scheme (expected env:NAME, file:PATH or vault:PATH#FIELD)"},
		{in: "ENV:X", wantErr: `secret reference has unknown scheme "ENV" (expected env, file or vault)`},
		{in: "aws:x", wantErr: `secret reference has unknown scheme "aws" (expected env, file or vault)`},
		{in: ":x", wantErr: "secret reference has nothing before ':' (expected env:NAME, file:PATH or vault:PATH#FIELD)"},
		{in: "admin:hunter2", wantErr: `secret reference has unknown scheme "admin" (expected env, file or vault)`},
		{in: "https://bob:hunter2@db.example", wantErr: `secret reference has unknown scheme "https" (expected env, file or vault)`},
		{in: "sk-hunter2:x", wantErr: "secret reference has an unknown scheme (expected env, file or vault)"},
		{in: "hunter2:x", wantErr: "secret reference has an unknown scheme (expected env, file or vault)"},
		{in: "abcdefghijklmnopq:x", wantErr: "secret reference has an unknown scheme (expected env, file or vault)"},
		{in: "env:", wantErr: "env secret reference has no variable name (expected env:NAME)"},
		{in: "env:NOTION-TOKEN", wantErr: `env secret reference has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{in: "env:1X", wantErr: `env secret reference has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{in: "env: X", wantErr: `env secret reference has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{in: "env:A=B", wantErr: `env secret reference has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{in: "file:", wantErr: "file secret reference has no path (expected file:PATH)"},
		{in: "file:a\x00b", wantErr: "file secret reference has a NUL byte in its path"},
		{in: "vault:kv/data/x", wantErr: "vault secret reference has no field (expected vault:PATH#FIELD)"},
		{in: "vault:kv/data/x#", wantErr: "vault secret reference has no field (expected vault:PATH#FIELD)"},
		{in: "vault:#f", wantErr: "vault secret reference has no path (expected vault:PATH#FIELD)"},
		{in: "vault:a#b#c", wantErr: "vault secret reference has more than one '#' (expected vault:PATH#FIELD)"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseRef(tc.in)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("ParseRef(%q) error = %v, want %s", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRef(%q): %v", tc.in, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseRef(%q) (-want +got):\n%s", tc.in, diff)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

// A credential pasted where a reference belongs must not reach the error,
// which config errors show operators: no branch quotes what was written.
func TestParseRefDoesNotEchoCredential(t *testing.T) {
	for _, in := range []string{
		"hunter2",
		"admin:hunter2",
		"https://bob:hunter2@db.example",
		"hunter2:x",
		"sk-hunter2:x",
		"env:hunter2-x",
		"file:hunter2\x00",
		"vault:hunter2",
		"vault:#hunter2",
		"vault:a#hunter2#x",
	} {
		t.Run(in, func(t *testing.T) {
			_, err := ParseRef(in)
			if err == nil {
				t.Fatalf("ParseRef(%q) succeeded", in)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("ParseRef(%q) error echoes the credential: %v", in, err)
			}
		})
	}
}

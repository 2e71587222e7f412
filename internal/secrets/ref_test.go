package secrets

import (
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
		{in: "ENV:X", wantErr: `secret reference "ENV:X" has unknown scheme "ENV" (expected env, file or vault)`},
		{in: "aws:x", wantErr: `secret reference "aws:x" has unknown scheme "aws" (expected env, file or vault)`},
		{in: ":x", wantErr: `secret reference ":x" has unknown scheme "" (expected env, file or vault)`},
		{in: "env:", wantErr: `secret reference "env:" has no variable name`},
		{in: "env:NOTION-TOKEN", wantErr: `secret reference "env:NOTION-TOKEN" has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{in: "env:1X", wantErr: `secret reference "env:1X" has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{in: "env: X", wantErr: `secret reference "env: X" has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{in: "env:A=B", wantErr: `secret reference "env:A=B" has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)`},
		{in: "file:", wantErr: `secret reference "file:" has no path`},
		{in: "file:a\x00b", wantErr: `secret reference "file:a\x00b" has a NUL byte in its path`},
		{in: "vault:kv/data/x", wantErr: `secret reference "vault:kv/data/x" has no field (expected vault:PATH#FIELD)`},
		{in: "vault:kv/data/x#", wantErr: `secret reference "vault:kv/data/x#" has no field (expected vault:PATH#FIELD)`},
		{in: "vault:#f", wantErr: `secret reference "vault:#f" has no path (expected vault:PATH#FIELD)`},
		{in: "vault:a#b#c", wantErr: `secret reference "vault:a#b#c" has more than one '#' (expected vault:PATH#FIELD)`},
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

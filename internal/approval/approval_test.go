package approval

import (
	"strings"
	"testing"
)

func TestCleanDecision(t *testing.T) {
	const (
		byControl     = `"by" must not contain control characters (newlines, escapes)`
		reasonControl = `"reason" must not contain control characters (newlines, escapes)`
	)
	for _, tc := range []struct {
		name               string
		by, reason         string
		wantBy, wantReason string
		err                string // the whole error; "" if accepted
	}{
		{name: "as given", by: "alice", reason: "OPS-1234", wantBy: "alice", wantReason: "OPS-1234"},
		{name: "trimmed", by: "  Alice Example\t", reason: " ok ", wantBy: "Alice Example", wantReason: "ok"},
		{name: "no reason", by: "alice", wantBy: "alice"},
		{name: "longest name", by: strings.Repeat("a", 64), wantBy: strings.Repeat("a", 64)},
		{name: "name in any script", by: "Ærøskøbing 太郎", reason: "€", wantBy: "Ærøskøbing 太郎", wantReason: "€"},
		{name: "no name", err: `"by" must name who decides; the audit log records it`},
		{name: "blank name", by: " \t ", err: `"by" must name who decides; the audit log records it`},
		{name: "name over 64 bytes", by: strings.Repeat("a", 65), err: `"by" must be at most 64 bytes`},
		{name: "name of 1 KB", by: strings.Repeat("a", 1024), err: `"by" must be at most 64 bytes`},
		{name: "name of 22 three-byte characters", by: strings.Repeat("€", 22), err: `"by" must be at most 64 bytes`},
		{name: "name with a NUL", by: "ali\x00ce", err: byControl},
		{name: "name with a newline", by: "alice\nroot", err: byControl},
		{name: "name with a carriage return", by: "alice\rroot", err: byControl},
		{name: "name with an ANSI escape", by: "\x1b[2Jalice", err: byControl},
		{name: "name with DEL", by: "alice\x7f", err: byControl},
		{name: "name with a C1 control", by: "alice\u009b2J", err: byControl},
		{name: "name not UTF-8", by: "ali\xffce", err: `"by" must be UTF-8 text`},
		{name: "reason with a newline", by: "alice", reason: "fine\n[INFO] approved by root", err: reasonControl},
		{name: "reason with an ANSI escape", by: "alice", reason: "\x1b]0;pwned\x07ok", err: reasonControl},
		{name: "reason with a NUL", by: "alice", reason: "ok\x00", err: reasonControl},
		{name: "reason not UTF-8", by: "alice", reason: "ok\xc3", err: `"reason" must be UTF-8 text`},
		{name: "both wrong", by: "", reason: "a\x1bb", err: `"by" must name who decides; the audit log records it` + "\n" + reasonControl},
		// A long reason is cut, not refused, and never in a character.
		{name: "reason of 500 bytes", by: "alice", reason: strings.Repeat("x", 500), wantBy: "alice", wantReason: strings.Repeat("x", 500)},
		{name: "reason of 60 KB", by: "alice", reason: strings.Repeat("x", 60<<10), wantBy: "alice", wantReason: strings.Repeat("x", 500)},
		{name: "reason cut in a character", by: "alice", reason: strings.Repeat("€", 200), wantBy: "alice", wantReason: strings.Repeat("€", 166)},
		{name: "reason cut after trimming", by: "alice", reason: "   " + strings.Repeat("é", 300), wantBy: "alice", wantReason: strings.Repeat("é", 250)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			by, reason, err := CleanDecision(tc.by, tc.reason)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Errorf("CleanDecision = %q, %q, %v; want the error %q", by, reason, err, tc.err)
				}
				return
			}
			if err != nil || by != tc.wantBy || reason != tc.wantReason {
				t.Errorf("CleanDecision = %q, %q, %v; want %q, %q", by, reason, err, tc.wantBy, tc.wantReason)
			}
		})
	}
}

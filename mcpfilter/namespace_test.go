package mcpfilter

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSplitNameValid(t *testing.T) {
	tests := []struct {
		in, server, tool string
	}{
		{"notion__get_pages", "notion", "get_pages"},
		{"a__b", "a", "b"},
		{"gh.com-1__search.v2", "gh.com-1", "search.v2"},
		{"a___b", "a", "_b"},     // split on the first "__"
		{"a__b__c", "a", "b__c"}, // the tool may contain the separator
		{"_a__b", "_a", "b"},     // leading underscore
		{"A__B", "A", "B"},       // case is kept as is
		{"s__.hidden", "s", ".hidden"},
		{"a___", "a", "_"},
		{strings.Repeat("s", 128) + "__" + strings.Repeat("t", 128), strings.Repeat("s", 128), strings.Repeat("t", 128)},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			server, tool, err := SplitName(tt.in)
			if err != nil {
				t.Fatalf("SplitName: %v", err)
			}
			if diff := cmp.Diff([]string{tt.server, tt.tool}, []string{server, tool}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got := JoinName(server, tool); got != tt.in {
				t.Errorf("JoinName = %q, want %q", got, tt.in)
			}
		})
	}
}

func TestSplitNameRejects(t *testing.T) {
	tests := []struct {
		in     string
		reason Reason
		msg    string
	}{
		{"", ReasonEmptyName, `tool name is empty`},
		{strings.Repeat("a", 130) + "__" + strings.Repeat("b", 130), ReasonNameTooLong, `tool name of 262 bytes is longer than 258`},
		{strings.Repeat("a", 129) + "__b", ReasonNameTooLong, `server name of 129 bytes is longer than 128`},
		{"a__" + strings.Repeat("b", 129), ReasonNameTooLong, `tool name of 129 bytes is longer than 128`},
		{"search", ReasonMissingNamespace, `tool name "search" has no server prefix; expected server__tool`},
		{"a_b", ReasonMissingNamespace, `tool name "a_b" has no server prefix; expected server__tool`},
		{"__search", ReasonEmptyServer, `tool name "__search" has an empty server part`},
		{"____", ReasonEmptyServer, `tool name "____" has an empty server part`},
		{"github__", ReasonEmptyTool, `tool name "github__" has an empty tool part`},
		{"../etc__passwd", ReasonPathTraversal, `tool name "../etc__passwd" contains ".." at byte 0`},
		{"fs__..", ReasonPathTraversal, `tool name "fs__.." contains ".." at byte 4`},
		{"fs__a/b", ReasonPathSeparator, `tool name "fs__a/b" contains path separator '/' at byte 5`},
		{`fs__a\b`, ReasonPathSeparator, `tool name "fs__a\\b" contains path separator '\\' at byte 5`},
		{"fs__a\x00", ReasonControlCharacter, `tool name "fs__a\x00" contains control character U+0000 at byte 5`},
		{"fs__a\x7f", ReasonControlCharacter, `tool name "fs__a\x7f" contains control character U+007F at byte 5`},
		{"fs__a\nb", ReasonControlCharacter, `tool name "fs__a\nb" contains control character U+000A at byte 5`},
		{"fs__\u0430dmin", ReasonNonASCII, `tool name "fs__\u0430dmin" contains non-ASCII character U+0430 at byte 4`},
		{"fs__ａdmin", ReasonNonASCII, `tool name "fs__\uff41dmin" contains non-ASCII character U+FF41 at byte 4`},
		{"fs__ad\u200dmin", ReasonNonASCII, `tool name "fs__ad\u200dmin" contains non-ASCII character U+200D at byte 6`},
		{"fs__\u212aill", ReasonNonASCII, `tool name "fs__\u212aill" contains non-ASCII character U+212A at byte 4`},
		{"fs__a\xffb", ReasonNonASCII, `tool name "fs__a\xffb" contains invalid UTF-8 at byte 5`},
		{"fs__a b", ReasonInvalidCharacter, `tool name "fs__a b" contains ' ' at byte 5; allowed are A-Z, a-z, 0-9, '_', '.' and '-'`},
		{"fs__a*", ReasonInvalidCharacter, `tool name "fs__a*" contains '*' at byte 5; allowed are A-Z, a-z, 0-9, '_', '.' and '-'`},
		{"fs:x__a", ReasonInvalidCharacter, `tool name "fs:x__a" contains ':' at byte 2; allowed are A-Z, a-z, 0-9, '_', '.' and '-'`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			server, tool, err := SplitName(tt.in)
			if err == nil {
				t.Fatalf("SplitName(%q) = %q, %q, want an error", tt.in, server, tool)
			}
			checkNameErr(t, err, tt.reason, tt.msg)
			if server != "" || tool != "" {
				t.Errorf("SplitName returned %q, %q with an error", server, tool)
			}
		})
	}
}

func checkNameErr(t *testing.T, err error, reason Reason, msg string) {
	t.Helper()
	var e *NameError
	if !errors.As(err, &e) {
		t.Fatalf("error %v is a %T, want *NameError", err, err)
	}
	if e.Reason != reason {
		t.Errorf("Reason = %q, want %q", e.Reason, reason)
	}
	if got := err.Error(); got != msg {
		t.Errorf("message:\n got %s\nwant %s", got, msg)
	}
	if e.JSONRPCCode() != CodeInvalidParams {
		t.Errorf("JSONRPCCode() = %d", e.JSONRPCCode())
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "get_pages", "a.b-c_D9", "__", "_", ".a", "a.", strings.Repeat("x", 128)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	tests := []struct {
		in     string
		reason Reason
		msg    string
	}{
		{"", ReasonEmptyName, `name is empty`},
		{strings.Repeat("x", 129), ReasonNameTooLong, `name of 129 bytes is longer than 128`},
		{"..", ReasonPathTraversal, `name ".." contains ".." at byte 0`},
		{"a..b", ReasonPathTraversal, `name "a..b" contains ".." at byte 1`},
		{"a/b", ReasonPathSeparator, `name "a/b" contains path separator '/' at byte 1`},
		{"\x00", ReasonControlCharacter, `name "\x00" contains control character U+0000 at byte 0`},
		{"tооl", ReasonNonASCII, `name "t\u043e\u043el" contains non-ASCII character U+043E at byte 1`},
		{"a%2e", ReasonInvalidCharacter, `name "a%2e" contains '%' at byte 1; allowed are A-Z, a-z, 0-9, '_', '.' and '-'`},
		{"a\"b", ReasonInvalidCharacter, `name "a\"b" contains '"' at byte 1; allowed are A-Z, a-z, 0-9, '_', '.' and '-'`},
		{strings.Repeat("\u0430", 40) + "/", ReasonNonASCII, `name "` + strings.Repeat(`\u0430`, 32) + `"… contains non-ASCII character U+0430 at byte 0`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			checkNameErr(t, ValidateName(tt.in), tt.reason, tt.msg)
		})
	}
}

func TestValidateServerName(t *testing.T) {
	for _, ok := range []string{"notion", "gh-1.x", "_a", "a_b"} {
		if err := ValidateServerName(ok); err != nil {
			t.Errorf("ValidateServerName(%q): %v", ok, err)
		}
	}
	tests := []struct {
		in     string
		reason Reason
		msg    string
	}{
		{"", ReasonEmptyName, `server name is empty`},
		{"my__srv", ReasonDoubleUnderscore, `server name "my__srv" contains "__", the server__tool separator`},
		{"__srv", ReasonDoubleUnderscore, `server name "__srv" contains "__", the server__tool separator`},
		{"srv_", ReasonTrailingUnderscore, `server name "srv_" ends with '_', which makes server__tool ambiguous`},
		{"s/v", ReasonPathSeparator, `server name "s/v" contains path separator '/' at byte 1`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			checkNameErr(t, ValidateServerName(tt.in), tt.reason, tt.msg)
		})
	}
}

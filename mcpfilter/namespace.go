package mcpfilter

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Agents see every upstream tool as server + Separator + tool. Names are
// compared byte for byte: there is no case folding and no Unicode
// normalisation, so a look-alike is rejected rather than mapped onto the
// name it imitates.

// Separator joins a server name and a tool name.
const Separator = "__"

// MaxNameLen is the longest server or tool name; MCP says tool names should
// be 1 to 128 characters.
const MaxNameLen = 128

// NameError reports why a server or tool name was rejected. Names are not
// secret, so the message quotes the name (truncated).
type NameError struct {
	Reason Reason
	// Index is the byte index in the checked string at which the problem
	// was found, or -1 when it concerns the whole name.
	Index int

	detail string
}

func (e *NameError) Error() string { return e.detail }

// JSONRPCCode returns -32602 (invalid params): the name is a parameter of
// the request.
func (e *NameError) JSONRPCCode() int { return CodeInvalidParams }

func nameErr(r Reason, i int, format string, args ...any) error {
	return &NameError{Reason: r, Index: i, detail: fmt.Sprintf(format, args...)}
}

// JoinName returns the namespaced name agents see for tool of server.
func JoinName(server, tool string) string {
	return server + Separator + tool
}

// SplitName splits a namespaced name once, on the first Separator, and
// validates both parts. Because the split is on the first "__", the tool
// part may itself contain "__" and the server part never does.
func SplitName(namespaced string) (server, tool string, err error) {
	if namespaced == "" {
		return "", "", nameErr(ReasonEmptyName, -1, "tool name is empty")
	}
	if len(namespaced) > 2*MaxNameLen+len(Separator) {
		return "", "", nameErr(ReasonNameTooLong, -1, "tool name of %d bytes is longer than %d",
			len(namespaced), 2*MaxNameLen+len(Separator))
	}
	// Characters first: an attempt such as "../x" is audited as traversal,
	// not as a missing namespace.
	if err := checkChars(namespaced, "tool name"); err != nil {
		return "", "", err
	}
	i := strings.Index(namespaced, Separator)
	switch {
	case i < 0:
		return "", "", nameErr(ReasonMissingNamespace, -1,
			"tool name %s has no server prefix; expected server%stool", quote(namespaced), Separator)
	case i == 0:
		return "", "", nameErr(ReasonEmptyServer, 0, "tool name %s has an empty server part", quote(namespaced))
	case i+len(Separator) == len(namespaced):
		return "", "", nameErr(ReasonEmptyTool, i, "tool name %s has an empty tool part", quote(namespaced))
	}
	server, tool = namespaced[:i], namespaced[i+len(Separator):]
	if err := ValidateServerName(server); err != nil {
		return "", "", err
	}
	if err := validateName(tool, "tool name"); err != nil {
		return "", "", err
	}
	return server, tool, nil
}

// ValidateName checks one server or tool name: 1 to MaxNameLen bytes of
// [A-Za-z0-9_.-], without "..".
func ValidateName(s string) error {
	return validateName(s, "name")
}

// ValidateServerName checks a server name as configured: a valid name that
// also neither contains Separator nor ends with '_', either of which would
// make JoinName ambiguous to split.
func ValidateServerName(s string) error {
	if err := validateName(s, "server name"); err != nil {
		return err
	}
	if i := strings.Index(s, Separator); i >= 0 {
		return nameErr(ReasonDoubleUnderscore, i, "server name %s contains %q, the server%stool separator",
			quote(s), Separator, Separator)
	}
	if strings.HasSuffix(s, "_") {
		return nameErr(ReasonTrailingUnderscore, len(s)-1,
			"server name %s ends with '_', which makes server%stool ambiguous", quote(s), Separator)
	}
	return nil
}

func validateName(s, what string) error {
	if s == "" {
		return nameErr(ReasonEmptyName, -1, "%s is empty", what)
	}
	if len(s) > MaxNameLen {
		return nameErr(ReasonNameTooLong, -1, "%s of %d bytes is longer than %d", what, len(s), MaxNameLen)
	}
	return checkChars(s, what)
}

func checkChars(s, what string) error {
	if i := strings.Index(s, ".."); i >= 0 {
		return nameErr(ReasonPathTraversal, i, "%s %s contains \"..\" at byte %d", what, quote(s), i)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case nameByte[c]:
		case c == '/' || c == '\\':
			return nameErr(ReasonPathSeparator, i, "%s %s contains path separator %q at byte %d", what, quote(s), c, i)
		case c < 0x20 || c == 0x7f:
			return nameErr(ReasonControlCharacter, i, "%s %s contains control character %U at byte %d", what, quote(s), c, i)
		case c >= utf8.RuneSelf:
			r, _ := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError {
				return nameErr(ReasonNonASCII, i, "%s %s contains invalid UTF-8 at byte %d", what, quote(s), i)
			}
			return nameErr(ReasonNonASCII, i, "%s %s contains non-ASCII character %U at byte %d", what, quote(s), r, i)
		default:
			return nameErr(ReasonInvalidCharacter, i,
				"%s %s contains %q at byte %d; allowed are A-Z, a-z, 0-9, '_', '.' and '-'", what, quote(s), c, i)
		}
	}
	return nil
}

// nameByte marks the bytes allowed in a name.
var nameByte = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-'
	}
	return t
}()

package secrets

import (
	"errors"
	"fmt"
	"strings"
)

// The schemes a Ref may have.
const (
	// SchemeEnv names an environment variable: env:NOTION_TOKEN.
	SchemeEnv = "env"
	// SchemeFile names a file holding one value: file:/run/secrets/notion.
	// A relative path is relative to the working directory.
	SchemeFile = "file"
	// SchemeVault names a field of a Vault secret: vault:kv/data/notion#token.
	SchemeVault = "vault"
)

// Ref says where a secret lives. It names the secret, never holds it, so it
// may appear in messages.
type Ref struct {
	Scheme string
	// Path is the variable name (env), the file path (file) or
	// MOUNT/PATH#FIELD (vault).
	Path string
}

// String returns the reference as written: scheme:path.
func (r Ref) String() string { return r.Scheme + ":" + r.Path }

// ParseRef parses env:NAME, file:PATH or vault:PATH#FIELD.
//
// Errors never quote s: what was written may be the credential itself,
// pasted where a reference belongs, and config errors are shown to
// operators. The caller says where s was written.
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, errors.New("empty secret reference")
	}
	scheme, path, ok := strings.Cut(s, ":")
	if !ok {
		return Ref{}, errors.New("secret reference has no scheme (expected env:NAME, file:PATH or vault:PATH#FIELD)")
	}
	r := Ref{Scheme: scheme, Path: path}
	switch scheme {
	case SchemeEnv:
		if path == "" {
			return Ref{}, errors.New("env secret reference has no variable name (expected env:NAME)")
		}
		if !validEnvName(path) {
			return Ref{}, errors.New("env secret reference has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)")
		}
	case SchemeFile:
		if path == "" {
			return Ref{}, errors.New("file secret reference has no path (expected file:PATH)")
		}
		if strings.ContainsRune(path, 0) {
			return Ref{}, errors.New("file secret reference has a NUL byte in its path")
		}
	case SchemeVault:
		p, field, ok := strings.Cut(path, "#")
		switch {
		case !ok || field == "":
			return Ref{}, errors.New("vault secret reference has no field (expected vault:PATH#FIELD)")
		case p == "":
			return Ref{}, errors.New("vault secret reference has no path (expected vault:PATH#FIELD)")
		case strings.Contains(field, "#"):
			return Ref{}, errors.New("vault secret reference has more than one '#' (expected vault:PATH#FIELD)")
		}
	case "":
		return Ref{}, errors.New("secret reference has nothing before ':' (expected env:NAME, file:PATH or vault:PATH#FIELD)")
	default:
		if plainScheme(scheme) {
			return Ref{}, fmt.Errorf("secret reference has unknown scheme %q (expected env, file or vault)", scheme)
		}
		return Ref{}, errors.New("secret reference has an unknown scheme (expected env, file or vault)")
	}
	return r, nil
}

// plainScheme reports whether s, the text before the first ':', is safe to
// name in an error. Before the first ':' of user:password or of a URL with
// credentials comes a user name or a URL scheme, not the secret; a short
// word of letters keeps out tokens and key IDs that are secrets themselves.
func plainScheme(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// validEnvName reports whether s is a portable environment variable name.
func validEnvName(s string) bool {
	if s == "" || '0' <= s[0] && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

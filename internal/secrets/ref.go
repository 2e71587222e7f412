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
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, errors.New("empty secret reference")
	}
	scheme, path, ok := strings.Cut(s, ":")
	if !ok {
		// Not quoted: what was written may be the credential itself,
		// pasted where a reference belongs.
		return Ref{}, errors.New("secret reference has no scheme (expected env:NAME, file:PATH or vault:PATH#FIELD)")
	}
	r := Ref{Scheme: scheme, Path: path}
	switch scheme {
	case SchemeEnv:
		if path == "" {
			return Ref{}, fmt.Errorf("secret reference %q has no variable name", s)
		}
		if !validEnvName(path) {
			return Ref{}, fmt.Errorf("secret reference %q has an invalid variable name (expected A-Z, a-z, 0-9 and '_', not starting with a digit)", s)
		}
	case SchemeFile:
		if path == "" {
			return Ref{}, fmt.Errorf("secret reference %q has no path", s)
		}
		if strings.ContainsRune(path, 0) {
			return Ref{}, fmt.Errorf("secret reference %q has a NUL byte in its path", s)
		}
	case SchemeVault:
		p, field, ok := strings.Cut(path, "#")
		switch {
		case !ok || field == "":
			return Ref{}, fmt.Errorf("secret reference %q has no field (expected vault:PATH#FIELD)", s)
		case p == "":
			return Ref{}, fmt.Errorf("secret reference %q has no path (expected vault:PATH#FIELD)", s)
		case strings.Contains(field, "#"):
			return Ref{}, fmt.Errorf("secret reference %q has more than one '#' (expected vault:PATH#FIELD)", s)
		}
	default:
		return Ref{}, fmt.Errorf("secret reference %q has unknown scheme %q (expected env, file or vault)", s, scheme)
	}
	return r, nil
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

package mcpfilter

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// The folding here is the one encoding/json uses to match object keys to
// struct fields (and bytes.EqualFold implements): two keys are equal when
// every rune of one is in the unicode.SimpleFold orbit of the matching rune
// of the other. Mapping each rune to the smallest rune of its orbit gives a
// canonical form, so "K", "k" and the Kelvin sign U+212A all become "K", and
// "s", "S" and the long s U+017F all become "S".

// foldRune returns the smallest rune of r's case-folding orbit.
func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}

// appendFolded appends the canonical folded form of key, which must be
// valid UTF-8.
func appendFolded(dst, key []byte) []byte {
	for i := 0; i < len(key); {
		if c := key[i]; c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			dst = append(dst, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(key[i:])
		dst = utf8.AppendRune(dst, foldRune(r))
		i += n
	}
	return dst
}

// foldHash is FNV-1a over the runes of the canonical folded form of key.
// Keys that fold equal hash equal; a collision only costs a
// bytes.EqualFold, which the caller does anyway.
func foldHash(key []byte) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for i := 0; i < len(key); {
		c := key[i]
		if c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			h = (h ^ uint64(c)) * prime64
			i++
			continue
		}
		r, n := utf8.DecodeRune(key[i:])
		h = (h ^ uint64(foldRune(r))) * prime64
		i += n
	}
	return h
}

// foldMatch returns the field among fields that key equals under case
// folding, or "" if none does.
func foldMatch(key []byte, fields []string) string {
	for _, f := range fields {
		if equalFold(key, f) {
			return f
		}
	}
	return ""
}

func equalFold(b []byte, s string) bool {
	for i := 0; i < len(b); i++ {
		if b[i] >= utf8.RuneSelf {
			// Only the Kelvin sign and the long s fold onto ASCII letters;
			// leave that rare case to the standard library.
			return strings.EqualFold(string(b), s)
		}
	}
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

package mcpfilter

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Reason classifies why a body or a name was rejected. It is a closed set of
// short snake_case strings so that it can be used directly as a metric label
// and an audit field.
type Reason string

// Reasons for rejecting a body. See [Error.JSONRPCCode] for how they map to
// JSON-RPC error codes.
const (
	// Encoding and syntax (JSON-RPC -32700).
	ReasonInvalidJSON      Reason = "invalid_json"
	ReasonInvalidUTF8      Reason = "invalid_utf8"
	ReasonInvalidEscape    Reason = "invalid_escape"
	ReasonInvalidSurrogate Reason = "invalid_surrogate"
	ReasonControlInString  Reason = "unescaped_control_character"
	ReasonTrailingData     Reason = "trailing_data"

	// Limits and structure (JSON-RPC -32600).
	ReasonTooLarge              Reason = "too_large"
	ReasonTooDeep               Reason = "too_deep"
	ReasonDuplicateKey          Reason = "duplicate_key"
	ReasonCaseFoldedKey         Reason = "case_folded_key"
	ReasonCaseVariantField      Reason = "case_variant_field"
	ReasonNULInKey              Reason = "nul_in_key"
	ReasonUnknownField          Reason = "unknown_field"
	ReasonInvalidJSONRPCVersion Reason = "invalid_jsonrpc_version"
	ReasonBatchNotAllowed       Reason = "batch_not_allowed"
	ReasonEmptyBatch            Reason = "empty_batch"
	ReasonInvalidID             Reason = "invalid_id"
	ReasonInvalidMethod         Reason = "invalid_method"
	ReasonInvalidRequest        Reason = "invalid_request"

	// Method parameters (JSON-RPC -32602).
	ReasonInvalidParams    Reason = "invalid_params"
	ReasonInvalidName      Reason = "invalid_name"
	ReasonInvalidURI       Reason = "invalid_uri"
	ReasonInvalidArguments Reason = "invalid_arguments"
	ReasonInvalidMeta      Reason = "invalid_meta"
)

// Reasons for rejecting a server or tool name (see [ValidateName]).
const (
	ReasonEmptyName          Reason = "empty_name"
	ReasonNameTooLong        Reason = "name_too_long"
	ReasonPathTraversal      Reason = "path_traversal"
	ReasonPathSeparator      Reason = "path_separator"
	ReasonControlCharacter   Reason = "control_character"
	ReasonNonASCII           Reason = "non_ascii"
	ReasonInvalidCharacter   Reason = "invalid_character"
	ReasonMissingNamespace   Reason = "missing_namespace"
	ReasonEmptyServer        Reason = "empty_server"
	ReasonEmptyTool          Reason = "empty_tool"
	ReasonDoubleUnderscore   Reason = "double_underscore"
	ReasonTrailingUnderscore Reason = "trailing_underscore"
)

// JSON-RPC 2.0 error codes returned by [Error.JSONRPCCode].
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeInvalidParams  = -32602
)

// Error reports why [Parse] rejected a body. Its message names keys and JSON
// paths but never the values of the body: arguments may hold secrets, and the
// message is sent back to the agent and written to the audit log.
type Error struct {
	Reason Reason
	// Offset is the byte offset in the body at which the problem was found.
	Offset int
	// Path is the JSON path of the value in which the problem was found, such
	// as "params.arguments" or "[1].params"; empty at the top level.
	Path string
	// ID is the id of the request whose params are wrong (-32602), when
	// the body is one request and its id came before the problem: an error
	// answer names the request it answers whenever its id is known, as
	// JSON-RPC asks. Nil otherwise, and the answer's id is null.
	ID json.RawMessage

	detail string
	// segs collects the path innermost first while the parser unwinds, so
	// that the success path pays nothing for paths.
	segs []pathSeg
}

func (e *Error) Error() string {
	s := e.detail + " at offset " + strconv.Itoa(e.Offset)
	if e.Path != "" {
		s += " (" + e.Path + ")"
	}
	return s
}

// JSONRPCCode returns the JSON-RPC error code to answer the agent with:
// -32700 when the body is not well-formed UTF-8 JSON, -32602 when the
// parameters of an otherwise valid request are wrong, and -32600 for every
// other structural problem.
func (e *Error) JSONRPCCode() int {
	switch e.Reason {
	case ReasonInvalidJSON, ReasonInvalidUTF8, ReasonInvalidEscape,
		ReasonInvalidSurrogate, ReasonControlInString, ReasonTrailingData:
		return CodeParseError
	case ReasonInvalidParams, ReasonInvalidName, ReasonInvalidURI,
		ReasonInvalidArguments, ReasonInvalidMeta:
		return CodeInvalidParams
	}
	return CodeInvalidRequest
}

type pathSeg struct {
	key   string
	index int // used when key is empty and isIndex is set
	isIdx bool
}

// maxQuoted bounds how much of an attacker-chosen key or name is echoed in a
// message, so that an error cannot be used to amplify a body into the logs.
const maxQuoted = 64

// maxPath bounds the length of Error.Path for the same reason.
const maxPath = 256

func quote(s string) string { return Quote(s, maxQuoted) }

// Quote returns s quoted for a message that an agent or an operator reads:
// cut to at most max bytes on a rune boundary, the cut marked with "…",
// and every non-ASCII rune escaped, so that a look-alike such as the
// Kelvin sign shows as such.
func Quote(s string, max int) string {
	if len(s) <= max {
		return strconv.QuoteToASCII(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.QuoteToASCII(s[:cut]) + "…"
}

func formatPath(segs []pathSeg) string {
	var b strings.Builder
	for i := len(segs) - 1; i >= 0; i-- {
		s := segs[i]
		switch {
		case s.isIdx:
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(s.index))
			b.WriteByte(']')
		case isPlainKey(s.key):
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.key)
		default:
			b.WriteByte('[')
			b.WriteString(quote(s.key))
			b.WriteByte(']')
		}
	}
	p := b.String()
	if len(p) <= maxPath {
		return p
	}
	// Keep both ends: the head says which field, the tail where in it.
	head, tail := maxPath/2, maxPath/2
	for head > 0 && !utf8.RuneStart(p[head]) {
		head--
	}
	start := len(p) - tail
	for start < len(p) && !utf8.RuneStart(p[start]) {
		start++
	}
	return p[:head] + "…" + p[start:]
}

// isPlainKey reports whether key can be written after a dot in a path
// without ambiguity.
func isPlainKey(key string) bool {
	if key == "" || len(key) > maxQuoted {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// withKey records that err happened inside the value of key.
func withKey(err error, key []byte) error {
	if e, ok := err.(*Error); ok {
		e.segs = append(e.segs, pathSeg{key: string(key)})
	}
	return err
}

// withIndex records that err happened inside the array element i.
func withIndex(err error, i int) error {
	if e, ok := err.(*Error); ok {
		e.segs = append(e.segs, pathSeg{index: i, isIdx: true})
	}
	return err
}

func (e *Error) finish() *Error {
	if len(e.segs) > 0 {
		e.Path = formatPath(e.segs)
		e.segs = nil
	}
	return e
}

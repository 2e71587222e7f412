package mcpfilter

import (
	"errors"
	"strings"
)

// ResourceScheme starts every resource URI agents see. Resources cannot be
// namespaced like tools (server__uri is not a URI, and clients and SDKs
// reject it), so an upstream's resource uri is shown as
// amg:<server>:<uri> — an opaque URI that any parser accepts and that
// reads as what it is.
const ResourceScheme = "amg:"

// JoinResourceURI returns the URI agents see for server's resource uri.
func JoinResourceURI(server, uri string) string {
	return ResourceScheme + server + ":" + uri
}

// SplitResourceURI returns the server and the upstream's own URI of a
// resource URI agents use. Server names cannot contain ':', so the first
// one after the scheme separates them. An error quotes s as RedactURI
// shows it.
func SplitResourceURI(s string) (server, uri string, err error) {
	rest, ok := strings.CutPrefix(s, ResourceScheme)
	if !ok {
		return "", "", errors.New("resource URI " + quote(RedactURI(s)) + " is not a gateway URI (" + ResourceScheme + "<server>:<uri>)")
	}
	server, uri, ok = strings.Cut(rest, ":")
	if !ok || uri == "" {
		return "", "", errors.New("resource URI " + quote(RedactURI(s)) + " names no upstream URI after the server")
	}
	if err := ValidateServerName(server); err != nil {
		return "", "", err
	}
	return server, uri, nil
}

var errEmptyURI = errors.New("empty resource URI")

// Redacted replaces what [RedactURI] and [RedactQuery] hide.
const Redacted = "REDACTED"

// RedactURI returns uri, a resource URI, as records, error messages and
// spans show it. A resource URI may carry a credential (a presigned URL's
// signature, an access_token parameter, user:password@), which the policy
// decides on but nothing that keeps it should: its userinfo reads
// REDACTED, and its query and fragment are redacted by RedactQuery. The
// scheme, host and path stay, so that the record still says what was read.
func RedactURI(uri string) string {
	uri, fragment, hasFragment := strings.Cut(uri, "#")
	out, query, hasQuery := strings.Cut(uri, "?")
	if start, end := userinfo(out); end >= 0 {
		out = out[:start] + Redacted + out[end:]
	}
	if hasQuery {
		out += "?" + RedactQuery(query)
	}
	if hasFragment {
		out += "#" + RedactQuery(fragment)
	}
	return out
}

// URIHasRedactedParts reports whether RedactURI hides, or has hidden, a
// part of uri: a URI read back from a record that has userinfo, a query
// or a fragment no longer says what they held.
func URIHasRedactedParts(uri string) bool {
	head, _, _ := strings.Cut(uri, "#")
	head, _, _ = strings.Cut(head, "?")
	_, end := userinfo(head)
	return end >= 0 || len(head) < len(uri)
}

// userinfo returns where the userinfo of the authority of uri, a URI
// without its query and fragment, starts, and where its "@" is; end is -1
// if it has none.
func userinfo(uri string) (start, end int) {
	i := strings.Index(uri, "://")
	if i < 0 {
		return 0, -1
	}
	start = i + len("://")
	authority, _, _ := strings.Cut(uri[start:], "/")
	at := strings.LastIndexByte(authority, '@')
	if at < 0 {
		return 0, -1
	}
	return start, start + at
}

// RedactQuery replaces the value of each parameter of a query, and each
// non-empty segment without "=" whole: a bare segment may be a key passed
// as ?KEY, and nothing tells it from a flag's name.
func RedactQuery(query string) string {
	params := strings.Split(query, "&")
	for i, p := range params {
		if name, _, ok := strings.Cut(p, "="); ok {
			params[i] = name + "=" + Redacted
		} else if p != "" {
			params[i] = Redacted
		}
	}
	return strings.Join(params, "&")
}

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
// one after the scheme separates them.
func SplitResourceURI(s string) (server, uri string, err error) {
	rest, ok := strings.CutPrefix(s, ResourceScheme)
	if !ok {
		return "", "", errors.New("resource URI " + quote(s) + " is not a gateway URI (" + ResourceScheme + "<server>:<uri>)")
	}
	server, uri, ok = strings.Cut(rest, ":")
	if !ok || uri == "" {
		return "", "", errors.New("resource URI " + quote(s) + " names no upstream URI after the server")
	}
	if err := ValidateServerName(server); err != nil {
		return "", "", err
	}
	return server, uri, nil
}

var errEmptyURI = errors.New("empty resource URI")

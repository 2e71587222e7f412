package authz

import (
	"errors"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/amgateway/amg/internal/hostguard"
)

// loopbackNames are the host names a request to the gateway on loopback
// uses, and those its loopback origins name: hostguard's, so that the
// standalone front and authz agree on what loopback is.
var loopbackNames = hostguard.New(hostguard.Loopback...)

// checkOrigin refuses a request a web page sent from an origin the gateway
// does not trust: MCP servers must validate Origin, since a browser sends
// a page's requests wherever it is told to, DNS rebinding included. A
// request without an Origin header is not a browser's and passes; one
// whose Origin does not parse as an origin is refused.
//
// Beside the configured origins, loopback origins (any port) are allowed
// on a request addressed to a loopback host: a page served on the
// operator's own machine talking to a gateway on that machine, as the
// front's Host check allows on loopback. The default is decided here, on
// the request's own authority, rather than by the gateway from one
// listener's address: authz answers for the standalone front and for
// Envoy alike, whose listeners may differ, and may be reached through a
// port mapped to loopback. A browser sets Host from the URL it was given,
// so a page cannot borrow the rule for a gateway it reaches by another
// name.
func (c *call) checkOrigin(h headers, host string) *authv3.CheckResponse {
	raw, ok := h.lookup("origin")
	if !ok {
		return nil
	}
	o, err := hostguard.ParseOrigin(raw)
	switch {
	case raw == "null":
		// The opaque origin of a sandboxed frame or a local file: an
		// origin, but never one to trust.
	case err != nil:
		return c.rejectRPC(403, CodeOriginNotAllowed, RPCDenied, "Origin header "+quote(raw)+" is not an origin: "+err.Error())
	case c.s.origins[o.String()], loopbackNames[o.Host] && loopbackNames.AllowedHost(host):
		return nil
	}
	return c.rejectRPC(403, CodeOriginNotAllowed, RPCDenied, "origin "+quote(raw)+" is not allowed")
}

// parseOrigins returns the origins of list as a set of their serialised
// forms, or an error naming the first that does not parse.
func parseOrigins(list []string) (map[string]bool, error) {
	set := make(map[string]bool, len(list))
	for _, s := range list {
		o, err := hostguard.ParseOrigin(s)
		if err != nil {
			return nil, errors.New("allowed origin " + quote(s) + ": " + err.Error())
		}
		set[o.String()] = true
	}
	return set, nil
}

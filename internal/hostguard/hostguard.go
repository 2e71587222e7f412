// Package hostguard restricts an HTTP listener to the host names it is
// meant to be reached by. A listener on loopback that accepts any Host
// header can be reached from a web page the operator visits, through DNS
// rebinding; checking Host and Origin stops that (Envoy does the same with
// a virtual host's domains).
package hostguard

import (
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Loopback are the names a listener on loopback answers to.
var Loopback = []string{"localhost", "127.0.0.1", "::1"}

// Hosts is a set of allowed host names, without ports. The nil set allows
// every host.
type Hosts map[string]bool

// New returns the set of names, compared without case.
func New(names ...string) Hosts {
	h := Hosts{}
	for _, n := range names {
		h[strings.ToLower(n)] = true
	}
	return h
}

// ForListener returns Loopback's set when addr is a loopback address or
// localhost, Loopback's set and the name itself when addr's host is a
// name that resolves to a loopback address, and nil (every host)
// otherwise. A listener on such a name may bind loopback, and is then as
// open to DNS rebinding as one on 127.0.0.1. A name that does not resolve
// is taken as loopback: the listener cannot bind it anyway.
func ForListener(addr string) Hosts { return forListener(addr, net.LookupIP) }

func forListener(addr string, lookup func(host string) ([]net.IP, error)) Hosts {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsLoopback() {
			return New(Loopback...)
		}
		return nil
	}
	if strings.EqualFold(host, "localhost") {
		return New(Loopback...)
	}
	ips, err := lookup(host)
	if err == nil && !slices.ContainsFunc(ips, net.IP.IsLoopback) {
		return nil
	}
	return New(append(slices.Clone(Loopback), host)...)
}

// Allowed reports whether r's Host header and its Origin header, if any,
// name an allowed host.
func (h Hosts) Allowed(r *http.Request) bool {
	if !h.AllowedHost(r.Host) {
		return false
	}
	if h == nil {
		return true
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !h[strings.ToLower(u.Hostname())] {
			return false
		}
	}
	return true
}

// AllowedHost reports whether a Host header, with or without its port,
// names an allowed host.
func (h Hosts) AllowedHost(hostport string) bool { return h == nil || h[hostname(hostport)] }

// Guard returns next behind the check: a request naming another host is
// refused with 403 before next sees it.
func (h Hosts) Guard(next http.Handler) http.Handler {
	if h == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.Allowed(r) {
			http.Error(w, "host or origin not allowed", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func hostname(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		hostport = h
	}
	return strings.ToLower(strings.Trim(hostport, "[]"))
}

package xds

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	envoyconf "github.com/amgateway/amg/envoy"
)

// Validate checks every resource against Envoy's own field rules (the
// protoc-gen-validate ValidateAll of each message), including the typed
// configs packed in Any fields, which ValidateAll does not look into: the
// connection manager in a listener, the filters in it, a cluster's TLS
// context. Envoy would reject, with a NACK, what fails here; refusing it
// beforehand keeps the last good configuration in place with a clear
// error. Beyond the field rules it checks that no two listeners claim one
// address, which Envoy does not refuse but serves with only one of them,
// and that no two domains of a route configuration are equal once
// lowercased, which Envoy refuses. The error names each failing resource.
func (r *Resources) Validate() error {
	var errs []error
	check := func(kind, name string, m proto.Message) {
		// What cannot be encoded (a string that is not UTF-8) cannot be
		// sent at all.
		if _, err := proto.Marshal(m); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: encode: %w", kind, name, err))
			return
		}
		if err := envoyconf.Validate(m); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", kind, name, err))
		}
	}
	for j, l := range r.Listeners {
		check("listener", l.GetName(), l)
		for _, prev := range r.Listeners[:j] {
			if overlap(prev.GetAddress(), l.GetAddress()) {
				errs = append(errs, fmt.Errorf("listener %s: address %s overlaps that of listener %s (%s): Envoy would keep only one of them",
					l.GetName(), addressString(l.GetAddress()), prev.GetName(), addressString(prev.GetAddress())))
			}
		}
	}
	for _, rc := range r.Routes {
		check("route configuration", rc.GetName(), rc)
		if err := uniqueDomains(rc); err != nil {
			errs = append(errs, fmt.Errorf("route configuration %s: %w", rc.GetName(), err))
		}
	}
	for _, c := range r.Clusters {
		check("cluster", c.GetName(), c)
	}
	return errors.Join(errs...)
}

// uniqueDomains applies a rule the field rules do not state: Envoy
// lowercases the domains of a route configuration's virtual hosts, as it
// matches Host ignoring case, and refuses the configuration if two are
// then equal.
func uniqueDomains(rc *routev3.RouteConfiguration) error {
	var errs []error
	seen := map[string]string{} // lowercased domain -> virtual host
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			lower := asciiLower(d)
			if prev, dup := seen[lower]; dup {
				errs = append(errs, fmt.Errorf("virtual host %s: domain %q is that of virtual host %s once lowercased, "+
					"and Envoy refuses a domain twice", vh.GetName(), d, prev))
				continue
			}
			seen[lower] = vh.GetName()
		}
	}
	return errors.Join(errs...)
}

// asciiLower lowercases ASCII letters only, as Envoy does domains.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// addressString is a socket address as host:port.
func addressString(a *corev3.Address) string {
	sa := a.GetSocketAddress()
	return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))
}

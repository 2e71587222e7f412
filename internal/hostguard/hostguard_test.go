package hostguard

import (
	"net"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
)

func TestForListener(t *testing.T) {
	for addr, loopback := range map[string]bool{
		"127.0.0.1:8080": true, "[::1]:8080": true, "localhost:8080": true, "127.0.0.2:1": true,
		"0.0.0.0:8080": false, ":8080": false, "10.0.0.5:8080": false, "nonsense": false,
	} {
		if got := ForListener(addr) != nil; got != loopback {
			t.Errorf("ForListener(%q) restricts: %v, want %v", addr, got, loopback)
		}
	}
}

// A listener on a name that resolves to loopback may bind loopback: it
// answers to the loopback names and that name only, as one on 127.0.0.1
// answers to the loopback names.
func TestForListenerResolvesNames(t *testing.T) {
	lookup := func(host string) ([]net.IP, error) {
		ips := map[string][]net.IP{
			"myhost":   {net.ParseIP("127.0.1.1")},
			"dual":     {net.ParseIP("10.0.0.5"), net.ParseIP("::1")},
			"amg":      {net.ParseIP("172.18.0.3")},
			"internal": {net.ParseIP("10.0.0.5"), net.ParseIP("10.0.0.6")},
		}[host]
		if ips == nil {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return ips, nil
	}
	for _, tc := range []struct {
		addr  string
		allow []string // nil: every host
	}{
		{"myhost:8081", []string{"myhost", "MyHost:8081", "localhost:8081", "127.0.0.1", "[::1]:8081"}},
		{"dual:8081", []string{"dual", "localhost"}},
		{"unresolvable.example:8081", []string{"unresolvable.example", "localhost"}},
		{"amg:8081", nil},
		{"internal:8081", nil},
	} {
		h := forListener(tc.addr, lookup)
		if tc.allow == nil {
			if h != nil {
				t.Errorf("forListener(%q) restricts Host, though the name resolves to no loopback address", tc.addr)
			}
			continue
		}
		for _, host := range tc.allow {
			if !h.AllowedHost(host) {
				t.Errorf("forListener(%q) refuses Host %q", tc.addr, host)
			}
		}
		if h.AllowedHost("rebound.attacker.example:8081") {
			t.Errorf("forListener(%q) lets any Host through, though the listener may be on loopback", tc.addr)
		}
	}
}

// The machine's own name, which /etc/hosts often maps to 127.0.1.1, as
// the resolver answers it.
func TestForListenerOnTheHostName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 || !slices.ContainsFunc(ips, net.IP.IsLoopback) {
		t.Skipf("%s resolves to %v (%v), no loopback address", host, ips, err)
	}
	if h := ForListener(net.JoinHostPort(host, "8080")); h == nil || h.AllowedHost("rebound.attacker.example:8080") || !h.AllowedHost(host) {
		t.Errorf("ForListener(%s:8080) = %v, want the loopback names and %s", host, h, host)
	}
}

func TestAllowed(t *testing.T) {
	h := New(Loopback...)
	for _, tc := range []struct {
		host, origin string
		want         bool
	}{
		{"127.0.0.1:8080", "", true},
		{"LOCALHOST", "", true},
		{"[::1]:8080", "http://[::1]:8080", true},
		{"[::1]", "", true},
		{"evil.example", "", false},
		{"127.0.0.1:8080", "http://evil.example", false},
		{"127.0.0.1:8080", "::not a url", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = tc.host
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		if got := h.Allowed(r); got != tc.want {
			t.Errorf("host %q origin %q: %v, want %v", tc.host, tc.origin, got, tc.want)
		}
	}
	var any Hosts
	if !any.Allowed(httptest.NewRequest("GET", "http://evil.example/", nil)) {
		t.Error("the nil set must allow every host")
	}
}

// A listener's name is matched without case however it was written: the
// config's MyBox.Local and a browser's mybox.local are one host.
func TestNewComparesWithoutCase(t *testing.T) {
	h := New("MyBox.Local")
	for _, host := range []string{"mybox.local", "MYBOX.LOCAL:8081"} {
		if !h.AllowedHost(host) {
			t.Errorf("New(%q) refuses Host %q", "MyBox.Local", host)
		}
	}
}

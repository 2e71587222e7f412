package hostguard

import (
	"net/http/httptest"
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

func TestAllowed(t *testing.T) {
	h := New(Loopback...)
	for _, tc := range []struct {
		host, origin string
		want         bool
	}{
		{"127.0.0.1:8080", "", true},
		{"LOCALHOST", "", true},
		{"[::1]:8080", "http://[::1]:8080", true},
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

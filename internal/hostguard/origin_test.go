package hostguard

import "testing"

func TestParseOrigin(t *testing.T) {
	for in, want := range map[string]string{
		"https://App.Example.COM":      "https://app.example.com",
		"HTTPS://app.example.com:443":  "https://app.example.com",
		"http://app.example.com:80":    "http://app.example.com",
		"http://app.example.com:443":   "http://app.example.com:443",
		"https://app.example.com:8443": "https://app.example.com:8443",
		"http://[::1]:3000":            "http://[::1]:3000",
		"http://[::1]":                 "http://[::1]",
		"http://127.0.0.1:3000":        "http://127.0.0.1:3000",
	} {
		o, err := ParseOrigin(in)
		if err != nil || o.String() != want {
			t.Errorf("ParseOrigin(%q) = %q, %v; want %q", in, o, err, want)
		}
	}
	for _, in := range []string{"", "null", "https://", "https://:443", "https://a.example:", "https://a.example?", "https://a.example#",
		"https://a.example/", "https://a.example/x", "https://a.example?q=1", "https://u:p@a.example", "mailto:a@example.com", "//a.example",
		"https://a.example:0", "ftp://a.example", "ws://a.example"} {
		if o, err := ParseOrigin(in); err == nil {
			t.Errorf("ParseOrigin(%q) = %q, want an error", in, o)
		}
	}
}

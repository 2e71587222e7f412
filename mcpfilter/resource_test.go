package mcpfilter

import (
	"net/url"
	"testing"
)

func TestResourceURIs(t *testing.T) {
	for _, tt := range []struct{ server, uri string }{
		{"notion", "notion://ws_abc123/pages/pg_1"},
		{"files", "file:///srv/data/a:b.txt"},
		{"a.b-c_d", "https://example.com/x?y=1#z"},
	} {
		joined := JoinResourceURI(tt.server, tt.uri)
		if _, err := url.Parse(joined); err != nil {
			t.Errorf("%q is not a URI: %v", joined, err)
		}
		server, uri, err := SplitResourceURI(joined)
		if err != nil || server != tt.server || uri != tt.uri {
			t.Errorf("SplitResourceURI(%q) = %q, %q, %v", joined, server, uri, err)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"notion://ws/pages/p", `resource URI "notion://ws/pages/p" is not a gateway URI (amg:<server>:<uri>)`},
		{"amg:notion", `resource URI "amg:notion" names no upstream URI after the server`},
		{"amg:notion:", `resource URI "amg:notion:" names no upstream URI after the server`},
		{"amg:no__tion:x://y", ""},
		{"amg:../x:file:///etc/passwd", ""},
	} {
		_, _, err := SplitResourceURI(tt.in)
		if err == nil || (tt.want != "" && err.Error() != tt.want) {
			t.Errorf("SplitResourceURI(%q) err = %v, want %q", tt.in, err, tt.want)
		}
	}
}

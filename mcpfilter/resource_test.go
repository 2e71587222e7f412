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
		{"https://u:pw@x/p?sig=s3", `resource URI "https://REDACTED@x/p?sig=REDACTED" is not a gateway URI (amg:<server>:<uri>)`},
		{"amg:no__tion:x://y", ""},
		{"amg:../x:file:///etc/passwd", ""},
	} {
		_, _, err := SplitResourceURI(tt.in)
		if err == nil || (tt.want != "" && err.Error() != tt.want) {
			t.Errorf("SplitResourceURI(%q) err = %v, want %q", tt.in, err, tt.want)
		}
	}
}

// A resource URI as records and spans show it keeps what says which
// resource it is, and none of the credentials it may carry.
func TestRedactURI(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		parts    bool
	}{
		{"notion://ws_abc123/pages/p1", "notion://ws_abc123/pages/p1", false},
		{"file:///srv/a@b.txt", "file:///srv/a@b.txt", false},
		{"mailto:ann@example.com", "mailto:ann@example.com", false},
		{"https://bucket.example/o/k?X-Amz-Signature=s3cr3t&X-Amz-Expires=60",
			"https://bucket.example/o/k?X-Amz-Signature=REDACTED&X-Amz-Expires=REDACTED", true},
		{"notion://ws/p1?access_token=s3cr3t&&raw-key", "notion://ws/p1?access_token=REDACTED&&REDACTED", true},
		{"https://ann:s3cr3t@db.example:5432/x", "https://REDACTED@db.example:5432/x", true},
		{"https://k@ey:s3cr3t@db.example/x@y", "https://REDACTED@db.example/x@y", true},
		{"https://x/p#access_token=s3cr3t", "https://x/p#access_token=REDACTED", true},
		{"https://x/p?", "https://x/p?", true},
		{"https://REDACTED@x/p?a=REDACTED", "https://REDACTED@x/p?a=REDACTED", true},
	} {
		got := RedactURI(tt.in)
		if got != tt.want {
			t.Errorf("RedactURI(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if RedactURI(got) != got {
			t.Errorf("RedactURI(%q) = %q, RedactURI of that changes it again", tt.in, got)
		}
		if URIHasRedactedParts(tt.in) != tt.parts || URIHasRedactedParts(got) != tt.parts {
			t.Errorf("URIHasRedactedParts(%q), of %q: want %v", tt.in, got, tt.parts)
		}
	}
}

func TestNamespace(t *testing.T) {
	var prefixed Namespace
	single := Namespace{Only: "everything"}
	if got := prefixed.Join("notion", "get_pages"); got != "notion__get_pages" {
		t.Errorf("prefixed Join = %q", got)
	}
	if got := single.Join("everything", "echo"); got != "echo" {
		t.Errorf("single Join = %q", got)
	}
	if s, tool, err := single.Split("get__stuff"); err != nil || s != "everything" || tool != "get__stuff" {
		t.Errorf("single Split = %q %q %v; a name with __ is the upstream's own", s, tool, err)
	}
	for _, bad := range []string{"../x", "ｅcho", "", "a/b"} {
		if _, _, err := single.Split(bad); err == nil {
			t.Errorf("single Split(%q) accepted", bad)
		}
	}
	if s, u, err := single.SplitURI("test://static"); err != nil || s != "everything" || u != "test://static" {
		t.Errorf("single SplitURI = %q %q %v", s, u, err)
	}
	if single.JoinURI("everything", "test://x") != "test://x" || prefixed.JoinURI("n", "test://x") != "amg:n:test://x" {
		t.Error("JoinURI")
	}
	if _, _, err := single.SplitURI(""); err == nil {
		t.Error("empty URI accepted")
	}
	if s, tool, err := prefixed.Split("notion__get_pages"); err != nil || s != "notion" || tool != "get_pages" {
		t.Errorf("prefixed Split = %q %q %v", s, tool, err)
	}
}

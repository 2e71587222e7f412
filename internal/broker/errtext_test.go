package broker

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
)

// An upstream URL may hold a credential in its path or its query. When a
// request to it fails, net/http quotes the whole URL in the error: the
// agent's message keeps none of it, the audit log's keeps the scheme and
// host.
func TestErrorTextHidesUpstreamURLs(t *testing.T) {
	const secretURL = "https://mcp.example:8443/mcp/sk-PATH-SECRET/sse?api_key=sk-QUERY-SECRET"
	req, _ := http.NewRequest("POST", secretURL, nil)
	client := &http.Client{Transport: failingTransport{}}
	_, err := client.Do(req)
	if err == nil || !strings.Contains(err.Error(), "sk-QUERY-SECRET") {
		t.Fatalf("net/http's error %v does not quote the URL, so this test checks nothing", err)
	}
	wrapped := fmt.Errorf("calling %q: %w", "tools/call", err)

	agent := errorText(wrapped, true)
	if strings.Contains(agent, "sk-") || strings.Contains(agent, "mcp.example") {
		t.Errorf("the agent's text shows the URL: %s", agent)
	}
	if !strings.Contains(agent, "Post request: connection refused") || !strings.HasPrefix(agent, `calling "tools/call": `) {
		t.Errorf("the agent's text lost what happened: %s", agent)
	}
	audited := errorText(wrapped, false)
	if strings.Contains(audited, "sk-") || !strings.Contains(audited, "Post https://mcp.example:8443: connection refused") {
		t.Errorf("the audit text is %q, want the scheme and host only", audited)
	}
	plain := errors.New("upstream answered 500")
	if errorText(plain, true) != plain.Error() {
		t.Error("an error without a URL changed")
	}
	if got := upstreamError("notion", wrapped).Error(); strings.Contains(got, "sk-") || !strings.Contains(got, `upstream "notion"`) {
		t.Errorf("upstreamError = %q", got)
	}
}

type failingTransport struct{}

func (failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("connection refused")
}

// A failed dial names the address dialled; the agent is not shown it.
func TestErrorTextHidesDialledAddresses(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	resp, err := http.Post("http://"+addr+"/mcp", "application/json", nil)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a request to a closed port succeeded")
	}
	if agent := errorText(err, true); strings.Contains(agent, addr) || !strings.Contains(agent, "dial: ") {
		t.Errorf("the agent's text is %q, want the dial's failure without %s", agent, addr)
	}
	if audited := errorText(err, false); !strings.Contains(audited, addr) {
		t.Errorf("the audit text %q lost the address, which operators need", audited)
	}
}

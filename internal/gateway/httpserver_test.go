package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/config"
)

// On the agent, admin and broker listeners, a body that stops coming is cut off
// at the read timeout; once it has come, what serves the request may take
// longer than that, its context alive.
func TestReadTimeout(t *testing.T) {
	const d = 200 * time.Millisecond
	type outcome struct {
		read      string
		readErr   error
		cancelled bool
	}
	got := make(chan outcome, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		o := outcome{read: string(b), readErr: err}
		if err == nil {
			// A call waiting for approval: well past the deadline.
			select {
			case <-r.Context().Done():
				o.cancelled = true
			case <-time.After(3 * d):
			}
		}
		got <- o
		io.WriteString(w, "done")
	}))
	srv.Config = newHTTPServer(srv.Config.Handler)
	if srv.Config.ReadTimeout != config.ReadTimeout {
		t.Fatalf("read timeout %v, want %v", srv.Config.ReadTimeout, config.ReadTimeout)
	}
	srv.Config.ReadTimeout = d // the same server, on the test's clock
	srv.Start()
	defer srv.Close()

	t.Run("slow body", func(t *testing.T) {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nten bytes.")
		select {
		case o := <-got:
			if o.readErr == nil {
				t.Errorf("the handler read %q and no error from a body that stopped coming", o.read)
			}
		case <-time.After(20 * d):
			t.Fatal("the handler still waits for a body that stopped coming")
		}
	})

	t.Run("whole body, long answer", func(t *testing.T) {
		resp, err := http.Post(srv.URL, "application/json", strings.NewReader(`{"jsonrpc":"2.0"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(bufio.NewReader(resp.Body))
		o := <-got
		if o.readErr != nil || o.read != `{"jsonrpc":"2.0"}` || o.cancelled || string(body) != "done" {
			t.Errorf("handler read %q (%v), cancelled %v, answered %q; want the body, no cancellation, an answer", o.read, o.readErr, o.cancelled, body)
		}
	})
}

// shortenListenerTimeouts runs the listeners of the gateways the test
// serves on its clock: d for each of the timeouts given.
func shortenListenerTimeouts(t *testing.T, d time.Duration, timeouts ...*time.Duration) {
	for _, p := range timeouts {
		was := *p
		*p = d
		t.Cleanup(func() { *p = was })
	}
}

// Whoever reaches the broker listener is bounded as on the agent
// listener, decision or not: a body that stops coming is cut off at the
// read timeout, and a connection left idle after a refused request is
// closed.
func TestListenersCloseSlowAndIdleConnections(t *testing.T) {
	shortenListenerTimeouts(t, 100*time.Millisecond, &headerTimeout, &readTimeout, &idleTimeout)
	cfg := loopbackConfig(t, "../../policies")
	cfg.BrokerListen = "127.0.0.1:0"
	gw := serveForTest(t, cfg, nil)
	const call = `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	for _, tc := range []struct{ name, request string }{
		{"slow body", "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{\"jsonrpc\":"},
		{"idle after a refusal", fmt.Sprintf("POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(call), call)},
	} {
		for listener, addr := range map[string]string{"agent": gw.MCPAddr(), "broker": gw.BrokerAddr()} {
			t.Run(tc.name+"/"+listener, func(t *testing.T) {
				const n = 5
				var conns []net.Conn
				for range n {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					io.WriteString(c, tc.request)
					conns = append(conns, c)
				}
				// Far beyond the timeouts: a connection still open then
				// is held.
				failsafe := time.Now().Add(10 * time.Second)
				held := 0
				for _, c := range conns {
					c.SetReadDeadline(failsafe)
					if _, err := io.Copy(io.Discard, c); errors.Is(err, os.ErrDeadlineExceeded) {
						held++
					}
				}
				if held != 0 {
					t.Errorf("%d of %d connections still open", held, n)
				}
			})
		}
	}
}

// On the broker listener, the read timeout bounds reading a request,
// not answering it: a call parked for approval well past it is run and
// its answer written.
func TestBrokerListenerAnswersACallParkedPastTheReadTimeout(t *testing.T) {
	shortenListenerTimeouts(t, 100*time.Millisecond, &readTimeout)
	cfg := loopbackConfig(t, "../../policies")
	serveSessionless(cfg)
	cfg.BrokerListen = "127.0.0.1:0"
	gw := serveForTest(t, cfg, nil)
	envoy := envoyStandIn(t, gw)
	token, _, err := gw.IssueToken(context.Background(), "patient", "notion_editor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cs := connectAgent(t, envoy.URL+config.MCPPath, token)
	ctx := context.Background()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__create_page", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","title":"to go"}`)})
	if err != nil || res.IsError {
		t.Fatalf("create_page: %v %+v", err, res)
	}
	page := regexp.MustCompile(`pg_[A-Za-z0-9]+`).FindString(text(t, res))
	go func() {
		time.Sleep(5 * readTimeout)
		decideParked(t, gw, approval.Approved, "ops", "fine")
	}()
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"` + page + `"}`)})
	if err != nil || res.IsError || !strings.Contains(text(t, res), "Deleted page "+page) {
		t.Errorf("delete_page of %s, approved after %v: %v %+v", page, 5*readTimeout, err, res)
	}
}

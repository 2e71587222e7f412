package gateway

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/config"
)

// On the agent and admin listeners, a body that stops coming is cut off
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

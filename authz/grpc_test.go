package authz

import (
	"bytes"
	"encoding/binary"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/amgateway/amg/internal/config"
)

// The bounds of the authz listener are those of the agent listeners.
func TestCheckBoundsAreTheListeners(t *testing.T) {
	if checkTimeout != config.ReadTimeout || idleTimeout != config.IdleTimeout {
		t.Errorf("check timeout %v, idle timeout %v; want the listeners' %v and %v", checkTimeout, idleTimeout, config.ReadTimeout, config.IdleTimeout)
	}
}

// A client that opens Checks, declares messages of 4 MiB, sends part of
// them and stops holds them, and what it sent, no longer than
// checkTimeout: the server ends each stream, its handler returns, and the
// connection carries no more Checks at once than maxConcurrentChecks.
func TestUnfinishedChecksEndAtTheirDeadline(t *testing.T) {
	was := checkTimeout
	checkTimeout = 200 * time.Millisecond
	t.Cleanup(func() { checkTimeout = was }) // after the server has stopped
	e := newEnv(t)

	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Far beyond checkTimeout: a stream still open then is held.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fr := http2.NewFramer(c, c)
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr.WriteSettings()
	// The server's settings come first.
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	settings, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("the server's first frame is %v, want its settings", f)
	}
	if n, ok := settings.Value(http2.SettingMaxConcurrentStreams); !ok || n != maxConcurrentChecks {
		t.Errorf("the server allows %d streams at once (set: %v), want %d", n, ok, maxConcurrentChecks)
	}
	fr.WriteSettingsAck()

	// Within the initial windows, so the client need not wait for the
	// server's window updates.
	const streams, sent = 8, 4 << 10
	for i := range streams {
		id := uint32(2*i + 1)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/envoy.service.auth.v3.Authorization/Check"},
			{":authority", "authz"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
		msg := make([]byte, 5+sent)
		binary.BigEndian.PutUint32(msg[1:], 4<<20)
		fr.WriteData(id, false, msg)
	}

	open := map[uint32]bool{}
	for i := range streams {
		open[uint32(2*i+1)] = true
	}
	for len(open) > 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("%d of %d unfinished Checks still open: %v", len(open), streams, err)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			delete(open, f.StreamID)
		case *http2.HeadersFrame:
			if f.StreamEnded() {
				delete(open, f.StreamID)
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		}
	}
	// What served the streams is gone with them.
	for failsafe := time.Now().Add(10 * time.Second); streamHandlers() > 0 && time.Now().Before(failsafe); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := streamHandlers(); n > 0 {
		t.Errorf("%d goroutines still serve a stream once the Checks have ended", n)
	}
}

// streamHandlers counts the goroutines the gRPC server runs a stream on:
// the process's others come and go with the package's other tests.
func streamHandlers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte("grpc.(*Server).handleStream("))
		}
		buf = make([]byte, 2*len(buf))
	}
}

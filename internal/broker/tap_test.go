package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// chunked reads its data n bytes at a time, as a network stream may.
type chunked struct {
	data []byte
	n    int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	k := min(c.n, len(p), len(c.data))
	copy(p, c.data[:k])
	c.data = c.data[k:]
	return k, nil
}

func (c *chunked) Close() error { return nil }

// TestSSEReaderObservesEachNotificationBeforeWhatFollows checks the
// guarantee relaying rests on: the stream passes through byte for byte,
// and each notification is observed before the reader has returned any
// byte of the event after it, whatever the line endings and however the
// stream is split.
func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream":                 true,
		"Text/Event-Stream; charset=utf-8":  true,
		" text/event-stream ;charset=utf-8": true,
		"application/json":                  false,
		"text/event-streams":                false,
		"text/event":                        false,
		"":                                  false,
	} {
		h := http.Header{}
		if ct != "" {
			h.Set("Content-Type", ct)
		}
		if got := isEventStream(h); got != want {
			t.Errorf("isEventStream(%q) = %v, want %v", ct, got, want)
		}
	}
}

func TestSSEReaderObservesEachNotificationBeforeWhatFollows(t *testing.T) {
	progress := `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t1","progress":%d}}`
	result := `{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"notifications/ in a result"}]}}`
	for _, eol := range []string{"\n", "\r\n", "\r"} {
		var stream strings.Builder
		var follows []int // offset of the event after each notification
		stream.WriteString(": keep-alive comment" + eol + eol)
		for i := range 3 {
			stream.WriteString("event: message" + eol + "id: " + fmt.Sprint(i) + eol)
			stream.WriteString("data: " + fmt.Sprintf(progress, i) + eol + eol)
			follows = append(follows, stream.Len())
		}
		// A message split over two data lines, as SSE allows.
		stream.WriteString(`data: {"jsonrpc":"2.0","method":"notifications/message",` + eol)
		stream.WriteString(`data: "params":{"level":"info","data":"hi"}}` + eol + eol)
		follows = append(follows, stream.Len())
		stream.WriteString("data: " + result + eol + eol)
		want := stream.String()

		for _, n := range []int{1, 2, 3, 7, 64, 1 << 16} {
			var out bytes.Buffer
			var seen []string
			var at []int
			tap := &sseTap{obs: func(req *jsonrpc.Request) {
				seen = append(seen, req.Method)
				at = append(at, out.Len())
			}}
			r := tap.reader(&chunked{data: []byte(want), n: n})
			buf := make([]byte, 5)
			for {
				k, err := r.Read(buf)
				out.Write(buf[:k])
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if out.String() != want {
				t.Fatalf("eol %q, chunks of %d: stream changed:\n%q\nwant\n%q", eol, n, out.String(), want)
			}
			wantSeen := []string{"notifications/progress", "notifications/progress", "notifications/progress", "notifications/message"}
			if fmt.Sprint(seen) != fmt.Sprint(wantSeen) {
				t.Fatalf("eol %q, chunks of %d: observed %v, want %v", eol, n, seen, wantSeen)
			}
			for i := range at {
				if at[i] > follows[i] {
					t.Errorf("eol %q, chunks of %d: notification %d observed after %d bytes were returned; the next event starts at %d",
						eol, n, i, at[i], follows[i])
				}
			}
		}
	}
}

// TestSSEReaderReleasesAnOversizedEvent checks that an event larger than
// maxHeld is passed on rather than held until it ends.
func TestSSEReaderReleasesAnOversizedEvent(t *testing.T) {
	body := io.MultiReader(strings.NewReader("data: "+strings.Repeat("x", maxHeld+1)), blockingReader{})
	r := &sseReader{body: io.NopCloser(body), event: func([]byte) { t.Error("saw a partial event") }}
	got := 0
	buf := make([]byte, 1<<20)
	for got <= maxHeld {
		k, err := r.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += k
	}
	if !r.skipped {
		t.Error("the reader does not say it skipped an event")
	}
}

// Of a line that never ends, the reader keeps no more than it needs once
// it has given up on the event, and passes the rest on as it comes: memory
// stays bounded.
func TestSSEReaderHoldsNoEndlessLine(t *testing.T) {
	const n = 3 * maxHeld
	// Reading past the line means the reader held some of it back.
	past := iotest.ErrReader(errors.New("the reader wanted more than the line before passing it on"))
	body := io.MultiReader(strings.NewReader("data: "+strings.Repeat("x", n)), past)
	r := &sseReader{body: io.NopCloser(body), event: func([]byte) { t.Error("saw a partial event") }}
	got := 0
	buf := make([]byte, 1<<20)
	for got < n+len("data: ") {
		k, err := r.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += k
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.line) > 1 || len(r.buf) > maxHeld+1<<20 {
		t.Errorf("after %d bytes of one line the reader holds a line of %d bytes and %d buffered", got, len(r.line), len(r.buf))
	}
}

// blockingReader fails the test's expectations by never ending: reaching
// it means the reader wanted more before releasing what it had.
type blockingReader struct{}

func (blockingReader) Read([]byte) (int, error) { select {} }

// The reader keeps where a client would resume the stream: the id of the
// last complete event that set one, a priming event's without data
// included, and the reconnection time the stream last asked for. An event
// the stream ends in the middle of does not count.
func TestSSEReaderKeepsTheResumePoint(t *testing.T) {
	for _, tt := range []struct {
		stream, lastID string
		retry          time.Duration
	}{
		{"data: {}\n\n", "", 0},
		{"event: prime\nid: s1_0\ndata: \n\n", "s1_0", 0},
		{"id: s1_0\ndata: {}\n\ndata: {}\n\n", "s1_0", 0},
		{"id: s1_0\ndata: {}\n\nid: s1_1\nretry: 250\ndata: {}\n\nid: s1_2\ndata: {\"jsonrpc\"", "s1_1", 250 * time.Millisecond},
		{"id: s1_0\r\nretry: 10\r\n\r\nretry: soon\r\n\r\nid\r\n\r\n", "", 10 * time.Millisecond},
		{": id: comment\nid:s1_0\n\n", "s1_0", 0},
	} {
		r := &sseReader{body: io.NopCloser(strings.NewReader(tt.stream)), event: func([]byte) {}}
		if _, err := io.Copy(io.Discard, r); err != nil {
			t.Fatal(err)
		}
		if r.lastID != tt.lastID || r.retry != tt.retry {
			t.Errorf("%q: last id %q, retry %v; want %q, %v", tt.stream, r.lastID, r.retry, tt.lastID, tt.retry)
		}
	}
}

// An answer the SDK's client takes from a Streamable HTTP upstream (a
// call of a tool that binds arguments to headers, as here, a resource
// read, a prompt), as an event or as one JSON body, is bounded at the
// direct path's limit: one over it fails the request with an error naming
// the upstream, and the next request is served.
func TestSDKPathAnswerLimit(t *testing.T) {
	defer func(n int) { maxUpstreamMessage = n }(maxUpstreamMessage)
	maxUpstreamMessage = 1 << 20
	for _, tc := range []struct {
		name   string
		asJSON bool
		want   string
	}{
		{"event", false, "SSE event exceeded 1048576 bytes"}, // the SDK's words
		{"json", true, "its answer is larger than the gateway takes (1 MiB)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := newUpstream()
			files.jsonAnswers = tc.asJSON
			schema := json.RawMessage(`{"type":"object","properties":{"workspace_id":{"type":"string","x-mcp-header":"Workspace"}}}`)
			files.srv.AddTool(&mcp.Tool{Name: "get_pages", InputSchema: schema}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				text := "a short answer"
				if bytes.Contains(req.Params.Arguments, []byte(`"long"`)) {
					text = strings.Repeat("x", maxUpstreamMessage+1)
				}
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}, nil
			})
			g := newGatewayTimed(t, true, 5*time.Second, []Upstream{{Name: "files", Transport: files.serveHTTP(t)}})
			cs := g.connect(t, nil)
			call := func(workspace string) (*mcp.CallToolResult, error) {
				t.Helper()
				res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{"workspace_id":"` + workspace + `"}`)})
				if last := files.lastPost(); strings.Contains(last, `"id":"amg-`) {
					t.Fatalf("the call took the direct path: the upstream got %.300s", last)
				}
				return res, err
			}
			if res, err := call("long"); err == nil {
				t.Errorf("a %d-byte answer reached the agent whole; the gateway takes %d", len(res.Content[0].(*mcp.TextContent).Text), maxUpstreamMessage)
			} else if !strings.Contains(err.Error(), `upstream "files"`) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("an answer over the limit: %v", err)
			}
			if res, err := call("short"); err != nil || res.Content[0].(*mcp.TextContent).Text != "a short answer" {
				t.Errorf("the call after: %v %+v", err, res)
			}
		})
	}
}

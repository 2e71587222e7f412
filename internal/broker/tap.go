package broker

import (
	"bytes"
	"cmp"
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// An upstream's notifications about a call (progress, log messages) must
// reach the agent before the call's result, on the same stream. The SDK's
// client hands notifications to their handlers on a goroutine of their
// own while it delivers the result at once, so by the time a handler runs
// the agent's call has usually ended. The broker therefore taps the
// upstream connection below the SDK: the observer sees each notification
// in wire order, and returns before the SDK reads anything after it.

// observer is called with every notification an upstream session
// receives, before the SDK sees the messages that follow it.
type observer func(n *jsonrpc.Request)

// tap returns t with obs, if not nil, watching what it receives. Over
// Streamable HTTP it also bounds each answer the SDK takes, as the direct
// path does its own, at maxUpstreamMessage.
func tap(t mcp.Transport, obs observer) mcp.Transport {
	if st, ok := t.(*mcp.StreamableClientTransport); ok {
		// The SDK's streamable connection must stay the SDK's own (it
		// tracks the negotiated version through unexported methods), so
		// the tap sits in its HTTP client instead.
		tapped := *st
		client := http.DefaultClient
		if st.HTTPClient != nil {
			client = st.HTTPClient
		}
		c := *client
		base := c.Transport
		if base == nil {
			base = http.DefaultTransport
		}
		c.Transport = &sseTap{base: base, obs: obs}
		tapped.HTTPClient = &c
		// The SDK bounds the events it reads itself.
		tapped.MaxEventSize = maxUpstreamMessage
		return &tapped
	}
	if obs == nil {
		return t
	}
	return &connTap{Transport: t, obs: obs}
}

// connTap taps a transport whose connection is read message by message:
// stdio and in-memory.
type connTap struct {
	mcp.Transport
	obs observer
}

func (t *connTap) Connect(ctx context.Context) (mcp.Connection, error) {
	c, err := t.Transport.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &tappedConn{Connection: c, obs: t.obs}, nil
}

type tappedConn struct {
	mcp.Connection
	obs observer
}

func (c *tappedConn) Read(ctx context.Context) (jsonrpc.Message, error) {
	msg, err := c.Connection.Read(ctx)
	if req, ok := msg.(*jsonrpc.Request); ok && !req.IsCall() {
		c.obs(req)
	}
	return msg, err
}

// sseTap taps the event streams of a Streamable HTTP connection, if obs
// is not nil, and bounds its answers in one body, which the SDK reads
// whole, at maxUpstreamMessage.
type sseTap struct {
	base http.RoundTripper
	obs  observer
}

func (t *sseTap) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	switch {
	case !isEventStream(resp.Header):
		resp.Body = &boundedBody{ReadCloser: resp.Body, left: maxUpstreamMessage}
	case t.obs != nil:
		resp.Body = t.reader(resp.Body)
	}
	return resp, nil
}

// boundedBody fails, with tooLarge, once more than left bytes are read.
type boundedBody struct {
	io.ReadCloser
	left int
}

func (b *boundedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.left -= n; b.left < 0 {
		return 0, tooLarge()
	}
	return n, err
}

// isEventStream reports whether a response's Content-Type is
// text/event-stream, parameters aside. It reads no more than that, once
// per upstream response: mime.ParseMediaType also parses every parameter
// into a new map.
func isEventStream(h http.Header) bool {
	mt, _, _ := strings.Cut(h.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// reader returns body with each notification in it observed.
func (t *sseTap) reader(body io.ReadCloser) *sseReader {
	return &sseReader{body: body, event: func(data []byte) {
		if !bytes.Contains(data, []byte(`"notifications/`)) {
			return
		}
		if msg, err := jsonrpc.DecodeMessage(data); err == nil {
			if req, ok := msg.(*jsonrpc.Request); ok && !req.IsCall() {
				t.obs(req)
			}
		}
	}}
}

// sseReader passes an event stream through unchanged, event by event: the
// bytes of an event are released to the reader only once the event is
// complete and event has been called with its data.
type sseReader struct {
	body  io.ReadCloser
	event func(data []byte)
	// max bounds the bytes of one event held back until it is complete;
	// 0 means maxHeld. skipped is set once an event outgrew it.
	max     int
	skipped bool
	err     error
	// lastID is the id of the last complete event that set one, and
	// retry the reconnection time the stream last asked for (0 if none):
	// what a client resuming the stream needs.
	lastID string
	retry  time.Duration
	id     string // the id field of the event being read, or the one before

	buf     []byte // read from body, not yet returned
	ready   int    // buf[:ready] holds complete, observed events
	scanned int    // buf[:scanned] has been split into lines
	line    []byte // the line being read, when it spans reads
	data    []byte // the data lines of the event being read
	lines   int    // how many data lines data holds
	afterCR bool   // the last byte scanned ended a line with \r
	// skip: the event being read outgrew maxHeld and was released before
	// its end; it is not observed.
	skip bool
}

// maxHeld is the default bound of the bytes of one event held back until
// it is complete.
const maxHeld = 4 << 20

func (s *sseReader) Read(p []byte) (int, error) {
	for s.ready == 0 {
		if s.err != nil {
			// What is left is an unterminated event, which SSE discards;
			// the reader sees it all the same.
			if len(s.buf) == 0 {
				return 0, s.err
			}
			s.ready = len(s.buf)
			break
		}
		s.buf = slices.Grow(s.buf, 4096)
		n, err := s.body.Read(s.buf[len(s.buf):cap(s.buf)])
		s.buf = s.buf[:len(s.buf)+n]
		s.err = err
		s.scan()
		if s.ready == 0 && !s.skip && len(s.buf) > cmp.Or(s.max, maxHeld) {
			s.skip, s.skipped, s.data, s.lines = true, true, nil, 0
			// Of the line being read, only whether it is blank still
			// matters.
			s.line = s.line[:min(len(s.line), 1)]
		}
		if s.ready == 0 && s.skip {
			// An event given up on is passed on as it comes.
			s.ready = s.scanned
		}
	}
	n := copy(p, s.buf[:s.ready])
	s.buf = s.buf[:copy(s.buf, s.buf[n:])]
	s.ready -= n
	s.scanned -= n
	return n, nil
}

// scan splits the unscanned bytes into lines (ended by \r\n, \n or \r),
// collects data lines, and at each blank line observes the event and
// marks it ready.
func (s *sseReader) scan() {
	for s.scanned < len(s.buf) {
		rest := s.buf[s.scanned:]
		if s.afterCR && rest[0] == '\n' {
			// The \n of a \r\n whose \r ended the previous line.
			s.afterCR = false
			s.scanned++
			if len(s.line) == 0 && s.lines == 0 {
				s.ready = s.scanned
			}
			continue
		}
		s.afterCR = false
		i := bytes.IndexAny(rest, "\r\n")
		if i < 0 {
			s.line = s.appendLine(rest)
			s.scanned = len(s.buf)
			return
		}
		s.line = s.appendLine(rest[:i])
		s.afterCR = rest[i] == '\r'
		s.scanned += i + 1
		s.endLine()
	}
}

// appendLine adds b to the line being read; of an event being skipped, it
// keeps no more than tells a blank line from another.
func (s *sseReader) appendLine(b []byte) []byte {
	if s.skip && len(s.line) > 0 {
		return s.line
	}
	if s.skip {
		b = b[:min(len(b), 1)]
	}
	return append(s.line, b...)
}

func (s *sseReader) endLine() {
	line := s.line
	s.line = s.line[:0]
	if len(line) > 0 {
		if !s.skip {
			s.field(line)
		}
		return
	}
	// A blank line ends the event; its id, even without data, is where
	// the stream would resume.
	s.lastID = s.id
	if s.lines > 0 {
		s.event(s.data)
	}
	s.data, s.lines, s.skip = s.data[:0], 0, false
	s.ready = s.scanned
}

// field takes one field line of the event being read: data, and what a
// client resuming the stream needs (id, retry). A comment (a line that
// starts with a colon) and other fields are ignored, as SSE asks.
func (s *sseReader) field(line []byte) {
	name, v, _ := bytes.Cut(line, []byte(":"))
	v, _ = bytes.CutPrefix(v, []byte(" "))
	switch string(name) {
	case "data":
		if s.lines > 0 {
			s.data = append(s.data, '\n')
		}
		s.data = append(s.data, v...)
		s.lines++
	case "id":
		if bytes.IndexByte(v, 0) < 0 {
			s.id = string(v)
		}
	case "retry":
		if ms, err := strconv.ParseUint(string(v), 10, 31); err == nil {
			s.retry = time.Duration(ms) * time.Millisecond
		}
	}
}

func (s *sseReader) Close() error { return s.body.Close() }

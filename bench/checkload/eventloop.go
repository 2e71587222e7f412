package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// An eventLoop drives Check RPCs over one HTTP/2 connection the way
// Envoy's ext_authz filter does with its in-process gRPC client: one
// thread writes each request and reads each answer from its own event
// loop. The goroutine that calls run owns the connection and all of its
// streams, so no RPC is handed between goroutines on the client side;
// grpc-go's client hands each one to its writer goroutine and back from
// its reader, and on two cores those hand-offs cost more than loopback.
//
// It costs the server what Envoy would, and little more itself, since
// the harness measures the server and not a Go client: it sends the
// grpc-timeout Envoy derives from the ext_authz timeout AMG configures,
// so the server keeps a deadline per Check as it does there, and a fresh
// x-request-id with each request. It serialises the request once and
// patches that id into the bytes (Envoy serialises each in C++, in a
// fraction of what Go's protobuf takes), and it checks each answer's
// status and verdict with a wire-format scan rather than building the
// message (see allowedWire).
type eventLoop struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer

	framed  []byte // the request with its 5-byte gRPC prefix
	idAt    int    // where the x-request-id's last 12 digits lie in framed
	count   uint64 // Checks sent, numbering the request ids
	nextID  uint32
	sendWin int64 // connection-level send window
	// streamWin is the server's initial stream window; each request must
	// fit in it, as it goes out in one DATA frame.
	streamWin int64
	unacked   uint32 // received bytes not yet returned in a WINDOW_UPDATE
	streams   map[uint32]*loopStream
	waiting   int // Checks held back for connection send window
	held      int // how many times a Check was held back
}

type loopStream struct {
	start time.Time
	data  []byte // the answer's DATA, gRPC prefix included
}

// authzTimeout is the deadline Envoy sends with each Check: AMG's default
// envoy.authz_timeout. Both clients send it.
const authzTimeout = 2 * time.Second

// grpcTimeout is authzTimeout in gRPC's wire form.
var grpcTimeout = strconv.FormatInt(authzTimeout.Milliseconds(), 10) + "m"

// requestIDTail is the part of authztest's x-request-id that each Check
// replaces with its own number.
const requestIDTail = "000000000001"

func dialEventLoop(addr string, req *authv3.CheckRequest) (*eventLoop, error) {
	msg, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	framed := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(framed[1:5], uint32(len(msg)))
	copy(framed[5:], msg)
	id := req.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-request-id"]
	idAt := bytes.Index(framed, []byte(id))
	if !strings.HasSuffix(id, requestIDTail) || idAt < 0 || bytes.Count(framed, []byte(id)) != 1 {
		return nil, fmt.Errorf("request has no single x-request-id ending in %s to number", requestIDTail)
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &eventLoop{
		conn: conn, br: bufio.NewReaderSize(conn, 64<<10), bw: bufio.NewWriterSize(conn, 64<<10),
		framed: framed, idAt: idAt + len(id) - len(requestIDTail),
		nextID: 1, sendWin: 65535, streamWin: 65535, streams: map[uint32]*loopStream{},
	}
	l.fr = http2.NewFramer(l.bw, l.br)
	l.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	l.henc = hpack.NewEncoder(&l.hbuf)
	_, err = l.bw.WriteString(http2.ClientPreface)
	if err == nil {
		err = l.fr.WriteSettings()
	}
	if err == nil {
		err = l.bw.Flush()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return l, nil
}

func (l *eventLoop) Close() error { return l.conn.Close() }

// run keeps n Checks in flight until the deadline, starting a new one as
// each finishes, and returns the latency of each, from writing the
// request to checking the answer.
func (l *eventLoop) run(n int, deadline time.Time) ([]time.Duration, error) {
	// A server that stops answering fails the run instead of hanging it.
	if err := l.conn.SetReadDeadline(deadline.Add(10 * time.Second)); err != nil {
		return nil, err
	}
	lat := make([]time.Duration, 0, 1<<16)
	for range n {
		if err := l.start(); err != nil {
			return nil, err
		}
	}
	for len(l.streams) > 0 || l.waiting > 0 {
		// Writes go out when every frame already read has been handled,
		// as an event loop flushes at the end of a read callback.
		if l.br.Buffered() == 0 {
			if err := l.bw.Flush(); err != nil {
				return nil, err
			}
		}
		f, err := l.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		done, err := l.handle(f)
		if err != nil {
			return nil, err
		}
		if done == nil {
			continue
		}
		lat = append(lat, time.Since(done.start))
		if time.Now().Before(deadline) {
			if err := l.start(); err != nil {
				return nil, err
			}
		}
	}
	return lat, l.bw.Flush()
}

// start begins one Check, or holds it back until the server returns
// enough connection window.
func (l *eventLoop) start() error {
	if int64(len(l.framed)) > l.streamWin {
		return fmt.Errorf("request of %d bytes exceeds the server's stream window of %d", len(l.framed), l.streamWin)
	}
	if int64(len(l.framed)) > l.sendWin {
		l.waiting++
		l.held++
		return nil
	}
	start := time.Now()
	l.count++
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], l.count)
	hex.Encode(l.framed[l.idAt:l.idAt+len(requestIDTail)], n[2:])

	id := l.nextID
	l.nextID += 2
	l.hbuf.Reset()
	for _, h := range [][2]string{
		{":method", "POST"}, {":scheme", "http"},
		{":path", "/envoy.service.auth.v3.Authorization/Check"}, {":authority", "amg_authz"},
		{"content-type", "application/grpc"}, {"te", "trailers"}, {"grpc-timeout", grpcTimeout},
	} {
		if err := l.henc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]}); err != nil {
			return err
		}
	}
	if err := l.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: l.hbuf.Bytes(), EndHeaders: true}); err != nil {
		return err
	}
	if err := l.fr.WriteData(id, true, l.framed); err != nil {
		return err
	}
	l.sendWin -= int64(len(l.framed))
	l.streams[id] = &loopStream{start: start}
	return nil
}

// handle applies one frame and returns the stream it finished, if any.
func (l *eventLoop) handle(f http2.Frame) (*loopStream, error) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil, nil
		}
		if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
			l.streamWin = int64(v)
		}
		return nil, l.fr.WriteSettingsAck()
	case *http2.PingFrame:
		if f.IsAck() {
			return nil, nil
		}
		return nil, l.fr.WritePing(true, f.Data)
	case *http2.WindowUpdateFrame:
		if f.StreamID != 0 {
			return nil, nil
		}
		l.sendWin += int64(f.Increment)
		for l.waiting > 0 {
			l.waiting--
			before := len(l.streams)
			if err := l.start(); err != nil {
				return nil, err
			}
			if len(l.streams) == before {
				break // held back again
			}
		}
		return nil, nil
	case *http2.DataFrame:
		s := l.streams[f.StreamID]
		if s == nil {
			return nil, fmt.Errorf("DATA on unknown stream %d", f.StreamID)
		}
		s.data = append(s.data, f.Data()...)
		// Return the connection window before the server runs short.
		if l.unacked += f.Length; l.unacked >= 16<<10 {
			if err := l.fr.WriteWindowUpdate(0, l.unacked); err != nil {
				return nil, err
			}
			l.unacked = 0
		}
		if f.StreamEnded() {
			return nil, fmt.Errorf("stream %d ended without trailers", f.StreamID)
		}
		return nil, nil
	case *http2.MetaHeadersFrame:
		s := l.streams[f.StreamID]
		if s == nil {
			return nil, fmt.Errorf("HEADERS on unknown stream %d", f.StreamID)
		}
		if !f.StreamEnded() {
			if status := f.PseudoValue("status"); status != "200" {
				return nil, fmt.Errorf("stream %d: HTTP status %q", f.StreamID, status)
			}
			return nil, nil
		}
		delete(l.streams, f.StreamID)
		if status := field(f, "grpc-status"); status != "0" {
			return nil, fmt.Errorf("Check failed: grpc-status %q: %s", status, field(f, "grpc-message"))
		}
		return s, checkAllowed(s.data)
	case *http2.RSTStreamFrame:
		return nil, fmt.Errorf("stream %d reset: %v", f.StreamID, f.ErrCode)
	case *http2.GoAwayFrame:
		return nil, fmt.Errorf("server sent GOAWAY: %v", f.ErrCode)
	}
	return nil, nil
}

// field returns the value of the named header or trailer, or "".
func field(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// checkAllowed fails unless framed is one uncompressed gRPC message
// holding a CheckResponse that allows the request: the harness measures
// allowed decisions only.
func checkAllowed(framed []byte) error {
	if len(framed) < 5 || framed[0] != 0 || int(binary.BigEndian.Uint32(framed[1:5])) != len(framed)-5 {
		return errors.New("answer is not one uncompressed gRPC message")
	}
	return allowedWire(framed[5:])
}

// allowedWire reports, without building the message, whether a serialised
// CheckResponse allows the request: its status code is OK (0) and the last
// of its oneof http_response fields, the one that counts, is ok_response.
// Malformed input is an error.
func allowedWire(b []byte) error {
	var code uint64
	var verdict protowire.Number
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch {
		case num == 1 && typ == protowire.BytesType: // status
			return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
				if num == 1 && typ == protowire.VarintType { // code
					code, _ = protowire.ConsumeVarint(v)
				}
				return nil
			})
		case num == 2 || num == 3 || num == 5: // denied, ok, error response
			verdict = num
		}
		return nil
	})
	switch {
	case err != nil:
		return err
	case code != 0 || verdict != 3:
		return fmt.Errorf("not allowed: status code %d, http_response field %d", int32(code), verdict)
	}
	return nil
}

// eachField calls fn with each field of a serialised message, stopping at
// the first error; v is a length-delimited field's content or any other
// field's encoded value.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return protowire.ParseError(m)
		}
		v := b[:m]
		if typ == protowire.BytesType {
			v, _ = protowire.ConsumeBytes(v)
		}
		if err := fn(num, typ, v); err != nil {
			return err
		}
		b = b[m:]
	}
	return nil
}

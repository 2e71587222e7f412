package redistest

import (
	"bytes"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ProxyReadTimeout is the read timeout of a Proxy's clients: a reply held
// back longer than this times their command out.
const ProxyReadTimeout = 500 * time.Millisecond

// Proxy forwards TCP connections to a Server and can hold back a reply,
// as a slow network or a stalled server would: the server has run the
// command when the client's read times out, and go-redis sends it again
// on a new connection. Tests of writes that must not count twice use it.
type Proxy struct {
	// Addr is the proxy's host:port.
	Addr string

	s *Server

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open, on either side; nil once stopped
	match []byte                // what the command to delay contains; nil: none
	delay time.Duration         // how long to hold back its reply
}

// Proxy starts a proxy to s, stopped when the test ends.
func (s *Server) Proxy() *Proxy {
	s.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatalf("redistest: proxy: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), s: s, conns: map[net.Conn]struct{}{}}
	var serving sync.WaitGroup
	s.t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.conns = nil
		p.mu.Unlock()
		serving.Wait()
	})
	serving.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serving.Go(func() { p.serve(c) })
		}
	})
	return p
}

// Client returns a new client through the proxy, as Server.Client does,
// with a read timeout of ProxyReadTimeout.
func (p *Proxy) Client() *redis.Client {
	return p.s.client(p.Addr, ProxyReadTimeout)
}

// DelayReply holds back by d the reply to the next command, on any
// connection, whose bytes contain match (a key, say); a retry of it is
// not held back. Only that reply is: a client's handshake on a new
// connection, say, is not.
func (p *Proxy) DelayReply(match string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.match, p.delay = []byte(match), d
}

// delayFor returns how long to hold back the reply to the command in b,
// disarming the delay if b is the command it waits for.
func (p *Proxy) delayFor(b []byte) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.match == nil || !bytes.Contains(b, p.match) {
		return 0
	}
	d := p.delay
	p.match, p.delay = nil, 0
	return d
}

// track adds c to the open connections, or reports that the proxy
// stopped.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

// serve forwards one client connection until either side closes it.
func (p *Proxy) serve(c net.Conn) {
	if !p.track(c) {
		c.Close()
		return
	}
	defer p.untrack(c)
	up, err := net.Dial("tcp", p.s.Addr)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)
	held := make(chan time.Duration, 1) // the hold on this connection's next reply
	var forwarding sync.WaitGroup
	defer forwarding.Wait() // after both connections are closed
	forwarding.Go(func() {
		defer up.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if d := p.delayFor(buf[:n]); d > 0 {
					select {
					case held <- d:
					default: // one hold at a time
					}
				}
				if _, err := up.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			select {
			case d := <-held:
				time.Sleep(d)
			default:
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

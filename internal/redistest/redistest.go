// Package redistest runs a private redis-server for tests.
//
// Each Start launches its own server on a free loopback port, with
// persistence off and its working directory in the test's temporary
// directory, so tests never touch a system Redis, never share state with
// one another, and can stop and restart the server to check how code
// behaves while Redis is down; a Proxy in front of one holds back a reply,
// to check how code behaves when a command times out after it ran.
// redis-server must be on PATH: scripts/setup installs it. A missing
// binary fails the test rather than skipping it, so the Redis code paths
// cannot silently go untested.
package redistest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/internal/syncbuf"
)

// startTimeout bounds how long a starting server may take to answer PING.
const startTimeout = 10 * time.Second

// Server is a redis-server process owned by one test.
type Server struct {
	// Addr is the server's host:port. It stays the same across Restart.
	Addr string
	// TLS, for a server started with Options.TLS, are the files a client
	// needs; zero otherwise.
	TLS TLSFiles

	t    testing.TB
	bin  string
	dir  string
	port int
	opts Options
	// tlsConfig is what Client and the readiness probe dial TLS with.
	tlsConfig *tls.Config

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has been waited for
	output  *syncbuf.Buffer
	clients []*redis.Client
}

// Options ask for a server reached as production ones are: over TLS, as
// an ACL user. The zero value is a plain server whose default user needs
// no password.
type Options struct {
	// TLS serves over TLS only, with a certificate for 127.0.0.1 from a
	// CA made for the test; Server.TLS names the files.
	TLS bool
	// RequireClientCert, with TLS, refuses clients without a certificate
	// from that CA.
	RequireClientCert bool
	// User and Password, when User is set, are the only ACL user: the
	// default user is off.
	User, Password string
}

// TLSFiles are PEM files of a TLS server: its CA's certificate, and a
// client certificate with its key, signed by that CA.
type TLSFiles struct {
	CA, ClientCert, ClientKey string
}

// Start starts a redis-server for t and stops it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with opts.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server not found on PATH: run scripts/setup (or scripts/setup-redis) to install it")
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), opts: opts}
	if opts.TLS {
		if s.TLS, s.tlsConfig, err = makeCerts(s.dir); err != nil {
			t.Fatalf("redistest: %v", err)
		}
	}
	t.Cleanup(s.cleanup)
	// Another process can take the port between choosing it and the
	// server binding it; a few attempts make that race harmless.
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		s.port = port
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = s.start(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("redistest: %v", lastErr)
	return nil
}

// Client returns a new client for the server, closed when the test ends.
// Each call returns a distinct client with its own connection pool, so two
// calls stand for two replicas.
func (s *Server) Client() *redis.Client {
	return s.client(s.Addr, 2*time.Second)
}

// client returns a new client for the server at addr, closed when the
// test ends.
func (s *Server) client(addr string, readTimeout time.Duration) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:      addr,
		Username:  s.opts.User,
		Password:  s.opts.Password,
		TLSConfig: s.tlsConfig,
		// CLIENT SETINFO needs Redis 7.2; distributions ship older.
		DisableIdentity: true,
		// A stopped server refuses connections at once; one dial per
		// attempt and short timeouts keep a test of "Redis is down"
		// quick. Command retries stay at the default, so a restarted
		// server is reached again through fresh connections.
		DialerRetries: 1,
		DialTimeout:   time.Second,
		ReadTimeout:   readTimeout,
	})
	s.mu.Lock()
	s.clients = append(s.clients, c)
	s.mu.Unlock()
	return c
}

// Stop kills the server, as a crash would. Connections are dropped and
// data is lost (persistence is off). Stopping a stopped server does
// nothing.
func (s *Server) Stop() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

// Restart stops the server if it runs and starts an empty one on the same
// port, so existing clients reconnect to it.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	s.stopLocked()
	s.mu.Unlock()
	// The port was ours a moment ago; a bind failure means something
	// else took it, which a retry cannot fix.
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

func (s *Server) start() error {
	out := &syncbuf.Buffer{}
	args := []string{
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--loglevel", "warning",
	}
	if s.opts.TLS {
		auth := "optional"
		if s.opts.RequireClientCert {
			auth = "yes"
		}
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(s.port), "--tls-cert-file", filepath.Join(s.dir, "server.crt"),
			"--tls-key-file", filepath.Join(s.dir, "server.key"), "--tls-ca-cert-file", s.TLS.CA, "--tls-auth-clients", auth)
	} else {
		args = append(args, "--port", strconv.Itoa(s.port))
	}
	if s.opts.User != "" {
		args = append(args, "--user", "default", "off", "--user", s.opts.User, "on", ">"+s.opts.Password, "~*", "&*", "+@all")
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited, s.output = cmd, exited, out
	s.mu.Unlock()

	if err := waitReady(s.Addr, s.tlsConfig, exited); err != nil {
		s.Stop()
		return fmt.Errorf("redis-server on %s: %w; its output:\n%s", s.Addr, err, out.String())
	}
	return nil
}

// waitReady polls PING until the server answers, exits or startTimeout
// passes. It speaks the protocol by hand rather than through a client,
// whose pool would log every refused dial while the server starts.
func waitReady(addr string, tc *tls.Config, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := ping(addr, tc)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited before answering PING")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within %v: %w", startTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ping sends PING, over TLS with tc if it is not nil. A server whose
// default user is off answers NOAUTH, which shows it is up as well.
func ping(addr string, tc *tls.Config) error {
	var conn net.Conn
	var err error
	d := &net.Dialer{Timeout: 200 * time.Millisecond}
	if tc != nil {
		conn, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

func (s *Server) stopLocked() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

func (s *Server) cleanup() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.clients {
		c.Close()
	}
	s.clients = nil
	s.stopLocked()
}

// freePort asks the kernel for a loopback port nobody listens on.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

package gateway

import (
	"context"
	"errors"
	"sync"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// errStdioEnded refuses a stdio process asked for as the gateway shuts
// down.
var errStdioEnded = errors.New("the gateway is shutting down: no stdio server may start")

// stdioGroups are the process groups of the stdio upstreams' processes,
// each by its id (that of its server's process), from the start of the
// server until its session has closed. A server's group is killed once its
// session has closed, whatever the server started with it, and every
// group still open is killed when the gateway shuts down: the SDK ends a
// session's server, not what the server started, and a process group
// outlives its leader while any process of it runs.
type stdioGroups struct {
	mu    sync.Mutex
	live  map[int]bool
	ended bool // end was called: no group may start
}

func newStdioGroups() *stdioGroups {
	return &stdioGroups{live: make(map[int]bool)}
}

// add records the group pgid, which has just started, or kills it if the
// gateway is shutting down.
func (g *stdioGroups) add(pgid int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ended {
		killGroup(pgid)
		return errStdioEnded
	}
	g.live[pgid] = true
	return nil
}

// kill kills what remains of the group pgid, whose leader has been waited
// for, and forgets it. Its id cannot have been taken by another group
// while a process of it runs, and if none does, the kernel hands out the
// id again only once it has gone round every other, not in the moment
// since the leader was waited for.
func (g *stdioGroups) kill(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.live[pgid] {
		delete(g.live, pgid)
		killGroup(pgid)
	}
}

// end kills every group still recorded, and any that starts from now on.
func (g *stdioGroups) end() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ended = true
	for pgid := range g.live {
		killGroup(pgid)
	}
	clear(g.live)
}

// killGroup kills every process of the group pgid; none left is no error.
func killGroup(pgid int) {
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// groupTransport runs a stdio server in a process group of its own,
// recorded in groups until the server's session has closed.
type groupTransport struct {
	*mcp.CommandTransport
	groups *stdioGroups
}

func (t *groupTransport) Connect(ctx context.Context) (mcp.Connection, error) {
	conn, err := t.CommandTransport.Connect(ctx)
	if err != nil {
		return nil, err
	}
	pgid := t.Command.Process.Pid
	if err := t.groups.add(pgid); err != nil {
		conn.Close()
		return nil, err
	}
	return &groupConn{Connection: conn, end: func() { t.groups.kill(pgid) }}, nil
}

// groupConn kills its server's group once the SDK has closed the session:
// when the session is ended, and when the server ends it (the SDK closes
// a connection whose server's output ended).
type groupConn struct {
	mcp.Connection
	end func()
}

func (c *groupConn) Close() error {
	err := c.Connection.Close()
	c.end()
	return err
}

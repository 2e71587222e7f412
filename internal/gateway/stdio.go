package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// StdioGroupsFile, in the data directory, lists the process groups of the
// stdio servers running, so that a gateway that starts after one that
// crashed can kill what the crashed one left (see stdioGroups.recordIn).
const StdioGroupsFile = "stdio.groups"

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
//
// The servers are started from one OS thread, locked for as long as the
// groups are open: where a server gets a parent-death signal (see
// setDeathSignal), Linux sends it when the thread that started the server
// ends, not the gateway's process, and Go ends a thread whose locked
// goroutine returns, but no other.
type stdioGroups struct {
	log     *slog.Logger
	starts  chan func()   // run on the starting thread
	stopped chan struct{} // closed by end
	mu      sync.Mutex
	live    map[int]uint64 // pgid: its leader's start time (see procStart)
	ended   bool           // end was called: no group may start
	record  *os.File       // StdioGroupsFile, nil if the groups are not recorded
	head    string         // the record's first line (see recordHead)
}

func newStdioGroups(log *slog.Logger) *stdioGroups {
	g := &stdioGroups{log: log, starts: make(chan func()), stopped: make(chan struct{}), live: make(map[int]uint64)}
	go func() {
		runtime.LockOSThread() // and never unlocked: the thread ends with the groups
		for {
			select {
			case f := <-g.starts:
				f()
			case <-g.stopped:
				return
			}
		}
	}()
	return g
}

// start runs f, which starts a server, on the starting thread.
func (g *stdioGroups) start(f func()) error {
	done := make(chan struct{})
	select {
	case g.starts <- func() { f(); close(done) }:
	case <-g.stopped:
		return errStdioEnded
	}
	<-done
	return nil
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
	g.live[pgid] = procStart(pgid)
	g.save()
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
	if _, ok := g.live[pgid]; ok {
		delete(g.live, pgid)
		killGroup(pgid)
		g.save()
	}
}

// end kills every group still recorded, and any that starts from now on.
func (g *stdioGroups) end() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.ended {
		g.ended = true
		close(g.stopped)
	}
	for pgid := range g.live {
		killGroup(pgid)
	}
	clear(g.live)
	g.save()
	if g.record != nil {
		g.record.Close()
		g.record = nil
	}
}

// save writes the groups to StdioGroupsFile: its first line names the
// boot, the gateway's session, and the gateway (its process id and start
// time), each next one a group and its leader's start time. A write that fails leaves the groups running unrecorded,
// which matters only if the gateway then crashes: it is logged.
func (g *stdioGroups) save() {
	if g.record == nil {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", g.head)
	for _, pgid := range slices.Sorted(maps.Keys(g.live)) {
		fmt.Fprintf(&b, "%d %d\n", pgid, g.live[pgid])
	}
	err := g.record.Truncate(0)
	if err == nil {
		_, err = g.record.WriteAt([]byte(b.String()), 0)
	}
	if err != nil {
		g.log.Error("cannot record the stdio servers' process groups; a crash would leave them unkilled", "file", g.record.Name(), "err", err)
	}
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

func (t *groupTransport) Connect(ctx context.Context) (conn mcp.Connection, err error) {
	if serr := t.groups.start(func() { conn, err = t.CommandTransport.Connect(ctx) }); serr != nil {
		return nil, serr
	}
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

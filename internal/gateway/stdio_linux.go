package gateway

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// setDeathSignal has a stdio server killed when the thread that started it
// ends (see stdioGroups), hence when the gateway dies however it dies.
// What the server starts does not inherit the signal: recordIn kills it.
func setDeathSignal(a *syscall.SysProcAttr) {
	a.Pdeathsig = syscall.SIGKILL
}

// recordIn kills the process groups that a gateway which did not shut
// down (killed, out of memory) left running on dir, then records the
// groups in dir from now on. Nothing is killed while the gateway that
// wrote the record still runs: a data directory copied, or restored, and
// started beside the original holds the record of a live gateway. A
// recorded group is killed only if it is
// still the one recorded: in the same boot, in the dead gateway's session,
// with a process started no earlier than its leader was, and led by that
// leader, if by any process. A group's id is not given again while a
// process of the group runs, so such a group could be another only if the
// recorded one ended, its id came round again to a process of the dead
// gateway's session, which made a group of it, started another process
// and ended. A process that left the group, or the session, is out of
// reach.
func (g *stdioGroups) recordIn(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, StdioGroupsFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record stdio process groups: %w", err)
	}
	left, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("record stdio process groups: %w", err)
	}
	if killed := killLeft(string(left)); len(killed) > 0 {
		g.log.Warn("killed the processes of stdio servers that a gateway which did not shut down left running", "groups", killed)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.record, g.head = f, recordHead()
	g.save()
	return nil
}

// killLeft kills the groups of the record left, as written by save, that
// are still the ones recorded, and returns them.
func killLeft(left string) []int {
	lines := strings.Split(left, "\n")
	head := strings.Fields(lines[0])
	if len(head) != 4 || head[0] != bootID() {
		return nil // none, or recorded before the machine started
	}
	sid, err := strconv.Atoi(head[1])
	if err != nil {
		return nil
	}
	writer, err := strconv.Atoi(head[2])
	if err != nil {
		return nil
	}
	if st, err := readStat(writer); err == nil && strconv.FormatUint(st.start, 10) == head[3] {
		return nil // the gateway that wrote it runs: it did not crash
	}
	recorded := make(map[int]uint64)
	for _, line := range lines[1:] {
		var pgid int
		var start uint64
		if n, _ := fmt.Sscanf(line, "%d %d", &pgid, &start); n == 2 && pgid > 1 {
			recorded[pgid] = start
		}
	}
	for pgid, start := range recorded {
		if st, err := readStat(pgid); err == nil && st.start != start {
			delete(recorded, pgid) // the id is another process's
		}
	}
	own := syscall.Getpgrp()
	procs, _ := os.ReadDir("/proc")
	var found []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		start, ok := recorded[st.pgrp]
		if ok && st.pgrp != own && st.session == sid && st.start >= start && !slices.Contains(found, st.pgrp) {
			found = append(found, st.pgrp)
		}
	}
	for _, pgid := range found {
		killGroup(pgid)
	}
	slices.Sort(found)
	return found
}

// stat is what the gateway reads of /proc/<pid>/stat.
type stat struct {
	pgrp, session int
	start         uint64 // in clock ticks since boot
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, err
	}
	// The fields follow the command, in parentheses, which may hold any
	// character: the state (the third field) comes after the last ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return stat{}, fmt.Errorf("process %d: short stat", pid)
	}
	var st stat
	if st.pgrp, err = strconv.Atoi(f[2]); err != nil {
		return stat{}, err
	}
	if st.session, err = strconv.Atoi(f[3]); err != nil {
		return stat{}, err
	}
	if st.start, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return stat{}, err
	}
	return st, nil
}

// procStart is the start time of process pid, 0 if it cannot be read.
func procStart(pid int) uint64 {
	st, _ := readStat(pid)
	return st.start
}

// procSession is the session of process pid, 0 if it cannot be read.
func procSession(pid int) int {
	st, _ := readStat(pid)
	return st.session
}

// bootID names this boot of the machine.
func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// recordHead is the first line of StdioGroupsFile as this gateway writes
// it (see save).
func recordHead() string {
	pid := os.Getpid()
	return fmt.Sprintf("%s %d %d %d", bootID(), procSession(pid), pid, procStart(pid))
}

package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// TailOptions configures [Tail]. The zero value emits nothing and returns.
type TailOptions struct {
	// Lines is how many of the last records to emit first, reaching back
	// into rotated files if the current one holds fewer.
	Lines int
	// Follow then emits records as they are appended, following the path
	// across rotations, until ctx ends.
	Follow bool
	// Poll is how often a followed file is checked. 0 means 250 ms.
	Poll time.Duration
}

// Tail calls emit with the last lines of the audit log at path and, when
// following, every line appended after them, each without its newline and
// valid only during the call. A torn line is not emitted until it is
// complete. Tail returns nil when ctx ends, the first error from emit, or an
// error if the file shrinks (an audit file only grows).
func Tail(ctx context.Context, path string, opts *TailOptions, emit func(line []byte) error) error {
	var o TailOptions
	if opts != nil {
		o = *opts
	}
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	t := tailer{path: path, emit: emit}
	defer t.close()
	if err := t.open(); err != nil && !(o.Follow && errors.Is(err, os.ErrNotExist)) {
		return fmt.Errorf("audit tail: %w", err)
	}
	if err := t.backlog(o.Lines); err != nil {
		return fmt.Errorf("audit tail: %w", err)
	}
	if !o.Follow {
		return nil
	}
	tick := time.NewTicker(o.Poll)
	defer tick.Stop()
	for {
		if err := t.poll(); err != nil {
			return fmt.Errorf("audit tail: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

type tailer struct {
	path    string
	emit    func([]byte) error
	f       *os.File // nil while path does not exist
	fi      os.FileInfo
	pos     int64  // offset in f up to which lines were consumed
	partial []byte // bytes after the last newline read
	buf     []byte
}

func (t *tailer) open() error {
	f, fi, err := openFile(t.path)
	if err != nil {
		return err
	}
	t.f, t.fi, t.pos, t.partial = f, fi, 0, t.partial[:0]
	return nil
}

// openFile opens the file at name and says what it is.
func openFile(name string) (*os.File, os.FileInfo, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

func (t *tailer) close() {
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

// backlog emits the last n complete lines and positions t after them.
func (t *tailer) backlog(n int) error {
	var lines [][]byte
	if t.f != nil {
		end, err := completeEnd(t.f, t.fi.Size())
		if err != nil {
			return err
		}
		t.pos = end
		if lines, err = lastLines(t.f, end, n); err != nil {
			return err
		}
	}
	if len(lines) < n {
		rotated, err := rotatedFiles(t.path)
		if err != nil {
			return err
		}
		for i := len(rotated) - 1; i >= 0 && len(lines) < n; i-- {
			older, err := t.linesOf(rotated[i], n-len(lines))
			if err != nil {
				return err
			}
			lines = append(older, lines...)
		}
	}
	for _, l := range lines {
		if err := t.emit(l); err != nil {
			return err
		}
	}
	return nil
}

// linesOf returns the last n complete lines of a rotated file, none if it
// is the file t has open (renamed since).
func (t *tailer) linesOf(name string, n int) ([][]byte, error) {
	f, fi, err := openFile(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if t.fi != nil && os.SameFile(fi, t.fi) {
		return nil, nil
	}
	end, err := completeEnd(f, fi.Size())
	if err != nil {
		return nil, err
	}
	return lastLines(f, end, n)
}

// poll emits what was appended since the last call and moves on to a new
// file at path once the old one has been rotated away and read to its end.
func (t *tailer) poll() error {
	for {
		if t.f == nil {
			// Files rotated after the last one read were never open
			// here, and hold what comes before path's file now.
			if err := t.drainRotatedAfter(); err != nil {
				return err
			}
			if err := t.open(); errors.Is(err, os.ErrNotExist) {
				return nil
			} else if err != nil {
				return err
			}
		}
		if err := t.drain(); err != nil {
			return err
		}
		fi, err := os.Stat(t.path)
		if err == nil && os.SameFile(fi, t.fi) {
			return nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// Rotated: the writer closed the old file before renaming it, so
		// one more drain reads all it holds. A partial line left there was
		// torn by a crash and will never complete.
		if err := t.drain(); err != nil {
			return err
		}
		t.close()
	}
}

// drainRotatedAfter emits the complete lines of the rotated files newer
// than the last file t read, oldest first, and makes the newest of them
// the last file read.
func (t *tailer) drainRotatedAfter() error {
	if t.fi == nil {
		return nil
	}
	rotated, err := rotatedFiles(t.path)
	if err != nil {
		return err
	}
	for i, name := range rotated {
		if fi, err := os.Stat(name); err != nil || !os.SameFile(fi, t.fi) {
			continue
		}
		for _, newer := range rotated[i+1:] {
			if t.fi, err = t.emitFile(newer); err != nil {
				return err
			}
		}
		return nil
	}
	return nil
}

// emitFile emits the complete lines of a file that is no longer written,
// and returns what it is.
func (t *tailer) emitFile(name string) (os.FileInfo, error) {
	f, fi, err := openFile(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := newLineReader(f)
	for {
		line, complete, err := r.next()
		if err != nil || !complete {
			return fi, err
		}
		if err := t.emit(line); err != nil {
			return fi, err
		}
	}
}

// drain emits the complete lines between t.pos and the end of t.f.
func (t *tailer) drain() error {
	fi, err := t.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < t.pos {
		return fmt.Errorf("%s shrank from %d to %d bytes while being followed", t.path, t.pos, fi.Size())
	}
	if t.buf == nil {
		t.buf = make([]byte, 64<<10)
	}
	for {
		n, err := t.f.ReadAt(t.buf, t.pos)
		t.pos += int64(n)
		data := t.buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				t.partial = append(t.partial, data...)
				break
			}
			line := data[:i]
			if len(t.partial) > 0 {
				t.partial = append(t.partial, line...)
				line = t.partial
			}
			if err := t.emit(line); err != nil {
				return err
			}
			t.partial = t.partial[:0]
			data = data[i+1:]
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

package audit

import (
	"context"
	"encoding/json"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

type nopDevice struct{}

func (nopDevice) Write(*Record) error { return nil }
func (nopDevice) Close() error        { return nil }

// BenchmarkLog measures what a request pays to hand a record over: the copy
// into the queue, not the write. Every 1024 records the clock stops until
// the writer has caught up, so that every Log is accepted; a loop that only
// calls Log outruns any device, and measuring refusals is not the point.
func BenchmarkLog(b *testing.B) {
	l := NewLogger([]Device{nopDevice{}}, nil)
	defer l.Close(context.Background())
	rec := testRecord(1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := l.Log(rec); err != nil {
			b.Fatal(err)
		}
		if i++; i%1024 == 0 {
			b.StopTimer()
			for l.pending.Load() > 0 {
				runtime.Gosched()
			}
			b.StartTimer()
		}
	}
}

// BenchmarkLogRefused is the cost of refusing a record when the queue is
// full: what every request pays during an audit outage.
func BenchmarkLogRefused(b *testing.B) {
	dev := newHeld()
	l := NewLogger([]Device{dev}, &Options{QueueSize: 1})
	defer l.Close(context.Background())
	defer close(dev.hold)
	rec := testRecord(1)
	if err := l.Log(rec); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if l.Log(rec) == nil {
			b.Fatal("accepted a record with a full queue")
		}
	}
}

// benchArgs has 12 arguments, two of them sensitive (api_key, password).
func benchArgs() map[string]any {
	return map[string]any{
		"workspace_id": "ws_abc123",
		"limit":        json.Number("100"),
		"cursor":       "c_0001",
		"query":        "quarterly report",
		"sort":         "updated_at",
		"desc":         true,
		"filter":       map[string]any{"owner": "alice", "tags": []any{"finance", "q3"}},
		"page_size":    json.Number("50"),
		"include":      []any{"title", "body"},
		"lang":         "en",
		"api_key":      "sk-live-0123456789abcdef",
		"password":     "hunter2",
	}
}

func BenchmarkRedact(b *testing.B) {
	r := NewRedactor(testKey(1))
	args := benchArgs()
	for _, bc := range []struct {
		name  string
		rules []string
	}{
		{"default-keys", nil},
		{"with-role-globs", []string{"cursor", "filter.*"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r.Redact(args, bc.rules)
			}
		})
	}
}

// BenchmarkRedactLongKey redacts, under a role rule, arguments an agent
// shaped to make path matching costly: 20,000 keys under one of 100 KB.
// Its cost should follow the body's size, as without rules.
func BenchmarkRedactLongKey(b *testing.B) {
	r := NewRedactor(testKey(1))
	inner := map[string]any{}
	for i := range 20000 {
		inner[strconv.Itoa(i)] = json.Number("1")
	}
	args := map[string]any{strings.Repeat("K", 100<<10): inner}
	for _, bc := range []struct {
		name  string
		rules []string
	}{
		{"no-rules", nil},
		{"rule", []string{"cursor"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				r.Redact(args, bc.rules)
			}
		})
	}
}

func BenchmarkFileDeviceWrite(b *testing.B) {
	d, err := NewFileDevice(filepath.Join(b.TempDir(), "audit.log"), &FileOptions{Sync: SyncNever})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	rec := testRecord(1)
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Write(rec); err != nil {
			b.Fatal(err)
		}
	}
}

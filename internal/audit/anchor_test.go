package audit

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/internal/redistest"
)

func TestParseAnchor(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for in, want := range map[string]Anchor{"12:" + h: {12, h}, "12": {12, ""}} {
		if got, err := ParseAnchor(in); err != nil || got != want || got.String() != in {
			t.Errorf("ParseAnchor(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0:" + h, "x:" + h, "-1", "12:" + h[:63], "12:" + strings.ToUpper(h), "12:" + h + ":"} {
		if _, err := ParseAnchor(in); err == nil {
			t.Errorf("ParseAnchor(%q) accepted", in)
		}
	}
}

// Cutting records from the end of the chain, or rewriting its tail and
// chaining it anew, leaves a chain that verifies on its own; an anchor
// taken before tells.
func TestVerifyAnchored(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeRecords(t, path, nil, 1, 6)
	orig := readLines(t, path)
	head := Anchor{Seq: 6, Hash: hashOf(orig[5])}
	mid := Anchor{Seq: 3, Hash: hashOf(orig[2])}

	res, err := VerifyAnchored([]Anchor{mid, head, {Seq: 4}}, path)
	if err != nil || res.Anchored != 3 || len(res.Warnings) != 0 {
		t.Fatalf("intact chain: %+v, %v; want 3 anchors checked", res, err)
	}

	tests := []struct {
		name    string
		lines   []string
		anchors []Anchor
		want    string // the ChainError, "" for none
	}{
		{"end cut", orig[:4], []Anchor{mid, head}, path + ":4: anchor mismatch: the chain ends at seq 4, but an anchor names seq 6: records were cut from its end"},
		{"end cut, anchor by seq", orig[:4], []Anchor{{Seq: 5}}, path + ":4: anchor mismatch: the chain ends at seq 4, but an anchor names seq 5: records were cut from its end"},
		{"all cut", nil, []Anchor{head}, path + ":0: anchor mismatch: no records, but an anchor names seq 6: records were removed"},
		{"tail rewritten", append(orig[:4:4], forge(5, hashOf(orig[3])), forge(6, hashOf(forge(5, hashOf(orig[3]))))), []Anchor{mid, head},
			path + ":6: anchor mismatch: seq 6 has hash " + hashOf(forge(6, hashOf(forge(5, hashOf(orig[3]))))) + ", but an anchor says " + head.Hash +
				": this record or one before it was rewritten, and the chain recomputed"},
		{"an anchor before the rewrite still holds", append(orig[:4:4], forge(5, hashOf(orig[3]))), []Anchor{mid}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			writeLines(t, path, tt.lines)
			if _, err := Verify(path); err != nil {
				t.Fatalf("without anchors the chain does not verify (%v): the case tests nothing", err)
			}
			_, err := VerifyAnchored(tt.anchors, path)
			var ce *ChainError
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("VerifyAnchored: %v, want none", err)
			case tt.want != "" && !errors.As(err, &ce):
				t.Errorf("VerifyAnchored: %v, want a *ChainError", err)
			case tt.want != "" && ce.Kind != BreakAnchor:
				t.Errorf("VerifyAnchored: %v, want an anchor mismatch", err)
			case tt.want != "":
				if d := cmp.Diff(tt.want, err.Error()); d != "" {
					t.Errorf("error (-want +got):\n%s", d)
				}
			}
		})
	}

	// Two anchors that name one seq with different hashes cannot both
	// hold, whichever comes first (--redis appends its anchor after those
	// of --anchor); one with the seq alone still merges with a hashed one.
	writeLines(t, path, orig)
	forged := Anchor{Seq: 6, Hash: hashOf(forge(6, hashOf(orig[4])))}
	for _, anchors := range [][]Anchor{{head, forged}, {forged, head}} {
		_, err := VerifyAnchored(anchors, path)
		want := path + ":0: anchor mismatch: anchors disagree on seq 6: one says " + anchors[0].Hash + ", another " + anchors[1].Hash +
			": the chain or the record an anchor was taken from was rewritten"
		var ce *ChainError
		if !errors.As(err, &ce) || ce.Kind != BreakAnchor || err.Error() != want {
			t.Errorf("VerifyAnchored(%v, %v): %v, want %q", anchors[0], anchors[1], err, want)
		}
	}
	for _, anchors := range [][]Anchor{{{Seq: 6}, head}, {head, {Seq: 6}}} {
		if res, err := VerifyAnchored(anchors, path); err != nil || res.Anchored != 1 {
			t.Errorf("VerifyAnchored(%v, %v) = %+v, %v; want the hashed anchor checked", anchors[0], anchors[1], res, err)
		}
	}

	// Files whose older ones were removed cannot be checked against an
	// anchor before them: a warning, not a break.
	writeLines(t, path, orig[3:])
	res, err = VerifyAnchored([]Anchor{mid, head}, path)
	if err != nil || res.Anchored != 1 || len(res.Warnings) != 1 ||
		res.Warnings[0] != "anchor seq 3 comes before these files, which begin at seq 4: not checked" {
		t.Errorf("anchor before the files: %+v, %v", res, err)
	}
}

// verifyChain verifies the audit log at path, rotated files included, and
// returns its files and what Verify found; a broken chain fails the test.
func verifyChain(t *testing.T, path string) ([]string, VerifyResult) {
	t.Helper()
	files, err := ChainFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(files...)
	if err != nil {
		t.Fatal(err)
	}
	return files, res
}

// Head is the last record a replica shipped, as its file holds it, beside
// another replica's newer entries; a replica that shipped nothing is an
// error, not an anchor that checks nothing.
func TestStreamHead(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond})
	path := filepath.Join(t.TempDir(), FileName)
	stop := shipping(t, s, path)
	appendRecords(t, path, 0, 8)
	awaitShipped(t, srv.Client(), s, 8)
	stop()
	other := filepath.Join(t.TempDir(), FileName)
	appendRecords(t, other, 100, 3)
	s2 := NewStream(srv.Client(), &StreamOptions{Replica: "r2", Poll: 10 * time.Millisecond})
	stop = shipping(t, s2, other)
	awaitShipped(t, srv.Client(), s, 11)
	stop()

	files, res := verifyChain(t, path)
	got, err := s.Head(ctx, "r1")
	if want := (Anchor{Seq: res.LastSeq, Hash: res.LastHash}); err != nil || got != want {
		t.Errorf("Head(r1) = %v, %v; want %v, the file's last record", got, err, want)
	}
	if _, err := VerifyAnchored([]Anchor{got}, files...); err != nil {
		t.Errorf("the file against its own head: %v", err)
	}
	if _, err := s.Head(ctx, "r9"); err == nil || !strings.Contains(err.Error(), `replica "r9" has shipped no audit records`) {
		t.Errorf("Head of a replica that shipped nothing: %v", err)
	}
}

// A stream that holds records of a replica past its position, or two
// different records under one seq (shipped again from a file rewritten
// since, as an older version did), anchors at the latest or is an error:
// never at a record that would let the rewritten file pass.
func TestStreamHeadDistrustsReshippedRecords(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1"})
	path := filepath.Join(t.TempDir(), FileName)
	writeRecords(t, path, nil, 1, 10)
	orig := readLines(t, path)
	add := func(lines ...string) {
		for _, l := range lines {
			srv.Client().XAdd(ctx, &redis.XAddArgs{Stream: s.key, Values: []any{"replica", "r1", "record", strings.TrimSuffix(l, "\n")}})
		}
	}

	// Genuine records 1 to 10 shipped, then the file cut to 7 and records
	// 1 to 7 shipped again, the position lowered to 7.
	add(orig...)
	add(orig[:7]...)
	srv.Client().HSet(ctx, s.shippedKey(), "r1", 7)
	writeLines(t, path, orig[:7])
	head, err := s.Head(ctx, "r1")
	if want := (Anchor{Seq: 10, Hash: hashOf(orig[9])}); err != nil || head != want {
		t.Errorf("Head = %v, %v; want %v, the latest record the stream holds", head, err, want)
	}

	// Then rewritten from 8 on and shipped again.
	writeRecords(t, path, nil, 50, 54)
	add(readLines(t, path)[7:]...)
	srv.Client().HSet(ctx, s.shippedKey(), "r1", 12)
	if _, err := s.Head(ctx, "r1"); err == nil || !strings.Contains(err.Error(), `replica "r1" shipped two different records with seq`) {
		t.Errorf("Head of a stream holding two records with seq 8: %v", err)
	}
}

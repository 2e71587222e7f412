package console

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/replay"
)

// maxUpload bounds the role files one replay may upload.
const maxUpload = 4 << 20

// shownChanges bounds the changed decisions the report keeps and lists;
// the counts cover them all.
const shownChanges = 200

// shownTools bounds the tools of one role the report counts apart; the
// others are counted together in one row.
const shownTools = 50

type replayData struct {
	Staged string // the staged policy directory, "" when none is set
	// Source names the policy replayed against; empty before a replay.
	Source   string
	Problems []string
	Report   *replay.Report
	Outcome  string // the report's outcome, as a sentence
	Rows     []replayCount
	Changes  []replay.Change
	Hidden   int // changes not listed
}

type replayCount struct {
	replay.Key
	*replay.Counts
}

func (c *Console) replayPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, http.StatusOK, "replay", page{Title: "Replay", Nav: "replay", Session: s, CSRF: c.csrf(s),
		Data: replayData{Staged: c.opts.StagedPolicyDir}})
}

// replay re-evaluates the audit log against uploaded role files or the
// staged policy, as `amg replay` does, and shows the same report.
func (c *Console) replay(w http.ResponseWriter, r *http.Request, s *session) {
	p := page{Title: "Replay", Nav: "replay", Session: s, CSRF: c.csrf(s)}
	d := replayData{Staged: c.opts.StagedPolicyDir}
	opts := &policy.Options{Servers: c.d.Upstreams.Names(), Catalog: c.d.Upstreams}
	var set *policy.Set
	var err error
	if r.PostFormValue("staged") != "" {
		if d.Staged == "" {
			http.Error(w, "no staged policy directory is configured", http.StatusBadRequest)
			return
		}
		d.Source = "the staged policy"
		set, err = policy.LoadDir(d.Staged, opts)
	} else {
		var files []policy.File
		files, err = uploaded(r)
		if err == nil {
			names := make([]string, len(files))
			for i, f := range files {
				names[i] = f.Name
			}
			d.Source = strings.Join(names, ", ")
			set, err = policy.Compile(files, opts)
		}
	}
	var problems policy.Problems
	switch {
	case errors.As(err, &problems):
		for _, pr := range problems {
			d.Problems = append(d.Problems, pr.String())
		}
		p.Problem = "The policy does not compile, so nothing was replayed."
	case err != nil:
		p.Problem = err.Error()
	}
	if err != nil {
		p.Data = d
		c.render(w, http.StatusBadRequest, "replay", p)
		return
	}
	rep, err := c.replayAudit(r.Context(), set)
	if err != nil {
		c.opts.Logger.Error("console: replaying the audit log", "err", err)
		p.Problem = "The audit log could not be read: " + err.Error()
		p.Data = d
		c.render(w, http.StatusServiceUnavailable, "replay", p)
		return
	}
	d.Report = &rep
	outcome := rep.Outcome()
	d.Outcome = strings.ToUpper(outcome[:1]) + outcome[1:]
	for _, k := range rep.Keys() {
		d.Rows = append(d.Rows, replayCount{Key: k, Counts: rep.Counts[k]})
	}
	d.Changes = rep.Changes
	d.Hidden = rep.Changed - len(d.Changes)
	p.Data = d
	c.render(w, http.StatusOK, "replay", p)
}

func (c *Console) replayAudit(ctx context.Context, set *policy.Set) (replay.Report, error) {
	var readErr error
	records := func(yield func(audit.Record) bool) {
		readErr = c.d.Audit.Records(ctx, yield)
	}
	rep := replay.Replay(records, set, &replay.Options{Annotations: replay.CatalogAnnotations(c.d.Upstreams),
		MaxChanges: shownChanges, MaxToolsPerRole: shownTools})
	return rep, readErr
}

// uploaded returns the role files of a replay form: one or more .yaml or
// .yml files.
func uploaded(r *http.Request) ([]policy.File, error) {
	if r.MultipartForm == nil {
		return nil, errors.New("upload the role files as a form (multipart/form-data)")
	}
	var files []policy.File
	for _, fh := range r.MultipartForm.File["policy"] {
		name := filepath.Base(fh.Filename)
		if ext := filepath.Ext(name); ext != ".yaml" && ext != ".yml" {
			return nil, errors.New(name + " is not a role file: upload .yaml or .yml files")
		}
		f, err := fh.Open()
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		files = append(files, policy.File{Name: name, Data: data})
	}
	if len(files) == 0 {
		return nil, errors.New("choose the role files to replay against (every file of the new policy)")
	}
	return files, nil
}

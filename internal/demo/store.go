package demo

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Page is one page of a workspace as the tools report it.
type Page struct {
	ID          string   `json:"id"`
	WorkspaceID string   `json:"workspace_id"`
	Title       string   `json:"title"`
	Body        string   `json:"body"`
	Owner       string   `json:"owner"`
	Tags        []string `json:"tags"`
	URI         string   `json:"uri"`
}

// PageSummary is a page without its body, for listings.
type PageSummary struct {
	ID          string   `json:"id"`
	WorkspaceID string   `json:"workspace_id"`
	Title       string   `json:"title"`
	Owner       string   `json:"owner"`
	Tags        []string `json:"tags"`
	URI         string   `json:"uri"`
}

// pageURI is the resource URI of a page; the example policies grant
// resources by this shape, so it must not change casually.
func pageURI(workspaceID, pageID string) string {
	return "notion://" + workspaceID + "/pages/" + pageID
}

// parsePageURI is the inverse of pageURI.
func parsePageURI(uri string) (workspaceID, pageID string, ok bool) {
	rest, ok := strings.CutPrefix(uri, "notion://")
	if !ok {
		return "", "", false
	}
	workspaceID, pageID, ok = strings.Cut(rest, "/pages/")
	if !ok || workspaceID == "" || pageID == "" || strings.Contains(workspaceID, "/") || strings.Contains(pageID, "/") {
		return "", "", false
	}
	return workspaceID, pageID, true
}

type page struct {
	Page
	// seq orders pages by creation so that listings and cursors stay stable
	// while other pages are created and deleted.
	seq int
}

func (p *page) snapshot() Page {
	c := p.Page
	c.Tags = slices.Clone(p.Tags)
	if c.Tags == nil {
		c.Tags = []string{}
	}
	return c
}

func (p *page) summary() PageSummary { return p.snapshot().summary() }

func (p Page) summary() PageSummary {
	return PageSummary{ID: p.ID, WorkspaceID: p.WorkspaceID, Title: p.Title, Owner: p.Owner, Tags: p.Tags, URI: p.URI}
}

type workspace struct {
	id    string
	name  string
	pages []*page // in seq order
}

// store is the in-memory workspace. Every method returns copies so that
// callers never share memory with it.
type store struct {
	mu         sync.Mutex
	workspaces map[string]*workspace
	pages      map[string]*page
	seq        int
	created    int
}

// createdOwner owns pages made through create_page: the demo has no user
// identity of its own, and a fixed owner keeps results deterministic.
const createdOwner = "demo_agent"

func newStore() *store {
	s := &store{workspaces: map[string]*workspace{}, pages: map[string]*page{}}
	for _, ws := range seedWorkspaces {
		s.workspaces[ws.id] = &workspace{id: ws.id, name: ws.name}
		for _, p := range ws.pages {
			s.add(ws.id, p)
		}
	}
	return s
}

func (s *store) add(workspaceID string, p Page) *page {
	s.seq++
	p.WorkspaceID = workspaceID
	p.URI = pageURI(workspaceID, p.ID)
	p.Tags = slices.Clone(p.Tags)
	np := &page{Page: p, seq: s.seq}
	ws := s.workspaces[workspaceID]
	ws.pages = append(ws.pages, np)
	s.pages[p.ID] = np
	return np
}

func (s *store) workspace(id string) (*workspace, error) {
	ws, ok := s.workspaces[id]
	if !ok {
		return nil, fmt.Errorf("unknown workspace %q: known workspaces are %s", id, s.workspaceList())
	}
	return ws, nil
}

func (s *store) workspaceList() string {
	ids := make([]string, 0, len(s.workspaces))
	for id := range s.workspaces {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return strings.Join(ids, ", ")
}

func (s *store) page(id string) (*page, error) {
	p, ok := s.pages[id]
	if !ok {
		return nil, fmt.Errorf("unknown page %q", id)
	}
	return p, nil
}

// info returns the display name of a workspace and its number of pages.
func (s *store) info(id string) (name string, pages int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws, err := s.workspace(id)
	if err != nil {
		return "", 0, err
	}
	return ws.name, len(ws.pages), nil
}

// list returns up to limit pages of a workspace after cursor, and the
// cursor of the next page of results ("" when there is none).
func (s *store) list(workspaceID string, limit int, cursor string) ([]PageSummary, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws, err := s.workspace(workspaceID)
	if err != nil {
		return nil, "", err
	}
	after := 0
	if cursor != "" {
		if after, err = decodeCursor(workspaceID, cursor); err != nil {
			return nil, "", err
		}
	}
	out := []PageSummary{}
	last := after
	for _, p := range ws.pages {
		if p.seq <= after {
			continue
		}
		if len(out) == limit {
			return out, encodeCursor(workspaceID, last), nil
		}
		out = append(out, p.summary())
		last = p.seq
	}
	return out, "", nil
}

// The cursor names the workspace as well as the position, so that a
// cursor cannot be replayed against another workspace's listing.
func encodeCursor(workspaceID string, seq int) string {
	return base64.RawURLEncoding.EncodeToString([]byte(workspaceID + "/" + strconv.Itoa(seq)))
}

func decodeCursor(workspaceID, cursor string) (int, error) {
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return 0, fmt.Errorf("invalid cursor %q: pass the next_cursor of a previous get_pages result", cursor)
	}
	ws, n, ok := strings.Cut(string(raw), "/")
	seq, err := strconv.Atoi(n)
	if !ok || err != nil || seq < 0 {
		return 0, fmt.Errorf("invalid cursor %q: pass the next_cursor of a previous get_pages result", cursor)
	}
	if ws != workspaceID {
		return 0, fmt.Errorf("invalid cursor %q: it belongs to another workspace", cursor)
	}
	return seq, nil
}

// search returns the pages of a workspace whose title or body contains
// query (ignoring case), owned by owner if given and carrying every tag
// in tags.
func (s *store) search(workspaceID, query, owner string, tags []string) ([]PageSummary, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws, err := s.workspace(workspaceID)
	if err != nil {
		return nil, err
	}
	q := strings.ToLower(query)
	out := []PageSummary{}
	for _, p := range ws.pages {
		if !strings.Contains(strings.ToLower(p.Title), q) && !strings.Contains(strings.ToLower(p.Body), q) {
			continue
		}
		if owner != "" && p.Owner != owner {
			continue
		}
		if !containsAll(p.Tags, tags) {
			continue
		}
		out = append(out, p.summary())
	}
	return out, nil
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// get returns one page.
func (s *store) get(id string) (Page, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.page(id)
	if err != nil {
		return Page{}, err
	}
	return p.snapshot(), nil
}

// all returns every page, ordered by URI.
func (s *store) all() []Page {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Page, 0, len(s.pages))
	for _, p := range s.pages {
		out = append(out, p.snapshot())
	}
	slices.SortFunc(out, func(a, b Page) int { return strings.Compare(a.URI, b.URI) })
	return out
}

// create adds a page. Ids are sequential rather than random so that a
// demo session, and the tests, can be replayed exactly.
func (s *store) create(workspaceID, title, body string) (Page, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.workspace(workspaceID); err != nil {
		return Page{}, err
	}
	var id string
	for {
		s.created++
		id = fmt.Sprintf("pg_new%05d", s.created)
		if _, taken := s.pages[id]; !taken {
			break
		}
	}
	p := s.add(workspaceID, Page{ID: id, Title: title, Body: body, Owner: createdOwner})
	return p.snapshot(), nil
}

// update changes the title and/or body of a page; nil leaves a field as
// it is.
func (s *store) update(id string, title, body *string) (Page, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.page(id)
	if err != nil {
		return Page{}, err
	}
	if title != nil {
		p.Title = *title
	}
	if body != nil {
		p.Body = *body
	}
	return p.snapshot(), nil
}

// delete removes a page and returns it as it was.
func (s *store) delete(id string) (Page, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.page(id)
	if err != nil {
		return Page{}, err
	}
	delete(s.pages, id)
	ws := s.workspaces[p.WorkspaceID]
	ws.pages = slices.DeleteFunc(ws.pages, func(q *page) bool { return q == p })
	return p.snapshot(), nil
}

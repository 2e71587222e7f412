package approval

import (
	"context"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// decisions hears, on one connection, the decisions a store's Waits wait
// for: a pattern subscription to every approval's channel, held while any
// Wait is waiting. A connection per Wait would cost Redis a client, and
// the replica a socket and a reader, for every call parked for approval.
// Decisions come at the pace of people, so hearing every one of them
// costs nothing worth counting.
type decisions struct {
	client  redis.UniversalClient
	pattern string // matches every channel under prefix
	prefix  string // a channel's name before its approval id

	mu  sync.Mutex
	sub *subscription // nil while no Wait waits
}

// subscription is one connection's pattern subscription and the Waits it
// serves. It ends when its last Wait leaves or on its first error; the
// next Wait opens another.
type subscription struct {
	ps      *redis.PubSub
	live    chan struct{}                   // closed once Redis confirms the subscription
	waiters map[string]map[*waiter]struct{} // by id; an id without waiters has no entry
}

// waiter is one Wait's side of a subscription.
type waiter struct {
	wake chan struct{} // a decision was announced on the Wait's channel
	fail chan error    // the subscription failed, and the Wait with it
}

func newDecisions(client redis.UniversalClient, prefix string) *decisions {
	return &decisions{client: client, pattern: globEscape(prefix) + "*", prefix: prefix}
}

// globEscape makes s match itself alone in a Redis glob pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\*?[]`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// join registers a waiter for id's decisions, subscribing if no Wait is
// subscribed yet. Until the subscription's live channel is closed, a
// decision may pass unheard.
func (d *decisions) join(id string) (*subscription, *waiter) {
	w := &waiter{wake: make(chan struct{}, 1), fail: make(chan error, 1)}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.sub
	if s == nil {
		s = &subscription{ps: d.client.Subscribe(context.Background()), live: make(chan struct{}), waiters: map[string]map[*waiter]struct{}{}}
		d.sub = s
		go d.listen(s)
	}
	if s.waiters[id] == nil {
		s.waiters[id] = map[*waiter]struct{}{}
	}
	s.waiters[id][w] = struct{}{}
	return s, w
}

// leave unregisters w; the last waiter to leave ends the subscription.
func (d *decisions) leave(s *subscription, id string, w *waiter) {
	d.mu.Lock()
	if _, ok := s.waiters[id][w]; !ok {
		d.mu.Unlock() // the subscription failed and let it go already
		return
	}
	delete(s.waiters[id], w)
	if len(s.waiters[id]) == 0 {
		delete(s.waiters, id)
	}
	last := len(s.waiters) == 0 && d.sub == s
	if last {
		d.sub = nil
	}
	d.mu.Unlock()
	if last {
		s.ps.Close() // which ends listen
	}
}

// listen subscribes s and delivers what it hears until its connection
// fails or is closed. A failure fails every Wait on s: a decision
// announced while the connection was down would go unheard, so a Wait
// must look at the state again after subscribing anew.
func (d *decisions) listen(s *subscription) {
	// Receive blocks on the socket, heeding no cancellation; closing ps
	// ends it.
	err := s.ps.PSubscribe(context.Background(), d.pattern)
	for err == nil {
		var msg any
		if msg, err = s.ps.Receive(context.Background()); err != nil {
			break
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			select {
			case <-s.live:
			default:
				close(s.live)
			}
		case *redis.Message:
			d.wake(s, strings.TrimPrefix(m.Channel, d.prefix))
		}
	}
	d.mu.Lock()
	if d.sub == s {
		d.sub = nil
	}
	for id, ws := range s.waiters {
		for w := range ws {
			w.fail <- err
		}
		delete(s.waiters, id)
	}
	d.mu.Unlock()
	s.ps.Close()
}

// wake tells id's waiters on s that its decision was announced.
func (d *decisions) wake(s *subscription, id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for w := range s.waiters[id] {
		select {
		case w.wake <- struct{}{}:
		default: // already told, and yet to look
		}
	}
}

package gateway

import (
	"net/http"
	"time"
)

// Timeouts of the agent and admin listeners. A request's headers must
// arrive within headerTimeout and the whole request within readTimeout, so
// that a client trickling its body cannot hold a connection, and what
// serves it, for as long as it likes; a connection idle between requests
// is closed after idleTimeout. The answer takes as long as it takes: a
// parked call waits for a human, and net/http lifts the read deadline
// once the body has been read.
const (
	headerTimeout = 10 * time.Second
	readTimeout   = 30 * time.Second
	idleTimeout   = 2 * time.Minute
)

// newHTTPServer is an agent-facing or admin listener's server of h.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: headerTimeout, ReadTimeout: readTimeout, IdleTimeout: idleTimeout}
}

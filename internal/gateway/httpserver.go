package gateway

import (
	"net/http"

	"github.com/amgateway/amg/internal/config"
)

// newHTTPServer is an agent-facing or admin listener's server of h, with
// the timeouts of every listener agents reach (see config.HeaderTimeout).
// net/http lifts the read deadline once the body has been read, so a call
// parked for approval may wait well past it.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: config.HeaderTimeout, ReadTimeout: config.ReadTimeout, IdleTimeout: config.IdleTimeout}
}

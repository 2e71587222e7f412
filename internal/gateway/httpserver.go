package gateway

import (
	"net/http"

	"github.com/amgateway/amg/internal/config"
)

// The timeouts newHTTPServer gives its servers: config's, variables so
// that tests can run them on a short clock.
var (
	headerTimeout = config.HeaderTimeout
	readTimeout   = config.ReadTimeout
	idleTimeout   = config.IdleTimeout
)

// newHTTPServer is a listener's server of h, with the timeouts of every
// listener agents, or anyone else on the network, reach (see
// config.HeaderTimeout). net/http lifts the read deadline once the body
// has been read, so a call parked for approval may wait well past it;
// there is no write timeout, so its answer is still written.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: headerTimeout, ReadTimeout: readTimeout, IdleTimeout: idleTimeout}
}

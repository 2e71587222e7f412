package hostguard

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
)

// Origin is a web origin (RFC 6454) of a scheme a gateway can be reached
// by, as a browser sends it in an Origin header.
type Origin struct {
	Scheme, Host string // lower-case; Host without brackets
	Port         string // "" for the scheme's default
}

// String is the origin as a browser serialises it: lower-case, the
// default port left out, so that equal origins are equal strings.
func (o Origin) String() string {
	host := o.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if o.Port != "" {
		host += ":" + o.Port
	}
	return o.Scheme + "://" + host
}

var defaultPorts = map[string]string{"http": "80", "https": "443"}

// ParseOrigin parses an http or https origin, scheme://host[:port], with
// nothing after it: no path (not even "/"), query, fragment or user,
// since an Origin header never has one. Its errors say what is wrong,
// without repeating s.
func ParseOrigin(s string) (Origin, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Origin{}, err
	case u.Scheme == "" || u.Opaque != "":
		return Origin{}, errors.New("want scheme://host[:port]")
	case !strings.EqualFold(u.Scheme, "http") && !strings.EqualFold(u.Scheme, "https"):
		return Origin{}, errors.New("scheme must be http or https")
	case u.User != nil:
		return Origin{}, errors.New("must not name a user")
	case u.Hostname() == "":
		return Origin{}, errors.New("has no host")
	case u.Path != "" || u.RawPath != "":
		return Origin{}, errors.New("must not have a path, not even \"/\"")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#"):
		return Origin{}, errors.New("must not have a query or fragment")
	case strings.HasSuffix(u.Host, ":"):
		return Origin{}, errors.New("has an empty port")
	}
	o := Origin{Scheme: strings.ToLower(u.Scheme), Host: strings.ToLower(u.Hostname()), Port: u.Port()}
	if o.Port != "" {
		if n, err := strconv.ParseUint(o.Port, 10, 16); err != nil || n == 0 {
			return Origin{}, errors.New("port must be a number from 1 to 65535")
		}
		if o.Port == defaultPorts[o.Scheme] {
			o.Port = ""
		}
	}
	return o, nil
}

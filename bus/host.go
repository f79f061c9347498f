package bus

import (
	"strings"
)

// ServiceFromHost maps a request's host to a mesh service. A single-label host
// other than localhost ("ratings", "ratings:9080") or a "<name>.mesh" host is a
// mesh service; ok is false for any other host, which is egress. A host that
// names the mesh but is not a valid service name gives a bad-request error.
func ServiceFromHost(host string) (service string, ok bool, err *Error) {
	h := host
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		if strings.IndexByte(h[:i], ':') >= 0 && !strings.HasPrefix(h, "[") {
			return "", false, nil // a bare IPv6 address
		}
		h = h[:i]
	}
	if h == "" {
		return "", false, Errorf(BadRequest, "the request names no host; call a service as http://<service>/... or with a Host: <service> header")
	}
	h = strings.ToLower(h)
	h = strings.TrimSuffix(h, ".") // fully qualified form
	if name, found := strings.CutSuffix(h, ".mesh"); found {
		h = name
	} else if strings.IndexByte(h, '.') >= 0 || strings.HasPrefix(h, "[") || h == "localhost" {
		return "", false, nil
	}
	if verr := ValidateName("service", h); verr != nil {
		return "", false, Errorf(BadRequest, "host %q does not name a valid mesh service: %v", host, verr)
	}
	return h, true, nil
}

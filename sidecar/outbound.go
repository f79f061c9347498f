package sidecar

import (
	"net/http"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy"
)

// DefaultListen is where a sidecar takes its app's outgoing calls.
const DefaultListen = "127.0.0.1:15001"

// outbound is the http.Handler an app sends its outgoing calls to, either as
// its HTTP proxy (HTTP_PROXY, absolute-form requests and CONNECT) or directly
// with a Host header naming the service. Requests for mesh services go over
// NATS through the Transport; any other host is egress.
type outbound struct {
	t      *proxy.Transport
	egress *Egress // nil: egress is denied
}

var _ http.Handler = (*outbound)(nil)

func (o *outbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	service, isMesh, herr := bus.ServiceFromHost(r.Host)
	if herr != nil {
		proxy.WriteError(w, r, herr)
		return
	}
	if isMesh && r.Method == http.MethodConnect {
		proxy.WriteError(w, r, bus.Errorf(bus.BadRequest, "mesh services are called over plain HTTP: use http://%s/ (the mesh carries the call), not https:// or CONNECT", service))
		return
	}
	if isMesh && r.URL.Scheme == "https" {
		// An absolute-form https:// URL asks this proxy for TLS it would
		// not give: carried as plain HTTP, the app would believe its call
		// was encrypted end to end.
		proxy.WriteError(w, r, bus.Errorf(bus.BadRequest, "https://%s/ is refused: call mesh services with http://%s/ (the mesh carries the call), and use CONNECT for TLS to hosts outside the mesh", r.Host, service))
		return
	}
	if !isMesh {
		if o.egress == nil {
			proxy.WriteError(w, r, bus.Errorf(bus.Forbidden, "calls to %s outside the mesh are denied by this sidecar (--egress=deny)", r.Host))
			return
		}
		o.egress.ServeHTTP(w, r)
		return
	}
	o.t.Forward(w, r, service, r.Host, r.Header)
}

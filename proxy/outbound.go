package proxy

import (
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// DefaultOutboundListen is where a sidecar takes its app's outgoing calls.
const DefaultOutboundListen = "127.0.0.1:15001"

// Outbound is the http.Handler an app sends its outgoing calls to, either as
// its HTTP proxy (HTTP_PROXY, absolute-form requests and CONNECT) or directly
// with a Host header naming the service. Requests for mesh services go over
// NATS through a Transport; any other host is egress.
type Outbound struct {
	t      *Transport
	egress *Egress // nil: egress is denied
	log    *slog.Logger
}

var _ http.Handler = (*Outbound)(nil)

// NewOutbound makes the handler. egress nil refuses non-mesh hosts with 403.
func NewOutbound(t *Transport, egress *Egress, log *slog.Logger) *Outbound {
	if log == nil {
		log = slog.Default()
	}
	return &Outbound{t: t, egress: egress, log: log}
}

func (o *Outbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	service, isMesh, herr := ServiceFromHost(r.Host)
	if herr != nil {
		writeError(w, r, herr)
		return
	}
	if isMesh && r.Method == http.MethodConnect {
		writeError(w, r, bus.Errorf(bus.BadRequest, "mesh services are called over plain HTTP: use http://%s/ (the mesh carries the call), not https:// or CONNECT", service))
		return
	}
	if !isMesh {
		if o.egress == nil {
			writeError(w, r, bus.Errorf(bus.Forbidden, "calls to %s outside the mesh are denied by this sidecar (--egress=deny)", r.Host))
			return
		}
		o.egress.ServeHTTP(w, r)
		return
	}

	forward(o.t, w, r, service, r.Host, r.Header)
}

// forward carries r to service through t and writes the answer to w, or the
// mesh's failure: upgrades refused, the body read into one message or
// streamed, the reply streamed to the client when its body does. host and
// hdr are what the service is sent as the request's Host and headers (the
// codec drops hop-by-hop and Mesh-* ones).
func forward(t *Transport, w http.ResponseWriter, r *http.Request, service, host string, hdr http.Header) {
	if isUpgrade(hdr) {
		e := notSupportedUpgrade(hdr)
		t.recordEarly(service, e)
		writeError(w, r, e)
		return
	}
	if e := t.unavailable(); e != nil {
		t.recordEarly(service, e)
		writeError(w, r, e)
		return
	}
	buf := getBuf()
	defer putBuf(buf)
	uri := requestURI(r)
	rb, berr := t.takeBody(r.Body, r.ContentLength, hdr, len(uri)+len(host), buf)
	if berr != nil {
		if berr.Code == bus.TooLarge {
			w.Header().Set("Connection", "close") // the rest of the body is not read
		}
		t.recordEarly(service, berr)
		writeError(w, r, berr)
		return
	}
	body := buf.Bytes()
	if rb != nil {
		body = nil
	}
	res, err := t.call(r.Context(), service, r.Method, uri, host, hdr, body, rb)
	if err != nil {
		return // the client went away; there is nobody to answer
	}
	addCallHeaders(w.Header(), &res)
	if res.err != nil {
		if rb != nil && res.err.Code == bus.TooLarge {
			w.Header().Set("Connection", "close")
		}
		writeError(w, r, res.err)
		return
	}
	if res.st != nil {
		writeStream(w, r, res.m, res.st)
		return
	}
	writeMessage(w, r, res.m)
}

// requestURI is the raw path and query of r, as the client sent them.
func requestURI(r *http.Request) string {
	uri := r.RequestURI
	if r.URL.IsAbs() {
		// Proxy form: drop "scheme://authority" and keep the rest verbatim.
		if i := strings.Index(uri, "://"); i >= 0 {
			rest := uri[i+3:]
			if j := strings.IndexAny(rest, "/?"); j >= 0 {
				uri = rest[j:]
			} else {
				uri = "/"
			}
		}
		if strings.HasPrefix(uri, "?") {
			uri = "/" + uri
		}
	}
	if uri == "" {
		uri = "/"
	}
	return uri
}

// writeMessage writes a reply message as the HTTP response.
func writeMessage(w http.ResponseWriter, r *http.Request, m *nats.Msg) {
	code, ok := replyStatus(m)
	if !ok {
		writeError(w, r, badStatus())
		return
	}
	copyReplyHeaders(w.Header(), m)
	if r.Method == http.MethodHead || !bodyAllowed(code) {
		w.WriteHeader(code) // keeps the app's Content-Length, if any
		return
	}
	w.Header()["Content-Length"] = []string{strconv.Itoa(len(m.Data))}
	w.WriteHeader(code)
	_, _ = w.Write(m.Data)
}

func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// writeError answers with a mesh failure.
func writeError(w http.ResponseWriter, r *http.Request, e *bus.Error) {
	hdr, body := bus.ErrorResponse(e, "")
	writeMessage(w, r, &nats.Msg{Header: hdr, Data: body})
}

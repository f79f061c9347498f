package proxy

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// Forward carries r to service and writes the answer to w, or the mesh's
// failure: the caller's side of a proxy (a sidecar's outbound listener, a
// gateway). The body is read into one message or streamed, and the reply is
// streamed to the client when its body does. host and hdr are what the
// service is sent as the request's Host and headers (hop-by-hop and Mesh-*
// headers are dropped).
func (t *Transport) Forward(w http.ResponseWriter, r *http.Request, service, host string, hdr http.Header) {
	buf := getBuf()
	defer putBuf(buf)
	uri := requestURI(r)
	rb, body, e := t.prepare(service, hdr, r.Body, r.ContentLength, len(uri)+len(host), buf)
	if e != nil {
		if e.Code == bus.TooLarge {
			w.Header().Set("Connection", "close") // the rest of the body is not read
		}
		WriteError(w, r, e)
		return
	}
	res, err := t.call(r.Context(), service, r.Method, uri, host, hdr, body, rb)
	e = meshError(err)
	if err != nil && e == nil {
		return // the client went away; there is nobody to answer
	}
	addCallHeaders(w.Header(), &res)
	switch {
	case e != nil:
		if rb != nil && e.Code == bus.TooLarge {
			w.Header().Set("Connection", "close")
		}
		WriteError(w, r, e)
	case res.st != nil:
		writeStream(w, r, res.m, res.st)
	default:
		writeMessage(w, r, res.m)
	}
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
		WriteError(w, r, badStatus())
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

// WriteError answers r with a failure made by the mesh: its status, its
// Mesh-Error code and its sentence as the body, as every proxy of the mesh
// answers one.
func WriteError(w http.ResponseWriter, r *http.Request, e *bus.Error) {
	hdr, body := bus.ErrorResponse(e, "")
	writeMessage(w, r, &nats.Msg{Header: hdr, Data: body})
}

package proxy

import (
	"net/http"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
)

// meshReplyHeaders are the mesh headers of a reply that the app is shown.
var meshReplyHeaders = []string{bus.HeaderInstance, bus.HeaderError, bus.HeaderEjected}

// replyStatus is a reply's Mesh-Status; false when it is missing or not a
// status code.
func replyStatus(m *nats.Msg) (int, bool) {
	code, err := strconv.Atoi(bus.First(m.Header, bus.HeaderStatus))
	return code, err == nil && code >= 100 && code <= 999
}

// copyReplyHeaders copies a reply's HTTP headers, and the mesh headers the
// app is shown, to dst.
func copyReplyHeaders(dst http.Header, m *nats.Msg) {
	bus.CopyToHTTP(dst, m.Header)
	for _, k := range meshReplyHeaders {
		if v := m.Header[k]; len(v) > 0 {
			dst[k] = v[:1]
		}
	}
}

// attemptValues are shared Mesh-Attempts values.
var attemptValues [16][]string

func init() {
	for i := range attemptValues {
		attemptValues[i] = []string{strconv.Itoa(i)}
	}
}

// addCallHeaders tells the app how its call went: how many attempts it took,
// when it failed with the destination's breaker not closed, its state, and
// the fault its config injected, if any.
func addCallHeaders(h http.Header, r *reply) {
	if r.attempts > 0 {
		if r.attempts < len(attemptValues) {
			h[bus.HeaderAttempts] = attemptValues[r.attempts]
		} else {
			h[bus.HeaderAttempts] = []string{strconv.Itoa(r.attempts)}
		}
	}
	if r.breaker != breaker.Closed {
		h[bus.HeaderBreaker] = []string{r.breaker.String()}
	}
	if r.fault != nil {
		h[bus.HeaderFault] = r.fault
	}
}

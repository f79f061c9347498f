package bus

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// NATS headers of a proxied call (see docs/architecture.md, "Wire format").
// Every header whose name starts with "Mesh-" belongs to the mesh: an app can
// neither set nor read them through the codec.
const (
	HeaderMethod   = "Mesh-Method"   // request: HTTP method
	HeaderPath     = "Mesh-Path"     // request: raw request URI, path and query
	HeaderHost     = "Mesh-Host"     // request: original Host
	HeaderCaller   = "Mesh-Caller"   // request: calling service
	HeaderTimeout  = "Mesh-Timeout"  // request: milliseconds left for the call
	HeaderStatus   = "Mesh-Status"   // response: HTTP status code
	HeaderInstance = "Mesh-Instance" // response: instance that served it
	HeaderError    = "Mesh-Error"    // response: mesh failure code

	// HeaderAck asks, on a request, for an acknowledgement if the callee has
	// not answered within that many milliseconds; on a reply message it marks
	// the acknowledgement, which names the instance in Mesh-Instance.
	HeaderAck = "Mesh-Ack"
	// HeaderProbe marks a liveness probe sent to <prefix>.inst.<instance>:
	// the instance answers it at once, and NATS answers "no responders" for
	// an instance that is gone.
	HeaderProbe = "Mesh-Probe"
	// HeaderAttempts tells the app how many attempts its call took.
	HeaderAttempts = "Mesh-Attempts"
	// HeaderEjected, on a response, says that the instance that served it
	// has just ejected itself from its queue groups, and for how long.
	HeaderEjected = "Mesh-Ejected"
	// HeaderBreaker, on a failed response, says the state the breaker of the
	// destination is in when it is not closed.
	HeaderBreaker = "Mesh-Breaker"
	// HeaderFault, on a response, says that the caller's proxy injected a
	// fault into the call, as the service's config asks: "delay" (the call
	// was held before it was sent), "abort" (it was answered without being
	// sent) or both.
	HeaderFault = "Mesh-Fault"

	// Streams: a body that does not fit one message travels as a head and
	// chunks (docs/architecture.md, "Large and streaming bodies").

	// HeaderStream is "1" on a request or response head whose body follows
	// in chunks; on a message from the caller to the callee's own subject
	// (a chunk, a credit or a cancel) it is the call's reply subject, which
	// names the call.
	HeaderStream = "Mesh-Stream"
	// HeaderSeq numbers the chunks of one body: 1, 2, 3...
	HeaderSeq = "Mesh-Seq"
	// HeaderEnd marks the last chunk of a body.
	HeaderEnd = "Mesh-End"
	// HeaderCredit grants the sender of a body that many more bytes.
	HeaderCredit = "Mesh-Credit"
	// HeaderCancel, from the caller, tells the callee to stop: the client
	// went away or the caller gave up.
	HeaderCancel = "Mesh-Cancel"

	// escapePrefix carries an HTTP header whose name NATS gives meaning to
	// (Status, Description, Nats-*) so that nats.go never mistakes an HTTP
	// response for a NATS status message, nor the server a payload header for
	// one of its own.
	escapePrefix = "Mesh-Esc-"
)

// Trace-context headers travel with lower-case keys, as W3C trace context
// specifies for carriers that are case-sensitive.
var traceKeys = map[string]string{
	"Traceparent": "traceparent",
	"Tracestate":  "tracestate",
	"Baggage":     "baggage",
}

// HopByHop reports whether the canonical header name k describes one
// connection rather than the message, so it is never forwarded (RFC 9110
// section 7.6.1, as net/http/httputil removes them).
func HopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// inConnection reports whether name is listed in the Connection header
// values conn, without allocating.
func inConnection(conn []string, name string) bool {
	for _, v := range conn {
		for v != "" {
			var tok string
			if i := strings.IndexByte(v, ','); i >= 0 {
				tok, v = v[:i], v[i+1:]
			} else {
				tok, v = v, ""
			}
			if strings.EqualFold(strings.TrimSpace(tok), name) {
				return true
			}
		}
	}
	return false
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// reservedByNATS reports whether NATS or nats.go attach meaning to a header name.
func reservedByNATS(k string) bool {
	return strings.EqualFold(k, "Status") || strings.EqualFold(k, "Description") || hasPrefixFold(k, "Nats-")
}

// PutHTTPHeader copies the end-to-end headers of src into dst: hop-by-hop
// headers and those named in Connection are removed, Mesh-* headers are
// dropped (only the mesh sets them), names NATS reserves are escaped and
// trace-context keys are lower-cased. The values of each name keep their
// order; value slices are shared with src, not copied.
func PutHTTPHeader(dst nats.Header, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		ck := http.CanonicalHeaderKey(k)
		if HopByHop(ck) || hasPrefixFold(ck, "Mesh-") || (conn != nil && inConnection(conn, ck)) {
			continue
		}
		switch {
		case reservedByNATS(ck):
			ck = escapePrefix + ck
		default:
			if tk, ok := traceKeys[ck]; ok {
				ck = tk
			}
		}
		if prev, ok := dst[ck]; ok { // two spellings of one name in src
			dst[ck] = append(prev[:len(prev):len(prev)], vv...)
			continue
		}
		dst[ck] = vv
	}
}

// HTTPName maps the key of a NATS header to the HTTP header it carries:
// escaped names are restored and keys are canonicalized. ok is false for mesh
// control headers and NATS's own headers, which are not HTTP headers.
func HTTPName(k string) (name string, ok bool) {
	switch {
	case len(k) > len(escapePrefix) && hasPrefixFold(k, escapePrefix):
		// Only names that are ever escaped come back, so an escaped
		// Mesh-Caller, say, published straight to NATS stays out.
		name := k[len(escapePrefix):]
		if !reservedByNATS(name) {
			return "", false
		}
		return http.CanonicalHeaderKey(name), true
	case hasPrefixFold(k, "Mesh-") || reservedByNATS(k):
		return "", false
	}
	return http.CanonicalHeaderKey(k), true
}

// CopyToHTTP adds the HTTP headers carried in src to dst: escaped names are
// restored, mesh control headers and NATS's own headers are left out. Value
// slices are shared with src.
func CopyToHTTP(dst http.Header, src nats.Header) {
	for k, vv := range src {
		k, ok := HTTPName(k)
		if !ok {
			continue
		}
		if prev, ok := dst[k]; ok {
			dst[k] = append(prev[:len(prev):len(prev)], vv...)
			continue
		}
		dst[k] = vv
	}
}

// methodValues are shared header values for the common methods; encoded
// headers are only ever read, so sharing them saves an allocation per call.
var methodValues = map[string][]string{}

func init() {
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		methodValues[m] = []string{m}
	}
}

// EncodeRequest puts an HTTP request's method, raw URI, Host and end-to-end
// headers into h.
func EncodeRequest(h nats.Header, method, uri, host string, hdr http.Header) {
	PutHTTPHeader(h, hdr)
	if v, ok := methodValues[method]; ok {
		h[HeaderMethod] = v
	} else {
		h[HeaderMethod] = []string{method}
	}
	h[HeaderPath] = []string{uri}
	if host != "" {
		h[HeaderHost] = []string{host}
	}
}

// EncodeResponse puts an HTTP response's status, serving instance and
// end-to-end headers into h.
func EncodeResponse(h nats.Header, status int, instance string, hdr http.Header) {
	PutHTTPHeader(h, hdr)
	h[HeaderStatus] = []string{StatusCode(status)}
	if instance != "" {
		h[HeaderInstance] = []string{instance}
	}
}

// First returns the first value of a NATS header, without canonicalizing.
func First(h nats.Header, k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// IsNoResponders reports whether msg is the server's "no responders" status
// for a request nobody was subscribed to receive.
func IsNoResponders(msg *nats.Msg) bool {
	return len(msg.Data) == 0 && First(msg.Header, "Status") == "503"
}

var statusStrings [600]string

func init() {
	for i := 100; i < len(statusStrings); i++ {
		statusStrings[i] = strconv.Itoa(i)
	}
}

// StatusCode is a status code as its three digits (strconv.Itoa, without
// allocating), as Mesh-Status carries it; not http.StatusText's reason phrase.
func StatusCode(code int) string {
	if code >= 0 && code < len(statusStrings) && statusStrings[code] != "" {
		return statusStrings[code]
	}
	return strconv.Itoa(code)
}

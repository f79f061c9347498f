package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/natsmesh/natsmesh/bus"
)

// NewInstanceID returns "<service>-<12 hex digits>", a valid instance name.
func NewInstanceID(service string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if len(service)+1+len(id) > bus.MaxNameLen {
		service = service[:bus.MaxNameLen-1-len(id)]
	}
	return service + "-" + id
}

// Upstream is an http.Handler that forwards each request to a local HTTP app
// over a pool of keep-alive connections. It passes the request URI through
// byte for byte, never follows redirects and never decompresses.
type Upstream struct {
	base      *url.URL
	transport *http.Transport
}

var _ http.Handler = (*Upstream)(nil)

// NewUpstream makes an Upstream for an app at rawURL (http://127.0.0.1:PORT),
// keeping up to maxIdle idle connections to it.
func NewUpstream(rawURL string, maxIdle int) (*Upstream, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("proxy: upstream %q is not an http:// or https:// URL with a host (for example http://127.0.0.1:8080)", rawURL)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("proxy: upstream %q has a path; give only scheme, host and port", rawURL)
	}
	if maxIdle <= 0 {
		maxIdle = DefaultMaxInflight
	}
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:               nil, // the app is local; never through HTTP_PROXY
		DialContext:         d.DialContext,
		MaxIdleConns:        maxIdle,
		MaxIdleConnsPerHost: maxIdle,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // bodies pass through byte for byte
		ForceAttemptHTTP2:   false,
		WriteBufferSize:     16 << 10,
		ReadBufferSize:      16 << 10,
	}
	return &Upstream{base: &url.URL{Scheme: u.Scheme, Host: u.Host}, transport: t}, nil
}

// Close closes idle connections to the app.
func (u *Upstream) Close() { u.transport.CloseIdleConnections() }

// ServeHTTP forwards r to the app.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	out := r.WithContext(r.Context()) // a shallow copy: headers are not modified
	out.URL = u.outURL(r)
	out.RequestURI = ""
	resp, err := u.transport.RoundTrip(out)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	defer resp.Body.Close()
	if rw, ok := w.(*responseWriter); ok {
		rw.header = resp.Header // the response is ours alone: no need to copy
	} else {
		for k, vv := range resp.Header {
			w.Header()[k] = vv
		}
	}
	w.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(w, resp.Body); err != nil {
		if rw, ok := w.(*responseWriter); ok && rw.err != nil {
			return // too large, already recorded
		}
		u.fail(w, r, err)
	}
}

// outURL points the request at the app, keeping the raw URI exactly: the
// path goes out as URL.Opaque, which net/http writes verbatim.
func (u *Upstream) outURL(r *http.Request) *url.URL {
	raw := r.RequestURI
	if raw == "" {
		raw = r.URL.RequestURI()
	}
	path, query, hasQuery := strings.Cut(raw, "?")
	out := &url.URL{Scheme: u.base.Scheme, Host: u.base.Host, Opaque: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	if strings.HasPrefix(path, "//") || !strings.HasPrefix(path, "/") {
		// "//x" would be read as scheme-relative and "*" (OPTIONS *) has no
		// leading slash: send the absolute form.
		out.Opaque = "//" + u.base.Host + ensureSlash(path)
	}
	return out
}

func ensureSlash(p string) string {
	if strings.HasPrefix(p, "/") {
		return p
	}
	return "/" + p
}

func (u *Upstream) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *bus.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(r.Context().Err(), context.DeadlineExceeded):
		e = bus.Errorf(bus.Timeout, "the app at %s did not answer before the call's deadline", u.base.Host)
	case errors.Is(err, context.Canceled):
		e = bus.Errorf(bus.UpstreamLost, "the call was cancelled before the app at %s answered", u.base.Host)
	default:
		e = bus.Errorf(bus.UpstreamUnreachable, "the app at %s cannot be reached: %v", u.base.Host, unwrapNetError(err))
	}
	if mw, ok := w.(meshErrorWriter); ok {
		mw.setMeshError(e)
		return
	}
	w.Header().Set(bus.HeaderError, string(e.Code))
	http.Error(w, e.Message, e.Status)
}

// unwrapNetError keeps the part of a transport error a person can act on.
func unwrapNetError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op
	}
	return err
}

package sidecar

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy"
)

// Egress forwards requests for hosts outside the mesh as a forward proxy
// that is not open: plain HTTP through a reverse proxy that keeps the
// request as it was, and CONNECT (to port 443, or a listed destination) as a
// TCP tunnel. Every destination is resolved and each of its addresses
// checked against its EgressConfig before any dial, and the address dialed
// is one that was checked; a refused one is answered 403 forbidden.
type Egress struct {
	rp     *httputil.ReverseProxy
	tr     *http.Transport
	via    string // this proxy's Via pseudonym
	policy *egressPolicy
	dialIP func(ctx context.Context, network, addr string) (net.Conn, error)
	log    *slog.Logger

	mu      sync.Mutex
	tunnels map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// NewEgress makes an egress forwarder that forwards what cfg allows; it
// fails, with an ErrInvalidConfig, on a bad cfg. name identifies this proxy
// in the Via header it adds ("natsmesh-<name>"), so that a request that
// comes back to it — an app calling the sidecar's own address, say — is
// refused instead of looping, while a chain through several proxies still
// works.
func NewEgress(name string, cfg EgressConfig, log *slog.Logger) (*Egress, error) {
	if log == nil {
		log = slog.Default()
	}
	policy, err := newEgressPolicy(cfg)
	if err != nil {
		return nil, err
	}
	e := &Egress{
		via:     "natsmesh-" + name,
		policy:  policy,
		dialIP:  cfg.Dial,
		log:     log,
		tunnels: make(map[net.Conn]struct{}),
	}
	if e.dialIP == nil {
		e.dialIP = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	e.tr = &http.Transport{
		Proxy:               nil, // never back through HTTP_PROXY, which is us
		DialContext:         e.dial,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   true,
	}
	e.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			if !pr.In.URL.IsAbs() { // Host-form: the target is the Host header
				pr.Out.URL.Scheme = "http"
				pr.Out.URL.Host = pr.In.Host
			}
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Add("Via", "1.1 "+e.via)
		},
		Transport:     e.tr,
		FlushInterval: -1, // stream responses as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			proxy.WriteError(w, r, failure(r.Host, err))
		},
	}
	return e, nil
}

// dial connects to addr (host:port) if the policy allows it: it resolves
// the host, checks every address, and dials the checked addresses in turn,
// never the name, so that no second lookup can change what is reached. A
// refusal is a *bus.Error, and then nothing was dialed.
func (e *Egress) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	dest, berr := e.policy.destination(addr)
	if berr != nil {
		return nil, berr
	}
	aps, err := e.policy.resolve(ctx, dest)
	if err != nil {
		return nil, err
	}
	var first error
	for _, ap := range aps {
		c, err := e.dialIP(ctx, network, ap.String())
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// looped reports whether r already passed through this proxy.
func (e *Egress) looped(r *http.Request) bool {
	for _, v := range r.Header["Via"] {
		for _, hop := range strings.Split(v, ",") {
			// A hop is "protocol pseudonym [comment]".
			if f := strings.Fields(hop); len(f) >= 2 && f[1] == e.via {
				return true
			}
		}
	}
	return false
}

func (e *Egress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if e.looped(r) {
		proxy.WriteError(w, r, bus.Errorf(bus.BadRequest, "the request for %s came back to the proxy that forwarded it; call a mesh service by name (http://<service>/...) instead of the proxy's own address", r.Host))
		return
	}
	if r.Method == http.MethodConnect {
		e.tunnel(w, r)
		return
	}
	e.rp.ServeHTTP(w, r)
}

// tunnel serves CONNECT: dial the target, answer 200, then copy both ways
// until either side closes.
func (e *Egress) tunnel(w http.ResponseWriter, r *http.Request) {
	target := r.Host
	if _, _, err := net.SplitHostPort(target); err != nil {
		proxy.WriteError(w, r, bus.Errorf(bus.BadRequest, "CONNECT needs host:port, got %q", target))
		return
	}
	dest, berr := e.policy.destination(target)
	if berr != nil {
		proxy.WriteError(w, r, berr)
		return
	}
	if !strings.HasSuffix(dest, ":443") && !e.policy.allow[dest] {
		proxy.WriteError(w, r, refused(dest, "CONNECT reaches port 443 only"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	upstream, err := e.dial(ctx, "tcp", dest)
	cancel()
	if err != nil {
		proxy.WriteError(w, r, failure(target, err))
		return
	}
	rc := http.NewResponseController(w)
	client, brw, err := rc.Hijack()
	if err != nil {
		upstream.Close()
		proxy.WriteError(w, r, bus.Errorf(bus.BadRequest, "CONNECT is not possible on this connection: %v", err))
		return
	}
	if !e.track(client, upstream) {
		client.Close()
		upstream.Close()
		return
	}
	defer e.untrack(client, upstream)
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// Bytes the client sent after the CONNECT request are already buffered.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := upstream.Write(b); err != nil {
			return
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(upstream, client)
		closeWrite(upstream)
	}()
	_, _ = io.Copy(client, upstream)
	closeWrite(client)
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = c.Close()
}

func (e *Egress) track(conns ...net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	for _, c := range conns {
		e.tunnels[c] = struct{}{}
	}
	e.wg.Add(1)
	return true
}

func (e *Egress) untrack(conns ...net.Conn) {
	e.mu.Lock()
	for _, c := range conns {
		delete(e.tunnels, c)
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Done()
}

// Close ends open tunnels, waits for them and closes idle connections.
// Safe to call twice.
func (e *Egress) Close() {
	defer e.tr.CloseIdleConnections()
	e.mu.Lock()
	e.closed = true
	for c := range e.tunnels {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// failure is the mesh error for a request to host that err ended: the
// policy's own (a refusal, a name that does not resolve), else
// upstream-unreachable.
func failure(host string, err error) *bus.Error {
	var e *bus.Error
	if errors.As(err, &e) {
		return e
	}
	return bus.Errorf(bus.UpstreamUnreachable, "cannot reach %s outside the mesh: %v", host, unwrapNetError(err))
}

// unwrapNetError keeps the part of a transport error a person can act on.
func unwrapNetError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op
	}
	return err
}

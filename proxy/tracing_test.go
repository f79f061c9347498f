package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/traffic"
	"github.com/natsmesh/natsmesh/sidecar"
)

// w3cTraceHeaders are the W3C trace-context headers.
var w3cTraceHeaders = []string{"traceparent", "tracestate", "baggage"}

// newTestTracing records every span, synchronously, in memory.
func newTestTracing(t *testing.T) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp
}

// headerLog keeps the headers an app received, by path.
type headerLog struct {
	mu sync.Mutex
	m  map[string]http.Header
}

func (l *headerLog) put(path string, h http.Header) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]http.Header{}
	}
	l.m[path] = h.Clone()
}

func (l *headerLog) get(path string) http.Header {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[path]
}

// chain is services b and c behind sidecars, and a caller sidecar a: the
// test calls b through a; b's app calls c through b's own sidecar, passing
// the trace headers of its request on, as an instrumented app would.
type chain struct {
	a      *sidecar.Sidecar
	b, c   *sidecar.Sidecar
	hc     *http.Client // through a's outbound listener
	cSeen  *headerLog   // what c's app received
	bSeen  *headerLog   // what b's app received
	traced map[string]bool
}

// newChain starts the chain; each sidecar named in traced gets tp.
func newChain(t *testing.T, tp trace.TracerProvider, traced ...string) *chain {
	s := meshtest.RunServer(t)
	ch := &chain{cSeen: &headerLog{}, bSeen: &headerLog{}, traced: map[string]bool{}}
	for _, name := range traced {
		ch.traced[name] = true
	}
	with := func(name string) func(*sidecar.Config) {
		return func(c *sidecar.Config) {
			c.Outlier.Consecutive = -1
			if ch.traced[name] {
				c.TracerProvider = tp
			}
		}
	}
	_, ch.c = startCallee(t, s, "c", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ch.cSeen.put(r.URL.Path, r.Header)
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusInternalServerError)
		}
		_, _ = io.WriteString(w, "c says hi\n")
	}), with("c"))
	var bOut atomic.Pointer[http.Client]
	_, ch.b = startCallee(t, s, "b", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ch.bSeen.put(r.URL.Path, r.Header)
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://c"+r.URL.Path, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		for _, k := range w3cTraceHeaders {
			if v := r.Header.Get(k); v != "" {
				req.Header.Set(k, v)
			}
		}
		resp, err := bOut.Load().Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}), with("b"))
	bOut.Store(httpClient(t, proxyTransport(ch.b.OutboundAddr().String())))
	ch.a = startCaller(t, s, "a", with("a"))
	ch.hc = httpClient(t, proxyTransport(ch.a.OutboundAddr().String()))
	return ch
}

// call sends GET http://b<path> through a, with the trace context of ctx
// (if any) and the extra headers.
func (ch *chain) call(t *testing.T, ctx context.Context, path string, extra map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://b"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	resp, body := doRequest(t, ch.hc, req)
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

func attrsOf(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

// findSpan returns the one span of kind whose attribute key has value.
func findSpan(t *testing.T, spans tracetest.SpanStubs, kind trace.SpanKind, key, value string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range spans {
		if s.SpanKind == kind && attrsOf(s)[attribute.Key(key)].String() == value {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s spans with %s=%s, want 1; spans: %s", len(found), kind, key, value, describeSpans(spans))
	}
	return found[0]
}

func describeSpans(spans tracetest.SpanStubs) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "\n  %s %q id %s parent %s %v", s.SpanKind, s.Name, s.SpanContext.SpanID(), s.Parent.SpanID(), s.Attributes)
	}
	return b.String()
}

// wantAttrs checks the span's attributes; a value "" wants it absent.
func wantAttrs(t *testing.T, what string, s tracetest.SpanStub, want map[string]string) {
	t.Helper()
	got := attrsOf(s)
	for k, v := range want {
		gv, ok := got[attribute.Key(k)]
		switch {
		case v == "" && ok:
			t.Errorf("%s: attribute %s = %q, want none", what, k, gv.String())
		case v != "" && gv.String() != v:
			t.Errorf("%s: attribute %s = %q, want %q", what, k, gv.String(), v)
		}
	}
}

func wantParent(t *testing.T, what string, child, parent tracetest.SpanStub) {
	t.Helper()
	if child.Parent.SpanID() != parent.SpanContext.SpanID() {
		t.Errorf("%s: parent span %s, want %s", what, child.Parent.SpanID(), parent.SpanContext.SpanID())
	}
}

// parentID is the parent-id field of a traceparent value.
func parentID(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[2]
}

// A call from a through b to c is one trace: a's client span is a child of
// the test's span, b's server span a child of that, b's outbound client span
// a child of b's server span, c's server span a child of that; the context
// travels in lower-case NATS headers, and each app receives the context of
// its instance's server span.
func TestTraceAcrossServices(t *testing.T) {
	t.Parallel()
	tp, exp := newTestTracing(t)
	ch := newChain(t, tp, "a", "b", "c")

	ctx, root := tp.Tracer("test").Start(context.Background(), "test-root")
	resp := ch.call(t, ctx, "/chain?x=1", map[string]string{"tracestate": "vendor=opaque", "baggage": "user=alice"})
	root.End()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, Mesh-Error %q", resp.StatusCode, resp.Header.Get(bus.HeaderError))
	}

	spans := exp.GetSpans()
	if len(spans) != 5 {
		t.Fatalf("%d spans, want 5 (test, a client, b server, b client, c server):%s", len(spans), describeSpans(spans))
	}
	aClient := findSpan(t, spans, trace.SpanKindClient, "server.address", "b")
	bServer := findSpan(t, spans, trace.SpanKindServer, "messaging.destination.name", "mesh.rpc.b.a")
	bClient := findSpan(t, spans, trace.SpanKindClient, "server.address", "c")
	cServer := findSpan(t, spans, trace.SpanKindServer, "messaging.destination.name", "mesh.rpc.c.b")

	traceID := root.SpanContext().TraceID()
	for _, s := range spans {
		if s.SpanContext.TraceID() != traceID {
			t.Errorf("span %s %q is in trace %s, want the test's %s", s.SpanKind, s.Name, s.SpanContext.TraceID(), traceID)
		}
	}
	if aClient.Parent.SpanID() != root.SpanContext().SpanID() {
		t.Errorf("a's client span: parent %s, want the test's span %s", aClient.Parent.SpanID(), root.SpanContext().SpanID())
	}
	wantParent(t, "b's server span", bServer, aClient)
	wantParent(t, "b's client span", bClient, bServer)
	wantParent(t, "c's server span", cServer, bClient)
	if !bServer.Parent.IsRemote() || !cServer.Parent.IsRemote() {
		t.Errorf("server spans' parents are not remote: b %v, c %v", bServer.Parent.IsRemote(), cServer.Parent.IsRemote())
	}

	for _, s := range []tracetest.SpanStub{aClient, bServer, bClient, cServer} {
		if s.Name != http.MethodGet {
			t.Errorf("%s span named %q, want GET", s.SpanKind, s.Name)
		}
		if s.Status.Code == codes.Error {
			t.Errorf("%s span %s has status Error", s.SpanKind, s.SpanContext.SpanID())
		}
	}
	wantAttrs(t, "a's client span", aClient, map[string]string{
		"http.request.method":        "GET",
		"server.address":             "b",
		"url.full":                   "http://b/chain?x=1",
		"messaging.system":           "nats",
		"messaging.destination.name": "mesh.rpc.b.a",
		"http.response.status_code":  "200",
		"error.type":                 "",
	})
	wantAttrs(t, "b's client span", bClient, map[string]string{
		"http.request.method":        "GET",
		"server.address":             "c",
		"url.full":                   "http://c/chain",
		"messaging.system":           "nats",
		"messaging.destination.name": "mesh.rpc.c.b",
		"http.response.status_code":  "200",
	})
	wantAttrs(t, "b's server span", bServer, map[string]string{
		"http.request.method":       "GET",
		"url.path":                  "/chain",
		"messaging.system":          "nats",
		"service.instance.id":       ch.b.Instance(),
		"http.response.status_code": "200",
	})
	wantAttrs(t, "c's server span", cServer, map[string]string{
		"http.request.method":       "GET",
		"messaging.system":          "nats",
		"service.instance.id":       ch.c.Instance(),
		"http.response.status_code": "200",
	})

	// Each app receives the context of its instance's server span, and the
	// test's tracestate and baggage.
	for _, app := range []struct {
		name   string
		seen   http.Header
		server tracetest.SpanStub
	}{
		{"b", ch.bSeen.get("/chain"), bServer},
		{"c", ch.cSeen.get("/chain"), cServer},
	} {
		tparent := app.seen.Get("traceparent")
		if got, want := parentID(tparent), app.server.SpanContext.SpanID().String(); got != want {
			t.Errorf("%s's app received traceparent %q, want parent-id %s (its server span)", app.name, tparent, want)
		}
		if !strings.Contains(tparent, traceID.String()) {
			t.Errorf("%s's app received traceparent %q, not in trace %s", app.name, tparent, traceID)
		}
		if got := app.seen.Get("tracestate"); got != "vendor=opaque" {
			t.Errorf("%s's app received tracestate %q, want vendor=opaque", app.name, got)
		}
		if got := app.seen.Get("baggage"); got != "user=alice" {
			t.Errorf("%s's app received baggage %q, want user=alice", app.name, got)
		}
	}
}

// A failed call's spans say how it failed: the app's 5xx, or the mesh's own
// error code, with status Error.
func TestTraceRecordsFailures(t *testing.T) {
	t.Parallel()
	tp, exp := newTestTracing(t)
	ch := newChain(t, tp, "a", "b", "c")

	resp := ch.call(t, context.Background(), "/fail", nil)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("status %d, want c's 500 passed on by b", resp.StatusCode)
	}
	spans := exp.GetSpans()
	cServer := findSpan(t, spans, trace.SpanKindServer, "messaging.destination.name", "mesh.rpc.c.b")
	aClient := findSpan(t, spans, trace.SpanKindClient, "server.address", "b")
	for _, s := range []tracetest.SpanStub{cServer, aClient} {
		wantAttrs(t, s.SpanKind.String()+" span", s, map[string]string{"http.response.status_code": "500", "error.type": "500"})
		if s.Status.Code != codes.Error {
			t.Errorf("%s span of a 500: status %v, want Error", s.SpanKind, s.Status.Code)
		}
	}
	// With no trace context from the app, the call starts a trace.
	if aClient.Parent.IsValid() {
		t.Errorf("a's client span has parent %s, want a new trace", aClient.Parent.SpanID())
	}

	exp.Reset()
	req, err := http.NewRequest(http.MethodPost, "http://nobody/x", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp, body := doRequest(t, ch.hc, req)
	wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.NoResponders)
	spans = exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans for a call to a missing service, want 1:%s", len(spans), describeSpans(spans))
	}
	s := spans[0]
	wantAttrs(t, "client span of no-responders", s, map[string]string{
		"http.request.method": "POST",
		"server.address":      "nobody",
		"error.type":          string(bus.NoResponders),
		"natsmesh.attempts":   fmt.Sprint(1 + traffic.DefaultRetries),
	})
	if s.Status.Code != codes.Error || s.SpanKind != trace.SpanKindClient {
		t.Errorf("client span of no-responders: kind %s status %v, want client, Error", s.SpanKind, s.Status.Code)
	}
}

// An unsampled trace records no spans, and its context still reaches the
// apps, unsampled.
func TestTraceUnsampledPropagates(t *testing.T) {
	t.Parallel()
	tp, exp := newTestTracing(t)
	ch := newChain(t, tp, "a", "b", "c")
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	resp := ch.call(t, context.Background(), "/quiet", map[string]string{"traceparent": "00-" + traceID + "-00f067aa0ba902b7-00"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if spans := exp.GetSpans(); len(spans) != 0 {
		t.Errorf("%d spans recorded for an unsampled trace:%s", len(spans), describeSpans(spans))
	}
	tparent := ch.cSeen.get("/quiet").Get("traceparent")
	if !strings.HasPrefix(tparent, "00-"+traceID+"-") || !strings.HasSuffix(tparent, "-00") {
		t.Errorf("c's app received traceparent %q, want trace %s, unsampled", tparent, traceID)
	}
}

// With no TracerProvider anywhere, the trace headers an app sends arrive
// unchanged at the callee's app, as any header does; with one only at the
// callee, its server span continues the app's trace.
func TestTraceContextWithoutTracer(t *testing.T) {
	t.Parallel()
	const tparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	extra := map[string]string{"traceparent": tparent, "tracestate": "congo=t61rcWkgMzE", "baggage": "userId=alice"}

	t.Run("no tracer", func(t *testing.T) {
		t.Parallel()
		ch := newChain(t, nil)
		if resp := ch.call(t, context.Background(), "/plain", extra); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		for _, app := range []struct {
			name string
			seen http.Header
		}{{"b", ch.bSeen.get("/plain")}, {"c", ch.cSeen.get("/plain")}} {
			for k, v := range extra {
				if got := app.seen.Get(k); got != v {
					t.Errorf("%s's app received %s %q, want %q unchanged", app.name, k, got, v)
				}
			}
		}
	})
	t.Run("tracer at the callee only", func(t *testing.T) {
		t.Parallel()
		tp, exp := newTestTracing(t)
		ch := newChain(t, tp, "c")
		if resp := ch.call(t, context.Background(), "/mixed", extra); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		spans := exp.GetSpans()
		if len(spans) != 1 {
			t.Fatalf("%d spans, want c's server span only:%s", len(spans), describeSpans(spans))
		}
		cServer := spans[0]
		if cServer.SpanKind != trace.SpanKindServer || cServer.Parent.SpanID().String() != parentID(tparent) {
			t.Errorf("c's span: kind %s parent %s, want a server span under the app's %s", cServer.SpanKind, cServer.Parent.SpanID(), parentID(tparent))
		}
		if got := ch.cSeen.get("/mixed").Get("traceparent"); parentID(got) != cServer.SpanContext.SpanID().String() {
			t.Errorf("c's app received traceparent %q, want its server span %s as parent", got, cServer.SpanContext.SpanID())
		}
	})
}

// In library mode the Transport records the client span and Serve the
// server span; the handler's request carries the server span's context.
func TestTraceLibraryMode(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	tp, exp := newTestTracing(t)
	seen := &headerLog{}
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.put(r.URL.Path, r.Header)
		_, _ = io.WriteString(w, "ok\n")
	}), proxy.ServeConfig{Service: "lib", TracerProvider: tp})
	c := libraryClient(t, s, proxy.TransportConfig{Caller: "client", TracerProvider: tp})

	ctx, root := tp.Tracer("test").Start(context.Background(), "test-root")
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://lib.mesh/items/1", strings.NewReader("v"))
	if err != nil {
		t.Fatal(err)
	}
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	resp, _ := c.do(t, req)
	root.End()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	spans := exp.GetSpans()
	client := findSpan(t, spans, trace.SpanKindClient, "server.address", "lib")
	server := findSpan(t, spans, trace.SpanKindServer, "messaging.destination.name", "mesh.rpc.lib.client")
	if client.Parent.SpanID() != root.SpanContext().SpanID() {
		t.Errorf("client span: parent %s, want the test's span", client.Parent.SpanID())
	}
	wantParent(t, "server span", server, client)
	wantAttrs(t, "client span", client, map[string]string{"http.request.method": "PUT", "url.full": "http://lib/items/1", "http.response.status_code": "200"})
	if got := seen.get("/items/1").Get("traceparent"); parentID(got) != server.SpanContext.SpanID().String() {
		t.Errorf("the handler received traceparent %q, want its server span %s as parent", got, server.SpanContext.SpanID())
	}
}

//go:build unix

package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// collector is an OTLP/HTTP trace receiver: it keeps every span it is sent.
type collector struct {
	mu    sync.Mutex
	spans []*tracepb.Span
	by    map[*tracepb.Span]string // span → service.name of its resource
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rs := range req.ResourceSpans {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.Key == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				c.spans = append(c.spans, sp)
				c.by[sp] = service
			}
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	_, _ = w.Write(b)
}

// find returns the span of service with kind, if one has arrived.
func (c *collector) find(service string, kind tracepb.Span_SpanKind) *tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, sp := range c.spans {
		if c.by[sp] == service && sp.Kind == kind {
			return sp
		}
	}
	return nil
}

// The README's tracing command, as processes: two sidecars export to an OTLP
// endpoint chosen by OTEL_* variables; the caller's client span and the
// callee's server span of one call arrive there in one trace, the server's
// parent being the client, and the client's parent the app's own traceparent.
func TestEndToEndTracingOTLP(t *testing.T) {
	t.Parallel()
	col := &collector{by: map[*tracepb.Span]string{}}
	srv := httptest.NewServer(col)
	t.Cleanup(srv.Close)
	env := []string{
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + srv.URL,
		"OTEL_BSP_SCHEDULE_DELAY=50", // export within milliseconds, not 5 s
	}
	_, natsURL := startServer(t)
	_, appURL := startApp(t, "traced")
	bin := natsmeshBin(t)
	callee := start(t, "sidecar traced-1", env, bin, "sidecar", "--service", "traced", "--instance", "traced-1",
		"--upstream", appURL, "--listen", "127.0.0.1:0", "--nats", natsURL)
	callee.waitOutput(t, sidecarReady, startTimeout)
	caller := start(t, "sidecar front-1", env, bin, "sidecar", "--service", "front", "--instance", "front-1",
		"--upstream", appURL, "--listen", "127.0.0.1:0", "--nats", natsURL)
	outbound := caller.waitOutput(t, sidecarReady, startTimeout)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	const appSpan = "00f067aa0ba902b7"
	c := &http.Client{Timeout: 10 * time.Second}
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		req, _ := http.NewRequest(http.MethodGet, "http://"+outbound+"/work", nil)
		req.Host = "traced"
		req.Header.Set("traceparent", "00-"+traceID+"-"+appSpan+"-01")
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})

	var client, server *tracepb.Span
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		client = col.find("front", tracepb.Span_SPAN_KIND_CLIENT)
		server = col.find("traced", tracepb.Span_SPAN_KIND_SERVER)
		if client == nil || server == nil {
			return fmt.Errorf("the collector has client span %v and server span %v, want both", client != nil, server != nil)
		}
		return nil
	})
	if got := hex.EncodeToString(client.TraceId); got != traceID {
		t.Errorf("client span trace id %s, want the app's %s", got, traceID)
	}
	if got := hex.EncodeToString(client.ParentSpanId); got != appSpan {
		t.Errorf("client span parent %s, want the app's span %s", got, appSpan)
	}
	if !bytes.Equal(server.TraceId, client.TraceId) {
		t.Errorf("server span trace id %x, want the client's %x", server.TraceId, client.TraceId)
	}
	if !bytes.Equal(server.ParentSpanId, client.SpanId) {
		t.Errorf("server span parent %x, want the client span %x", server.ParentSpanId, client.SpanId)
	}
	if client.Name != http.MethodGet || server.Name != http.MethodGet {
		t.Errorf("span names %q and %q, want GET", client.Name, server.Name)
	}
}

package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
)

// BenchmarkSidecarToSidecar measures one call app → caller sidecar → NATS →
// callee sidecar → app, all in this process, through real sockets: as
// configured by default, with retries and breakers off, and with tracing on
// and sampling off.
func BenchmarkSidecarToSidecar(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchSidecars(b, func(*proxy.SidecarConfig) {}) })
	b.Run("plain", func(b *testing.B) {
		benchSidecars(b, func(c *proxy.SidecarConfig) { c.Retry.Retries = -1; c.DisableBreaker = true })
	})
	b.Run("unsampled", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		benchSidecars(b, func(c *proxy.SidecarConfig) { c.TracerProvider = tp })
	})
}

func benchSidecars(b *testing.B, mod func(*proxy.SidecarConfig)) {
	s := meshtest.RunServer(b)
	body := make([]byte, 64)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	}))
	b.Cleanup(app.Close)
	start := func(service string) *proxy.Sidecar {
		cfg := proxy.SidecarConfig{Service: service, Upstream: app.URL, Listen: "127.0.0.1:0"}
		mod(&cfg)
		sc, err := proxy.StartSidecar(meshtest.Connect(b, s), cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = sc.Shutdown(b.Context()) })
		return sc
	}
	start("app")
	caller := start("client")
	pu, _ := url.Parse("http://" + caller.OutboundAddr().String())
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), MaxIdleConnsPerHost: 256}}
	b.ReportAllocs()
	b.SetParallelism(25) // 50 clients on 2 cores, as the benchmark
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get("http://app/")
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

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
	"github.com/natsmesh/natsmesh/sidecar"
)

// BenchmarkSidecarToSidecar measures one call app → caller sidecar → NATS →
// callee sidecar → app, all in this process, through real sockets: as
// configured by default, with no metrics recorded, with retries and breakers off, with tracing on and
// sampling off, and with a config of five routes for the callee, whose last
// route (the one every call takes) splits between two subsets.
func BenchmarkSidecarToSidecar(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchSidecars(b, func(*sidecar.Config) {}) })
	b.Run("routes", func(b *testing.B) {
		cfgs := newMemConfigs()
		cfgs.apply(b, benchRoutes)
		benchSidecars(b, func(c *sidecar.Config) {
			if c.Service == "client" {
				c.Transport.Configs = cfgs
			}
		})
	})
	b.Run("nometrics", func(b *testing.B) {
		benchSidecars(b, func(c *sidecar.Config) { c.StatsInterval = -1 })
	})
	b.Run("plain", func(b *testing.B) {
		benchSidecars(b, func(c *sidecar.Config) { c.Transport.Retry.Retries = -1; c.Transport.DisableBreaker = true })
	})
	b.Run("unsampled", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		benchSidecars(b, func(c *sidecar.Config) { c.TracerProvider = tp })
	})
}

// benchRoutes has five routes; the benchmark's calls match none but the
// last, so every call tries them all. The last splits evenly between the two
// instances, as the queue group spreads the other runs' calls over them, so
// that the runs differ only in how the caller picks the subject.
const benchRoutes = `
service: app
routes:
  - match: {headers: {x-user: jason}}
    split: {v2: 100}
  - match: {pathPrefix: /admin, methods: [POST, PUT]}
    split: {v2: 100}
  - match: {pathPrefix: /api/, headers: {x-canary: "yes"}}
    split: {v1: 50, v2: 50}
  - match: {methods: [DELETE]}
    split: {v1: 100}
  - split: {v1: 50, v2: 50}
`

func benchSidecars(b *testing.B, mod func(*sidecar.Config)) {
	s := meshtest.RunServer(b)
	body := make([]byte, 64)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	}))
	b.Cleanup(app.Close)
	start := func(service, subset string) *sidecar.Sidecar {
		cfg := sidecar.Config{Service: service, Subset: subset, Upstream: app.URL, Listen: "127.0.0.1:0", Logger: testLogger()}
		mod(&cfg)
		sc, err := sidecar.Start(meshtest.Connect(b, s), cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = sc.Shutdown(b.Context()) })
		return sc
	}
	// The callee's instances are in subsets v1 and v2, which only the
	// routes use; the other runs reach them through the service's queue
	// group.
	start("app", "v1")
	start("app", "v2")
	caller := start("client", "")
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

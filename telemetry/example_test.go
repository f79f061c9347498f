package telemetry_test

import (
	"context"
	"log"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/natsmesh/natsmesh/telemetry"
)

// A process sets tracing up from its environment once, in main, installs
// the provider for the libraries that use the global one, and flushes spans
// on the way out.
func Example() {
	ctx := context.Background()
	tr, err := telemetry.Setup(ctx, telemetry.Config{Service: "natsmesh-sidecar", Instance: "sidecar-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tr.Shutdown(ctx); err != nil {
			log.Print(err)
		}
	}()
	log.Printf("tracing: %s", tr.Exporter())
	if tr.Enabled() {
		otel.SetTracerProvider(tr.TracerProvider())
		otel.SetTextMapPropagator(telemetry.Propagator())
	}
}

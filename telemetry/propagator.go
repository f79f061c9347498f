package telemetry

import "go.opentelemetry.io/otel/propagation"

// Propagator carries trace context and baggage across process boundaries,
// in the W3C traceparent, tracestate and baggage headers.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

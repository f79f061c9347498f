package proxy

import (
	"context"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// tracerName names the proxy's spans' instrumentation scope.
const tracerName = "github.com/natsmesh/natsmesh/proxy"

// propagator carries W3C trace context and baggage.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// tracer records the spans of calls, or nothing: a nil *tracer is off, and
// the request path then skips all trace work (the trace headers an app sends
// still travel unchanged, as any header does).
type tracer struct {
	t trace.Tracer
}

func newTracer(tp trace.TracerProvider) *tracer {
	if tp == nil {
		return nil
	}
	return &tracer{t: tp.Tracer(tracerName)}
}

// natsCarrier is a NATS header as a TextMapCarrier; trace keys are
// lower-case, as W3C trace context asks of case-sensitive carriers.
type natsCarrier nats.Header

func (c natsCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c natsCarrier) Set(key, value string) { c[strings.ToLower(key)] = []string{value} }

func (c natsCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

var (
	messagingNATS = semconv.MessagingSystemKey.String("nats")
	clientKind    = trace.WithSpanKind(trace.SpanKindClient)
	serverKind    = trace.WithSpanKind(trace.SpanKindServer)
)

// startClient starts the client span of a call: its parent is the trace
// context of the app's request (a new trace if it has none), and the span's
// context goes into the request message.
func (tr *tracer) startClient(ctx context.Context, service, subject, method, uri string, hdr http.Header, msg nats.Header) trace.Span {
	if hdr["Traceparent"] != nil || hdr["Baggage"] != nil {
		ctx = propagator.Extract(ctx, propagation.HeaderCarrier(hdr))
	}
	ctx, span := tr.t.Start(ctx, method, clientKind)
	// Attributes are set only on spans that are recorded: an unsampled
	// call pays for no attribute building.
	if span.IsRecording() {
		span.SetAttributes(
			semconv.HTTPRequestMethodKey.String(method),
			semconv.ServerAddress(service),
			semconv.URLFull("http://"+service+uri),
			messagingNATS,
			semconv.MessagingDestinationName(subject),
			semconv.MessagingOperationTypeSend,
		)
	}
	propagator.Inject(ctx, natsCarrier(msg))
	return span
}

// endClient ends a call's client span with how the call went.
func endClient(span trace.Span, r *reply, e *bus.Error) {
	if !span.IsRecording() {
		span.End()
		return
	}
	span.SetAttributes(attribute.Int("natsmesh.attempts", r.attempts))
	if r.attempts > 1 {
		span.SetAttributes(semconv.HTTPRequestResendCount(r.attempts - 1))
	}
	o := traffic.Outcome{}
	if e != nil || r.m != nil {
		o = outcomeOf(r.m, e)
	}
	endSpan(span, o)
}

// startServer starts the server span of a request an instance received: its
// parent is the trace context in the message, and the span's context replaces
// it in the message, so that the request to the app carries it.
func (tr *tracer) startServer(m *nats.Msg, instance, method, uri string) trace.Span {
	ctx := propagator.Extract(context.Background(), natsCarrier(m.Header))
	ctx, span := tr.t.Start(ctx, method, serverKind)
	if span.IsRecording() {
		path := uri
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
		span.SetAttributes(
			semconv.HTTPRequestMethodKey.String(method),
			semconv.URLPath(path),
			messagingNATS,
			semconv.MessagingDestinationName(m.Subject),
			semconv.ServiceInstanceID(instance),
		)
	}
	propagator.Inject(ctx, natsCarrier(m.Header))
	return span
}

// endSpan records the outcome of a call on its span.
func endSpan(span trace.Span, o traffic.Outcome) {
	if !span.IsRecording() {
		span.End()
		return
	}
	if o.Status != 0 {
		span.SetAttributes(semconv.HTTPResponseStatusCode(o.Status))
	}
	switch {
	case o.Code != "":
		span.SetAttributes(semconv.ErrorTypeKey.String(string(o.Code)), attribute.String("natsmesh.error", string(o.Code)))
		span.SetStatus(codes.Error, string(o.Code))
	case o.Status >= 500:
		span.SetAttributes(semconv.ErrorTypeKey.String(bus.StatusCode(o.Status)))
		span.SetStatus(codes.Error, "")
	}
	span.End()
}

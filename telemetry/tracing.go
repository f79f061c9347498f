package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config says what a process is; the environment says where its spans go.
// The zero value is usable: the service is then "unknown_service:<executable>".
type Config struct {
	// Service is the default service.name, such as "natsmesh-sidecar".
	// OTEL_SERVICE_NAME and a service.name in OTEL_RESOURCE_ATTRIBUTES
	// override it.
	Service string
	// Instance is service.instance.id; empty leaves it out.
	Instance string
	// Stderr is where the "console" exporter writes; nil means os.Stdout,
	// as the specification says.
	Stderr io.Writer
	// Getenv reads the variables Setup interprets itself (see the package
	// documentation); nil means os.Getenv. The SDK and the OTLP exporters
	// always read theirs from the process environment.
	Getenv func(string) string
}

// Tracing is a process's tracer provider, and what stops it.
type Tracing struct {
	provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider // nil when tracing is off
	exporter string
}

// Setup builds the tracer provider the environment asks for. With no
// exporter it returns a disabled Tracing and no error. It changes no global
// state; the caller may install the provider with otel.SetTracerProvider.
func Setup(ctx context.Context, cfg Config) (*Tracing, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	names, err := exporters(getenv)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return &Tracing{provider: noop.NewTracerProvider(), exporter: exporterNone}, nil
	}
	res, err := newResource(ctx, cfg, getenv)
	if err != nil {
		return nil, err
	}
	console := cfg.Stderr
	if console == nil {
		console = os.Stdout
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	var made []sdktrace.SpanExporter
	for _, name := range names {
		exp, err := newExporter(ctx, name, console)
		if err != nil {
			for _, e := range made {
				err = errors.Join(err, e.Shutdown(ctx))
			}
			return nil, err
		}
		made = append(made, exp)
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	return &Tracing{provider: tp, sdk: tp, exporter: strings.Join(names, ",")}, nil
}

// TracerProvider returns the provider to take tracers from: a no-op one
// when tracing is off.
func (t *Tracing) TracerProvider() trace.TracerProvider { return t.provider }

// Enabled reports whether spans go anywhere. When it is false, callers can
// skip all span work on their fast path.
func (t *Tracing) Enabled() bool { return t.sdk != nil }

// Exporter names where spans go, for a one-line log: "none", "console",
// "otlp/grpc", "otlp/http" (protobuf) or "otlp/http/json", or several of
// these joined by commas.
func (t *Tracing) Exporter() string { return t.exporter }

// Shutdown exports the spans still queued, then stops the exporters; ctx
// bounds how long that may take. It does nothing when tracing is off, or
// when called again.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.sdk == nil {
		return nil
	}
	if err := t.sdk.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	return nil
}

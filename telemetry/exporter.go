package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// newExporter builds one exporter by its Tracing.Exporter name. The OTLP
// exporters configure themselves from the OTEL_EXPORTER_OTLP_* variables and
// connect lazily, on the first export. The OTLP/HTTP encoding is passed
// explicitly, since the exporter would otherwise take it from the process
// environment rather than from Config.Getenv.
func newExporter(ctx context.Context, name string, console io.Writer) (sdktrace.SpanExporter, error) {
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch name {
	case exporterConsole:
		exp, err = stdouttrace.New(stdouttrace.WithWriter(console))
	case exporterOTLPHTTP:
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEncoding(otlptracehttp.EncodingProtobuf))
	case exporterOTLPJSON:
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEncoding(otlptracehttp.EncodingJSON))
	case exporterOTLPGRPC:
		exp, err = otlptracegrpc.New(ctx)
	default:
		err = errors.New("unknown exporter")
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry: %s exporter: %w", name, err)
	}
	return exp, nil
}

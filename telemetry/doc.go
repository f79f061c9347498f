// Package telemetry sets up OpenTelemetry tracing for the natsmesh processes
// (sidecar, server, gateway) from the standard OTEL_* environment variables.
//
// Tracing is off unless the environment asks for an exporter. The
// OpenTelemetry specification makes "otlp" the default for
// OTEL_TRACES_EXPORTER; natsmesh deliberately defaults to "none", so that a
// process started without configuration does not try to reach a collector
// that is not there, and its request path does no span work at all
// (Tracing.Enabled reports false and TracerProvider is a no-op).
//
// Variables read by Setup, through Config.Getenv:
//
//   - OTEL_SDK_DISABLED: "true" (any case) turns tracing off, whatever else
//     is set; "false" or empty leaves it to OTEL_TRACES_EXPORTER. Any other
//     value is an error, rather than the silent "false" the specification
//     asks for, so that a typo such as "1" does not go unnoticed.
//   - OTEL_TRACES_EXPORTER: unset, empty or "none" turns tracing off;
//     "otlp" exports over OTLP; "console" writes one JSON object per span to
//     Config.Stderr (os.Stdout when nil). A comma-separated list, such as
//     "otlp,console", uses each exporter; "none" must stand alone. Values are
//     case-insensitive; anything else is an error.
//   - OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL:
//     "http/protobuf" (the default), "grpc" or "http/json"; anything else
//     is an error.
//   - OTEL_SERVICE_NAME: service.name, overriding Config.Service and any
//     service.name in OTEL_RESOURCE_ATTRIBUTES.
//   - OTEL_RESOURCE_ATTRIBUTES: comma-separated key=value pairs with
//     percent-encoded values, added to the resource; they override
//     Config.Service and Config.Instance. A malformed value is an error.
//
// Variables read from the process environment by the OpenTelemetry SDK and
// exporters themselves, when tracing is on:
//
//   - OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
//     OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT,
//     OTEL_EXPORTER_OTLP_COMPRESSION, OTEL_EXPORTER_OTLP_INSECURE,
//     OTEL_EXPORTER_OTLP_CERTIFICATE and their _TRACES_ forms, for OTLP;
//   - OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default
//     parentbased_always_on);
//   - OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_EXPORT_TIMEOUT,
//     OTEL_BSP_MAX_QUEUE_SIZE and OTEL_BSP_MAX_EXPORT_BATCH_SIZE, for the
//     batch span processor;
//   - OTEL_SPAN_*_LIMIT, for span limits.
//
// OTEL_PROPAGATORS is not read: Propagator is always W3C tracecontext plus
// baggage.
//
// The resource carries service.name (Config.Service, or
// "unknown_service:<executable>" when that is empty), service.instance.id
// (Config.Instance, when set), service.version (the main module's version,
// when the binary was built with one) and the telemetry.sdk.* attributes.
//
// Setup sets no global state: the caller decides whether to install the
// provider and propagator with otel.SetTracerProvider and
// otel.SetTextMapPropagator.
package telemetry

package telemetry

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

const wantResource = "want comma-separated key=value pairs with percent-encoded values"

// newResource describes this process. Later sources win: the SDK's
// telemetry.sdk.* attributes, then Config, then OTEL_RESOURCE_ATTRIBUTES,
// then OTEL_SERVICE_NAME. The environment is read through getenv only, not
// through resource.Default, which reads the process environment once and
// caches it.
func newResource(ctx context.Context, cfg Config, getenv func(string) string) (*resource.Resource, error) {
	attrs := []attribute.KeyValue{semconv.ServiceName(serviceName(cfg.Service))}
	if cfg.Instance != "" {
		attrs = append(attrs, semconv.ServiceInstanceID(cfg.Instance))
	}
	if v := mainVersion(); v != "" {
		attrs = append(attrs, semconv.ServiceVersion(v))
	}
	fromEnv, err := envResourceAttrs(getenv)
	if err != nil {
		return nil, err
	}
	if name := strings.TrimSpace(getenv(envServiceName)); name != "" {
		fromEnv = append(fromEnv, semconv.ServiceName(name))
	}
	// Attributes given later to resource.New replace earlier ones.
	attrs = append(attrs, fromEnv...)
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attrs...),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return res, nil
}

// serviceName returns name, or the specification's fallback for a service
// without one.
func serviceName(name string) string {
	if name != "" {
		return name
	}
	exe, err := os.Executable()
	if err != nil {
		return "unknown_service:go"
	}
	return "unknown_service:" + filepath.Base(exe)
}

// mainVersion is the main module's version, or "" for a development build.
func mainVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok || info.Main.Version == "(devel)" {
		return ""
	}
	return info.Main.Version
}

// envResourceAttrs parses OTEL_RESOURCE_ATTRIBUTES. As the specification
// asks, a value with any malformed pair is rejected whole.
func envResourceAttrs(getenv func(string) string) ([]attribute.KeyValue, error) {
	raw := getenv(envResourceAttributes)
	if strings.TrimSpace(raw) == "" {
		return nil, nil
	}
	var attrs []attribute.KeyValue
	for pair := range strings.SplitSeq(raw, ",") {
		k, v, ok := strings.Cut(pair, "=")
		key := strings.TrimSpace(k)
		if !ok || key == "" {
			return nil, &EnvError{Name: envResourceAttributes, Value: raw, Want: wantResource}
		}
		val, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, &EnvError{Name: envResourceAttributes, Value: raw, Want: wantResource}
		}
		attrs = append(attrs, attribute.String(key, val))
	}
	return attrs, nil
}

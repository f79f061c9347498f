package telemetry

import (
	"slices"
	"strings"
)

// Names of the variables Setup reads through Config.Getenv.
const (
	envSDKDisabled        = "OTEL_SDK_DISABLED"
	envTracesExporter     = "OTEL_TRACES_EXPORTER"
	envOTLPTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	envOTLPProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envServiceName        = "OTEL_SERVICE_NAME"
	envResourceAttributes = "OTEL_RESOURCE_ATTRIBUTES"
)

// Exporter names, as Tracing.Exporter reports them.
const (
	exporterNone     = "none"
	exporterConsole  = "console"
	exporterOTLPGRPC = "otlp/grpc"
	exporterOTLPHTTP = "otlp/http"
	exporterOTLPJSON = "otlp/http/json"
)

const (
	wantExporter = `accepted values are "none", "otlp", "console", or a comma-separated list of "otlp" and "console"`
	wantProtocol = `accepted values are "http/protobuf", "grpc" and "http/json"`
	wantBool     = `accepted values are "true", "false" and empty`
)

// exporters returns the exporters the environment asks for, in the order
// listed and without repeats; none means tracing is off.
func exporters(getenv func(string) string) ([]string, error) {
	disabled, err := sdkDisabled(getenv)
	if err != nil || disabled {
		return nil, err
	}
	raw := getenv(envTracesExporter)
	list := strings.ToLower(strings.TrimSpace(raw))
	if list == "" || list == "none" {
		return nil, nil
	}
	var out []string
	for item := range strings.SplitSeq(list, ",") {
		var name string
		switch strings.TrimSpace(item) {
		case "console":
			name = exporterConsole
		case "otlp":
			name, err = otlpProtocol(getenv)
			if err != nil {
				return nil, err
			}
		default:
			return nil, &EnvError{Name: envTracesExporter, Value: raw, Want: wantExporter}
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// sdkDisabled reads OTEL_SDK_DISABLED.
func sdkDisabled(getenv func(string) string) (bool, error) {
	raw := getenv(envSDKDisabled)
	switch strings.ToLower(strings.TrimSpace(raw)) {
	case "true":
		return true, nil
	case "false", "":
		return false, nil
	}
	return false, &EnvError{Name: envSDKDisabled, Value: raw, Want: wantBool}
}

// otlpProtocol picks the OTLP exporter from the traces protocol variable,
// else the general one, else the specification's default, http/protobuf.
func otlpProtocol(getenv func(string) string) (string, error) {
	name := envOTLPTracesProtocol
	raw := getenv(name)
	if strings.TrimSpace(raw) == "" {
		name = envOTLPProtocol
		raw = getenv(name)
	}
	switch strings.ToLower(strings.TrimSpace(raw)) {
	case "http/protobuf", "":
		return exporterOTLPHTTP, nil
	case "grpc":
		return exporterOTLPGRPC, nil
	case "http/json":
		return exporterOTLPJSON, nil
	}
	return "", &EnvError{Name: name, Value: raw, Want: wantProtocol}
}

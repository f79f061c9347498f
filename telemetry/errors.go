package telemetry

import "fmt"

// EnvError reports an environment variable whose value Setup does not
// accept. Its message is one sentence naming the variable, the value and
// what would be accepted.
type EnvError struct {
	Name  string // the variable, such as "OTEL_TRACES_EXPORTER"
	Value string // its whole value, as read
	Want  string // what it accepts, in words
}

func (e *EnvError) Error() string {
	return fmt.Sprintf("telemetry: %s=%q is not supported; %s", e.Name, e.Value, e.Want)
}

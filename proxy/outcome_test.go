package proxy

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
)

// reply messages as a callee sends them.
func appReply(status int) *nats.Msg {
	return &nats.Msg{Header: nats.Header{bus.HeaderStatus: {bus.StatusCode(status)}}}
}

func meshReply(code bus.Code) *nats.Msg {
	h, _ := bus.ErrorResponse(bus.Errorf(code, "x"), "inst-1")
	return &nats.Msg{Header: h}
}

// Which attempts are retried, for idempotent and other requests, and what
// each tells the breaker: the rules of DESIGN.md's "Retry safety" and of
// the breaker's failure counting.
func TestOutcomeRules(t *testing.T) {
	t.Parallel()
	type want struct {
		retryIdem, retryOther bool
		result                breaker.Result
	}
	tests := []struct {
		name string
		m    *nats.Msg
		merr *bus.Error
		want want
	}{
		{"200", appReply(200), nil, want{false, false, breaker.Success}},
		{"204", appReply(204), nil, want{false, false, breaker.Success}},
		{"404", appReply(404), nil, want{false, false, breaker.Success}},
		{"429", appReply(429), nil, want{false, false, breaker.Success}},
		{"500", appReply(500), nil, want{false, false, breaker.Failure}},
		{"501", appReply(501), nil, want{false, false, breaker.Failure}},
		{"502", appReply(502), nil, want{true, false, breaker.Failure}},
		{"503", appReply(503), nil, want{true, false, breaker.Failure}},
		{"504", appReply(504), nil, want{true, false, breaker.Failure}},
		{"reply without status", &nats.Msg{Header: nats.Header{}}, nil, want{false, false, breaker.Failure}},
		// Failures the caller makes itself.
		{"no-responders", nil, bus.Errorf(bus.NoResponders, "x"), want{true, true, breaker.Ignore}},
		{"mesh-unavailable", nil, bus.Errorf(bus.MeshUnavailable, "x"), want{true, true, breaker.Ignore}},
		{"timeout", nil, bus.Errorf(bus.Timeout, "x"), want{true, false, breaker.Failure}},
		{"upstream-lost", nil, bus.Errorf(bus.UpstreamLost, "x"), want{true, false, breaker.Ignore}},
		{"too-large request", nil, bus.Errorf(bus.TooLarge, "x"), want{false, false, breaker.Ignore}},
		{"bad-request", nil, bus.Errorf(bus.BadRequest, "x"), want{false, false, breaker.Ignore}},
		// Failures a callee answers with Mesh-Error.
		{"callee overloaded", meshReply(bus.Overloaded), nil, want{true, true, breaker.Failure}},
		{"callee upstream-unreachable", meshReply(bus.UpstreamUnreachable), nil, want{true, false, breaker.Failure}},
		{"callee timeout", meshReply(bus.Timeout), nil, want{true, false, breaker.Failure}},
		{"callee upstream-lost", meshReply(bus.UpstreamLost), nil, want{true, false, breaker.Failure}},
		{"callee bad-request", meshReply(bus.BadRequest), nil, want{false, false, breaker.Ignore}},
		{"callee too-large response", meshReply(bus.TooLarge), nil, want{false, false, breaker.Ignore}},
	}
	for _, tc := range tests {
		o := outcomeOf(tc.m, tc.merr)
		if got := o.Retryable(true); got != tc.want.retryIdem {
			t.Errorf("%s (%s): retryable for an idempotent request = %v, want %v", tc.name, o, got, tc.want.retryIdem)
		}
		if got := o.Retryable(false); got != tc.want.retryOther {
			t.Errorf("%s (%s): retryable for a POST = %v, want %v", tc.name, o, got, tc.want.retryOther)
		}
		if got := o.Result(); got != tc.want.result {
			t.Errorf("%s (%s): breaker result %v, want %v", tc.name, o, got, tc.want.result)
		}
	}
}

// What outlier detection counts as the app failing a request.
func TestAppFailed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		code   bus.Code
		want   bool
	}{
		{200, "", false},
		{404, "", false},
		{429, "", false},
		{500, "", true},
		{503, "", true},
		{0, bus.UpstreamUnreachable, true},
		{0, bus.Timeout, true},
		{0, bus.UpstreamLost, true},
		{0, bus.Overloaded, false},
		{0, bus.BadRequest, false},
		{0, bus.TooLarge, false},
	}
	for _, tc := range tests {
		var e *bus.Error
		if tc.code != "" {
			e = bus.Errorf(tc.code, "x")
		}
		if got := appFailed(tc.status, e); got != tc.want {
			t.Errorf("appFailed(%d, %v) = %v, want %v", tc.status, tc.code, got, tc.want)
		}
	}
}

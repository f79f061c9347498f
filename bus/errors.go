package bus

import (
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go"
)

// Code is a Mesh-Error code: a failure made by the mesh itself, as opposed to
// an HTTP status chosen by an app.
type Code string

// The mesh's failure codes (docs/architecture.md has the table).
const (
	NoResponders        Code = "no-responders"
	Timeout             Code = "timeout"
	CircuitOpen         Code = "circuit-open"
	Overloaded          Code = "overloaded"
	UpstreamUnreachable Code = "upstream-unreachable"
	TooLarge            Code = "too-large"
	MeshUnavailable     Code = "mesh-unavailable"
	UpstreamLost        Code = "upstream-lost"
	BadRequest          Code = "bad-request"
	Forbidden           Code = "forbidden"
	NotSupported        Code = "not-supported"
	// NoRoute: a gateway has no route for the request's host and path.
	NoRoute Code = "no-route"
	// SlowRequest: the client sent the request body too slowly.
	SlowRequest Code = "slow-request"
)

// Failure is what a code proves about the request it failed, and how the
// mesh treats it: the one table that the retry rules, the breakers, outlier
// ejection, metrics and config validation read.
type Failure struct {
	// Status is the HTTP status the code is answered with. too-large is 413
	// for a request body; a response that is too large is reported as 502
	// by the caller.
	Status int
	// Unsent: the request never reached an app, so any method may be
	// retried (no-responders, overloaded, mesh-unavailable).
	Unsent bool
	// MaybeSent: the request may have reached an app, so only an idempotent
	// one may be retried (timeout, upstream-lost, upstream-unreachable).
	MaybeSent bool
	// Breaker: the failure counts against the destination in the caller's
	// circuit breaker.
	Breaker bool
	// Outlier: the callee's app failed the request, as outlier ejection
	// counts it.
	Outlier bool
}

// Codes are the mesh's failure codes, in the order of the table: first those
// that prove the request reached no app, then those that may have reached
// one.
var Codes = [...]Code{
	NoResponders, Overloaded, MeshUnavailable, Timeout, UpstreamLost, UpstreamUnreachable,
	CircuitOpen, TooLarge, BadRequest, Forbidden, NotSupported, NoRoute, SlowRequest,
}

// failures is the table of the mesh's codes (docs/architecture.md has it
// too).
var failures = map[Code]Failure{
	NoResponders:        {Status: http.StatusServiceUnavailable, Unsent: true},
	Timeout:             {Status: http.StatusGatewayTimeout, MaybeSent: true, Breaker: true, Outlier: true},
	CircuitOpen:         {Status: http.StatusServiceUnavailable},
	Overloaded:          {Status: http.StatusServiceUnavailable, Unsent: true, Breaker: true},
	UpstreamUnreachable: {Status: http.StatusBadGateway, MaybeSent: true, Breaker: true, Outlier: true},
	TooLarge:            {Status: http.StatusRequestEntityTooLarge},
	MeshUnavailable:     {Status: http.StatusServiceUnavailable, Unsent: true},
	UpstreamLost:        {Status: http.StatusBadGateway, MaybeSent: true, Breaker: true, Outlier: true},
	BadRequest:          {Status: http.StatusBadRequest},
	Forbidden:           {Status: http.StatusForbidden},
	NotSupported:        {Status: http.StatusNotImplemented},
	NoRoute:             {Status: http.StatusNotFound},
	SlowRequest:         {Status: http.StatusRequestTimeout},
}

// Failure is the code's row of the table; a code the table does not know
// (a newer peer's) is a 502 that proves nothing.
func (c Code) Failure() Failure {
	if f, ok := failures[c]; ok {
		return f
	}
	return Failure{Status: http.StatusBadGateway}
}

// Status is the HTTP status a code is answered with.
func (c Code) Status() int { return c.Failure().Status }

// Error is a failure made by the mesh: a code, the HTTP status it is answered
// with and one sentence for the human reading it.
type Error struct {
	Code    Code
	Status  int
	Message string
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Errorf makes an Error with the code's usual status.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Status: code.Status(), Message: fmt.Sprintf(format, args...)}
}

// ErrorResponse encodes e as a response message header and body.
func ErrorResponse(e *Error, instance string) (nats.Header, []byte) {
	h := nats.Header{
		HeaderStatus:   {StatusCode(e.Status)},
		HeaderError:    {string(e.Code)},
		"Content-Type": {"text/plain; charset=utf-8"},
	}
	if instance != "" {
		h[HeaderInstance] = []string{instance}
	}
	if e.Code == Overloaded {
		h["Retry-After"] = []string{"1"}
	}
	return h, []byte(e.Message + "\n")
}

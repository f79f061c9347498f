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
)

// Status is the HTTP status a code is answered with. too-large is 413 for a
// request body; a response that is too large is reported as 502 by the caller.
func (c Code) Status() int {
	switch c {
	case NoResponders, CircuitOpen, Overloaded, MeshUnavailable:
		return http.StatusServiceUnavailable
	case Timeout:
		return http.StatusGatewayTimeout
	case UpstreamUnreachable, UpstreamLost:
		return http.StatusBadGateway
	case TooLarge:
		return http.StatusRequestEntityTooLarge
	case BadRequest:
		return http.StatusBadRequest
	case Forbidden:
		return http.StatusForbidden
	case NotSupported:
		return http.StatusNotImplemented
	}
	return http.StatusBadGateway
}

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
		HeaderStatus:   {StatusText(e.Status)},
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

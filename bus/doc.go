// Package bus is natsmesh's layer over NATS: connecting
// to a server or cluster, the subject namespace with its name validation, and the
// codec that carries an HTTP request or response in one NATS message.
//
// Everything above this package speaks in services, instances and HTTP; only bus
// knows how those map onto subjects and NATS headers.
package bus

// Package identity holds a mesh's trust roots and issues the credentials its
// processes connect with, using NATS's own decentralized auth: an operator
// signs the mesh's accounts, an account signs its users, and a NATS server
// that trusts the operator accepts only the users its accounts signed.
//
// An Authority keeps three nkeys in a directory (mode 0700, files 0600): the
// operator, the system account and the mesh account. It gives the server
// what it must trust (Trust: the operator's JWT and the accounts' JWTs, for
// a memory resolver) and issues NATS credentials files (a user JWT and its
// seed) with the publish and subscribe permissions of what the user may do.
//
// It never dials and never imports nats-server; the embedded server
// (bus/embedded) takes its Trust.
package identity

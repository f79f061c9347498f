// Package registry is the mesh's service discovery: instances announce
// themselves with heartbeats on NATS subjects (Announcer), and any process
// can hold a View, the live set of services and instances built from those
// heartbeats, which emits up, down and changed events to its watchers.
//
// Nothing is stored centrally that heartbeats cannot rebuild: a View started
// at any time is complete after one heartbeat interval.
package registry

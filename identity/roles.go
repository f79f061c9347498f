package identity

import (
	"fmt"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/registry"
)

// Role is what an identity is for; it decides its permission set.
type Role string

const (
	// Admin may do everything: the CLI of whoever runs the mesh.
	Admin Role = "admin"
	// Registry is a `natsmesh server` on a NATS it does not embed: it
	// keeps the registry and the stats summary, and reads the config.
	Registry Role = "registry"
	// Service is one service's sidecars, gateway or library programs.
	Service Role = "service"
)

// RegistryInbox is the inbox name of registry identities. Names starting
// with '_' are no valid service names, so no service can take it.
const RegistryInbox = "_registry"

// PermissionsFor is the permission set of role on the mesh whose subjects
// start with prefix ("" is bus.DefaultPrefix); service names the service of
// a Service identity.
func PermissionsFor(role Role, prefix, service string) (Permissions, error) {
	subj, err := bus.NewSubjects(prefix)
	if err != nil {
		return Permissions{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	switch role {
	case Admin:
		return All, nil
	case Registry:
		return registryPermissions(subj)
	case Service:
		if err := bus.ValidateName("service", service); err != nil {
			return Permissions{}, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		return servicePermissions(subj, service)
	}
	return Permissions{}, fmt.Errorf("%w: role %q: use admin, registry or service", ErrInvalid, role)
}

// servicePermissions: calls only as the service, its own queue groups and
// instance subjects, its own heartbeats, goodbyes and stats, its own
// inbox, reading (never writing) the config bucket, asking the registry.
func servicePermissions(subj bus.Subjects, service string) (Permissions, error) {
	p := subj.Prefix
	cfg, err := configStream(p)
	if err != nil {
		return Permissions{}, err
	}
	pub := []string{
		p + ".rpc.*." + service, p + ".rpc.*.*." + service, p + ".inst.*.*." + service,
		subj.Inboxes(), // answers to the callers' inboxes
		subj.Heartbeats(service), subj.Byes(service), p + ".stats." + service + ".*",
		subj.RegistryList(), subj.RegistryGetAll(), subj.RegistrySnapshot(),
	}
	sub := []string{
		subj.Calls(service) + " " + subj.QueueGroup(service),
		p + ".rpc." + service + ".*.* " + service + ".*",
		p + ".inst." + service + ".*.*",
		subj.Inbox(service) + ".>",
		subj.Heartbeats(""), subj.Byes(""), subj.AllEvents(), subj.RegistryLeader(),
		"$SRV.PING", "$SRV.INFO", "$SRV.STATS",
		"$SRV.*." + service, "$SRV.*." + service + ".*",
	}
	return Permissions{Publish: append(pub, readStream(cfg)...), Subscribe: sub, Responses: true}, nil
}

// registryPermissions: every heartbeat, goodbye and stats snapshot in; the
// events, the registry's answers and the stats summary out; the lease
// bucket; reading the config bucket.
func registryPermissions(subj bus.Subjects) (Permissions, error) {
	p := subj.Prefix
	cfg, err := configStream(p)
	if err != nil {
		return Permissions{}, err
	}
	lease := "KV_" + registry.LeaseBucket
	pub := []string{
		subj.AllEvents(), subj.RegistryLeader(), subj.Inboxes(),
		subj.StatsSummary(), // asking the other servers, as a new one does
		"$JS.API.INFO",      // the account's JetStream, when the lease starts
		"$KV." + registry.LeaseBucket + "." + registry.LeaseKey(p),
		"$JS.API.STREAM.CREATE." + lease,
	}
	pub = append(pub, readStream(lease)...)
	pub = append(pub, readStream(cfg)...)
	sub := []string{
		subj.Heartbeats(""), subj.Byes(""), subj.AllStats(), subj.StatsSummary(),
		subj.RegistryList(), subj.RegistryGetAll(), subj.RegistrySnapshot(),
		subj.AllEvents(), subj.RegistryLeader(),
		subj.Inbox(RegistryInbox) + ".>",
	}
	return Permissions{Publish: pub, Subscribe: sub, Responses: true}, nil
}

// configStream is the stream of the mesh's config bucket.
func configStream(prefix string) (string, error) {
	b, err := config.Bucket(prefix)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return "KV_" + b, nil
}

// readStream is what reading a KV bucket's stream takes: its info, direct
// and stored message gets, and the ordered consumers of watches with their
// flow control; no put, purge, delete or stream change.
func readStream(stream string) []string {
	api := "$JS.API."
	return []string{
		api + "STREAM.INFO." + stream,
		api + "STREAM.MSG.GET." + stream,
		api + "DIRECT.GET." + stream, api + "DIRECT.GET." + stream + ".>",
		api + "CONSUMER.CREATE." + stream, api + "CONSUMER.CREATE." + stream + ".>",
		api + "CONSUMER.INFO." + stream + ".*", api + "CONSUMER.DELETE." + stream + ".*",
		"$JS.FC." + stream + ".>",
	}
}

package bus

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// MaxNameLen is the longest service, subset or instance name.
const MaxNameLen = 63

// DefaultPrefix is the first token of every mesh subject.
const DefaultPrefix = "mesh"

// ErrInvalidName matches every name validation error (errors.Is).
var ErrInvalidName = errors.New("bus: invalid name")

// nameError is a name validation error: a sentence for the user, which
// errors.Is matches to ErrInvalidName.
type nameError struct{ msg string }

func (e *nameError) Error() string        { return e.msg }
func (e *nameError) Is(target error) bool { return target == ErrInvalidName }

func invalidName(format string, args ...any) error {
	return &nameError{msg: fmt.Sprintf(format, args...)}
}

// ValidateName reports whether s can be used as a service, subset or instance
// name: 1–63 characters, each a lowercase ASCII letter, a digit, '-' or '_'.
// Such a name is exactly one subject token, so it can never contain a wildcard
// or a separator that would widen a subscription.
func ValidateName(kind, s string) error {
	if s == "" {
		return invalidName("%s name is empty; use 1-%d lowercase letters, digits, '-' or '_'", kind, MaxNameLen)
	}
	if len(s) > MaxNameLen {
		return invalidName("%s name %.20q... is %d characters long; the limit is %d", kind, s, len(s), MaxNameLen)
	}
	if s == NoCaller {
		return invalidName("%s name %q is reserved for unnamed callers; choose another", kind, s)
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return invalidName("%s name %q has %q at position %d; use only lowercase letters, digits, '-' or '_'", kind, s, s[i], i+1)
		}
	}
	return nil
}

// isName reports whether ValidateName accepts s, without making an error:
// the request path asks it of every call's caller token.
func isName(s string) bool {
	if s == "" || len(s) > MaxNameLen || s == NoCaller {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return false
		}
	}
	return true
}

func nameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// ValidatePrefix checks a subject prefix: one or more name tokens joined by
// dots, such as "mesh" or "prod.mesh".
func ValidatePrefix(p string) error {
	if p == "" {
		return invalidName("subject prefix is empty; use tokens of lowercase letters, digits, '-' or '_' joined by '.'")
	}
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '.' {
			if err := ValidateName("prefix token", p[start:i]); err != nil {
				return invalidName("subject prefix %q: %v", p, err)
			}
			start = i + 1
		}
	}
	return nil
}

// NoCaller is the caller token of calls from an unnamed caller. It is not a
// valid name, so no service can be mistaken for it.
const NoCaller = "_"

// Subjects builds the subjects of one mesh namespace. The zero value uses
// DefaultPrefix. Methods take names that the caller has validated with
// ValidateName; they never validate again, to keep the request path cheap.
//
// A call subject ends with the calling service's name (Caller, or NoCaller),
// so the callee learns who called from what NATS delivered, and an identity
// whose publish permissions allow only subjects ending with its own name
// cannot call as another.
type Subjects struct {
	Prefix string
	// Caller is the service calls made with these subjects come from; ""
	// is an unnamed caller.
	Caller string
}

// NewSubjects returns the namespace for prefix ("" means DefaultPrefix).
func NewSubjects(prefix string) (Subjects, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if err := ValidatePrefix(prefix); err != nil {
		return Subjects{}, err
	}
	return Subjects{Prefix: prefix}, nil
}

func (s Subjects) prefix() string {
	if s.Prefix == "" {
		return DefaultPrefix
	}
	return s.Prefix
}

func (s Subjects) caller() string {
	if s.Caller == "" {
		return NoCaller
	}
	return s.Caller
}

// Call is the subject a call to service goes to: every instance of service
// receives Calls(service), in queue group QueueGroup(service).
func (s Subjects) Call(service string) string {
	return s.prefix() + ".rpc." + service + "." + s.caller()
}

// Calls is the subscription of service's instances to its calls.
func (s Subjects) Calls(service string) string { return s.prefix() + ".rpc." + service + ".*" }

// QueueGroup is the queue group of service's instances.
func (s Subjects) QueueGroup(service string) string { return service }

// CallSubset is the subject a call to one subset of service goes to, when a
// route picks the subset: the subset's instances receive SubsetCalls, in
// queue group QueueGroupSubset, besides Calls(service).
func (s Subjects) CallSubset(service, subset string) string {
	return s.prefix() + ".rpc." + service + "." + subset + "." + s.caller()
}

// SubsetCalls is the subscription of the instances of one subset of service
// to the calls routed to it.
func (s Subjects) SubsetCalls(service, subset string) string {
	return s.prefix() + ".rpc." + service + "." + subset + ".*"
}

// QueueGroupSubset is the queue group of the instances of one subset of
// service.
func (s Subjects) QueueGroupSubset(service, subset string) string { return service + "." + subset }

// Inst is the subject a call, probe or request body chunk for one instance
// of service goes to.
func (s Subjects) Inst(service, instance string) string {
	return s.prefix() + ".inst." + service + "." + instance + "." + s.caller()
}

// InstCalls is the subscription of one instance of service to what is sent
// to it alone.
func (s Subjects) InstCalls(service, instance string) string {
	return s.prefix() + ".inst." + service + "." + instance + ".*"
}

// CallerOf is the calling service named by the last token of a call
// subject, or "" for an unnamed caller (or a token that is no valid name).
func CallerOf(subject string) string {
	c := subject[strings.LastIndexByte(subject, '.')+1:]
	if !isName(c) {
		return ""
	}
	return c
}

// Inbox is the inbox prefix of service's connections: replies to its calls
// arrive below it, and its identity may subscribe to nothing else's.
func (s Subjects) Inbox(service string) string {
	if service == "" {
		service = NoCaller
	}
	return s.prefix() + ".inbox." + service
}

// Inboxes matches the inbox of every service.
func (s Subjects) Inboxes() string { return s.prefix() + ".inbox.*.>" }

// Heartbeat is the subject instance of service announces itself on.
func (s Subjects) Heartbeat(service, instance string) string {
	return s.prefix() + ".hb." + service + "." + instance
}

// Bye is the subject instance of service says goodbye on when it leaves.
func (s Subjects) Bye(service, instance string) string {
	return s.prefix() + ".bye." + service + "." + instance
}

// Heartbeats is the wildcard subscription to the heartbeats of service, or
// of every service when service is "".
func (s Subjects) Heartbeats(service string) string {
	if service == "" {
		return s.prefix() + ".hb.*.*"
	}
	return s.prefix() + ".hb." + service + ".*"
}

// Byes is the wildcard subscription to the goodbyes of service, or of every
// service when service is "".
func (s Subjects) Byes(service string) string {
	if service == "" {
		return s.prefix() + ".bye.*.*"
	}
	return s.prefix() + ".bye." + service + ".*"
}

// ParseInstanceSubject splits a heartbeat or bye subject of this namespace
// into its kind ("hb" or "bye"), service and instance. ok is false for any
// other subject, including one whose tokens are not valid names.
func (s Subjects) ParseInstanceSubject(subject string) (kind, service, instance string, ok bool) {
	p := s.prefix()
	if len(subject) <= len(p)+1 || subject[:len(p)] != p || subject[len(p)] != '.' {
		return "", "", "", false
	}
	rest := subject[len(p)+1:]
	kind, rest, _ = strings.Cut(rest, ".")
	service, instance, _ = strings.Cut(rest, ".")
	if (kind != "hb" && kind != "bye") || ValidateName("service", service) != nil || ValidateName("instance", instance) != nil {
		return "", "", "", false
	}
	return kind, service, instance, true
}

// Events is the subject the registry service publishes service's events on.
func (s Subjects) Events(service string) string { return s.prefix() + ".events." + service }

// AllEvents is the wildcard subscription to the events of every service.
func (s Subjects) AllEvents() string { return s.prefix() + ".events.*" }

// RegistryList is the subject the registry service answers the list of
// services on.
func (s Subjects) RegistryList() string { return s.prefix() + ".registry.list" }

// RegistryGet is the subject the registry service answers the instances of
// service on.
func (s Subjects) RegistryGet(service string) string { return s.prefix() + ".registry.get." + service }

// RegistryGetAll is the wildcard the registry service answers RegistryGet on.
func (s Subjects) RegistryGetAll() string { return s.prefix() + ".registry.get.*" }

// RegistryLeader is the subject a registry service announces on when it
// starts answering and publishing for the mesh.
func (s Subjects) RegistryLeader() string { return s.prefix() + ".registry.leader" }

// RegistrySnapshot is the subject the registry service answers the whole
// mesh's instances on.
func (s Subjects) RegistrySnapshot() string { return s.prefix() + ".registry.snapshot" }

// Stats is the subject an instance publishes its stats snapshot on.
func (s Subjects) Stats(service, instance string) string {
	return s.prefix() + ".stats." + service + "." + instance
}

// AllStats is the wildcard subscription to every instance's stats.
func (s Subjects) AllStats() string { return s.prefix() + ".stats.*.*" }

// StatsSummary is the subject `natsmesh server` answers the mesh-wide
// stats on (queue group "stats": one server answers).
func (s Subjects) StatsSummary() string { return s.prefix() + ".stats.summary" }

// NewInstanceID returns "<service>-<12 hex digits>", a valid instance name.
func NewInstanceID(service string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if len(service)+1+len(id) > MaxNameLen {
		service = service[:MaxNameLen-1-len(id)]
	}
	return service + "-" + id
}

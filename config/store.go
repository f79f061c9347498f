package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/bus"
)

// History is how many revisions of each service's document the bucket keeps:
// enough to roll back through a day of changes, and well under JetStream's
// limit of 64. Deletes count as revisions.
const History = 16

// MinHistory is the fewest revisions per service a bucket made by someone
// else may keep before natsmesh server warns about it.
const MinHistory = 10

// Errors of the store and the watcher; each is wrapped with a sentence that
// says what to do, and matches with errors.Is.
var (
	// ErrNoJetStream: the NATS server (or account) has no JetStream.
	ErrNoJetStream = errors.New("config: no JetStream")
	// ErrNoBucket: the mesh's config bucket does not exist.
	ErrNoBucket = errors.New("config: no config bucket")
	// ErrNotFound: the service has no document (never written, or deleted).
	ErrNotFound = errors.New("config: no config for the service")
	// ErrNoRevision: the revision asked for is not one of the service's.
	ErrNoRevision = errors.New("config: no such revision")
	// ErrConflict: the service's document changed between read and write.
	ErrConflict = errors.New("config: changed meanwhile")
)

// kindError is an error of the store: a sentence for the user, which
// errors.Is matches to its sentinel.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

func storeErr(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Bucket is the name of the KV bucket holding the config documents of the
// mesh whose subject prefix is prefix ("" is bus.DefaultPrefix): the prefix
// with its dots turned into '_', then "_config" — mesh_config, or
// prod_mesh_config for prod.mesh. Keys are service names, so a service's
// document lives on the subject $KV.<bucket>.<service>.
func Bucket(prefix string) (string, error) {
	if prefix == "" {
		prefix = bus.DefaultPrefix
	}
	if err := bus.ValidatePrefix(prefix); err != nil {
		return "", err
	}
	return strings.ReplaceAll(prefix, ".", "_") + "_config", nil
}

// Op is what a revision did to a service's document.
type Op string

// Operations.
const (
	OpPut    Op = "put"
	OpDelete Op = "delete"
)

// Entry is one revision of a service's document.
type Entry struct {
	Service  string
	Revision uint64
	Time     time.Time
	Op       Op
	// Doc is the document; nil for a delete, or when the stored bytes are
	// not a valid document (then Invalid says why).
	Doc     *Service
	Invalid error
	// Raw is the document as stored (JSON), nil for a delete.
	Raw []byte
}

// Store reads and writes the config documents of one mesh in its JetStream
// KV bucket. It uses a caller-owned connection and is safe for concurrent
// use. Writes are compare-and-set on the revision of the service's key, so
// that two writers cannot silently overwrite each other.
type Store struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	stream jetstream.Stream
	bucket string
	// fellBack: CreateStore made the bucket with one replica, for want of
	// servers to place bus.AutoReplicas.
	fellBack bool

	afterRead func() // tests: called between Apply's reads and writes
}

// OpenStore opens the config bucket of the mesh with prefix. It fails with an
// error matching ErrNoJetStream when the server has no JetStream, and
// ErrNoBucket when the bucket does not exist (natsmesh server creates it).
func OpenStore(ctx context.Context, nc *nats.Conn, prefix string) (*Store, error) {
	return openStore(ctx, nc, prefix, nil)
}

// CreateOption is an option of CreateStore.
type CreateOption func(*createOpts) error

type createOpts struct {
	replicas int
}

// WithReplicas makes a missing bucket with n replicas (1 to
// bus.MaxReplicas); 0, the default, is bus.AutoReplicas on a NATS cluster
// that can place them and 1 otherwise.
func WithReplicas(n int) CreateOption {
	return func(o *createOpts) error {
		if err := bus.ValidateReplicas(n); err != nil {
			return fmt.Errorf("config: %w", err)
		}
		o.replicas = n
		return nil
	}
}

// CreateStore opens the config bucket of the mesh with prefix, creating it
// when it is missing, with History revisions per service on file storage,
// and the replicas WithReplicas chooses. A bucket that exists is used as it
// is: Store.Replicas tells how many it has.
func CreateStore(ctx context.Context, nc *nats.Conn, prefix string, opts ...CreateOption) (*Store, error) {
	o := &createOpts{}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return openStore(ctx, nc, prefix, o)
}

// openStore opens the bucket, and makes it when create is not nil.
func openStore(ctx context.Context, nc *nats.Conn, prefix string, create *createOpts) (*Store, error) {
	bucket, err := Bucket(prefix)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, bucket)
	fellBack := false
	if create != nil && errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, fellBack, err = bus.CreateKeyValue(ctx, nc, js, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "natsmesh: the config document of each service, by service name",
			History:     History,
			Storage:     jetstream.FileStorage,
		}, create.replicas)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, bucket) // another server made it meanwhile
		}
	}
	if err != nil {
		return nil, storeError(nc, prefix, bucket, err)
	}
	stream, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, storeError(nc, prefix, bucket, err)
	}
	return &Store{kv: kv, js: js, stream: stream, bucket: bucket, fellBack: fellBack}, nil
}

// storeError explains a failure to reach the bucket.
func storeError(nc *nats.Conn, prefix, bucket string, err error) error {
	url := nc.ConnectedUrlRedacted()
	if url == "" {
		url = "(disconnected)"
	}
	switch {
	case noJetStream(err):
		return storeErr(ErrNoJetStream, "config: the NATS server at %s has no JetStream; start it with JetStream enabled (natsmesh server does) to store config", url)
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		flag := ""
		if prefix != bus.DefaultPrefix && prefix != "" {
			flag = " --prefix " + prefix
		}
		return storeErr(ErrNoBucket, "config: the NATS server at %s has no config bucket %s; run `natsmesh server%s`, or `natsmesh server --nats %s%s` to create it on this server", url, bucket, flag, url, flag)
	}
	return fmt.Errorf("config: cannot reach the config bucket %s on %s: %w", bucket, url, err)
}

// noJetStream tells whether err says that JetStream is not there at all.
func noJetStream(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) ||
		errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeJetStreamNotEnabled || apiErr.ErrorCode == jetstream.JSErrCodeJetStreamNotEnabledForAccount)
}

// Bucket is the name of the store's KV bucket.
func (s *Store) Bucket() string { return s.bucket }

// Stream is the name of the bucket's JetStream stream, KV_<bucket>, which
// NATS tooling (nats stream edit) takes.
func (s *Store) Stream() string { return "KV_" + s.bucket }

// Replicas is how many replicas the bucket has, as JetStream reports it now.
func (s *Store) Replicas(ctx context.Context) (int, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	kst, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, fmt.Errorf("config: the status of %s has no stream info", s.bucket)
	}
	return max(kst.StreamInfo().Config.Replicas, 1), nil
}

// FellBack tells whether CreateStore made the bucket with one replica
// because JetStream had too few servers to place bus.AutoReplicas.
func (s *Store) FellBack() bool { return s.fellBack }

// HistoryKept is how many revisions per service the bucket keeps.
func (s *Store) HistoryKept(ctx context.Context) (int64, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.History(), nil
}

// The KV protocol's headers (NATS ADR-8): a delete or purge marker.
const (
	kvOpHeader     = "KV-Operation"
	kvDel          = "DEL"
	kvPurge        = "PURGE"
	markerHeader   = "Nats-Marker-Reason"
	subjectsPrefix = "$KV."
)

func checkService(service string) error {
	return bus.ValidateName("service", service)
}

func (s *Store) subject(service string) string { return subjectsPrefix + s.bucket + "." + service }

// entry decodes one stored message of service.
func newEntry(service string, rev uint64, t time.Time, op Op, data []byte) *Entry {
	e := &Entry{Service: service, Revision: rev, Time: t, Op: op}
	if op != OpPut {
		return e
	}
	e.Raw = data
	doc, err := Unmarshal(data)
	switch {
	case err != nil:
		e.Invalid = err
	case doc.Service != service:
		e.Invalid = fmt.Errorf("config: the document stored under %q is for service %q", service, doc.Service)
	default:
		e.Doc = doc
	}
	return e
}

func opOf(h nats.Header) Op {
	switch {
	case h.Get(kvOpHeader) == kvDel, h.Get(kvOpHeader) == kvPurge:
		return OpDelete
	case h.Get(markerHeader) != "":
		return OpDelete
	}
	return OpPut
}

func opOfKV(op jetstream.KeyValueOp) Op {
	if op == jetstream.KeyValuePut {
		return OpPut
	}
	return OpDelete
}

// latest is the last revision of service, a delete included; nil when the
// key was never written (or its history is gone).
func (s *Store) latest(ctx context.Context, service string) (*Entry, error) {
	m, err := s.stream.GetLastMsgForSubject(ctx, s.subject(service))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", service, err)
	}
	return newEntry(service, m.Sequence, m.Time, opOf(m.Header), m.Data), nil
}

func notFound(service string) error {
	return storeErr(ErrNotFound, "config: no config for service %s; `natsmesh config get` lists those that have one", service)
}

// Get returns the current document of service; an error matching
// ErrNotFound when it has none. A stored document that is not valid is
// returned with Invalid set.
func (s *Store) Get(ctx context.Context, service string) (*Entry, error) {
	if err := checkService(service); err != nil {
		return nil, err
	}
	e, err := s.latest(ctx, service)
	if err != nil {
		return nil, err
	}
	if e == nil || e.Op != OpPut {
		return nil, notFound(service)
	}
	return e, nil
}

// List returns the current document of every service that has one, by
// service name.
func (s *Store) List(ctx context.Context) ([]*Entry, error) {
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("config: list %s: %w", s.bucket, err)
	}
	defer func() { _ = w.Stop() }()
	var list []*Entry
	for {
		select {
		case kve, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("config: list %s: the watch ended early", s.bucket)
			}
			if kve == nil { // every current value has been delivered
				slices.SortFunc(list, func(a, b *Entry) int { return strings.Compare(a.Service, b.Service) })
				return list, nil
			}
			list = append(list, newEntry(kve.Key(), kve.Revision(), kve.Created(), OpPut, kve.Value()))
		case <-ctx.Done():
			return nil, fmt.Errorf("config: list %s: %w", s.bucket, ctx.Err())
		}
	}
}

// History returns the revisions of service the bucket still keeps, oldest
// first, deletes included; an error matching ErrNotFound when there are
// none.
func (s *Store) History(ctx context.Context, service string) ([]*Entry, error) {
	if err := checkService(service); err != nil {
		return nil, err
	}
	kves, err := s.kv.History(ctx, service)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, storeErr(ErrNotFound, "config: service %s has no config history; `natsmesh config get` lists the services that have config", service)
	}
	if err != nil {
		return nil, fmt.Errorf("config: history of %s: %w", service, err)
	}
	h := make([]*Entry, len(kves))
	for i, kve := range kves {
		h[i] = newEntry(service, kve.Revision(), kve.Created(), opOfKV(kve.Operation()), kve.Value())
	}
	return h, nil
}

// Result is what a write did to one service's document.
type Result struct {
	Service string
	// Revision is the new revision, or the current one when Unchanged.
	Revision uint64
	// Unchanged: the document was already the current one; nothing was
	// written.
	Unchanged bool
}

// Put writes doc as the new revision of its service if the service's key is
// still at lastRevision (0: it was never written; a delete's revision: it is
// deleted). Otherwise it writes nothing and returns an error matching
// ErrConflict.
func (s *Store) Put(ctx context.Context, doc *Service, lastRevision uint64) (uint64, error) {
	if ps := doc.Validate(); len(ps) > 0 {
		return 0, fmt.Errorf("config: service %s: %s", doc.Service, ps[0])
	}
	data, err := Marshal(doc)
	if err != nil {
		return 0, err
	}
	return s.put(ctx, doc.Service, data, lastRevision)
}

func (s *Store) put(ctx context.Context, service string, data []byte, lastRevision uint64) (uint64, error) {
	// Update with revision 0 expects no message at all on the key, as
	// Create does; with a delete marker's revision it expects exactly that
	// delete, where Create would accept any delete that came since.
	rev, err := s.kv.Update(ctx, service, data, lastRevision)
	if isConflict(err) {
		return 0, conflict(service, lastRevision)
	}
	if err != nil {
		return 0, fmt.Errorf("config: write %s: %w", service, err)
	}
	return rev, nil
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) ||
		errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func conflict(service string, read uint64) error {
	at := fmt.Sprintf("revision %d", read)
	if read == 0 {
		at = "none"
	}
	return storeErr(ErrConflict, "config: someone else changed %s meanwhile (it was at %s when read)", service, at)
}

// same tells whether the stored entry e already holds data.
func same(e *Entry, data []byte) bool {
	if e == nil || e.Op != OpPut {
		return false
	}
	if bytes.Equal(e.Raw, data) {
		return true
	}
	if e.Doc == nil {
		return false
	}
	again, err := Marshal(e.Doc)
	return err == nil && bytes.Equal(again, data)
}

// ApplyError is a failure of Apply after it may have written some documents:
// it says which services were applied (or already up to date) and which
// were not. Err is the cause: one matching ErrConflict when someone else
// changed Service meanwhile.
type ApplyError struct {
	Service    string   // the service whose write failed
	Applied    []Result // written, or unchanged, before the failure
	NotApplied []string // Service and every one after it, in file order
	Err        error
}

func (e *ApplyError) Error() string {
	var b strings.Builder
	b.WriteString(e.Err.Error())
	if len(e.Applied) > 0 {
		names := make([]string, len(e.Applied))
		for i, r := range e.Applied {
			names[i] = r.Service
		}
		fmt.Fprintf(&b, "; applied: %s", strings.Join(names, ", "))
	}
	fmt.Fprintf(&b, "; not applied: %s", strings.Join(e.NotApplied, ", "))
	return b.String()
}

func (e *ApplyError) Unwrap() error { return e.Err }

// Apply writes each document as the new revision of its service, in order.
// It first reads every service's current revision, then writes each
// document with compare-and-set on the revision it read; a document equal
// to the current one is not written again. KV has no transaction across
// keys: when a write fails (another writer changed that service meanwhile,
// or NATS failed) Apply stops there and returns an *ApplyError listing what
// was applied and what was not, with the results so far.
func (s *Store) Apply(ctx context.Context, docs []*Service) ([]Result, error) {
	type plan struct {
		data []byte
		cur  *Entry
	}
	plans := make([]plan, len(docs))
	for i, doc := range docs {
		if ps := doc.Validate(); len(ps) > 0 {
			return nil, fmt.Errorf("config: service %s: %s", doc.Service, ps[0])
		}
		for _, prev := range docs[:i] {
			if prev.Service == doc.Service {
				return nil, fmt.Errorf("config: service %s is configured twice", doc.Service)
			}
		}
		data, err := Marshal(doc)
		if err != nil {
			return nil, err
		}
		cur, err := s.latest(ctx, doc.Service)
		if err != nil {
			return nil, err
		}
		plans[i] = plan{data: data, cur: cur}
	}
	if s.afterRead != nil {
		s.afterRead()
	}
	results := make([]Result, 0, len(docs))
	for i, p := range plans {
		svc := docs[i].Service
		if same(p.cur, p.data) {
			results = append(results, Result{Service: svc, Revision: p.cur.Revision, Unchanged: true})
			continue
		}
		var read uint64
		if p.cur != nil {
			read = p.cur.Revision
		}
		rev, err := s.put(ctx, svc, p.data, read)
		if err != nil {
			ae := &ApplyError{Service: svc, Applied: results, Err: err}
			for _, d := range docs[i:] {
				ae.NotApplied = append(ae.NotApplied, d.Service)
			}
			return results, ae
		}
		results = append(results, Result{Service: svc, Revision: rev})
	}
	return results, nil
}

// Rollback writes the document of service's revision as its new revision,
// with compare-and-set on the current one. It refuses a revision that is a
// delete, belongs to another service, is no longer kept, or is not a valid
// document. When that document is already the current one, nothing is
// written and the result says Unchanged.
func (s *Store) Rollback(ctx context.Context, service string, revision uint64) (Result, error) {
	if err := checkService(service); err != nil {
		return Result{}, err
	}
	m, err := s.stream.GetMsg(ctx, revision)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Result{}, storeErr(ErrNoRevision, "config: revision %d is not kept (the bucket keeps the last %d revisions of each service); `natsmesh config history %s` lists those of %s", revision, History, service, service)
	}
	if err != nil {
		return Result{}, fmt.Errorf("config: read revision %d: %w", revision, err)
	}
	if m.Subject != s.subject(service) {
		other := strings.TrimPrefix(m.Subject, s.subject(""))
		return Result{}, storeErr(ErrNoRevision, "config: revision %d belongs to service %s, not %s; `natsmesh config history %s` lists the revisions of %s", revision, other, service, service, service)
	}
	old := newEntry(service, m.Sequence, m.Time, opOf(m.Header), m.Data)
	if old.Op != OpPut {
		return Result{}, storeErr(ErrNoRevision, "config: revision %d of %s is a delete; roll back to one that holds a document (`natsmesh config history %s` lists them)", revision, service, service)
	}
	if old.Invalid != nil {
		return Result{}, fmt.Errorf("config: revision %d of %s is not a valid document, so it cannot be rolled back to: %w", revision, service, old.Invalid)
	}
	data, err := Marshal(old.Doc)
	if err != nil {
		return Result{}, err
	}
	cur, err := s.latest(ctx, service)
	if err != nil {
		return Result{}, err
	}
	if same(cur, data) {
		return Result{Service: service, Revision: cur.Revision, Unchanged: true}, nil
	}
	var read uint64
	if cur != nil {
		read = cur.Revision
	}
	rev, err := s.put(ctx, service, data, read)
	if err != nil {
		return Result{}, err
	}
	return Result{Service: service, Revision: rev}, nil
}

// Delete removes service's document, with compare-and-set on its current
// revision, and returns the revision of the delete. The history stays, so
// the document can be rolled back to. It fails with an error matching
// ErrNotFound when the service has no document.
func (s *Store) Delete(ctx context.Context, service string) (uint64, error) {
	if err := checkService(service); err != nil {
		return 0, err
	}
	cur, err := s.latest(ctx, service)
	if err != nil {
		return 0, err
	}
	if cur == nil || cur.Op != OpPut {
		return 0, notFound(service)
	}
	// A delete marker as kv.Delete writes it, published here so that its
	// revision is known.
	m := nats.NewMsg(s.subject(service))
	m.Header.Set(kvOpHeader, kvDel)
	ack, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(cur.Revision))
	if isConflict(err) {
		return 0, conflict(service, cur.Revision)
	}
	if err != nil {
		return 0, fmt.Errorf("config: delete %s: %w", service, err)
	}
	return ack.Sequence, nil
}

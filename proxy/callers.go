package proxy

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/metrics"
)

// callerPolicy is the callers list of an instance's own service, compiled
// once per config revision; nil (no list) accepts every caller. A call reads
// it with one atomic load and checks its caller with one map lookup.
type callerPolicy struct {
	allowed  map[string]struct{}
	list     string // "[productpage, gateway]", for logs and refusals
	revision uint64
	// because is the part of a refusal after the caller's name: which
	// revision's list refused it.
	because string
}

// compileCallers makes the policy of a document's callers list; nil when
// there is no document or it has no list.
func compileCallers(doc *config.Service, revision uint64) *callerPolicy {
	if doc == nil || doc.Callers == nil {
		return nil
	}
	p := &callerPolicy{
		allowed:  make(map[string]struct{}, len(doc.Callers)),
		list:     "[" + strings.Join(doc.Callers, ", ") + "]",
		revision: revision,
	}
	for _, c := range doc.Callers {
		p.allowed[c] = struct{}{}
	}
	p.because = ": its config (revision " + strconv.FormatUint(revision, 10) + ") lists callers " + p.list
	return p
}

// allows reports whether caller ("" for an unnamed one) may call.
func (p *callerPolicy) allows(caller string) bool {
	if p == nil {
		return true
	}
	_, ok := p.allowed[caller]
	return ok && caller != ""
}

// refusal is the answer to a caller the policy does not allow: which policy
// refused it and how to change that.
func (p *callerPolicy) refusal(service, caller string) *bus.Error {
	if caller == "" {
		return &bus.Error{Code: bus.Forbidden, Status: http.StatusForbidden, Message: "service " + strconv.Quote(service) +
			" does not accept calls from unnamed callers" + p.because +
			"; call it from one of them, through its sidecar or a Transport whose Caller names it"}
	}
	q := strconv.Quote(caller)
	return &bus.Error{Code: bus.Forbidden, Status: http.StatusForbidden, Message: "service " + strconv.Quote(service) +
		" does not accept calls from " + q + p.because +
		"; add " + q + " to callers in its config document and natsmesh apply it"}
}

// checkCaller answers a call whose caller the service's callers list does
// not allow, before it is admitted, and reports whether it did.
func (s *Server) checkCaller(m *nats.Msg, caller string) bool {
	p := s.callers.Load()
	if p == nil {
		return false
	}
	if p.allows(caller) {
		return false
	}
	s.forbidden.Add(1)
	e := p.refusal(s.service, caller)
	if s.metrics != nil {
		s.inboundEdge(caller).Record(e.Status, e.Code, 1, 0)
	}
	s.respondError(m, e)
	return true
}

// watchCallers follows the callers list of the instance's own service, so
// that a new revision applies to the next call. It returns once the current
// document is in force, or after the ConfigSource's bound if the store does
// not answer (calls are then accepted from every caller until it does).
func (s *Server) watchCallers(configs ConfigSource) {
	stop, err := configs.Watch(context.Background(), s.service, s.applyCallers)
	if err != nil {
		s.log.Warn("cannot watch the service's config; calls are accepted from every caller", "service", s.service, "error", err)
		return
	}
	s.cfgStop = stop
}

// applyCallers puts a revision of the service's document in force.
func (s *Server) applyCallers(doc *config.Service, revision uint64) {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	if doc != nil && doc.Service != s.service {
		s.log.Warn("service config ignored: it names another service; keeping the last good one", "service", s.service, "revision", revision, "names", doc.Service)
		return
	}
	if doc != nil {
		if ps := doc.Validate(); len(ps) > 0 {
			s.log.Warn("service config ignored: invalid; keeping the last good one", "service", s.service, "revision", revision, "problem", ps[0].String(), "problems", len(ps))
			return
		}
	}
	p, prev := compileCallers(doc, revision), s.callers.Load()
	s.callers.Store(p)
	switch {
	case p == nil && prev != nil:
		s.log.Info("callers list removed; calls are accepted from every caller", "service", s.service, "revision", revision)
	case p != nil && (prev == nil || prev.list != p.list):
		s.log.Info("callers list applied; calls from other services are refused", "service", s.service, "revision", revision, "callers", p.list)
	}
}

// stopCallers ends the watch of the service's config; the last list stays
// in force.
func (s *Server) stopCallers() {
	s.cfgOnce.Do(func() {
		if s.cfgStop != nil {
			s.cfgStop()
		}
	})
}

// inboundEdge is the metrics edge of a request's caller ("" for one that
// named none).
func (s *Server) inboundEdge(caller string) *metrics.Edge {
	if caller == "" {
		caller = unknownCaller
	}
	return s.metrics.Edge(metrics.Inbound, caller, s.subset)
}

package proxy_test

import (
	"context"
	"sync"
	"testing"

	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/proxy"
)

// memConfigs is an in-memory proxy.ConfigSource: the store boundary only,
// so that tests can change a service's document at a moment of their
// choosing. Deliveries are synchronous: once put or del returns, every
// watcher has applied the change.
type memConfigs struct {
	mu       sync.Mutex
	docs     map[string]*config.Service
	revs     map[string]uint64
	rev      uint64
	watchers map[string]map[int]func(*config.Service, uint64)
	nextID   int
	failing  error // Watch fails with it while set
}

var _ proxy.ConfigSource = (*memConfigs)(nil)

func newMemConfigs() *memConfigs {
	return &memConfigs{
		docs: map[string]*config.Service{}, revs: map[string]uint64{},
		watchers: map[string]map[int]func(*config.Service, uint64){},
	}
}

func (m *memConfigs) Watch(ctx context.Context, service string, apply func(*config.Service, uint64)) (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failing != nil {
		return nil, m.failing
	}
	if m.watchers[service] == nil {
		m.watchers[service] = map[int]func(*config.Service, uint64){}
	}
	id := m.nextID
	m.nextID++
	m.watchers[service][id] = apply
	apply(m.docs[service], m.revs[service])
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.watchers[service], id)
	}, nil
}

// watches is how many watches of service are running.
func (m *memConfigs) watches(service string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.watchers[service])
}

// apply parses YAML documents, as natsmesh apply does, and stores them.
func (m *memConfigs) apply(t testing.TB, yamlDocs string) {
	t.Helper()
	docs, err := config.Parse("test.yaml", []byte(yamlDocs))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	for _, d := range docs {
		m.put(d)
	}
}

func (m *memConfigs) put(doc *config.Service) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	m.docs[doc.Service], m.revs[doc.Service] = doc, m.rev
	for _, apply := range m.watchers[doc.Service] {
		apply(doc, m.rev)
	}
}

func (m *memConfigs) del(service string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	delete(m.docs, service)
	m.revs[service] = m.rev
	for _, apply := range m.watchers[service] {
		apply(nil, m.rev)
	}
}

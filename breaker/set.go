package breaker

import (
	"container/list"
	"sync"
)

// DefaultMaxBreakers bounds a Set.
const DefaultMaxBreakers = 1024

// Set keeps one breaker per key (a destination service, or service and
// subset), made on first use with the set's settings. It holds at most max
// breakers: beyond that, the least recently used closed one is forgotten (an
// open or half-open breaker is kept, unless every one is).
type Set struct {
	s   Settings
	max int

	mu  sync.Mutex
	lru *list.List // of *Breaker, most recently used first
	m   map[string]*list.Element
}

// NewSet makes a set; max <= 0 means DefaultMaxBreakers.
func NewSet(s Settings, max int) *Set {
	if max <= 0 {
		max = DefaultMaxBreakers
	}
	return &Set{s: s, max: max, lru: list.New(), m: make(map[string]*list.Element)}
}

// Get returns key's breaker, making it if needed.
func (s *Set) Get(key string) *Breaker {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; ok {
		s.lru.MoveToFront(e)
		return e.Value.(*Breaker)
	}
	if s.lru.Len() >= s.max {
		s.evict()
	}
	b := New(key, s.s)
	s.m[key] = s.lru.PushFront(b)
	return b
}

// Len is the number of breakers held.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len()
}

// evict forgets the least recently used closed breaker, else the least
// recently used one; s.mu held.
func (s *Set) evict() {
	victim := s.lru.Back()
	for e := s.lru.Back(); e != nil; e = e.Prev() {
		if e.Value.(*Breaker).closed() {
			victim = e
			break
		}
	}
	if victim != nil {
		delete(s.m, victim.Value.(*Breaker).name)
		s.lru.Remove(victim)
	}
}

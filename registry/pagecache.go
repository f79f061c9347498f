package registry

import (
	"errors"
	"sync"
	"time"
)

// The bounds of the registry's cache of encoded snapshots.
const (
	// pageCacheBytes bounds the memory of the cached snapshots; the newest
	// is kept whatever its size.
	pageCacheBytes = 64 << 20
	// pageCacheEntries bounds their number.
	pageCacheEntries = 64
	// pageCacheIdle is how long a snapshot nobody pages through is kept.
	pageCacheIdle = time.Minute
	// versionsKept is how many versions of one scope are kept: the newest,
	// and the one before it for a client paging through it when it moved.
	versionsKept = 2
	// pageFresh is how long an encoded snapshot answers first pages. Its
	// version changes with every instance that comes, goes or changes
	// health, but not with the heartbeats between (seq, in flight, last
	// seen): those are at most this old, and a service asked for all the
	// time is encoded at most once per pageFresh.
	pageFresh = time.Second
)

// ErrStaleCursor is what the registry answers a cursor into a snapshot it
// no longer holds (too old, or of another registry): Client.Get and Mirror
// start over from the first page when they get it.
var ErrStaleCursor = errors.New("registry: the snapshot this cursor pages through is gone (the service changed more than once, or another registry answers now); start over from the first page")

// pageCache holds the encoded snapshots pages are cut from, one per scope
// and version, so that the pages of one snapshot are consistent and cheap.
type pageCache struct {
	mu      sync.Mutex
	entries []*encoded
	bytes   int
	builds  uint64 // snapshots encoded, for tests
}

// current is the encoded snapshot of scope at the view's version now,
// encoded on the first request of that version or when older than
// pageFresh. A new encoding of the same version lists the same instances
// in the same order, so a cursor into the one it replaces stays good.
func (c *pageCache) current(v *View, scope string) *encoded {
	now := v.clock.Now()
	ver := v.version(scope)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.find(scope, ver); e != nil && now.Sub(e.built) < pageFresh {
		e.used = now
		return e
	}
	snap, ver := v.snapshotVersion(scope)
	e := encode(scope, ver, snap)
	e.built, e.used = now, now
	c.builds++
	c.add(e, now)
	return e
}

// at is the encoded snapshot a cursor points into, or ErrStaleCursor.
func (c *pageCache) at(v *View, scope string, cur cursor) (*encoded, error) {
	if cur.origin != v.Origin() {
		return nil, ErrStaleCursor
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.find(scope, cur.version)
	if e == nil {
		return nil, ErrStaleCursor
	}
	e.used = v.clock.Now()
	return e, nil
}

func (c *pageCache) find(scope string, version uint64) *encoded {
	for _, e := range c.entries {
		if e.scope == scope && e.version == version {
			return e
		}
	}
	return nil
}

// add keeps e in place of an encoding of its version, and evicts: older versions of its scope beyond versionsKept,
// entries idle for pageCacheIdle, then the least recently used until the
// cache is within its bounds. e itself is never evicted here.
func (c *pageCache) add(e *encoded, now time.Time) {
	for i, old := range c.entries {
		if old.scope == e.scope && old.version == e.version {
			c.drop(i)
			break
		}
	}
	c.entries = append(c.entries, e)
	c.bytes += e.size()
	same := 0
	for i := len(c.entries) - 1; i >= 0; i-- {
		old := c.entries[i]
		if old.scope == e.scope {
			same++
		}
		if old != e && (old.scope == e.scope && same > versionsKept || now.Sub(old.used) > pageCacheIdle) {
			c.drop(i)
		}
	}
	for len(c.entries) > 1 && (c.bytes > pageCacheBytes || len(c.entries) > pageCacheEntries) {
		lru := -1
		for i, old := range c.entries {
			if old != e && (lru < 0 || old.used.Before(c.entries[lru].used)) {
				lru = i
			}
		}
		c.drop(lru)
	}
}

func (c *pageCache) drop(i int) {
	c.bytes -= c.entries[i].size()
	c.entries = append(c.entries[:i], c.entries[i+1:]...)
}

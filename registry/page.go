package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The bounds of a page of the registry's answers.
const (
	// MinPageBytes is the smallest page a request may ask for; smaller
	// max_bytes are raised to it. A page always holds at least one
	// instance, however large.
	MinPageBytes = 4 << 10
	// maxPageRequest bounds the body of a page request.
	maxPageRequest = 1 << 10
	// pageEnvelope is room left in a page for everything but the
	// instances: rev, origin, counts, offset and the next cursor.
	pageEnvelope = 256
)

// pageRequest is the optional body of a request on <prefix>.registry.get.<svc>
// and <prefix>.registry.snapshot. An empty body asks for the first page at
// the registry's largest size, as registries before paging answered.
type pageRequest struct {
	// Cursor is the Next of the previous page; "" for the first page.
	Cursor string `json:"cursor,omitempty"`
	// Limit bounds the instances of the page; 0 is as many as fit.
	Limit int `json:"limit,omitempty"`
	// MaxBytes bounds the page's size, for a client whose NATS server
	// takes less than the registry's; 0 (and anything larger than the
	// registry's max payload) is the registry's max payload.
	MaxBytes int64 `json:"max_bytes,omitempty"`
}

// cursor says where a page starts: at offset in the snapshot of version
// that the view of origin made.
type cursor struct {
	origin  string
	version uint64
	offset  int
}

func (c cursor) String() string {
	return c.origin + "." + strconv.FormatUint(c.version, 10) + "." + strconv.Itoa(c.offset)
}

// parseCursor reads a cursor that String wrote.
func parseCursor(s string) (cursor, error) {
	parts := strings.Split(s, ".")
	if len(s) > 100 || len(parts) != 3 || parts[0] == "" {
		return cursor{}, fmt.Errorf("cursor %.100q is not one this registry gave: pass the next of the previous page, or none for the first", s)
	}
	version, err1 := strconv.ParseUint(parts[1], 10, 64)
	offset, err2 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil || offset < 0 {
		return cursor{}, fmt.Errorf("cursor %q is not one this registry gave: pass the next of the previous page, or none for the first", s)
	}
	return cursor{origin: parts[0], version: version, offset: offset}, nil
}

// parsePageRequest reads a page request; nil or empty data is the first page.
func parsePageRequest(data []byte) (pageRequest, *cursor, error) {
	var req pageRequest
	if len(bytes.TrimSpace(data)) == 0 {
		return req, nil, nil
	}
	if len(data) > maxPageRequest {
		return req, nil, fmt.Errorf("the request is %d bytes; a page request is a JSON object of at most %d", len(data), maxPageRequest)
	}
	if err := json.Unmarshal(data, &req); err != nil {
		return req, nil, fmt.Errorf("the request is not a JSON object {\"cursor\",\"limit\",\"max_bytes\"}: %v", err)
	}
	if req.Limit < 0 || req.MaxBytes < 0 {
		return req, nil, fmt.Errorf("limit %d and max_bytes %d must not be negative (0 is the default)", req.Limit, req.MaxBytes)
	}
	if req.Cursor == "" {
		return req, nil, nil
	}
	c, err := parseCursor(req.Cursor)
	if err != nil {
		return req, nil, err
	}
	return req, &c, nil
}

// pageBytes is the size of a page: what the request asks, within
// [MinPageBytes, payload], the registry connection's max payload.
func pageBytes(asked, payload int64) int {
	if asked <= 0 || asked > payload {
		asked = payload
	}
	return int(min(payload, max(asked, MinPageBytes)))
}

// group is a run of a snapshot's instances of one service.
type group struct {
	service string
	start   int // index of its first instance
}

// encoded is a snapshot of one version, every instance encoded once, so
// that each page is a copy of bytes: no page encodes or sorts the others.
type encoded struct {
	scope   string // the service; "" for every service
	version uint64
	rev     uint64
	origin  string
	buf     []byte // the instances' JSON documents, each followed by '\n'
	offs    []int  // instance i is buf[offs[i] : offs[i+1]-1]
	groups  []group
	built   time.Time
	used    time.Time // for the cache's eviction
}

// encode encodes snap, services by name and instances by id.
func encode(scope string, version uint64, snap Snapshot) *encoded {
	e := &encoded{scope: scope, version: version, rev: snap.Rev, origin: snap.Origin, offs: make([]int, 0, snap.Instances+1)}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	names := make([]string, 0, len(snap.Services))
	for name := range snap.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if len(snap.Services[name]) == 0 {
			continue
		}
		e.groups = append(e.groups, group{service: name, start: len(e.offs)})
		for _, in := range snap.Services[name] {
			e.offs = append(e.offs, buf.Len())
			_ = enc.Encode(in) // an Instance always encodes
		}
	}
	e.offs = append(e.offs, buf.Len())
	e.buf = buf.Bytes()
	return e
}

// count is the number of instances.
func (e *encoded) count() int { return len(e.offs) - 1 }

// size is about the memory e holds.
func (e *encoded) size() int { return cap(e.buf) + 8*cap(e.offs) + 64*len(e.groups) }

func (e *encoded) item(i int) []byte { return e.buf[e.offs[i] : e.offs[i+1]-1] }

// groupOf is the index of the group of instance i.
func (e *encoded) groupOf(i int) int {
	return sort.Search(len(e.groups), func(g int) bool { return e.groups[g].start > i }) - 1
}

// page is the JSON of the Snapshot page from instance offset: at most limit
// instances (0: no limit), within maxBytes, and at least one if any is left.
func (e *encoded) page(offset, limit, maxBytes int) []byte {
	end := e.pageEnd(offset, limit, maxBytes)
	out := make([]byte, 0, e.offs[end]-e.offs[offset]+pageEnvelope)
	out = fmt.Appendf(out, `{"rev":%d,"origin":%q,"services":{`, e.rev, e.origin)
	g := -1
	for i := offset; i < end; i++ {
		switch gi := e.groupOf(i); {
		case gi != g && g >= 0:
			out = append(out, "],"...)
			fallthrough
		case gi != g:
			g = gi
			out = fmt.Appendf(out, `%q:[`, e.groups[g].service)
		default:
			out = append(out, ',')
		}
		out = append(out, e.item(i)...)
	}
	if g >= 0 {
		out = append(out, ']')
	}
	out = fmt.Appendf(out, `},"instances":%d`, e.count())
	if offset > 0 {
		out = fmt.Appendf(out, `,"offset":%d`, offset)
	}
	if end < e.count() {
		next := cursor{origin: e.origin, version: e.version, offset: end}
		out = fmt.Appendf(out, `,"truncated":true,"next":%q`, next.String())
	}
	return append(out, '}')
}

// pageEnd is the end of the page from offset: as many instances as fit in
// maxBytes, with their service names and separators, up to limit.
func (e *encoded) pageEnd(offset, limit, maxBytes int) int {
	n := e.count()
	if limit > 0 && n-offset > limit {
		n = offset + limit
	}
	size := pageEnvelope + len(e.origin)
	g := -1
	end := offset
	for ; end < n; end++ {
		add := len(e.item(end)) + 1
		if gi := e.groupOf(end); gi != g {
			g = gi
			add += len(e.groups[g].service) + 6
		}
		if size+add > maxBytes && end > offset {
			break
		}
		size += add
	}
	return end
}

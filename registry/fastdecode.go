package registry

// decodeFast parses the heartbeat documents announcers write — a flat JSON
// object of known keys with plain ASCII strings and integers — without
// reflection; ok is false for anything else (escapes, other keys, meta,
// nulls, floats, non-ASCII, ...), and the caller then uses encoding/json.
// For every document it accepts, it yields what encoding/json would.
func decodeFast(data []byte) (h Heartbeat, ok bool) {
	p := parser{b: data}
	p.space()
	if !p.byte('{') {
		return h, false
	}
	p.space()
	if p.byte('}') {
		return h, p.end()
	}
	for {
		p.space()
		key, ok := p.str()
		if !ok {
			return h, false
		}
		p.space()
		if !p.byte(':') {
			return h, false
		}
		p.space()
		switch key {
		case "service":
			h.Service, ok = p.str()
		case "subset":
			h.Subset, ok = p.str()
		case "zone":
			h.Zone, ok = p.str()
		case "instance":
			h.Instance, ok = p.str()
		case "host":
			h.Host, ok = p.str()
		case "health":
			var s string
			s, ok = p.str()
			h.Health = Health(s)
		case "started":
			var raw []byte
			if raw, ok = p.raw(); ok {
				// The parser encoding/json uses for time.Time, strict RFC 3339.
				ok = h.Started.UnmarshalText(raw) == nil
			}
		case "pid":
			var n int64
			n, ok = p.int()
			h.PID = int(n)
		case "inflight":
			var n int64
			n, ok = p.int()
			h.Inflight = int(n)
		case "interval_ms":
			h.IntervalMS, ok = p.int()
		case "seq":
			var n int64
			if p.i < len(p.b) && p.b[p.i] == '-' {
				return h, false // encoding/json refuses any sign for an unsigned field, even -0
			}
			n, ok = p.int()
			h.Seq = uint64(n)
		default:
			return h, false
		}
		if !ok {
			return h, false
		}
		p.space()
		if p.byte('}') {
			return h, p.end()
		}
		if !p.byte(',') {
			return h, false
		}
	}
}

type parser struct {
	b []byte
	i int
}

func (p *parser) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) byte(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// end reports whether only whitespace follows.
func (p *parser) end() bool {
	p.space()
	return p.i == len(p.b)
}

// str reads a string of printable ASCII without escapes.
func (p *parser) str() (string, bool) {
	raw, ok := p.raw()
	return string(raw), ok
}

// raw reads a string of printable ASCII without escapes, returning its bytes
// (which alias the document).
func (p *parser) raw() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			return p.b[start : p.i-1], true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, false
		}
		p.i++
	}
	return nil, false
}

// int reads an integer of at most 18 digits, in JSON's syntax.
func (p *parser) int() (int64, bool) {
	neg := p.byte('-')
	start := p.i
	var n int64
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		n = n*10 + int64(p.b[p.i]-'0')
		p.i++
	}
	digits := p.i - start
	if digits == 0 || digits > 18 || (digits > 1 && p.b[start] == '0') {
		return 0, false
	}
	if p.i < len(p.b) {
		switch p.b[p.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	if neg {
		n = -n
	}
	return n, true
}

package proxy

import (
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// Streams (docs/architecture.md, "Large and streaming bodies"): a body that
// does not fit one message travels as a head message and then chunks, paced
// by credit the receiver grants as its consumer takes the bytes, so that
// neither side holds more than a window of it.
const (
	// streamWindow is the credit a receiver grants at the start: the most
	// a sender may have sent and not had credited back.
	streamWindow = 4 << 20
	// creditBatch is how much a receiver lets its consumer take before it
	// credits it back: two credit messages per window.
	creditBatch = streamWindow / 2
	// maxChunk is the largest chunk (less when max_payload is small).
	maxChunk = 512 << 10
	// minCharge is what a chunk costs at least against the window, so that
	// a window is at most streamWindow/minCharge messages however small the
	// chunks (a server-sent event each): the receiver's channel is bounded
	// by messages, not bytes.
	minCharge = streamWindow / 64
	// streamChanCap holds a window of chunks plus the end, an abort, the
	// head, acknowledgements and credits.
	streamChanCap = streamWindow/minCharge + 16

	// DefaultMaxBody is the default limit of a request body.
	DefaultMaxBody = 64 << 20
)

// charge is what a chunk of n bytes costs against the window.
func charge(n int) int64 { return int64(max(n, minCharge)) }

// chunkSize is the size of chunks for a server's max_payload.
func chunkSize(maxPayload int64) int {
	c := int64(maxChunk)
	if lim := maxPayload - 4096; lim < c {
		c = max(lim, 512)
	}
	return int(c)
}

// headerSize estimates what h takes in a message header, with room for the
// mesh's own headers (method, path, timeout, trace context...).
func headerSize(h http.Header) int64 {
	n := int64(1024)
	for k, vv := range h {
		for _, v := range vv {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

// fitsMessage reports whether a body of n bytes with headers h fits one
// message of at most maxPayload bytes; extra counts other header bytes.
func fitsMessage(h http.Header, extra int, n, maxPayload int64) bool {
	return n+int64(extra) <= maxPayload && n+int64(extra)+headerSize(h) <= maxPayload
}

// chunkPool holds chunk buffers of maxChunk bytes.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, maxChunk); return &b }}

func getChunk() *[]byte  { return chunkPool.Get().(*[]byte) }
func putChunk(b *[]byte) { chunkPool.Put(b) }

var (
	oneValue    = []string{"1"}
	endValue    = oneValue
	cancelValue = oneValue
)

// streamError is the failure of a stream: a *bus.Error, so that it travels
// and is answered like any mesh failure.
func streamError(code bus.Code, format string, args ...any) *bus.Error {
	return bus.Errorf(code, format, args...)
}

// sender sends one body as chunks, within the credit its receiver grants.
type sender struct {
	nc      *nats.Conn
	subject string
	tag     []string // Mesh-Stream value of chunks to a callee; nil toward a caller
	seq     uint64
	credit  int64
	chunk   int
	// wait blocks until the receiver grants more credit, and returns it.
	wait func() (int64, error)
}

// write sends p as chunks, waiting for credit as needed.
func (s *sender) write(p []byte) error {
	for len(p) > 0 {
		n := min(len(p), s.chunk)
		c := charge(n)
		for s.credit < c {
			add, err := s.wait()
			if err != nil {
				return err
			}
			s.credit += add
		}
		s.credit -= c
		if err := s.publish(p[:n], "", nil); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// end sends the last, empty chunk.
func (s *sender) end() error { return s.publish(nil, bus.HeaderEnd, endValue) }

// abort sends a Mesh-Error chunk: the body failed at its source.
func (s *sender) abort(e *bus.Error) error {
	return s.publish([]byte(e.Message+"\n"), bus.HeaderError, []string{string(e.Code)})
}

func (s *sender) publish(data []byte, k string, v []string) error {
	s.seq++
	h := make(nats.Header, 3)
	h[bus.HeaderSeq] = []string{strconv.FormatUint(s.seq, 10)}
	if s.tag != nil {
		h[bus.HeaderStream] = s.tag
	}
	if k != "" {
		h[k] = v
	}
	if err := s.nc.PublishMsg(&nats.Msg{Subject: s.subject, Header: h, Data: data}); err != nil {
		return streamError(bus.MeshUnavailable, "cannot send a chunk of the body over NATS: %v", err)
	}
	return nil
}

// creditHeader is the header of a credit message.
func creditHeader(n int64, tag []string) nats.Header {
	h := nats.Header{bus.HeaderCredit: {strconv.FormatInt(n, 10)}}
	if tag != nil {
		h[bus.HeaderStream] = tag
	}
	return h
}

// chunkReader receives one body's chunks in order and credits them back as
// its consumer takes them.
type chunkReader struct {
	// next waits for the stream's next message (chunks only are given to
	// accept; the owner skips others).
	next func() (*nats.Msg, error)
	// credit grants the sender n more bytes.
	credit func(n int64)

	seq    uint64
	cur    []byte
	charge int64 // of the chunk being consumed
	owed   int64 // consumed, not yet credited
	err    error // sticky; io.EOF after the end
}

// nextChunk returns the next chunk's bytes (possibly none), crediting the
// previous one as consumed; io.EOF after the last.
func (c *chunkReader) nextChunk() ([]byte, error) {
	c.consumed()
	for {
		if c.err != nil {
			return nil, c.err
		}
		m, err := c.next()
		if err != nil {
			c.err = err
			return nil, err
		}
		c.seq++
		if got := bus.First(m.Header, bus.HeaderSeq); got != strconv.FormatUint(c.seq, 10) {
			c.err = streamError(bus.UpstreamLost, "a chunk of the body was lost (chunk %s arrived where %d was due)", got, c.seq)
			return nil, c.err
		}
		if code := bus.First(m.Header, bus.HeaderError); code != "" {
			e := bus.Errorf(bus.Code(code), "%s", trimLine(m.Data))
			if e.Message == "" {
				e.Message = "the sender aborted the body"
			}
			c.err = e
			return nil, e
		}
		if m.Header[bus.HeaderEnd] != nil {
			c.err = io.EOF
			if len(m.Data) == 0 {
				return nil, io.EOF
			}
		} else {
			c.charge = charge(len(m.Data))
		}
		if len(m.Data) == 0 {
			c.consumed()
			continue
		}
		c.cur = m.Data
		return m.Data, nil
	}
}

// consumed credits the chunk last returned, in batches.
func (c *chunkReader) consumed() {
	c.cur = nil
	if c.charge == 0 {
		return
	}
	c.owed += c.charge
	c.charge = 0
	if c.owed >= creditBatch && c.err == nil {
		c.credit(c.owed)
		c.owed = 0
	}
}

// Read implements io.Reader.
func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for len(c.cur) == 0 {
		if _, err := c.nextChunk(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

func trimLine(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return string(b)
}

package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// The caller's side of streams: a request body sent in chunks to the
// instance that took the head, and a response body received in chunks.

// reqStream is a request body that does not fit one message.
type reqStream struct {
	prefix []byte    // read already, while deciding whether it fits
	rest   io.Reader // the rest of the client's body
	length int64     // its Content-Length, -1 when unknown
	max    int64     // the limit of the whole body (max-body)
	sent   bool      // a chunk went: the call is not retried
}

// errAnswered ends a body's upload when the callee answered before its end.
var errAnswered = errors.New("proxy: answered before the end of the body")

// errStreamClosed is the error of a response body read after Close.
var errStreamClosed = errors.New("proxy: the response body is closed")

func tooLargeBody(limit int64) *bus.Error {
	return bus.Errorf(bus.TooLarge, "the request body is over this proxy's limit of %d bytes (--max-body)", limit)
}

// takeBody reads a request body that fits one message into buf and returns
// nil; for one that does not (by its Content-Length, or of unknown length
// and longer than a chunk) it returns the stream that sends it. A body over
// max-body is refused. extra counts the bytes of the URI and host.
func (t *Transport) takeBody(body io.Reader, length int64, hdr http.Header, extra int, buf *bytes.Buffer) (*reqStream, *bus.Error) {
	if body == nil || body == http.NoBody {
		return nil, nil
	}
	if length > t.maxBody {
		return nil, tooLargeBody(t.maxBody)
	}
	maxPayload := t.nc.MaxPayload()
	if length > 0 {
		if !fitsMessage(hdr, extra, length, maxPayload) {
			return &reqStream{rest: body, length: length, max: t.maxBody}, nil
		}
		// The buffer grows as bytes arrive: a declared length reserves
		// nothing, so a client that declares a megabyte and sends nothing
		// holds no megabyte.
		if _, err := buf.ReadFrom(io.LimitReader(body, maxPayload+1)); err != nil {
			return nil, bodyError(err, 0)
		}
		return nil, nil
	}
	// Unknown length: a body that ends within a chunk goes inline.
	chunk := int64(chunkSize(maxPayload))
	n, err := buf.ReadFrom(io.LimitReader(body, chunk+1))
	if err != nil {
		return nil, bodyError(err, 0)
	}
	if n <= chunk {
		return nil, nil
	}
	if n > t.maxBody {
		return nil, tooLargeBody(t.maxBody)
	}
	return &reqStream{prefix: buf.Bytes(), rest: body, length: -1, max: t.maxBody}, nil
}

// bodyError is the failure of a client's request body that could not be
// read after read bytes: the mesh's own (a slow body's), or bad-request.
func bodyError(err error, read int64) *bus.Error {
	var e *bus.Error
	if errors.As(err, &e) {
		return e
	}
	if read == 0 {
		return bus.Errorf(bus.BadRequest, "cannot read the request body: %v", err)
	}
	return bus.Errorf(bus.BadRequest, "the request body failed after %d bytes: %v", read, err)
}

// callerWait waits for the next message of a streamed call: each wait is
// bounded by the idle timeout, and while it lasts the instance holding the
// call is probed, as for any held call.
type callerWait struct {
	t       *Transport
	ctx     context.Context
	ch      chan *nats.Msg
	quit    <-chan struct{} // closed when the receiver is done; nil: never
	holder  string
	service string
	idle    time.Duration
	timer   *time.Timer
}

func (w *callerWait) next() (*nats.Msg, error) {
	deadline := time.Now().Add(w.idle)
	step := min(w.idle, w.t.probeInterval)
	if w.timer == nil {
		w.timer = time.NewTimer(step)
	} else {
		w.timer.Reset(step)
	}
	for {
		select {
		case m := <-w.ch:
			if m == nil {
				if w.t.isClosed() {
					return nil, ErrTransportClosed
				}
				return nil, bus.Errorf(bus.UpstreamLost, "the NATS connection dropped in the middle of a body streamed with %s", w.service)
			}
			return m, nil
		case <-w.timer.C:
			if !time.Now().Before(deadline) {
				return nil, bus.Errorf(bus.Timeout, "the body streamed with %q did not move for %s", w.service, w.idle.Round(time.Millisecond))
			}
			if w.t.probes.dead(w.service, w.holder) {
				if m := w.t.arrived(w.ch); m != nil {
					return m, nil // sent, then gone: what it sent stands
				}
				return nil, bus.Errorf(bus.UpstreamLost, "instance %s of %q went away in the middle of a streamed body", w.holder, w.service)
			}
			w.timer.Reset(min(time.Until(deadline), w.t.probeInterval))
		case <-w.ctx.Done():
			return nil, w.ctx.Err()
		case <-w.quit:
			return nil, errStreamClosed
		}
	}
}

func (w *callerWait) stop() {
	if w.timer != nil {
		w.timer.Stop()
	}
}

// cancelAt tells the instance holding a streamed call to stop it.
func (t *Transport) cancelAt(service, holder, replyTo string) {
	_ = t.nc.PublishMsg(&nats.Msg{Subject: t.subj.Inst(service, holder), Header: nats.Header{
		bus.HeaderStream: {replyTo}, bus.HeaderCancel: cancelValue,
	}})
}

// upload sends a streamed request body to the instance holding the call,
// within the credit it grants. It returns the callee's answer when one came
// before the body's end (the app answered early, or failed), and a failure
// when the body could not go: the client's body failed or grew past
// max-body (the callee is told with a Mesh-Error chunk), or the callee went
// quiet or away.
func (t *Transport) upload(ctx context.Context, service string, rb *reqStream, ch chan *nats.Msg, replyTo, holder string, credit int64, idle time.Duration) (*nats.Msg, error) {
	var answer *nats.Msg
	w := callerWait{t: t, ctx: ctx, ch: ch, holder: holder, service: service, idle: idle}
	defer w.stop()
	snd := sender{nc: t.nc, subject: t.subj.Inst(service, holder), tag: []string{replyTo}, credit: credit, chunk: chunkSize(t.nc.MaxPayload())}
	snd.wait = func() (int64, error) {
		for {
			m, err := w.next()
			switch {
			case err != nil:
				return 0, err
			case m.Header[bus.HeaderCredit] != nil && m.Header[bus.HeaderStatus] == nil:
				if n, _ := strconv.ParseInt(bus.First(m.Header, bus.HeaderCredit), 10, 64); n > 0 {
					return n, nil
				}
			case m.Header[bus.HeaderAck] != nil:
			default:
				answer = m
				return 0, errAnswered
			}
		}
	}
	err := rb.send(&snd)
	if errors.Is(err, errAnswered) {
		return answer, nil
	}
	return nil, err
}

// send sends the body: its prefix already read, then the rest in chunks of
// at least minCharge (a chunk costs that much anyway), then its end.
func (rb *reqStream) send(snd *sender) error {
	total := int64(len(rb.prefix))
	if total > 0 {
		rb.sent = true
		if err := snd.write(rb.prefix); err != nil {
			return err
		}
	}
	bp := getChunk()
	defer putChunk(bp)
	buf := (*bp)[:snd.chunk]
	fill := min(minCharge, len(buf))
	for {
		n := 0
		var rerr error
		// The first bytes go as they come, so that the callee, which
		// waits ServeConfig.BodyStart for them, hears from a slow client
		// at once; later chunks gather at least minCharge.
		want := fill
		if total == 0 {
			want = 1
		}
		for n < want && rerr == nil {
			var k int
			k, rerr = rb.rest.Read(buf[n:])
			n += k
		}
		if n > 0 {
			total += int64(n)
			if total > rb.max {
				e := tooLargeBody(rb.max)
				_ = snd.abort(e)
				return e
			}
			rb.sent = true
			if err := snd.write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			return snd.end()
		}
		if rerr != nil {
			e := bodyError(rerr, total)
			_ = snd.abort(e)
			return e
		}
	}
}

// respStream is a response body that arrives in chunks. Its receiver reads
// it (Read, or nextChunk) and closes it; closing it before its end cancels
// the call at the callee.
type respStream struct {
	chunkReader
	t         *Transport
	id        uint64
	small     chan *nats.Msg // the call's first channel, released at the end
	w         callerWait
	tag       []string
	quit      chan struct{}
	ended     atomic.Bool
	cancelled sync.Once
	closed    sync.Once
	stopAfter func() bool
}

var _ io.ReadCloser = (*respStream)(nil)

func (t *Transport) newRespStream(id uint64, small chan *nats.Msg, replyTo string, head *nats.Msg, service string, idle time.Duration) *respStream {
	st := &respStream{t: t, id: id, small: small, tag: []string{replyTo}, quit: make(chan struct{})}
	st.w = callerWait{
		t: t, ctx: context.Background(), ch: t.mux.current(id), quit: st.quit,
		holder: bus.First(head.Header, bus.HeaderInstance), service: service, idle: idle,
	}
	st.chunkReader.next = st.nextMsg
	st.chunkReader.credit = st.credit
	st.cur = head.Data // the head's bytes come first
	return st
}

// length is the body's Content-Length, -1 when unknown.
func (st *respStream) length(head *nats.Msg) int64 {
	if n, err := strconv.ParseInt(bus.First(head.Header, "Content-Length"), 10, 64); err == nil && n >= 0 {
		return n
	}
	return -1
}

func (st *respStream) nextMsg() (*nats.Msg, error) {
	for {
		m, err := st.w.next()
		if err != nil {
			return nil, err
		}
		if m.Header[bus.HeaderSeq] != nil {
			return m, nil
		}
		// An acknowledgement or a credit: not part of the body.
	}
}

func (st *respStream) credit(n int64) {
	_ = st.t.nc.PublishMsg(&nats.Msg{Subject: st.t.subj.Inst(st.w.service, st.w.holder), Header: creditHeader(n, st.tag)})
}

func (st *respStream) cancel() {
	st.cancelled.Do(func() { st.t.cancelAt(st.w.service, st.w.holder, st.tag[0]) })
}

// chunk returns the next bytes of the body (the head's first); io.EOF at
// its end.
func (st *respStream) chunk() ([]byte, error) {
	if len(st.cur) > 0 {
		b := st.cur
		st.cur = nil
		return b, nil
	}
	b, err := st.nextChunk()
	st.cur = nil // written whole by the caller
	if err == io.EOF {
		st.ended.Store(true)
	}
	return b, err
}

// Read implements io.Reader for a library caller's response body.
func (st *respStream) Read(p []byte) (int, error) {
	n, err := st.chunkReader.Read(p)
	if err == io.EOF {
		st.ended.Store(true)
	}
	return n, err
}

// Close releases the call; before the body's end it cancels it.
func (st *respStream) Close() error {
	st.closed.Do(func() {
		if !st.ended.Load() {
			st.cancel()
		}
		close(st.quit)
		if st.stopAfter != nil {
			st.stopAfter()
		}
		st.w.stop()
		st.t.mux.release(st.id, st.small)
	})
	return nil
}

// writeStream writes a response whose body streams, flushing each chunk to
// the client as it arrives. A body the callee aborts aborts the client's
// response (the connection closes without the body's end), so it is never
// taken for complete.
func writeStream(w http.ResponseWriter, r *http.Request, m *nats.Msg, st *respStream) {
	st.w.ctx = r.Context()
	defer st.Close()
	code, ok := replyStatus(m)
	if !ok {
		WriteError(w, r, badStatus())
		return
	}
	copyReplyHeaders(w.Header(), m)
	w.WriteHeader(code)
	rc := http.NewResponseController(w)
	for {
		data, err := st.chunk()
		if err == io.EOF {
			return
		}
		if err != nil {
			if r.Context().Err() != nil {
				return // the client went away; Close cancels the call
			}
			panic(http.ErrAbortHandler)
		}
		if _, err := w.Write(data); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// streamResponse makes the *http.Response of a reply whose body streams.
func streamResponse(req *http.Request, m *nats.Msg, st *respStream) *http.Response {
	resp := messageResponse(req, m)
	if resp.Header.Get(bus.HeaderError) != "" && m.Header[bus.HeaderError] == nil {
		st.Close() // the reply was not valid
		return resp
	}
	st.w.ctx = req.Context()
	st.stopAfter = context.AfterFunc(req.Context(), st.cancel)
	resp.Body = st
	resp.ContentLength = st.length(m)
	return resp
}

// isUpgrade reports whether r asks to switch protocols (WebSocket, h2c).
func isUpgrade(h http.Header) bool {
	if h["Upgrade"] == nil {
		return false
	}
	for _, v := range h["Connection"] {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

func notSupportedUpgrade(h http.Header) *bus.Error {
	return bus.Errorf(bus.NotSupported, "upgrades (Upgrade: %s) are not supported through the mesh yet", h.Get("Upgrade"))
}

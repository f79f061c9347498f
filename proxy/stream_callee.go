package proxy

import (
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// The callee's side of streams: a request body received in chunks on the
// instance's own subject, and a response body sent in chunks to the call's
// reply subject.

// calleeStream is one streamed call at the callee, found by its reply
// subject when the caller's chunks, credits and cancel arrive.
type calleeStream struct {
	s      *Server
	reply  string
	in     chan *nats.Msg // request chunks; nil unless the request streams
	credit atomic.Int64   // granted for the response, not yet taken
	wake   chan struct{}  // a credit arrived
	done   chan struct{}  // closed when the caller cancels
	once   sync.Once

	mu   sync.Mutex
	hook func() // called on cancel: stops the app's request
}

// openStream registers the streamed call replying to reply.
func (s *Server) openStream(reply string, in bool) *calleeStream {
	cs := &calleeStream{s: s, reply: reply, wake: make(chan struct{}, 1), done: make(chan struct{})}
	cs.credit.Store(streamWindow) // a response's window is granted at the start
	if in {
		cs.in = make(chan *nats.Msg, streamChanCap)
	}
	s.streams.Store(reply, cs)
	return cs
}

func (s *Server) closeStream(cs *calleeStream) {
	s.streams.CompareAndDelete(cs.reply, cs)
}

// onStreamMsg takes a message from the caller of a streamed call: a chunk
// of its request body, a credit for its response, or a cancel. Messages of
// calls that are over are dropped.
func (s *Server) onStreamMsg(reply string, m *nats.Msg) {
	v, ok := s.streams.Load(reply)
	if !ok {
		return
	}
	cs := v.(*calleeStream)
	switch {
	case m.Header[bus.HeaderCancel] != nil:
		cs.cancel()
	case m.Header[bus.HeaderCredit] != nil:
		if n, err := strconv.ParseInt(bus.First(m.Header, bus.HeaderCredit), 10, 64); err == nil && n > 0 {
			cs.credit.Add(n)
			select {
			case cs.wake <- struct{}{}:
			default:
			}
		}
	case cs.in != nil:
		select {
		case cs.in <- m:
		default:
			// Beyond the window: the sender broke flow control. The
			// chunk is lost, and the gap aborts the body.
		}
	}
}

// cancel stops the call: waits end, and the hook stops the app's request.
func (cs *calleeStream) cancel() {
	cs.once.Do(func() {
		close(cs.done)
		cs.mu.Lock()
		hook := cs.hook
		cs.mu.Unlock()
		if hook != nil {
			hook()
		}
	})
}

func (cs *calleeStream) isCancelled() bool {
	select {
	case <-cs.done:
		return true
	default:
		return false
	}
}

// setHook sets what a cancel calls (nil: nothing), and reports whether the
// call was cancelled already; then f is called at once.
func (cs *calleeStream) setHook(f func()) bool {
	cs.mu.Lock()
	cs.hook = f
	cs.mu.Unlock()
	if cs.isCancelled() {
		if f != nil {
			f()
		}
		return true
	}
	return false
}

func cancelledError() *bus.Error {
	return bus.Errorf(bus.UpstreamLost, "the caller cancelled the call")
}

// reader is the request body: its chunks in order, credited back to the
// caller as the app reads them; the wait for the first is bounded by first,
// each later one by idle.
func (cs *calleeStream) reader(first, idle time.Duration) *chunkReader {
	var timer *time.Timer
	cr := &chunkReader{}
	cr.next = func() (*nats.Msg, error) {
		wait := idle
		if timer == nil {
			wait = first
			timer = time.NewTimer(first)
		} else {
			timer.Reset(idle)
		}
		select {
		case m := <-cs.in:
			return m, nil
		case <-cs.done:
			return nil, cancelledError()
		case <-timer.C:
			return nil, bus.Errorf(bus.Timeout, "no chunk of the request body arrived for %s", wait.Round(time.Millisecond))
		}
	}
	cr.credit = func(n int64) {
		_ = cs.s.nc.PublishMsg(&nats.Msg{Subject: cs.reply, Header: creditHeader(n, nil)})
	}
	return cr
}

// sender sends the response body to the caller, within its credit; each
// wait for credit is bounded by idle.
func (cs *calleeStream) sender(idle time.Duration) *sender {
	var timer *time.Timer
	snd := &sender{nc: cs.s.nc, subject: cs.reply, chunk: chunkSize(cs.s.nc.MaxPayload())}
	snd.wait = func() (int64, error) {
		for {
			if n := cs.credit.Swap(0); n > 0 {
				return n, nil
			}
			if timer == nil {
				timer = time.NewTimer(idle)
			} else {
				timer.Reset(idle)
			}
			select {
			case <-cs.wake:
			case <-cs.done:
				return 0, cancelledError()
			case <-timer.C:
				return 0, bus.Errorf(bus.Timeout, "the caller took none of the response for %s", idle.Round(time.Millisecond))
			}
		}
	}
	return snd
}

// openRequestStream sets up the request body of a head with Mesh-Stream: 1
// and grants the caller its window, which also acknowledges the request.
func (s *Server) openRequestStream(w *responseWriter, m *nats.Msg) {
	cs := s.openStream(m.Reply, true)
	w.cs = cs
	w.reqBody = cs.reader(min(w.idle, s.bodyStart), min(w.idle, s.bodyIdle))
	w.reqLen = -1
	if n, err := strconv.ParseInt(bus.First(m.Header, "Content-Length"), 10, 64); err == nil && n >= 0 {
		w.reqLen = n
	}
	h := creditHeader(streamWindow, nil)
	h[bus.HeaderInstance] = s.inst
	_ = s.nc.PublishMsg(&nats.Msg{Subject: m.Reply, Header: h})
}

// startStream publishes the head of a response whose body streams, with the
// bytes buffered so far; the rest goes as chunks.
func (w *responseWriter) startStream() *bus.Error {
	s := w.srv
	if w.cs == nil {
		w.cs = s.openStream(w.req.Reply, false)
	}
	if w.onCancel != nil && w.cs.setHook(w.onCancel) {
		return cancelledError()
	}
	if w.ack != nil {
		w.ack.Stop() // the head says who holds the call
	}
	w.streaming = true
	w.snd = w.cs.sender(w.idle)
	if s.outcome != nil {
		w.ejected = s.outcome(appFailed(w.status, nil))
	}
	w.outcomeDone = true
	h := make(nats.Header, len(w.header)+4)
	bus.EncodeResponse(h, w.status, "", w.header)
	h[bus.HeaderInstance] = s.inst
	h[bus.HeaderStream] = oneValue
	if w.ejected > 0 {
		h[bus.HeaderEjected] = []string{w.ejected.String()}
	}
	n := min(w.buf.Len(), w.snd.chunk)
	if err := s.nc.PublishMsg(&nats.Msg{Subject: w.req.Reply, Header: h, Data: w.buf.Next(n)}); err != nil {
		// No head went: the caller still waits for an ordinary reply, which
		// the failure is sent as.
		w.streaming = false
		w.buf.Reset()
		if errors.Is(err, nats.ErrMaxPayload) {
			return tooLargeResponse(s.nc.MaxPayload())
		}
		return bus.Errorf(bus.UpstreamLost, "cannot send the response head: %v", err)
	}
	return w.sendBuffered(true)
}

// sendBuffered sends what is buffered as chunks: all of it, or only whole
// chunks.
func (w *responseWriter) sendBuffered(all bool) *bus.Error {
	for w.buf.Len() > 0 && (all || w.buf.Len() >= w.snd.chunk) {
		if err := w.snd.write(w.buf.Next(min(w.buf.Len(), w.snd.chunk))); err != nil {
			w.buf.Reset()
			return asMeshError(err)
		}
	}
	if w.buf.Len() == 0 {
		w.buf.Reset()
	}
	return nil
}

func asMeshError(err error) *bus.Error {
	if e, ok := err.(*bus.Error); ok {
		return e
	}
	return bus.Errorf(bus.UpstreamLost, "%v", err)
}

// finishStream ends a streamed response: the rest of the body and its end,
// or, when the body failed, a Mesh-Error chunk.
func (s *Server) finishStream(w *responseWriter) {
	if w.err == nil {
		w.err = w.sendBuffered(true)
	}
	if w.err == nil {
		if err := w.snd.end(); err != nil {
			s.log.Debug("end of a streamed response not sent", "service", s.service, "error", err)
		}
		return
	}
	if w.cs.isCancelled() {
		return // nobody waits for it
	}
	s.recordFailure(w.err.Error())
	_ = w.snd.abort(w.err)
}

// callerFailed reports whether the call failed on the caller's side: it
// cancelled, or its request body failed. That is no failure of the app.
func (w *responseWriter) callerFailed() bool {
	if w.cs == nil {
		return false
	}
	if w.cs.isCancelled() {
		return true
	}
	return w.reqBody != nil && w.reqBody.err != nil && w.reqBody.err != io.EOF
}

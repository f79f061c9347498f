package proxy

import (
	"bytes"
	"io"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// responseWriter collects a handler's response for one reply message. Served
// for a Server (srv set), a body that does not fit a message, or one the
// handler flushes, streams: the head goes with the bytes buffered so far and
// the rest follows in chunks. Without a Server, a body over the limit is
// refused as soon as it grows past it, so it is not buffered in full.
type responseWriter struct {
	header http.Header
	status int
	buf    *bytes.Buffer
	limit  int64
	err    *bus.Error

	// The call, when served for a Server.
	srv    *Server
	req    *nats.Msg
	method string
	ack    *time.Timer   // the acknowledgement's, stopped by a response head
	idle   time.Duration // bounds each wait while a body streams
	inline int64         // the largest body that goes inline; 0: not known yet

	cs          *calleeStream // the call's stream state, once it streams
	reqBody     *chunkReader  // the request body, when it streams
	reqLen      int64         // its length, -1 unknown
	onCancel    func()        // stops a library handler when the caller cancels
	streaming   bool          // the response head went; the body follows in chunks
	snd         *sender
	outcomeDone bool
	ejected     time.Duration
}

var (
	_ http.ResponseWriter = (*responseWriter)(nil)
	_ io.ReaderFrom       = (*responseWriter)(nil)
	_ http.Flusher        = (*responseWriter)(nil)
)

func (w *responseWriter) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header, 8)
	}
	return w.header
}

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 { // 1xx informational responses are not forwarded
		w.status = code
	}
}

// canStream reports whether the response may stream: served for a Server,
// and with a body.
func (w *responseWriter) canStream() bool {
	return w.srv != nil && w.method != http.MethodHead && bodyAllowed(w.status)
}

// room is the largest body that goes in the reply message.
func (w *responseWriter) room() int64 {
	if w.inline == 0 {
		w.inline = w.limit
		if w.srv != nil {
			w.inline = max(w.limit-headerSize(w.header), 1)
		}
	}
	return w.inline
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.streaming {
		w.buf.Write(p)
		if e := w.sendBuffered(false); e != nil {
			w.err = e
			return 0, e
		}
		return len(p), nil
	}
	if int64(w.buf.Len()+len(p)) > w.room() {
		if !w.canStream() {
			w.err = tooLargeResponse(w.limit)
			return 0, w.err
		}
		w.buf.Write(p)
		if e := w.startStream(); e != nil {
			w.err = e
			return 0, e
		}
		return len(p), nil
	}
	return w.buf.Write(p)
}

// Flush starts streaming the response, as a handler that flushes wants its
// bytes on their way (server-sent events).
func (w *responseWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.err != nil || !w.canStream() {
		return
	}
	var e *bus.Error
	if w.streaming {
		e = w.sendBuffered(true)
	} else {
		e = w.startStream()
	}
	if e != nil {
		w.err = e
	}
}

// ReadFrom lets io.Copy read straight into the buffer.
func (w *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.srv != nil {
		return io.Copy(writerOnly{w}, r)
	}
	return w.readInline(r)
}

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// readInline reads a body that goes in the reply message.
func (w *responseWriter) readInline(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.err != nil {
		return 0, w.err
	}
	room := w.limit - int64(w.buf.Len())
	n, err := w.buf.ReadFrom(io.LimitReader(r, room+1))
	if int64(w.buf.Len()) > w.limit {
		w.err = tooLargeResponse(w.limit)
		return n, w.err
	}
	return n, err
}

// reset forgets a partial response, before the request is sent again.
func (w *responseWriter) reset() {
	w.header = nil
	w.status = 0
	w.buf.Reset()
	w.err = nil
	w.inline = 0
}

// setMeshError makes the reply a mesh failure instead of the handler's
// response (the Upstream handler uses it for connection failures).
func (w *responseWriter) setMeshError(e *bus.Error) { w.err = e }

// closeStream forgets the call's stream state at the end of the call.
func (w *responseWriter) closeStream() {
	if w.cs != nil {
		w.srv.closeStream(w.cs)
	}
}

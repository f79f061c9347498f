package proxy

import (
	"bytes"
	"io"
	"net/http"

	"github.com/natsmesh/natsmesh/bus"
)

// responseWriter collects a handler's response for one reply message. A body
// that would not fit in a message is refused as soon as it grows past the
// limit, so a handler's large output is not buffered in full.
type responseWriter struct {
	header http.Header
	status int
	buf    *bytes.Buffer
	limit  int64
	err    *bus.Error
}

var (
	_ http.ResponseWriter = (*responseWriter)(nil)
	_ io.ReaderFrom       = (*responseWriter)(nil)
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

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.err != nil {
		return 0, w.err
	}
	if int64(w.buf.Len()+len(p)) > w.limit {
		w.err = tooLargeResponse(w.limit)
		return 0, w.err
	}
	return w.buf.Write(p)
}

// ReadFrom lets io.Copy read straight into the buffer.
func (w *responseWriter) ReadFrom(r io.Reader) (int64, error) {
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
}

// setMeshError makes the reply a mesh failure instead of the handler's
// response (the Upstream handler uses it for connection failures).
func (w *responseWriter) setMeshError(e *bus.Error) { w.err = e }

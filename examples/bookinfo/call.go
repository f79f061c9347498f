package bookinfo

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Propagated lists the headers an app copies from the request it serves to
// the calls it makes: the W3C trace context and baggage, the request id, and
// the end user that routes may match on.
var Propagated = []string{"traceparent", "tracestate", "baggage", "x-request-id", "x-user"}

// caller makes an app's calls to other services through its sidecar.
type caller struct {
	client  *http.Client
	timeout time.Duration
}

func newCaller(proxy func(*http.Request) (*url.URL, error), timeout time.Duration) *caller {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = proxy
	return &caller{client: &http.Client{Transport: tr, Timeout: timeout}, timeout: timeout}
}

// answer is what a call brought back: the decoded body, or why there is
// none.
type answer struct {
	Instance string // Mesh-Instance: who served it
	Header   http.Header
	Err      error
}

// callError is a failed call, told the way the page shows it.
type callError struct {
	Status    int
	MeshError string // the Mesh-Error code, when the mesh failed the call
	Detail    string
}

func (e *callError) Error() string {
	var b strings.Builder
	if e.Status != 0 {
		fmt.Fprintf(&b, "%d %s", e.Status, http.StatusText(e.Status))
	}
	if e.MeshError != "" {
		fmt.Fprintf(&b, ", Mesh-Error: %s", e.MeshError)
	}
	if e.Detail != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Detail)
	}
	return b.String()
}

// getJSON calls target on behalf of in, passing on its propagated headers, and
// decodes the JSON answer into v.
func (c *caller) getJSON(in *http.Request, target string, v any) answer {
	req, err := http.NewRequestWithContext(in.Context(), http.MethodGet, target, nil)
	if err != nil {
		return answer{Err: err}
	}
	for _, h := range Propagated {
		if val := in.Header.Get(h); val != "" {
			req.Header.Set(h, val)
		}
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && ue.Timeout() {
			return answer{Err: &callError{Detail: fmt.Sprintf("no answer within %s", c.timeout)}}
		}
		return answer{Err: &callError{Detail: err.Error()}}
	}
	defer resp.Body.Close()
	a := answer{Instance: resp.Header.Get("Mesh-Instance"), Header: resp.Header}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		a.Err = &callError{Status: resp.StatusCode, Detail: "reading the answer: " + err.Error()}
		return a
	}
	if resp.StatusCode != http.StatusOK {
		a.Err = &callError{Status: resp.StatusCode, MeshError: resp.Header.Get("Mesh-Error"), Detail: strings.TrimSpace(string(body))}
		return a
	}
	if err := json.Unmarshal(body, v); err != nil {
		a.Err = &callError{Status: resp.StatusCode, Detail: "not the JSON expected: " + err.Error()}
	}
	return a
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// bookID is the {id} of a request: a positive integer, or a 400 answer.
func bookID(w http.ResponseWriter, r *http.Request) (int, bool) {
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil || id <= 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "the book id must be a positive integer"})
		return 0, false
	}
	return id, true
}

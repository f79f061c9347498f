//go:build unix

package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestStreamEarlyAnswer: an app that answers a large upload without reading
// its body (runApp's /work ignores the body; think 401 or 413 from the app)
// must give the client the app's answer, as a direct call does, not
// 502 upstream-unreachable; and a few such calls must not open the breaker.
func TestStreamEarlyAnswer(t *testing.T) {
	m := startStreamMesh(t, natsmeshBin(t))
	for i := range 7 {
		for _, chunked := range []bool{false, true} {
			req := m.request(t.Context(), http.MethodPost, "/work?ms=0", newPattern(10*mib), 10*mib)
			if chunked {
				req.ContentLength = -1
			}
			resp, err := m.hc.Do(req)
			if err != nil {
				t.Fatalf("call %d (chunked %v): %v", i, chunked, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(b), "app=files-1") {
				t.Errorf("call %d (chunked %v): status %d, Mesh-Error %q, body %q; want the app's 200",
					i, chunked, resp.StatusCode, resp.Header.Get("Mesh-Error"), strings.TrimSpace(string(b)))
			}
		}
	}
}

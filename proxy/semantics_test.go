package proxy_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/traffic"
	"github.com/natsmesh/natsmesh/sidecar"
)

// HTTP semantics that must survive app → sidecar → NATS → sidecar → app and
// back unchanged (issue 2, point 5). Every case runs in every combination of
// how the caller reaches the mesh (proxy form, Host form, library Transport)
// and how the callee is served (app behind a sidecar, http.Handler served in
// library mode).

var (
	// sizedBody has a known length, so Content-Length can be checked.
	sizedBody = bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\n"), 333) // 12321 bytes
	smallBody = "a short answer\n"
	// gzBody is a gzip stream; it must travel compressed, byte for byte.
	gzBody = gzipOf(strings.Repeat("natsmesh carries bodies as they are. ", 200))
	// bigValue is one header value of 60 KiB, with a pattern so that a
	// truncated or reordered value shows.
	bigValue = strings.Repeat("0123456789abcdef", 60*1024/16)
)

func gzipOf(s string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = io.WriteString(zw, s)
	_ = zw.Close()
	return b.Bytes()
}

// semanticsApp records every request and answers as its X-Scenario header asks.
func semanticsApp(rec *recorder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusInternalServerError)
			return
		}
		rec.record(r, body)
		h := w.Header()
		code, _ := strconv.Atoi(r.Header.Get("X-Code"))
		if code == 0 {
			code = http.StatusOK
		}
		switch r.Header.Get("X-Scenario") {
		case "echo":
			_, _ = w.Write(body)
		case "status":
			w.WriteHeader(code)
			if code != http.StatusNoContent && code != http.StatusNotModified {
				fmt.Fprintf(w, "status %d\n", code)
			}
		case "redirect":
			h.Set("Location", "/elsewhere?from=%E2%9C%93")
			w.WriteHeader(code)
		case "cookies":
			h.Add("Set-Cookie", "a=1; Path=/")
			h.Add("Set-Cookie", "b=2; Path=/")
			h.Add("Set-Cookie", "c=3; Path=/")
			h["X-Multi-Echo"] = r.Header["X-Multi"]
		case "sized": // a known length, as a file server sends it
			h.Set("Content-Type", "text/plain; charset=utf-8")
			h.Set("Content-Length", strconv.Itoa(len(sizedBody)))
			_, _ = w.Write(sizedBody)
		case "small": // no Content-Length: net/http counts a short body itself
			_, _ = io.WriteString(w, smallBody)
		case "gzip":
			h.Set("Content-Type", "text/plain; charset=utf-8")
			h.Set("Content-Encoding", "gzip")
			_, _ = w.Write(gzBody)
		case "empty":
			h.Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
		case "big-header":
			h.Set("X-Big", bigValue)
			for i := range 40 {
				h.Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 64))
			}
		case "hop":
			h.Set("Connection", "X-Resp-Hop")
			h.Set("X-Resp-Hop", "1")
			h.Set("Keep-Alive", "timeout=5")
			h.Set("X-Resp-End", "kept")
		case "reserved":
			h.Set("Status", "503")
			h.Set("Nats-Msg-Id", "resp-msg-1")
			h.Set("Description", "resp desc")
			h.Set("Content-Length", "0")
			w.WriteHeader(code)
		case "spoof":
			h.Set("Mesh-Instance", "fake-instance")
			h.Set("Mesh-Error", "timeout")
			h.Set("Mesh-Status", "599")
			_, _ = io.WriteString(w, "ok\n")
		default:
			_, _ = io.WriteString(w, "ok\n")
		}
	})
}

// semEnv is one mesh with service "svc" and the client under test.
type semEnv struct {
	c                meshClient
	rec              *recorder
	instance         string // the callee's instance id
	appBehindSidecar bool   // the callee is an HTTP app behind a sidecar, not a library handler
}

// request makes a request for svc carrying a fresh X-Test-Id and scenario.
func (e *semEnv) request(t *testing.T, method, host, uri, scenario string, body io.Reader) (*http.Request, string) {
	t.Helper()
	req := e.c.newRequest(t, method, host, uri, body)
	id := newTestID()
	req.Header.Set("X-Test-Id", id)
	if scenario != "" {
		req.Header.Set("X-Scenario", scenario)
	}
	return req, id
}

var semanticCases = []struct {
	name string
	fn   func(t *testing.T, e *semEnv)
}{
	{"methods", testMethods},
	{"status codes", testStatusCodes},
	{"HEAD and Content-Length", testHeadAndLength},
	{"redirects not followed", testRedirects},
	{"repeated headers", testRepeatedHeaders},
	{"raw request URI", testRawRequestURI},
	{"original Host", testOriginalHost},
	{"gzip bodies byte for byte", testGzip},
	{"empty vs absent bodies", testEmptyBodies},
	{"64 KiB of headers", testBigHeaders},
	{"Mesh-Caller stamped, spoof stripped", testMeshCaller},
	{"Mesh-Instance", testMeshInstance},
	{"hop-by-hop headers", testHopByHop},
	{"trace context", testTraceContext},
	{"headers NATS reserves", testReservedHeaders},
}

func TestSemantics(t *testing.T) {
	t.Parallel()
	for _, callee := range []string{"sidecar-callee", "library-callee"} {
		t.Run(callee, func(t *testing.T) {
			t.Parallel()
			s := meshtest.RunServer(t)
			rec := newRecorder()
			var instance string
			if callee == "sidecar-callee" {
				_, sc := startCallee(t, s, "svc", semanticsApp(rec), noOutlier)
				instance = sc.Instance()
			} else {
				srv := serveHandler(t, s, semanticsApp(rec), proxy.ServeConfig{Service: "svc"})
				instance = srv.Instance()
			}
			// These cases check what one HTTP exchange becomes; retries
			// and breakers, which would repeat or refuse the app's 5xx
			// answers, are tested on their own.
			caller := startCaller(t, s, "frontend", singleAttempt)
			clients := []meshClient{
				sidecarClient(t, formProxy, caller, "frontend"),
				sidecarClient(t, formHost, caller, "frontend"),
				libraryClient(t, s, proxy.TransportConfig{Caller: "backoffice", Retry: traffic.RetryPolicy{Retries: -1}, DisableBreaker: true}),
			}
			for _, c := range clients {
				t.Run(c.form, func(t *testing.T) {
					for _, tc := range semanticCases {
						t.Run(tc.name, func(t *testing.T) {
							t.Parallel()
							tc.fn(t, &semEnv{c: c, rec: rec, instance: instance, appBehindSidecar: callee == "sidecar-callee"})
						})
					}
				})
			}
		})
	}
}

func testMethods(t *testing.T, e *semEnv) {
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodPatch, http.MethodOptions, "PURGE"} {
		var payload string
		var body io.Reader
		if m != http.MethodGet && m != http.MethodOptions && m != http.MethodDelete {
			payload = "payload of " + m
			body = strings.NewReader(payload)
		}
		req, id := e.request(t, m, "svc", "/method", "echo", body)
		resp, got := e.c.do(t, req)
		if resp.StatusCode != http.StatusOK || string(got) != payload {
			t.Fatalf("%s: status %d body %q, want 200 %q", m, resp.StatusCode, got, payload)
		}
		seen := e.rec.one(t, id)
		if seen.Method != m || string(seen.Body) != payload {
			t.Fatalf("%s: the app saw method %q body %q", m, seen.Method, seen.Body)
		}
	}
}

func testStatusCodes(t *testing.T, e *semEnv) {
	for _, code := range []int{200, 201, 202, 204, 304, 400, 404, 500, 502, 503} {
		req, _ := e.request(t, http.MethodGet, "svc", "/status", "status", nil)
		req.Header.Set("X-Code", strconv.Itoa(code))
		resp, body := e.c.do(t, req)
		if resp.StatusCode != code {
			t.Fatalf("status %d, want %d", resp.StatusCode, code)
		}
		if me := resp.Header.Get(bus.HeaderError); me != "" {
			t.Fatalf("the app's %d carries Mesh-Error %q; it is not a mesh failure", code, me)
		}
		want := fmt.Sprintf("status %d\n", code)
		if code == http.StatusNoContent || code == http.StatusNotModified {
			want = ""
			if cl := resp.Header.Get("Content-Length"); code == http.StatusNoContent && cl != "" {
				t.Fatalf("204 carries Content-Length %q", cl)
			}
		}
		if string(body) != want {
			t.Fatalf("status %d: body %q, want %q", code, body, want)
		}
	}
}

func testHeadAndLength(t *testing.T, e *semEnv) {
	// "sized" sets Content-Length as a file server does; "small" leaves it
	// to the server, which counts a short body itself, for HEAD too.
	for _, tc := range []struct {
		scenario string
		body     []byte
	}{{"sized", sizedBody}, {"small", []byte(smallBody)}} {
		req, _ := e.request(t, http.MethodGet, "svc", "/"+tc.scenario, tc.scenario, nil)
		resp, body := e.c.do(t, req)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, tc.body) {
			t.Fatalf("GET %s: status %d, %d bytes, want 200 and the %d bytes sent", tc.scenario, resp.StatusCode, len(body), len(tc.body))
		}
		wantCL := strconv.Itoa(len(tc.body))
		if resp.ContentLength != int64(len(tc.body)) {
			t.Fatalf("GET %s: Content-Length %d, want %d", tc.scenario, resp.ContentLength, len(tc.body))
		}
		if e.c.form != formLibrary && resp.Header.Get("Content-Length") != wantCL {
			t.Fatalf("GET %s: Content-Length header %q, want %s", tc.scenario, resp.Header.Get("Content-Length"), wantCL)
		}

		req, id := e.request(t, http.MethodHead, "svc", "/"+tc.scenario, tc.scenario, nil)
		resp, body = e.c.do(t, req)
		if resp.StatusCode != http.StatusOK || len(body) != 0 {
			t.Fatalf("HEAD %s: status %d, %d bytes of body, want 200 and none", tc.scenario, resp.StatusCode, len(body))
		}
		if resp.ContentLength != int64(len(tc.body)) || resp.Header.Get("Content-Length") != wantCL {
			t.Fatalf("HEAD %s: Content-Length %d (header %q), want the GET's %d", tc.scenario, resp.ContentLength, resp.Header.Get("Content-Length"), len(tc.body))
		}
		if got := e.rec.one(t, id).Method; got != http.MethodHead {
			t.Fatalf("the app saw %s for HEAD", got)
		}
	}
}

func testRedirects(t *testing.T, e *semEnv) {
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		req, id := e.request(t, http.MethodGet, "svc", "/old", "redirect", nil)
		req.Header.Set("X-Code", strconv.Itoa(code))
		resp, _ := e.c.do(t, req)
		if resp.StatusCode != code {
			t.Fatalf("status %d, want the app's %d", resp.StatusCode, code)
		}
		if loc := resp.Header.Get("Location"); loc != "/elsewhere?from=%E2%9C%93" {
			t.Fatalf("Location %q, want the app's", loc)
		}
		e.rec.one(t, id) // followed, the app would have seen a second request
	}
}

func testRepeatedHeaders(t *testing.T, e *semEnv) {
	req, id := e.request(t, http.MethodGet, "svc", "/cookies", "cookies", nil)
	req.Header["X-Multi"] = []string{"one", "two"}
	resp, _ := e.c.do(t, req)
	wantCookies := []string{"a=1; Path=/", "b=2; Path=/", "c=3; Path=/"}
	if got := resp.Header["Set-Cookie"]; !slices.Equal(got, wantCookies) {
		t.Fatalf("Set-Cookie %q, want %q in that order", got, wantCookies)
	}
	if got := e.rec.one(t, id).Header["X-Multi"]; !slices.Equal(got, []string{"one", "two"}) {
		t.Fatalf("the app saw X-Multi %q, want [one two] in that order", got)
	}
	if got := resp.Header["X-Multi-Echo"]; !slices.Equal(got, []string{"one", "two"}) {
		t.Fatalf("X-Multi-Echo %q, want [one two] in that order", got)
	}
}

func testRawRequestURI(t *testing.T, e *semEnv) {
	for _, uri := range []string{
		"/p%2Fq/a%20b?x=%E2%9C%93&y=a+b&z=ü&empty=",
		"/caf%C3%A9/ü?q=%26%3D%3F&q=2&sp=a%20b+c",
		"/x?",
		"/",
		"/a;b=c/d?e=f;g",
	} {
		for _, verbatim := range []bool{false, true} {
			req, id := e.request(t, http.MethodGet, "svc", uri, "", nil)
			if verbatim {
				// net/http re-escapes some paths (a raw "ü"); make it send
				// the URI exactly as written.
				e.c.setRawURI(req, "svc", uri)
			} else if strings.Contains(uri, "/ü") {
				continue
			}
			resp, _ := e.c.do(t, req)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %d", uri, resp.StatusCode)
			}
			if got := e.rec.one(t, id).RequestURI; got != uri {
				t.Fatalf("the app saw request URI %q, want %q byte for byte", got, uri)
			}
		}
	}
}

func testOriginalHost(t *testing.T, e *semEnv) {
	for _, host := range []string{"svc", "svc:9080", "svc.mesh", "svc.mesh:9080"} {
		req, id := e.request(t, http.MethodGet, host, "/host", "", nil)
		resp, _ := e.c.do(t, req)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", host, resp.StatusCode)
		}
		if got := e.rec.one(t, id).Host; got != host {
			t.Fatalf("the app saw Host %q, want %q as sent", got, host)
		}
	}
}

func testGzip(t *testing.T, e *semEnv) {
	req, id := e.request(t, http.MethodPost, "svc", "/gzip", "gzip", bytes.NewReader(gzBody))
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Content-Type", "text/plain")
	resp, body := e.c.do(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if resp.Header.Get("Content-Encoding") != "gzip" || resp.Uncompressed {
		t.Fatalf("Content-Encoding %q (uncompressed %v), want gzip kept", resp.Header.Get("Content-Encoding"), resp.Uncompressed)
	}
	if !bytes.Equal(body, gzBody) {
		t.Fatalf("response body: %d bytes differing from the app's %d compressed bytes", len(body), len(gzBody))
	}
	seen := e.rec.one(t, id)
	if !bytes.Equal(seen.Body, gzBody) || seen.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("the app saw %d body bytes with Content-Encoding %q, want the %d compressed bytes and gzip",
			len(seen.Body), seen.Header.Get("Content-Encoding"), len(gzBody))
	}
}

func testEmptyBodies(t *testing.T, e *semEnv) {
	// An empty POST body and a GET with none both reach the app as no body.
	req, id := e.request(t, http.MethodPost, "svc", "/empty-post", "", strings.NewReader(""))
	if resp, _ := e.c.do(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("POST: status %d", resp.StatusCode)
	}
	if seen := e.rec.one(t, id); seen.ContentLength != 0 || len(seen.Body) != 0 || seen.Method != http.MethodPost {
		t.Fatalf("empty POST: the app saw %s, Content-Length %d, %d body bytes", seen.Method, seen.ContentLength, len(seen.Body))
	} else if cl := seen.Header.Get("Content-Length"); e.appBehindSidecar && cl != "0" {
		t.Fatalf("empty POST: the app saw Content-Length %q, want 0 as HTTP clients send it", cl)
	}
	req, id = e.request(t, http.MethodGet, "svc", "/no-body", "", nil)
	if resp, _ := e.c.do(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: status %d", resp.StatusCode)
	}
	seen := e.rec.one(t, id)
	if seen.ContentLength != 0 || len(seen.Body) != 0 {
		t.Fatalf("GET: the app saw Content-Length %d, %d body bytes", seen.ContentLength, len(seen.Body))
	}
	if cl, te := seen.Header.Get("Content-Length"), seen.Header.Get("Transfer-Encoding"); cl != "" || te != "" {
		t.Fatalf("GET without body: the app saw Content-Length %q Transfer-Encoding %q, want neither", cl, te)
	}

	// An explicitly empty 200 answer says Content-Length: 0.
	req, _ = e.request(t, http.MethodGet, "svc", "/empty", "empty", nil)
	resp, body := e.c.do(t, req)
	if resp.StatusCode != http.StatusOK || len(body) != 0 {
		t.Fatalf("empty answer: status %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp.ContentLength != 0 || resp.Header.Get("Content-Length") != "0" {
		t.Fatalf("empty answer: Content-Length %d (header %q), want 0", resp.ContentLength, resp.Header.Get("Content-Length"))
	}
}

func testBigHeaders(t *testing.T, e *semEnv) {
	req, id := e.request(t, http.MethodGet, "svc", "/big", "big-header", nil)
	req.Header.Set("X-Big", bigValue)
	for i := range 40 {
		req.Header.Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("q", 64))
	}
	resp, _ := e.c.do(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := e.rec.one(t, id).Header.Get("X-Big"); got != bigValue {
		t.Fatalf("the app saw X-Big of %d bytes, want the %d sent", len(got), len(bigValue))
	}
	if got := resp.Header.Get("X-Big"); got != bigValue {
		t.Fatalf("response X-Big of %d bytes, want the app's %d", len(got), len(bigValue))
	}
	if got := resp.Header.Get("X-Pad-39"); got != strings.Repeat("p", 64) {
		t.Fatalf("response X-Pad-39 = %q", got)
	}
}

func testMeshCaller(t *testing.T, e *semEnv) {
	want := []string{e.c.caller}
	req, id := e.request(t, http.MethodGet, "svc", "/caller", "", nil)
	e.c.do(t, req)
	if got := e.rec.one(t, id).Header[bus.HeaderCaller]; !slices.Equal(got, want) {
		t.Fatalf("the app saw Mesh-Caller %q, want %q", got, want)
	}

	req, id = e.request(t, http.MethodGet, "svc", "/caller", "", nil)
	req.Header.Set(bus.HeaderCaller, "evil")
	req.Header["mesh-caller"] = []string{"evil-too"}
	e.c.do(t, req)
	if got := e.rec.one(t, id).Header[bus.HeaderCaller]; !slices.Equal(got, want) {
		t.Fatalf("an app-sent Mesh-Caller got through: the app saw %q, want %q", got, want)
	}
}

func testMeshInstance(t *testing.T, e *semEnv) {
	resp, _ := e.c.get(t, "svc", "/instance")
	if got := resp.Header.Get(bus.HeaderInstance); got != e.instance {
		t.Fatalf("Mesh-Instance %q, want the callee's %q", got, e.instance)
	}
	// An app cannot pass itself off as another instance or as a mesh failure.
	req, _ := e.request(t, http.MethodGet, "svc", "/spoof", "spoof", nil)
	resp, body := e.c.do(t, req)
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Fatalf("status %d body %q, want the app's 200", resp.StatusCode, body)
	}
	if got := resp.Header[bus.HeaderInstance]; !slices.Equal(got, []string{e.instance}) {
		t.Fatalf("Mesh-Instance %q, want only the callee's %q", got, e.instance)
	}
	if got := resp.Header.Get(bus.HeaderError); got != "" {
		t.Fatalf("the app's Mesh-Error %q reached the caller", got)
	}
}

func testHopByHop(t *testing.T, e *semEnv) {
	req, id := e.request(t, http.MethodGet, "svc", "/hop", "hop", nil)
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "1")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Connection", "keep-alive")
	req.Header.Set("X-End", "kept")
	resp, _ := e.c.do(t, req)
	seen := e.rec.one(t, id)
	for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Connection"} {
		if v, ok := seen.Header[k]; ok {
			t.Errorf("hop-by-hop request header %s: %q reached the app", k, v)
		}
	}
	if seen.Header.Get("X-End") != "kept" {
		t.Errorf("end-to-end request header X-End lost: %q", seen.Header)
	}
	for _, k := range []string{"X-Resp-Hop", "Keep-Alive"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("hop-by-hop response header %s: %q reached the caller", k, v)
		}
	}
	if got := resp.Header.Get("Connection"); strings.Contains(got, "X-Resp-Hop") {
		t.Errorf("the app's Connection header %q reached the caller", got)
	}
	if resp.Header.Get("X-Resp-End") != "kept" {
		t.Errorf("end-to-end response header X-Resp-End lost: %q", resp.Header)
	}
}

func testTraceContext(t *testing.T, e *semEnv) {
	trace := map[string]string{
		"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"tracestate":  "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
		"baggage":     "userId=alice,isProduction=false",
	}
	req, id := e.request(t, http.MethodGet, "svc", "/trace", "", nil)
	for k, v := range trace {
		req.Header.Set(k, v)
	}
	e.c.do(t, req)
	seen := e.rec.one(t, id)
	for k, v := range trace {
		if got := seen.Header.Get(k); got != v {
			t.Errorf("the app saw %s %q, want %q", k, got, v)
		}
	}
}

func testReservedHeaders(t *testing.T, e *semEnv) {
	// Headers named like NATS's own survive in both directions, and an
	// empty answer with "Status: 503" is the app's answer, not NATS's "no
	// responders".
	for _, code := range []int{http.StatusOK, http.StatusServiceUnavailable} {
		req, id := e.request(t, http.MethodGet, "svc", "/reserved", "reserved", nil)
		req.Header.Set("X-Code", strconv.Itoa(code))
		req.Header.Set("Status", "req-status")
		req.Header.Set("Nats-Msg-Id", "req-msg-1")
		req.Header.Set("Description", "req desc")
		resp, body := e.c.do(t, req)
		seen := e.rec.one(t, id)
		for k, v := range map[string]string{"Status": "req-status", "Nats-Msg-Id": "req-msg-1", "Description": "req desc"} {
			if got := seen.Header[k]; !slices.Equal(got, []string{v}) {
				t.Errorf("the app saw request header %s = %q, want [%s]", k, got, v)
			}
		}
		if resp.StatusCode != code || len(body) != 0 {
			t.Fatalf("status %d body %q, want the app's empty %d", resp.StatusCode, body, code)
		}
		if me := resp.Header.Get(bus.HeaderError); me != "" {
			t.Fatalf("the app's answer with Status: 503 became Mesh-Error %q", me)
		}
		for k, v := range map[string]string{"Status": "503", "Nats-Msg-Id": "resp-msg-1", "Description": "resp desc"} {
			if got := resp.Header[k]; !slices.Equal(got, []string{v}) {
				t.Errorf("response header %s = %q, want [%s]", k, got, v)
			}
		}
	}
}

// namedApp answers with its own name, to tell instances apart.
func namedApp(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, name+"\n")
	})
}

func TestQueueGroupSpreadsLoad(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	_, a := startCallee(t, s, "svc", namedApp("app-a"), nil)
	_, b := startCallee(t, s, "svc", namedApp("app-b"), nil)
	la := serveHandler(t, s, namedApp("lib-a"), proxy.ServeConfig{Service: "lib"})
	lb := serveHandler(t, s, namedApp("lib-b"), proxy.ServeConfig{Service: "lib"})
	caller := startCaller(t, s, "frontend", nil)

	for _, tc := range []struct {
		service string
		c       meshClient
		want    map[string]string // instance → the body its app answers
	}{
		{"svc", sidecarClient(t, formProxy, caller, "frontend"), map[string]string{a.Instance(): "app-a\n", b.Instance(): "app-b\n"}},
		{"lib", libraryClient(t, s, proxy.TransportConfig{}), map[string]string{la.Instance(): "lib-a\n", lb.Instance(): "lib-b\n"}},
	} {
		counts := make(map[string]int)
		for range 200 {
			resp, body := tc.c.get(t, tc.service, "/")
			inst := resp.Header.Get(bus.HeaderInstance)
			want, ok := tc.want[inst]
			if resp.StatusCode != http.StatusOK || !ok || string(body) != want {
				t.Fatalf("%s: status %d Mesh-Instance %q body %q", tc.service, resp.StatusCode, inst, body)
			}
			counts[inst]++
		}
		for inst := range tc.want {
			if counts[inst] == 0 {
				t.Errorf("%s: instance %s got none of 200 requests: %v", tc.service, inst, counts)
			}
		}
	}
}

// mesh.inst.<svc>.<id>.<caller> reaches exactly that instance; NATS answers "no responders"
// at once for an instance that is gone.
func TestInstanceSubject(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	_, a := startCallee(t, s, "svc", namedApp("app-a"), nil)
	_, b := startCallee(t, s, "svc", namedApp("app-b"), nil)
	nc := meshtest.Connect(t, s)
	subj := bus.Subjects{}

	request := func(inst string) (*nats.Msg, error) {
		h := nats.Header{}
		bus.EncodeRequest(h, http.MethodGet, "/who?x=%E2%9C%93", "svc", http.Header{"X-Probe": {"1"}})
		return nc.RequestMsg(&nats.Msg{Subject: subj.Inst("svc", inst), Header: h}, 5*time.Second)
	}
	for _, inst := range []struct{ id, body string }{{a.Instance(), "app-a\n"}, {b.Instance(), "app-b\n"}} {
		for range 20 {
			m, err := request(inst.id)
			if err != nil {
				t.Fatalf("request %s: %v", subj.Inst("svc", inst.id), err)
			}
			if got := bus.First(m.Header, bus.HeaderInstance); got != inst.id || string(m.Data) != inst.body {
				t.Fatalf("%s answered by %q with %q, want %s with %q", subj.Inst("svc", inst.id), got, m.Data, inst.id, inst.body)
			}
			if st := bus.First(m.Header, bus.HeaderStatus); st != "200" {
				t.Fatalf("Mesh-Status %q", st)
			}
		}
	}
	start := time.Now()
	if _, err := request("svc-gone"); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("request to a missing instance: %v, want no responders", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("no responders took %s", d)
	}
}

// Library mode: a Go program calls with proxy.Transport and serves an
// http.Handler with proxy.Serve, no sidecar involved.
func TestLibraryMode(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	rec := newRecorder()
	g := newGate()
	defer g.open()
	srv := serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.record(r, body)
		if r.URL.Path == "/block" {
			g.wait(r.Context())
			return
		}
		w.Header().Set("Location", "/items/7")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "created "+string(body))
	}), proxy.ServeConfig{Service: "orders", Instance: "orders-1"})

	named := libraryClient(t, s, proxy.TransportConfig{Caller: "checkout"})
	req, err := http.NewRequest(http.MethodPost, "http://orders/items?sku=a%2Fb", strings.NewReader("item"))
	if err != nil {
		t.Fatal(err)
	}
	id := newTestID()
	req.Header.Set("X-Test-Id", id)
	resp, body := named.do(t, req)
	if resp.StatusCode != http.StatusCreated || string(body) != "created item" || resp.Header.Get("Location") != "/items/7" {
		t.Fatalf("status %d body %q Location %q", resp.StatusCode, body, resp.Header.Get("Location"))
	}
	if got := resp.Header.Get(bus.HeaderInstance); got != "orders-1" {
		t.Fatalf("Mesh-Instance %q, want orders-1", got)
	}
	seen := rec.one(t, id)
	if got := seen.Header[bus.HeaderCaller]; !slices.Equal(got, []string{"checkout"}) {
		t.Fatalf("the handler saw Mesh-Caller %q, want the Transport's Caller [checkout]", got)
	}
	if seen.Method != http.MethodPost || seen.RequestURI != "/items?sku=a%2Fb" || seen.Host != "orders" || string(seen.Body) != "item" {
		t.Fatalf("the handler saw %s %s Host %s body %q", seen.Method, seen.RequestURI, seen.Host, seen.Body)
	}

	// A handler that never touches its headers still answers HEAD with the
	// length of the body it would send, and no body.
	serveHandler(t, s, namedApp("plain"), proxy.ServeConfig{Service: "plain"})
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		resp, body := named.do(t, named.newRequest(t, method, "plain", "/", nil))
		want := "plain\n"
		if method == http.MethodHead {
			want = ""
		}
		if resp.StatusCode != http.StatusOK || string(body) != want || resp.ContentLength != int64(len("plain\n")) {
			t.Fatalf("%s: status %d body %q Content-Length %d", method, resp.StatusCode, body, resp.ContentLength)
		}
	}

	// A Transport with no Caller sends none.
	anon := libraryClient(t, s, proxy.TransportConfig{})
	req = anon.newRequest(t, http.MethodGet, "orders", "/", nil)
	id = newTestID()
	req.Header.Set("X-Test-Id", id)
	anon.do(t, req)
	if got, ok := rec.one(t, id).Header[bus.HeaderCaller]; ok {
		t.Fatalf("the handler saw Mesh-Caller %q from a Transport without Caller", got)
	}

	// Cancelling the request's context ends RoundTrip with the context's error.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req = anon.newRequest(t, http.MethodGet, "orders", "/block", nil).WithContext(ctx)
	errc := make(chan error, 1)
	go func() {
		resp, err := anon.hc.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	g.waitArrived(t, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v, want context.Canceled", err)
	}
	g.open()
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := srv.Inflight(); n != 0 {
			return fmt.Errorf("%d requests in flight", n)
		}
		return nil
	})
	if st := srv.Stats(); st.Served != 3 || st.Rejected != 0 || st.Malformed != 0 {
		t.Fatalf("Stats %+v, want 3 served", st)
	}
}

// The request as it travels on NATS (DESIGN.md, "Wire format of a proxied
// call"), seen by a plain NATS subscriber standing in for a callee.
func TestWireFormat(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	got := make(chan *nats.Msg, 1)
	sub, err := nc.QueueSubscribe(bus.Subjects{}.Calls("wire"), bus.Subjects{}.QueueGroup("wire"), func(m *nats.Msg) {
		got <- m
		h := nats.Header{}
		bus.EncodeResponse(h, http.StatusCreated, "wire-1", http.Header{"X-Reply": {"r"}, "Status": {"503"}})
		_ = m.RespondMsg(&nats.Msg{Header: h, Data: []byte("wired")})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Timeout = 2 * time.Second })
	c := sidecarClient(t, formProxy, caller, "frontend")

	req := c.newRequest(t, http.MethodPost, "wire:9080", "/w?a=%20&b=ü", strings.NewReader("body"))
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	req.Header.Set("Status", "x")
	req.Header.Set("Nats-Msg-Id", "y")
	req.Header.Set(bus.HeaderCaller, "evil")
	resp, body := c.do(t, req)
	if resp.StatusCode != http.StatusCreated || string(body) != "wired" || resp.Header.Get("X-Reply") != "r" ||
		resp.Header.Get("Status") != "503" || resp.Header.Get(bus.HeaderInstance) != "wire-1" {
		t.Fatalf("status %d body %q headers %v", resp.StatusCode, body, resp.Header)
	}

	m := <-got
	want := map[string]string{
		bus.HeaderMethod:       http.MethodPost,
		bus.HeaderPath:         "/w?a=%20&b=ü",
		bus.HeaderHost:         "wire:9080",
		"traceparent":          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"Mesh-Esc-Status":      "x",
		"Mesh-Esc-Nats-Msg-Id": "y",
	}
	// The caller travels as the subject's last token, where its identity's
	// permissions can pin it; the app's own Mesh-Caller does not travel.
	if m.Subject != "mesh.rpc.wire.frontend" {
		t.Errorf("subject %q, want mesh.rpc.wire.frontend", m.Subject)
	}
	if vv, ok := m.Header[bus.HeaderCaller]; ok {
		t.Errorf("NATS header Mesh-Caller = %q travels; the caller is the subject's", vv)
	}
	for k, v := range want {
		if vv := m.Header[k]; !slices.Equal(vv, []string{v}) {
			t.Errorf("NATS header %s = %q, want [%s]", k, vv, v)
		}
	}
	for _, k := range []string{"Traceparent", "Status", "Nats-Msg-Id"} {
		if vv, ok := m.Header[k]; ok {
			t.Errorf("NATS header %s = %q travels unescaped or not lower-cased", k, vv)
		}
	}
	ms, err := strconv.Atoi(bus.First(m.Header, bus.HeaderTimeout))
	if err != nil || ms <= 0 || ms > 2000 {
		t.Errorf("Mesh-Timeout %q, want the milliseconds left of the 2s timeout", bus.First(m.Header, bus.HeaderTimeout))
	}
	if string(m.Data) != "body" {
		t.Errorf("payload %q, want the request body", m.Data)
	}
}

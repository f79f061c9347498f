package bus

import (
	"net/http"
	"testing"

	"github.com/nats-io/nats.go"
)

func benchHeader() http.Header {
	return http.Header{
		"Accept":          {"application/json"},
		"Accept-Encoding": {"gzip"},
		"User-Agent":      {"Go-http-client/1.1"},
		"Traceparent":     {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		"Connection":      {"keep-alive"},
		"Content-Type":    {"application/json"},
	}
}

func BenchmarkEncodeRequest(b *testing.B) {
	hdr := benchHeader()
	b.ReportAllocs()
	for b.Loop() {
		h := make(nats.Header, len(hdr)+6)
		EncodeRequest(h, http.MethodGet, "/reviews/1?x=y", "reviews", hdr)
	}
}

func BenchmarkCopyToHTTP(b *testing.B) {
	h := make(nats.Header)
	EncodeRequest(h, http.MethodGet, "/reviews/1?x=y", "reviews", benchHeader())
	b.ReportAllocs()
	for b.Loop() {
		dst := make(http.Header, len(h))
		CopyToHTTP(dst, h)
	}
}

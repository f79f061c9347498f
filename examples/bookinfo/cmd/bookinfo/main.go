// Command bookinfo serves one app of the bookinfo sample as its own process,
// reaching the others through the sidecar named by HTTP_PROXY:
//
//	HTTP_PROXY=http://127.0.0.1:15003 bookinfo --service reviews --version v2 --listen 127.0.0.1:9082
//
// It prints "listening on http://ADDR" and stops on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/natsmesh/natsmesh/examples/bookinfo"
)

func main() {
	service := flag.String("service", "", "the app to serve: "+strings.Join(bookinfo.Services, ", "))
	version := flag.String("version", "v1", "its version: v1, and for reviews v2 (black stars) or v3 (red stars)")
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (port 0: a free one, printed)")
	flag.Parse()

	h, err := bookinfo.Handler(bookinfo.Config{Service: *service, Version: *version})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("bookinfo: --listen: %v", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown) // in-flight requests finish
	}()
	fmt.Printf("%s %s listening on http://%s\n", *service, *version, ln.Addr())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	<-stopped
}

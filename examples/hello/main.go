// Command hello is an ordinary HTTP app that knows nothing of NATS, for trying
// the mesh: GET / answers with its name, and GET /call/<service>[/path] calls
// another service by name through the HTTP proxy in $HTTP_PROXY (its sidecar)
// and shows the answer.
//
//	HTTP_PROXY=http://127.0.0.1:15001 hello --listen 127.0.0.1:8080 --name web
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	name := flag.String("name", "hello", "name this app answers with")
	flag.Parse()

	// http.DefaultTransport honours HTTP_PROXY, which points at the sidecar.
	client := &http.Client{Timeout: 20 * time.Second}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (called by %s)\n", *name, callerOf(r))
	})
	call := func(w http.ResponseWriter, r *http.Request) {
		service := r.PathValue("service")
		resp, err := client.Get("http://" + service + "/" + r.PathValue("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		w.WriteHeader(resp.StatusCode)
		fmt.Fprintf(w, "%s asked %s and got %s from instance %s: %s", *name, service, resp.Status, resp.Header.Get("Mesh-Instance"), body)
	}
	mux.HandleFunc("GET /call/{service}", call)
	mux.HandleFunc("GET /call/{service}/{path...}", call)
	log.Printf("%s listening on http://%s", *name, *listen)
	log.Fatal(http.ListenAndServe(*listen, mux))
}

func callerOf(r *http.Request) string {
	if c := r.Header.Get("Mesh-Caller"); c != "" {
		return c
	}
	return "a client outside the mesh"
}

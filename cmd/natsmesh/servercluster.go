package main

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/identity"
)

// clusterFlags make natsmesh server one of a cluster of natsmesh servers,
// named after nats-server's own flags.
type clusterFlags struct {
	name, clusterName, listen, routes, trust string
}

func (c *clusterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.name, "name", "", "this server's name, unique in its cluster (required with --cluster; default natsmesh)")
	fs.StringVar(&c.clusterName, "cluster-name", "natsmesh", "the cluster's name, the same on every server of it")
	fs.StringVar(&c.listen, "cluster", "", "HOST:PORT to take routes from the cluster's other servers on (default: no cluster)")
	fs.StringVar(&c.routes, "routes", "", "the other servers' --cluster addresses, as nats://HOST:PORT,...; every server may list every other, itself included")
	fs.StringVar(&c.trust, "trust", "", "directory of the mesh's trust roots (default DIR/trust, DIR being --data); the servers of one cluster share them: copy the first server's to the others")
}

// check validates the flags; it returns whether the server clusters.
func (c *clusterFlags) check() (bool, error) {
	if c.listen == "" {
		if c.routes != "" {
			return false, usagef("--routes needs --cluster HOST:PORT, where this server takes routes")
		}
		return false, nil
	}
	if c.name == "" {
		return false, usagef("--cluster needs --name: every server of a cluster needs a name of its own")
	}
	if err := bus.ValidateName("server", c.name); err != nil {
		return false, usagef("--name: %v", err)
	}
	if err := bus.ValidateName("cluster", c.clusterName); err != nil {
		return false, usagef("--cluster-name: %v", err)
	}
	if _, _, err := splitHostPort(c.listen); err != nil {
		return false, usagef("--cluster %q: %v; use HOST:PORT", c.listen, err)
	}
	for _, r := range c.routeList() {
		u, err := url.Parse(r)
		if err != nil || u.Scheme != "nats" || u.Host == "" {
			return false, usagef("--routes: %q is no route URL; use nats://HOST:PORT", r)
		}
	}
	return true, nil
}

func (c *clusterFlags) routeList() []string {
	var out []string
	for _, r := range strings.Split(c.routes, ",") {
		if r = strings.TrimSpace(r); r != "" {
			out = append(out, r)
		}
	}
	return out
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", p)
	}
	return host, port, nil
}

// trustDir is the directory of the trust roots.
func (c *clusterFlags) trustDir(data string) string {
	if c.trust != "" {
		return c.trust
	}
	return filepath.Join(data, trustDirName)
}

// cluster is the embedded server's cluster config, its routes authorised
// with the credentials the trust roots give (nil: none, without trust).
func (c *clusterFlags) cluster(a *identity.Authority) *embedded.Cluster {
	host, port, _ := splitHostPort(c.listen)
	if port == 0 {
		port = -1
	}
	cl := &embedded.Cluster{Name: c.clusterName, Host: host, Port: port}
	if a != nil {
		cl.User, cl.Password = a.RouteCredentials()
	}
	for _, r := range c.routeList() {
		u, _ := url.Parse(r)
		cl.Routes = append(cl.Routes, u)
	}
	return cl
}

package main

import (
	"flag"
	"net"
	"net/netip"
	"strings"

	"github.com/natsmesh/natsmesh/sidecar"
)

// egressFlags say where a sidecar's outbound listener listens and where it
// forwards the app's calls for hosts outside the mesh.
type egressFlags struct {
	mode         string
	allow        string
	listenPublic bool
}

func (f *egressFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.mode, "egress", string(sidecar.EgressAllowPublic), "calls to hosts outside the mesh: allow-public (public addresses only), allow (private ones too) or deny (only --egress-allow's); loopback, link-local (cloud metadata), unspecified addresses and the mesh's own ports are refused in every mode")
	fs.StringVar(&f.allow, "egress-allow", "", "comma-separated host:port destinations the app may reach whatever --egress refuses, and the only ports besides 443 that CONNECT reaches, for example db.internal:5432,127.0.0.1:6379")
	fs.BoolVar(&f.listenPublic, "listen-public", false, "allow --listen on an address other than loopback: whoever reaches it calls the mesh as this service")
}

// apply checks the flags and sets cfg.Egress; listen is --listen.
func (f *egressFlags) apply(cfg *sidecar.Config, listen string) error {
	switch m := sidecar.EgressMode(f.mode); m {
	case sidecar.EgressAllowPublic, sidecar.EgressAllow, sidecar.EgressDeny:
		cfg.Egress.Mode = m
	default:
		return usagef("--egress %q: use allow-public, allow or deny", f.mode)
	}
	if f.allow != "" {
		for _, d := range strings.Split(f.allow, ",") {
			d = strings.TrimSpace(d)
			if err := sidecar.ValidateDestination(d); err != nil {
				return usagef("--egress-allow: %v", err)
			}
			cfg.Egress.Allow = append(cfg.Egress.Allow, d)
		}
	}
	if !f.listenPublic && !loopbackAddr(listen) {
		return usagef("--listen %s is not a loopback address, and whoever reaches the outbound listener calls the mesh as this service: listen on 127.0.0.1, or pass --listen-public if every client on that network may", listen)
	}
	return nil
}

// loopbackAddr reports whether host:port addr is on loopback (127.0.0.0/8,
// ::1 or localhost). An address that does not parse is left to net.Listen.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return true
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

package main

import (
	"flag"
	"strings"

	"github.com/natsmesh/natsmesh/sidecar"
)

// egressFlags say where a sidecar forwards the app's calls for hosts outside
// the mesh.
type egressFlags struct {
	mode  string
	allow string
}

func (f *egressFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.mode, "egress", string(sidecar.EgressAllowPublic), "calls to hosts outside the mesh: allow-public (public addresses only), allow (private ones too) or deny (only --egress-allow's); loopback, link-local (cloud metadata), unspecified addresses and the mesh's own ports are refused in every mode")
	fs.StringVar(&f.allow, "egress-allow", "", "comma-separated host:port destinations the app may reach whatever --egress refuses, and the only ports besides 443 that CONNECT reaches, for example db.internal:5432,127.0.0.1:6379")
}

// apply checks the flags and sets cfg.Egress.
func (f *egressFlags) apply(cfg *sidecar.Config) error {
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
	return nil
}

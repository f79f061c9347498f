package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/natsmesh/natsmesh/bus"
)

// EgressMode says which destinations outside the mesh a sidecar forwards its
// app's calls to. Whatever the mode, loopback, link-local (cloud metadata
// among them) and unspecified addresses and the mesh's own ports are refused
// unless EgressConfig.Allow lists the destination.
type EgressMode string

const (
	// EgressAllowPublic forwards to public addresses only: private ranges
	// (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) are refused too.
	// The default.
	EgressAllowPublic EgressMode = "allow-public"
	// EgressAllow forwards to private addresses as well.
	EgressAllow EgressMode = "allow"
	// EgressDeny forwards only the destinations EgressConfig.Allow lists;
	// with none listed the sidecar has no egress at all.
	EgressDeny EgressMode = "deny"
)

// EgressConfig configures where a sidecar's outbound listener forwards calls
// for hosts outside the mesh. The zero value is EgressAllowPublic with
// nothing listed, the system resolver and a plain dialer.
type EgressConfig struct {
	Mode EgressMode
	// Allow lists destinations, host:port (the host a name or an IP
	// address), that are forwarded whatever Mode refuses; they are also the
	// only ports other than 443 that CONNECT reaches. A name listed is
	// reached at whatever it resolves to.
	Allow []string
	// Resolver resolves destination names; every address is checked before
	// one is dialed. Default net.DefaultResolver.
	Resolver Resolver
	// Dial dials a checked address (an IP:port, never a name, so the address
	// connected to is the one checked). Default a net.Dialer's DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Resolver resolves a host name to its addresses; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var _ Resolver = (*net.Resolver)(nil)

// validate checks c and sets its defaults.
func (c *EgressConfig) validate() error {
	switch c.Mode {
	case "":
		c.Mode = EgressAllowPublic
	case EgressAllowPublic, EgressAllow, EgressDeny:
	default:
		return invalid("Egress.Mode", fmt.Errorf("%q: use %q, %q or %q", c.Mode, EgressAllowPublic, EgressAllow, EgressDeny))
	}
	for _, d := range c.Allow {
		if err := ValidateDestination(d); err != nil {
			return invalid("Egress.Allow", err)
		}
	}
	return nil
}

// ValidateDestination reports whether s is a destination EgressConfig.Allow
// may list: host:port, the host a DNS name or an IP address, the port 1 to
// 65535.
func ValidateDestination(s string) error {
	_, err := parseDestination(s)
	return err
}

// parseDestination is s in the form destinations are compared in: a name
// lower-cased without a trailing dot, an address in its canonical form (an
// IPv4-mapped IPv6 address as IPv4), the port in decimal.
func parseDestination(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return "", fmt.Errorf("%q is not host:port; write a destination as api.example.com:443, 10.0.0.5:5432 or [fd00::5]:5432", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", fmt.Errorf("%q has port %q; use a number from 1 to 65535", s, port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if z := ip.Zone(); z != "" && !isHostName(strings.ToLower(z)) {
			return "", fmt.Errorf("%q has zone %q; use an interface name", s, z)
		}
		return netip.AddrPortFrom(ip.Unmap(), uint16(n)).String(), nil
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if !isHostName(name) {
		return "", fmt.Errorf("%q: %q is neither an IP address nor a host name", s, host)
	}
	return net.JoinHostPort(name, strconv.FormatUint(n, 10)), nil
}

// isHostName reports whether s is a DNS name: dot-separated labels of 1 to
// 63 letters, digits, '-' or '_', not starting or ending with '-'.
func isHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// egressPolicy decides which addresses an egress destination may be dialed
// at.
type egressPolicy struct {
	mode     EgressMode
	allow    map[string]bool // parsed destinations
	resolver Resolver
	// mesh, if set, lists the mesh's own host:port addresses (its NATS
	// servers, the sidecar's app), refused unless listed.
	mesh func() []string
}

func newEgressPolicy(cfg EgressConfig) (*egressPolicy, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &egressPolicy{mode: cfg.Mode, allow: make(map[string]bool, len(cfg.Allow)), resolver: cfg.Resolver}
	if p.resolver == nil {
		p.resolver = net.DefaultResolver
	}
	for _, d := range cfg.Allow {
		key, _ := parseDestination(d) // validated
		p.allow[key] = true
	}
	return p, nil
}

// refused is the Forbidden error for dest: one sentence with the reason and
// the way to allow it.
func refused(dest, reason string) *bus.Error {
	return bus.Errorf(bus.Forbidden, "egress to %s is refused: %s; list it with --egress-allow %s if the app must reach it", dest, reason, dest)
}

// destination parses the host:port a request is for; a malformed one is a
// bad request.
func (p *egressPolicy) destination(hostport string) (string, *bus.Error) {
	key, err := parseDestination(hostport)
	if err != nil {
		return "", bus.Errorf(bus.BadRequest, "cannot forward outside the mesh: %v", err)
	}
	return key, nil
}

// resolve returns the addresses dest (parsed) may be dialed at: every
// address its host resolves to, each checked; if any is refused, the whole
// destination is, with a *bus.Error of code Forbidden.
func (p *egressPolicy) resolve(ctx context.Context, dest string) ([]netip.AddrPort, error) {
	listed := p.allow[dest]
	if p.mode == EgressDeny && !listed {
		return nil, refused(dest, "this sidecar runs with --egress=deny")
	}
	host, portStr, _ := net.SplitHostPort(dest)
	port, _ := strconv.ParseUint(portStr, 10, 16)
	ips, literal, err := p.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	var mesh map[string]bool
	if !listed && p.mesh != nil {
		mesh = meshSet(p.mesh())
	}
	aps := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip.Unmap(), uint16(port))
		if !listed && !p.allow[ap.String()] {
			what := p.classify(ap, dest, mesh)
			if what != "" && literal {
				return nil, refused(dest, "it is "+what)
			}
			if what != "" {
				return nil, refused(dest, "it resolves to "+ap.Addr().String()+", "+what)
			}
		}
		aps = append(aps, ap)
	}
	return aps, nil
}

// lookup resolves host; literal says it was an IP address already.
func (p *egressPolicy) lookup(ctx context.Context, host string) (_ []netip.Addr, literal bool, _ error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, true, nil
	}
	ips, err := p.resolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		return nil, false, bus.Errorf(bus.UpstreamUnreachable, "cannot reach %s outside the mesh: cannot resolve %s: %v", host, host, err)
	}
	return ips, false, nil
}

// Addresses refused in every mode unless listed: the metadata services of
// clouds that are not on a link-local address.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),   // AWS over IPv6
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
}

var (
	sharedSpace = netip.MustParsePrefix("100.64.0.0/10") // carrier-grade NAT
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	nat64       = netip.MustParsePrefix("64:ff9b::/96")
)

// classify is why ap (of destination dest) is refused, as a noun phrase, or
// "" when it may be dialed.
func (p *egressPolicy) classify(ap netip.AddrPort, dest string, mesh map[string]bool) string {
	ip := ap.Addr()
	if nat64.Contains(ip) { // the IPv4 address a NAT64 gateway would reach
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	switch {
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast():
		return "a link-local address, where cloud metadata services answer"
	case ip.IsUnspecified() || thisNetwork.Contains(ip):
		return "an unspecified address, which reaches this machine"
	case mesh[dest] || mesh[ap.String()]:
		return "one of the mesh's own ports (its NATS server or this sidecar's app)"
	}
	for _, m := range metadataAddrs {
		if ip == m.WithZone(ip.Zone()) {
			return "a cloud metadata address"
		}
	}
	if p.mode == EgressAllowPublic && (ip.IsPrivate() || sharedSpace.Contains(ip)) {
		return "a private address, and this sidecar forwards to public ones only (--egress=allow-public)"
	}
	return ""
}

// meshSet parses the mesh's own addresses; an entry that does not parse
// is skipped.
func meshSet(addrs []string) map[string]bool {
	set := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		if key, err := parseDestination(a); err == nil {
			set[key] = true
		}
	}
	return set
}

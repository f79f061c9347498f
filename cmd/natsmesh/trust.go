package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/identity"
)

// The files the server keeps its identities in, under its data directory.
const (
	trustDirName   = "trust"
	adminCredsName = bus.AdminCredsFile
)

// credsEnv names the credentials file every command connects with when
// --creds is not given.
const credsEnv = "NATSMESH_CREDS"

// defaultCreds is the credentials file a command uses without --creds.
func defaultCreds() string { return bus.CredsFromEnv() }

// openTrust loads (or, on first start, creates) the trust roots in the
// data directory and makes sure its admin credentials are there and issued
// by them. It returns the trust roots and the admin credentials file.
func openTrust(data, prefix string) (*identity.Authority, string, error) {
	return openTrustAt(filepath.Join(data, trustDirName), data, prefix)
}

// openTrustAt is openTrust with the trust roots in trustDir.
func openTrustAt(trustDir, data, prefix string) (*identity.Authority, string, error) {
	a, err := identity.Open(trustDir)
	if err != nil {
		return nil, "", fmt.Errorf("%w; choose another directory with --data", err)
	}
	file := filepath.Join(data, adminCredsName)
	// Credentials that are missing, unreadable or another mesh's are made
	// anew.
	if c, err := identity.ReadCreds(file); err == nil && a.Signed(c) {
		return a, file, nil
	}
	// The data directory may not exist yet when the trust roots are
	// elsewhere (--trust).
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, "", fmt.Errorf("cannot create %s (%v); choose another directory with --data", data, err)
	}
	creds, err := a.IssueRole(identity.Admin, "admin", prefix)
	if err != nil {
		return nil, "", err
	}
	if err := identity.WriteCreds(file, creds); err != nil {
		return nil, "", err
	}
	return a, file, nil
}

// openAuthority opens the trust roots of an existing server's data
// directory, for the identity commands.
func openAuthority(data string) (*identity.Authority, error) {
	dir := filepath.Join(data, trustDirName)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("there are no trust roots in %s; run natsmesh server --data %s once to create them, or point --data at the directory your server uses", dir, data)
	}
	return identity.Open(dir)
}

// checkIdentity refuses to run a process for service with the credentials
// of another service (or of a registry), which NATS would refuse subject by
// subject; flag names the flag that chose service.
func checkIdentity(credsFile, service, flag string) error {
	if credsFile == "" {
		return nil
	}
	c, err := identity.ReadCreds(credsFile)
	if err != nil {
		return usagef("--creds: %v", err)
	}
	switch {
	case c.Role == identity.Service && c.Name != service:
		return usagef("%s %s: the credentials in %s are service %s's identity, which may act only as %s; issue one for %s with natsmesh identity issue %s", flag, service, credsFile, c.Name, c.Name, service, service)
	case c.Role == identity.Registry:
		return usagef("the credentials in %s are a registry's identity, which cannot act as a service; issue one for %s with natsmesh identity issue %s", credsFile, service, service)
	}
	return nil
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/identity"
)

const identityUsage = `Usage: natsmesh identity <command> [flags]

Issues and revokes the identities processes connect to the mesh with: NATS
credentials files (a user JWT and its nkey seed) signed by the trust roots
natsmesh server keeps in its data directory. Run these on the server's machine,
as the user the server runs as.

A service's identity may act only as that service: publish its own heartbeats,
goodbyes and stats, join its own queue groups, receive replies on its own inbox,
call other services under its own name, and read (never write) config.

Commands:
  issue NAME    write the credentials of service NAME (or of a registry or admin)
  revoke NAME   revoke every credential issued to NAME; the server disconnects them
  list          list the names identities were issued to
  server-config print what a nats-server you run must trust, for its config file

Run "natsmesh identity <command> --help" for a command's flags.
`

var identityCommands = map[string]command{
	"issue":         runIdentityIssue,
	"revoke":        runIdentityRevoke,
	"list":          runIdentityList,
	"server-config": runIdentityServerConfig,
}

func runIdentity(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runGroup(ctx, commandGroup{name: "identity", usage: identityUsage, commands: identityCommands, trim: "identity: "}, args, stdout, stderr)
}

func dataFlag(fs *flag.FlagSet) *string {
	return fs.String("data", embedded.DefaultDataDir(), "the data directory of the natsmesh server whose trust roots sign the identity")
}

func runIdentityIssue(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("identity issue", "identity issue NAME [--out FILE] [flags]", `
Writes NATS credentials for NAME, readable by their owner only (0600). With the
default role, service, NAME is a service and the credentials may act only as it:

  natsmesh identity issue reviews --out reviews.creds
  natsmesh sidecar --service reviews --creds reviews.creds --upstream ...

--role registry is for natsmesh server --nats URL on a NATS you run; --role
admin may do everything (natsmesh apply, config, the registry commands).`, stderr)
	out := fs.String("out", "", "file to write the credentials to (default NAME.creds); an existing file is not overwritten without --force")
	force := fs.Bool("force", false, "overwrite --out if it exists")
	role := fs.String("role", string(identity.Service), "what the identity is for: service, registry or admin")
	data := dataFlag(fs)
	prefix := prefixFlag(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one NAME, got %d arguments (see natsmesh identity issue --help)", len(pos))
	}
	name := pos[0]
	if err := bus.ValidateName("identity", name); err != nil {
		return usageError{err}
	}
	if err := checkPrefix(*prefix); err != nil {
		return err
	}
	r := identity.Role(*role)
	if r != identity.Service && r != identity.Registry && r != identity.Admin {
		return usagef("--role %q: use service, registry or admin", *role)
	}
	if *out == "" {
		*out = name + ".creds"
	}
	if _, err := os.Stat(*out); err == nil && !*force {
		return usagef("--out %s exists; choose another file, or add --force to replace it", *out)
	}
	a, err := openAuthority(*data)
	if err != nil {
		return err
	}
	creds, err := a.IssueRole(r, name, *prefix)
	if err != nil {
		return err
	}
	if err := identity.WriteCreds(*out, creds); err != nil {
		return err
	}
	abs, _ := filepath.Abs(*out)
	fmt.Fprintf(stdout, "%s: %s identity written to %s (connect with --creds %s)\n", name, r, abs, *out)
	return nil
}

func runIdentityRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("identity revoke", "identity revoke NAME [flags]", `
Revokes every credential issued to NAME so far: the running server disconnects
them at once, and refuses them from now on, also after a restart. Issue NAME
new credentials with natsmesh identity issue.`, stderr)
	data := dataFlag(fs)
	url := fs.String("nats", bus.URLFromEnv(), "the running server to tell (env NATSMESH_URL)")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one NAME, got %d arguments (see natsmesh identity revoke --help)", len(pos))
	}
	a, err := openAuthority(*data)
	if err != nil {
		return err
	}
	accountJWT, err := a.Revoke(pos[0])
	if err != nil {
		return err
	}
	if err := pushAccount(a, *url, accountJWT); err != nil {
		fmt.Fprintf(stdout, "%s: revoked; the server will refuse it when it starts (%v)\n", pos[0], err)
		return nil
	}
	fmt.Fprintf(stdout, "%s: revoked; the server at %s disconnected its connections\n", pos[0], *url)
	return nil
}

// pushAccount sends the server at url the mesh account's new JWT, as a
// system user.
func pushAccount(a *identity.Authority, url, accountJWT string) error {
	creds, err := a.SystemCreds()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp("", "natsmesh-system-*.creds")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	f.Close()
	if err := identity.WriteCreds(f.Name(), creds); err != nil {
		return err
	}
	nc, err := bus.Connect(bus.ConnectConfig{URL: url, CredsFile: f.Name(), Name: "natsmesh-identity"})
	if err != nil {
		return err
	}
	defer nc.Close()
	return a.Push(nc, accountJWT)
}

func runIdentityList(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("identity list", "identity list [flags]", `
Lists the names identities were issued to, revoked ones included.`, stderr)
	data := dataFlag(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	a, err := openAuthority(*data)
	if err != nil {
		return err
	}
	names, err := a.Issued()
	if err != nil {
		return err
	}
	for _, n := range names {
		fmt.Fprintln(stdout, n)
	}
	return nil
}

func runIdentityServerConfig(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("identity server-config", "identity server-config [flags] > natsmesh-trust.conf", `
Prints the part of a nats-server config that makes it trust this mesh's
identities, and only them: the operator, the system account and the mesh
account, for a memory resolver. Include it in the server's config file
(include ./natsmesh-trust.conf), start the server, and run natsmesh server
--nats URL --creds REGISTRY.creds beside it. The trust roots (and the admin's
credentials, DIR/admin.creds) are created in --data on first use.`, stderr)
	data := dataFlag(fs)
	prefix := prefixFlag(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	if err := checkPrefix(*prefix); err != nil {
		return err
	}
	a, _, err := openTrust(*data, *prefix)
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, serverConfig(a.Trust()))
	return err
}

// serverConfig is the nats-server config that trusts tr.
func serverConfig(tr identity.Trust) string {
	var b strings.Builder
	b.WriteString("# The natsmesh mesh's trust roots (natsmesh identity server-config).\n")
	fmt.Fprintf(&b, "operator: %q\n", tr.Operator)
	fmt.Fprintf(&b, "system_account: %q\n", tr.SystemAccount)
	b.WriteString("resolver: MEMORY\nresolver_preload: {\n")
	for _, pub := range slices.Sorted(maps.Keys(tr.Accounts)) {
		fmt.Fprintf(&b, "  %s: %q\n", pub, tr.Accounts[pub])
	}
	b.WriteString("}\n")
	return b.String()
}

package identity

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/natsmesh/natsmesh/bus"
)

// The records an Authority keeps beside its keys.
const (
	issuedDir   = "issued"  // one file per identity name: its users' public keys
	revokedFile = "revoked" // "<user public key> <unix time>" per line
)

// Tags of a user JWT, which say what it was issued as.
const (
	roleTag    = "natsmesh-role:"
	serviceTag = "natsmesh-service:"
)

// Credential is what a credentials file says about its holder.
type Credential struct {
	Name    string // the identity's name: its service, for a Service
	Role    Role
	Subject string // the user's public key
	Issuer  string // the public key of the account that signed it
}

// Signed reports whether c was issued by this Authority's mesh account.
func (a *Authority) Signed(c Credential) bool {
	apub, _ := a.account.PublicKey()
	return c.Issuer == apub
}

// IssueRole makes the credentials of a role's identity named name on the
// mesh with prefix: a Service identity is named after its service; admin
// and registry identities take any name. The user's key is recorded, so
// that Revoke(name) can revoke it.
func (a *Authority) IssueRole(role Role, name, prefix string) ([]byte, error) {
	service := ""
	if role == Service {
		service = name
	}
	perms, err := PermissionsFor(role, prefix, service)
	if err != nil {
		return nil, err
	}
	if err := bus.ValidateName("identity", strings.TrimPrefix(name, "_")); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return a.issue(name, perms, []string{roleTag + string(role), serviceTag + service})
}

// ReadCreds reads what a credentials file says of its holder, without
// checking who signed it (the server does).
func ReadCreds(file string) (Credential, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Credential{}, fmt.Errorf("identity: cannot read the credentials file: %w", err)
	}
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return Credential{}, fmt.Errorf("identity: %s holds no NATS credentials: %w", file, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return Credential{}, fmt.Errorf("identity: %s holds no user JWT: %w", file, err)
	}
	c := Credential{Name: uc.Name, Subject: uc.Subject, Issuer: uc.Issuer}
	for _, t := range uc.Tags {
		if r, ok := strings.CutPrefix(t, roleTag); ok {
			c.Role = Role(r)
		}
	}
	return c, nil
}

// record notes that user pub was issued as name.
func (a *Authority) record(name, pub string) error {
	dir := filepath.Join(a.dir, issuedDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: cannot record the identity: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("identity: cannot record the identity: %w", err)
	}
	_, err = fmt.Fprintln(f, pub)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("identity: cannot record the identity: %w", err)
	}
	return nil
}

// ErrUnknown is returned by Revoke for a name nothing was issued to.
var ErrUnknown = errors.New("identity: no identity of that name was issued")

// Revoke revokes every credential issued to name so far: the mesh
// account's JWT lists their keys from now on. It returns the account's new
// JWT, which a running server must be sent (PushAccount); a server started
// later trusts it from the start.
func (a *Authority) Revoke(name string) (string, error) {
	if strings.ContainsAny(name, "/\\") || name == "" || name[0] == '.' {
		return "", fmt.Errorf("%w: identity name %q", ErrInvalid, name)
	}
	b, err := os.ReadFile(filepath.Join(a.dir, issuedDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %q (see the names in %s)", ErrUnknown, name, filepath.Join(a.dir, issuedDir))
	}
	if err != nil {
		return "", fmt.Errorf("identity: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(a.dir, revokedFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return "", fmt.Errorf("identity: cannot record the revocation: %w", err)
	}
	now := time.Now().Unix()
	for _, pub := range strings.Fields(string(b)) {
		fmt.Fprintf(f, "%s %d\n", pub, now)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("identity: cannot record the revocation: %w", err)
	}
	if a.trust, err = a.sign(); err != nil {
		return "", err
	}
	apub, _ := a.account.PublicKey()
	return a.trust.Accounts[apub], nil
}

// revocations reads the revoked users' keys and times.
func (a *Authority) revocations() (map[string]int64, error) {
	f, err := os.Open(filepath.Join(a.dir, revokedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("identity: cannot read the revocations: %w", err)
	}
	defer f.Close()
	out := make(map[string]int64)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pub, at, ok := strings.Cut(sc.Text(), " ")
		t, err := strconv.ParseInt(at, 10, 64)
		if !ok || err != nil || !nkeys.IsValidPublicUserKey(pub) {
			continue
		}
		out[pub] = max(out[pub], t)
	}
	return out, sc.Err()
}

// Issued lists the names identities were issued to.
func (a *Authority) Issued() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(a.dir, issuedDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names, nil
}

// SystemCreds makes credentials of a system account user, which may send a
// running server account updates (PushAccount). They are not recorded.
func (a *Authority) SystemCreds() ([]byte, error) {
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("identity: create key: %w", err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = "natsmesh-system"
	uc.Expires = time.Now().Add(10 * time.Minute).Unix()
	ujwt, err := uc.Encode(a.system)
	if err != nil {
		return nil, fmt.Errorf("identity: sign the system user: %w", err)
	}
	seed, _ := ukp.Seed()
	return jwt.FormatUserConfig(ujwt, seed)
}

// AccountUpdateSubject is where a system user sends a running server the
// new JWT of the mesh account.
func (a *Authority) AccountUpdateSubject() string {
	apub, _ := a.account.PublicKey()
	return "$SYS.REQ.ACCOUNT." + apub + ".CLAIMS.UPDATE"
}

// Push sends a running server (over nc, a system user's connection: see
// SystemCreds) the mesh account's JWT, as Revoke returns it: the server
// applies it at once and disconnects the users it revokes.
func (a *Authority) Push(nc *nats.Conn, accountJWT string) error {
	m, err := nc.Request(a.AccountUpdateSubject(), []byte(accountJWT), 5*time.Second)
	if err != nil {
		return fmt.Errorf("identity: the server did not take the account update: %w", err)
	}
	var resp struct {
		Data *struct {
			Message string `json:"message"`
		} `json:"data"`
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return fmt.Errorf("identity: the server's answer to the account update is not valid: %w", err)
	}
	if resp.Error != nil {
		return fmt.Errorf("identity: the server refused the account update: %s", resp.Error.Description)
	}
	return nil
}

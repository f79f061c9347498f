package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// ErrInvalid is wrapped by the errors of names and permissions Issue
// refuses.
var ErrInvalid = errors.New("identity: invalid")

// The files of an Authority, in its directory.
const (
	operatorFile = "operator.nk"
	systemFile   = "system-account.nk"
	accountFile  = "mesh-account.nk"
)

// Authority is a mesh's trust roots.
type Authority struct {
	dir      string
	operator nkeys.KeyPair
	system   nkeys.KeyPair
	account  nkeys.KeyPair
	trust    Trust
}

// Trust is what a NATS server must trust to accept the Authority's users:
// the operator's JWT, the system account's public key, and every account's
// JWT by public key (for a memory resolver).
type Trust struct {
	Operator      string
	SystemAccount string
	Accounts      map[string]string
}

// Open loads the Authority kept in dir, creating its keys on first use.
func Open(dir string) (*Authority, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: cannot create %s: %w", dir, err)
	}
	a := &Authority{dir: dir}
	var err error
	if a.operator, err = loadOrCreate(filepath.Join(dir, operatorFile), nkeys.CreateOperator); err != nil {
		return nil, err
	}
	if a.system, err = loadOrCreate(filepath.Join(dir, systemFile), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if a.account, err = loadOrCreate(filepath.Join(dir, accountFile), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if a.trust, err = a.sign(); err != nil {
		return nil, err
	}
	return a, nil
}

// loadOrCreate reads the seed in file, or creates one with create and
// writes it there, readable by its owner only.
func loadOrCreate(file string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	seed, err := os.ReadFile(file)
	switch {
	case err == nil:
		if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("identity: %s is readable by others (mode %v); make it 0600", file, fi.Mode().Perm())
		}
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
		if err != nil {
			return nil, fmt.Errorf("identity: %s holds no valid nkey seed: %w", file, err)
		}
		return kp, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("identity: cannot read %s: %w", file, err)
	}
	kp, err := create()
	if err != nil {
		return nil, fmt.Errorf("identity: create key: %w", err)
	}
	if seed, err = kp.Seed(); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	// O_EXCL: two servers starting on one directory never overwrite a key.
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return loadOrCreate(file, create)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: cannot write %s: %w", file, err)
	}
	if _, err := f.Write(append(seed, '\n')); err != nil {
		f.Close()
		return nil, fmt.Errorf("identity: cannot write %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("identity: cannot write %s: %w", file, err)
	}
	return kp, nil
}

// sign makes the operator's and the accounts' JWTs. They are signed anew at
// each Open (their content follows from the keys), so nothing but the keys
// is kept.
func (a *Authority) sign() (Trust, error) {
	opub, _ := a.operator.PublicKey()
	spub, _ := a.system.PublicKey()
	apub, _ := a.account.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "natsmesh"
	oc.SystemAccount = spub
	ojwt, err := oc.Encode(a.operator)
	if err != nil {
		return Trust{}, fmt.Errorf("identity: sign the operator: %w", err)
	}
	sc := jwt.NewAccountClaims(spub)
	sc.Name = "SYS"
	sjwt, err := sc.Encode(a.operator)
	if err != nil {
		return Trust{}, fmt.Errorf("identity: sign the system account: %w", err)
	}
	ac := jwt.NewAccountClaims(apub)
	ac.Name = "mesh"
	revoked, err := a.revocations()
	if err != nil {
		return Trust{}, err
	}
	for pub, at := range revoked {
		ac.RevokeAt(pub, time.Unix(at, 0))
	}
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(a.operator)
	if err != nil {
		return Trust{}, fmt.Errorf("identity: sign the mesh account: %w", err)
	}
	return Trust{Operator: ojwt, SystemAccount: spub, Accounts: map[string]string{spub: sjwt, apub: ajwt}}, nil
}

// RouteCredentials are the user and password the servers of one mesh's
// cluster accept each other's routes with: they follow from the operator's
// key, so every server given the same trust roots has them, and no other.
func (a *Authority) RouteCredentials() (user, password string) {
	seed, _ := a.operator.Seed()
	sum := sha256.Sum256(append([]byte("natsmesh route credentials\x00"), seed...))
	return "natsmesh-route", hex.EncodeToString(sum[:])
}

// Trust is what the mesh's NATS server must trust.
func (a *Authority) Trust() Trust { return a.trust }

// Dir is the directory the Authority keeps its keys in.
func (a *Authority) Dir() string { return a.dir }

// Permissions are the subjects a user may publish and subscribe to; a
// subscription entry may name a queue group ("mesh.rpc.reviews reviews").
// Empty allow lists allow nothing.
type Permissions struct {
	Publish, Subscribe []string
	// Responses lets the user answer one message on the reply subject of
	// each request it received, whatever its publish permissions.
	Responses bool
}

// All is every subject, both ways: the admin's permissions.
var All = Permissions{Publish: []string{">"}, Subscribe: []string{">"}}

// Issue makes a NATS credentials file (a user JWT signed by the mesh
// account, and the user's seed) for name with perms.
func (a *Authority) Issue(name string, perms Permissions) ([]byte, error) {
	return a.issue(name, perms, nil)
}

func (a *Authority) issue(name string, perms Permissions, tags []string) ([]byte, error) {
	if name == "" || strings.ContainsAny(name, " \t\r\n/\\") || name[0] == '.' {
		return nil, fmt.Errorf("%w: user name %q: use a non-empty name without spaces", ErrInvalid, name)
	}
	if len(perms.Publish) == 0 && len(perms.Subscribe) == 0 && !perms.Responses {
		return nil, fmt.Errorf("%w: %s would be allowed nothing", ErrInvalid, name)
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("identity: create key: %w", err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	uc.Tags.Add(tags...)
	uc.Pub.Allow = jwt.StringList(allowOrNone(perms.Publish))
	uc.Sub.Allow = jwt.StringList(allowOrNone(perms.Subscribe))
	if perms.Responses {
		uc.Resp = &jwt.ResponsePermission{MaxMsgs: 1}
	}
	ujwt, err := uc.Encode(a.account)
	if err != nil {
		return nil, fmt.Errorf("identity: sign %s: %w", name, err)
	}
	if err := a.record(name, upub); err != nil {
		return nil, err
	}
	seed, err := ukp.Seed()
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return jwt.FormatUserConfig(ujwt, seed)
}

// allowOrNone is subjects, or, when empty, a list that matches no subject a
// client can use: JWT permissions with an empty allow list allow all.
func allowOrNone(subjects []string) []string {
	if len(subjects) == 0 {
		return []string{"_natsmesh_none_"}
	}
	return subjects
}

// WriteCreds writes creds to file, readable by its owner only. The file is
// replaced whole: a reader sees the old credentials or the new, never part.
func WriteCreds(file string, creds []byte) error {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+"-*")
	if err != nil {
		return fmt.Errorf("identity: cannot write %s: %w", file, err)
	}
	defer os.Remove(f.Name()) // after a failure; gone after the rename
	_, err = f.Write(creds)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o600) // CreateTemp's mode already, whatever the umask
	}
	if err == nil {
		err = os.Rename(f.Name(), file)
	}
	if err != nil {
		return fmt.Errorf("identity: cannot write %s: %w", file, err)
	}
	return nil
}

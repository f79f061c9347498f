package bus

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// AutoReplicas is how many replicas natsmesh gives a bucket it makes on a
// NATS cluster when no count is set: enough to lose one server and keep
// both reads and writes (a quorum of 2 of 3).
const AutoReplicas = 3

// MaxReplicas is the most replicas JetStream keeps of a stream.
const MaxReplicas = 5

// ClusterSize estimates how many servers the NATS cluster that nc is
// connected to has: 1 when its server is not in a cluster, else the
// servers the connection knows of (those it was given, and those the
// cluster advertised to it). It is an estimate: a cluster that does not
// advertise its servers counts as the URLs given. It asks nothing of the
// server, so any identity may call it.
func ClusterSize(nc *nats.Conn) int {
	if nc.ConnectedClusterName() == "" {
		return 1
	}
	return max(1, len(nc.Servers()))
}

// WantReplicas is the replica count a bucket should have: set when it is
// above 0, else AutoReplicas on a cluster of at least that many servers
// (ClusterSize), else 1.
func WantReplicas(nc *nats.Conn, set int) int {
	switch {
	case set > 0:
		return set
	case ClusterSize(nc) >= AutoReplicas:
		return AutoReplicas
	}
	return 1
}

// CreateKeyValue makes the KV bucket cfg. With set above 0 it has set
// replicas. With 0 (automatic) it has AutoReplicas when nc's server is in a
// cluster and JetStream can place them, else 1: fellBack says that
// JetStream had too few servers for AutoReplicas. Making the bucket takes
// $JS.API.STREAM.CREATE.KV_<bucket> and nothing else.
func CreateKeyValue(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg jetstream.KeyValueConfig, set int) (kv jetstream.KeyValue, fellBack bool, err error) {
	cfg.Replicas = max(set, 1)
	if set == 0 && nc.ConnectedClusterName() != "" {
		cfg.Replicas = AutoReplicas
	}
	kv, err = js.CreateKeyValue(ctx, cfg)
	if err != nil && set == 0 && cfg.Replicas > 1 && tooFewServers(err) {
		cfg.Replicas = 1
		kv, err = js.CreateKeyValue(ctx, cfg)
		fellBack = err == nil
	}
	return kv, fellBack, err
}

// The JetStream API's error codes for replicas it cannot place.
const (
	errCodeNoPeers               jetstream.ErrorCode = 10005 // no suitable peers for placement
	errCodeInsufficientResources jetstream.ErrorCode = 10023
	errCodeReplicasNotSupported  jetstream.ErrorCode = 10074 // not clustered
)

func tooFewServers(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case errCodeNoPeers, errCodeInsufficientResources, errCodeReplicasNotSupported:
		return true
	}
	return false
}

// ReplicasCommand is the command that gives stream n replicas, for a
// warning to name.
func ReplicasCommand(stream string, n int) string {
	return fmt.Sprintf("nats stream edit %s --replicas %d", stream, n)
}

// ValidateReplicas checks a configured replica count: 0 (automatic) to
// MaxReplicas.
func ValidateReplicas(n int) error {
	if n < 0 || n > MaxReplicas {
		return fmt.Errorf("replicas %d: use 1 to %d, or 0 for %d on a cluster of %d or more servers and 1 otherwise", n, MaxReplicas, AutoReplicas, AutoReplicas)
	}
	return nil
}

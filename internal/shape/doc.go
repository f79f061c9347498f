// Package shape measures the layout rules of docs/architecture.md in the
// library packages — every package outside cmd/, bench/, examples/ and
// internal/ — and its tests check them: no function longer than MaxLines
// lines or with more than MaxBranches branches, no more than
// MaxProxyExports exported names in package proxy, and neither nats-server
// nor client_golang linked by proxy, registry, config or metrics.
//
// go run ./internal/shape/cmd/funcsize prints the functions that break the
// size rule.
package shape

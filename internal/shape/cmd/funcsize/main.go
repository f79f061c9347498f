// Command funcsize prints the functions of natsmesh's library packages that
// are longer than shape.MaxLines lines or have more than shape.MaxBranches
// branches, one "path:line: Name: N lines, M branches" a line, and exits 1
// if there is any. Run it from anywhere in the module:
//
//	go run ./internal/shape/cmd/funcsize
package main

import (
	"fmt"
	"os"

	"github.com/natsmesh/natsmesh/internal/shape"
)

func main() {
	root, err := shape.ModuleRoot(".")
	if err != nil {
		fmt.Fprintln(os.Stderr, "funcsize:", err)
		os.Exit(2)
	}
	found, err := shape.Check(root, shape.MaxLines, shape.MaxBranches)
	if err != nil {
		fmt.Fprintln(os.Stderr, "funcsize:", err)
		os.Exit(2)
	}
	for _, f := range found {
		fmt.Println(f)
	}
	if len(found) > 0 {
		os.Exit(1)
	}
}

package shape_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/natsmesh/natsmesh/internal/shape"
)

// Measure counts lines from func to the closing brace, and the branches the
// package documents.
func TestMeasure(t *testing.T) {
	tests := []struct {
		name            string
		src             string
		lines, branches int
	}{
		{"one line", `func f() {}`, 1, 0},
		{"if else", "func f(x int) {\n\tif x > 0 {\n\t} else if x < 0 {\n\t}\n}", 5, 2},
		{"loops", "func f(xs []int) {\n\tfor range xs {\n\t}\n\tfor i := 0; i < 3; i++ {\n\t}\n}", 6, 2},
		{"switch without default", "func f(x int) {\n\tswitch x {\n\tcase 1, 2:\n\tcase 3:\n\tdefault:\n\t}\n}", 7, 2},
		{"type switch", "func f(x any) {\n\tswitch x.(type) {\n\tcase int:\n\tdefault:\n\t}\n}", 6, 1},
		{"select", "func f(c chan int) {\n\tselect {\n\tcase <-c:\n\tcase c <- 1:\n\tdefault:\n\t}\n}", 7, 2},
		{"boolean operators", "func f(a, b, c bool) bool {\n\treturn a && b || c && !a\n}", 3, 3},
		{"comparison is not a branch", "func f(a, b int) bool {\n\treturn a == b\n}", 3, 0},
		{"function literal", "func f() {\n\tg := func(x int) {\n\t\tif x > 0 {\n\t\t}\n\t}\n\tg(1)\n}", 7, 1},
		{"doc comment not counted", "// f does nothing.\n//\n// Really.\nfunc f() {\n}", 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "x.go", "package x\n\n"+tt.src+"\n", parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			fn := f.Decls[0].(*ast.FuncDecl)
			lines, branches := shape.Measure(fset, fn)
			if lines != tt.lines || branches != tt.branches {
				t.Errorf("Measure = %d lines, %d branches; want %d, %d", lines, branches, tt.lines, tt.branches)
			}
		})
	}
}

// Check reports functions over either limit, with methods named by their
// type, and skips test files and the directories that hold no library.
func TestCheck(t *testing.T) {
	root := t.TempDir()
	long := "func Long() {\n" + strings.Repeat("\t_ = 0\n", 4) + "}\n"
	branchy := "func (*T) branchy(a, b, c bool) bool {\n\treturn a && b && c\n}\n"
	write(t, root, "go.mod", "module x\n")
	write(t, root, "lib/lib.go", "package lib\n\ntype T struct{}\n\n"+long+"\n"+branchy+"\nfunc short() {}\n")
	write(t, root, "lib/lib_test.go", "package lib\n\n"+long)
	for _, dir := range []string{"cmd/x", "bench", "examples/x", "internal/x", "lib/testdata", "other"} {
		write(t, root, dir+"/a.go", "package a\n\n"+long)
	}
	write(t, root, "other/go.mod", "module other\n")
	found, err := shape.Check(root, 5, 1)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range found {
		got = append(got, f.String())
	}
	want := []string{
		"lib/lib.go:5: Long: 6 lines, 0 branches",
		"lib/lib.go:12: T.branchy: 3 lines, 2 branches",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Check found\n\t%q\nwant\n\t%q", got, want)
	}
}

// Exports counts exported top-level names and the exported methods of
// exported types, once each, from non-test files only.
func TestExports(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.go", `package p

type T struct{ Field int }
type hidden struct{}

func (T) M()       {}
func (*T) m()      {}
func (hidden) M()  {}
func F()           {}
func f()           {}

const (
	C, c = 1, 2
	_    = 3
)

var V, v int
`)
	write(t, dir, "a_linux.go", "package p\n\nfunc OS() {}\n")
	write(t, dir, "a_other.go", "package p\n\nfunc OS() {}\n")
	write(t, dir, "a_test.go", "package p\n\nfunc Test() {}\n")
	got, err := shape.Exports(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"C", "F", "OS", "T", "T.M", "V"}
	if !slices.Equal(got, want) {
		t.Errorf("Exports = %q, want %q", got, want)
	}
}

func write(t *testing.T, root, name, content string) {
	t.Helper()
	path := filepath.Join(root, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

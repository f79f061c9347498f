package shape

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The limits of the layout rules.
const (
	// MaxLines is the most lines a function may span, from func to its
	// closing brace.
	MaxLines = 80
	// MaxBranches is the most branches a function may have (see Measure).
	MaxBranches = 25
	// MaxProxyExports is the most names package proxy may export (see
	// Exports).
	MaxProxyExports = 40
)

// notLibrary are the top-level directories that hold no library package.
var notLibrary = []string{"bench", "cmd", "examples", "internal"}

// Finding is a function over a limit.
type Finding struct {
	Path     string // the file, relative to the root, with slashes
	Line     int    // of the func keyword
	Name     string // Func, or Type.Method
	Lines    int
	Branches int
}

func (f Finding) String() string {
	return fmt.Sprintf("%s:%d: %s: %d lines, %d branches", f.Path, f.Line, f.Name, f.Lines, f.Branches)
}

// ModuleRoot is the nearest directory at or above dir that holds a go.mod.
func ModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("shape: no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// Check measures every function and method in the non-test files of the
// library packages under root, the module's root, and returns those longer
// than maxLines or with more than maxBranches branches, in file and line
// order.
func Check(root string, maxLines, maxBranches int) ([]Finding, error) {
	var found []Finding
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && skipDir(path, rel, d.Name()) {
				return fs.SkipDir
			}
			return nil
		}
		if !isSource(d.Name()) {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			lines, branches := Measure(fset, fn)
			if lines > maxLines || branches > maxBranches {
				found = append(found, Finding{Path: rel, Line: fset.Position(fn.Pos()).Line, Name: funcName(fn), Lines: lines, Branches: branches})
			}
		}
		return nil
	})
	return found, err
}

// skipDir reports whether the directory at path (rel from the root) holds
// no library package: a top-level cmd, bench, examples or internal, a
// directory the go command ignores, or another module.
func skipDir(path, rel, name string) bool {
	if slices.Contains(notLibrary, rel) || name == "testdata" || name == "vendor" ||
		strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
		return true
	}
	_, err := os.Stat(filepath.Join(path, "go.mod"))
	return err == nil
}

// isSource reports whether a file name is a non-test Go file.
func isSource(name string) bool {
	return strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")
}

// Measure returns the lines fn spans, from func to its closing brace, and
// the branches in its body, function literals included: each if, for and
// range, each case of a switch or select other than default, and each &&
// and || (what gocyclo reports, less one for the function itself).
func Measure(fset *token.FileSet, fn *ast.FuncDecl) (lines, branches int) {
	lines = fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1
	if fn.Body == nil {
		return lines, 0
	}
	for n := range ast.Preorder(fn.Body) {
		switch n := n.(type) {
		case *ast.IfStmt, *ast.ForStmt, *ast.RangeStmt:
			branches++
		case *ast.CaseClause:
			if n.List != nil {
				branches++
			}
		case *ast.CommClause:
			if n.Comm != nil {
				branches++
			}
		case *ast.BinaryExpr:
			if n.Op == token.LAND || n.Op == token.LOR {
				branches++
			}
		}
	}
	return lines, branches
}

// funcName is Name for a function, Type.Name for a method.
func funcName(fn *ast.FuncDecl) string {
	if recv := recvType(fn); recv != "" {
		return recv + "." + fn.Name.Name
	}
	return fn.Name.Name
}

// recvType is the name of fn's receiver's type, without pointer or type
// parameters; "" for a function.
func recvType(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return ""
	}
	t := fn.Recv.List[0].Type
	for {
		switch x := t.(type) {
		case *ast.StarExpr:
			t = x.X
		case *ast.IndexExpr:
			t = x.X
		case *ast.IndexListExpr:
			t = x.X
		case *ast.ParenExpr:
			t = x.X
		case *ast.Ident:
			return x.Name
		default:
			return ""
		}
	}
}

// Exports lists, sorted, the names the package in dir exports from its
// non-test files: its exported types, functions, constants and variables,
// and the exported methods of its exported types (as Type.Method). A name
// declared in several files for different platforms counts once.
func Exports(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	var names []string
	for _, e := range entries {
		if e.IsDir() || !isSource(e.Name()) {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		names = append(names, fileExports(f)...)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// fileExports lists the names f exports, as Exports counts them.
func fileExports(f *ast.File) []string {
	var names []string
	for _, decl := range f.Decls {
		switch d := decl.(type) {
		case *ast.FuncDecl:
			recv := recvType(d)
			switch {
			case !d.Name.IsExported():
			case d.Recv == nil:
				names = append(names, d.Name.Name)
			case token.IsExported(recv):
				names = append(names, recv+"."+d.Name.Name)
			}
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				names = append(names, specExports(spec)...)
			}
		}
	}
	return names
}

// specExports lists the exported names a type, const or var spec declares.
func specExports(spec ast.Spec) []string {
	var names []string
	switch s := spec.(type) {
	case *ast.TypeSpec:
		if s.Name.IsExported() {
			names = append(names, s.Name.Name)
		}
	case *ast.ValueSpec:
		for _, n := range s.Names {
			if n.IsExported() {
				names = append(names, n.Name)
			}
		}
	}
	return names
}

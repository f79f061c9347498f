package config

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the field reference in docs/config.md from the Go types")

const (
	docFile   = "../docs/config.md"
	beginMark = "<!-- fields: generated from config/schema.go by `go test ./config -run TestConfigDoc -update`; do not edit -->"
	endMark   = "<!-- end of fields -->"
)

// TestConfigDoc checks that docs/config.md documents every field of the
// schema, with its type and its doc comment, so that the reference cannot
// drift from the code: the part between the markers is generated.
func TestConfigDoc(t *testing.T) {
	want := fieldReference(t)
	b, err := os.ReadFile(docFile)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, beginMark), strings.Index(doc, endMark)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the markers %q and %q around the field reference", docFile, beginMark, endMark)
	}
	got := doc[i+len(beginMark) : j]
	if got == want {
		return
	}
	if *update {
		doc = doc[:i+len(beginMark)] + want + doc[j:]
		if err := os.WriteFile(docFile, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s is out of date with config/schema.go; run `go test ./config -run TestConfigDoc -update`", docFile)
}

// fieldReference renders a section per type of the schema, from Service
// down, with a row per field.
func fieldReference(t *testing.T) string {
	comments := schemaComments(t)
	var (
		b     strings.Builder
		seen  = map[reflect.Type]bool{}
		queue = []reflect.Type{reflect.TypeFor[Service]()}
	)
	b.WriteString("\n")
	for len(queue) > 0 {
		typ := queue[0]
		queue = queue[1:]
		if seen[typ] {
			continue
		}
		seen[typ] = true
		fmt.Fprintf(&b, "\n### %s\n\n", sectionName(typ))
		if c := comments[typ.Name()][""]; c != "" {
			b.WriteString(typeDoc(c, typ) + "\n\n")
		}
		b.WriteString("| field | type | required | description |\n|---|---|---|---|\n")
		for i := range typ.NumField() {
			f := typ.Field(i)
			name := tagName(f)
			c := comments[typ.Name()][f.Name]
			if c == "" {
				t.Errorf("field %s.%s has no doc comment; every field of the schema is documented", typ.Name(), f.Name)
			}
			opts := f.Tag.Get("json")
			required := "no"
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				required = "yes"
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", name, typeName(f.Type), required, docText(c, typ))
			if st := structOf(f.Type); st != nil && st != durationType {
				queue = append(queue, st)
			}
		}
	}
	b.WriteString("\n")
	return b.String()
}

func sectionName(t reflect.Type) string {
	if t == reflect.TypeFor[Service]() {
		return "service document"
	}
	n := t.Name()
	return strings.ToLower(n[:1]) + n[1:]
}

func structOf(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct {
		return t
	}
	return nil
}

func typeName(t reflect.Type) string {
	if t == durationType {
		return "duration (`250ms`, `2s`, `1m30s`)"
	}
	switch t.Kind() {
	case reflect.Pointer:
		return typeName(t.Elem())
	case reflect.Struct:
		n := sectionName(t)
		return fmt.Sprintf("[%s](#%s)", n, strings.ToLower(strings.ReplaceAll(n, " ", "-")))
	case reflect.Slice:
		return "list of " + typeName(t.Elem())
	case reflect.Map:
		return "map of name → " + typeName(t.Elem())
	case reflect.Int:
		return "integer"
	case reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean"
	case reflect.String:
		return "string"
	}
	return t.String()
}

// typeDoc is a type's doc comment, which starts with the type's Go name.
func typeDoc(c string, typ reflect.Type) string {
	first, rest, _ := strings.Cut(strings.TrimSpace(c), " ")
	return first + " " + docText(rest, typ)
}

var goName = regexp.MustCompile(`\b[A-Z][A-Za-z]*\b`)

// docText is a doc comment as one line, with the Go names of typ's fields
// written as their YAML names.
func docText(c string, typ reflect.Type) string {
	c = strings.Join(strings.Fields(c), " ")
	c = strings.ReplaceAll(c, "|", `\|`)
	return goName.ReplaceAllStringFunc(c, func(w string) string {
		if f, ok := typ.FieldByName(w); ok {
			return "`" + tagName(f) + "`"
		}
		return w
	})
}

// schemaComments reads the doc comments of schema.go's types and fields:
// type name → field name → comment, "" for the type's own.
func schemaComments(t *testing.T) map[string]map[string]string {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "schema.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.TYPE {
			continue
		}
		for _, spec := range gd.Specs {
			ts := spec.(*ast.TypeSpec)
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				continue
			}
			m := map[string]string{"": gd.Doc.Text()}
			for _, fld := range st.Fields.List {
				for _, n := range fld.Names {
					m[n.Name] = fld.Doc.Text()
				}
			}
			out[ts.Name.Name] = m
		}
	}
	return out
}

package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize is the largest config file Parse reads.
const MaxFileSize = 1 << 20

// Error is what is wrong with a config file: every problem found, each with
// the line it is on.
type Error struct {
	File     string
	Problems []LineProblem
}

// LineProblem is a problem on a line of a file; Service is the document's
// service, when it is known.
type LineProblem struct {
	Line    int
	Service string
	Problem
}

func (p LineProblem) format(file string) string {
	var b strings.Builder
	b.WriteString(file)
	if p.Line > 0 {
		b.WriteString(":" + strconv.Itoa(p.Line))
	}
	b.WriteString(": ")
	if p.Service != "" {
		b.WriteString("service " + p.Service + ": ")
	}
	b.WriteString(p.Problem.String())
	return b.String()
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.format(e.File)
	}
	return strings.Join(lines, "\n")
}

// Parse reads a YAML file of service documents, separated by ---, and
// checks every one of them. It returns the documents only if all are valid;
// otherwise an *Error lists every problem, with its line.
func Parse(file string, data []byte) ([]*Service, error) {
	fail := func(line int, format string, args ...any) error {
		return &Error{File: file, Problems: []LineProblem{{Line: line, Problem: Problem{Msg: fmt.Sprintf(format, args...)}}}}
	}
	if len(data) > MaxFileSize {
		return nil, fail(0, "the file is %d bytes; a config file may have at most %d", len(data), MaxFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var (
		docs []*Service
		all  []LineProblem
		seen = map[string]int{} // service → line of its document
	)
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			line, msg := yamlLine(err.Error())
			return nil, fail(line, "%s", msg)
		}
		if len(doc.Content) == 0 || doc.Content[0].Tag == "!!null" {
			continue // an empty document, as after a trailing ---
		}
		root := doc.Content[0]
		if root.Kind != yaml.MappingNode {
			all = append(all, LineProblem{Line: root.Line, Problem: Problem{Msg: "a document is a mapping of fields that starts with service: NAME"}})
			continue
		}
		w := walker{lines: map[string]int{"": root.Line}}
		w.walk(root, reflect.TypeFor[Service](), "")
		name := scalarField(root, "service")
		for i := range w.probs {
			w.probs[i].Service = name
		}
		all = append(all, w.probs...)
		svc := new(Service)
		if err := root.Decode(svc); err != nil {
			if len(w.probs) == 0 { // the walker explains what it found itself
				all = append(all, typeProblems(err, name)...)
			}
			continue
		}
		for _, p := range svc.Validate() {
			all = append(all, LineProblem{Line: w.line(p.Path), Service: name, Problem: p})
		}
		if prev, ok := seen[svc.Service]; ok && svc.Service != "" {
			all = append(all, LineProblem{Line: w.line("service"), Service: name, Problem: Problem{Path: "service", Msg: fmt.Sprintf("the service is configured twice in this file (first on line %d)", prev)}})
		}
		seen[svc.Service] = w.line("service")
		docs = append(docs, svc)
	}
	if len(all) > 0 {
		return nil, &Error{File: file, Problems: all}
	}
	if len(docs) == 0 {
		return nil, fail(0, "the file has no service documents; each starts with service: NAME")
	}
	return docs, nil
}

var lineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// yamlLine splits "yaml: line 3: msg" into 3 and msg.
func yamlLine(s string) (int, string) {
	if m := lineRE.FindStringSubmatch(s); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n, s[len(m[0]):]
	}
	return 0, strings.TrimPrefix(s, "yaml: ")
}

func typeProblems(err error, service string) []LineProblem {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		line, msg := yamlLine(err.Error())
		return []LineProblem{{Line: line, Service: service, Problem: Problem{Msg: msg}}}
	}
	ps := make([]LineProblem, 0, len(te.Errors))
	for _, e := range te.Errors {
		line, msg := yamlLine(e)
		ps = append(ps, LineProblem{Line: line, Service: service, Problem: Problem{Msg: msg}})
	}
	return ps
}

// scalarField is the value of a mapping's scalar field, "" if it has none.
func scalarField(m *yaml.Node, key string) string {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key && m.Content[i+1].Kind == yaml.ScalarNode {
			return m.Content[i+1].Value
		}
	}
	return ""
}

// walker checks a document's shape against the Go types, field by field,
// before it is decoded: unknown fields and unreadable durations are found
// with their lines, and the line of every field is kept for the problems
// Validate finds later.
type walker struct {
	lines map[string]int
	probs []LineProblem
	nodes int // walked so far, aliases expanded
}

// maxNodes bounds the nodes a document may expand to: anchors and aliases can
// make a small file stand for a huge document (yaml.v3 guards its own
// decoding against that, but the walk comes first). A valid document, with
// its limits on routes, subsets and headers, is far smaller.
const maxNodes = 20000

func (w *walker) add(line int, path, format string, args ...any) {
	w.probs = append(w.probs, LineProblem{Line: line, Problem: Problem{Path: path, Msg: fmt.Sprintf(format, args...)}})
}

// line is the line of path, or of its nearest parent that has one.
func (w *walker) line(path string) int {
	for {
		if n, ok := w.lines[path]; ok {
			return n
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return w.lines[""]
		}
		path = path[:i]
	}
}

var durationType = reflect.TypeFor[Duration]()

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// maxDepth is deeper than any field of the schema: an alias that refers to
// a mapping it is inside would otherwise be walked forever.
const maxDepth = 16

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if w.nodes++; w.nodes > maxNodes {
		if w.nodes == maxNodes+1 {
			w.add(n.Line, path, "the document expands to more than %d fields and values (through aliases?); a service's config is much smaller", maxNodes)
		}
		return
	}
	if strings.Count(path, ".")+strings.Count(path, "[") > maxDepth {
		w.add(n.Line, path, "nested too deeply")
		return
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == durationType {
		if n.Kind != yaml.ScalarNode {
			w.add(n.Line, path, "a duration is text such as 2s")
			return
		}
		var d Duration
		if err := d.parse(n.Value); err != nil {
			w.add(n.Line, path, "%v", err)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.add(n.Line, path, "want a mapping of fields (%s), not %s", strings.Join(fieldNames(t), ", "), describe(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			w.lines[p] = k.Line
			f, ok := fieldByName(t, k.Value)
			if !ok {
				w.add(k.Line, p, "unknown field %q; the fields here are %s", k.Value, strings.Join(fieldNames(t), ", "))
				continue
			}
			w.walk(v, f.Type, p)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.add(n.Line, path, "want a mapping, not %s", describe(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := path + "." + k.Value
			w.lines[p] = k.Line
			w.walk(v, t.Elem(), p)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.add(n.Line, path, "want a list, not %s", describe(n))
			return
		}
		for i, v := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			w.lines[p] = v.Line
			w.walk(v, t.Elem(), p)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			w.add(n.Line, path, "want a single value, not %s", describe(n))
		}
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func fieldByName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if tagName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func fieldNames(t reflect.Type) []string {
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		if n := tagName(t.Field(i)); n != "" && n != "-" {
			names = append(names, n)
		}
	}
	return names
}

func tagName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

// Marshal encodes a document as it is stored: JSON.
func Marshal(s *Service) ([]byte, error) { return json.Marshal(s) }

// Unmarshal decodes a stored document and checks it. Fields it does not
// know are ignored, so that a proxy older than the document still applies
// what it understands.
func Unmarshal(data []byte) (*Service, error) {
	s := new(Service)
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("config: the stored document is not valid JSON: %w", err)
	}
	if ps := s.Validate(); len(ps) > 0 {
		msgs := make([]string, len(ps))
		for i, p := range ps {
			msgs[i] = p.String()
		}
		return nil, fmt.Errorf("config: the stored document for %q is invalid: %s", s.Service, strings.Join(msgs, "; "))
	}
	return s, nil
}

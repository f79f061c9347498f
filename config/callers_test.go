package config_test

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/natsmesh/natsmesh/config"
)

// The problems of a callers list, each in exactly these words.
func TestCallersValidation(t *testing.T) {
	many := make([]string, config.MaxCallers+1)
	for i := range many {
		many[i] = fmt.Sprintf("svc-%d", i)
	}
	tests := []struct {
		name    string
		callers config.Names
		want    []string // the problems, as Problem.String
	}{
		{"absent", nil, nil},
		{"empty: nobody", config.Names{}, nil},
		{"one", config.Names{"productpage"}, nil},
		{"several", config.Names{"productpage", "gateway", "a_b-9"}, nil},
		{"the limit", config.Names(many[:config.MaxCallers]), nil},
		{"over the limit", config.Names(many), []string{"callers: 257 services; at most 256 are allowed"}},
		{"upper case", config.Names{"productpage", "Ratings"}, []string{
			`callers[1]: service name "Ratings" has 'R' at position 1; use only lowercase letters, digits, '-' or '_'`}},
		{"a wildcard", config.Names{"*"}, []string{
			`callers[0]: service name "*" has '*' at position 1; use only lowercase letters, digits, '-' or '_'`}},
		{"a dot", config.Names{"a.b"}, []string{
			`callers[0]: service name "a.b" has '.' at position 2; use only lowercase letters, digits, '-' or '_'`}},
		{"empty name", config.Names{""}, []string{
			`callers[0]: service name is empty; use 1-63 lowercase letters, digits, '-' or '_'`}},
		{"the unnamed caller's token", config.Names{"_"}, []string{
			`callers[0]: service name "_" is reserved for unnamed callers; choose another`}},
		{"too long", config.Names{strings.Repeat("a", 64)}, []string{
			`callers[0]: service name "aaaaaaaaaaaaaaaaaaaa"... is 64 characters long; the limit is 63`}},
		{"twice", config.Names{"gateway", "productpage", "gateway", "gateway"}, []string{
			`callers[2]: "gateway" is listed twice, also as callers[0]; name each service once`,
			`callers[3]: "gateway" is listed twice, also as callers[0]; name each service once`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := config.Service{Service: "reviews", Callers: tc.callers}
			var got []string
			for _, p := range doc.Validate() {
				got = append(got, p.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// A file's callers problems name the file, line, service and field.
func TestParseCallersErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"not a list", "service: reviews\ncallers: productpage\n",
			`mesh.yaml:2: service reviews: callers: want a list, not "productpage"`},
		{"a bad name", "service: reviews\ncallers:\n  - productpage\n  - Gateway\n",
			`mesh.yaml:4: service reviews: callers[1]: service name "Gateway" has 'G' at position 1; use only lowercase letters, digits, '-' or '_'`},
		{"twice", "service: reviews\ncallers: [gateway, gateway]\n",
			`mesh.yaml:2: service reviews: callers[1]: "gateway" is listed twice, also as callers[0]; name each service once`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("mesh.yaml", []byte(tc.yaml))
			if err == nil || err.Error() != tc.want {
				t.Errorf("Parse: %v\nwant: %s", err, tc.want)
			}
		})
	}
}

// Absent, empty and listed callers stay what they are through everything a
// document goes through: the YAML file, the JSON it is stored as, and the
// YAML natsmesh config get prints.
func TestCallersRoundTrip(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       config.Names
	}{
		{"absent: everybody", "service: reviews\n", nil},
		{"empty: nobody", "service: reviews\ncallers: []\n", config.Names{}},
		{"a list", "service: reviews\ncallers: [productpage, gateway]\n", config.Names{"productpage", "gateway"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := config.Parse("mesh.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			check := func(stage string, got config.Names) {
				t.Helper()
				if !reflect.DeepEqual(got, tc.want) || (got == nil) != (tc.want == nil) {
					t.Errorf("%s: callers %#v, want %#v", stage, got, tc.want)
				}
			}
			check("parsed", docs[0].Callers)
			b, err := config.Marshal(docs[0])
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil && bytes.Contains(b, []byte("callers")) {
				t.Errorf("stored %s; an absent list is left out", b)
			}
			stored, err := config.Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			check("stored as "+string(b), stored.Callers)
			var y bytes.Buffer
			if err := yaml.NewEncoder(&y).Encode(stored); err != nil {
				t.Fatal(err)
			}
			again, err := config.Parse("get.yaml", y.Bytes())
			if err != nil {
				t.Fatalf("%s: %v", y.Bytes(), err)
			}
			check("printed as "+y.String(), again[0].Callers)
		})
	}
}

package bus_test

import (
	"errors"
	"strings"
	"testing"
	"unicode"

	"github.com/natsmesh/natsmesh/bus"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		valid bool
	}{
		{"lowercase", "reviews", true},
		{"single letter", "a", true},
		{"single digit", "7", true},
		{"digits only", "0123456789", true},
		{"letters and digits", "reviews2", true},
		{"dash", "product-page", true},
		{"underscore", "product_page", true},
		{"leading dash", "-reviews", true},
		{"leading underscore", "_reviews", true},
		{"all allowed bytes", "abcdefghijklmnopqrstuvwxyz0123456789-_", true},
		{"63 chars", strings.Repeat("a", 63), true},

		{"empty", "", false},
		{"64 chars", strings.Repeat("a", 64), false},
		{"very long", strings.Repeat("x", 1000), false},
		{"uppercase", "Reviews", false},
		{"all uppercase", "REVIEWS", false},
		{"dot", "reviews.v1", false},
		{"only dot", ".", false},
		{"star", "*", false},
		{"star inside", "rev*ews", false},
		{"gt", ">", false},
		{"gt at end", "reviews>", false},
		{"space", "my service", false},
		{"leading space", " reviews", false},
		{"trailing space", "reviews ", false},
		{"tab", "re\tviews", false},
		{"carriage return", "reviews\r", false},
		{"newline", "reviews\n", false},
		{"nul byte", "rev\x00iews", false},
		{"unicode letter", "révïews", false},
		{"unicode lookalike", "reviеws", false}, // Cyrillic 'е'
		{"emoji", "svc🙂", false},
		{"invalid utf8", "svc\xff", false},
		{"slash", "a/b", false},
		{"colon", "a:b", false},
		{"dollar", "$SYS", false},
		{"plus", "a+b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := bus.ValidateName("service", tt.in)
			if tt.valid {
				if err != nil {
					t.Fatalf("ValidateName(%q) = %v, want nil", tt.in, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateName(%q) = nil, want an error", tt.in)
			}
			if !errors.Is(err, bus.ErrInvalidName) {
				t.Errorf("ValidateName(%q) = %v, want it to wrap ErrInvalidName", tt.in, err)
			}
			if !strings.Contains(err.Error(), "service name") {
				t.Errorf("ValidateName(%q) = %q, want the kind %q in the message", tt.in, err, "service name")
			}
		})
	}
}

func TestValidateNameErrorIsReadable(t *testing.T) {
	err := bus.ValidateName("instance", "a.b")
	if err == nil {
		t.Fatal("want an error")
	}
	msg := err.Error()
	for _, want := range []string{"instance name", `"a.b"`, `'.'`, "position 2", "lowercase letters, digits"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}

	// A long name is shown shortened, with its length.
	err = bus.ValidateName("service", strings.Repeat("b", 200))
	if err == nil {
		t.Fatal("want an error")
	}
	if msg := err.Error(); !strings.Contains(msg, "200 characters") || strings.Contains(msg, strings.Repeat("b", 30)) {
		t.Errorf("error for a 200-char name = %q, want the length and a shortened name", msg)
	}
}

func TestValidatePrefix(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		valid bool
	}{
		{"default", "mesh", true},
		{"two tokens", "prod.mesh", true},
		{"three tokens", "eu.prod.mesh", true},
		{"dash and underscore", "prod-1.my_mesh", true},

		{"empty", "", false},
		{"leading dot", ".mesh", false},
		{"trailing dot", "mesh.", false},
		{"double dot", "a..b", false},
		{"only dot", ".", false},
		{"uppercase", "Mesh", false},
		{"uppercase second token", "prod.Mesh", false},
		{"star token", "a.*", false},
		{"gt token", "a.>", false},
		{"space", "my mesh", false},
		{"token too long", "a." + strings.Repeat("x", 64), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := bus.ValidatePrefix(tt.in)
			if tt.valid && err != nil {
				t.Fatalf("ValidatePrefix(%q) = %v, want nil", tt.in, err)
			}
			if !tt.valid {
				if err == nil {
					t.Fatalf("ValidatePrefix(%q) = nil, want an error", tt.in)
				}
				if !errors.Is(err, bus.ErrInvalidName) {
					t.Errorf("ValidatePrefix(%q) = %v, want it to wrap ErrInvalidName", tt.in, err)
				}
				if !strings.Contains(err.Error(), "prefix") {
					t.Errorf("ValidatePrefix(%q) = %q, want the word prefix in the message", tt.in, err)
				}
			}
		})
	}
}

func TestNewSubjects(t *testing.T) {
	tests := []struct {
		name     string
		prefix   string
		wantRPC  string
		wantInst string
	}{
		{"default prefix", "", "mesh.rpc.reviews", "mesh.inst.reviews-7f9c"},
		{"explicit default", "mesh", "mesh.rpc.reviews", "mesh.inst.reviews-7f9c"},
		{"custom prefix", "prod.mesh", "prod.mesh.rpc.reviews", "prod.mesh.inst.reviews-7f9c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := bus.NewSubjects(tt.prefix)
			if err != nil {
				t.Fatalf("NewSubjects(%q): %v", tt.prefix, err)
			}
			if got := s.RPC("reviews"); got != tt.wantRPC {
				t.Errorf("RPC = %q, want %q", got, tt.wantRPC)
			}
			if got := s.Inst("reviews-7f9c"); got != tt.wantInst {
				t.Errorf("Inst = %q, want %q", got, tt.wantInst)
			}
			if got := s.QueueGroup("reviews"); got != "reviews" {
				t.Errorf("QueueGroup = %q, want %q", got, "reviews")
			}
		})
	}
}

func TestNewSubjectsRejectsBadPrefix(t *testing.T) {
	for _, p := range []string{".mesh", "mesh.", "a..b", "Mesh", "a.*", "a.>", "my mesh"} {
		s, err := bus.NewSubjects(p)
		if err == nil {
			t.Errorf("NewSubjects(%q) = %+v, nil; want an error", p, s)
			continue
		}
		if !errors.Is(err, bus.ErrInvalidName) {
			t.Errorf("NewSubjects(%q) = %v, want it to wrap ErrInvalidName", p, err)
		}
	}
}

func TestSubjectsZeroValueUsesDefaultPrefix(t *testing.T) {
	var s bus.Subjects
	if got, want := s.RPC("ratings"), "mesh.rpc.ratings"; got != want {
		t.Errorf("zero Subjects RPC = %q, want %q", got, want)
	}
	if got, want := s.Inst("ratings-1"), "mesh.inst.ratings-1"; got != want {
		t.Errorf("zero Subjects Inst = %q, want %q", got, want)
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{
		"", "a", "reviews", "product-page", "product_page", "0", strings.Repeat("a", 63),
		strings.Repeat("a", 64), "Reviews", "a.b", "*", ">", "a b", "a\tb", "a\r\nb",
		"révïews", "svc\xff", "\x00", "a.>", "mesh.rpc.*",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 4*bus.MaxNameLen {
			// Long inputs all take the length check; letting the fuzzer grow
			// them to megabytes only makes minimizing them slow.
			t.Skip()
		}
		err := bus.ValidateName("service", s)
		if err != nil {
			if !errors.Is(err, bus.ErrInvalidName) {
				t.Fatalf("ValidateName(%q) = %v, does not wrap ErrInvalidName", s, err)
			}
			return
		}
		if len(s) < 1 || len(s) > bus.MaxNameLen {
			t.Fatalf("ValidateName accepted %q of length %d", s, len(s))
		}
		if strings.ContainsAny(s, ".*> \t\r\n") {
			t.Fatalf("ValidateName accepted %q, which has a separator, wildcard or whitespace", s)
		}
		for _, r := range s {
			if unicode.IsUpper(r) || r > unicode.MaxASCII || !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				t.Fatalf("ValidateName accepted %q, which has %q", s, r)
			}
		}
		subj := bus.Subjects{}.RPC(s)
		if subj != "mesh.rpc."+s {
			t.Fatalf("RPC(%q) = %q", s, subj)
		}
		toks := strings.Split(subj, ".")
		if len(toks) != 3 {
			t.Fatalf("subject %q built from accepted name %q has %d tokens, want 3", subj, s, len(toks))
		}
		for _, tok := range toks {
			if tok == "" || tok == "*" || tok == ">" {
				t.Fatalf("subject %q built from accepted name %q has token %q", subj, s, tok)
			}
		}
	})
}

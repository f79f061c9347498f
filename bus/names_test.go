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
		caller   string
		wantCall string
		wantInst string
	}{
		{"default prefix", "", "productpage", "mesh.rpc.reviews.productpage", "mesh.inst.reviews.reviews-7f9c.productpage"},
		{"explicit default", "mesh", "productpage", "mesh.rpc.reviews.productpage", "mesh.inst.reviews.reviews-7f9c.productpage"},
		{"custom prefix", "prod.mesh", "productpage", "prod.mesh.rpc.reviews.productpage", "prod.mesh.inst.reviews.reviews-7f9c.productpage"},
		{"unnamed caller", "", "", "mesh.rpc.reviews._", "mesh.inst.reviews.reviews-7f9c._"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := bus.NewSubjects(tt.prefix)
			if err != nil {
				t.Fatalf("NewSubjects(%q): %v", tt.prefix, err)
			}
			s.Caller = tt.caller
			if got := s.Call("reviews"); got != tt.wantCall {
				t.Errorf("Call = %q, want %q", got, tt.wantCall)
			}
			if got := s.Inst("reviews", "reviews-7f9c"); got != tt.wantInst {
				t.Errorf("Inst = %q, want %q", got, tt.wantInst)
			}
			if got := s.QueueGroup("reviews"); got != "reviews" {
				t.Errorf("QueueGroup = %q, want %q", got, "reviews")
			}
			if got := bus.CallerOf(s.Call("reviews")); got != tt.caller {
				t.Errorf("CallerOf(Call) = %q, want %q", got, tt.caller)
			}
			if got := bus.CallerOf(s.CallSubset("reviews", "v2")); got != tt.caller {
				t.Errorf("CallerOf(CallSubset) = %q, want %q", got, tt.caller)
			}
			if got := bus.CallerOf(s.Inst("reviews", "reviews-7f9c")); got != tt.caller {
				t.Errorf("CallerOf(Inst) = %q, want %q", got, tt.caller)
			}
		})
	}
}

// TestCallSubjectsMatchTheirSubscriptions checks that each call subject is
// delivered to the subscription meant for it and to no other: a call to
// the whole service never reaches a subset's queue group, a subset's call
// never the service's, and a caller whose name equals a subset's changes
// nothing.
func TestCallSubjectsMatchTheirSubscriptions(t *testing.T) {
	s := bus.Subjects{Caller: "v2"}
	subs := map[string]string{
		"service": s.Calls("reviews"),
		"subset":  s.SubsetCalls("reviews", "v2"),
		"inst":    s.InstCalls("reviews", "reviews-1"),
	}
	for subject, want := range map[string]string{
		s.Call("reviews"):                "service",
		s.CallSubset("reviews", "v2"):    "subset",
		s.Inst("reviews", "reviews-1"):   "inst",
		s.Call("ratings"):                "",
		s.Inst("ratings", "reviews-1"):   "",
		s.CallSubset("reviews", "other"): "",
	} {
		var got []string
		for name, sub := range subs {
			if subjectMatches(sub, subject) {
				got = append(got, name)
			}
		}
		if (want == "" && len(got) != 0) || (want != "" && (len(got) != 1 || got[0] != want)) {
			t.Errorf("%s is delivered to %v, want only %q", subject, got, want)
		}
	}
	if got, want := s.Inbox("reviews"), "mesh.inbox.reviews"; got != want {
		t.Errorf("Inbox = %q, want %q", got, want)
	}
}

// subjectMatches reports whether a literal subject matches a subscription
// with '*' wildcards, as NATS matches them.
func subjectMatches(sub, subject string) bool {
	a, b := strings.Split(sub, "."), strings.Split(subject, ".")
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != "*" && a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCallerOf(t *testing.T) {
	for subject, want := range map[string]string{
		"mesh.rpc.reviews.productpage": "productpage",
		"mesh.rpc.reviews._":           "",
		"mesh.rpc.reviews.NotAName":    "",
		"mesh.rpc.reviews.":            "",
		"productpage":                  "productpage",
	} {
		if got := bus.CallerOf(subject); got != want {
			t.Errorf("CallerOf(%q) = %q, want %q", subject, got, want)
		}
	}
	if err := bus.ValidateName("service", bus.NoCaller); err == nil {
		t.Errorf("ValidateName accepts %q, the unnamed caller's token", bus.NoCaller)
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
	if got, want := s.Call("ratings"), "mesh.rpc.ratings._"; got != want {
		t.Errorf("zero Subjects Call = %q, want %q", got, want)
	}
	if got, want := s.Inst("ratings", "ratings-1"), "mesh.inst.ratings.ratings-1._"; got != want {
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
		if c := bus.CallerOf("mesh.rpc.x." + s); !strings.Contains(s, ".") && (c != "") != (err == nil) {
			t.Fatalf("CallerOf takes %q as %q, but ValidateName says %v", s, c, err)
		}
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
		subj := bus.Subjects{Caller: s}.Call(s)
		if subj != "mesh.rpc."+s+"."+s {
			t.Fatalf("Call(%q) = %q", s, subj)
		}
		toks := strings.Split(subj, ".")
		if len(toks) != 4 {
			t.Fatalf("subject %q built from accepted name %q has %d tokens, want 4", subj, s, len(toks))
		}
		for _, tok := range toks {
			if tok == "" || tok == "*" || tok == ">" {
				t.Fatalf("subject %q built from accepted name %q has token %q", subj, s, tok)
			}
		}
	})
}

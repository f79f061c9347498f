package bus_test

import (
	"strings"
	"testing"

	"github.com/natsmesh/natsmesh/bus"
)

func TestRegistrySubjects(t *testing.T) {
	tests := []struct {
		name             string
		prefix           string
		hb, bye          string
		hbsOne, hbsAll   string
		byesOne, byesAll string
	}{
		{
			name: "default prefix", prefix: "",
			hb: "mesh.hb.reviews.reviews-1", bye: "mesh.bye.reviews.reviews-1",
			hbsOne: "mesh.hb.reviews.*", hbsAll: "mesh.hb.*.*",
			byesOne: "mesh.bye.reviews.*", byesAll: "mesh.bye.*.*",
		},
		{
			name: "custom prefix", prefix: "prod.mesh",
			hb: "prod.mesh.hb.reviews.reviews-1", bye: "prod.mesh.bye.reviews.reviews-1",
			hbsOne: "prod.mesh.hb.reviews.*", hbsAll: "prod.mesh.hb.*.*",
			byesOne: "prod.mesh.bye.reviews.*", byesAll: "prod.mesh.bye.*.*",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := bus.NewSubjects(tt.prefix)
			if err != nil {
				t.Fatalf("NewSubjects(%q): %v", tt.prefix, err)
			}
			check := func(what, got, want string) {
				t.Helper()
				if got != want {
					t.Errorf("%s = %q, want %q", what, got, want)
				}
			}
			check("Heartbeat", s.Heartbeat("reviews", "reviews-1"), tt.hb)
			check("Bye", s.Bye("reviews", "reviews-1"), tt.bye)
			check(`Heartbeats("reviews")`, s.Heartbeats("reviews"), tt.hbsOne)
			check(`Heartbeats("")`, s.Heartbeats(""), tt.hbsAll)
			check(`Byes("reviews")`, s.Byes("reviews"), tt.byesOne)
			check(`Byes("")`, s.Byes(""), tt.byesAll)
		})
	}
}

func TestRegistrySubjectsZeroValue(t *testing.T) {
	var s bus.Subjects
	if got, want := s.Heartbeat("a", "b"), "mesh.hb.a.b"; got != want {
		t.Errorf("zero Subjects Heartbeat = %q, want %q", got, want)
	}
	if got, want := s.Byes(""), "mesh.bye.*.*"; got != want {
		t.Errorf("zero Subjects Byes = %q, want %q", got, want)
	}
}

func TestParseInstanceSubject(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name     string
		prefix   string
		subject  string
		kind     string
		svc      string
		instance string
		ok       bool
	}{
		{"heartbeat", "", "mesh.hb.reviews.reviews-1", "hb", "reviews", "reviews-1", true},
		{"bye", "", "mesh.bye.reviews.reviews-1", "bye", "reviews", "reviews-1", true},
		{"underscore and digits", "", "mesh.hb.svc_2.i_9", "hb", "svc_2", "i_9", true},
		{"63-char names", "", "mesh.hb." + long[:63] + "." + long[:63], "hb", long[:63], long[:63], true},
		{"custom prefix", "prod.mesh", "prod.mesh.hb.a.b", "hb", "a", "b", true},
		{"custom prefix bye", "prod.mesh", "prod.mesh.bye.a.b", "bye", "a", "b", true},

		{"wrong prefix", "", "other.hb.a.b", "", "", "", false},
		{"default subject under custom prefix", "prod.mesh", "mesh.hb.a.b", "", "", "", false},
		{"custom subject under default prefix", "", "prod.mesh.hb.a.b", "", "", "", false},
		{"prefix of a longer token", "", "meshy.hb.a.b", "", "", "", false},
		{"prefix of a longer custom token", "prod.mesh", "prod.meshy.hb.a.b", "", "", "", false},
		{"prefix glued to the kind", "", "mesh-hb.a.b", "", "", "", false},
		{"custom prefix glued to the kind", "prod.mesh", "prod.mesh_hb.a.b", "", "", "", false},
		{"kind glued to a longer token", "", "mesh.hbx.a.b", "", "", "", false},
		{"bye glued to a longer token", "", "mesh.byex.a.b", "", "", "", false},
		{"other kind", "", "mesh.rpc.a.b", "", "", "", false},
		{"uppercase kind", "", "mesh.HB.a.b", "", "", "", false},
		{"extra token", "", "mesh.hb.a.b.c", "", "", "", false},
		{"too few tokens", "", "mesh.hb.a", "", "", "", false},
		{"trailing dot", "", "mesh.hb.a.", "", "", "", false},
		{"kind only", "", "mesh.hb", "", "", "", false},
		{"kind and dot", "", "mesh.hb.", "", "", "", false},
		{"prefix only", "", "mesh", "", "", "", false},
		{"prefix and dot", "", "mesh.", "", "", "", false},
		{"empty", "", "", "", "", "", false},
		{"empty service", "", "mesh.hb..b", "", "", "", false},
		{"uppercase service", "", "mesh.hb.A.b", "", "", "", false},
		{"uppercase instance", "", "mesh.hb.a.B", "", "", "", false},
		{"star service", "", "mesh.hb.*.b", "", "", "", false},
		{"star instance", "", "mesh.hb.a.*", "", "", "", false},
		{"gt instance", "", "mesh.hb.a.>", "", "", "", false},
		{"64-char service", "", "mesh.hb." + long + ".b", "", "", "", false},
		{"64-char instance", "", "mesh.hb.a." + long, "", "", "", false},
		{"space in instance", "", "mesh.hb.a.b c", "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := bus.NewSubjects(tt.prefix)
			if err != nil {
				t.Fatal(err)
			}
			kind, svc, inst, ok := s.ParseInstanceSubject(tt.subject)
			if ok != tt.ok || kind != tt.kind || svc != tt.svc || inst != tt.instance {
				t.Errorf("ParseInstanceSubject(%q) = %q, %q, %q, %v; want %q, %q, %q, %v",
					tt.subject, kind, svc, inst, ok, tt.kind, tt.svc, tt.instance, tt.ok)
			}
		})
	}
}

// The subjects a namespace builds are the subjects it parses.
func TestParseInstanceSubjectRoundTrip(t *testing.T) {
	for _, prefix := range []string{"", "mesh", "prod.mesh", "a.b.c"} {
		s, err := bus.NewSubjects(prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ kind, subj string }{
			{"hb", s.Heartbeat("ratings", "ratings-7f9c")},
			{"bye", s.Bye("ratings", "ratings-7f9c")},
		} {
			kind, svc, inst, ok := s.ParseInstanceSubject(c.subj)
			if !ok || kind != c.kind || svc != "ratings" || inst != "ratings-7f9c" {
				t.Errorf("prefix %q: ParseInstanceSubject(%q) = %q, %q, %q, %v", prefix, c.subj, kind, svc, inst, ok)
			}
		}
	}
}

func FuzzParseInstanceSubject(f *testing.F) {
	for _, s := range []string{
		"mesh.hb.a.b", "mesh.bye.a.b", "mesh.hb.a.b.c", "meshy.hb.a.b", "mesh.hbx.a.b",
		"mesh.hb.a", "mesh.hb.A.b", "mesh.hb.*.>", "", "mesh.", "mesh.hb..", "mesh-hb.a.b",
	} {
		f.Add(s)
	}
	var subj bus.Subjects
	f.Fuzz(func(t *testing.T, subject string) {
		kind, svc, inst, ok := subj.ParseInstanceSubject(subject)
		if !ok {
			if kind != "" || svc != "" || inst != "" {
				t.Fatalf("ParseInstanceSubject(%q) = %q, %q, %q, false; want empty strings", subject, kind, svc, inst)
			}
			return
		}
		if bus.ValidateName("service", svc) != nil || bus.ValidateName("instance", inst) != nil {
			t.Fatalf("ParseInstanceSubject(%q) accepted invalid names %q, %q", subject, svc, inst)
		}
		var rebuilt string
		switch kind {
		case "hb":
			rebuilt = subj.Heartbeat(svc, inst)
		case "bye":
			rebuilt = subj.Bye(svc, inst)
		default:
			t.Fatalf("ParseInstanceSubject(%q) kind = %q", subject, kind)
		}
		if rebuilt != subject {
			t.Fatalf("ParseInstanceSubject(%q) = %q, %q, %q, which rebuilds %q", subject, kind, svc, inst, rebuilt)
		}
	})
}

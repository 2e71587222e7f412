package secrets

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// planted is a value no test output may contain.
const planted = "sk-live-PLANTED-7f3a9c"

func TestSecretReveal(t *testing.T) {
	if got := New(planted).Reveal(); got != planted {
		t.Errorf("Reveal() = %q, want the value", got)
	}
	if got := (Secret{}).Reveal(); got != "" {
		t.Errorf("zero Secret Reveal() = %q, want empty", got)
	}
}

func TestSecretFormat(t *testing.T) {
	s := New(planted)
	for _, tc := range []struct {
		format string
		want   string
	}{
		{"%v", "[redacted]"},
		{"%+v", "[redacted]"},
		{"%#v", "[redacted]"},
		{"%s", "[redacted]"},
		{"%q", `"[redacted]"`},
		{"%x", "[redacted]"},
		{"%X", "[redacted]"},
		{"%d", "[redacted]"},
		{"%10s", "[redacted]"},
		{"%T", "secrets.Secret"},
	} {
		t.Run(tc.format, func(t *testing.T) {
			if got := fmt.Sprintf(tc.format, s); got != tc.want {
				t.Errorf("Sprintf(%q) = %q, want %q", tc.format, got, tc.want)
			}
			if got := fmt.Sprintf(tc.format, &s); strings.Contains(got, planted) {
				t.Errorf("Sprintf(%q, &s) = %q reveals the value", tc.format, got)
			}
		})
	}
	for name, got := range map[string]string{
		"String":   s.String(),
		"GoString": s.GoString(),
		"Sprint":   fmt.Sprint(s),
		"Sprintln": fmt.Sprintln(s),
	} {
		if strings.TrimSpace(got) != "[redacted]" {
			t.Errorf("%s = %q, want [redacted]", name, got)
		}
	}
}

// holder has the shapes a Secret is likely to be embedded in.
type holder struct {
	Name    string
	Token   Secret
	Ptr     *Secret
	List    []Secret
	ByName  map[string]Secret
	private Secret
}

func newHolder() holder {
	s := New(planted)
	return holder{Name: "notion", Token: s, Ptr: &s, List: []Secret{s}, ByName: map[string]Secret{"a": s}, private: s}
}

func TestSecretInStruct(t *testing.T) {
	h := newHolder()
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		if got := fmt.Sprintf(format, h); strings.Contains(got, planted) {
			t.Errorf("Sprintf(%q, holder) = %q reveals the value", format, got)
		}
	}
	data, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"Name":"notion","Token":"[redacted]","Ptr":"[redacted]","List":["[redacted]"],"ByName":{"a":"[redacted]"}}`
	if string(data) != want {
		t.Errorf("json.Marshal = %s, want %s", data, want)
	}
	// A Secret as a map key goes through MarshalText.
	data, err = json.Marshal(map[Secret]int{New(planted): 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(data); got != `{"[redacted]":1}` {
		t.Errorf("json.Marshal(map key) = %s", got)
	}
	text, err := New(planted).MarshalText()
	if err != nil || string(text) != "[redacted]" {
		t.Errorf("MarshalText() = %q, %v", text, err)
	}
}

func TestSecretSlog(t *testing.T) {
	for _, tc := range []struct {
		name string
		new  func(*bytes.Buffer) slog.Handler
	}{
		{"json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
		{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			log := slog.New(tc.new(&b))
			s := New(planted)
			log.Info("connect", "token", s, slog.Any("ptr", &s), slog.Group("g", "token", s), "holder", newHolder())
			log.With("token", s).Info("with")
			out := b.String()
			if strings.Contains(out, planted) {
				t.Errorf("log output reveals the value:\n%s", out)
			}
			if n := strings.Count(out, "[redacted]"); n < 5 {
				t.Errorf("log output has %d [redacted], want at least 5:\n%s", n, out)
			}
		})
	}
}

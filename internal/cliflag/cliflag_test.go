package cliflag

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	env := map[string]string{"ADPULSE_CLICK_SECRET": "s", "ADPULSE_LISTEN": ":1", "ADPULSE_N": "x"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	secret := fs.String("click-secret", "", "")
	listen := fs.String("listen", "", "")
	if err := Parse(fs, []string{"--listen", ":2"}, lookup); err != nil {
		t.Fatal(err)
	}
	if *secret != "s" || *listen != ":2" {
		t.Fatalf("secret %q listen %q", *secret, *listen)
	}
	fs2 := flag.NewFlagSet("t", flag.ContinueOnError)
	fs2.SetOutput(io.Discard)
	fs2.Int("n", 0, "")
	if err := Parse(fs2, nil, lookup); err == nil || !strings.Contains(err.Error(), "ADPULSE_N") {
		t.Fatalf("bad env value: %v", err)
	}
	if err := Parse(flag.NewFlagSet("t", flag.ContinueOnError), []string{"extra"}, lookup); err == nil {
		t.Fatal("positional argument accepted")
	}
	if EnvName("max-clock-skew") != "ADPULSE_MAX_CLOCK_SKEW" {
		t.Fatal(EnvName("max-clock-skew"))
	}
}

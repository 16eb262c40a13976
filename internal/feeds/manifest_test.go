package feeds

import (
	"strings"
	"testing"
)

func TestParseManifest(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	good := `{"feed":"auto_cpc","version":"v1","files":[{"path":"part-1.csv","rows":3,"sha256":"` + strings.ToUpper(sum) + `"}]}`
	m, err := ParseManifest([]byte(good))
	if err != nil || len(m.Files) != 1 || m.Files[0].SHA256 != sum || m.Rows() != 3 {
		t.Fatalf("%+v %v", m, err)
	}
	for _, bad := range []string{
		``, `[]`, `{"files":[]}`, `{"files":null}`, good + `{}`,
		`{"files":[{"path":"../x.csv","rows":1,"sha256":"` + sum + `"}]}`,
		`{"files":[{"path":"a/b.csv","rows":1,"sha256":"` + sum + `"}]}`,
		`{"files":[{"path":"_manifest.json","rows":1,"sha256":"` + sum + `"}]}`,
		`{"files":[{"path":"a.csv","rows":-1,"sha256":"` + sum + `"}]}`,
		`{"files":[{"path":"a.csv","rows":1,"sha256":"xyz"}]}`,
		`{"files":[{"path":"a.csv","rows":1,"sha256":"` + sum + `"},{"path":"a.csv","rows":1,"sha256":"` + sum + `"}]}`,
		`{"files":[{"path":"a.csv","rows":1,"sha256":"` + sum + `","extra":1}]}`,
		`{"feed":"a b","files":[{"path":"a.csv","rows":1,"sha256":"` + sum + `"}]}`,
	} {
		if _, err := ParseManifest([]byte(bad)); err == nil {
			t.Errorf("ParseManifest(%q) accepted", bad)
		}
	}
}

// FuzzParseManifest: any input is accepted with every file valid, or refused; never a panic.
func FuzzParseManifest(f *testing.F) {
	sum := strings.Repeat("0f", 32)
	f.Add([]byte(`{"files":[{"path":"part-1.csv","rows":3,"sha256":"` + sum + `"}]}`))
	f.Add([]byte(`{"feed":"auto_cpc","version":"2026-12-03","files":[{"path":"a.parquet","rows":0,"sha256":"` + sum + `"}]}`))
	f.Add([]byte(`{"files":[{"path":"..","rows":1e30}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			return
		}
		if len(m.Files) == 0 || len(m.Files) > MaxFiles {
			t.Fatalf("accepted %d files", len(m.Files))
		}
		seen := map[string]bool{}
		for _, fl := range m.Files {
			if !ValidName(fl.Path) || strings.ContainsAny(fl.Path, "/\\") || fl.Path == ManifestName || seen[fl.Path] || fl.Rows < 0 || len(fl.SHA256) != 64 {
				t.Fatalf("accepted file %+v", fl)
			}
			seen[fl.Path] = true
		}
	})
}

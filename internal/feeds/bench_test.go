package feeds

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/catalog"
)

// BenchmarkLoadAutoCPC loads one auto_cpc version of 100,000 rows (4 CSV files) into a SQLite
// catalog: read, checksum, validate, one transaction. Reports rows/s.
func BenchmarkLoadAutoCPC(b *testing.B) {
	const rows, files = 100_000, 4
	var fs []file
	for f := 0; f < files; f++ {
		var lines []string
		for i := f * rows / files; i < (f+1)*rows/files; i++ {
			lines = append(lines, fmt.Sprintf("sku-%d,%d", i, 1000+i))
		}
		fs = append(fs, csvFile(fmt.Sprintf("part-%d.csv", f), bidHeader, lines...))
	}
	ctx := context.Background()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		c, err := catalog.Open(ctx, catalog.Options{DSN: filepath.Join(b.TempDir(), "catalog.db")})
		if err != nil {
			b.Fatal(err)
		}
		db, d := c.DB()
		s, err := OpenStore(ctx, db, d, nil)
		if err != nil {
			b.Fatal(err)
		}
		loc, _ := archive.NewDirTarget(b.TempDir())
		for _, f := range fs {
			_ = loc.Put(ctx, "auto_cpc/v1/"+f.name, f.data)
		}
		_ = loc.Put(ctx, "auto_cpc/v1/"+ManifestName, manifestOf(fs...))
		l, _ := NewLoader(Options{Location: loc, Store: s})
		b.StartTimer()
		if err := l.Poll(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if v, err := s.version(ctx, AutoCPC, "v1"); err != nil || v.Rows != rows {
			b.Fatalf("%+v %v", v, err)
		}
		c.Close()
	}
	b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
}

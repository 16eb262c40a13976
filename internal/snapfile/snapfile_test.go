package snapfile

import (
	"bytes"
	"io"
	"testing"

	"github.com/cockroachdb/pebble/vfs"
)

func TestRoundTrip(t *testing.T) {
	for _, fs := range []vfs.FS{vfs.NewMem(), vfs.NewStrictMem(), vfs.Default} {
		path := "snap"
		if fs == vfs.Default {
			path = t.TempDir() + "/snap"
		}
		body := bytes.Repeat([]byte("adpulse "), 100_000)
		if err := Write(fs, path, "k", 1, func(w io.Writer) error { _, err := w.Write(body); return err }); err != nil {
			t.Fatal(err)
		}
		var got []byte
		err := Read(fs, path, "k", 1, func(r io.Reader) error {
			var err error
			got, err = io.ReadAll(r)
			return err
		})
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%T: %v, %d bytes", fs, err, len(got))
		}
	}
}

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

// FuzzRead: whatever the file holds, Read either hands the reader exactly the body that was
// written (when the file is whole) or refuses it; it never panics or allocates by a length
// read from the file.
func FuzzRead(f *testing.F) {
	fs := vfs.NewMem()
	if err := Write(fs, "seed", "k", 1, func(w io.Writer) error { _, err := w.Write([]byte("body")); return err }); err != nil {
		f.Fatal(err)
	}
	seed, _ := fs.Open("seed")
	b, _ := io.ReadAll(seed)
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		fs := vfs.NewMem()
		w, _ := fs.Create("snap")
		_, _ = w.Write(bytes.Clone(data)) // pebble's in-memory files may scribble on what they write
		w.Close()
		var got []byte
		err := Read(fs, "snap", "k", 1, func(r io.Reader) error {
			var err error
			got, err = io.ReadAll(r)
			return err
		})
		if err == nil && !bytes.Contains(data, got) {
			t.Fatalf("read %q, not in the file", got)
		}
	})
}

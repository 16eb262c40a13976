// Package snapfile writes and reads the snapshot files of in-memory state (see
// internal/ingest's key snapshot): a start loads the newest snapshot and replays only the log
// after it instead of rebuilding the state from the whole log.
//
// Invariants:
//   - A snapshot is replaced atomically: written to a temporary file, synced, renamed over the
//     old one, and the directory synced. A crash at any point leaves the old snapshot or the
//     new one, never a mixture.
//   - A snapshot that is not whole (torn, truncated, a flipped bit, another kind or version)
//     is refused as a whole by Read (ErrInvalid) before its reader's result is used: the
//     checksum (CRC-32C) covers every byte before the trailer. Callers then rebuild the state
//     from the log, so a bad file costs time, never correctness.
//
// Layout: "adpulse-snapshot\n", kind (length-prefixed), version (uint32), body, then the
// trailer: body length (uint64) and CRC-32C of everything before the trailer (uint32), all
// little-endian.
package snapfile

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"

	"github.com/cockroachdb/pebble/vfs"
)

const magic = "adpulse-snapshot\n"

// maxKind bounds the kind read from a file (a corrupt length must not allocate).
const maxKind = 64

// ErrInvalid marks a snapshot that is missing nothing but cannot be trusted: torn, corrupt,
// or of another kind or version.
var ErrInvalid = errors.New("snapshot invalid")

// ErrNotExist is returned by Read when there is no snapshot.
var ErrNotExist = os.ErrNotExist

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Write replaces the snapshot at path with the body that write produces, atomically and
// durably (see the package comment). The temporary file is path + ".tmp"; a leftover one
// from a crash is overwritten.
func Write(fs vfs.FS, path, kind string, version uint32, write func(w io.Writer) error) (err error) {
	if len(kind) > maxKind {
		return fmt.Errorf("snapshot kind %q too long", kind)
	}
	tmp := path + ".tmp"
	f, err := fs.Create(tmp)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if err != nil {
			_ = fs.Remove(tmp)
		}
	}()
	crc := crc32.New(castagnoli)
	// The checksum goes first: a file may scribble on what it was given to write (pebble's
	// in-memory file system does, with its invariants on).
	bw := bufio.NewWriterSize(io.MultiWriter(crc, f), 1<<20)
	head := make([]byte, 0, len(magic)+1+len(kind)+4)
	head = append(head, magic...)
	head = append(head, byte(len(kind)))
	head = append(head, kind...)
	head = binary.LittleEndian.AppendUint32(head, version)
	if _, err := bw.Write(head); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	cw := &countWriter{w: bw}
	if err := write(cw); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	var trailer [12]byte
	binary.LittleEndian.PutUint64(trailer[:8], uint64(cw.n))
	binary.LittleEndian.PutUint32(trailer[8:], crc.Sum32())
	if _, err := f.Write(trailer[:]); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return fmt.Errorf("close %s: %w", tmp, cerr)
	}
	if err := fs.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	d, err := fs.OpenDir(fs.PathDir(path))
	if err != nil {
		return fmt.Errorf("open dir of %s: %w", path, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir of %s: %w", path, err)
	}
	return nil
}

// Read opens the snapshot at path and hands its body to read. read must consume the whole
// body and must not let anything it decoded take effect before Read returns nil: the checksum
// is only known to match at the end. The body reader is buffered and an io.ByteReader. An error wrapping ErrNotExist means there is no
// snapshot; one wrapping ErrInvalid that it cannot be used.
func Read(fs vfs.FS, path, kind string, version uint32, read func(r io.Reader) error) error {
	f, err := fs.Open(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	size := st.Size()
	minSize := int64(len(magic) + 1 + len(kind) + 4 + 12)
	if size < minSize {
		return fmt.Errorf("%s: %d bytes: %w", path, size, ErrInvalid)
	}
	var trailer [12]byte
	if _, err := f.ReadAt(trailer[:], size-12); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	bodyLen := int64(binary.LittleEndian.Uint64(trailer[:8]))
	want := binary.LittleEndian.Uint32(trailer[8:])
	headLen := int64(len(magic) + 1 + len(kind) + 4)
	if bodyLen != size-12-headLen {
		return fmt.Errorf("%s: body length %d in a file of %d bytes: %w", path, bodyLen, size, ErrInvalid)
	}
	crc := crc32.New(castagnoli)
	br := bufio.NewReaderSize(io.TeeReader(io.NewSectionReader(f, 0, size-12), crc), 1<<20)
	head := make([]byte, headLen)
	if _, err := io.ReadFull(br, head); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	wantHead := append([]byte(magic), byte(len(kind)))
	wantHead = append(wantHead, kind...)
	wantHead = binary.LittleEndian.AppendUint32(wantHead, version)
	if string(head) != string(wantHead) {
		return fmt.Errorf("%s: not a %s snapshot of version %d: %w", path, kind, version, ErrInvalid)
	}
	body := &limitedReader{r: br, left: bodyLen}
	rerr := read(body)
	if rerr == nil && body.left != 0 {
		rerr = fmt.Errorf("%d bytes of the body left unread", body.left)
	}
	if rerr != nil {
		// A torn or corrupt body often shows up as a decoding error first: whether the file
		// was whole decides which error this is.
		if _, err := io.Copy(io.Discard, body); err == nil && checksum(crc) != want {
			return fmt.Errorf("%s: checksum mismatch: %w", path, ErrInvalid)
		}
		return fmt.Errorf("%s: %w (%w)", path, rerr, ErrInvalid)
	}
	if checksum(crc) != want {
		return fmt.Errorf("%s: checksum mismatch: %w", path, ErrInvalid)
	}
	return nil
}

func checksum(h hash.Hash32) uint32 { return h.Sum32() }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// limitedReader reads the body only: the reader of a snapshot never sees the trailer. It is
// an io.ByteReader too, so that a reader decoding varints needs no buffer of its own (and the
// body is not copied once more through one).
type limitedReader struct {
	r    *bufio.Reader
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if err == io.EOF && l.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (l *limitedReader) ReadByte() (byte, error) {
	if l.left <= 0 {
		return 0, io.EOF
	}
	c, err := l.r.ReadByte()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err == nil {
		l.left--
	}
	return c, err
}

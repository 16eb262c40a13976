package locallog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/cockroachdb/pebble/vfs"
)

// Record framing. Every record is a 16-byte header followed by its value:
//
//	[0:4]   value length, uint32 little endian
//	[4:8]   CRC32C (Castagnoli) of bytes [0:4] and [8:16+length]
//	[8:16]  append time, unix milliseconds, int64 little endian
//	[16:]   value
//
// The checksum covers the length too, so a torn or flipped length cannot pair with a valid
// checksum by accident. Offsets are not stored: a record's offset is its segment's base offset
// plus its index in the segment, which keeps records small and offsets dense by construction.
const headerSize = 16

// MaxValueBytes is the largest value Append accepts. It bounds what a (possibly corrupt)
// length field can make a reader allocate.
const MaxValueBytes = 64 << 20

// ErrCorrupt is returned (wrapped) by Read and OffsetForTime for a record that fails its
// checksum or framing where no crash can explain it: inside a sealed segment or below the
// validated tail of the active one.
var ErrCorrupt = errors.New("locallog: corrupt record")

// Reasons a record cannot be used; recovery truncates at them, Read reports them as ErrCorrupt.
var (
	errShort     = errors.New("record runs past the end of the segment")
	errBadRecord = errors.New("bad record")
)

// appendRecord appends the framed record to b. It allocates only when b must grow.
func appendRecord(b []byte, tab *crc32.Table, ms int64, v []byte) []byte {
	n := len(b)
	b = append(b, make([]byte, headerSize)...)
	b = append(b, v...)
	h := b[n:]
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(v)))
	binary.LittleEndian.PutUint64(h[8:16], uint64(ms))
	binary.LittleEndian.PutUint32(h[4:8], checksum(tab, h))
	return b
}

// checksum computes the CRC of a whole framed record (header and value).
func checksum(tab *crc32.Table, rec []byte) uint32 {
	return crc32.Update(crc32.Update(0, tab, rec[0:4]), tab, rec[8:])
}

type header struct {
	vlen int // value length
	crc  uint32
	ms   int64 // append time, unix millis
}

func parseHeader(h []byte) (header, error) {
	vlen := binary.LittleEndian.Uint32(h[0:4])
	if vlen > MaxValueBytes {
		return header{}, fmt.Errorf("%w: value length %d exceeds %d", errBadRecord, vlen, MaxValueBytes)
	}
	return header{
		vlen: int(vlen),
		crc:  binary.LittleEndian.Uint32(h[4:8]),
		ms:   int64(binary.LittleEndian.Uint64(h[8:16])),
	}, nil
}

// recordReader reads records of one segment file with pread, in chunks, so that a scan makes
// one system call per chunk rather than one per record.
type recordReader struct {
	f     vfs.File
	limit int64 // bytes of the file that may be read: the durable or validated size
	chunk int   // preferred size of one read
	// fresh makes every read use a new buffer, so that slices returned earlier stay valid
	// (Read hands out values that alias its buffers); scans reuse one buffer instead.
	fresh bool
	// arena, if not nil, is where fresh buffers are carved from, one after the other, so
	// that the memory of one ReadBuffered serves the next.
	arena  *[]byte
	buf    []byte
	bufPos int64 // file position of buf[0]
}

// at returns the n bytes of the file at pos, reading a chunk that starts at pos if they are
// not buffered already.
func (r *recordReader) at(pos int64, n int) ([]byte, error) {
	if pos < 0 || pos+int64(n) > r.limit {
		return nil, errShort
	}
	if pos >= r.bufPos && pos+int64(n) <= r.bufPos+int64(len(r.buf)) {
		i := pos - r.bufPos
		return r.buf[i : i+int64(n) : i+int64(n)], nil
	}
	size := int64(max(r.chunk, n))
	size = min(size, r.limit-pos)
	switch {
	case r.fresh && r.arena != nil:
		r.buf = r.carve(int(size))
	case r.fresh || int64(cap(r.buf)) < size:
		r.buf = make([]byte, size)
	}
	r.buf = r.buf[:size]
	r.bufPos = pos
	if _, err := r.f.ReadAt(r.buf, pos); err != nil {
		r.buf = r.buf[:0]
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read %d bytes at %d: file is shorter than expected: %w", size, pos, err)
		}
		return nil, fmt.Errorf("read %d bytes at %d: %w", size, pos, err)
	}
	return r.buf[:n:n], nil
}

// carve returns the next n bytes of the arena. When they do not fit, the arena is replaced by
// a larger one; the old one stays valid for the values already handed out, and is garbage once
// the reader's caller drops them.
func (r *recordReader) carve(n int) []byte {
	a := *r.arena
	if cap(a)-len(a) < n {
		a = make([]byte, 0, max(2*cap(a), 2*n))
	}
	b := a[len(a) : len(a)+n : len(a)+n]
	*r.arena = a[:len(a)+n]
	return b
}

// header reads and parses the header of the record at pos.
func (r *recordReader) header(pos int64) (header, error) {
	h, err := r.at(pos, headerSize)
	if err != nil {
		return header{}, err
	}
	hd, err := parseHeader(h)
	if err != nil {
		return header{}, err
	}
	if pos+headerSize+int64(hd.vlen) > r.limit {
		return header{}, errShort
	}
	return hd, nil
}

// record reads the whole record at pos, whose header is hd, and verifies its checksum. It
// returns the value.
func (r *recordReader) record(pos int64, hd header, tab *crc32.Table) ([]byte, error) {
	rec, err := r.at(pos, headerSize+hd.vlen)
	if err != nil {
		return nil, err
	}
	if got := checksum(tab, rec); got != hd.crc {
		return nil, fmt.Errorf("%w: checksum %08x, want %08x", errBadRecord, got, hd.crc)
	}
	return rec[headerSize:], nil
}

package archive

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/parquet-go/parquet-go"
)

// Reading the archive back, for the batch path (reconciliation, export): which files hold
// a range of receive hours, the rows of one file, and how far each partition is archived.

// File is one data file of the archive: offsets [First, End) of a log partition.
type File struct {
	Key       string    // relative to the archive's root
	Hour      time.Time // its directory: the receive hour of its first event
	Partition int
	First     int64
	End       int64
}

// MaxReadFileBytes bounds a data file ReadFile accepts. The archiver's files are at most
// MaxFileEvents rows, a few MiB; anything much larger is not one of them.
const MaxReadFileBytes = 1 << 30

// ListFiles returns the data files in the hour directories from the hour of from to the
// hour of to (both included), sorted by partition and first offset. A file's directory is
// the receive hour of its first event; its other events may be received up to the
// archive interval plus slack later.
func ListFiles(ctx context.Context, t Target, from, to time.Time) ([]File, error) {
	var files []File
	for h := from.UTC().Truncate(time.Hour); !h.After(to); h = h.Add(time.Hour) {
		dir := hourDir(h.UnixMicro())
		keys, err := t.List(ctx, dir)
		if err != nil {
			return nil, fmt.Errorf("archive: list %s: %w", dir, err)
		}
		for _, k := range keys {
			name := strings.TrimPrefix(k, dir)
			p, first, end, ok := parseFileName(name)
			if !ok {
				continue // a temporary file or something foreign
			}
			files = append(files, File{Key: k, Hour: h, Partition: p, First: first, End: end})
		}
	}
	slices.SortFunc(files, func(a, b File) int {
		return cmp.Or(cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.First, b.First), cmp.Compare(a.End, b.End))
	})
	return files, nil
}

// ReadFile calls fn for each row of the data file key, in offset order. fn must not keep
// the row past its return.
func ReadFile(ctx context.Context, t Target, key string, fn func(*Row) error) error {
	b, err := GetAtMost(ctx, t, key, MaxReadFileBytes)
	if err != nil {
		return fmt.Errorf("archive: read %s: %w", key, err)
	}
	var r *parquet.GenericReader[Row]
	if err := parquetSafe(key, func() error {
		f, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return err
		}
		r = parquet.NewGenericReader[Row](f)
		return nil
	}); err != nil {
		return err
	}
	defer r.Close()
	buf := make([]Row, 1024)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var n int
		err := parquetSafe(key, func() (err error) {
			n, err = r.Read(buf)
			return err
		})
		for i := range buf[:n] {
			if ferr := fn(&buf[i]); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// parquetSafe runs f, a call into parquet-go on bytes from the target, turning a panic
// into an error: a damaged or foreign object in the archive (FuzzReadFile found inputs
// that make parquet-go index out of range) must fail that read, not the process. Only
// parquet-go's calls run under it, never the caller's callback.
func parquetSafe(key string, f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("archive: %s is not a readable Parquet file: %v", key, p)
		}
	}()
	err = f()
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("archive: read %s: %w", key, err)
	}
	return err
}

// Committed returns, per partition, the offset below which every event is archived (the
// checkpoints); partitions never archived are absent.
func Committed(ctx context.Context, t Target) (map[int]int64, error) {
	keys, err := t.List(ctx, checkpointDir)
	if err != nil {
		return nil, fmt.Errorf("archive: list checkpoints: %w", err)
	}
	out := make(map[int]int64, len(keys))
	for _, k := range keys {
		if !strings.HasSuffix(k, ".json") {
			continue
		}
		b, err := t.Get(ctx, k)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("archive: read %s: %w", k, err)
		}
		var cp checkpoint
		if err := json.Unmarshal(b, &cp); err != nil || k != checkpointKey(cp.Partition) {
			return nil, fmt.Errorf("archive: bad checkpoint %s: %q", k, b)
		}
		out[cp.Partition] = cp.Committed
	}
	return out, nil
}

package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Target is where the archive is stored: a directory or an object store bucket. Keys are
// slash-separated paths relative to the archive's root, such as
// "dt=2025-03-14/hour=09/p0007-o000000001200-000000001500.parquet".
type Target interface {
	// Put stores data under key atomically: a reader sees the whole new content or the old
	// one (or nothing), never part of it. It returns nil only once data is durable.
	Put(ctx context.Context, key string, data []byte) error
	// Get returns the content of key, or an error wrapping fs.ErrNotExist.
	Get(ctx context.Context, key string) ([]byte, error)
	// List returns, sorted, the keys directly under prefix ("" or ending in "/"), and the
	// "directories" under it as their prefix ending in "/".
	List(ctx context.Context, prefix string) ([]string, error)
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// DeleteAll removes every key under prefix (ending in "/").
	DeleteAll(ctx context.Context, prefix string) error
	// String names the target for logs.
	String() string
}

// OpenTarget opens dest: "s3://bucket/prefix" (with s3's settings) or a local directory,
// which is created if missing.
func OpenTarget(dest string, s3 S3Options) (Target, error) {
	if rest, ok := strings.CutPrefix(dest, "s3://"); ok {
		bucket, prefix, _ := strings.Cut(rest, "/")
		return NewS3Target(bucket, prefix, s3)
	}
	if dest == "" {
		return nil, errors.New("archive: no destination")
	}
	return NewDirTarget(dest)
}

// dirTarget stores the archive in a local directory. Put writes a temporary file beside the
// final one (named with a leading dot, which query engines skip), fsyncs it, renames it and
// fsyncs the directory, so a crash leaves the old file or the new one.
type dirTarget struct {
	root string
	// fault, if set, is called before each step of a write ("write", "rename", "syncdir",
	// "delete") and fails it with its error: the tests' crash points.
	fault func(op, key string) error
	// noSync skips fsync: tests that simulate crashes of the process, not of the machine,
	// run many times faster.
	noSync bool
}

// NewDirTarget returns a Target storing under the directory root, created if missing.
func NewDirTarget(root string) (Target, error) {
	return newDirTarget(root)
}

func newDirTarget(root string) (*dirTarget, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	return &dirTarget{root: root}, nil
}

func (t *dirTarget) String() string { return t.root }

func (t *dirTarget) path(key string) string { return filepath.Join(t.root, filepath.FromSlash(key)) }

func (t *dirTarget) step(op, key string) error {
	if t.fault == nil {
		return nil
	}
	return t.fault(op, key)
}

func (t *dirTarget) Put(ctx context.Context, key string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	path := t.path(key)
	dir := filepath.Dir(path)
	if err := t.mkdirs(dir); err != nil {
		return err
	}
	if err := t.step("write", key); err != nil {
		return err
	}
	// The temporary name is fixed, so a rewrite after a crash reuses it rather than
	// leaving another behind.
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	_, err = f.Write(data)
	if err == nil && !t.noSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("archive: write %s: %w", tmp, err)
	}
	if err := t.step("rename", key); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := t.step("syncdir", key); err != nil {
		return err
	}
	return t.syncDir(dir)
}

// mkdirs creates dir and its missing parents, fsyncing each parent that gained an entry.
func (t *dirTarget) mkdirs(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	for _, d := range missing {
		if err := t.syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func (t *dirTarget) syncDir(dir string) error {
	if t.noSync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("archive: sync %s: %w", dir, err)
	}
	return nil
}

func (t *dirTarget) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(t.path(key))
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	return b, nil
}

func (t *dirTarget) List(ctx context.Context, prefix string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(t.path(prefix))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	var keys []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		k := prefix + e.Name()
		if e.IsDir() {
			k += "/"
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}

func (t *dirTarget) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.step("delete", key); err != nil {
		return err
	}
	path := t.path(key)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("archive: %w", err)
	}
	return t.syncDir(filepath.Dir(path))
}

func (t *dirTarget) DeleteAll(ctx context.Context, prefix string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.step("delete", prefix); err != nil {
		return err
	}
	path := t.path(prefix)
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return t.syncDir(filepath.Dir(filepath.Clean(path)))
}

// ErrTooLarge: an object is larger than the reader accepts (GetAtMost).
var ErrTooLarge = errors.New("archive: object too large")

// sizedGetter is a Target that can refuse an object by its size before reading it.
type sizedGetter interface {
	getAtMost(ctx context.Context, key string, limit int64) ([]byte, error)
}

// GetAtMost is Get of an object of at most limit bytes: a larger one fails with an error
// wrapping ErrTooLarge, and the directory and S3 targets refuse it by its size, before
// reading it into memory.
func GetAtMost(ctx context.Context, t Target, key string, limit int64) ([]byte, error) {
	if sg, ok := t.(sizedGetter); ok {
		return sg.getAtMost(ctx, key, limit)
	}
	b, err := t.Get(ctx, key)
	if err == nil && int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than %d", ErrTooLarge, key, len(b), limit)
	}
	return b, err
}

func (t *dirTarget) getAtMost(ctx context.Context, key string, limit int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(t.path(key))
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	defer f.Close()
	// Read one byte past the limit rather than trusting a size that may grow meanwhile.
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("archive: read %s: %w", key, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s is more than %d bytes", ErrTooLarge, key, limit)
	}
	return b, nil
}

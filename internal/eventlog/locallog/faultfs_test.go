package locallog

import (
	"errors"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/vfs"
)

// faultOp is a kind of file operation faultFS can fail or pause.
type faultOp int

const (
	opCreate faultOp = iota
	opRemove
	opWrite    // Write, WriteAt
	opSync     // Sync, SyncData of a file
	opSyncDir  // Sync of a directory
	opTruncate // Truncate
)

func (op faultOp) String() string {
	return [...]string{"create", "remove", "write", "sync", "sync-dir", "truncate"}[op]
}

// faultFS is a vfs.FS over a real one (vfs.Default in a test directory) that injects faults
// and models a crash. pebble's vfs/errorfs does not fit: in v1.1.5 it injects no error into
// SyncData, and its files hide the Truncate method of the files underneath.
//
// Faults: before every operation of a faultOp kind it asks inject (if set) what to do. A nil
// error lets the operation run; otherwise, with do false the operation does not happen, and
// with do true it happens (a write only half of it, like a short write on a full disk) and
// the error is reported anyway: a sync that reached the disk but failed to say so.
//
// Crash: it remembers, for every segment file (*.log), what a power cut would leave: the
// content at its last successful sync, and whether its directory entry (creation or removal)
// was synced. Crash rewrites the files underneath to that state. Unlike vfs.NewStrictMem, its
// files can be truncated, so rollbacks can be tested across crashes.
type faultFS struct {
	vfs.FS

	mu     sync.Mutex
	inject func(op faultOp, path string) (err error, do bool)
	files  map[string]*durableFile
}

// durableFile is what a crash would leave of one segment file.
type durableFile struct {
	data    []byte // content at the last successful sync
	entry   bool   // the directory entry exists durably
	removed bool   // removed, and the removal not yet synced
}

func newFaultFS() *faultFS {
	return &faultFS{FS: vfs.Default, files: map[string]*durableFile{}}
}

func (fs *faultFS) setInject(f func(op faultOp, path string) (err error, do bool)) {
	fs.mu.Lock()
	fs.inject = f
	fs.mu.Unlock()
}

func (fs *faultFS) fault(op faultOp, path string) (error, bool) {
	fs.mu.Lock()
	inject := fs.inject
	fs.mu.Unlock()
	if inject == nil {
		return nil, false
	}
	return inject(op, path)
}

func tracked(path string) bool { return strings.HasSuffix(path, ".log") }

// track starts remembering an existing file as durable as it is now.
func (fs *faultFS) track(path string) {
	if !tracked(path) {
		return
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, ok := fs.files[path]; ok {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	fs.files[path] = &durableFile{data: b, entry: true}
}

func (fs *faultFS) Create(name string) (vfs.File, error) {
	if err, do := fs.fault(opCreate, name); err != nil {
		if do {
			if f, cerr := fs.FS.Create(name); cerr == nil {
				_ = f.Close()
				fs.created(name)
			}
		}
		return nil, err
	}
	f, err := fs.FS.Create(name)
	if err != nil {
		return nil, err
	}
	fs.created(name)
	return &faultFile{File: f, fs: fs, path: name}, nil
}

func (fs *faultFS) created(name string) {
	if !tracked(name) {
		return
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if d, ok := fs.files[name]; ok {
		d.removed = false // re-created before its removal was synced: a crash may keep the old file
		return
	}
	fs.files[name] = &durableFile{}
}

func (fs *faultFS) OpenReadWrite(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	fs.track(name)
	f, err := fs.FS.OpenReadWrite(name, opts...)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: f, fs: fs, path: name}, nil
}

func (fs *faultFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	fs.track(name)
	return fs.FS.Open(name, opts...)
}

func (fs *faultFS) OpenDir(name string) (vfs.File, error) {
	f, err := fs.FS.OpenDir(name)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: f, fs: fs, path: name, dir: true}, nil
}

func (fs *faultFS) Remove(name string) error {
	if err, do := fs.fault(opRemove, name); err != nil {
		if do {
			fs.removed(name, fs.FS.Remove(name))
		}
		return err
	}
	err := fs.FS.Remove(name)
	fs.removed(name, err)
	return err
}

func (fs *faultFS) removed(name string, err error) {
	if err != nil || !tracked(name) {
		return
	}
	fs.track(name) // a file of an earlier run, never opened in this one
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if d, ok := fs.files[name]; ok {
		d.removed = true
	}
}

// synced records a successful sync of a file or directory.
func (fs *faultFS) synced(f *faultFile) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if !f.dir {
		if d, ok := fs.files[f.path]; ok {
			if b, err := os.ReadFile(f.path); err == nil {
				d.data = b
			}
		}
		return
	}
	for path, d := range fs.files {
		if fs.PathDir(path) != f.path {
			continue
		}
		if d.removed {
			delete(fs.files, path)
		} else {
			d.entry = true
		}
	}
}

// Crash makes the files underneath what a power cut would leave. The log must be closed.
func (fs *faultFS) Crash() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var errs []error
	for path, d := range fs.files {
		switch {
		case !d.entry:
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		default: // the durable entry holds the durable data, removed or not
			errs = append(errs, os.WriteFile(path, d.data, 0o644))
		}
	}
	clear(fs.files)
	return errors.Join(errs...)
}

// faultFile is a file of a faultFS.
type faultFile struct {
	vfs.File
	fs   *faultFS
	path string
	dir  bool
}

func (f *faultFile) Write(p []byte) (int, error) {
	if err, do := f.fs.fault(opWrite, f.path); err != nil {
		n := 0
		if do {
			n, _ = f.File.Write(p[:len(p)/2])
		}
		return n, err
	}
	return f.File.Write(p)
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if err, do := f.fs.fault(opWrite, f.path); err != nil {
		n := 0
		if do {
			n, _ = f.File.WriteAt(p[:len(p)/2], off)
		}
		return n, err
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) syncWith(sync func() error) error {
	op := opSync
	if f.dir {
		op = opSyncDir
	}
	err, do := f.fs.fault(op, f.path)
	if err != nil && !do {
		return err
	}
	if serr := sync(); serr != nil {
		return serr
	}
	f.fs.synced(f)
	return err
}

func (f *faultFile) Sync() error     { return f.syncWith(f.File.Sync) }
func (f *faultFile) SyncData() error { return f.syncWith(f.File.SyncData) }

func (f *faultFile) SyncTo(length int64) (bool, error) {
	return false, errors.New("faultFS: SyncTo is not modelled")
}

func (f *faultFile) Truncate(size int64) error {
	t, ok := f.File.(interface{ Truncate(int64) error })
	if !ok {
		return errors.New("faultFS: the file underneath cannot be truncated")
	}
	if err, do := f.fs.fault(opTruncate, f.path); err != nil {
		if do {
			_ = t.Truncate(size)
		}
		return err
	}
	return t.Truncate(size)
}

var _ io.WriterAt = (*faultFile)(nil)

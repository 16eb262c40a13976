package bulkimport

// What the external tests (package bulkimport_test, which start a server and so cannot be in
// this package: the server imports the feeds, which read files through this package) need of
// the unexported API.

var (
	LoadCheckpoint = loadCheckpoint
	CSVRows        = csvRows
	NDJSONRows     = ndjsonRows
	RedactSecrets  = redactSecrets
	ToEvent        = toEvent
)

type Checkpoint = checkpoint

func (cp checkpoint) Save(path string) error { return cp.save(path) }

// WithAfterCheckpoint sets Options.afterCheckpoint.
func WithAfterCheckpoint(o Options, fn func(rowsDone int64)) Options {
	o.afterCheckpoint = fn
	return o
}

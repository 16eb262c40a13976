package bulkimport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync/atomic"
)

// Source yields the rows of one import, always in the same order, so that a checkpoint (the
// number of rows done) means the same rows when the import is run again.
type Source interface {
	// Rows calls fn for every row after the first skip in order, numbered from 1 (skipped
	// rows are counted, not decoded: a resumed import gets past them fast). A row that
	// cannot be read (malformed JSON, a CSV line with the wrong number of fields) comes with
	// a RowError instead of a record; an error from fn stops Rows and is returned.
	Rows(ctx context.Context, skip int64, fn func(num int64, rec Record, bad *RowError) error) error
	// Progress is how far Rows has read: units done and the total (bytes of a file, rows of
	// a Parquet file; total <= 0 when unknown).
	Progress() (done, total int64)
	Close() error
}

// MaxRowBytes bounds one NDJSON line or CSV record: POST /events' bound on one event.
const MaxRowBytes = 64 << 10

// Format of a file source.
type Format string

// Formats.
const (
	FormatNDJSON  Format = "ndjson"
	FormatCSV     Format = "csv"
	FormatParquet Format = "parquet"
)

// formatOf picks the format from a file name's extension.
func formatOf(name string) (Format, error) {
	switch strings.ToLower(path.Ext(name)) {
	case ".ndjson", ".jsonl", ".json":
		return FormatNDJSON, nil
	case ".csv":
		return FormatCSV, nil
	case ".parquet", ".pq":
		return FormatParquet, nil
	}
	return "", fmt.Errorf("cannot tell the format of %q from its extension (.ndjson, .jsonl, .csv, .parquet): give --format", name)
}

// countingReader counts the bytes read through it, for progress.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// streamSource reads NDJSON or CSV from a stream of known (or unknown: -1) size.
type streamSource struct {
	format Format
	table  Table
	in     *countingReader
	size   int64
	close  func() error
}

func (s *streamSource) Progress() (int64, int64) { return s.in.n.Load(), s.size }
func (s *streamSource) Close() error             { return s.close() }

func (s *streamSource) Rows(ctx context.Context, skip int64, fn func(int64, Record, *RowError) error) error {
	t := s.table.orEvents()
	if s.format == FormatCSV {
		return t.csvRows(ctx, s.in, skip, fn)
	}
	return t.ndjsonRows(ctx, s.in, skip, fn)
}

// ndjsonRows reads one JSON object per line of events.
func ndjsonRows(ctx context.Context, r io.Reader, skip int64, fn func(int64, Record, *RowError) error) error {
	return eventTable.ndjsonRows(ctx, r, skip, fn)
}

// ndjsonRows reads one JSON object per line; blank lines are not rows.
func (t Table) ndjsonRows(ctx context.Context, r io.Reader, skip int64, fn func(int64, Record, *RowError) error) error {
	br := bufio.NewReaderSize(r, 256<<10)
	var num int64
	for {
		line, tooLong, err := readLine(br)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(line)) == 0 && !tooLong {
			continue
		}
		num++
		if num%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if num <= skip {
			continue
		}
		if tooLong {
			if err := fn(num, nil, &RowError{Row: num, Message: fmt.Sprintf("line longer than %d bytes", MaxRowBytes)}); err != nil {
				return err
			}
			continue
		}
		rec, bad := t.parseJSONRecord(line)
		if bad != nil {
			bad.Row = num
		}
		if err := fn(num, rec, bad); err != nil {
			return err
		}
	}
}

// readLine returns the next line without its newline. A line over MaxRowBytes is consumed to
// its end and reported as too long, so a huge line costs no memory.
func readLine(br *bufio.Reader) (line []byte, tooLong bool, err error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > MaxRowBytes+1 {
			tooLong = true
		} else {
			buf = append(buf, chunk...)
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF && (len(buf) > 0 || tooLong):
			return bytes.TrimRight(buf, "\r\n"), tooLong, nil
		case err != nil:
			return nil, false, err
		}
		return bytes.TrimRight(buf, "\r\n"), tooLong, nil
	}
}

// parseJSONRecord reads one object whose values are strings, numbers or null.
func (t Table) parseJSONRecord(line []byte) (Record, *RowError) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, &RowError{Message: "not a JSON object: " + err.Error()}
	}
	if dec.More() {
		return nil, &RowError{Message: "more than one JSON value on the line"}
	}
	rec := make(Record, len(m))
	for k, v := range m {
		k = strings.ToLower(k)
		switch v := v.(type) {
		case nil:
		case string:
			rec[k] = v
		case json.Number:
			rec[k] = v.String()
		default:
			if t.isColumn(k) {
				return nil, &RowError{Field: k, Message: "must be a string or a number"}
			}
		}
	}
	return rec, nil
}

func (t Table) isColumn(k string) bool {
	for _, c := range t.Columns {
		if c == k {
			return true
		}
	}
	return false
}

// csvRows reads a CSV file of events.
func csvRows(ctx context.Context, r io.Reader, skip int64, fn func(int64, Record, *RowError) error) error {
	return eventTable.csvRows(ctx, r, skip, fn)
}

// csvRows reads a CSV file whose first line names the columns.
func (t Table) csvRows(ctx context.Context, r io.Reader, skip int64, fn func(int64, Record, *RowError) error) error {
	// encoding/csv holds a whole line in memory: bound it (a row is at most MaxRowBytes).
	cr := csv.NewReader(&lineLimitReader{r: r, max: 4 * MaxRowBytes})
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return fmt.Errorf("CSV header: %w", err)
	}
	names := make([]string, len(header))
	for i, h := range header {
		names[i] = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
	}
	for _, req := range t.Required {
		if !slicesContain(names, req) {
			return fmt.Errorf("CSV header %q: needs at least the columns %s", strings.Join(header, ","), strings.Join(t.Required, " and "))
		}
	}
	var num int64
	for {
		fields, err := cr.Read()
		if err == io.EOF {
			return nil
		}
		num++
		if num%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		var pe *csv.ParseError
		if err != nil && !errors.As(err, &pe) {
			return err
		}
		if num <= skip {
			continue
		}
		var bad *RowError
		var rec Record
		switch {
		case err != nil:
			bad = &RowError{Row: num, Message: "malformed CSV: " + pe.Err.Error()}
		case len(fields) != len(names):
			bad = &RowError{Row: num, Message: fmt.Sprintf("%d fields, the header has %d", len(fields), len(names))}
		default:
			size := 0
			rec = make(Record, len(names))
			for i, f := range fields {
				size += len(f)
				if f != "" {
					rec[names[i]] = f
				}
			}
			if size > MaxRowBytes {
				rec, bad = nil, &RowError{Row: num, Message: fmt.Sprintf("record longer than %d bytes", MaxRowBytes)}
			}
		}
		if err := fn(num, rec, bad); err != nil {
			return err
		}
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// openFile opens a local file source.
func openFile(name string, format Format) (Source, error) {
	if format == "" {
		var err error
		if format, err = formatOf(name); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if format == FormatParquet {
		s, err := newParquetSource(f, st.Size(), f.Close)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return s, nil
	}
	return &streamSource{format: format, in: &countingReader{r: f}, size: st.Size(), close: f.Close}, nil
}

// errLineTooLong stops a CSV import: encoding/csv cannot skip past a line, so a line this
// long is a broken file, not a bad row.
var errLineTooLong = fmt.Errorf("a CSV line longer than %d bytes: not a file of events", 4*MaxRowBytes)

// lineLimitReader fails when more than max bytes pass without a newline.
type lineLimitReader struct {
	r   io.Reader
	max int
	cur int
}

func (l *lineLimitReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for _, c := range p[:n] {
		if c == '\n' {
			l.cur = 0
		} else if l.cur++; l.cur > l.max {
			return 0, errLineTooLong
		}
	}
	return n, err
}

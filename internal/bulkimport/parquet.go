package bulkimport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"
)

// parquetSource reads a flat Parquet file (one column per field, as Spark, Trino and DuckDB
// write a table). Strings, integers and timestamps are accepted; timestamps become RFC 3339.
type parquetSource struct {
	table Table
	file  *parquet.File
	close func() error
	read  atomic.Int64
}

func newParquetSource(r io.ReaderAt, size int64, closeFn func() error) (*parquetSource, error) {
	f, err := parquet.OpenFile(r, size)
	if err != nil {
		return nil, fmt.Errorf("not a Parquet file: %w", err)
	}
	for _, fld := range f.Schema().Fields() {
		if !fld.Leaf() || fld.Repeated() {
			return nil, fmt.Errorf("column %q is nested or repeated: import reads flat files", fld.Name())
		}
	}
	return &parquetSource{file: f, close: closeFn}, nil
}

func (s *parquetSource) Progress() (int64, int64) { return s.read.Load(), s.file.NumRows() }
func (s *parquetSource) Close() error             { return s.close() }

// column says how to render one leaf column as text.
type column struct {
	name string
	unit time.Duration // > 0: an INT64 timestamp in this unit
}

func (s *parquetSource) Rows(ctx context.Context, skip int64, fn func(int64, Record, *RowError) error) error {
	fields := s.file.Schema().Fields()
	cols := make([]column, len(fields))
	for i, fld := range fields {
		cols[i].name = strings.ToLower(fld.Name())
		if lt := fld.Type().LogicalType(); lt != nil {
			if ts, ok := lt.Value.(*format.TimestampType); ok && ts.Unit.Value != nil {
				cols[i].unit = ts.Unit.Value.Duration()
			}
		}
	}
	r := parquet.NewReader(s.file)
	defer r.Close()
	buf := make([]parquet.Row, 512)
	var num int64
	if skip > 0 {
		if skip >= s.file.NumRows() {
			s.read.Store(s.file.NumRows())
			return nil
		}
		if err := r.SeekToRow(skip); err != nil {
			return fmt.Errorf("seek to Parquet row %d: %w", skip+1, err)
		}
		num = skip
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := r.ReadRows(buf)
		for _, row := range buf[:n] {
			num++
			rec := make(Record, len(cols))
			var bad *RowError
			for _, v := range row {
				c := v.Column()
				if c < 0 || c >= len(cols) || v.IsNull() {
					continue
				}
				text, err := renderValue(v, cols[c])
				if err != nil && s.table.orEvents().isColumn(cols[c].name) {
					bad = &RowError{Row: num, Field: cols[c].name, Message: err.Error()}
				}
				rec[cols[c].name] = text
			}
			if bad != nil {
				rec = nil
			}
			s.read.Store(num)
			if err := fn(num, rec, bad); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read Parquet row %d: %w", num+1, err)
		}
	}
}

func renderValue(v parquet.Value, c column) (string, error) {
	switch v.Kind() {
	case parquet.ByteArray, parquet.FixedLenByteArray:
		return string(v.ByteArray()), nil
	case parquet.Int32:
		return strconv.FormatInt(int64(v.Int32()), 10), nil
	case parquet.Int64:
		if c.unit > 0 {
			return time.Unix(0, 0).Add(time.Duration(v.Int64()) * c.unit).UTC().Format(time.RFC3339Nano), nil
		}
		return strconv.FormatInt(v.Int64(), 10), nil
	}
	return "", fmt.Errorf("the Parquet type %s is not a string, an integer or a timestamp", v.Kind())
}

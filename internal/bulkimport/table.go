package bulkimport

import (
	"bytes"
	"fmt"
)

// Table says which columns a reader checks. Import reads events; the data-science feeds
// (internal/feeds) read their own tables through the same readers, so a CSV, NDJSON or
// Parquet file means the same thing everywhere.
type Table struct {
	// Columns must hold strings or numbers (a JSON object or a Parquet float in one is a bad
	// row); other columns are read when they can be and otherwise ignored.
	Columns []string
	// Required are the columns a CSV header must name.
	Required []string
}

// eventTable is the table of an import: the fields of a line of POST /events.
var eventTable = Table{Columns: Columns, Required: []string{"type", "ad_id"}}

// orEvents is t, or the events' table for the zero Table.
func (t Table) orEvents() Table {
	if t.Columns == nil && t.Required == nil {
		return eventTable
	}
	return t
}

// FormatOf picks the format of a file from its name's extension.
func FormatOf(name string) (Format, error) { return formatOf(name) }

// OpenBytes reads a whole file held in memory as rows of t. Columns are named in lower case
// in the records.
func OpenBytes(data []byte, format Format, t Table) (Source, error) {
	r := bytes.NewReader(data)
	switch format {
	case FormatParquet:
		s, err := newParquetSource(r, int64(len(data)), func() error { return nil })
		if err != nil {
			return nil, err
		}
		s.table = t
		return s, nil
	case FormatCSV, FormatNDJSON:
		return &streamSource{format: format, table: t, in: &countingReader{r: r}, size: int64(len(data)), close: func() error { return nil }}, nil
	}
	return nil, fmt.Errorf("unknown format %q: want ndjson, csv or parquet", format)
}

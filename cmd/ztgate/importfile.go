package main

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// importRow is one device of an import file, or the reason it could not be
// read. Row is the line of the file it starts on (a CSV header is row 1),
// so an operator finds it in an editor or a spreadsheet.
type importRow struct {
	Row      int
	Name     string
	SPIFFEID string
	Labels   map[string]string
	Status   string
	Err      error
}

// importFormat is how an import file is written.
type importFormat int

const (
	formatCSV importFormat = iota
	formatJSONLines
)

func (f importFormat) String() string {
	if f == formatJSONLines {
		return "JSON lines"
	}
	return "CSV"
}

// maxImportLine bounds one line of a JSON lines file.
const maxImportLine = 1 << 20

// detectFormat picks the format by the file's extension (.csv; .jsonl,
// .json) and otherwise by its first non-blank byte: '{' is JSON lines.
func detectFormat(name string, head []byte) importFormat {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".csv":
		return formatCSV
	case ".jsonl", ".json", ".ndjson":
		return formatJSONLines
	}
	if b := bytes.TrimLeft(head, " \t\r\n\ufeff"); len(b) > 0 && b[0] == '{' {
		return formatJSONLines
	}
	return formatCSV
}

// readImport reads every row of r. A row that cannot be read is returned
// with its Err set, and reading goes on; only a file that cannot be read at
// all (an I/O error, a CSV header that is not one) is an error.
func readImport(r io.Reader, f importFormat) ([]importRow, error) {
	if f == formatJSONLines {
		return readJSONLines(r)
	}
	return readCSV(r)
}

// importColumns are the CSV columns; name is required, the others optional
// and in any order.
var importColumns = []string{"name", "spiffe_id", "labels", "status"}

func readCSV(r io.Reader) ([]importRow, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1 // checked per row, so a short row is that row's error
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("CSV header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		known := false
		for _, c := range importColumns {
			known = known || h == c
		}
		if !known {
			return nil, fmt.Errorf("CSV header: unknown column %q (want %s)", h, strings.Join(importColumns, ","))
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("CSV header: column %q given twice", h)
		}
		col[h] = i
	}
	if _, ok := col["name"]; !ok {
		return nil, fmt.Errorf("CSV header: no name column (want %s)", strings.Join(importColumns, ","))
	}

	var rows []importRow
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return rows, nil
		}
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			row := importRow{Row: pe.StartLine, Err: fmt.Errorf("CSV: %w", pe.Err)}
			if i := col["name"]; i < len(rec) {
				row.Name = strings.TrimSpace(rec[i])
			}
			rows = append(rows, row)
			continue
		}
		if err != nil {
			return nil, err
		}
		line, _ := cr.FieldPos(0) // a record has at least one field
		row := importRow{Row: line}
		field := func(c string) string {
			if i, ok := col[c]; ok && i < len(rec) {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		row.Name = field("name")
		if len(rec) != len(header) {
			row.Err = fmt.Errorf("%d fields, want %d (%s)", len(rec), len(header), strings.Join(header, ","))
			rows = append(rows, row)
			continue
		}
		row.SPIFFEID = field("spiffe_id")
		row.Status = field("status")
		row.Labels, row.Err = parseLabelList(field("labels"))
		rows = append(rows, row)
	}
}

// parseLabelList parses the labels column: k=v pairs separated by ';'.
func parseLabelList(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ";") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("labels %q: want k=v;k=v", s)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("labels %q: key %q given twice", s, k)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

// jsonRow is one line of a JSON lines file; unknown fields are an error, so
// a misspelled key is not silently dropped.
type jsonRow struct {
	Name     string            `json:"name"`
	SPIFFEID string            `json:"spiffe_id"`
	Labels   map[string]string `json:"labels"`
	Status   string            `json:"status"`
}

func readJSONLines(r io.Reader) ([]importRow, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxImportLine)
	var rows []importRow
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if n == 1 {
			line = bytes.TrimPrefix(line, []byte("\ufeff"))
		}
		if len(line) == 0 {
			continue
		}
		row := importRow{Row: n}
		var jr jsonRow
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		err := dec.Decode(&jr)
		if err == nil && dec.More() {
			err = errors.New("more than one JSON value on the line")
		}
		if err != nil {
			// The name, if the line has one, makes the report readable.
			var loose struct {
				Name string `json:"name"`
			}
			_ = json.Unmarshal(line, &loose)
			row.Name = loose.Name
			row.Err = fmt.Errorf("JSON: %w", err)
			rows = append(rows, row)
			continue
		}
		row.Name, row.SPIFFEID, row.Labels, row.Status = jr.Name, jr.SPIFFEID, jr.Labels, jr.Status
		if row.Labels == nil {
			row.Labels = map[string]string{}
		}
		rows = append(rows, row)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("a line is longer than %d bytes", maxImportLine)
		}
		return nil, err
	}
	return rows, nil
}

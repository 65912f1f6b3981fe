package api

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
)

// maxJSONDepth bounds the nesting checkFieldNames follows; the request
// types nest three levels deep.
const maxJSONDepth = 32

// checkFieldNames walks raw, one JSON value that decoded into t, and
// refuses an object key that is not exactly the name of a field of the
// struct it fills (encoding/json matches names case-insensitively, so
// {"Name": ...} or {"NAME": ...} would fill "name"), and a key given twice
// in one object (encoding/json keeps the last; a proxy may read the first).
// Keys of maps (labels) may be anything, once.
func checkFieldNames(raw []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return walkFieldNames(dec, t, 0)
}

func walkFieldNames(dec *json.Decoder, t reflect.Type, depth int) error {
	if depth > maxJSONDepth {
		return badRequest("invalid JSON: nested more than %d levels", maxJSONDepth)
	}
	t = concrete(t)
	tok, err := dec.Token()
	if err != nil {
		return badRequest("invalid JSON: %v", err)
	}
	switch tok {
	case json.Delim('{'):
		return walkObject(dec, t, depth)
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := walkFieldNames(dec, elem, depth+1); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ']'
		return err
	}
	return nil // a scalar
}

func walkObject(dec *json.Decoder, t reflect.Type, depth int) error {
	var fields map[string]reflect.Type
	if t != nil && t.Kind() == reflect.Struct {
		fields = fieldTypes(t)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return badRequest("invalid JSON: %v", err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return badRequest("invalid JSON: field %s given twice", clip(key))
		}
		seen[key] = true
		var sub reflect.Type
		switch {
		case fields != nil:
			ft, ok := fields[key]
			if !ok {
				return unknownField(key, fields)
			}
			sub = ft
		case t != nil && t.Kind() == reflect.Map:
			sub = t.Elem()
		}
		if err := walkFieldNames(dec, sub, depth+1); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return err
}

// unknownField is the error for key, naming the field it was probably
// meant to be.
func unknownField(key string, fields map[string]reflect.Type) error {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return badRequest("invalid JSON: unknown field %s (field names are case-sensitive: %s)", clip(key), clip(name))
		}
	}
	return badRequest("invalid JSON: unknown field %s", clip(key))
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// concrete returns t without pointers, or nil when t's JSON form is not
// its fields' (a type with its own UnmarshalJSON, an interface): its keys
// are not checked.
func concrete(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() == reflect.Interface || reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	return t
}

// fieldCache holds fieldTypes per struct type.
var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// fieldTypes maps the JSON names of a struct's fields (as encoding/json
// names them, embedded structs flattened) to their types.
func fieldTypes(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	addFields(t, m)
	fieldCache.Store(t, m)
	return m
}

func addFields(t reflect.Type, m map[string]reflect.Type) {
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			if ft := concrete(f.Type); ft != nil && ft.Kind() == reflect.Struct {
				addFields(ft, m)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
}

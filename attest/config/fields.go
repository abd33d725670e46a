package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Format is a configuration file syntax.
type Format int

// Formats upstream's config crate picks by file extension.
const (
	TOML Format = iota
	JSON
)

// FormatOf returns the format a path's extension selects (.json is JSON,
// anything else TOML).
func FormatOf(path string) Format {
	if strings.EqualFold(filepath.Ext(path), ".json") {
		return JSON
	}
	return TOML
}

func decode(data []byte, f Format) (map[string]any, error) {
	m := map[string]any{}
	switch f {
	case JSON:
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("parse JSON: %w", err)
		}
	default:
		if _, err := toml.Decode(string(data), &m); err != nil {
			return nil, fmt.Errorf("parse TOML: %w", err)
		}
	}
	return m, nil
}

// table walks one table of a decoded document, converting values the way
// upstream's config crate does (strings "true"/"17" are accepted for bools
// and integers) and remembering which keys were read, so that the rest can
// be reported as unknown.
type table struct {
	m    map[string]any
	path string
	seen map[string]bool
	warn *[]string
	// serdeBools: booleans are TOML/JSON booleans only, as a document
	// upstream reads with serde directly (registries.conf) has them.
	serdeBools bool
}

func newTable(m map[string]any, path string, warn *[]string) *table {
	return &table{m: m, path: path, seen: map[string]bool{}, warn: warn}
}

// child is a sub-table read the same way as t.
func (t *table) child(m map[string]any, path string) *table {
	c := newTable(m, path, t.warn)
	c.serdeBools = t.serdeBools
	return c
}

func (t *table) name(key string) string {
	if t.path == "" {
		return key
	}
	return t.path + "." + key
}

func (t *table) get(key string) (any, bool) {
	t.seen[key] = true
	v, ok := t.m[key]
	if v == nil { // JSON null is "not set", as serde's Option
		return nil, false
	}
	return v, ok
}

// done reports keys never read as warnings.
func (t *table) done() {
	var unknown []string
	for k := range t.m {
		if !t.seen[k] {
			unknown = append(unknown, t.name(k))
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		*t.warn = append(*t.warn, "unknown key "+k)
	}
}

func (t *table) str(key string, dst *string) error {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("field %s: want a string, got %s", t.name(key), typeName(v))
	}
	*dst = s
	return nil
}

func (t *table) optStr(key string, dst **string) error {
	if v := t.m[key]; v == nil {
		t.seen[key] = true
		return nil
	}
	var s string
	if err := t.str(key, &s); err != nil {
		return err
	}
	*dst = &s
	return nil
}

func (t *table) requiredStr(key string, dst *string) error {
	if v := t.m[key]; v == nil {
		t.seen[key] = true
		return fmt.Errorf("field %s: missing", t.name(key))
	}
	return t.str(key, dst)
}

// boolean reads a boolean the way the config crate behind aa.toml and
// cdh.toml converts one (Value::into_bool): a boolean; a number, true
// unless zero; or one of the strings 1/true/on/yes and 0/false/off/no in
// any case. Anything else ("t", "maybe", an array) is an error naming the
// field. With serdeBools only a boolean is one.
func (t *table) boolean(key string, dst *bool) error {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	switch b := v.(type) {
	case bool:
		*dst = b
		return nil
	}
	if !t.serdeBools {
		switch b := v.(type) {
		case int64:
			*dst = b != 0
			return nil
		case float64:
			*dst = b != 0
			return nil
		case json.Number:
			if f, err := b.Float64(); err == nil {
				*dst = f != 0
				return nil
			}
		case string:
			switch strings.ToLower(b) {
			case "1", "true", "on", "yes":
				*dst = true
				return nil
			case "0", "false", "off", "no":
				*dst = false
				return nil
			}
			return fmt.Errorf("field %s: want a boolean, got a string that is none of 1/true/on/yes/0/false/off/no", t.name(key))
		}
	}
	return fmt.Errorf("field %s: want a boolean, got %s", t.name(key), typeName(v))
}

func (t *table) uint(key string, dst *uint64) error {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	var s string
	switch n := v.(type) {
	case int64:
		if n >= 0 {
			*dst = uint64(n)
			return nil
		}
		s = strconv.FormatInt(n, 10)
	case json.Number:
		s = n.String()
	case string:
		s = n
	default:
		return fmt.Errorf("field %s: want a non-negative integer, got %s", t.name(key), typeName(v))
	}
	u, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("field %s: want a non-negative integer, got %q", t.name(key), s)
	}
	*dst = u
	return nil
}

func (t *table) strList(key string, dst *[]string) error {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	arr, ok := v.([]any)
	if !ok {
		return fmt.Errorf("field %s: want an array of strings, got %s", t.name(key), typeName(v))
	}
	out := make([]string, 0, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return fmt.Errorf("field %s[%d]: want a string, got %s", t.name(key), i, typeName(e))
		}
		out = append(out, s)
	}
	*dst = out
	return nil
}

// sub returns the nested table at key, or nil when absent.
func (t *table) sub(key string) (*table, error) {
	v, ok := t.get(key)
	if !ok {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("field %s: want a table, got %s", t.name(key), typeName(v))
	}
	return t.child(m, t.name(key)), nil
}

// subList returns the array of tables at key.
func (t *table) subList(key string) ([]*table, error) {
	v, ok := t.get(key)
	if !ok {
		return nil, nil
	}
	var maps []map[string]any
	switch a := v.(type) {
	case []map[string]any:
		maps = a
	case []any:
		for i, e := range a {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("field %s[%d]: want a table, got %s", t.name(key), i, typeName(e))
			}
			maps = append(maps, m)
		}
	default:
		return nil, fmt.Errorf("field %s: want an array of tables, got %s", t.name(key), typeName(v))
	}
	out := make([]*table, len(maps))
	for i, m := range maps {
		out[i] = t.child(m, fmt.Sprintf("%s[%d]", t.name(key), i))
	}
	return out, nil
}

func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int64, json.Number:
		return "a number"
	case float64:
		return "a float"
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "an array"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

package agentpolicy

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// applyPatchOp applies one RFC 6902 operation (add, remove, replace, test,
// copy, move) to doc and returns the new document.
func applyPatchOp(doc any, op map[string]any) (any, error) {
	name, _ := op["op"].(string)
	path, ok := op["path"].(string)
	if !ok {
		return nil, errors.New(`missing "path"`)
	}
	ptr, err := parsePointer(path)
	if err != nil {
		return nil, err
	}
	switch name {
	case "add", "replace", "test":
		value, ok := op["value"]
		if !ok {
			return nil, fmt.Errorf(`%s %s: missing "value"`, name, path)
		}
		switch name {
		case "add":
			return setAt(doc, ptr, value, true)
		case "replace":
			return setAt(doc, ptr, value, false)
		default:
			cur, err := getAt(doc, ptr)
			if err != nil {
				return nil, err
			}
			if !reflect.DeepEqual(cur, value) {
				return nil, fmt.Errorf("test %s failed", path)
			}
			return doc, nil
		}
	case "remove":
		return removeAt(doc, ptr)
	case "copy", "move":
		fromStr, ok := op["from"].(string)
		if !ok {
			return nil, fmt.Errorf(`%s %s: missing "from"`, name, path)
		}
		from, err := parsePointer(fromStr)
		if err != nil {
			return nil, err
		}
		v, err := getAt(doc, from)
		if err != nil {
			return nil, err
		}
		if name == "move" {
			if doc, err = removeAt(doc, from); err != nil {
				return nil, err
			}
		}
		return setAt(doc, ptr, v, true)
	}
	return nil, fmt.Errorf("unsupported op %q", name)
}

func parsePointer(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	if !strings.HasPrefix(s, "/") {
		return nil, fmt.Errorf("JSON pointer %q does not start with /", s)
	}
	parts := strings.Split(s[1:], "/")
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
	}
	return parts, nil
}

func getAt(doc any, ptr []string) (any, error) {
	cur := doc
	for _, tok := range ptr {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[tok]
			if !ok {
				return nil, fmt.Errorf("path member %q not found", tok)
			}
			cur = v
		case []any:
			i, err := arrayIndex(tok, len(c), false)
			if err != nil {
				return nil, err
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("path member %q is inside a scalar", tok)
		}
	}
	return cur, nil
}

// setAt adds (insert) or replaces the value at ptr, returning the new root.
func setAt(doc any, ptr []string, value any, insert bool) (any, error) {
	if len(ptr) == 0 {
		return value, nil
	}
	parent, err := getAt(doc, ptr[:len(ptr)-1])
	if err != nil {
		return nil, err
	}
	last := ptr[len(ptr)-1]
	switch c := parent.(type) {
	case map[string]any:
		if _, ok := c[last]; !ok && !insert {
			return nil, fmt.Errorf("replace: member %q not found", last)
		}
		c[last] = value
		return doc, nil
	case []any:
		i, err := arrayIndex(last, len(c), insert)
		if err != nil {
			return nil, err
		}
		var arr []any
		if insert {
			arr = append(append(append(make([]any, 0, len(c)+1), c[:i]...), value), c[i:]...)
		} else {
			arr = c
			arr[i] = value
		}
		return setAt(doc, ptr[:len(ptr)-1], arr, false)
	}
	return nil, fmt.Errorf("cannot set %q inside a scalar", last)
}

func removeAt(doc any, ptr []string) (any, error) {
	if len(ptr) == 0 {
		return nil, errors.New("cannot remove the whole document")
	}
	parent, err := getAt(doc, ptr[:len(ptr)-1])
	if err != nil {
		return nil, err
	}
	last := ptr[len(ptr)-1]
	switch c := parent.(type) {
	case map[string]any:
		if _, ok := c[last]; !ok {
			return nil, fmt.Errorf("remove: member %q not found", last)
		}
		delete(c, last)
		return doc, nil
	case []any:
		i, err := arrayIndex(last, len(c), false)
		if err != nil {
			return nil, err
		}
		arr := append(append(make([]any, 0, len(c)-1), c[:i]...), c[i+1:]...)
		return setAt(doc, ptr[:len(ptr)-1], arr, false)
	}
	return nil, fmt.Errorf("cannot remove %q inside a scalar", last)
}

func arrayIndex(tok string, n int, insert bool) (int, error) {
	if insert && tok == "-" {
		return n, nil
	}
	i, err := strconv.Atoi(tok)
	if err != nil || i < 0 || (tok != "0" && strings.HasPrefix(tok, "0")) {
		return 0, fmt.Errorf("bad array index %q", tok)
	}
	if i > n || (!insert && i == n) {
		return 0, fmt.Errorf("array index %d out of range", i)
	}
	return i, nil
}

package policy

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
)

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// reflectTypeOf returns the type a pointer points to.
func reflectTypeOf(ptr any) reflect.Type { return reflect.TypeOf(ptr).Elem() }

// checkValue walks a JSON-like value along a Go type and reports unknown
// fields and values of the wrong kind with their paths: encoding/json would
// only name the first problem, and without a path.
func checkValue(v any, t reflect.Type, path string, report func(path, msg string)) {
	if v == nil {
		return
	}
	// Types with their own decoding (quantities, times) are left to it.
	if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) {
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		checkValue(v, t.Elem(), path, report)
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			report(path, "want an object, got "+describe(v))
			return
		}
		fields := jsonFields(t)
		for _, k := range sortedKeys(m) {
			ft, ok := fields[k]
			if !ok {
				report(joinPath(path, k), "unknown field")
				continue
			}
			checkValue(m[k], ft, joinPath(path, k), report)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			report(path, "want an object, got "+describe(v))
			return
		}
		for _, k := range sortedKeys(m) {
			checkValue(m[k], t.Elem(), joinPath(path, k), report)
		}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			if _, ok := v.(string); !ok {
				report(path, "want a base64 string, got "+describe(v))
			}
			return
		}
		l, ok := v.([]any)
		if !ok {
			report(path, "want a list, got "+describe(v))
			return
		}
		for i, e := range l {
			checkValue(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), report)
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			report(path, fmt.Sprintf("want a string, got %s (quote it)", describe(v)))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			report(path, "want true or false, got "+describe(v))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		switch v.(type) {
		case int, int64, uint64, float64:
		default:
			report(path, "want a number, got "+describe(v))
		}
	}
}

func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("string %q", v)
	case bool:
		return fmt.Sprintf("bool %v", v)
	case int, int64, uint64, float64:
		return fmt.Sprintf("number %v", v)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields maps the JSON names of a struct's fields, embedded inline
// structs included, to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			et := f.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for k, v := range jsonFields(et) {
					fields[k] = v
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	fieldCache.Store(t, fields)
	return fields
}

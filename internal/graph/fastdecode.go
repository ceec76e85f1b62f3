package graph

import (
	"encoding"
	"encoding/json"
	"reflect"
	"strings"
	"unicode/utf8"
)

// The fast decoder parses a callback body in one pass into Notifications,
// without encoding/json's separate validation scan and per-byte state
// machine. It handles the shape Graph sends; anything else (an error, a
// duplicate member, a member name that matches a field only when case is
// ignored, a value of another type than the field's, deep nesting) makes
// it give up, and encoding/json decodes the body instead. So it either
// returns what json.Unmarshal would, or nothing; FuzzFastDecode checks this.
//
// Its field tables are built from the types' json tags, so a field added to
// the types is decoded without changes here; a field of a kind it does not
// know makes it give up whenever the member is present.

type fastKind uint8

const (
	fastUnsupported fastKind = iota
	fastString
	fastBool
	fastStructPtr   // *T, T a struct
	fastStructSlice // []T, T a struct
	fastStringSlice // []string
)

type fastField struct {
	name  string
	index int
	kind  fastKind
	elem  *fastStruct // of fastStructPtr and fastStructSlice
}

type fastStruct struct {
	typ    reflect.Type
	fields []fastField
	byName map[string]int // exact JSON name → index into fields
}

// fastNotifications is nil when Notifications holds something the fast
// decoder cannot mirror (an embedded struct, a struct decoded by a method of
// its own, clashing names), which disables it.
var fastNotifications = newFastStruct(reflect.TypeFor[Notifications](), map[reflect.Type]*fastStruct{})

func newFastStruct(t reflect.Type, seen map[reflect.Type]*fastStruct) *fastStruct {
	if s, ok := seen[t]; ok {
		return s
	}
	if unmarshals(t) {
		return nil // encoding/json would call the method
	}
	s := &fastStruct{typ: t, byName: map[string]int{}}
	seen[t] = s
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			return nil
		}
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		ff := fastField{name: name, index: i}
		ft := f.Type
		switch {
		case strings.Contains(","+opts+",", ",string,") || unmarshals(ft):
			ff.kind = fastUnsupported
		case ft == stringType:
			ff.kind = fastString
		case ft == boolType:
			ff.kind = fastBool
		case ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct:
			ff.kind, ff.elem = fastStructPtr, newFastStruct(ft.Elem(), seen)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			ff.kind, ff.elem = fastStructSlice, newFastStruct(ft.Elem(), seen)
		case ft == stringSliceType:
			ff.kind = fastStringSlice
		}
		if (ff.kind == fastStructPtr || ff.kind == fastStructSlice) && ff.elem == nil {
			return nil
		}
		if _, dup := s.byName[name]; dup {
			// encoding/json's rules for clashing names are not mirrored.
			return nil
		}
		s.byName[name] = len(s.fields)
		s.fields = append(s.fields, ff)
	}
	if len(s.fields) > 64 {
		return nil // the duplicate-member check keeps a 64-bit set
	}
	return s
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	stringType          = reflect.TypeFor[string]()
	boolType            = reflect.TypeFor[bool]()
	stringSliceType     = reflect.TypeFor[[]string]()
)

// unmarshals reports whether encoding/json decodes t, or the elements of
// a slice t, with a method of theirs.
func unmarshals(t reflect.Type) bool {
	if t.Kind() == reflect.Slice || t.Kind() == reflect.Pointer {
		if unmarshals(t.Elem()) {
			return true
		}
	}
	pt := reflect.PointerTo(t)
	return pt.Implements(jsonUnmarshalerType) || pt.Implements(textUnmarshalerType)
}

// fastMaxDepth bounds nesting; deeper bodies go to encoding/json.
const fastMaxDepth = 64

type fastDecoder struct {
	data  []byte
	pos   int
	depth int
}

// fastDecodeNotifications decodes body as json.Unmarshal would into a new
// Notifications, or reports false when it cannot be sure to.
func fastDecodeNotifications(body []byte) (*Notifications, bool) {
	if fastNotifications == nil {
		return nil, false
	}
	d := fastDecoder{data: body}
	d.skipSpace()
	if !d.consume('{') {
		return nil, false
	}
	var n Notifications
	if !d.object(fastNotifications, reflect.ValueOf(&n).Elem()) {
		return nil, false
	}
	d.skipSpace()
	if d.pos != len(d.data) {
		return nil, false
	}
	return &n, true
}

func (d *fastDecoder) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *fastDecoder) consume(c byte) bool {
	if d.pos < len(d.data) && d.data[d.pos] == c {
		d.pos++
		return true
	}
	return false
}

func (d *fastDecoder) peek() byte {
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

// object decodes the members of an object whose '{' was consumed into v,
// a settable struct of s's type.
func (d *fastDecoder) object(s *fastStruct, v reflect.Value) bool {
	d.depth++
	if d.depth > fastMaxDepth {
		return false
	}
	defer func() { d.depth-- }()
	var seen uint64
	d.skipSpace()
	if d.consume('}') {
		return true
	}
	for {
		d.skipSpace()
		if !d.consume('"') {
			return false
		}
		key, plain, ok := d.stringBody()
		if !ok || !plain {
			return false
		}
		d.skipSpace()
		if !d.consume(':') {
			return false
		}
		d.skipSpace()
		if i, known := s.lookup(key); known {
			if seen&(1<<i) != 0 {
				return false // a repeated member: last one wins, or merges
			}
			seen |= 1 << i
			f := &s.fields[i]
			if !d.field(f, v.Field(f.index)) {
				return false
			}
		} else {
			if s.foldMatch(key) {
				return false
			}
			if !d.skipValue() {
				return false
			}
		}
		d.skipSpace()
		if d.consume('}') {
			return true
		}
		if !d.consume(',') {
			return false
		}
	}
}

// lookup finds the field named key exactly.
func (s *fastStruct) lookup(key []byte) (int, bool) {
	for i := range s.fields {
		if s.fields[i].name == string(key) {
			return i, true
		}
	}
	return 0, false
}

// foldMatch reports whether key names a field when case is ignored, as
// encoding/json matches it; the fast decoder leaves that to encoding/json.
func (s *fastStruct) foldMatch(key []byte) bool {
	for i := range s.fields {
		if len(s.fields[i].name) == len(key) && strings.EqualFold(s.fields[i].name, string(key)) {
			return true
		}
	}
	return false
}

// field decodes one member's value into v. A null leaves v as it is, as
// encoding/json does for strings, booleans and (already nil) pointers and
// slices.
func (d *fastDecoder) field(f *fastField, v reflect.Value) bool {
	if d.literal("null") {
		return true
	}
	switch f.kind {
	case fastString:
		s, ok := d.stringValue()
		if ok {
			v.SetString(s)
		}
		return ok
	case fastBool:
		switch {
		case d.literal("true"):
			v.SetBool(true)
		case d.literal("false"):
			v.SetBool(false)
		default:
			return false
		}
		return true
	case fastStructPtr:
		if !d.consume('{') {
			return false
		}
		p := reflect.New(f.elem.typ)
		if !d.object(f.elem, p.Elem()) {
			return false
		}
		v.Set(p)
		return true
	case fastStructSlice:
		if !d.consume('[') {
			return false
		}
		return d.structArray(f.elem, v)
	case fastStringSlice:
		if !d.consume('[') {
			return false
		}
		return d.stringArray(v)
	}
	return false
}

func (d *fastDecoder) structArray(s *fastStruct, v reflect.Value) bool {
	d.depth++
	if d.depth > fastMaxDepth {
		return false
	}
	defer func() { d.depth-- }()
	out := reflect.MakeSlice(v.Type(), 0, 1)
	d.skipSpace()
	if !d.consume(']') {
		for {
			d.skipSpace()
			out = reflect.Append(out, reflect.Zero(s.typ))
			if !d.literal("null") {
				if !d.consume('{') || !d.object(s, out.Index(out.Len()-1)) {
					return false
				}
			}
			d.skipSpace()
			if d.consume(']') {
				break
			}
			if !d.consume(',') {
				return false
			}
		}
	}
	v.Set(out)
	return true
}

func (d *fastDecoder) stringArray(v reflect.Value) bool {
	var out []string
	d.skipSpace()
	if !d.consume(']') {
		for {
			d.skipSpace()
			var s string
			if !d.literal("null") {
				var ok bool
				if s, ok = d.stringValue(); !ok {
					return false
				}
			}
			out = append(out, s)
			d.skipSpace()
			if d.consume(']') {
				break
			}
			if !d.consume(',') {
				return false
			}
		}
	}
	if out == nil {
		out = []string{}
	}
	v.Set(reflect.ValueOf(out))
	return true
}

// stringValue reads a string value as encoding/json unquotes it.
func (d *fastDecoder) stringValue() (string, bool) {
	start := d.pos
	if !d.consume('"') {
		return "", false
	}
	body, plain, ok := d.stringBody()
	if !ok {
		return "", false
	}
	if plain {
		return string(body), true
	}
	if !strings.ContainsRune(string(body), '\\') && utf8.Valid(body) {
		return string(body), true
	}
	// Escapes or invalid UTF-8: rare; encoding/json unquotes them.
	var s string
	if json.Unmarshal(d.data[start:d.pos], &s) != nil {
		return "", false
	}
	return s, true
}

// stringBody reads the rest of a string whose '"' was consumed and returns
// its raw bytes; plain reports that they are printable ASCII without
// escapes. It checks the escapes' syntax, as encoding/json's scanner does.
func (d *fastDecoder) stringBody() (body []byte, plain, ok bool) {
	start := d.pos
	plain = true
	for {
		for d.pos < len(d.data) && plainStringByte[d.data[d.pos]] {
			d.pos++
		}
		if d.pos >= len(d.data) {
			return nil, false, false
		}
		switch c := d.data[d.pos]; {
		case c == '"':
			body = d.data[start:d.pos]
			d.pos++
			return body, plain, true
		case c < 0x20:
			return nil, false, false
		case c == '\\':
			plain = false
			d.pos++
			if d.pos >= len(d.data) {
				return nil, false, false
			}
			switch d.data[d.pos] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				d.pos++
			case 'u':
				d.pos++
				for range 4 {
					if d.pos >= len(d.data) || !isHex(d.data[d.pos]) {
						return nil, false, false
					}
					d.pos++
				}
			default:
				return nil, false, false
			}
		default: // c >= utf8.RuneSelf
			plain = false
			d.pos++
		}
	}
}

// plainStringByte marks the bytes that stand for themselves in a JSON
// string and need no check: printable ASCII other than '"' and '\\'.
var plainStringByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func (d *fastDecoder) literal(lit string) bool {
	if len(d.data)-d.pos >= len(lit) && string(d.data[d.pos:d.pos+len(lit)]) == lit {
		d.pos += len(lit)
		return true
	}
	return false
}

// skipValue checks and skips any JSON value.
func (d *fastDecoder) skipValue() bool {
	switch c := d.peek(); {
	case c == '"':
		d.pos++
		_, _, ok := d.stringBody()
		return ok
	case c == '{':
		d.pos++
		return d.skipContainer('}')
	case c == '[':
		d.pos++
		return d.skipContainer(']')
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return d.number()
	}
	return false
}

// skipContainer skips an object's members or an array's elements after
// the opening bracket, up to and including end.
func (d *fastDecoder) skipContainer(end byte) bool {
	d.depth++
	if d.depth > fastMaxDepth {
		return false
	}
	defer func() { d.depth-- }()
	d.skipSpace()
	if d.consume(end) {
		return true
	}
	for {
		d.skipSpace()
		if end == '}' {
			if !d.consume('"') {
				return false
			}
			if _, _, ok := d.stringBody(); !ok {
				return false
			}
			d.skipSpace()
			if !d.consume(':') {
				return false
			}
			d.skipSpace()
		}
		if !d.skipValue() {
			return false
		}
		d.skipSpace()
		if d.consume(end) {
			return true
		}
		if !d.consume(',') {
			return false
		}
	}
}

// number skips a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *fastDecoder) number() bool {
	d.consume('-')
	switch c := d.peek(); {
	case c == '0':
		d.pos++
	case '1' <= c && c <= '9':
		d.digits()
	default:
		return false
	}
	if d.consume('.') {
		if d.digits() == 0 {
			return false
		}
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		d.pos++
		if c := d.peek(); c == '+' || c == '-' {
			d.pos++
		}
		if d.digits() == 0 {
			return false
		}
	}
	return true
}

func (d *fastDecoder) digits() int {
	n := 0
	for d.pos < len(d.data) && '0' <= d.data[d.pos] && d.data[d.pos] <= '9' {
		d.pos++
		n++
	}
	return n
}

package graph

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// ErrLegacyFormat is returned for a callback body in the older Skype format
// (a JSON object without a "value" array of Graph notifications). Graph
// expects 204 No Content for it and then resends in Graph format.
var ErrLegacyFormat = errors.New("legacy (non-Graph) notification format")

// SyntaxError reports a body refused by the strict reading, with the byte
// offset where it broke and, where known, the JSON pointer of the member.
type SyntaxError struct {
	Offset  int64
	Pointer string
	Err     error
}

func (e *SyntaxError) Error() string {
	if e.Pointer != "" {
		return fmt.Sprintf("invalid JSON at byte offset %d (%s): %v", e.Offset, e.Pointer, e.Err)
	}
	return fmt.Sprintf("invalid JSON at byte offset %d: %v", e.Offset, e.Err)
}

func (e *SyntaxError) Unwrap() error { return e.Err }

// DecodeNotifications reads a callback body once, strictly, and returns the
// notifications with the exact bytes of each (Notification.Raw) and of the
// "value" array (Notifications.ValueStart/ValueEnd), so that what is
// decided and what is forwarded upstream come from one reading.
//
// Strict means: valid UTF-8 and JSON (jsontext, the basis of Go's
// encoding/json/v2), member names matched case-sensitively, and, in any
// object anywhere in the body, a member name equal under Unicode simple
// case folding to another member's name or to a name this reader knows
// there (but not spelt as it) refused. Other readers take "Value"
// (encoding/json, the case-insensitive modes of .NET serializers an
// upstream bot may run), "ſtate" (U+017F: encoding/json folds it to
// "state") or a second "value" where this one would not, so such a body
// could be decided one way and acted on another; Graph never sends one.
// Folding is unicode.SimpleFold's orbits (as strings.EqualFold and
// encoding/json's name matching), after escapes are decoded.
//
// A body that is a JSON object without a "value" array (absent or null) is
// ErrLegacyFormat. A notification's resourceData is a call when it is an
// object of type #microsoft.graph.call, of no stated type, or of any type
// but carrying an incoming call's state (a reader that ignores the type
// would answer it); any other shape (Graph sends participant lists as
// arrays) leaves ResourceData nil and is no error. A call whose state and
// callState disagree is refused.
//
// Raw, ValueStart and ValueEnd refer to body, which must not change while
// they are used; the decoded strings share no memory with it.
func DecodeNotifications(body []byte) (*Notifications, error) {
	d := getDecoder(body)
	defer putDecoder(d)
	n, err := d.notifications()
	if err != nil {
		var se *jsontext.SyntacticError
		if errors.As(err, &se) {
			return nil, &SyntaxError{Offset: se.ByteOffset, Pointer: string(se.JSONPointer), Err: se.Err}
		}
		var de *decodeError
		if errors.As(err, &de) {
			return nil, &SyntaxError{Offset: de.offset, Pointer: de.pointer, Err: de.err}
		}
		return nil, err
	}
	return n, nil
}

// decodeError is a member of the wrong type or a case-variant name.
type decodeError struct {
	offset  int64
	pointer string
	err     error
}

func (e *decodeError) Error() string { return e.err.Error() }

type decoder struct {
	body []byte
	buf  bytes.Buffer
	dec  jsontext.Decoder
	// mismatch is the first member of the wrong type inside the current
	// resourceData: it is an error only if that object claims to be a call.
	mismatch *decodeError
	// soft is set while decoding a resourceData object.
	soft bool
	// scratch holds an escaped member name, unquoted.
	scratch []byte
	// nameOff is the offset of the member name read last.
	nameOff int64

	// The folded names of the members read so far of every open object,
	// innermost last, for the duplicate check: names[frames[i]:] are those
	// of open object i, their bytes in folded.
	folded []byte
	names  []foldedName
	frames []int
}

// foldedName is a member name, folded, in decoder.folded.
type foldedName struct {
	start, end int
	off        int64
}

var decoders = sync.Pool{New: func() any { return new(decoder) }}

func getDecoder(body []byte) *decoder {
	d := decoders.Get().(*decoder)
	d.body = body
	// A bytes.Buffer is parsed in place, without a copy. Duplicate names
	// are refused by member, under case folding, in every object: the
	// exact check of jsontext would only repeat it.
	d.buf = *bytes.NewBuffer(body)
	d.dec.Reset(&d.buf, jsontext.AllowDuplicateNames(true))
	return d
}

func putDecoder(d *decoder) {
	d.body, d.mismatch, d.soft = nil, nil, false
	d.folded, d.names, d.frames = d.folded[:0], d.names[:0], d.frames[:0]
	if cap(d.folded) > maxPooledNames {
		// A body with a huge object need not keep its memory.
		d.folded, d.names = nil, nil
	}
	d.buf = bytes.Buffer{}
	d.dec.Reset(&d.buf)
	decoders.Put(d)
}

// errorf reports a problem with the next value, at its first byte.
func (d *decoder) errorf(format string, args ...any) *decodeError {
	return &decodeError{offset: int64(d.offsetOfNext()), pointer: string(d.dec.StackPointer()), err: fmt.Errorf(format, args...)}
}

// peek returns the kind of the next token, or the syntax error that stops
// it from being read.
func (d *decoder) peek() (jsontext.Kind, error) {
	if k := d.dec.PeekKind(); k != 0 {
		return k, nil
	}
	_, err := d.dec.ReadToken()
	if err == nil || errors.Is(err, io.EOF) {
		err = d.errorf("unexpected end of the body")
	}
	return 0, err
}

// notifications reads the top-level object.
func (d *decoder) notifications() (*Notifications, error) {
	if k, err := d.peek(); err != nil {
		return nil, err
	} else if k != '{' {
		return nil, d.errorf("not a notification: the body is a JSON %s, not an object", kindName(k))
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, err
	}
	n := &Notifications{}
	sawValue := false
	d.open()
	for d.dec.PeekKind() != '}' {
		name, folded, err := d.member()
		if err != nil {
			return nil, err
		}
		switch string(name) {
		case "@odata.type":
			err = d.string(&n.ODataType)
		case "value":
			sawValue = true
			err = d.values(n)
		default:
			err = d.unknown(name, folded, notificationsNames)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := d.close(); err != nil {
		return nil, err
	}
	switch _, err := d.dec.ReadToken(); {
	case err == nil:
		return nil, d.errorf("data after the notification object")
	case !errors.Is(err, io.EOF):
		return nil, err
	}
	if !sawValue || n.Value == nil {
		return nil, ErrLegacyFormat
	}
	return n, nil
}

func (d *decoder) values(n *Notifications) error {
	k, err := d.peek()
	switch {
	case err != nil:
		return err
	case k == 'n':
		_, err := d.dec.ReadToken()
		return err
	case k != '[':
		return d.errorf(`"value" must be an array, not a JSON %s`, kindName(k))
	}
	n.ValueStart = d.offsetOfNext()
	if _, err := d.dec.ReadToken(); err != nil {
		return err
	}
	n.Value = make([]Notification, 0, 1)
	for d.dec.PeekKind() != ']' {
		if k, err := d.peek(); err != nil {
			return err
		} else if k != '{' {
			return d.errorf("a notification must be an object, not a JSON %s", kindName(k))
		}
		start := d.offsetOfNext()
		n.Value = append(n.Value, Notification{})
		if err := d.notification(&n.Value[len(n.Value)-1]); err != nil {
			return err
		}
		n.Value[len(n.Value)-1].Raw = d.body[start:d.dec.InputOffset()]
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return err
	}
	n.ValueEnd = int(d.dec.InputOffset())
	return nil
}

// offsetOfNext is the offset of the next token's first byte.
func (d *decoder) offsetOfNext() int {
	off := int(d.dec.InputOffset())
	for off < len(d.body) {
		switch d.body[off] {
		case ' ', '\t', '\r', '\n', ',', ':':
			off++
			continue
		}
		break
	}
	return off
}

func (d *decoder) notification(n *Notification) error {
	if _, err := d.dec.ReadToken(); err != nil { // '{'
		return err
	}
	d.open()
	for d.dec.PeekKind() != '}' {
		name, folded, err := d.member()
		if err != nil {
			return err
		}
		switch string(name) {
		case "@odata.type":
			err = d.string(&n.ODataType)
		case "changeType":
			err = d.string(&n.ChangeType)
		case "resourceUrl":
			err = d.string(&n.ResourceURL)
		case "resource":
			err = d.string(&n.Resource)
		case "resourceData":
			n.ResourceData, err = d.resourceData()
		default:
			err = d.unknown(name, folded, notificationNames)
		}
		if err != nil {
			return err
		}
	}
	return d.close()
}

// resourceData reads a notification's resource: a call, or anything else.
func (d *decoder) resourceData() (*Call, error) {
	if k, err := d.peek(); err != nil {
		return nil, err
	} else if k != '{' {
		// An array (participants), a string, null…: not a call. Still
		// read strictly: a duplicate name anywhere is refused.
		return nil, d.skip()
	}
	start := int64(d.offsetOfNext())
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, err
	}
	c := &Call{}
	d.soft, d.mismatch = true, nil
	d.open()
	err := d.object(callInfo, reflect.ValueOf(c).Elem())
	d.soft = false
	if err != nil {
		return nil, err
	}
	// Whatever its @odata.type says, an object carrying an incoming call's
	// state is that call to a reader that goes by the members (the .NET
	// SDK reads an unknown type as the type it expects): decided as one.
	carriesIncoming := EnumEqual(c.State, StateIncoming) || EnumEqual(c.CallState, StateIncoming)
	if c.ODataType != "" && !strings.EqualFold(c.ODataType, ODataCall) && !carriesIncoming {
		// Another resource (an operation, a session): not decided, and
		// its members need not be shaped like a call's.
		return nil, nil
	}
	if d.mismatch != nil {
		return nil, d.mismatch
	}
	if c.State != "" && c.CallState != "" && !EnumEqual(c.State, c.CallState) {
		// A reader of the older name would see another call state.
		return nil, &decodeError{offset: start, pointer: string(d.dec.StackPointer()),
			err: fmt.Errorf("state %q and callState %q disagree", c.State, c.CallState)}
	}
	return c, nil
}

// name reads a member name. It is valid until the next read: names are
// only compared, so they are not copied.
func (d *decoder) name() ([]byte, error) {
	raw, err := d.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	d.nameOff = d.dec.InputOffset() - int64(len(raw))
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1], nil
	}
	d.scratch, err = jsontext.AppendUnquote(d.scratch[:0], raw)
	return d.scratch, err
}

// Objects of up to linearNames members are checked for folded duplicates
// name by name; a larger one (Graph sends none) is sorted when it closes,
// so that a body of many members costs n log n, not n².
const linearNames = 16

// maxPooledNames bounds the folded names a pooled decoder keeps.
const maxPooledNames = 64 << 10

// open starts the duplicate check of an object whose '{' was read.
func (d *decoder) open() { d.frames = append(d.frames, len(d.names)) }

// member reads a member name of the innermost open object, refusing it
// when it folds to the name of an earlier member. It returns the name and
// its folded form, both valid until the next read.
func (d *decoder) member() (name, folded []byte, err error) {
	if name, err = d.name(); err != nil {
		return nil, nil, err
	}
	start := len(d.folded)
	d.folded = appendFolded(d.folded, name)
	folded = d.folded[start:]
	first := d.frames[len(d.frames)-1]
	if len(d.names)-first < linearNames {
		for _, m := range d.names[first:] {
			if bytes.Equal(d.folded[m.start:m.end], folded) {
				return nil, nil, d.duplicate(m.off, d.nameOff)
			}
		}
	}
	d.names = append(d.names, foldedName{start: start, end: len(d.folded), off: d.nameOff})
	return name, folded, nil
}

// close reads the '}' of the innermost open object and ends its check.
func (d *decoder) close() error {
	first := d.frames[len(d.frames)-1]
	names := d.names[first:]
	if len(names) > linearNames {
		slices.SortFunc(names, func(a, b foldedName) int {
			return bytes.Compare(d.folded[a.start:a.end], d.folded[b.start:b.end])
		})
		for i := 1; i < len(names); i++ {
			a, b := names[i-1], names[i]
			if bytes.Equal(d.folded[a.start:a.end], d.folded[b.start:b.end]) {
				return d.duplicate(min(a.off, b.off), max(a.off, b.off))
			}
		}
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return err
	}
	if len(names) > 0 {
		// Sorted or not, the object's names are the end of folded.
		lo := names[0].start
		for _, m := range names[1:] {
			lo = min(lo, m.start)
		}
		d.folded = d.folded[:lo]
	}
	d.names, d.frames = d.names[:first], d.frames[:len(d.frames)-1]
	return nil
}

// duplicate reports the member at off, whose name folds to that of the one
// at first.
func (d *decoder) duplicate(first, off int64) *decodeError {
	name, other := d.nameAt(off), d.nameAt(first)
	err := fmt.Errorf("duplicate member name %q", name)
	if name != other {
		err = fmt.Errorf("member name %q duplicates %q under case folding", name, other)
	}
	return &decodeError{offset: off, pointer: string(d.dec.StackPointer()), err: err}
}

// nameAt returns the member name whose quoted form starts at off.
func (d *decoder) nameAt(off int64) string {
	raw, err := jsontext.AppendUnquote(nil, d.body[off:off+int64(quotedLen(d.body[off:]))])
	if err != nil {
		return ""
	}
	return string(raw)
}

// quotedLen is the length of the JSON string b starts with (valid: it was
// read).
func quotedLen(b []byte) int {
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// appendFolded appends name folded under Unicode simple case folding: each
// rune replaced by the least rune of its unicode.SimpleFold orbit, as
// encoding/json matches names ("ſtate" and "STATE" fold as "state" does).
func appendFolded(dst, name []byte) []byte {
	for i := 0; i < len(name); {
		c := name[i]
		if c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			dst = append(dst, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(name[i:])
		dst = utf8.AppendRune(dst, foldRune(r))
		i += n
	}
	return dst
}

// foldRune returns the least rune of r's case-folding orbit.
func foldRune(r rune) rune {
	least := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		least = min(least, f)
	}
	return least
}

// unknown skips the value of a member no field takes, refusing a name that
// folds to one a field takes: another reader would take it for that field.
func (d *decoder) unknown(name, folded []byte, known *nameSet) error {
	if k, ok := known.byFolded[string(folded)]; ok {
		return d.errorf("member %q differs from %q only in case", name, k)
	}
	return d.skip()
}

// skip reads a value no field takes, checking its objects' names as any
// other's.
func (d *decoder) skip() error {
	k, err := d.peek()
	if err != nil {
		return err
	}
	switch k {
	case '{':
		if _, err := d.dec.ReadToken(); err != nil {
			return err
		}
		d.open()
		for d.dec.PeekKind() != '}' {
			if _, _, err := d.member(); err != nil {
				return err
			}
			if err := d.skip(); err != nil {
				return err
			}
		}
		return d.close()
	case '[':
		if _, err := d.dec.ReadToken(); err != nil {
			return err
		}
		for d.dec.PeekKind() != ']' {
			if err := d.skip(); err != nil {
				return err
			}
		}
		_, err := d.dec.ReadToken()
		return err
	}
	return d.dec.SkipValue()
}

// wrongType records a member of the wrong type: inside resourceData it is
// decided later whether that matters; elsewhere it is an error.
func (d *decoder) wrongType(want string) error {
	k := d.dec.PeekKind()
	e := d.errorf("want a JSON %s, not %s", want, kindName(k))
	if !d.soft {
		return e
	}
	if d.mismatch == nil {
		d.mismatch = e
	}
	return d.skip()
}

func (d *decoder) string(dst *string) error {
	k, err := d.peek()
	if err != nil {
		return err
	}
	switch k {
	case 'n':
		_, err := d.dec.ReadToken()
		return err
	case '"':
		tok, err := d.dec.ReadToken()
		if err != nil {
			return err
		}
		*dst = tok.String()
		return nil
	}
	return d.wrongType("string")
}

// object reads the members of an object whose '{' was read into v, a
// settable struct described by s.
func (d *decoder) object(s *structInfo, v reflect.Value) error {
	for d.dec.PeekKind() != '}' {
		name, folded, err := d.member()
		if err != nil {
			return err
		}
		f, ok := s.byName[string(name)]
		if !ok {
			if s == identitySetInfo && d.dec.PeekKind() == '{' {
				v.Addr().Interface().(*IdentitySet).OtherMembers++
			}
			if err := d.unknown(name, folded, &s.known); err != nil {
				return err
			}
			continue
		}
		if err := d.field(f, v.Field(f.index)); err != nil {
			return err
		}
	}
	return d.close()
}

// field reads one member's value into v. A null leaves v as it is.
func (d *decoder) field(f *fieldInfo, v reflect.Value) error {
	k, err := d.peek()
	if err != nil {
		return err
	}
	if k == 'n' {
		_, err := d.dec.ReadToken()
		return err
	}
	switch f.kind {
	case kindString:
		return d.stringElem(v)
	case kindBool:
		if k != 't' && k != 'f' {
			return d.wrongType("boolean")
		}
		tok, err := d.dec.ReadToken()
		if err != nil {
			return err
		}
		v.SetBool(tok.Bool())
	case kindStructPtr:
		if k != '{' {
			return d.wrongType("object")
		}
		if _, err := d.dec.ReadToken(); err != nil {
			return err
		}
		d.open()
		p := reflect.New(f.elem.typ)
		if err := d.object(f.elem, p.Elem()); err != nil {
			return err
		}
		v.Set(p)
	case kindStructSlice, kindStringSlice:
		if k != '[' {
			return d.wrongType("array")
		}
		if _, err := d.dec.ReadToken(); err != nil {
			return err
		}
		out := reflect.MakeSlice(v.Type(), 0, 1)
		for d.dec.PeekKind() != ']' {
			out = reflect.Append(out, reflect.Zero(v.Type().Elem()))
			elem := out.Index(out.Len() - 1)
			var err error
			if f.kind == kindStringSlice {
				err = d.stringElem(elem)
			} else {
				err = d.structElem(f.elem, elem)
			}
			if err != nil {
				return err
			}
		}
		if _, err := d.dec.ReadToken(); err != nil {
			return err
		}
		v.Set(out)
	}
	return nil
}

// stringElem reads a string (or null) into v, a settable string.
func (d *decoder) stringElem(v reflect.Value) error {
	var str string
	if err := d.string(&str); err != nil {
		return err
	}
	v.SetString(str)
	return nil
}

func (d *decoder) structElem(s *structInfo, v reflect.Value) error {
	k, err := d.peek()
	if err != nil {
		return err
	}
	switch k {
	case 'n':
		_, err := d.dec.ReadToken()
		return err
	case '{':
		if _, err := d.dec.ReadToken(); err != nil {
			return err
		}
		d.open()
		return d.object(s, v)
	}
	return d.wrongType("object")
}

func kindName(k jsontext.Kind) string {
	switch k {
	case 'n':
		return "null"
	case 'f', 't':
		return "boolean"
	case '"':
		return "string"
	case '0':
		return "number"
	case '{':
		return "object"
	case '[':
		return "array"
	}
	return "nothing"
}

// The member names of the types read by hand, for the case check.
var (
	notificationsNames = newNameSet("@odata.type", "value")
	notificationNames  = newNameSet("@odata.type", "changeType", "resourceUrl", "resource", "resourceData")
)

// nameSet is the member names an object's reader knows, by folded name.
type nameSet struct {
	byFolded map[string]string
}

func newNameSet(names ...string) *nameSet {
	s := &nameSet{byFolded: map[string]string{}}
	for _, n := range names {
		s.add(n)
	}
	return s
}

func (s *nameSet) add(name string) {
	f := string(appendFolded(nil, []byte(name)))
	if other, dup := s.byFolded[f]; dup {
		// A build-time mistake in this package, caught by every test.
		panic(fmt.Sprintf("graph: member names %q and %q fold alike", other, name))
	}
	s.byFolded[f] = name
}

// The call and what it holds are read through tables built from their json
// tags, so a field added to the types is read without changes here.

type fieldKind uint8

const (
	kindString fieldKind = iota
	kindBool
	kindStructPtr   // *T, T a struct
	kindStructSlice // []T, T a struct
	kindStringSlice // []string
)

type fieldInfo struct {
	index int
	kind  fieldKind
	elem  *structInfo
}

type structInfo struct {
	typ    reflect.Type
	byName map[string]*fieldInfo
	known  nameSet
}

var (
	structInfos     = map[reflect.Type]*structInfo{}
	callInfo        = mustStructInfo(reflect.TypeFor[Call](), structInfos)
	identitySetInfo = structInfos[reflect.TypeFor[IdentitySet]()]
)

func mustStructInfo(t reflect.Type, seen map[reflect.Type]*structInfo) *structInfo {
	if s, ok := seen[t]; ok {
		return s
	}
	s := &structInfo{typ: t, byName: map[string]*fieldInfo{}, known: nameSet{byFolded: map[string]string{}}}
	seen[t] = s
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fi := &fieldInfo{index: i}
		ft := f.Type
		switch {
		case ft.Kind() == reflect.String:
			fi.kind = kindString
		case ft.Kind() == reflect.Bool:
			fi.kind = kindBool
		case ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct:
			fi.kind, fi.elem = kindStructPtr, mustStructInfo(ft.Elem(), seen)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			fi.kind, fi.elem = kindStructSlice, mustStructInfo(ft.Elem(), seen)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.String:
			fi.kind = kindStringSlice
		default:
			// A build-time mistake in this package, caught by every test.
			panic(fmt.Sprintf("graph: %s.%s: the notification reader cannot read a %s", t.Name(), f.Name, ft))
		}
		if _, dup := s.byName[name]; dup {
			panic(fmt.Sprintf("graph: %s: two fields named %q", t.Name(), name))
		}
		s.byName[name] = fi
		s.known.add(name)
	}
	return s
}

// DecodeCall decodes one call resource.
func DecodeCall(body []byte) (*Call, error) {
	var c Call
	if err := unmarshal(body, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func unmarshal(body []byte, v any) error {
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &SyntaxError{Offset: se.Offset, Err: err}
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return &SyntaxError{Offset: te.Offset, Err: fmt.Errorf("field %q: cannot use JSON %s as %s", te.Field, te.Value, te.Type)}
	}
	return err
}

package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/callguard/callguard/api/v1alpha1"
)

// Bundle is what policy YAML files hold: one CallPolicy with the number lists
// and announce prompts it refers to, and the Secrets given alongside (the receiver's standalone
// mode reads its Graph credentials from them).
type Bundle struct {
	Source *Source
	// Secrets maps a Secret's name to its data, stringData merged over data.
	Secrets map[string]map[string][]byte

	// Where the CallPolicy and the lists came from, for Locate.
	policyFile  string
	policyLines map[string]int
	listPos     map[ListRef]position
}

type position struct {
	file string
	line int
	// block is set when the value is a literal block scalar, whose text
	// starts on the line after line, so that list lines map to file lines.
	block bool
}

// LoadYAML reads multi-document YAML holding exactly one CallPolicy, the
// ConfigMaps its numberLists and announce prompts name and optionally Secrets (stringData or
// data). Other kinds, and kind List, are looked into and otherwise ignored.
// Errors name the file, line, document and field path. Unknown fields are
// errors, as with kubectl's strict validation, since they are mostly typos.
func LoadYAML(name string, r io.Reader) (*Bundle, error) {
	l := &loader{}
	if err := l.read(name, r); err != nil {
		return nil, err
	}
	return l.bundle()
}

// LoadFiles loads and merges the documents of several files; "-" is stdin.
func LoadFiles(paths ...string) (*Bundle, error) {
	return LoadFilesFrom(os.Stdin, paths...)
}

// LoadFilesFrom is LoadFiles with "-" reading the given stdin.
func LoadFilesFrom(stdin io.Reader, paths ...string) (*Bundle, error) {
	l := &loader{}
	for _, p := range paths {
		if p == "-" {
			if err := l.read("<stdin>", stdin); err != nil {
				return nil, err
			}
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("load policy: %w", err)
		}
		err = l.read(p, f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return l.bundle()
}

// Locate returns "file:line" for a compile error or warning of the bundle's
// policy (the ConfigMap's file and line for a number list problem), or just
// the file when the line is unknown.
func (b *Bundle) Locate(e FieldError) string {
	path := e.Path
	if m := listPathRE.FindStringSubmatch(path); m != nil {
		if pos, ok := b.listPos[ListRef{Name: m[2], Key: m[3]}]; ok {
			n, _ := strconv.Atoi(m[4])
			if pos.block && n > 0 {
				return fmt.Sprintf("%s:%d", pos.file, pos.line+n)
			}
			return fmt.Sprintf("%s:%d", pos.file, pos.line)
		}
		path = m[1]
	}
	for p := path; p != ""; p = parentPath(p) {
		if line, ok := b.policyLines[p]; ok {
			return fmt.Sprintf("%s:%d", b.policyFile, line)
		}
	}
	return b.policyFile
}

// listPathRE reads back the paths listPath writes.
var listPathRE = regexp.MustCompile(`^(\S+) \(configmap (\S+) key (\S+)\)(?: line (\d+))?$`)

// parentPath strips the last ".field" or "[i]" of a path.
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

type loader struct {
	policies   []loadedPolicy
	configMaps []loadedObject
	secrets    []loadedObject
	files      []string
}

type loadedPolicy struct {
	file  string
	line  int
	obj   v1alpha1.CallPolicy
	lines map[string]int
}

type loadedObject struct {
	file            string
	line            int
	namespace, name string
	data            map[string]string
	binary          map[string][]byte
	pos             map[string]position
}

func (l *loader) read(name string, r io.Reader) error {
	l.files = append(l.files, name)
	src, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("load policy: %s: %w", name, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(src))
	var errs []error
	for doc := 1; ; doc++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %w", name, doc, err))
			break
		}
		errs = append(errs, l.document(name, doc, &n)...)
	}
	return errors.Join(errs...)
}

// document converts one YAML document and files away the objects it holds.
func (l *loader) document(file string, doc int, n *yaml.Node) []error {
	cv := converter{lines: map[string]int{}, blocks: map[string]int{}, budget: 4*countNodes(n) + 10000}
	v, err := cv.conv(n, "", 0)
	if err != nil {
		return []error{fmt.Errorf("%s: document %d: %w", file, doc, err)}
	}
	if v == nil {
		return nil
	}
	d := docReader{file: file, doc: doc, cv: &cv}
	return d.object(l, v, "")
}

type docReader struct {
	file string
	doc  int
	cv   *converter
	errs []error
}

// errorf reports a problem at a path of the document (prefix is where the
// object sits: "" or "items[3]").
func (d *docReader) errorf(prefix, path, what, format string, args ...any) {
	full := joinPath(prefix, path)
	line := d.cv.lineOf(full)
	loc := fmt.Sprintf("%s:%d: document %d", d.file, line, d.doc)
	if what != "" {
		loc += " (" + what + ")"
	}
	if path != "" {
		loc += ": " + path
	}
	d.errs = append(d.errs, fmt.Errorf("%s: %s", loc, fmt.Sprintf(format, args...)))
}

func (d *docReader) object(l *loader, v any, prefix string) []error {
	m, ok := v.(map[string]any)
	if !ok {
		d.errorf(prefix, "", "", "not a Kubernetes object: want a mapping with apiVersion and kind, got %s", describe(v))
		return d.errs
	}
	apiVersion, _ := m["apiVersion"].(string)
	kind, _ := m["kind"].(string)
	meta, _ := m["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	namespace, _ := meta["namespace"].(string)
	what := kind
	if name != "" {
		what += " " + name
	}
	if (kind == "List" || kind == "ConfigMap" || kind == "Secret") && apiVersion != "v1" {
		d.errorf(prefix, "apiVersion", what, "want v1, got %q", apiVersion)
		return d.errs
	}
	switch {
	case kind == "List":
		items, _ := m["items"].([]any)
		for i, it := range items {
			d.object(l, it, joinPath(prefix, fmt.Sprintf("items[%d]", i)))
		}
	case kind == "CallPolicy":
		if apiVersion != v1alpha1.GroupVersion.String() {
			d.errorf(prefix, "apiVersion", what, "want %s, got %q", v1alpha1.GroupVersion, apiVersion)
			break
		}
		var cp v1alpha1.CallPolicy
		if d.decode(prefix, what, m, &cp) {
			l.policies = append(l.policies, loadedPolicy{
				file: d.file, line: d.cv.lineOf(prefix), obj: cp, lines: d.cv.linesUnder(prefix),
			})
		}
	case kind == "ConfigMap" || kind == "Secret":
		var o loadedObject
		if kind == "ConfigMap" {
			var cm corev1.ConfigMap
			if !d.decode(prefix, what, m, &cm) {
				break
			}
			o.data, o.binary = cm.Data, cm.BinaryData
		} else {
			var s corev1.Secret
			if !d.decode(prefix, what, m, &s) {
				break
			}
			o.binary = s.Data
			if o.binary == nil {
				o.binary = map[string][]byte{}
			}
			for k, v := range s.StringData {
				o.binary[k] = []byte(v)
			}
		}
		o.file, o.line, o.name, o.namespace = d.file, d.cv.lineOf(prefix), name, namespace
		o.pos = map[string]position{}
		for k := range o.data {
			p := joinPath(prefix, "data."+k)
			if line, ok := d.cv.blocks[p]; ok {
				o.pos[k] = position{file: d.file, line: line, block: true}
			} else {
				o.pos[k] = position{file: d.file, line: d.cv.lineOf(p)}
			}
		}
		if kind == "ConfigMap" {
			for k := range o.binary {
				// Lines of binary data are not lines of the file.
				o.pos[k] = position{file: d.file, line: d.cv.lineOf(joinPath(prefix, "binaryData."+k))}
			}
			l.configMaps = append(l.configMaps, o)
		} else {
			l.secrets = append(l.secrets, o)
		}
	}
	return d.errs
}

// decode checks the generic value against the Go type (unknown fields and
// wrong kinds of value, each with its path) and then decodes it.
func (d *docReader) decode(prefix, what string, v map[string]any, into any) bool {
	before := len(d.errs)
	checkValue(v, reflectTypeOf(into), "", func(path, msg string) {
		d.errorf(prefix, path, what, "%s", msg)
	})
	if len(d.errs) > before {
		return false
	}
	b, err := json.Marshal(v)
	if err == nil {
		err = json.Unmarshal(b, into)
	}
	if err != nil {
		d.errorf(prefix, "", what, "%v", err)
		return false
	}
	return true
}

func (l *loader) bundle() (*Bundle, error) {
	switch len(l.policies) {
	case 0:
		return nil, fmt.Errorf("load policy: no CallPolicy in %s", strings.Join(l.files, ", "))
	case 1:
	default:
		where := make([]string, len(l.policies))
		for i, p := range l.policies {
			where[i] = fmt.Sprintf("%s:%d (%s)", p.file, p.line, p.obj.Name)
		}
		return nil, fmt.Errorf("load policy: exactly one CallPolicy is needed, found %d: %s", len(l.policies), strings.Join(where, ", "))
	}
	p := l.policies[0]
	ns := p.obj.Namespace
	src := &Source{Namespace: ns, Name: p.obj.Name, Spec: p.obj.Spec, Lists: map[ListRef]string{}}
	b := &Bundle{Source: src, Secrets: map[string]map[string][]byte{}, policyFile: p.file,
		policyLines: p.lines, listPos: map[ListRef]position{}}
	cms, err := byName(l.configMaps, ns, "ConfigMap")
	if err != nil {
		return nil, err
	}
	for _, ref := range ListRefs(&src.Spec) {
		cm, ok := cms[ref.Name]
		if !ok {
			continue
		}
		text, found, err := ListText(cm.name, ref.Key, cm.data, cm.binary)
		if err != nil {
			pos := cm.pos[ref.Key]
			return nil, fmt.Errorf("load policy: %s:%d: %w", pos.file, pos.line, err)
		}
		if found {
			src.Lists[ref] = text
			b.listPos[ref] = cm.pos[ref.Key]
		}
	}
	// Announce prompts are binaryData (base64 in YAML); one in data is
	// not found, as in the cluster.
	for _, ref := range PromptRefs(&src.Spec) {
		if cm, ok := cms[ref.Name]; ok {
			if b, ok := cm.binary[ref.Key]; ok {
				if src.Prompts == nil {
					src.Prompts = map[ListRef][]byte{}
				}
				src.Prompts[ref] = b
			}
		}
	}
	secrets, err := byName(l.secrets, ns, "Secret")
	if err != nil {
		return nil, err
	}
	for name, s := range secrets {
		b.Secrets[name] = s.binary
	}
	return b, nil
}

// byName indexes the objects in the policy's namespace (or in none, which
// kubectl would put there) by name; a name given twice is an error.
func byName(objs []loadedObject, namespace, kind string) (map[string]*loadedObject, error) {
	out := map[string]*loadedObject{}
	for i := range objs {
		o := &objs[i]
		if o.namespace != "" && namespace != "" && o.namespace != namespace {
			continue
		}
		if prev, dup := out[o.name]; dup {
			return nil, fmt.Errorf("load policy: %s %s is given twice: %s:%d and %s:%d", kind, o.name, prev.file, prev.line, o.file, o.line)
		}
		out[o.name] = o
	}
	return out, nil
}

// converter turns a YAML node tree into JSON-like values (what the API
// server would see) and remembers the line of every path.
type converter struct {
	lines map[string]int
	// blocks holds, for literal block scalars, the line their text starts on.
	blocks map[string]int
	// budget bounds the nodes visited, aliases included, so that an alias
	// bomb fails instead of expanding exponentially.
	budget int
}

const maxDepth = 64

func (cv *converter) conv(n *yaml.Node, path string, depth int) (any, error) {
	cv.budget--
	if cv.budget < 0 {
		return nil, fmt.Errorf("line %d: document too large (aliases expand too far)", n.Line)
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("line %d: nested more than %d levels deep", n.Line, maxDepth)
	}
	if _, seen := cv.lines[path]; !seen && n.Kind != yaml.DocumentNode {
		cv.lines[path] = n.Line
	}
	switch n.Kind {
	case 0:
		return nil, nil
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return cv.conv(n.Content[0], path, depth+1)
	case yaml.AliasNode:
		return cv.conv(n.Alias, path, depth+1)
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: %s: mapping keys must be strings", k.Line, displayPath(path))
			}
			if k.Tag == "!!merge" {
				return nil, fmt.Errorf("line %d: %s: merge keys (<<) are not supported", k.Line, displayPath(path))
			}
			child := joinPath(path, k.Value)
			if _, dup := m[k.Value]; dup {
				return nil, fmt.Errorf("line %d: %s: key given twice", k.Line, child)
			}
			cv.lines[child] = k.Line
			val, err := cv.conv(v, child, depth+1)
			if err != nil {
				return nil, err
			}
			m[k.Value] = val
		}
		return m, nil
	case yaml.SequenceNode:
		l := make([]any, len(n.Content))
		for i, c := range n.Content {
			val, err := cv.conv(c, fmt.Sprintf("%s[%d]", path, i), depth+1)
			if err != nil {
				return nil, err
			}
			l[i] = val
		}
		return l, nil
	case yaml.ScalarNode:
		if n.Style&yaml.LiteralStyle != 0 {
			cv.blocks[path] = n.Line
		}
		return scalar(n)
	}
	return nil, fmt.Errorf("line %d: unsupported YAML node", n.Line)
}

// scalar resolves a scalar as YAML 1.2's core schema does; whatever is not
// null, bool or a number is a string (timestamps too: JSON has none).
func scalar(n *yaml.Node) (any, error) {
	switch n.ShortTag() {
	case "!!null":
		return nil, nil
	case "!!bool", "!!int", "!!float":
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, fmt.Errorf("line %d: %w", n.Line, err)
		}
		if f, ok := v.(float64); ok && (math.IsInf(f, 0) || math.IsNaN(f)) {
			return nil, fmt.Errorf("line %d: %s is not a number JSON can hold", n.Line, n.Value)
		}
		return v, nil
	}
	return n.Value, nil
}

func countNodes(n *yaml.Node) int {
	c := 1
	for _, ch := range n.Content {
		c += countNodes(ch)
	}
	return c
}

func (cv *converter) lineOf(path string) int {
	for p := path; ; p = parentPath(p) {
		if line, ok := cv.lines[p]; ok {
			return line
		}
		if p == "" {
			return 0
		}
	}
}

// linesUnder returns the lines of the paths under prefix, relative to it.
func (cv *converter) linesUnder(prefix string) map[string]int {
	if prefix == "" {
		return cv.lines
	}
	out := map[string]int{}
	for p, line := range cv.lines {
		if rest, ok := strings.CutPrefix(p, prefix+"."); ok {
			out[rest] = line
		}
	}
	return out
}

func joinPath(prefix, field string) string {
	if prefix == "" {
		return field
	}
	if field == "" {
		return prefix
	}
	return prefix + "." + field
}

func displayPath(p string) string {
	if p == "" {
		return "(document)"
	}
	return p
}

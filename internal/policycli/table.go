package policycli

import (
	"io"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/printers"
)

// table prints rows as `kubectl get` prints them, with cli-runtime's table
// printer: kubectl's spacing, the header once, and column widths that only
// grow from one print to the next, so that the rows --follow prints later
// line up with the earlier ones.
type table struct {
	columns []metav1.TableColumnDefinition
	printer printers.ResourcePrinter
	// w is cli-runtime's tabwriter, kept across prints for its widths.
	w interface {
		io.Writer
		Flush() error
	}
}

func newTable(w io.Writer, header ...string) *table {
	cols := make([]metav1.TableColumnDefinition, len(header))
	for i, h := range header {
		cols[i] = metav1.TableColumnDefinition{Name: h, Type: "string"}
	}
	return &table{columns: cols, printer: printers.NewTablePrinter(printers.PrintOptions{}), w: printers.GetNewTabWriter(w)}
}

// print writes rows, after the header the first time; nothing at all when
// there are no rows.
func (t *table) print(rows [][]string) error {
	if len(rows) == 0 {
		return nil
	}
	tbl := &metav1.Table{ColumnDefinitions: t.columns, Rows: make([]metav1.TableRow, len(rows))}
	for i, r := range rows {
		cells := make([]any, len(r))
		for j, c := range r {
			cells[j] = c
		}
		tbl.Rows[i].Cells = cells
	}
	if err := t.printer.PrintObj(tbl, t.w); err != nil {
		return err
	}
	return t.w.Flush()
}

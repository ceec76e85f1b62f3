package graph

import "time"

// SetKeySetClock replaces a key set's clock, so tests can step over the
// refresh limits without waiting for them.
func SetKeySetClock(k *KeySet, now func() time.Time) { k.now = now }

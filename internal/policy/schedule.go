package policy

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
	// Minimal images have no zoneinfo; the receiver must still know every
	// IANA zone a policy names.
	_ "time/tzdata"

	"github.com/callguard/callguard/api/v1alpha1"
)

const minutesPerDay = 24 * 60

// schedule is a week of minutes on the wall clock of loc: bit m of day d is
// set when minute m of weekday d is inside some window. Evaluating on the
// wall clock is what makes DST right in both directions: the skipped hour of
// spring-forward never occurs and the repeated hour of fall-back holds twice.
type schedule struct {
	zone *zone
	bits [7][(minutesPerDay + 63) / 64]uint64
}

func (s *schedule) holds(ev *evalState) bool {
	d, m := ev.clock(s.zone)
	return s.bits[d][m>>6]&(1<<(m&63)) != 0
}

// zone is a time zone shared by every schedule that names it. It remembers
// the UTC offset period (between two DST changes) it last looked up, since
// looking up a zone's transitions costs more than the rest of a decision.
type zone struct {
	loc    *time.Location
	period atomic.Pointer[zonePeriod]
}

// zonePeriod is a span of Unix seconds [start, end) with one UTC offset.
type zonePeriod struct {
	start, end, offset int64
}

// wallClock returns the weekday and minute of the day of t on the zone's
// wall clock.
func (z *zone) wallClock(t time.Time) (time.Weekday, int) {
	sec := t.Unix()
	p := z.period.Load()
	if p == nil || sec < p.start || sec >= p.end {
		lt := t.In(z.loc)
		_, offset := lt.Zone()
		start, end := lt.ZoneBounds()
		p = &zonePeriod{start: math.MinInt64, end: math.MaxInt64, offset: int64(offset)}
		if !start.IsZero() {
			p.start = start.Unix()
		}
		if !end.IsZero() {
			p.end = end.Unix()
		}
		z.period.Store(p)
	}
	wall := sec + p.offset
	days := wall / secondsPerDay
	if wall%secondsPerDay < 0 {
		days--
	}
	// 1970-01-01 was a Thursday.
	weekday := time.Weekday(((days+int64(time.Thursday))%7 + 7) % 7)
	return weekday, int(wall-days*secondsPerDay) / 60
}

const secondsPerDay = 24 * 60 * 60

func (s *schedule) set(d time.Weekday, from, to int) {
	for m := from; m < to; m++ {
		s.bits[d][m>>6] |= 1 << (m & 63)
	}
}

var weekdays = map[v1alpha1.Weekday]time.Weekday{
	"Sun": time.Sunday, "Mon": time.Monday, "Tue": time.Tuesday, "Wed": time.Wednesday,
	"Thu": time.Thursday, "Fri": time.Friday, "Sat": time.Saturday,
}

func (c *compiler) compileSchedule(path string, sc *v1alpha1.Schedule) *schedule {
	s := &schedule{}
	z, err := loadZone(sc.TimeZone)
	if err != nil {
		c.errorf(path+".timeZone", "%v", err)
	}
	s.zone = z
	if len(sc.Windows) == 0 {
		c.errorf(path+".windows", "at least one window is required")
	}
	if len(sc.Windows) > 64 {
		c.errorf(path+".windows", "at most 64 windows are allowed, got %d", len(sc.Windows))
	}
	for i, w := range sc.Windows {
		wp := fmt.Sprintf("%s.windows[%d]", path, i)
		start, okStart := parseClock(w.Start, false)
		if !okStart {
			c.errorf(wp+".start", "must be HH:MM from 00:00 to 23:59, got %q", w.Start)
		}
		end, okEnd := parseClock(w.End, true)
		if !okEnd {
			c.errorf(wp+".end", "must be HH:MM from 00:00 to 24:00, got %q", w.End)
		}
		if len(w.Days) == 0 {
			c.errorf(wp+".days", "at least one day is required")
		}
		if len(w.Days) > 7 {
			c.errorf(wp+".days", "at most 7 days are allowed, got %d", len(w.Days))
		}
		for j, day := range w.Days {
			d, ok := weekdays[day]
			if !ok {
				c.errorf(fmt.Sprintf("%s.days[%d]", wp, j), "must be one of Mon, Tue, Wed, Thu, Fri, Sat, Sun, got %q", day)
				continue
			}
			if !okStart || !okEnd {
				continue
			}
			if end > start {
				s.set(d, start, end)
				continue
			}
			// end <= start runs past midnight into the next day.
			s.set(d, start, minutesPerDay)
			s.set((d+1)%7, 0, end)
		}
	}
	if z == nil {
		return nil
	}
	return s
}

// zones caches loaded zones by name, so that rules naming the same zone share
// one: Decide then converts the arrival time once per zone, and the period
// cache of a zone serves every policy.
var zones sync.Map // string → *zone

// loadZone loads an IANA zone; "" is the default, UTC. "Local" is refused: it would mean
// whatever zone the machine deciding happens to be in.
func loadZone(name string) (*zone, error) {
	if name == "" {
		name = v1alpha1.DefaultTimeZone
	}
	if name == "Local" {
		return nil, fmt.Errorf("must be an IANA time zone such as Europe/Berlin, not Local")
	}
	if z, ok := zones.Load(name); ok {
		return z.(*zone), nil
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("unknown IANA time zone %q", name)
	}
	z, _ := zones.LoadOrStore(name, &zone{loc: loc})
	return z.(*zone), nil
}

// parseClock parses "HH:MM" into minutes of the day; allow24 admits "24:00".
func parseClock(s string, allow24 bool) (int, bool) {
	if len(s) != 5 || s[2] != ':' {
		return 0, false
	}
	for _, i := range [...]int{0, 1, 3, 4} {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	h := int(s[0]-'0')*10 + int(s[1]-'0')
	m := int(s[3]-'0')*10 + int(s[4]-'0')
	if allow24 && h == 24 && m == 0 {
		return minutesPerDay, true
	}
	if h > 23 || m > 59 {
		return 0, false
	}
	return h*60 + m, true
}

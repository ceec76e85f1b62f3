package state

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisOptions says which Redis-protocol server a Redis store uses and
// for which policy.
type RedisOptions struct {
	// Address is the server's "host:port".
	Address  string
	Database int
	// Username and Password authenticate (ACL user, or Password alone for
	// requirepass); empty for none.
	Username, Password string
	// TLS, when not nil, is the connection's TLS configuration.
	TLS *tls.Config
	// KeyPrefix begins every key, then Namespace "/" Name ":": policies
	// sharing a server count apart.
	KeyPrefix       string
	Namespace, Name string
	// HashKey keys the HMAC-SHA256 that callers are stored under; every
	// replica of a policy must use the same.
	HashKey []byte
	// RoundTrip, if set, is called once per round trip of script calls to
	// the server (Eval's and Unblock's; concurrent Evals share one).
	RoundTrip func()
}

// Redis is a Store in a Redis-protocol server, shared by every replica of
// a policy. A caller has at most two keys: its counted calls (a sorted set
// "c:") and its blocks (a hash "b:"), named by its keyed hash; each expires
// with the longest window or block it serves.
type Redis struct {
	client  *redis.Client
	hashers *hashers
	// base is KeyPrefix namespace/name: ; pattern matches its block keys in
	// SCAN.
	base, pattern string
	roundTrip     func()

	// One round trip of Evals is on its way at a time; the Evals that ask
	// meanwhile wait for the sender (send), which puts all of them in its
	// next pipeline: concurrent batches share a round trip, so a backlog
	// (after the receiver's CPU was taken for a while) costs fewer writes,
	// reads and wake-ups per call than the calls before it, and drains
	// faster.
	mu        sync.Mutex
	busy      bool // a round trip is on its way
	queue     []*flight
	wake      chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
	sent      sync.WaitGroup
}

// flight is one Eval's script calls, waiting for or in a round trip.
type flight struct {
	ctx   context.Context
	calls [][]any
	cmds  []*redis.Cmd
	err   error
	done  chan struct{}
}

// maxRoundCalls bounds the script calls of one round trip: the server runs
// them one after another, and the last waits for all before it.
const maxRoundCalls = 512

// Key kinds after the base.
const (
	kindCalls  = "c:"
	kindBlocks = "b:"
	kindClaim  = "k:"
	// maskedField is the blocks hash's field for the masked number; rule
	// names are DNS labels, so no rule is called "#".
	maskedField = "#"
	// scanCount is SCAN's COUNT: the keys a listing reads per round trip.
	scanCount = 1000
)

// evalScript records a call and answers a Query; Memory.eval is the same in
// Go: keep them alike.
//
// KEYS: calls, blocks. ARGV: at (ms), record ("1"), call member, keep (ms),
// keep calls, masked, then per step: rule, static ("1"), calls, within
// (ms), blockFor (ms). It returns {step, blocked, until, started}.
const evalScript = `
local c, b = KEYS[1], KEYS[2]
local at = tonumber(ARGV[1])
local function fmt(n) return string.format('%.0f', n) end
if ARGV[2] == '1' then
  local keep = tonumber(ARGV[4])
  redis.call('ZADD', c, 'NX', ARGV[1], ARGV[3])
  redis.call('ZREMRANGEBYSCORE', c, '-inf', fmt(at - keep))
  redis.call('ZREMRANGEBYRANK', c, 0, -tonumber(ARGV[5]) - 1)
  redis.call('PEXPIRE', c, fmt(keep))
end
local blocks = {}
local raw = redis.call('HGETALL', b)
for i = 1, #raw, 2 do
  if raw[i] ~= '#' then
    local s, u = string.match(raw[i + 1], '^(-?%d+):(-?%d+)$')
    if s then blocks[raw[i]] = {tonumber(s), tonumber(u)} end
  end
end
local counts = {}
local n = (#ARGV - 6) / 5
for i = 0, n - 1 do
  local o = 7 + i * 5
  local rule, static = ARGV[o], ARGV[o + 1] == '1'
  local calls, within, blockFor = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
  local since, untl = 0, 0
  if blocks[rule] then since, untl = blocks[rule][1], blocks[rule][2] end
  local blocked = untl > at
  local holds = blocked
  if not holds and static then
    if calls == 0 then
      holds = true
    else
      local k = counts[within]
      if k == nil then
        k = redis.call('ZCOUNT', c, '(' .. fmt(at - within), ARGV[1])
        counts[within] = k
      end
      holds = k >= calls
    end
  end
  if holds then
    local started = 0
    if blockFor > 0 then
      local nu = at + blockFor
      if blocked then
        if untl > nu then nu = untl end
      else
        since = at
        started = 1
      end
      untl = nu
      blocks[rule] = {since, untl}
      local set, last = {'#', ARGV[6]}, untl
      for r, v in pairs(blocks) do
        if v[2] > at then
          set[#set + 1] = r
          set[#set + 1] = fmt(v[1]) .. ':' .. fmt(v[2])
          if v[2] > last then last = v[2] end
        else
          redis.call('HDEL', b, r)
        end
      end
      redis.call('HSET', b, unpack(set))
      redis.call('PEXPIRE', b, fmt(last - at))
    end
    return {i, blocked and 1 or 0, untl, started}
  end
end
return {-1, 0, 0, 0}
`

// unblockScript deletes a blocks key (KEYS[1]) and returns how many of its
// blocks ran past ARGV[1] (ms).
const unblockScript = `
local raw = redis.call('HGETALL', KEYS[1])
local now, n = tonumber(ARGV[1]), 0
for i = 1, #raw, 2 do
  if raw[i] ~= '#' then
    local u = tonumber(string.match(raw[i + 1], ':(-?%d+)$'))
    if u and u > now then n = n + 1 end
  end
end
redis.call('DEL', KEYS[1])
return n
`

// script is a Lua script run by its SHA1, sent whole only when the server
// does not have it yet (NOSCRIPT: a fresh or restarted server).
type script struct {
	src, sha string
	// boxedSrc and boxedSHA are src and sha as command arguments.
	boxedSrc, boxedSHA any
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	sha := hex.EncodeToString(sum[:])
	return &script{src: src, sha: sha, boxedSrc: src, boxedSHA: sha}
}

var (
	evalLua    = newScript(evalScript)
	unblockLua = newScript(unblockScript)
)

// NewRedis makes a Redis store. It does not connect: the first request
// does, and a server that cannot be reached fails requests, not NewRedis.
func NewRedis(opts RedisOptions) (*Redis, error) {
	switch {
	case opts.Address == "":
		return nil, errors.New("state: redis: no address")
	case opts.Database < 0:
		return nil, fmt.Errorf("state: redis: database %d is negative", opts.Database)
	case len(opts.HashKey) == 0:
		return nil, errors.New("state: redis: empty hash key")
	case opts.Name == "":
		// A standalone policy may have no namespace; it has a name.
		return nil, errors.New("state: redis: no policy name")
	}
	quietClient.Do(func() { redis.SetLogger(quiet{}) })
	base := opts.KeyPrefix + opts.Namespace + "/" + opts.Name + ":"
	c := redis.NewClient(&redis.Options{
		Addr:      opts.Address,
		DB:        opts.Database,
		Username:  opts.Username,
		Password:  opts.Password,
		TLSConfig: opts.TLS,
		// RESP2 and no client-identity or maintenance handshakes: what every
		// Redis-protocol server (Valkey, managed ones) understands.
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		// The caller's context bounds every request (the receiver's budget
		// is 100 ms); one retry replaces a connection the server closed.
		ContextTimeoutEnabled: true,
		MaxRetries:            1,
		DialerRetries:         1,
		DialTimeout:           2 * time.Second,
	})
	r := &Redis{
		client:    c,
		hashers:   newHashers(opts.HashKey),
		base:      base,
		pattern:   globEscape(base+kindBlocks) + "*",
		roundTrip: opts.RoundTrip,
		wake:      make(chan struct{}, 1),
		closed:    make(chan struct{}),
	}
	r.sent.Go(r.send)
	return r, nil
}

// quietClient silences the client's own log, once per process: every error
// reaches the store's caller, who logs it once per batch instead of one
// line per failed dial.
var quietClient sync.Once

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// globEscape quotes SCAN MATCH's special characters.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// keyName is the key of a hashed caller (or claim) of a kind.
func (r *Redis) keyName(kind string, k callerKey) string {
	return r.base + kind + base64.RawURLEncoding.EncodeToString(k[:])
}

// Eval implements Store: one pipeline of one script call per query.
//
// Each call's arguments are laid out once, in one slice for the batch,
// and handed to the client as they are: a batch is usually one call, and
// what the client would copy, box or hash again per call shows in every
// call's time (BenchmarkEval).
func (r *Redis) Eval(ctx context.Context, qs []Query, ans []Answer) error {
	if err := checkQueries(qs, ans); err != nil {
		return fmt.Errorf("state: eval: %w", err)
	}
	if len(qs) == 0 {
		return nil
	}
	n := 0
	for i := range qs {
		n += evalArgs + argsPerStep*len(qs[i].Steps)
	}
	all := make([]any, 0, n)
	calls := make([][]any, len(qs))
	// The members' bytes, 8 a call, in one array.
	members := make([]byte, 8*len(qs))
	h := r.hashers.get()
	for i := range qs {
		q := &qs[i]
		start := len(all)
		callsKey, blocksKey := r.callerKeys(h.key(q.Caller))
		member := members[8*i : 8*i+8 : 8*i+8]
		binary.BigEndian.PutUint64(member, callMember(q.CallID))
		all = append(all, nil, nil, two, callsKey, blocksKey,
			ms(q.At), flag(q.Record), member, durMS(q.Keep), q.KeepCalls, q.Masked)
		for j := range q.Steps {
			s := &q.Steps[j]
			all = append(all, s.Rule, flag(s.Static), s.Calls, durMS(s.Within), durMS(s.BlockFor))
		}
		calls[i] = all[start:len(all):len(all)]
	}
	r.hashers.put(h)
	cmds, err := r.coalesce(ctx, calls)
	if err != nil {
		return fmt.Errorf("state: eval: %w", err)
	}
	for i, cmd := range cmds {
		a, ok := scriptAnswer(cmd)
		if !ok {
			return fmt.Errorf("state: eval: script answered %v", cmd.Val())
		}
		ans[i] = a
	}
	return nil
}

// The layout of a script call's arguments (redis.Cmd args): the command
// and the script (set by run), the number of keys, the keys, then ARGV.
const (
	// evalArgs are a call's arguments before its steps'.
	evalArgs = 11
	// argsPerStep are a step's arguments.
	argsPerStep = 5
)

// Boxed once: a string or number in an interface costs an allocation each
// time it is made.
var (
	one, zero, two      any = "1", "0", "2"
	cmdEval, cmdEvalSha any = "eval", "evalsha"
)

func flag(b bool) any {
	if b {
		return one
	}
	return zero
}

// scriptAnswer reads evalScript's {step, blocked, until, started}.
func scriptAnswer(cmd *redis.Cmd) (Answer, bool) {
	v, ok := cmd.Val().([]any)
	if !ok || len(v) != 4 {
		return Answer{}, false
	}
	var n [4]int64
	for i := range v {
		if n[i], ok = v[i].(int64); !ok {
			return Answer{}, false
		}
	}
	return Answer{Step: int(n[0]), Blocked: n[1] == 1, Until: fromMS(n[2]), Started: n[3] == 1}, true
}

// callerKeys are a caller's calls and blocks keys (keyName's), made with
// one allocation: every call needs both.
func (r *Redis) callerKeys(k callerKey) (calls, blocks string) {
	var enc [32]byte
	e := base64.RawURLEncoding.AppendEncode(enc[:0], k[:])
	var b strings.Builder
	b.Grow(2 * (len(r.base) + len(kindCalls) + len(e)))
	b.WriteString(r.base)
	b.WriteString(kindCalls)
	b.Write(e)
	n := b.Len()
	b.WriteString(r.base)
	b.WriteString(kindBlocks)
	b.Write(e)
	both := b.String()
	return both[:n], both[n:]
}

// run sends one EVALSHA of s per call in one pipeline, and again as EVAL
// those the server did not have the script for. A call is the command's
// arguments with two free slots first, for the command and the script.
func (r *Redis) run(ctx context.Context, s *script, calls [][]any) ([]*redis.Cmd, error) {
	cmds := r.exec(ctx, s, calls)
	if err := firstErr(cmds); err != nil {
		return nil, err
	}
	return cmds, nil
}

func firstErr(cmds []*redis.Cmd) error {
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return err
		}
	}
	return nil
}

// exec is run's round trip (two when the script is missing), every
// command's own error kept.
func (r *Redis) exec(ctx context.Context, s *script, calls [][]any) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(calls))
	pipe := r.client.Pipeline()
	for i, c := range calls {
		c[0], c[1] = cmdEvalSha, s.boxedSHA
		cmds[i] = redis.NewCmd(ctx, c...)
		_ = pipe.Process(ctx, cmds[i])
	}
	_, _ = pipe.Exec(ctx)
	r.countRoundTrip()
	var missing []int
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		pipe = r.client.Pipeline()
		for _, i := range missing {
			c := calls[i]
			c[0], c[1] = cmdEval, s.boxedSrc
			cmds[i] = redis.NewCmd(ctx, c...)
			_ = pipe.Process(ctx, cmds[i])
		}
		_, _ = pipe.Exec(ctx)
		r.countRoundTrip()
	}
	return cmds
}

func (r *Redis) countRoundTrip() {
	if r.roundTrip != nil {
		r.roundTrip()
	}
}

// coalesce runs calls (evalScript's) and returns their answers: at once
// when no round trip is on its way, or else with the calls of every other
// Eval waiting then, in the sender's next round trip; or ctx's error if
// that ends first (the calls may still be sent and counted, as a timed-out
// pipeline's may).
func (r *Redis) coalesce(ctx context.Context, calls [][]any) ([]*redis.Cmd, error) {
	r.mu.Lock()
	if !r.busy && len(r.queue) == 0 {
		// Nothing to share the round trip with: no hand-off either.
		r.busy = true
		r.mu.Unlock()
		cmds, err := r.run(ctx, evalLua, calls)
		r.idle()
		return cmds, err
	}
	f := &flight{ctx: ctx, calls: calls, done: make(chan struct{})}
	r.queue = append(r.queue, f)
	r.mu.Unlock()
	r.wakeSender()
	select {
	case <-f.done:
		return f.cmds, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.closed:
		return nil, redis.ErrClosed
	}
}

// idle ends a round trip, and has the sender send the Evals that waited
// for it.
func (r *Redis) idle() {
	r.mu.Lock()
	r.busy = false
	waiting := len(r.queue) > 0
	r.mu.Unlock()
	if waiting {
		r.wakeSender()
	}
}

func (r *Redis) wakeSender() {
	select {
	case r.wake <- struct{}{}:
	default: // the sender is already due to look
	}
}

// send is the sender: each round trip takes the Evals waiting, up to
// maxRoundCalls calls, in one pipeline, once the round trip on its way is
// back (whoever made it wakes the sender again).
func (r *Redis) send() {
	for {
		select {
		case <-r.wake:
		case <-r.closed:
			r.fail(redis.ErrClosed)
			return
		}
		for r.round() {
		}
	}
}

// round sends one round trip of the Evals waiting; false when none was or
// a round trip is on its way.
func (r *Redis) round() bool {
	r.mu.Lock()
	if r.busy {
		r.mu.Unlock()
		return false
	}
	var (
		take  []*flight
		calls [][]any
	)
	n := 0
	for n < len(r.queue) {
		f := r.queue[n]
		if len(take) > 0 && len(calls)+len(f.calls) > maxRoundCalls {
			break
		}
		n++
		// A caller that gave up is not waiting: its calls are not sent.
		if f.ctx.Err() != nil {
			continue
		}
		take = append(take, f)
		calls = append(calls, f.calls...)
	}
	r.queue = r.queue[n:]
	if len(r.queue) == 0 {
		r.queue = nil
	}
	r.busy = len(take) > 0
	r.mu.Unlock()
	if n == 0 {
		return false
	}
	if len(take) == 0 {
		return true
	}
	// The round is bounded by its earliest deadline (every caller's budget
	// is the same, so usually the first to have waited has it).
	ctx := take[0].ctx
	for _, f := range take[1:] {
		if d, ok := f.ctx.Deadline(); ok {
			if e, ok := ctx.Deadline(); !ok || d.Before(e) {
				ctx = f.ctx
			}
		}
	}
	cmds := r.exec(ctx, evalLua, calls)
	r.mu.Lock()
	r.busy = false
	r.mu.Unlock()
	for _, f := range take {
		f.cmds, cmds = cmds[:len(f.calls):len(f.calls)], cmds[len(f.calls):]
		f.err = firstErr(f.cmds)
		close(f.done)
	}
	return true
}

// fail ends every waiting Eval with err.
func (r *Redis) fail(err error) {
	r.mu.Lock()
	q := r.queue
	r.queue = nil
	r.mu.Unlock()
	for _, f := range q {
		f.err = err
		close(f.done)
	}
}

// Claim implements Store.
func (r *Redis) Claim(ctx context.Context, id string, ttl time.Duration) (bool, error) {
	key := r.keyName(kindClaim, r.hashers.key(id))
	ok, err := r.client.SetNX(ctx, key, "1", max(ttl, time.Millisecond)).Result()
	if err != nil {
		return false, fmt.Errorf("state: claim: %w", err)
	}
	return ok, nil
}

// scan calls page with each page of this policy's blocks keys.
func (r *Redis) scan(ctx context.Context, page func([]string) error) error {
	var cursor uint64
	for {
		keys, next, err := r.client.Scan(ctx, cursor, r.pattern, scanCount).Result()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := page(keys); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// Blocks implements Store.
func (r *Redis) Blocks(ctx context.Context, now time.Time) ([]Block, error) {
	at := ms(now)
	var out []Block
	err := r.scan(ctx, func(keys []string) error {
		pipe := r.client.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.HGetAll(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		for _, cmd := range cmds {
			fields := cmd.Val()
			masked := fields[maskedField]
			for rule, v := range fields {
				if rule == maskedField {
					continue
				}
				since, until, ok := parseBlock(v)
				if ok && until > at {
					out = append(out, Block{Masked: masked, Rule: rule, Since: fromMS(since), Until: fromMS(until)})
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("state: blocks: %w", err)
	}
	sortBlocks(out)
	return out, nil
}

// parseBlock reads a blocks hash value, "since:until" in ms.
func parseBlock(v string) (since, until int64, ok bool) {
	s, u, found := strings.Cut(v, ":")
	if !found {
		return 0, 0, false
	}
	since, err1 := strconv.ParseInt(s, 10, 64)
	until, err2 := strconv.ParseInt(u, 10, 64)
	return since, until, err1 == nil && err2 == nil
}

// Unblock implements Store.
func (r *Redis) Unblock(ctx context.Context, caller string) (int, error) {
	now := ms(time.Now())
	lift := func(keys []string) (int, error) {
		calls := make([][]any, len(keys))
		for i, k := range keys {
			calls[i] = []any{nil, nil, 1, k, now}
		}
		cmds, err := r.run(ctx, unblockLua, calls)
		if err != nil {
			return 0, err
		}
		n := 0
		for _, cmd := range cmds {
			c, err := cmd.Int()
			if err != nil {
				return 0, err
			}
			n += c
		}
		return n, nil
	}
	if caller != "" {
		n, err := lift([]string{r.keyName(kindBlocks, r.hashers.key(caller))})
		if err != nil {
			return 0, fmt.Errorf("state: unblock: %w", err)
		}
		return n, nil
	}
	total := 0
	err := r.scan(ctx, func(keys []string) error {
		n, err := lift(keys)
		total += n
		return err
	})
	if err != nil {
		return total, fmt.Errorf("state: unblock: %w", err)
	}
	return total, nil
}

// Warm connects, authenticates and loads the script before the first call
// needs them. A store that is not warmed dials on its first batch, and a
// receiver just started then decides its first second of calls without the
// store (BenchmarkRepeatCallers). One connection is what Eval uses: its
// round trips go one at a time. Warm runs the script for no caller: only
// commands the store always sends, so an ACL user limited to them
// (docs/state.md) may warm it too.
func (r *Redis) Warm(ctx context.Context) error {
	var none callerKey
	keys := []string{r.keyName(kindCalls, none), r.keyName(kindBlocks, none)}
	p := r.client.Pipeline()
	// Not recording, no steps: it reads one absent key and answers -1.
	p.Eval(ctx, evalLua.src, keys, "0", "0", "", "0", "0", "")
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("state: redis: warm up: %w", err)
	}
	return nil
}

// Close implements Store: it closes the connection pool (a round trip on
// its way fails) and stops the sender, failing the Evals still waiting.
func (r *Redis) Close() error {
	r.closeOnce.Do(func() { close(r.closed) })
	err := r.client.Close()
	r.sent.Wait()
	return err
}

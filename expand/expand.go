package expand

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/address"
	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/loopcheck"
)

// Target is one address Postfix delivers a recipient to.
type Target struct {
	// Addr is the address in the form Postfix compares with
	// Delivered-To: (local(8) folds case before comparing; Addr.Key does
	// the same).
	Addr address.Addr
	// Transport is the master.cf service that delivers it (local, virtual,
	// lmtp, smtp, a pipe service, error); "" when it depends on the
	// sender (sender_dependent_default_transport_maps).
	Transport string
	// ChecksLoops: this delivery compares Addr with the message's
	// Delivered-To: headers and bounces a match (local(8), at every
	// aliases(5) level, and pipe(8) with flag D). True also when the
	// transport depends on the sender: a loop Postfix may bounce is
	// never let through. False for a transport master.cf lacks (qmgr
	// defers such mail).
	ChecksLoops bool
}

// Result is the expansion of one recipient.
type Result struct {
	// Targets are the addresses Postfix delivers the recipient to, in
	// the order found: the queue recipients after cleanup(8)'s rewriting
	// (canonical and virtual alias maps), and for local(8) every
	// aliases(5) (and :include:) level, and what local(8) forwards.
	Targets []Target
	// Complete says the expansion ran to its end. An incomplete result
	// has no targets worth judging by: the recipient is judged as
	// spelled (fail-open).
	Complete bool
	// Cause says why the result is incomplete; Err what failed.
	Cause Cause
	Err   error
}

// Mode says which expanded addresses a recipient is judged by.
type Mode int

const (
	// ModeAny judges a recipient by its literal address and every
	// address of its expansion, whatever transport delivers it (-loops=any).
	ModeAny Mode = iota
	// ModePostfix judges a recipient by the expanded addresses whose
	// delivery checks Delivered-To: only (local(8), pipe(8) flag D),
	// each compared with the fields as local(8) compares it (exactly,
	// loopcheck's package comment): exactly what Postfix itself would
	// bounce (-loops=postfix).
	ModePostfix
)

// ParseMode reads a -loops flag value: "any" or "postfix".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "any":
		return ModeAny, nil
	case "postfix":
		return ModePostfix, nil
	}
	return 0, fmt.Errorf("loop mode %q: want any or postfix", s)
}

func (m Mode) String() string {
	if m == ModePostfix {
		return "postfix"
	}
	return "any"
}

// Expansion returns what loopcheck.Recipient.WithExpansion takes for this
// result in mode m: with ModeAny every target, added to the literal
// recipient and compared leniently like it; with ModePostfix the targets
// that check loops, replacing it and compared exactly as local(8) compares
// (postfix true). An incomplete result gives nothing and postfix false:
// the literal recipient alone, judged leniently, in both modes.
func (r Result) Expansion(m Mode) (addrs []address.Addr, postfix bool) {
	if !r.Complete {
		return nil, false
	}
	for _, t := range r.Targets {
		if m == ModeAny || t.ChecksLoops {
			addrs = append(addrs, t.Addr)
		}
	}
	return addrs, m == ModePostfix
}

// Deliveries returns what loopcheck.Recipient.WithDeliveries takes for
// this result in mode m: every address Postfix delivers the recipient to
// (every target: a front-end that removes the recipient removes all of
// them), when each of them is one the recipient is judged by in m.
// Otherwise nil, which leaves them unknown: for an incomplete result,
// and in ModePostfix when a target's delivery does not compare
// Delivered-To: (no verdict in that mode can say that it loops).
func (r Result) Deliveries(m Mode) []address.Addr {
	if !r.Complete {
		return nil
	}
	addrs := make([]address.Addr, 0, len(r.Targets))
	for _, t := range r.Targets {
		if m == ModePostfix && !t.ChecksLoops {
			return nil
		}
		addrs = append(addrs, t.Addr)
	}
	return addrs
}

// Defaults of Options.
const (
	// DefaultTimeout bounds one expansion, including the part that runs
	// on after a front-end stopped waiting for it (its result still
	// fills the cache). A recipient takes about ten lookups: well under
	// a millisecond each through proxymap, about 25 ms each through
	// postmap.
	DefaultTimeout = 10 * time.Second
	// DefaultWait is the proposed default of -expansion-wait: how long a
	// front-end waits at end-of-DATA for expansions still running before
	// it judges those recipients as spelled. An expansion started at RCPT
	// time is normally done by then; through postmap a recipient can take
	// a few hundred milliseconds. It stays well under the proxy's 90 s
	// upstream reply timeout and Postfix's 100 s smtpd_proxy_timeout.
	DefaultWait = 5 * time.Second
)

// BackendKind chooses the lookup backend.
type BackendKind int

const (
	// BackendAuto uses proxymap(8) when its socket answers and every
	// table the expansion needs is approved in proxy_read_maps, else
	// postmap(1).
	BackendAuto BackendKind = iota
	BackendProxymap
	BackendPostmap
)

// Options configure an Expander. ConfigDir or Config is required.
type Options struct {
	// ConfigDir is the Postfix config_directory (-postfix-config):
	// New and Reload read it with postconf(1).
	ConfigDir string
	// Config, when set, is used instead of reading ConfigDir (tests).
	Config *Config
	// Backend, when set, answers the lookups instead of a backend chosen
	// from the configuration (tests: a Memory).
	Backend Backend
	// Prefer forces a backend kind; BackendAuto chooses.
	Prefer BackendKind
	// Timeout bounds one expansion (DefaultTimeout when 0).
	Timeout time.Duration
	// CacheSize, CacheTargets and CacheTTL bound the cache of complete
	// expansions: entries, their targets in all, and the time an entry
	// is served (DefaultCacheSize, DefaultCacheTargets, DefaultCacheTTL
	// when 0; a negative CacheSize turns the cache off).
	CacheSize    int
	CacheTargets int
	CacheTTL     time.Duration
	// Observer is told about lookups, cache hits and incomplete
	// expansions (for metrics).
	Observer Observer
	// Logger gets the warnings, at most one per cause per
	// DefaultWarnEvery (nil: discarded).
	Logger *slog.Logger
	// ReadFile reads :include: files (default: readIncludeFile: a regular
	// file, not world-writable, at most 1 MiB). It runs on a goroutine of
	// its own; an expansion that ends first leaves it running.
	ReadFile func(path string) ([]byte, error)
	// ProxymapConns and PostmapProcs bound the backend's concurrency
	// (DefaultProxymapConns, DefaultPostmapProcs when 0).
	ProxymapConns, PostmapProcs int
	// MaxInflight bounds the expansions Start runs at once
	// (DefaultMaxInflight when 0).
	MaxInflight int
}

// DefaultMaxInflight is how many distinct expansions Start runs at once.
// Each holds a goroutine while it waits for the backend, whose own
// concurrency is far smaller; a flood of recipients (1000 sessions with a
// thousand recipients each) must not turn into a million goroutines.
// Beyond it a recipient whose expansion is not cached is judged as spelled
// (CauseBusy).
const DefaultMaxInflight = 1000

// Expander computes expansions for a Postfix instance. It is safe for
// concurrent use; Close stops it.
type Expander struct {
	opts    Options
	obs     Observer
	warn    *WarnLimiter
	timeout time.Duration
	// maxInflight bounds inflight (Options.MaxInflight).
	maxInflight int

	base   context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // expansions started by Start, and backends closing

	mu       sync.RWMutex
	gen      *generation
	closed   bool
	inflight map[string]*Pending

	// fileReads holds a token per :include: read running
	// (maxIncludeReads).
	fileReads chan struct{}
}

// generation is one reading of the configuration: Reload replaces it
// whole, so a cache never outlives the configuration it was computed
// under.
type generation struct {
	cfg     *Config
	be      Backend
	info    string
	cache   *cache
	owned   bool // the backend was chosen here, not given: close it
	users   sync.WaitGroup
	release sync.Once
}

// New reads the configuration, chooses the backend and returns a running
// Expander.
func New(ctx context.Context, opts Options) (*Expander, error) {
	if opts.Config == nil && opts.ConfigDir == "" {
		return nil, errors.New("expand: no Postfix configuration (ConfigDir or Config)")
	}
	e := &Expander{opts: opts, obs: opts.Observer, timeout: opts.Timeout, inflight: map[string]*Pending{}, maxInflight: opts.MaxInflight,
		fileReads: make(chan struct{}, maxIncludeReads)}
	if e.maxInflight <= 0 {
		e.maxInflight = DefaultMaxInflight
	}
	if e.obs == nil {
		e.obs = nopObserver{}
	}
	if e.timeout <= 0 {
		e.timeout = DefaultTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	e.warn = NewWarnLimiter(log, DefaultWarnEvery, nil)
	g, err := e.load(ctx)
	if err != nil {
		return nil, err
	}
	e.gen = g
	e.base, e.cancel = context.WithCancel(context.Background())
	return e, nil
}

// load reads the configuration and builds a generation.
func (e *Expander) load(ctx context.Context) (*generation, error) {
	cfg := e.opts.Config
	if cfg == nil {
		var err error
		if cfg, err = LoadConfig(ctx, e.opts.ConfigDir); err != nil {
			return nil, err
		}
	}
	be, info, owned := e.opts.Backend, "given backend", e.opts.Backend == nil
	if owned {
		var err error
		if be, info, err = chooseBackend(ctx, cfg, e.opts); err != nil {
			return nil, err
		}
	}
	size, targets, ttl := e.opts.CacheSize, e.opts.CacheTargets, e.opts.CacheTTL
	if size == 0 {
		size = DefaultCacheSize
	}
	if targets <= 0 {
		targets = DefaultCacheTargets
	}
	if ttl == 0 {
		ttl = DefaultCacheTTL
	}
	return &generation{
		cfg:   cfg,
		be:    builtin{next: observed{Backend: be, obs: e.obs}},
		info:  info,
		cache: newCache(size, targets, ttl),
		owned: owned,
	}, nil
}

// BackendInfo says which backend answers lookups and why, for the
// start-up log.
func (e *Expander) BackendInfo() string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.gen.info
}

// Config returns the configuration in use.
func (e *Expander) Config() *Config {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.gen.cfg
}

// acquire returns the current generation, held until done is called.
func (e *Expander) acquire() (*generation, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return nil, errClosed
	}
	e.gen.users.Add(1)
	return e.gen, nil
}

// recipientKey is the recipient in internal form, exactly as given: the
// cache key (case kept: a pattern table may tell case).
func recipientKey(a address.Addr) string {
	if a.Domain == "" {
		return a.LocalText()
	}
	return a.LocalText() + "@" + a.Domain
}

// errNoRecipient is the expansion of the zero Addr.
var errNoRecipient = errors.New("no recipient address to expand")

// Expand computes the expansion of an accepted recipient, or returns it
// from the cache. The error is Result.Err: non-nil exactly when the
// result is incomplete. ctx bounds the wait; the expansion stops when ctx
// ends, after Options.Timeout, or at Close.
func (e *Expander) Expand(ctx context.Context, rcpt address.Addr) (Result, error) {
	res := e.expand(ctx, rcpt)
	return res, res.Err
}

func (e *Expander) expand(ctx context.Context, rcpt address.Addr) Result {
	g, err := e.acquire()
	if err != nil {
		return e.incomplete(rcpt, err)
	}
	defer g.users.Done()
	if rcpt == (address.Addr{}) {
		return e.incomplete(rcpt, errNoRecipient)
	}
	key := recipientKey(rcpt)
	if res, ok := g.cache.get(key, time.Now()); ok {
		e.obs.CacheHit()
		res.Targets = slices.Clone(res.Targets)
		return res
	}
	e.obs.CacheMiss()
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	stop := context.AfterFunc(e.base, cancel)
	defer stop()
	r := newRun(ctx, g.cfg, g.be, e.readFile)
	if err := r.submit(g.cfg.rewriteLocal(rcpt), 0); err != nil {
		return e.incomplete(rcpt, err)
	}
	res := Result{Targets: r.targets, Complete: true}
	g.cache.put(key, Result{Targets: slices.Clone(r.targets), Complete: true}, time.Now())
	return res
}

// incomplete builds, counts and logs an incomplete result.
func (e *Expander) incomplete(rcpt address.Addr, err error) Result {
	var le *LimitError
	cause := causeOf(err)
	if errors.As(err, &le) {
		cause = CauseLimit
	}
	e.obs.Incomplete(cause)
	e.warn.Warn(cause, "recipient expansion incomplete: the recipient is judged as spelled",
		"rcpt", rcpt.String(), "error", err.Error())
	return Result{Cause: cause, Err: err}
}

// Bounds of reading :include: files.
const (
	// maxIncludeFile bounds an :include: file read for expansion: a list
	// of ten thousand addresses fits. A larger file makes the expansion
	// incomplete.
	maxIncludeFile = 1 << 20
	// maxIncludeReads bounds the :include: reads running at once. A read
	// runs on a goroutine of its own so that the expansion can give up on
	// it (a file on a hung NFS mount blocks in the kernel, where nothing
	// interrupts it); such a goroutine lives until the kernel returns.
	// While this many are stuck, an expansion that needs one more waits
	// for its own end and is incomplete.
	maxIncludeReads = 8
)

// errIncludeRefused marks an :include: file local(8) refuses to read and
// bounces the recipient for (local/include.c deliver_include): not a
// regular file, or world-writable. Nothing in it is compared.
var errIncludeRefused = errors.New("refused by local(8)")

// readFile reads an :include: file within ctx: with Options.ReadFile, or
// readIncludeFile. The read runs on a goroutine of its own, at most
// maxIncludeReads at once; when ctx ends first (the expansion's timeout,
// Close) readFile returns ctx's error and leaves the read to finish by
// itself, so neither the expansion nor Close waits for a read that hangs.
func (e *Expander) readFile(ctx context.Context, path string) ([]byte, error) {
	read := e.opts.ReadFile
	if read == nil {
		read = readIncludeFile
	}
	select {
	case e.fileReads <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		defer func() { <-e.fileReads }()
		b, err := read(path)
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// readIncludeFile reads an :include: file as deliver_include would: it
// stats the path (symbolic links followed) and refuses (errIncludeRefused)
// what is not a regular file or is world-writable. It opens the file
// without blocking (O_NONBLOCK: a FIFO swapped in after the stat does not
// wait for a writer), checks the open file again, and reads at most
// maxIncludeFile bytes.
func readIncludeFile(path string) ([]byte, error) {
	if err := includeMode(path)(os.Stat(path)); err != nil {
		return nil, err
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := includeMode(path)(f.Stat()); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxIncludeFile+1))
	if err == nil && len(b) > maxIncludeFile {
		err = fmt.Errorf("%s: larger than %d bytes", path, maxIncludeFile)
	}
	return b, err
}

// includeMode refuses a file deliver_include refuses, given its stat.
func includeMode(path string) func(fs.FileInfo, error) error {
	return func(fi fs.FileInfo, err error) error {
		switch {
		case err != nil:
			return err
		case !fi.Mode().IsRegular():
			return fmt.Errorf("%s: not a regular file: %w", path, errIncludeRefused)
		case fi.Mode().Perm()&0o002 != 0:
			return fmt.Errorf("%s: world-writable: %w", path, errIncludeRefused)
		case fi.Size() > maxIncludeFile:
			return fmt.Errorf("%s: larger than %d bytes", path, maxIncludeFile)
		}
		return nil
	}
}

// Pending is an expansion started by Start.
type Pending struct {
	e    *Expander
	rcpt address.Addr
	done chan struct{}
	res  Result
}

// Start begins the expansion of a recipient in the background (at RCPT
// time) and returns at once. Starts of the same recipient while one is
// running share it. After Close, the Pending is done at once with an
// incomplete result.
func (e *Expander) Start(rcpt address.Addr) *Pending {
	key := recipientKey(rcpt)
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		p := &Pending{done: make(chan struct{}), res: Result{Cause: CauseClosed, Err: errClosed}}
		close(p.done)
		return p
	}
	if p, ok := e.inflight[key]; ok {
		e.mu.Unlock()
		return p
	}
	// A cached expansion costs no goroutine and no lookup: it is served
	// whatever the in-flight budget, which bounds only the expansions
	// that run.
	if rcpt != (address.Addr{}) {
		if res, ok := e.gen.cache.get(key, time.Now()); ok {
			e.mu.Unlock()
			e.obs.CacheHit()
			p := &Pending{done: make(chan struct{}), res: res}
			close(p.done)
			return p
		}
	}
	if len(e.inflight) >= e.maxInflight {
		e.mu.Unlock()
		p := &Pending{done: make(chan struct{}), res: e.incomplete(rcpt, errBusy)}
		close(p.done)
		return p
	}
	p := &Pending{e: e, rcpt: rcpt, done: make(chan struct{})}
	e.inflight[key] = p
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		p.res = e.expand(e.base, rcpt)
		e.mu.Lock()
		delete(e.inflight, key)
		e.mu.Unlock()
		close(p.done)
	}()
	return p
}

// Done is closed when the expansion has ended.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait returns the expansion's result, or, when ctx ends first, an
// incomplete result with the cause of ctx's end (CauseTimeout for a
// deadline), counted and logged as any incomplete expansion. It never
// waits past ctx; the expansion itself runs on and fills the cache. Any
// number of goroutines may wait.
func (p *Pending) Wait(ctx context.Context) Result {
	select {
	case <-p.done:
		res := p.res
		res.Targets = slices.Clone(res.Targets)
		return res
	default:
	}
	select {
	case <-p.done:
		res := p.res
		res.Targets = slices.Clone(res.Targets)
		return res
	case <-ctx.Done():
		err := fmt.Errorf("waiting for the expansion: %w", ctx.Err())
		if p.e != nil {
			return p.e.incomplete(p.rcpt, err)
		}
		return Result{Cause: causeOf(err), Err: err}
	}
}

// Reload re-reads the configuration, chooses the backend again, and
// starts an empty cache (the command calls it on SIGHUP). Expansions
// running keep the configuration they started with; the old backend is
// closed when they end. On error the old configuration stays.
func (e *Expander) Reload(ctx context.Context) error {
	g, err := e.load(ctx)
	if err != nil {
		return err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		g.close()
		return errClosed
	}
	old := e.gen
	e.gen = g
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		old.users.Wait()
		old.close()
	}()
	return nil
}

func (g *generation) close() {
	g.release.Do(func() {
		if g.owned {
			g.be.Close()
		}
	})
}

// Close stops every expansion, waits for them to end, and closes the
// backend. Pending results become incomplete (CauseClosed). It is safe to
// call more than once.
func (e *Expander) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	g := e.gen
	e.mu.Unlock()
	e.cancel()
	e.wg.Wait()
	g.users.Wait()
	g.close()
	return nil
}

// Recipients is the hook a front-end calls for each recipient the MTA
// accepted, with its RCPT TO: argument (smtpproxy.Config.Expand,
// milter.Policy.Expander): it starts the recipient's expansion and returns
// the wait that, at end of message, gives the recipient to judge: with its
// expansion in mode m and its deliveries (Result.Deliveries), or as
// spelled, deliveries unknown, when the expansion is incomplete, ctx ends
// first, or the path does not parse. The wait never blocks past ctx.
func (e *Expander) Recipients(m Mode) func(rcptArg string) func(ctx context.Context) loopcheck.Recipient {
	return func(rcptArg string) func(context.Context) loopcheck.Recipient {
		r := loopcheck.NewRecipient(rcptArg)
		p, err := address.ParsePath(rcptArg)
		if err != nil || p.Null {
			return func(context.Context) loopcheck.Recipient { return r }
		}
		pending := e.Start(p.Addr)
		return func(ctx context.Context) loopcheck.Recipient {
			res := pending.Wait(ctx)
			return r.WithExpansion(res.Expansion(m)).WithDeliveries(res.Deliveries(m))
		}
	}
}

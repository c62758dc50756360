package expand

import (
	"container/list"
	"sync"
	"time"
)

// Cache defaults.
const (
	// DefaultCacheSize bounds the number of cached expansions.
	DefaultCacheSize = 10000
	// DefaultCacheTargets bounds the targets of all cached expansions
	// together. One expansion may hold up to MaxTargets (a list alias),
	// and with address extensions every user+N@ of such a list is an
	// entry of its own, so the entry count alone does not bound the
	// memory. A target costs about a hundred bytes (an address, shared
	// strings), so the cache holds about 10 MiB at most.
	DefaultCacheTargets = 100000
	// DefaultCacheTTL bounds how long a table change can go unseen: after
	// postmap rebuilds a table, an expansion cached before it is used
	// for at most this long (SIGHUP empties the cache at once).
	DefaultCacheTTL = time.Minute
)

// cache keeps complete expansions by recipient, least recently used
// first out, each for a fixed time, within a bound on the entries and one
// on their targets in all. It is safe for concurrent use.
type cache struct {
	mu      sync.Mutex
	size    int // entries at most
	targets int // targets of all entries at most
	ttl     time.Duration
	held    int        // targets of all entries
	lru     *list.List // of *cacheEntry, most recent at the front
	byK     map[string]*list.Element
}

type cacheEntry struct {
	key     string
	res     Result
	expires time.Time
}

func newCache(size, targets int, ttl time.Duration) *cache {
	return &cache{size: size, targets: targets, ttl: ttl, lru: list.New(), byK: map[string]*list.Element{}}
}

// get returns the cached result of key, if any and not expired at now.
func (c *cache) get(key string, now time.Time) (Result, bool) {
	if c == nil || c.size <= 0 {
		return Result{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byK[key]
	if !ok {
		return Result{}, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.remove(el)
		return Result{}, false
	}
	c.lru.MoveToFront(el)
	return e.res, true
}

// put caches a result from now on, evicting the least recently used
// entries until both bounds hold. A result with more targets than the
// whole bound is not cached.
func (c *cache) put(key string, res Result, now time.Time) {
	if c == nil || c.size <= 0 || c.ttl <= 0 {
		return
	}
	n := len(res.Targets)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byK[key]; ok {
		c.remove(el)
	}
	if n > c.targets {
		return
	}
	for c.lru.Len() > 0 && (c.lru.Len() >= c.size || c.held+n > c.targets) {
		c.remove(c.lru.Back())
	}
	c.held += n
	c.byK[key] = c.lru.PushFront(&cacheEntry{key: key, res: res, expires: now.Add(c.ttl)})
}

// remove drops an entry; c.mu is held.
func (c *cache) remove(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.byK, e.key)
	c.held -= len(e.res.Targets)
}

package expand

import (
	"container/list"
	"sync"
	"time"
)

// Cache defaults.
const (
	// DefaultCacheSize bounds the cached expansions. An entry is a few
	// hundred bytes (a recipient and its targets), so the default costs
	// a few MiB at most.
	DefaultCacheSize = 10000
	// DefaultCacheTTL bounds how long a table change can go unseen: after
	// postmap rebuilds a table, an expansion cached before it is used
	// for at most this long (SIGHUP empties the cache at once).
	DefaultCacheTTL = time.Minute
)

// cache keeps complete expansions by recipient, least recently used
// first out, each for a fixed time. It is safe for concurrent use.
type cache struct {
	mu   sync.Mutex
	size int
	ttl  time.Duration
	lru  *list.List // of *cacheEntry, most recent at the front
	byK  map[string]*list.Element
}

type cacheEntry struct {
	key     string
	res     Result
	expires time.Time
}

func newCache(size int, ttl time.Duration) *cache {
	return &cache{size: size, ttl: ttl, lru: list.New(), byK: map[string]*list.Element{}}
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
		c.lru.Remove(el)
		delete(c.byK, key)
		return Result{}, false
	}
	c.lru.MoveToFront(el)
	return e.res, true
}

// put caches a result from now on, evicting the least recently used
// entry when full.
func (c *cache) put(key string, res Result, now time.Time) {
	if c == nil || c.size <= 0 || c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byK[key]; ok {
		e := el.Value.(*cacheEntry)
		e.res, e.expires = res, now.Add(c.ttl)
		c.lru.MoveToFront(el)
		return
	}
	for c.lru.Len() >= c.size {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.byK, old.Value.(*cacheEntry).key)
	}
	c.byK[key] = c.lru.PushFront(&cacheEntry{key: key, res: res, expires: now.Add(c.ttl)})
}

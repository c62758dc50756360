package conformance

import (
	"context"
	"sync"
)

// stream is a growing byte record that goroutines wait on: the bytes a
// client connection received, or the bytes the scripted upstream read on
// one connection. Waiting is event driven: every change wakes the waiters,
// who check their condition again; nothing polls or sleeps.
type stream struct {
	mu      sync.Mutex
	buf     []byte
	closed  bool          // no more bytes will come
	note    string        // why it closed, when that is worth reporting
	changed chan struct{} // closed and replaced on every change
}

func newStream() *stream {
	return &stream{changed: make(chan struct{})}
}

func (s *stream) wake() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *stream) append(b []byte) {
	if len(b) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, b...)
	s.wake()
}

// close marks the end of the record; note says why, for reports.
func (s *stream) close(note string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.note = note
	s.wake()
}

// snapshot returns a copy of the bytes so far and whether the record is
// complete.
func (s *stream) snapshot() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.buf...), s.closed
}

// wait blocks until cond holds for the bytes so far or ctx ends. cond must
// not keep buf. It returns ctx's error when ctx ended first.
func (s *stream) wait(ctx context.Context, cond func(buf []byte, closed bool) bool) error {
	for {
		s.mu.Lock()
		ok := cond(s.buf, s.closed)
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

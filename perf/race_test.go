//go:build race

package perf

// raceEnabled: the race detector changes memory use, so memory bounds are
// reported but not checked.
const raceEnabled = true

//go:build race

package smtpproxy

// raceEnabled: the race detector grows what goroutines and buffers hold,
// so memory bounds allow for it.
const raceEnabled = true

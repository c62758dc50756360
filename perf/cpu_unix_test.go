//go:build unix

package perf

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time, user and system, the process has used so far:
// on a shared machine the CPU a message costs is steadier than the wall
// time it takes.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

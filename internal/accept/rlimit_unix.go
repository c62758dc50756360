//go:build unix

package accept

import "syscall"

// OpenFilesLimit is the process's soft RLIMIT_NOFILE, for the log line
// of a descriptor shortage (0 when it cannot be read).
func OpenFilesLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return l.Cur
}

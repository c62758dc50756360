//go:build !unix

package accept

// OpenFilesLimit is unknown here.
func OpenFilesLimit() uint64 { return 0 }

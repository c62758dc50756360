//go:build !unix

package smtpproxy

// openFilesLimit is unknown here.
func openFilesLimit() uint64 { return 0 }

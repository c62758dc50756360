//go:build !linux

package conformance

import (
	"context"
	"os/exec"
)

func setProcessGroup(cmd *exec.Cmd) {}

func signalGroup(cmd *exec.Cmd, kill bool) { cmd.Process.Kill() }

func waitListening(ctx context.Context, addr string, exited <-chan struct{}) error {
	return ErrNotSupported
}

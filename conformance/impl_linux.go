package conformance

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// listenPollInterval is how often Start looks for the program's listening
// socket. Linux offers no notification for it; looking in /proc instead of
// connecting keeps the check from opening a session the case would see.
const listenPollInterval = 10 * time.Millisecond

// setProcessGroup puts the program in a process group of its own, so that
// Stop ends it and any children it forked (the Perl original preforks),
// and nothing else.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func signalGroup(cmd *exec.Cmd, kill bool) {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	// The group id is the program's pid (Setpgid with Pgid 0).
	syscall.Kill(-cmd.Process.Pid, sig)
}

// waitListening waits until a socket listens on addr's port, by reading
// /proc/net/tcp and /proc/net/tcp6.
func waitListening(ctx context.Context, addr string, exited <-chan struct{}) error {
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return err
	}
	tick := time.NewTicker(listenPollInterval)
	defer tick.Stop()
	for {
		ok, err := portListening(port)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("no listening socket after %v", startGrace)
		case <-tick.C:
		}
	}
}

// tcpListen is the socket state LISTEN in /proc/net/tcp.
const tcpListen = "0A"

func portListening(port int) (bool, error) {
	want := fmt.Sprintf(":%04X", port)
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return false, fmt.Errorf("looking for the listening socket: %w", err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ...
			if len(fields) > 3 && strings.HasSuffix(fields[1], want) && fields[3] == tcpListen {
				f.Close()
				return true, nil
			}
		}
		f.Close()
	}
	return false, nil
}

package main

import (
	"os"
	"testing"

	"github.com/smtpprox-loopprevent/smtpprox-loopprevent/internal/postfixtest"
)

// TestMain says in one line when real-Postfix tests were skipped.
func TestMain(m *testing.M) { os.Exit(postfixtest.Main(m)) }

// Package core is the sans-I/O protocol core of the proxy: a state machine
// that takes bytes and events from its caller and tells it what to write
// and when to close. It reads no clock and touches no socket or file (it
// imports no net, os or time; a test checks that), so a test, a fuzzer or
// a model-based test drives a whole session as a list of inputs.
package core

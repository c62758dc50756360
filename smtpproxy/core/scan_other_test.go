//go:build !amd64 || purego

package core

func lfBlocksImpls() map[string]func([]byte) (int, bool) {
	return map[string]func([]byte) (int, bool){"lfBlocks": lfBlocks}
}

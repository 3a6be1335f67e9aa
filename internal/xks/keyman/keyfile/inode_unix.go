//go:build unix

package keyfile

import (
	"os"
	"syscall"
)

func inode(fi os.FileInfo) any {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return nil
}

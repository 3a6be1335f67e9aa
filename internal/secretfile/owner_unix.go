//go:build unix

package secretfile

import (
	"os"
	"syscall"
)

// owner is the uid owning the file fi describes.
func owner(fi os.FileInfo) (int, bool) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), true
	}
	return 0, false
}

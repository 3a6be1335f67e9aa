package pairpool

import (
	"io"
	"runtime"
	"syscall"
	"testing"
)

// Workers generate on threads at nice 19, with a P each added to
// GOMAXPROCS while they run, and Close gives the Ps back.
func TestWorkersRunInBackground(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	ownPrio, _ := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid())
	nices := make(chan int, 64)
	gen := func(spec string, _ io.Reader) ([]byte, []byte, error) {
		// Linux's getpriority returns 20 - nice.
		prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid())
		if err != nil {
			t.Errorf("getpriority: %v", err)
		}
		select {
		case nices <- 20 - prio:
		default:
		}
		return []byte("private"), []byte("public"), nil
	}
	p := New(gen, nil, background(map[string]int{"RSA_2048": 4}))
	p.Take("RSA_2048")
	waitFor(t, "the stock to fill", func() bool { return p.Len("RSA_2048") == 4 })
	if got, want := runtime.GOMAXPROCS(0), 2*before; got != want {
		t.Errorf("GOMAXPROCS while workers run = %d, want %d", got, want)
	}
	if nice := <-nices; nice != 19 {
		t.Errorf("worker thread's nice value = %d, want 19", nice)
	}
	// The test goroutine's own thread keeps its priority.
	if prio, _ := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid()); prio != ownPrio {
		t.Errorf("request thread's nice value = %d, want %d", 20-prio, 20-ownPrio)
	}
	p.Close()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("GOMAXPROCS after Close = %d, want %d", got, before)
	}
}

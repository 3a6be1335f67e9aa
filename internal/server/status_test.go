package server

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestStatus: kmsd status on a data directory shows the node, the
// controller and its epoch, the leases and the controller history, as
// text and JSON; after the node stops, no controller and the node stopped.
func TestStatus(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := controller.RaiseMinLevel(ctx, st, 1); err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(controller.Config{Leaser: st, Store: st, NodeID: "n1", Address: "127.0.0.1:7480", TTL: time.Second,
		Version: "v9.9.9", DataLevel: 1})
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(cctx) }()
	for deadline := time.Now().Add(5 * time.Second); !c.IsController(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no controller")
		}
	}
	time.Sleep(300 * time.Millisecond) // a heartbeat as controller

	var out bytes.Buffer
	if err := Status(ctx, StatusConfig{DataDir: dir}, &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Logf("kmsd status:\n%s", text)
	for _, want := range []string{"controller: n1 (epoch 1)\n", "live, controller", "127.0.0.1:7480", "node/n1", "\ncontroller  ",
		"data format level: 1", "VERSION", "v9.9.9"} {
		if !strings.Contains(text, want) {
			t.Errorf("status text lacks %q:\n%s", want, text)
		}
	}
	out.Reset()
	if err := Status(ctx, StatusConfig{DataDir: dir, Output: "json"}, &out); err != nil {
		t.Fatal(err)
	}
	var s controller.Status
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("status json %q: %v", out.String(), err)
	}
	if s.Current == nil || s.Current.Node != "n1" || s.Current.Epoch != 1 || len(s.Nodes) != 1 || !s.Nodes[0].Live ||
		len(s.Terms) != 1 || s.Terms[0].Node != "n1" || s.Nodes[0].Version != "v9.9.9" || s.Nodes[0].DataLevel != 1 || s.MinDataLevel != 1 {
		t.Errorf("status json: %s", out.String())
	}

	stop()
	<-done
	out.Reset()
	if err := Status(ctx, StatusConfig{DataDir: dir}, &out); err != nil {
		t.Fatal(err)
	}
	if text := out.String(); !strings.Contains(text, "controller: none") || !strings.Contains(text, "stopped") {
		t.Errorf("status after stop:\n%s", text)
	}
	if err := Status(ctx, StatusConfig{DataDir: dir, Output: "yaml"}, &out); err == nil {
		t.Error("--output yaml accepted")
	}
	if err := Status(ctx, StatusConfig{DataDir: t.TempDir()}, &out); err == nil {
		t.Error("status of an empty directory succeeded")
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// connectLatency measures, rounds times, how long store (DISCONNECTED)
// takes from ConnectCustomKeyStore to CONNECTED as DescribeCustomKeyStores
// (polled every 2 ms) sees it, disconnecting between rounds, and prints
// min, median and max. kmsd's KMSD_KEYSTORE_CONNECT_DELAY is part of what
// it measures.
func connectLatency(ctx context.Context, c *client, store string, rounds int) error {
	w := c.worker()
	id := map[string]string{"CustomKeyStoreId": store}
	state := func() (string, string, error) {
		var out struct {
			CustomKeyStores []struct{ ConnectionState, ConnectionErrorCode string }
		}
		if err := w.callJSON(ctx, "DescribeCustomKeyStores", id, &out); err != nil {
			return "", "", err
		}
		if len(out.CustomKeyStores) != 1 {
			return "", "", errors.New("DescribeCustomKeyStores: no such store")
		}
		return out.CustomKeyStores[0].ConnectionState, out.CustomKeyStores[0].ConnectionErrorCode, nil
	}
	until := func(want string) error {
		for {
			st, code, err := state()
			if err != nil {
				return err
			}
			if st == want {
				return nil
			}
			if st == "FAILED" {
				return fmt.Errorf("store %s FAILED: %s", store, code)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	var ds []time.Duration
	for i := 0; i < rounds; i++ {
		began := time.Now()
		if err := w.callJSON(ctx, "ConnectCustomKeyStore", id, &struct{}{}); err != nil {
			return err
		}
		if err := until("CONNECTED"); err != nil {
			return err
		}
		ds = append(ds, time.Since(began))
		if err := w.callJSON(ctx, "DisconnectCustomKeyStore", id, &struct{}{}); err != nil {
			return err
		}
		if err := until("DISCONNECTED"); err != nil {
			return err
		}
	}
	slices.Sort(ds)
	fmt.Printf("connect %s -> CONNECTED, %d rounds: min %v, median %v, max %v\n", store, len(ds),
		ds[0].Round(time.Microsecond), ds[len(ds)/2].Round(time.Microsecond), ds[len(ds)-1].Round(time.Microsecond))
	return nil
}

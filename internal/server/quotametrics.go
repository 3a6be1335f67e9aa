package server

import (
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/prometheus/client_golang/prometheus"
)

var storeThrottledDesc = prometheus.NewDesc("kmsd_custom_key_store_throttled_total",
	"Cryptographic requests refused with ThrottlingException because their custom key store was over --custom-key-store-rps (AWS's CloudWatch ExternalKeyStoreThrottle, for every store type).",
	[]string{"custom_key_store_id"}, nil)

var storeShareDesc = prometheus.NewDesc("kmsd_custom_key_store_quota_share",
	"This node's part (0 to 1) of the custom key store's request quota: one over the live nodes, or by their demand once the store is asked for; 0 while the node holds it, having joined nodes that do not count it yet.",
	[]string{"custom_key_store_id"}, nil)

// quotaCollector reports each custom key store's refused requests and
// this node's share of its quota at each scrape, read from the quota's
// buckets.
type quotaCollector struct{ q *keystore.Quota }

func (c quotaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- storeThrottledDesc
	ch <- storeShareDesc
}

func (c quotaCollector) Collect(ch chan<- prometheus.Metric) {
	c.q.Each(func(id string, n uint64) {
		ch <- prometheus.MustNewConstMetric(storeThrottledDesc, prometheus.CounterValue, float64(n), id)
		ch <- prometheus.MustNewConstMetric(storeShareDesc, prometheus.GaugeValue, c.q.StoreShare(id), id)
	})
}

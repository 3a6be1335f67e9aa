package catalog

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/kmsd/kmsd/internal/storage"
)

// LastUse is the last recorded successful use of one key, the answer of
// GetKeyLastUsage. It is kept under its own prefix, not in the key
// record: it changes far more often than the key, and is written in
// batches by a tracker that may lag the key's own writes. Related
// multi-Region keys share a key id but not a Region, so each has its own.
//
// Uses are journaled (JournalLastUses) and merged now and then
// (MergeLastUses) into bucket records of many keys each
// ("unfed/lastuseb/<account>/<region>/<first 3 hex digits of the key id>",
// lastusebucket.go), both in a compact binary layout.
//
// The prefix is storage.UnfedPrefix: nothing caches these records (the
// tracker reads them from the store), so their writes are left out of the
// change feed. Older kmsd versions kept a record per key, JSON-encoded, at
// "unfed/lastuse/<account>/<region>/<key id>" (data format level 2) or,
// before that, at "lastuse/…" in the feed, and journal rows in JSON; all
// are still read (the newest use wins) and deleted with the key, but no
// longer written.
type LastUse struct {
	Account   string    `json:"account,omitempty"`
	Region    string    `json:"region,omitempty"`
	KeyID     string    `json:"keyId,omitempty"`
	Operation string    `json:"op"`
	Time      time.Time `json:"time"`
	EventID   string    `json:"eventId"`   // the audit record's eventID
	RequestID string    `json:"requestId"` // the call's x-amzn-RequestId
}

// lastUsePath is where kmsd of data format level 2 kept a key's record.
func lastUsePath(account, region, id string) string {
	return storage.UnfedPrefix + "lastuse/" + account + "/" + region + "/" + id
}

// legacyLastUsePath is where kmsd versions before storage.UnfedPrefix kept
// the record.
func legacyLastUsePath(account, region, id string) string {
	return "lastuse/" + account + "/" + region + "/" + id
}

// trackingStartPath holds when kmsd began to track key usage.
const trackingStartPath = "lastuse-start"

// LastUse returns the stored last use of key id of account and region, or
// ErrNotFound if none is stored: the latest of the journal's, its
// bucket's and older kmsd's per-key records'. Last-use records bypass the
// catalog's cache: their writer (the tracker in package lastuse) keeps
// its own.
//
// The journal is read before the bucket: a merge between the two reads
// moves a use from the journal into the bucket, so it is seen in one or
// the other; read the other way round it could be seen in neither.
func (c *Catalog) LastUse(ctx context.Context, account, region, id string) (*LastUse, error) {
	newest, err := journaled(ctx, c.store, account, region, id)
	if err != nil {
		return nil, fmt.Errorf("catalog: get last use: %w", err)
	}
	newer := func(u *LastUse) {
		if newest == nil || u.Time.After(newest.Time) {
			newest = u
		}
	}
	b, err := c.store.Get(ctx, lastUseBucketPath(account, region, id))
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("catalog: get last use: %w", err)
	default:
		e, ok, err := findInBucket(b, id)
		if err != nil {
			return nil, fmt.Errorf("catalog: last use of %s: bucket %s: %w", id, bucketOf(id), err)
		}
		if ok {
			newer(e.use(account, region))
		}
	}
	for _, p := range []string{lastUsePath(account, region, id), legacyLastUsePath(account, region, id)} {
		b, err := c.store.Get(ctx, p)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("catalog: get last use: %w", err)
		}
		u := new(LastUse)
		if err := jsonv2.Unmarshal(b, u); err != nil {
			return nil, fmt.Errorf("catalog: decode last use of %s: %w", id, err)
		}
		u.Account, u.Region, u.KeyID = account, region, id // what the path names
		newer(u)
	}
	if newest == nil {
		return nil, ErrNotFound
	}
	return newest, nil
}

// PutLastUses stores uses in their keys' buckets, in one transaction. A
// stored use at least as recent as the given one is kept, so that two
// nodes sharing a store, or a flush racing a slower one, never move a
// key's last use back in time. The tracker does not call it on each
// flush: it journals uses (JournalLastUses) and merges the journal into
// the buckets now and then (MergeLastUses), which calls the same code.
func (c *Catalog) PutLastUses(ctx context.Context, uses []LastUse) error {
	row := []byte{bucketFormat}
	for i := range uses {
		row = appendJournalUse(row, &uses[i])
	}
	jus, err := decodeJournalUses(row)
	if err != nil {
		return fmt.Errorf("catalog: put last uses: %w", err)
	}
	err = c.store.Update(ctx, func(tx storage.Tx) error {
		_, err := putLastUses(ctx, tx, jus)
		return err
	})
	if err != nil {
		return fmt.Errorf("catalog: put last uses: %w", err)
	}
	return nil
}

// putLastUses writes uses into their keys' bucket records within tx, at
// a fixed number of storage steps whatever their number: the buckets are
// read in one storage.GetBatch, each key's latest use merged in here
// (mergeBucket), and the buckets written in one storage.CreateBatch
// (buckets new to the store) and one storage.PutBatch — on PostgreSQL
// one statement each per chunk. A bucket none of whose keys gets a newer
// use is not written. The transaction is serializable, so a concurrent
// writer of a bucket read here makes one of the two run again and merge
// into the other's record.
func putLastUses(ctx context.Context, tx storage.Tx, uses []journalUse) (int, error) {
	type bucketKey struct {
		account, region string
		bucket          [4]byte
	}
	type bucket struct {
		path    string
		n       int // uses counted
		entries []entry
	}
	// Group the uses by bucket into one slice of entries, each bucket's a
	// subslice: counted first, then placed, so that nothing grows — a
	// merge on a million keys groups over a million uses.
	var buckets []bucket
	at := map[bucketKey]int{}
	// The grouping's two buffers (~130 bytes a use) come from a pool: a
	// merge on a million keys groups over a million uses, ~20,000 a
	// transaction.
	g := groupBufs.Get().(*groupBuf)
	defer func() {
		clear(g.all)
		g.all, g.which = g.all[:0], g.which[:0]
		groupBufs.Put(g)
	}()
	g.which = slices.Grow(g.which[:0], len(uses))[:len(uses)]
	g.all = slices.Grow(g.all[:0], len(uses))[:len(uses)]
	which, all := g.which, g.all
	for j, u := range uses {
		k := bucketKey{account: u.account, region: u.region, bucket: bucketOfField(u.id)}
		i, ok := at[k]
		if !ok {
			i = len(buckets)
			at[k] = i
			buckets = append(buckets, bucket{path: lastUseBucketPath(u.account, u.region, fieldString(u.id))})
		}
		which[j] = int32(i)
		buckets[i].n++
	}
	next := 0
	for i := range buckets {
		n := buckets[i].n
		buckets[i].entries = all[next : next : next+n]
		next += n
	}
	for j, u := range uses {
		b := &buckets[which[j]]
		b.entries = append(b.entries, u.entry)
	}
	slices.SortFunc(buckets, func(a, b bucket) int { return strings.Compare(a.path, b.path) })
	paths := make([]string, len(buckets))
	keys := 0
	for i := range buckets {
		paths[i] = buckets[i].path
		buckets[i].entries = sortEntries(buckets[i].entries)
		keys += len(buckets[i].entries)
	}
	stored, err := storage.GetBatch(ctx, tx, paths)
	if err != nil {
		return 0, err
	}
	var creates, puts []storage.Entry
	for i, b := range buckets {
		merged, changed := mergeBucket(stored[i], b.entries)
		if !changed {
			continue
		}
		e := storage.Entry{Key: b.path, Value: merged}
		if stored[i] == nil {
			creates = append(creates, e)
		} else {
			puts = append(puts, e)
		}
	}
	exists, err := storage.CreateBatch(ctx, tx, creates)
	if err != nil {
		return 0, err
	}
	if err := storage.PutBatch(ctx, tx, puts); err != nil {
		return 0, err
	}
	for j, e := range exists {
		if e {
			// Within one serializable transaction the read saw every
			// record the create can find.
			return 0, fmt.Errorf("catalog: last-use bucket %s found by the create but not by the read", creates[j].Key)
		}
	}
	return keys, nil
}

// The last-use journal.
//
// A flush writing each use into its key's place in the store would, on a
// store of a million keys where most uses in a second are of keys not
// used for a while, dirty a database page per use — and a database
// writes a dirtied page whole, to its WAL and again at the checkpoint.
//
// So a flush appends its uses to a journal instead: one row per partition
// (journalParts of them, by the first digits of the key id) under
// journalPrefix, named by time, holding that partition's uses of the
// flush. A flush then writes at most journalParts rows whatever its size.
// Every so often the journal is merged into the buckets (MergeLastUses):
// in key order, a transaction at a time, rows are read, each key's latest
// use kept, written through putLastUses, and the rows deleted. A key used
// many times between merges is written once. Nothing is lost or moved
// back: journal rows are durable like the buckets, a merge is atomic, and
// putLastUses keeps the later use. Reads (LastUse) consult the key's
// partition of the journal as well as its bucket.
//
// A row is journalFormat followed by groups of uses of one account and
// Region: the fields account and Region, the number of uses (uvarint),
// and their entries (lastusebucket.go). A flush's row nearly always holds
// one group. Rows written by kmsd of data format level 3 are bucketFormat
// followed by uses each with its own account and Region fields (a quarter
// of a use's ~90 bytes; on a million keys the journal carries a use of
// nearly every request through the database three times: written, read by
// the merge, deleted); those of level 2 are a JSON array of LastUse. All
// are read and merged alike.
const (
	journalPrefix = storage.UnfedPrefix + "lastusej/"
	// journalFormat is the first byte of a journal row of data format
	// level 4: uses grouped by account and Region.
	journalFormat = 2
	journalParts  = 256
	// mergeRows is how many journal rows one merge transaction takes: on
	// a quiet store the whole journal, on a busy one (a row per partition
	// a second) about a second's uses.
	mergeRows = 256
)

// journalPart is the partition of a key's uses: the first two hex digits
// of its id (after "mrk-" for a multi-Region key). Partitions are ranges
// of the buckets' own order (a bucket is the key id's first three
// digits), so a merge, going through the journal in key order, writes the
// buckets in their own order, each once per merge. Key ids are random
// hex (UUIDs, and a multi-Region key's 32 digits), so the partitions are
// even. An id that does not start with two lower-case hex digits (none
// that kmsd makes) falls in partition "00".
func journalPart(id string) string { return journalPartNames[journalPartIndex(id)] }

// journalPartIndex is the number of key id's partition (journalPart),
// 0 to journalParts-1.
func journalPartIndex(id string) int {
	id = strings.TrimPrefix(id, "mrk-")
	if len(id) >= 2 && isHex(id[0]) && isHex(id[1]) {
		return int(hexValue[id[0]])<<4 | int(hexValue[id[1]])
	}
	return 0
}

// journalPartNames are the partitions' names by number: their two hex
// digits.
var journalPartNames = func() (n [journalParts]string) {
	for p := range n {
		n[p] = string([]byte{hexDigits[p>>4], hexDigits[p&15]})
	}
	return n
}()

func isHex(c byte) bool { return hexValue[c] < 16 }

func journalPartPrefix(part string) string { return journalPrefix + part + "/" }

// journalUseBytes is a little less than the bytes of one use in a journal
// row (about 90 for a UUID key of a 12-digit account, with its event and
// request ids): what sizes a buffer for a row's uses.
const journalUseBytes = 64

// journalUse is one use in a journal row: its key's account and Region,
// and its entry.
type journalUse struct {
	account, region string
	entry
}

// appendJournalUse appends u as a journal row's use.
func appendJournalUse(b []byte, u *LastUse) []byte {
	b = appendField(b, u.Account)
	b = appendField(b, u.Region)
	return appendEntry(b, u)
}

// decodeJournalUses returns the uses of journal row v, binary or (data
// format level 2) JSON.
func decodeJournalUses(v []byte) ([]journalUse, error) {
	return appendJournalUses(nil, v)
}

// appendJournalUses appends the uses of journal row v to us; if v does
// not decode, it returns us unchanged and the error.
func appendJournalUses(us []journalUse, v []byte) ([]journalUse, error) {
	if len(v) > 0 && v[0] == '[' {
		var ls []LastUse
		if err := jsonv2.Unmarshal(v, &ls); err != nil {
			return us, err
		}
		buf := []byte{bucketFormat}
		for i := range ls {
			buf = appendJournalUse(buf, &ls[i])
		}
		v = buf
	}
	if len(v) == 0 || v[0] != bucketFormat && v[0] != journalFormat {
		return us, errBadLastUse
	}
	grouped := v[0] == journalFormat
	n := len(us)
	us = slices.Grow(us, len(v)/journalUseBytes)
	// The account and Region of a row's uses are nearly always one
	// account's and one Region's: their strings are made once.
	var acct, region string
	var acctF, regionF []byte
	for b := v[1:]; len(b) > 0; {
		var a, r []byte
		var err error
		if a, b, err = cutField(b); err != nil {
			return us[:n], err
		}
		if r, b, err = cutField(b); err != nil {
			return us[:n], err
		}
		// A row of journalFormat has groups of uses, one of bucketFormat
		// a use a group.
		count := uint64(1)
		if grouped {
			var k int
			count, k = binary.Uvarint(b)
			// An entry is at least 12 bytes (five fields and the time).
			if k <= 0 || count == 0 || count > uint64(len(b)-k)/12 {
				return us[:n], errBadLastUse
			}
			b = b[k:]
		}
		if acctF == nil || !bytes.Equal(a, acctF) {
			acct, acctF = fieldString(a), a
		}
		if regionF == nil || !bytes.Equal(r, regionF) {
			region, regionF = fieldString(r), r
		}
		for range count {
			var e entry
			if e, b, err = cutEntry(b); err != nil {
				return us[:n], err
			}
			us = append(us, journalUse{account: acct, region: region, entry: e})
		}
	}
	return us, nil
}

// appendJournalRow appends n uses as a journal row of journalFormat, a
// group for each run of uses of one account and Region; use(i) gives the
// i-th use's account, Region and entry.
func appendJournalRow(b []byte, n int, use func(i int) (account, region string, entry []byte)) []byte {
	b = append(b, journalFormat)
	for i := 0; i < n; {
		account, region, _ := use(i)
		j := i + 1
		for ; j < n; j++ {
			if a, r, _ := use(j); a != account || r != region {
				break
			}
		}
		b = appendField(b, account)
		b = appendField(b, region)
		b = binary.AppendUvarint(b, uint64(j-i))
		for k := i; k < j; k++ {
			_, _, e := use(k)
			b = append(b, e...)
		}
		i = j
	}
	return b
}

// EncodedUse is a use encoded for the journal (EncodeUse): its key's
// account and Region, its journal partition and its entry's bytes.
type EncodedUse struct {
	Account, Region string
	Part            int
	Entry           []byte
}

// MaxEncodedUse bounds the bytes EncodeUse appends for a use of a key
// whose ARN kmsd made, with its audit event and request ids: a key id of
// a multi-Region key (36 bytes), the longest operation name (35), the
// time and two UUIDs. A buffer of this size never grows.
const MaxEncodedUse = 37 + 36 + 8 + 17 + 17

// EncodeUse appends the journal entry of u (its key id, operation, time,
// event and request ids) to b and returns it with the key id's journal
// partition. The last-use tracker encodes a use when it records it, while
// the request's strings are still in the processor's cache: on a store of
// a million keys, where nearly every use of a second is of another key,
// encoding them in the flush a second later read each one from memory.
func EncodeUse(b []byte, u *LastUse) ([]byte, int) {
	return appendEntry(b, u), journalPartIndex(u.KeyID)
}

// Use decodes e back into the use it encodes.
func (e *EncodedUse) Use() (*LastUse, error) {
	en, rest, err := cutEntry(e.Entry)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 || e.Part != journalPartIndex(fieldString(en.id)) {
		return nil, errBadLastUse
	}
	return en.use(e.Account, e.Region), nil
}

// JournalLastUses records uses durably in the journal, in one
// transaction, writing one row per partition they fall in. Their keys'
// buckets are brought up to date by a later MergeLastUses; LastUse
// answers from both meanwhile.
func (c *Catalog) JournalLastUses(ctx context.Context, uses []LastUse) error {
	if len(uses) == 0 {
		return nil
	}
	bp := journalBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		*bp = buf[:0]
		journalBufs.Put(bp)
	}()
	type span struct{ part, start, end int }
	spans := make([]span, len(uses))
	for i := range uses {
		start := len(buf)
		var p int
		buf, p = EncodeUse(buf, &uses[i])
		spans[i] = span{p, start, len(buf)}
	}
	enc := make([]EncodedUse, len(uses))
	for i, sp := range spans {
		enc[i] = EncodedUse{Account: uses[i].Account, Region: uses[i].Region, Part: sp.part, Entry: buf[sp.start:sp.end:sp.end]}
	}
	return c.JournalEncoded(ctx, enc)
}

// JournalEncoded is JournalLastUses for uses already encoded
// (EncodeUse). It does not keep uses or their bytes once it returns.
func (c *Catalog) JournalEncoded(ctx context.Context, uses []EncodedUse) error {
	if len(uses) == 0 {
		return nil
	}
	// Each use's entry is copied into its partition's row, grouped by
	// account and Region; the rows are built one after another in one
	// buffer of about their size. (Rows grown use by use in a map of
	// partitions cost a flush of 20,000 uses 8 MB of allocations:
	// BenchmarkJournalDistinct.)
	order := make([]int32, len(uses)) // use indexes by partition
	var starts [journalParts + 1]int32
	size := 0
	mixed := false // some use of another account or Region than the first's
	for i := range uses {
		u := &uses[i]
		if u.Part < 0 || u.Part >= journalParts {
			return fmt.Errorf("catalog: journal last uses: partition %d out of range", u.Part)
		}
		starts[u.Part+1]++
		size += len(u.Entry)
		mixed = mixed || u.Account != uses[0].Account || u.Region != uses[0].Region
	}
	for p := range journalParts {
		starts[p+1] += starts[p]
	}
	next := starts
	for i := range uses {
		p := uses[i].Part
		order[next[p]] = int32(i)
		next[p]++
	}
	arena := make([]byte, 0, size+journalParts*64)
	var rows [journalParts]struct{ start, end int }
	for p := range journalParts {
		part := order[starts[p]:starts[p+1]]
		if len(part) == 0 {
			continue
		}
		if mixed {
			slices.SortStableFunc(part, func(a, b int32) int {
				return cmp.Or(strings.Compare(uses[a].Account, uses[b].Account), strings.Compare(uses[a].Region, uses[b].Region))
			})
		}
		rows[p].start = len(arena)
		arena = appendJournalRow(arena, len(part), func(i int) (string, string, []byte) {
			u := &uses[part[i]]
			return u.Account, u.Region, u.Entry
		})
		rows[p].end = len(arena)
	}
	// Named by the time of the flush and a random suffix: rows of one
	// partition sort by time, and two nodes' rows never collide.
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return fmt.Errorf("catalog: journal last uses: %w", err)
	}
	name := fmt.Sprintf("%016x-%x", time.Now().UnixNano(), r)
	// In partition order, which is the rows' key order.
	var entries []storage.Entry
	for p, row := range rows {
		if row.end > row.start {
			entries = append(entries, storage.Entry{Key: journalPartPrefix(journalPartNames[p]) + name,
				Value: arena[row.start:row.end:row.end]})
		}
	}
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		exists, err := storage.CreateBatch(ctx, tx, entries)
		if err != nil {
			return err
		}
		if i := slices.Index(exists, true); i >= 0 {
			return fmt.Errorf("journal row %s exists", entries[i].Key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("catalog: journal last uses: %w", err)
	}
	return nil
}

// groupBuf is putLastUses' buffers: each use's bucket, and the entries
// grouped by bucket.
type groupBuf struct {
	which []int32
	all   []entry
}

var groupBufs = sync.Pool{New: func() any { return new(groupBuf) }}

// journalBufs holds JournalLastUses' buffers of encoded uses, kept from
// one flush to the next (a flush of 20,000 uses encodes ~1.8 MB).
var journalBufs = sync.Pool{New: func() any { return new([]byte) }}

// MergeLastUses merges the journal into the keys' buckets and returns how
// many keys' uses it merged. It goes once through the journal in key
// order — partition by partition, so that the buckets it writes follow
// their own order — mergeRows rows a transaction; rows journaled behind
// it meanwhile wait for the next merge, so a merge ends however busy the
// store. Several nodes may merge at once: a row merged by one is gone for
// the other, whose transaction runs again.
func (c *Catalog) MergeLastUses(ctx context.Context) (int, error) {
	merged, after := 0, ""
	var uses []journalUse
	for {
		// A read first, so that an empty journal (a quiet store) costs
		// no write transaction.
		rows, err := c.store.List(ctx, journalPrefix, after, 1)
		if err != nil {
			return merged, fmt.Errorf("catalog: merge last uses: %w", err)
		}
		if len(rows) == 0 {
			return merged, nil
		}
		var n, took int
		var last string
		err = c.store.Update(ctx, func(tx storage.Tx) error {
			rows, err := tx.List(ctx, journalPrefix, after, mergeRows)
			if err != nil {
				return err
			}
			// The uses of the rows, in a buffer kept across the merge's
			// transactions and sized once for them: grown row by row it
			// was a quarter of a large merge's allocations.
			size := 0
			for _, r := range rows {
				size += len(r.Value) / journalUseBytes
			}
			clear(uses)
			uses = slices.Grow(uses[:0], size)
			keys := make([]string, len(rows))
			for i, r := range rows {
				keys[i] = r.Key
				// A row that does not decode is dropped: it holds
				// nothing anything else depends on.
				uses, _ = appendJournalUses(uses, r.Value)
			}
			if n, err = putLastUses(ctx, tx, uses); err != nil {
				return err
			}
			if err := storage.DeleteBatch(ctx, tx, keys); err != nil {
				return err
			}
			took = len(rows)
			if took > 0 {
				last = rows[took-1].Key
			}
			return nil
		})
		if err != nil {
			return merged, fmt.Errorf("catalog: merge last uses: %w", err)
		}
		merged += n
		if took < mergeRows {
			return merged, nil
		}
		after = last
	}
}

// journaled returns the latest use of key id of account and region in
// the journal (nil if none), reading its partition within r.
func journaled(ctx context.Context, r storage.Reader, account, region, id string) (*LastUse, error) {
	var latest *LastUse
	want := appendField(nil, id)
	err := scanJournal(ctx, r, id, func(_ storage.Entry, us []journalUse) error {
		for i := range us {
			if u := &us[i]; u.account == account && u.region == region && bytes.Equal(u.id, want) &&
				(latest == nil || u.at > latest.Time.UnixNano()) {
				latest = u.use(account, region)
			}
		}
		return nil
	})
	return latest, err
}

// scanJournal calls fn with each journal row of the partition of key id
// that may hold a use of it, decoded.
func scanJournal(ctx context.Context, r storage.Reader, id string, fn func(storage.Entry, []journalUse) error) error {
	pre := journalPartPrefix(journalPart(id))
	field := appendField(nil, id)   // as binary rows hold it
	quoted, err := json.Marshal(id) // as JSON rows spell it, quotes included
	if err != nil {
		return err
	}
	after := ""
	for {
		rows, err := r.List(ctx, pre, after, 256)
		if err != nil {
			return err
		}
		for _, row := range rows {
			// Most rows hold other keys only: skipped without decoding.
			needle := field
			if len(row.Value) > 0 && row.Value[0] == '[' {
				needle = quoted
			}
			if !bytes.Contains(row.Value, needle) {
				continue
			}
			us, err := decodeJournalUses(row.Value)
			if err != nil {
				continue
			}
			if err := fn(row, us); err != nil {
				return err
			}
		}
		if len(rows) < 256 {
			return nil
		}
		after = rows[len(rows)-1].Key
	}
}

// DeleteLastUse removes the last use of key id of account and region (its
// bucket entry, an older kmsd's records, and its uses in the journal,
// which a merge would otherwise write back), as the key itself is
// deleted; deleting an absent use is not an error.
func (c *Catalog) DeleteLastUse(ctx context.Context, account, region, id string) error {
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Delete(ctx, lastUsePath(account, region, id)); err != nil {
			return err
		}
		if err := tx.Delete(ctx, legacyLastUsePath(account, region, id)); err != nil {
			return err
		}
		if err := deleteFromBucket(ctx, tx, account, region, id); err != nil {
			return err
		}
		want := appendField(nil, id)
		return scanJournal(ctx, tx, id, func(row storage.Entry, us []journalUse) error {
			kept := slices.DeleteFunc(slices.Clone(us), func(u journalUse) bool {
				return u.account == account && u.region == region && bytes.Equal(u.id, want)
			})
			switch {
			case len(kept) == len(us):
				return nil
			case len(kept) == 0:
				return tx.Delete(ctx, row.Key)
			}
			return tx.Put(ctx, row.Key, appendJournalRow(nil, len(kept), func(i int) (string, string, []byte) {
				return kept[i].account, kept[i].region, kept[i].all
			}))
		})
	})
	if err != nil {
		return fmt.Errorf("catalog: delete last use: %w", err)
	}
	return nil
}

// deleteFromBucket takes key id's entry out of its bucket record in tx,
// deleting the record if it was the last; a bucket that does not decode
// is deleted (the next merge into it would replace it anyway).
func deleteFromBucket(ctx context.Context, tx storage.Tx, account, region, id string) error {
	p := lastUseBucketPath(account, region, id)
	b, err := tx.Get(ctx, p)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	rest, found, err := withoutKey(b, id)
	switch {
	case err != nil, found && len(rest) == 1:
		return tx.Delete(ctx, p)
	case !found:
		return nil
	}
	return tx.Put(ctx, p, rest)
}

// TrackingStart returns when kmsd began to track key usage: the time
// stored by the first call ever made on this store, which stores now.
// Keys older than that have no usage recorded from before it.
func (c *Catalog) TrackingStart(ctx context.Context, now time.Time) (time.Time, error) {
	b, err := now.UTC().MarshalText()
	if err != nil {
		return time.Time{}, err
	}
	err = c.store.Create(ctx, trackingStartPath, b)
	if err == nil {
		return now, nil
	}
	if !errors.Is(err, storage.ErrExists) {
		return time.Time{}, fmt.Errorf("catalog: store tracking start: %w", err)
	}
	if b, err = c.store.Get(ctx, trackingStartPath); err != nil {
		return time.Time{}, fmt.Errorf("catalog: get tracking start: %w", err)
	}
	var t time.Time
	if err := t.UnmarshalText(b); err != nil {
		return time.Time{}, fmt.Errorf("catalog: decode tracking start: %w", err)
	}
	return t, nil
}

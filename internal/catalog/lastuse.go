package catalog

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/kmsd/kmsd/internal/storage"
)

// LastUse is the last recorded successful use of one key, the answer of
// GetKeyLastUsage. It is kept under its own prefix
// ("unfed/lastuse/<account>/<region>/<key id>"), not in the key record: it
// changes far more often than the key, and is written in batches by a
// tracker that may lag the key's own writes. Related multi-Region keys
// share a key id but not a Region, so each has its own record.
//
// The prefix is storage.UnfedPrefix: nothing caches these records (the
// tracker reads them from the store), so their writes are left out of the
// change feed, which halves what a key's first recorded use writes. Older
// kmsd versions kept them at "lastuse/<account>/<region>/<key id>", in the
// feed; those are still read (the newer of the two records wins) and
// deleted with the key, but no longer written.
//
// A key's own record leaves out the account, Region and key id, which its
// path names (about 40 % more records then fit in a page); journal rows,
// which hold many keys' uses, keep them.
type LastUse struct {
	Account   string    `json:"account,omitempty"`
	Region    string    `json:"region,omitempty"`
	KeyID     string    `json:"keyId,omitempty"`
	Operation string    `json:"op"`
	Time      time.Time `json:"time"`
	EventID   string    `json:"eventId"`   // the audit record's eventID
	RequestID string    `json:"requestId"` // the call's x-amzn-RequestId
}

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
// ErrNotFound if none is stored: the latest of its record's, an older
// kmsd's record's and the journal's. Last-use records bypass the
// catalog's cache: their writer (the tracker in package lastuse) keeps
// its own.
//
// The journal is read before the records: a merge between the two reads
// moves a use from the journal into a record, so it is seen in one or the
// other; read the other way round it could be seen in neither.
func (c *Catalog) LastUse(ctx context.Context, account, region, id string) (*LastUse, error) {
	newest, err := journaled(ctx, c.store, account, region, id)
	if err != nil {
		return nil, fmt.Errorf("catalog: get last use: %w", err)
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
		if newest == nil || u.Time.After(newest.Time) {
			newest = u
		}
	}
	if newest == nil {
		return nil, ErrNotFound
	}
	return newest, nil
}

// PutLastUses stores uses in the keys' own records, in one transaction.
// A stored use at least as recent as the given one is kept, so that two
// nodes sharing a store, or a flush racing a slower one, never move a
// key's last use back in time. The tracker does not call it on each
// flush: it journals uses (JournalLastUses) and merges the journal into
// the records now and then (MergeLastUses), which calls the same code.
func (c *Catalog) PutLastUses(ctx context.Context, uses []LastUse) error {
	err := c.store.Update(ctx, func(tx storage.Tx) error { return putLastUses(ctx, tx, uses) })
	if err != nil {
		return fmt.Errorf("catalog: put last uses: %w", err)
	}
	return nil
}

// putLastUses writes uses into their keys' records within tx, at a fixed
// number of storage steps whatever their number: the keys' records are
// read in one storage.GetBatch and compared here; the keys without one
// get it in one storage.CreateBatch (a key's first use), and the newer
// uses of the others are written in one storage.PutBatch — on PostgreSQL
// one statement each per chunk, rather than a round trip per use. The
// read comes first so that a key that has a record (a merge's usual case
// on a store in use) costs a read and a write, not also a create that
// finds it. The transaction is serializable, so a concurrent writer of a
// key read here makes one of the two run again and compare against the
// other's record.
func putLastUses(ctx context.Context, tx storage.Tx, uses []LastUse) error {
	entries := make([]storage.Entry, len(uses))
	keys := make([]string, len(uses))
	for i := range uses {
		u := uses[i]
		path := lastUsePath(u.Account, u.Region, u.KeyID)
		u.Account, u.Region, u.KeyID = "", "", "" // the path names them
		b, err := json.Marshal(&u)
		if err != nil {
			return err
		}
		entries[i] = storage.Entry{Key: path, Value: b}
		keys[i] = path
	}
	stored, err := storage.GetBatch(ctx, tx, keys)
	if err != nil {
		return err
	}
	// newest is the time each key's record holds once the writes before
	// are done, so that a key used twice in one batch keeps the later use
	// whatever the order; a key absent from it has no record, or one that
	// does not decode, which is replaced.
	newest := make(map[string]time.Time, len(uses))
	had := make(map[string]bool, len(uses)) // keys with a record before this batch
	for i, k := range keys {
		if had[k] || stored[i] == nil {
			continue
		}
		had[k] = true
		var cur LastUse
		if jsonv2.Unmarshal(stored[i], &cur) == nil {
			newest[k] = cur.Time
		}
	}
	var creates, puts []storage.Entry
	last := make(map[string]int, len(uses)) // index in creates of a key created here
	for i, e := range entries {
		k := e.Key
		if cur, ok := newest[k]; ok && !cur.Before(uses[i].Time) {
			continue
		}
		newest[k] = uses[i].Time
		switch j, ok := last[k]; {
		case ok:
			creates[j] = e // a later use of a key this batch creates
		case had[k]:
			puts = append(puts, e)
		default:
			last[k] = len(creates)
			creates = append(creates, e)
		}
	}
	exists, err := storage.CreateBatch(ctx, tx, creates)
	if err != nil {
		return err
	}
	if err := storage.PutBatch(ctx, tx, puts); err != nil {
		return err
	}
	for j, e := range exists {
		if e {
			// Within one serializable transaction the read saw every
			// record the create can find.
			return fmt.Errorf("catalog: last-use record %s found by the create but not by the read", creates[j].Key)
		}
	}
	return nil
}

// The last-use journal.
//
// A key's record sits at a place of its own in the store's key order, so
// on a store of a million keys, where most uses in a second are of keys
// not used for a while, writing each use into its record dirties a page
// (a B-tree leaf) per use — and a database writes a dirtied page whole,
// to its WAL and again at the checkpoint. That was the largest part of a
// first Encrypt's cost on a large store.
//
// So a flush appends its uses to a journal instead: one row per partition
// (journalParts of them, by the first digits of the key id) under journalPrefix, named
// by time, holding that partition's uses of the flush. A flush then
// writes at most journalParts rows whatever its size. Every so often the
// journal is merged into the records (MergeLastUses): in key order, a
// transaction at a time, rows are read, each key's latest use kept,
// written in key order through putLastUses, and the rows deleted. A key used many
// times between merges is written once, and the keys written by a merge
// share pages. Nothing is lost or moved back: journal rows are durable
// like the records, a merge is atomic, and putLastUses keeps the later
// use. Reads (LastUse) consult the key's partition of the journal as well
// as its record.
const (
	journalPrefix = storage.UnfedPrefix + "lastusej/"
	journalParts  = 256
	// mergeRows is how many journal rows one merge transaction takes: on
	// a quiet store the whole journal, on a busy one (a row per partition
	// a second) about a second's uses.
	mergeRows = 256
)

// journalPart is the partition of a key's uses: the first two hex digits
// of its id (after "mrk-" for a multi-Region key). Partitions are ranges
// of the records' own order (a key id follows the account and Region in
// lastUsePath), so a merge, going through the journal in key order,
// writes the records in their own order: each page of records once per
// merge, not once per partition as with a hash. Key ids are random hex (UUIDs, and a
// multi-Region key's 32 digits), so the partitions are even. An id that
// does not start with two lower-case hex digits (none that kmsd makes)
// falls in partition "00".
func journalPart(id string) string {
	id = strings.TrimPrefix(id, "mrk-")
	if len(id) >= 2 && isHex(id[0]) && isHex(id[1]) {
		return id[:2]
	}
	return "00"
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

func journalPartPrefix(part string) string { return journalPrefix + part + "/" }

// JournalLastUses records uses durably in the journal, in one
// transaction, writing one row per partition they fall in. Their keys'
// records are brought up to date by a later MergeLastUses; LastUse
// answers from both meanwhile.
func (c *Catalog) JournalLastUses(ctx context.Context, uses []LastUse) error {
	if len(uses) == 0 {
		return nil
	}
	byPart := map[string][]LastUse{}
	for _, u := range uses {
		p := journalPart(u.KeyID)
		byPart[p] = append(byPart[p], u)
	}
	// Named by the time of the flush and a random suffix: rows of one
	// partition sort by time, and two nodes' rows never collide.
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return fmt.Errorf("catalog: journal last uses: %w", err)
	}
	name := fmt.Sprintf("%016x-%x", time.Now().UnixNano(), r)
	entries := make([]storage.Entry, 0, len(byPart))
	for p, us := range byPart {
		b, err := json.Marshal(us)
		if err != nil {
			return fmt.Errorf("catalog: journal last uses: %w", err)
		}
		entries = append(entries, storage.Entry{Key: journalPartPrefix(p) + name, Value: b})
	}
	slices.SortFunc(entries, func(a, b storage.Entry) int { return strings.Compare(a.Key, b.Key) })
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

// MergeLastUses merges the journal into the keys' records and returns
// how many uses it merged. It goes once through the journal in key order
// — partition by partition, so that the records it writes follow the
// records' order — mergeRows rows a transaction; rows journaled behind it
// meanwhile wait for the next merge, so a merge ends however busy the
// store. Several nodes may merge at once: a row merged by one is gone for
// the other, whose transaction runs again.
func (c *Catalog) MergeLastUses(ctx context.Context) (int, error) {
	merged, after := 0, ""
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
			var uses []LastUse
			keys := make([]string, len(rows))
			for i, r := range rows {
				keys[i] = r.Key
				// A row that does not decode is dropped: it holds
				// nothing anything else depends on.
				var us []LastUse
				if jsonv2.Unmarshal(r.Value, &us) == nil {
					uses = append(uses, us...)
				}
			}
			uses = latestUses(uses)
			if err := putLastUses(ctx, tx, uses); err != nil {
				return err
			}
			if err := storage.DeleteBatch(ctx, tx, keys); err != nil {
				return err
			}
			n, took = len(uses), len(rows)
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

// latestUses keeps each key's latest use of uses, in key order, so that a
// merge writes a key once and the keys it writes in the store's order.
func latestUses(uses []LastUse) []LastUse {
	type keyed struct {
		path string
		u    *LastUse
	}
	ks := make([]keyed, len(uses))
	for i := range uses {
		u := &uses[i]
		ks[i] = keyed{lastUsePath(u.Account, u.Region, u.KeyID), u}
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		if c := strings.Compare(a.path, b.path); c != 0 {
			return c
		}
		return b.u.Time.Compare(a.u.Time) // latest first
	})
	out := make([]LastUse, 0, len(ks))
	for i, k := range ks {
		if i == 0 || k.path != ks[i-1].path {
			out = append(out, *k.u)
		}
	}
	return out
}

// journaled returns the latest use of key id of account and region in
// the journal (nil if none), reading its partition within r.
func journaled(ctx context.Context, r storage.Reader, account, region, id string) (*LastUse, error) {
	var latest *LastUse
	err := scanJournal(ctx, r, account, region, id, func(_ storage.Entry, us []LastUse) error {
		for i := range us {
			if u := &us[i]; u.Account == account && u.Region == region && u.KeyID == id &&
				(latest == nil || u.Time.After(latest.Time)) {
				latest = u
			}
		}
		return nil
	})
	return latest, err
}

// scanJournal calls fn with each journal row of the partition of key id
// that may hold a use of it, decoded.
func scanJournal(ctx context.Context, r storage.Reader, account, region, id string, fn func(storage.Entry, []LastUse) error) error {
	pre := journalPartPrefix(journalPart(id))
	needle, err := json.Marshal(id) // as the rows spell it, quotes included
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
			if !bytes.Contains(row.Value, needle) {
				continue
			}
			var us []LastUse
			if jsonv2.Unmarshal(row.Value, &us) != nil {
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

// DeleteLastUse removes the last use of key id of account and region (and
// a record an older kmsd kept, and its uses in the journal, which a merge
// would otherwise write back), as the key itself is deleted; deleting an
// absent record is not an error.
func (c *Catalog) DeleteLastUse(ctx context.Context, account, region, id string) error {
	err := c.store.Update(ctx, func(tx storage.Tx) error {
		if err := tx.Delete(ctx, lastUsePath(account, region, id)); err != nil {
			return err
		}
		if err := tx.Delete(ctx, legacyLastUsePath(account, region, id)); err != nil {
			return err
		}
		return scanJournal(ctx, tx, account, region, id, func(row storage.Entry, us []LastUse) error {
			rest := slices.DeleteFunc(us, func(u LastUse) bool {
				return u.Account == account && u.Region == region && u.KeyID == id
			})
			switch {
			case len(rest) == len(us):
				return nil
			case len(rest) == 0:
				return tx.Delete(ctx, row.Key)
			}
			b, err := json.Marshal(rest)
			if err != nil {
				return err
			}
			return tx.Put(ctx, row.Key, b)
		})
	})
	if err != nil {
		return fmt.Errorf("catalog: delete last use: %w", err)
	}
	return nil
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

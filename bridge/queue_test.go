package bridge

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func msgs(n int, from int) []*message {
	out := make([]*message, n)
	for i := range out {
		out[i] = &message{Topic: "t", Payload: fmt.Appendf(nil, "%d", from+i), QoS: 1}
	}
	return out
}

func payloads(t *testing.T, q *queue) []string {
	t.Helper()
	got, bad, err := q.read(0, 1000)
	if err != nil || len(bad) > 0 {
		t.Fatalf("read: bad records %v, %v", bad, err)
	}
	out := make([]string, len(got))
	for i, m := range got {
		out[i] = string(m.Payload)
	}
	return out
}

// A full queue keeps the messages it has, in order, and drops the new ones.
func TestQueueFullDropsNewest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := openQueue(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := q.append(msgs(2, 0)); n != 2 || err != nil {
		t.Fatalf("append 2: %d, %v", n, err)
	}
	if n, err := q.append(msgs(3, 2)); n != 1 || err != nil {
		t.Fatalf("append 3 into room for 1: stored %d, %v; want 1", n, err)
	}
	if got := fmt.Sprint(payloads(t, q)); got != "[0 1 2]" {
		t.Fatalf("queue %s; want [0 1 2]", got)
	}
	first, _, _ := q.read(0, 1)
	if err := q.remove([]uint64{first[0].Seq}); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.append(msgs(1, 9)); n != 1 {
		t.Fatalf("append after a removal stored %d; want 1", n)
	}
	if err := q.close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("queue file mode %v, %v; want 0600", st.Mode(), err)
	}

	q, err = openQueue(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	if got := fmt.Sprint(payloads(t, q)); got != "[1 2 9]" || q.len() != 3 {
		t.Fatalf("reopened queue %s (len %d); want [1 2 9]", got, q.len())
	}
	// Sequence numbers go on after the last one, so the order holds.
	if n, _ := q.append(msgs(1, 10)); n != 0 {
		t.Fatalf("full reopened queue stored %d; want 0", n)
	}
}

func TestMessageRecordRoundTrip(t *testing.T) {
	m := message{Topic: "plant-a/devices/a/telemetry/t", Payload: []byte{0, 1, 2}, QoS: 1, Retain: true}
	got, err := decodeMessage(7, m.encode())
	if err != nil {
		t.Fatal(err)
	}
	m.Seq = 7
	if fmt.Sprint(got) != fmt.Sprint(m) {
		t.Fatalf("decoded %+v; want %+v", got, m)
	}
	for _, bad := range [][]byte{nil, {2, 1, 0, 0}, {1, 3, 0, 0}, {1, 1, 0, 9, 'a'}} {
		if _, err := decodeMessage(1, bad); err == nil {
			t.Errorf("decodeMessage(%v): no error", bad)
		}
	}
}

// A burst is one transaction, so one fsync: the writer takes everything
// waiting before it commits.
func TestWriterGroupsCommits(t *testing.T) {
	q, err := openQueue(filepath.Join(t.TempDir(), "q.db"), 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	b := &bridge{q: q, pending: make(chan *message, offerBuffer), notify: make(chan struct{}, 1)}
	for _, m := range msgs(500, 0) {
		b.pending <- m
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go b.writer(stop, func() { close(done) })
	for deadline := time.Now().Add(10 * time.Second); q.len() < 500; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("queued %d; want 500", q.len())
		}
	}
	close(stop)
	<-done
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.appends != 1 {
		t.Errorf("500 waiting messages took %d transactions; want 1", q.appends)
	}
}

// A record that does not decode is reported, not fatal: the messages
// around it are still read in order.
func TestQueueReadReportsBadRecords(t *testing.T) {
	q, err := openQueue(filepath.Join(t.TempDir(), "q.db"), 10)
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	if _, err := q.append(msgs(3, 0)); err != nil {
		t.Fatal(err)
	}
	err = q.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(queueBucket).Put(seqKey(2), []byte{9}) })
	if err != nil {
		t.Fatal(err)
	}
	got, bad, err := q.read(0, 10)
	if err != nil || len(got) != 2 || fmt.Sprint(bad) != "[2]" || string(got[1].Payload) != "2" {
		t.Fatalf("read: %d messages, bad %v, %v; want 2 messages and bad [2]", len(got), bad, err)
	}
}

package registry

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

const adminID = td + "/admin/dev"

func mustToken(t testing.TB, s *Store, name string, labels ...string) string {
	t.Helper()
	d := device(name, labels...)
	tok, dev, err := s.CreateToken(name, time.Hour, d.Labels, d.SPIFFEID, adminID)
	if err != nil {
		t.Fatalf("CreateToken(%s): %v", name, err)
	}
	if dev.Status != StatusPending {
		t.Fatalf("CreateToken(%s): status %s, want pending", name, dev.Status)
	}
	return tok
}

// tokenCounts returns the number of tokens in memory and on disk.
func tokenCounts(t *testing.T, s *Store) (mem, disk int) {
	t.Helper()
	txn := s.db.Txn(false)
	defer txn.Abort()
	it, err := txn.Get(tableTokens, indexID)
	if err != nil {
		t.Fatal(err)
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		mem++
	}
	err = s.bolt.View(func(tx *bbolt.Tx) error {
		disk = tx.Bucket(bucketTokens).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mem, disk
}

func wantStatus(t *testing.T, s *Store, name string, want Status) {
	t.Helper()
	d, err := s.Get(name)
	if err != nil {
		t.Fatalf("Get(%s): %v", name, err)
	}
	if d.Status != want {
		t.Fatalf("%s is %s, want %s", name, d.Status, want)
	}
}

func TestTokenHappyPath(t *testing.T) {
	s, path := openTemp(t)
	start := time.Now().UTC()
	tok, dev, err := s.CreateToken("sensor-1", 30*time.Minute, map[string]string{"site": "plant-a"}, td+"/device/sensor-1", adminID)
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	if !strings.HasPrefix(tok, "ztb_") || len(tok) != tokenLen || TokenID(tok) == "" {
		t.Fatalf("token %q does not have the documented form", tok)
	}
	if dev.Status != StatusPending || dev.SPIFFEID != td+"/device/sensor-1" || dev.Labels["site"] != "plant-a" {
		t.Fatalf("CreateToken device = %+v", dev)
	}
	// A pending device is enrolled (its name and ID are taken) but not active.
	byID, err := s.GetBySPIFFEID(td + "/device/sensor-1")
	if err != nil || byID.Status != StatusPending {
		t.Fatalf("GetBySPIFFEID = %v, %v; want the pending device", byID, err)
	}
	if _, err := s.Create(device("sensor-1")); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over a pending device: err = %v, want ErrExists", err)
	}

	got, err := s.RedeemToken(tok, time.Now())
	if err != nil {
		t.Fatalf("RedeemToken: %v", err)
	}
	if got.Status != StatusActive || got.SPIFFEID != td+"/device/sensor-1" || got.Name != "sensor-1" ||
		!maps.Equal(got.Labels, map[string]string{"site": "plant-a"}) {
		t.Fatalf("RedeemToken = %+v", got)
	}
	wantStatus(t, s, "sensor-1", StatusActive)

	// Both steps are in the audit log, by the right actors.
	entries := allAudit(t, s)
	if len(entries) != 2 {
		t.Fatalf("audit has %d entries, want 2: %+v", len(entries), entries)
	}
	create, redeem := entries[0], entries[1]
	if create.Action != ActionTokenCreate || create.Actor != adminID || create.Target != "sensor-1" ||
		create.Result != ResultOK || !strings.Contains(create.Detail, TokenID(tok)) || create.Time.Before(start.Add(-time.Second)) {
		t.Errorf("create entry = %+v", create)
	}
	if redeem.Action != ActionTokenRedeem || redeem.Actor != ActorBootstrapToken || redeem.Target != "sensor-1" ||
		!strings.Contains(redeem.Detail, td+"/device/sensor-1") {
		t.Errorf("redeem entry = %+v", redeem)
	}
	if strings.Contains(create.Detail+redeem.Detail, tok[len(tok)-43:]) {
		t.Error("the token secret is in the audit log")
	}

	// Still so after a restart, and the used token stays used.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	wantStatus(t, s2, "sensor-1", StatusActive)
	if _, err := s2.RedeemToken(tok, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("reuse after reopen: err = %v, want ErrTokenInvalid", err)
	}
}

func TestTokenStoredOnlyAsHash(t *testing.T) {
	s, path := openTemp(t)
	tok := mustToken(t, s, "hashed")
	secretB64 := tok[strings.IndexByte(tok, '.')+1:]
	secret, err := base64.RawURLEncoding.DecodeString(secretB64)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Positive control: the token ID is on disk (it is the lookup key).
	if !bytes.Contains(file, []byte(TokenID(tok))) {
		t.Fatal("token ID not found in the file; the search below proves nothing")
	}
	for _, needle := range [][]byte{[]byte(tok), []byte(secretB64), secret} {
		if bytes.Contains(file, needle) {
			t.Fatalf("the store file contains the token secret (%q)", needle)
		}
	}
}

// TestRedeemTokenRefused covers every way a token is refused. Each case
// makes a store with a pending device and its token, mutates, and redeems
// what attack returns; the device must stay as it was, nothing is written,
// and the one error is ErrTokenInvalid. The control redeems the genuine
// token afterwards where that is still legitimate.
func TestRedeemTokenRefused(t *testing.T) {
	future := time.Now().Add(2 * time.Hour)
	tests := []struct {
		name string
		// attack prepares the store and returns the token to present and
		// the time of the request.
		attack func(t *testing.T, s *Store, tok string) (string, time.Time)
		// wantStatus is the device's status after the refusal; control
		// says whether the genuine token must still work afterwards.
		wantStatus Status
		control    bool
	}{
		{"empty", func(*testing.T, *Store, string) (string, time.Time) { return "", time.Now() }, StatusPending, true},
		{"garbage", func(*testing.T, *Store, string) (string, time.Time) { return "hello", time.Now() }, StatusPending, true},
		{"no prefix", func(_ *testing.T, _ *Store, tok string) (string, time.Time) {
			return "xxx_" + tok[4:], time.Now()
		}, StatusPending, true},
		{"truncated", func(_ *testing.T, _ *Store, tok string) (string, time.Time) { return tok[:len(tok)-1], time.Now() }, StatusPending, true},
		{"extended", func(_ *testing.T, _ *Store, tok string) (string, time.Time) { return tok + "A", time.Now() }, StatusPending, true},
		{"upper-case id", func(_ *testing.T, _ *Store, tok string) (string, time.Time) {
			// 'A' first, so the ID changes even if it is all digits.
			return "ztb_A" + strings.ToUpper(tok[5:20]) + tok[20:], time.Now()
		}, StatusPending, true},
		{"padded secret", func(_ *testing.T, _ *Store, tok string) (string, time.Time) {
			return tok[:len(tok)-1] + "=", time.Now()
		}, StatusPending, true},
		{"secret not base64url", func(_ *testing.T, _ *Store, tok string) (string, time.Time) {
			return tok[:len(tok)-2] + "+/", time.Now()
		}, StatusPending, true},
		{"wrong secret", func(_ *testing.T, _ *Store, tok string) (string, time.Time) {
			return flipSecret(tok), time.Now()
		}, StatusPending, true},
		{"unknown id", func(_ *testing.T, _ *Store, tok string) (string, time.Time) {
			return "ztb_0000000000000000" + tok[20:], time.Now()
		}, StatusPending, true},
		{"expired exactly", func(t *testing.T, s *Store, tok string) (string, time.Time) {
			return tok, tokenExpiry(t, s, tok)
		}, StatusPending, true},
		{"expired", func(_ *testing.T, _ *Store, tok string) (string, time.Time) { return tok, future }, StatusPending, true},
		{"used", func(t *testing.T, s *Store, tok string) (string, time.Time) {
			if _, err := s.RedeemToken(tok, time.Now()); err != nil {
				t.Fatalf("first redemption: %v", err)
			}
			return tok, time.Now()
		}, StatusActive, false},
		{"revoked meanwhile", func(t *testing.T, s *Store, tok string) (string, time.Time) {
			if _, err := s.SetStatus("dev", StatusRevoked); err != nil {
				t.Fatal(err)
			}
			return tok, time.Now()
		}, StatusRevoked, false},
		{"replaced by a new token", func(t *testing.T, s *Store, tok string) (string, time.Time) {
			mustToken(t, s, "dev")
			return tok, time.Now()
		}, StatusPending, false},
		{"device deleted and enrolled again", func(t *testing.T, s *Store, tok string) (string, time.Time) {
			if err := s.Delete("dev"); err != nil {
				t.Fatal(err)
			}
			d := device("dev")
			d.Status = StatusPending
			mustCreate(t, s, d)
			return tok, time.Now()
		}, StatusPending, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTemp(t)
			genuine := mustToken(t, s, "dev", "role", "sensor")
			presented, at := tc.attack(t, s, genuine)
			before := allAudit(t, s)
			watch := s.Watch()

			got, err := s.RedeemToken(presented, at)
			if err != ErrTokenInvalid || got != nil {
				t.Fatalf("RedeemToken = %v, %v; want nil, exactly ErrTokenInvalid", got, err)
			}
			wantStatus(t, s, "dev", tc.wantStatus)
			if after := allAudit(t, s); len(after) != len(before) {
				t.Errorf("a refused redemption wrote %d audit entries", len(after)-len(before))
			}
			if fired(watch) {
				t.Error("a refused redemption fired the watch")
			}
			if tc.control {
				if _, err := s.RedeemToken(genuine, time.Now()); err != nil {
					t.Fatalf("control: the genuine token after the refusal: %v", err)
				}
				wantStatus(t, s, "dev", StatusActive)
			}
		})
	}
}

// flipSecret changes one character of a token's secret, keeping its form.
func flipSecret(tok string) string {
	b := []byte(tok)
	i := len(b) - 5
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func tokenExpiry(t *testing.T, s *Store, tok string) time.Time {
	t.Helper()
	txn := s.db.Txn(false)
	defer txn.Abort()
	raw, err := txn.First(tableTokens, indexID, TokenID(tok))
	if err != nil || raw == nil {
		t.Fatalf("token %s not found: %v", TokenID(tok), err)
	}
	return raw.(*token).ExpiresAt
}

func TestTokenExpiry(t *testing.T) {
	s, _ := openTemp(t)
	tok := mustToken(t, s, "dev")
	exp := tokenExpiry(t, s, tok)
	if d := time.Until(exp); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("expiry %v is not one hour from now", exp)
	}
	for _, at := range []time.Time{exp, exp.Add(time.Nanosecond), exp.Add(24 * time.Hour)} {
		if _, err := s.RedeemToken(tok, at); err != ErrTokenInvalid {
			t.Fatalf("RedeemToken at %v (expiry %v): err = %v, want ErrTokenInvalid", at, exp, err)
		}
	}
	// Positive control: a nanosecond before expiry it works.
	if _, err := s.RedeemToken(tok, exp.Add(-time.Nanosecond)); err != nil {
		t.Fatalf("RedeemToken just before expiry: %v", err)
	}
}

// TestTokenYieldsOnlyItsSPIFFEID: a token enrolls the device it was made for
// under the SPIFFE ID it was made for, and nothing else.
func TestTokenYieldsOnlyItsSPIFFEID(t *testing.T) {
	s, _ := openTemp(t)
	tokA := mustToken(t, s, "a")
	tokB := mustToken(t, s, "b")

	// Mixing one token's ID with another's secret is a wrong secret.
	mixed := tokA[:len("ztb_")+tokenIDLen+1] + tokB[len("ztb_")+tokenIDLen+1:]
	if _, err := s.RedeemToken(mixed, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("A's ID with B's secret: err = %v, want ErrTokenInvalid", err)
	}
	mixed = tokB[:len("ztb_")+tokenIDLen+1] + tokA[len("ztb_")+tokenIDLen+1:]
	if _, err := s.RedeemToken(mixed, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("B's ID with A's secret: err = %v, want ErrTokenInvalid", err)
	}

	got, err := s.RedeemToken(tokA, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "a" || got.SPIFFEID != td+"/device/a" {
		t.Fatalf("token of a yielded %s (%s)", got.Name, got.SPIFFEID)
	}
	wantStatus(t, s, "b", StatusPending)

	// A second token for a pending name cannot move it to another ID.
	if _, _, err := s.CreateToken("b", time.Hour, nil, td+"/device/other", adminID); !errors.Is(err, ErrExists) {
		t.Fatalf("token for b with another spiffe_id: err = %v, want ErrExists", err)
	}
	// Nor take an ID that another device holds.
	if _, _, err := s.CreateToken("c", time.Hour, nil, td+"/device/a", adminID); !errors.Is(err, ErrExists) {
		t.Fatalf("token for c with a's spiffe_id: err = %v, want ErrExists", err)
	}
	got, err = s.RedeemToken(tokB, time.Now())
	if err != nil || got.SPIFFEID != td+"/device/b" {
		t.Fatalf("token of b = %v, %v; want b's own ID", got, err)
	}
}

func TestCreateToken(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, s *Store)
		dev     string
		ttl     time.Duration
		labels  map[string]string
		id      string
		actor   string
		wantErr error // nil: must succeed
	}{
		{"new device", nil, "n1", time.Hour, map[string]string{"role": "sensor"}, td + "/device/n1", adminID, nil},
		{"max ttl", nil, "n2", MaxTokenTTL, nil, td + "/device/n2", adminID, nil},
		{"no actor is system", nil, "n3", time.Minute, nil, td + "/device/n3", "", nil},
		{"pending device gets a new token", func(t *testing.T, s *Store) { mustToken(t, s, "p1") }, "p1", time.Hour, nil, td + "/device/p1", adminID, nil},

		{"zero ttl", nil, "e1", 0, nil, td + "/device/e1", adminID, ErrInvalid},
		{"negative ttl", nil, "e2", -time.Hour, nil, td + "/device/e2", adminID, ErrInvalid},
		{"ttl above max", nil, "e3", MaxTokenTTL + time.Second, nil, td + "/device/e3", adminID, ErrInvalid},
		{"bad name", nil, "E4", time.Hour, nil, td + "/device/e4", adminID, ErrInvalidName},
		{"name with wildcard", nil, "e+", time.Hour, nil, td + "/device/e", adminID, ErrInvalidName},
		{"no spiffe id", nil, "e5", time.Hour, nil, "", adminID, ErrInvalid},
		{"bad spiffe id", nil, "e6", time.Hour, nil, "spiffe://example.org", adminID, ErrInvalid},
		{"bad label", nil, "e7", time.Hour, map[string]string{"a b": "c"}, td + "/device/e7", adminID, ErrInvalid},
		{"actor with control char", nil, "e8", time.Hour, nil, td + "/device/e8", "spiffe://x/\n", ErrInvalid},
		{"active device", func(t *testing.T, s *Store) { mustCreate(t, s, device("x1")) }, "x1", time.Hour, nil, td + "/device/x1", adminID, ErrExists},
		{"suspended device", func(t *testing.T, s *Store) {
			d := device("x2")
			d.Status = StatusSuspended
			mustCreate(t, s, d)
		}, "x2", time.Hour, nil, td + "/device/x2", adminID, ErrExists},
		{"revoked device", func(t *testing.T, s *Store) {
			d := device("x3")
			d.Status = StatusRevoked
			mustCreate(t, s, d)
		}, "x3", time.Hour, nil, td + "/device/x3", adminID, ErrExists},
		{"spiffe id taken", func(t *testing.T, s *Store) { mustCreate(t, s, device("x4")) }, "x5", time.Hour, nil, td + "/device/x4", adminID, ErrExists},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTemp(t)
			if tc.setup != nil {
				tc.setup(t, s)
			}
			beforeLen, beforeAudit := s.Len(), len(allAudit(t, s))
			beforeMem, _ := tokenCounts(t, s)
			tok, dev, err := s.CreateToken(tc.dev, tc.ttl, tc.labels, tc.id, tc.actor)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || tok != "" || dev != nil {
					t.Fatalf("CreateToken = %q, %v, %v; want %v", tok, dev, err, tc.wantErr)
				}
				if !strings.HasPrefix(err.Error(), "registry: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
				if s.Len() != beforeLen || len(allAudit(t, s)) != beforeAudit {
					t.Error("a refused CreateToken changed the store or the audit log")
				}
				if mem, disk := tokenCounts(t, s); mem != beforeMem || disk != beforeMem {
					t.Errorf("tokens: %d in memory, %d on disk, want %d", mem, disk, beforeMem)
				}
				return
			}
			if err != nil {
				t.Fatalf("CreateToken: %v", err)
			}
			if dev.Status != StatusPending || dev.SPIFFEID != tc.id || !maps.Equal(dev.Labels, cloneLabels(tc.labels)) {
				t.Fatalf("device = %+v", dev)
			}
			entries := allAudit(t, s)
			last := entries[len(entries)-1]
			wantActor := tc.actor
			if wantActor == "" {
				wantActor = ActorSystem
			}
			if len(entries) != beforeAudit+1 || last.Action != ActionTokenCreate || last.Actor != wantActor {
				t.Errorf("audit after CreateToken: %+v", entries)
			}
			// One token per device, whatever happened before.
			if mem, disk := tokenCounts(t, s); mem != 1 || disk != 1 {
				t.Errorf("tokens: %d in memory, %d on disk, want 1", mem, disk)
			}
			if _, err := s.RedeemToken(tok, time.Now()); err != nil {
				t.Fatalf("RedeemToken: %v", err)
			}
		})
	}
}

func TestCreateTokenReplacesPending(t *testing.T) {
	s, _ := openTemp(t)
	old := mustToken(t, s, "dev", "role", "sensor")
	created, _ := s.Get("dev")
	fresh, dev, err := s.CreateToken("dev", time.Hour, map[string]string{"role": "controller"}, td+"/device/dev", adminID)
	if err != nil {
		t.Fatal(err)
	}
	if fresh == old {
		t.Fatal("the new token equals the old one")
	}
	if dev.Labels["role"] != "controller" || !dev.CreatedAt.Equal(created.CreatedAt) {
		t.Fatalf("replaced device = %+v (created %v)", dev, created.CreatedAt)
	}
	if last := allAudit(t, s); !strings.Contains(last[len(last)-1].Detail, "replaces token "+TokenID(old)) {
		t.Errorf("audit detail %q does not name the replaced token", last[len(last)-1].Detail)
	}
	if _, err := s.RedeemToken(old, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("old token: err = %v, want ErrTokenInvalid", err)
	}
	if _, err := s.RedeemToken(fresh, time.Now()); err != nil {
		t.Fatalf("new token: %v", err)
	}
}

func TestPendingStatusTransitions(t *testing.T) {
	tests := []struct {
		to      Status
		wantErr error
	}{
		{StatusActive, ErrPending},
		{StatusSuspended, ErrPending},
		{StatusPending, nil}, // no-op
		{StatusRevoked, nil},
	}
	for _, tc := range tests {
		t.Run(string(tc.to), func(t *testing.T) {
			s, path := openTemp(t)
			tok := mustToken(t, s, "p")
			got, err := s.SetStatus("p", tc.to)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("SetStatus(pending -> %s): err = %v, want %v", tc.to, err, tc.wantErr)
				}
				wantStatus(t, s, "p", StatusPending)
				// Refused: the token still works (positive control).
				if _, err := s.RedeemToken(tok, time.Now()); err != nil {
					t.Fatalf("token after a refused SetStatus: %v", err)
				}
				return
			}
			if err != nil || got.Status != tc.to {
				t.Fatalf("SetStatus(pending -> %s) = %v, %v", tc.to, got, err)
			}
			if tc.to == StatusRevoked {
				if mem, disk := tokenCounts(t, s); mem != 0 || disk != 0 {
					t.Errorf("revocation left the token (%d in memory, %d on disk)", mem, disk)
				}
				if _, err := s.RedeemToken(tok, time.Now()); err != ErrTokenInvalid {
					t.Fatalf("token after revocation: err = %v, want ErrTokenInvalid", err)
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				s2, err := Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer s2.Close()
				wantStatus(t, s2, "p", StatusRevoked)
			}
		})
	}

	// No device becomes pending again, whatever its state.
	for _, from := range []Status{StatusActive, StatusSuspended} {
		s, _ := openTemp(t)
		d := device("d")
		d.Status = from
		mustCreate(t, s, d)
		if _, err := s.SetStatus("d", StatusPending); !errors.Is(err, ErrInvalid) {
			t.Errorf("SetStatus(%s -> pending): err = %v, want ErrInvalid", from, err)
		}
		wantStatus(t, s, "d", from)
	}
}

func TestDeletePendingRemovesToken(t *testing.T) {
	s, _ := openTemp(t)
	tok := mustToken(t, s, "p")
	mustToken(t, s, "q")
	if err := s.Delete("p"); err != nil {
		t.Fatal(err)
	}
	if mem, disk := tokenCounts(t, s); mem != 1 || disk != 1 {
		t.Fatalf("tokens after delete: %d in memory, %d on disk, want 1 (q's)", mem, disk)
	}
	if _, err := s.RedeemToken(tok, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("token of a deleted device: err = %v, want ErrTokenInvalid", err)
	}
	// The name is free again, for a new token.
	mustToken(t, s, "p")
}

// TestRedeemTokenConcurrent: many redeem one token at once; exactly one wins.
func TestRedeemTokenConcurrent(t *testing.T) {
	s, _ := openTemp(t)
	tok := mustToken(t, s, "race")
	const n = 16
	var wg sync.WaitGroup
	results := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := s.RedeemToken(tok, time.Now())
			results <- err
		})
	}
	wg.Wait()
	close(results)
	wins := 0
	for err := range results {
		switch {
		case err == nil:
			wins++
		case err != ErrTokenInvalid:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d redemptions succeeded, want exactly 1", wins)
	}
	redeems := 0
	for _, e := range allAudit(t, s) {
		if e.Action == ActionTokenRedeem {
			redeems++
		}
	}
	if redeems != 1 {
		t.Fatalf("%d redeem entries in the audit log, want 1", redeems)
	}
}

func TestTokenPruning(t *testing.T) {
	s, path := openTemp(t)
	base := time.Now()
	clock := base
	s.now = func() time.Time { return clock }

	// Three tokens that will expire, one that will not.
	for i := range 3 {
		mustToken(t, s, fmt.Sprintf("old-%d", i))
		clock = clock.Add(time.Minute)
	}
	keep := mustToken(t, s, "young") // expires at base+3m+1h

	// Bounded: a prune of at most 2 removes the two oldest.
	var pruned int
	if err := s.write(func(w *writeTxn) error {
		var err error
		pruned, err = w.pruneTokens(base.Add(time.Hour+90*time.Second), 2)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if mem, disk := tokenCounts(t, s); pruned != 2 || mem != 2 || disk != 2 {
		t.Fatalf("pruned %d, left %d in memory and %d on disk; want 2, 2, 2", pruned, mem, disk)
	}

	// CreateToken prunes what expired (old-2 at base+2m+1h) and keeps the rest.
	clock = base.Add(time.Hour + 150*time.Second)
	mustToken(t, s, "new")
	if mem, disk := tokenCounts(t, s); mem != 2 || disk != 2 {
		t.Fatalf("after CreateToken: %d in memory, %d on disk; want 2 (young, new)", mem, disk)
	}
	// Pruning a token leaves its device pending: an admin may issue another.
	wantStatus(t, s, "old-2", StatusPending)
	if _, err := s.RedeemToken(keep, clock); err != nil {
		t.Fatalf("unexpired token was pruned: %v", err)
	}

	// Open prunes too.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path) // real clock: "new" has an hour to go
	if err != nil {
		t.Fatal(err)
	}
	if mem, disk := tokenCounts(t, s2); mem != 2 || disk != 2 {
		t.Fatalf("after reopen now: %d in memory, %d on disk; want 2 (young used, new)", mem, disk)
	}
	s2.Close()
	writeRawTokenExpiry(t, path, time.Now().Add(-time.Second))
	s3, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if mem, disk := tokenCounts(t, s3); mem != 0 || disk != 0 {
		t.Fatalf("after reopen past expiry: %d in memory, %d on disk; want 0", mem, disk)
	}
}

// writeRawTokenExpiry sets the expiry of every token in a closed store file.
func writeRawTokenExpiry(t *testing.T, path string, exp time.Time) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		updated := map[string][]byte{}
		err := b.ForEach(func(k, v []byte) error {
			tok, err := decodeToken(k, v)
			if err != nil {
				return err
			}
			tok.ExpiresAt = exp
			val, err := encodeToken(tok)
			updated[string(k)] = val
			return err
		})
		if err != nil {
			return err
		}
		for k, v := range updated {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesBadTokenRecords(t *testing.T) {
	const ts = `"created_at":"2026-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z","created_by":"x"`
	hash := strings.Repeat("ab", 32)
	rec := func(id, dev, spiffe, sum string) string {
		return `{"id":"` + id + `","device":"` + dev + `","spiffe_id":"` + spiffe + `","sha256":"` + sum + `",` + ts + `}`
	}
	const id1, id2 = "0123456789abcdef", "fedcba9876543210"
	tests := []struct {
		name    string
		tokens  map[string]string
		wantMsg string // "" means Open must succeed
	}{
		{"valid (control)", map[string]string{id1: rec(id1, "p", td+"/device/p", hash)}, ""},
		{"garbage", map[string]string{id1: "{"}, "token record"},
		{"key differs", map[string]string{id2: rec(id1, "p", td+"/device/p", hash)}, "does not match its key"},
		{"bad id", map[string]string{"XYZ": rec("XYZ", "p", td+"/device/p", hash)}, "malformed"},
		{"no device", map[string]string{id1: rec(id1, "ghost", td+"/device/ghost", hash)}, `device "ghost" does not exist`},
		{"other spiffe id", map[string]string{id1: rec(id1, "p", td+"/device/q", hash)}, "is not that of device"},
		{"short hash", map[string]string{id1: rec(id1, "p", td+"/device/p", "abcd")}, "64 hex digits"},
		{"two tokens", map[string]string{
			id1: rec(id1, "p", td+"/device/p", hash),
			id2: rec(id2, "p", td+"/device/p", hash),
		}, "also has token"},
		{"unknown field", map[string]string{id1: `{"id":"` + id1 + `","secret":"x"}`}, "token record"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, path := openTemp(t)
			p := device("p")
			p.Status = StatusPending
			mustCreate(t, s, p)
			mustCreate(t, s, device("q"))
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			writeRawBucket(t, path, bucketTokens, tc.tokens)
			checkOpen(t, path, tc.wantMsg)
		})
	}
}

func writeRawBucket(t *testing.T, path string, bucket []byte, kv map[string]string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		for k, v := range kv {
			if err := tx.Bucket(bucket).Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRedeemRequiresPendingDevice: even if a token outlived the pending state
// of its device (revocation and deletion remove it, but the store of record
// could hold one from elsewhere), it never changes a device that is not
// pending. The token record stays valid so that only the device check stands
// between it and a redemption.
func TestRedeemRequiresPendingDevice(t *testing.T) {
	for _, st := range []Status{StatusPending, StatusRevoked, StatusSuspended, StatusActive} {
		t.Run(string(st), func(t *testing.T) {
			s, path := openTemp(t)
			tok := mustToken(t, s, "dev")
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			d := device("dev")
			d.Status = st
			d.CreatedAt, d.UpdatedAt = time.Now().UTC(), time.Now().UTC()
			val, err := encode(&d)
			if err != nil {
				t.Fatal(err)
			}
			writeRawBucket(t, path, bucketDevices, map[string]string{"dev": string(val)})
			s2, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			got, err := s2.RedeemToken(tok, time.Now())
			if st == StatusPending { // positive control
				if err != nil || got.Status != StatusActive {
					t.Fatalf("RedeemToken on a pending device = %v, %v", got, err)
				}
				return
			}
			if err != ErrTokenInvalid {
				t.Fatalf("RedeemToken on a %s device: err = %v, want ErrTokenInvalid", st, err)
			}
			wantStatus(t, s2, "dev", st)
		})
	}
}

// TestUsedTokenStaysUsed: a used token is refused even if its device were
// pending again (which no method does: the device check alone already
// refuses reuse; this isolates the token's own used mark).
func TestUsedTokenStaysUsed(t *testing.T) {
	s, path := openTemp(t)
	tok := mustToken(t, s, "dev")
	if _, err := s.RedeemToken(tok, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	d := device("dev")
	d.Status = StatusPending
	d.CreatedAt, d.UpdatedAt = time.Now().UTC(), time.Now().UTC()
	val, err := encode(&d)
	if err != nil {
		t.Fatal(err)
	}
	writeRawBucket(t, path, bucketDevices, map[string]string{"dev": string(val)})
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.RedeemToken(tok, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("used token on a pending device: err = %v, want ErrTokenInvalid", err)
	}
	wantStatus(t, s2, "dev", StatusPending)
}

func TestTokenID(t *testing.T) {
	s, _ := openTemp(t)
	tok := mustToken(t, s, "dev")
	if id := TokenID(tok); len(id) != tokenIDLen || !strings.Contains(tok, id) {
		t.Fatalf("TokenID(%q) = %q", tok, id)
	}
	for _, bad := range []string{"", "ztb_", tok[:len(tok)-1], strings.ToUpper(tok), "ztb_0123456789abcdef"} {
		if id := TokenID(bad); id != "" {
			t.Errorf("TokenID(%q) = %q, want \"\"", bad, id)
		}
	}
}

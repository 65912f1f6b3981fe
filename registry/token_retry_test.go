package registry

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func keySum(s string) [sha256.Size]byte { return sha256.Sum256([]byte(s)) }

// A redemption binds the token to the key it enrolled: the same key gets
// the device again while the token lives (its first answer may have been
// lost); another key, an expired token or a device no longer active gets
// ErrTokenInvalid, as any refused token does.
func TestRedeemTokenRetrySameKey(t *testing.T) {
	s, path := openTemp(t)
	tok := mustToken(t, s, "meter-1")
	k1, k2 := keySum("key one"), keySum("key two")

	d, retry, err := s.RedeemTokenForKey(tok, k1, time.Now())
	if err != nil || retry || d.Status != StatusActive || d.SPIFFEID != td+"/device/meter-1" {
		t.Fatalf("first redemption = %+v, retry %v, %v", d, retry, err)
	}
	entries := len(allAudit(t, s))

	d, retry, err = s.RedeemTokenForKey(tok, k1, time.Now())
	if err != nil || !retry || d.Name != "meter-1" || d.Status != StatusActive || d.SPIFFEID != td+"/device/meter-1" {
		t.Fatalf("retry with the same key = %+v, retry %v, %v; want the device, retry", d, retry, err)
	}
	if _, _, err := s.RedeemTokenForKey(tok, k2, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("another key: err = %v, want exactly ErrTokenInvalid", err)
	}
	if _, err := s.RedeemToken(tok, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("without a key: err = %v, want exactly ErrTokenInvalid", err)
	}
	// A retry changes nothing and writes nothing (the caller audits what
	// it does with it).
	if n := len(allAudit(t, s)); n != entries {
		t.Fatalf("retries wrote %d audit entries", n-entries)
	}

	// The key is stored with the used token: it survives a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if _, retry, err := s.RedeemTokenForKey(tok, k1, time.Now()); err != nil || !retry {
		t.Fatalf("retry after a restart: retry %v, %v", retry, err)
	}
	if _, _, err := s.RedeemTokenForKey(tok, k2, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("another key after a restart: err = %v, want ErrTokenInvalid", err)
	}

	// Not for a device that is no longer active.
	if _, err := s.SetStatus("meter-1", StatusSuspended); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RedeemTokenForKey(tok, k1, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("suspended device: err = %v, want ErrTokenInvalid", err)
	}
	if _, err := s.SetStatus("meter-1", StatusActive); err != nil {
		t.Fatal(err)
	}
	if _, retry, err := s.RedeemTokenForKey(tok, k1, time.Now()); err != nil || !retry {
		t.Fatalf("resumed device (control): retry %v, %v", retry, err)
	}
	// Not after the token's expiry.
	if _, _, err := s.RedeemTokenForKey(tok, k1, time.Now().Add(2*time.Hour)); err != ErrTokenInvalid {
		t.Fatalf("expired token: err = %v, want ErrTokenInvalid", err)
	}
	// Not with the wrong secret, even with the right key.
	if _, _, err := s.RedeemTokenForKey(flipSecret(tok), k1, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("wrong secret: err = %v, want ErrTokenInvalid", err)
	}
	// Not once the device is revoked (revocation removes the token).
	if _, err := s.SetStatus("meter-1", StatusRevoked); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RedeemTokenForKey(tok, k1, time.Now()); err != ErrTokenInvalid {
		t.Fatalf("revoked device: err = %v, want ErrTokenInvalid", err)
	}
}

// A token redeemed without a key is never redeemed again, whatever key.
func TestRedeemTokenWithoutKeyIsFinal(t *testing.T) {
	s, _ := openTemp(t)
	tok := mustToken(t, s, "meter-1")
	if _, err := s.RedeemToken(tok, time.Now()); err != nil {
		t.Fatal(err)
	}
	var zero [sha256.Size]byte
	for _, k := range [][sha256.Size]byte{zero, keySum("any")} {
		if _, _, err := s.RedeemTokenForKey(tok, k, time.Now()); err != ErrTokenInvalid {
			t.Fatalf("key %x: err = %v, want ErrTokenInvalid", k[:4], err)
		}
	}
}

// Concurrent redemptions with different keys: exactly one wins, and only
// its key retries. With one key: every one succeeds, and exactly one is the
// redemption.
func TestRedeemTokenConcurrentKeys(t *testing.T) {
	const n = 16
	run := func(t *testing.T, tok string, s *Store, key func(i int) [sha256.Size]byte) (wins, retries int, winner int) {
		var wg sync.WaitGroup
		type result struct {
			i     int
			retry bool
			err   error
		}
		results := make(chan result, n)
		for i := range n {
			wg.Go(func() {
				_, retry, err := s.RedeemTokenForKey(tok, key(i), time.Now())
				results <- result{i, retry, err}
			})
		}
		wg.Wait()
		close(results)
		winner = -1
		for r := range results {
			switch {
			case r.err == nil && r.retry:
				retries++
			case r.err == nil:
				wins++
				winner = r.i
			case r.err != ErrTokenInvalid:
				t.Errorf("unexpected error: %v", r.err)
			}
		}
		return wins, retries, winner
	}
	t.Run("different keys", func(t *testing.T) {
		s, _ := openTemp(t)
		tok := mustToken(t, s, "race")
		key := func(i int) [sha256.Size]byte { return keySum(fmt.Sprint("key ", i)) }
		wins, retries, winner := run(t, tok, s, key)
		if wins != 1 || retries != 0 {
			t.Fatalf("%d redemptions and %d retries succeeded, want exactly 1 and 0", wins, retries)
		}
		if _, retry, err := s.RedeemTokenForKey(tok, key(winner), time.Now()); err != nil || !retry {
			t.Fatalf("the winner's retry: %v, %v", retry, err)
		}
		if _, _, err := s.RedeemTokenForKey(tok, key((winner+1)%n), time.Now()); err != ErrTokenInvalid {
			t.Fatalf("a loser's retry: %v, want ErrTokenInvalid", err)
		}
	})
	t.Run("one key", func(t *testing.T) {
		s, _ := openTemp(t)
		tok := mustToken(t, s, "race")
		wins, retries, _ := run(t, tok, s, func(int) [sha256.Size]byte { return keySum("the key") })
		if wins != 1 || retries != n-1 {
			t.Fatalf("%d redemptions and %d retries, want 1 and %d", wins, retries, n-1)
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
	})
}

// The key of a used token is part of its record: a malformed one, or one
// on a token that was never used, refuses the file.
func TestOpenRefusesBadTokenKeys(t *testing.T) {
	const ts = `"created_at":"2026-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z","created_by":"x"`
	const id = "0123456789abcdef"
	hash := strings.Repeat("ab", 32)
	rec := func(extra string) string {
		return `{"id":"` + id + `","device":"p","spiffe_id":"` + td + `/device/p","sha256":"` + hash + `",` + ts + extra + `}`
	}
	const used = `,"used_at":"2026-01-01T00:01:00Z"`
	tests := []struct {
		name, record, wantMsg string
	}{
		{"used with a key (control)", rec(used + `,"key_sha256":"` + hash + `"`), ""},
		{"used without a key (control)", rec(used), ""},
		{"short key", rec(used + `,"key_sha256":"abcd"`), "key_sha256"},
		{"key not hex", rec(used + `,"key_sha256":"` + strings.Repeat("zz", 32) + `"`), "key_sha256"},
		{"key on an unused token", rec(`,"key_sha256":"` + hash + `"`), "key_sha256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, path := openTemp(t)
			mustCreate(t, s, device("p"))
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			writeRawBucket(t, path, bucketTokens, map[string]string{id: tc.record})
			checkOpen(t, path, tc.wantMsg)
		})
	}
}

// BenchmarkRedeemTokenRetry measures a retry with the key of the first
// redemption: a read transaction, no lock, no disk (compare
// BenchmarkRedeemTokenRefused and BenchmarkRedeemToken).
func BenchmarkRedeemTokenRetry(b *testing.B) {
	s, _ := openTemp(b)
	tok := mustToken(b, s, "dev")
	key := keySum("the key")
	if _, _, err := s.RedeemTokenForKey(tok, key, time.Now()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, retry, err := s.RedeemTokenForKey(tok, key, time.Now()); err != nil || !retry {
			b.Fatal(retry, err)
		}
	}
}

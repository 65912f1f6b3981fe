package registry

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
)

// Bootstrap tokens.
//
// A token is "ztb_" + ID + "." + secret: the ID (16 hex digits) finds the
// record, the secret (256 random bits, base64url) proves possession. The
// store keeps only SHA-256 of the secret. A secret of 256 random bits cannot
// be guessed, so a plain hash suffices (no salt or slow KDF): what the hash
// protects against is a copy of the file, not a dictionary.
const (
	tokenPrefix      = "ztb_"
	tokenIDBytes     = 8
	tokenSecretBytes = 32
	tokenIDLen       = 2 * tokenIDBytes
	tokenLen         = len(tokenPrefix) + tokenIDLen + 1 + 43 // 43 = base64 of 32 bytes, unpadded

	// MaxTokenTTL bounds how long a bootstrap token stays valid. A token is
	// a bearer secret: mint it close to when the device is installed.
	MaxTokenTTL = 7 * 24 * time.Hour

	// pruneOnWrite and pruneOnOpen bound how many expired tokens one
	// CreateToken or one Open removes, so neither ever does unbounded work;
	// what is left goes with the next call.
	pruneOnWrite = 256
	pruneOnOpen  = 10_000
)

var secretEncoding = base64.RawURLEncoding.Strict()

// token is the memdb form of a bootstrap token. Records in memdb are shared
// and never mutated: a change inserts a new value.
type token struct {
	ID        string
	Device    string // the name of the device it enrolls
	SPIFFEID  string // the only SPIFFE ID it can yield
	Hash      [sha256.Size]byte
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    time.Time // zero while unused
	CreatedBy string
	// KeySum is the SHA-256 of the public key (DER SubjectPublicKeyInfo)
	// the token was redeemed for, when HasKey: that key, and no other,
	// may redeem the used token again while it lives.
	KeySum [sha256.Size]byte
	HasKey bool
}

// CreateToken registers device name as pending enrollment, with labels and
// spiffeID (canonical, required: the caller knows the trust domain), and
// returns a one-time bootstrap token for it that expires after ttl (at most
// MaxTokenTTL). The token is returned once and never stored. If name is
// already pending, its labels are replaced and its previous token stops
// working; a device in any other state, or a SPIFFE ID in use, is ErrExists.
// actor (the admin's SPIFFE ID) is recorded in the audit log with the change.
// Expired tokens are pruned in the same transaction. Durable before it
// returns.
func (s *Store) CreateToken(name string, ttl time.Duration, labels map[string]string, spiffeID string, actor string, opts ...WriteOption) (string, *Device, error) {
	if err := ValidateName(name); err != nil {
		return "", nil, err
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", nil, fmt.Errorf("%w: token ttl %v: must be more than 0 and at most %v", ErrInvalid, ttl, MaxTokenTTL)
	}
	id, err := validateSPIFFEID(spiffeID)
	if err != nil {
		return "", nil, err
	}
	if err := validateLabels(labels); err != nil {
		return "", nil, err
	}
	o, err := options(append(opts[:len(opts):len(opts)], WithActor(actor)))
	if err != nil {
		return "", nil, err
	}

	var tok string
	var out *Device
	err = s.write(func(w *writeTxn) error {
		if _, err := w.pruneTokens(w.now, pruneOnWrite); err != nil {
			return err
		}
		cur, err := lookup(w.mem, indexID, name)
		if err != nil {
			return err
		}
		var next *Device
		detail := "new pending device"
		switch {
		case cur == nil:
			other, err := lookup(w.mem, indexSPIFFEID, id)
			if err != nil {
				return err
			}
			if other != nil {
				return fmt.Errorf("%w: spiffe_id %s is used by device %s", ErrExists, quote(id), quote(other.Name))
			}
			next = &Device{Name: name, SPIFFEID: id, Labels: cloneLabels(labels), Status: StatusPending, CreatedAt: w.now}
		case cur.Status != StatusPending:
			return fmt.Errorf("%w: device %s is %s; a bootstrap token is only for a new or pending device",
				ErrExists, quote(name), cur.Status)
		case cur.SPIFFEID != id:
			return fmt.Errorf("%w: pending device %s has spiffe_id %s, not %s",
				ErrExists, quote(name), quote(cur.SPIFFEID), quote(id))
		default:
			next = cur.Clone()
			next.Labels = cloneLabels(labels)
			if old, err := tokenOf(w.mem, name); err != nil {
				return err
			} else if old != nil {
				detail = "replaces token " + old.ID
				if err := w.deleteToken(old); err != nil {
					return err
				}
			} else {
				detail = "pending device without a token"
			}
		}
		next.UpdatedAt = w.now

		t, secret, err := newToken(w.mem)
		if err != nil {
			return err
		}
		t.Device, t.SPIFFEID, t.CreatedBy = name, id, o.actor
		t.CreatedAt, t.ExpiresAt = w.now, w.now.Add(ttl)
		if err := w.putDevice(next, cur == nil); err != nil {
			return err
		}
		if err := w.putToken(t, true); err != nil {
			return err
		}
		w.record(o, ActionTokenCreate, name, fmt.Sprintf("token %s for %s, labels {%s}, expires %s; %s",
			t.ID, id, formatLabels(next.Labels), t.ExpiresAt.Format(time.RFC3339), detail))
		tok = tokenPrefix + t.ID + "." + secretEncoding.EncodeToString(secret)
		out = next.Clone()
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	return tok, out, nil
}

// newToken draws a fresh token ID (unused in txn) and secret, and returns the
// token with its hash set, and the secret.
func newToken(txn *memdb.Txn) (*token, []byte, error) {
	idb := make([]byte, tokenIDBytes)
	secret := make([]byte, tokenSecretBytes)
	// 64-bit IDs practically never collide; the bound keeps the loop finite
	// should the random source ever misbehave.
	for range 4 {
		_, _ = rand.Read(idb) // never fails (crypto/rand, Go 1.24+)
		id := hex.EncodeToString(idb)
		raw, err := txn.First(tableTokens, indexID, id)
		if err != nil {
			return nil, nil, fmt.Errorf("registry: lookup token: %w", err)
		}
		if raw != nil {
			continue
		}
		_, _ = rand.Read(secret)
		return &token{ID: id, Hash: sha256.Sum256(secret)}, secret, nil
	}
	return nil, nil, fmt.Errorf("registry: could not draw an unused token id")
}

// RedeemToken enrolls the pending device a bootstrap token was made for: in
// one transaction the device becomes active, the token is marked used and
// the audit log records it (actor ActorBootstrapToken). now is the time of
// the request, checked against the expiry (the zero time means the store's
// clock). It returns the device, whose SPIFFE ID is the one the token was
// made for and no other.
//
// A token that is malformed, unknown, wrong, expired or used, or whose device
// is gone, revoked or otherwise no longer pending, gets ErrTokenInvalid and
// nothing else: the caller learns nothing about which. A refused token
// writes nothing, so guessing costs no disk writes; a caller that wants
// refusals in the audit log records them with RecordAudit.
//
// A token redeemed here is bound to no key, so it is never redeemed again;
// see RedeemTokenForKey.
func (s *Store) RedeemToken(tok string, now time.Time, opts ...WriteOption) (*Device, error) {
	d, _, err := s.redeem(tok, nil, now, opts)
	return d, err
}

// RedeemTokenForKey is RedeemToken for a device that enrolls the key whose
// SPKI hash (SHA-256 of the DER SubjectPublicKeyInfo) is keySum, which is
// stored with the used token in the same transaction. The same token with
// the same key redeems again while the token lives and its device is
// active: the device gets its SVID again when the answer to its first
// redemption was lost. retry is true then; nothing is written (the caller
// audits what it issues). Any other key on a used token, or a retry once
// the token expired or its device is no longer active, is ErrTokenInvalid,
// like every refused token.
func (s *Store) RedeemTokenForKey(tok string, keySum [sha256.Size]byte, now time.Time, opts ...WriteOption) (dev *Device, retry bool, err error) {
	return s.redeem(tok, &keySum, now, opts)
}

func (s *Store) redeem(tok string, key *[sha256.Size]byte, now time.Time, opts []WriteOption) (*Device, bool, error) {
	id, sum, ok := parseToken(tok)
	if !ok {
		return nil, false, ErrTokenInvalid
	}
	if now.IsZero() {
		now = s.now()
	}
	o, err := options(opts)
	if err != nil {
		return nil, false, err
	}
	o.actor = ActorBootstrapToken
	if s.closed.Load() {
		return nil, false, ErrClosed
	}
	// Check without the writer lock first, so that wrong tokens (and
	// retries, which write nothing) never queue behind writers nor hold
	// them up; a redemption is checked again under the lock.
	rtxn := s.db.Txn(false)
	_, dev, retry, err := checkToken(rtxn, id, sum, key, now)
	rtxn.Abort()
	if err != nil {
		return nil, false, err
	}
	if retry {
		return dev.Clone(), true, nil
	}

	var out *Device
	err = s.write(func(w *writeTxn) error {
		t, dev, again, err := checkToken(w.mem, id, sum, key, now)
		if err != nil {
			return err
		}
		if again {
			// The same key won the race to redeem it: nothing to write.
			out, retry = dev.Clone(), true
			return nil
		}
		next := dev.Clone()
		next.Status = StatusActive
		next.UpdatedAt = w.now
		used := *t
		used.UsedAt = w.now
		detail := fmt.Sprintf("token %s; enrolled as %s", t.ID, dev.SPIFFEID)
		if key != nil {
			used.KeySum, used.HasKey = *key, true
			detail += fmt.Sprintf(", key sha256:%x", key[:8])
		}
		if err := w.putDevice(next, false); err != nil {
			return err
		}
		if err := w.putToken(&used, false); err != nil {
			return err
		}
		w.record(o, ActionTokenRedeem, dev.Name, detail)
		out = next.Clone()
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return out, retry, nil
}

// checkToken returns the token with ID id and its device if a secret that
// hashes to sum may redeem it at now: for the first time (an unused token
// of a pending device), or again (retry) with key, the key it was first
// redeemed for, while its device is active. Anything else is
// ErrTokenInvalid (or a lookup error).
func checkToken(txn *memdb.Txn, id string, sum [sha256.Size]byte, key *[sha256.Size]byte, now time.Time) (t *token, dev *Device, retry bool, err error) {
	raw, err := txn.First(tableTokens, indexID, id)
	if err != nil {
		return nil, nil, false, fmt.Errorf("registry: lookup token: %w", err)
	}
	if raw == nil {
		return nil, nil, false, ErrTokenInvalid
	}
	t = raw.(*token)
	// Constant time: the time taken says nothing about how much of the
	// hash matched.
	if subtle.ConstantTimeCompare(t.Hash[:], sum[:]) != 1 || !now.Before(t.ExpiresAt) {
		return nil, nil, false, ErrTokenInvalid
	}
	dev, err = lookup(txn, indexID, t.Device)
	if err != nil {
		return nil, nil, false, err
	}
	// The device must still be the one the token was made for, under the
	// token's SPIFFE ID: pending for a redemption (not revoked or
	// suspended meanwhile), active for a retry.
	if dev == nil || dev.SPIFFEID != t.SPIFFEID {
		return nil, nil, false, ErrTokenInvalid
	}
	switch {
	case t.UsedAt.IsZero() && dev.Status == StatusPending:
		return t, dev, false, nil
	case !t.UsedAt.IsZero() && t.HasKey && key != nil && dev.Status == StatusActive &&
		subtle.ConstantTimeCompare(t.KeySum[:], key[:]) == 1:
		return t, dev, true, nil
	}
	return nil, nil, false, ErrTokenInvalid
}

// parseToken splits a token into its ID and the SHA-256 of its secret.
func parseToken(tok string) (string, [sha256.Size]byte, bool) {
	var sum [sha256.Size]byte
	if len(tok) != tokenLen || !strings.HasPrefix(tok, tokenPrefix) {
		return "", sum, false
	}
	id, enc, found := strings.Cut(tok[len(tokenPrefix):], ".")
	if !found || !isTokenID(id) {
		return "", sum, false
	}
	secret, err := secretEncoding.DecodeString(enc)
	if err != nil || len(secret) != tokenSecretBytes {
		return "", sum, false
	}
	return id, sha256.Sum256(secret), true
}

// TokenID returns the public ID part of a well-formed bootstrap token, for
// logs and audit entries about it, or "" for anything else. The ID is not
// secret: it only names the record.
func TokenID(tok string) string {
	id, _, ok := parseToken(tok)
	if !ok {
		return ""
	}
	return id
}

func isTokenID(id string) bool {
	if len(id) != tokenIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// tokenOf returns the token of device name, nil if it has none.
func tokenOf(txn *memdb.Txn, name string) (*token, error) {
	raw, err := txn.First(tableTokens, indexDevice, name)
	if err != nil {
		return nil, fmt.Errorf("registry: lookup token: %w", err)
	}
	if raw == nil {
		return nil, nil
	}
	return raw.(*token), nil
}

// lookup returns the stored device of a unique index, nil if there is none.
func lookup(txn *memdb.Txn, index, key string) (*Device, error) {
	raw, err := txn.First(tableDevices, index, key)
	if err != nil {
		return nil, fmt.Errorf("registry: lookup: %w", err)
	}
	if raw == nil {
		return nil, nil
	}
	return raw.(*Device), nil
}

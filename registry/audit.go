package registry

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.etcd.io/bbolt"
)

// AuditEntry is one line of the audit log: who did what to which target,
// with what result. Entries are numbered from 1 in the order they were
// committed.
type AuditEntry struct {
	ID   uint64    `json:"id"`
	Time time.Time `json:"time"`
	// Actor is the SPIFFE ID of the caller, ActorBootstrapToken for an
	// enrollment by token, or ActorSystem for a change the gateway made
	// itself (or a caller that did not say who it acts for).
	Actor  string `json:"actor"`
	Action string `json:"action"`
	Target string `json:"target"`
	Result string `json:"result"`
	Detail string `json:"detail"`
}

// Actors that are not a SPIFFE ID.
const (
	ActorSystem         = "system"
	ActorBootstrapToken = "bootstrap-token"
)

// Results of an audited action.
const (
	ResultOK     = "ok"
	ResultDenied = "denied"
	ResultError  = "error"
)

// Actions the store records with its own changes. Callers may record others
// (an SVID issued, a request denied) with RecordAudit.
const (
	ActionDeviceCreate  = "device.create"
	ActionDeviceResume  = "device.resume" // suspended -> active
	ActionDeviceSuspend = "device.suspend"
	ActionDeviceRevoke  = "device.revoke"
	ActionDeviceLabels  = "device.set_labels"
	ActionDeviceDelete  = "device.delete"
	ActionTokenCreate   = "token.create"
	ActionTokenRedeem   = "token.redeem" // pending -> active
)

const (
	maxActorLen  = maxSPIFFEIDLen
	maxTargetLen = maxSPIFFEIDLen
	maxActionLen = 64
	// maxDetailLen bounds a detail; longer ones are cut, not refused, so
	// that a long error message never stops its own audit entry.
	maxDetailLen = 1024

	defaultPageSize = 100
	maxPageSize     = 1000
)

// WriteOption sets how a change is recorded in the audit log.
type WriteOption func(*writeOptions)

type writeOptions struct {
	actor  string
	detail string
}

// WithActor names who makes the change, normally the caller's SPIFFE ID.
// Without it the entry names ActorSystem.
func WithActor(actor string) WriteOption {
	return func(o *writeOptions) { o.actor = actor }
}

// WithDetail adds context to the audit entry of the change, such as the
// remote address of the request.
func WithDetail(detail string) WriteOption {
	return func(o *writeOptions) { o.detail = detail }
}

// options applies opts and checks the actor, so that a change with an actor
// that cannot be recorded is refused rather than recorded under another name.
func options(opts []WriteOption) (writeOptions, error) {
	var o writeOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.actor == "" {
		o.actor = ActorSystem
	}
	if err := checkAuditField("actor", o.actor, maxActorLen); err != nil {
		return o, err
	}
	return o, nil
}

func (o writeOptions) entry(now time.Time, action, target, detail string) AuditEntry {
	if o.detail != "" {
		if detail != "" {
			detail += "; "
		}
		detail += o.detail
	}
	return AuditEntry{
		Time:   now,
		Actor:  o.actor,
		Action: action,
		Target: target,
		Result: ResultOK,
		Detail: cleanDetail(detail),
	}
}

// checkAuditField refuses what an audit entry cannot hold faithfully: an
// actor or target cut short would name someone else.
func checkAuditField(field, v string, maxLen int) error {
	if len(v) > maxLen {
		return fmt.Errorf("%w: audit %s is longer than %d bytes", ErrInvalid, field, maxLen)
	}
	if !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
		return fmt.Errorf("%w: audit %s must be UTF-8 text without control characters", ErrInvalid, field)
	}
	return nil
}

// cleanDetail makes free text safe to store and print: valid UTF-8, control
// characters replaced, at most maxDetailLen bytes.
func cleanDetail(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) <= maxDetailLen {
		return s
	}
	cut := maxDetailLen - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// RecordAudit appends an entry for an action that changes nothing in the
// registry: an SVID issued, a request denied. ID and Time are the store's
// (a log whose times the caller picks could be made to lie); an empty Actor
// is ActorSystem. Action must be set and Result must be ok, denied or error.
// Durable before it returns.
func (s *Store) RecordAudit(e AuditEntry) error {
	if e.Action == "" {
		return fmt.Errorf("%w: audit action is required", ErrInvalid)
	}
	if err := checkAuditField("action", e.Action, maxActionLen); err != nil {
		return err
	}
	switch e.Result {
	case ResultOK, ResultDenied, ResultError:
	default:
		return fmt.Errorf("%w: audit result %s: must be ok, denied or error", ErrInvalid, quote(e.Result))
	}
	o, err := options([]WriteOption{WithActor(e.Actor)})
	if err != nil {
		return err
	}
	if err := checkAuditField("target", e.Target, maxTargetLen); err != nil {
		return err
	}
	return s.write(func(w *writeTxn) error {
		entry := o.entry(w.now, e.Action, e.Target, e.Detail)
		entry.Result = e.Result
		w.audit = append(w.audit, entry)
		return nil
	})
}

// ListAudit returns up to limit entries with an ID greater than after, in
// order (limit 0 means 100; at most 1000). Pass the last ID of a page to get
// the next one.
//
// The log is read from bbolt, not memdb: it only grows, is read rarely (by
// an operator), and would otherwise cost memory for its whole history.
// bbolt read transactions run beside the writer, so reading the log never
// holds up a change.
func (s *Store) ListAudit(after uint64, limit int) ([]AuditEntry, error) {
	if limit < 0 {
		return nil, fmt.Errorf("%w: limit %d is negative", ErrInvalidQuery, limit)
	}
	if limit == 0 {
		limit = defaultPageSize
	}
	limit = min(limit, maxPageSize)
	if s.closed.Load() {
		return nil, ErrClosed
	}
	var out []AuditEntry
	err := s.bolt.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		if b == nil {
			return errors.New("bucket audit missing")
		}
		if after == ^uint64(0) {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(auditKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			e, err := decodeAudit(k, v)
			if err != nil {
				return fmt.Errorf("audit entry %x: %w", k, err)
			}
			out = append(out, e)
		}
		return nil
	})
	if errors.Is(err, bbolt.ErrDatabaseNotOpen) {
		return nil, ErrClosed
	}
	if err != nil {
		return nil, fmt.Errorf("registry: read audit log: %w", err)
	}
	return out, nil
}

// auditRecord is the on-disk form of an AuditEntry (bucket "audit", key =
// big-endian ID), its own type for the reason given at record.
type auditRecord struct {
	ID     uint64    `json:"id"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Target string    `json:"target"`
	Result string    `json:"result"`
	Detail string    `json:"detail"`
}

func encodeAudit(e *AuditEntry) ([]byte, error) {
	b, err := json.Marshal(auditRecord(*e))
	if err != nil {
		return nil, fmt.Errorf("registry: encode audit entry: %w", err)
	}
	return b, nil
}

func decodeAudit(key, val []byte) (AuditEntry, error) {
	var r auditRecord
	if err := decodeStrict(val, &r); err != nil {
		return AuditEntry{}, err
	}
	if len(key) != 8 || binary.BigEndian.Uint64(key) != r.ID {
		return AuditEntry{}, fmt.Errorf("entry id %d does not match its key", r.ID)
	}
	e := AuditEntry(r)
	e.Time = e.Time.UTC()
	return e, nil
}

package registry

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// writeFixture writes n devices straight into a new store file, in one bbolt
// transaction (n fsynced Creates would take minutes).
func writeFixture(b *testing.B, n int) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "registry.db")
	s, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	now := time.Now().UTC()
	err = db.Update(func(tx *bbolt.Tx) error {
		bk := tx.Bucket(bucketDevices)
		for i := range n {
			name := fmt.Sprintf("dev-%06d", i)
			role := "sensor"
			if i%100 == 0 {
				role = "controller"
			}
			val, err := encode(&Device{
				Name: name, SPIFFEID: td + "/device/" + name,
				Labels: map[string]string{"role": role, "site": fmt.Sprintf("site-%d", i%10)},
				Status: StatusActive, CreatedAt: now, UpdatedAt: now,
			})
			if err != nil {
				return err
			}
			if err := bk.Put([]byte(name), val); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return path
}

func BenchmarkGetBySPIFFEID(b *testing.B) {
	const n = 100_000
	s, err := Open(writeFixture(b, n))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s/device/dev-%06d", td, (i*7919)%n)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.GetBySPIFFEID(ids[i%len(ids)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkGetBySPIFFEIDParallel(b *testing.B) {
	const n = 100_000
	s, err := Open(writeFixture(b, n))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			id := fmt.Sprintf("%s/device/dev-%06d", td, (i*7919)%n)
			if _, err := s.GetBySPIFFEID(id); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkCreate includes bbolt's fsync of every write.
func BenchmarkCreate(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "registry.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.Create(device(fmt.Sprintf("dev-%d", i), "role", "sensor")); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkOpen100k is a cold start: open the file and load 100k devices.
func BenchmarkOpen100k(b *testing.B) {
	path := writeFixture(b, 100_000)
	b.ReportAllocs()
	for b.Loop() {
		s, err := Open(path)
		if err != nil {
			b.Fatal(err)
		}
		if s.Len() != 100_000 {
			b.Fatalf("loaded %d devices", s.Len())
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

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

// BenchmarkListDevicesSelector pages through a registry of 100k devices
// (role=controller on 1%, site-0..site-9 evenly; see writeFixture).
func BenchmarkListDevicesSelector(b *testing.B) {
	const n = 100_000
	s, err := Open(writeFixture(b, n))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	cases := []struct {
		name string
		q    Query
		want int // devices on the page
	}{
		{"no-selector/first-page", Query{}, 100},
		{"no-selector/deep-page", Query{After: "dev-090000"}, 100},
		// role sorts first: walks the 1% of controllers, checks site.
		{"role=controller,site=site-0/first-page", Query{Selector: map[string]string{"site": "site-0", "role": "controller"}}, 100},
		// role sorts first: walks sensors (99%), keeps 1 in 10.
		{"role=sensor,site=site-3/first-page", Query{Selector: map[string]string{"site": "site-3", "role": "sensor"}}, 100},
		{"site=site-3/first-page", Query{Selector: map[string]string{"site": "site-3"}}, 100},
		{"site=site-3/deep-page", Query{Selector: map[string]string{"site": "site-3"}, After: "dev-090003"}, 100},
		{"site=site-3/limit-1000", Query{Selector: map[string]string{"site": "site-3"}, Limit: 1000}, 1000},
		{"status=active/deep-page", Query{Status: StatusActive, After: "dev-090000"}, 100},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				devs, _, err := s.ListDevices(tc.q)
				if err != nil {
					b.Fatal(err)
				}
				if len(devs) != tc.want {
					b.Fatalf("%d devices, want %d", len(devs), tc.want)
				}
			}
		})
	}
	// Every page of a 10k-device selection, pages of 1000.
	b.Run("site=site-3/all-pages", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			q, total := Query{Selector: map[string]string{"site": "site-3"}, Limit: 1000}, 0
			for {
				devs, next, err := s.ListDevices(q)
				if err != nil {
					b.Fatal(err)
				}
				total += len(devs)
				if next == "" {
					break
				}
				q.After = next
			}
			if total != n/10 {
				b.Fatalf("%d devices, want %d", total, n/10)
			}
		}
	})
}

// BenchmarkRedeemToken measures one redemption, bbolt's fsync included; the
// CreateToken of each iteration is outside the timer.
func BenchmarkRedeemToken(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "registry.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("dev-%d", i)
		tok, _, err := s.CreateToken(name, time.Hour, map[string]string{"role": "sensor"}, td+"/device/"+name, adminID)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := s.RedeemToken(tok, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRedeemTokenRefused measures a wrong token: no lock, no disk.
func BenchmarkRedeemTokenRefused(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "registry.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	tok, _, err := s.CreateToken("dev", time.Hour, nil, td+"/device/dev", adminID)
	if err != nil {
		b.Fatal(err)
	}
	wrong := flipSecret(tok)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.RedeemToken(wrong, time.Now()); err != ErrTokenInvalid {
			b.Fatal(err)
		}
	}
}

// BenchmarkImport10k imports 10k new devices into an empty store (20
// transactions of 500, fsync included).
func BenchmarkImport10k(b *testing.B) {
	const n = 10_000
	rows := make([]Device, n)
	for i := range rows {
		rows[i] = device(fmt.Sprintf("dev-%05d", i), "role", "sensor", "site", fmt.Sprintf("site-%d", i%10))
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, err := Open(filepath.Join(b.TempDir(), fmt.Sprintf("registry-%d.db", i)))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := s.Import(rows, adminID)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if len(res) != n || res[n-1].Result != ImportCreated {
			b.Fatalf("import: %d results, last %+v", len(res), res[len(res)-1])
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "devices/s")
}

package app

import (
	"reflect"
	"testing"
)

// TestExampleConfigIsTheDefaults holds ztgate.example.yaml to the code: it
// loads (every key known) and says exactly what DefaultConfig says.
func TestExampleConfigIsTheDefaults(t *testing.T) {
	got, err := LoadConfig("../../ztgate.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	off := false
	want.DecisionLog.Enabled = &off // written out in the file
	if len(got.ServerNames) == 0 {
		got.ServerNames = nil // [] in the file
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ztgate.example.yaml = %+v\nDefaultConfig  = %+v", got, want)
	}
}

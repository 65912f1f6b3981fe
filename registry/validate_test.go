package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"0", true},
		{"sensor-1", true},
		{"a.b_c", true},
		{"a.b.c", true},
		{"a-", true},
		{strings.Repeat("a", 63), true},
		{"admin-dev", true},

		{"", false},
		{"A", false},
		{"Sensor", false},
		{"-a", false},
		{".a", false},
		{"_a", false},
		{"a/b", false},
		{"a+b", false},
		{"a#b", false},
		{"+", false},
		{"#", false},
		{"a..b", false},
		{"..", false},
		{"a..", false},
		{strings.Repeat("a", 64), false},
		{"a b", false},
		{" a", false},
		{"a ", false},
		{"a\n", false},
		{"a\x00", false},
		{"é", false},
		{"aé", false},
		{"a$b", false},
		{"a*b", false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.name), func(t *testing.T) {
			err := ValidateName(tc.name)
			if tc.ok {
				if err != nil {
					t.Fatalf("ValidateName(%q) = %v, want nil", tc.name, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidName) {
				t.Fatalf("ValidateName(%q) = %v, want ErrInvalidName", tc.name, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, fmt.Sprintf("%q", tc.name)) {
				t.Errorf("error %q does not quote the name", msg)
			}
			if !strings.Contains(msg, "[a-z0-9._-]") || !strings.Contains(msg, `".."`) {
				t.Errorf("error %q does not state the rule", msg)
			}
		})
	}
}

func TestValidateNameQuoteIsBounded(t *testing.T) {
	long := strings.Repeat("X", 100000)
	err := ValidateName(long)
	if !errors.Is(err, ErrInvalidName) {
		t.Fatalf("got %v, want ErrInvalidName", err)
	}
	if len(err.Error()) > 400 {
		t.Fatalf("error message is %d bytes long", len(err.Error()))
	}
}

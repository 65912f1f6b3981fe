// Command printinfo prints what buildinfo reports, for buildinfo's tests.
package main

import (
	"fmt"

	"github.com/ztgate/ztgate/internal/buildinfo"
)

func main() {
	i := buildinfo.Get()
	fmt.Println(i.Version, i.Commit)
}

// Command ztgate is the Zero Trust MQTT gateway: `ztgate dev` and
// `ztgate serve` run it, the device and policy commands manage it.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

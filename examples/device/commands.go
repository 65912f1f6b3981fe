package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Commands are JSON documents published to devices/NAME/commands/...:
//
//	{"cmd":"set_interval","seconds":10}   change the telemetry interval
//	{"cmd":"ping","id":"abc"}             reply on devices/NAME/telemetry/pong
//
// Anything else is refused with an error the caller logs; a command can never
// stop the device.

const (
	maxCommandSize = 4096
	minInterval    = 100 * time.Millisecond
	maxInterval    = 24 * time.Hour
	maxIDLen       = 128
)

type actionKind int

const (
	actionSetInterval actionKind = iota + 1
	actionPing
)

// action is what the device does in response to one command.
type action struct {
	kind     actionKind
	interval time.Duration // set_interval
	id       string        // ping: echoed in the reply for correlation
}

type command struct {
	Cmd     string `json:"cmd"`
	Seconds *int64 `json:"seconds"`
	ID      string `json:"id"`
}

// parseCommand turns a command payload into an action. It has no side
// effects, so every way a command can be malformed is testable.
func parseCommand(payload []byte) (action, error) {
	if len(payload) > maxCommandSize {
		return action{}, fmt.Errorf("command too large: %d bytes (max %d)", len(payload), maxCommandSize)
	}
	var c command
	if err := json.Unmarshal(payload, &c); err != nil {
		return action{}, fmt.Errorf("command is not valid JSON: %w", err)
	}
	switch c.Cmd {
	case "set_interval":
		if c.Seconds == nil {
			return action{}, errors.New(`set_interval needs "seconds"`)
		}
		s := *c.Seconds
		if s < 1 || s > int64(maxInterval/time.Second) {
			return action{}, fmt.Errorf("set_interval: seconds must be between 1 and %d, got %d", int64(maxInterval/time.Second), s)
		}
		return action{kind: actionSetInterval, interval: time.Duration(s) * time.Second}, nil
	case "ping":
		if len(c.ID) > maxIDLen {
			return action{}, fmt.Errorf("ping: id longer than %d bytes", maxIDLen)
		}
		return action{kind: actionPing, id: c.ID}, nil
	case "":
		return action{}, errors.New(`command has no "cmd"`)
	default:
		return action{}, fmt.Errorf("unknown command %q", c.Cmd)
	}
}

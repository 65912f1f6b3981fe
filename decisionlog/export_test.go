package decisionlog

// SetRand replaces the sampling generator; call it before the Logger is used.
func SetRand(l *Logger, r func() uint64) { l.rnd = r }

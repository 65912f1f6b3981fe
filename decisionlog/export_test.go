package decisionlog

// SetRand replaces the sampling generator; call it before the Logger is used.
func SetRand(l *Logger, r func() uint64) { l.rnd = r }

// Flush ends the aggregation interval under way, as the ticker does.
func Flush(l *Logger) { l.flushAggregates() }

// SetAggregateLimits replaces the bounds of one interval's aggregation:
// the kinds tracked in all, per identity, and the bytes of their strings.
// Call it before the Logger is used.
func SetAggregateLimits(l *Logger, kinds, perIdentity, bytes int) {
	l.agg.maxKinds, l.agg.maxPerIdentity, l.agg.maxBytes = kinds, perIdentity, bytes
}

package ledger

// FlushPebble writes s's memtable to sstables, so a benchmark reads from disk as a long-running
// ledger does.
func FlushPebble(s *Pebble) error { return s.db.Flush() }

// CompactPebble flushes s and compacts everything into the bottom level.
func CompactPebble(s *Pebble) error {
	if err := s.db.Flush(); err != nil {
		return err
	}
	return s.db.Compact([]byte{0}, []byte{0xff, 0xff}, true)
}

//go:build race

package memlimit

// raceEnabled: the race detector keeps shadow memory outside the runtime, about twice the heap written.
const raceEnabled = true

//go:build !race

package clicktoken

const raceEnabled = false

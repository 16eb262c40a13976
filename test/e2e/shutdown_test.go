package e2e

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// TestSIGTERMWithStalledClientExitsZero: a client that stops sending half way through its
// request must not turn an orderly shutdown into a failure. The process drains for at most
// --shutdown-timeout, cuts what is left, and exits 0 as the contract says.
func TestSIGTERMWithStalledClientExitsZero(t *testing.T) {
	needBinary(t)
	e := newEnv(t)
	srv := e.start("--shutdown-timeout", "2s", "--admin-key", testAdminKey)
	key := testAdminKey

	// Two stalled requests: one announces a body and sends half of it, the other never
	// finishes its headers.
	var conns []net.Conn
	for _, req := range []string{
		fmt.Sprintf("POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n{\"type\":\"click\",", key),
		"GET /metrics?ad_ids=1 HTTP/1.1\r\nHost: x\r\n",
	} {
		c, err := net.Dial("tcp", srv.api)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	time.Sleep(200 * time.Millisecond) // let the server start reading them

	start := time.Now()
	srv.stop(t) // SIGTERM; requires exit status 0
	took := time.Since(start)
	t.Logf("exit 0 %v after SIGTERM with %d stalled clients", took.Round(time.Millisecond), len(conns))
	if took > 15*time.Second {
		t.Fatalf("shutdown took %v with a 2s grace", took)
	}
}

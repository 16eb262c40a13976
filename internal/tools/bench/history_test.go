package bench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestHistoryBatchRetriedAfterShedding: a history batch answered 503 or 429 is sent again (the
// server shed load; the batch is idempotent), and any other failure is not.
func TestHistoryBatchRetriedAfterShedding(t *testing.T) {
	var calls atomic.Int32
	var status atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if n := calls.Add(1); n <= 2 {
			w.WriteHeader(int(status.Load()))
			_, _ = w.Write([]byte(`{"error":{"code":"unavailable","message":"retry the batch"}}`))
			return
		}
		_, _ = w.Write([]byte(`{"accepted":1}`))
	}))
	defer srv.Close()
	tgt := &target{name: "test", base: srv.URL, client: srv.Client()}
	for _, st := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		calls.Store(0)
		status.Store(int32(st))
		var resp eventsResponse
		if err := postRetrying(context.Background(), tgt, []byte("{}\n"), &resp); err != nil || resp.Accepted != 1 || calls.Load() != 3 {
			t.Errorf("after two %d answers: err %v, accepted %d, %d calls; want the third call to succeed", st, err, resp.Accepted, calls.Load())
		}
	}
	calls.Store(0)
	status.Store(http.StatusBadRequest)
	var resp eventsResponse
	if err := postRetrying(context.Background(), tgt, []byte("{}\n"), &resp); err == nil || calls.Load() != 1 {
		t.Errorf("a 400 was retried or hidden: err %v, %d calls", err, calls.Load())
	}
}

package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// MaxBulkAds is the most ads one POST /api/v1/bulk/ads takes (the server's limit).
const MaxBulkAds = 100_000

// BulkAd is one line of POST /api/v1/bulk/ads: an ad and its id.
type BulkAd struct {
	ID string `json:"id"`
	AdInput
}

// BulkResult is the answer of BulkAds. Errors name the rejected ads by their index in the
// slice given to BulkAds.
type BulkResult struct {
	Accepted int
	Rejected int
	Errors   []EventError
}

// BulkAds upserts ads in one POST /api/v1/bulk/ads (NDJSON). Valid ads are stored even when
// others are rejected; the result lists the rejections. Like a PUT, a line is an upsert, so
// the request is retried after network errors, 429 and 5xx. More than MaxBulkAds ads, or an
// ad with an invalid id, is an error before anything is sent.
func (c *Client) BulkAds(ctx context.Context, ads []BulkAd) (*BulkResult, error) {
	if len(ads) == 0 {
		return &BulkResult{}, nil
	}
	if len(ads) > MaxBulkAds {
		return nil, fieldError("ads", fmt.Sprintf("%d ads; one request takes at most %d", len(ads), MaxBulkAds))
	}
	var body bytes.Buffer
	for i, ad := range ads {
		if err := validIDs(fmt.Sprintf("ads[%d].id", i), ad.ID); err != nil {
			return nil, err
		}
		line, err := json.Marshal(ad)
		if err != nil {
			return nil, err
		}
		body.Write(line)
		body.WriteByte('\n')
	}
	var ans batchAnswer
	if err := c.do(ctx, request{method: http.MethodPost, path: "/api/v1/bulk/ads", ctype: "application/x-ndjson", body: body.Bytes()}, &ans); err != nil {
		return nil, err
	}
	res := &BulkResult{Accepted: ans.Accepted, Rejected: ans.Rejected}
	for _, e := range ans.Errors {
		res.Errors = append(res.Errors, EventError{Index: e.Line - 1, Code: e.Code, Message: e.Message})
	}
	return res, nil
}

package client_test

import (
	"context"
	"errors"
	"testing"

	"github.com/adpulse/adpulse/client"
)

// TestBulkAds: valid ads are stored, a bad one is reported by its index, and bad input is
// refused before anything is sent.
func TestBulkAds(t *testing.T) {
	base := startTestServer(t, nil)
	ctx := context.Background()
	c := newClient(t, client.Config{BaseURL: base, Key: testAdminKey})
	if err := setupCatalog(ctx, c, 1); err != nil {
		t.Fatal(err)
	}
	res, err := c.BulkAds(ctx, []client.BulkAd{
		{ID: "bulk-1", AdInput: client.AdInput{CampaignID: "c1", LandingURL: "https://shop.example/b1", CatalogID: "cat1"}},
		{ID: "bulk-2", AdInput: client.AdInput{CampaignID: "c1", LandingURL: "ftp://shop.example/"}},
		{ID: "bulk-3", AdInput: client.AdInput{CampaignID: "c1", LandingURL: "https://shop.example/b3"}},
	})
	if err != nil || res.Accepted != 2 || res.Rejected != 1 || len(res.Errors) != 1 || res.Errors[0].Index != 1 {
		t.Fatalf("BulkAds: %+v, %v", res, err)
	}
	if ad, err := c.GetAd(ctx, "bulk-1"); err != nil || ad.CampaignID != "c1" || ad.CatalogID != "cat1" {
		t.Fatalf("GetAd bulk-1: %+v, %v", ad, err)
	}
	var fe *client.FieldError
	if _, err := c.BulkAds(ctx, []client.BulkAd{{ID: "bad id"}}); !errors.As(err, &fe) || fe.Field != "ads[0].id" {
		t.Errorf("bad id: %v, want a FieldError naming ads[0].id", err)
	}
	if _, err := c.BulkAds(ctx, make([]client.BulkAd, client.MaxBulkAds+1)); !errors.As(err, &fe) || fe.Field != "ads" {
		t.Errorf("too many ads: %v, want a FieldError naming ads", err)
	}
	if res, err := c.BulkAds(ctx, nil); err != nil || res.Accepted != 0 {
		t.Errorf("no ads: %+v, %v", res, err)
	}
}

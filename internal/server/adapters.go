package server

import (
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/feeds"
	"github.com/adpulse/adpulse/internal/ingest"
)

// catalogOwners adapts the catalog to the ownership questions of queries.
type catalogOwners struct{ c *catalog.Catalog }

func (o catalogOwners) AdCampaign(adID string) (string, bool) {
	ad, ok := o.c.Ad(adID)
	return ad.CampaignID, ok
}

func (o catalogOwners) AdAdvertiser(adID string) (string, bool) { return o.c.AdOwner(adID) }

func (o catalogOwners) CampaignAdvertiser(campaignID string) (string, bool) {
	return o.c.CampaignOwner(campaignID)
}

// catalogAds adapts the catalog's index, and the auto_cpc bids, to what ingest reads.
type catalogAds struct {
	c    *catalog.Catalog
	bids *feeds.Bids // nil: no auto-CPC pricing (a process without the ingest role)
}

func (c catalogAds) LookupAd(id string) (ingest.Ad, bool) {
	ad, ok := c.c.Ad(id)
	if !ok {
		return ingest.Ad{}, false
	}
	out := ingest.Ad{CampaignID: ad.CampaignID, AdvertiserID: ad.AdvertiserID, LandingURL: ad.LandingURL, CatalogID: ad.CatalogID, BidMicros: ad.CPCBidMicros}
	if c.bids != nil {
		out.ClickPriceMicros = c.bids.ClickPrice(ad)
	}
	return out, true
}

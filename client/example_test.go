package client_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/adpulse/adpulse/client"
)

// An ad server signs the click and impression URLs of each ad it serves, with the server's
// --click-secret and --public-url, without a request to adpulse.
func ExampleSigner() {
	signer, err := client.NewSigner(client.SignerConfig{
		Secret:  "k1:0123456789abcdef0123456789abcdef", // adpulse serve --click-secret
		BaseURL: "https://t.example.com",               // adpulse serve --public-url
		Now:     func() time.Time { return time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC) },
	})
	if err != nil {
		log.Fatal(err)
	}
	// Ad "ad-42" served as impression "imp-9" to user "u1", at an auction price of 0.40.
	urls, err := signer.URLs("ad-42", "imp-9", "u1", 400_000)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(urls.ClickURL)
	fmt.Println(urls.ImpressionURL)
	fmt.Println("clicks count until", urls.ExpiresAt.Format(time.RFC3339))
	// Output:
	// https://t.example.com/c/AQJrMaDXhdgGgLUYBWFkLTQyBWltcC05AnUxFNEeswq4hXg00X5fa3DQwA
	// https://t.example.com/i/AQJrMaDXhdgGgLUYBWFkLTQyBWltcC05AnUxFNEeswq4hXg00X5fa3DQwA
	// clicks count until 2026-11-21T11:00:00Z
}

// Events go to adpulse in batches; a resent batch counts once, so retrying is always safe.
func Example() {
	// An adpulse running in this process, for the example; use your deployment's URL.
	dir, _ := os.MkdirTemp("", "adpulse-example")
	defer os.RemoveAll(dir)
	baseURL, stop, err := startServer(dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	ctx := context.Background()
	c, err := client.New(client.Config{BaseURL: baseURL, Key: testAdminKey})
	if err != nil {
		log.Fatal(err)
	}
	if err := setupCatalog(ctx, c, 1); err != nil { // advertiser adv1, campaign c1, ad ad0
		log.Fatal(err)
	}

	events := []client.Event{
		{Type: "impression", AdID: "ad0", ImpressionID: "imp-1", UserID: "u1"},
		{Type: "impression", AdID: "ad0", ImpressionID: "imp-2"},
		{Type: "click", AdID: "ad0", ImpressionID: "imp-1", CPCMicros: 300_000},
		{Type: "add_to_cart", AdID: "ad0", ImpressionID: "imp-1", EventID: "cart-1"},
		{Type: "click", AdID: "ad0"}, // no impression id: refused before sending
	}
	res, err := c.SendEvents(ctx, events)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("accepted %d, duplicates %d, rejected %d\n", res.Accepted, res.Duplicates, res.Rejected)
	for _, e := range res.Errors {
		fmt.Println(e)
	}
	res, _ = c.SendEvents(ctx, events) // as if the first answer had been lost
	fmt.Printf("again: accepted %d, duplicates %d\n", res.Accepted, res.Duplicates)

	// Counts show within milliseconds; spend once billing has charged the click (well under
	// a second).
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		m, err := c.Metrics(ctx, client.MetricsQuery{AdIDs: []string{"ad0"}, Interval: time.Hour})
		if err != nil {
			log.Fatal(err)
		}
		if t := m.Series[0].Totals(); t.Clicks == 1 && t.SpendMicros > 0 {
			fmt.Printf("ad0: %d impressions, %d click, %d add_to_cart, spend %d micros\n",
				t.Impressions, t.Clicks, t.Interactions["add_to_cart"], t.SpendMicros)
			break
		}
	}
	// Output:
	// accepted 4, duplicates 0, rejected 1
	// event 4: invalid_argument: impression_id: is required for clicks: it is their idempotency key
	// again: accepted 0, duplicates 4
	// ad0: 2 impressions, 1 click, 1 add_to_cart, spend 300000 micros
}

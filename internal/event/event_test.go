package event

import (
	"math/rand/v2"
	"testing"
)

func TestValidID(t *testing.T) {
	long := make([]byte, 65)
	for i := range long {
		long[i] = 'a'
	}
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"1", true}, {"ad-1.x_y:z", true}, {string(long[:64]), true},
		{"", false}, {string(long), false}, {"a b", false}, {"a/b", false}, {"é", false}, {"a\x00", false},
	} {
		if got := ValidID(tc.id); got != tc.want {
			t.Errorf("ValidID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

func TestParseTypeName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		typ  Type
		name string
		ok   bool
	}{
		{"impression", TypeImpression, "", true},
		{"click", TypeClick, "", true},
		{"add_to_cart", TypeInteraction, "add_to_cart", true},
		{"a", TypeInteraction, "a", true},
		{"Add", 0, "", false}, {"1x", 0, "", false}, {"", 0, "", false},
		{"abcdefghijklmnopqrstuvwxyz012345", TypeInteraction, "abcdefghijklmnopqrstuvwxyz012345", true},
		{"abcdefghijklmnopqrstuvwxyz0123456", 0, "", false},
	} {
		typ, name, ok := ParseTypeName(tc.in)
		if typ != tc.typ || name != tc.name || ok != tc.ok {
			t.Errorf("ParseTypeName(%q) = %v %q %v", tc.in, typ, name, ok)
		}
	}
}

func TestKey(t *testing.T) {
	for _, tc := range []struct {
		e    Event
		want string
	}{
		{Event{Type: TypeClick, ImpressionID: "i1", EventID: "e1"}, "c:i1"},
		{Event{Type: TypeImpression, ImpressionID: "i1"}, "i:i1"},
		{Event{Type: TypeClick, ImpressionID: "i1", Invalid: ReasonBot}, "x22:i1"},
		{Event{Type: TypeImpression, ImpressionID: "i1", Invalid: ReasonBot}, "x12:i1"},
		{Event{Type: TypeClick, ImpressionID: "i1", Invalid: ReasonDatacenter}, "x23:i1"},
		{Event{Type: TypeClick, ImpressionID: "i1", Invalid: ReasonPreview}, "x26:i1"},
		{Event{Type: TypeClick, EventID: "e1"}, "e:e1"},
		{Event{Type: TypeInteraction, Name: "order", ImpressionID: "i1", EventID: "e1"}, "e:e1"},
		{Event{Type: TypeInteraction, Name: "order", ImpressionID: "i1"}, "t:order:i1"},
	} {
		if got := tc.e.Key(); got != tc.want {
			t.Errorf("%+v: Key() = %q, want %q", tc.e, got, tc.want)
		}
	}
}

// TestReasons pins the numbers and names of the invalid-traffic reasons: the numbers are
// stored in the event log and the names are the API's, so neither may ever change.
func TestReasons(t *testing.T) {
	for _, tc := range []struct {
		r    Reason
		n    uint8
		name string
	}{
		{ReasonNone, 0, ""},
		{ReasonExpired, 1, "expired"},
		{ReasonBot, 2, "bot"},
		{ReasonDatacenter, 3, "datacenter"},
		{ReasonBadUserAgent, 4, "bad_user_agent"},
		{ReasonPrefetch, 5, "prefetch"},
		{ReasonPreview, 6, "preview"},
		{ReasonFloodUser, 7, "flood_user"},
		{ReasonFloodIP, 8, "flood_ip"},
		{ReasonFloodDevice, 9, "flood_device"},
		{ReasonNoImpression, 10, "no_impression"},
		{ReasonTooFast, 11, "too_fast"},
		{ReasonManyAds, 12, "many_ads"},
		{Reason(13), 13, "reason_13"},
	} {
		if uint8(tc.r) != tc.n || tc.r.String() != tc.name {
			t.Errorf("reason %d = %q, want %d %q", uint8(tc.r), tc.r.String(), tc.n, tc.name)
		}
		if tc.r.Named() {
			if back, ok := ParseReason(tc.name); !ok || back != tc.r {
				t.Errorf("ParseReason(%q) = %v, %v", tc.name, back, ok)
			}
		}
	}
	if _, ok := ParseReason("reason_13"); ok {
		t.Error("ParseReason accepted an unknown name")
	}
}

func TestValidate(t *testing.T) {
	ok := Event{Type: TypeClick, AdID: "a", ImpressionID: "i"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mut   func(*Event)
		field string
	}{
		{func(e *Event) { e.AdID = "" }, "ad_id"},
		{func(e *Event) { e.AdID = "a b" }, "ad_id"},
		{func(e *Event) { e.ImpressionID = "" }, "impression_id"},
		{func(e *Event) { e.UserID = "u/1" }, "user_id"},
		{func(e *Event) { e.Type = TypeInteraction; e.Name = "Bad" }, "type"},
		{func(e *Event) { e.Type = 9 }, "type"},
		{func(e *Event) { e.PriceMicros = -1 }, "cpc_micros"},
		{func(e *Event) { e.DeviceID = "d 1" }, "device_id"},
		{func(e *Event) { e.SourceIP = "300.1.1.1" }, "ip"},
		{func(e *Event) { e.SourceIP = "fe80::1%eth0" }, "ip"},
	} {
		e := ok
		tc.mut(&e)
		err := e.Validate()
		fe, isFE := err.(*FieldError)
		if !isFE || fe.Field != tc.field {
			t.Errorf("%+v: Validate() = %v, want error on %s", e, err, tc.field)
		}
	}
}

func randString(r *rand.Rand) string {
	b := make([]byte, r.IntN(70))
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return string(b)
}

func TestCodecRoundTrip(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	for i := 0; i < 10000; i++ {
		e := Event{
			Type: Type(1 + r.IntN(3)), Invalid: Reason(r.IntN(3)),
			Time: r.Int64() - r.Int64(), RecvTime: r.Int64(), PriceMicros: r.Int64N(1e12),
			Name: randString(r), AdID: randString(r), CampaignID: randString(r), AdvertiserID: randString(r),
			ImpressionID: randString(r), EventID: randString(r), UserID: randString(r), CatalogID: randString(r),
		}
		if r.IntN(2) == 0 {
			e.SourceIP, e.DeviceID = randString(r), randString(r)
		}
		var got Event
		if err := got.Decode(e.AppendBinary(nil)); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if got != e {
			t.Fatalf("round trip: got %+v, want %+v", got, e)
		}
	}
}

// TestDecodeWithoutSourceFields: records written before the source address and device id
// existed end after the catalog id and still decode, with both empty.
func TestDecodeWithoutSourceFields(t *testing.T) {
	e := Event{Type: TypeClick, AdID: "a1", ImpressionID: "i1", CatalogID: "k", Time: 1, RecvTime: 2}
	old := e.AppendBinary(nil) // no source fields: the old layout exactly
	got := Event{SourceIP: "stale", DeviceID: "stale"}
	if err := got.Decode(old); err != nil || got != e {
		t.Fatalf("decode old layout: %+v, %v", got, err)
	}
	e.SourceIP, e.DeviceID = "192.0.2.1", "dev-1"
	b := e.AppendBinary(nil)
	if len(b) <= len(old) {
		t.Fatal("source fields not encoded")
	}
	if err := got.Decode(b[:len(b)-1]); err == nil {
		t.Fatal("a truncated trailer decoded")
	}
}

func FuzzDecode(f *testing.F) {
	e := Event{Type: TypeClick, AdID: "a1", ImpressionID: "i1", Time: 1, RecvTime: 2}
	f.Add(e.AppendBinary(nil))
	f.Add([]byte{1, 2, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		if e.Decode(b) != nil {
			return
		}
		// Whatever decodes must survive a round trip unchanged.
		var again Event
		if err := again.Decode(e.AppendBinary(nil)); err != nil || again != e {
			t.Fatalf("round trip of %x: %+v vs %+v (%v)", b, again, e, err)
		}
	})
}

func BenchmarkCodec(b *testing.B) {
	e := Event{Type: TypeClick, AdID: "ad-123456", CampaignID: "camp-77", AdvertiserID: "adv-5",
		ImpressionID: "imp-0123456789abcdef", UserID: "user-42", Time: 1763719205000000, RecvTime: 1763719205000000}
	buf := make([]byte, 0, EncodedSizeHint)
	var out Event
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = e.AppendBinary(buf[:0])
		if err := out.Decode(buf); err != nil {
			b.Fatal(err)
		}
	}
}

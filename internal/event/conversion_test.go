package event

import "testing"

func TestConversionCodec(t *testing.T) {
	c := Event{Type: TypeConversion, Name: "order", Time: 5, RecvTime: 6, EventID: "o1", UserID: "u1", CatalogID: "cat7", ValueMicros: 25_000_000}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b := c.AppendBinary(nil)
	if b[0] != codecVersionValue {
		t.Fatalf("version %d", b[0])
	}
	var got Event
	if err := got.Decode(b); err != nil || got != c {
		t.Fatalf("decode: %+v %v", got, err)
	}
	// Every other event keeps version 1, readable by stages built before conversions.
	click := Event{Type: TypeClick, AdID: "1", ImpressionID: "i"}
	if b := click.AppendBinary(nil); b[0] != codecVersion {
		t.Fatalf("click encoded as version %d", b[0])
	}
	// A version 2 record of another type, or a version 1 conversion, is corrupt.
	bad := append([]byte(nil), b...)
	bad[1] = byte(TypeClick)
	if err := got.Decode(bad); err != ErrCorrupt {
		t.Fatalf("v2 click: %v", err)
	}
	if err := got.Decode(b[:len(b)-1]); err != ErrCorrupt {
		t.Fatalf("truncated value: %v", err)
	}
	if got.Key() != "e:o1" {
		t.Fatalf("key %q", got.Key())
	}
}

// Package api holds the machine-readable HTTP contract of adpulse: openapi.yaml, an OpenAPI
// 3.1 description of every endpoint of the API listener, embedded in the binary and served
// as JSON at GET /openapi.json.
//
// Invariant: the document served is exactly openapi.yaml; the tests of internal/server check
// real requests and responses of every endpoint against it, so it cannot drift from the
// handlers unnoticed.
package api

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/adpulse/adpulse/internal/httpapi"
	"go.yaml.in/yaml/v4"
)

//go:embed openapi.yaml
var specYAML []byte

// YAML returns the OpenAPI document as written.
func YAML() []byte { return specYAML }

// JSON returns the OpenAPI document converted to JSON. The conversion runs once.
var JSON = sync.OnceValues(func() ([]byte, error) {
	// YAML 1.2 (go-yaml v4): only true and false are booleans, so a parameter named n stays
	// the string "n", as the OpenAPI loaders read it.
	var doc any
	if err := yaml.Unmarshal(specYAML, &doc); err != nil {
		return nil, fmt.Errorf("parse openapi.yaml: %w", err)
	}
	doc, err := jsonable(doc)
	if err != nil {
		return nil, err
	}
	return json.Marshal(doc)
})

// jsonable turns what the YAML decoder produced into values encoding/json accepts: mappings
// with keys that are not strings (200: as a response code) become objects with string keys.
func jsonable(v any) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			e, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			v[k] = e
		}
		return v, nil
	case map[any]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			switch k.(type) {
			case string, int, int64, uint64, bool:
			default:
				return nil, fmt.Errorf("openapi.yaml: mapping key %v of type %T", k, k)
			}
			e, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			out[fmt.Sprint(k)] = e
		}
		return out, nil
	case []any:
		for i, e := range v {
			e, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			v[i] = e
		}
		return v, nil
	}
	return v, nil
}

// Handler serves the document as JSON. It converts it when called, so a process that serves
// it pays the conversion at start, not on the first request.
func Handler() http.Handler {
	body, err := JSON()
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(body)
	})
}

package fastyaml_test

import (
	"errors"
	"fmt"

	"github.com/fqdngate/fqdngate/internal/fastyaml"
)

func ExampleParse() {
	data := []byte(`dns: {upstreams: [192.0.2.53]}
rules:
  - name: web
    to: [example.com]
  - name: ntp
    to: [pool.ntp.org]
`)
	d, err := fastyaml.Parse(data, "rules")
	if errors.Is(err, fastyaml.ErrOutside) {
		return // parse data with yaml.v3 instead
	}
	fmt.Println("rules at", d.Lazy.Line, d.Lazy.Column)
	for item := range d.Items() {
		// item is valid until the loop moves on: decode it here.
		fmt.Println(item.Content[1].Value, item.Content[3].Content[0].Value)
	}
	if errors.Is(d.Err(), fastyaml.ErrOutside) {
		return // parse data with yaml.v3 instead
	}
	// Output:
	// rules at 3 3
	// web example.com
	// ntp pool.ntp.org
}

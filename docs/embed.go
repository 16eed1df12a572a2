// Package docs carries the documents the fqdngate binary prints itself:
// docs/policy.md becomes the fqdngate-policy(5) manual page
// ("fqdngate man fqdngate-policy"), so the page never drifts from it.
package docs

import _ "embed"

// Policy is docs/policy.md.
//
//go:embed policy.md
var Policy string

package peek_test

import (
	"fmt"
	"strings"

	"github.com/fqdngate/fqdngate/internal/peek"
)

// The proxy reads a connection's first message into a pooled buffer,
// holding the bytes it had already read (a tunnel's early bytes); the
// bytes it gets back, all of them, are replayed upstream.
func ExampleReadFirst() {
	early := []byte("GET / HTTP/1.1\r\n")
	conn := strings.NewReader("Host: www.example.com:8080\r\n\r\n")

	buf := append(make([]byte, 0, 4096), early...)
	first, raw, err := peek.ReadFirst(conn, buf, 0)
	switch first.Protocol {
	case peek.TLS:
		fmt.Println(first.Hello.ServerName, err)
	case peek.HTTP:
		fmt.Println(first.Host, first.Port, len(raw), err)
	}
	// Output: www.example.com 8080 46 <nil>
}

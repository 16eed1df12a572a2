package peek_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/fqdngate/fqdngate/internal/peek"
)

// The transparent proxy reads one byte to choose a parser, then hands the
// parser that byte and the rest of the connection; the bytes it gets back
// (the sniffed byte included) go to NewConn for the splice.
func ExampleSniff() {
	conn := strings.NewReader("GET / HTTP/1.1\r\nHost: www.example.com:8080\r\n\r\n")

	var first [1]byte
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		return
	}
	r := io.MultiReader(bytes.NewReader(first[:]), conn)
	switch peek.Sniff(first[0]) {
	case peek.TLS:
		h, _, err := peek.ClientHello(r, 0)
		fmt.Println(h.ServerName, err)
	case peek.HTTP:
		host, port, buffered, err := peek.HTTPHost(r, 0)
		fmt.Println(host, port, len(buffered), err)
	}
	// Output: www.example.com 8080 46 <nil>
}

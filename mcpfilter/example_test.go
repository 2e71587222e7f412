package mcpfilter_test

import (
	"errors"
	"fmt"

	"github.com/amgateway/amg/mcpfilter"
)

func ExampleParse() {
	body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call",` +
		`"params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123","limit":100}}}`)
	b, err := mcpfilter.Parse(body, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	m := b.Messages[0]
	server, tool, _ := mcpfilter.SplitName(m.Name)
	fmt.Println(m.Kind, m.Method, server, tool)
	for a := m.Args.First(); a.Exists(); a = a.Next() {
		fmt.Println(a.Key(), a.Kind(), a.Any())
	}
	fmt.Printf("%s\n", m.Arguments)
	// Output:
	// request tools/call notion get_pages
	// workspace_id string ws_abc123
	// limit number 100
	// {"workspace_id":"ws_abc123","limit":100}
}

func ExampleParse_rejected() {
	// A second "limit" would win in most decoders, after the gateway had
	// checked the first.
	body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call",` +
		`"params":{"name":"notion__get_pages","arguments":{"limit":1,"limit":1000}}}`)
	_, err := mcpfilter.Parse(body, nil)
	var e *mcpfilter.Error
	if errors.As(err, &e) {
		fmt.Println(e.Reason, e.JSONRPCCode())
		fmt.Println(err)
	}
	// Output:
	// duplicate_key -32600
	// duplicate key "limit" at offset 106 (params.arguments)
}

func ExampleSplitName() {
	for _, name := range []string{"github__search_issues", "github__../admin", "github__\u0430dmin"} {
		server, tool, err := mcpfilter.SplitName(name)
		if err != nil {
			var e *mcpfilter.NameError
			errors.As(err, &e)
			fmt.Println(e.Reason, err)
			continue
		}
		fmt.Println(server, tool)
	}
	// Output:
	// github search_issues
	// path_traversal tool name "github__../admin" contains ".." at byte 8
	// non_ascii tool name "github__\u0430dmin" contains non-ASCII character U+0430 at byte 8
}

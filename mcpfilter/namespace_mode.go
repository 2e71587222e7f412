package mcpfilter

// Namespace says how the names agents see map to upstream names. The zero
// value namespaces every name with its server: server__tool for tools and
// prompts, amg:server:uri for resources. With Only set, the gateway fronts
// that one upstream and agents see its names unchanged, as they would
// talking to it directly; names are still validated.
type Namespace struct {
	Only string
}

// Split maps a tool or prompt name an agent used to its server and the
// upstream's own name.
func (n Namespace) Split(name string) (server, tool string, err error) {
	if n.Only == "" {
		return SplitName(name)
	}
	if err := ValidateName(name); err != nil {
		return "", "", err
	}
	return n.Only, name, nil
}

// Join is the name agents see for server's tool or prompt.
func (n Namespace) Join(server, tool string) string {
	if n.Only != "" {
		return tool
	}
	return JoinName(server, tool)
}

// SplitURI maps a resource URI an agent used to its server and the
// upstream's own URI.
func (n Namespace) SplitURI(uri string) (server, upstreamURI string, err error) {
	if n.Only == "" {
		return SplitResourceURI(uri)
	}
	if uri == "" {
		return "", "", errEmptyURI
	}
	return n.Only, uri, nil
}

// JoinURI is the URI agents see for server's resource uri.
func (n Namespace) JoinURI(server, uri string) string {
	if n.Only != "" {
		return uri
	}
	return JoinResourceURI(server, uri)
}

// Package policies holds the example roles, the YAML files beside this
// one, for `amg serve` to start from where no policy directory exists yet.
// The policy loader reads only *.yaml and *.yml files, so this file does
// not disturb the directory's use as a policy directory.
package policies

import "embed"

// Examples are the example role files, at the root of the file system.
//
//go:embed *.yaml
var Examples embed.FS

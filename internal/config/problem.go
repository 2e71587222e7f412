package config

import "github.com/amgateway/amg/internal/diag"

// Problem is one thing wrong with a config file. It never holds a secret
// value: messages name references, not what they resolve to.
type Problem = diag.Problem

// Problems is every problem found in a config file, in file order. It is
// the error Load, Parse and CheckSecrets return.
type Problems = diag.Problems

// Pos is a place in a config file.
type Pos = diag.Pos

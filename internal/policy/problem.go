package policy

import "github.com/amgateway/amg/internal/diag"

// Problem is one thing wrong with a role file.
type Problem = diag.Problem

// Problems is every problem a compilation found, in file order. It is the
// error Compile and LoadDir return.
type Problems = diag.Problems

// Pos is a place in a role file.
type Pos = diag.Pos

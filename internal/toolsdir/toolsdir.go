// Package toolsdir locates the directory scripts/setup installs the tests'
// tools into (npm packages, the Vault binary), so that later runs on the
// same machine reuse them.
package toolsdir

import (
	"fmt"
	"os"
	"path/filepath"
)

// Dir is $AMG_TOOLS_DIR, or ~/.cache/amg-tools without it, as
// scripts/setup decides.
func Dir() (string, error) {
	if dir := os.Getenv("AMG_TOOLS_DIR"); dir != "" {
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no AMG_TOOLS_DIR and no home directory: %w", err)
	}
	return filepath.Join(home, ".cache", "amg-tools"), nil
}

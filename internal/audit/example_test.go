package audit_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/amgateway/amg/internal/audit"
)

func ExampleRedactor_Redact() {
	// In the gateway the key comes from audit.LoadOrCreateKey.
	r := audit.NewRedactor(bytes.Repeat([]byte{7}, audit.KeySize))

	// Arguments as the MCP parser hands them over.
	dec := json.NewDecoder(strings.NewReader(`{"workspace_id":"ws_abc123","limit":100.0,"api_key":"sk-live-1","cursor":"c_42"}`))
	dec.UseNumber()
	var args map[string]any
	if err := dec.Decode(&args); err != nil {
		panic(err)
	}

	// "cursor" is one of the role's redaction globs; api_key is sensitive
	// by name.
	fmt.Println(string(r.Redact(args, []string{"cursor"})))
	fmt.Println(r.HMAC("sk-live-1"))
	// Output:
	// {"api_key":"hmac-sha256:05c6967e88294d11b1097c3025d5b13269e4e51f33eb53fedc620c5edfe0b9ce","cursor":"hmac-sha256:189905ac3c9adf14161d38f13214f7a729777e8b2bb03010014f83cd7475058c","limit":100.0,"workspace_id":"ws_abc123"}
	// hmac-sha256:05c6967e88294d11b1097c3025d5b13269e4e51f33eb53fedc620c5edfe0b9ce
}

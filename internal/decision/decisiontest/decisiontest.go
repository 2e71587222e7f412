// Package decisiontest holds the policy that the decision, Check and load
// benchmarks all measure, so their figures describe the same grant.
package decisiontest

// BenchPolicy is a role whose grant has twelve constraints of mixed
// matchers, one regular expression and one nested path.
const BenchPolicy = `
role: bench
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { in: ["ws_abc123", "ws_def456", "ws_ghi789"] }
          limit:        { lte: 100, gte: 1 }
          offset:       { gte: 0 }
          cursor:       { max_len: 256 }
          sort:         { in: ["created", "updated", "title"] }
          direction:    { ne: "random" }
          include_body: { eq: false }
          page_id:      { pattern: "pg_[A-Za-z0-9]{8,32}" }
          path:         { prefix: "/teams/", suffix: ".md" }
          filter.owner: { eq: "alice" }
          tags:         { each: {}, max_len: 10, min_len: 1 }
          query:        { min_len: 1, max_len: 4000 }
`

// BenchArgs are arguments BenchPolicy allows, without the long query the
// 2 KB request bodies add.
const BenchArgs = `{
  "workspace_id": "ws_abc123", "limit": 50, "offset": 0, "cursor": "c_0123456789abcdef",
  "sort": "updated", "direction": "desc", "include_body": false,
  "page_id": "pg_Ab12Cd34Ef56", "path": "/teams/platform/runbook.md",
  "filter": {"owner": "alice"}, "tags": ["ops", "oncall"], "query": "disk full"
}`

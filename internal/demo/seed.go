package demo

// The seed is fixed so that every `amg serve` starts from the same
// workspace and tests can name pages. Ids are "pg_" plus nine
// alphanumerics, owners and tags are lower-case, so that the example
// policies' patterns match them.
var seedWorkspaces = []struct {
	id, name string
	pages    []Page
}{
	{
		id:   "ws_abc123",
		name: "Acme Product",
		pages: []Page{
			{ID: "pg_roadmap26", Title: "Product roadmap 2026", Owner: "alice", Tags: []string{"planning", "roadmap"},
				Body: "Q1: ship the gateway beta.\nQ2: approvals in the web console.\nQ3: multi-region replicas.\nQ4: general availability."},
			{ID: "pg_launch01a", Title: "Launch checklist", Owner: "bob", Tags: []string{"launch", "checklist"},
				Body: "- [x] Security review\n- [ ] Pricing page\n- [ ] Announcement post\n- [ ] On-call rota for launch week"},
			{ID: "pg_onboard7x", Title: "Onboarding guide", Owner: "alice", Tags: []string{"onboarding", "howto"},
				Body: "Welcome! Read the roadmap first, then pick a starter issue labelled good-first-issue."},
			{ID: "pg_retro0425", Title: "Sprint retro notes", Owner: "carol", Tags: []string{"retro", "meetings"},
				Body: "Went well: faster reviews.\nTo improve: flaky integration tests.\nAction: carol owns the test quarantine list."},
			{ID: "pg_pricing9k", Title: "Pricing experiments", Owner: "bob", Tags: []string{"pricing", "experiments"},
				Body: "Experiment A: per-seat pricing. Experiment B: per-call pricing. Decision due end of quarter."},
		},
	},
	{
		id:   "ws_team",
		name: "Team wiki",
		pages: []Page{
			{ID: "pg_oncall5rt", Title: "On-call runbook", Owner: "dave", Tags: []string{"oncall", "runbook"},
				Body: "1. Acknowledge the page.\n2. Check the dashboard.\n3. Roll back the last deploy if error rates rose after it."},
			{ID: "pg_holiday26", Title: "Holiday calendar", Owner: "erin", Tags: []string{"hr"},
				Body: "Office closed 24 Dec to 1 Jan. Book leave two weeks ahead."},
			{ID: "pg_standup3m", Title: "Standup notes", Owner: "dave", Tags: []string{"meetings"},
				Body: "Monday: dave on call, erin reviewing the roadmap with alice."},
		},
	},
}

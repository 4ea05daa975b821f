"""The tests' kit, shared by every test module (which never import each other): `jobs` (ended statuses, polling with
a deadline), `app` (app arguments, a cluster of a module's own, API keys), `metrics` (the node's Prometheus samples),
`webhooks` (one webhook receiver), `loopback` (servers on loopback, a media origin), `fakes` (in-process doubles of
the deployments' handles), `cli` (the console script as a user runs it)."""

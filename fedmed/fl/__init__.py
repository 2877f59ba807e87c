"""fedmed.fl: the federation on Flower (the only package of fedmed that imports flwr).

Data flows down: the launcher assembles a site side and a server side, which talk only through
the wire. `site/` never imports `server/` nor the reverse; `wire/` imports neither
(tests/test_architecture.py holds the import graph to this, with no cycles anywhere).

- `plan`: the run plan (`RunPlan`, `make_plan`): the config's sections and what the coordinator adds; seeds
- `enrolment`: identity keys, the roster (with every party's audit key)
- `wire/`: what both sides say: `messages` (types, records, hello, refusal), `instructions`, `layout`
  (tensors <-> one vector), `replies` (reply fields as release manifests name them), `secagg`
  (secure_agg messages in records, the round's SecAggConfig), `transcript` (the signed round
  transcript), `tensors` (what the audit logs call a transmitted tensor), `sizes`, `components`
- `site/`: one hospital: `settings`, `runtime` (policy, data, model, fingerprint), `session` (one
  message's state), `admission` (policy and budget before training or evaluating), `privacy` (its
  ledger and DP training), `training`, `release` (the payload and the release manifest), `masking`
  (secure aggregation, the transcript checks), `releases` (what it agreed to have unmasked, what
  it answered), `journal` (its audit log, witnessing), `pipeline`, `client_app`, `runner`
- `server/`: the coordinator: `exchange`, `journal` (its audit log, witnessing), `validate`,
  `aggregation` (the aggregator seam; plain FedAvg weighting), `secure`, `strategy` (the server
  optimizer step), `rounds`, `run_dir`, `plots`, `server_app`
- `launch/`: the only place that assembles both: `simulation`, `inprocess`, `deployment`,
  `credentials`, `baseline`
"""

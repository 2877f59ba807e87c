"""fedmed.fl: the federation on Flower (the only package of fedmed that imports flwr).

Data flows down: the launcher assembles a site side and a server side, which talk only through
the wire. `site/` never imports `server/` nor the reverse; `wire/` imports neither.

- `plan`: the run plan (`RunPlan`, `make_plan`): the config's sections and what the coordinator adds; seeds
- `enrolment`: identity keys and the roster of secure aggregation
- `wire/`: what both sides say (`messages`, `instructions`, `layout`, `secagg`, `tensors`, `sizes`, `components`)
- `site/`: one hospital (`settings`, `runtime`, `session`, `admission`, `privacy`, `training`, `release`,
  `masking`, `journal`, `pipeline`, `client_app`, `runner`)
- `server/`: the coordinator (`exchange`, `journal`, `validate`, `aggregation`, `secure`, `strategy`,
  `rounds`, `run_dir`, `plots`, `server_app`)
- `launch/`: the only place that assembles both (`simulation`, `inprocess`, `deployment`, `credentials`,
  `baseline`), and a consortium's deployment: `provision` (its kits, `kits`, `kit_texts`), `processes`
  (what a command owns), `flower_logs` (why Flower stopped), `study_cost` (a planned study's ε per site)
"""

"""fedmed.fl: the federation on Flower (the only package of fedmed that imports flwr).

- `plan`: the run plan (`RunPlan`), seeds;  `protocol`: message types, records, `Instructions`
- `serde`: trainable tensors <-> one flat vector, message sizes;  `validate`: refusing bad updates
- `aggregate`: sample-weighted FedAvg of updates;  `state`: run directory, checkpoints, resumption
- `client_app` / `site`: a site's pipeline and its own settings;  `rounds` / `server_app`: the server
- `simulation` (Flower's simulation engine), `deployment` (SuperLink, SuperNodes, TLS, authentication)
- `inprocess`: a Grid that runs ClientApps in this process (tests)
"""

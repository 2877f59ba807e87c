"""One hospital's side of the federation (never imports `fedmed.fl.server`).

- `settings`: what the site decides itself (`SiteSettings`), from its command line or the simulation
- `runtime`: its policy, data, model and starting weights, built once per process (`SiteRuntime`)
- `session`: one message's explicit state, handed to every step (`SiteSession`)
- `admission`: the instructions against the policy and the privacy budget, before training
- `privacy`: the site's DP in a round: its ledger, the projection, DP training (`SitePrivacy`)
- `training`: local training (plain or DP, by the recipe; optimizer state kept; FedProx's term) and the update
- `release`: the outgoing update against the policy's payload rules, before masking
- `masking`: the secure-aggregation stages and the masked update (`SecureRelease`)
- `journal`: the site's audit log, one run per message
- `pipeline`: each message as one pass down those steps
- `client_app`: the ClientApp (`app`, `make_client_app`)
- `runner`: the SuperNode task runner that runs tasks with the site's own installed fedmed
"""

"""The coordinator's side of the federation (never imports `fedmed.fl.site`).

- `exchange`: send messages to the sites by name and collect the replies, bytes and failures
- `journal`: the server's audit log, fed by the exchange
- `validate`: refusing a bad plain update before it can touch the model
- `aggregation`: the `Aggregator` seam, plain FedAvg weighting and the robust rules (`PlainAggregator`)
- `secure`: secure aggregation's server side (`SecureAggregator`): only the sum is unmasked
- `strategy`: the server's optimizer step on the aggregate update (Flower's rules: `make_strategy`)
- `rounds`: the run as one pass down: greet, choose, collect, step, evaluate, checkpoint
- `run_dir`: the run directory: checkpoints, metrics, resumption
- `plots`: `dice.png` of a run
- `server_app`: the ServerApp (`app`, `make_server_app`)
"""

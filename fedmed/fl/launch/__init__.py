"""The only place that assembles both sides of a federation (site and server).

- `simulation`: a simulated federation's sites and plan (`prepare_simulation`), run on Ray (`simulate`)
- `inprocess`: a Grid delivering messages to ClientApps in this process (`run_inprocess`: tests, sweeps)
- `deployment`: Flower's deployment engine as processes: the coordinator's SuperLink, a site's SuperNode
- `credentials`: TLS certificates and SuperNode authentication keys for trials and tests
- `baseline`: the centralized baseline on the union of a simulation's sites, same budget
"""

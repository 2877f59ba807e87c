"""The texts `fedmed provision` writes into the kits: each party's README and one command, the site's
pinned policy, the first study's config."""

from __future__ import annotations

from fedmed.fl.launch.kits import CoordinatorKit, SiteKit


def site_command(kit_dir: str = ".", data: str = "/path/to/your/dataset") -> str:
    """The one command a site runs (from its kit folder by default)."""
    policy = "policy.toml" if kit_dir == "." else f"{kit_dir}/policy.toml"
    return f"fedmed client --kit {kit_dir} --data {data} --policy {policy}"


def coordinator_command(kit_dir: str = ".", out: str = "runs/STUDY") -> str:
    """The one command the coordinator runs for a study (from its kit folder by default)."""
    return f"fedmed server --kit {kit_dir} --out {out}"


def site_readme(kit: SiteKit) -> str:
    return f"""# {kit.name}: a site of the {kit.consortium} consortium

Your kit from the consortium's `fedmed provision`. Keep this folder at your site: `node.key`,
`identity.key` and `audit.key` are private (mode 0600) and never leave it.

1. Check you hold the same roster as every other party: compare the digest this prints with the one
   the coordinator announced, by phone or on paper (never through the federation):

       fedmed enrol show roster.json

2. Join the federation (it runs until you stop it; Ctrl-C or SIGTERM end it with code 0):

       {site_command()}

`--data` is your own dataset folder (check it first with `fedmed data check DIR`). `policy.toml` is
the built-in `strict` policy with the consortium's server pinned by its certificate: make it stricter
if you wish, never looser than you mean. Your privacy ledgers, audit log and split live in
`~/.fedmed/sites/{kit.name}/` (`--state-dir`); `fedmed privacy status ~/.fedmed/sites/{kit.name}`
shows what your data has spent, per study and in total.

| file | what |
| --- | --- |
| `kit.json` | the consortium, your site's name ({kit.name}), the server's address ({kit.superlink}) |
| `ca.pem` | the consortium's CA: the server's certificate must be signed by it |
| `node.key`, `node.key.pub` | your SuperNode's key: the server lets in only registered keys (private) |
| `identity.key` | your identity in secure aggregation (private) |
| `audit.key` | signs your audit log; the roster anchors its public key (private) |
| `roster.json` | the enrolled sites' identity keys and every party's audit key |
| `policy.toml` | your privacy policy |
"""


def coordinator_readme(kit: CoordinatorKit) -> str:
    return f"""# The coordinator of the {kit.consortium} consortium

Your kit from `fedmed provision`. `tls/server.key` and `audit.key` are private (mode 0600). Each
site receives its own folder; nothing here is any site's secret.

1. Announce the roster's digest to every site, by phone or on paper:

       fedmed enrol show roster.json

2. Run a study (`federation.toml`; its `federation.name` is the study's id in every ledger and log):

       {coordinator_command()}

   It serves on {kit.listen} and ends when the study does. Another study: `--config other.toml`;
   after a failure, the same command with `--resume` continues from the last completed round.

| file | what |
| --- | --- |
| `kit.json` | the consortium and where the SuperLink listens |
| `federation.toml` | the study's config |
| `tls/ca.pem`, `tls/server.pem`, `tls/server.key` | the SuperLink's certificate and key |
| `site-keys/<site>.pub` | the sites' SuperNode keys: only they may join |
| `roster.json` | the enrolled sites' identity keys and every party's audit key |
| `audit.key` | signs the server's audit log (private) |
"""


def site_policy(consortium: str, certificate_sha256: str) -> str:
    return f"""# This site's policy: the built-in `strict`, with the {consortium} consortium's server pinned by
# its certificate's SHA-256 (`fedmed provision` wrote it). Check a study against it:
#     fedmed policy check policy.toml --config federation.toml
name = "strict-{consortium}"
extends = "strict"

[servers]
allowed = ["sha256:{certificate_sha256}"]
"""


def default_federation(consortium: str, num_sites: int, listen: str) -> str:
    return f"""# The first study of the {consortium} consortium (`fedmed provision` wrote it; edit it, or name your
# own as `federation` in consortium.toml). Every key and its default: the README's "Configuration".
# Check it against the sites' policy first: fedmed policy check strict --config federation.toml

[federation]
name = "{consortium}-study-1"   # the study's id in every ledger and audit log
rounds = 5
min_clients = {num_sites}

[model]
arch = "tiny"
method = "fedmsa"

[secure_aggregation]
enabled = true

[privacy]
mode = "sample"
epsilon = 8.0

[server]
address = "{listen}"
"""

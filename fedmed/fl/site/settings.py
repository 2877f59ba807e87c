"""A site's own settings: what it decides itself, never the server.

`SiteSettings` come from the site (`fedmed client`'s command line, or the simulation's list of
sites): its name (the roster label of its identity key when it is enrolled, else its data folder's
name), the data folder, its own copy of a SAM checkpoint, its policy, its device, its identity key
and roster, its state and audit folders and audit key, and
the server as it sees its own connection (address dialled, TLS, certificate presented) — which is
what its policy's server allowlist is checked against (`own_server`). Which of its cases train,
validate and test is the site's too: the split is drawn once and kept in its state directory
(`<state_dir>/splits/`), never derived from anything the server sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context

from policies import ServerInfo

SIMULATION_SERVER = "localhost:simulation"  # the server of a one-process simulation (no transport)
UNKNOWN_SERVER = "unknown"  # a deployed site that was not told which server it dialled


@dataclass(frozen=True)
class SiteSettings:
    """What a site decides itself. `partition` picks one site of a multi-site `data` (simulation)."""

    data: str = "synthetic"
    name: str | None = None  # the site's name (its enrolment's); None: its data's (folder, `site-<k>`)
    partition: int | None = None
    num_sites: int = 3  # sites of the synthetic federation
    samples_per_site: int | None = None  # synthetic pictures a site (default: the generator's)
    data_seed: int = 0  # the synthetic generator's seed: the site's own, never the server's
    checkpoint: str | None = None
    policy: str | None = None  # a built-in policy name or a TOML file; None: no policy (unit tests of the loop)
    device: str = "auto"
    audit_dir: str | None = None  # None: no audit log
    identity: str | None = None  # the site's Ed25519 identity key file (secure aggregation)
    roster: str | None = None  # the enrolment roster file it trusts (fedmed.fl.enrolment)
    state_dir: str | None = None  # private: <state_dir>/<site>/ holds its privacy ledger and audit key
    audit_key: str | None = None  # its audit log's private key (a provisioned kit's); None: <state_dir>/<site>/
    server_address: str | None = None  # the server as this site dialled it (its policy's allowlist)
    server_tls: bool | None = None  # whether that connection is TLS (None: in-process, no transport)
    server_certificate_sha256: str | None = None  # the certificate its TLS handshake presented

    def own_server(self) -> ServerInfo:
        """The server as this site sees its own connection to it (TLS None: no transport, not checked)."""
        return ServerInfo(address=self.server_address or UNKNOWN_SERVER, tls=self.server_tls,
                          certificate_sha256=self.server_certificate_sha256)


def settings_from_node_config(context: Context) -> SiteSettings:
    """A deployed site's settings, from its SuperNode's `--node-config` (set by `fedmed client`)."""
    config = context.node_config
    data = config.get("data-dir")
    if not data:
        raise ValueError("this SuperNode has no 'data-dir' in its --node-config; start it with `fedmed client`")

    def optional(key: str) -> str | None:
        return str(config[key]) if config.get(key) else None

    return SiteSettings(data=str(data), checkpoint=optional("checkpoint"), policy=optional("policy"),
                        device=str(config.get("device", "auto")), audit_dir=optional("audit-dir"),
                        identity=optional("identity-key"), roster=optional("roster"))

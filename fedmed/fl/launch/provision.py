"""`fedmed provision`: every credential of a consortium from one `consortium.toml`, one kit per party.

    name = "liver"                                   # the consortium
    sites = ["hospital-a", "hospital-b", "hospital-c"]
    federation = "federation.toml"                   # optional: the first study's config
    [server]
    address = "coordinator.example.org:9092"         # what the sites dial
    hosts = ["10.0.0.5"]                             # more names/addresses the certificate covers
    listen = "0.0.0.0:9092"                          # optional: where the SuperLink listens [address]

    result = provision(ConsortiumSpec.load("consortium.toml"), Path("kits"))

writes (in the spirit of NVFlare's provision)

    kits/ca/ca.key, ca.pem     the consortium's CA (the provisioner's: keep it offline; it adds sites)
    kits/provision.json        the public record: every party's public keys, the certificate's hosts and
                               SHA-256, the roster digest; what a later run compares against
    kits/coordinator/, kits/<site>/    one kit per party (`fedmed.fl.launch.kits`)

A site's kit holds its SuperNode key (OpenSSH EC P-384), identity key (Ed25519, secure aggregation)
and audit key (Ed25519), the CA certificate, the roster and a `strict` policy pinned to the server's
certificate; the coordinator's the SuperLink's certificate (subjectAltNames: the address's host and
`hosts`) and key, the sites' public SuperNode keys, its audit key, the roster and the study config.
The roster enrols the sites' identity keys and anchors every party's audit key. Private keys are
made in their party's kit (mode 0600) and nowhere else.

Run again after editing consortium.toml, it issues only what changed: a new site gets a kit and
joins the roster (so every roster.json changes), a removed site leaves it, new hosts re-issue the
server certificate (and so the pinned policies); every other key stays. A party whose kit was handed
out and removed from `kits/` gets its changed public files written into a fresh folder.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from audit import PartyKey
from fedmed.config import ConfigError, load_federation_config
from fedmed.fl.enrolment import Roster, create_identity, load_identity
from fedmed.fl.launch.credentials import Authority, certificate_hosts, make_site_key, private_pem, write_private
from fedmed.fl.launch.deployment import split_address
from fedmed.fl.launch.kits import KIT_FILE, CoordinatorKit, SiteKit
from fedmed.fl.launch.kit_texts import coordinator_readme, default_federation, site_policy, site_readme
from fedmed.fl.wire.tensors import SERVER_PARTY

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

RECORD_FILE = "provision.json"
COORDINATOR = "coordinator"
_RESERVED = {COORDINATOR, "ca", SERVER_PARTY}
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CA_DAYS = 3650
RENEW_DAYS = 30  # a server certificate this close to expiry is issued anew


class ProvisionError(ValueError):
    """A consortium.toml or provision folder that cannot be provisioned (names the file and the problem)."""


class ServerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="HOST:PORT the sites dial")
    hosts: list[str] = Field(default_factory=list, description="more names and addresses the certificate covers")
    listen: str | None = Field(default=None, description="HOST:PORT the SuperLink listens on [address]")

    @field_validator("address", "listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value


class ConsortiumSpec(BaseModel):
    """consortium.toml: the consortium's name, its server, its sites, optionally its first study."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_SITE_NAME.pattern)
    sites: list[str] = Field(min_length=2)
    server: ServerSpec
    federation: Path | None = Field(default=None, description="a federation.toml (relative to this file)")
    days: int = Field(default=365, ge=1, description="the server certificate's validity")

    @field_validator("sites")
    @classmethod
    def _sites(cls, sites: list[str]) -> list[str]:
        problems = [f"{s!r} is not a site name (letters, digits, '.', '_', '-'; at most 64)" for s in sites
                    if not _SITE_NAME.fullmatch(s)]
        problems += [f"{s!r} is reserved" for s in sites if s.lower() in _RESERVED]
        problems += [f"{s!r} is listed twice" for s in sorted(set(sites)) if sites.count(s) > 1]
        if problems:
            raise ValueError("; ".join(problems))
        return sites

    @property
    def certificate_hosts(self) -> list[str]:
        """The address's host first, then `hosts`, then the host the coordinator's own `flwr` dials (the
        listening host, or localhost when it listens on every interface), each once."""
        listen = split_address(self.server.listen or self.server.address)[0]
        local = "localhost" if listen in ("0.0.0.0", "::") else listen
        return list(dict.fromkeys([split_address(self.server.address)[0], *self.server.hosts, local]))

    @classmethod
    def load(cls, path: str | Path) -> ConsortiumSpec:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            spec = cls.model_validate(data)
        except (OSError, UnicodeDecodeError) as error:
            raise ProvisionError(f"{path}: cannot read it ({error})") from None
        except tomllib.TOMLDecodeError as error:
            raise ProvisionError(f"{path}: not valid TOML: {error}") from None
        except ValidationError as error:
            problems = "\n".join(f"  - {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ProvisionError(f"{path}: not a valid consortium file:\n{problems}") from None
        if spec.federation is not None:
            spec = spec.model_copy(update={"federation": (path.parent / spec.federation).resolve()})
        return spec


class PartyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audit: str  # Ed25519 public key (hex) of its audit log
    identity: str | None = None  # a site's Ed25519 identity (hex)
    node_key: str | None = None  # a site's SuperNode public key (OpenSSH line)


class ProvisionRecord(BaseModel):
    """provision.json: public only; what the next run keeps and compares against."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["fedmed-provision/1"] = "fedmed-provision/1"
    consortium: str
    server: PartyRecord
    sites: dict[str, PartyRecord]
    hosts: list[str]
    certificate_sha256: str
    roster_digest: str


Status = Literal["new", "changed", "removed"]


@dataclass
class ProvisionResult:
    """What a run of `provision` wrote: each changed file with its party, the roster digest, the kits."""

    out: Path
    roster_digest: str
    kits: dict[str, Path]  # party (COORDINATOR or a site) -> its kit folder
    changes: list[tuple[str, Path, Status]] = field(default_factory=list)  # (party, file, status)

    def changed(self, party: str) -> list[Path]:
        return [path for who, path, _ in self.changes if who == party]


class _Writer:
    """Writes a party's files, each only when its bytes change, and records what it wrote."""

    def __init__(self, result: ProvisionResult):
        self.result = result

    def write(self, party: str, path: Path, data: bytes | str, *, private: bool = False) -> None:
        data = data.encode() if isinstance(data, str) else data
        old = path.read_bytes() if path.is_file() else None
        if old == data:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if private:
            write_private(path, data)
        else:
            path.write_bytes(data)
        self.result.changes.append((party, path, "new" if old is None else "changed"))

    def made(self, party: str, *paths: Path) -> None:
        self.result.changes += [(party, path, "new") for path in paths]

    def remove(self, party: str, path: Path) -> None:
        if path.is_file():
            path.unlink()
            self.result.changes.append((party, path, "removed"))


def _record(out: Path, spec: ConsortiumSpec) -> ProvisionRecord | None:
    path = out / RECORD_FILE
    if not path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise ProvisionError(f"{out} holds files but no {RECORD_FILE}: give an empty or new folder")
        return None
    try:
        record = ProvisionRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        raise ProvisionError(f"{path}: not a provision record ({error})") from None
    if record.consortium != spec.name:
        raise ProvisionError(f"{out} provisions the consortium {record.consortium!r}, not {spec.name!r}")
    return record


def _authority(out: Path, record: ProvisionRecord | None, spec: ConsortiumSpec, writer: _Writer) -> Authority:
    key, certificate = out / "ca" / "ca.key", out / "ca" / "ca.pem"
    if record is None:
        authority = Authority.create(f"{spec.name} consortium CA", days=CA_DAYS)
        authority.save(key, certificate)
        writer.made("ca", key, certificate)
        return authority
    try:
        return Authority.load(key, certificate)
    except (OSError, ValueError) as error:
        raise ProvisionError(f"{out / 'ca'}: the consortium's CA cannot be read ({error}); it signs the server's "
                             "certificate") from None


def _server_certificate(kit: CoordinatorKit, authority: Authority, spec: ConsortiumSpec,
                        record: ProvisionRecord | None, writer: _Writer) -> str:
    """The SuperLink's certificate, issued anew only when missing, for other hosts, from another CA or
    near its end; returns its SHA-256."""
    files, hosts = kit.tls, spec.certificate_hosts
    current = x509.load_pem_x509_certificate(files.certificate.read_bytes()) if files.certificate.is_file() else None
    if current is None and record is not None and not files.key.is_file() and sorted(record.hosts) == sorted(hosts):
        return record.certificate_sha256  # the coordinator's kit was handed out: nothing of it changes
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=RENEW_DAYS)
    if (current is None or not files.key.is_file() or sorted(certificate_hosts(current)) != sorted(hosts)
            or not authority.issued(current) or current.not_valid_after_utc < soon):
        key, current = authority.issue_server(hosts, days=spec.days)
        writer.write(COORDINATOR, files.key, private_pem(key), private=True)
        writer.write(COORDINATOR, files.certificate, current.public_bytes(serialization.Encoding.PEM))
    writer.write(COORDINATOR, files.ca, authority.certificate.public_bytes(serialization.Encoding.PEM))
    return hashlib.sha256(current.public_bytes(serialization.Encoding.DER)).hexdigest()


def _check(party: str, path: Path, expected: str, actual) -> None:
    if path.is_file() and actual(path) != expected:
        raise ProvisionError(f"{path}: not the key provisioned for {party} ({RECORD_FILE} holds another); "
                             "restore the kit's own key or provision into a new folder")


def _site_keys(name: str, kit: SiteKit, known: PartyRecord | None, writer: _Writer) -> PartyRecord:
    """A site's public keys: made in its kit when it is new, else the record's (checked against its kit)."""
    if known is None:
        kit.directory.mkdir(parents=True, exist_ok=True)
        if any(p.exists() for p in (kit.key, kit.identity, kit.audit_key)):
            raise ProvisionError(f"{kit.directory} already holds keys of an unrecorded site: move it away")
        _private, public = make_site_key(kit.key)
        identity = create_identity(kit.identity).hex()
        audit = PartyKey.load_or_create(kit.audit_key).public_bytes.hex()
        writer.made(name, kit.key, public, kit.identity, kit.audit_key)
        return PartyRecord(audit=audit, identity=identity, node_key=public.read_text().strip())
    _check(name, kit.identity, known.identity, lambda p: load_identity(p).public.hex())
    _check(name, kit.audit_key, known.audit, lambda p: PartyKey.load(p).public_bytes.hex())
    _check(name, kit.key.with_name("node.key.pub"), known.node_key, lambda p: p.read_text().strip())
    return known


def _coordinator_keys(kit: CoordinatorKit, known: PartyRecord | None, writer: _Writer) -> PartyRecord:
    if known is None:
        if kit.audit_key.exists():
            raise ProvisionError(f"{kit.audit_key}: an unrecorded audit key: move the folder away")
        kit.directory.mkdir(parents=True, exist_ok=True)
        audit = PartyKey.load_or_create(kit.audit_key).public_bytes.hex()
        writer.made(COORDINATOR, kit.audit_key)
        return PartyRecord(audit=audit)
    _check(COORDINATOR, kit.audit_key, known.audit, lambda p: PartyKey.load(p).public_bytes.hex())
    return known


def _federation_text(spec: ConsortiumSpec, kit: CoordinatorKit) -> str | None:
    """The study config to write: the one given (checked), else the defaults when the kit has none."""
    if spec.federation is None:
        return None if kit.config.is_file() else default_federation(spec.name, len(spec.sites), kit.listen)
    try:
        config = load_federation_config(spec.federation)
    except ConfigError as error:
        raise ProvisionError(str(error)) from None
    if config.federation.min_clients > len(spec.sites):
        raise ProvisionError(f"{spec.federation}: federation.min_clients = {config.federation.min_clients}, but "
                             f"the consortium has {len(spec.sites)} sites")
    return spec.federation.read_text(encoding="utf-8")


def provision(spec: ConsortiumSpec, out: str | Path) -> ProvisionResult:
    """Provision (or update) the consortium `spec` in `out`; see the module docstring."""
    out = Path(out).expanduser().resolve()
    record = _record(out, spec)
    listen = spec.server.listen or spec.server.address
    coordinator = CoordinatorKit(consortium=spec.name, listen=listen, directory=out / COORDINATOR)
    sites = {name: SiteKit(consortium=spec.name, name=name, superlink=spec.server.address, directory=out / name)
             for name in spec.sites}
    result = ProvisionResult(out=out, roster_digest="", kits={COORDINATOR: coordinator.directory,
                                                              **{n: k.directory for n, k in sites.items()}})
    writer = _Writer(result)
    federation = _federation_text(spec, coordinator)
    authority = _authority(out, record, spec, writer)
    server = _coordinator_keys(coordinator, record.server if record else None, writer)
    fingerprint = _server_certificate(coordinator, authority, spec, record, writer)
    parties = {name: _site_keys(name, kit, record.sites.get(name) if record else None, writer)
               for name, kit in sites.items()}
    roster = Roster(sites={name: p.identity for name, p in parties.items()},
                    audit_keys={SERVER_PARTY: server.audit, **{name: p.audit for name, p in parties.items()}})
    roster_text = roster.model_dump_json(indent=2) + "\n"
    ca_pem = authority.certificate.public_bytes(serialization.Encoding.PEM)
    for name, kit in sites.items():
        writer.write(name, kit.directory / KIT_FILE, kit.text())
        writer.write(name, kit.ca, ca_pem)
        writer.write(name, kit.key.with_name("node.key.pub"), parties[name].node_key + "\n")
        writer.write(name, kit.roster, roster_text)
        writer.write(name, kit.policy, site_policy(spec.name, fingerprint))
        writer.write(name, kit.directory / "README.md", site_readme(kit))
    writer.write(COORDINATOR, coordinator.directory / KIT_FILE, coordinator.text())
    writer.write(COORDINATOR, coordinator.roster, roster_text)
    for name, party in parties.items():
        writer.write(COORDINATOR, coordinator.site_keys / f"{name}.pub", party.node_key + "\n")
    for stale in sorted(coordinator.site_keys.glob("*.pub")):
        if stale.stem not in parties:
            writer.remove(COORDINATOR, stale)
    if federation is not None:
        writer.write(COORDINATOR, coordinator.config, federation)
    writer.write(COORDINATOR, coordinator.directory / "README.md", coordinator_readme(coordinator))
    new_record = ProvisionRecord(consortium=spec.name, server=server, sites=parties, hosts=spec.certificate_hosts,
                                 certificate_sha256=fingerprint, roster_digest=roster.digest)
    writer.write("record", out / RECORD_FILE, new_record.model_dump_json(indent=2) + "\n")
    result.roster_digest = roster.digest
    return result

"""A site's own side of the federation: its settings, its data and its model, cached per process.

`SiteSettings` come from the site (its command line, `--node-config`, or the simulation's list of
sites), never from the server: the data folder, its own copy of a SAM checkpoint, its policy, its
device. The server's instructions only choose the model (`ModelSpec`), the image size and the
seeds; a checkpoint the server names must match the site's copy by SHA-256 (fedmed's built-in
weights are the site's own installed file with that SHA-256).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmed.data import SiteData, load_sites, scan_data
from fedmed.fl.plan import ModelSpec
from fedmed.models import ModelConfig, SamSegmenter, arch_spec, build_model
from fedmed.models.pretrained import file_sha256, find_builtin


class SiteSetupError(RuntimeError):
    """The site cannot do what it is asked with its own settings (data, checkpoint)."""


@dataclass(frozen=True)
class SiteSettings:
    """What a site decides itself. `partition` picks one site of a multi-site `data` (simulation)."""

    data: str = "synthetic"
    partition: int | None = None
    num_sites: int = 3  # sites of the synthetic federation
    samples_per_site: int | None = None  # synthetic pictures a site (default: the generator's)
    checkpoint: str | None = None
    policy: str | None = None
    device: str = "auto"
    audit_dir: str | None = None
    identity: str | None = None  # the site's Ed25519 identity key file (secure aggregation)
    roster: str | None = None  # the enrolment roster file it trusts (fedmed.fl.enrolment)
    state_dir: str | None = None  # private: <state_dir>/<site>/ holds its privacy ledger and audit key
    server_address: str | None = None  # the server as this site dialled it (its policy's allowlist)
    server_tls: bool | None = None  # whether that connection is TLS (None: in-process, no transport)
    server_certificate_sha256: str | None = None  # the certificate its TLS handshake presented


def model_config(spec: ModelSpec, *, num_classes: int, seed: int, checkpoint: str | None = None) -> ModelConfig:
    return ModelConfig(
        arch=spec.arch, method=spec.method, image_size=spec.image_size, checkpoint=checkpoint,
        lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha, adapter_ratio=spec.adapter_ratio,
        num_classes=num_classes, seed=seed,
    )


def image_size_of(spec: ModelSpec) -> int:
    return spec.image_size or arch_spec(spec.arch).image_size


def load_site_data(settings: SiteSettings, *, image_size: int, seed: int) -> SiteData:
    """This site's data. A folder of several sites needs `partition`; each site is split on its own,
    so a site's split is the same in a simulation over all sites and in a deployment of one."""
    if settings.data == "synthetic":
        options = {"samples_per_site": settings.samples_per_site} if settings.samples_per_site else {}
        sites = load_sites("synthetic", image_size=image_size, seed=seed, num_sites=settings.num_sites, **options)
        return sites[_partition(settings, len(sites))]
    path = Path(settings.data).expanduser()
    scan = scan_data(path)
    if not scan.problems and len(scan.sites) > 1:
        path = path / scan.sites[_partition(settings, len(scan.sites))].name
    sites = load_sites(path, image_size=image_size, seed=seed)
    if len(sites) != 1:  # pragma: no cover - load_sites of one dataset folder gives one site
        raise SiteSetupError(f"{path}: expected one site's dataset, found {len(sites)}")
    return sites[0]


def _partition(settings: SiteSettings, count: int) -> int:
    if settings.partition is None:
        raise SiteSetupError(f"{settings.data} holds {count} sites; a site needs the folder of its own data")
    if not 0 <= settings.partition < count:
        raise SiteSetupError(f"site {settings.partition} asked of {settings.data}, which holds {count} sites")
    return settings.partition


class SiteRuntime:
    """A site's data and model, built once per process and reused across rounds."""

    def __init__(self, settings: SiteSettings):
        self.settings = settings
        self._data: dict[tuple, SiteData] = {}
        self._models: dict[tuple, SamSegmenter] = {}
        self._checkpoint_ok: set[str] = set()

    def data(self, spec: ModelSpec, seed: int) -> SiteData:
        key = (image_size_of(spec), seed)
        if key not in self._data:
            self._data[key] = load_site_data(self.settings, image_size=key[0], seed=seed)
        return self._data[key]

    def model(self, spec: ModelSpec, *, num_classes: int, seed: int) -> SamSegmenter:
        key = (spec.model_dump_json(), num_classes, seed)
        if key not in self._models:
            self._models.clear()  # one model at a time: a ViT-H copy is large
            checkpoint = self._checkpoint(spec)
            self._models[key] = build_model(model_config(spec, num_classes=num_classes, seed=seed,
                                                         checkpoint=checkpoint))
        return self._models[key]

    def _checkpoint(self, spec: ModelSpec) -> str | None:
        if spec.checkpoint_sha256 is None:
            return None
        own = self.settings.checkpoint
        if own is None and (builtin := find_builtin(spec.checkpoint_sha256)) is not None:
            return str(builtin)  # fedmed's built-in weights: this installation's own copy, same SHA-256
        if own is None:
            raise SiteSetupError(
                f"the federation starts from a SAM checkpoint (sha256 {spec.checkpoint_sha256[:12]}...); "
                "give this site its own copy with --checkpoint"
            )
        if own not in self._checkpoint_ok:
            digest = file_sha256(own)
            if digest != spec.checkpoint_sha256:
                raise SiteSetupError(f"{own}: sha256 {digest[:12]}... is not the federation's "
                                     f"checkpoint ({spec.checkpoint_sha256[:12]}...)")
            self._checkpoint_ok.add(own)
        return own


_RUNTIMES: dict[SiteSettings, SiteRuntime] = {}


def runtime_for(settings: SiteSettings) -> SiteRuntime:
    """The process-wide runtime of a site (Ray actors and the site runner reuse it across messages)."""
    if settings not in _RUNTIMES:
        _RUNTIMES[settings] = SiteRuntime(settings)
    return _RUNTIMES[settings]

"""A site's data, model, policy, starting weights and release memory, built once per process and reused.

The server's instructions only choose the model (`ModelSpec`), the image size and the seeds; a
checkpoint the server names must match the site's copy by SHA-256 (fedmed's built-in weights are
the site's own installed file with that SHA-256). A ClientApp keeps one `SiteRuntime` per site
(`SiteRuntimes`), so a Ray actor or a deployed site's runner builds its data and model once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedmed.config import ModelSpec
from fedmed.data import SiteData, load_sites, scan_data
from fedmed.data.synthetic import SYNTHETIC_DATA
from fedmed.fl.enrolment import Roster, load_identity
from fedmed.fl.site.releases import ReleaseMemory
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.layout import Layout
from fedmed.models import SamSegmenter, build_model
from fedmed.models.pretrained import file_sha256, find_builtin
from fedmed.privacy.fingerprint import description_fingerprint
from policies import Policy, load_policy
from secure_agg import KeyPair


class SiteSetupError(RuntimeError):
    """The site cannot do what it is asked with its own settings (data, checkpoint)."""


def load_site_data(settings: SiteSettings, *, image_size: int) -> SiteData:
    """This site's data, split into train / val / test by the site alone: a folder's split is its
    dataset's own or the one kept in `<state_dir>/splits/` (drawn once from the CSPRNG), the
    synthetic federations' is fixed by the site's `data_seed`. A folder of several sites needs
    `partition`; each site is split on its own, so a simulation over all sites and a deployment of
    one split a site alike."""
    if settings.data in SYNTHETIC_DATA:
        options = {"samples_per_site": settings.samples_per_site} if settings.samples_per_site else {}
        sites = load_sites(settings.data, image_size=image_size, data_seed=settings.data_seed,
                           num_sites=settings.num_sites, **options)
        site = sites[_partition(settings, len(sites))]
    else:
        path = _site_folder(settings)
        split_dir = Path(settings.state_dir) / "splits" if settings.state_dir else None
        sites = load_sites(path, image_size=image_size, split_dir=split_dir)
        if len(sites) != 1:  # pragma: no cover - load_sites of one dataset folder gives one site
            raise SiteSetupError(f"{path}: expected one site's dataset, found {len(sites)}")
        site = sites[0]
    return replace(site, name=settings.name) if settings.name else site


def _site_folder(settings: SiteSettings) -> Path:
    """The folder of this site's own dataset (a partition of a multi-site folder in a simulation)."""
    path = Path(settings.data).expanduser()
    scan = scan_data(path)
    if not scan.problems and len(scan.sites) > 1:
        path = path / scan.sites[_partition(settings, len(scan.sites))].name
    return path


def site_name(settings: SiteSettings) -> str:
    """The site's name: its enrolment's, else as its data names it (its folder; `site-<k>` in a
    synthetic federation)."""
    if settings.name:
        return settings.name
    if settings.data in SYNTHETIC_DATA:
        return f"site-{settings.partition}"
    return _site_folder(settings).name


def dataset_fingerprint(settings: SiteSettings) -> str:
    """The digest of what this site's data is: the key of its privacy ledger, so a new run folder, a
    new state folder or a second client on the same data finds the same budget. A folder counts by
    the relative path and size of every file in it (a copy elsewhere is the same data; data that
    changed size is new data); a synthetic federation by its generator's settings (and its profile
    set, unless it is the default one)."""
    if settings.data in SYNTHETIC_DATA:
        profile = {"profile": SYNTHETIC_DATA[settings.data]} if settings.data != "synthetic" else {}
        return description_fingerprint({"generator": "synthetic", "data_seed": settings.data_seed,
                                        "num_sites": settings.num_sites, "site": settings.partition,
                                        "samples_per_site": settings.samples_per_site, **profile})
    root = _site_folder(settings)
    files = {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    return description_fingerprint({"folder": files})


def _partition(settings: SiteSettings, count: int) -> int:
    if settings.partition is None:
        raise SiteSetupError(f"{settings.data} holds {count} sites; a site needs the folder of its own data")
    if not 0 <= settings.partition < count:
        raise SiteSetupError(f"site {settings.partition} asked of {settings.data}, which holds {count} sites")
    return settings.partition


class SiteRuntime:
    """A site's policy, data, model and release memory, built once per process and reused across rounds."""

    def __init__(self, settings: SiteSettings):
        self.settings = settings
        self.policy: Policy | None = load_policy(settings.policy) if settings.policy is not None else None
        self._data: dict[int, SiteData] = {}
        self._models: dict[tuple, tuple[SamSegmenter, Layout]] = {}
        self._checkpoint_ok: set[str] = set()
        self._releases: dict[Path, ReleaseMemory] = {}
        self._enrolment: tuple[tuple, KeyPair, Roster] | None = None
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """The site's dataset fingerprint (computed once per process)."""
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(self.settings)
        return self._fingerprint

    def data(self, spec: ModelSpec) -> SiteData:
        """The site's data at the model's input size (built once per size)."""
        if spec.size not in self._data:
            self._data[spec.size] = load_site_data(self.settings, image_size=spec.size)
        return self._data[spec.size]

    def model(self, spec: ModelSpec, *, num_classes: int, seed: int) -> tuple[SamSegmenter, Layout]:
        """The model these instructions build (its trainable tensors are overwritten by every round's
        global vector) and its trainable layout, built once."""
        key = (spec.model_dump_json(), num_classes, seed)
        if key not in self._models:
            self._models.clear()  # one model at a time: a ViT-H copy is large
            config = spec.build_config(num_classes=num_classes, seed=seed, checkpoint=self._checkpoint(spec))
            model = build_model(config)
            params = dict(model.named_parameters())  # the layout reads shapes and dtypes: no copies
            self._models[key] = (model, Layout.of({name: params[name] for name in model.trainable_names}))
        return self._models[key]

    def enrolment(self, identity: str, roster: str) -> tuple[KeyPair, Roster]:
        """The site's identity key and roster from their files, read again whenever either file
        changes (another inode, size or modification time) or cannot be stat'ed."""
        stamp = tuple(_stamp(path) for path in (identity, roster))
        if self._enrolment is None or None in stamp or self._enrolment[0] != stamp:
            self._enrolment = (stamp, load_identity(identity), Roster.load(roster))
        return self._enrolment[1], self._enrolment[2]

    def releases(self, folder: Path) -> ReleaseMemory:
        """The release memory in `folder` (one per folder: it keeps the journal indexed between rounds)."""
        folder = Path(folder)
        if folder not in self._releases:
            self._releases[folder] = ReleaseMemory(folder)
        return self._releases[folder]

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


def _stamp(path: str) -> tuple[str, int, int, int] | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return path, stat.st_ino, stat.st_size, stat.st_mtime_ns


class SiteRuntimes:
    """The runtimes of the sites one ClientApp serves (a simulation's app serves every site)."""

    def __init__(self) -> None:
        self._runtimes: dict[SiteSettings, SiteRuntime] = {}

    def of(self, settings: SiteSettings) -> SiteRuntime:
        if settings not in self._runtimes:
            self._runtimes[settings] = SiteRuntime(settings)
        return self._runtimes[settings]

"""A party's kit: the folder `fedmed provision` hands each party, and how its commands read it.

    coordinator/  kit.json  README.md  federation.toml  roster.json  audit.key
                  tls/{ca.pem, server.pem, server.key}  site-keys/<site>.pub
    <site>/       kit.json  README.md  ca.pem  node.key(.pub)  identity.key  audit.key  roster.json  policy.toml

`kit.json` holds what varies (the consortium, the party's role and name, the address the SuperLink
listens on or the sites dial); every file has a fixed name, so `fedmed server --kit DIR` and
`fedmed client --kit DIR` find them. Private keys (`server.key`, `node.key`, `identity.key`,
`audit.key`) are mode 0600 and exist only in their party's kit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fedmed.fl.launch.credentials import TlsFiles

KIT_FILE = "kit.json"
KIT_FORMAT = "fedmed-kit/1"


class KitError(ValueError):
    """A kit folder that is missing, unreadable or not the kind of kit a command needs (names the file)."""


class _Kit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["fedmed-kit/1"] = KIT_FORMAT
    consortium: str = Field(min_length=1)
    directory: Path = Field(default=Path("."), exclude=True)  # where the kit was read from

    def text(self) -> str:
        """What kit.json holds."""
        return self.model_dump_json(indent=2) + "\n"

    def missing(self) -> list[Path]:
        return [path for path in self.files() if not path.is_file()]

    def files(self) -> list[Path]:
        """The files the party's commands read."""
        return []


class CoordinatorKit(_Kit):
    role: Literal["coordinator"] = "coordinator"
    listen: str = Field(description="HOST:PORT the SuperLink listens on")

    @property
    def config(self) -> Path:
        return self.directory / "federation.toml"

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles.in_dir(self.directory / "tls")

    @property
    def site_keys(self) -> Path:
        return self.directory / "site-keys"

    @property
    def roster(self) -> Path:
        return self.directory / "roster.json"

    @property
    def audit_key(self) -> Path:
        return self.directory / "audit.key"

    def files(self) -> list[Path]:
        tls = self.tls
        return [self.config, tls.ca, tls.certificate, tls.key, self.roster, self.audit_key]


class SiteKit(_Kit):
    role: Literal["site"] = "site"
    name: str = Field(min_length=1, description="the site's name: its roster label and audit party")
    superlink: str = Field(description="HOST:PORT the site dials")

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def key(self) -> Path:
        return self.directory / "node.key"

    @property
    def identity(self) -> Path:
        return self.directory / "identity.key"

    @property
    def audit_key(self) -> Path:
        return self.directory / "audit.key"

    @property
    def roster(self) -> Path:
        return self.directory / "roster.json"

    @property
    def policy(self) -> Path:
        return self.directory / "policy.toml"

    def files(self) -> list[Path]:
        return [self.ca, self.key, self.identity, self.audit_key, self.roster]


Kit = Annotated[CoordinatorKit | SiteKit, Field(discriminator="role")]
_KIT = TypeAdapter(Kit)


def load_kit(directory: str | Path, *, role: Literal["coordinator", "site"]) -> CoordinatorKit | SiteKit:
    """The kit in `directory`, checked to be a `role` kit holding all its files; else `KitError`."""
    directory = Path(directory).expanduser().resolve()
    path = directory / KIT_FILE
    try:
        kit = _KIT.validate_json(path.read_bytes())
    except OSError as error:
        raise KitError(f"{path}: cannot read the kit ({error.strerror or error}); `fedmed provision` makes one") \
            from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise KitError(f"{path}: not a fedmed kit: {problems}") from None
    if kit.role != role:
        raise KitError(f"{directory} is the kit of a {kit.role}, not of a {role}")
    kit = kit.model_copy(update={"directory": directory})
    if missing := kit.missing():
        raise KitError(f"the kit {directory} lacks {', '.join(p.name for p in missing)}")
    return kit

"""`fedmed provision`: one kit per party from consortium.toml, private keys only in their own kit, and a
second run that issues only what changed."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_ssh_private_key, load_ssh_public_key

from audit import PartyKey
from fedmed.fl.enrolment import Roster, load_identity
from fedmed.fl.launch.credentials import Authority, certificate_hosts
from fedmed.fl.launch.kits import KitError, load_kit
from fedmed.fl.launch.provision import ConsortiumSpec, ProvisionError, provision
from policies import load_policy
from policies.servers import server_matches

CONSORTIUM = """
name = "liver"
sites = [{sites}]
{extra}
[server]
address = "127.0.0.1:9092"
hosts = [{hosts}]
"""
SITES = ["hospital-a", "hospital-b", "hospital-c"]
PRIVATE = ("node.key", "identity.key", "audit.key", "server.key", "ca.key")


def spec(tmp_path: Path, sites=SITES, hosts=("localhost",), extra: str = "") -> ConsortiumSpec:
    path = tmp_path / "consortium.toml"
    path.write_text(CONSORTIUM.format(sites=", ".join(f'"{s}"' for s in sites),
                                      hosts=", ".join(f'"{h}"' for h in hosts), extra=extra))
    return ConsortiumSpec.load(path)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def kits(tmp_path):
    result = provision(spec(tmp_path), tmp_path / "kits")
    return tmp_path / "kits", result


def test_each_party_gets_a_kit_with_what_it_needs(kits):
    out, result = kits
    coordinator = load_kit(out / "coordinator", role="coordinator")
    roster = Roster.load(coordinator.roster)
    assert roster.digest == result.roster_digest and list(roster.sites) == SITES
    assert roster.audit_keys["server"] == PartyKey.load(coordinator.audit_key).public_bytes.hex()
    authority = Authority.load(out / "ca" / "ca.key", out / "ca" / "ca.pem")
    certificate = x509.load_pem_x509_certificate(coordinator.tls.certificate.read_bytes())
    assert authority.issued(certificate) and sorted(certificate_hosts(certificate)) == ["127.0.0.1", "localhost"]
    fingerprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
    for site in SITES:
        kit = load_kit(out / site, role="site")
        assert (kit.name, kit.superlink) == (site, "127.0.0.1:9092")
        assert Roster.load(kit.roster) == roster
        assert roster.sites[site] == load_identity(kit.identity).public.hex()
        assert roster.audit_keys[site] == PartyKey.load(kit.audit_key).public_bytes.hex()
        node = load_ssh_private_key(kit.key.read_bytes(), None)
        registered = load_ssh_public_key((coordinator.site_keys / f"{site}.pub").read_bytes())
        assert registered.public_numbers() == node.public_key().public_numbers()
        assert kit.ca.read_bytes() == coordinator.tls.ca.read_bytes()
        policy = load_policy(kit.policy)
        assert policy.name == "strict-liver" and policy.privacy == load_policy("strict").privacy
        assert server_matches(policy.servers.allowed[0], address="127.0.0.1:9092", certificate_sha256=fingerprint)
        assert "fedmed client --kit . --data" in (kit.directory / "README.md").read_text()
    assert "fedmed server --kit ." in (coordinator.directory / "README.md").read_text()


def test_private_keys_are_0600_and_exist_only_in_their_partys_kit(kits):
    out, _ = kits
    files = [p for p in out.rglob("*") if p.is_file()]
    private = [p for p in files if p.name in PRIVATE]
    assert len(private) == 3 * 3 + 2 + 1  # three keys a site; the coordinator's audit and TLS key; the CA's
    contents = [p.read_bytes() for p in files]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert contents.count(path.read_bytes()) == 1, f"{path} is copied elsewhere"
        assert path.parent.name in (*SITES, "coordinator", "tls", "ca")


def test_a_second_run_changes_nothing(kits, tmp_path):
    out, _ = kits
    before = snapshot(out)
    assert provision(spec(tmp_path), out).changes == []
    assert snapshot(out) == before


def test_adding_a_site_reissues_only_what_changes(kits, tmp_path):
    out, first = kits
    before = snapshot(out)
    result = provision(spec(tmp_path, sites=[*SITES, "hospital-d"]), out)
    after = snapshot(out)
    changed = {name for name in after if before.get(name) != after[name]}
    rosters = {f"{party}/roster.json" for party in [*SITES, "coordinator"]}
    new_kit = {name for name in after if name.startswith("hospital-d/")}
    assert changed == rosters | new_kit | {"coordinator/site-keys/hospital-d.pub", "provision.json"}
    assert {str(p.relative_to(out)) for _, p, _ in result.changes} == changed
    assert result.roster_digest != first.roster_digest
    roster = Roster.load(out / "hospital-a" / "roster.json")
    assert list(roster.sites) == [*SITES, "hospital-d"] and "hospital-d" in roster.audit_keys


def test_new_hosts_reissue_the_certificate_and_the_pinned_policies(kits, tmp_path):
    out, first = kits
    before = snapshot(out)
    result = provision(spec(tmp_path, hosts=("localhost", "fl.example.org")), out)
    changed = {name for name, data in snapshot(out).items() if before.get(name) != data}
    assert changed == ({"coordinator/tls/server.pem", "coordinator/tls/server.key", "provision.json"}
                       | {f"{site}/policy.toml" for site in SITES})
    assert result.roster_digest == first.roster_digest
    certificate = x509.load_pem_x509_certificate((out / "coordinator" / "tls" / "server.pem").read_bytes())
    assert "fl.example.org" in certificate_hosts(certificate)


def test_a_kit_handed_out_gets_only_its_changed_public_files(kits, tmp_path):
    out, _ = kits
    handed = out / "hospital-a"
    keys = {name: (handed / name).read_bytes() for name in ("node.key", "identity.key", "audit.key")}
    for path in handed.iterdir():
        path.unlink()
    handed.rmdir()
    provision(spec(tmp_path, sites=[*SITES, "hospital-d"]), out)
    assert sorted(p.name for p in handed.iterdir()) == ["README.md", "ca.pem", "kit.json", "node.key.pub",
                                                       "policy.toml", "roster.json"]
    roster = Roster.load(handed / "roster.json")
    restored = tmp_path / "restored"  # the keys the site kept: still the enrolled ones
    restored.mkdir()
    for name, data in keys.items():
        (restored / name).write_bytes(data)
        (restored / name).chmod(0o600)
    assert roster.sites["hospital-a"] == load_identity(restored / "identity.key").public.hex()
    assert roster.audit_keys["hospital-a"] == PartyKey.load(restored / "audit.key").public_bytes.hex()


def test_a_removed_site_leaves_the_roster_and_the_registered_keys(kits, tmp_path):
    out, _ = kits
    result = provision(spec(tmp_path, sites=SITES[:2]), out)
    assert list(Roster.load(out / "coordinator" / "roster.json").sites) == SITES[:2]
    assert not (out / "coordinator" / "site-keys" / "hospital-c.pub").exists()
    assert ("coordinator", out / "coordinator" / "site-keys" / "hospital-c.pub", "removed") in result.changes


def test_a_kit_whose_key_was_replaced_is_refused(kits, tmp_path):
    out, _ = kits
    (out / "hospital-b" / "identity.key").unlink()
    from fedmed.fl.enrolment import create_identity

    create_identity(out / "hospital-b" / "identity.key")
    with pytest.raises(ProvisionError, match="hospital-b/identity.key: not the key provisioned for hospital-b"):
        provision(spec(tmp_path), out)


@pytest.mark.parametrize("sites, problem", [
    (["a", "a", "b"], "'a' is listed twice"),
    (["coordinator", "b"], "'coordinator' is reserved"),
    (["a b", "c"], "'a b' is not a site name"),
    (["only"], "at least 2"),
])
def test_a_bad_consortium_file_names_its_problem(tmp_path, sites, problem):
    with pytest.raises(ProvisionError, match="consortium.toml: not a valid consortium file") as error:
        spec(tmp_path, sites=sites)
    assert problem in str(error.value)


def test_a_folder_that_is_no_provision_folder_is_refused(tmp_path):
    (tmp_path / "kits").mkdir()
    (tmp_path / "kits" / "notes.txt").write_text("mine")
    with pytest.raises(ProvisionError, match="holds files but no provision.json"):
        provision(spec(tmp_path), tmp_path / "kits")


def test_a_given_study_config_is_checked_and_copied(tmp_path):
    (tmp_path / "study.toml").write_text('[federation]\nname = "s1"\nmin_clients = 4\n')
    with pytest.raises(ProvisionError, match="min_clients = 4, but the consortium has 3 sites"):
        provision(spec(tmp_path, extra='federation = "study.toml"'), tmp_path / "kits")
    (tmp_path / "study.toml").write_text('[federation]\nname = "s1"\nmin_clients = 3\n')
    provision(spec(tmp_path, extra='federation = "study.toml"'), tmp_path / "kits")
    assert (tmp_path / "kits" / "coordinator" / "federation.toml").read_text() == (tmp_path / "study.toml").read_text()


def test_a_kit_of_the_wrong_role_is_refused(kits):
    out, _ = kits
    with pytest.raises(KitError, match="the kit of a site, not of a coordinator"):
        load_kit(out / "hospital-a", role="coordinator")
    (out / "hospital-b" / "node.key").unlink()
    with pytest.raises(KitError, match="lacks node.key"):
        load_kit(out / "hospital-b", role="site")
    assert json.loads((out / "hospital-a" / "kit.json").read_text())["role"] == "site"

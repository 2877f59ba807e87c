"""A simulated federation as a consortium would set it up: enrolled, equipped, or plain."""

from __future__ import annotations

from fedmed.config import SecureAggregationSection
from fedmed.fl.enrolment import Roster, load_identity
from fedmed.fl.launch.simulation import prepare_simulation
from fedmed.fl.plan import RunPlan
from fedmed.fl.site.settings import SIMULATION_SERVER, SiteSettings


def test_a_simulation_enrols_its_sites_or_runs_plain(tmp_path):
    plan = RunPlan(out=str(tmp_path), secure_aggregation=SecureAggregationSection(precision_bits=20))
    secure, sites = prepare_simulation(plan, [SiteSettings(partition=k) for k in range(3)], policy="strict")
    assert secure.secure_aggregation.enabled and secure.secure_aggregation.precision_bits == 20
    roster = Roster.load(secure.roster)
    assert [roster.id_of(load_identity(s.identity).public) for s in sites] == [1, 2, 3]
    assert all(s.roster == secure.roster and s.policy == "strict" for s in sites)
    assert all(s.audit_dir == str(tmp_path / "audit") and s.server_address == SIMULATION_SERVER for s in sites)
    off = plan.model_copy(update={"secure_aggregation": SecureAggregationSection(enabled=False)})
    plain, plain_sites = prepare_simulation(off, [SiteSettings(partition=k) for k in range(3)], policy=None,
                                            audit=False)
    assert plain.roster is None and all(s.identity is None and s.audit_dir is None for s in plain_sites)

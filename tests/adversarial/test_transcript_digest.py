"""The round transcript binds every field (property tests): a server that changes anything it tells
one site — a learning rate, a weight cap, a participant, one bit of the global vector's digest —
changes that site's transcript digest and hence its session id, so its peers' signatures no
longer verify there; and `differences` names exactly the fields that changed."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedmed.config import FederationSection, ModelSpec, PrivacySection, SecureAggregationSection, TrainingSection
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.secagg import round_config
from fedmed.fl.wire.transcript import RoundTranscript, Weighting, differences

SECTION = SecureAggregationSection()
BASE = RoundTranscript(
    run_id="fedmed/0123456789abcdef", round=3, roster="ab" * 32, participants=(1, 2, 3),
    config=round_config(SECTION, num_clients=3, vector_length=1001), weighting=Weighting(max_weight=64.0),
    global_sha256="cd" * 32,
    instructions=Instructions(run_id="0123456789abcdef", round=3, num_classes=2, num_clients=3, federation=FederationSection(),
                              model=ModelSpec(image_size=32), training=TrainingSection(), secure_aggregation=SECTION,
                              privacy=PrivacySection()))
# values a Literal field may take, or a None field be set to (the rest are drawn by type)
WORDS = ["none", "sample", "client", "complete", "sparse", "samples", "equal", "tiny", "vit_b", "fedsam", "fedmsa",
         "flap-sam", "samed", "chacha20", "aes-256-ctr"]


def leaves(values: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a JSON-like value by its dotted path (lists are leaves, as `differences` sees them)."""
    if isinstance(values, dict):
        out = {}
        for key, value in values.items():
            out.update(leaves(value, f"{path}.{key}" if path else key))
        return out
    return {path: values}


def changed(draw, value: Any) -> Any:
    """Another value of the same kind as `value` (it may be invalid for its field)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + draw(st.integers(-3, -1) | st.integers(1, 1000))
    if isinstance(value, float):
        return value * draw(st.floats(0.01, 0.999) | st.floats(1.001, 1e3)) if value else draw(st.floats(1e-6, 1.0))
    if isinstance(value, str):
        if len(value) == 64:  # a digest: one hex digit flipped
            i = draw(st.integers(0, 63))
            return value[:i] + ("0" if value[i] != "0" else "1") + value[i + 1:]
        return draw(st.sampled_from([w for w in WORDS if w != value]) | st.text("abcxyz-/0", min_size=1)
                    .map(value.__add__))
    if isinstance(value, list):
        return draw(st.sampled_from([value[:-1], [*value, max(value) + 1], [value[0], *value[2:], value[1] + 7]]))
    return draw(st.sampled_from(WORDS) | st.integers(1, 64) | st.floats(1e-3, 10.0))  # None: any value


@st.composite
def mutations(draw) -> tuple[list[str], RoundTranscript]:
    """One to three fields of BASE changed to other values; the changed transcript, if valid."""
    before = leaves(BASE.model_dump(mode="json"))
    paths = draw(st.lists(st.sampled_from(sorted(before)), min_size=1, max_size=3, unique=True))
    values = BASE.model_dump(mode="json")
    for path in paths:
        *parents, last = path.split(".")
        node = values
        for key in parents:
            node = node[key]
        node[last] = changed(draw, node[last])
    try:
        transcript = RoundTranscript.model_validate(values)
    except ValidationError:
        assume(False)
    return paths, transcript


@settings(max_examples=300, deadline=None)
@given(mutations())
def test_any_change_changes_the_digest_and_the_session_id_and_is_named(mutation):
    paths, transcript = mutation
    named = differences(BASE.model_dump(mode="json"), transcript.model_dump(mode="json"))
    assume(named)  # a change that validation undid (a value normalised back) changes nothing
    assert transcript.digest != BASE.digest and transcript.session_id != BASE.session_id
    assert named == sorted(paths, key=lambda path: path.split(".")), (named, paths)


def test_coupled_changes_the_generator_rarely_finds_are_named_too():
    """Fields that only change together with another (a sparse graph and its degree; a noise
    multiplier instead of an epsilon target) and a change of the model's preset."""
    instructions = BASE.instructions
    cases = {
        ("config.degree", "config.graph"): BASE.model_copy(
            update={"config": BASE.config.model_copy(update={"graph": "sparse", "degree": 2})}),
        ("instructions.privacy.epsilon", "instructions.privacy.noise_multiplier"): BASE.model_copy(update={
            "instructions": instructions.model_copy(update={"privacy": PrivacySection(noise_multiplier=1.1)})}),
        ("instructions.model.arch",): BASE.model_copy(update={
            "instructions": instructions.model_copy(update={"model": ModelSpec(arch="vit_b", image_size=32)})}),
    }
    for paths, transcript in cases.items():
        transcript = RoundTranscript.model_validate(transcript.model_dump(mode="json"))
        assert differences(BASE.model_dump(mode="json"), transcript.model_dump(mode="json")) == list(paths)
        assert transcript.digest != BASE.digest and transcript.session_id != BASE.session_id


def test_the_same_round_has_the_same_digest_and_every_field_is_covered():
    again = RoundTranscript.model_validate_json(BASE.model_dump_json())
    assert again.digest == BASE.digest and again.session_id == BASE.session_id
    assert BASE.session_id == f"{BASE.run_id}/round-3/{BASE.digest}"
    covered = {path.split(".")[0] for path in leaves(BASE.model_dump(mode="json"))}
    assert covered == set(RoundTranscript.model_fields)

"""The tensor-name globs (property-based), the real tensor names of each method, and server identity."""

from __future__ import annotations

import datetime
import hashlib
from fnmatch import fnmatchcase

import pytest
from hypothesis import given
from hypothesis import strategies as st
from policy_builders import make_request, policy_with

from policies import check_round, load_policy, normalize_fingerprint, pem_fingerprint, tensor_allowed
from policies.servers import server_matches

STRICT = load_policy("strict")
RESEARCH = load_policy("research")

segment = st.from_regex(r"[a-z][a-z0-9_]{0,11}|[0-9]{1,2}", fullmatch=True)
path = st.lists(segment, min_size=1, max_size=6).map(".".join)
LORA = ["lora_a", "lora_b", "lora_q_a", "lora_q_b", "lora_v_a", "lora_v_b"]


def is_peft_segment(s: str) -> bool:
    return s == "adapter" or s in LORA


@given(path)
def test_the_whole_mask_decoder_may_leave(rest):
    assert tensor_allowed(STRICT, f"mask_decoder.{rest}")


@given(st.sampled_from(["image_encoder", "prompt_encoder"]), path)
def test_encoder_tensors_without_adapter_or_lora_never_leave_a_strict_site(encoder, rest):
    name = f"{encoder}.{rest}"
    if not any(is_peft_segment(s) for s in rest.split(".")):
        assert not tensor_allowed(STRICT, name)


@given(st.integers(0, 63), path)
def test_adapters_in_encoder_blocks_may_leave(block, rest):
    assert tensor_allowed(STRICT, f"image_encoder.blocks.{block}.adapter.{rest}")


@given(path, st.sampled_from(LORA))
def test_lora_factors_may_leave_wherever_they_sit(prefix, factor):
    assert tensor_allowed(STRICT, f"{prefix}.{factor}")


@given(path)
def test_lora_lookalikes_do_not(prefix):
    for name in (f"{prefix}.lora_c", f"{prefix}.lora_scale", f"{prefix}.lora_q_a_extra", f"{prefix}lora_a"):
        if not name.startswith("mask_decoder.") and ".adapter." not in name:
            assert not tensor_allowed(STRICT, name)


@given(st.text(min_size=1))
def test_research_lets_any_name_leave(name):
    assert tensor_allowed(RESEARCH, name)


@given(st.lists(path, max_size=20, unique=True))
def test_the_check_reports_exactly_the_refused_names(names):
    violations = check_round(STRICT, make_request(tensor_names=names))
    refused = tuple(n for n in names if not tensor_allowed(STRICT, n))
    reported = tuple(item for v in violations if v.rule == "tensors.allow" for item in v.items)
    assert reported == refused


glob = st.text(alphabet="ab.*?[]!_0", min_size=1, max_size=8).filter(lambda g: g == g.strip())


@given(st.lists(glob, min_size=1, max_size=4), st.lists(glob, max_size=3),
       st.text(alphabet="ab.*?[]!_0XY", max_size=10))
def test_a_tensor_may_leave_exactly_when_fnmatch_says_so(allow, deny, name):
    """The check matches all of a policy's globs at once; it decides as `fnmatchcase` glob by glob."""
    policy = policy_with("research", tensors={"allow": allow, "deny": deny})
    expected = any(fnmatchcase(name, g) for g in allow) and not any(fnmatchcase(name, g) for g in deny)
    assert tensor_allowed(policy, name) is expected
    violations = check_round(policy, make_request(tensor_names=[name]))
    assert any(v.rule.startswith("tensors.") for v in violations) is not expected


RESEARCH_NO_DECODER = policy_with("research", tensors={"deny": ["mask_decoder.*"]})


@given(path)
def test_deny_wins(rest):
    assert not tensor_allowed(RESEARCH_NO_DECODER, f"mask_decoder.{rest}")


# The names fedmed.models really produces (tiny SAM): strict refuses fedsam and accepts the PEFT methods.
@pytest.fixture(scope="module")
def method_names():
    from fedmed.models import trainable_tensor_names

    return {m: trainable_tensor_names(m, "tiny") for m in ("fedsam", "fedmsa", "flap-sam", "samed")}


@pytest.mark.parametrize("method", ["fedmsa", "flap-sam", "samed"])
def test_strict_accepts_the_tensors_of_the_peft_methods(method_names, method):
    assert check_round(STRICT, make_request(method=method, tensor_names=method_names[method])) == []


def test_strict_refuses_the_image_encoder_that_fedsam_sends(method_names):
    names = method_names["fedsam"]
    violations = check_round(STRICT, make_request(method="fedsam", tensor_names=names))
    assert [v.rule for v in violations] == ["allowed_methods", "tensors.allow"]
    refused = violations[1].items
    assert refused and all(n.startswith(("image_encoder.", "prompt_encoder.")) for n in refused)
    assert set(names) - set(refused) == {n for n in names if n.startswith("mask_decoder.")}


# Server identity.
def test_fingerprints_normalize():
    hexed = "ab" * 32
    colons = ":".join(["AB"] * 32)
    assert normalize_fingerprint(hexed) == normalize_fingerprint(colons) == normalize_fingerprint("SHA256:" + colons)
    for bad in ("ab" * 31, "zz" * 32, "md5:" + hexed):
        with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
            normalize_fingerprint(bad)


def test_pem_fingerprint_is_the_certificates_sha256():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "fl.example.org")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM)
    expected = cert.fingerprint(hashes.SHA256()).hex()
    assert pem_fingerprint(pem) == pem_fingerprint(pem.decode()) == expected
    assert expected == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    with pytest.raises(ValueError, match="no '-----BEGIN CERTIFICATE-----' block"):
        pem_fingerprint(b"not a certificate")
    with pytest.raises(ValueError, match="not valid base64"):
        pem_fingerprint(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize(
    ("entry", "address", "matches"),
    [
        ("*", "anything:1", True),
        ("127.0.0.1:*", "127.0.0.1:9092", True),
        ("127.0.0.1:*", "127.0.0.1", False),
        ("[::1]:*", "[::1]:9092", True),
        ("[::1]:*", "1:9092", False),
        ("*.consortium.example.org:9092", "FL.Consortium.Example.org:9092", True),
        ("*.consortium.example.org:9092", "consortium.example.org.evil.net:9092", False),
        ("fl?.example.org:*", "fl1.example.org:1", True),
    ],
)
def test_address_patterns(entry, address, matches):
    assert server_matches(entry, address=address, certificate_sha256=None) is matches

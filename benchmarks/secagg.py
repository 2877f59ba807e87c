"""Secure aggregation cost: fedmed's protocol against its limits and against Flower's SecAgg+.

    python benchmarks/secagg.py --clients 10 --params 14715957 --dropout 0.3
    python benchmarks/secagg.py --clients 200 --params 100000 --graph sparse

Runs whole simulated rounds (every message through its wire form; the clients picked by
``--dropout`` go silent after sharing their keys, the costliest case for the server, whose
pairwise masks it must then rebuild) and, in the same process, the reference measurements:

- ``client_mask_s``: one client adding its self mask and pairwise masks to its encoded vector
  (key agreement + keystream + modular sums), best over the surviving clients of the rounds and
  over re-runs of one client's masking stage interleaved with the keystream measurements
- ``keystream_s``: the raw AES-256-CTR (or ChaCha20) keystream for the same number of bytes,
  generated as fast as ``cryptography`` can (the limit of any seed-expanded masking)
- ``flower_client_mask_s``: Flower's SecAgg+ primitives (``flwr.common.secure_aggregation``:
  ``generate_shared_key`` + ``pseudo_rand_gen`` + ``parameters_addition``/``_subtraction`` +
  ``parameters_mod``, as in ``secaggplus_mod``) doing the same masking for one client
- ``server_unmask_s``: the server summing the masked vectors as they arrive, reconstructing the
  secrets from shares, removing every mask and decoding
- ``plain_sum_s``: summing the survivors' float32 updates, what a server without secure
  aggregation does; ``server_keystream_s``: the raw keystream the server must expand

Timings are wall-clock seconds, the best of the repeats (``--repeat``; the client's over every
surviving client), with medians alongside; ``cpu_s`` has the same measurements in process CPU
time, which a busy shared machine distorts less. One JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secure_agg import ClientSession, ConfigError, Progress, SecAggConfig, Stage, make_identities, simulate_round  # noqa: E402
from secure_agg.prg import CHUNK_BYTES, keystream_writer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--params", type=int, default=14_715_957, help="coordinates per client update")
    p.add_argument("--dropout", type=float, default=0.0, help="fraction of clients that drop after sharing keys")
    p.add_argument("--graph", choices=["complete", "sparse"], default="complete")
    p.add_argument("--degree", type=int, help="neighbours per client (sparse); default 2*ceil(log2 n)")
    p.add_argument("--threshold", type=int, help="default: a strict majority of each client's share holders")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--precision-bits", type=int, help="default: the most that cannot wrap")
    p.add_argument("--modulus-bits", type=int, default=32)
    p.add_argument("--prg", choices=["aes-256-ctr", "chacha20"], default="aes-256-ctr")
    p.add_argument("--rounds", type=int, default=1, help="simulated rounds")
    p.add_argument("--repeat", type=int, default=3, help="repeats of each reference measurement")
    p.add_argument("--skip-flower", action="store_true")
    return p.parse_args(argv)


def build_config(a: argparse.Namespace) -> SecAggConfig:
    n = a.clients
    degree = None
    if a.graph == "sparse":
        degree = a.degree or min(2 * math.ceil(math.log2(n)), n - 1 - (n - 1) % 2)
    holders = n if degree is None else min(degree + 1, n)
    threshold = a.threshold or holders // 2 + 1
    common = dict(num_clients=n, threshold=threshold, vector_length=a.params, clip=a.clip,
                  modulus_bits=a.modulus_bits, graph=a.graph, degree=degree, prg=a.prg)
    if a.precision_bits is not None:
        return SecAggConfig(precision_bits=a.precision_bits, **common)
    for bits in range(52, -1, -1):
        try:
            return SecAggConfig(precision_bits=bits, **common)
        except ConfigError as exc:
            if "could wrap" not in str(exc):
                raise
    raise SystemExit("no precision fits; lower --clip or --clients")


def best(times: list[float]) -> float:
    return min(times)


class Clock:
    """Wall-clock and process CPU time of one measured block (CPU time is robust to descheduling
    on a shared machine; the work measured is single-threaded)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def best_pair(clocks: list[Clock]) -> tuple[float, float]:
    return min(c.wall for c in clocks), min(c.cpu for c in clocks)


def raw_keystream_clocks(masks: int, nbytes: int, algorithm: str, repeat: int) -> list[Clock]:
    """Single-threaded keystream of ``masks`` x ``nbytes`` into a reused buffer, at two chunk sizes
    (the fastest way ``cryptography`` produces it; the best time is the limit)."""
    clocks = []
    for _ in range(repeat):
        for chunk in (CHUNK_BYTES, 256 * 1024):
            zeros, buf = bytes(chunk), bytearray(chunk + 16)
            writers = [keystream_writer(os.urandom(32), algorithm) for _ in range(masks)]
            with Clock() as c:
                for write in writers:
                    for start in range(0, nbytes, chunk):
                        m = min(chunk, nbytes - start)
                        write(zeros if m == chunk else zeros[:m], buf)
            clocks.append(c)
    return clocks


def plain_sum_s(updates: list[np.ndarray], repeat: int) -> tuple[float, float]:
    clocks = []
    for _ in range(repeat):
        with Clock() as c:
            acc = np.zeros_like(updates[0])
            for u in updates:
                np.add(acc, u, out=acc)
        clocks.append(c)
    return best_pair(clocks)


def flower_client_mask_s(length: int, masks: int, repeat: int) -> tuple[float, float] | None:
    """Flower's SecAgg+ client masking (secaggplus_mod, stage 'collect masked vectors'), timed
    from the quantized vector to the masked one: one private mask and ``masks - 1`` pairwise
    masks, each pairwise seed from ECDH + HKDF as Flower derives it."""
    try:
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_combine,
            parameters_addition,
            parameters_mod,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
        from flwr.supercore.primitives.asymmetric import (
            bytes_to_private_key,
            bytes_to_public_key,
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )
    except ImportError:
        return None
    mod_range = 1 << 32
    sk, _ = generate_key_pairs()
    sk1 = private_key_to_bytes(sk)
    peers = [public_key_to_bytes(generate_key_pairs()[1]) for _ in range(masks - 1)]
    clocks = []
    for _ in range(repeat):
        quantized = factor_combine(1, [np.zeros(length, dtype=np.int32)])
        rd_seed = os.urandom(32)
        with Clock() as c:
            dims = [a.shape for a in quantized]
            quantized = parameters_addition(quantized, pseudo_rand_gen(rd_seed, mod_range, dims))
            for i, pk in enumerate(peers):
                shared = generate_shared_key(bytes_to_private_key(sk1), bytes_to_public_key(pk))
                mask = pseudo_rand_gen(shared, mod_range, dims)
                quantized = (parameters_addition if i % 2 else parameters_subtraction)(quantized, mask)
            quantized = parameters_mod(quantized, mod_range)
        clocks.append(c)
        del quantized
    return best_pair(clocks)


def main(argv=None) -> dict:
    a = parse_args(argv)
    config = build_config(a)
    n, length = a.clients, a.params
    rng = np.random.default_rng(0)
    updates = {c: (rng.random(length, dtype=np.float32) - np.float32(0.5)) * np.float32(0.2) for c in range(n)}
    dropped = sorted(rng.choice(n, size=round(a.dropout * n), replace=False).tolist())
    dropouts = {c: Stage.MASKED_INPUT for c in dropped}
    identities = make_identities(range(n))
    snapshot = {}

    def keep_one_masking(client: int, session: ClientSession, request: bytes) -> None:
        """Keep a surviving client's state and request before it masks, to replay the stage later."""
        if not snapshot and client not in dropouts and session.progress is Progress.SHARED:
            snapshot.update(client=client, state=session.export_state(), request=request)

    client_mask, client_mask_cpu, client_encode, server_unmask, server_unmask_cpu, rounds = [], [], [], [], [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        snapshot.clear()
        sim = simulate_round(config, updates, dropouts=dropouts, round_id=f"bench-{os.urandom(4).hex()}",
                             identities=identities, before_reply=keep_one_masking)
        rounds.append((time.perf_counter() - t0, sim))
        survivors = sim.result.survivors
        client_mask += [sim.client_timings[c]["mask_s"] for c in survivors]
        client_mask_cpu += [sim.client_timings[c]["mask_cpu_s"] for c in survivors]
        client_encode += [sim.client_timings[c]["encode_s"] for c in survivors]
        st = sim.server_timings
        server_unmask.append(st["collect_s"] + st["reconstruct_s"] + st["unmask_s"] + st["decode_s"])
        server_unmask_cpu.append(st["collect_cpu_s"] + st["unmask_stage_cpu_s"])
    round_s, sim = rounds[-1]
    survivors = sim.result.survivors
    exact = np.abs(sim.result.total - sum(updates[c].astype(np.float64) for c in survivors)).max()
    client_masks = int(max(sim.client_timings[c]["masks"] for c in survivors))
    server_masks = int(sim.server_timings["masks"])
    word = config.dtype.itemsize

    # the reference measurements, interleaved with re-runs of the real masking stage (a client
    # restored from its snapshot handles the same request) so that both see the same machine load
    ks_clocks, server_ks_clocks = [], []
    for _ in range(a.repeat):
        ks_clocks += raw_keystream_clocks(client_masks, length * word, config.prg, 1)
        if server_masks:
            server_ks_clocks += raw_keystream_clocks(server_masks, length * word, config.prg, 1)
        session = ClientSession.restore(snapshot["state"], identities[snapshot["client"]].private)
        session.handle(snapshot["request"], update=updates[snapshot["client"]])
        client_mask.append(session.timings["mask_s"])
        client_mask_cpu.append(session.timings["mask_cpu_s"])
    keystream, keystream_cpu = best_pair(ks_clocks)
    server_keystream, server_keystream_cpu = best_pair(server_ks_clocks) if server_masks else (0.0, 0.0)
    plain, plain_cpu = plain_sum_s([updates[c] for c in survivors], a.repeat)
    flower, flower_cpu = (None, None) if a.skip_flower else (
        flower_client_mask_s(length, client_masks, max(1, min(a.repeat, 2))) or (None, None))

    out = {
        "clients": n, "params": length, "dropout": a.dropout, "dropped": len(dropped), "survivors": len(survivors),
        "graph": config.graph, "degree": config.degree, "threshold": config.threshold,
        "modulus_bits": config.modulus_bits, "precision_bits": config.precision_bits, "clip": config.clip,
        "prg": config.prg, "client_masks": client_masks, "server_masks": server_masks,
        "client_mask_s": best(client_mask),
        "server_unmask_s": best(server_unmask),
        "flower_client_mask_s": flower,
        "keystream_s": keystream,
        "plain_sum_s": plain,
        "server_keystream_s": server_keystream,
        "client_encode_s": best(client_encode),
        "cpu_s": {"client_mask_s": best(client_mask_cpu), "server_unmask_s": best(server_unmask_cpu),
                  "flower_client_mask_s": flower_cpu, "keystream_s": keystream_cpu, "plain_sum_s": plain_cpu,
                  "server_keystream_s": server_keystream_cpu},
        "median": {"client_mask_s": statistics.median(client_mask), "server_unmask_s": statistics.median(server_unmask),
                   "client_encode_s": statistics.median(client_encode)},
        "server_breakdown_s": {k: sim.server_timings[k] for k in ("collect_s", "reconstruct_s", "unmask_s", "decode_s")},
        "client_stage_s": {s.value: statistics.median(t[s.value] for t in sim.client_timings.values() if s.value in t)
                           for s in Stage},
        "server_stage_s": {s.value: sim.server_timings[s.value] for s in Stage},
        "bytes_per_client_up": {k: v // max(1, len(survivors)) for k, v in sim.bytes_to_server.items()},
        "bytes_per_client_down": {k: v // max(1, len(survivors)) for k, v in sim.bytes_to_clients.items()},
        "round_s": round_s,
        "max_abs_error": float(exact),
        "error_bound": n / config.scale,
    }
    for key, timing in (("ratios", out), ("ratios_cpu", out["cpu_s"])):
        ratios = {
            "client_mask_over_keystream": timing["client_mask_s"] / timing["keystream_s"],
            "server_unmask_over_plain_sum_plus_keystream":
                timing["server_unmask_s"] / (timing["plain_sum_s"] + timing["server_keystream_s"]),
        }
        if timing["flower_client_mask_s"] is not None:
            ratios["flower_over_client_mask"] = timing["flower_client_mask_s"] / timing["client_mask_s"]
        out[key] = ratios
    for key in ("ratios", "ratios_cpu"):
        r = out[key]
        out["goals" if key == "ratios" else "goals_cpu"] = {
            "client_mask_within_1.5x_keystream": r["client_mask_over_keystream"] <= 1.5,
            "client_mask_5x_faster_than_flower": r.get("flower_over_client_mask", 0) >= 5,
            "server_unmask_within_3x_plain_sum_plus_keystream": r["server_unmask_over_plain_sum_plus_keystream"] <= 3,
        }
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                      "processor": platform.processor() or platform.machine(), "load_avg_1m": os.getloadavg()[0]}
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

"""`fedmed policy`: list and show site policies, and tell a coordinator which settings a site would refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedmed.config import ConfigError, FederationConfig, load_federation_config
from policies import Policy, PolicyError, builtin_names, check_round, load_policy

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Site privacy policies: list and show them; check a federation config against one.",
    no_args_is_help=True,
)

PolicyArg = Annotated[str, typer.Argument(metavar="NAME|PATH", help="a built-in policy name or a policy TOML file")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for machines")]


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _fail(exc: Exception) -> typer.Exit:
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(f"error: {exc}", style="red"))
    return typer.Exit(2)


def _load(name_or_path: str) -> Policy:
    try:
        return load_policy(name_or_path)
    except PolicyError as exc:
        raise _fail(exc) from None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def describe(policy: Policy) -> list[tuple[str, str]]:
    """The policy's rules as (rule, what it allows) lines for people."""
    sa, dp, servers = policy.secure_aggregation, policy.privacy, policy.servers
    threshold = f"threshold >= {sa.min_threshold}"
    if sa.min_threshold_fraction:
        threshold += f" and >= {sa.min_threshold_fraction:g} of the clients"
    dp_limits = [f"modes {', '.join(dp.modes)}"]
    dp_limits += [f"cumulative epsilon <= {dp.max_epsilon:g}"] if dp.max_epsilon is not None else []
    dp_limits += [f"delta <= {dp.max_delta:g}"] if dp.max_delta is not None else []
    dp_limits += [{"auto": "per patient where the data names patients, else per image",
                   "patient": "per patient (data naming no patients is refused)", "image": "per image"}[dp.unit]]
    cap = policy.max_bytes_per_round
    return [
        ("methods", ", ".join(policy.allowed_methods)),
        ("recipes", ", ".join(policy.allowed_recipes)),
        ("tensors that may leave", "\n".join(policy.tensors.allow)),
        ("tensors that never leave", "\n".join(policy.tensors.deny) or "-"),
        ("secure aggregation", f"{'required' if sa.required else 'optional'}; "
                               f">= {sa.min_clients} clients, {threshold}"),  # fmt: skip
        ("differential privacy", f"{'required' if dp.required else 'optional'}; {', '.join(dp_limits)}"),
        ("bytes per round", f"<= {_mib(cap)} ({cap} bytes)" if cap is not None else "no cap"),
        ("servers", "\n".join(servers.allowed)),
        ("TLS", "required (not checkable in a one-process simulation)" if servers.require_tls else "optional"),
        ("local samples per round", f">= {policy.min_local_samples}"),
    ]


@app.command("list")
def list_policies(as_json: JsonOpt = False) -> None:
    """List the built-in policies."""
    policies = [load_policy(name) for name in builtin_names()]
    if as_json:
        typer.echo(json.dumps({p.name: p.description for p in policies}, indent=2))
        return
    table = Table("policy", "for")
    for p in policies:
        table.add_row(Text(p.name), Text(p.description))
    _out().print(table)


@app.command()
def show(
    policy: PolicyArg,
    as_json: JsonOpt = False,
    as_toml: Annotated[bool, typer.Option("--toml", help="print the policy as a TOML file")] = False,
) -> None:
    """Print a policy: a table of its rules, or --json / --toml."""
    loaded = _load(policy)
    if as_json:
        typer.echo(loaded.model_dump_json(indent=2))
    elif as_toml:
        import tomli_w

        typer.echo(tomli_w.dumps(loaded.model_dump(mode="json", exclude_none=True)), nl=False)
    else:
        table = Table("rule", "allows", title=f"policy {loaded.name}", caption=loaded.description, show_lines=True)
        for rule, value in describe(loaded):
            table.add_row(Text(rule), Text(value))
        _out().print(table)


def trainable_tensor_bytes(config: FederationConfig, *, num_classes: int = 2) -> dict[str, int]:
    """Name -> bytes of each tensor the config's method sends with its recipe's head, from the model built
    on torch's meta device. The sites' data fix `num_classes` (a recipe's head grows with it)."""
    import torch

    from fedmed.config import ModelSpec
    from fedmed.models import apply_method
    from fedmed.models.factory import prepared_sam

    spec = ModelSpec.model_validate(config.model.model_dump(exclude={"checkpoint", "pretrained"}))
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        sam, options, always_train = prepared_sam(spec.build_config(num_classes=num_classes, seed=0, checkpoint=None))
        names = apply_method(sam, spec.method, options, always_train=always_train)
    params = dict(sam.named_parameters())
    return {name: params[name].numel() * params[name].element_size() for name in names}


@app.command()
def check(
    policy: PolicyArg,
    config: Annotated[Path, typer.Option("--config", "-c", help="the federation.toml to check")],
    state: Annotated[list[Path] | None, typer.Option(
        "--state", help="a site's state folder (its ledgers): predict what the study would cost it; repeatable")] = None,
    samples: Annotated[int | None, typer.Option(min=1, help="the site's privacy units: its patients where it trains "
                                                "at the patient unit (volumes, a patients.csv), else its training "
                                                "images (sample-level DP: they set its sampling rate and steps)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Which settings of a federation config a site with this policy would refuse, and (with DP) what the
    study would cost each site's privacy budget: ε for the study, its total after, whether its cap covers it.

    Exit status: 0 when the site would take part, 1 when it would refuse (a setting, or a budget that cannot
    cover the study), 2 on a bad policy, config or state folder.
    """
    loaded = _load(policy)
    try:
        fed = load_federation_config(config)
    except ConfigError as exc:
        raise _fail(exc) from None
    tensors = trainable_tensor_bytes(fed)
    request = fed.round_request(list(tensors), expected_bytes=sum(tensors.values()))
    violations = check_round(loaded, request)
    predictions = _predictions(fed, loaded, state or [], samples)
    short = [p for p in predictions if not p["fits"]]
    not_checked = ["local samples per round: known only at each site"]
    if not state:
        not_checked.append("the epsilon a site has already spent (give its state folder with --state)")
    if as_json:
        report = {
            "policy": loaded.name,
            "config": str(config),
            "accepted": not violations and not short,
            "violations": [v.model_dump(mode="json") for v in violations],
            "predictions": predictions,
            "not_checked": not_checked,
            "request": request.model_dump(mode="json"),
        }
        typer.echo(json.dumps(report, indent=2))
    else:
        out = _out()
        recipe = f" ({request.recipe} recipe)" if request.recipe != "default" else ""
        out.print(Text(f"{config}: {request.method}{recipe} on {fed.model.arch}, {len(tensors)} tensors, "
                       f"{_mib(request.expected_bytes or 0)} per site per round"))  # fmt: skip
        if violations:
            out.print(Text(f"A site with policy '{loaded.name}' would refuse this federation "
                           f"({len(violations)} violation{'s' * (len(violations) != 1)}):", style="bold red"))  # fmt: skip
            for v in violations:
                out.print(Text.assemble("  - ", (v.rule, "bold"), f" ({v.field}): {v.message}"))
        else:
            out.print(Text(f"A site with policy '{loaded.name}' would take part.", style="bold green"))
        _print_predictions(out, fed, predictions)
        out.print(Text(f"Not checked here: {'; '.join(not_checked)}.", style="dim"))
    if violations or short:
        raise typer.Exit(1)


def _predictions(fed: FederationConfig, policy: Policy, states: list[Path], samples: int | None) -> list[dict]:
    """Per ledger of each state folder (or for a site that never trained under DP): the study's cost."""
    from fedmed.fl.launch.study_cost import predict_study
    from fedmed.privacy import LedgerError, PrivacyLedger
    from fedmed.privacy.ledger_admin import find_ledgers

    if fed.privacy.mode == "none":
        return []
    if samples is None and fed.privacy.mode == "sample":
        if states:
            raise _fail(ValueError("--state needs --samples N (the site's privacy units: patients or training images) under sample-level DP"))
        return []
    found: list[tuple[str, PrivacyLedger | None]] = []
    for folder in states:
        try:
            ledgers = [PrivacyLedger.at(path) for path in find_ledgers(folder)]
        except LedgerError as exc:
            raise _fail(exc) from None
        found += [(str(folder), ledger) for ledger in ledgers] or [(str(folder), None)]
    results = []
    for where, ledger in found or [("a site that never trained under DP", None)]:
        cost = predict_study(fed, policy, ledger=ledger, num_samples=samples or 1)
        results.append({"state": where, "dataset": ledger.dataset if ledger else None,
                        "epsilon_spent": ledger.epsilon_spent if ledger else 0.0, **cost.model_dump()})
    return results


def _print_predictions(out: Console, fed: FederationConfig, predictions: list[dict]) -> None:
    if fed.privacy.mode == "none":
        out.print(Text("The study trains without differential privacy: nothing bounds what its releases reveal.",
                       style="yellow"))
        return
    if not predictions:
        target = (f"ε {fed.privacy.epsilon:g} over its {fed.federation.rounds} rounds (each site's noise is "
                  "calibrated to it)" if fed.privacy.noise_multiplier is None else
                  "an ε that depends on its training samples (give --samples)")
        out.print(Text(f"Each site would spend {target}, on top of what its ledger holds; give --state and --samples "
                       "to check a site's budget covers it."))
        return
    table = Table("site state", "dataset", "spent", "this study", "total after", "cap", "verdict",
                  title=f"privacy budget: {fed.federation.name}, {fed.federation.rounds} rounds")
    for p in predictions:
        verdict = (Text("covered", style="green") if p["fits"] else
                   Text(f"not covered: refuses from round {p['rounds_that_fit'] + 1}", style="bold red"))
        table.add_row(Text(p["state"]), Text((p["dataset"] or "new")[:12]), f"{p['epsilon_spent']:.3g}",
                      f"{p['epsilon_study']:.3g}", f"{p['epsilon_total_after']:.3g}",
                      "none" if p["epsilon_cap"] is None else f"{p['epsilon_cap']:.3g}", verdict)
    out.print(table)
    if any(not p["fits"] for p in predictions):
        out.print(Text("A site whose remaining budget cannot cover the study refuses the round that would pass its "
                       "cap; every round it trained stays charged. Plan fewer rounds, a smaller ε, or ask the site "
                       "(`fedmed privacy cap`).", style="red"))

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
    as_json: JsonOpt = False,
) -> None:
    """Which settings of a federation config a site with this policy would refuse.

    Exit status: 0 when the site would take part, 1 when it would refuse, 2 on a bad policy or config.
    """
    loaded = _load(policy)
    try:
        fed = load_federation_config(config)
    except ConfigError as exc:
        raise _fail(exc) from None
    tensors = trainable_tensor_bytes(fed)
    request = fed.round_request(list(tensors), expected_bytes=sum(tensors.values()))
    violations = check_round(loaded, request)
    not_checked = ["local samples per round and the epsilon already spent: known only at each site"]
    if as_json:
        report = {
            "policy": loaded.name,
            "config": str(config),
            "accepted": not violations,
            "violations": [v.model_dump(mode="json") for v in violations],
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
        out.print(Text(f"Not checked here: {'; '.join(not_checked)}.", style="dim"))
    if violations:
        raise typer.Exit(1)

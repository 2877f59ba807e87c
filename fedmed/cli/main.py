"""The `fedmed` command line: one Typer app assembling each command group."""

import typer

# Help is rendered as Markdown: Rich markup would read "[default: 5]" in a help string as a style tag
# and drop it. Every sub-app below does the same.
app = typer.Typer(
    name="fedmed",
    rich_markup_mode="markdown",
    help="Federated fine-tuning of Segment Anything on private medical images.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """fedmed: simulate, serve, join and audit federated SAM fine-tuning."""


# Command groups register themselves below (one module each under fedmed/cli/).
from fedmed.cli import methods as _methods  # noqa: E402
from fedmed.cli import train as _train  # noqa: E402

app.command("methods")(_methods.methods)
app.command("train")(_train.train)
from fedmed.cli.policy import app as policy_app  # noqa: E402

app.add_typer(policy_app, name="policy")
from fedmed.cli.audit import app as audit_app  # noqa: E402

app.add_typer(audit_app, name="audit")
from fedmed.cli.privacy import app as privacy_app  # noqa: E402

app.add_typer(privacy_app, name="privacy")
from fedmed.cli.data import app as data_app  # noqa: E402

app.add_typer(data_app, name="data")
from fedmed.cli import simulate as _simulate  # noqa: E402

app.command("simulate")(_simulate.simulate)
from fedmed.cli import client as _client  # noqa: E402
from fedmed.cli import server as _server  # noqa: E402

app.command("server")(_server.server)
app.command("client")(_client.client)
from fedmed.cli import sweep as _sweep  # noqa: E402

app.command("sweep")(_sweep.sweep)
from fedmed.cli.enrol import app as enrol_app  # noqa: E402

app.add_typer(enrol_app, name="enrol")
from fedmed.cli import evaluate as _evaluate  # noqa: E402
from fedmed.cli import export as _export  # noqa: E402
from fedmed.cli import predict as _predict  # noqa: E402

app.command("predict")(_predict.predict)
app.command("evaluate")(_evaluate.evaluate)
app.command("export")(_export.export)
from fedmed.cli import provision as _provision  # noqa: E402

app.command("provision")(_provision.provision)

"""The site's ClientApp: the same in simulation and deployment.

Deployment loads `app` below (`fedmed.fl.site.client_app:app`); its site settings come from the
SuperNode's own `--node-config` (`data-dir`, `policy`, `checkpoint`, `device`, `identity-key`,
`roster`), which `fedmed client` sets from its command line. A simulation makes its own app with
the settings of each virtual SuperNode's site.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmed.fl.site.pipeline import handle
from fedmed.fl.site.runtime import SiteRuntimes
from fedmed.fl.site.session import MessageKind
from fedmed.fl.site.settings import SiteSettings, settings_from_node_config


def make_client_app(settings_of: Callable[[Context], SiteSettings]) -> ClientApp:
    """A ClientApp answering each message with the site settings `settings_of(context)` gives; the
    sites' data and models are built once per app (`SiteRuntimes`)."""
    app, runtimes = ClientApp(), SiteRuntimes()

    def handler(kind: MessageKind):
        def handle_message(message: Message, context: Context) -> Message:
            settings = settings_of(context)
            reply = handle(kind, message.content, settings=settings, runtime=runtimes.of(settings), context=context)
            return Message(reply, reply_to=message)
        return handle_message

    app.query("hello")(handler("hello"))
    app.query("secagg")(handler("secure aggregation"))
    app.train()(handler("train"))
    app.evaluate()(handler("evaluate"))
    return app


app = make_client_app(settings_from_node_config)

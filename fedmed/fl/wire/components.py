"""The app bundle's contract: the components every party runs from its own installed fedmed.

A fedmed run's Flower app bundle (FAB) holds nothing but a `pyproject.toml` naming these
components; the coordinator submits exactly that (`fedmed.fl.launch.deployment`) and a site refuses
any bundle that ships files or names others (`fedmed.fl.site.runner`).
"""

COMPONENTS = {"serverapp": "fedmed.fl.server.server_app:app", "clientapp": "fedmed.fl.site.client_app:app"}
FAB_METADATA = frozenset({"pyproject.toml", ".info/CONTENT"})  # all a fedmed FAB holds; .info/ is Flower's own

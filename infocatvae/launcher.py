"""``hydra/launcher=local`` and ``slurm`` whatever the install: their launcher classes live in
``hydra_plugins/infocatvae_launcher`` (Hydra instantiates launchers only from the ``hydra_plugins`` package, which
it finds by scanning). The scan
finds them in a wheel install and from the repository's root, but not through the import hook of an editable
install (setuptools >= 64), whose namespace portions ``pkgutil.walk_packages`` cannot list; so
``infocatvae.train`` registers them by hand as well (``Plugins.register``, Hydra's API for that)."""

from __future__ import annotations


def register_launchers() -> None:
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # Hydra's scan of hydra_plugins, on the first call
    # Imported after the scan, so never executed twice (the scan re-executes modules it finds already imported).
    from hydra_plugins.infocatvae_launcher import launchers

    plugins.register(launchers.ThrottledLocalLauncher)
    plugins.register(launchers.ReportingSlurmLauncher)

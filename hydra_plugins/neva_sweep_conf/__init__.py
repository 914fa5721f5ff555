"""Hydra search-path plugin: the user's ``conf/`` first on neva_sweep's config search path
(see :mod:`neva_sweep.userconf`). Hydra imports every module under ``hydra_plugins``."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class NevaSweepUserConf(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # only neva_sweep's own apps: other Hydra apps on the machine are left alone
        from neva_sweep.userconf import PACKAGED, user_conf_dir

        # the packaged configs as a package (compose_config: pkg://neva_sweep.conf; an
        # installed hydra.main: pkg://neva_sweep/conf) or a directory (a checkout)
        ours = {"pkg://neva_sweep.conf", "pkg://neva_sweep/conf", str(PACKAGED),
                f"file://{PACKAGED}"}
        if not any(e.path in ours for e in search_path.get_path()):
            return

        path = user_conf_dir()
        if path is not None:
            search_path.prepend(provider="neva_sweep-user", path=f"file://{path}")

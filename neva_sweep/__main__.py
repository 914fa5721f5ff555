"""``neva-sweep task=... key=value ...``, the same as ``python -m neva_sweep ...`` (Hydra).

Only Hydra and the config schemas are imported here; each task imports the model stack
(torch, transformers, Ray) when it runs, so ``--help`` and a mistyped task answer at once.
The configs are the package's own (``neva_sweep/conf/``), found wherever it is installed,
after the user's own (``./conf`` or ``$NEVA_SWEEP_CONF``, :mod:`neva_sweep.userconf`).
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .cli import run_cli
from .config import register_configs
from .redact import redact_hydra_dir

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    # Hydra has written the run's config files: mask the secrets in them before anything
    # (the report, a colleague) reads them; this process keeps the real values
    redact_hydra_dir(hc.runtime.output_dir, hc.output_subdir)
    run_cli(cfg, hc.runtime.output_dir)


def cli() -> None:
    """The command: overrides checked first (a mistyped key, an unknown option or a value of
    the wrong type is one line naming the key, exit 2), then Hydra runs :func:`main`.
    ``HYDRA_FULL_ERROR=1`` leaves the errors to Hydra, with its full report."""
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        from .config import ConfigError
        from .overrides import check_overrides
        from .userconf import user_conf_dir

        try:
            user_conf_dir()  # a $NEVA_SWEEP_CONF that names no directory: one line
            check_overrides(sys.argv[1:])
        except ConfigError as e:
            print(f"error: {e}\n(set HYDRA_FULL_ERROR=1 for Hydra's own report)",
                  file=sys.stderr)
            raise SystemExit(2) from None
    main()


if __name__ == "__main__":
    cli()

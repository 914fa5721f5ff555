"""``neva-sweep task=... key=value ...``, the same as ``python -m neva_sweep ...`` (Hydra).

Only Hydra and the config schemas are imported here; each task imports the model stack
(torch, transformers, Ray) when it runs, so ``--help`` and a mistyped task answer at once.
The configs are the package's own (``neva_sweep/conf/``), found wherever it is installed.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import register_configs
from .tasks import run_cli

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_cli(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()

"""``python -m neva_sweep task=... key=value ...`` (Hydra)."""

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

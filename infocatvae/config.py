"""Hydra plumbing shared by the entry points: the config folder, composing the training config from code
(and the shipped defaults of a model), and instantiating a group of named entries. The resolvers the
configs use live with what they read: folder names (``run_id``, ``eval_dir``) in ``infocatvae.runs``, the CPU's
precision (``cpu_precision``) in ``infocatvae.hardware``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _config_dir() -> str:
    """The top-level ``conf/`` of a clone (an editable install: the configs users read and edit), else
    the copy a wheel ships inside the package (``infocatvae/conf``, see pyproject.toml)."""
    clone = Path(__file__).resolve().parents[1] / "conf"
    if (clone / "train.yaml").is_file():
        return str(clone)
    return str(Path(__file__).resolve().parent / "conf")


CONFIG_DIR = _config_dir()


def compose_train(overrides: list[str]) -> DictConfig:
    """The training config for ``overrides``, composed by Hydra inside a running app (evaluate) or outside one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=overrides)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def model_defaults(model_cls: type, encoder_target: str | None) -> dict[str, Any] | None:
    """The ``model`` entry of the shipped config whose ``conf/model`` option builds ``model_cls`` and whose
    ``conf/net`` option builds the encoder ``encoder_target``, as a plain dict: the defaults a checkpoint
    written before a field existed is completed with. None when no shipped option builds that class."""
    import hydra.utils

    def builds(path: Path, key: str, wanted: Any) -> bool:
        target = OmegaConf.select(OmegaConf.load(path), key)
        return target is not None and wanted is not None and hydra.utils.get_class(target) is wanted

    encoder_cls = hydra.utils.get_class(encoder_target) if encoder_target else None
    options = {
        group: next((f.stem for f in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")) if builds(f, key, wanted)), None)
        for group, key, wanted in (("model", "_target_", model_cls), ("net", "net.encoder._target_", encoder_cls))
    }
    if options["model"] is None:
        return None
    overrides = [f"{group}={name}" for group, name in options.items() if name is not None]
    return OmegaConf.to_container(compose_train(overrides).model, resolve=True)


def instantiate_all(group: Any) -> list[Any]:
    """The objects of a config group of named entries (``callbacks``, ``logger``); an entry set to
    null is turned off (``callbacks: {images: null}`` in a config file, where no key can be deleted)."""
    import hydra.utils

    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c is not None]


# the resolvers the configs use are registered when these are imported: ${run_id:...}, ${eval_dir:...} (runs),
# ${cpu_precision:} (hardware)
import infocatvae.hardware  # noqa: E402, F401
import infocatvae.runs  # noqa: E402, F401

